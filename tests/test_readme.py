"""The README runs as written: its quick start and first-sync blocks (marked
`<!-- readme-test: NAME -->`) are pasted into a plain bash against a real OpenBao dev server and
the ZPA simulator, so the README cannot drift from the product."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

from tests.conftest import ROOT, clean_env
from vault_zpa.testing.openbao import free_port

MARKER = re.compile(r"<!-- readme-test: ([\w-]+) -->\n```sh\n(.*?)```", re.DOTALL)


def blocks() -> dict[str, str]:
    """The marked blocks of README.md, by name."""
    return {m.group(1): m.group(2) for m in MARKER.finditer((ROOT / "README.md").read_text())}


def test_the_readme_quick_start_and_first_sync_run_as_written(tmp_path: Path) -> None:
    """quickstart, first-sync, first-sync-json and stop, in one bash: only the fixed ports and
    /tmp paths are swapped for free ones, so parallel runs cannot collide."""
    found = blocks()
    assert {"quickstart", "first-sync", "first-sync-json", "stop"} <= set(found)
    script = "set -e\n" + "\n".join(
        found[name] for name in ("quickstart", "first-sync", "first-sync-json")
    )
    script += "\nset +e\n" + found["stop"] + "wait\n"
    for fixed, port in (("8200", free_port()), ("9443", free_port())):
        script = script.replace(f"127.0.0.1:{fixed}", f"127.0.0.1:{port}")
        script = script.replace(f"--port {fixed}", f"--port {port}")
    script = script.replace("/tmp/", f"{tmp_path}/")
    env = clean_env({"HOME": str(tmp_path)})
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: cleaned up below whatever happens
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # only what this test started
        proc.wait(timeout=10)
    assert proc.returncode == 0, (out[-2000:], err[-2000:])
    assert "dry run: 5 create (5 would be written)" in out
    assert "sync: 5 create (done)" in out
    assert "sync: 5 unchanged (done)" in out
    assert "Connector-Group-0001-key-1" in out  # bao kv get -field=key_name
    assert "status: 5 group(s), 0 not in sync" in out
    assert '"schema_version": 1' in out
    assert not (tmp_path / "zpa.env").exists(), "the simulator removes its env file on exit"
