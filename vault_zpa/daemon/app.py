"""The daemon as a process: the engine on apscheduler jobs, the HTTP listener, signals.

    schedule (interval | cron, jitter) --+
    SIGHUP, POST /v1/sync (full) --------+--> Runner (never overlaps; one queued follow-up)
    lease tick gains leadership (full) --+            |
                                                      v
                                          Engine.run(full): sync, requests, rotations

Every start-up failure (a port in use, a bad listen address or schedule, a Vault that refuses
the lease) is a ConfigError or VaultZpaError: one line, exit 2, nothing started.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry, Histogram

from vault_zpa.daemon import schedule
from vault_zpa.daemon.engine import Engine, Lease
from vault_zpa.daemon.health import VaultProbe
from vault_zpa.daemon.http import Handler, NotLeader, Server
from vault_zpa.daemon.metrics import EngineCollector
from vault_zpa.daemon.requests import RequestQueue
from vault_zpa.daemon.runner import Runner
from vault_zpa.errors import ConfigError, VaultZpaError
from vault_zpa.masking import Secret
from vault_zpa.model import AssociationType
from vault_zpa.provision import ProvisionSettings
from vault_zpa.rotation import RotationSettings
from vault_zpa.sync import SyncOptions
from vault_zpa.vault.kv import HvacKvStore
from vault_zpa.zpa.client import ZpaClient
from vault_zpa.zpa.clouds import _is_loopback

log = logging.getLogger("vault_zpa.daemon")


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

    @property
    def schedule(self) -> schedule.Schedule:
        return schedule.Schedule(interval=self.interval, cron=self.cron, jitter=self.jitter)


class Daemon:
    def __init__(
        self,
        *,
        config: DaemonConfig,
        zpa: ZpaClient,
        store: HvacKvStore,
        options: SyncOptions,
        lease: Lease | None,
        rotation: RotationSettings | None = None,
        provision: ProvisionSettings | None = None,
        kill_at: str | None = None,
    ) -> None:
        _require_token(config.host, config.api_token)
        self.config = config
        self.api_token, self.max_body = config.api_token, config.max_body
        self.zpa, self.store, self.lease = zpa, store, lease
        try:  # validated before anything starts (config.py checks cron expressions too)
            self.trigger = schedule.trigger(config.schedule)
        except ValueError as exc:
            raise ConfigError(f"daemon schedule: {exc}") from None
        self.registry = CollectorRegistry()
        self.duration = Histogram(
            "vault_zpa_sync_duration_seconds",
            "Duration of sync runs",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.requests = RequestQueue()
        self.engine = Engine(
            zpa=zpa,
            store=store,
            options=options,
            lease=lease,
            rotation=rotation,
            provision=provision,
            full_sync_every=config.full_sync_every,
            requests=self.requests,
            kill_at=kill_at,
            observe=self.duration.observe,
            follow_up=self._follow_up,
        )
        self.registry.register(
            EngineCollector(
                self.engine,
                zpa_stats=lambda: zpa.stats,
                vault_requests=store.conn.request_counts,
                token_ttl=store.conn.tokens.ttl_remaining,
            )
        )
        self.probe = VaultProbe(store.conn)
        self.runner = Runner(self.engine.run)
        self.stopping = self.engine.stopping
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.http: Server | None = None

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        # A run that outlasts its interval (Vault sealed, a slow ZPA) makes apscheduler warn
        # at every missed tick that it skipped one; the runner already queues a follow-up.
        logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
        self._start_http()
        self.engine.tick_lease()  # the first scheduled run (now) follows; no extra trigger
        interval = self.config.interval if not self.config.cron else 60.0
        self.scheduler.add_job(
            self._scheduled,
            self.trigger,
            id="sync",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(30, int(interval)),
            next_run_time=datetime.now(UTC),
        )
        if self.lease is not None:
            period = self.lease.period
            self.scheduler.add_job(
                self._tick_lease,
                IntervalTrigger(seconds=max(1.0, period / 3), timezone=UTC),
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
            "daemon started: listening on %s:%s, %s, %s",
            self.config.host,
            self.port,
            self.config.schedule.describe(),
            "HA (leader lease)" if self.lease is not None else "no HA",
            extra={
                "listen": f"{self.config.host}:{self.port}",
                "ha": self.lease is not None,
                "schedule": self.config.schedule.describe(),
            },
        )

    @property
    def port(self) -> int:
        assert self.http is not None
        return int(self.http.server_address[1])

    def run_forever(self) -> None:
        """Install signal handlers and serve until SIGTERM/SIGINT; SIGHUP syncs now (full)."""
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: self.request_sync(full=True))
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
        self.runner.wait_idle()
        self.requests.fail_queued("the daemon stopped before the request ran")
        if self.lease is not None:
            self.lease.release()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        self.store.close()
        self.zpa.close()
        log.info("daemon stopped")

    # ---- jobs --------------------------------------------------------------------------

    def _scheduled(self) -> None:
        self.runner.trigger(full=False)

    def _tick_lease(self) -> None:
        if self.engine.tick_lease():
            log.info("leader lease gained: syncing now, with a full read-back")
            self.request_sync(full=True)

    def _follow_up(self) -> None:
        self.request_sync(full=True)

    def _keep_token(self) -> None:
        """Renew the token on its schedule; when Vault no longer knows it (revoked), log in
        again (AppRole, Kubernetes) or say plainly that a person must replace it."""
        try:
            self.store.conn.tokens.current()
            if self.probe.check(fresh=True)[1] != "invalid":
                return
            self.store.conn.tokens.invalidate()
            self.store.conn.tokens.current()
            log.warning("vault token was rejected; logged in again")
        except VaultZpaError as exc:
            log.error("vault token: %s", exc)

    def request_sync(self, full: bool = True) -> bool:
        """A run now, off the caller's thread; True if it starts now, False if queued."""
        queued = self.runner.running
        threading.Thread(
            target=self._safe_trigger, args=(full,), name="on-demand-sync", daemon=True
        ).start()
        return not queued

    def _safe_trigger(self, full: bool) -> None:
        try:
            self.runner.trigger(full)
        except Exception:
            log.exception("on-demand sync crashed")

    def request_rotation(
        self,
        pairs: frozenset[tuple[AssociationType, str]],
        *,
        types: frozenset[AssociationType],
        all_due: bool,
        dry_run: bool,
        grace: float | None,
    ) -> dict[str, Any]:
        if self.engine.fence() is None:
            holder = self.lease.observed_holder if self.lease is not None else None
            raise NotLeader(
                f"this replica is not the leader (leader: {holder or 'unknown'}); ask the leader"
            )
        request = self.requests.add(
            pairs, types=types, all_due=all_due, dry_run=dry_run, grace=grace
        )
        self.request_sync(full=False)
        return {
            "accepted": True,
            "id": request.id,
            "status_url": f"/v1/requests/{request.id}",
            "groups": sorted(g for _, g in pairs),
            "all_due": all_due,
            "dry_run": dry_run,
            "mount": self.store.mount,
        }

    def request_status(self, request_id: str) -> dict[str, Any] | None:
        found = self.requests.get(request_id)
        if found is not None:
            found["mount"] = self.store.mount
        return found

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        vault, token = self.probe.check()
        return self.engine.readiness(vault, token)

    # ---- HTTP --------------------------------------------------------------------------

    def _start_http(self) -> None:
        owner = self

        class BoundHandler(Handler):
            timeout = owner.config.http_timeout  # StreamRequestHandler sets it on the socket

        BoundHandler.owner = owner
        with listen_errors(self.config.host, self.config.port):
            self.http = Server(
                (self.config.host, self.config.port),
                BoundHandler,
                max_connections=self.config.max_connections,
            )
        threading.Thread(target=self.http.serve_forever, name="http", daemon=True).start()


def _require_token(host: str, api_token: Secret | None) -> None:
    if not _is_loopback(host) and api_token is None:
        raise ConfigError(
            f"the daemon listens on {host}, which is not loopback, but no API token is set",
            hint="set VAULT_ZPA_API_TOKEN or VAULT_ZPA_API_TOKEN_FILE",
        )


@contextmanager
def listen_errors(host: str, port: int) -> Iterator[None]:
    """A failed bind as one line (exit 2) instead of an OSError."""
    address = f"{host}:{port}"
    try:
        yield
    except socket.gaierror:
        raise ConfigError(
            f"cannot listen on {address}: {host!r} is not an address or a resolvable host name",
            hint="set --listen / VAULT_ZPA_LISTEN to HOST:PORT, e.g. 127.0.0.1:9850",
        ) from None
    except OSError as exc:
        why = {
            errno.EADDRINUSE: "the port is in use by another process",
            errno.EADDRNOTAVAIL: "the address is not one of this machine's",
            errno.EACCES: "permission denied (ports below 1024 need privileges)",
        }.get(exc.errno or 0, exc.strerror or type(exc).__name__)
        raise ConfigError(
            f"cannot listen on {address}: {why}",
            hint="choose another --listen / VAULT_ZPA_LISTEN address or port",
        ) from None


def check_listen(host: str, port: int, api_token: Secret | None) -> None:
    """The listener's configuration, checked before anything else starts, so a port in use or
    a missing API token fails at once, before a Vault login or a ZPA sign-in: refuse a
    non-loopback address without a token, then bind and let go of the address."""
    _require_token(host, api_token)
    with listen_errors(host, port):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(infos[0][4])
