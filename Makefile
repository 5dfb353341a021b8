# Everything a fresh machine needs: `make demo` and `make test` build .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit integration clean venv bench bench-smoke bench-enrollment reliability reliability-full reliability-cluster tools

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

# Pure and in-process tests only (no OpenBao, no simulator, no subprocess): seconds.
UNIT_TESTS := tests/test_config.py tests/test_layout.py tests/test_reconcile.py \
	tests/test_daemon_engine.py tests/test_rotation_model.py tests/test_provision_model.py
unit: $(STAMP)
	$(BIN)/pytest -m "not slow" -q $(UNIT_TESTS)

# Everything but the long trials: real OpenBao, the simulator over sockets, real processes.
integration: $(STAMP) tools
	$(BIN)/pytest -m "not slow" -q

test: tools lint typecheck integration

# promtool and prometheus (tests/test_alerts.py) from Debian's `prometheus` package, installed
# only when missing; quiet and idempotent. Without apt-get those tests skip and say why. The
# package's own service is not wanted here: on a systemd host it is stopped and disabled.
APT := DEBIAN_FRONTEND=noninteractive apt-get -qq -o=Dpkg::Use-Pty=0
tools:
	@if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    echo "make tools: installing promtool and prometheus (Debian package prometheus)"; \
	    $$SUDO env $(APT) install -y --no-install-recommends prometheus >/dev/null 2>&1 \
	      || { $$SUDO env $(APT) update >/dev/null && \
	           $$SUDO env $(APT) install -y --no-install-recommends prometheus >/dev/null; } \
	      || exit 1; \
	    if [ -d /run/systemd/system ]; then \
	      $$SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true; fi; \
	  else \
	    echo "make tools: no promtool and no apt-get: the Prometheus tests will be skipped"; \
	  fi; \
	fi

bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench

bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks.bench --smoke --out benchmarks/results

# Can a new connector always enroll? Strategies side by side on one seeded fleet (about 10 min).
bench-enrollment: $(STAMP)
	$(BIN)/python -m benchmarks.enrollment

reliability: $(STAMP)
	VAULT_ZPA_RELIABILITY_REPORT=1 $(BIN)/pytest -q tests/reliability

# The issue's full counts: 5,000 keys in the cluster's initial-sync trial.
reliability-full: $(STAMP)
	VAULT_ZPA_RELIABILITY_REPORT=1 VAULT_ZPA_CLUSTER_KEYS=5000 $(BIN)/pytest -q tests/reliability

# Only the 3-node Raft cluster trials (their rows of docs/reliability.md are replaced).
reliability-cluster: $(STAMP)
	VAULT_ZPA_RELIABILITY_REPORT=1 $(BIN)/pytest -q tests/reliability/test_cluster.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
