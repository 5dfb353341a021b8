"""Model-based (stateful) tests of rotation and sync: the real Rotator, run_once and rotate_once
against an in-memory ZPA and KV store that fail, lose responses, delay writes and crash at any
call, driven by two daemon replicas (with a leader lease that changes hands) and a CLI.

After every step the promises are checked against what ZPA and Vault hold:
- I1 vault-zpa never deletes or disables a key that Vault serves, or served less than the grace
  ago; and no write ever makes Vault serve a key vault-zpa removed.
- I2 every key vault-zpa created still in ZPA is served by Vault or named by an in-flight
  rotation journal (so the next run finishes it).
- I3 per group, at most one created key is pending (created, not yet served, not retired).
- I4 a replica issues no write while it is not the lease holder; data and journal writes are
  check-and-set, so a deposed leader's late write cannot clobber a newer one.
At the end the faults stop and a few clean runs must converge: every group served a key ZPA
accepts, no rotation left in flight.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

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

from vault_zpa.errors import VaultUnavailable, VaultZpaError, ZpaApiError, ZpaUnavailable
from vault_zpa.masking import Secret
from vault_zpa.model import AssociationType, Listing, ProvisioningKey, StoredSecret
from vault_zpa.reconcile import TypeRule
from vault_zpa.rotation import Journal, RotationPolicy, RotationSettings, Rotator, State
from vault_zpa.sync import SyncOptions, WarmState, rotate_once, run_once
from vault_zpa.testing.memory import MemoryKvStore

CONN = AssociationType.CONNECTOR_GRP
GRACE = 60.0
TAKEOVER = 45.0  # another process's INTENT is left alone this long
PREFIX = "zpa"
GROUPS = {"g1": "Group-One", "g2": "Group-Two"}
P = ParamSpec("P")
R = TypeVar("R")

KINDS = ("kv_read", "kv_write", "kv_meta", "zpa_list", "zpa_find", "zpa_create", "zpa_remove")
FAULTS = ("fail", "lost", "delay", "crash_before", "crash_after")


class Crash(BaseException):
    """The process dies here: nothing after this point of the run happens."""


class Inline(Executor):
    """Runs each call at once, so the model's call order (and its faults) are deterministic."""

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        future: Future[R] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - a Crash travels inside the future, as in a pool
            future.set_exception(exc)
        return future


@dataclass
class Faults:
    """Which call of which kind fails how, for the run in progress."""

    plan: dict[tuple[str, int], str] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    # Another process's whole run, slipped in just before this call: concurrency, one call
    # granular (the nth call of a kind runs after the other process has finished).
    interrupt: tuple[str, int, Callable[[], None]] | None = None
    owner: str = "teardown"  # the process making these calls

    def next(self, kind: str, allowed: Collection[str]) -> str | None:
        n = self.seen.get(kind, 0)
        self.seen[kind] = n + 1
        if self.interrupt is not None and self.interrupt[:2] == (kind, n):
            other, self.interrupt = self.interrupt[2], None
            other()
        fault = self.plan.get((kind, n))
        return fault if fault in allowed else None


@dataclass
class World:
    """ZPA and Vault as the model sees them, with the history the invariants need."""

    now: datetime = datetime(2026, 11, 27, tzinfo=UTC)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    ids: Any = field(default_factory=lambda: itertools.count(100))
    created_by_us: dict[str, str] = field(default_factory=dict)  # key id -> group id
    removed_by_us: set[str] = field(default_factory=set)
    names_created: set[str] = field(default_factory=set)
    unserved_at: dict[str, datetime] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    kv: MemoryKvStore = field(default_factory=MemoryKvStore)
    delayed: list[Callable[[], None]] = field(default_factory=list)
    holder: str = "A"
    fence: int = 1

    def served(self) -> dict[str, str]:
        """key id served -> path, for every group secret."""
        out = {}
        for gid, name in GROUPS.items():
            path = f"{PREFIX}/{CONN.value}/{name}"
            secret = self.kv.read(path)
            if secret is not None and secret.data is not None:
                out[secret.data["key_id"]] = path
            del gid
        return out

    def key(self, key_id: str) -> ProvisioningKey:
        raw = self.keys[key_id]
        return ProvisioningKey(
            id=key_id,
            name=raw["name"],
            association_type=CONN,
            key=Secret(f"3|key-{key_id}"),
            group_id=raw["group_id"],
            group_name=GROUPS[raw["group_id"]],
            enrollment_cert_id="7",
            enrollment_cert_name="Connector",
            max_usage=raw["max_usage"],
            usage_count=raw["usage"],
            enabled=raw["enabled"],
            creation_time=raw["created"],
            modified_time=raw["created"],
        )

    def add_key(self, group_id: str, name: str) -> str:
        key_id = str(next(self.ids))
        self.keys[key_id] = {
            "name": name,
            "group_id": group_id,
            "enabled": True,
            "usage": 0,
            "max_usage": 10,
            "created": int(self.now.timestamp()),
        }
        return key_id

    def removing(self, key_id: str) -> None:
        """I1, at the moment vault-zpa deletes or disables a key."""
        served = self.served()
        if key_id in served:
            self.violations.append(f"I1: removed key {key_id} while {served[key_id]} serves it")
        gone = self.unserved_at.get(key_id)
        if gone is not None and (self.now - gone).total_seconds() < GRACE:
            self.violations.append(
                f"I1: removed key {key_id} {self.now - gone} after it was served"
            )
        self.removed_by_us.add(key_id)

    def landed(self, path: str, before: StoredSecret | None, data: Mapping[str, str]) -> None:
        """Every data write that takes effect: record what stopped being served, and I1's other
        half (a removed key is never put back)."""
        if not path.startswith(f"{PREFIX}/{CONN.value}/"):
            return
        old = before.data.get("key_id") if before is not None and before.data else None
        new = data.get("key_id", "")
        if old and old != new:
            self.unserved_at[old] = self.now
        self.unserved_at.pop(new, None)
        if new in self.removed_by_us:
            self.violations.append(f"I1: {path} now serves key {new}, which vault-zpa removed")


class FakeZpa:
    """KeySource and KeyAdmin over the world's keys, with faults."""

    def __init__(self, world: World, faults: Faults) -> None:
        self.world, self.faults = world, faults

    def _fault(self, kind: str, allowed: Collection[str]) -> str | None:
        fault = self.faults.next(kind, allowed)
        if fault == "fail":
            raise ZpaUnavailable(f"ZPA {kind}: timed out (model)")
        if fault == "crash_before":
            raise Crash
        return fault

    def list_provisioning_keys(self, association_type: AssociationType) -> list[ProvisioningKey]:
        self._fault("zpa_list", ("fail",))
        return [self.world.key(i) for i in sorted(self.world.keys, key=int)]

    def get_provisioning_key(
        self, association_type: AssociationType, key_id: str
    ) -> ProvisioningKey:
        if key_id not in self.world.keys:
            raise ZpaApiError(endpoint="get", status=400, zpa_id="resource.not.found")
        return self.world.key(key_id)

    def find_provisioning_key(
        self, association_type: AssociationType, name: str
    ) -> ProvisioningKey | None:
        self._fault("zpa_find", ("fail",))
        for key_id, raw in self.world.keys.items():
            if raw["name"] == name:
                return self.world.key(key_id)
        return None

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
        fault = self._fault("zpa_create", ("fail", "lost", "crash_before", "crash_after"))
        world = self.world
        served = world.served()
        journals = _journals(world).values()
        retiring = {j.old_id for j in journals if j.in_flight}
        retiring |= {i for j in journals for i in j.abandoned}  # given up, left for a person
        pending = [
            k
            for k, g in world.created_by_us.items()
            if g == group_id
            and k in world.keys
            and k not in served
            and k not in world.removed_by_us
            and k not in retiring
            and world.key(k).eligible  # a used-up key is not a rotation in flight (see note)
        ]
        if pending:
            world.violations.append(f"I3: second key for {group_id} while {pending} is pending")
        if name in world.names_created:
            world.violations.append(f"I3: a second key created for one rotation ({name})")
        world.names_created.add(name)
        key_id = world.add_key(group_id, name)
        world.created_by_us[key_id] = group_id
        if fault == "lost":
            raise ZpaUnavailable("ZPA create: connection dropped after sending (model)")
        if fault == "crash_after":
            raise Crash
        return world.key(key_id)

    def _remove(self, key_id: str, how: str) -> None:
        fault = self._fault("zpa_remove", ("fail", "lost", "crash_before", "crash_after"))
        if key_id not in self.world.keys:
            raise ZpaApiError(endpoint="remove", status=400, zpa_id="resource.not.found")
        self.world.removing(key_id)
        if how == "delete":
            del self.world.keys[key_id]
        else:
            self.world.keys[key_id]["enabled"] = False
        if fault == "lost":
            raise ZpaUnavailable("ZPA delete: connection dropped after sending (model)")
        if fault == "crash_after":
            raise Crash

    def update_provisioning_key(
        self, association_type: AssociationType, key_id: str, changes: Mapping[str, Any]
    ) -> None:
        self._remove(key_id, "disable")

    def delete_provisioning_key(self, association_type: AssociationType, key_id: str) -> None:
        self._remove(key_id, "delete")


class FaultyKv:
    """One process's view of the shared store: reads and writes that fail, lose their
    response, are delayed (land later, check-and-set evaluated then) or crash the process."""

    kv_version = 2

    def __init__(self, world: World, faults: Faults, actor: str) -> None:
        self.world, self.faults, self.actor = world, faults, actor
        self._inline = Inline()

    def executor(self) -> Executor:
        return self._inline

    def close(self) -> None:
        pass

    def read(self, path: str) -> StoredSecret | None:
        if self.faults.next("kv_read", ("fail",)) == "fail":
            raise VaultUnavailable("Vault read timed out (model)")
        return self.world.kv.read(path)

    def list_tree(self, root: str) -> list[str]:
        return self.world.kv.list_tree(root)

    def _issuing(self) -> None:
        """I4: a daemon replica writes only while it holds the lease."""
        if self.actor in ("A", "B") and self.world.holder != self.actor:
            self.world.violations.append(f"I4: {self.actor} wrote while {self.world.holder} leads")

    def write(
        self,
        path: str,
        data: Mapping[str, str],
        *,
        cas: int,
        custom_metadata: Mapping[str, str],
        remove: Collection[str] = (),
    ) -> int:
        self._issuing()
        fault = self.faults.next("kv_write", FAULTS)
        world = self.world

        def land() -> int:
            before = world.kv.read(path)
            version = world.kv.write(
                path, data, cas=cas, custom_metadata=custom_metadata, remove=remove
            )
            world.landed(path, before, data)
            return version

        if fault == "fail":
            raise VaultUnavailable("Vault write refused: 503 (model)")
        if fault == "crash_before":
            raise Crash
        if fault == "delay":

            def late() -> None:
                with contextlib.suppress(VaultZpaError):
                    land()  # a lost check-and-set: the late write has no effect

            world.delayed.append(late)
            raise VaultUnavailable("Vault write timed out; it may still land (model)")
        version = land()
        if fault == "lost":
            raise VaultUnavailable("Vault write: response lost (model)")
        if fault == "crash_after":
            raise Crash
        return version

    def write_metadata(
        self, path: str, custom_metadata: Mapping[str, str], *, remove: Collection[str] = ()
    ) -> None:
        self._issuing()
        fault = self.faults.next("kv_meta", ("fail", "lost", "crash_before"))
        if fault == "fail":
            raise VaultUnavailable("Vault metadata write refused (model)")
        if fault == "crash_before":
            raise Crash
        self.world.kv.write_metadata(path, custom_metadata, remove=remove)
        if fault == "lost":
            raise VaultUnavailable("Vault metadata write: response lost (model)")

    def soft_delete(self, path: str) -> None:
        self._issuing()
        self.world.kv.soft_delete(path)


RULES = {CONN: TypeRule(lease_seconds=300)}
POLICY = RotationPolicy(enabled=True, after=300.0, grace=GRACE, backoff=1.0, max_failures=1000)
SETTINGS = RotationSettings(policies={CONN: POLICY}, max_per_run=10)
OPTIONS = SyncOptions(association_types=(CONN,), prefix=PREFIX, rules=dict(RULES))

# Writes are where the promises are won or lost: they get most of the faults.
fault_plans = st.dictionaries(
    st.tuples(st.sampled_from(("kv_write",) * 4 + KINDS), st.integers(0, 5)),
    st.sampled_from(FAULTS),
    max_size=3,
)


class RotationModel(RuleBasedStateMachine):
    """Two daemon replicas (A, B) and a CLI, all real vault-zpa code, over a faulty world."""

    rotator: type[Rotator] = Rotator
    steps = 0  # runs driven, over every example (the reliability suite reports it)
    faults_injected = 0

    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.warm = {"A": WarmState(), "B": WarmState()}
        self.incarnation = {"A": 0, "B": 0, "CLI": 0}

    @initialize()
    def seed(self) -> None:
        for gid, name in GROUPS.items():
            self.world.add_key(gid, f"{name}-first")
        report = self._sync("CLI", Faults())
        assert not report.failed

    # -- plumbing -------------------------------------------------------------------------

    def _guard(self, actor: str) -> Callable[[], int | None] | None:
        if actor == "CLI":
            return None
        return lambda: self.world.fence if self.world.holder == actor else None

    def _now(self) -> datetime:
        return self.world.now

    def _sync(self, actor: str, faults: Faults) -> Any:
        return run_once(
            source=FakeZpa(self.world, faults),
            store=FaultyKv(self.world, faults, actor),
            options=OPTIONS,
            now=self._now,
            warm=self.warm.get(actor),
            guard=self._guard(actor),
        )

    def _rotate(self, actor: str, faults: Faults, requested: bool) -> None:
        """What `vault-zpa rotate` (CLI) or the daemon's after-sync rotation does."""
        zpa, store = FakeZpa(self.world, faults), FaultyKv(self.world, faults, actor)
        warm = self.warm.get(actor)
        report = self._sync(actor, faults)
        if warm is not None and not warm.usable:
            return
        stored = (
            warm.stored
            if warm is not None
            else {
                p: s
                for p in (i.item.path for i in report.results)
                if (s := self.world.kv.read(p)) is not None
            }
        )
        journals = warm.journals if warm is not None else _journals(self.world)
        results = rotate_once(
            zpa=zpa,
            store=store,
            prefix=PREFIX,
            items=[r.item for r in report.results],
            stored=stored,
            listings=[Listing(CONN, tuple(self.world.key(k) for k in self.world.keys))],
            rotation=SETTINGS,
            journals=journals,
            rules=RULES,
            requested=frozenset((CONN, n) for n in GROUPS.values()) if requested else frozenset(),
            now=self._now,
            guard=self._guard(actor),
            rotator=self.rotator(
                zpa=zpa,
                store=store,
                prefix=PREFIX,
                now=self._now,
                writer=self._guard(actor),
                rules=RULES,
                owner=faults.owner,
                takeover=TAKEOVER,
                tag=lambda: f"t{next(self.world.ids)}",  # deterministic, for replays
            ),
        )
        if warm is not None and any(r.decision.action in ("start", "resume") for r in results):
            warm.invalidate()

    def _run(
        self,
        actor: str,
        plan: dict[tuple[str, int], str],
        fn: Callable[[Faults], None],
        interrupt: tuple[str, int, Callable[[], None]] | None = None,
    ) -> None:
        type(self).steps += 1
        type(self).faults_injected += len(plan)
        if actor == "CLI":
            self.incarnation[actor] += 1  # every CLI run is a process of its own
        owner = f"{actor}-{self.incarnation[actor]}"
        try:
            fn(Faults(plan, interrupt=interrupt, owner=owner))
        except Crash:
            if actor in self.warm:
                self.warm[actor] = WarmState()  # a restarted process remembers nothing
            self.incarnation[actor] += 1  # ... and is another process
        except VaultZpaError:
            if actor in self.warm:
                self.warm[actor].invalidate()

    # -- rules ----------------------------------------------------------------------------

    @rule(actor=st.sampled_from(["A", "B", "CLI"]), plan=fault_plans)
    def sync(self, actor: str, plan: dict[tuple[str, int], str]) -> None:
        self._run(actor, plan, lambda f: (self._sync(actor, f), None)[1])

    @rule(actor=st.sampled_from(["A", "B", "CLI"]), plan=fault_plans, requested=st.booleans())
    def rotate(self, actor: str, plan: dict[tuple[str, int], str], requested: bool) -> None:
        self._run(actor, plan, lambda f: self._rotate(actor, f, requested))

    @rule(
        pair=st.sampled_from([("A", "CLI"), ("CLI", "A"), ("CLI", "CLI"), ("A", "B"), ("B", "A")]),
        # Calls made on the run's own thread (the sync lists ZPA and reads Vault back on two
        # threads of its own: a whole other run slipped in there would race this one's).
        kind=st.sampled_from(("kv_write", "zpa_create", "zpa_find", "zpa_remove")),
        nth=st.integers(0, 6),
        plan=fault_plans,
        requested=st.booleans(),
    )
    def rotate_concurrently(
        self,
        pair: tuple[str, str],
        kind: str,
        nth: int,
        plan: dict[tuple[str, int], str],
        requested: bool,
    ) -> None:
        """Two processes rotate at once: the second runs whole between two calls of the first
        (a daemon replica, a deposed leader or a CLI racing another)."""
        first, second = pair

        def other() -> None:
            self._run(second, {}, lambda g: self._rotate(second, g, True))

        self._run(first, plan, lambda f: self._rotate(first, f, requested), (kind, nth, other))

    @rule(seconds=st.sampled_from([1, 30, 61, 301]))
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
        """Connectors use keys up (exhausted keys are not eligible, so the sync moves on)."""
        if self.world.keys:
            key_id = data.draw(st.sampled_from(sorted(self.world.keys)))
            raw = self.world.keys[key_id]
            raw["usage"] = min(raw["max_usage"], raw["usage"] + data.draw(st.integers(1, 10)))

    # -- the promises ---------------------------------------------------------------------

    @invariant()
    def promises_hold(self) -> None:
        world = self.world
        assert not world.violations, world.violations
        served = world.served()
        journals = _journals(world)
        named = {i for j in journals.values() if j.in_flight for i in (j.new_id, j.old_id)}
        named |= {i for j in journals.values() for i in j.abandoned}  # recorded, for a person
        # A rotation given up keeps its old key; the next sync serves it again (it is no longer
        # excluded, and the abandoned new key is unusable).
        named |= {j.old_id for j in journals.values() if j.abandoned and j.old_id not in j.retired}
        named |= {
            k
            for k, raw in world.keys.items()
            for j in journals.values()
            if j.in_flight and raw["name"] == j.new_name
        }
        for key_id, group_id in world.created_by_us.items():
            # A used-up key nobody serves can enroll nothing; one a given-up rotation kept as
            # its fallback is left in ZPA (a known gap, docs/rotation-protocol.md "Limits").
            usable = key_id in world.keys and world.key(key_id).eligible
            if usable and key_id not in world.removed_by_us:
                # I2: served, or recorded where the next run finishes it.
                assert key_id in served or key_id in named, (
                    f"I2: key {key_id} of {group_id} is orphaned: not served, not journaled "
                    f"(journals: {list(journals.values())})"
                )

    def teardown(self) -> None:
        """Faults stop, late writes land, time passes: a few clean runs converge."""
        world = self.world
        for late in world.delayed:
            late()
        world.delayed.clear()
        for _ in range(4):
            world.now += timedelta(seconds=GRACE + 1)
            for actor in ("CLI",):
                self._rotate(actor, Faults(), requested=False)
                # A failed rotation backs off; a person asks again.
                self._rotate(actor, Faults(), requested=_stuck(world))
        self.promises_hold()
        for name in GROUPS.values():
            secret = world.kv.read(f"{PREFIX}/{CONN.value}/{name}")
            assert secret is not None
            assert secret.data is not None
            assert secret.data["key_id"] in world.keys, f"{name} serves a key ZPA does not have"
        stuck = {p: j for p, j in _journals(world).items() if j.in_flight}
        assert not stuck or all(
            j.state is State.WRITTEN or "disabled or exhausted" in j.last_error
            for j in stuck.values()
        ), stuck
        world.kv.close()


def _journals(world: World) -> dict[str, Journal]:
    from vault_zpa.rotation import read_journals

    return read_journals(world.kv, PREFIX)


def _stuck(world: World) -> bool:
    return any(j.in_flight for j in _journals(world).values())


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    """Thousands of generated runs log thousands of (expected) failures; pytest would hold every
    record in memory (1.7 GB over the reliability suite's 5,000 histories)."""
    logger = logging.getLogger("vault_zpa")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def test_rotation_promises_hold_under_faults_and_competing_writers() -> None:
    """Thousands of steps of syncs, rotations, crashes, lost and late writes, lease changes:
    I1-I4 hold after every step, and clean runs converge afterwards."""
    run_state_machine_as_test(
        RotationModel,
        settings=settings(
            max_examples=300,
            stateful_step_count=40,
            deadline=None,
            derandomize=True,  # the same few thousand steps in every CI run
            database=None,
            phases=(Phase.explicit, Phase.generate),
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


class BrokenRotator(Rotator):
    """The bug issue 14 found: a failed write of the new key still journals WRITTEN, and the
    old key is removed without looking at what Vault serves."""

    def _write_new_key(self, *args: Any, **kwargs: Any) -> None:
        with contextlib.suppress(VaultZpaError):
            super()._write_new_key(*args, **kwargs)

    def _check_not_served(self, path: str, journal: Journal) -> None:
        pass


class BrokenModel(RotationModel):
    rotator = BrokenRotator


class NoWithdrawRotator(Rotator):
    """A second bug: a run resumes another's INTENT at once (no takeover wait), so two runs
    create a key for one rotation, and the loser keeps its key."""

    def _claim(self, path: str, journal: Journal) -> Journal:
        return journal

    def _withdraw(
        self, path: str, atype: AssociationType, key: ProvisioningKey, journal: Journal
    ) -> None:
        pass


class NoWithdrawModel(RotationModel):
    rotator = NoWithdrawRotator


def violations(model: type[RotationModel], examples: int) -> str:
    """Run the machine; the messages of every failure it finds ('' when it finds none)."""
    try:
        run_state_machine_as_test(
            model,
            settings=settings(
                max_examples=examples,
                stateful_step_count=30,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    except AssertionError as exc:
        return str(exc)
    except BaseExceptionGroup as group:  # hypothesis found several distinct failures
        return " | ".join(str(e) for e in group.exceptions)
    return ""


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("model", "promise"), [(BrokenModel, "I1"), (NoWithdrawModel, "I2|I3")])
def test_the_model_finds_a_broken_protocol(model: type[RotationModel], promise: str) -> None:
    """The same machine, run against deliberately broken variants, reports the promise each
    breaks: the checks can fail."""
    import re

    found = violations(model, 1500)
    assert re.search(promise, found), found


def test_a_warm_replica_never_writes_back_a_retiring_key() -> None:
    """Found by the long model run: replica B, warm, wrote a CLI rotation's new key itself; the
    new key was then used up; B's memory of the journals predated the rotation, and it wrote the
    old key back, so the rotation could never retire it. B now reads the journal before an
    update (and no longer serves a rotation's key the journal has not recorded), and the
    rotation completes."""
    m = RotationModel()
    m.seed()
    m.world.holder = "B"
    m.sync("B", {})  # B's memory: the journals as they were before the rotation
    m.rotate("CLI", {("kv_write", 3): "fail", ("zpa_create", 0): "lost"}, requested=True)
    m.sync("B", {})  # B once wrote the CLI's new key from memory; now the journal, read again
    # before an update, has not recorded it (INTENT), so B keeps the served key (Journal.shuns)
    assert set(m.world.served()) == {"100", "101"}
    m.world.now += timedelta(seconds=5)  # past the failed attempts' backoff
    m.world.holder = "A"
    m.rotate("A", {}, requested=False)  # resumes the CLI's rotation: WRITTEN
    [new] = [k for k, g in m.world.created_by_us.items() if g == "g2"]
    m.world.keys[new]["usage"] = 10  # connectors use the new key up
    m.world.holder = "B"
    m.sync("B", {})
    assert m.world.served()[new] == "zpa/CONNECTOR_GRP/Group-Two"  # the old key not written back
    m.promises_hold()
    m.teardown()
