"""`vault-zpa simulator` as a user runs it: `export` lines for one credential kind that a shell
can `eval` or source (from stdout, an env file, or a detached `--background` server), an HTTPS
listener with `--tls`, serving until SIGINT or SIGTERM."""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Vault, clean_env, wait_for
from vault_zpa.testing.openbao import free_port

PY = shlex.quote(sys.executable)


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vault_zpa", "simulator", "--no-rate-limits", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or clean_env(),
        cwd=ROOT,
    )


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.communicate(timeout=20)


def _shell(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `script` in a plain POSIX shell, as a user pasting it would."""
    return subprocess.run(
        ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def _wait_file(path: Path, proc: subprocess.Popen[str]) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"simulator exited: {proc.communicate()}")
        return path.exists() and "127.0.0.1" in path.read_text()

    wait_for(ready, what=str(path))


def test_prints_export_lines_of_the_legacy_kind_and_stops_on_sigint() -> None:
    """stdout is `export NAME=value` lines of the legacy kind only; they sign in and list."""
    port = free_port()
    proc = _start("--port", str(port), "--seed", "3", "--connector-groups", "4")
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().rstrip("\n") for _ in range(4)]
        assert all(line.startswith("export ") for line in lines), lines
        env = dict(shlex.split(line[len("export ") :])[0].split("=", 1) for line in lines)
        assert set(env) == {"ZPA_BASE_URL", "ZPA_CLIENT_ID", "ZPA_CLIENT_SECRET", "ZPA_CUSTOMER_ID"}
        assert env["ZPA_BASE_URL"] == f"http://127.0.0.1:{port}"
        base = env["ZPA_BASE_URL"]
        token = httpx.post(
            f"{base}/signin",
            data={"client_id": env["ZPA_CLIENT_ID"], "client_secret": env["ZPA_CLIENT_SECRET"]},
        ).json()["access_token"]
        listing = httpx.get(
            f"{base}/mgmtconfig/v1/admin/customers/{env['ZPA_CUSTOMER_ID']}"
            "/associationType/CONNECTOR_GRP/provisioningKey",
            params={"page": "1", "pagesize": "500"},
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        assert listing["totalCount"] == "4"
    finally:
        out, err = _stop(proc)
    assert proc.returncode == 0
    assert "ZSCALER_" not in out
    assert "serving" in err


@pytest.mark.parametrize("kind", ["legacy", "oneapi"])
def test_sourced_env_file_makes_sync_work(kind: str, vault: Vault, tmp_path: Path) -> None:
    """`simulator --env-file F &` then `. F`: a plain shell's `vault-zpa sync` succeeds with
    one credential kind (no "both kinds" error); the file is 0600 and removed on SIGTERM."""
    env_file = tmp_path / "zpa.env"
    env_file.write_text("export ZPA_BASE_URL=http://stale.invalid\n")  # an earlier run's
    args = ["--env-file", str(env_file), *(["--oneapi"] if kind == "oneapi" else [])]
    proc = _start(*args)
    try:
        _wait_file(env_file, proc)
        text = env_file.read_text()
        assert "stale.invalid" not in text  # replaced, never appended to
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert ("ZSCALER_CLIENT_ID" in text) is (kind == "oneapi")
        assert ("ZPA_CLIENT_ID" in text) is (kind == "legacy")
        done = _shell(
            f". {shlex.quote(str(env_file))} && {PY} -m vault_zpa sync --output json",
            clean_env(vault.env),
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["summary"]["create"] == 5
    finally:
        _stop(proc, signal.SIGTERM)
    assert proc.returncode == 0
    assert not env_file.exists()


def test_background_eval_returns_and_serves_until_killed(vault: Vault) -> None:
    """`eval "$(vault-zpa simulator --background)"` returns at once; the detached server
    serves a sync and stops on `kill "$VAULT_ZPA_SIMULATOR_PID"`."""
    script = (
        f'eval "$({PY} -m vault_zpa simulator --background --no-rate-limits)" || exit 9\n'
        f"{PY} -m vault_zpa sync --output json; status=$?\n"
        'kill "$VAULT_ZPA_SIMULATOR_PID"\n'
        'echo "pid=$VAULT_ZPA_SIMULATOR_PID"\n'
        "exit $status\n"
    )
    done = _shell(script, clean_env(vault.env))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.split("\npid=")[0])["summary"]
    assert summary["create"] == 5
    pid = int(done.stdout.rsplit("pid=", 1)[1])

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, what="the background simulator to stop")


def test_background_reports_a_busy_port() -> None:
    """--background on a port in use fails with one line, exit 2 (as the daemon's listener),
    instead of hanging."""
    port = free_port()
    first = _start("--port", str(port))
    try:
        assert first.stdout is not None
        first.stdout.readline()
        done = subprocess.run(
            [sys.executable, "-m", "vault_zpa", "simulator", "--background", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
            cwd=ROOT,
        )
    finally:
        _stop(first)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "did not start" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "in use" in done.stderr


def test_tls_sync_over_https_with_the_printed_ca(vault: Vault, tmp_path: Path) -> None:
    """--tls serves https://127.0.0.1; a sync with the printed SSL_CERT_FILE succeeds, and the
    same run without it fails certificate verification (the CA really is what it trusts)."""
    env_file = tmp_path / "zpa.env"
    proc = _start("--tls", "--env-file", str(env_file))
    try:
        _wait_file(env_file, proc)
        text = env_file.read_text()
        assert "export ZPA_BASE_URL=https://127.0.0.1:" in text
        assert "export SSL_CERT_FILE=" in text
        assert "export REQUESTS_CA_BUNDLE=" in text
        sync = f"{PY} -m vault_zpa sync --output json"
        done = _shell(f". {shlex.quote(str(env_file))} && {sync}", clean_env(vault.env))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["summary"]["create"] == 5
        untrusted = _shell(
            f". {shlex.quote(str(env_file))} && unset SSL_CERT_FILE REQUESTS_CA_BUNDLE && {sync}",
            clean_env(vault.env),
        )
        assert untrusted.returncode != 0
        assert "certificate" in untrusted.stderr.lower()
        cert_dir = Path(text.split("export SSL_CERT_FILE=", 1)[1].split("\n", 1)[0]).parent
        assert (cert_dir / "cert.pem").exists()
    finally:
        _stop(proc, signal.SIGTERM)
    assert proc.returncode == 0
    assert not cert_dir.exists()
