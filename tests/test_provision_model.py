"""Model-based (stateful) tests of provisioning (issue 22): the real ProvisionStep, run_once and
rotate_once (provisioning and rotation share one journal per group) against the in-memory ZPA
and KV store of tests/test_rotation_model.py, which fail, lose responses, delay writes and crash
at any call (a create that happens with its response lost, a crash right after a create, a
write landing late), driven by two daemon replicas (a sync that provisions, then rotation, as
Engine runs them; the leader lease changes hands) and a CLI (`vault-zpa sync`, `vault-zpa
rotate`). Runs interleave: one process's whole run slips in between two calls of another's,
optionally after that call took longer than the takeover wait, or after the lease moved.

The world: groups with no key at all (Alpha, Bravo), one with only a disabled key (Charlie), one
whose only key, served by Vault, is used up (Delta), and a keyless group (Foxtrot) whose name
another group (Golf, with a key of its own) takes now and then, so a path changes hands under a
provisioning in flight. Provisioning is on for every group name but Golf; rotation for A-D.
Connectors use keys up, so groups need new keys again (provisioning, or a rotation in flight).

After every step, against what ZPA and Vault hold:
- I1 vault-zpa never deletes or disables a key Vault serves (or served less than the grace ago),
  never serves a key it removed, and removes only a key its rotation is retiring or a duplicate
  its journal shuns (all provisioning ever removes).
- I2 every key vault-zpa made that is still in ZPA and usable is served, or named by its own
  group's in-flight journal (or recorded by a given-up rotation); a key is created only under
  its group's journaled intent of that name.
- I3 per group at most one created key is in flight, and a create by the holder of the open
  attempt never makes a second key of a name ZPA already has (it looked the name up first).
- I4 a replica issues no write while it is not the lease holder.
- No data write lands on a path that holds another group's secret.
Known, documented exceptions are counted, not failed: a duplicate created by a process whose
attempt was taken over while its create was on the way, when that run then met a fault (it
cannot withdraw what it never learnt); a path a renamed live group took (a person frees it); a
rotation whose new key was unusable before it reached Vault (rotation.py). Two bugs outside
provisioning are tolerated behind flags, each with an xfail test: KNOWN_KEPT_KEY_DROPPED and
KNOWN_STALE_OLD_KEY.

The deliberately broken provisioners at the end show the checks can fail.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

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
from vault_zpa.reconcile import Scope, TypeRule
from vault_zpa.rotation import (
    Journal,
    RotationPolicy,
    RotationSettings,
    Rotator,
    State,
    read_journal,
    read_journals,
)
from vault_zpa.sync import SyncOptions, WarmState, inspect, rotate_once, run_once

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
# Histories per run: 300 take about 12 s (`make unit`); set more for a long run (5000 as the
# reliability suite runs the rotation model: VAULT_ZPA_PROVISION_MODEL_EXAMPLES=5000).
EXAMPLES = int(os.environ.get("VAULT_ZPA_PROVISION_MODEL_EXAMPLES", "300"))

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
    "kv_list",
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

# Which call of its kind in a run (a run makes up to ~20 writes, ~15 reads on its own thread and
# a few ZPA calls of each kind; most steps make far fewer).
CALLS = {"kv_write": 19, "kv_read": 15, "kv_readback": 11, "kv_list": 2}


def _call(kinds: tuple[str, ...]) -> st.SearchStrategy[tuple[str, int]]:
    return st.sampled_from(kinds).flatmap(
        lambda kind: st.tuples(st.just(kind), st.integers(0, CALLS.get(kind, 4)))
    )


# Writes and creates are where the promises are won or lost: they get most of the faults.
fault_plans = st.dictionaries(
    _call(("kv_write",) * 4 + ("zpa_create",) * 3 + KINDS), st.sampled_from(FAULTS), max_size=3
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
    late: set[str] = field(default_factory=set)  # keys created after their journal moved on
    displaced: set[str] = field(default_factory=set)  # see KNOWN_STALE_OLD_KEY
    # Old keys given-up rotations kept, whose record a new INTENT replaced: by its kind.
    dropped: dict[str, str] = field(default_factory=dict)
    left: set[str] = field(default_factory=set)  # usable keys left behind, by a known cause
    events: Counter[str] = field(default_factory=Counter)  # what this history exercised

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
        if path.startswith(f"{PREFIX}/_vault-zpa/rotation/"):
            journal = Journal.from_data(0, data)
            earlier = Journal.from_data(0, before.data) if before and before.data else Journal()
            kept = _kept(earlier)
            if kept and journal.state is State.INTENT and journal.old_id != kept:
                self.dropped[kept] = journal.kind  # a new INTENT forgets the kept key
            ended = earlier.state is State.CREATED and not journal.in_flight
            if ended and journal.last_error.startswith("provisioning given up"):
                self.events["provisioning given up (its key unusable before written)"] += 1
        if not path.startswith(f"{PREFIX}/{CONN.value}/"):
            return
        replaced = (before.data or {}).get("key_id") if before is not None else None
        if replaced and replaced != data.get("key_id"):
            journal = read_journal(self.kv, PREFIX, CONN, data.get("group_id", ""))
            rotation = journal.kind == "rotation" and journal.new_id == data.get("key_id")
            if rotation and journal.old_id != replaced:
                self.displaced.add(replaced)  # a rotation wrote over a key it did not replace
        held = (before.data or {}).get("group_id") if before is not None else None
        if held and held != data.get("group_id"):
            self.violations.append(
                f"X: {path} held group {held}'s secret; group {data.get('group_id')}'s key "
                "was written over it"
            )

    def usable_made(self, group_id: str, prefix: str = "") -> list[str]:
        """Usable keys vault-zpa created for the group (provisioned ones: prefix "p-")."""
        return [
            k
            for k, g in self.created_by_us.items()
            if g == group_id
            and k in self.keys
            and self.keys[k]["name"].startswith(prefix)
            and self.key(k).eligible
        ]

    def names_made(self, group_id: str) -> set[str]:
        return {n for n, g in self.made_names.items() if g == group_id}

    def stranded(self, key_id: str) -> bool:
        """A key created after its journal moved on (its process's open attempt was taken over
        while its create was on the way), whose run met a fault at or after the create: that
        run may never have learnt the key's id, or its withdrawal failed (logged for a person,
        `Rotator._withdraw`). The only key the protocol may leave behind; any other must be
        served, journaled or withdrawn."""
        if key_id not in self.late:
            return False
        faults, before = self.made_in[key_id]
        return len(faults.fired) > before


def _kept(journal: Journal) -> str | None:
    """The old key a given-up rotation kept for the sync to serve again (rotation.py)."""
    given_up = not journal.in_flight and journal.new_id in journal.abandoned
    if given_up and journal.old_id and journal.old_id not in journal.retired:
        return journal.old_id
    return None


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
        # I3: this process holds the journal's open attempt, or the create is a late one (its
        # attempt was taken over meanwhile: that process's journal write loses, it withdraws).
        held = (
            journal.state is State.INTENT
            and journal.attempt_open
            and journal.owner == self.recorded.owner
        )
        twins = [k for k, raw in world.keys.items() if raw["name"] == name]
        if held and twins:
            world.violations.append(
                f"I3: a second key for one intent ({name!r}): {twins} is in ZPA, not looked up"
            )
        if enrollment_cert_id != "7" or max_usage != 10:
            world.violations.append(f"created {name!r} with cert {enrollment_cert_id!r}")
        key_id = world.add_key(group_id, name)
        world.created_by_us[key_id] = group_id
        world.made_in[key_id] = (self.recorded, before)
        world.events[f"{kind} key created"] += 1
        if not held:
            world.late.add(key_id)
            world.events["key created after a takeover of its attempt"] += 1
        world.made_names[name] = group_id
        if fault in ("lost", "crash_after"):
            world.events[f"create response lost ({fault})"] += 1
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
        world.events["duplicate withdrawn" if withdrawn else "old key retired"] += 1
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

    def list_tree(self, root: str) -> list[str]:
        if self.faults.next("kv_list", ("fail",)) == "fail":
            raise VaultUnavailable("Vault list timed out (model)")
        return self.world.kv.list_tree(root)

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
    # Groups clean runs could not finish, by known reason (see _left_alone), over every example.
    left_alone: ClassVar[Counter[str]] = Counter()
    # What the histories exercised (provisioned, duplicate created, withdrawn, given up, ...).
    seen: ClassVar[Counter[str]] = Counter()

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
        """A replica's cycle (a sync that provisions, then, from what the sync left in its
        memory, the rotations due or asked for), or the CLI's `vault-zpa rotate` (a plan
        without provisioning, then rotation: `--group` for each requested group, else
        `--all-due`)."""
        names = frozenset(ROTATED if requested is True else requested or ())
        pairs = frozenset((CONN, n) for n in names)
        zpa, store = ProvisionZpa(self.world, faults), ProvisionKv(self.world, faults, actor)
        rotator = Rotator(
            zpa=zpa,
            store=store,
            prefix=PREFIX,
            now=self._now,
            writer=self._guard(actor),
            rules=RULES,
            owner=faults.owner,
            takeover=TAKEOVER,
            tag=self._tag,
        )
        warm = self.warm.get(actor)
        if warm is None:  # cli.rotate
            snap = inspect(
                source=zpa,
                store=store,
                options=SyncOptions(
                    association_types=(CONN,),
                    prefix=PREFIX,
                    rules=dict(RULES),
                    scope=Scope(groups=names),
                    dry_run=True,
                    find_orphans=False,
                ),
                now=self._now,
            )
            rotate_once(
                zpa=zpa,
                store=store,
                prefix=PREFIX,
                items=snap.plan.items,
                stored=snap.stored,
                journals=snap.journals,
                listings=snap.listings,
                rotation=ROTATION,
                rules=RULES,
                requested=pairs,
                now=self._now,
                rotator=rotator,
            )
            return
        report = self._sync(actor, faults)  # Engine.run_cycle, then Engine._rotate
        if not warm.usable:
            return  # the replica rotates from what it knows; it knows nothing now
        results = rotate_once(
            zpa=zpa,
            store=store,
            prefix=PREFIX,
            items=[r.item for r in report.results],
            stored=warm.stored,
            journals=warm.journals,
            listings=report.listings,
            rotation=ROTATION,
            rules=RULES,
            requested=pairs,
            now=self._now,
            guard=self._guard(actor),
            rotator=rotator,
        )
        if any(r.decision.action in ("start", "resume") for r in results):
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
    def rotate(self, actor: str, plan: dict[tuple[str, int], str], requested: bool) -> None:
        """A replica's cycle (sync, then rotation), or the CLI's `vault-zpa rotate`."""
        self._run(actor, plan, lambda f: self._rotate(actor, f, requested))

    @rule(
        pair=PAIRS,
        call=_call(INTERRUPTS),
        plan=fault_plans,
        slow=st.booleans(),
        lease_moves=st.booleans(),
        rotate=st.tuples(st.booleans(), st.booleans()),
    )
    def run_concurrently(
        self,
        pair: tuple[str, str],
        call: tuple[str, int],
        plan: dict[tuple[str, int], str],
        slow: bool,
        lease_moves: bool,
        rotate: tuple[bool, bool],
    ) -> None:
        """Two processes at once: the second runs whole between two calls of the first (a
        replica, a deposed leader or a CLI racing another; each a sync, or a cycle / `vault-zpa
        rotate`). `slow`: the first's call took longer than the takeover wait, so the second
        may claim its open attempt; `lease_moves`: the lease changes hands first."""
        first, second = pair

        def one(actor: str, rotates: bool, f: Recorded) -> None:
            if rotates:
                self._rotate(actor, f, False)
            else:
                self._sync(actor, f)

        def other() -> None:
            if slow:
                self.world.now += timedelta(seconds=TAKEOVER + 1)
            if lease_moves:
                self.leadership_moves()
            self._run(second, {}, lambda g: one(second, rotate[1], g))

        def run(f: Recorded) -> None:
            one(first, rotate[0], f)

        self._run(first, plan, run, (*call, other))

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
        """A key gets used (or used up: not eligible any more): by connectors, or, for a key
        not served yet, as when a person disables it in the console."""
        if self.world.keys:
            key_id = data.draw(st.sampled_from(sorted(self.world.keys, key=int)))
            raw = self.world.keys[key_id]
            raw["usage"] = min(raw["max_usage"], raw["usage"] + data.draw(st.integers(1, 10)))
            if raw["usage"] >= raw["max_usage"]:
                self.world.used_up.add(key_id)

    @rule(data=st.data())
    def connectors_use_up_a_served_key(self, data: st.DataObject) -> None:
        """Connectors enroll with what Vault serves until it is used up: its group needs a new
        key (provisioning, for the groups it covers; a rotation may be in flight)."""
        served = sorted(k for k in self.world.served() if k in self.world.keys)
        if served:
            key_id = data.draw(st.sampled_from(served))
            raw = self.world.keys[key_id]
            raw["usage"] = raw["max_usage"]
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
                world.left.add(key_id)
                continue
            if KNOWN_KEPT_KEY_DROPPED and world.dropped.get(key_id) == "rotation":
                world.left.add(key_id)  # see KNOWN_KEPT_KEY_DROPPED
                continue
            if KNOWN_STALE_OLD_KEY and key_id in world.displaced:
                world.left.add(key_id)  # see KNOWN_STALE_OLD_KEY
                continue
            named = journal.in_flight and name == journal.new_name
            assert named, (
                f"I2: key {key_id} ({name}) of {group_id} is orphaned: usable, not served, not "
                f"named by its group's in-flight journal; the group has "
                f"{len(world.usable_made(group_id, 'p-'))} usable provisioned keys ({journal})"
            )
            in_flight[group_id].append(key_id)
        for group_id, keys in in_flight.items():
            assert len(keys) <= 1, f"I3: {len(keys)} created keys in flight for {group_id}: {keys}"

    def teardown(self) -> None:
        """Faults stop, late writes land, the renamed group gets its name back; the lease
        holder's cycles run, time passing beyond every backoff, takeover and grace, until all
        is settled. Then every group serves a key of its own that ZPA accepts, with no other
        usable key vault-zpa made left behind, exactly one provisioned key (none once a
        rotation replaced it), and no journal in flight."""
        world = self.world
        for late in world.delayed:
            late()
        world.delayed.clear()
        world.names = dict(NAMES)
        for round_ in range(10):
            self._clean_round(first=round_ == 0)
            if self._settled():
                break
            journals = read_journals(world.kv, PREFIX)
            stuck = [g for (_, g), j in journals.items() if _stuck(world, g, j)]
            # A rotation in flight while its group serves no usable key: the plan says
            # PROVISION, provisioning waits for the rotation, so only the rotation step can
            # end it (sync.rotate_once resumes it whatever the item).
            assert not stuck or round_ < 2, f"rotations the replicas never finish: {stuck}"
        self.promises_hold()
        journals = read_journals(world.kv, PREFIX)
        type(self).seen.update(world.events)
        served = world.served()
        for key_id in world.left - set(served):
            if key_id in world.keys and world.key(key_id).eligible:
                cause = (
                    "late duplicate"
                    if key_id in world.late
                    else "displaced by a stale rotation"
                    if key_id in world.displaced
                    else "kept key dropped"
                )
                type(self).seen[f"usable key left behind ({cause})"] += 1
        for group_id in STARTS_KEYLESS:
            path = world.path_of(group_id)
            secret = world.kv.read(path)
            journal = journals.get((CONN, group_id), Journal())
            held = (secret.data or {}).get("group_id") if secret is not None else None
            why = self._left_alone(group_id, journal)
            if why is not None:
                type(self).left_alone[why] += 1
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
                if g == group_id and k in world.keys and (k not in world.left or k == key_id)
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

    def _settled(self) -> bool:
        """No journal in flight or backing off, no key a given-up rotation kept waiting to be
        served again, every group served a key it can enroll with (known cases apart)."""
        world = self.world
        journals = read_journals(world.kv, PREFIX)
        served = world.served()
        for (_, group_id), journal in journals.items():
            if self._left_alone(group_id, journal) is None and (
                journal.in_flight or (journal.retry_at and _parse(journal.retry_at) > world.now)
            ):
                return False
            kept = _kept(journal)  # the next sync serves it again
            if kept is not None and not _unusable(world, kept) and kept not in served:
                return False
        for group_id in STARTS_KEYLESS:
            if self._left_alone(group_id, journals.get((CONN, group_id), Journal())):
                continue
            secret = world.kv.read(world.path_of(group_id))
            key_id = (secret.data or {}).get("key_id", "") if secret is not None else ""
            if key_id not in world.keys or not world.key(key_id).eligible:
                return False
        return True

    def _left_alone(self, group_id: str, journal: Journal) -> str | None:
        """Why clean runs cannot finish this group, when it is a known, documented case, or
        None:
        - its path holds the secret of another live group (Golf took the name, and a key was
          written there): refused, a person frees the path (`vault kv metadata delete`);
        - a rotation's new key became unusable before it was written (a rotation limit)."""
        world = self.world
        if journal.in_flight and journal.kind == "provision":
            target = world.kv.read(journal.target_path)
            held = (target.data or {}).get("group_id") if target is not None else None
            if held and held != group_id:
                assert world.renamed, f"{journal.target_path} holds {held}'s secret"
                return "path taken by a renamed group"
        if group_id in world.names:
            secret = world.kv.read(world.path_of(group_id))
            held = (secret.data or {}).get("group_id") if secret is not None else None
            if held and held != group_id:
                assert world.renamed, f"{world.path_of(group_id)} holds {held}'s secret"
                return "path taken by a renamed group"
        if (
            journal.kind == "rotation"
            and journal.state is State.CREATED
            and _unusable(world, journal.new_id)
            and journal.new_id not in world.served()
        ):
            # rotation.py: a rotation whose new key became unusable before it reached Vault
            # is retried for ever (tests/test_rotation_model.py tolerates it too); the group
            # keeps its old key, or, used up as well, waits for a person.
            return "rotation's new key unusable before written"
        return None

    def _clean_round(self, first: bool) -> None:
        """Past every backoff, takeover and grace (the first time past every lease too, so the
        rotations due run in step); then two cycles of the lease holder."""
        world = self.world
        journals = read_journals(world.kv, PREFIX).items()
        waits = [
            _parse(j.retry_at)
            for (_, g), j in journals
            if j.retry_at and self._left_alone(g, j) is None
        ]
        step = timedelta(seconds=(POLICY.after or 0) + 1 if first else GRACE + 1)
        world.now = max([world.now + step, *waits]) + timedelta(seconds=1)
        for _ in range(2):
            self._rotate(world.holder, Recorded(owner=f"{world.holder}-teardown"))


# A known bug in rotation.py (test_a_kept_old_key_is_not_forgotten_by_the_next_rotation,
# xfail): a rotation that gave up keeps its old key (journal IDLE, old_id not retired) for the
# next sync to serve again; a new rotation started before any sync (`vault-zpa rotate` run
# again) journals the unusable served key as its old key, and the kept key is then recorded
# nowhere: usable, unserved, never removed (I2). Until that is fixed, such a key is reported
# instead of failing I2; set this to False once that test passes.
KNOWN_KEPT_KEY_DROPPED = True

# A known bug in rotation.py (test_a_rotation_never_writes_over_a_key_it_did_not_read, xfail):
# Rotator.run reads the group's secret, then its journal. A provisioning that runs whole in
# between (the served key was used up: the group needs one, and a rotation is due) writes its
# key and returns the journal to IDLE; the rotation then journals the stale served key as its
# old key (its check-and-set is against the journal, which it read after) and writes its new
# key over the provisioned one, which is left in ZPA usable and recorded nowhere (I2). Until
# that is fixed, such a key is reported instead of failing I2; set this to False then.
KNOWN_STALE_OLD_KEY = True


def _unusable(world: ProvisionWorld, key_id: str) -> bool:
    return key_id not in world.keys or not world.key(key_id).eligible


def _stuck(world: ProvisionWorld, group_id: str, journal: Journal) -> bool:
    """The group's rotation is in flight and its path serves no usable key (a new key used up
    in its grace, or the old one before the new one was written): the plan says PROVISION."""
    if journal.kind != "rotation" or not journal.in_flight:
        return False
    unwritten = journal.state is State.CREATED and journal.new_id not in world.served()
    if unwritten and _unusable(world, journal.new_id):
        return False  # a rotation limit (see _left_alone), which no run resolves
    secret = world.kv.read(world.path_of(group_id))
    return secret is None or _unusable(world, (secret.data or {}).get("key_id", ""))


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


@pytest.mark.parametrize(("model", "caught"), [(ProvisionModel, False), (NoRereadModel, True)])
def test_a_run_planned_before_another_provisioned_the_group_makes_no_second_key(
    model: type[ProvisionModel], caught: bool
) -> None:
    """Replica A plans (five groups without a usable key); a CLI sync provisions them all
    before A's provisioning step reads its first journal. A finds each key in Vault and makes
    none. A provisioner that does not look at the path again makes a second key for the group,
    and the model reports the first one orphaned."""
    m = model()
    m.seed()
    m.run_concurrently(
        pair=("A", "CLI"),
        call=("kv_read", 0),
        plan={},
        slow=False,
        lease_moves=False,
        rotate=(False, False),
    )
    if caught:
        with pytest.raises(AssertionError, match=r"I2: .* 2 usable provisioned keys"):
            m.promises_hold()
        return
    m.promises_hold()
    made = [k for k in m.world.created_by_us if m.world.keys[k]["name"].startswith("p-")]
    assert len(made) == len(STARTS_KEYLESS), made
    m.teardown()


def _alpha(m: ProvisionModel) -> Journal:
    return read_journal(m.world.kv, PREFIX, CONN, "g1")


def test_the_daemon_ends_a_rotation_whose_new_key_is_used_up() -> None:
    """Found by this model: a rotation whose new key is used up during its grace must end, so
    the group has a usable key again. In a group provisioning covers, the replica's plan says
    PROVISION (the old key is excluded while the rotation is in flight) and the provisioning
    step waits for the rotation; rotate_once skipped PROVISION items, so nothing ever moved and
    the group was reported failing on every run. Fixed in af9e132 (rotate_once resumes a
    rotation in flight whatever the item; the grace ends early)."""
    m = ProvisionModel()
    m.seed()
    m.rotate("A", {}, requested=False)  # provisions every group
    m.time_passes(301)
    m.rotate("A", {}, requested=False)  # the leases are over: new keys in Vault, in grace
    journal = _alpha(m)
    assert journal.state is State.WRITTEN, journal
    m.world.keys[journal.new_id]["usage"] = 10  # connectors use the new key up
    for _ in range(3):
        m.time_passes(61)
        m.rotate("A", {}, requested=False)
    secret = m.world.kv.read(m.world.path_of("g1"))
    assert secret is not None
    assert secret.data is not None
    served = secret.data["key_id"]  # the old key again (or, its lease over, its successor)
    assert m.world.key(served).eligible, _alpha(m)


@pytest.mark.parametrize("fixed", [True, False])
def test_a_plan_from_memory_provisions_nothing_while_a_kept_key_is_usable(
    monkeypatch: pytest.MonkeyPatch, fixed: bool
) -> None:
    """Found by this model. Replica A remembers Alpha's rotation in flight (its old key
    excluded) and its new key in Vault. The new key is used up and a CLI `vault-zpa rotate`
    gives the rotation up, keeping the old key for the next sync to serve. A's next run plans
    from memory: no usable key, PROVISION. Provisioning must see the kept key (usable) and make
    none; it used to make one, and the kept key was left in ZPA, usable and recorded nowhere."""
    if not fixed:
        monkeypatch.setattr(Provisioner, "_kept_old", lambda self, target, journal: None)
    m = ProvisionModel()
    m.seed()
    m.rotate("A", {}, requested=False)  # provisions every group
    m.time_passes(301)
    m.rotate("A", {}, requested=False)  # rotations: new keys in Vault, in grace
    m.sync("A", {})  # A's memory: the rotations in flight
    assert m.warm["A"].usable
    journal = _alpha(m)
    assert journal.state is State.WRITTEN, journal
    m.world.keys[journal.new_id]["usage"] = 10  # used up within the grace
    m.time_passes(61)
    m._run("CLI", {}, lambda f: m._rotate("CLI", f, ["Alpha"]))  # given up: old key kept
    assert _kept(_alpha(m)) == journal.old_id
    m.sync("A", {})  # plans from memory
    if not fixed:
        with pytest.raises(AssertionError, match=f"I2: key {journal.old_id} "):
            m.promises_hold()
        return
    m.promises_hold()
    assert sum(n.startswith("p-") for n in m.world.names_made("g1")) == 1  # no second one
    m.sync("A", {})  # the kept key is served again
    assert m.world.served().get(journal.old_id) == m.world.path_of("g1")


def test_a_provisioning_whose_key_is_used_up_before_it_is_written_starts_again() -> None:
    """Found by this model: a provisioning journaled CREATED whose key is used up (or disabled,
    or deleted) before it reached Vault retried the write for ever, backing off up to a day:
    the journal stayed in flight, so the group never got a key. It now ends that attempt (the
    key recorded as abandoned) and, after the backoff, provisions a new key."""
    m = ProvisionModel()
    m.seed()
    m.sync("A", {("zpa_get", 0): "fail"})  # Charlie's key is made, then its check fails
    journal = read_journal(m.world.kv, PREFIX, CONN, "g3")
    assert journal.state is State.CREATED, journal
    m.world.keys[journal.new_id]["usage"] = 10
    for _ in range(3):
        m.time_passes(301)
        m.sync("A", {})
        m.promises_hold()
    ended = read_journal(m.world.kv, PREFIX, CONN, "g3")
    assert not ended.in_flight, ended
    assert journal.new_id in ended.abandoned
    secret = m.world.kv.read(m.world.path_of("g3"))
    assert secret is not None
    assert secret.data is not None
    assert secret.data["key_id"] != journal.new_id
    assert m.world.key(secret.data["key_id"]).eligible


# ---- known bugs outside provisioning, found by the model (fix, then drop the xfail) ----------


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="rotation.py: a new INTENT replaces the journal's record of the kept old key (see "
    "KNOWN_KEPT_KEY_DROPPED)",
)
def test_a_kept_old_key_is_not_forgotten_by_the_next_rotation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`vault-zpa rotate --group Alpha`: its new key is used up in the grace, so the next
    `vault-zpa rotate` gives the rotation up and keeps the old key for the sync to serve again.
    Asked once more before any sync ran, a new rotation journals the used-up key it finds in
    Vault as its old key: the kept key, usable, is served by nobody and recorded nowhere."""
    monkeypatch.setattr(sys.modules[__name__], "KNOWN_KEPT_KEY_DROPPED", False)
    m = ProvisionModel()
    m.seed()
    m.sync("CLI", {})  # provisions Alpha
    m.time_passes(301)

    def ask(f: Recorded) -> None:
        m._rotate("CLI", f, ["Alpha"])

    m._run("CLI", {}, ask)
    journal = _alpha(m)
    assert journal.state is State.WRITTEN, journal
    m.world.keys[journal.new_id]["usage"] = 10
    m.time_passes(61)
    m._run("CLI", {}, ask)  # given up: the old key kept
    assert not _alpha(m).in_flight
    assert _alpha(m).old_id == journal.old_id
    m._run("CLI", {}, ask)  # asked again
    m.promises_hold()


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="rotation.py: Rotator.run reads the secret before the journal (see KNOWN_STALE_OLD_KEY)",
)
def test_a_rotation_never_writes_over_a_key_it_did_not_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Alpha's key is used up and its lease is over: it needs a key, and a rotation is due.
    `vault-zpa rotate --group Alpha` reads the secret; the daemon's whole sync runs before the
    rotation reads the journal, and provisions Alpha a new key. The rotation, its journal read
    afresh, journals the used-up key as its old key and writes its new key over the
    provisioned one: that key is left usable, served by nobody, recorded nowhere."""
    import vault_zpa.rotation as rotation

    monkeypatch.setattr(sys.modules[__name__], "KNOWN_STALE_OLD_KEY", False)
    m = ProvisionModel()
    m.seed()
    m.sync("CLI", {})  # provisions Alpha
    first = _alpha(m).new_id
    m.world.keys[first]["usage"] = 10
    m.time_passes(301)
    original = rotation.read_journal
    slipped: list[bool] = []

    def read_journal(*args: Any, **kwargs: Any) -> Journal:
        if args[3] == "g1" and not slipped:  # between the rotation's two reads
            slipped.append(True)
            m.sync("A", {})
            assert _alpha(m).new_id != first  # provisioned anew
        return original(*args, **kwargs)

    monkeypatch.setattr(rotation, "read_journal", read_journal)
    m._run("CLI", {}, lambda f: m._rotate("CLI", f, ["Alpha"]))
    assert slipped
    m.promises_hold()
