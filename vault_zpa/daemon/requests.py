"""Remote rotation requests (`POST /v1/rotate`, `vault-zpa rotate --daemon`).

Each request gets an id and is `queued`, then `running`, then `done` or `failed`, with one
outcome per group; `GET /v1/requests/<id>` reports it. A request is never dropped silently: one
the daemon cannot serve (the sync before it failed, leadership was lost, the daemon is stopping)
ends `failed` with the reason. Finished requests are kept for the last `keep` requests, so
memory stays bounded however many are made; at most `max_queued` wait at once.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vault_zpa.model import AssociationType
from vault_zpa.rotation import RotationResult

Pair = tuple[AssociationType, str]


class QueueFull(Exception):
    """Too many requests are waiting; the caller should try again later."""


@dataclass
class RotateRequest:
    id: str
    pairs: frozenset[Pair]
    types: frozenset[AssociationType] = frozenset()  # empty: every type the daemon syncs
    all_due: bool = False
    dry_run: bool = False
    grace: float | None = None
    state: str = "queued"  # queued | running | done | failed
    created_at: str = ""
    finished_at: str | None = None
    error: str | None = None
    rotations: list[dict[str, Any]] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "dry_run": self.dry_run,
            "all_due": self.all_due,
            "association_types": sorted(t.value for t in self.types),
            "groups": sorted(g for _, g in self.pairs),
            "grace": self.grace,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "rotations": self.rotations,
            "not_found": self.not_found,
        }


def rotation_json(r: RotationResult, *, mount: str | None = None) -> dict[str, Any]:
    """One group's outcome, as `vault-zpa rotate --output json` prints it (no key value);
    `kv_path` (<mount>/<path>) when the mount is known."""
    return {
        "path": r.path,
        **({"kv_path": f"{mount}/{r.path}"} if mount is not None else {}),
        "group_name": r.group_name,
        "decision": r.decision.action,
        "reason": r.decision.reason,
        "state": r.state,
        "new_key_id": r.new_key_id,
        "error": r.error,
    }


class RequestQueue:
    def __init__(
        self,
        *,
        keep: int = 200,
        max_queued: int = 100,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._lock = threading.Lock()
        self._all: OrderedDict[str, RotateRequest] = OrderedDict()
        self._keep, self._max_queued, self._now = keep, max_queued, now

    def _stamp(self) -> str:
        return self._now().strftime("%Y-%m-%dT%H:%M:%SZ")

    def add(
        self,
        pairs: frozenset[Pair],
        *,
        types: frozenset[AssociationType] = frozenset(),
        all_due: bool = False,
        dry_run: bool = False,
        grace: float | None = None,
    ) -> RotateRequest:
        with self._lock:
            if sum(1 for r in self._all.values() if r.state == "queued") >= self._max_queued:
                raise QueueFull(f"{self._max_queued} rotation requests are already waiting")
            request = RotateRequest(
                id=secrets.token_hex(8),
                pairs=pairs,
                types=types or frozenset(t for t, _ in pairs),
                all_due=all_due,
                dry_run=dry_run,
                grace=grace,
                created_at=self._stamp(),
            )
            self._all[request.id] = request
            self._trim()
            return request

    def _trim(self) -> None:
        finished = [k for k, r in self._all.items() if r.state in ("done", "failed")]
        for key in finished[: max(0, len(self._all) - self._keep)]:
            del self._all[key]

    def get(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            request = self._all.get(request_id)
            return None if request is None else request.to_json()

    def take(self) -> list[RotateRequest]:
        """The queued requests, now `running`, oldest first."""
        with self._lock:
            taken = [r for r in self._all.values() if r.state == "queued"]
            for request in taken:
                request.state = "running"
            return taken

    @property
    def pending(self) -> bool:
        with self._lock:
            return any(r.state == "queued" for r in self._all.values())

    def finish(
        self,
        request: RotateRequest,
        results: Sequence[RotationResult],
        *,
        errors: Sequence[str] = (),
    ) -> None:
        found = {r.group_name for r in results}
        with self._lock:
            request.rotations = [rotation_json(r) for r in results]
            request.not_found = sorted(g for _, g in request.pairs if g not in found)
            failed = (
                any(r.error or r.decision.action == "blocked" for r in results)
                or bool(request.not_found)
                or bool(errors)
            )
            request.error = "; ".join(errors)[:500] or None
            request.state = "failed" if failed else "done"
            request.finished_at = self._stamp()
            self._trim()

    def fail(self, requests: Sequence[RotateRequest], error: str) -> None:
        with self._lock:
            for request in requests:
                request.state, request.error = "failed", error
                request.finished_at = self._stamp()
            self._trim()

    def requeue(self, requests: Sequence[RotateRequest]) -> None:
        with self._lock:
            for request in requests:
                request.state = "queued"

    def fail_queued(self, error: str) -> None:
        with self._lock:
            queued = [r for r in self._all.values() if r.state == "queued"]
        self.fail(queued, error)

    def counts(self) -> Mapping[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for r in self._all.values():
                out[r.state] = out.get(r.state, 0) + 1
            return out
