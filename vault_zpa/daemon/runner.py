"""Runs never overlap. A trigger during a run queues one follow-up; a full read-back asked for
by any of the queued triggers is kept (full wins over warm)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Runner:
    def __init__(self, fn: Callable[[bool], None]) -> None:
        self._fn = fn  # fn(full): one run; full=True reads Vault back in full
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running = False
        self._pending: bool | None = None  # None: no follow-up; else whether it must be full
        self.runs = 0

    @property
    def running(self) -> bool:
        with self._lock:
            return self._running

    def trigger(self, full: bool = False) -> bool:
        """Run now in this thread (True), or queue a follow-up if a run is in progress (False)."""
        with self._lock:
            if self._running:
                self._pending = bool(self._pending) or full
                return False
            self._running = True
        try:
            while True:
                self.runs += 1
                self._fn(full)
                with self._lock:
                    if self._pending is None:
                        self._running = False
                        self._idle.notify_all()
                        return True
                    full, self._pending = self._pending, None
        except BaseException:
            with self._lock:
                self._running, self._pending = False, None
                self._idle.notify_all()
            raise

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no run is in progress; False if `timeout` passed first."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._running, timeout)
