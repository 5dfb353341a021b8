# Everything a fresh machine needs: `make demo` and `make test` build .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit clean venv bench bench-smoke reliability

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/vault-zpa demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check vault_zpa tests

typecheck: $(STAMP)
	$(BIN)/mypy vault_zpa

unit: $(STAMP)
	$(BIN)/pytest -m "not slow" -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench

bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks.bench --smoke --out benchmarks/results

reliability: $(STAMP)
	VAULT_ZPA_RELIABILITY_REPORT=1 $(BIN)/pytest -q tests/reliability

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
