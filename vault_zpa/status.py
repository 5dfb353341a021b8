"""`vault-zpa status`: what Vault holds against what ZPA says now, per group. Read-only."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from vault_zpa.model import Action, PlanItem, ProvisioningKey, StoredSecret
from vault_zpa.rotation import RotationSettings, decide
from vault_zpa.sync import Snapshot

SCHEMA_VERSION = 1
NEAR_EXHAUSTION = 0.8

_STATE = {
    Action.UNCHANGED: "in-sync",
    Action.CREATE: "missing",
    Action.UPDATE: "drift",
    Action.METADATA: "stale-metadata",
    Action.ORPHAN: "orphan",
    Action.PRUNE: "orphan",
    Action.CONFLICT: "conflict",
    Action.SKIPPED: "no-eligible-key",
    Action.NO_KEY: "no-key",
    Action.PROVISION: "needs-key",  # provisioning is on: the next sync makes one
}


@dataclass(frozen=True, slots=True)
class GroupStatus:
    association_type: str
    group_name: str | None
    group_id: str | None
    path: str
    state: str
    reason: str
    key_name: str | None
    key_id: str | None
    usage_count: int | None
    max_usage: int | None
    last_synced_at: str | None
    lease_expires_at: str | None
    rotation: str = "none"  # none | due | in-progress | waiting | needs-human
    rotation_reason: str = ""

    @property
    def usage_ratio(self) -> float | None:
        if self.usage_count is None or not self.max_usage:
            return None
        return self.usage_count / self.max_usage

    @property
    def near_exhaustion(self) -> bool:
        ratio = self.usage_ratio
        return ratio is not None and ratio >= NEAR_EXHAUSTION


def rows(snapshot: Snapshot, rotation: RotationSettings | None = None) -> list[GroupStatus]:
    rotation = rotation or RotationSettings()
    by_id = {(k.association_type, k.id): k for lst in snapshot.listings for k in lst.keys}
    out = []
    for item in snapshot.plan.items:
        stored = snapshot.stored.get(item.path)
        held = None
        if stored is not None and stored.data is not None:
            held = by_id.get((item.association_type, stored.data.get("key_id", "")))
        row = _row(item, stored, held)
        if stored is not None and stored.data is not None:
            policy = rotation.policy(item.association_type, item.group_name)
            decision = decide(
                stored,
                held,
                policy,
                snapshot.started,
                journal=snapshot.journals.get((item.association_type, item.group_id or "")),
            )
            label = {
                "start": "due",
                "resume": "in-progress",
                "wait": "waiting",
                "blocked": "needs-human",
            }.get(decision.action, "none")
            row = replace(row, rotation=label, rotation_reason=decision.reason)
        out.append(row)
    return out


def _row(item: PlanItem, stored: StoredSecret | None, held: ProvisioningKey | None) -> GroupStatus:
    data = (stored.data if stored else None) or {}
    meta = stored.custom_metadata if stored else {}
    # The key Vault holds, as ZPA lists it now: once it is used up, the plan has no key for the
    # group, and the metadata still says what the last sync saw (8/10 for a key now at 10/10).
    key = held or item.key
    usage = key.usage_count if key else _int(meta.get("usage_count"))
    max_usage = key.max_usage if key else _int(data.get("max_usage"))
    return GroupStatus(
        association_type=item.association_type.value,
        group_name=item.group_name,
        group_id=item.group_id,
        path=item.path,
        state=_STATE[item.action],
        reason=item.reason,
        key_name=data.get("key_name"),
        key_id=data.get("key_id"),
        usage_count=usage,
        max_usage=max_usage,
        last_synced_at=meta.get("last_synced_at"),
        lease_expires_at=meta.get("lease_expires_at"),
    )


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# States that need a person (exit 1). `stale-metadata` (only usage or lease facts moved) and a
# rotation that is merely due or waiting are what a scheduled sync handles by itself.
ATTENTION = frozenset(
    {"missing", "drift", "orphan", "conflict", "no-eligible-key", "no-key", "needs-key"}
)


def needs_attention(snapshot: Snapshot, rotation: RotationSettings | None = None) -> bool:
    """Exit 1 for `vault-zpa status`: a listing failed, or a row needs a sync or a person."""
    return bool(snapshot.errors) or any(
        r.state in ATTENTION or r.rotation == "needs-human" for r in rows(snapshot, rotation)
    )


def to_json(
    snapshot: Snapshot,
    *,
    mount: str,
    rotation: RotationSettings | None = None,
    not_found: list[str] | None = None,
) -> dict[str, Any]:
    items = rows(snapshot, rotation)
    return {
        "schema_version": SCHEMA_VERSION,
        "checked_at": snapshot.started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mount": mount,
        "in_sync": all(r.state == "in-sync" for r in items) and not snapshot.errors,
        "groups": [
            {
                **{k: getattr(r, k) for k in r.__dataclass_fields__},
                "kv_path": f"{mount}/{r.path}",
                "usage_ratio": r.usage_ratio,
                "near_exhaustion": r.near_exhaustion,
            }
            for r in items
        ],
        "errors": list(snapshot.errors),
        "not_found": list(not_found or []),
    }


def to_text(
    snapshot: Snapshot,
    *,
    mount: str,
    rotation: RotationSettings | None = None,
    not_found: list[str] | None = None,
) -> str:
    items = rows(snapshot, rotation)
    header = ("TYPE", "GROUP", "STATE", "KEY (IN VAULT)", "USAGE", "LAST SYNCED", "LEASE EXPIRES")
    table = [header]
    for r in items:
        usage = "-" if r.usage_count is None else f"{r.usage_count}/{r.max_usage}"
        if r.near_exhaustion:
            usage += " !"
        table.append(
            (
                r.association_type,
                _clip(r.group_name or r.path),
                r.state,
                _clip(r.key_name or "-"),
                usage,
                r.last_synced_at or "-",
                (r.lease_expires_at or "-") + (" !" if _expired(r, snapshot) else ""),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    for r in items:
        if r.state not in ("in-sync",):
            where = f"{mount}/{r.path}" if r.path else f"group {r.group_name!r}"
            lines.append(f"{r.state}: {where}: {r.reason}")
        if r.rotation != "none":
            lines.append(f"rotation {r.rotation}: {mount}/{r.path}: {r.rotation_reason}")
        if r.near_exhaustion:
            lines.append(
                f"warning: {r.group_name}: key {r.key_name} has used {r.usage_count} of "
                f"{r.max_usage} enrollments"
            )
    expired = [r for r in items if _expired(r, snapshot)]
    if expired and not (rotation or RotationSettings()).any_enabled:
        lines.append(
            f"note: {len(expired)} lease(s) have expired (!) and rotation is off, so nothing "
            "rotates them; turn it on per association type ([association_type.T.rotation])"
        )
    for error in snapshot.errors:
        lines.append(f"error: {error}")
    for name in not_found or []:
        lines.append(f"not found: no group named {name!r} has a key in ZPA")
    drift = sum(1 for r in items if r.state != "in-sync")
    lines.append(
        f"status: {len(items)} group(s), {drift} not in sync"
        + (f", {len(snapshot.errors)} listing error(s)" if snapshot.errors else "")
    )
    return "\n".join(lines)


def _expired(row: GroupStatus, snapshot: Snapshot) -> bool:
    """The row's lease_expires_at is before the snapshot was taken (UTC, Z)."""
    stamp = row.lease_expires_at or ""
    return bool(stamp) and stamp < snapshot.started.strftime("%Y-%m-%dT%H:%M:%SZ")


def _clip(text: str, width: int = 32) -> str:
    printable = "".join(c if c.isprintable() else "?" for c in text)
    return printable if len(printable) <= width else printable[: width - 1] + "…"
