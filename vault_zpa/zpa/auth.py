"""ZPA credentials -> bearer tokens: legacy `/signin` and OneAPI (ZIdentity) client credentials.

Each source only knows how to ask for a token; `ZpaClient` caches it, retries transient failures
and re-authenticates once on a 401.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass
from typing import Protocol

import httpx

from vault_zpa.errors import ConfigError, ZpaAuthError
from vault_zpa.masking import Secret

ONEAPI_AUDIENCE = "https://api.zscaler.com"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_LIFETIME = 3600


@dataclass(frozen=True, slots=True)
class Token:
    value: Secret
    expires_at: float

    def fresh(self, now: float, margin: float) -> bool:
        return now < self.expires_at - margin


class TokenSource(Protocol):
    """Knows one way to obtain a bearer token; `describe` is safe to log."""

    @property
    def describe(self) -> str: ...

    def request(self) -> httpx.Request: ...

    def parse(self, response: httpx.Response, now: float) -> Token: ...


@dataclass(frozen=True)
class LegacyAuth:
    """Legacy API key: POST {base}/signin, form client_id + client_secret (zpa-api.md §4a)."""

    signin_url: str
    client_id: str
    client_secret: Secret

    @property
    def describe(self) -> str:
        return f"legacy API key {self.client_id!r}"

    def request(self) -> httpx.Request:
        return httpx.Request(
            "POST",
            self.signin_url,
            data={"client_id": self.client_id, "client_secret": self.client_secret.reveal()},
            headers={"Accept": "application/json"},
        )

    def parse(self, response: httpx.Response, now: float) -> Token:
        return _parse_token(response, now, what="ZPA /signin")


@dataclass(frozen=True)
class OneApiAuth:
    """OneAPI client credentials: a client secret or an RS256 client assertion (zpa-api.md §4b)."""

    token_url: str
    client_id: str
    client_secret: Secret | None = None
    private_key: Secret | None = None  # PEM

    @property
    def describe(self) -> str:
        how = "private key" if self.private_key is not None else "client secret"
        return f"OneAPI client {self.client_id!r} ({how})"

    def request(self) -> httpx.Request:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "audience": ONEAPI_AUDIENCE,
        }
        if self.private_key is not None:
            form["client_assertion_type"] = ASSERTION_TYPE
            form["client_assertion"] = self.assertion(time.time())
        elif self.client_secret is not None:
            form["client_secret"] = self.client_secret.reveal()
        return httpx.Request(
            "POST", self.token_url, data=form, headers={"Accept": "application/json"}
        )

    def assertion(self, now: float) -> str:
        """The signed client assertion: iss = sub = client_id, aud = the Zscaler API, 600 s."""
        assert self.private_key is not None
        import jwt  # only client-assertion users pay for PyJWT + cryptography (~9 MB RSS)

        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": ONEAPI_AUDIENCE,
            "iat": int(now),
            "exp": int(now) + 600,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self.private_key.reveal(), algorithm="RS256")

    def parse(self, response: httpx.Response, now: float) -> Token:
        return _parse_token(response, now, what="OneAPI token endpoint")


def load_private_key(value: str) -> Secret:
    """Accept a PEM (PKCS#1 or PKCS#8, unencrypted) or a path to one; RSA >= 2048 bits only."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    text = value
    if not value.lstrip().startswith("-----BEGIN"):
        try:
            with open(value, encoding="ascii") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError):
            raise ConfigError(
                "ZSCALER_PRIVATE_KEY is neither a PEM key nor a readable PEM file"
            ) from None
    try:
        key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError):
        raise ConfigError(
            "ZSCALER_PRIVATE_KEY could not be loaded",
            hint="use an unencrypted PKCS#1 or PKCS#8 RSA key in PEM form",
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
        raise ConfigError("ZSCALER_PRIVATE_KEY must be an RSA key of at least 2048 bits")
    return Secret(text)


def _parse_token(response: httpx.Response, now: float, *, what: str) -> Token:
    if response.status_code in (400, 401, 403):
        raise ZpaAuthError(
            f"{what} refused the credentials (HTTP {response.status_code})",
            hint="check the client id and secret/key and the cloud they belong to",
        )
    if response.status_code != 200:
        raise ZpaAuthError(f"{what} answered HTTP {response.status_code}")
    try:
        body = response.json()
        token = body["access_token"]
        if not isinstance(token, str) or not token:
            raise TypeError
    except (ValueError, KeyError, TypeError):
        if b"only through Zscaler OneAPI" in response.content:
            raise ZpaAuthError(
                "this tenant accepts API calls only through Zscaler OneAPI",
                hint="use ZSCALER_CLIENT_ID/ZSCALER_CLIENT_SECRET and ZSCALER_VANITY_DOMAIN",
            ) from None
        raise ZpaAuthError(f"{what} returned no usable access_token") from None
    return Token(Secret(token), now + _lifetime(token, body.get("expires_in"), now))


def _lifetime(token: str, expires_in: object, now: float) -> float:
    """Prefer the JWT's own exp claim (GO/PY do), then expires_in (a string on legacy)."""
    exp = jwt_claims(token).get("exp")
    if isinstance(exp, int | float) and exp > now:
        return float(exp) - now
    try:
        seconds = float(str(expires_in))
        if seconds > 0:
            return seconds
    except ValueError:
        pass
    return float(DEFAULT_LIFETIME)


def jwt_claims(token: str) -> dict[str, object]:
    """Decode a JWT's claims without verifying (we only read exp); {} if it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}
