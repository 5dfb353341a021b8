"""The enrollment-availability benchmark (benchmarks/enrollment.py): its harness runs end to end
in tiny mode, and its figures are computed right. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.enrollment import SMOKE, Arrival, Group, Vm, Workload, analyse, workload
from tests.conftest import ROOT, clean_env
from vault_zpa.testing.zpa_simulator import KeyEvent

STRATEGIES = (
    "terraform",
    "sync",
    "ratio",
    "ratio-tuned-trigger",
    "provision",
    "provision-trigger",
)


def test_enrollment_smoke(tmp_path: Path) -> None:
    """`--smoke` runs every strategy on one workload and writes consistent counts."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.enrollment", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "enrollment-smoke.json").read_text())
    rows = {r["strategy"]: r for r in data["strategies"]}
    assert tuple(rows) == STRATEGIES
    vms = data["workload"]["vms"]
    assert vms > 0
    for name, r in rows.items():
        assert r["unresolved"] == 0, name  # every VM enrolled or gave up
        assert r["vms"] == vms, name  # the same arrivals for every strategy
        assert r["enrolled"] + r["failed"] == r["vms"], name
        assert 0 <= r["failed"] <= r["first_attempt_failures"] <= r["vms"], name
        assert sum(r["first_attempt_failure_causes"].values()) == r["first_attempt_failures"]
        assert sum(h["vms"] for h in r["by_heat"].values()) == r["vms"], name
        assert r["attempts"] >= r["vms"], name
        assert r["enrollment_answers"].get("enrolled", 0) == r["enrolled"], name
        assert 0 <= r["no_usable_key_zpa_had_none_group_min"] <= r["no_usable_key_total_group_min"]
        assert r["no_usable_key_longest_s"] <= r["window_s"] + 1e-6, name
        assert r["vault_versions_trimmed"] == 0, name
        assert r["harness"]["errors"] == {}, name
        assert sum(r["console_actions"].values()) == data["workload"]["console_actions"]
    terraform = rows["terraform"]
    assert terraform["keys_created"] == 0
    assert terraform["zpa_requests"].get("POST", 0) == 0
    assert terraform["zpa_requests"]["GET"] >= len(data["workload"]["groups"])
    assert rows["sync"]["keys_created"] == 0
    assert rows["sync"]["zpa_requests"]["GET"] > 0
    assert rows["provision-trigger"]["settings"]["host_trigger"] == "sync"
    assert rows["provision"]["settings"]["provision"] is not None
    text = (tmp_path / "enrollment-smoke.md").read_text()
    assert text.startswith("`python -m benchmarks.enrollment --smoke`")
    for r in rows.values():
        assert r["label"] in text


def test_workload_is_deterministic() -> None:
    """One seed, one workload: every strategy meets the same VMs and console actions."""
    first, again = workload(SMOKE), workload(SMOKE)
    assert first == again
    assert all(0 <= a.at < SMOKE.window for a in first.arrivals)
    assert [a.at for a in first.arrivals] == sorted(a.at for a in first.arrivals)


def _event(at: float, kind: str, key: str, usage: int = 0, enabled: bool = True) -> KeyEvent:
    return KeyEvent(at, kind, "CONNECTOR_GRP", key, "g1", enabled, usage, 10, f"value-{key}")


def test_analyse_no_usable_key_and_staleness() -> None:
    """K1 is used up at 10 s; K2 appears at 20 s and reaches Vault at 25 s: Vault had no usable
    key for 15 s (10 of them ZPA had none), staleness is 5 s, one VM enrolled, one failed."""
    group = Group(0, "CONNECTOR_GRP", "G", "hot", False)
    w = Workload((group,), (), (), 1, 1)
    events = [
        _event(0, "created", "k1"),
        _event(10, "enrolled", "k1", usage=10),
        _event(20, "created", "k2"),
    ]
    history = {0: [(0.0, "value-k1"), (25.0, "value-k2")]}
    enrolled = Vm(Arrival(0, 1.0, 0, 5.0, False), attempts=1, enrolled_at=30.0)
    enrolled.log.append((1.0, "value-k2", 30.0, None))
    failed = Vm(Arrival(1, 12.0, 0, 5.0, False), attempts=3, first_failed=True, gave_up=True)
    failed.log.append((12.0, "value-k1", 17.0, "key.exhausted"))
    figures = analyse(
        w=w,
        ids={0: "g1"},
        events=events,
        history=history,
        vms=[enrolled, failed],
        start=0.0,
        window_end=40.0,
        run_end=40.0,
        factor=1.0,
    )
    assert figures["no_usable_key_longest_s"] == 15.0
    assert figures["no_usable_key_longest_where"] == {
        "group": "G",
        "heat": "hot",
        "from_s": 10.0,
        "vms_arriving": 1,
    }
    assert figures["no_usable_key_total_group_min"] == round(15 / 60, 1)
    assert figures["no_usable_key_zpa_had_none_group_min"] == round(10 / 60, 1)
    assert figures["staleness_p50_s"] == 5.0
    assert figures["staleness_never_caught_up"] == 0
    assert (figures["vms"], figures["enrolled"], figures["failed"]) == (2, 1, 1)
    assert figures["first_attempt_failure_causes"] == {"unusable when read": 1}
