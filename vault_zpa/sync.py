"""run_once: the only place the steps of a sync are sequenced.

list ZPA (per association type) -> read Vault (concurrently) -> plan (pure) -> write -> report
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from vault_zpa import layout, reconcile
from vault_zpa.errors import CasConflict, VaultError, VaultZpaError, ZpaError
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
    concurrency: int = 16
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
    store: KvStore, paths: Sequence[str], *, concurrency: int, progress: Progress | None = None
) -> dict[str, StoredSecret]:
    """Read every path on a bounded pool; absent paths are left out of the result."""
    if not paths:
        return {}
    found: dict[str, StoredSecret] = {}
    with ThreadPoolExecutor(
        max_workers=min(concurrency, len(paths)), thread_name_prefix="vault-read"
    ) as pool:
        for path, secret in zip(paths, pool.map(store.read, paths), strict=True):
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
) -> Snapshot:
    """List ZPA, read what Vault holds at every relevant path, and plan. Writes nothing."""
    started = now()
    listings = list_all(source, options.association_types)
    desired = reconcile.desired(
        listings, prefix=options.prefix, rules=options.rules, scope=options.scope
    )
    paths = set(desired.paths)
    if options.find_orphans and not options.scope.groups:
        state = layout.state_path(options.prefix, "")
        for root in _orphan_roots(options):
            paths.update(p for p in store.list_tree(root) if not p.startswith(state))
    if progress:
        progress.start(len(paths))
    stored = read_all(store, sorted(paths), concurrency=options.concurrency, progress=progress)
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
) -> Report:
    """One complete sync. Per-item failures are reported, not raised; a failure that makes the
    whole run meaningless (Vault unreachable before anything was read) is raised."""
    snap = inspect(source=source, store=store, options=options, now=now, progress=progress)
    plan, listings, started, errors = snap.plan, snap.listings, snap.started, snap.errors
    if options.dry_run:
        results = tuple(
            ItemResult(i, Outcome.PLANNED if _needs_write(i) else Outcome.DONE) for i in plan.items
        )
    else:
        results = tuple(execute(store, plan.items, concurrency=options.concurrency))
    return Report(
        results=results,
        listings=tuple(listings),
        dry_run=options.dry_run,
        started_at=_stamp(started),
        finished_at=_stamp(now()),
        errors=errors,
    )


def execute(store: KvStore, items: Sequence[PlanItem], *, concurrency: int) -> list[ItemResult]:
    """Carry out the plan: every write concurrently, each one independent of the others."""
    writes = [i for i in items if _needs_write(i)]
    done: dict[int, ItemResult] = {}
    if writes:
        with ThreadPoolExecutor(
            max_workers=min(concurrency, len(writes)), thread_name_prefix="vault-write"
        ) as pool:
            for item, result in zip(
                writes, pool.map(lambda i: _apply(store, i), writes), strict=True
            ):
                done[id(item)] = result
    return [done.get(id(i)) or ItemResult(i, Outcome.DONE) for i in items]


def _needs_write(item: PlanItem) -> bool:
    return item.action.writes or (
        item.action is Action.SKIPPED and item.custom_metadata is not None
    )


def _apply(store: KvStore, item: PlanItem) -> ItemResult:
    try:
        version = None
        if item.action in (Action.CREATE, Action.UPDATE):
            assert item.data is not None
            assert item.custom_metadata is not None
            version = store.write(
                item.path,
                item.data,
                cas=item.expected_version,
                custom_metadata=item.custom_metadata,
            )
        elif item.action in (Action.METADATA, Action.SKIPPED):
            assert item.custom_metadata is not None
            store.write_metadata(item.path, item.custom_metadata)
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
        return ItemResult(item, Outcome.DONE, version=version)
    except (VaultError, VaultZpaError) as exc:
        log.warning("%s %s failed: %s", item.action.value, item.path, exc)
        return ItemResult(item, Outcome.FAILED, error=str(exc))


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
