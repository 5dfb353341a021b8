"""One contract suite, two implementations: the in-memory store and real OpenBao."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Vault
from vault_zpa.errors import CasConflict
from vault_zpa.masking import Secret
from vault_zpa.testing.memory import MemoryKvStore
from vault_zpa.vault.auth import TokenAuth
from vault_zpa.vault.connection import VaultConnection
from vault_zpa.vault.kv import HvacKvStore, KvStore

DATA = {"provisioning_key": "3|h|abc", "key_id": "1"}
META = {"managed_by": "vault-zpa", "usage_count": "0"}


@pytest.fixture(params=["memory", "openbao"])
def store(request: pytest.FixtureRequest) -> Iterator[KvStore]:
    if request.param == "memory":
        memory = MemoryKvStore()
        yield memory
        memory.close()
        return
    vault: Vault = request.getfixturevalue("vault")
    conn = VaultConnection(addr=vault.server.addr, auth=TokenAuth(Secret(vault.server.root_token)))
    real = HvacKvStore(conn, mount=vault.mount)
    yield real
    real.close()


def test_absent_path_reads_as_none(store: KvStore) -> None:
    """Reading a path nobody wrote is None, not an error."""
    assert store.read("zpa/CONNECTOR_GRP/nothing") is None


def test_create_then_read_back(store: KvStore) -> None:
    """cas=0 creates version 1 with data and custom metadata, read back in one call; the
    metadata records the version the write made (`synced_version`)."""
    assert store.write("zpa/T/a", DATA, cas=0, custom_metadata=META) == 1
    got = store.read("zpa/T/a")
    assert got is not None
    assert got.version == 1
    assert dict(got.data or {}) == DATA
    assert got.custom_metadata == {**META, "synced_version": "1"}
    assert got.managed
    assert store.write("zpa/T/a", DATA, cas=1, custom_metadata=META) == 2
    again = store.read("zpa/T/a")
    assert again is not None
    assert again.custom_metadata["synced_version"] == "2"


def test_check_and_set_refuses_a_stale_version(store: KvStore) -> None:
    """A write against a stale version raises CasConflict and changes nothing."""
    store.write("zpa/T/a", DATA, cas=0, custom_metadata=META)
    with pytest.raises(CasConflict):
        store.write("zpa/T/a", {**DATA, "key_id": "2"}, cas=0, custom_metadata=META)
    assert store.write("zpa/T/a", {**DATA, "key_id": "2"}, cas=1, custom_metadata=META) == 2
    with pytest.raises(CasConflict):
        store.write("zpa/T/a", {**DATA, "key_id": "3"}, cas=1, custom_metadata=META)
    got = store.read("zpa/T/a")
    assert got is not None
    assert got.data is not None
    assert got.data["key_id"] == "2"


def test_metadata_write_creates_no_version(store: KvStore) -> None:
    """custom_metadata changes do not create a KV version."""
    store.write("zpa/T/a", DATA, cas=0, custom_metadata=META)
    store.write_metadata("zpa/T/a", {**META, "usage_count": "5"})
    got = store.read("zpa/T/a")
    assert got is not None
    assert got.version == 1
    assert got.custom_metadata["usage_count"] == "5"


def test_soft_delete_keeps_version_and_metadata(store: KvStore) -> None:
    """A soft-deleted secret reads with no data but keeps its version for check-and-set."""
    store.write("zpa/T/a", DATA, cas=0, custom_metadata=META)
    store.soft_delete("zpa/T/a")
    got = store.read("zpa/T/a")
    assert got is not None
    assert got.data is None
    assert got.version == 1
    assert got.managed
    assert store.write("zpa/T/a", DATA, cas=1, custom_metadata=META) == 2


def test_list_tree_is_recursive(store: KvStore) -> None:
    """Every leaf below the prefix is listed, nested folders included."""
    for path in ("zpa/A/x", "zpa/A/y", "zpa/B/z", "other/q"):
        store.write(path, DATA, cas=0, custom_metadata=META)
    assert store.list_tree("zpa") == ["zpa/A/x", "zpa/A/y", "zpa/B/z"]
    assert store.list_tree("missing") == []


def test_metadata_writes_merge_and_remove_only_what_they_name(store: KvStore) -> None:
    """A metadata write keeps keys it does not name (another tool's, an operator's) and drops
    only the keys it is told to remove."""
    store.write("zpa/T/a", DATA, cas=0, custom_metadata={**META, "owner_team": "netops"})
    store.write_metadata("zpa/T/a", {"usage_count": "7"}, remove=("managed_by", "not-there"))
    got = store.read("zpa/T/a")
    assert got is not None
    assert got.custom_metadata == {
        "usage_count": "7",
        "owner_team": "netops",
        "synced_version": "1",
    }
    store.write("zpa/T/a", DATA, cas=1, custom_metadata={"managed_by": "vault-zpa"})
    got = store.read("zpa/T/a")
    assert got is not None
    assert got.custom_metadata == {
        "usage_count": "7",
        "owner_team": "netops",
        "synced_version": "2",
        "managed_by": "vault-zpa",
    }


def test_operator_settings_survive_our_writes(vault: Vault) -> None:
    """max_versions and delete_version_after set by an operator are never reset by a data or
    metadata write (issue 14, item 9: max_versions=50 went back to 5 and old versions were
    purged)."""
    conn = VaultConnection(addr=vault.server.addr, auth=TokenAuth(Secret(vault.server.root_token)))
    store = HvacKvStore(conn, mount=vault.mount, max_versions=5)
    try:
        store.write("zpa/T/a", DATA, cas=0, custom_metadata=META)
        vault.bao(
            "kv",
            "metadata",
            "put",
            "-max-versions=50",
            "-delete-version-after=720h",
            f"{vault.mount}/zpa/T/a",
        )
        for version in range(1, 8):
            store.write(
                "zpa/T/a", {**DATA, "key_id": str(version)}, cas=version, custom_metadata=META
            )
            store.write_metadata("zpa/T/a", {**META, "usage_count": str(version)})
        meta = vault.metadata("zpa/T/a")
        assert meta["max_versions"] == 50
        assert meta["delete_version_after"] == "720h0m0s"
        assert meta["custom_metadata"]["usage_count"] == "7"  # type: ignore[index]
        assert len(meta["versions"]) == 8  # type: ignore[arg-type]
    finally:
        store.close()


def test_a_policy_without_patch_still_merges_metadata(vault: Vault) -> None:
    """A token whose policy predates `patch` (create/read/update/list) falls back to
    read-merge-write: other keys and the operator's max_versions still survive."""
    policy = f'path "{vault.mount}/*" {{ capabilities = ["create","read","update","list"] }}'
    vault.api("PUT", "sys/policies/acl/no-patch", json={"policy": policy}).raise_for_status()
    token = vault.api(
        "POST", "auth/token/create", json={"policies": ["no-patch"], "ttl": "10m"}
    ).json()["auth"]["client_token"]
    conn = VaultConnection(addr=vault.server.addr, auth=TokenAuth(Secret(token)))
    store = HvacKvStore(conn, mount=vault.mount, max_versions=5)
    try:
        store.write("zpa/T/a", DATA, cas=0, custom_metadata={**META, "owner_team": "netops"})
        vault.bao("kv", "metadata", "put", "-max-versions=50", f"{vault.mount}/zpa/T/a")
        store.write_metadata("zpa/T/a", {"usage_count": "3"}, remove=("managed_by",))
        meta = vault.metadata("zpa/T/a")
        assert meta["max_versions"] == 50
        assert meta["custom_metadata"] == {
            "usage_count": "3",
            "owner_team": "netops",
            "synced_version": "1",
        }
    finally:
        store.close()
