"""run_once: the only place the steps of a sync are sequenced.

list ZPA (per association type)  \
                                  +-> plan (pure, per type) -> write -> report
read Vault back (concurrently)   /

The ZPA listing and the Vault read-back run side by side (`stages`); with the default layout each
association type is planned and written while the next one is still being listed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from vault_zpa import layout, reconcile
from vault_zpa.concurrency import ordered_map
from vault_zpa.errors import CasConflict, VaultZpaError, ZpaError
from vault_zpa.model import (
    SYNCED_VERSION,
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
    comparable,
)
from vault_zpa.provision import ProvisionStep
from vault_zpa.reconcile import Scope, TypeRule
from vault_zpa.rotation import (
    Decision,
    GroupKey,
    Journal,
    KeyAdmin,
    RotationResult,
    RotationSettings,
    Rotator,
    decide,
    read_journal,
    read_journals,
)
from vault_zpa.vault.kv import KvStore

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    # Which groups get a key made when they have none usable (provision.py); none by default.
    provisions: Callable[[AssociationType, str], bool] = field(
        default=lambda atype, group_name: False
    )


@dataclass
class Progress:
    """Callbacks for a progress display; the CLI fills them, everything else ignores them."""

    start: Callable[[int], None] = field(default=lambda total: None)
    advance: Callable[[int], None] = field(default=lambda n: None)


def list_one(source: KeySource, atype: AssociationType) -> Listing:
    """One association type's listing; a failure marks it incomplete, never empty."""
    try:
        keys = source.list_provisioning_keys(atype)
    except ZpaError as exc:
        log.warning("listing %s failed: %s", atype.value, exc)
        return Listing(atype, (), complete=False, error=str(exc))
    # The microtenant the source is scoped to (ZpaClient.microtenant_id) bounds what prune may
    # touch; a source without one (a test double) lists everything.
    tenant = getattr(source, "microtenant_id", None)
    scoped = tenant if isinstance(tenant, str) and tenant else None
    # Groups too (ZpaClient.list_groups), so a group without a key is seen, reported and, when
    # asked, provisioned, and an alive group is never taken for gone. A source without it (a
    # test double) lists keys only; a failed group listing keeps the keys and prunes nothing.
    lister = getattr(source, "list_groups", None)
    if not callable(lister):
        return Listing(atype, tuple(keys), microtenant_id=scoped)
    try:
        groups = tuple(lister(atype))
    except ZpaError as exc:
        log.warning("listing %s groups failed: %s", atype.value, exc)
        return Listing(atype, tuple(keys), microtenant_id=scoped, groups_error=str(exc))
    return Listing(atype, tuple(keys), microtenant_id=scoped, groups=groups)


def read_all(
    store: KvStore,
    paths: Sequence[str],
    *,
    progress: Progress | None = None,
) -> dict[str, StoredSecret]:
    """Read every path on the store's bounded pool; absent paths are left out of the result.
    Secrets are kept compact (the key as a digest): a sync compares keys, it never uses them."""

    def _read(path: str) -> StoredSecret | None:
        secret = store.read(path)
        return None if secret is None else secret.compact()

    found: dict[str, StoredSecret] = {}
    if progress:
        progress.start(len(paths))
    for path, secret in zip(paths, ordered_map(store.executor(), _read, paths), strict=True):
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
    journals: Mapping[GroupKey, Journal] = field(default_factory=dict)  # rotation, by secret path

    @property
    def errors(self) -> tuple[str, ...]:
        return listing_errors(self.listings)


def listing_errors(listings: Iterable[Listing]) -> tuple[str, ...]:
    out = []
    for listing in listings:
        if not listing.complete:
            out.append(f"{listing.association_type.value}: {listing.error}")
        elif listing.groups_error is not None:
            out.append(
                f"{listing.association_type.value} groups: {listing.groups_error} (groups "
                "without a key not checked, nothing of the type pruned)"
            )
    return tuple(out)


@dataclass(frozen=True)
class Stage:
    """The plan for some association types, decided as soon as their listings arrived."""

    listings: tuple[Listing, ...]
    items: tuple[PlanItem, ...]


def stages(
    *,
    source: KeySource,
    store: KvStore,
    options: SyncOptions,
    started: datetime,
    stored: dict[str, StoredSecret],
    journals: dict[GroupKey, Journal] | None = None,
    progress: Progress | None = None,
    known: Mapping[str, StoredSecret] | None = None,
    known_journals: Mapping[GroupKey, Journal] | None = None,
) -> Iterator[Stage]:
    """Plan the run in stages, overlapping the ZPA listing with the Vault side.

    ZPA's 20 GET / 10 s limit makes listing 20,000 keys take 20 s, and that time need not be
    lost: what Vault holds is read back (LIST, then a read per path) while ZPA is still being
    listed, and with the default layout (one folder per association type) each type is planned
    as soon as its own listing is complete, so the caller can write it while the next type is
    listed. `stored` is filled with everything read, `journals` with the rotation journals,
    read after the secrets (rotation.py says why the order matters). With `known` (the daemon's
    memory of what it last wrote, and `known_journals`) Vault is not read at all."""
    journals = {} if journals is None else journals
    types = options.association_types
    read_back = known is None and options.find_orphans and not options.scope.groups
    roots = _orphan_roots(options)
    per_type = len(roots) == len(types) and roots != [options.prefix]
    zpa_pool = ThreadPoolExecutor(1, thread_name_prefix="zpa-list")
    vault_pool = ThreadPoolExecutor(1, thread_name_prefix="vault-read")
    stored.update(known or {})
    journals.update(known_journals or {})
    try:
        vault = (
            vault_pool.submit(_read_back, store, options, roots, progress) if read_back else None
        )
        listed = [zpa_pool.submit(list_one, source, atype) for atype in types]
        groups = [[i] for i in range(len(types))] if per_type else [list(range(len(types)))]
        for group in groups:
            listings = [listed[i].result() for i in group]
            desired = reconcile.desired(
                listings, prefix=options.prefix, rules=options.rules, scope=options.scope
            )
            if vault is not None:
                secrets, found = vault.result()  # once: it covers every stage's folder
                stored.update(secrets)
                journals.update(found)
                vault = None
            elif known is None and not read_back:
                stored.update(read_all(store, desired.paths, progress=progress))
                journals.update(_read_journals(store, options))
            if per_type:
                root = roots[group[0]] + "/"
                visible = {p: s for p, s in stored.items() if p.startswith(root)}
            else:
                visible = stored
            plan = reconcile.plan(
                desired,
                listings=listings,
                stored=visible,
                rules=options.rules,
                scope=options.scope,
                now=started,
                excluded=_shunned(listings, journals),
                provisions=options.provisions,
            )
            yield Stage(tuple(listings), plan.items)
    finally:
        # Normally every future is done by now; on an error (or Ctrl-C) do not sit out the rest
        # of a listing before reporting it.
        zpa_pool.shutdown(wait=False, cancel_futures=True)
        vault_pool.shutdown(wait=False, cancel_futures=True)


def _read_journals(store: KvStore, options: SyncOptions) -> dict[GroupKey, Journal]:
    """Rotation journals (KV v2 only: rotation refuses KV v1). Read after the secrets."""
    if store.kv_version != 2:
        return {}
    return store.executor().submit(read_journals, store, options.prefix).result()


def _read_back(
    store: KvStore, options: SyncOptions, roots: Sequence[str], progress: Progress | None
) -> tuple[dict[str, StoredSecret], dict[GroupKey, Journal]]:
    """Everything Vault holds under this run's folders. The LIST shows every path that exists
    (soft-deleted ones too), so only those are read: a desired path missing from it is a
    create, and a path created after the LIST makes the check-and-set create fail instead of
    being overwritten."""
    state = layout.state_path(options.prefix, "")
    # On the store's pool, whose threads keep their connections from run to run.
    trees = store.executor().submit(lambda: [store.list_tree(root) for root in roots]).result()
    existing = {p for tree in trees for p in tree if not p.startswith(state)}
    secrets = read_all(store, sorted(existing), progress=progress)
    return secrets, _read_journals(store, options)


def _in_plan_order(values: Iterable[T], item: Callable[[T], PlanItem]) -> list[T]:
    """Stages plan type by type; a plan lists every group first, then orphans by path."""
    orphan = (Action.ORPHAN, Action.PRUNE)
    listed = list(values)
    groups = [v for v in listed if item(v).action not in orphan]
    orphans = [v for v in listed if item(v).action in orphan]
    return groups + sorted(orphans, key=lambda v: item(v).path)


def inspect(
    *,
    source: KeySource,
    store: KvStore,
    options: SyncOptions,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    progress: Progress | None = None,
    warm: WarmState | None = None,
) -> Snapshot:
    """List ZPA, read what Vault holds at every relevant path, and plan. Writes nothing.
    With a usable `warm` (the daemon's memory of what it last wrote) Vault is not read at all."""
    snap, _ = _staged(
        source=source, store=store, options=options, now=now, progress=progress, warm=warm
    )
    return snap


def _staged(
    *,
    source: KeySource,
    store: KvStore,
    options: SyncOptions,
    now: Callable[[], datetime],
    progress: Progress | None,
    warm: WarmState | None,
    act: Callable[[Sequence[PlanItem]], list[ItemResult]] | None = None,
) -> tuple[Snapshot, list[ItemResult]]:
    """Drive `stages`, handing each stage's items to `act` as soon as it is planned; the
    snapshot and results come back in plan order (groups first, then orphans by path)."""
    started = now()
    stored: dict[str, StoredSecret] = {}
    journals: dict[GroupKey, Journal] = {}
    usable = warm is not None and warm.usable
    parts: list[Stage] = []
    results: list[ItemResult] = []
    for part in stages(
        source=source,
        store=store,
        options=options,
        started=started,
        stored=stored,
        journals=journals,
        progress=progress,
        known=warm.stored if warm is not None and usable else None,
        known_journals=warm.journals if warm is not None and usable else None,
    ):
        parts.append(part)
        if act is not None:
            results.extend(act(part.items))
    listings = tuple(listing for part in parts for listing in part.listings)
    items = _in_plan_order((i for part in parts for i in part.items), lambda i: i)
    snap = Snapshot(started, listings, stored, Plan(tuple(items), listings), journals)
    return snap, _in_plan_order(results, lambda r: r.item)


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
    provisioner: ProvisionStep | None = None,
) -> Report:
    """One complete sync. Per-item failures are reported, not raised; a failure that makes the
    whole run meaningless (Vault unreachable before anything was read) is raised.

    Each stage's writes start as soon as it is planned, while ZPA lists the next association
    type. `warm` (the daemon) replaces the Vault read-back with what the last run left there;
    `guard` returns the writer's lease version (the fencing token) or None to stop writing."""

    def act(items: Sequence[PlanItem]) -> list[ItemResult]:
        if options.dry_run:
            return [
                ItemResult(
                    i,
                    Outcome.PLANNED
                    if _needs_write(i) or i.action is Action.PROVISION
                    else Outcome.DONE,
                )
                for i in items
            ]
        # The journals this plan used may predate a rotation started since (the warm memory's,
        # or a read made while ZPA was still being listed): before an update, look at the
        # group's journal afresh, after the listing (rotation.py, I1).
        held = _retiring(store, options.prefix, items)
        clear = [i for i in items if id(i) not in held]
        done = {id(r.item): r for r in execute(store, clear, guard=guard)}
        if provisioner is not None:
            done.update(provisioner.run(clear))
        else:
            done.update(
                (id(i), ItemResult(i, Outcome.FAILED, error="provisioning is not set up here"))
                for i in clear
                if i.action is Action.PROVISION
            )
        return [done.get(id(i)) or ItemResult(i, Outcome.FAILED, error=held[id(i)]) for i in items]

    snap, results = _staged(
        source=source,
        store=store,
        options=options,
        now=now,
        progress=progress,
        warm=warm,
        act=act,
    )
    if provisioner is not None and not options.dry_run:
        results.extend(
            provisioner.resume(
                snap.journals,
                types=options.association_types,
                groups=options.scope.groups,
                listings=snap.listings,
            )
        )
    if warm is not None and not options.dry_run:
        warm.remember(snap, results)
        if warm.usable:
            warm.reread(store, options.prefix, [r.item for r in results])
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
    journals: Mapping[GroupKey, Journal] = field(default_factory=dict)
    usable: bool = False

    def invalidate(self) -> None:
        self.stored, self.journals, self.usable = {}, {}, False

    def remember(self, snap: Snapshot, results: Sequence[ItemResult]) -> None:
        # A failed provisioning changed at most its own group's path and journal, which
        # `reread` refreshes; any other failure leaves Vault unknown: read it all next run.
        if any(
            r.outcome is Outcome.FAILED and r.item.action is not Action.PROVISION for r in results
        ):
            self.invalidate()
            return
        stored = dict(snap.stored)
        for result in results:
            item = result.item
            if item.action in (Action.CREATE, Action.UPDATE) and item.data is not None:
                stored[item.path] = StoredSecret(
                    item.path,
                    result.version or 0,
                    comparable(item.data),
                    dict(result.metadata or {}),
                )
            elif (
                item.custom_metadata is not None
                and item.path in stored
                and (item.action in (Action.METADATA, Action.SKIPPED, Action.NO_KEY))
            ):
                old = stored[item.path]
                stored[item.path] = StoredSecret(
                    old.path, old.version, old.data, dict(result.metadata or {})
                )
            elif item.action is Action.PRUNE and item.path in stored:
                old = stored[item.path]
                stored[item.path] = StoredSecret(old.path, old.version, None, old.custom_metadata)
        self.stored, self.journals, self.usable = stored, dict(snap.journals), True

    def reread(self, store: KvStore, prefix: str, items: Sequence[PlanItem]) -> None:
        """What provisioning wrote is not in the snapshot: read those paths and journals again
        (a few reads), so the next warm run, and the rotations after this one, see them."""
        touched = [i for i in items if i.action is Action.PROVISION]
        if not touched:
            return
        try:
            journals = dict(self.journals)
            for item in touched:
                fresh = store.read(item.path)
                if fresh is None:
                    self.stored.pop(item.path, None)
                else:
                    self.stored[item.path] = fresh.compact()
                where = (item.association_type, item.group_id or "")
                journals[where] = read_journal(store, prefix, *where)
            self.journals = journals
        except VaultZpaError:
            self.invalidate()


def _shunned(listings: Iterable[Listing], journals: Mapping[GroupKey, Journal]) -> frozenset[str]:
    """Key ids no plan may write: every journal's retiring and retired keys, and the listed
    keys a journal shuns by its rotation's name (Journal.shuns)."""
    out = {i for j in journals.values() for i in j.excluded}
    for listing in listings:
        for key in listing.keys:
            journal = journals.get((key.association_type, key.group_id))
            if journal is not None and journal.shuns(key.id, key.name):
                out.add(key.id)
    return frozenset(out)


def _retiring(store: KvStore, prefix: str, items: Sequence[PlanItem]) -> dict[int, str]:
    """Updates that would write a key a rotation is retiring (or retired), by a fresh read of
    each updated group's journal. Updates are rare in a warm run, so this costs little."""
    held: dict[int, str] = {}  # by id(item): plan items hold dicts, so they do not hash
    for item in items:
        if item.action is not Action.UPDATE or item.key is None or store.kv_version != 2:
            continue
        try:
            journal = read_journal(store, prefix, item.association_type, item.group_id or "")
        except VaultZpaError as exc:
            held[id(item)] = f"not written: its rotation journal could not be read ({exc})"
            continue
        if journal.shuns(item.key.id, item.key.name):
            held[id(item)] = (
                f"not written: key {item.key.id} is being retired by a rotation "
                "(the next run reads Vault back and plans again)"
            )
    return held


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
    results = ordered_map(store.executor(), lambda i: _apply(store, i, guard), writes)
    for item, result in zip(writes, results, strict=True):
        done[id(item)] = result
    return [done.get(id(i)) or ItemResult(i, Outcome.DONE) for i in items]


def _needs_write(item: PlanItem) -> bool:
    return item.action.writes or (
        item.action in (Action.SKIPPED, Action.NO_KEY) and item.custom_metadata is not None
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
            if version:  # as the store recorded it (KV v2), so the warm state agrees with Vault
                meta[SYNCED_VERSION] = str(version)
        elif item.action in (Action.METADATA, Action.SKIPPED, Action.NO_KEY):
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
            extra={
                "action": item.action.value,
                "path": item.path,
                "writer_lease": meta.get("writer_lease"),
                "version": version,
            },
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
    prefix: str,
    items: Sequence[PlanItem],
    stored: Mapping[str, StoredSecret],
    listings: Sequence[Listing],
    rotation: RotationSettings,
    journals: Mapping[GroupKey, Journal] | None = None,
    rules: Mapping[AssociationType, TypeRule] | None = None,
    requested: frozenset[tuple[AssociationType, str]] = frozenset(),
    dry_run: bool = False,
    grace: float | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    kill_at: str | None = None,
    guard: Callable[[], int | None] | None = None,
    hook: Callable[[str], None] | None = None,
    rotator: Rotator | None = None,
) -> list[RotationResult]:
    """Decide rotation for every group of a plan and take the due steps, at most
    `rotation.max_per_run` new rotations per run (rotations already in flight always resume).
    With `requested`, only those (type, group) pairs are looked at, and they rotate even when
    no policy says they are due. One group's failure is reported and never stops the others.
    `rotator` replaces the one built from the other arguments (tests hand in variants)."""
    rotator = rotator or Rotator(
        zpa=zpa,
        store=store,
        prefix=prefix,
        now=now,
        kill_at=kill_at,
        writer=guard,
        rules=rules,
        hook=hook,
        takeover=rotation.takeover,
    )
    by_id = {(k.association_type, k.id): k for listing in listings for k in listing.keys}
    journals = journals or {}
    served: dict[str, list[str]] = {}
    for where, seen in stored.items():
        if seen.data is not None and seen.managed and "key_id" in seen.data:
            served.setdefault(seen.data["key_id"], []).append(where)
    results: list[RotationResult] = []
    started = 0
    moment = now()
    for item in items:
        secret = stored.get(item.path)
        if secret is None or secret.data is None or item.group_name is None:
            continue
        journal = journals.get((item.association_type, item.group_id or ""))
        rotating = journal is not None and journal.in_flight and journal.kind == "rotation"
        if item.action is Action.PROVISION and not rotating:
            # This run's provisioning gave the group a new key: do not rotate it on a stale
            # decision. A rotation in flight is resumed whatever the item (its new key used up
            # in the grace makes the group look keyless; only the rotation can end that).
            continue
        pair = (item.association_type, item.group_name)
        if requested and pair not in requested:
            continue
        policy = rotation.policy(item.association_type, item.group_name)
        if grace is not None:
            policy = replace(policy, grace=grace)
        held = by_id.get((item.association_type, secret.data.get("key_id", "")))
        decision = decide(
            secret, held, policy, moment, journal=journal, requested=pair in requested
        )
        state = journal.state.value if journal is not None and journal.in_flight else None
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
        try:
            result = rotator.run(
                item.path,
                policy,
                reason=decision.reason,
                requested=pair in requested,
                served=served,
                start=decision.action == "start",
                end_grace=decision.end_grace,
            )
        except VaultZpaError as exc:
            result = RotationResult(item.path, item.group_name, decision, state, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - one group's bug must not stop the others
            # The type only: an unexpected exception's message may quote a value it choked on.
            log.error("rotation of %s failed: internal error %s", item.path, type(exc).__name__)
            result = RotationResult(
                item.path,
                item.group_name,
                decision,
                state,
                error=f"internal error: {type(exc).__name__}",
            )
        results.append(result)
    return results
