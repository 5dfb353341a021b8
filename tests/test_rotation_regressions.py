"""Issue 14's rotation findings, each replayed end to end on real OpenBao and the simulator:
a failed write of the new key, a journal wiped by a daemon's metadata write, two rotations at
once, a key_name_pattern the rotated keys would not match, one group's failure stopping others."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, DaemonProc, Vault, clean_env, run_cli, syncs, wait_for
from tests.test_rotation import group_keys, journal_of, journal_path_of, policy_file
from vault_zpa import build
from vault_zpa.config import load
from vault_zpa.errors import CasConflict, VaultUnavailable
from vault_zpa.masking import Secret
from vault_zpa.model import AssociationType
from vault_zpa.rotation import RotationPolicy, Rotator
from vault_zpa.testing.zpa_simulator import ZpaSimulator
from vault_zpa.vault.auth import TokenAuth
from vault_zpa.vault.connection import VaultConnection
from vault_zpa.vault.kv import HvacKvStore

CONN = AssociationType.CONNECTOR_GRP


class FailingDataWrite(HvacKvStore):
    """Real OpenBao, except that writes of one path's data fail as a 503 past the budget would."""

    def __init__(self, *args: object, fail_path: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fail_path = fail_path

    def write(
        self,
        path: str,
        data: Mapping[str, str],
        *,
        cas: int,
        custom_metadata: Mapping[str, str],
        remove: Collection[str] = (),
    ) -> int:
        if path == self.fail_path:
            raise VaultUnavailable("Vault answered 503 past the retry budget (test)")
        return super().write(path, data, cas=cas, custom_metadata=custom_metadata, remove=remove)


def resume_until_idle(args: tuple[str, ...], env: dict[str, str], vault: Vault, path: str) -> None:
    """Run `rotate` again (grace 1 s) until the group's journal is back to idle."""
    for _ in range(3):
        resumed = run_cli(*args, "--grace", "1s", env=env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        if journal_of(vault, path)["state"] == "idle":
            return
        time.sleep(1.1)
    raise AssertionError(f"{path}: rotation did not finish: {journal_of(vault, path)}")


def test_failed_write_of_the_new_key_never_removes_the_served_key(
    sim: ZpaSimulator, vault: Vault
) -> None:
    """Item 1: the new key's write fails; later runs, past the grace, must not delete the key
    Vault still serves, and once Vault works the rotation completes."""
    env = clean_env(sim.env(), vault.env)
    assert run_cli("sync", env=env).returncode == 0
    group_id, group = next(iter(sim.groups["CONNECTOR_GRP"].items()))
    [old] = group_keys(sim, group_id)
    path = f"zpa/CONNECTOR_GRP/{group['name']}"
    conn = VaultConnection(addr=vault.server.addr, auth=TokenAuth(Secret(vault.server.root_token)))
    broken = FailingDataWrite(conn, mount=vault.mount, fail_path=path)
    zpa = build.zpa_client(load(path=None, environ={**sim.env(), **vault.env}).zpa())
    policy = RotationPolicy(enabled=True, grace=0.0)
    try:
        rotator = Rotator(zpa=zpa, store=broken, prefix="zpa")
        first = rotator.run(path, policy, reason="test", requested=True)
        assert first.error is not None
        assert "503" in first.error
        for _ in range(3):  # later runs, the grace long over, Vault still failing that write
            again = rotator.run(path, policy, reason="test", requested=True)
            assert again.error is not None
        assert vault.kv_get(path)["data"]["data"]["key_id"] == old["id"]  # type: ignore[index]
        assert str(old["id"]) in {str(k["id"]) for k in group_keys(sim, group_id)}
        assert sim.accepts(vault.kv_get(path)["data"]["data"]["provisioning_key"])  # type: ignore[index]
        assert journal_of(vault, path)["state"] == "created"  # not "written": the write failed
        assert len(group_keys(sim, group_id)) == 2  # one new key, found again, not re-created
        healthy = Rotator(zpa=zpa, store=HvacKvStore(conn, mount=vault.mount), prefix="zpa")
        done = healthy.run(path, policy, reason="test", requested=True)
        assert done.error is None, done.error
        assert done.state is None
        [new] = group_keys(sim, group_id)
        assert vault.kv_get(path)["data"]["data"]["key_id"] == new["id"]  # type: ignore[index]
    finally:
        conn.close()
        zpa.close()


def test_daemon_metadata_write_cannot_wipe_an_interrupted_cli_rotation(
    sim: ZpaSimulator,
    vault: Vault,
    start_daemon: Callable[..., DaemonProc],
) -> None:
    """Item 2a: a CLI rotation dies after creating its key; the daemon's next (warm) run writes
    metadata for that group; resuming still finishes that rotation: the new key in Vault, the
    old one deleted, exactly one new key."""
    env = clean_env(sim.env(), vault.env)
    d = start_daemon(env)
    wait_for(lambda: syncs(d) == 1, what="first sync")
    group_id, group = next(iter(sim.groups["CONNECTOR_GRP"].items()))
    [old] = group_keys(sim, group_id)
    path = f"zpa/CONNECTOR_GRP/{group['name']}"
    args = ("rotate", "--association-type", "CONNECTOR_GRP", "--group", str(group["name"]))
    killed = run_cli(*args, "--grace", "1s", env={**env, "VAULT_ZPA_FAULT_KILL_AT": "created"})
    assert killed.returncode == -9
    sim.enroll("CONNECTOR_GRP", str(old["id"]), 1)  # usage changes: the daemon writes metadata
    httpx.post(d.url + "/v1/sync")
    wait_for(lambda: syncs(d) == 2, what="second sync")
    # The daemon wrote this group in between (the new key is the newest eligible one).
    assert d.metric("vault_zpa_items_total", action="update", outcome="done") == 1
    assert journal_of(vault, path)["state"] == "created"
    assert d.stop() == 0
    resume_until_idle(args, env, vault, path)
    [new] = group_keys(sim, group_id)
    assert new["id"] != old["id"]
    assert vault.kv_get(path)["data"]["data"]["key_id"] == new["id"]  # type: ignore[index]


def test_two_rotations_at_once_create_one_key(sim: ZpaSimulator, vault: Vault) -> None:
    """Item 6: two `rotate` runs for one group started together: one new key in ZPA, and it is
    the key Vault holds and the journal names."""
    env = clean_env(sim.env(), vault.env)
    assert run_cli("sync", env=env).returncode == 0
    group_id, group = next(iter(sim.groups["CONNECTOR_GRP"].items()))
    args = [
        sys.executable,
        "-m",
        "vault_zpa",
        "rotate",
        "--association-type",
        "CONNECTOR_GRP",
        "--group",
        str(group["name"]),
        "--grace",
        "1h",
    ]
    procs = [
        subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    path = f"zpa/CONNECTOR_GRP/{group['name']}"
    keys = group_keys(sim, group_id)
    assert len(keys) == 2, (keys, outputs)  # the old one (in its grace) and exactly one new
    journal = journal_of(vault, path)
    assert vault.kv_get(path)["data"]["data"]["key_id"] == journal["new_id"]  # type: ignore[index]
    assert journal["new_id"] in {str(k["id"]) for k in keys}


def test_key_name_pattern_that_rotated_keys_miss_is_refused(
    sim: ZpaSimulator, vault: Vault, tmp_path: Path
) -> None:
    """Item 4: key_name_pattern '.*-key-.*' with the default name template would make a
    create/delete loop: refused at start-up with one line, exit 2, nothing created."""
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_KEY_NAME_PATTERN": ".*-key-.*"})
    config = policy_file(tmp_path, after='"30d"')
    before = len(sim.keys["CONNECTOR_GRP"])
    for command in (("sync",), ("rotate", "--all-due"), ("status",)):
        result = run_cli(*command, "--config", config, env=env)
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert "key_name_pattern" in lines[0]
        assert "name_template" in lines[0]
    assert len(sim.keys["CONNECTOR_GRP"]) == before


def test_one_groups_broken_journal_does_not_stop_the_others(
    sim: ZpaSimulator, vault: Vault, tmp_path: Path
) -> None:
    """Item 3: one group's rotation cannot run (its journal is unreadable); every other due
    group still rotates, and the run reports the one failure (exit 1)."""
    env = clean_env(sim.env(), vault.env)
    config = policy_file(tmp_path, after='"30d"', grace='"1h"')
    assert run_cli("sync", "--config", config, env=env).returncode == 0
    groups = list(sim.groups["CONNECTOR_GRP"].items())
    bad_name = groups[0][1]["name"]
    canary = "3|canary.example|CANARY-VALUE-IN-A-JOURNAL"
    vault.bao(
        "kv",
        "put",
        f"{vault.mount}/{journal_path_of(vault, f'zpa/CONNECTOR_GRP/{bad_name}')}",
        f"state={canary}",
        "state=exploded",
        "grace=1e400",
    )
    result = run_cli("rotate", "--all-due", "--output", "json", "--config", config, env=env)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    by_group = {r["group_name"]: r for r in report["rotations"]}
    assert by_group[bad_name]["decision"] == "blocked"
    assert "unreadable" in by_group[bad_name]["reason"]
    assert "CANARY" not in result.stdout + result.stderr  # a journal's values are never echoed
    for group_id, group in groups[1:]:
        assert by_group[group["name"]]["error"] is None
        assert len(group_keys(sim, group_id)) == 2  # rotated: new key made, old one in grace


def test_a_deposed_leaders_late_writes_cannot_undo_a_rotation(
    sim: ZpaSimulator, vault: Vault
) -> None:
    """Item 2b: writes a deposed leader prepared before a rotation began land after the new
    leader journaled it (a metadata write from its memory, a data write, a journal write):
    the journal survives, the stale journal write is refused, and the rotation completes."""
    env = clean_env(sim.env(), vault.env)
    assert run_cli("sync", env=env).returncode == 0
    group_id, group = next(iter(sim.groups["CONNECTOR_GRP"].items()))
    [old] = group_keys(sim, group_id)
    path = f"zpa/CONNECTOR_GRP/{group['name']}"
    journal_at = journal_path_of(vault, path)
    conn = VaultConnection(addr=vault.server.addr, auth=TokenAuth(Secret(vault.server.root_token)))
    store = HvacKvStore(conn, mount=vault.mount)
    try:
        stale = store.read(path)
        assert stale is not None
        assert stale.data is not None
        args = ("rotate", "--association-type", "CONNECTOR_GRP", "--group", str(group["name"]))
        killed = run_cli(*args, "--grace", "1s", env={**env, "VAULT_ZPA_FAULT_KILL_AT": "created"})
        assert killed.returncode == -9
        before = journal_of(vault, path)
        # The late writes land now.
        store.write_metadata(path, {**stale.custom_metadata, "usage_count": "0"})
        store.write(path, stale.data, cas=stale.version, custom_metadata=stale.custom_metadata)
        with pytest.raises(CasConflict):
            store.write(journal_at, {"state": "idle"}, cas=0, custom_metadata={})
        assert journal_of(vault, path) == before
        resume_until_idle(args, env, vault, path)
        [new] = group_keys(sim, group_id)
        assert new["id"] != old["id"]
        assert new["id"] == before["new_id"]
        assert vault.kv_get(path)["data"]["data"]["key_id"] == new["id"]  # type: ignore[index]
    finally:
        store.close()


def test_a_new_key_deleted_during_the_grace_gives_the_rotation_up(
    sim: ZpaSimulator, vault: Vault
) -> None:
    """Found by the adversary: the new key is deleted in the console during the grace; the
    rotation must not then delete the old key (the group would have none). It is given up,
    reported (exit 1), and the next sync serves the old key again."""
    env = clean_env(sim.env(), vault.env)
    assert run_cli("sync", env=env).returncode == 0
    group_id, group = next(iter(sim.groups["CONNECTOR_GRP"].items()))
    [old] = group_keys(sim, group_id)
    path = f"zpa/CONNECTOR_GRP/{group['name']}"
    args = ("rotate", "--association-type", "CONNECTOR_GRP", "--group", str(group["name"]))
    assert run_cli(*args, "--grace", "1s", env=env).returncode == 0
    new_id = journal_of(vault, path)["new_id"]
    del sim.keys["CONNECTOR_GRP"][new_id]  # a person deletes it in the console
    time.sleep(1.2)
    resumed = run_cli("rotate", "--all-due", env=env)
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    assert "given up" in resumed.stdout
    assert [k["id"] for k in group_keys(sim, group_id)] == [old["id"]]  # the old key stays
    journal = journal_of(vault, path)
    assert journal["state"] == "idle"
    assert journal["abandoned"] == new_id
    assert run_cli("sync", env=env).returncode == 0
    held = vault.kv_get(path)["data"]["data"]  # type: ignore[index]
    assert held["key_id"] == old["id"]  # type: ignore[index]
    assert sim.accepts(held["provisioning_key"])  # type: ignore[index]


def test_a_group_renamed_mid_rotation_keeps_one_rotation(sim: ZpaSimulator, vault: Vault) -> None:
    """Found by the adversary: a group renamed while its rotation waits out the grace. The
    rotation goes on under the new name (one journal per group id, not per path): no second
    rotation, no second key, and the old key is not removed while the stale path serves it."""
    env = clean_env(sim.env(), vault.env)
    assert run_cli("sync", env=env).returncode == 0
    group_id, group = next(iter(sim.groups["CONNECTOR_GRP"].items()))
    assert len(group_keys(sim, group_id)) == 1
    old_path = f"zpa/CONNECTOR_GRP/{group['name']}"
    rotate = ("rotate", "--association-type", "CONNECTOR_GRP", "--grace", "1s")
    assert run_cli(*rotate, "--group", str(group["name"]), env=env).returncode == 0
    new_id = journal_of(vault, old_path)["new_id"]
    group["name"] = "Renamed"  # in the console; keys show their group's current name
    assert run_cli("sync", env=env).returncode == 0
    new_path = "zpa/CONNECTOR_GRP/Renamed"
    assert vault.kv_get(new_path)["data"]["data"]["key_id"] == new_id  # type: ignore[index]
    time.sleep(1.2)
    again = run_cli(*rotate, "--group", "Renamed", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    keys = {str(k["id"]) for k in group_keys(sim, group_id)}
    assert keys == {new_id}, keys  # the same rotation finished: old key gone, no second key
    assert journal_of(vault, new_path)["state"] == "idle"


def test_a_leader_that_loses_the_lease_mid_create_never_deletes_the_key_a_sync_served() -> None:
    """Found by the Raft cluster soak: replica A journals INTENT and asks ZPA for a new key;
    before the answer arrives A loses the lease, and the new leader's full sync picks up the
    newest key (A's) and writes it to the group's secret. A then cannot journal CREATED and
    used to withdraw (delete) its key: Vault served a deleted key until the takeover (I1).
    Now the key stays (the journal's INTENT still names it), and the next run adopts it."""
    from datetime import timedelta

    from tests.test_daemon_engine import CONN, NOW, PREFIX, FakeZpa
    from vault_zpa.reconcile import TypeRule
    from vault_zpa.rotation import RotationSettings
    from vault_zpa.sync import SyncOptions, inspect, rotate_once, run_once
    from vault_zpa.testing.memory import MemoryKvStore

    zpa = FakeZpa({"1": "A"})
    kv = MemoryKvStore()
    options = SyncOptions(association_types=(CONN,), prefix=PREFIX, rules={CONN: TypeRule()})
    run_once(source=zpa, store=kv, options=options, now=lambda: NOW)
    fence: dict[str, int | None] = {"A": 1}
    create = zpa.create_provisioning_key

    def create_then_lose_the_lease(atype: AssociationType, **kw: object) -> object:
        key = create(atype, **kw)  # type: ignore[arg-type]
        fence["A"] = None  # A's lease lapses while the answer is on its way
        run_once(source=zpa, store=kv, options=options, now=lambda: NOW, guard=lambda: 2)
        return key

    zpa.create_provisioning_key = create_then_lose_the_lease  # type: ignore[method-assign]

    def rotate(guard: Callable[[], int | None], when: object) -> list[object]:
        snap = inspect(source=zpa, store=kv, options=options, now=lambda: when)  # type: ignore[arg-type,return-value]
        return rotate_once(  # type: ignore[return-value]
            zpa=zpa,
            store=kv,
            prefix=PREFIX,
            items=snap.plan.items,
            stored=snap.stored,
            journals=snap.journals,
            listings=snap.listings,
            rotation=RotationSettings(),
            rules=options.rules,
            requested=frozenset({(CONN, "A")}),
            grace=0,
            now=lambda: when,  # type: ignore[arg-type,return-value]
            guard=guard,
        )

    rotate(lambda: fence["A"], NOW)
    served = kv.read(f"{PREFIX}/{CONN.value}/A")
    assert served is not None
    assert served.data is not None
    assert served.data["key_id"] in zpa.keys, "Vault serves a key that was deleted in ZPA"
    zpa.create_provisioning_key = create  # type: ignore[method-assign]
    later = NOW + timedelta(seconds=400)  # past A's takeover window: B resumes the INTENT
    rotate(lambda: 2, later)
    rotate(lambda: 2, later)
    served = kv.read(f"{PREFIX}/{CONN.value}/A")
    assert served is not None
    assert served.data is not None
    assert list(zpa.keys) == [served.data["key_id"]]  # one key: the new one, served
    assert served.data["key_id"] != "100"
    kv.close()


def test_the_sync_never_serves_a_key_named_for_a_rotation_that_has_not_recorded_it() -> None:
    """A key carrying a rotation's journaled name is served only once the journal records it
    as the new key: during INTENT (its create not journaled yet) and as a duplicate made by a
    run that lost the journal, the sync keeps the served key, so withdrawing such a key can
    never take a served key away (I1; the adversary's sequence after the cluster soak)."""
    from tests.test_daemon_engine import CONN, NOW, PREFIX, FakeZpa
    from vault_zpa.reconcile import TypeRule
    from vault_zpa.rotation import Journal, State, journal_path
    from vault_zpa.sync import SyncOptions, run_once
    from vault_zpa.testing.memory import MemoryKvStore

    zpa = FakeZpa({"1": "A"})
    kv = MemoryKvStore()
    options = SyncOptions(association_types=(CONN,), prefix=PREFIX, rules={CONN: TypeRule()})
    path = f"{PREFIX}/{CONN.value}/A"

    def served() -> str:
        secret = kv.read(path)
        assert secret is not None
        assert secret.data is not None
        return secret.data["key_id"]

    run_once(source=zpa, store=kv, options=options, now=lambda: NOW)
    assert served() == "100"
    where = journal_path(PREFIX, CONN, "1")
    intent = Journal(state=State.INTENT, new_name="A-rotated", old_id="100")
    kv.write(where, intent.to_data(), cas=0, custom_metadata={"managed_by": "vault-zpa"})
    zpa.add("1", "A-rotated")  # 101: created, not journaled yet (or by a run that lost it)
    run_once(source=zpa, store=kv, options=options, now=lambda: NOW)
    assert served() == "100"
    created = Journal(state=State.CREATED, new_name="A-rotated", new_id="101", old_id="100")
    kv.write(where, created.to_data(), cas=1, custom_metadata={"managed_by": "vault-zpa"})
    zpa.add("1", "A-rotated")  # 102: a duplicate of the same INTENT, newest of all
    run_once(source=zpa, store=kv, options=options, now=lambda: NOW)
    assert served() == "101"  # the journaled new key, never the unrecorded duplicate
    kv.close()
