"""A client-side limiter that keeps ZPA's documented per-source-IP windows (zpa-api.md §6).

ZPA counts GETs (20 / 10 s) and POST/PUT/DELETE (10 / 10 s) in windows that start with the first
call. A sliding log ("no more than `limit` calls in any `window`") is stricter than any such fixed
window, so a client that keeps it never sees a 429 from a well-behaved server. `margin` widens the
window a little to absorb network jitter between our clock and the server's arrival times.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class SlidingWindowLimiter:
    def __init__(
        self,
        limit: int,
        window: float,
        *,
        margin: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be >= 1 and window > 0")
        self.limit = limit
        self.window = window + margin
        self._clock = clock
        self._sleep = sleep
        self._calls: deque[float] = deque()
        self._lock = threading.Lock()
        self.waited = 0.0

    def acquire(self) -> float:
        """Block until one more call fits; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                while self._calls and now - self._calls[0] >= self.window:
                    self._calls.popleft()
                if len(self._calls) < self.limit:
                    self._calls.append(now)
                    self.waited += waited
                    return waited
                delay = self.window - (now - self._calls[0])
            self._sleep(delay)
            waited += delay

    def penalise(self, seconds: float) -> None:
        """After a 429, hold every caller back: fill the log so nothing goes out for `seconds`."""
        with self._lock:
            until = self._clock() + seconds - self.window
            self._calls = deque([until] * self.limit, maxlen=None)
