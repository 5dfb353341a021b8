"""The benchmark harness runs (tiny N) so it cannot rot. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, clean_env


def test_bench_smoke(tmp_path: Path) -> None:
    """`benchmarks.bench --smoke` measures every scenario and writes the table and JSON."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "smoke.json").read_text())
    [row] = data["rows"]
    for scenario in ("initial", "cold", "warm", "changed_1pct"):
        assert row[scenario]["failed"] == 0
    assert row["warm"]["vault_requests"] == 0
    assert row["cold"]["vault_writes"] == 0
    assert row["initial"]["vault_writes"] == 2 * row["n"]
    assert data["rate_limited"]["zpa_429"] == 0
    assert "| 20 |" in (tmp_path / "smoke.md").read_text()
