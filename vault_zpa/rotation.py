"""Rotation on leases: decide (pure) which keys are due, then run the journaled protocol.

ZPA has no rotate endpoint: rotating means creating a new key for the same group, enrollment
certificate and max usage, putting it in Vault, and removing the old key after a grace period.
Every step is journaled in the secret's custom_metadata *before* it is taken:

    (none) --intent--> intent --create in ZPA (or find by journaled name)--> created
           --check-and-set write of the new key--> written (grace_until = now + grace)
           --after grace: delete/disable the old key--> (journal cleared)

A process that dies anywhere resumes from the journal on the next run: it finds the key it
created by its journaled name instead of creating another, and the old key is only removed in
state `written`, i.e. after the new key is in Vault. Failures back off exponentially; after
`max_failures` the secret is marked `rotation_needs_human=true` and left alone until a person
runs `vault-zpa rotate` for it.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from vault_zpa.errors import ConfigError, VaultZpaError
from vault_zpa.model import AssociationType, ProvisioningKey, StoredSecret
from vault_zpa.reconcile import TypeRule, secret_data, volatile_metadata
from vault_zpa.vault.kv import KvStore

log = logging.getLogger(__name__)

JOURNAL_KEYS = (
    "rotation_state",
    "rotation_reason",
    "rotation_new_name",
    "rotation_new_id",
    "rotation_old_id",
    "rotation_started_at",
    "rotation_grace_until",
    "rotation_grace",
    "rotation_old_key",
)
# Cleared when a rotation completes: the journal plus the failure bookkeeping.
CLEARED_KEYS = (
    *JOURNAL_KEYS,
    "rotation_failures",
    "rotation_retry_at",
    "rotation_needs_human",
    "rotation_last_error",
)
STEPS = ("intent", "created", "written", "old_removed")


@dataclass(frozen=True)
class RotationPolicy:
    """Per association type (optionally per group). Off unless `enabled`: it changes ZPA."""

    enabled: bool = False
    after: float | None = None  # the lease: rotate when a key is this old
    at_usage_ratio: float | None = None  # rotate when usage_count / max_usage reaches this
    grace: float = 3600.0  # how long the old key stays valid after the new one is in Vault
    old_key: str = "delete"  # or "disable"
    name_template: str = "{group}-{timestamp}"
    max_failures: int = 5
    backoff: float = 300.0


@dataclass(frozen=True)
class RotationSettings:
    policies: Mapping[AssociationType, RotationPolicy] = field(default_factory=dict)
    per_group: Mapping[tuple[AssociationType, str], RotationPolicy] = field(default_factory=dict)
    max_per_run: int = 10

    def policy(self, atype: AssociationType, group: str | None) -> RotationPolicy:
        if group is not None and (atype, group) in self.per_group:
            return self.per_group[(atype, group)]
        return self.policies.get(atype, RotationPolicy())

    @property
    def any_enabled(self) -> bool:
        return any(p.enabled for p in self.policies.values()) or any(
            p.enabled for p in self.per_group.values()
        )


def parse_policy(
    table: Mapping[str, Any], where: str, base: RotationPolicy | None = None
) -> RotationPolicy:
    """Validate one [association_type.T.rotation] table (or a per-group override)."""
    from vault_zpa.config import parse_bool, parse_duration

    known = {
        "enabled",
        "after",
        "at_usage_ratio",
        "grace",
        "old_key",
        "name_template",
        "max_failures",
        "backoff",
        "groups",
    }
    policy = base or RotationPolicy()
    changes: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{where} {key}: unknown key", hint=f"known: {sorted(known)}")
        try:
            if key == "groups":
                continue
            if key == "enabled":
                changes[key] = parse_bool(value)
            elif key in ("after", "grace", "backoff"):
                changes[key] = parse_duration(value)
            elif key == "at_usage_ratio":
                ratio = float(value)
                if isinstance(value, bool) or not 0 < ratio <= 1:
                    raise ValueError("must be a number above 0 and at most 1")
                changes[key] = ratio
            elif key == "old_key":
                if value not in ("delete", "disable"):
                    raise ValueError("must be 'delete' or 'disable'")
                changes[key] = value
            elif key == "name_template":
                text = str(value)
                if "{timestamp}" not in text:
                    raise ValueError("must contain {timestamp} so new key names are unique")
                text.format(group="g", key_name="k", timestamp="t")
                changes[key] = text
            elif key == "max_failures":
                number = int(value)
                if isinstance(value, bool) or not 1 <= number <= 1000:
                    raise ValueError("must be a whole number from 1 to 1000")
                changes[key] = number
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise ConfigError(f"{where} {key}: {exc}") from None
    return replace(policy, **changes)


# ---- the pure decision ---------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    action: str  # "none" | "start" | "resume" | "wait" | "blocked"
    reason: str


def decide(
    secret: StoredSecret,
    key: ProvisioningKey | None,
    policy: RotationPolicy,
    now: datetime,
    *,
    requested: bool = False,
) -> Decision:
    """Is this group's key due for rotation, and why? Pure; reads only what Vault and ZPA hold."""
    meta = secret.custom_metadata
    if secret.data is None or not secret.managed:
        return Decision("none", "no managed key in Vault")
    if meta.get("rotation_needs_human") == "true" and not requested:
        return Decision(
            "blocked",
            f"rotation failed {meta.get('rotation_failures', '?')} times; "
            "needs a human (run `vault-zpa rotate` for this group)",
        )
    retry_at = meta.get("rotation_retry_at")
    if retry_at and _parse(retry_at) > now and not requested:
        return Decision("wait", f"backing off after a failure until {retry_at}")
    state = meta.get("rotation_state")
    if state:
        if state == "written":
            until = meta.get("rotation_grace_until", "")
            if until and _parse(until) > now:
                return Decision("wait", f"new key in Vault; old key kept until {until}")
        return Decision(
            "resume", f"rotation in progress ({state}): {meta.get('rotation_reason', '')}"
        )
    if requested:
        return Decision("start", "requested")
    if not policy.enabled:
        return Decision("none", "rotation is not enabled")
    expires = meta.get("lease_expires_at")
    if policy.after is not None and expires and _parse(expires) <= now:
        return Decision("start", f"lease expired at {expires}")
    if policy.at_usage_ratio is not None and key is not None and key.max_usage:
        ratio = key.usage_count / key.max_usage
        if ratio >= policy.at_usage_ratio:
            return Decision(
                "start",
                f"usage {key.usage_count}/{key.max_usage} reached "
                f"{policy.at_usage_ratio:g} of max_usage",
            )
    return Decision("none", "not due")


def _parse(stamp: str) -> datetime:
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return datetime.max.replace(tzinfo=UTC)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- the protocol ----------------------------------------------------------------------------


class KeyAdmin(Protocol):
    """The ZPA operations rotation needs."""

    def get_provisioning_key(
        self, association_type: AssociationType, key_id: str
    ) -> ProvisioningKey: ...

    def find_provisioning_key(
        self, association_type: AssociationType, name: str
    ) -> ProvisioningKey | None: ...

    def create_provisioning_key(
        self,
        association_type: AssociationType,
        *,
        name: str,
        group_id: str,
        enrollment_cert_id: str,
        max_usage: int,
        enabled: bool = True,
    ) -> ProvisioningKey: ...

    def update_provisioning_key(
        self, association_type: AssociationType, key_id: str, changes: Mapping[str, Any]
    ) -> None: ...

    def delete_provisioning_key(self, association_type: AssociationType, key_id: str) -> None: ...


@dataclass(frozen=True)
class RotationResult:
    path: str
    group_name: str | None
    decision: Decision
    state: str | None  # journal state after this run; None when finished or not started
    new_key_id: str | None = None
    error: str | None = None


class Rotator:
    def __init__(
        self,
        *,
        zpa: KeyAdmin,
        store: KvStore,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        kill_at: str | None = None,
        writer: Callable[[], int | None] | None = None,
        rules: Mapping[AssociationType, TypeRule] | None = None,
    ) -> None:
        self.rules = rules or {}
        self.zpa = zpa
        self.store = store
        self.now = now
        self.kill_at = kill_at  # fault injection for the crash tests: SIGKILL at this boundary
        self.writer = writer

    def run(
        self, path: str, policy: RotationPolicy, *, reason: str, requested: bool = False
    ) -> RotationResult:
        """Take every step that is due for one group, journaling each before it is taken."""
        secret = self.store.read(path)
        if secret is None or secret.data is None:
            return RotationResult(path, None, Decision("none", "no key in Vault"), None)
        group = secret.data.get("group_name")
        meta = dict(secret.custom_metadata)
        if requested:  # a person asked: forget earlier failures (persisted with the next step)
            for name in (
                "rotation_needs_human",
                "rotation_failures",
                "rotation_retry_at",
                "rotation_last_error",
            ):
                meta.pop(name, None)
        try:
            return self._steps(path, secret, meta, policy, reason)
        except VaultZpaError as exc:
            self._failed(path, meta, policy, str(exc))
            return RotationResult(
                path, group, Decision("resume", reason), meta.get("rotation_state"), error=str(exc)
            )

    def _steps(
        self,
        path: str,
        secret: StoredSecret,
        meta: dict[str, str],
        policy: RotationPolicy,
        reason: str,
    ) -> RotationResult:
        assert secret.data is not None
        data = secret.data
        atype = AssociationType(data["association_type"])
        group = data.get("group_name")
        if not meta.get("rotation_state"):
            stamp = self.now().strftime("%Y%m%dT%H%M%SZ")
            name = policy.name_template.format(
                group=group or data["group_id"], key_name=data["key_name"], timestamp=stamp
            )
            meta.update(
                rotation_state="intent",
                rotation_reason=reason[:500],
                rotation_new_name=name[:255],
                rotation_old_id=data["key_id"],
                rotation_started_at=_stamp(self.now()),
                rotation_grace=str(int(policy.grace)),
                rotation_old_key=policy.old_key,
            )
            meta.pop("rotation_needs_human", None)
            self._journal(path, meta)
            self._boundary("intent")
        if meta["rotation_state"] == "intent":
            name = meta["rotation_new_name"]
            key = self.zpa.find_provisioning_key(atype, name)
            if key is None:
                key = self.zpa.create_provisioning_key(
                    atype,
                    name=name,
                    group_id=data["group_id"],
                    enrollment_cert_id=data["enrollment_cert_id"],
                    max_usage=int(data["max_usage"]),
                )
                log.info("rotation: created key %s (%s) for %s", key.id, name, path)
            meta.update(rotation_state="created", rotation_new_id=key.id)
            self._journal(path, meta)
            self._boundary("created")
        if meta["rotation_state"] == "created":
            current = self.store.read(path)
            if current is None or current.data is None:
                raise VaultZpaError(f"{path} disappeared from Vault during rotation")
            # The grace and the old-key mode were fixed when the rotation started (journaled),
            # so a resumed rotation keeps the promise the first run made.
            grace = float(meta.get("rotation_grace") or policy.grace)
            grace_until = _stamp(self.now() + timedelta(seconds=grace))
            meta.update(rotation_state="written", rotation_grace_until=grace_until)
            new_id = meta["rotation_new_id"]
            if current.data.get("key_id") != new_id:
                key = self.zpa.get_provisioning_key(atype, new_id)
                rule = self.rules.get(atype, TypeRule())
                fresh = {
                    **current.custom_metadata,
                    **meta,
                    **volatile_metadata(key, rule),
                    "last_synced_at": _stamp(self.now()),
                }
                self._fence(fresh)
                self.store.write(path, secret_data(key), cas=current.version, custom_metadata=fresh)
                meta = fresh
            else:
                meta = {**current.custom_metadata, **meta}
                self._journal(path, meta)
            self._boundary("written")
        if meta["rotation_state"] == "written":
            if _parse(meta["rotation_grace_until"]) > self.now():
                return RotationResult(
                    path,
                    group,
                    Decision(
                        "start",
                        f"{reason}; new key in Vault, old key kept until "
                        f"{meta['rotation_grace_until']}",
                    ),
                    "written",
                    meta.get("rotation_new_id"),
                )
            old_id, new_id = meta["rotation_old_id"], meta["rotation_new_id"]
            if old_id != new_id:
                if meta.get("rotation_old_key", policy.old_key) == "disable":
                    try:
                        self.zpa.update_provisioning_key(atype, old_id, {"enabled": False})
                    except VaultZpaError as exc:
                        if "resource.not.found" not in str(exc):
                            raise
                else:
                    self.zpa.delete_provisioning_key(atype, old_id)
                log.info("rotation: removed old key %s of %s", old_id, path)
            self._boundary("old_removed")
            current = self.store.read(path)
            base = current.custom_metadata if current is not None else meta
            meta = {k: v for k, v in base.items() if k not in CLEARED_KEYS}
            meta["last_rotated_at"] = _stamp(self.now())
            self._journal(path, meta)
            return RotationResult(path, group, Decision("start", f"{reason}; done"), None, new_id)
        raise VaultZpaError(
            f"{path}: unknown rotation state {meta.get('rotation_state')!r} in "
            "the journal; clear the rotation_* metadata by hand"
        )

    def _fence(self, meta: dict[str, str]) -> None:
        if self.writer is not None:
            fence = self.writer()
            if fence is None:
                raise VaultZpaError("not the leader any more; rotation paused")
            meta["writer_lease"] = str(fence)

    def _journal(self, path: str, meta: dict[str, str]) -> None:
        self._fence(meta)
        self.store.write_metadata(path, meta)

    def _failed(self, path: str, meta: dict[str, str], policy: RotationPolicy, error: str) -> None:
        failures = int(meta.get("rotation_failures", "0") or 0) + 1
        meta["rotation_failures"] = str(failures)
        delay = min(policy.backoff * 2 ** (failures - 1), 86400.0)
        meta["rotation_retry_at"] = _stamp(self.now() + timedelta(seconds=delay))
        meta["rotation_last_error"] = error[:500]
        if failures >= policy.max_failures:
            meta["rotation_needs_human"] = "true"
        log.warning("rotation of %s failed (%d): %s", path, failures, error)
        try:
            self._journal(path, meta)
        except VaultZpaError as exc:
            log.warning("could not record the rotation failure of %s: %s", path, exc)

    def _boundary(self, step: str) -> None:
        if self.kill_at == step:
            log.warning("fault injection: SIGKILL at rotation step %s", step)
            os.kill(os.getpid(), signal.SIGKILL)
