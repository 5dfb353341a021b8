"""The connector side: shipped least-privilege policies proven on real OpenBao, and
`vault-zpa fetch` writing the key the way the connector service expects."""

from __future__ import annotations

import json
import os
import pwd
import stat
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Vault, clean_env, run_cli
from vault_zpa import policy
from vault_zpa.fetch import FetchError, write_key
from vault_zpa.masking import Secret
from vault_zpa.model import AssociationType
from vault_zpa.testing.zpa_simulator import ZpaSimulator
from vault_zpa.vault.auth import TokenAuth
from vault_zpa.vault.connection import VaultConnection
from vault_zpa.vault.kv import HvacKvStore
from vault_zpa.vault.lease import LeaderLease


def test_shipped_policy_files_are_the_rendered_defaults() -> None:
    """policies/*.hcl never drift from what `vault-zpa policy render` produces."""
    assert (ROOT / "policies/vault-zpa-daemon.hcl").read_text() == policy.daemon_policy().text
    assert (ROOT / "policies/vault-zpa-auditor.hcl").read_text() == policy.auditor_policy().text
    example = policy.connector_policy(
        association_type=AssociationType.CONNECTOR_GRP, group_name="EXAMPLE-GROUP"
    )
    assert (ROOT / "policies/vault-zpa-connector.hcl.example").read_text() == example.text


def token_for(vault: Vault, *policies: str, default: bool = True) -> str:
    response = vault.api(
        "POST",
        "auth/token/create",
        json={"policies": list(policies), "no_default_policy": not default},
    )
    response.raise_for_status()
    return str(response.json()["auth"]["client_token"])


@pytest.fixture
def applied(sim: ZpaSimulator, vault: Vault) -> dict[str, str]:
    """`vault-zpa policy apply --all-groups` against the test mount; returns the env used."""
    env = clean_env(sim.env(), vault.env)
    first = run_cli("policy", "apply", "--all-groups", env=env)
    assert first.returncode == 0, first.stderr
    # Policies are per server and the session shares one: created, or updated for this mount.
    assert "vault-zpa-daemon" in first.stdout
    again = run_cli("policy", "apply", "--all-groups", env=env)
    assert "created" not in again.stdout  # idempotent
    assert "updated" not in again.stdout
    assert again.stdout.count("unchanged") == 2 + 5
    return env


def test_daemon_policy_runs_everything_and_nothing_outside_the_prefix(
    sim: ZpaSimulator, vault: Vault, applied: dict[str, str]
) -> None:
    """With only the daemon policy (not even Vault's default one): sync, prune, rotation and
    the leader lease work; paths outside the prefix are denied."""
    token = token_for(vault, "vault-zpa-daemon", default=False)
    env = {**applied, "VAULT_TOKEN": token}
    assert run_cli("sync", env=env).returncode == 0
    group = next(iter(sim.groups["SERVICE_EDGE_GRP"].values()))
    rotated = run_cli(
        "rotate",
        "--association-type",
        "SERVICE_EDGE_GRP",
        "--group",
        group["name"],
        "--grace",
        "1s",
        env=env,
    )
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    gone_id = next(iter(sim.groups["CONNECTOR_GRP"]))
    for key_id in [k for k, v in sim.keys["CONNECTOR_GRP"].items() if v["zcomponentId"] == gone_id]:
        del sim.keys["CONNECTOR_GRP"][key_id]
    del sim.groups["CONNECTOR_GRP"][gone_id]  # the group is gone (an alive one is never pruned)
    pruned = run_cli("sync", "--prune", "--output", "json", env=env)
    assert pruned.returncode == 0, pruned.stdout
    assert "prune" in {i["action"] for i in json.loads(pruned.stdout)["items"]}
    conn = VaultConnection(addr=vault.server.addr, auth=TokenAuth(Secret(token)))
    store = HvacKvStore(conn, mount=vault.mount)
    lease = LeaderLease(store, prefix="zpa", period=10)
    assert lease.tick() is True
    lease.release()
    store.close()
    for method, path in (
        ("GET", "sys/policies/acl"),
        ("POST", f"{vault.mount}/data/other"),
        ("GET", f"{vault.mount}/data/other"),
        ("LIST", "sys/mounts"),
        ("POST", f"{vault.mount}/metadata/other"),
    ):
        response = httpx.request(
            method,
            f"{vault.server.addr}/v1/{path}",
            headers={"X-Vault-Token": token},
            json={"data": {}},
        )
        assert response.status_code == 403, (method, path)


def test_connector_policy_reads_its_own_group_only(
    sim: ZpaSimulator, vault: Vault, applied: dict[str, str], tmp_path: Path
) -> None:
    """A connector-group token: `vault-zpa fetch` works for its group; every other group,
    listing and writing are denied."""
    assert run_cli("sync", env=applied).returncode == 0
    (gid, mine), (_, theirs) = list(sim.groups["CONNECTOR_GRP"].items())[:2]
    name = policy.connector_policy(
        association_type=AssociationType.CONNECTOR_GRP, group_name=mine["name"]
    ).name
    token = token_for(vault, name)
    env = clean_env(
        {"VAULT_ADDR": vault.server.addr, "VAULT_TOKEN": token, "VAULT_ZPA_MOUNT": vault.mount}
    )
    out = tmp_path / "provision_key"
    fetched = run_cli(
        "fetch",
        "--association-type",
        "CONNECTOR_GRP",
        "--group",
        mine["name"],
        "--out",
        str(out),
        env=env,
    )
    assert fetched.returncode == 0, fetched.stderr
    [key] = [k for k in sim.keys["CONNECTOR_GRP"].values() if k["zcomponentId"] == gid]
    assert out.read_text() == key["provisioningKey"] + "\n"
    assert key["provisioningKey"] not in fetched.stdout + fetched.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    other = run_cli(
        "fetch",
        "--association-type",
        "CONNECTOR_GRP",
        "--group",
        theirs["name"],
        "--out",
        str(tmp_path / "other"),
        env=env,
    )
    assert other.returncode == 2  # the policy says no: configuration
    assert "Vault denied 'read'" in other.stderr
    assert not (tmp_path / "other").exists()
    headers = {"X-Vault-Token": token}
    base = f"{vault.server.addr}/v1/{vault.mount}"
    assert (
        httpx.request("LIST", f"{base}/metadata/zpa/CONNECTOR_GRP", headers=headers).status_code
        == 403
    )
    assert (
        httpx.post(
            f"{base}/data/zpa/CONNECTOR_GRP/{mine['name']}",
            headers=headers,
            json={"data": {"provisioning_key": "x"}},
        ).status_code
        == 403
    )
    assert (
        httpx.get(f"{base}/metadata/zpa/CONNECTOR_GRP/{mine['name']}", headers=headers).status_code
        == 403
    )


def test_auditor_sees_metadata_not_keys(
    sim: ZpaSimulator, vault: Vault, applied: dict[str, str]
) -> None:
    """The auditor reads usage and leases, never key values."""
    assert run_cli("sync", env=applied).returncode == 0
    token = token_for(vault, "vault-zpa-auditor")
    group = next(iter(sim.groups["CONNECTOR_GRP"].values()))["name"]
    base = f"{vault.server.addr}/v1/{vault.mount}"
    meta = httpx.get(f"{base}/metadata/zpa/CONNECTOR_GRP/{group}", headers={"X-Vault-Token": token})
    assert meta.status_code == 200
    assert meta.json()["data"]["custom_metadata"]["usage_count"] == "0"
    data = httpx.get(f"{base}/data/zpa/CONNECTOR_GRP/{group}", headers={"X-Vault-Token": token})
    assert data.status_code == 403


def test_fetch_missing_secret_and_bad_key(sim: ZpaSimulator, vault: Vault, tmp_path: Path) -> None:
    """A group with no secret, or a malformed value, is a clear error and no file."""
    env = clean_env(vault.env)
    out = tmp_path / "key"
    missing = run_cli(
        "fetch",
        "--association-type",
        "SERVICE_EDGE_GRP",
        "--group",
        "nope",
        "--out",
        str(out),
        env=env,
    )
    assert missing.returncode == 1
    assert f"no provisioning key at {vault.mount}/zpa/SERVICE_EDGE_GRP/nope" in missing.stderr
    vault.bao("kv", "put", f"{vault.mount}/zpa/SERVICE_EDGE_GRP/bad", "provisioning_key=oops")
    bad = run_cli(
        "fetch",
        "--association-type",
        "SERVICE_EDGE_GRP",
        "--group",
        "bad",
        "--out",
        str(out),
        env=env,
    )
    assert bad.returncode == 1
    assert "does not look like a ZPA provisioning key" in bad.stderr
    assert not out.exists()


def test_fetch_replaces_atomically_with_mode_and_owner(tmp_path: Path) -> None:
    """Readers racing 200 replacements only ever see a whole old or whole new key; mode and
    owner are applied; an unchanged key is not rewritten."""
    target = tmp_path / "provision_key"
    keys = [f"3|api.private.zscaler.com|{'A' * 300}{i:04d}-123456789012345678" for i in range(200)]
    write_key(keys[0], str(target))
    seen: set[str] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.add(target.read_text())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for key in keys[1:]:
            write_key(key, str(target))
    finally:
        stop.set()
        thread.join()
    assert seen <= {k + "\n" for k in keys}
    assert len(seen) > 1
    nobody = pwd.getpwnam("nobody")
    written = write_key(keys[-1], str(target), mode=0o640, uid=nobody.pw_uid, gid=nobody.pw_gid)
    assert written.changed  # mode/owner differ: rewritten
    info = target.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid) or os.geteuid() != 0
    assert not write_key(
        keys[-1], str(target), mode=0o640, uid=nobody.pw_uid, gid=nobody.pw_gid
    ).changed
    assert [p.name for p in tmp_path.iterdir()] == ["provision_key"]  # no temp files left
    for bad in ("", "   ", "not-a-key", "3|host|short", "3|host|" + "A" * 40 + "\nX"):
        with pytest.raises(FetchError):
            write_key(bad, str(target))
    assert target.read_text() == keys[-1] + "\n"
