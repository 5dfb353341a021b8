"""Model-based (stateful) tests of provisioning (issue 22): the real ProvisionStep, run_once and
rotate_once (provisioning and rotation share one journal per group) against the in-memory ZPA
and KV store of tests/test_rotation_model.py, which fail, lose responses, delay writes and crash
at any call, driven by two daemon replicas (a leader lease that changes hands) and a CLI.

The world: groups with no key at all (Alpha, Bravo), one with only a disabled key (Charlie), one
whose only key, served by Vault, is used up (Delta), and a keyless group (Foxtrot) whose name
another group (Golf, with a key of its own) takes now and then, so paths change hands under a
provisioning in flight. Provisioning is on for every group name but Golf.

After every step, against what ZPA and Vault hold:
- I1 vault-zpa never deletes or disables a key Vault serves; it removes only a key a rotation
  is retiring or a duplicate its journal shuns (provisioning itself only the latter).
- I2 every key vault-zpa created still in ZPA and usable is served, or named by its own group's
  in-flight journal; a key is created only under its group's journaled intent of that name.
- I3 per group, at most one created key is in flight (created, usable, not yet served).
- I4 a replica issues no write while it is not the lease holder.
- No data write lands on a path holding another group's secret.
At the end the faults stop and a few clean runs must converge: every group served an eligible
key of its own, exactly one provisioned key left per group (duplicates withdrawn), no journal
in flight.
"""

from __future__ import annotations

import os
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.test_rotation_model import (  # noqa: F401 - quiet is an autouse fixture
    Crash,
    FakeZpa,
    Faults,
    FaultyKv,
    World,
    quiet,
)
from vault_zpa.errors import (
    VaultUnavailable,
    VaultZpaError,
    ZpaApiError,
    ZpaOutcomeUnknown,
    ZpaUnavailable,
)
from vault_zpa.model import AssociationType, ProvisioningKey, Report, StoredSecret, ZpaGroup
from vault_zpa.provision import Provisioner, ProvisionPolicy, ProvisionSettings, ProvisionStep
from vault_zpa.reconcile import TypeRule
from vault_zpa.rotation import (
    Journal,
    RotationPolicy,
    RotationSettings,
    Rotator,
    State,
    read_journal,
    read_journals,
)
from vault_zpa.sync import SyncOptions, WarmState, rotate_once, run_once

CONN = AssociationType.CONNECTOR_GRP
PREFIX = "zpa"
GRACE = 60.0
TAKEOVER = 45.0  # another process's open attempt is left alone this long
NAMES = {
    "g1": "Alpha",  # no key
    "g2": "Bravo",  # no key
    "g3": "Charlie",  # only a disabled key
    "g4": "Delta",  # only a used-up key, which Vault serves
    "g6": "Foxtrot",  # no key; Golf takes its name now and then
    "g7": "Golf",  # a key of its own; not provisioned under this name
}
STARTS_KEYLESS = ("g1", "g2", "g3", "g4", "g6")
ROTATED = ("Alpha", "Bravo", "Charlie", "Delta")  # rotation on (per group), and requested
# Default (10 s) for `make unit`; the reliability suite's figure for a long run.
EXAMPLES = int(os.environ.get("VAULT_ZPA_PROVISION_MODEL_EXAMPLES", "120"))

RULES = {CONN: TypeRule(lease_seconds=300)}
POLICY = RotationPolicy(
    enabled=True,
    after=300.0,
    grace=GRACE,
    backoff=1.0,
    max_failures=1000,
    name_template="r-{group}-{timestamp}",
)
ROTATION = RotationSettings(
    per_group={(CONN, name): POLICY for name in ROTATED}, max_per_run=10, takeover=TAKEOVER
)
PROVISION = ProvisionSettings(
    policies={
        CONN: ProvisionPolicy(
            enabled=True,
            max_usage=10,
            name_template="p-{group}-{timestamp}",
            groups=frozenset(NAMES.values()) - {"Golf"},
        )
    },
    max_per_run=10,
)
OPTIONS = SyncOptions(
    association_types=(CONN,),
    prefix=PREFIX,
    rules=dict(RULES),
    provisions=PROVISION.covers,
)
PLAIN = SyncOptions(association_types=(CONN,), prefix=PREFIX, rules=dict(RULES))

KINDS = (
    "kv_read",  # on the run's own thread (its decisions and steps)
    "kv_readback",  # the sync's read-back, on a thread of its own
    "kv_write",
    "kv_meta",
    "zpa_list",
    "zpa_groups",
    "zpa_cert",
    "zpa_get",
    "zpa_find",
    "zpa_create",
    "zpa_remove",
)
FAULTS = ("fail", "lost", "delay", "crash_before", "crash_after")
# Where another process's whole run may slip in: calls made on the run's own thread only (the
# listing and the read-back run on threads of their own).
INTERRUPTS = ("kv_read", "kv_write", "zpa_get", "zpa_find", "zpa_create", "zpa_remove")
ACTORS = st.sampled_from(["A", "B", "CLI"])
PAIRS = st.sampled_from([("A", "CLI"), ("CLI", "A"), ("CLI", "CLI"), ("A", "B"), ("B", "A")])

# Writes and creates are where the promises are won or lost: they get most of the faults.
fault_plans = st.dictionaries(
    st.tuples(st.sampled_from(("kv_write",) * 4 + ("zpa_create",) * 2 + KINDS), st.integers(0, 9)),
    st.sampled_from(FAULTS),
    max_size=3,
)


@dataclass
class Recorded(Faults):
    """Faults that remember which of them fired (a key's withdrawal may fail only then)."""

    fired: list[str] = field(default_factory=list)

    def next(self, kind: str, allowed: Collection[str]) -> str | None:
        fault = super().next(kind, allowed)
        if fault is not None:
            self.fired.append(f"{kind}:{fault}")
        return fault


@dataclass
class ProvisionWorld(World):
    """World with named groups that can be renamed, and what provisioning's checks need."""

    names: dict[str, str] = field(default_factory=lambda: dict(NAMES))
    # key id -> (the faults of the run that created it, how many had fired before the create)
    made_in: dict[str, tuple[Recorded, int]] = field(default_factory=dict)
    used_up: set[str] = field(default_factory=set)  # keys connectors used up (nobody removed)
    renamed: bool = False  # Golf took Foxtrot's name at least once
    made_names: dict[str, str] = field(default_factory=dict)  # every created name -> group id

    def path_of(self, group_id: str) -> str:
        return f"{PREFIX}/{CONN.value}/{self.names[group_id]}"

    def served(self) -> dict[str, str]:
        """key id served -> path, for every secret under the type's folder (stale ones too)."""
        out = {}
        for path in self.kv.list_tree(f"{PREFIX}/{CONN.value}"):
            secret = self.kv.read(path)
            if secret is not None and secret.data is not None and "key_id" in secret.data:
                out[secret.data["key_id"]] = path
        return out

    def key(self, key_id: str) -> ProvisioningKey:
        raw = self.keys[key_id]
        return ProvisioningKey(
            id=key_id,
            name=raw["name"],
            association_type=CONN,
            key=_secret(key_id),
            group_id=raw["group_id"],
            group_name=self.names[raw["group_id"]],
            enrollment_cert_id="7",
            enrollment_cert_name="Connector",
            max_usage=raw["max_usage"],
            usage_count=raw["usage"],
            enabled=raw["enabled"],
            creation_time=raw["created"],
            modified_time=raw["created"],
        )

    def landed(self, path: str, before: StoredSecret | None, data: Mapping[str, str]) -> None:
        super().landed(path, before, data)
        if not path.startswith(f"{PREFIX}/{CONN.value}/"):
            return
        held = (before.data or {}).get("group_id") if before is not None else None
        if held and held != data.get("group_id"):
            self.violations.append(
                f"X: {path} held group {held}'s secret; group {data.get('group_id')}'s key "
                "was written over it"
            )

    def duplicate(self, key_id: str) -> bool:
        """Another key vault-zpa created carries this one's (journaled, unique) name."""
        name = self.keys[key_id]["name"]
        return any(
            k != key_id and raw["name"] == name
            for k, raw in self.keys.items()
            if k in self.created_by_us
        )

    def names_made(self, group_id: str) -> set[str]:
        return {n for n, g in self.made_names.items() if g == group_id}

    def stranded(self, key_id: str) -> bool:
        """A duplicate whose run met a fault after creating it: its withdrawal may have failed
        (logged for a person, `Rotator._withdraw`). Any other key must be withdrawn."""
        if key_id not in self.made_in or not self.duplicate(key_id):
            return False
        faults, before = self.made_in[key_id]
        return len(faults.fired) > before


def _secret(key_id: str) -> Any:
    from vault_zpa.masking import Secret

    return Secret(f"3|key-{key_id}")


class ProvisionZpa(FakeZpa):
    """FakeZpa with groups, enrollment certificates, faults on every call, and the checks a
    create and a removal must pass at the moment they happen."""

    world: ProvisionWorld

    def __init__(self, world: ProvisionWorld, faults: Recorded) -> None:
        super().__init__(world, faults)
        self.recorded = faults

    def list_provisioning_keys(self, association_type: AssociationType) -> list[ProvisioningKey]:
        self._fault("zpa_list", ("fail",))
        world = self.world
        return [world.key(i) for i in sorted(world.keys, key=int)]

    def list_groups(self, association_type: AssociationType) -> list[ZpaGroup]:
        self._fault("zpa_groups", ("fail",))
        return [ZpaGroup(g, n, association_type) for g, n in sorted(self.world.names.items())]

    def find_enrollment_cert(self, name: str) -> dict[str, Any] | None:
        self._fault("zpa_cert", ("fail",))
        return {"id": "7", "name": name} if name == "Connector" else None

    def get_provisioning_key(
        self, association_type: AssociationType, key_id: str
    ) -> ProvisioningKey:
        self._fault("zpa_get", ("fail",))
        return super().get_provisioning_key(association_type, key_id)

    def create_provisioning_key(
        self,
        association_type: AssociationType,
        *,
        name: str,
        group_id: str,
        enrollment_cert_id: str,
        max_usage: int,
        enabled: bool = True,
    ) -> ProvisioningKey:
        before = len(self.recorded.fired)
        fault = self._fault("zpa_create", ("fail", "lost", "crash_before", "crash_after"))
        world = self.world
        journal = read_journal(world.kv, PREFIX, association_type, group_id)
        kind = "provision" if name.startswith("p-") else "rotation"
        # The name is journaled (INTENT) before the create. A process whose open attempt was
        # taken over (it took longer than `takeover`) may create after the journal moved on:
        # the name is still the journal's, and that process withdraws its key.
        if not (journal.new_name == name and journal.kind == kind):
            world.violations.append(
                f"I2: {kind} key {name!r} of {group_id} created without its journaled intent "
                f"(journal: {journal.state.value}, {journal.kind}, {journal.new_name!r})"
            )
        if enrollment_cert_id != "7" or max_usage != 10:
            world.violations.append(f"created {name!r} with cert {enrollment_cert_id!r}")
        key_id = world.add_key(group_id, name)
        world.created_by_us[key_id] = group_id
        world.made_in[key_id] = (self.recorded, before)
        world.made_names[name] = group_id
        if fault == "lost":
            raise ZpaOutcomeUnknown("ZPA create: connection dropped after sending (model)")
        if fault == "crash_after":
            raise Crash
        return world.key(key_id)

    def _remove(self, key_id: str, how: str) -> None:
        fault = self._fault("zpa_remove", ("fail", "lost", "crash_before", "crash_after"))
        world = self.world
        if key_id not in world.keys:
            raise ZpaApiError(endpoint="remove", status=400, zpa_id="resource.not.found")
        raw = world.keys[key_id]
        journal = read_journal(world.kv, PREFIX, CONN, raw["group_id"])
        retiring = journal.state is State.RETIRING and key_id == journal.old_id
        withdrawn = raw["name"] == journal.new_name and key_id != journal.new_id
        if not (retiring or withdrawn) or (withdrawn and key_id not in world.created_by_us):
            world.violations.append(
                f"I1: removed key {key_id} ({raw['name']}), neither the key a rotation retires "
                f"nor a duplicate its journal shuns (journal {journal})"
            )
        world.removing(key_id)
        if how == "delete":
            del world.keys[key_id]
        else:
            raw["enabled"] = False
        if fault == "lost":
            raise ZpaUnavailable("ZPA delete: connection dropped after sending (model)")
        if fault == "crash_after":
            raise Crash


class ProvisionKv(FaultyKv):
    """FaultyKv whose reads on the run's own thread and on the read-back thread are counted
    apart, so a fault plan (and an interrupt) names the same call in every replay."""

    def read(self, path: str) -> StoredSecret | None:
        own = threading.current_thread() is threading.main_thread()
        if self.faults.next("kv_read" if own else "kv_readback", ("fail",)) == "fail":
            raise VaultUnavailable("Vault read timed out (model)")
        return self.world.kv.read(path)


class ProvisionModel(RuleBasedStateMachine):
    """Two daemon replicas (A, B) and a CLI, all real vault-zpa code, over a faulty world."""

    provisioner: type[Provisioner] = Provisioner
    steps = 0  # runs driven, over every example
    faults_injected = 0
    stranded = 0  # duplicates left for a person (their run's withdrawal met a fault)

    def __init__(self) -> None:
        super().__init__()
        self.world = ProvisionWorld()
        self.warm = {"A": WarmState(), "B": WarmState()}
        self.incarnation = {"A": 0, "B": 0, "CLI": 0}

    @initialize()
    def seed(self) -> None:
        """Charlie has a disabled key; Delta's key is in Vault and then used up; Golf's in
        Vault. An earlier vault-zpa, provisioning off, wrote what is there."""
        world = self.world
        world.keys[world.add_key("g3", "Charlie-first")]["enabled"] = False
        delta = world.add_key("g4", "Delta-first")
        world.add_key("g7", "Golf-first")
        report = run_once(
            source=ProvisionZpa(world, Recorded()),
            store=ProvisionKv(world, Recorded(), "CLI"),
            options=PLAIN,
            now=self._now,
        )
        assert not report.failed, report
        world.keys[delta]["usage"] = world.keys[delta]["max_usage"]
        assert set(world.served()) == {delta, "102"}

    # -- plumbing -------------------------------------------------------------------------

    def _guard(self, actor: str) -> Callable[[], int | None] | None:
        if actor == "CLI":
            return None
        return lambda: self.world.fence if self.world.holder == actor else None

    def _now(self) -> datetime:
        return self.world.now

    def _tag(self) -> str:
        return f"t{next(self.world.ids)}"  # deterministic, for replays

    def _step(self, actor: str, zpa: ProvisionZpa, store: ProvisionKv) -> ProvisionStep:
        """The sync's provisioning step as the daemon and the CLI build it, with this model's
        process identity (owner) and deterministic name tags."""
        step = ProvisionStep(
            zpa=zpa,
            store=store,
            prefix=PREFIX,
            settings=PROVISION,
            rules=RULES,
            guard=self._guard(actor),
            now=self._now,
            takeover=TAKEOVER,
        )
        step.provisioner = self.provisioner(
            certs=step._cert,
            zpa=zpa,
            store=store,
            prefix=PREFIX,
            now=self._now,
            writer=self._guard(actor),
            rules=RULES,
            owner=zpa.recorded.owner,
            takeover=TAKEOVER,
            tag=self._tag,
        )
        return step

    def _sync(self, actor: str, faults: Recorded) -> Report:
        zpa, store = ProvisionZpa(self.world, faults), ProvisionKv(self.world, faults, actor)
        return run_once(
            source=zpa,
            store=store,
            options=OPTIONS,
            now=self._now,
            warm=self.warm.get(actor),
            guard=self._guard(actor),
            provisioner=self._step(actor, zpa, store),
        )

    def _rotate(
        self, actor: str, faults: Recorded, requested: bool | Collection[str] = False
    ) -> None:
        """A sync with provisioning, then rotation, as the daemon's cycle (or `vault-zpa
        rotate`) runs them."""
        zpa, store = ProvisionZpa(self.world, faults), ProvisionKv(self.world, faults, actor)
        warm = self.warm.get(actor)
        report = self._sync(actor, faults)
        if warm is not None and not warm.usable:
            return  # the daemon rotates from what it knows; it knows nothing now
        stored = (
            warm.stored
            if warm is not None
            else {
                p: s
                for p in (i.item.path for i in report.results)
                if (s := self.world.kv.read(p)) is not None
            }
        )
        journals = warm.journals if warm is not None else read_journals(self.world.kv, PREFIX)
        results = rotate_once(
            zpa=zpa,
            store=store,
            prefix=PREFIX,
            items=[r.item for r in report.results],
            stored=stored,
            listings=report.listings,
            rotation=ROTATION,
            journals=journals,
            rules=RULES,
            requested=frozenset(
                (CONN, n) for n in (ROTATED if requested is True else requested or ())
            ),
            now=self._now,
            guard=self._guard(actor),
            rotator=Rotator(
                zpa=zpa,
                store=store,
                prefix=PREFIX,
                now=self._now,
                writer=self._guard(actor),
                rules=RULES,
                owner=faults.owner,
                takeover=TAKEOVER,
                tag=self._tag,
            ),
        )
        if warm is not None and any(r.decision.action in ("start", "resume") for r in results):
            warm.invalidate()

    def _run(
        self,
        actor: str,
        plan: dict[tuple[str, int], str],
        fn: Callable[[Recorded], object],
        interrupt: tuple[str, int, Callable[[], None]] | None = None,
    ) -> None:
        type(self).steps += 1
        type(self).faults_injected += len(plan)
        if actor == "CLI":
            self.incarnation[actor] += 1  # every CLI run is a process of its own
        owner = f"{actor}-{self.incarnation[actor]}"
        try:
            fn(Recorded(plan, interrupt=interrupt, owner=owner))
        except Crash:
            if actor in self.warm:
                self.warm[actor] = WarmState()  # a restarted process remembers nothing
            self.incarnation[actor] += 1  # ... and is another process
        except VaultZpaError:
            if actor in self.warm:
                self.warm[actor].invalidate()

    # -- rules ----------------------------------------------------------------------------

    @rule(actor=ACTORS, plan=fault_plans)
    def sync(self, actor: str, plan: dict[tuple[str, int], str]) -> None:
        self._run(actor, plan, lambda f: self._sync(actor, f))

    @rule(actor=ACTORS, plan=fault_plans, requested=st.booleans())
    def sync_and_rotate(
        self, actor: str, plan: dict[tuple[str, int], str], requested: bool
    ) -> None:
        self._run(actor, plan, lambda f: self._rotate(actor, f, requested))

    @rule(
        pair=PAIRS,
        kind=st.sampled_from(INTERRUPTS),
        nth=st.integers(0, 9),
        plan=fault_plans,
        slow=st.booleans(),
        lease_moves=st.booleans(),
        rotate=st.booleans(),
    )
    def run_concurrently(
        self,
        pair: tuple[str, str],
        kind: str,
        nth: int,
        plan: dict[tuple[str, int], str],
        slow: bool,
        lease_moves: bool,
        rotate: bool,
    ) -> None:
        """Two processes at once: the second runs whole between two calls of the first (a
        replica, a deposed leader or a CLI racing another). `slow`: the first's call took
        longer than the takeover wait, so the second may claim its open attempt; `lease_moves`:
        the lease changes hands first."""
        first, second = pair

        def other() -> None:
            if slow:
                self.world.now += timedelta(seconds=TAKEOVER + 1)
            if lease_moves:
                self.leadership_moves()
            self._run(second, {}, lambda g: self._rotate(second, g, False))

        def run(f: Recorded) -> None:
            if rotate:
                self._rotate(first, f, False)
            else:
                self._sync(first, f)

        self._run(first, plan, run, (kind, nth, other))

    @rule(seconds=st.sampled_from([1, 30, int(TAKEOVER) + 1, int(GRACE) + 1, 301]))
    def time_passes(self, seconds: int) -> None:
        self.world.now += timedelta(seconds=seconds)

    @rule(data=st.data())
    def late_write_lands(self, data: st.DataObject) -> None:
        if self.world.delayed:
            index = data.draw(st.integers(0, len(self.world.delayed) - 1))
            self.world.delayed.pop(index)()

    @rule()
    def leadership_moves(self) -> None:
        self.world.holder = "B" if self.world.holder == "A" else "A"
        self.world.fence += 1

    @rule(data=st.data())
    def connectors_enroll(self, data: st.DataObject) -> None:
        """Connectors use keys up (a used-up key is not eligible: the group needs another)."""
        if self.world.keys:
            key_id = data.draw(st.sampled_from(sorted(self.world.keys, key=int)))
            raw = self.world.keys[key_id]
            raw["usage"] = min(raw["max_usage"], raw["usage"] + data.draw(st.integers(1, 10)))
            if raw["usage"] >= raw["max_usage"]:
                self.world.used_up.add(key_id)

    @rule()
    def golf_renamed(self) -> None:
        """Golf takes the name of keyless Foxtrot (whose path provisioning may be writing), or
        gives it back: a path changes hands between two live groups."""
        names = self.world.names
        names["g7"] = "Foxtrot" if names["g7"] == "Golf" else "Golf"
        self.world.renamed = True

    # -- the promises ---------------------------------------------------------------------

    @invariant()
    def promises_hold(self) -> None:
        world = self.world
        assert not world.violations, world.violations
        served = world.served()
        journals = read_journals(world.kv, PREFIX)
        in_flight: dict[str, list[str]] = defaultdict(list)
        for key_id, group_id in world.created_by_us.items():
            if key_id not in world.keys or key_id in world.removed_by_us:
                continue
            if not world.key(key_id).eligible or key_id in served:
                continue  # a used-up key enrolls nothing; a served one is where it belongs
            journal = journals.get((CONN, group_id), Journal())
            name = world.keys[key_id]["name"]
            if journal.in_flight and key_id == journal.old_id:
                continue  # a rotation's old key, within its grace
            if key_id in journal.abandoned or (
                key_id == journal.old_id and journal.abandoned and key_id not in journal.retired
            ):
                continue  # a given-up rotation's keys (rotation.py), recorded for a person
            if world.stranded(key_id):
                type(self).stranded += 1
                continue
            named = journal.in_flight and name == journal.new_name
            assert named, (
                f"I2: key {key_id} ({name}) of {group_id} is orphaned: usable, not served, not "
                f"named by its group's in-flight journal ({journal})"
            )
            in_flight[group_id].append(key_id)
        for group_id, keys in in_flight.items():
            assert len(keys) <= 1, f"I3: {len(keys)} created keys in flight for {group_id}: {keys}"

    def teardown(self) -> None:
        """Faults stop, late writes land, the renamed group gets its name back, time passes
        beyond every backoff and grace: a few clean runs converge."""
        world = self.world
        for late in world.delayed:
            late()
        world.delayed.clear()
        world.names = dict(NAMES)
        for round_ in range(8):
            self._clean_round(first=round_ == 0)
            if not any(j.in_flight for j in read_journals(world.kv, PREFIX).values()):
                break
        self.promises_hold()
        journals = read_journals(world.kv, PREFIX)
        for group_id in STARTS_KEYLESS:
            path = world.path_of(group_id)
            secret = world.kv.read(path)
            journal = journals.get((CONN, group_id), Journal())
            held = (secret.data or {}).get("group_id") if secret is not None else None
            if group_id == "g6" and held == "g7":
                # Golf, named Foxtrot for a while, got a key written there: the path holds a
                # live group's secret and is not Foxtrot's to write (a person frees it).
                assert world.renamed
                assert not journal.in_flight or "g7" in journal.last_error, journal
                continue
            assert secret is not None, f"{path}: nothing served"
            assert secret.data is not None, f"{path}: nothing served"
            key_id = secret.data["key_id"]
            assert held == group_id, f"{path} serves group {held}'s key"
            assert key_id in world.keys, f"{path} serves key {key_id}, which ZPA does not have"
            assert world.key(key_id).eligible, f"{path} serves key {key_id}, not eligible"
            assert not journal.in_flight, f"{path}: journal still in flight: {journal}"
            ours = [
                k
                for k, g in world.created_by_us.items()
                if g == group_id and k in world.keys and not world.stranded(k)
            ]
            usable = [k for k in ours if world.key(k).eligible]
            assert usable == [key_id], (
                f"{path}: usable keys vault-zpa made {usable}, served {key_id}"
            )
            # Exactly one provisioned key left (duplicates withdrawn), not counting keys
            # connectors used up; none or one once a rotation replaced it.
            provisioned = [
                k for k in ours if world.keys[k]["name"].startswith("p-") and k not in world.used_up
            ]
            rotated = any(n.startswith("r-") for n in world.names_made(group_id))
            assert len(provisioned) == 1 or (rotated and not provisioned), (
                f"{path}: provisioned keys left in ZPA: {provisioned} (rotated: {rotated})"
            )
        world.kv.close()

    def _clean_round(self, first: bool) -> None:
        """Past every backoff, takeover and grace (the first time past every lease too, so the
        rotations due run in step); then the CLI syncs and rotates, and asks again for the
        rotations a failure left backing off."""
        world = self.world
        journals = read_journals(world.kv, PREFIX).values()
        waits = [_parse(j.retry_at) for j in journals if j.retry_at]
        step = timedelta(seconds=(POLICY.after or 0) + 1 if first else GRACE + 1)
        world.now = max([world.now + step, *waits]) + timedelta(seconds=1)
        self._rotate("CLI", Recorded())
        stuck = [
            world.names[group_id]
            for (_, group_id), j in read_journals(world.kv, PREFIX).items()
            if j.in_flight and j.kind == "rotation" and j.state is not State.WRITTEN
        ]
        self._rotate("CLI", Recorded(), requested=[n for n in stuck if n in ROTATED])


def _parse(stamp: str) -> datetime:
    from vault_zpa.rotation import _parse as parse

    return parse(stamp)


def _settings(examples: int, steps: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        derandomize=True,  # the same histories in every CI run
        database=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=[HealthCheck.too_slow],
    )


def test_provisioning_promises_hold_under_faults_and_competing_writers() -> None:
    """Syncs that provision, rotations, crashes, lost creates and writes, late writes, lease
    changes, takeovers and renames: I1-I4 hold after every step, and clean runs converge on one
    provisioned key per group."""
    run_state_machine_as_test(ProvisionModel, settings=_settings(EXAMPLES, 40))


# ---- the model can fail: deliberately broken provisioners ---------------------------------


class NoRereadProvisioner(Provisioner):
    """Starts from the plan alone: does not look at the group's path after reading the journal,
    so a run planned before another run provisioned the group provisions it a second time."""

    def _usable_served(self, target: Any) -> str | None:
        return None


class NoRereadModel(ProvisionModel):
    provisioner = NoRereadProvisioner


class NoWithdrawProvisioner(Provisioner):
    """Resumes another process's open attempt at once (no takeover wait), so two runs create a
    key for one intent, and the loser keeps its key."""

    def _claim(self, path: str, journal: Journal) -> Journal:
        return journal

    def _withdraw(self, *args: Any, **kwargs: Any) -> None:
        pass


class NoWithdrawModel(ProvisionModel):
    provisioner = NoWithdrawProvisioner


def violations(model: type[ProvisionModel], examples: int) -> str:
    """Run the machine; the messages of every failure it finds ('' when it finds none)."""
    try:
        run_state_machine_as_test(model, settings=_settings(examples, 30))
    except AssertionError as exc:
        return str(exc)
    except BaseExceptionGroup as group:  # hypothesis found several distinct failures
        return " | ".join(str(e) for e in group.exceptions)
    return ""


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    ("model", "promise"), [(NoRereadModel, "I2|I3"), (NoWithdrawModel, "I2|I3")]
)
def test_the_model_finds_a_broken_provisioner(model: type[ProvisionModel], promise: str) -> None:
    """The same machine, run against deliberately broken provisioners, reports the promise each
    breaks: the checks can fail."""
    found = violations(model, 600)
    assert re.search(promise, found), found
