"""The ZPA management API over an injected `httpx.Client`: auth, rate limits, retries, paging.

Every call goes through `_call`, which keeps the client-side rate limits, attaches a cached bearer
token (re-authenticating once on a 401), retries what is safe to retry with capped exponential
backoff and jitter inside one time budget, and translates failures into `vault_zpa.errors`.

What is safe to retry: reads, PUT and DELETE (idempotent) after any transient failure; a create
(POST) only when ZPA certainly never saw it (the connection could not be opened, 429, 401, an
explicit concurrency refusal). After a read timeout, a dropped connection, a 5xx or an unreadable
200 a create raises `ZpaOutcomeUnknown`: the caller finds the key by its unique name first.

Listings are complete or an error (`_list_all`), and values ZPA sends that cannot be trusted make
one key ineligible with a reason (`parse_key`), never the whole listing.
"""

from __future__ import annotations

import logging
import math
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
    ConfigError,
    ListingInconsistent,
    ZpaApiError,
    ZpaAuthError,
    ZpaError,
    ZpaOutcomeUnknown,
    ZpaRateLimited,
    ZpaUnavailable,
)
from vault_zpa.masking import Secret
from vault_zpa.model import AssociationType, ProvisioningKey, ZpaGroup, interned
from vault_zpa.zpa.auth import Token, TokenSource
from vault_zpa.zpa.ratelimit import SlidingWindowLimiter

log = logging.getLogger(__name__)
T = TypeVar("T")

PAGE_SIZE = 500  # ZPA's maximum (zpa-api.md §1); GO always asks for it
# ZPA's own default page size: a server that answers with fewer entries per page than this
# while announcing several pages is not paging the way ZPA does.
MIN_SERVER_PAGE = 20
MAX_PAGES = 10_000  # never page further than this, whatever totalPages says
MAX_ITEMS = 100_000  # nor hold more entries than this from one listing
# Names are searched for by their leading run of these characters only: ZPA strips others from
# search values (zpa-api.md §12), so the exact name is compared on our side.
SEARCH_TOKEN = re.compile(r"[A-Za-z0-9_.-]+")
# Epoch values above this are milliseconds (10^11 s is the year 5138); ZPA sends seconds, but a
# millisecond value must not crash a run.
MS_THRESHOLD = 10**11
# Later than this is absurd (and leaves room for lease arithmetic before datetime's year 9999).
MAX_EPOCH = 221845392000  # 9000-01-01T00:00:00Z
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
        page_size: int = PAGE_SIZE,
        max_items: int = MAX_ITEMS,
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
        self._page_size = max(1, min(page_size, PAGE_SIZE))
        self._max_items = max_items
        self._token: Token | None = None
        self._token_lock = threading.Lock()
        self._customer_id = customer_id
        # ZPA_MICROTENANT_ID other than 0 (the default one) is looked up once before the first
        # call: an unknown id must be an error, not a tenant that looks empty (zpa-api.md §12).
        self._tenant_checked = microtenant_id in (None, "", "0")
        self._tenant_lock = threading.Lock()
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
        """GET ...provisioningKey?search=..., every page, then an exact compare of the name.

        Only a search value made of `[A-Za-z0-9_.-]` is sent (ZPA strips other characters,
        zpa-api.md §12): `name+EQ+<name>` when the whole name is such a token, else
        `name+STARTSWITH+<its leading token>`, else (a name starting with anything else) the
        whole listing. If ZPA refuses the STARTSWITH search (400), the whole listing is read.
        The match is exact and case-sensitive; of several keys with that very name (only a
        lost create response can make them) the oldest, lowest id, is returned."""
        url = f"{self._v1}/associationType/{association_type.value}/provisioningKey"
        what = f"search {association_type.value} provisioning keys"
        token = SEARCH_TOKEN.match(name)
        params: dict[str, str] = {}
        if token is not None and token.group() == name:
            params["search"] = f"name+EQ+{name}"
        elif token is not None:
            params["search"] = f"name+STARTSWITH+{token.group()}"
        exact: list[ProvisioningKey] = []

        def keep(raw: dict[str, Any]) -> None:
            if raw.get("name") == name:
                exact.append(parse_key(raw, association_type))

        try:
            self._list_all(url, what, keep, **params)
        except ZpaApiError as exc:
            if exc.status != 400 or "STARTSWITH" not in params.get("search", ""):
                raise
            exact.clear()
            self._list_all(url, f"list {association_type.value} provisioning keys", keep)
        return min(exact, key=lambda k: _id_order(k.id), default=None)

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
        what = f"create {association_type.value} provisioning key {name!r}"
        # Never retried once ZPA may have seen it: a second POST would make a second key.
        created = self._json(
            "POST",
            f"{self._v1}/associationType/{association_type.value}/provisioningKey",
            what,
            json_body=body,
            idempotent=False,
        )
        # The create response lacks zcomponentName/enrollmentCertName (zpa-api.md §2): re-GET.
        key_id = created.get("id")
        if not isinstance(key_id, str | int) or isinstance(key_id, bool) or str(key_id) == "":
            raise ZpaOutcomeUnknown(
                f"ZPA {what}: answered 200 without the new key's id",
                hint="look the key up by its name before creating it again",
            )
        return self.get_provisioning_key(association_type, str(key_id))

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
        """DELETE /associationType/{type}/provisioningKey/{id} (204). A key already gone counts
        as done: 404, or 400 `resource.not.found` as real ZPA answers (zpa-api.md §12)."""
        try:
            self._call(
                "DELETE",
                f"{self._v1}/associationType/{association_type.value}/provisioningKey/{key_id}",
                f"delete {association_type.value} provisioning key {key_id}",
            )
        except ZpaApiError as exc:
            if not is_not_found(exc):
                raise

    def check_microtenant(self) -> None:
        """GET /microtenants/{id}, once: ZPA_MICROTENANT_ID must name a microtenant of this
        customer. Only a definite not-found is an error; an API client that may not read
        microtenants (403, ...) is let through, its calls are scoped all the same."""
        if self._tenant_checked:
            return
        with self._tenant_lock:
            if self._tenant_checked:
                return
            tenant = self.microtenant_id or ""
            try:
                self._call(
                    "GET",
                    f"{self._v1}/microtenants/{tenant}",
                    f"get microtenant {tenant}",
                    scoped=False,
                )
            except ZpaApiError as exc:
                if is_not_found(exc):
                    raise ConfigError(
                        f"ZPA_MICROTENANT_ID={tenant[:40]!r} is not a microtenant of ZPA "
                        f"customer {self._customer_id}",
                        hint="use 0 for the default microtenant, or unset it for all of them",
                    ) from None
                log.debug("microtenant %s could not be checked: %s", tenant, exc)
            self._tenant_checked = True

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

    def list_groups(self, association_type: AssociationType) -> list[ZpaGroup]:
        """GET /appConnectorGroup or /serviceEdgeGroup, every page (checked as keys are)."""
        kind = (
            "appConnectorGroup"
            if association_type is AssociationType.CONNECTOR_GRP
            else "serviceEdgeGroup"
        )
        return self._list_all(
            f"{self._v1}/{kind}", f"list {kind}s", lambda raw: parse_group(raw, association_type)
        )

    # ---- plumbing ---------------------------------------------------------------------

    def _list_all(
        self, url: str, what: str, convert: Callable[[dict[str, Any]], T], **params: str
    ) -> list[T]:
        """Every page of one listing, or an error: never a shorter list taken as complete.

        - Every page must be a list envelope with `totalPages` and `list` (zpa-api.md §2).
          `totalCount` is checked when present; an *empty* listing must say `totalCount: 0`
          (a `{}` or a bare `{"totalPages": "1", "list": []}` is not taken as "no keys").
          The one other empty form accepted is GO's tolerated `{"totalPages": "0",
          "totalCount": "0"}` without `list`.
        - Bounds: at most MAX_PAGES pages and `max_items` entries; totalPages must be what
          totalCount and page 1's size imply; every page but the last is full, none larger
          than page 1.
        - Every page repeats page 1's totalPages and totalCount; for a listing of several
          pages, page 1 is read again after the last one, and the listing is complete only
          if it still holds the same ids with the same totals (a key deleted and another
          added while we paged leaves the total unchanged but shifts the pages).
        A single page is one answer, so it needs no second read.
        """
        size = self._page_size

        def fetch(page: int) -> tuple[int, int | None, list[dict[str, Any]]]:
            body = self._json(
                "GET",
                url,
                f"{what} (page {page})",
                params={**params, "page": str(page), "pagesize": str(size)},
            )
            return _envelope(body, what)

        pages, total, first = fetch(1)
        per_page = _check_shape(pages, total, len(first), size, self._max_items, what)
        first_ids = {str(raw.get("id")) for raw in first}
        items: list[T] = []
        seen: set[str] = set()

        def take(chunk: list[dict[str, Any]]) -> None:
            if len(items) + len(chunk) > self._max_items:
                raise ListingInconsistent(
                    f"{what}: more than {self._max_items} entries; not reading further"
                )
            for raw in chunk:
                seen.add(str(raw.get("id")))
                items.append(convert(raw))

        take(first)
        del first
        for page in range(2, pages + 1):
            p, t, chunk = fetch(page)
            if p != pages or t != total:
                raise ListingInconsistent(
                    f"{what}: the listing changed while it was read (page {page} says "
                    f"{p} pages/{t} entries, page 1 said {pages}/{total}); "
                    "not trusting it this run"
                )
            if len(chunk) > per_page or (page < pages and len(chunk) != per_page) or not chunk:
                raise ListingInconsistent(
                    f"{what}: page {page} of {pages} holds {len(chunk)} entries where page 1 "
                    f"held {per_page}; not trusting it this run"
                )
            take(chunk)
        if pages > 1:
            p, t, again = fetch(1)
            if p != pages or t != total or {str(raw.get("id")) for raw in again} != first_ids:
                raise ListingInconsistent(
                    f"{what}: page 1 changed while the listing was read (keys deleted or "
                    "added meanwhile); not trusting it this run"
                )
            del again
        if (total is not None and len(items) != total) or len(seen) != len(items):
            raise ListingInconsistent(
                f"{what}: got {len(items)} entries ({len(seen)} distinct) but ZPA reported "
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
        idempotent: bool = True,
    ) -> dict[str, Any]:
        response = self._call(
            method,
            url,
            what,
            params=params,
            json_body=json_body,
            want_json=True,
            idempotent=idempotent,
        )
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
        idempotent: bool = True,
        scoped: bool = True,
    ) -> httpx.Response:
        """One logical call with retries. With `idempotent=False` (a create) nothing is resent
        once ZPA may have received it: that ends in ZpaOutcomeUnknown instead.

        Rate limiting: a 429, and a 401 "Resource Access Blocked" (ZPA's overload answer,
        zpa-api.md §12) once the token has been refreshed, wait for `Retry-After` (else the
        backoff) and are retried within the budget; so is a 5xx, honouring its Retry-After."""
        policy = self._retry
        if scoped and self.microtenant_id:
            self.check_microtenant()
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
                _raise_if_tls(exc, url)
                if not idempotent and not _never_sent(exc):
                    raise ZpaOutcomeUnknown(
                        f"ZPA {what}: {type(exc).__name__} after the request was sent to "
                        f"{_host(url)}; ZPA may or may not have carried it out",
                        hint="look it up by its name before creating it again",
                    ) from None
                failure: Exception = ZpaUnavailable(
                    f"ZPA {what}: {type(exc).__name__} talking to {_host(url)}",
                    hint="check network access to the ZPA API",
                )
                wait = self._backoff(attempt)
            else:
                status = response.status_code
                self.stats.requests[(method, endpoint, str(status))] += 1
                if status >= 300:
                    _raise_if_oneapi_only(response)
                overloaded = status == 401 and _overloaded(response)
                if status < 300:
                    if not want_json or _json_ok(response):
                        return response
                    if not idempotent:
                        raise ZpaOutcomeUnknown(
                            f"ZPA {what}: answered HTTP {status} with malformed JSON; it was "
                            "probably carried out, but what it made is unknown",
                            hint="look it up by its name before creating it again",
                        )
                    failure = ZpaError(f"ZPA {what}: malformed JSON in the response")
                    wait = self._backoff(attempt)
                elif status == 401 and not reauthed:
                    reauthed = True
                    self.stats.reauth += 1
                    with self._token_lock:
                        self._token = None
                    attempt -= 1  # a re-login is not a retry of the call itself
                    continue
                elif status == 401 and not overloaded:
                    raise ZpaAuthError(
                        f"ZPA {what}: token rejected again right after a fresh sign-in",
                        hint="the API client may lack the ZPA role or be for another tenant",
                    )
                else:
                    zid, reason = _error_body(response)
                    limited = status == 429 or overloaded
                    error_cls = ZpaRateLimited if limited else ZpaApiError
                    failure = error_cls(
                        endpoint=f"{method} {_path(url)}",
                        status=status,
                        zpa_id=zid,
                        reason=reason,
                        attempts=attempt,
                    )
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                    if limited:
                        self.stats.rate_limited += 1
                        wait = retry_after if retry_after is not None else self._backoff(attempt)
                        wait += self._rng.uniform(0.1, 1.0)
                        # Never hold every later call back past this call's budget: a
                        # `retry-after: 99999` would otherwise block the next listing (and a
                        # daemon's shutdown) for a day, outside any deadline.
                        limiter.penalise(min(wait, max(0.0, deadline - self._clock())))
                    elif not idempotent and (status >= 500 or status == 408):
                        # The server may have done it before failing: never resend a create.
                        raise ZpaOutcomeUnknown(
                            f"ZPA {what}: HTTP {status}"
                            + (f" {zid}" if zid else "")
                            + "; ZPA may or may not have carried it out",
                            hint="look it up by its name before creating it again",
                        )
                    elif (
                        status >= 500
                        or status in (408, 409, 412)
                        or (status == 400 and zid in RETRYABLE_400_IDS)
                    ):
                        # 409/412 and the concurrency 400s are refusals: nothing was done, so
                        # even a create may be sent again. A 503 says when to come back
                        # (`Retry-After: 10s`, zpa-api.md §12): no sooner than that.
                        wait = self._backoff(attempt)
                        if retry_after is not None:
                            wait = max(wait, retry_after + self._rng.uniform(0.1, 1.0))
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
            wait = None
            try:
                response = self._http.send(self._auth.request())
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                self.stats.requests[("POST", "auth", "error")] += 1
                _raise_if_tls(exc, str(exc.request.url))
                failure: Exception = ZpaUnavailable(
                    f"ZPA sign-in ({self._auth.describe}) at {_host(str(exc.request.url))}: "
                    f"{type(exc).__name__}",
                    hint="check network access to the ZPA API and the cloud setting",
                )
            else:
                status = response.status_code
                self.stats.requests[("POST", "auth", str(status))] += 1
                if status >= 300:
                    _raise_if_oneapi_only(response)
                overloaded = status == 401 and _overloaded(response)
                if status < 500 and status != 429 and not overloaded:
                    return self._auth.parse(response, self._clock())
                failure = ZpaAuthError(
                    f"ZPA sign-in ({self._auth.describe}) answered HTTP {status}"
                    + (" (Resource Access Blocked: overloaded)" if overloaded else "")
                )
                if status == 429 or overloaded:
                    self.stats.rate_limited += 1
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                if retry_after is not None:
                    wait = max(self._backoff(attempt), retry_after + self._rng.uniform(0.1, 1.0))
            wait = wait if wait is not None else self._backoff(attempt)
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


def parse_group(raw: Mapping[str, Any], association_type: AssociationType) -> ZpaGroup:
    """One group of a listing. A group without a usable id or name makes the whole listing
    untrustworthy (ListingInconsistent): an odd listing must never make a group look gone."""
    group_id = raw.get("id")
    name = raw.get("name")
    if (
        not isinstance(group_id, str | int)
        or isinstance(group_id, bool)
        or str(group_id) == ""
        or not isinstance(name, str)
    ):
        raise ListingInconsistent(
            f"list {association_type.value} groups: an entry has no usable id or name; "
            "not trusting the listing this run"
        )
    tenant = raw.get("microtenantId")
    try:
        enabled = _bool(raw.get("enabled", True))
    except ValueError:
        raise ListingInconsistent(
            f"list {association_type.value} groups: group {str(group_id)[:40]} has an odd "
            "'enabled' value; not trusting the listing this run"
        ) from None
    return ZpaGroup(
        id=interned(str(group_id)),
        name=interned(name),
        association_type=association_type,
        enabled=enabled,
        microtenant_id=str(tenant) if isinstance(tenant, str | int) and str(tenant) else None,
    )


def parse_key(raw: Mapping[str, Any], association_type: AssociationType) -> ProvisioningKey:
    """Wire object -> ProvisioningKey; numbers arrive as strings.

    Raises ZpaError only when the object cannot be placed at all (not an object, no `id`, no
    `zcomponentId`): dropping such a key could make its group look deleted, so its listing
    fails instead. Any other value that cannot be trusted makes this one key ineligible, with
    the reason in `problem`: `maxUsage`/`usageCount`/`creationTime` missing, null or not a
    number; a timestamp negative or past the year 9000; `provisioningKey` missing or empty
    (ZPA hides the value of keys created `exportable: false`, zpa-api.md §12); `name` or
    `enabled` unreadable. Timestamps above 10^11 are read as milliseconds (ZPA sends seconds).
    """
    if not isinstance(raw, Mapping):
        raise ZpaError(
            f"ZPA returned a {association_type.value} provisioning key that is not an object"
        )
    try:
        key_id = _text(raw, "id")
        group_id = _text(raw, "zcomponentId")
    except (KeyError, ValueError) as exc:
        raise ZpaError(
            f"ZPA returned a malformed {association_type.value} provisioning key "
            f"(id {str(raw.get('id'))[:40]!r}): {_describe(exc)}"
        ) from None
    problems: list[str] = []

    def read(parse: Callable[[], T], fallback: T) -> T:
        try:
            return parse()
        except (KeyError, ValueError, TypeError) as exc:
            problems.append(_describe(exc))
            return fallback

    value = raw.get("provisioningKey")
    if not isinstance(value, str) or not value.strip():
        hidden = raw.get("exportable") is False
        problems.append(
            "its value is hidden (created with exportable: false)"
            if hidden
            else "no provisioningKey value"
        )
        value = ""
    name = read(lambda: _text(raw, "name"), "")
    max_usage = read(lambda: _int(raw, "maxUsage"), 0)
    usage_count = read(lambda: _int(raw, "usageCount"), 0)
    enabled = read(lambda: _bool(raw.get("enabled", True)), False)
    created = read(lambda: _epoch(raw, "creationTime"), 0)
    modified = read(lambda: _epoch(raw, "modifiedTime", default=created), created)
    microtenant = raw.get("microtenantId")
    return ProvisioningKey(
        id=key_id,
        name=name,
        association_type=association_type,
        key=Secret(value),
        group_id=group_id,
        group_name=interned(str(raw.get("zcomponentName") or "")),
        enrollment_cert_id=interned(str(raw.get("enrollmentCertId") or "")),
        enrollment_cert_name=interned(str(raw.get("enrollmentCertName") or "")),
        max_usage=max_usage,
        usage_count=usage_count,
        enabled=enabled,
        creation_time=created,
        modified_time=modified,
        microtenant_id=str(microtenant) if microtenant not in (None, "", "0", 0) else None,
        problem="; ".join(problems) if problems else None,
    )


def _as_is(raw: dict[str, Any]) -> dict[str, Any]:
    return raw


def parse_retry_after(value: str | None) -> float | None:
    """`retry-after: 13s` (ZPA) or `13` (RFC 9110 seconds); None if absent or unreadable."""
    if not value:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*s?\s*", value)
    seconds = float(match.group(1)) if match else None
    return seconds if seconds is not None and math.isfinite(seconds) else None  # not '9'*400


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
    if name not in raw and default is None:
        raise ValueError(f"{name} is missing")
    if value is None or isinstance(value, bool | float | list | dict):
        raise ValueError(f"{name} is {_shown(value)}, not a number")
    text = str(value).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ValueError(f"{name} is {_shown(value)}, not a whole number ≥ 0")
    return int(text)


def _epoch(raw: Mapping[str, Any], name: str, default: int | None = None) -> int:
    """Epoch seconds; a value above 10^11 is taken as milliseconds."""
    value = raw.get(name)
    if value is None and default is not None and name not in raw:
        return default
    text = str(value).strip() if isinstance(value, str | int) else ""
    if text.startswith("-") and text[1:].isdigit():
        raise ValueError(f"{name} {text[:24]} is negative")
    number = _int(raw, name)
    if number > MS_THRESHOLD:
        number //= 1000
    if number > MAX_EPOCH:
        raise ValueError(f"{name} {str(value)[:24]} is past the year 9000")
    return number


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    return repr(value)[:40]


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"field 'enabled' must be a boolean, got {str(value)[:20]!r}")


def _envelope(body: Mapping[str, Any], what: str) -> tuple[int, int | None, list[dict[str, Any]]]:
    """(totalPages, totalCount or None, list) of one list envelope (zpa-api.md §2)."""
    if "totalPages" not in body:
        fields = ", ".join(repr(str(k)[:20]) for k in sorted(body, key=str)[:6]) or "none"
        raise ListingInconsistent(
            f"ZPA {what}: the answer is not a list envelope (no totalPages; fields: {fields}); "
            "not taken as an empty listing"
        )
    pages = _count(body["totalPages"], "totalPages", what)
    count = body.get("totalCount")
    total = None if count is None else _count(count, "totalCount", what)
    if "list" not in body:
        if pages == 0 and total == 0:
            return 0, 0, []  # GO's tolerated empty form: emptiness stated twice
        raise ListingInconsistent(
            f"ZPA {what}: the list envelope has no 'list' (totalPages {pages}, totalCount "
            f"{total}); not taken as an empty listing"
        )
    items = body["list"]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ZpaError(f"ZPA {what}: 'list' is not a list of objects")
    return pages, total, items


def _count(value: Any, name: str, what: str) -> int:
    text = "" if isinstance(value, bool) or not isinstance(value, str | int) else str(value).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise ListingInconsistent(
            f"ZPA {what}: {name} {str(value)[:24]!r} in the list envelope is not a count"
        )
    return int(text)


def _check_shape(
    pages: int, total: int | None, first: int, size: int, max_items: int, what: str
) -> int:
    """Page 1's envelope against the bounds; returns the entries per page ZPA is using."""

    def bad(reason: str) -> ListingInconsistent:
        return ListingInconsistent(f"ZPA {what}: {reason}; not trusting it this run")

    if pages > MAX_PAGES:
        raise bad(f"totalPages {pages} is over the limit of {MAX_PAGES}")
    if total is not None and total > max_items:
        raise bad(f"totalCount {total} is over the limit of {max_items}")
    if first > size:
        raise bad(f"page 1 holds {first} entries, more than the {size} asked for")
    if pages <= 1:
        if first == 0 and total != 0:
            raise bad(f"an empty answer that does not say totalCount 0 (totalPages {pages})")
        if pages == 0 and first:
            raise bad(f"totalPages 0 with {first} entries on page 1")
        return max(first, 1)
    if first < min(size, MIN_SERVER_PAGE):
        raise bad(f"{pages} pages announced, but page 1 holds only {first} entries")
    implied = -(-total // first) if total is not None else -(-max_items // first)
    if (total is not None and pages != implied) or pages > implied:
        raise bad(f"totalPages {pages} does not fit totalCount {total} at {first} entries per page")
    return first


def is_not_found(exc: ZpaApiError) -> bool:
    """ZPA's missing object: 404, or 400 with id `resource.not.found` as real ZPA answers
    (zpa-api.md §12; GO and crossplane treat both as not-found)."""
    return exc.status == 404 or (exc.status == 400 and exc.zpa_id == "resource.not.found")


def _overloaded(response: httpx.Response) -> bool:
    """A 401 that says "Resource Access Blocked": ZPA's answer under load instead of a 429
    (GO errorx, zpa-api.md §12), not a rejected token."""
    return "resource access blocked" in response.text[:2000].lower()


def _raise_if_oneapi_only(response: httpx.Response) -> None:
    """A tenant migrated to ZIdentity answers legacy calls with non-JSON "... only through
    Zscaler OneAPI" (GO maps it to ONLY_ONEAPI_SUPPORTED): configuration, not an outage."""
    if "json" in response.headers.get("content-type", "").lower():
        return
    if "only through zscaler oneapi" in response.text[:2000].lower():
        raise ConfigError(
            f"ZPA at {response.request.url.host} accepts this tenant's API calls only through "
            "Zscaler OneAPI (the tenant was migrated to ZIdentity)",
            hint="use OneAPI credentials: ZSCALER_CLIENT_ID, ZSCALER_CLIENT_SECRET (or "
            "ZSCALER_PRIVATE_KEY) and ZSCALER_VANITY_DOMAIN, instead of ZPA_CLIENT_ID",
        )


def _raise_if_tls(exc: Exception, url: str) -> None:
    """A certificate ZPA's address does not verify against, or https to a plain-http port:
    no retry helps, the configuration must change."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        found = re.search(r"certificate verify failed: ([^(\]]+)", text)
        detail = found.group(1).strip()[:120] if found else "verification failed"
        raise ConfigError(
            f"ZPA at {_host(url)}: TLS certificate not trusted ({detail})",
            hint="set SSL_CERT_FILE to a CA bundle that holds its CA (the simulator prints one)",
        )
    if "WRONG_VERSION_NUMBER" in text or "RECORD_LAYER_FAILURE" in text:
        raise ConfigError(
            f"ZPA at {_host(url)}: the server does not speak TLS on that port",
            hint="check ZPA_BASE_URL: https:// to a plain-http listener?",
        )


def _never_sent(exc: Exception) -> bool:
    """Transport failures that prove the request never left: no connection was made."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _id_order(key_id: str) -> tuple[int, int, str]:
    return (1, int(key_id), "") if key_id.isdigit() else (0, 0, key_id)


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
