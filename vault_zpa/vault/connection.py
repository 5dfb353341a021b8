"""One Vault server as the vault CLI would reach it: address, namespace, TLS, a token manager,
and a retry loop that translates hvac's errors into ours exactly once."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import hvac
import hvac.exceptions
import requests
import requests.adapters

from vault_zpa.errors import (
    CasConflict,
    VaultAuthError,
    VaultError,
    VaultPermissionDenied,
    VaultUnavailable,
)
from vault_zpa.vault.auth import AuthMethod, TokenManager, tls_error, transport_reason

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a KV v2 mount answers (400) while it is being set up: "Waiting for the primary to upgrade
# from non-versioned to versioned data" on a standby, "Upgrading from non-versioned to versioned
# data" on the active node (a fresh mount, `kv enable-versioning`).
KV_UPGRADING = "non-versioned to versioned data"
CAS_MISMATCH = "check-and-set parameter did not match the current version"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cacert: str | None = None
    capath: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    skip_verify: bool = False

    @property
    def verify(self) -> bool | str:
        if self.skip_verify:
            return False
        return self.cacert or self.capath or True

    @property
    def cert(self) -> tuple[str, str] | None:
        if self.client_cert and self.client_key:
            return (self.client_cert, self.client_key)
        return None


class VaultConnection:
    """Builds one hvac client per thread (requests sessions are not shared across threads) and
    runs every Vault call through `call()`, with retries and error translation."""

    def __init__(
        self,
        *,
        addr: str,
        auth: AuthMethod,
        namespace: str | None = None,
        tls: TlsSettings = TlsSettings(),
        timeout: float = 30.0,
        retry_budget: float = 60.0,
        pool_size: int = 16,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.addr = addr.rstrip("/")
        self.namespace = namespace
        self.tls = tls
        self.timeout = timeout
        self.retry_budget = retry_budget
        self.pool_size = pool_size
        self._local = threading.local()
        self._sleep = sleep
        self._rng = random.Random()
        self.tokens = TokenManager(auth, self._thread_client)
        self.requests: Counter[tuple[str, str]] = Counter()
        self._count_lock = threading.Lock()
        # Each thread's session, with its owner: a session whose thread has ended is closed
        # (and its sockets with it) the next time a thread asks for one.
        self._sessions: list[tuple[threading.Thread, requests.Session]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._quiet_until = 0.0  # the next "waiting for Vault" warning, not before
        # Calls in flight by thread: (started, what), so a progress display can say what a
        # run waits for while a connection hangs, before any error or retry could tell.
        self._pending: dict[int, tuple[float, str]] = {}

    def __repr__(self) -> str:
        return f"VaultConnection({self.addr!r}, namespace={self.namespace!r})"

    def _new_client(self) -> hvac.Client:
        session = requests.Session()
        # hvac prefers a passed session's verify/cert over its own arguments (hvac #991), and a
        # new session's verify is True: set them on the session or VAULT_CACERT is ignored.
        session.verify = self.tls.verify
        session.cert = self.tls.cert
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=2)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        with self._count_lock:
            live = []
            for owner, old in self._sessions:
                if owner.is_alive():
                    live.append((owner, old))
                else:
                    old.close()
            self._sessions = [*live, (threading.current_thread(), session)]
        return hvac.Client(
            url=self.addr,
            namespace=self.namespace,
            verify=self.tls.verify,
            cert=self.tls.cert,
            timeout=self.timeout,
            session=session,
        )

    def executor(self) -> ThreadPoolExecutor:
        """The bounded pool all concurrent Vault I/O runs on; its threads (and their
        sessions) live as long as the connection, so runs reuse connections."""
        with self._count_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.pool_size, thread_name_prefix="vault-io"
                )
            return self._pool

    def close(self) -> None:
        with self._count_lock:
            pool, self._pool = self._pool, None
            sessions, self._sessions = self._sessions, []
        if pool is not None:
            pool.shutdown(wait=True)
        for _, session in sessions:
            session.close()
        self._local = threading.local()

    def client(self) -> hvac.Client:
        """This thread's hvac client, holding the current token."""
        client = self._thread_client()
        client.token = self.tokens.current().reveal()
        return client

    def _thread_client(self) -> hvac.Client:
        """This thread's hvac client as it is (logins and renewals use it too, so they open no
        session of their own)."""
        client: hvac.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._new_client()
            self._local.client = client
        return client

    def open_sessions(self) -> int:
        with self._count_lock:
            return len(self._sessions)

    def count(self, kind: str, outcome: str) -> None:
        with self._count_lock:
            self.requests[(kind, outcome)] += 1

    def request_counts(self) -> dict[tuple[str, str], int]:
        """A consistent copy: pool threads update the counter while /metrics is scraped."""
        with self._count_lock:
            return dict(self.requests)

    def total_requests(self) -> int:
        return sum(self.request_counts().values())

    def call(self, fn: Callable[[hvac.Client], T], *, path: str, capability: str, kind: str) -> T:
        """Run one Vault request with retries for transient failures (connection refused,
        5xx, sealed) inside the retry budget; translate everything else once."""
        deadline = time.monotonic() + self.retry_budget
        me = threading.get_ident()
        self._pending[me] = (time.monotonic(), f"{capability} {path} at {self.addr}")
        try:
            return self._call(fn, path=path, capability=capability, kind=kind, deadline=deadline)
        finally:
            self._pending.pop(me, None)

    def oldest_pending(self) -> tuple[float, str] | None:
        """(seconds, what) of the longest-running Vault call now in flight, if any."""
        calls = list(self._pending.values())
        if not calls:
            return None
        started, what = min(calls)
        return time.monotonic() - started, what

    def _call(
        self,
        fn: Callable[[hvac.Client], T],
        *,
        path: str,
        capability: str,
        kind: str,
        deadline: float,
    ) -> T:
        attempt = 0
        relogged = False
        failure: VaultError
        while True:
            attempt += 1
            try:
                result = fn(self.client())
                self.count(kind, "ok")
                return result
            except hvac.exceptions.InvalidPath:
                self.count(kind, "404")
                raise
            except hvac.exceptions.InvalidRequest as exc:
                self.count(kind, "400")
                if any(CAS_MISMATCH in str(e) for e in (exc.errors or [])):
                    raise CasConflict(path=path, expected_version=-1) from None
                if any(KV_UPGRADING in str(e) for e in (exc.errors or [])):
                    # A KV v2 mount on a Raft standby before the active node finished setting
                    # it up (a new mount, a leader change): transient, so retried.
                    failure = VaultUnavailable(
                        f"Vault at {self.addr} is still setting up the KV mount during "
                        f"{capability} on {path!r}"
                    )
                else:
                    raise VaultError(
                        f"Vault rejected {capability} on {path!r}: {_errors(exc)}"
                    ) from None
            except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as exc:
                self.count(kind, "403")
                if not relogged and self._token_is_dead():
                    relogged = True
                    self.tokens.invalidate()
                    continue
                if isinstance(exc, hvac.exceptions.Unauthorized):
                    raise VaultAuthError("Vault token is invalid or expired") from None
                raise VaultPermissionDenied(path=path, capability=capability) from None
            except VaultUnavailable as exc:
                if not exc.retryable:
                    raise
                failure = exc
            except (
                hvac.exceptions.VaultDown,
                hvac.exceptions.InternalServerError,
                hvac.exceptions.BadGateway,
                hvac.exceptions.RateLimitExceeded,
                hvac.exceptions.UnexpectedError,
            ) as exc:
                self.count(kind, "5xx")
                sealed = isinstance(exc, hvac.exceptions.VaultDown)
                failure = VaultUnavailable(
                    f"Vault at {self.addr} is {'sealed or in standby' if sealed else 'failing'} "
                    f"({type(exc).__name__}) during {capability} on {path!r}"
                )
            except requests.exceptions.SSLError as exc:
                self.count(kind, "error")
                raise tls_error(self.addr, exc) from None
            except requests.exceptions.RequestException as exc:
                self.count(kind, "error")
                failure = VaultUnavailable(
                    f"Vault at {self.addr} is unreachable ({transport_reason(exc)})",
                    hint="check VAULT_ADDR and that Vault is running",
                )
            wait = min(10.0, 0.25 * 2 ** (attempt - 1)) * self._rng.uniform(0.5, 1.0)
            if time.monotonic() + wait > deadline:
                raise failure
            self._say_waiting(failure, deadline)
            log.debug("retrying Vault %s on %s in %.2fs: %s", capability, path, wait, failure)
            self._sleep(wait)

    def _say_waiting(self, failure: VaultError, deadline: float) -> None:
        """One warning when Vault stops answering (then at most one every 10 s), so a person
        sees what the run is waiting for and for how long, instead of a minute of silence."""
        now = time.monotonic()
        with self._count_lock:
            if now < self._quiet_until:
                return
            self._quiet_until = now + 10.0
        log.warning(
            "waiting for Vault: %s; retrying for up to %.0fs more (VAULT_ZPA_VAULT_RETRY_BUDGET)",
            failure.message,
            max(0.0, deadline - now),
        )

    def _token_is_dead(self) -> bool:
        """Vault answers 403 both for 'policy says no' and 'token revoked/expired'; tell apart."""
        client = self._thread_client()
        try:
            client.auth.token.lookup_self()
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
            return True
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException):
            return False
        return False


def _errors(exc: hvac.exceptions.VaultError) -> str:
    errors = exc.errors or [type(exc).__name__]
    return "; ".join(str(e) for e in errors)[:300]
