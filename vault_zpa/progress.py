"""Progress of a long one-shot run, on stderr only (stdout stays the report, byte for byte).

On a terminal: one live line, redrawn every half second — ZPA listing pages per association
type, Vault reads (done/total) and writes, the time spent waiting on ZPA's rate limit, and what
the run is waiting for when a service stops answering. Off a terminal: the same facts as a log
line every `log_every` seconds (JSON under --log-format json), and a warning as soon as a Vault
call or a ZPA listing has been waiting longer than `stall_after` seconds.

Nothing here touches the network: the monitor only reads counters that the ZPA client, the
rate limiter and the Vault connection keep anyway, and wraps the key source to learn which
association type is being listed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from vault_zpa.model import AssociationType, ProvisioningKey, ZpaGroup
from vault_zpa.sync import Progress
from vault_zpa.vault.connection import VaultConnection
from vault_zpa.zpa.client import ZpaClient
from vault_zpa.zpa.ratelimit import SlidingWindowLimiter

log = logging.getLogger("vault_zpa.progress")


class WatchedLimiter(SlidingWindowLimiter):
    """The client's rate limiter, telling how many callers are held back right now and since
    when, so a progress line can say 'waiting on ZPA's rate limit' while it happens."""

    def __init__(self, limit: int, window: float) -> None:
        super().__init__(limit, window)
        self._held = 0
        self._held_since = 0.0
        self._watch = threading.Lock()

    def acquire(self) -> float:
        start = time.monotonic()
        with self._watch:
            self._held += 1
            if self._held == 1:
                self._held_since = start
        try:
            return super().acquire()
        finally:
            with self._watch:
                self._held -= 1

    def holding(self) -> float:
        """Seconds the current wait has lasted (0 when nobody waits, or only for a moment)."""
        with self._watch:
            if not self._held:
                return 0.0
            return time.monotonic() - self._held_since


@dataclass
class _Listing:
    pages: int = 0
    keys: int | None = None  # set when the type's listing ended
    failed: bool = False


@dataclass
class Counts:
    """What the run has done so far, as the monitor last read it."""

    elapsed: float = 0.0
    listings: dict[str, _Listing] = field(default_factory=dict)
    listing: str | None = None  # the association type being listed now
    listing_for: float = 0.0  # seconds since its last page arrived (or it started)
    reads_done: int = 0
    reads_total: int = 0
    writes: int = 0
    rate_wait: float = 0.0  # seconds spent waiting on ZPA's rate limit, so far
    rate_holding: float = 0.0  # the current wait on it, if one is going on
    zpa_retries: int = 0
    vault_waiting: tuple[float, str] | None = None  # (seconds, what) of the oldest Vault call


class WatchedSource:
    """The key source as `run_once` sees it, telling the monitor which type is being listed."""

    def __init__(self, zpa: ZpaClient, monitor: Monitor) -> None:
        self._zpa = zpa
        self._monitor = monitor
        self.microtenant_id = zpa.microtenant_id  # list_one scopes orphans by it

    def list_provisioning_keys(self, association_type: AssociationType) -> list[ProvisioningKey]:
        self._monitor.listing_started(association_type.value)
        keys: list[ProvisioningKey] | None = None
        try:
            keys = self._zpa.list_provisioning_keys(association_type)
            return keys
        finally:
            self._monitor.listing_ended(association_type.value, None if keys is None else len(keys))

    def list_groups(self, association_type: AssociationType) -> list[ZpaGroup]:
        return self._zpa.list_groups(association_type)


class Monitor:
    """A background thread that renders progress to `stream` until `stop()`."""

    def __init__(
        self,
        *,
        stream: TextIO,
        tty: bool,
        zpa: ZpaClient | None = None,
        limiter: WatchedLimiter | None = None,
        conn: VaultConnection | None = None,
        redraw_every: float = 0.5,
        log_every: float = 10.0,
        stall_after: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.tty = tty
        self.zpa = zpa
        self.limiter = limiter
        self.conn = conn
        self.redraw_every = redraw_every
        self.log_every = log_every
        self.stall_after = stall_after
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._listings: dict[str, _Listing] = {}
        self._listing: str | None = None
        self._last_pages = 0
        self._last_page_at = self._started
        self._base_pages = 0
        self._reads_done = 0
        self._reads_total = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False
        self._stalls_said: set[str] = set()
        self.progress = Progress(start=self._reads_start, advance=self._reads_advance)

    # -- hooks ----------------------------------------------------------------------------

    def source(self) -> WatchedSource:
        assert self.zpa is not None
        return WatchedSource(self.zpa, self)

    def _reads_start(self, total: int) -> None:
        with self._lock:
            self._reads_total += total

    def _reads_advance(self, n: int) -> None:
        with self._lock:
            self._reads_done += n

    def listing_started(self, atype: str) -> None:
        pages = self._zpa_pages()
        with self._lock:
            self._listing = atype
            self._base_pages = pages
            self._last_pages = pages
            self._last_page_at = self._clock()
            self._listings[atype] = _Listing()

    def listing_ended(self, atype: str, keys: int | None) -> None:
        pages = self._zpa_pages()
        with self._lock:
            entry = self._listings.setdefault(atype, _Listing())
            entry.pages = pages - self._base_pages
            entry.keys = keys
            entry.failed = keys is None
            if self._listing == atype:
                self._listing = None

    # -- reading the counters -------------------------------------------------------------

    def _zpa_pages(self) -> int:
        """GETs of the provisioning-key listing answered so far (one per page)."""
        if self.zpa is None:
            return 0
        for _ in range(5):  # the client's threads may update the Counter while we read it
            try:
                return sum(
                    n
                    for (method, endpoint, status), n in list(self.zpa.stats.requests.items())
                    if method == "GET" and endpoint == "provisioningKey" and status == "200"
                )
            except RuntimeError:
                continue
        return 0

    def counts(self) -> Counts:
        now = self._clock()
        pages = self._zpa_pages()
        with self._lock:
            listings = {k: _Listing(v.pages, v.keys, v.failed) for k, v in self._listings.items()}
            if self._listing is not None:
                if pages != self._last_pages:
                    self._last_pages, self._last_page_at = pages, now
                listings[self._listing].pages = pages - self._base_pages
            out = Counts(
                elapsed=now - self._started,
                listings=listings,
                listing=self._listing,
                listing_for=now - self._last_page_at if self._listing else 0.0,
                reads_done=self._reads_done,
                reads_total=self._reads_total,
            )
        if self.conn is not None:
            requests = self.conn.request_counts()
            out.writes = requests.get(("write", "ok"), 0)
            out.vault_waiting = self.conn.oldest_pending()
        if self.zpa is not None:
            out.rate_wait = self.zpa.stats.limiter_wait
            out.zpa_retries = self.zpa.stats.retries
        if self.limiter is not None:
            out.rate_holding = self.limiter.holding()
        return out

    def describe(self, c: Counts) -> str:
        parts = [f"{c.elapsed:.0f}s"]
        zpa = []
        for atype, entry in c.listings.items():
            state = (
                "failed"
                if entry.failed
                else f"{entry.keys} keys"
                if entry.keys is not None
                else "listing"
            )
            zpa.append(f"{atype} {entry.pages} page(s) ({state})")
        if zpa:
            parts.append("ZPA " + ", ".join(zpa))
        if c.reads_total or c.writes:
            parts.append(f"Vault {c.reads_done}/{c.reads_total} read, {c.writes} written")
        if c.rate_wait or c.rate_holding:
            parts.append(f"{c.rate_wait + c.rate_holding:.1f}s waiting on ZPA's rate limit")
        if c.zpa_retries:
            parts.append(f"{c.zpa_retries} ZPA retries")
        stall = self._stall(c)
        if stall:
            parts.append(stall)
        return " · ".join(parts)

    def _stall(self, c: Counts) -> str | None:
        """What the run waits for, once it has waited `stall_after` seconds for it."""
        if c.vault_waiting is not None and c.vault_waiting[0] >= self.stall_after:
            seconds, what = c.vault_waiting
            return f"waiting {seconds:.0f}s for Vault ({what})"
        if c.rate_holding >= self.stall_after:
            return f"waiting {c.rate_holding:.0f}s on ZPA's rate limit (20 GETs per 10 s)"
        if c.listing is not None and c.listing_for >= self.stall_after:
            return f"waiting {c.listing_for:.0f}s for ZPA's next {c.listing} page"
        return None

    # -- the thread ------------------------------------------------------------------------

    def start(self) -> Monitor:
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._drawn:
            self._write("\r\x1b[K")

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        next_log = self._started + self.log_every
        while not self._stop.wait(self.redraw_every):
            try:
                counts = self.counts()
                if self.tty:
                    self._write("\r\x1b[K" + self.describe(counts)[: _width()])
                    self._drawn = True
                    continue
                stall = self._stall(counts)
                key = stall.split(" ", 3)[-1] if stall else None
                if stall and key not in self._stalls_said:
                    # Once per thing waited for; the periodic line repeats it while it lasts.
                    self._stalls_said.add(key or "")
                    log.warning("%s", stall)
                now = self._clock()
                if now >= next_log:
                    next_log = now + self.log_every
                    log.info("progress: %s", self.describe(counts))
            except Exception:  # a display must never break the run it shows
                log.debug("progress display failed", exc_info=True)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass


def _width() -> int:
    import shutil

    return max(40, shutil.get_terminal_size((120, 24)).columns - 1)
