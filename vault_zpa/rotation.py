"""Rotation on leases: decide (pure) which keys are due, then run the journaled protocol.

ZPA has no rotate endpoint: rotating means creating a new key for the same group, enrollment
certificate and max usage, putting it in Vault, and removing the old key after a grace period.

The journal is its own KV v2 secret per group, `<prefix>/_vault-zpa/rotation/<path below the
prefix>`, and every journal write is check-and-set against the journal version read. (It used to
ride in the key secret's custom_metadata, which Vault writes without check-and-set: a stale or
concurrent metadata write could wipe it.) Its states, each written *before* the step it allows:

    IDLE --cas--> INTENT --find by name, else create in ZPA--> CREATED
         --cas write of the new key into the group's secret--> WRITTEN (grace_until = now+grace)
         --grace over--> RETIRING --Vault does not serve the old key: delete/disable it--> IDLE

Why the promises hold (the model-based test in tests/test_rotation_model.py tries to break them):
- I1, never remove a served key: the old key is removed only in RETIRING, after re-reading the
  group's secret and finding another key there. From INTENT on the journal names the old key
  `retiring`, and the sync never writes a retiring (or retired) key: it reads the journals after
  the secrets, and its writes are check-and-set against the version it read, so a sync that could
  put the old key back either read the secret after the new key was written (and then sees the
  journal) or loses its check-and-set. The grace runs from after the new key is in Vault.
- I2, never orphan a created key: INTENT, with a unique name, is journaled before the create,
  and a run that finds INTENT looks the name up before creating (a lost create response is
  found, not repeated). CREATED names the id. WRITTEN only follows a successful write.
- I3, one rotation per group: INTENT is a check-and-set write over an IDLE journal; of two
  starters exactly one wins, the other reports the rotation as already in flight.
- I4, fencing: every write first checks the writer's leader lease, and every data and journal
  write is check-and-set, so a deposed leader's late write either lands before the new leader
  read that secret (and is seen) or fails. Vault cannot check a fencing token itself.

A journal is never deleted (a re-created path would restart its version numbers and let a late
write with an old check-and-set version land): a finished rotation returns it to IDLE and keeps
the last retired key ids. Failures back off exponentially; after `max_failures` the journal is
marked `needs_human` and left alone until a person runs `vault-zpa rotate` for the group.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import secrets
import signal
import socket
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from vault_zpa import layout
from vault_zpa.errors import CasConflict, ConfigError, VaultZpaError, ZpaApiError
from vault_zpa.model import AssociationType, ProvisioningKey, StoredSecret
from vault_zpa.reconcile import TypeRule, secret_data, volatile_metadata
from vault_zpa.vault.kv import KvStore

log = logging.getLogger(__name__)

# Legacy journal fields in a secret's custom_metadata (before the journal had its own secret):
# adopted once into the journal, then removed from the metadata.
LEGACY_KEYS = (
    "rotation_state",
    "rotation_reason",
    "rotation_new_name",
    "rotation_new_id",
    "rotation_old_id",
    "rotation_started_at",
    "rotation_grace_until",
    "rotation_grace",
    "rotation_old_key",
    "rotation_failures",
    "rotation_retry_at",
    "rotation_needs_human",
    "rotation_last_error",
)
# Fault-injection boundaries for the crash tests (SIGKILL right after the step is journaled).
STEPS = ("intent", "created", "written", "old_removed")
MAX_GRACE = 365 * 86400.0  # as config.MAX_GRACE (config imports this module, not the reverse)
RETIRED_KEPT = 5  # retired key ids remembered per group, so a sync never writes them back
# Who is rotating: one id per process, so a daemon resumes its own rotations at once and waits
# before taking over another process's (Rotator.takeover).
PROCESS_OWNER = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
TAKEOVER = 335.0  # a find plus a create: 2 x (the default 120 s retry budget + 30 s timeout) + 5


class State(enum.StrEnum):
    IDLE = "idle"
    INTENT = "intent"
    CREATED = "created"
    WRITTEN = "written"
    RETIRING = "retiring"


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
    takeover: float = TAKEOVER  # see Rotator; config sets it from the ZPA retry budget

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
    from vault_zpa.config import parse_duration

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
                if not isinstance(value, bool):  # TOML has booleans: "yes" is a typo
                    raise ValueError("must be true or false (a TOML boolean, unquoted)")
                changes[key] = value
            elif key in ("after", "backoff"):
                changes[key] = parse_duration(value)
            elif key == "grace":
                changes[key] = parse_duration(value, maximum=MAX_GRACE, allow_zero=True)
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
                changes[key] = check_name_template(value, ("group", "key_name", "timestamp"))
            elif key == "max_failures":
                if isinstance(value, bool) or not isinstance(value, int | str):
                    raise ValueError("must be a whole number from 1 to 1000")
                text = str(value).strip()
                if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 1000:
                    raise ValueError("must be a whole number from 1 to 1000")
                changes[key] = int(text)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            raise ConfigError(f"{where} {key}: {exc}") from None
    return replace(policy, **changes)


def check_name_template(value: Any, allowed: Sequence[str]) -> str:
    """A key name template: text with {placeholders} from `allowed` only (no attribute, index,
    conversion or format spec: "{group.x}" or "{group:>999999999}" are refused, not run), and
    {timestamp}, so every name is unique."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    try:
        fields = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise ValueError(f"is malformed ({exc})") from None
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in allowed or spec or conversion:
            shown = ", ".join("{" + a + "}" for a in allowed)
            raise ValueError(f"may only use the placeholders {shown}, each as written")
    if "{timestamp}" not in value:
        raise ValueError("must contain {timestamp} so new key names are unique")
    return value


def new_key_name(
    template: str, *, group: str, key_name: str, moment: datetime, tag: str | None = None
) -> str:
    """A rotated key's name: the template with a timestamp plus a random tag, so two names are
    never equal and the tag alone (characters ZPA's search keeps) finds the key again."""
    stamp = f"{moment.astimezone(UTC):%Y%m%dT%H%M%SZ}-{tag or secrets.token_hex(3)}"
    # ZPA names are at most 255 characters: shorten the group and key names, never the stamp
    # (cutting the tag off would make every rotated name of a long group the same).
    for keep in (255, 128, 64, 32, 16, 8, 0):
        name = template.format(group=group[:keep], key_name=key_name[:keep], timestamp=stamp)
        if len(name) <= 255:
            return name
    raise ConfigError("rotation name_template is too long: a key name is at most 255 characters")


# Group names to try a name template on when the group is not known at start-up.
_SAMPLE_GROUPS = ("Group", "Connector-Group-0001", "Service-Edges-0001", "NY Connectors", "lab")


def check_compatible(rules: Mapping[AssociationType, TypeRule], rotation: RotationSettings) -> None:
    """Refuse a rotation name template whose keys the type's key_name_pattern would not select:
    the sync would put the old key back and the rotation would loop (create, delete, repeat).

    Names depend on the group, so this can only be sure for per-group policies; for a type's
    policy it refuses when no usual group name would do (each rotation checks its real name
    again before it creates anything)."""
    policies = [(atype, p, None) for atype, p in rotation.policies.items()] + [
        (atype, p, group) for (atype, group), p in rotation.per_group.items()
    ]
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    for atype, policy, group in policies:
        pattern = rules.get(atype, TypeRule()).key_name_pattern
        if not policy.enabled or pattern is None:
            continue
        samples = [
            new_key_name(policy.name_template, group=g, key_name=f"{g}-key", moment=moment)
            for g in ((group,) if group is not None else _SAMPLE_GROUPS)
        ]
        if not any(pattern.fullmatch(sample) for sample in samples):
            where = f" (group {group!r})" if group is not None else ""
            raise ConfigError(
                f"[association_type.{atype.value}.rotation]{where} name_template makes keys "
                f"named like {samples[0]!r}, which key_name_pattern {pattern.pattern!r} does "
                "not select",
                hint="change name_template or key_name_pattern so rotated keys match",
            )


# ---- the journal ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Journal:
    """One group's rotation journal as read from Vault (`version` 0: none written yet)."""

    version: int = 0
    state: State = State.IDLE
    reason: str = ""
    new_name: str = ""
    new_id: str = ""
    old_id: str = ""
    started_at: str = ""
    grace: float = 0.0
    grace_until: str = ""
    old_key: str = "delete"
    failures: int = 0
    retry_at: str = ""
    needs_human: bool = False
    last_error: str = ""
    retired: tuple[str, ...] = ()
    abandoned: tuple[str, ...] = ()  # new keys of given-up rotations, left for a person
    last_rotated_at: str = ""
    writer_lease: str = ""
    owner: str = ""  # the process that wrote this version (see Rotator.takeover)
    updated_at: str = ""
    attempt_open: bool = False  # INTENT: `owner` may be searching for / creating the key now
    # "rotation", or "provision" (provision.py: a first key for a group that has none usable;
    # no old key, so no grace and nothing retired). One journal per group serves both, so at
    # most one creation per group is ever in flight, whichever kind.
    kind: str = "rotation"
    group_name: str = ""  # provision: what a resuming run needs without a secret to read
    target_path: str = ""
    enrollment_cert_id: str = ""
    max_usage: int = 0
    where: str = field(default="", compare=False)  # its path in the mount (not stored in it)

    @property
    def in_flight(self) -> bool:
        return self.state is not State.IDLE

    @property
    def excluded(self) -> frozenset[str]:
        """Key ids the sync must never write to this group's secret: the key being retired
        (from INTENT on) and the last keys retired."""
        ids = set(self.retired)
        if self.in_flight and self.old_id and self.old_id != self.new_id:
            ids.add(self.old_id)
        return frozenset(ids)

    def shuns(self, key_id: str, key_name: str) -> bool:
        """The sync must not write this key to the group's secret: one being retired or retired,
        or one carrying the rotation's journaled name that the journal has not recorded as its
        new key (a duplicate created for the same INTENT by a run that lost the journal, or a key
        whose create is not journaled yet). Such a key is never served, so deleting it can never
        take a served key away (I1), and the run that made it may withdraw it (I2)."""
        if key_id in self.excluded:
            return True
        return bool(self.new_name) and key_name == self.new_name and key_id != self.new_id

    def to_data(self) -> dict[str, str]:
        return {
            "state": self.state.value,
            "reason": self.reason[:500],
            "new_name": self.new_name,
            "new_id": self.new_id,
            "old_id": self.old_id,
            "started_at": self.started_at,
            "grace": str(int(self.grace)),
            "grace_until": self.grace_until,
            "old_key": self.old_key,
            "failures": str(self.failures),
            "retry_at": self.retry_at,
            "needs_human": "true" if self.needs_human else "false",
            "last_error": self.last_error[:500],
            "retired": ",".join(self.retired[:RETIRED_KEPT]),
            "abandoned": ",".join(self.abandoned[:RETIRED_KEPT]),
            "last_rotated_at": self.last_rotated_at,
            "writer_lease": self.writer_lease,
            "owner": self.owner,
            "updated_at": self.updated_at,
            "attempt": "open" if self.attempt_open else "",
            "kind": self.kind,
            "group_name": self.group_name[:300],
            "path": self.target_path,
            "enrollment_cert_id": self.enrollment_cert_id,
            "max_usage": str(self.max_usage),
        }

    @classmethod
    def from_data(cls, version: int, data: Mapping[str, str] | None) -> Journal:
        """Parse what Vault holds; anything unreadable is an error, never a silent IDLE (that
        could start a second rotation over one in flight)."""
        if not data:
            return cls(version=version)
        try:
            return cls(
                version=version,
                state=State(data.get("state") or "idle"),
                reason=data.get("reason", ""),
                new_name=data.get("new_name", ""),
                new_id=data.get("new_id", ""),
                old_id=data.get("old_id", ""),
                started_at=data.get("started_at", ""),
                grace=_bounded_grace(data.get("grace") or "0"),
                grace_until=data.get("grace_until", ""),
                old_key="disable" if data.get("old_key") == "disable" else "delete",
                failures=int(data.get("failures") or 0),
                retry_at=data.get("retry_at", ""),
                needs_human=data.get("needs_human") == "true",
                last_error=data.get("last_error", ""),
                retired=tuple(i for i in (data.get("retired") or "").split(",") if i),
                abandoned=tuple(i for i in (data.get("abandoned") or "").split(",") if i),
                last_rotated_at=data.get("last_rotated_at", ""),
                writer_lease=data.get("writer_lease", ""),
                owner=data.get("owner", ""),
                updated_at=data.get("updated_at", ""),
                attempt_open=data.get("attempt") == "open",
                kind="provision" if data.get("kind") == "provision" else "rotation",
                group_name=data.get("group_name", ""),
                target_path=data.get("path", ""),
                enrollment_cert_id=data.get("enrollment_cert_id", ""),
                max_usage=int(data.get("max_usage") or 0),
            )
        except (ValueError, OverflowError):
            # No field value in the message: a hand-edited journal may hold anything.
            raise VaultZpaError(
                f"the rotation journal (version {version}) is unreadable: a field holds a "
                "value vault-zpa does not write",
                hint="inspect it with `vault kv get`; fix or restore an earlier version",
            ) from None

    @classmethod
    def from_legacy(cls, meta: Mapping[str, str]) -> Journal:
        """A journal kept in custom_metadata by an earlier vault-zpa (version 0: not yet moved)."""
        state = meta.get("rotation_state") or "idle"
        if state == "old_removed":
            state = "retiring"
        return replace(
            cls.from_data(
                0,
                {
                    "state": state,
                    **{k[len("rotation_") :]: v for k, v in meta.items() if k in LEGACY_KEYS},
                },
            ),
            version=0,
        )


def _bounded_grace(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or not 0 <= value <= MAX_GRACE:
        raise ValueError(f"grace {text!r} is not between 0 and 365 days")
    return value


GroupKey = tuple[AssociationType, str]  # (association type, group id): whom a journal is for


def journal_path(prefix: str, association_type: AssociationType, group_id: str) -> str:
    """`<prefix>/_vault-zpa/rotation/<TYPE>/<group id>`: by id, so a group renamed (or moved by
    a slug collision) mid-rotation keeps its one journal."""
    gid = layout.slug(group_id, fallback="unknown")
    return layout.state_path(prefix, f"rotation/{association_type.value}/{gid}")


def journal_root(prefix: str) -> str:
    return layout.state_path(prefix, "rotation")


def read_journal(
    store: KvStore,
    prefix: str,
    association_type: AssociationType,
    group_id: str,
    legacy: Mapping[str, str] | None = None,
) -> Journal:
    """The group's journal; a legacy one from the secret's custom_metadata (`legacy`) when none
    has been written yet. A journal whose current version was deleted is unreadable, not idle:
    a rotation may have been in flight."""
    where = journal_path(prefix, association_type, group_id)
    raw = store.read(where)
    if raw is None:
        if legacy is not None and "rotation_state" in legacy:
            return replace(Journal.from_legacy(legacy), where=where)
        return Journal(where=where)
    if raw.data is None:
        raise VaultZpaError(
            f"the rotation journal {where} was deleted (version {raw.version})",
            hint="undelete it (`vault kv undelete`); a rotation may be in flight",
        )
    return replace(Journal.from_data(raw.version, raw.data), where=where)


def read_journals(store: KvStore, prefix: str) -> dict[GroupKey, Journal]:
    """Every journal under the prefix, by (association type, group id) (LIST, then reads)."""
    root = journal_root(prefix)
    out: dict[GroupKey, Journal] = {}
    for where in store.list_tree(root):
        parts = where[len(root) + 1 :].split("/")
        if len(parts) != 2 or parts[0] not in AssociationType.__members__:
            continue
        group = (AssociationType(parts[0]), parts[1])
        raw = store.read(where)
        if raw is None:
            continue
        try:
            if raw.data is None:
                raise VaultZpaError(f"the rotation journal {where} was deleted")
            out[group] = replace(Journal.from_data(raw.version, raw.data), where=where)
        except VaultZpaError as exc:
            log.warning("%s", exc)
            # Unreadable: the group counts as rotating and needing a person; nothing retired.
            out[group] = Journal(
                version=raw.version,
                state=State.INTENT,
                needs_human=True,
                last_error=str(exc),
                where=where,
            )
    return out


# ---- the pure decision ---------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    action: str  # "none" | "start" | "resume" | "wait" | "blocked"
    reason: str
    end_grace: bool = False  # resume: the new key is no use any more, the grace can end now


def decide(
    secret: StoredSecret,
    key: ProvisioningKey | None,
    policy: RotationPolicy,
    now: datetime,
    *,
    journal: Journal | None = None,
    requested: bool = False,
) -> Decision:
    """Is this group's key due for rotation, and why? Pure; reads only what Vault and ZPA hold."""
    meta = secret.custom_metadata
    if journal is None:
        journal = Journal.from_legacy(meta) if "rotation_state" in meta else Journal()
    if secret.data is None or not secret.managed:
        return Decision("none", "no managed key in Vault")
    if journal.needs_human and not requested:
        return Decision(
            "blocked",
            f"rotation failed {journal.failures} times ({journal.last_error or 'see the log'}); "
            "needs a human (run `vault-zpa rotate` for this group)",
        )
    if journal.retry_at and _parse(journal.retry_at) > now and not requested:
        what = "a failed provisioning" if journal.kind == "provision" else "a failure"
        return Decision("wait", f"backing off after {what} until {journal.retry_at}")
    if journal.in_flight and journal.kind == "provision":
        return Decision("wait", "a first key is being provisioned for this group")
    if journal.in_flight:
        if journal.state is State.WRITTEN and _parse(journal.grace_until) > now:
            if _parse(journal.grace_until) > now + timedelta(seconds=MAX_GRACE):
                return Decision(
                    "blocked",
                    f"the journal's grace_until {journal.grace_until[:40]!r} is not a time "
                    "within any grace; a person must look (fix or restore the journal)",
                )
            if key is not None and key.id == journal.new_id and not key.eligible:
                # The new key was used up (or disabled) within the grace: waiting it out would
                # leave the group without a usable key in Vault. The rotation decides now.
                return Decision(
                    "resume",
                    "the new key is used up or disabled in ZPA; the grace ends early",
                    end_grace=True,
                )
            return Decision("wait", f"new key in Vault; old key kept until {journal.grace_until}")
        return Decision("resume", f"rotation in progress ({journal.state}): {journal.reason}")
    if requested:
        return Decision("start", "requested")
    if not policy.enabled:
        return Decision("none", "rotation is not enabled")
    expires = _lease_end(key, policy, meta.get("lease_expires_at"))
    if expires is not None and expires <= now:
        return Decision("start", f"lease expired at {_stamp(expires)}")
    if policy.at_usage_ratio is not None and key is not None and key.max_usage:
        ratio = key.usage_count / key.max_usage
        if ratio >= policy.at_usage_ratio:
            return Decision(
                "start",
                f"usage {key.usage_count}/{key.max_usage} reached "
                f"{policy.at_usage_ratio:g} of max_usage",
            )
    return Decision("none", "not due")


def _lease_end(
    key: ProvisioningKey | None, policy: RotationPolicy, stored: str | None
) -> datetime | None:
    """When this group's key is due: its creation in ZPA plus the policy's `after` (a per-group
    override included); without the key, what the secret's `lease_expires_at` says."""
    if policy.after is None:
        return None
    if key is not None and key.creation_time > 0:
        try:
            return datetime.fromtimestamp(key.creation_time, UTC) + timedelta(seconds=policy.after)
        except (OverflowError, ValueError, OSError):
            return None
    return _parse(stored) if stored else None


def _parse(stamp: str) -> datetime:
    """Journal timestamps; an unreadable one counts as far future (wait), never as past."""
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return datetime.max.replace(tzinfo=UTC)


def _parse_or_none(stamp: str) -> datetime | None:
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


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


class Superseded(VaultZpaError):
    """Another writer changed the journal first: this run stops, nothing is counted as failed."""


def _not_found(exc: ZpaApiError) -> bool:
    """ZPA answers a missing object with 404, or 400 `resource.not.found` (zpa-api.md §12)."""
    return exc.status == 404 or (exc.status == 400 and exc.zpa_id == "resource.not.found")


class Rotator:
    """Runs one group's rotation steps. `writer` returns the fencing token (the leader lease's
    version) or None when this process must not write; `hook` is called at each step boundary
    (tests inject crashes there); `kill_at` SIGKILLs at a boundary for the subprocess trials.

    An INTENT another process (`owner`) journaled less than `takeover` seconds ago is left to
    it: that process may be between its search and its create, and a second create would make a
    second key. After `takeover` this process claims the journal (a check-and-set write) and goes
    on; should the first process wake up and create after all, its CREATED write loses and it
    deletes its own key (`_withdraw`)."""

    def __init__(
        self,
        *,
        zpa: KeyAdmin,
        store: KvStore,
        prefix: str,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        kill_at: str | None = None,
        writer: Callable[[], int | None] | None = None,
        rules: Mapping[AssociationType, TypeRule] | None = None,
        hook: Callable[[str], None] | None = None,
        owner: str = PROCESS_OWNER,
        takeover: float = TAKEOVER,
        tag: Callable[[], str] = lambda: secrets.token_hex(3),
    ) -> None:
        self.tag = tag
        self.owner = owner
        self.takeover = takeover
        self._served: Mapping[str, Sequence[str]] = {}
        self._end_grace = False
        self.rules = rules or {}
        self.zpa = zpa
        self.store = store
        self.prefix = prefix
        self.now = now
        self.kill_at = kill_at
        self.writer = writer
        self.hook = hook

    def run(
        self,
        path: str,
        policy: RotationPolicy,
        *,
        reason: str,
        requested: bool = False,
        served: Mapping[str, Sequence[str]] | None = None,
        start: bool = True,
        end_grace: bool = False,
    ) -> RotationResult:
        """Take every step that is due for one group, journaling each before it is taken.
        `served` maps key ids to the other paths the run saw serving them (an orphaned path of
        a renamed group, say): the old key is not removed while any of them serves it.
        `start` False (the caller saw a rotation in flight): if the journal, read afresh, is
        idle, another run finished it, and no new rotation begins on that stale decision."""
        self._served = served or {}
        self._end_grace = end_grace
        if self.store.kv_version != 2:
            raise ConfigError(
                "rotation needs a KV v2 mount: its journal is written with check-and-set"
            )
        secret = self.store.read(path)
        if secret is None or secret.data is None:
            return RotationResult(path, None, Decision("none", "no key in Vault"), None)
        group = secret.data.get("group_name")
        try:
            atype = AssociationType(secret.data.get("association_type", ""))
        except ValueError:
            return RotationResult(path, group, Decision("none", "not a vault-zpa key"), None)
        where = (atype, secret.data.get("group_id", ""))
        try:
            journal = read_journal(self.store, self.prefix, *where, secret.custom_metadata)
        except VaultZpaError as exc:
            return RotationResult(
                path, group, Decision("blocked", exc.message), None, error=str(exc)
            )
        if journal.in_flight and journal.kind == "provision":
            # Finished by the sync's provisioning step, never by a rotation (it has no old key).
            return RotationResult(
                path,
                group,
                Decision("wait", "a first key is being provisioned for this group"),
                journal.state.value,
            )
        if requested and (journal.needs_human or journal.failures or journal.retry_at):
            # A person asked: forget earlier failures (persisted with the next step).
            journal = replace(journal, needs_human=False, failures=0, retry_at="", last_error="")
        if not journal.in_flight and not start:
            return RotationResult(
                path, group, Decision("none", "finished by another run meanwhile"), None
            )
        action = "resume" if journal.in_flight else "start"
        try:
            return self._steps(path, secret, journal, policy, reason, action)
        except Superseded as exc:
            return RotationResult(
                path, group, Decision("wait", str(exc.message)), journal.state.value
            )
        except VaultZpaError as exc:
            latest = self._failed(path, where, policy, str(exc.message))
            return RotationResult(
                path,
                group,
                Decision(action, reason),
                latest.state.value if latest.in_flight else None,
                error=str(exc),
            )

    # -- steps ---------------------------------------------------------------------------

    def _steps(
        self,
        path: str,
        secret: StoredSecret,
        journal: Journal,
        policy: RotationPolicy,
        reason: str,
        action: str,
    ) -> RotationResult:
        """`action` ("start" or "resume") labels the result of a run that took steps."""
        assert secret.data is not None
        data = secret.data
        atype = AssociationType(data["association_type"])
        group = data.get("group_name")
        rule = self.rules.get(atype, TypeRule())
        if not journal.in_flight:
            name = new_key_name(
                policy.name_template,
                group=group or data["group_id"],
                key_name=data["key_name"],
                moment=self.now(),
                tag=self.tag(),
            )
            if rule.key_name_pattern is not None and not rule.key_name_pattern.fullmatch(name):
                raise ConfigError(
                    f"a rotated key would be named {name!r}, which key_name_pattern "
                    f"{rule.key_name_pattern.pattern!r} does not select; not rotating"
                )
            grace = policy.grace
            if not math.isfinite(grace) or not 0 <= grace <= MAX_GRACE:
                raise ConfigError(f"grace {grace!r} s is not between 0 and 365 days")
            journal = self._journal(
                path,
                journal,
                state=State.INTENT,
                reason=reason,
                new_name=name,
                new_id="",
                old_id=data["key_id"],
                started_at=_stamp(self.now()),
                grace=grace,
                grace_until="",
                old_key=policy.old_key,
                needs_human=False,
                attempt_open=True,
                kind="rotation",
            )
            self._boundary("intent")
        elif journal.state is State.INTENT:
            journal = self._claim(path, journal)
        if journal.state is State.INTENT:
            journal = self._create(
                path,
                atype,
                journal,
                group_id=data["group_id"],
                enrollment_cert_id=data["enrollment_cert_id"],
                max_usage=int(data["max_usage"]),
            )
        if journal.state is State.CREATED:
            self._write_new_key(path, atype, rule, journal)
            grace_until = _stamp(self.now() + timedelta(seconds=journal.grace))
            journal = self._journal(path, journal, state=State.WRITTEN, grace_until=grace_until)
            self._boundary("written")
        if journal.state is State.WRITTEN:
            if _parse(journal.grace_until) > self.now() + timedelta(seconds=MAX_GRACE):
                raise VaultZpaError(
                    f"{path}: the rotation journal's grace_until is not a time within any grace",
                    hint="fix or restore the journal; nothing was removed",
                )
            in_grace = _parse(journal.grace_until) > self.now()
            problem = (
                self._key_problem(atype, journal.new_id, "new")  # checked, not trusted
                if in_grace and self._end_grace
                else None
            )
            if problem is not None:
                # The new key is no use any more, within the grace: the rotation is given up
                # now (no key is removed within a grace, I1), so the sync may serve the old key
                # if it is still usable, and a group with no usable key may be provisioned.
                self._journal(
                    path,
                    journal,
                    state=State.IDLE,
                    abandoned=(journal.new_id, *journal.abandoned)[:RETIRED_KEPT],
                    last_error=f"rotation ended within its grace: {problem[0]}",
                )
                log.info("rotation of %s ended within its grace: %s", path, problem[0])
                return RotationResult(
                    path,
                    group,
                    Decision(action, f"{reason}; {problem[0]}: ended within its grace"),
                    None,
                    journal.new_id,
                    error=None if problem[1] else f"rotation given up: {problem[0]}",
                )
            if in_grace:
                return RotationResult(
                    path,
                    group,
                    Decision(
                        action,
                        f"{reason}; new key in Vault, old key kept until {journal.grace_until}",
                    ),
                    State.WRITTEN.value,
                    journal.new_id,
                )
            journal = self._journal(path, journal, state=State.RETIRING)
        if journal.state is State.RETIRING:
            problem = self._key_problem(atype, journal.new_id, "new")
            why = problem[0] if problem is not None else None
            if why is not None and self._unusable(atype, journal.old_id, "old") is None:
                # Removing the old key now would leave the group nothing to enroll with: give
                # the rotation up instead, so the sync may serve the old key again. (When the
                # old key is no use either, it is retired as usual: it is not kept lying around.)
                self._journal(
                    path,
                    journal,
                    state=State.IDLE,
                    abandoned=(journal.new_id, *journal.abandoned)[:RETIRED_KEPT],
                    last_error=f"rotation given up: {why}; the old key was kept",
                )
                used_up = problem is not None and problem[1]
                # A new key used up did its job (connectors enrolled with it): not a failure.
                (log.info if used_up else log.warning)(
                    "rotation of %s given up: %s; old key %s kept", path, why, journal.old_id
                )
                return RotationResult(
                    path,
                    group,
                    Decision(action, f"{reason}; {why}: the old key {journal.old_id} was kept"),
                    None,
                    journal.new_id,
                    error=None
                    if used_up
                    else f"rotation given up: {why}; the old key {journal.old_id} was kept",
                )
            self._retire(path, atype, journal)
            self._boundary("old_removed")
            journal = self._journal(
                path,
                journal,
                state=State.IDLE,
                retired=(journal.old_id, *journal.retired)[:RETIRED_KEPT],
                last_rotated_at=_stamp(self.now()),
                failures=0,
                retry_at="",
                last_error="",
            )
            return RotationResult(
                path, group, Decision(action, f"{reason}; done"), None, journal.new_id
            )
        raise VaultZpaError(f"{path}: rotation journal in unexpected state {journal.state}")

    def _create(
        self,
        path: str,
        atype: AssociationType,
        journal: Journal,
        *,
        group_id: str,
        enrollment_cert_id: str,
        max_usage: int,
    ) -> Journal:
        """INTENT -> CREATED: find the key by the journaled name (an earlier attempt whose
        create response was lost), else create it; journal its id. A key this run created but
        could not journal (another run won the journal) is withdrawn."""
        key = self._find(atype, journal.new_name, group_id, journal.old_id)
        made = key is None
        if key is None:
            key = self.zpa.create_provisioning_key(
                atype,
                name=journal.new_name,
                group_id=group_id,
                enrollment_cert_id=enrollment_cert_id,
                max_usage=max_usage,
            )
            log.info("%s: created key %s for %s", journal.kind, key.id, path)
        try:
            journal = self._journal(
                path, journal, state=State.CREATED, new_id=key.id, attempt_open=False
            )
        except Superseded:
            if made:
                self._withdraw(path, atype, key, journal)
            raise
        self._boundary("created")
        return journal

    def _write_new_key(
        self, path: str, atype: AssociationType, rule: TypeRule, journal: Journal
    ) -> None:
        """Check-and-set the new key into the group's secret, unless it is there already (an
        earlier attempt whose response was lost). Only after this returns is WRITTEN journaled."""
        current = self.store.read(path)
        if current is None or current.data is None:
            raise VaultZpaError(f"{path} disappeared from Vault during rotation")
        if current.data.get("key_id") == journal.new_id:
            return
        key = self.zpa.get_provisioning_key(atype, journal.new_id)
        if not key.eligible:
            raise VaultZpaError(
                f"the new key {key.id} is disabled or exhausted in ZPA; not writing it"
            )
        meta = {
            **{k: v for k, v in current.custom_metadata.items() if k not in LEGACY_KEYS},
            **volatile_metadata(key, rule),
            "last_synced_at": _stamp(self.now()),
        }
        self._fence(meta)
        self.store.write(
            path, secret_data(key), cas=current.version, custom_metadata=meta, remove=LEGACY_KEYS
        )
        log.info("rotation: wrote key %s to %s", key.id, path)

    def _unusable(self, atype: AssociationType, key_id: str, which: str) -> str | None:
        """Why this key cannot be enrolled with (deleted, disabled, used up), or None."""
        problem = self._key_problem(atype, key_id, which)
        return problem[0] if problem is not None else None

    def _key_problem(
        self, atype: AssociationType, key_id: str, which: str
    ) -> tuple[str, bool] | None:
        """(why the key cannot be enrolled with, whether only because it is used up)."""
        try:
            key = self.zpa.get_provisioning_key(atype, key_id)
        except ZpaApiError as exc:
            if _not_found(exc):
                return f"the {which} key {key_id} was deleted in ZPA", False
            raise
        if key.problem is None and key.enabled and key.exhausted:
            return f"the {which} key {key_id} is used up in ZPA", True
        if not key.eligible:
            return f"the {which} key {key_id} is disabled or unusable in ZPA", False
        return None

    def _check_not_served(self, path: str, journal: Journal) -> None:
        """The last look before the old key goes: Vault must serve another key (I1)."""
        current = self.store.read(path)
        if (
            current is not None
            and current.data is not None
            and current.data.get("key_id") == journal.old_id
        ):
            raise VaultZpaError(
                f"{path} serves the old key {journal.old_id} again; not removing it",
                hint="find out who wrote it back; `vault-zpa rotate` for the group resumes",
            )
        elsewhere = next((p for p in self._served.get(journal.old_id, ()) if p != path), None)
        if elsewhere is not None:
            raise VaultZpaError(
                f"{elsewhere} still serves the old key {journal.old_id}; not removing it",
                hint="if that path is stale (a renamed group), delete it once nothing reads it",
            )

    def _claim(self, path: str, journal: Journal) -> Journal:
        """Open a search-and-create attempt on an INTENT journaled by an earlier run: a
        check-and-set write, so of two runs resuming at once one goes on. An attempt another
        process opened (and has not closed by recording a failure) is left to it for
        `takeover` seconds: it may be creating the key right now."""
        since = _parse_or_none(journal.updated_at)
        if since is not None and since > self.now() + timedelta(seconds=self.takeover):
            since = None  # written by a clock far ahead of ours: no wait can be measured from it
        if journal.attempt_open and journal.owner != self.owner and since is not None:
            until = since + timedelta(seconds=self.takeover)
            if self.now() < until:
                raise Superseded(
                    f"another process ({journal.owner or 'unknown'}) began this rotation at "
                    f"{journal.updated_at}; left to it until {_stamp(until)}, then resumed here"
                )
        return self._journal(path, journal, attempt_open=True)

    def _withdraw(
        self, path: str, atype: AssociationType, key: ProvisioningKey, journal: Journal
    ) -> None:
        """This run created `key` but could not journal it (another run changed the journal
        first, or this replica lost the lease). Unless the journal records it, it is deleted:
        it carries the journaled name with another id (or none yet), which the sync never
        serves (Journal.shuns), so no secret can lose it (I1) and it is not left behind (I2).
        A secret that serves it anyway (written before this rule) keeps it. If the delete
        fails, the failure is logged as a warning a person must act on."""
        key_id = key.id
        try:
            raw = self.store.read(journal.where)
            now = Journal.from_data(raw.version, raw.data) if raw is not None else Journal()
            if key_id in (now.new_id, now.old_id):
                return
            secret = self.store.read(path)
            if secret is not None and (secret.data or {}).get("key_id") == key_id:
                log.warning(
                    "rotation: key %s of %s is served although its rotation lost the journal; kept",
                    key_id,
                    path,
                )
                return
            self.zpa.delete_provisioning_key(atype, key_id)
            log.warning("rotation: withdrew duplicate key %s of %s (another run won)", key_id, path)
        except VaultZpaError as exc:
            if not (isinstance(exc, ZpaApiError) and _not_found(exc)):
                log.warning(
                    "rotation: could not withdraw duplicate key %s of %s; delete it in ZPA: %s",
                    key_id,
                    path,
                    exc,
                )

    def _find(
        self, atype: AssociationType, name: str, group_id: str, old_id: str
    ) -> ProvisioningKey | None:
        """The key an earlier attempt may have created (its create response lost): same unique
        name, same group, never the key being retired."""
        found = self.zpa.find_provisioning_key(atype, name)
        if found is None or found.id == old_id or found.group_id != group_id:
            return None
        return found

    def _retire(self, path: str, atype: AssociationType, journal: Journal) -> None:
        """Delete or disable the old key, only if Vault does not serve it (I1)."""
        self._check_not_served(path, journal)
        old_id, new_id = journal.old_id, journal.new_id
        if old_id == new_id or not old_id:
            return
        self._fence({})
        try:
            if journal.old_key == "disable":
                self.zpa.update_provisioning_key(atype, old_id, {"enabled": False})
            else:
                self.zpa.delete_provisioning_key(atype, old_id)
        except ZpaApiError as exc:
            if not _not_found(exc):
                raise
        log.info("rotation: removed old key %s of %s", old_id, path)

    # -- journal writes --------------------------------------------------------------------

    def _fence(self, meta: dict[str, str]) -> str:
        if self.writer is None:
            return ""
        fence = self.writer()
        if fence is None:
            raise Superseded("not the leader any more; rotation paused")
        meta["writer_lease"] = str(fence)
        return str(fence)

    def _journal(self, path: str, journal: Journal, **changes: Any) -> Journal:
        """Check-and-set the journal from the version we read to the next one."""
        fence = self._fence({})
        new = replace(
            journal,
            writer_lease=fence,
            owner=self.owner,
            updated_at=_stamp(self.now()),
            **changes,
        )
        try:
            version = self.store.write(
                journal.where,
                new.to_data(),
                cas=journal.version,
                custom_metadata={"managed_by": "vault-zpa", "kind": "rotation-journal"},
            )
        except CasConflict:
            raise Superseded(
                f"another run changed the rotation journal of {path} first; leaving it to that "
                "run (the next run resumes from the journal)"
            ) from None
        return replace(new, version=version)

    def _failed(
        self,
        path: str,
        where: GroupKey,
        policy: RotationPolicy,
        error: str,
        *,
        what: str = "rotation",
    ) -> Journal:
        """Record a failure in the journal as it now stands in Vault: the state is never moved
        on by a failure, only the retry bookkeeping (a `needs_human` already set stays set)."""
        try:
            secret = self.store.read(path)
            legacy = secret.custom_metadata if secret is not None else None
            current = read_journal(self.store, self.prefix, *where, legacy)
            failures = current.failures + 1
            delay = min(policy.backoff * 2 ** min(failures - 1, 20), 86400.0)
            log.warning("%s of %s failed (%d): %s", what, path, failures, error)
            return self._journal(
                path,
                current,
                failures=failures,
                retry_at=_stamp(self.now() + timedelta(seconds=delay)),
                last_error=error[:500],
                needs_human=current.needs_human or failures >= policy.max_failures,
                attempt_open=False,  # this attempt is over: another run need not wait for it
            )
        except VaultZpaError as exc:
            log.warning("could not record the %s failure of %s: %s", what, path, exc)
            return Journal()

    def _boundary(self, step: str) -> None:
        if self.hook is not None:
            self.hook(step)
        if self.kill_at == step:
            log.warning("fault injection: SIGKILL at rotation step %s", step)
            os.kill(os.getpid(), signal.SIGKILL)
