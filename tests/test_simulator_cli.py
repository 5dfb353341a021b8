"""`vault-zpa simulator` as a user runs it: shell lines on stdout, serving until interrupted."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx

from tests.conftest import ROOT, clean_env
from vault_zpa.testing.openbao import free_port


def test_simulator_prints_sourceable_lines_and_serves_until_sigint() -> None:
    """The printed ZPA_* lines are enough for a real sign-in and listing; SIGINT stops it."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vault_zpa",
            "simulator",
            "--port",
            str(port),
            "--seed",
            "3",
            "--connector-groups",
            "4",
            "--service-edge-groups",
            "1",
            "--no-rate-limits",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        lines = {}
        for _ in range(6):
            line = proc.stdout.readline().strip()
            name, _, value = line.partition("=")
            lines[name] = value
        assert lines["ZPA_BASE_URL"] == f"http://127.0.0.1:{port}"
        base = lines["ZPA_BASE_URL"]
        token = httpx.post(
            f"{base}/signin",
            data={"client_id": lines["ZPA_CLIENT_ID"], "client_secret": lines["ZPA_CLIENT_SECRET"]},
        ).json()["access_token"]
        listing = httpx.get(
            f"{base}/mgmtconfig/v1/admin/customers/{lines['ZPA_CUSTOMER_ID']}"
            "/associationType/CONNECTOR_GRP/provisioningKey",
            params={"page": "1", "pagesize": "500"},
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        assert listing["totalCount"] == "4"
        assert listing["totalPages"] == "1"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    assert proc.returncode == 0
