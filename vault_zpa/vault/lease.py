"""The leader lease: one KV v2 secret that replicas take turns holding.

- The lease lives at `<prefix>/_vault-zpa/leader` in the same KV v2 mount as the keys.
- Its metadata carries `delete_version_after` = the lease period, so every version the holder
  writes is deleted by *Vault's* clock when it is not renewed in time; no replica's clock decides.
  Vault counts it in whole seconds and reads `0s` as "never delete", so the period is rounded
  *up* (a lease that outlives its holder's 2/3-period window by a little is safe; one that
  never lapses means no fail-over). The configured period is at least 5 s (config.py).
- Acquire and renew are check-and-set writes; the version a write returns is the fencing token.
  A contender may take the lease only when the current version is deleted (lapsed) or released.
- The holder acts only while its last successful renewal is younger than 2/3 of the period
  (measured on its own monotonic clock), so it stops writing before Vault could hand the lease to
  someone else, even if it cannot reach Vault to find out.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import hvac

from vault_zpa import layout
from vault_zpa.errors import CasConflict, VaultError
from vault_zpa.vault.kv import HvacKvStore

log = logging.getLogger(__name__)


class LeaderLease:
    def __init__(
        self,
        store: HvacKvStore,
        *,
        prefix: str,
        period: float = 30.0,
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if store.kv_version != 2:
            raise VaultError("the leader lease needs a KV v2 mount")
        if not (math.isfinite(period) and period > 0):
            raise ValueError(f"lease period must be a positive number of seconds, not {period!r}")
        self.store = store
        self.path = layout.state_path(prefix, "leader")
        self.period = period
        self.holder = holder or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._clock = clock
        self._lock = threading.Lock()
        self._version: int | None = None  # the fencing token while we hold the lease
        self._renewed_at = 0.0
        self._configured = False
        self.observed_holder: str | None = None
        self.last_error: str | None = None  # why the last tick could not read or write the lease

    def __repr__(self) -> str:
        return f"LeaderLease({self.path!r}, holder={self.holder!r}, version={self._version})"

    @property
    def version(self) -> int | None:
        """The fencing token, or None when we must not act."""
        with self._lock:
            return self._version if self._valid() else None

    def is_leader(self) -> bool:
        return self.version is not None

    def _valid(self) -> bool:
        return self._version is not None and (
            self._clock() - self._renewed_at < self.period * 2 / 3
        )

    def _configure(self) -> None:
        """delete_version_after on the lease path, so unrenewed versions lapse by Vault's clock."""
        if self._configured:
            return
        mount = self.store.mount
        lapse = math.ceil(self.period)  # never `0s`: Vault reads that as "never delete"
        assert lapse > 0, f"lease period {self.period!r} s gives delete_version_after={lapse}s"

        def meta(c: hvac.Client) -> Any:
            return c.secrets.kv.v2.update_metadata(
                path=self.path,
                mount_point=mount,
                max_versions=3,
                delete_version_after=f"{lapse}s",
                custom_metadata={"managed_by": "vault-zpa", "kind": "leader-lease"},
            )

        self.store.conn.call(
            meta, path=f"{mount}/metadata/{self.path}", capability="update", kind="lease"
        )
        self._configured = True

    def tick(self) -> bool:
        """Renew if we hold the lease, try to take it if it is free. Returns leadership."""
        try:
            self._configure()
            with self._lock:
                held = self._version
            leader = self._renew(held) if held is not None else self._try_acquire()
        except VaultError as exc:
            log.warning("leader lease: %s", exc)
            self.last_error = str(exc)
            return self.is_leader()
        self.last_error = None
        return leader

    def _write(self, cas: int, holder: str) -> int:
        mount = self.store.mount

        def put(c: hvac.Client) -> Any:
            return c.secrets.kv.v2.create_or_update_secret(
                path=self.path, secret={"holder": holder}, cas=cas, mount_point=mount
            )

        body = self.store.conn.call(
            put, path=f"{mount}/data/{self.path}", capability="update", kind="lease"
        )
        return int((body.get("data") or {}).get("version") or 0)

    def _renew(self, held: int) -> bool:
        started = self._clock()
        try:
            version = self._write(held, self.holder)
        except CasConflict:
            log.warning("leader lease lost: someone else wrote version after %s", held)
            with self._lock:
                self._version = None
            return False
        with self._lock:
            self._version, self._renewed_at = version, started
        return True

    def _try_acquire(self) -> bool:
        current = self.store.read(self.path)
        if current is not None and current.data is not None and current.data.get("holder"):
            self.observed_holder = current.data.get("holder")
            return False
        started = self._clock()
        try:
            version = self._write(current.version if current else 0, self.holder)
        except CasConflict:
            return False
        with self._lock:
            self._version, self._renewed_at = version, started
        log.info("leader lease acquired", extra={"lease_version": version})
        self.observed_holder = self.holder
        return True

    def release(self) -> None:
        """Hand the lease back at once (a check-and-set write of an empty holder)."""
        with self._lock:
            held, self._version = self._version, None
        if held is None:
            return
        try:
            self._write(held, "")
            log.info("leader lease released", extra={"lease_version": held})
        except VaultError as exc:
            log.warning("leader lease release failed (it will lapse by itself): %s", exc)
