"""The operator's kit, proven on the real thing (issue 20): the alert rules pass `promtool check
rules` and their unit tests, every alert has a firing and a quiet case, a summary, a fix and a
runbook section; a real Prometheus scraping a real daemon sees an alert fire when ZPA
credentials go bad and resolve when they are fixed; the Grafana dashboard only queries metrics
the daemon really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ROOT, DaemonProc, Vault, clean_env, syncs, wait_for
from vault_zpa.testing.openbao import free_port
from vault_zpa.testing.zpa_simulator import ZpaSimulator

RULES = ROOT / "deploy/prometheus/vault-zpa-rules.yml"
RULE_TESTS = sorted((ROOT / "deploy/prometheus/tests").glob("*.yml"))
RUNBOOK = ROOT / "docs/runbook.md"
DASHBOARD = ROOT / "deploy/grafana/vault-zpa.json"
RUNBOOK_URL = "https://github.com/vault-zpa/vault-zpa/blob/main/docs/runbook.md#"


def tool(name: str) -> str:
    """The path of promtool/prometheus. Skipped (with the reason) only where it cannot be
    installed; where apt-get exists (CI, this machine) a missing tool is a failure."""
    path = shutil.which(name)
    if path is not None:
        return path
    if shutil.which("apt-get") is None:
        pytest.skip(f"{name} is not installed and there is no apt-get to install it with")
    pytest.fail(f"{name} is missing: run `make tools` (installs Debian's prometheus package)")


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


# ---- the rules, statically and with promtool ---------------------------------------------


def test_promtool_check_rules_accepts_the_rule_file() -> None:
    """`promtool check rules` parses every rule and expression."""
    out = subprocess.run(
        [tool("promtool"), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in out.stdout


def test_promtool_unit_tests_pass_for_every_rule() -> None:
    """`promtool test rules` over deploy/prometheus/tests/*.yml passes."""
    assert RULE_TESTS
    out = subprocess.run(
        [tool("promtool"), "test", "rules", *map(str, RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULE_TESTS[0].parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    """Each alert is unit-tested at least once firing (with its annotations) and once not."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                expected = check.get("exp_alerts") or []
                (firing if expected else quiet).add(check["alertname"])
                for alert in expected:
                    assert set(alert.get("exp_annotations", {})) == {
                        "summary",
                        "description",
                        "runbook_url",
                    }, check["alertname"]
    names = {rule["alert"] for rule in alerts()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"


def test_every_alert_has_a_summary_a_fix_a_severity_and_a_runbook_section() -> None:
    """Summary, description with the fix, severity, and a runbook_url whose anchor is a
    section of docs/runbook.md."""
    runbook = RUNBOOK.read_text()
    headings = {h.strip().lower() for h in re.findall(r"^## (\S+)\s*$", runbook, re.M)}
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    for rule in alerts():
        name, notes = rule["alert"], rule["annotations"]
        assert notes["summary"].strip(), name
        assert "Fix:" in notes["description"], name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert notes["runbook_url"] == RUNBOOK_URL + name.lower(), name
        assert name.lower() in headings, f"docs/runbook.md has no section ## {name}"
        assert "for" in rule, f"{name}: no `for:`, one bad scrape would page"


# ---- a real Prometheus scraping a real daemon --------------------------------------------


class Prometheus:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5)
        response.raise_for_status()
        return response.json()["data"]

    def rule_state(self, name: str) -> str | None:
        for group in self.api("rules", type="alert")["groups"]:
            for rule in group["rules"]:
                if rule["name"] == name:
                    return str(rule["state"])
        return None

    def firing(self) -> set[str]:
        return {
            a["labels"]["alertname"] for a in self.api("alerts")["alerts"] if a["state"] == "firing"
        }


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], Prometheus]]:
    """A `prometheus` server on a free loopback port, scraping and evaluating every second, with
    the shipped rules whose `for:` is shortened to 1s (everything else as shipped)."""
    started: list[Prometheus] = []

    def start(targets: list[str]) -> Prometheus:
        binary = tool("prometheus")
        doc = yaml.safe_load(RULES.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                rule["for"] = "1s"
        (tmp_path / "rules.yml").write_text(yaml.safe_dump(doc))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "rules.yml")],
            "scrape_configs": [{"job_name": "vault-zpa", "static_configs": [{"targets": targets}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = tmp_path / "prometheus.log"
        with open(log, "wb") as handle:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        server = Prometheus(proc, f"http://127.0.0.1:{port}", log)
        started.append(server)

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {log.read_text()[-2000:]}")
            return httpx.get(server.url + "/-/ready", timeout=2).status_code == 200

        wait_for(ready, timeout=30, what="prometheus ready")
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.terminate()
            try:
                server.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()


def test_sync_failing_alert_fires_when_zpa_credentials_go_bad_and_resolves_when_fixed(
    sim: ZpaSimulator,
    vault: Vault,
    start_daemon: Callable[..., DaemonProc],
    start_prometheus: Callable[[list[str]], Prometheus],
) -> None:
    """Prometheus scrapes a healthy daemon: VaultZpaSyncFailing is inactive. ZPA stops
    accepting the daemon's secret (rotated on ZPA's side, tokens revoked): after the next run
    the alert fires. The secret is accepted again: after the next run it resolves."""
    good = sim.client_secret
    d = start_daemon(clean_env(sim.env(), vault.env))
    wait_for(lambda: syncs(d) >= 1, what="first run")
    prom = start_prometheus([d.url.removeprefix("http://")])

    def scraped(result: str) -> bool:
        query = f'vault_zpa_last_sync_result{{result="{result}"}} == 1'
        return bool(prom.api("query", query=query)["result"])

    wait_for(lambda: scraped("success"), timeout=20, what="a scrape of the good run")
    # Quiet once the first scrapes are in (with `for: 1s`, VaultZpaAbsent may flash before
    # the very first scrape).
    wait_for(
        lambda: prom.rule_state("VaultZpaSyncFailing") == "inactive" and prom.firing() == set(),
        timeout=10,
        what="the rule evaluated, inactive, and nothing firing",
    )

    sim.client_secret = "rotated-in-zpa-not-in-the-daemon"
    sim.expire_tokens()  # the daemon's current ZPA token is refused too: it must sign in again
    fault = time.monotonic()
    httpx.post(d.url + "/v1/sync", timeout=10)
    wait_for(lambda: d.get("/readyz").status_code == 503, timeout=30, what="a failed run")
    wait_for(lambda: "VaultZpaSyncFailing" in prom.firing(), timeout=20, what="the alert firing")
    fired_after = time.monotonic() - fault
    assert prom.firing() == {"VaultZpaSyncFailing"}  # nothing else: the daemon is up, leads

    sim.client_secret = good
    fixed = time.monotonic()
    httpx.post(d.url + "/v1/sync", timeout=10)
    wait_for(lambda: d.get("/readyz").status_code == 200, timeout=30, what="a good run")
    wait_for(
        lambda: (
            prom.rule_state("VaultZpaSyncFailing") == "inactive"
            and "VaultZpaSyncFailing" not in prom.firing()
        ),
        timeout=20,
        what="the alert resolved",
    )
    resolved_after = time.monotonic() - fixed
    print(f"fault -> firing {fired_after:.1f}s; fix -> resolved {resolved_after:.1f}s")
    assert d.stop() == 0


# ---- the Grafana dashboard ----------------------------------------------------------------


def exported_names(text: str) -> set[str]:
    """Every series name a /metrics page offers, including families with no sample yet
    (`# TYPE` lines) and the suffixes their types add."""
    names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M))
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)", text, re.M):
        names.add(name)
        if kind == "counter":
            names.add(name.removesuffix("_total") + "_total")
        if kind == "histogram":
            names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "le",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions (a
    `(` follows), label names (inside `{}` or `by (...)`), keywords or Grafana variables."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values and strings
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\$\w+|\$\{[^}]*\}", "", expr)  # dashboard variables
    expr = re.sub(r"\blabel_values\((\w+),\s*\w+\)", r"\1", expr)  # Grafana's, not PromQL
    found = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        name, call = match.group(1), match.group(2)
        if call or name in PROMQL_WORDS or re.fullmatch(r"\d.*|e\d+|Inf|NaN", name):
            continue
        found.add(name)
    return found


def dashboard_queries(doc: dict[str, Any]) -> list[str]:
    """Every panel's PromQL (rows' nested panels too) and the query-type variables'."""
    exprs = []
    panels = list(doc["panels"])
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        exprs.extend(t["expr"] for t in panel.get("targets", []))
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_dashboard_and_rules_name_only_metrics_a_real_daemon_exports(
    sim: ZpaSimulator, vault: Vault, start_daemon: Callable[..., DaemonProc], tmp_path: Path
) -> None:
    """deploy/grafana/vault-zpa.json is valid JSON with the panels operators need, and every
    PromQL expression in it (and in the alert rules) names a series that a running daemon's
    /metrics offers."""
    doc = json.loads(DASHBOARD.read_text())
    d = start_daemon(clean_env(sim.env(), vault.env))
    wait_for(lambda: syncs(d) >= 1, what="first run")
    exported = exported_names(d.get("/metrics").text) | {"up"}
    assert d.stop() == 0
    queries = dashboard_queries(doc)
    assert len(queries) >= 8
    used: set[str] = set()
    for expr in queries:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{expr!r} names {sorted(names - exported)}"
        used |= names
    for want in (
        "vault_zpa_syncs_total",
        "vault_zpa_sync_duration_seconds_bucket",
        "vault_zpa_keys",
        "vault_zpa_key_usage_ratio",
        "vault_zpa_zpa_rate_limit_wait_seconds_total",
        "vault_zpa_leader",
        "vault_zpa_vault_token_ttl_seconds",
    ):
        assert want in used, f"the dashboard does not show {want}"
    # Each panel query parses as PromQL (Grafana's variables given values): promtool checks
    # them as recording rules.
    grafana = {"$__rate_interval": "5m", "$topn": "10", "$job": ".*"}
    records = []
    for n, expr in enumerate(q for q in queries if not q.startswith("label_values(")):
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        records.append({"record": f"dashboard:query_{n}", "expr": expr})
    checked = tmp_path / "dashboard-queries.yml"
    checked.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    out = subprocess.run(
        [tool("promtool"), "check", "rules", str(checked)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    titles = [p.get("title", "") for p in doc["panels"]]
    assert len(titles) == len(set(titles))
    for rule in alerts():
        names = metric_names(rule["expr"])
        assert names <= exported, f"{rule['alert']} names {sorted(names - exported)}"
