"""`vault-zpa demo --keep-running` stopped by a signal leaves nothing running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, wait_for


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_demo_stopped_by_a_signal_stops_openbao(sig: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "ZPA_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vault_zpa", "demo", "--keep-running"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 60
    while "Both stay up" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    match = re.search(r"OpenBao\s+\S+\s+\(pid (\d+)\)", seen)
    assert match, seen
    bao = int(match.group(1))
    proc.send_signal(sig)
    proc.communicate(timeout=30)

    def gone() -> bool:
        try:
            os.kill(bao, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, timeout=15, what="the demo's OpenBao to stop")
