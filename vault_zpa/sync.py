"""run_once: the only place the steps of a sync are sequenced.

list ZPA (per association type) -> read Vault (concurrently) -> plan (pure) -> write -> report
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from vault_zpa import layout, reconcile
from vault_zpa.errors import CasConflict, VaultZpaError, ZpaError
from vault_zpa.model import (
    Action,
    AssociationType,
    ItemResult,
    Listing,
    Outcome,
    Plan,
    PlanItem,
    ProvisioningKey,
    Report,
    StoredSecret,
)
from vault_zpa.reconcile import Scope, TypeRule
from vault_zpa.rotation import (
    Decision,
    KeyAdmin,
    RotationResult,
    RotationSettings,
    Rotator,
    decide,
)
from vault_zpa.vault.kv import KvStore

log = logging.getLogger(__name__)


class KeySource(Protocol):
    """The ZPA side as the sync engine sees it."""

    def list_provisioning_keys(
        self, association_type: AssociationType
    ) -> list[ProvisioningKey]: ...


@dataclass(frozen=True)
class SyncOptions:
    association_types: tuple[AssociationType, ...]
    prefix: str
    rules: dict[AssociationType, TypeRule]
    scope: Scope = field(default_factory=Scope)
    dry_run: bool = False
    find_orphans: bool = True


@dataclass
class Progress:
    """Callbacks for a progress display; the CLI fills them, everything else ignores them."""

    start: Callable[[int], None] = field(default=lambda total: None)
    advance: Callable[[int], None] = field(default=lambda n: None)


def list_all(source: KeySource, types: Iterable[AssociationType]) -> list[Listing]:
    """One listing per association type; a failure marks that type incomplete, never empty."""
    listings = []
    for atype in types:
        try:
            keys = source.list_provisioning_keys(atype)
        except ZpaError as exc:
            log.warning("listing %s failed: %s", atype.value, exc)
            listings.append(Listing(atype, (), complete=False, error=str(exc)))
            continue
        listings.append(Listing(atype, tuple(keys)))
    return listings


def read_all(
    store: KvStore,
    paths: Sequence[str],
    *,
    progress: Progress | None = None,
) -> dict[str, StoredSecret]:
    """Read every path on the store's bounded pool; absent paths are left out of the result."""
    found: dict[str, StoredSecret] = {}
    for path, secret in zip(paths, store.executor().map(store.read, paths), strict=True):
        if secret is not None:
            found[path] = secret
        if progress:
            progress.advance(1)
    return found


@dataclass(frozen=True)
class Snapshot:
    """ZPA and Vault as one run saw them, and the plan decided from both."""

    started: datetime
    listings: tuple[Listing, ...]
    stored: dict[str, StoredSecret]
    plan: Plan

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(
            f"{listing.association_type.value}: {listing.error}"
            for listing in self.listings
            if not listing.complete
        )


def inspect(
    *,
    source: KeySource,
    store: KvStore,
    options: SyncOptions,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    progress: Progress | None = None,
    known: dict[str, StoredSecret] | None = None,
) -> Snapshot:
    """List ZPA, read what Vault holds at every relevant path, and plan. Writes nothing.
    With `known` (the daemon's memory of what it last wrote) Vault is not read at all."""
    started = now()
    listings = list_all(source, options.association_types)
    desired = reconcile.desired(
        listings, prefix=options.prefix, rules=options.rules, scope=options.scope
    )
    paths = set(desired.paths)
    if known is None and options.find_orphans and not options.scope.groups:
        # The listing shows every path that exists (soft-deleted ones too), so only those are
        # read: a desired path missing from it is a create, and a path created after the
        # listing makes the check-and-set create fail instead of being overwritten.
        state = layout.state_path(options.prefix, "")
        existing: set[str] = set()
        for root in _orphan_roots(options):
            existing.update(p for p in store.list_tree(root) if not p.startswith(state))
        paths = existing
    if known is not None:
        stored = dict(known)
    else:
        if progress:
            progress.start(len(paths))
        stored = read_all(store, sorted(paths), progress=progress)
    plan = reconcile.plan(
        desired,
        listings=listings,
        stored=stored,
        rules=options.rules,
        scope=options.scope,
        now=started,
    )
    return Snapshot(started, tuple(listings), stored, plan)


def _orphan_roots(options: SyncOptions) -> list[str]:
    """Where managed secrets of this run's types can be: one folder per type with the default
    layout, else the whole prefix."""
    templates = {options.rules.get(t, TypeRule()).path_template for t in options.association_types}
    if all(t.startswith("{prefix}/{association_type}/") for t in templates):
        return [f"{options.prefix}/{t.value}" for t in options.association_types]
    return [options.prefix]


def run_once(
    *,
    source: KeySource,
    store: KvStore,
    options: SyncOptions,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    progress: Progress | None = None,
    warm: WarmState | None = None,
    guard: Callable[[], int | None] | None = None,
) -> Report:
    """One complete sync. Per-item failures are reported, not raised; a failure that makes the
    whole run meaningless (Vault unreachable before anything was read) is raised.

    `warm` (the daemon) replaces the Vault read-back with what the last run left there;
    `guard` returns the writer's lease version (the fencing token) or None to stop writing."""
    known = warm.stored if warm is not None and warm.usable else None
    snap = inspect(
        source=source, store=store, options=options, now=now, progress=progress, known=known
    )
    if options.dry_run:
        results = [
            ItemResult(i, Outcome.PLANNED if _needs_write(i) else Outcome.DONE)
            for i in snap.plan.items
        ]
    else:
        results = execute(store, snap.plan.items, guard=guard)
    if warm is not None and not options.dry_run:
        warm.remember(snap, results)
    return Report(
        results=tuple(results),
        listings=snap.listings,
        dry_run=options.dry_run,
        started_at=_stamp(snap.started),
        finished_at=_stamp(now()),
        errors=snap.errors,
    )


@dataclass
class WarmState:
    """What the daemon last saw and wrote in Vault, so a steady-state run reads nothing there.

    It is dropped (the next run reads Vault back in full) after any failed item, when asked for
    a full reconciliation, and whenever the writer's leadership was interrupted."""

    stored: dict[str, StoredSecret] = field(default_factory=dict)
    usable: bool = False

    def invalidate(self) -> None:
        self.stored, self.usable = {}, False

    def remember(self, snap: Snapshot, results: Sequence[ItemResult]) -> None:
        if any(r.outcome is Outcome.FAILED for r in results):
            self.invalidate()
            return
        stored = dict(snap.stored)
        for result in results:
            item = result.item
            if item.action in (Action.CREATE, Action.UPDATE) and item.data is not None:
                stored[item.path] = StoredSecret(
                    item.path, result.version or 0, dict(item.data), dict(result.metadata or {})
                )
            elif (
                item.custom_metadata is not None
                and item.path in stored
                and (item.action in (Action.METADATA, Action.SKIPPED))
            ):
                old = stored[item.path]
                stored[item.path] = StoredSecret(
                    old.path, old.version, old.data, dict(result.metadata or {})
                )
            elif item.action is Action.PRUNE and item.path in stored:
                old = stored[item.path]
                stored[item.path] = StoredSecret(old.path, old.version, None, old.custom_metadata)
        self.stored, self.usable = stored, True


def execute(
    store: KvStore,
    items: Sequence[PlanItem],
    *,
    guard: Callable[[], int | None] | None = None,
) -> list[ItemResult]:
    """Carry out the plan on the store's bounded pool, each write independent of the others.
    With a guard, every write first checks that we may still write, and records the fencing
    token it wrote under (`writer_lease` in custom_metadata)."""
    writes = [i for i in items if _needs_write(i)]
    done: dict[int, ItemResult] = {}
    results = store.executor().map(lambda i: _apply(store, i, guard), writes)
    for item, result in zip(writes, results, strict=True):
        done[id(item)] = result
    return [done.get(id(i)) or ItemResult(i, Outcome.DONE) for i in items]


def _needs_write(item: PlanItem) -> bool:
    return item.action.writes or (
        item.action is Action.SKIPPED and item.custom_metadata is not None
    )


def _apply(store: KvStore, item: PlanItem, guard: Callable[[], int | None] | None) -> ItemResult:
    try:
        meta = dict(item.custom_metadata or {})
        if guard is not None:
            fence = guard()
            if fence is None:
                return ItemResult(
                    item,
                    Outcome.FAILED,
                    error="not written: this replica is not the leader (or is shutting down)",
                )
            meta["writer_lease"] = str(fence)
        version = None
        if item.action in (Action.CREATE, Action.UPDATE):
            assert item.data is not None
            version = store.write(
                item.path, item.data, cas=item.expected_version, custom_metadata=meta
            )
        elif item.action in (Action.METADATA, Action.SKIPPED):
            store.write_metadata(item.path, meta)
        elif item.action is Action.PRUNE:
            current = store.read(item.path)
            if current is None or current.version != item.expected_version or not current.managed:
                raise CasConflict(path=item.path, expected_version=item.expected_version)
            store.soft_delete(item.path)
        log.info(
            "%s %s",
            item.action.value,
            item.path,
            extra={"action": item.action.value, "path": item.path},
        )
        return ItemResult(item, Outcome.DONE, version=version, metadata=meta)
    except VaultZpaError as exc:
        log.warning("%s %s failed: %s", item.action.value, item.path, exc)
        return ItemResult(item, Outcome.FAILED, error=str(exc))


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rotate_once(
    *,
    zpa: KeyAdmin,
    store: KvStore,
    items: Sequence[PlanItem],
    stored: Mapping[str, StoredSecret],
    listings: Sequence[Listing],
    rotation: RotationSettings,
    rules: Mapping[AssociationType, TypeRule] | None = None,
    requested: frozenset[tuple[AssociationType, str]] = frozenset(),
    dry_run: bool = False,
    grace: float | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    kill_at: str | None = None,
    guard: Callable[[], int | None] | None = None,
) -> list[RotationResult]:
    """Decide rotation for every group of a plan and take the due steps, at most
    `rotation.max_per_run` new rotations per run (rotations already in flight always resume).
    With `requested`, only those (type, group) pairs are looked at, and they rotate even when
    no policy says they are due."""
    rotator = Rotator(zpa=zpa, store=store, now=now, kill_at=kill_at, writer=guard, rules=rules)
    by_id = {(k.association_type, k.id): k for listing in listings for k in listing.keys}
    results: list[RotationResult] = []
    started = 0
    moment = now()
    for item in items:
        secret = stored.get(item.path)
        if secret is None or secret.data is None or item.group_name is None:
            continue
        pair = (item.association_type, item.group_name)
        if requested and pair not in requested:
            continue
        policy = rotation.policy(item.association_type, item.group_name)
        if grace is not None:
            policy = replace(policy, grace=grace)
        held = by_id.get((item.association_type, secret.data.get("key_id", "")))
        decision = decide(secret, held, policy, moment, requested=pair in requested)
        state = secret.custom_metadata.get("rotation_state")
        if decision.action == "none":
            continue
        if decision.action in ("wait", "blocked") or dry_run:
            results.append(RotationResult(item.path, item.group_name, decision, state))
            continue
        if decision.action == "start" and started >= rotation.max_per_run:
            results.append(
                RotationResult(
                    item.path,
                    item.group_name,
                    Decision(
                        "wait",
                        f"deferred: {rotation.max_per_run} rotations already started this run",
                    ),
                    state,
                )
            )
            continue
        started += decision.action == "start"
        results.append(
            rotator.run(item.path, policy, reason=decision.reason, requested=pair in requested)
        )
    return results
