"""Frozen records that travel between the modules: ZPA facts in, plans and reports out."""

from __future__ import annotations

import enum
import hashlib
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from vault_zpa.masking import Secret


class AssociationType(enum.StrEnum):
    """The ZPA association types whose provisioning keys vault-zpa manages."""

    CONNECTOR_GRP = "CONNECTOR_GRP"
    SERVICE_EDGE_GRP = "SERVICE_EDGE_GRP"

    @property
    def enrollment_cert_name(self) -> str:
        """The conventional enrollment certificate name for this kind of component."""
        return "Connector" if self is AssociationType.CONNECTOR_GRP else "Service Edge"


@dataclass(frozen=True, slots=True)
class ProvisioningKey:
    """One ZPA provisioning key, parsed from the wire (numbers arrive as strings)."""

    id: str
    name: str
    association_type: AssociationType
    key: Secret
    group_id: str
    group_name: str
    enrollment_cert_id: str
    enrollment_cert_name: str
    max_usage: int
    usage_count: int
    enabled: bool
    creation_time: int
    modified_time: int
    microtenant_id: str | None = None
    # Why this one key cannot be used although its listing is fine (a value ZPA sent that we
    # cannot trust: maxUsage null, an absurd timestamp, the key value hidden because the key
    # is not exportable). Such a key is never selected; its group reports the reason.
    problem: str | None = None

    @property
    def exhausted(self) -> bool:
        return self.usage_count >= self.max_usage

    @property
    def eligible(self) -> bool:
        """A key a connector can still enroll with (and whose every value we could read)."""
        return self.problem is None and self.enabled and not self.exhausted


@dataclass(frozen=True, slots=True)
class ZpaGroup:
    """One App Connector Group or Service Edge Group as ZPA lists it (keys or not)."""

    id: str
    name: str
    association_type: AssociationType
    enabled: bool = True
    microtenant_id: str | None = None


@dataclass(frozen=True, slots=True)
class Listing:
    """Every provisioning key of one association type, or the reason the listing failed.

    `complete` is the only licence to treat absence as deletion (orphans, pruning), and only
    within what the listing covered: its microtenant, if it was scoped to one.
    """

    association_type: AssociationType
    keys: tuple[ProvisioningKey, ...] = ()
    complete: bool = True
    error: str | None = None
    # The microtenant the listing was scoped to (`microtenantId` sent with every call), or None
    # when it was not scoped (ZPA then lists every microtenant). Prune uses it to stay within
    # what this run could see.
    microtenant_id: str | None = None
    # Every group of the type (appConnectorGroup / serviceEdgeGroup), keys or not; None when
    # the groups were not listed or their listing failed (`groups_error`): then no group may
    # be taken for gone (prune) and none is provisioned.
    groups: tuple[ZpaGroup, ...] | None = None
    groups_error: str | None = None


# Field names of the KV data a secret holds (DESIGN.md "What a secret holds").
DATA_FIELDS: tuple[str, ...] = (
    "provisioning_key",
    "key_id",
    "key_name",
    "association_type",
    "group_id",
    "group_name",
    "enrollment_cert_id",
    "enrollment_cert_name",
    "max_usage",
    "microtenant_id",
)

MANAGED_BY = "vault-zpa"
# custom_metadata key: the KV v2 version vault-zpa itself last wrote at a path, so a later read
# tells an edit made in Vault (a newer version) from a change in ZPA.
SYNCED_VERSION = "synced_version"

# The key of KeyDigest: random per process, so a digest means nothing outside it.
_DIGEST_KEY: Final = secrets.token_bytes(32)


class KeyDigest(str):
    """What a sync keeps in memory of a provisioning key it read from Vault: a keyed BLAKE2b
    digest. It tells whether ZPA's key differs (all the planner asks) in 32 characters instead
    of the key's 400+, and is useless to anyone who sees it. A plain string that happens to
    look like one is not one: only this type is taken as already digested."""

    __slots__ = ()

    @classmethod
    def of(cls, value: str) -> KeyDigest:
        if isinstance(value, KeyDigest):
            return value
        digest = hashlib.blake2b(value.encode(), key=_DIGEST_KEY, digest_size=16)
        return cls(digest.hexdigest())


def comparable(data: Mapping[str, str]) -> dict[str, str]:
    """KV data with the provisioning key as a KeyDigest: what the sync compares and keeps."""
    out = dict(data)
    if "provisioning_key" in out:
        out["provisioning_key"] = KeyDigest.of(out["provisioning_key"])
    return out


def interned(text: str) -> str:
    """Names and ids repeat between the ZPA listing and what Vault holds (and values such as
    "true" or a cert name across thousands of secrets): short ones are interned so each is
    held once. CPython frees interned strings nobody uses."""
    return sys.intern(text) if len(text) <= 64 else text


@dataclass(frozen=True, slots=True)
class StoredSecret:
    """What Vault holds at one path: data, version (for check-and-set) and custom metadata.

    `data` is None when the path has metadata but no readable current version (soft-deleted,
    or a create that was interrupted before the data write).
    """

    path: str
    version: int
    data: Mapping[str, str] | None
    custom_metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def managed(self) -> bool:
        return self.custom_metadata.get("managed_by") == MANAGED_BY

    def compact(self) -> StoredSecret:
        """This secret as a sync keeps it: the key replaced by its digest (see KeyDigest)."""
        return self if self.data is None else replace(self, data=comparable(self.data))

    def __repr__(self) -> str:
        # The data holds the provisioning key: never print it.
        return (
            f"StoredSecret(path={self.path!r}, version={self.version}, "
            f"fields={sorted(self.data or {})}, custom_metadata={dict(self.custom_metadata)!r})"
        )


class Action(enum.StrEnum):
    """What the plan decides for one (association type, group) or orphaned path."""

    CREATE = "create"
    UPDATE = "update"
    METADATA = "metadata"
    UNCHANGED = "unchanged"
    ORPHAN = "orphan"
    PRUNE = "prune"
    CONFLICT = "conflict"
    SKIPPED = "skipped"
    NO_KEY = "no-key"  # the group exists in ZPA without any provisioning key (reported)
    PROVISION = "provision"  # the group has no eligible key: create one in ZPA (opt-in)

    @property
    def writes(self) -> bool:
        return self in (Action.CREATE, Action.UPDATE, Action.METADATA, Action.PRUNE)


@dataclass(frozen=True, slots=True)
class PlanItem:
    """One decision, with the reason a person can read."""

    action: Action
    association_type: AssociationType
    path: str
    reason: str
    group_id: str | None = None
    group_name: str | None = None
    key: ProvisioningKey | None = None
    data: Mapping[str, str] | None = None
    custom_metadata: Mapping[str, str] | None = None
    expected_version: int = 0
    replaces: str | None = None  # PROVISION: the gone group whose secret the path still holds

    def __repr__(self) -> str:
        return (
            f"PlanItem(action={self.action.value}, path={self.path!r}, reason={self.reason!r}, "
            f"key_id={self.key.id if self.key else None!r})"
        )


@dataclass(frozen=True, slots=True)
class Plan:
    items: tuple[PlanItem, ...]
    listings: tuple[Listing, ...]

    def count(self, action: Action) -> int:
        return sum(1 for item in self.items if item.action is action)


class Outcome(enum.StrEnum):
    DONE = "done"
    FAILED = "failed"
    PLANNED = "planned"  # dry run: decided, not carried out


@dataclass(frozen=True, slots=True)
class ItemResult:
    item: PlanItem
    outcome: Outcome
    error: str | None = None
    version: int | None = None
    metadata: Mapping[str, str] | None = None  # custom_metadata as written


@dataclass(frozen=True, slots=True)
class Report:
    """What one run decided and did; rendered as text or JSON by the CLI."""

    results: tuple[ItemResult, ...]
    listings: tuple[Listing, ...]
    dry_run: bool
    started_at: str
    finished_at: str
    errors: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        """Exit code 1: a listing failed, a write failed, or a group could not be written
        because of a conflict (unowned path, slug collision)."""
        return bool(self.errors) or any(
            r.outcome is Outcome.FAILED or r.item.action is Action.CONFLICT for r in self.results
        )

    def count(self, action: Action) -> int:
        return sum(1 for r in self.results if r.item.action is action)
