"""Vault authentication that keeps itself alive: token, AppRole and Kubernetes logins, renewal at
about two thirds of the token's TTL (with jitter), and a fresh login when renewal is refused or
the max TTL is near. Credentials held in files are re-read at every login."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import hvac
import hvac.exceptions
import requests

from vault_zpa.errors import VaultAuthError, VaultTlsError, VaultUnavailable
from vault_zpa.masking import REDACTOR, Secret

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Login:
    token: Secret
    ttl: float  # seconds; 0 means the token does not expire
    renewable: bool


class AuthMethod(Protocol):
    @property
    def describe(self) -> str: ...

    def login(self, client: hvac.Client) -> Login: ...


def _read_secret_file(path: str, what: str) -> Secret:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise VaultAuthError(f"cannot read {what} file {path}: {exc.strerror}") from None
    if not value:
        raise VaultAuthError(f"{what} file {path} is empty")
    REDACTOR.register(value)
    return Secret(value)


@dataclass(frozen=True)
class TokenAuth:
    """A token given directly (VAULT_TOKEN) or in a file (re-read at each 'login')."""

    token: Secret | None = None
    token_file: str | None = None
    describe: str = "token"

    def login(self, client: hvac.Client) -> Login:
        token = (
            self.token
            if self.token is not None
            else _read_secret_file(str(self.token_file), "Vault token")
        )
        client.token = token.reveal()
        info = client.auth.token.lookup_self()["data"]
        return Login(token, float(info.get("ttl") or 0), bool(info.get("renewable")))


@dataclass(frozen=True)
class AppRoleAuth:
    role_id: Secret | None
    role_id_file: str | None
    secret_id: Secret | None
    secret_id_file: str | None
    mount: str = "approle"
    describe: str = "AppRole"

    def login(self, client: hvac.Client) -> Login:
        role_id = self.role_id or _read_secret_file(str(self.role_id_file), "AppRole role_id")
        secret_id = self.secret_id
        if secret_id is None and self.secret_id_file:
            secret_id = _read_secret_file(self.secret_id_file, "AppRole secret_id")
        response = client.auth.approle.login(
            role_id=role_id.reveal(),
            secret_id=secret_id.reveal() if secret_id is not None else None,
            use_token=False,
            mount_point=self.mount,
        )
        return _login_from(response)


@dataclass(frozen=True)
class KubernetesAuth:
    role: str
    jwt_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    mount: str = "kubernetes"
    describe: str = "Kubernetes"

    def login(self, client: hvac.Client) -> Login:
        jwt = _read_secret_file(self.jwt_file, "Kubernetes service-account token")
        response = client.auth.kubernetes.login(
            role=self.role, jwt=jwt.reveal(), use_token=False, mount_point=self.mount
        )
        return _login_from(response)


def _login_from(response: dict[str, Any]) -> Login:
    auth = response.get("auth") or {}
    token = auth.get("client_token")
    if not token:
        raise VaultAuthError("Vault login returned no client token")
    REDACTOR.register(token)
    return Login(Secret(token), float(auth.get("lease_duration") or 0), bool(auth.get("renewable")))


class TokenManager:
    """Holds the current Vault token and keeps it valid.

    `current()` is cheap: it only talks to Vault when the renewal point has passed. Renewal is
    attempted at ~2/3 of the TTL (jittered); if renewal is refused, or the TTL Vault grants is
    shorter than asked (the max TTL is near), it logs in again.
    """

    def __init__(
        self,
        method: AuthMethod,
        client_factory: Callable[[], hvac.Client],
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.method = method
        self._factory = client_factory
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._login: Login | None = None
        self._obtained_at = 0.0
        self._renew_at = 0.0
        self.renewals = 0
        self.logins = 0

    def __repr__(self) -> str:
        return (
            f"TokenManager({self.method.describe}, renewals={self.renewals}, logins={self.logins})"
        )

    def current(self) -> Secret:
        with self._lock:
            now = self._clock()
            if self._login is None:
                self._do_login(now)
            elif self._renew_at and now >= self._renew_at:
                self._renew_or_login(now)
            assert self._login is not None
            return self._login.token

    def invalidate(self) -> None:
        """Forget the token (Vault rejected it); the next `current()` logs in again."""
        with self._lock:
            self._login = None

    def ttl_remaining(self) -> float | None:
        with self._lock:
            if self._login is None or not self._login.ttl:
                return None
            return max(0.0, self._obtained_at + self._login.ttl - self._clock())

    def _schedule(self, now: float, login: Login) -> None:
        self._login = login
        self._obtained_at = now
        self._renew_at = now + login.ttl * self._rng.uniform(0.6, 0.7) if login.ttl else 0.0

    def _do_login(self, now: float) -> None:
        client = self._factory()
        try:
            login = self.method.login(client)
        except (
            hvac.exceptions.Forbidden,
            hvac.exceptions.InvalidRequest,
            hvac.exceptions.Unauthorized,
            hvac.exceptions.InvalidPath,
        ) as exc:
            reason = _first_error(exc)
            namespace = getattr(client.adapter, "namespace", None)
            if namespace and "namespace" in reason.lower() and "not found" in reason.lower():
                raise VaultAuthError(
                    f"Vault has no namespace {namespace!r} (VAULT_NAMESPACE)",
                    hint="check VAULT_NAMESPACE (`vault namespace list`), or unset it",
                ) from None
            if isinstance(self.method, TokenAuth) and isinstance(exc, hvac.exceptions.InvalidPath):
                # Vault answers a bad token on lookup-self with 403, never 404: a 404 there
                # means VAULT_ADDR names some other HTTP server (or a proxy), not Vault.
                raise VaultAuthError(
                    f"{getattr(client, 'url', '?')} does not look like Vault or OpenBao "
                    f"(auth/token/lookup-self answered 404: {_first_error(exc)})",
                    hint="check VAULT_ADDR (host, port, path) and any HTTP proxy in between",
                ) from None
            if isinstance(self.method, TokenAuth):
                raise VaultAuthError(
                    "the Vault token is invalid, expired or revoked, or its policy may not "
                    f"read auth/token/lookup-self (lookup-self: {_first_error(exc)})",
                    hint="set a valid VAULT_TOKEN / VAULT_ZPA_TOKEN_FILE, or use AppRole or "
                    "Kubernetes auth so vault-zpa can log in again by itself",
                ) from None
            raise VaultAuthError(
                f"Vault {self.method.describe} login was refused: {_first_error(exc)}",
                hint="check the credentials and the auth mount",
            ) from None
        except hvac.exceptions.VaultNotInitialized:
            # HTTP 501: an uninitialized Vault, or a server that is not Vault at all (501 Not
            # Implemented); was "internal error: VaultNotInitialized".
            raise VaultAuthError(
                f"{getattr(client, 'url', '?')} answered HTTP 501 to the {self.method.describe} "
                "login: Vault there is not initialized, or it is not Vault",
                hint="`vault operator init` a new Vault; otherwise check VAULT_ADDR",
            ) from None
        except requests.exceptions.SSLError as exc:
            raise tls_error(str(getattr(client, "url", "?")), exc) from None
        except (
            hvac.exceptions.VaultDown,
            hvac.exceptions.InternalServerError,
            hvac.exceptions.BadGateway,
            requests.exceptions.RequestException,
        ) as exc:
            if isinstance(exc, hvac.exceptions.VaultDown):
                # 503: sealed (or a standby that cannot serve); "unreachable ... (VaultDown)"
                # sent people to the network when an unseal was all it took.
                raise VaultUnavailable(
                    f"Vault at {getattr(client, 'url', '?')} is sealed or in standby during "
                    f"{self.method.describe} login ({_first_error(exc)})",
                    hint="unseal Vault (`vault operator unseal`, or check auto-unseal); "
                    "`vault status` shows its state",
                ) from None
            raise VaultUnavailable(
                f"Vault at {getattr(client, 'url', '?')} is unreachable or failing during "
                f"{self.method.describe} login ({transport_reason(exc)})",
                hint="check VAULT_ADDR and that Vault is running and unsealed",
            ) from None
        self.logins += 1
        self._schedule(now, login)
        log.info("vault login ok", extra={"auth": self.method.describe, "ttl": login.ttl})

    def _renew_or_login(self, now: float) -> None:
        assert self._login is not None
        if self._login.renewable:
            client = self._factory()
            client.token = self._login.token.reveal()
            asked = int(self._login.ttl)
            try:
                auth = client.auth.token.renew_self(increment=f"{asked}s")["auth"]
                granted = float(auth.get("lease_duration") or 0)
            except (
                hvac.exceptions.VaultError,
                requests.exceptions.RequestException,
                KeyError,
                TypeError,
            ) as exc:
                log.info("vault token renewal failed (%s); logging in again", type(exc).__name__)
            else:
                if granted >= asked * 0.5 or not isinstance(
                    self.method, AppRoleAuth | KubernetesAuth
                ):
                    self.renewals += 1
                    self._schedule(now, Login(self._login.token, granted, True))
                    return
                log.info("vault token near its max TTL (granted %ss); logging in again", granted)
        if isinstance(self.method, TokenAuth) and self.method.token is not None:
            # A static token cannot be re-obtained; keep using it until Vault says otherwise.
            self._renew_at = now + max(5.0, self._login.ttl / 3) if self._login.ttl else 0.0
            return
        self._do_login(now)


def tls_error(addr: str, exc: Exception) -> VaultTlsError:
    """Tell 'https:// to a plain-http listener' (a wrong VAULT_ADDR) from an untrusted
    certificate: both surface as SSLError, and the second's advice is useless for the first."""
    text = str(exc)
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text or "record layer" in text:
        return VaultTlsError(
            f"VAULT_ADDR is {addr}, but Vault there answers plain HTTP, not TLS",
            hint="use http:// in VAULT_ADDR (loopback dev servers), or enable TLS on Vault",
        )
    return VaultTlsError(
        f"TLS verification of Vault at {addr} failed",
        hint="set VAULT_CACERT or VAULT_CAPATH to the CA that signed Vault's certificate",
    )


def transport_reason(exc: Exception) -> str:
    """'connection refused', 'timed out', ... rather than the class name alone."""
    text = str(exc).lower()
    for needle, reason in (
        ("connection refused", "connection refused"),
        ("name or service not known", "host name not found"),
        ("nodename nor servname", "host name not found"),
        ("temporary failure in name resolution", "host name not found"),
        ("timed out", "timed out"),
        ("no route to host", "no route to host"),
        ("network is unreachable", "network unreachable"),
    ):
        if needle in text:
            return reason
    return type(exc).__name__


def _first_error(exc: hvac.exceptions.VaultError) -> str:
    errors = getattr(exc, "errors", None) or []
    text = str(errors[0]) if errors else type(exc).__name__
    # Vault wraps some errors as "1 error occurred:\n\t* permission denied\n\n": one line.
    return " ".join(text.replace("1 error occurred:", "").replace("*", " ").split())[:200]
