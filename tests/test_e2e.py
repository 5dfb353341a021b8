"""End to end over real sockets: the CLI against the ZPA simulator and a real OpenBao, with the
result read back by the `bao` CLI itself."""

from __future__ import annotations

import json

from tests.conftest import Vault, clean_env, run_cli
from vault_zpa.testing.zpa_simulator import ZpaSimulator

DATA_FIELDS = {
    "provisioning_key",
    "key_id",
    "key_name",
    "association_type",
    "group_id",
    "group_name",
    "enrollment_cert_id",
    "enrollment_cert_name",
    "max_usage",
}


def _view(sim: ZpaSimulator, atype: str, key: dict[str, object]) -> dict[str, str]:
    group = sim.groups[atype][str(key["zcomponentId"])]
    cert = sim.certs[str(key["enrollmentCertId"])]
    return {
        "provisioning_key": str(key["provisioningKey"]),
        "key_id": str(key["id"]),
        "key_name": str(key["name"]),
        "association_type": atype,
        "group_id": str(group["id"]),
        "group_name": str(group["name"]),
        "enrollment_cert_id": str(cert["id"]),
        "enrollment_cert_name": str(cert["name"]),
        "max_usage": str(key["maxUsage"]),
    }


def test_sync_writes_every_group_and_bao_reads_it_back(sim: ZpaSimulator, vault: Vault) -> None:
    """A real sync lands every DESIGN.md field at <mount>/zpa/<TYPE>/<group> for `bao kv get`."""
    env = clean_env(sim.env(), vault.env)
    result = run_cli("sync", env=env)
    assert result.returncode == 0, result.stderr
    assert "5 create" in result.stdout
    for atype, keys in sim.keys.items():
        for key in keys.values():
            expected = _view(sim, atype, key)
            doc = vault.kv_get(f"zpa/{atype}/{expected['group_name']}")
            data = doc["data"]["data"]  # type: ignore[index]
            assert set(data) == DATA_FIELDS
            assert data == expected
            meta = doc["data"]["metadata"]  # type: ignore[index]
            assert meta["version"] == 1
            assert meta["custom_metadata"]["managed_by"] == "vault-zpa"
            assert meta["custom_metadata"]["usage_count"] == "0"
            assert meta["custom_metadata"]["enabled"] == "true"
    # Key values never reach the screen without --reveal.
    for keys in sim.keys.values():
        for key in keys.values():
            assert str(key["provisioningKey"]) not in result.stdout + result.stderr


def test_second_sync_creates_no_new_version(sim: ZpaSimulator, vault: Vault) -> None:
    """Unchanged keys produce no write at all: every secret stays at version 1."""
    env = clean_env(sim.env(), vault.env)
    assert run_cli("sync", env=env).returncode == 0
    again = run_cli("sync", "--output", "json", env=env)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert {i["action"] for i in report["items"]} == {"unchanged"}
    for atype in ("CONNECTOR_GRP", "SERVICE_EDGE_GRP"):
        listing = vault.api("LIST", f"{vault.mount}/metadata/zpa/{atype}").json()["data"]["keys"]
        for name in listing:
            meta = vault.metadata(f"zpa/{atype}/{name}")
            assert meta["current_version"] == 1


def test_usage_change_updates_metadata_without_a_new_version(
    sim: ZpaSimulator, vault: Vault
) -> None:
    """An enrollment (usageCount+1) is a metadata-only change: no new KV version."""
    env = clean_env(sim.env(), vault.env)
    assert run_cli("sync", env=env).returncode == 0
    key = next(iter(sim.keys["CONNECTOR_GRP"].values()))
    sim.enroll("CONNECTOR_GRP", key["id"], 3)
    result = run_cli("sync", "--output", "json", env=env)
    items = json.loads(result.stdout)["items"]
    changed = [i for i in items if i["action"] != "unchanged"]
    assert [(i["action"], i["key_id"]) for i in changed] == [("metadata", key["id"])]
    group = sim.groups["CONNECTOR_GRP"][key["zcomponentId"]]["name"]
    meta = vault.metadata(f"zpa/CONNECTOR_GRP/{group}")
    assert meta["current_version"] == 1
    assert meta["custom_metadata"]["usage_count"] == "3"  # type: ignore[index]


def test_new_key_in_zpa_creates_a_new_version(sim: ZpaSimulator, vault: Vault) -> None:
    """A newer eligible key replaces the old one as version 2; the old stays readable."""
    env = clean_env(sim.env(), vault.env)
    assert run_cli("sync", env=env).returncode == 0
    group_id, group = next(iter(sim.groups["CONNECTOR_GRP"].items()))
    new = sim.add_key("CONNECTOR_GRP", group_id, name="rotated-by-hand")
    result = run_cli("sync", env=env)
    assert result.returncode == 0, result.stderr
    doc = vault.kv_get(f"zpa/CONNECTOR_GRP/{group['name']}")
    assert doc["data"]["data"]["key_id"] == new["id"]  # type: ignore[index]
    assert doc["data"]["metadata"]["version"] == 2  # type: ignore[index]
    old = vault.bao(
        "kv",
        "get",
        "-version=1",
        "-format=json",
        f"{vault.mount}/zpa/CONNECTOR_GRP/{group['name']}",
    )
    assert json.loads(old.stdout)["data"]["data"]["key_id"] != new["id"]


def test_oneapi_credentials_sync_end_to_end(sim: ZpaSimulator, vault: Vault) -> None:
    """OneAPI client credentials (token URL and base URL pointed at the simulator) sync too."""
    env = clean_env(
        vault.env,
        {
            "ZSCALER_CLIENT_ID": sim.oneapi_client_id,
            "ZSCALER_CLIENT_SECRET": sim.oneapi_client_secret,
            "ZPA_CUSTOMER_ID": sim.customer_id,
            "ZPA_BASE_URL": sim.url,
            "VAULT_ZPA_ZPA_TOKEN_URL": f"{sim.url}/oauth2/v1/token",
        },
    )
    result = run_cli("sync", env=env)
    assert result.returncode == 0, result.stderr
    assert "5 create" in result.stdout
    assert sim.stats.requests["POST auth 200"] == 1


def test_demo_runs_and_reads_a_key_back() -> None:
    """`vault-zpa demo` starts OpenBao and the simulator, syncs, and reads a key with bao."""
    result = run_cli("demo", env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "read back from OpenBao with `bao kv get`" in result.stdout
    assert "ZPA accepts this key for enrollment: True" in result.stdout
    assert "second sync: 5 unchanged, 0 writes" in result.stdout
