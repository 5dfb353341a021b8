"""Pure planning: what ZPA says against what Vault holds, decided per group. No I/O here.

The planner never talks to ZPA or Vault; `sync.run_once` gathers the facts, calls `desired()`
to learn which paths to read, then `plan()` to decide, then carries the plan out.
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from vault_zpa import layout
from vault_zpa.errors import ConfigError
from vault_zpa.model import (
    MANAGED_BY,
    SYNCED_VERSION,
    Action,
    AssociationType,
    Listing,
    Plan,
    PlanItem,
    ProvisioningKey,
    StoredSecret,
    ZpaGroup,
    comparable,
)

# custom_metadata keys vault-zpa owns and refreshes; anything else found there is preserved.
VOLATILE_KEYS: tuple[str, ...] = (
    "managed_by",
    "usage_count",
    "enabled",
    "zpa_modified_time",
    "key_state",
    "lease_expires_at",
)


@dataclass(frozen=True, slots=True)
class TypeRule:
    """Per-association-type settings the planner needs."""

    path_template: str = layout.DEFAULT_TEMPLATE
    key_name_pattern: re.Pattern[str] | None = None
    lease_seconds: int = 30 * 86400


@dataclass(frozen=True, slots=True)
class Scope:
    """What this run looks at: which groups, whether orphans may be pruned or paths adopted."""

    groups: frozenset[str] = frozenset()
    prune: bool = False
    adopt: bool = False


@dataclass(frozen=True, slots=True)
class DesiredGroup:
    """One ZPA group of one association type, with the path its secret belongs at."""

    association_type: AssociationType
    group_id: str
    group_name: str
    keys: tuple[ProvisioningKey, ...]
    path: str | None
    path_error: str | None = None
    listed: ZpaGroup | None = None  # the group as its groups listing showed it (keyless ones)


@dataclass(frozen=True, slots=True)
class Desired:
    groups: tuple[DesiredGroup, ...]
    collisions: Mapping[str, tuple[DesiredGroup, ...]] = field(default_factory=dict)

    @property
    def paths(self) -> list[str]:
        return sorted({g.path for g in self.groups if g.path is not None})


def desired(
    listings: Iterable[Listing],
    *,
    prefix: str,
    rules: Mapping[AssociationType, TypeRule],
    scope: Scope,
) -> Desired:
    """Group every listed key by (association type, group) and place each group at its path.

    Every listed group is placed, and collisions found, before `scope.groups` filters: the
    placement of one group depends on the others (layout.assign_paths), and a filtered run must
    place and refuse exactly as a full run does."""
    found: list[tuple[AssociationType, str, str, tuple[ProvisioningKey, ...]]] = []
    refs: list[layout.GroupRef] = []
    for listing in listings:
        rule = rules.get(listing.association_type, TypeRule())
        by_group: dict[str, list[ProvisioningKey]] = defaultdict(list)
        for key in listing.keys:
            by_group[key.group_id].append(key)
        for group_id, keys in sorted(by_group.items()):
            name = _group_name(keys)
            found.append((listing.association_type, group_id, name, tuple(keys)))
            refs.append(
                layout.GroupRef(
                    rule.path_template,
                    prefix,
                    listing.association_type.value,
                    name,
                    group_id,
                    keys[0].microtenant_id,
                )
            )
    everyone: list[DesiredGroup] = []
    for (atype, group_id, name, held), placed in zip(found, layout.assign_paths(refs), strict=True):
        if isinstance(placed, str):
            everyone.append(DesiredGroup(atype, group_id, name, held, placed))
        else:
            everyone.append(DesiredGroup(atype, group_id, name, held, None, placed.message))
    # Keyed groups carry their listed group too: provisioning must know one is disabled.
    listed_groups = {
        (g.association_type, g.id): g for listing in listings for g in listing.groups or ()
    }
    everyone = [
        replace(g, listed=listed_groups.get((g.association_type, g.group_id))) for g in everyone
    ]
    everyone.extend(_keyless(listings, everyone, refs, prefix=prefix, rules=rules))
    by_path: dict[str, list[DesiredGroup]] = defaultdict(list)
    for group in everyone:
        if group.path is not None:
            by_path[group.path].append(group)
    collisions = {p: tuple(gs) for p, gs in by_path.items() if len(gs) > 1}
    groups = [g for g in everyone if not scope.groups or g.group_name in scope.groups]
    return Desired(tuple(groups), collisions)


def _keyless(
    listings: Iterable[Listing],
    keyed: Sequence[DesiredGroup],
    keyed_refs: Sequence[layout.GroupRef],
    *,
    prefix: str,
    rules: Mapping[AssociationType, TypeRule],
) -> list[DesiredGroup]:
    """Groups ZPA lists without a single key. They are placed without moving anyone: a keyless
    group gets its path only when that path is its own plain one and no other group, keyed or
    not, renders to it (so when it gets a key, the collision rule places it there too and
    nobody else moves). Otherwise it has no path and is reported, never written."""
    with_keys = {(g.association_type, g.group_id) for g in keyed}
    taken: dict[str, list[str]] = defaultdict(list)
    for ref in keyed_refs:
        with contextlib.suppress(ConfigError):
            taken[ref.path()].append(ref.group_id)
    for group in keyed:
        if group.path is not None:
            taken[group.path].append(group.group_id)
    pending: list[tuple[ZpaGroup, layout.GroupRef]] = []
    for listing in listings:
        rule = rules.get(listing.association_type, TypeRule())
        for zgroup in listing.groups or ():
            if (zgroup.association_type, zgroup.id) in with_keys:
                continue
            ref = layout.GroupRef(
                rule.path_template,
                prefix,
                listing.association_type.value,
                zgroup.name,
                zgroup.id,
                zgroup.microtenant_id,
            )
            pending.append((zgroup, ref))
            with contextlib.suppress(ConfigError):
                taken[ref.path()].append(zgroup.id)
    out = []
    for zgroup, ref in sorted(pending, key=lambda p: (p[0].association_type, p[0].id)):
        try:
            path = ref.path()
        except ConfigError as exc:
            out.append(_no_key_group(zgroup, None, exc.message))
            continue
        others = [gid for gid in taken[path] if gid != zgroup.id]
        if others:
            out.append(
                _no_key_group(
                    zgroup,
                    None,
                    f"its path {path} is also another group's (id {others[0]}); rename one",
                )
            )
        else:
            out.append(_no_key_group(zgroup, path, None))
    return out


def _no_key_group(zgroup: ZpaGroup, path: str | None, error: str | None) -> DesiredGroup:
    return DesiredGroup(
        zgroup.association_type,
        zgroup.id,
        zgroup.name,
        (),
        path,
        error,
        listed=zgroup,
    )


def select_key(
    keys: Sequence[ProvisioningKey], pattern: re.Pattern[str] | None = None
) -> ProvisioningKey | None:
    """DESIGN.md's rule: enabled, not exhausted, name matching the pattern if one is set;
    newest creationTime first, ties broken by id."""
    eligible = [
        k for k in keys if k.eligible and (pattern is None or pattern.fullmatch(k.name) is not None)
    ]
    if not eligible:
        return None
    return max(eligible, key=lambda k: (k.creation_time, _id_order(k.id)))


def secret_data(key: ProvisioningKey) -> dict[str, str]:
    """DESIGN.md's KV data fields for one key; a new version is written only when they change."""
    data = {
        "provisioning_key": key.key.reveal(),
        "key_id": key.id,
        "key_name": key.name,
        "association_type": key.association_type.value,
        "group_id": key.group_id,
        "group_name": key.group_name,
        "enrollment_cert_id": key.enrollment_cert_id,
        "enrollment_cert_name": key.enrollment_cert_name,
        "max_usage": str(key.max_usage),
    }
    if key.microtenant_id:
        data["microtenant_id"] = key.microtenant_id
    return data


def volatile_metadata(key: ProvisioningKey, rule: TypeRule) -> dict[str, str]:
    """Facts that change without the key changing; kept in custom_metadata, never versioned."""
    return {
        "managed_by": MANAGED_BY,
        "usage_count": str(key.usage_count),
        "enabled": "true" if key.enabled else "false",
        "zpa_modified_time": str(key.modified_time),
        "key_state": "ok",
        # The lease runs from the key's creation in ZPA, so it is the same on every replica
        # and every run: no clock of ours decides it.
        "lease_expires_at": iso(key.creation_time + rule.lease_seconds),
    }


def plan(
    desired_state: Desired,
    *,
    listings: Sequence[Listing],
    stored: Mapping[str, StoredSecret],
    rules: Mapping[AssociationType, TypeRule],
    scope: Scope,
    now: datetime,
    excluded: frozenset[str] = frozenset(),
    provisions: Callable[[AssociationType, str], bool] = lambda atype, name: False,
) -> Plan:
    """Decide one action per group and per orphaned path. `stored` holds whatever Vault has at
    the desired paths and, when orphans are looked for, at every managed path under the prefix.
    `excluded` names key ids a rotation is retiring or has retired: they are never written to
    any path, whatever the group is called now (rotation.py explains why that keeps a served
    key from being deleted)."""
    items: list[PlanItem] = []
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # Groups known to be gone: not in a complete, unfiltered listing of their type.
    complete = {listing.association_type for listing in listings if listing.complete}
    listed = {(g.association_type, g.group_id) for g in desired_state.groups}

    def gone(atype: AssociationType, group_id: str) -> bool:
        return not scope.groups and atype in complete and (atype, group_id) not in listed

    for group in desired_state.groups:
        items.append(
            _plan_group(
                group,
                desired_state,
                stored,
                rules.get(group.association_type, TypeRule()),
                scope,
                stamp,
                excluded,
                gone,
                provisions,
            )
        )
    items.extend(_plan_orphans(desired_state, listings, stored, scope))
    return Plan(tuple(items), tuple(listings))


def _plan_group(
    group: DesiredGroup,
    desired_state: Desired,
    stored: Mapping[str, StoredSecret],
    rule: TypeRule,
    scope: Scope,
    stamp: str,
    excluded: frozenset[str] = frozenset(),
    gone: Callable[[AssociationType, str], bool] = lambda atype, group_id: False,
    provisions: Callable[[AssociationType, str], bool] = lambda atype, name: False,
) -> PlanItem:
    def item(action: Action, reason: str, **kw: object) -> PlanItem:
        return PlanItem(
            action=action,
            association_type=group.association_type,
            path=group.path or "",
            reason=reason,
            group_id=group.group_id,
            group_name=group.group_name,
            **kw,  # type: ignore[arg-type]
        )

    # Provisioning (opt-in) makes a key for a group with none usable: only for a group this
    # run saw in ZPA's group listing, enabled (not when the groups could not be listed).
    wants = (
        provisions(group.association_type, group.group_name)
        and group.listed is not None
        and group.listed.enabled
    )
    if group.path is None:
        if not group.keys and not wants:
            return item(Action.NO_KEY, f"no provisioning key in ZPA; no path: {group.path_error}")
        return item(Action.CONFLICT, f"no safe path for this group: {group.path_error}")
    if group.path in desired_state.collisions:
        others = [g for g in desired_state.collisions[group.path] if g is not group]
        names = ", ".join(f"{g.group_name!r} (id {g.group_id})" for g in others)
        return item(Action.CONFLICT, f"path collides with group {names}; neither is written")

    current = stored.get(group.path)
    # A retiring key is never written anew, but the key the path already serves is kept (it is
    # still valid, and keeping it writes nothing that could bring a removed key back).
    served = current.data.get("key_id") if current is not None and current.data else None
    candidates = tuple(k for k in group.keys if k.id not in excluded or k.id == served)
    key = select_key(candidates, rule.key_name_pattern)
    if key is None:
        keyless = not group.keys
        why = (
            "no provisioning key in ZPA"
            if keyless
            else _why_no_key(candidates, rule.key_name_pattern)
        )
        if len(candidates) < len(group.keys):
            why += f"; {len(group.keys) - len(candidates)} retired or being retired by a rotation"
        if group.listed is not None and not group.listed.enabled:
            why += "; the group is disabled in ZPA"
        if wants:
            return _provision_item(item, group, current, why, gone)
        if keyless and not (group.listed is not None and not group.listed.enabled):
            why += " (provisioning is off for it)"
        action = Action.NO_KEY if keyless else Action.SKIPPED
        held_by = _other_holder(group, current, gone)
        if held_by is not None:
            return item(Action.CONFLICT, f"{why}; {held_by}")
        if (
            current is not None
            and current.managed
            and current.custom_metadata.get("key_state") != "no-eligible-key"
        ):
            meta = {
                **current.custom_metadata,
                "key_state": "no-eligible-key",
                "last_synced_at": stamp,
            }
            return item(
                action,
                f"{why}; keeping the last key in Vault",
                custom_metadata=meta,
                expected_version=current.version,
            )
        return item(action, why)

    data = secret_data(key)
    same = comparable(data)  # Vault's side is held with the key as a digest
    volatile = volatile_metadata(key, rule)
    if current is None:
        meta = {**volatile, "last_synced_at": stamp}
        return item(
            Action.CREATE,
            "new group in ZPA",
            key=key,
            data=data,
            custom_metadata=meta,
            expected_version=0,
        )

    merged = {**current.custom_metadata, **volatile, "last_synced_at": stamp}

    def write(action: Action, reason: str) -> PlanItem:
        """A write of this key at this path, check-and-set against the version read."""
        return item(
            action,
            reason,
            key=key,
            data=data,
            custom_metadata=merged,
            expected_version=current.version,
        )

    if not current.managed:
        if current.data is not None and comparable(current.data) == same:
            # Our own create that died between the data write and the metadata write.
            return write(Action.METADATA, "data already matches ZPA; marking it as managed")
        if not scope.adopt:
            return item(
                Action.CONFLICT,
                "path exists and is not managed by vault-zpa; rerun with --adopt to take it over",
                key=key,
            )
        return write(Action.UPDATE, "adopting an existing path (--adopt)")
    held = current.data or {}
    holder = held.get("group_id")
    if holder and holder != group.group_id and not gone(group.association_type, holder):
        # The path's place moved to another group that still exists (a rename, or a slug
        # collision that came or went): never hand one group's readers another group's key. A
        # group deleted and made again under its name takes its path back.
        return item(
            Action.CONFLICT,
            f"path holds the secret of group {held.get('group_name')!r} "
            f"(id {holder}), which still exists or may (a partial or filtered listing); not "
            "overwritten: delete this path with `vault kv metadata delete` to give it to this "
            "group",
            key=key,
        )
    if current.data is None:
        return write(Action.UPDATE, "current version is deleted; writing the key again")
    if comparable(current.data) != same:
        return write(Action.UPDATE, _why_changed(comparable(current.data), same, current))
    changed = sorted(k for k, v in volatile.items() if current.custom_metadata.get(k) != v)
    if changed:
        return write(Action.METADATA, f"metadata changed: {', '.join(changed)}")
    return item(Action.UNCHANGED, "Vault matches ZPA", key=key, expected_version=current.version)


def _other_holder(
    group: DesiredGroup,
    current: StoredSecret | None,
    gone: Callable[[AssociationType, str], bool],
) -> str | None:
    """Why the path is not this group's to touch: it holds the secret of another group that
    still exists (or may: a partial listing), or None."""
    if current is None or not current.managed:
        return None
    held = current.data or {}
    holder = held.get("group_id")
    if holder and holder != group.group_id and not gone(group.association_type, holder):
        return (
            f"the path holds the secret of group {held.get('group_name')!r} (id {holder}), "
            "which still exists or may; not touched (delete that path with `vault kv metadata "
            "delete` to give it to this group)"
        )
    return None


def _provision_item(
    item: Callable[..., PlanItem],
    group: DesiredGroup,
    current: StoredSecret | None,
    why: str,
    gone: Callable[[AssociationType, str], bool],
) -> PlanItem:
    """A PROVISION item, unless the path is not this group's to write. `replaces` names the
    gone group whose secret the path holds (a group deleted and made again under its name)."""
    if current is not None and not current.managed:
        return item(
            Action.CONFLICT,
            f"{why}; the path exists and is not managed by vault-zpa, so no key is provisioned "
            "for it (free the path, or set another path template)",
        )
    held_by = _other_holder(group, current, gone)
    if held_by is not None:
        return item(Action.CONFLICT, f"{why}; {held_by}")
    holder = ((current.data or {}) if current is not None else {}).get("group_id")
    return item(
        Action.PROVISION,
        f"{why}; provisioning a key",
        expected_version=current.version if current is not None else 0,
        replaces=holder if holder and holder != group.group_id else None,
    )


def _plan_orphans(
    desired_state: Desired,
    listings: Sequence[Listing],
    stored: Mapping[str, StoredSecret],
    scope: Scope,
) -> list[PlanItem]:
    """Managed secrets whose group has no key in ZPA any more: reported, or soft-deleted with
    --prune. Only what this run could see is ever an orphan:

    - its association type was listed, completely (absence in a partial listing proves
      nothing), and no group filter was given;
    - its microtenant was covered. A listing scoped to microtenant M (ZPA_MICROTENANT_ID)
      sees only M's keys, so only secrets whose data says `microtenant_id: M` can be orphans
      (for M = 0, ZPA's default microtenant, those without a microtenant_id); the parent's and
      other microtenants' secrets are left out entirely. An unscoped listing covers the
      default microtenant, so secrets without a microtenant_id can be orphans; a secret of
      microtenant X is only pruned when the listing showed at least one key of X (ZPA omits
      microtenants the API client may not see), and otherwise reported, never pruned.
    """
    if scope.groups:
        return []  # a filtered run cannot tell what is gone
    wanted = set(desired_state.paths)
    by_type = {listing.association_type: listing for listing in listings}
    items = []
    for path, secret in sorted(stored.items()):
        if path in wanted or not secret.managed or secret.data is None:
            continue
        try:
            atype = AssociationType(secret.data.get("association_type", ""))
        except ValueError:
            continue
        listing = by_type.get(atype)
        if listing is None or not listing.complete:
            continue  # not part of this run, or absence in a partial listing proves nothing
        tenant = secret.data.get("microtenant_id") or None
        if tenant == "0":
            tenant = None  # ZPA's default microtenant; keys of it carry no microtenant_id
        reason = "group has no key in ZPA any more"
        prunable = True
        alive = {g.id for g in listing.groups or ()}
        if secret.data.get("group_id") in alive:
            # Listed by ZPA, so it exists: whatever this path is, it is not a gone group's.
            prunable = False
            reason = (
                "the group still exists in ZPA but this path is not its place now (renamed, or "
                "its path moved); not pruned: delete it by hand (`vault kv metadata delete`) "
                "once nothing reads it"
            )
        elif listing.groups_error is not None:
            prunable = False
            reason = (
                "group has no key in ZPA any more, but ZPA's groups could not be listed "
                f"({listing.groups_error[:200]}), so it is not known to be gone; not pruned"
            )
        if listing.microtenant_id is not None:
            covered = None if listing.microtenant_id == "0" else listing.microtenant_id
            if tenant != covered:
                continue  # another microtenant's (or the parent's) secret: not ours to judge
        elif tenant is not None and not any(k.microtenant_id == tenant for k in listing.keys):
            prunable = False
            reason = (
                f"group has no key in ZPA any more, and no key of microtenant {tenant} was "
                f"listed; not pruned (run with ZPA_MICROTENANT_ID={tenant} to prune it)"
            )
        if prunable and not listing.keys:
            # A complete but empty listing with managed secrets still in Vault is far likelier
            # a wrong customer or microtenant id than every group deleted at once.
            prunable = False
            reason = (
                f"ZPA listed no {atype.value} key at all; not pruning every group of the type "
                "(check ZPA_CUSTOMER_ID / ZPA_MICROTENANT_ID; delete by hand if they really went)"
            )
        base = PlanItem(
            action=Action.ORPHAN,
            association_type=atype,
            path=path,
            reason="",
            group_id=secret.data.get("group_id"),
            group_name=secret.data.get("group_name"),
            expected_version=secret.version,
        )
        if scope.prune and prunable:
            items.append(_replace(base, Action.PRUNE, f"{reason}; soft-deleting (--prune)"))
        elif prunable:
            items.append(_replace(base, Action.ORPHAN, f"{reason}; use --prune to soft-delete"))
        else:
            items.append(_replace(base, Action.ORPHAN, reason))
    return items


def _replace(item: PlanItem, action: Action, reason: str) -> PlanItem:
    from dataclasses import replace

    return replace(item, action=action, reason=reason)


def _why_no_key(keys: Sequence[ProvisioningKey], pattern: re.Pattern[str] | None) -> str:
    if pattern is not None and not any(pattern.fullmatch(k.name) for k in keys):
        return f"no key name matches pattern {pattern.pattern!r}"
    unusable = [k for k in keys if k.problem is not None]
    disabled = sum(1 for k in keys if k.problem is None and not k.enabled)
    exhausted = sum(1 for k in keys if k.problem is None and k.enabled and k.exhausted)
    counts = f"{disabled} disabled, {exhausted} exhausted"
    if not unusable:
        return f"no eligible key ({counts})"
    shown = "; ".join(f"key {k.id}: {k.problem}" for k in unusable[:3])
    more = f"; and {len(unusable) - 3} more" if len(unusable) > 3 else ""
    return f"no eligible key ({len(unusable)} unusable, {counts}): {shown}{more}"


def _why_changed(old: Mapping[str, str], new: Mapping[str, str], current: StoredSecret) -> str:
    """Which side changed. vault-zpa records the version it wrote (`synced_version`); a newer
    version at the path was written by someone else, so the difference is an edit in Vault."""
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    ours = current.custom_metadata.get(SYNCED_VERSION)
    if ours is not None and current.version and ours != str(current.version):
        return (
            f"changed in Vault: {', '.join(changed)} (version {current.version} was not "
            f"written by vault-zpa, which wrote version {ours}); restoring ZPA's key"
        )
    if old.get("key_id") != new.get("key_id"):
        return "ZPA now selects a different key"
    return f"changed in ZPA: {', '.join(changed)}"


def _group_name(keys: Sequence[ProvisioningKey]) -> str:
    names = {k.group_name for k in keys if k.group_name}
    return min(names) if names else ""


def _id_order(key_id: str) -> tuple[int, int, str]:
    return (1, int(key_id), "") if key_id.isdigit() else (0, 0, key_id)


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
