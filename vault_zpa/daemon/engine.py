"""One replica's work, free of threads, sockets and signals so it can be tested in-process.

- **Leadership.** `tick_lease()` renews or takes the leader lease. A tick that makes this
  replica leader drops the warm state and returns True: the caller syncs at once (fail-over
  must not wait for the schedule). A lease that cannot be read or written (Vault down, the
  token revoked) is `no-lease`, not `standby`: nobody else is to blame.
- **Runs.** `run(full)` syncs once as the leader. A full run reads Vault back (every
  `full_sync_every` runs, on demand, after leadership changes hands or any failure); the others
  trust the warm state and only list ZPA. A run in which every listing failed is an `error`,
  like one that raised; one in which some items failed is `partial`.
- **Rotations.** After a sync, queued requests are served oldest first, then due rotations.
  Only one pass that changes anything runs per sync (it makes the snapshot stale); the rest are
  queued again and `follow_up()` asks for another run at once.
- **Readiness** (see `readiness()`): what /readyz answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from vault_zpa import logs
from vault_zpa.daemon.requests import RequestQueue, RotateRequest
from vault_zpa.errors import VaultZpaError
from vault_zpa.model import AssociationType, Outcome, Report
from vault_zpa.provision import ProvisionSettings, ProvisionStep
from vault_zpa.rotation import KeyAdmin, RotationResult, RotationSettings
from vault_zpa.sync import KeySource, SyncOptions, WarmState, rotate_once, run_once
from vault_zpa.vault.kv import KvStore

log = logging.getLogger("vault_zpa.daemon")


class Lease(Protocol):
    """The leader lease as the engine uses it (vault_zpa.vault.lease.LeaderLease)."""

    period: float
    observed_holder: str | None
    last_error: str | None

    @property
    def version(self) -> int | None: ...

    def tick(self) -> bool: ...

    def release(self) -> None: ...


class Zpa(KeySource, KeyAdmin, Protocol):
    """What the engine needs of ZPA: listing (sync) and key administration (rotation)."""


@dataclass
class EngineState:
    role: str = "starting"  # starting | leader | standby | no-lease
    role_error: str | None = None
    last_result: str | None = None  # success | partial | error
    last_run_at: str | None = None
    last_error: str | None = None
    last_full: bool = False
    last_success: float | None = None
    last_report: Report | None = None
    syncs: Counter[str] = field(default_factory=Counter)
    rotations: Counter[str] = field(default_factory=Counter)
    items: Counter[tuple[str, str]] = field(default_factory=Counter)


class Engine:
    def __init__(
        self,
        *,
        zpa: Zpa,
        store: KvStore,
        options: SyncOptions,
        lease: Lease | None,
        rotation: RotationSettings | None = None,
        provision: ProvisionSettings | None = None,
        full_sync_every: int = 12,
        requests: RequestQueue | None = None,
        kill_at: str | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        observe: Callable[[float], None] = lambda seconds: None,
        follow_up: Callable[[], None] = lambda: None,
    ) -> None:
        self.zpa, self.store, self.options, self.lease = zpa, store, options, lease
        self.rotation = rotation or RotationSettings()
        self.provision = provision or ProvisionSettings()
        self.full_sync_every = max(1, full_sync_every)
        self.requests = requests or RequestQueue(now=now)
        self.kill_at = kill_at
        self._now, self._wall, self._monotonic = now, wall, monotonic
        self._observe, self.follow_up = observe, follow_up
        self.state = EngineState()
        self.warm = WarmState()
        self.stopping = threading.Event()
        self._warm_runs = 0
        self._was_leader = False

    # ---- leadership ----------------------------------------------------------------------

    def fence(self) -> int | None:
        """The fencing token writes carry, or None when this replica must not write."""
        if self.stopping.is_set():
            return None
        if self.lease is None:
            return 0
        return self.lease.version

    def tick_lease(self) -> bool:
        """Renew or take the lease. True when this tick made us leader: sync at once."""
        if self.lease is None:
            self.state.role = "leader"
            return False
        if self.stopping.is_set():
            return False
        leader = self.lease.tick()
        gained = leader and not self._was_leader
        if gained:
            self.warm.invalidate()  # others may have written while we were not leading
        if self._was_leader and not leader:
            log.warning("leader lease lost; this replica stops writing")
        self._was_leader = leader
        error = None if leader else self.lease.last_error
        self.state.role = "leader" if leader else ("no-lease" if error else "standby")
        self.state.role_error = error
        return gained

    # ---- runs ----------------------------------------------------------------------------

    def run(self, full: bool = False) -> None:
        """One sync as the leader, then the rotation requests and due rotations."""
        if self.stopping.is_set():
            self.requests.fail_queued("the daemon is stopping; nothing was rotated")
            return
        if self.fence() is None:
            self._not_leader()
            return
        # At most full_sync_every - 1 warm runs in a row; a full run on demand restarts the count.
        periodic = self._warm_runs >= self.full_sync_every - 1
        full = full or periodic or not self.warm.usable
        self._warm_runs = 0 if full else self._warm_runs + 1
        if full:
            self.warm.invalidate()
        logs.new_run_id()
        started = self._monotonic()
        try:
            report = run_once(
                source=self.zpa,
                store=self.store,
                options=self.options,
                now=self._now,
                warm=self.warm,
                guard=self.fence,
                provisioner=self._provisioner(),
            )
        except VaultZpaError as exc:
            self.warm.invalidate()
            self._finish("error", str(exc), None, full)
            log.error("sync failed: %s", exc)
            self.requests.fail_queued(f"the sync before it failed, so nothing was rotated: {exc}")
        else:
            if self._report(report, full) == "error":
                self.requests.fail_queued(
                    f"the sync before it failed, so nothing was rotated: {self.state.last_error}"
                )
            else:
                self._rotate(report)
        finally:
            self._observe(self._monotonic() - started)
            logs.clear_run_id()

    def _not_leader(self) -> None:
        state, lease = self.state, self.lease
        holder = lease.observed_holder if lease is not None else None
        if state.role == "no-lease" and lease is not None:
            log.error(
                "not syncing: the leader lease cannot be read or written: %s", state.role_error
            )
            why = f"this replica cannot hold the leader lease ({state.role_error})"
        else:
            state.role = "standby" if not self.stopping.is_set() else state.role
            log.info("standby: another replica holds the leader lease", extra={"holder": holder})
            why = f"this replica is a standby (leader: {holder or 'unknown'}); ask the leader"
        self.requests.fail_queued(why)

    def _report(self, report: Report, full: bool) -> str:
        listings = report.listings
        if listings and all(listing.error is not None for listing in listings):
            result = "error"
            error = "every ZPA listing failed: " + "; ".join(report.errors)
        elif report.failed:
            result = "partial"
            failed = sum(1 for r in report.results if r.outcome is Outcome.FAILED)
            error = "; ".join(
                [*report.errors, f"{failed} item(s) failed"] if failed else report.errors
            )
        else:
            result, error = "success", None
        self._finish(result, error, report, full)
        extra = {
            "writes": sum(
                1 for r in report.results if r.item.action.writes and r.outcome is Outcome.DONE
            ),
            "failed": sum(1 for r in report.results if r.outcome is Outcome.FAILED),
            "full": full,
        }
        level = {"success": logging.INFO, "partial": logging.WARNING}.get(result, logging.ERROR)
        if error:
            log.log(level, "sync %s: %s", result, error, extra=extra)
        else:
            log.log(level, "sync %s", result, extra=extra)
        return result

    def _finish(self, result: str, error: str | None, report: Report | None, full: bool) -> None:
        state = self.state
        state.syncs[result] += 1
        state.last_result, state.last_error, state.last_full = result, error, full
        state.last_run_at = self._now().strftime("%Y-%m-%dT%H:%M:%SZ")
        if report is not None:
            state.last_report = report
            for r in report.results:
                state.items[(r.item.action.value, r.outcome.value)] += 1
        if result == "success":
            state.last_success = self._wall()

    # ---- rotations -----------------------------------------------------------------------

    def _rotate(self, report: Report) -> None:
        taken = self.requests.take()
        if not (self.rotation.any_enabled or taken):
            return
        if not self.warm.usable:
            failed = sum(1 for r in report.results if r.outcome is Outcome.FAILED)
            why = "the sync before it did not finish" + (
                f" ({failed} item(s) failed)" if failed else ""
            )
            self.requests.fail(taken, f"{why}, so nothing was rotated; try again")
            if self.rotation.any_enabled:
                log.warning("due rotations wait for the next run: %s", why)
            return
        unlisted_by_type = {
            x.association_type: x.error for x in report.listings if x.error is not None
        }
        changed = False
        due_done = False
        later: list[RotateRequest] = []
        for request in taken:
            if changed:
                later.append(request)  # the snapshot is stale now: serve it in a fresh run
                continue
            types = request.types or frozenset(self.options.association_types)
            unlisted = [
                f"the ZPA listing of {t.value} failed: {unlisted_by_type[t]}"
                for t in sorted(types)
                if t in unlisted_by_type
            ]
            if unlisted and request.pairs:
                self.requests.fail([request], "; ".join(unlisted) + "; nothing was rotated")
                continue
            results = self._rotate_pass(
                report,
                types=types,
                requested=request.pairs,
                dry_run=request.dry_run,
                grace=request.grace,
            )
            self.requests.finish(request, results, errors=unlisted)
            acted = not request.dry_run and _acted(results)
            changed |= acted
            due_done |= request.all_due and not request.pairs and not request.dry_run
        if later:
            self.requests.requeue(later)
        if self.rotation.any_enabled and not changed and not due_done:
            changed = _acted(self._rotate_pass(report))
        if changed:
            self.warm.invalidate()  # Vault changed outside the sync plan: read back next time
        if later:
            self.follow_up()

    def _provisioner(self) -> ProvisionStep | None:
        """A fresh provisioning step per run (it caches certificate ids for one run only)."""
        if not self.provision.any_enabled:
            return None
        return ProvisionStep(
            zpa=self.zpa,
            store=self.store,
            prefix=self.options.prefix,
            settings=self.provision,
            rules=self.options.rules,
            guard=self.fence,
            kill_at=self.kill_at,
            now=self._now,
            takeover=self.rotation.takeover,
        )

    def _rotate_pass(
        self,
        report: Report,
        *,
        types: frozenset[AssociationType] | None = None,
        requested: frozenset[tuple[Any, str]] = frozenset(),
        dry_run: bool = False,
        grace: float | None = None,
    ) -> list[RotationResult]:
        results = rotate_once(
            zpa=self.zpa,
            store=self.store,
            prefix=self.options.prefix,
            items=[
                r.item for r in report.results if types is None or r.item.association_type in types
            ],
            stored=self.warm.stored,
            journals=self.warm.journals,
            listings=report.listings,
            rotation=self.rotation,
            rules=self.options.rules,
            requested=requested,
            dry_run=dry_run,
            grace=grace,
            now=self._now,
            kill_at=self.kill_at,
            guard=self.fence,
        )
        for r in results:
            if dry_run:
                outcome = "planned"
            elif r.error:
                outcome = "failed"
            elif r.decision.action in ("start", "resume"):
                outcome = "completed" if r.state is None else "in_progress"
            else:
                outcome = r.decision.action  # "wait" or "blocked"
            if not dry_run:
                self.state.rotations[outcome] += 1
            level = logging.ERROR if r.error else logging.INFO
            log.log(level, "rotation %s: %s %s", r.path, outcome, r.error or r.decision.reason)
        return results

    # ---- what /readyz says ---------------------------------------------------------------

    def readiness(self, vault: str, token: str) -> tuple[bool, dict[str, Any]]:
        """Ready: Vault answers unsealed, our token is alive, the lease can be read, and (as
        leader) the last run was not an `error`. A healthy standby is ready too: a 2-replica
        Deployment then always has a ready pod while one replica can sync, and the standby is
        the one that takes over. A leader that has not finished its first run is ready unless
        something above says otherwise; it becomes not-ready only after a failed run."""
        state = self.state
        reasons = []
        if vault != "ok":
            reasons.append(f"Vault is {vault}")
        elif token != "ok":
            reasons.append(f"the Vault token is {token}")
        if state.role == "no-lease":
            reasons.append(f"the leader lease cannot be read or written: {state.role_error}")
        if state.role == "leader" and state.last_result == "error":
            reasons.append(f"the last sync failed: {state.last_error}")
        ready = not reasons
        return ready, {
            "ready": ready,
            "reason": "; ".join(reasons)[:1000] or None,
            "vault": vault,
            "token": token,
            "authenticated": token == "ok",
            "role": state.role,
            "leader": self.lease.observed_holder if self.lease is not None else None,
            "last_sync": {
                "result": state.last_result,
                "at": state.last_run_at,
                "full": state.last_full,
                "error": state.last_error,
            },
        }


def _acted(results: Sequence[RotationResult]) -> bool:
    return any(r.decision.action in ("start", "resume") for r in results)
