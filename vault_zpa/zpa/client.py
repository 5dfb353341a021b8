"""The ZPA management API over an injected `httpx.Client`: auth, rate limits, retries, paging.

Every call goes through `_call`, which keeps the client-side rate limits, attaches a cached bearer
token (re-authenticating once on a 401), retries what is safe to retry with capped exponential
backoff and jitter inside one time budget, and translates failures into `vault_zpa.errors`.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from vault_zpa.errors import (
    ListingInconsistent,
    ZpaApiError,
    ZpaAuthError,
    ZpaError,
    ZpaRateLimited,
    ZpaUnavailable,
)
from vault_zpa.masking import Secret
from vault_zpa.model import AssociationType, ProvisioningKey, interned
from vault_zpa.zpa.auth import Token, TokenSource
from vault_zpa.zpa.ratelimit import SlidingWindowLimiter

log = logging.getLogger(__name__)
T = TypeVar("T")

PAGE_SIZE = 500
# 400s that GO's client treats as "someone else is editing; try again".
RETRYABLE_400_IDS = frozenset(
    {"db.simultaneous.request", "api.concurrent.access.error", "bad.request.concurrent"}
)
TOKEN_MARGIN = 60.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    budget: float = 120.0  # seconds for one logical call, all attempts and waits included
    base: float = 0.5
    cap: float = 10.0
    max_attempts: int = 10
    timeout: float = 30.0  # per attempt


@dataclass
class ZpaStats:
    """Request counters, by endpoint class and status; read by the daemon's /metrics."""

    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    retries: int = 0
    rate_limited: int = 0
    reauth: int = 0
    limiter_wait: float = 0.0

    def total(self) -> int:
        return sum(self.requests.values())


class ZpaClient:
    """One ZPA tenant (customer id, optional microtenant) reached through `http`."""

    def __init__(
        self,
        *,
        http: httpx.Client,
        auth: TokenSource,
        base_url: str,
        customer_id: str,
        oneapi: bool,
        microtenant_id: str | None = None,
        get_limiter: SlidingWindowLimiter | None = None,
        write_limiter: SlidingWindowLimiter | None = None,
        retry: RetryPolicy = RetryPolicy(),
        partner_id: str | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._http = http
        self._auth = auth
        root = "/zpa/mgmtconfig" if oneapi else "/mgmtconfig"
        self._v1 = f"{base_url}{root}/v1/admin/customers/{customer_id}"
        self._v2 = f"{base_url}{root}/v2/admin/customers/{customer_id}"
        self.microtenant_id = microtenant_id
        self._get_limiter = get_limiter or SlidingWindowLimiter(20, 10.0)
        self._write_limiter = write_limiter or SlidingWindowLimiter(10, 10.0)
        self._retry = retry
        self._partner_id = partner_id
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._token: Token | None = None
        self._token_lock = threading.Lock()
        self.stats = ZpaStats()

    def __repr__(self) -> str:
        return f"ZpaClient({self._auth.describe}, {self._v1!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ZpaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- provisioning keys -------------------------------------------------------------

    def list_provisioning_keys(self, association_type: AssociationType) -> list[ProvisioningKey]:
        """GET /associationType/{type}/provisioningKey, every page; raises rather than shrink."""
        # Each page is parsed as it arrives, so 20,000 raw JSON objects never sit in memory.
        return self._list_all(
            f"{self._v1}/associationType/{association_type.value}/provisioningKey",
            f"list {association_type.value} provisioning keys",
            lambda raw: parse_key(raw, association_type),
        )

    def get_provisioning_key(
        self, association_type: AssociationType, key_id: str
    ) -> ProvisioningKey:
        """GET /associationType/{type}/provisioningKey/{id}."""
        body = self._json(
            "GET",
            f"{self._v1}/associationType/{association_type.value}/provisioningKey/{key_id}",
            f"get {association_type.value} provisioning key {key_id}",
        )
        return parse_key(body, association_type)

    def find_provisioning_key(
        self, association_type: AssociationType, name: str
    ) -> ProvisioningKey | None:
        """GET ...provisioningKey?search=name+EQ+<name>, then an exact compare (GO does too)."""
        raw = self._list_all(
            f"{self._v1}/associationType/{association_type.value}/provisioningKey",
            f"search {association_type.value} provisioning keys",
            lambda item: parse_key(item, association_type),
            search=f"name+EQ+{name}",
        )
        for key in raw:
            if key.name == name:
                return key
        return None

    def create_provisioning_key(
        self,
        association_type: AssociationType,
        *,
        name: str,
        group_id: str,
        enrollment_cert_id: str,
        max_usage: int,
        enabled: bool = True,
    ) -> ProvisioningKey:
        """POST /associationType/{type}/provisioningKey (200 with the object)."""
        body: dict[str, Any] = {
            "name": name,
            "maxUsage": str(max_usage),
            "enrollmentCertId": enrollment_cert_id,
            "zcomponentId": group_id,
            "enabled": enabled,
        }
        if self.microtenant_id:
            body["microtenantId"] = self.microtenant_id
        created = self._json(
            "POST",
            f"{self._v1}/associationType/{association_type.value}/provisioningKey",
            f"create {association_type.value} provisioning key",
            json_body=body,
        )
        # The create response lacks zcomponentName/enrollmentCertName (zpa-api.md §2): re-GET.
        key_id = str(created.get("id", ""))
        if not key_id:
            raise ZpaError("ZPA created a provisioning key but returned no id")
        return self.get_provisioning_key(association_type, key_id)

    def update_provisioning_key(
        self, association_type: AssociationType, key_id: str, changes: Mapping[str, Any]
    ) -> None:
        """GET, merge, PUT the whole object (204): PUT may be a full replace (zpa-api.md §2)."""
        url = f"{self._v1}/associationType/{association_type.value}/provisioningKey/{key_id}"
        current = self._json("GET", url, f"get {association_type.value} provisioning key {key_id}")
        current.update(changes)
        self._call(
            "PUT",
            url,
            f"update {association_type.value} provisioning key {key_id}",
            json_body=current,
        )

    def delete_provisioning_key(self, association_type: AssociationType, key_id: str) -> None:
        """DELETE /associationType/{type}/provisioningKey/{id} (204; a 404 counts as done)."""
        try:
            self._call(
                "DELETE",
                f"{self._v1}/associationType/{association_type.value}/provisioningKey/{key_id}",
                f"delete {association_type.value} provisioning key {key_id}",
            )
        except ZpaApiError as exc:
            if exc.status != 404:
                raise

    # ---- lookups ----------------------------------------------------------------------

    def find_enrollment_cert(self, name: str) -> dict[str, Any] | None:
        """GET v2 /enrollmentCert?search=name+EQ+<name>, exact compare."""
        for cert in self._list_all(
            f"{self._v2}/enrollmentCert",
            "search enrollment certificates",
            _as_is,
            search=f"name+EQ+{name}",
        ):
            if cert.get("name") == name:
                return cert
        return None

    def list_groups(self, association_type: AssociationType) -> list[dict[str, Any]]:
        """GET /appConnectorGroup or /serviceEdgeGroup, every page."""
        kind = (
            "appConnectorGroup"
            if association_type is AssociationType.CONNECTOR_GRP
            else "serviceEdgeGroup"
        )
        return self._list_all(f"{self._v1}/{kind}", f"list {kind}s", _as_is)

    # ---- plumbing ---------------------------------------------------------------------

    def _list_all(
        self, url: str, what: str, convert: Callable[[dict[str, Any]], T], **params: str
    ) -> list[T]:
        first = self._json(
            "GET",
            url,
            f"{what} (page 1)",
            params={**params, "page": "1", "pagesize": str(PAGE_SIZE)},
        )
        pages, total = _envelope(first, what)
        items: list[T] = []
        ids: list[str] = []

        def take(body: Mapping[str, Any]) -> None:
            for raw in _items(body, what):
                ids.append(str(raw.get("id")))
                items.append(convert(raw))

        take(first)
        del first
        for page in range(2, pages + 1):
            body = self._json(
                "GET",
                url,
                f"{what} (page {page})",
                params={**params, "page": str(page), "pagesize": str(PAGE_SIZE)},
            )
            p, t = _envelope(body, what)
            if p != pages or t != total:
                raise ListingInconsistent(
                    f"{what}: the listing changed while it was read (page {page} says "
                    f"{p} pages/{t} keys, page 1 said {pages}/{total}); not trusting it this run"
                )
            take(body)
        if (total is not None and len(items) != total) or len(set(ids)) != len(ids):
            raise ListingInconsistent(
                f"{what}: got {len(items)} entries ({len(set(ids))} distinct) but ZPA reported "
                f"{total}; not trusting it this run"
            )
        return items

    def _json(
        self,
        method: str,
        url: str,
        what: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
    ) -> dict[str, Any]:
        response = self._call(method, url, what, params=params, json_body=json_body, want_json=True)
        body = response.json()
        if not isinstance(body, dict):
            raise ZpaError(f"ZPA {what}: expected a JSON object, got {type(body).__name__}")
        return body

    def _call(
        self,
        method: str,
        url: str,
        what: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        want_json: bool = False,
    ) -> httpx.Response:
        policy = self._retry
        if self.microtenant_id:
            params = {**(params or {}), "microtenantId": self.microtenant_id}
        deadline = self._clock() + policy.budget
        limiter = self._get_limiter if method == "GET" else self._write_limiter
        reauthed = False
        attempt = 0
        endpoint = _endpoint_class(url)
        while True:
            attempt += 1
            self.stats.limiter_wait += limiter.acquire()
            try:
                token = self._bearer(deadline)
                request = self._http.build_request(
                    method,
                    url,
                    params=params,
                    json=json_body,
                    headers=self._headers(token),
                    timeout=policy.timeout,
                )
                response = self._http.send(request)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                self.stats.requests[(method, endpoint, "error")] += 1
                failure: Exception = ZpaUnavailable(
                    f"ZPA {what}: {type(exc).__name__} talking to {_host(url)}",
                    hint="check network access to the ZPA API",
                )
                wait = self._backoff(attempt)
            else:
                status = response.status_code
                self.stats.requests[(method, endpoint, str(status))] += 1
                if status < 300:
                    if not want_json or _json_ok(response):
                        return response
                    failure = ZpaError(f"ZPA {what}: malformed JSON in the response")
                    wait = self._backoff(attempt)
                elif status == 401 and not reauthed:
                    reauthed = True
                    self.stats.reauth += 1
                    with self._token_lock:
                        self._token = None
                    attempt -= 1  # a re-login is not a retry of the call itself
                    continue
                elif status == 401:
                    raise ZpaAuthError(
                        f"ZPA {what}: token rejected again right after a fresh sign-in",
                        hint="the API client may lack the ZPA role or be for another tenant",
                    )
                else:
                    zid, reason = _error_body(response)
                    error_cls = ZpaRateLimited if status == 429 else ZpaApiError
                    failure = error_cls(
                        endpoint=f"{method} {_path(url)}",
                        status=status,
                        zpa_id=zid,
                        reason=reason,
                        attempts=attempt,
                    )
                    if status == 429:
                        self.stats.rate_limited += 1
                        retry_after = parse_retry_after(response.headers.get("retry-after"))
                        wait = retry_after if retry_after is not None else self._backoff(attempt)
                        wait += self._rng.uniform(0.1, 1.0)
                        limiter.penalise(wait)
                    elif (
                        status >= 500
                        or status in (408, 409, 412)
                        or (status == 400 and zid in RETRYABLE_400_IDS)
                    ):
                        wait = self._backoff(attempt)
                    else:
                        raise failure
            if attempt >= policy.max_attempts or self._clock() + wait > deadline:
                if isinstance(failure, ZpaApiError):
                    raise type(failure)(
                        endpoint=failure.endpoint,
                        status=failure.status,
                        zpa_id=failure.zpa_id,
                        reason=failure.reason,
                        attempts=attempt,
                    )
                raise failure
            self.stats.retries += 1
            log.debug("retrying ZPA %s in %.1fs after: %s", what, wait, failure)
            self._sleep(wait)

    def _bearer(self, deadline: float) -> Secret:
        with self._token_lock:
            now = self._clock()
            if self._token is None or not self._token.fresh(now, TOKEN_MARGIN):
                self._token = self._login(deadline)
            return self._token.value

    def _login(self, deadline: float) -> Token:
        attempt = 0
        while True:
            attempt += 1
            self.stats.limiter_wait += self._write_limiter.acquire()
            try:
                response = self._http.send(self._auth.request())
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                self.stats.requests[("POST", "auth", "error")] += 1
                failure: Exception = ZpaUnavailable(
                    f"ZPA sign-in ({self._auth.describe}) at {_host(str(exc.request.url))}: "
                    f"{type(exc).__name__}",
                    hint="check network access to the ZPA API and the cloud setting",
                )
            else:
                self.stats.requests[("POST", "auth", str(response.status_code))] += 1
                if response.status_code < 500 and response.status_code != 429:
                    return self._auth.parse(response, self._clock())
                failure = ZpaAuthError(
                    f"ZPA sign-in ({self._auth.describe}) answered HTTP {response.status_code}"
                )
            wait = self._backoff(attempt)
            if attempt >= self._retry.max_attempts or self._clock() + wait > deadline:
                raise failure
            self.stats.retries += 1
            self._sleep(wait)

    def _headers(self, token: Secret) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {token.reveal()}", "Accept": "application/json"}
        if self._partner_id:
            headers["x-partner-id"] = self._partner_id
        return headers

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with full jitter over the upper half."""
        ceiling = min(self._retry.cap, self._retry.base * 2 ** (attempt - 1))
        return self._rng.uniform(ceiling / 2, ceiling)


def parse_key(raw: Mapping[str, Any], association_type: AssociationType) -> ProvisioningKey:
    """Wire object -> ProvisioningKey; numbers arrive as strings. Raises ZpaError on bad shape."""
    try:
        key = raw["provisioningKey"]
        key_id = _text(raw, "id")
        if not isinstance(key, str) or not key.strip():
            raise ValueError("provisioningKey is empty")
        microtenant = raw.get("microtenantId")
        return ProvisioningKey(
            id=key_id,
            name=_text(raw, "name"),
            association_type=association_type,
            key=Secret(key),
            group_id=_text(raw, "zcomponentId"),
            group_name=interned(str(raw.get("zcomponentName") or "")),
            enrollment_cert_id=interned(str(raw.get("enrollmentCertId") or "")),
            enrollment_cert_name=interned(str(raw.get("enrollmentCertName") or "")),
            max_usage=_int(raw, "maxUsage"),
            usage_count=_int(raw, "usageCount", default=0),
            enabled=_bool(raw.get("enabled", True)),
            creation_time=_int(raw, "creationTime", default=0),
            modified_time=_int(raw, "modifiedTime", default=0),
            microtenant_id=str(microtenant) if microtenant not in (None, "", "0") else None,
        )
    except (KeyError, ValueError, TypeError) as exc:
        ident = raw.get("id") if isinstance(raw, Mapping) else None
        raise ZpaError(
            f"ZPA returned a malformed {association_type.value} provisioning key "
            f"(id {ident!r}): {_describe(exc)}"
        ) from None


def _as_is(raw: dict[str, Any]) -> dict[str, Any]:
    return raw


def parse_retry_after(value: str | None) -> float | None:
    """`retry-after: 13s` (ZPA) or `13` (RFC 9110 seconds); None if absent or unreadable."""
    if not value:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*s?\s*", value)
    return float(match.group(1)) if match else None


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    return str(exc)


def _text(raw: Mapping[str, Any], name: str) -> str:
    value = raw[name]
    if not isinstance(value, str | int) or isinstance(value, bool) or str(value) == "":
        raise ValueError(f"field {name!r} must be a non-empty string")
    return interned(str(value))


def _int(raw: Mapping[str, Any], name: str, default: int | None = None) -> int:
    value = raw.get(name, default)
    if value is None or isinstance(value, bool):
        raise ValueError(f"field {name!r} must be a number")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"field {name!r} must be a number, got {str(value)[:40]!r}") from None
    if number < 0:
        raise ValueError(f"field {name!r} must not be negative")
    return number


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"field 'enabled' must be a boolean, got {str(value)[:20]!r}")


def _envelope(body: Mapping[str, Any], what: str) -> tuple[int, int | None]:
    try:
        pages = int(str(body.get("totalPages", "0")))
        total = body.get("totalCount")
        return max(pages, 1), (int(str(total)) if total is not None else None)
    except ValueError:
        raise ZpaError(
            f"ZPA {what}: unreadable totalPages/totalCount in the list envelope"
        ) from None


def _items(body: Mapping[str, Any], what: str) -> list[dict[str, Any]]:
    items = body.get("list", [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ZpaError(f"ZPA {what}: 'list' is not a list of objects")
    return items


def _error_body(response: httpx.Response) -> tuple[str | None, str | None]:
    try:
        body = response.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    zid = body.get("id") or body.get("code")
    reason = body.get("reason") or body.get("message") or body.get("detail")
    return (str(zid)[:200] if zid else None), (str(reason)[:300] if reason else None)


def _json_ok(response: httpx.Response) -> bool:
    try:
        response.json()
    except ValueError:
        return False
    return True


def _endpoint_class(url: str) -> str:
    """A low-cardinality name for metrics: no ids, no customer, no search values."""
    path = _path(url)
    for marker in ("provisioningKey", "enrollmentCert", "appConnectorGroup", "serviceEdgeGroup"):
        if marker in path:
            return marker
    return "other"


def _path(url: str) -> str:
    return httpx.URL(url).path


def _host(url: str) -> str:
    return httpx.URL(url).host
