"""Reaching Vault as the vault CLI would: TLS with VAULT_CACERT, VAULT_SKIP_VERIFY, namespaces."""

from __future__ import annotations

import json
import os
import ssl
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Vault, Wired, clean_env, run_cli
from vault_zpa.testing.openbao import OpenBaoDevServer
from vault_zpa.testing.zpa_simulator import ZpaSimulator


@pytest.fixture(scope="module")
def tls_openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoDevServer]:
    server = OpenBaoDevServer(log_dir=str(tmp_path_factory.mktemp("bao-tls")), tls=True)
    server.start()
    yield server
    server.stop()


def test_tls_with_vault_cacert(sim: ZpaSimulator, tls_openbao: OpenBaoDevServer) -> None:
    """https Vault with VAULT_CACERT: the sync works."""
    result = run_cli("sync", env=clean_env(sim.env(), tls_openbao.env()))
    assert result.returncode == 0, result.stderr
    group = next(iter(sim.groups["CONNECTOR_GRP"].values()))["name"]
    read = httpx.get(
        f"{tls_openbao.addr}/v1/secret/data/zpa/CONNECTOR_GRP/{group}",
        headers={"X-Vault-Token": tls_openbao.root_token},
        verify=ssl.create_default_context(cafile=tls_openbao.cacert),
    )
    assert read.status_code == 200
    assert read.json()["data"]["data"]["provisioning_key"].startswith("3|")


def test_tls_without_the_ca_fails_fast_and_says_what_to_set(
    sim: ZpaSimulator, tls_openbao: OpenBaoDevServer
) -> None:
    """An untrusted certificate is one clear line naming VAULT_CACERT, not a retry loop."""
    env = clean_env(sim.env(), tls_openbao.env())
    del env["VAULT_CACERT"]
    result = run_cli("sync", env=env, timeout=30)
    assert result.returncode == 2  # configuration: VAULT_CACERT
    assert "TLS verification of Vault" in result.stderr
    assert "VAULT_CACERT" in result.stderr


def test_skip_verify_works_with_a_loud_warning(
    sim: ZpaSimulator, tls_openbao: OpenBaoDevServer
) -> None:
    """VAULT_SKIP_VERIFY=true connects, and warns once that TLS is not verified."""
    env = clean_env(sim.env(), tls_openbao.env(), {"VAULT_SKIP_VERIFY": "true"})
    del env["VAULT_CACERT"]
    result = run_cli("sync", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("VAULT_SKIP_VERIFY is set") == 1
    assert "InsecureRequestWarning" not in result.stderr


def test_namespace(sim: ZpaSimulator, vault: Vault) -> None:
    """VAULT_NAMESPACE sends X-Vault-Namespace: secrets land in the namespace's mount."""
    ns = f"ns-{vault.mount}"
    vault.api("POST", f"sys/namespaces/{ns}").raise_for_status()
    headers = {"X-Vault-Token": vault.server.root_token, "X-Vault-Namespace": ns}
    httpx.post(
        f"{vault.server.addr}/v1/sys/mounts/zpa-kv",
        headers=headers,
        json={"type": "kv", "options": {"version": "2"}},
    ).raise_for_status()
    env = clean_env(
        sim.env(), vault.server.env(), {"VAULT_NAMESPACE": ns, "VAULT_ZPA_MOUNT": "zpa-kv"}
    )
    result = run_cli("sync", "--output", "json", env=env)
    assert result.returncode == 0, result.stderr
    path = json.loads(result.stdout)["items"][0]["path"]
    inside = httpx.get(f"{vault.server.addr}/v1/zpa-kv/data/{path}", headers=headers)
    assert inside.status_code == 200
    assert inside.json()["data"]["data"]["provisioning_key"].startswith("3|")
    outside = vault.api("GET", f"zpa-kv/data/{path}")
    assert outside.status_code in (400, 403, 404)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_threads_and_logins_do_not_leak_connections(wired: Wired) -> None:
    """The daemon syncs on new threads (SIGHUP, POST /v1/sync, each run's read-back) and logs in
    again after Vault rejects a token: neither may leave a session (and its socket) behind."""
    conn = wired.store.conn
    wired.store.list_tree("zpa")

    def one_call() -> None:
        wired.store.list_tree("zpa")

    for _ in range(3):  # warm up whatever the first calls open
        thread = threading.Thread(target=one_call)
        thread.start()
        thread.join()
    before_fds, before_sessions = open_fds(), conn.open_sessions()
    for _ in range(30):
        thread = threading.Thread(target=one_call)
        thread.start()
        thread.join()
    for _ in range(10):
        conn.tokens.invalidate()  # the next call logs in again (lookup-self for a token)
        wired.store.list_tree("zpa")
    assert conn.open_sessions() <= before_sessions + 1
    assert open_fds() <= before_fds + 2  # before the fix: 20 -> 60
