"""Is Vault reachable and unsealed, and is our token alive? Asked for each /readyz, answered
from a short cache so a burst of probes costs Vault two requests at most.

Both checks go around the counted, retried request path (vault/connection.py): a probe must
answer within its own timeout and must not show up as sync traffic in the metrics.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import requests

from vault_zpa.errors import VaultZpaError
from vault_zpa.vault.connection import VaultConnection


class VaultProbe:
    def __init__(
        self,
        conn: VaultConnection,
        *,
        ttl: float = 2.0,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conn, self.ttl, self.timeout, self._clock = conn, ttl, timeout, clock
        self._lock = threading.Lock()
        self._cached: tuple[float, tuple[str, str]] | None = None

    def check(self, *, fresh: bool = False) -> tuple[str, str]:
        """(vault, token): vault is ok | sealed | uninitialized | unreachable | http-<code>;
        token is ok | invalid (revoked, expired or refused at login) | unknown."""
        with self._lock:
            if not fresh and self._cached and self._clock() - self._cached[0] < self.ttl:
                return self._cached[1]
        answer = self._vault(), "unknown"
        if answer[0] == "ok":
            answer = ("ok", self._token())
        with self._lock:
            self._cached = (self._clock(), answer)
        return answer

    def _get(self, path: str, **kwargs: object) -> requests.Response:
        conn = self.conn
        return requests.get(
            f"{conn.addr}/v1/{path}",
            timeout=self.timeout,
            verify=conn.tls.verify,
            cert=conn.tls.cert,
            **kwargs,  # type: ignore[arg-type]
        )

    def _vault(self) -> str:
        try:
            response = self._get(
                "sys/health", params={"standbyok": "true", "perfstandbyok": "true"}
            )
        except requests.RequestException:
            return "unreachable"
        return {200: "ok", 503: "sealed", 501: "uninitialized"}.get(
            response.status_code, f"http-{response.status_code}"
        )

    def _token(self) -> str:
        try:
            token = self.conn.tokens.current()
        except VaultZpaError:
            return "invalid"
        headers = {"X-Vault-Token": token.reveal()}
        if self.conn.namespace:
            headers["X-Vault-Namespace"] = self.conn.namespace
        try:
            response = self._get("auth/token/lookup-self", headers=headers)
        except requests.RequestException:
            return "unknown"
        if response.status_code == 200:
            return "ok"
        if response.status_code in (401, 403):
            return "invalid"
        return "unknown"
