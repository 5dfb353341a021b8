"""The Vault side on real OpenBao: check-and-set, ownership, KV v1 leases, auth renewal,
permission errors and mount detection."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.conftest import ROOT, Vault, Wired, clean_env, run_cli
from vault_zpa.masking import Secret
from vault_zpa.model import Action, Outcome
from vault_zpa.sync import run_once
from vault_zpa.testing.openbao import OpenBaoDevServer
from vault_zpa.testing.zpa_simulator import ZpaSimulator
from vault_zpa.vault.auth import AppRoleAuth
from vault_zpa.vault.connection import VaultConnection
from vault_zpa.vault.kv import HvacKvStore


class RacingStore:
    """Wraps the real store; another writer changes the path just before each of our writes."""

    def __init__(self, inner: HvacKvStore, vault: Vault) -> None:
        self.inner = inner
        self.vault = vault
        self.kv_version = inner.kv_version

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def write(
        self, path: str, data: Mapping[str, str], *, cas: int, custom_metadata: Mapping[str, str]
    ) -> int:
        self.vault.bao("kv", "put", f"{self.vault.mount}/{path}", "provisioning_key=theirs")
        return self.inner.write(path, data, cas=cas, custom_metadata=custom_metadata)


def test_concurrent_writer_is_detected_not_overwritten(wired: Wired, vault: Vault) -> None:
    """A write that lands between our read and our write wins; ours is reported as failed."""
    racing = RacingStore(wired.store, vault)
    report = run_once(source=wired.zpa, store=racing, options=wired.options())  # type: ignore[arg-type]
    assert report.failed
    failed = [r for r in report.results if r.outcome is Outcome.FAILED]
    assert len(failed) == 5
    assert all("changed in Vault after it was read" in (r.error or "") for r in failed)
    doc = vault.kv_get(failed[0].item.path)
    assert doc["data"]["data"] == {"provisioning_key": "theirs"}  # type: ignore[index]


def test_unmarked_path_is_left_alone_until_adopt(sim: ZpaSimulator, vault: Vault) -> None:
    """A path someone else wrote is a conflict (exit 1) until --adopt takes it over."""
    group = next(iter(sim.groups["CONNECTOR_GRP"].values()))["name"]
    path = f"{vault.mount}/zpa/CONNECTOR_GRP/{group}"
    vault.bao("kv", "put", path, "provisioning_key=handmade")
    env = clean_env(sim.env(), vault.env)
    first = run_cli("sync", "--output", "json", env=env)
    assert first.returncode == 1
    items = {i["path"]: i for i in json.loads(first.stdout)["items"]}
    assert items[f"zpa/CONNECTOR_GRP/{group}"]["action"] == "conflict"
    assert "--adopt" in items[f"zpa/CONNECTOR_GRP/{group}"]["reason"]
    assert vault.kv_get(f"zpa/CONNECTOR_GRP/{group}")["data"]["data"] == {  # type: ignore[index]
        "provisioning_key": "handmade"
    }
    adopted = run_cli("sync", "--adopt", env=env)
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    doc = vault.kv_get(f"zpa/CONNECTOR_GRP/{group}")
    assert doc["data"]["data"]["provisioning_key"] != "handmade"  # type: ignore[index]
    assert doc["data"]["metadata"]["custom_metadata"]["managed_by"] == "vault-zpa"  # type: ignore[index]


def test_kv_v1_reads_carry_the_lease_as_lease_duration(sim: ZpaSimulator, vault: Vault) -> None:
    """On a KV v1 mount the secret has a ttl field; `bao kv get` reports it as lease_duration."""
    mount = vault.mount + "-v1"
    vault.api(
        "POST", f"sys/mounts/{mount}", json={"type": "kv", "options": {"version": "1"}}
    ).raise_for_status()
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_MOUNT": mount, "VAULT_ZPA_LEASE": "2h"})
    result = run_cli("sync", env=env)
    assert result.returncode == 0, result.stderr
    group = next(iter(sim.groups["CONNECTOR_GRP"].values()))["name"]
    out = vault.bao("kv", "get", "-format=json", f"{mount}/zpa/CONNECTOR_GRP/{group}")
    doc = json.loads(out.stdout)
    assert doc["lease_duration"] == 7200
    assert doc["data"]["provisioning_key"].startswith("3|")
    assert doc["data"]["_meta_managed_by"] == "vault-zpa"
    again = run_cli("sync", "--output", "json", env=env)
    assert {i["action"] for i in json.loads(again.stdout)["items"]} == {"unchanged"}
    vault.api("DELETE", f"sys/mounts/{mount}")


def test_approle_session_survives_renewals_and_relogin(vault: Vault, tmp_path: object) -> None:
    """Tokens with a 3 s TTL and 7 s max TTL: a 14 s session renews and logs in again."""
    vault.api("POST", "sys/auth/approle-t", json={"type": "approle"})
    policy = f'path "{vault.mount}/*" {{ capabilities = ["create","read","update","list"] }}'
    vault.api("PUT", "sys/policies/acl/zpa-test", json={"policy": policy}).raise_for_status()
    vault.api(
        "POST",
        "auth/approle-t/role/zpa",
        json={"token_ttl": "3s", "token_max_ttl": "7s", "token_policies": ["zpa-test"]},
    ).raise_for_status()
    role_id = vault.api("GET", "auth/approle-t/role/zpa/role-id").json()["data"]["role_id"]
    secret_id = vault.api("POST", "auth/approle-t/role/zpa/secret-id").json()["data"]["secret_id"]
    conn = VaultConnection(
        addr=vault.server.addr,
        auth=AppRoleAuth(Secret(role_id), None, Secret(secret_id), None, mount="approle-t"),
    )
    store = HvacKvStore(conn, mount=vault.mount)
    store.write("zpa/T/a", {"k": "v"}, cas=0, custom_metadata={"managed_by": "vault-zpa"})
    deadline = time.monotonic() + 14
    reads = 0
    while time.monotonic() < deadline:
        got = store.read("zpa/T/a")
        assert got is not None
        reads += 1
        time.sleep(0.5)
    store.close()
    assert conn.tokens.renewals >= 2
    assert conn.tokens.logins >= 2
    assert reads >= 20
    vault.api("DELETE", "sys/auth/approle-t")


def test_policy_denial_names_capability_and_path(sim: ZpaSimulator, vault: Vault) -> None:
    """A read-only token: the error names the capability and the path the policy lacks."""
    policy = (
        f'path "{vault.mount}/data/*" {{ capabilities = ["read"] }}\n'
        f'path "{vault.mount}/metadata/*" {{ capabilities = ["read","list"] }}\n'
        f'path "sys/mounts/{vault.mount}" {{ capabilities = ["read"] }}'
    )
    vault.api("PUT", "sys/policies/acl/zpa-ro", json={"policy": policy}).raise_for_status()
    token = vault.api("POST", "auth/token/create", json={"policies": ["zpa-ro"]}).json()["auth"][
        "client_token"
    ]
    env = clean_env(sim.env(), vault.env, {"VAULT_TOKEN": token})
    result = run_cli("sync", "--output", "json", env=env)
    assert result.returncode == 1
    items = json.loads(result.stdout)["items"]
    assert all(i["outcome"] == "failed" for i in items)
    error = items[0]["error"]
    assert "Vault denied 'update'" in error
    assert f"{vault.mount}/data/zpa/" in error
    assert token not in result.stdout + result.stderr


def test_missing_mount_is_a_configuration_error(sim: ZpaSimulator, vault: Vault) -> None:
    """No such mount: exit 2 and a one-line hint, no traceback."""
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_MOUNT": "does-not-exist"})
    result = run_cli("sync", env=env)
    assert result.returncode == 2
    assert "no secrets engine mounted at 'does-not-exist'" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_non_kv_mount_is_a_configuration_error(sim: ZpaSimulator, vault: Vault) -> None:
    """A transit mount is not KV: exit 2."""
    mount = vault.mount + "-transit"
    vault.api("POST", f"sys/mounts/{mount}", json={"type": "transit"}).raise_for_status()
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_MOUNT": mount})
    result = run_cli("sync", env=env)
    assert result.returncode == 2
    assert "'transit' engine, not KV" in result.stderr
    vault.api("DELETE", f"sys/mounts/{mount}")


def test_unreachable_vault_is_a_clear_error(sim: ZpaSimulator) -> None:
    """Nothing listening at VAULT_ADDR: exit 1 with one line naming the address."""
    env = clean_env(
        sim.env(),
        {
            "VAULT_ADDR": "http://127.0.0.1:9",
            "VAULT_TOKEN": "x-token",
            "VAULT_ZPA_VAULT_RETRY_BUDGET": "1s",
        },
    )
    result = run_cli("sync", env=env)
    assert result.returncode == 1
    assert "unreachable" in result.stderr
    assert "http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("action", [Action.UNCHANGED])
def test_second_sync_performs_no_data_writes(wired: Wired, action: Action) -> None:
    """Counted at the client: the second sync makes reads and lists only, no writes."""
    store = wired.store
    run_once(source=wired.zpa, store=store, options=wired.options())
    store.conn.requests.clear()
    report = run_once(source=wired.zpa, store=store, options=wired.options())
    assert {r.item.action for r in report.results} == {action}
    kinds = {kind for kind, _ in store.conn.requests}
    assert kinds <= {"read", "list"}


def test_sealed_vault_is_retried_until_unsealed(sim: ZpaSimulator, tmp_path: Path) -> None:
    """A sync started against a sealed Vault waits (capped backoff) and completes after unseal."""
    with OpenBaoDevServer(log_dir=str(tmp_path)) as server:
        server.seal()
        env = clean_env(sim.env(), server.env(), {"VAULT_ZPA_VAULT_RETRY_BUDGET": "40s"})
        with subprocess.Popen(
            [sys.executable, "-m", "vault_zpa", "sync"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            time.sleep(3)
            assert proc.poll() is None  # still waiting, not failed
            server.unseal()
            out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "5 create" in out


def test_token_file_is_read_and_sealed_budget_is_bounded(
    sim: ZpaSimulator, vault: Vault, tmp_path: Path
) -> None:
    """VAULT_ZPA_TOKEN_FILE works; a Vault that stays down ends in one line within the budget."""
    token_file = tmp_path / "token"
    token_file.write_text(vault.server.root_token + "\n")
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_TOKEN_FILE": str(token_file)})
    del env["VAULT_TOKEN"]
    result = run_cli("sync", env=env)
    assert result.returncode == 0, result.stderr
    token_file.write_text("")
    empty = run_cli("sync", env=env)
    assert empty.returncode == 2  # a credential is wrong: configuration
    assert "is empty" in empty.stderr


def test_approle_credentials_are_reread_from_files_at_each_login(
    vault: Vault, tmp_path: Path
) -> None:
    """A rotated secret_id file is picked up by the next login without a restart."""
    vault.api("POST", "sys/auth/approle-f", json={"type": "approle"})
    policy = f'path "{vault.mount}/*" {{ capabilities = ["create","read","update","list"] }}'
    vault.api("PUT", "sys/policies/acl/zpa-f", json={"policy": policy}).raise_for_status()
    vault.api(
        "POST",
        "auth/approle-f/role/zpa",
        json={"token_ttl": "2s", "token_max_ttl": "2s", "token_policies": ["zpa-f"]},
    ).raise_for_status()
    role_id = vault.api("GET", "auth/approle-f/role/zpa/role-id").json()["data"]["role_id"]

    def new_secret_id() -> str:
        response = vault.api("POST", "auth/approle-f/role/zpa/secret-id")
        return str(response.json()["data"]["secret_id"])

    (tmp_path / "role_id").write_text(role_id)
    first = new_secret_id()
    (tmp_path / "secret_id").write_text(first)
    conn = VaultConnection(
        addr=vault.server.addr,
        auth=AppRoleAuth(
            None, str(tmp_path / "role_id"), None, str(tmp_path / "secret_id"), mount="approle-f"
        ),
    )
    store = HvacKvStore(conn, mount=vault.mount)
    assert store.read("zpa/x") is None
    vault.api(
        "POST", "auth/approle-f/role/zpa/secret-id/destroy", json={"secret_id": first}
    ).raise_for_status()
    (tmp_path / "secret_id").write_text(new_secret_id())
    time.sleep(2.5)  # the first token has expired; the next call must log in with the new file
    assert store.read("zpa/x") is None
    store.close()
    assert conn.tokens.logins == 2
    vault.api("DELETE", "sys/auth/approle-f")
