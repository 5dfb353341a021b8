"""Opt-in provisioning: a group with no usable key gets one, created in ZPA and written to its
path in the same run (the Terraform page's `zpa_provisioning_key`, done the safe way).

Off by default: it changes ZPA. Per association type, optionally only for named groups or a
name pattern:

    [association_type.CONNECTOR_GRP.provision]
    enabled = true
    max_usage = 10
    enrollment_cert = "Connector"          # by name; the default per type
    name_template = "{group}-{timestamp}"
    groups = ["Prod Connectors"]           # and/or group_pattern = "^prod-"

It runs the rotation journal's protocol without an old key (rotation.py has the reasoning):

    IDLE --cas: INTENT(kind provision, unique name, path, cert, max_usage)-->
         --find by name, else create in ZPA--> CREATED --cas write to the group's path-->
         IDLE (last_rotated_at)

- One journal per group serves rotation and provisioning: at most one creation per group is in
  flight, whichever started it (I3); only the lease holder writes (I4, the `writer` fence).
- The unique name is journaled before the create, and a resumed run looks it up first, so a
  lost create response is found, not repeated (I2); a key made for an INTENT another run won is
  withdrawn (it carries the journaled name, which the sync never serves: Journal.shuns).
- Nothing is ever deleted or disabled but such a withdrawn duplicate (I1).
- A journaled key deleted, disabled or used up before it reached Vault ends that attempt (the
  key recorded as abandoned); after the backoff the next run provisions anew. (Retrying its
  write would keep the journal in flight, and the group without a key, for good.)
- Before it starts, a run reads the journal, then the group's path: a key another run
  provisioned meanwhile is already there (its secret is written before its journal goes back
  to IDLE), and the INTENT write is check-and-set against the journal read, so of two runs that
  both saw the group without a key exactly one creates.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from vault_zpa.errors import CasConflict, ConfigError, VaultZpaError, ZpaApiError
from vault_zpa.model import (
    Action,
    AssociationType,
    ItemResult,
    Listing,
    Outcome,
    PlanItem,
    ProvisioningKey,
    StoredSecret,
)
from vault_zpa.reconcile import TypeRule, secret_data, volatile_metadata
from vault_zpa.rotation import (
    RETIRED_KEPT,
    Decision,
    Journal,
    RotationPolicy,
    RotationResult,
    Rotator,
    State,
    Superseded,
    _not_found,
    _parse,
    _stamp,
    check_name_template,
    new_key_name,
    read_journal,
)

log = logging.getLogger(__name__)

# Failures back off from a minute, doubling up to a day; a provisioning never gives up for
# good (every attempt looks its name up first, so retrying cannot multiply keys).
RETRY = RotationPolicy(backoff=60.0, max_failures=1_000_000)
KNOWN_KEYS = frozenset(
    {"enabled", "max_usage", "enrollment_cert", "name_template", "groups", "group_pattern"}
)


@dataclass(frozen=True)
class ProvisionPolicy:
    enabled: bool = False
    max_usage: int = 10
    enrollment_cert: str = ""  # by name; "" means the type's usual one (Connector / Service Edge)
    name_template: str = "{group}-{timestamp}"
    groups: frozenset[str] = frozenset()  # only these groups (with group_pattern: either)
    group_pattern: re.Pattern[str] | None = None

    def covers(self, group_name: str) -> bool:
        if not self.enabled:
            return False
        if not self.groups and self.group_pattern is None:
            return True
        if group_name in self.groups:
            return True
        return self.group_pattern is not None and self.group_pattern.search(group_name) is not None

    def cert_name(self, atype: AssociationType) -> str:
        return self.enrollment_cert or atype.enrollment_cert_name


@dataclass(frozen=True)
class ProvisionSettings:
    policies: Mapping[AssociationType, ProvisionPolicy] = field(default_factory=dict)
    max_per_run: int = 10

    def policy(self, atype: AssociationType) -> ProvisionPolicy:
        return self.policies.get(atype, ProvisionPolicy())

    def covers(self, atype: AssociationType, group_name: str) -> bool:
        return self.policy(atype).covers(group_name)

    @property
    def any_enabled(self) -> bool:
        return any(p.enabled for p in self.policies.values())


def parse_policy(table: Mapping[str, Any], where: str) -> ProvisionPolicy:
    """Validate one [association_type.T.provision] table; one line per mistake."""
    changes: dict[str, Any] = {}
    for key, value in table.items():
        if key not in KNOWN_KEYS:
            raise ConfigError(f"{where} {key}: unknown key", hint=f"known: {sorted(KNOWN_KEYS)}")
        try:
            if key == "enabled":
                if not isinstance(value, bool):
                    raise ValueError("must be true or false (a TOML boolean, unquoted)")
                changes[key] = value
            elif key == "max_usage":
                # ZPA's maxUsage: a positive whole number (the console allows up to 5000).
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5000:
                    raise ValueError("must be a whole number from 1 to 5000")
                changes[key] = value
            elif key == "enrollment_cert":
                if not isinstance(value, str) or not value.strip() or len(value) > 255:
                    raise ValueError("must be an enrollment certificate's name")
                changes[key] = value
            elif key == "name_template":  # {key_name} has no meaning here: no old key
                changes[key] = check_name_template(value, ("group", "timestamp"))
            elif key == "groups":
                if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
                    raise ValueError("must be a list of group names")
                changes[key] = frozenset(value)
            elif key == "group_pattern":
                if not isinstance(value, str):
                    raise ValueError("must be a regular expression (a string)")
                changes[key] = re.compile(value)
        except (ValueError, KeyError, IndexError, re.error) as exc:
            raise ConfigError(f"{where} {key}: {exc}") from None
    return replace(ProvisionPolicy(), **changes)


def check_compatible(
    rules: Mapping[AssociationType, TypeRule], settings: ProvisionSettings
) -> None:
    """A provisioned key the type's key_name_pattern would not select is never served: each
    run would find the group without a key and make another. Refused at start-up."""
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    for atype, policy in settings.policies.items():
        pattern = rules.get(atype, TypeRule()).key_name_pattern
        if not policy.enabled or pattern is None:
            continue
        samples = sorted(policy.groups) or ["Group", "Connector-Group-0001", "NY Connectors"]
        names = [
            new_key_name(policy.name_template, group=g, key_name="", moment=moment) for g in samples
        ]
        # Named groups: every one must match. The whole type: every usual name must (a group
        # may be called anything). Chosen by a group_pattern: some must (the runtime check of
        # each real name refuses the rest, as a failed item).
        lenient = not policy.groups and policy.group_pattern is not None
        matching = [bool(pattern.fullmatch(n)) for n in names]
        if not (any(matching) if lenient else all(matching)):
            bad = next(n for n, ok in zip(names, matching, strict=True) if not ok)
            raise ConfigError(
                f"[association_type.{atype.value}.provision] name_template makes keys named "
                f"like {bad!r}, which key_name_pattern {pattern.pattern!r} does not select",
                hint="change name_template or key_name_pattern so provisioned keys match",
            )


@dataclass(frozen=True)
class Target:
    """One group to provision for, as the plan saw it."""

    association_type: AssociationType
    group_id: str
    group_name: str
    path: str
    microtenant_id: str | None = None
    replaces: str | None = None  # a gone group whose secret the path holds (the plan judged)


class Provisioner(Rotator):
    """Runs one group's provisioning steps (a Rotator without an old key: the journal writes,
    the claim of another process's open attempt, the find-before-create and the withdrawal of
    a duplicate are the same code)."""

    def __init__(self, *, certs: Callable[[AssociationType, str], str], **kw: Any) -> None:
        super().__init__(**kw)
        self._certs = certs
        self.made: dict[str, ProvisioningKey] = {}  # keys written by this instance, by id

    def provision(
        self, target: Target, policy: ProvisionPolicy, *, reason: str, start: bool = True
    ) -> RotationResult:
        """Start (or resume) provisioning one group. `start` False: only resume a provisioning
        already in flight (found in a journal, not in the plan)."""
        atype, gid = target.association_type, target.group_id
        where = (atype, gid)
        if self.store.kv_version != 2:
            raise ConfigError(
                "provisioning needs a KV v2 mount: its journal is written with check-and-set"
            )
        try:
            journal = read_journal(self.store, self.prefix, atype, gid)
        except VaultZpaError as exc:
            return self._result(target, "blocked", exc.message, None, error=str(exc))
        if journal.in_flight and journal.kind != "provision":
            return self._result(target, "wait", "a rotation of this group is in flight", None)
        if journal.retry_at and _parse(journal.retry_at) > self.now():
            return self._result(
                target,
                "wait",
                f"backing off after a failure until {journal.retry_at}: {journal.last_error}",
                journal.state.value if journal.in_flight else None,
            )
        if not journal.in_flight and not start:
            return self._result(target, "none", "finished by another run meanwhile", None)
        action = "resume" if journal.in_flight else "start"
        path = journal.target_path if journal.in_flight and journal.target_path else target.path
        try:
            return self._steps_provision(replace(target, path=path), journal, policy, reason)
        except Superseded as exc:
            return self._result(target, "wait", exc.message, journal.state.value)
        except VaultZpaError as exc:
            latest = self._failed(path, where, RETRY, str(exc.message), what="provisioning")
            return self._result(
                target,
                action,
                reason,
                latest.state.value if latest.in_flight else None,
                error=str(exc),
            )

    def _steps_provision(
        self, target: Target, journal: Journal, policy: ProvisionPolicy, reason: str
    ) -> RotationResult:
        atype, gid, path = target.association_type, target.group_id, target.path
        rule = self.rules.get(atype, TypeRule())
        action = "resume" if journal.in_flight else "start"
        if not journal.in_flight:
            served = self._usable_served(target) or self._kept_old(target, journal)
            if served is not None:
                return self._result(target, "none", served, None)
            name = new_key_name(
                policy.name_template,
                group=target.group_name or gid,
                key_name="",
                moment=self.now(),
                tag=self.tag(),
            )
            if rule.key_name_pattern is not None and not rule.key_name_pattern.fullmatch(name):
                raise ConfigError(
                    f"a provisioned key would be named {name!r}, which key_name_pattern "
                    f"{rule.key_name_pattern.pattern!r} does not select; not provisioning"
                )
            cert_id = self._certs(atype, policy.cert_name(atype))
            journal = self._journal(
                path,
                journal,
                state=State.INTENT,
                kind="provision",
                reason=reason,
                new_name=name,
                new_id="",
                old_id="",
                started_at=_stamp(self.now()),
                grace=0.0,
                grace_until="",
                needs_human=False,
                attempt_open=True,
                group_name=target.group_name,
                target_path=path,
                enrollment_cert_id=cert_id,
                max_usage=policy.max_usage,
            )
            self._boundary("intent")
        elif journal.state is State.INTENT:
            journal = self._claim(path, journal)
        if journal.state is State.INTENT:
            journal = self._create(
                path,
                atype,
                journal,
                group_id=gid,
                enrollment_cert_id=journal.enrollment_cert_id,
                max_usage=journal.max_usage,
            )
        if journal.state is not State.CREATED:
            raise VaultZpaError(f"{path}: provisioning journal in unexpected state {journal.state}")
        why = self._unusable(atype, journal.new_id, "new")
        if why is not None:
            return self._give_up(target, journal, why, action, reason)
        key = self._write_provisioned(target, rule, journal)
        self.made[key.id] = key
        self._boundary("written")
        self._journal(
            path,
            journal,
            state=State.IDLE,
            last_rotated_at=_stamp(self.now()),
            failures=0,
            retry_at="",
            last_error="",
        )
        return RotationResult(
            path, target.group_name, Decision(action, f"{reason}; done"), None, key.id
        )

    def _give_up(
        self, target: Target, journal: Journal, why: str, action: str, reason: str
    ) -> RotationResult:
        """The journaled key was deleted, disabled or used up before it reached Vault: writing
        it would serve nothing usable, and retrying would leave the group without a key for
        good (the journal stays in flight, so no new provisioning can start). This attempt
        ends instead: the key is recorded as abandoned (as a given-up rotation's new key), and
        after the usual backoff the next run provisions a new one."""
        failures = journal.failures + 1
        delay = min(RETRY.backoff * 2 ** min(failures - 1, 20), 86400.0)
        retry_at = _stamp(self.now() + timedelta(seconds=delay))
        self._journal(
            target.path,
            journal,
            state=State.IDLE,
            abandoned=(journal.new_id, *journal.abandoned)[:RETIRED_KEPT],
            attempt_open=False,
            failures=failures,
            retry_at=retry_at,
            last_error=f"provisioning given up: {why}",
        )
        log.warning("provisioning of %s given up: %s", target.path, why)
        return self._result(
            target,
            action,
            reason,
            None,
            error=f"provisioning given up: {why}; a new key is provisioned from {retry_at}",
        )

    def abandon(self, target: Target, journal: Journal, why: str) -> None:
        """End an unfinished provisioning whose group is gone (the key, if it was made, went
        with the group): the journal returns to IDLE, the key id (if any) kept as abandoned."""
        abandoned = (journal.new_id, *journal.abandoned) if journal.new_id else journal.abandoned
        self._journal(
            target.path,
            journal,
            state=State.IDLE,
            abandoned=abandoned[:RETIRED_KEPT],
            attempt_open=False,
            retry_at="",
            last_error=f"provisioning ended: {why}",
        )
        log.warning("provisioning of %s ended: %s", target.path, why)

    def _usable_served(self, target: Target) -> str | None:
        """Why the group needs no key after all (read after the journal: a run that finished
        provisioning it wrote the secret first), or None."""
        current = self.store.read(target.path)
        self._check_ours(target, current)
        if current is None or current.data is None:
            return None
        key_id = current.data.get("key_id", "")
        if not key_id or current.data.get("group_id") != target.group_id:
            return None
        try:
            key = self.zpa.get_provisioning_key(target.association_type, key_id)
        except ZpaApiError as exc:
            if _not_found(exc):
                return None
            raise
        pattern = self.rules.get(target.association_type, TypeRule()).key_name_pattern
        if key.eligible and (pattern is None or pattern.fullmatch(key.name)):
            return f"key {key_id} in Vault is usable (made meanwhile by another run)"
        return None

    def _kept_old(self, target: Target, journal: Journal) -> str | None:
        """The old key a given-up rotation kept (rotation.py: its new key became unusable),
        while it is still usable: the next sync serves it again. A plan made from journals
        read before the rotation gave up (a replica's memory) still excluded it and found the
        group without a key; provisioning now would leave it in ZPA, usable and recorded
        nowhere (the new INTENT replaces the journal's old_id)."""
        old = journal.old_id
        if journal.kind != "rotation" or not old or old in journal.retired:
            return None
        if journal.new_id not in journal.abandoned:
            return None
        try:
            key = self.zpa.get_provisioning_key(target.association_type, old)
        except ZpaApiError as exc:
            if _not_found(exc):
                return None
            raise
        pattern = self.rules.get(target.association_type, TypeRule()).key_name_pattern
        if key.group_id != target.group_id or not key.eligible:
            return None
        if pattern is not None and not pattern.fullmatch(key.name):
            return None
        return f"key {old}, which a given-up rotation kept, is usable: the next sync serves it"

    def _check_ours(self, target: Target, current: StoredSecret | None) -> None:
        """The path must be free, hold this group's managed secret, or the secret of the gone
        group the plan judged it may replace; anything else is not provisioned over."""
        if current is None:
            return
        if not current.managed:
            raise VaultZpaError(
                f"{target.path} exists and is not managed by vault-zpa; not provisioning over it"
            )
        held = (current.data or {}).get("group_id")
        if held and held not in (target.group_id, target.replaces):
            raise VaultZpaError(
                f"{target.path} holds the secret of group id {held}; not provisioning over it"
            )

    def _write_provisioned(
        self, target: Target, rule: TypeRule, journal: Journal
    ) -> ProvisioningKey:
        """Check-and-set the new key into the group's path (a create when nothing is there),
        unless it is there already (an earlier attempt whose response was lost)."""
        atype, path = target.association_type, target.path
        key = self.zpa.get_provisioning_key(atype, journal.new_id)
        if not key.group_name:
            key = replace(key, group_name=journal.group_name or target.group_name)
        for _ in range(2):
            current = self.store.read(path)
            if current is not None and (current.data or {}).get("key_id") == journal.new_id:
                return key
            self._check_ours(target, current)
            if not key.eligible:
                raise VaultZpaError(
                    f"the new key {key.id} is disabled or used up in ZPA; not writing it"
                )
            meta = {
                **(current.custom_metadata if current is not None else {}),
                **volatile_metadata(key, rule),
                "last_synced_at": _stamp(self.now()),
            }
            self._fence(meta)
            try:
                self.store.write(
                    path,
                    secret_data(key),
                    cas=current.version if current is not None else 0,
                    custom_metadata=meta,
                )
            except CasConflict:
                continue  # someone wrote meanwhile (a sync writing this very key, say): look
            log.info("provisioning: wrote key %s to %s", key.id, path)
            return key
        raise VaultZpaError(f"{path} kept changing while the provisioned key was written")

    def _result(
        self,
        target: Target,
        action: str,
        reason: str,
        state: str | None,
        *,
        error: str | None = None,
    ) -> RotationResult:
        return RotationResult(
            target.path, target.group_name, Decision(action, reason), state, error=error
        )


def provisioning_due(journal: Journal | None, now: datetime) -> bool:
    """An unfinished provisioning the sync should resume this run (not backing off)."""
    if journal is None or not journal.in_flight or journal.kind != "provision":
        return False
    return not journal.retry_at or _parse(journal.retry_at) <= now


class ProvisionStep:
    """The provisioning part of one sync run: PROVISION items of the plan (at most
    `max_per_run` new ones), then any provisioning left unfinished by an earlier run."""

    def __init__(
        self,
        *,
        zpa: Any,
        store: Any,
        prefix: str,
        settings: ProvisionSettings,
        rules: Mapping[AssociationType, TypeRule],
        guard: Callable[[], int | None] | None = None,
        kill_at: str | None = None,
        hook: Callable[[str], None] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        takeover: float | None = None,
    ) -> None:
        self.settings = settings
        self.now = now
        self._cert_ids: dict[tuple[AssociationType, str], str] = {}
        self._zpa = zpa
        extra: dict[str, Any] = {} if takeover is None else {"takeover": takeover}
        self.provisioner = Provisioner(
            certs=self._cert,
            zpa=zpa,
            store=store,
            prefix=prefix,
            now=now,
            kill_at=kill_at,
            writer=guard,
            rules=rules,
            hook=hook,
            **extra,
        )
        self.started = 0
        self.handled: set[tuple[AssociationType, str]] = set()

    def _cert(self, atype: AssociationType, name: str) -> str:
        """The enrollment certificate's id, looked up by name once per run."""
        if (atype, name) not in self._cert_ids:
            cert = self._zpa.find_enrollment_cert(name)
            if cert is None or not str(cert.get("id") or ""):
                raise ConfigError(
                    f"no enrollment certificate named {name!r} in ZPA; not provisioning",
                    hint="set [association_type.T.provision] enrollment_cert to one ZPA has",
                )
            self._cert_ids[(atype, name)] = str(cert["id"])
        return self._cert_ids[(atype, name)]

    def check(self, types: Sequence[AssociationType], kv_version: int) -> None:
        """At start-up, before anything runs: a KV v2 mount, and every enabled type's
        enrollment certificate in ZPA (exit 2 when one is definitely missing). A ZPA that
        cannot answer now is not a configuration error: each run looks again."""
        enabled = [t for t in types if self.settings.policy(t).enabled]
        if not enabled:
            return
        if kv_version != 2:
            raise ConfigError(
                "provisioning needs a KV v2 mount (its journal is written with check-and-set)",
                hint="use a KV v2 mount, or turn [association_type.T.provision] off",
            )
        for atype in enabled:
            try:
                self._cert(atype, self.settings.policy(atype).cert_name(atype))
            except ConfigError:
                raise
            except VaultZpaError as exc:
                log.warning("enrollment certificates could not be checked now: %s", exc)
                return

    def run(self, items: Sequence[PlanItem]) -> dict[int, ItemResult]:
        """Results by id(item) for the PROVISION items among `items`."""
        out: dict[int, ItemResult] = {}
        for item in items:
            if item.action is not Action.PROVISION:
                continue
            target = Target(
                item.association_type,
                item.group_id or "",
                item.group_name or "",
                item.path,
                replaces=item.replaces,
            )
            self.handled.add((item.association_type, target.group_id))
            policy = self.settings.policy(item.association_type)
            if self.started >= self.settings.max_per_run:
                # Not done: the group still has no key. Reported as failed (exit 1, metrics),
                # so nobody reads "provisioned" for a group the next run will serve.
                out[id(item)] = ItemResult(
                    item,
                    Outcome.FAILED,
                    error=f"deferred to the next run: {self.settings.max_per_run} provisionings "
                    "already started this run (VAULT_ZPA_MAX_PROVISIONS_PER_RUN)",
                )
                continue
            result = self._guarded(target, policy, item.reason, start=True)
            if result.decision.action == "start":
                self.started += 1  # an attempt, failed or not: creates may have happened
            out[id(item)] = self._item_result(item, result)
        return out

    def resume(
        self,
        journals: Mapping[tuple[AssociationType, str], Journal],
        *,
        types: Sequence[AssociationType],
        groups: frozenset[str] = frozenset(),
        listings: Sequence[Listing] = (),
    ) -> list[ItemResult]:
        """Provisionings an earlier run left unfinished whose group this run did not plan. One
        whose group a complete listing of groups no longer has is ended (abandoned), not
        retried for ever against a group that is gone."""
        alive = {
            listing.association_type: {g.id for g in listing.groups}
            for listing in listings
            if listing.complete and listing.groups is not None and not listing.microtenant_id
        }
        out = []
        for (atype, gid), journal in sorted(journals.items()):
            if (atype, gid) in self.handled or atype not in types:
                continue
            if not provisioning_due(journal, self.now()) or not journal.target_path:
                continue
            if groups and journal.group_name not in groups:
                continue
            target = Target(atype, gid, journal.group_name, journal.target_path)
            if atype in alive and gid not in alive[atype]:
                out.append(self._abandon(target, journal))
                continue
            item = PlanItem(
                action=Action.PROVISION,
                association_type=atype,
                path=journal.target_path,
                reason=f"resuming an unfinished provisioning ({journal.state.value})",
                group_id=gid,
                group_name=journal.group_name,
            )
            result = self._guarded(target, self.settings.policy(atype), item.reason, start=False)
            out.append(self._item_result(item, result))
        return out

    def _abandon(self, target: Target, journal: Journal) -> ItemResult:
        item = PlanItem(
            action=Action.PROVISION,
            association_type=target.association_type,
            path=target.path,
            reason="the group is gone from ZPA; its unfinished provisioning is ended",
            group_id=target.group_id,
            group_name=target.group_name,
        )
        try:
            self.provisioner.abandon(target, journal, "the group was deleted in ZPA")
        except VaultZpaError as exc:
            return ItemResult(item, Outcome.FAILED, error=str(exc))
        return ItemResult(item, Outcome.DONE)

    def _guarded(
        self, target: Target, policy: ProvisionPolicy, reason: str, *, start: bool
    ) -> RotationResult:
        try:
            return self.provisioner.provision(target, policy, reason=reason, start=start)
        except VaultZpaError as exc:
            return RotationResult(
                target.path, target.group_name, Decision("start", reason), None, error=str(exc)
            )
        except Exception as exc:  # noqa: BLE001 - one group's bug must not stop the others
            log.error("provisioning %s failed: internal error %s", target.path, type(exc).__name__)
            return RotationResult(
                target.path,
                target.group_name,
                Decision("start", reason),
                None,
                error=f"internal error: {type(exc).__name__}",
            )

    def _item_result(self, item: PlanItem, result: RotationResult) -> ItemResult:
        if result.error is not None:
            return ItemResult(item, Outcome.FAILED, error=result.error)
        if result.new_key_id is not None:
            key = self.provisioner.made.get(result.new_key_id)
            return ItemResult(
                replace(item, key=key, reason=f"{item.reason}: created key {result.new_key_id}"),
                Outcome.DONE,
            )
        if result.decision.action == "none":  # a usable key is there now (another run's)
            return ItemResult(replace(item, reason=result.decision.reason), Outcome.DONE)
        # Waiting (backing off, another process's attempt, not the leader any more): the group
        # has no key yet, and the report must not say otherwise.
        return ItemResult(item, Outcome.FAILED, error=result.decision.reason)
