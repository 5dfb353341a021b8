"""`vault-zpa daemon`: scheduled and on-demand syncs, the leader lease, and the HTTP surface.

    scheduler (interval|cron, jitter) --+
    SIGHUP, POST /v1/sync --------------+--> Runner (never overlaps; one queued follow-up)
                                                 |
                         leader? --no--> standby (only the lease is ticked)
                                                 | yes
                         run_once(warm state, guard = lease fencing token)

HTTP: /healthz (alive), /readyz (Vault reachable and authenticated, last run, role),
/metrics (Prometheus), POST /v1/sync (loopback, or a bearer token when bound elsewhere).
The listener is bounded before any authentication: a missing-or-bad `Content-Length` (negative,
not a number, several) is a 400 and one over `max_body` a 413, answered before a body byte is
read; every socket read or write times out after `http_timeout`; at most `max_connections`
connections hold a handler thread, the rest get a 503 and are closed at once.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vault_zpa import logs
from vault_zpa.config import parse_duration_or_zero
from vault_zpa.errors import ConfigError, VaultZpaError
from vault_zpa.masking import Secret
from vault_zpa.model import Action, AssociationType, Outcome, Report
from vault_zpa.rotation import RotationSettings
from vault_zpa.sync import SyncOptions, WarmState, rotate_once, run_once
from vault_zpa.vault.kv import HvacKvStore
from vault_zpa.vault.lease import LeaderLease
from vault_zpa.zpa.client import ZpaClient
from vault_zpa.zpa.clouds import _is_loopback

log = logging.getLogger(__name__)


class Runner:
    """Runs `fn` on demand, never twice at once; triggers during a run queue one follow-up."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._running = False
        self._pending = False
        self.runs = 0

    @property
    def running(self) -> bool:
        with self._lock:
            return self._running

    def trigger(self) -> bool:
        """Run now (True), or queue a follow-up if a run is in progress (False)."""
        with self._lock:
            if self._running:
                self._pending = True
                return False
            self._running = True
        try:
            while True:
                self.runs += 1
                self._fn()
                with self._lock:
                    if not self._pending:
                        self._running = False
                        return True
                    self._pending = False
        except BaseException:
            with self._lock:
                self._running = self._pending = False
            raise


@dataclass(frozen=True)
class DaemonConfig:
    interval: float = 300.0
    cron: str | None = None
    jitter: float = 15.0
    host: str = "127.0.0.1"
    port: int = 9850
    api_token: Secret | None = None
    lease_period: float = 30.0
    full_sync_every: int = 12
    ha: bool = True
    http_timeout: float = 10.0  # seconds a socket read/write may wait: idle clients let go
    max_body: int = 64 * 1024  # POST bodies are tiny JSON; anything larger is refused unread
    max_connections: int = 64  # connections holding a handler thread at once


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen {value!r} must be HOST:PORT", hint="e.g. 127.0.0.1:9850")
    return host, int(port)


@dataclass
class _State:
    role: str = "starting"
    last_result: str | None = None
    last_run_at: str | None = None
    last_error: str | None = None
    last_success: float | None = None
    last_report: Report | None = None
    syncs: Counter[str] = field(default_factory=Counter)
    rotations: Counter[str] = field(default_factory=Counter)
    items: Counter[tuple[str, str]] = field(default_factory=Counter)


class Daemon:
    def __init__(
        self,
        *,
        config: DaemonConfig,
        zpa: ZpaClient,
        store: HvacKvStore,
        options: SyncOptions,
        lease: LeaderLease | None,
        rotation: RotationSettings | None = None,
        kill_at: str | None = None,
    ) -> None:
        if not _is_loopback(config.host) and config.api_token is None:
            raise ConfigError(
                f"the daemon listens on {config.host}, which is not loopback, but no API token "
                "is set",
                hint="set VAULT_ZPA_API_TOKEN or VAULT_ZPA_API_TOKEN_FILE",
            )
        self.config = config
        self.zpa = zpa
        self.store = store
        self.options = options
        self.lease = lease
        self.rotation = rotation or RotationSettings()
        self.kill_at = kill_at
        self._rotate_lock = threading.Lock()
        self._rotate_requests: set[tuple[AssociationType, str]] = set()
        self._rotate_grace: float | None = None
        self.state = _State()
        self.warm = WarmState()
        self.runner = Runner(self._sync_once)
        self.stopping = threading.Event()
        self._cycle = 0
        self._was_leader = False
        self.registry = CollectorRegistry()
        self.duration = Histogram(
            "vault_zpa_sync_duration_seconds",
            "Duration of sync runs",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.registry.register(_Collector(self))
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.http: ThreadingHTTPServer | None = None

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._start_http()
        self._tick_lease()
        sync_trigger: IntervalTrigger | CronTrigger
        if self.config.cron:
            try:
                sync_trigger = CronTrigger.from_crontab(
                    self.config.cron, timezone=UTC, jitter=int(self.config.jitter)
                )
            except ValueError as exc:
                raise ConfigError(
                    f"--cron {self.config.cron!r} is not a crontab expression: {exc}"
                ) from None
        else:
            sync_trigger = IntervalTrigger(
                seconds=self.config.interval, jitter=int(self.config.jitter) or None, timezone=UTC
            )
        now = datetime.now(UTC)
        self.scheduler.add_job(
            self.runner.trigger,
            sync_trigger,
            id="sync",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(30, int(self.config.interval)),
            next_run_time=now,
        )
        if self.lease is not None:
            self.scheduler.add_job(
                self._tick_lease,
                IntervalTrigger(seconds=max(1.0, self.lease.period / 3), timezone=UTC),
                id="lease",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=5,
            )
        self.scheduler.add_job(
            self._keep_token,
            IntervalTrigger(seconds=30, timezone=UTC),
            id="token",
            max_instances=1,
            coalesce=True,
        )
        self.scheduler.start()
        log.info(
            "daemon started",
            extra={"listen": f"{self.config.host}:{self.port}", "ha": self.lease is not None},
        )

    @property
    def port(self) -> int:
        assert self.http is not None
        return int(self.http.server_address[1])

    def request_sync(self) -> bool:
        """On-demand sync without blocking the caller; True if it starts now."""
        queued = self.runner.running
        threading.Thread(target=self._safe_trigger, name="on-demand-sync", daemon=True).start()
        return not queued

    def _safe_trigger(self) -> None:
        try:
            self.runner.trigger()
        except Exception:
            log.exception("on-demand sync crashed")

    def run_forever(self) -> None:
        """Install signal handlers and serve until SIGTERM/SIGINT; SIGHUP syncs now."""
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: self.request_sync())
        self.start()
        while not self.stopping.wait(0.5):
            pass
        self.shutdown()

    def shutdown(self) -> None:
        """Finish the write in hand (the guard refuses the rest), release the lease, stop."""
        self.stopping.set()
        log.info("daemon stopping")
        try:
            self.scheduler.shutdown(wait=True)
        except Exception:
            log.debug("scheduler shutdown", exc_info=True)
        while self.runner.running:
            time.sleep(0.05)
        if self.lease is not None:
            self.lease.release()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        self.store.close()
        self.zpa.close()
        log.info("daemon stopped")

    # ---- jobs --------------------------------------------------------------------------

    def _fence(self) -> int | None:
        if self.stopping.is_set():
            return None
        if self.lease is None:
            return 0
        return self.lease.version

    def _tick_lease(self) -> None:
        if self.lease is None:
            self.state.role = "leader"
            return
        if self.stopping.is_set():
            return
        leader = self.lease.tick()
        if leader and not self._was_leader:
            self.warm.invalidate()  # someone else may have written while we were not leading
        self._was_leader = leader
        self.state.role = "leader" if leader else "standby"

    def _keep_token(self) -> None:
        try:
            self.store.conn.tokens.current()
        except VaultZpaError as exc:
            log.warning("vault token: %s", exc)

    def _sync_once(self) -> None:
        if self.stopping.is_set():
            return
        if self._fence() is None:
            self.state.role = "standby"
            log.info(
                "standby: another replica holds the leader lease",
                extra={"holder": self.lease.observed_holder if self.lease else None},
            )
            return
        self._cycle += 1
        if (self._cycle - 1) % self.config.full_sync_every == 0:
            self.warm.invalidate()  # periodic full read-back catches edits behind our back
        logs.new_run_id()
        started = time.monotonic()
        try:
            report = run_once(
                source=self.zpa,
                store=self.store,
                options=self.options,
                warm=self.warm,
                guard=self._fence,
            )
        except VaultZpaError as exc:
            self.warm.invalidate()
            self._finish("error", str(exc), None)
            log.error("sync failed: %s", exc)
        else:
            result = "partial" if report.failed else "success"
            self._finish(result, None, report)
            self._rotate(report)
            log.info(
                "sync %s",
                result,
                extra={
                    "writes": sum(
                        1
                        for r in report.results
                        if r.item.action.writes and r.outcome is Outcome.DONE
                    ),
                    "failed": sum(1 for r in report.results if r.outcome is Outcome.FAILED),
                    "warm": self.warm.usable,
                },
            )
        finally:
            self.duration.observe(time.monotonic() - started)
            logs.clear_run_id()

    def _rotate(self, report: Report) -> None:
        """After a sync: resume rotations in flight, start due ones, serve requested ones."""
        with self._rotate_lock:
            requested = frozenset(self._rotate_requests)
            grace, self._rotate_grace = self._rotate_grace, None
            self._rotate_requests.clear()
        if not (self.rotation.any_enabled or requested):
            return
        if not self.warm.usable:
            if requested:  # this run failed part-way: keep the requests for the next one
                with self._rotate_lock:
                    self._rotate_requests |= requested
                    self._rotate_grace = self._rotate_grace if grace is None else grace
                log.warning("rotation requests kept for the next run: this sync did not finish")
            return
        results = rotate_once(
            zpa=self.zpa,
            store=self.store,
            prefix=self.options.prefix,
            items=[r.item for r in report.results],
            stored=self.warm.stored,
            journals=self.warm.journals,
            listings=report.listings,
            rotation=self.rotation,
            rules=self.options.rules,
            requested=requested,
            grace=grace,
            kill_at=self.kill_at,
            guard=self._fence,
        )
        acted = [r for r in results if r.decision.action in ("start", "resume")]
        for r in results:
            if r.error:
                outcome = "failed"
            elif r in acted:
                outcome = "completed" if r.state is None else "in_progress"
            else:
                outcome = r.decision.action  # "wait" or "blocked"
            self.state.rotations[outcome] += 1
            log.info("rotation %s: %s %s", r.path, outcome, r.error or r.decision.reason)
        if acted:
            self.warm.invalidate()  # Vault changed outside the sync plan: read back next time

    def request_rotation(
        self, pairs: set[tuple[AssociationType, str]], grace: float | None
    ) -> None:
        with self._rotate_lock:
            self._rotate_requests |= pairs
            self._rotate_grace = grace
        self.request_sync()

    def _finish(self, result: str, error: str | None, report: Report | None) -> None:
        state = self.state
        state.syncs[result] += 1
        state.last_result, state.last_error = result, error
        state.last_run_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if report is not None:
            state.last_report = report
            for r in report.results:
                state.items[(r.item.action.value, r.outcome.value)] += 1
        if result == "success":
            state.last_success = time.time()

    # ---- HTTP --------------------------------------------------------------------------

    def _start_http(self) -> None:
        daemon = self

        class Handler(_Handler):
            owner = daemon
            timeout = daemon.config.http_timeout  # StreamRequestHandler sets it on the socket

        self.http = _Server(
            (self.config.host, self.config.port),
            Handler,
            max_connections=self.config.max_connections,
        )
        threading.Thread(target=self.http.serve_forever, name="http", daemon=True).start()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        vault = self._vault_health()
        authenticated = self.store.conn.tokens.logins > 0
        state = self.state
        if state.role == "standby":
            ready = vault == "ok"
        else:
            ready = vault == "ok" and authenticated and state.last_result in ("success", "partial")
        return ready, {
            "ready": ready,
            "vault": vault,
            "authenticated": authenticated,
            "role": state.role,
            "last_sync": {
                "result": state.last_result,
                "at": state.last_run_at,
                "error": state.last_error,
            },
        }

    def _vault_health(self) -> str:
        conn = self.store.conn
        try:
            response = requests.get(
                f"{conn.addr}/v1/sys/health",
                timeout=2,
                verify=conn.tls.verify,
                cert=conn.tls.cert,
                params={"standbyok": "true", "perfstandbyok": "true"},
            )
        except requests.RequestException:
            return "unreachable"
        if response.status_code == 200:
            return "ok"
        if response.status_code == 503:
            return "sealed"
        if response.status_code == 501:
            return "uninitialized"
        return f"http-{response.status_code}"


MAX_GRACE = 365 * 86400.0
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with a cap on handler threads: a connection past the cap is answered
    503 without blocking and closed, so idle or slow clients cannot pile up threads."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[_Handler], *, max_connections: int
    ) -> None:
        self._slots = threading.BoundedSemaphore(max(1, max_connections))
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.setblocking(False)  # never wait on a client we are turning away
                request.send(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or hung up mid-response: not worth a traceback on stderr.
        log.debug("http connection from %s ended with an error", client_address, exc_info=True)


def parse_grace(value: object) -> float | None:
    """`grace` of POST /v1/rotate: absent, a duration string ('1h') or seconds, finite and from
    0 to 365 days. Anything else is a ValueError (a 400), never an OverflowError downstream."""
    if value is None:
        return None
    problem = ValueError("grace must be a duration such as 1h, or seconds from 0 to 365 days")
    if isinstance(value, bool):
        raise problem
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str):
            seconds = parse_duration_or_zero(value)
        else:
            raise problem
    except (ValueError, OverflowError):
        raise problem from None
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_GRACE:
        raise problem
    return seconds


class _Handler(BaseHTTPRequestHandler):
    owner: Daemon
    protocol_version = "HTTP/1.1"
    server_version = "vault-zpa"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, status: int, error: str) -> None:
        """Answer and hang up: whatever body the client sends next is never read."""
        self.close_connection = True
        self._json(status, {"error": error})

    def _body(self) -> bytes | None:
        """The request body, at most `max_body` bytes, or None after answering 400/413. The
        length is checked before a byte is read and before any authentication."""
        if "Transfer-Encoding" in self.headers:
            self._refuse(400, "chunked bodies are not accepted; send a Content-Length")
            return None
        given = self.headers.get_all("Content-Length") or ["0"]
        text = given[0].strip()
        if len(given) > 1 or not (text.isascii() and text.isdigit()):
            self._refuse(400, "Content-Length must be one non-negative whole number")
            return None
        limit = self.owner.config.max_body
        if len(text) > 18 or int(text) > limit:
            self._refuse(413, f"request bodies are limited to {limit} bytes")
            return None
        length = int(text)
        try:
            body = self.rfile.read(length) if length else b""
        except OSError:  # includes the socket timeout: a client that stalls mid-body
            self.close_connection = True
            return None
        if len(body) < length:  # the client hung up part-way
            self.close_connection = True
            return None
        return body

    def _json(self, status: int, data: dict[str, Any]) -> None:
        self._send(status, json.dumps(data).encode())

    def do_GET(self) -> None:
        if "Transfer-Encoding" in self.headers or self.headers.get(
            "Content-Length", "0"
        ).strip() not in ("", "0"):
            self.close_connection = True  # a GET body is never read: do not parse it as a request
        if self.path == "/healthz":
            self._json(200, {"status": "ok"})
        elif self.path == "/readyz":
            ready, body = self.owner.readiness()
            self._json(200 if ready else 503, body)
        elif self.path == "/metrics":
            self._send(
                200,
                generate_latest(self.owner.registry),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = self._body()
        if body is None:
            return
        if self.path not in ("/v1/sync", "/v1/rotate"):
            self._json(404, {"error": "not found"})
            return
        token = self.owner.config.api_token
        if token is not None:
            given = self.headers.get("Authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {token.reveal()}".encode()):
                self._json(401, {"error": "a valid bearer token is required"})
                return
        if self.path == "/v1/rotate":
            self._rotate(body)
            return
        started = self.owner.request_sync()
        self._json(202, {"accepted": True, "started": started, "queued": not started})

    def _rotate(self, body: bytes) -> None:
        if self.owner._fence() is None:
            self._json(409, {"error": "this replica is a standby; ask the leader"})
            return
        try:
            try:
                request = json.loads(body or b"{}")
            except RecursionError:
                raise ValueError("the body is nested too deeply to be a rotate request") from None
            if not isinstance(request, dict):
                raise ValueError("the body must be a JSON object")
            atype = request.get("association_type")
            groups = request.get("groups") or []
            if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
                raise ValueError("groups must be a list of names")
            if groups and atype not in {t.value for t in AssociationType}:
                raise ValueError("association_type must be CONNECTOR_GRP or SERVICE_EDGE_GRP")
            pairs = {(AssociationType(str(atype)), g) for g in groups}
            grace = parse_grace(request.get("grace"))
        except (ValueError, TypeError) as exc:
            self._json(400, {"error": " ".join(str(exc).split())[:200]})
            return
        self.owner.request_rotation(pairs, grace)
        self._json(202, {"accepted": True, "groups": sorted(g for _, g in pairs)})


class _Collector(Collector):
    """Builds the state-derived series at scrape time. No secret is ever a label."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def collect(self) -> Iterator[Metric]:
        d, state = self.d, self.d.state
        syncs = CounterMetricFamily("vault_zpa_syncs", "Sync runs by result", labels=["result"])
        for result in ("success", "partial", "error"):
            syncs.add_metric([result], state.syncs[result])
        yield syncs
        items = CounterMetricFamily(
            "vault_zpa_items", "Planned items by action and outcome", labels=["action", "outcome"]
        )
        for (action, outcome), n in sorted(dict(state.items).items()):
            items.add_metric([action, outcome], n)
        yield items
        stats = d.zpa.stats
        zreq = CounterMetricFamily(
            "vault_zpa_zpa_requests", "ZPA API requests", labels=["method", "endpoint", "status"]
        )
        for (method, endpoint, status), n in sorted(dict(stats.requests).items()):
            zreq.add_metric([method, endpoint, status], n)
        yield zreq
        yield CounterMetricFamily(
            "vault_zpa_zpa_rate_limited", "429 answers from ZPA", value=stats.rate_limited
        )
        yield CounterMetricFamily(
            "vault_zpa_zpa_retries", "Retried ZPA requests", value=stats.retries
        )
        vreq = CounterMetricFamily(
            "vault_zpa_vault_requests", "Vault requests", labels=["kind", "outcome"]
        )
        for (kind, outcome), n in sorted(d.store.conn.request_counts().items()):
            vreq.add_metric([kind, outcome], n)
        yield vreq
        keys = GaugeMetricFamily(
            "vault_zpa_keys",
            "Groups by association type and state (last run)",
            labels=["association_type", "state"],
        )
        usage = GaugeMetricFamily(
            "vault_zpa_key_usage_ratio",
            "usage_count / max_usage of the key each group holds (exhaustion early warning)",
            labels=["association_type", "group"],
        )
        if state.last_report is not None:
            counts: Counter[tuple[str, str]] = Counter()
            for r in state.last_report.results:
                counts[(r.item.association_type.value, _key_state(r.item.action, r.outcome))] += 1
                key = r.item.key
                if key is not None and key.max_usage:
                    usage.add_metric(
                        [key.association_type.value, r.item.group_name or ""],
                        key.usage_count / key.max_usage,
                    )
            for (atype, key_state), n in sorted(counts.items()):
                keys.add_metric([atype, key_state], n)
        yield keys
        yield usage
        ttl = d.store.conn.tokens.ttl_remaining()
        token = GaugeMetricFamily(
            "vault_zpa_vault_token_ttl_seconds",
            "Seconds left on the daemon's Vault token (absent: no expiry)",
        )
        if ttl is not None:
            token.add_metric([], ttl)
        yield token
        yield GaugeMetricFamily(
            "vault_zpa_leader",
            "1 while this replica holds the leader lease",
            value=1 if d._fence() is not None else 0,
        )
        rot = CounterMetricFamily(
            "vault_zpa_rotations", "Rotation steps by outcome", labels=["outcome"]
        )
        for outcome, n in sorted(dict(state.rotations).items()):
            rot.add_metric([outcome], n)
        yield rot
        yield GaugeMetricFamily(
            "vault_zpa_rotation_needs_human",
            "Secrets whose rotation gave up and waits for a person",
            value=sum(1 for j in dict(d.warm.journals).values() if j.needs_human),
        )
        last = GaugeMetricFamily(
            "vault_zpa_last_success_timestamp_seconds",
            "Unix time of the last fully successful sync",
        )
        if state.last_success is not None:
            last.add_metric([], state.last_success)
        yield last


def _key_state(action: Action, outcome: Outcome) -> str:
    if outcome is Outcome.FAILED:
        return "failed"
    return {
        Action.CONFLICT: "conflict",
        Action.SKIPPED: "no-eligible-key",
        Action.ORPHAN: "orphan",
        Action.PRUNE: "pruned",
    }.get(action, "ok")
