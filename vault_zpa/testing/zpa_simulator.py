"""A ZPA management API simulator: a real HTTP server on loopback that follows zpa-api.md.

What it implements (docs/simulator.md has the full list):
- auth: legacy `POST /signin` (form client_id/client_secret) and OneAPI `POST /oauth2/v1/token`
  (client secret or RS256 client assertion); JWT-shaped bearer tokens with `exp`; 401 on a
  missing, expired or wrong-mode token.
- both path prefixes: legacy `/mgmtconfig/...` and OneAPI `/zpa/mgmtconfig/...`.
- provisioning keys per association type: list (page/pagesize/search/microtenantId, envelope with
  string counts), get, create (200 + object), update (PUT, 204), delete (204).
- App Connector Groups and Service Edge Groups: list/get/create/delete; enrollment certificates:
  v2 list, v1 get.
- ZPA error bodies `{"id", "reason"}`; documented rate limits (20 GET / 10 s, 10 writes / 10 s,
  429 `invalid.toomanyrequests` with `retry-after: Ns`), switchable and scalable.
- fault injection and test controls under `/_sim/` (not part of ZPA): see `Faults` and `_admin`.
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt

ASSOCIATION_TYPES = ("CONNECTOR_GRP", "SERVICE_EDGE_GRP")
OTHER_TYPES = ("NP_ASSISTANT_GRP", "SITE_CONTROLLER_GRP", "EXPORTER_GRP")
GROUP_KINDS = {"appConnectorGroup": "CONNECTOR_GRP", "serviceEdgeGroup": "SERVICE_EDGE_GRP"}
ONEAPI_AUDIENCE = "https://api.zscaler.com"
BASE_EPOCH = 1767225600  # 2026-01-01T00:00:00Z: seeded objects are created after this
KEY_HOST = "api.private.zscaler.com"


@dataclass
class Faults:
    """Fault injection; every field can be changed at runtime with POST /_sim/faults."""

    latency: float = 0.0  # seconds added to every API response
    error_rate: float = 0.0  # share of API requests answered with `error_status`
    error_status: int = 503
    fail_next: int = 0  # the next N API requests answer `error_status`
    storm_429: int = 0  # the next N API requests answer 429
    retry_after: int = 1  # seconds announced in retry-after during a storm
    malformed_rate: float = 0.0  # share of 200s whose JSON body is cut in half
    malformed_next: int = 0
    drop_rate: float = 0.0  # share of requests whose connection is closed with no answer
    drop_next: int = 0
    hang_next: int = 0  # the next N API requests wait `hang` seconds before answering
    hang: float = 5.0
    change_between_pages: bool = False  # a key is added after page 1 of a listing is served
    fail_page: int = 0  # listings answer `error_status` for this page number
    only_association_type: str = ""  # restrict the faults above to this type's key endpoints
    only_method: str = ""  # restrict the faults above to this HTTP method (e.g. POST)
    unauthorized_next: int = 0  # the next N API requests answer 401 (as if the token expired)
    # Aimed at provisioning keys (`only_association_type` narrows them to one type):
    drop_after_create_next: int = 0  # the next N creates happen, then the connection closes
    swap_page1_next: int = 0  # after page 1 of the next N multi-page listings: one of its keys
    #                           is deleted and one added to that key's group (same total)
    empty_listing_next: int = 0  # the next N listings answer 200 with the body `{}`
    listing_omit: str = ""  # comma-separated envelope fields left out of listings
    listing_total_pages: str = ""  # listings announce this totalPages (e.g. "1000000")
    search_strips_unsafe: bool = False  # search values lose characters outside [A-Za-z0-9 _/.-]


@dataclass
class _Window:
    started: float = 0.0
    count: int = 0


@dataclass
class SimulatorStats:
    requests: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0


class ZpaSimulator:
    """The simulator's state and server. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        connector_groups: int = 3,
        service_edge_groups: int = 2,
        keys_per_group: int = 1,
        customer_id: str = "",
        client_id: str = "",
        client_secret: str = "",
        oneapi_client_id: str = "",
        oneapi_client_secret: str = "",
        oneapi_public_keys: tuple[str, ...] = (),
        rate_limits: bool = True,
        get_limit: int = 20,
        write_limit: int = 10,
        window: float = 10.0,
        token_lifetime: int = 3600,
        max_usage: int = 10,
        max_page_size: int = 500,
        faults: Faults | None = None,
    ) -> None:
        rng = random.Random(seed)
        self.host = host
        self.customer_id = customer_id or str(216196257331281920 + rng.randrange(10**6))
        self.client_id = client_id or f"sim-legacy-{seed}"
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.oneapi_client_id = oneapi_client_id or f"sim-oneapi-{seed}"
        self.oneapi_client_secret = oneapi_client_secret or secrets.token_urlsafe(24)
        self.oneapi_public_keys = list(oneapi_public_keys)
        self.rate_limits = rate_limits
        self.limits = {"GET": get_limit, "WRITE": write_limit}
        self.window = window
        self.token_lifetime = token_lifetime
        self.max_page_size = max_page_size  # ZPA's is 500; lower it to page small data sets
        self.faults = faults or Faults()
        self.stats = SimulatorStats()
        self.assertions: list[dict[str, Any]] = []  # verified client-assertion claims, for tests
        self._signing_key = secrets.token_bytes(32)
        self._token_epoch = 0
        self._lock = threading.RLock()
        self._windows = {"GET": _Window(), "WRITE": _Window()}
        self._rng = rng
        self._next_id = 70000 + rng.randrange(1000)
        self.groups: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in ASSOCIATION_TYPES}
        self.keys: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in ASSOCIATION_TYPES}
        self.certs: dict[str, dict[str, Any]] = {}
        for name in ("Root", "Client", "Connector", "Service Edge"):
            cert_id = self._new_id()
            self.certs[cert_id] = {
                "id": cert_id,
                "name": name,
                "cName": f"{name} cert",
                "allowSigning": True,
                "privateKeyPresent": name != "Root",
                "validFromInEpochSec": str(BASE_EPOCH - 86400 * 365),
                "validToInEpochSec": str(BASE_EPOCH + 86400 * 3650),
            }
        for atype, count in (
            ("CONNECTOR_GRP", connector_groups),
            ("SERVICE_EDGE_GRP", service_edge_groups),
        ):
            for index in range(count):
                label = "Connector-Group" if atype == "CONNECTOR_GRP" else "Service-Edges"
                group = self.add_group(atype, f"{label}-{index + 1:04d}")
                for k in range(keys_per_group):
                    self.add_key(
                        atype,
                        group["id"],
                        name=f"{group['name']}-key-{k + 1}",
                        max_usage=max_usage,
                        created=BASE_EPOCH + index * 3600 + k * 60,
                    )
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = port

    # ---- state helpers (also used by tests to seed hostile data) ----------------------

    def _new_id(self) -> str:
        with self._lock:
            self._next_id += 1
            return str(self._next_id)

    def make_key_value(self) -> str:
        raw = self._rng.randbytes(288)
        opaque = base64.b64encode(raw).decode("ascii")[:384]
        digits = "".join(str(self._rng.randrange(10)) for _ in range(18))
        return f"3|{KEY_HOST}|{opaque}-{digits}"

    def add_group(
        self,
        association_type: str,
        name: str,
        *,
        microtenant_id: str | None = None,
        enabled: bool = True,
    ) -> dict[str, Any]:
        with self._lock:
            group_id = self._new_id()
            now = str(int(time.time()))
            group = {
                "id": group_id,
                "name": name,
                "enabled": enabled,
                "creationTime": now,
                "modifiedTime": now,
                "enrollmentCertId": self.cert_id(association_type),
            }
            if microtenant_id:
                group["microtenantId"] = microtenant_id
            self.groups[association_type][group_id] = group
            return group

    def cert_id(self, association_type: str) -> str:
        wanted = "Connector" if association_type == "CONNECTOR_GRP" else "Service Edge"
        return next(str(c["id"]) for c in self.certs.values() if c["name"] == wanted)

    def add_key(
        self,
        association_type: str,
        group_id: str,
        *,
        name: str,
        max_usage: int = 10,
        usage_count: int = 0,
        enabled: bool = True,
        created: int | None = None,
        value: str | None = None,
        microtenant_id: str | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            key_id = self._new_id()
            when = str(created if created is not None else int(time.time()))
            key: dict[str, Any] = {
                "id": key_id,
                "creationTime": when,
                "modifiedTime": when,
                "modifiedBy": "72057594037928115",
                "name": name,
                "usageCount": str(usage_count),
                "maxUsage": str(max_usage),
                "zcomponentId": group_id,
                "enabled": enabled,
                "exportable": True,
                "readOnly": False,
                "zscalerManaged": False,
                "enrollmentCertId": self.cert_id(association_type),
                "provisioningKey": value or self.make_key_value(),
            }
            group = self.groups[association_type][group_id]
            tenant = microtenant_id or group.get("microtenantId")
            if tenant:
                key["microtenantId"] = tenant
            self.keys[association_type][key_id] = key
            return key

    def patch_key(
        self,
        association_type: str,
        key_id: str,
        *,
        values: dict[str, Any] | None = None,
        remove: tuple[str, ...] | list[str] = (),
    ) -> dict[str, Any]:
        """Replace or remove raw wire fields of one stored key, odd values included (a
        millisecond creationTime, `maxUsage: null`, no `provisioningKey`): what ZPA then
        answers for that key in lists and gets. Raises KeyError for an unknown key."""
        with self._lock:
            key = self.keys[association_type][key_id]
            key.update(values or {})
            for name in remove:
                key.pop(name, None)
            return key

    def enroll(self, association_type: str, key_id: str, count: int = 1) -> dict[str, Any]:
        """What a connector's enrollment does to its key: usageCount += count (up to maxUsage)."""
        with self._lock:
            key = self.keys[association_type][key_id]
            usage = int(key["usageCount"]) + count
            if usage > int(key["maxUsage"]) or not key["enabled"]:
                raise ValueError("key is exhausted or disabled")
            key["usageCount"] = str(usage)
            return key

    def accepts(self, value: str) -> bool:
        """Would ZPA accept this provisioning key for an enrollment right now?"""
        with self._lock:
            return any(
                k["provisioningKey"] == value
                and k["enabled"]
                and int(k["usageCount"]) < int(k["maxUsage"])
                for keys in self.keys.values()
                for k in keys.values()
            )

    def expire_tokens(self) -> None:
        with self._lock:
            self._token_epoch += 1

    def set_faults(self, **changes: Any) -> None:
        names = {f.name for f in fields(Faults)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown fault(s): {sorted(unknown)}")
        with self._lock:
            for name, value in changes.items():
                setattr(self.faults, name, type(getattr(self.faults, name))(value))

    def clear_faults(self) -> None:
        with self._lock:
            self.faults = Faults()

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = SimulatorStats()

    # ---- server ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "simulator not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables a legacy-mode client needs to talk to this simulator."""
        return {
            "ZPA_BASE_URL": self.url,
            "ZPA_CLIENT_ID": self.client_id,
            "ZPA_CLIENT_SECRET": self.client_secret,
            "ZPA_CUSTOMER_ID": self.customer_id,
        }

    def start(self) -> ZpaSimulator:
        simulator = self

        class Handler(_Handler):
            sim = simulator

        self._server = ThreadingHTTPServer((self.host, self._port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="zpa-simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def serve_forever(self) -> None:
        """Block until interrupted (the `vault-zpa simulator` command)."""
        assert self._thread is not None
        while self._thread.is_alive():
            self._thread.join(0.5)

    def __enter__(self) -> ZpaSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- tokens ------------------------------------------------------------------------

    def issue_token(self, mode: str) -> tuple[str, int]:
        now = int(time.time())
        with self._lock:
            epoch = self._token_epoch
        claims = {
            "sub": self.client_id if mode == "legacy" else self.oneapi_client_id,
            "iat": now,
            "exp": now + self.token_lifetime,
            "mode": mode,
            "epoch": epoch,
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._signing_key, algorithm="HS256"), self.token_lifetime

    def check_token(self, header: str | None, mode: str) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        try:
            claims = jwt.decode(header[7:], self._signing_key, algorithms=["HS256"])
        except jwt.PyJWTError:
            return False
        with self._lock:
            return bool(claims.get("mode") == mode and claims.get("epoch") == self._token_epoch)

    def verify_assertion(self, assertion: str, client_id: str) -> bool:
        for pem in self.oneapi_public_keys:
            try:
                claims = jwt.decode(
                    assertion,
                    pem,
                    algorithms=["RS256"],
                    audience=ONEAPI_AUDIENCE,
                    options={"require": ["exp", "iss", "sub", "aud"]},
                )
            except jwt.PyJWTError:
                continue
            if claims.get("iss") == client_id and claims.get("sub") == client_id:
                with self._lock:
                    self.assertions.append(claims)
                return True
        return False

    # ---- rate limits -------------------------------------------------------------------

    def take_rate(self, method: str) -> int | None:
        """None if the call fits ZPA's window (which starts with the first call), else the
        seconds until the window ends."""
        if not self.rate_limits:
            return None
        kind = "GET" if method == "GET" else "WRITE"
        now = time.monotonic()
        with self._lock:
            window = self._windows[kind]
            if now - window.started >= self.window:
                window.started, window.count = now, 0
            if window.count >= self.limits[kind]:
                self.stats.rate_limited += 1
                return max(1, math.ceil(window.started + self.window - now))
            window.count += 1
            return None


class _Reply(Exception):
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.malformed = False


class _Drop(Exception):
    """Close the connection without answering."""


def _error(status: int, zid: str, reason: str, **headers: str) -> _Reply:
    return _Reply(status, {"id": zid, "reason": reason}, headers)


class _Handler(BaseHTTPRequestHandler):
    sim: ZpaSimulator
    protocol_version = "HTTP/1.1"
    server_version = "zpa-simulator"

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: tests read stats, not access logs

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        endpoint = _endpoint_name(parts.path.split("/"))
        if parts.path in ("/signin", "/oauth2/v1/token"):
            endpoint = "auth"
        try:
            try:
                _route(self.sim, self, method, parts.path, query, raw)
            except (_Reply, _Drop):
                raise
            except Exception as exc:
                raise _Reply(500, {"id": "internal.error", "reason": type(exc).__name__}) from exc
        except _Drop:
            self._count(method, endpoint, "drop")
            self.close_connection = True
            return
        except _Reply as reply:
            self._count(method, endpoint, str(reply.status))
            body = b"" if reply.body is None else json.dumps(reply.body).encode()
            if reply.malformed and reply.status == 200:
                body = body[: max(1, len(body) // 2)]
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if body:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (its timeout); fine

    def _count(self, method: str, endpoint: str, status: str) -> None:
        with self.sim._lock:
            self.sim.stats.requests[f"{method} {endpoint} {status}"] += 1


def _form(raw: bytes) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise _error(400, "bad.request", "Request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _error(400, "bad.request", "Request body must be a JSON object")
    return body


def _route(
    sim: ZpaSimulator, handler: _Handler, method: str, path: str, query: dict[str, str], raw: bytes
) -> None:
    if path.startswith("/_sim/"):
        _admin(sim, method, path, raw)
    if path == "/signin" and method == "POST":
        form = _form(raw)
        if form.get("client_id") == sim.client_id and secrets.compare_digest(
            form.get("client_secret", ""), sim.client_secret
        ):
            token, lifetime = sim.issue_token("legacy")
            raise _Reply(
                200, {"token_type": "Bearer", "access_token": token, "expires_in": str(lifetime)}
            )
        raise _error(401, "authn.invalid.credentials", "Invalid client credentials")
    if path == "/oauth2/v1/token" and method == "POST":
        _oneapi_token(sim, _form(raw))
    segments = path.strip("/").split("/")
    oneapi = bool(segments) and segments[0] == "zpa"
    if oneapi:
        segments = segments[1:]
    if len(segments) < 6 or segments[0] != "mgmtconfig" or segments[2:4] != ["admin", "customers"]:
        raise _error(404, "resource.not.found", "No such endpoint")
    version, customer, rest = segments[1], segments[4], segments[5:]
    if not sim.check_token(handler.headers.get("Authorization"), "oneapi" if oneapi else "legacy"):
        if oneapi:
            raise _Reply(401, {"detail": "unauthorized", "type": "", "title": "", "status": ""})
        raise _error(401, "authn.invalid.token", "Invalid or expired token")
    if customer != sim.customer_id:
        raise _error(403, "authz.customer.mismatch", "Customer id does not match the token")
    endpoint = _endpoint_name(rest)
    atype = rest[1] if rest[:1] == ["associationType"] and len(rest) > 1 else ""
    malformed = _inject(sim, method, query, atype)
    retry = sim.take_rate(method)
    if retry is not None:
        raise _error(
            429,
            "invalid.toomanyrequests",
            "Exceeded the number of requests allowed.",
            **{"retry-after": f"{retry}s"},
        )
    if sim.faults.latency:
        time.sleep(sim.faults.latency)
    try:
        tenant = query.get("microtenantId") or None
        if rest[:1] == ["associationType"] and len(rest) >= 3 and rest[2] == "provisioningKey":
            _keys(sim, method, version, atype, rest[3:], query, raw, tenant)
        if version == "v1" and rest[0] in GROUP_KINDS:
            _groups(sim, method, GROUP_KINDS[rest[0]], rest[1:], query, raw, tenant)
        if rest[0] == "enrollmentCert":
            if version == "v2" and len(rest) == 1 and method == "GET":
                certs = list(sim.certs.values())
                raise _Reply(200, _page(certs, query, sim.max_page_size), {}) from None
            if version == "v1" and len(rest) == 2 and method == "GET":
                cert = sim.certs.get(rest[1])
                if cert is None:
                    raise _error(404, "resource.not.found", "Enrollment certificate not found")
                raise _Reply(200, cert)
        raise _error(404, "resource.not.found", f"No such endpoint: {method} {endpoint}")
    except _Reply as reply:
        reply.malformed = malformed
        raise


def _endpoint_name(rest: list[str]) -> str:
    for marker in ("provisioningKey", "enrollmentCert", "appConnectorGroup", "serviceEdgeGroup"):
        if marker in rest:
            return marker
    return "other"


def _inject(sim: ZpaSimulator, method: str, query: dict[str, str], atype: str) -> bool:
    """Apply fault injection to one API request; returns True if the body must be malformed."""
    f = sim.faults
    with sim._lock:
        if f.only_association_type and atype != f.only_association_type:
            return False
        if f.only_method and method != f.only_method:
            return False
        if f.drop_next > 0:
            f.drop_next -= 1
            raise _Drop
        if f.drop_rate and sim._rng.random() < f.drop_rate:
            raise _Drop
        if f.hang_next > 0:
            f.hang_next -= 1
            hang = f.hang
        else:
            hang = 0.0
        if f.unauthorized_next > 0:
            f.unauthorized_next -= 1
            raise _error(401, "authn.invalid.token", "Invalid or expired token")
        if f.storm_429 > 0:
            f.storm_429 -= 1
            sim.stats.rate_limited += 1
            raise _error(
                429,
                "invalid.toomanyrequests",
                "Exceeded the number of requests allowed.",
                **{"retry-after": f"{f.retry_after}s"},
            )
        if f.fail_next > 0:
            f.fail_next -= 1
            raise _error(f.error_status, "server.error", "Injected failure")
        if f.error_rate and sim._rng.random() < f.error_rate:
            raise _error(f.error_status, "server.error", "Injected failure")
        if f.fail_page and method == "GET" and query.get("page") == str(f.fail_page):
            raise _error(f.error_status, "server.error", f"Injected failure on page {f.fail_page}")
        malformed = f.malformed_next > 0 or bool(
            f.malformed_rate and sim._rng.random() < f.malformed_rate
        )
        if f.malformed_next > 0:
            f.malformed_next -= 1
    if hang:
        time.sleep(hang)
    return malformed


def _oneapi_token(sim: ZpaSimulator, form: dict[str, str]) -> None:
    if form.get("grant_type") != "client_credentials" or form.get("audience") != ONEAPI_AUDIENCE:
        raise _Reply(
            400,
            {
                "error": "invalid_request",
                "error_description": "grant_type and audience are required",
            },
        )
    client_id = form.get("client_id", "")
    ok = False
    if client_id == sim.oneapi_client_id:
        if "client_assertion" in form:
            ok = form.get("client_assertion_type") == (
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            ) and sim.verify_assertion(form["client_assertion"], client_id)
        else:
            ok = secrets.compare_digest(form.get("client_secret", ""), sim.oneapi_client_secret)
    if not ok:
        raise _Reply(
            401, {"error": "invalid_client", "error_description": "Client authentication failed"}
        )
    token, lifetime = sim.issue_token("oneapi")
    raise _Reply(200, {"access_token": token, "token_type": "Bearer", "expires_in": lifetime})


def _page(
    items: list[dict[str, Any]],
    query: dict[str, str],
    max_size: int = 500,
    strip_unsafe: bool = False,
) -> dict[str, Any]:
    try:
        page = max(1, int(query.get("page", "1")))
        size = min(max_size, max(1, int(query.get("pagesize", "20"))))
    except ValueError:
        raise _error(400, "bad.request", "page and pagesize must be numbers") from None
    search = query.get("search")
    if search:
        items = _search(items, search, strip_unsafe)
    items = sorted(items, key=lambda i: int(i["id"]))
    total = len(items)
    pages = math.ceil(total / size)
    chunk = items[(page - 1) * size : page * size]
    return {"totalPages": str(pages), "totalCount": str(total), "list": chunk}


def _search(
    items: list[dict[str, Any]], expression: str, strip_unsafe: bool = False
) -> list[dict[str, Any]]:
    parts = expression.split("+", 2)
    if len(parts) != 3:
        raise _error(400, "bad.request", "search must be <field>+<OP>+<value>")
    name, op, value = parts
    if strip_unsafe:
        # What GO does to plain values, and what zpa-api.md §12 warns the server may do.
        value = re.sub(r"[^A-Za-z0-9 _/.-]", "", value)
    ops: dict[str, Callable[[str, str], bool]] = {
        "EQ": lambda a, b: a.lower() == b.lower(),
        "NE": lambda a, b: a.lower() != b.lower(),
        "CONTAINS": lambda a, b: b.lower() in a.lower(),
        "STARTSWITH": lambda a, b: a.lower().startswith(b.lower()),
        "ENDSWITH": lambda a, b: a.lower().endswith(b.lower()),
    }
    if op not in ops:
        raise _error(400, "bad.request", f"Unsupported search operator {op}")
    return [i for i in items if ops[op](str(i.get(name, "")), value)]


def _visible(obj: dict[str, Any], tenant: str | None) -> bool:
    if tenant is None:
        return True
    if tenant == "0":  # the default microtenant: objects of no microtenant (zpa-api.md §12)
        return obj.get("microtenantId") in (None, "", "0")
    return obj.get("microtenantId") == tenant


def _keys(
    sim: ZpaSimulator,
    method: str,
    version: str,
    atype: str,
    rest: list[str],
    query: dict[str, str],
    raw: bytes,
    tenant: str | None,
) -> None:
    if version != "v1":
        raise _error(404, "resource.not.found", "No such endpoint")
    if atype in OTHER_TYPES:
        if method == "GET" and not rest:
            raise _Reply(200, {"totalPages": "0", "totalCount": "0", "list": []})
        raise _error(400, "bad.request", f"{atype} is not supported by this simulator")
    if atype not in ASSOCIATION_TYPES:
        raise _error(400, "bad.request", f"Invalid association type {atype}")
    with sim._lock:
        store = sim.keys[atype]
        faults = sim.faults
        aimed = faults.only_association_type in ("", atype)
        if not rest and method == "GET":
            if aimed and faults.empty_listing_next > 0:
                faults.empty_listing_next -= 1
                raise _Reply(200, {})
            items = [_key_view(sim, atype, k) for k in store.values() if _visible(k, tenant)]
            body = _page(items, query, sim.max_page_size, faults.search_strips_unsafe)
            first_page = query.get("page", "1") == "1" and int(body["totalPages"]) > 1
            if faults.change_between_pages and first_page:
                first_group = next(iter(sim.groups[atype]))
                sim.add_key(atype, first_group, name="appeared-mid-listing")
            if aimed and faults.swap_page1_next > 0 and first_page and body["list"]:
                # A rotation elsewhere: one key of page 1 goes, a new one (last in id order)
                # comes; the total stays the same, so only page 1 tells.
                faults.swap_page1_next -= 1
                gone = store.pop(str(body["list"][0]["id"]))
                sim.add_key(atype, gone["zcomponentId"], name=f"{gone['name']}-replacement")
            if aimed and faults.listing_total_pages:
                body["totalPages"] = faults.listing_total_pages
            if aimed and faults.listing_omit:
                for name in faults.listing_omit.split(","):
                    body.pop(name.strip(), None)
            raise _Reply(200, body)
        if not rest and method == "POST":
            body = _json_body(raw)
            created = _create_key(sim, atype, body, tenant)
            if aimed and faults.drop_after_create_next > 0:
                faults.drop_after_create_next -= 1
                raise _Drop  # the key exists; its creator never hears of it
            raise _Reply(200, created)
        if len(rest) != 1:
            raise _error(404, "resource.not.found", "No such endpoint")
        key = store.get(rest[0])
        if key is None or not _visible(key, tenant):
            raise _error(404, "resource.not.found", f"Provisioning key {rest[0]} not found")
        if method == "GET":
            raise _Reply(200, _key_view(sim, atype, key))
        if method == "PUT":
            body = _json_body(raw)
            for name in ("name", "maxUsage", "enabled", "enrollmentCertId", "ipAcl", "uiConfig"):
                if name in body:
                    key[name] = str(body[name]) if name == "maxUsage" else body[name]
            key["modifiedTime"] = str(int(time.time()))
            raise _Reply(204)
        if method == "DELETE":
            del store[rest[0]]
            raise _Reply(204)
    raise _error(405, "method.not.allowed", f"{method} is not allowed here")


def _key_view(sim: ZpaSimulator, atype: str, key: dict[str, Any]) -> dict[str, Any]:
    group = sim.groups[atype].get(key["zcomponentId"], {})
    cert = sim.certs.get(key["enrollmentCertId"], {})
    view = dict(key)
    view["zcomponentName"] = group.get("name", "")
    view["enrollmentCertName"] = cert.get("name", "")
    if atype == "CONNECTOR_GRP":
        view["appConnectorGroupId"] = key["zcomponentId"]
        view["appConnectorGroupName"] = group.get("name", "")
    return view


def _create_key(
    sim: ZpaSimulator, atype: str, body: dict[str, Any], tenant: str | None
) -> dict[str, Any]:
    missing = [
        n for n in ("name", "maxUsage", "enrollmentCertId", "zcomponentId") if not body.get(n)
    ]
    if missing:
        raise _error(400, "bad.request", f"Missing required field(s): {', '.join(missing)}")
    try:
        max_usage = int(str(body["maxUsage"]))
        if max_usage < 1:
            raise ValueError
    except ValueError:
        raise _error(400, "bad.request", "maxUsage must be a positive number") from None
    group_id = str(body["zcomponentId"])
    if group_id not in sim.groups[atype]:
        raise _error(400, "bad.request", f"zcomponentId {group_id} is not a group of {atype}")
    cert_id = str(body["enrollmentCertId"])
    if cert_id not in sim.certs:
        raise _error(400, "bad.request", f"enrollmentCertId {cert_id} does not exist")
    key = sim.add_key(
        atype,
        group_id,
        name=str(body["name"]),
        max_usage=max_usage,
        enabled=bool(body.get("enabled", True)),
        microtenant_id=body.get("microtenantId") or tenant,
    )
    key["enrollmentCertId"] = cert_id
    # The real create response lacks zcomponentName and enrollmentCertName (zpa-api.md §2).
    return dict(key)


def _groups(
    sim: ZpaSimulator,
    method: str,
    atype: str,
    rest: list[str],
    query: dict[str, str],
    raw: bytes,
    tenant: str | None,
) -> None:
    with sim._lock:
        store = sim.groups[atype]
        if not rest and method == "GET":
            visible = [g for g in store.values() if _visible(g, tenant)]
            raise _Reply(200, _page(visible, query, sim.max_page_size))
        if not rest and method == "POST":
            body = _json_body(raw)
            name = body.get("name")
            if not isinstance(name, str) or not name:
                raise _error(400, "bad.request", "name is required")
            group = sim.add_group(
                atype,
                name,
                microtenant_id=body.get("microtenantId") or tenant,
                enabled=bool(body.get("enabled", True)),
            )
            raise _Reply(200, group)
        if len(rest) != 1:
            raise _error(404, "resource.not.found", "No such endpoint")
        found = store.get(rest[0])
        if found is None or not _visible(found, tenant):
            raise _error(404, "resource.not.found", f"Group {rest[0]} not found")
        group = found
        if method == "GET":
            raise _Reply(200, group)
        if method == "DELETE":
            del store[rest[0]]
            for key_id in [k for k, v in sim.keys[atype].items() if v["zcomponentId"] == rest[0]]:
                del sim.keys[atype][key_id]
            raise _Reply(204)
    raise _error(405, "method.not.allowed", f"{method} is not allowed here")


def _admin(sim: ZpaSimulator, method: str, path: str, raw: bytes) -> None:
    """Test controls, not part of ZPA: /_sim/stats, /_sim/faults, /_sim/enroll, ..."""
    if path == "/_sim/stats" and method == "GET":
        with sim._lock:
            raise _Reply(
                200,
                {
                    "requests": dict(sim.stats.requests),
                    "total": sum(sim.stats.requests.values()),
                    "rate_limited": sim.stats.rate_limited,
                },
            )
    if path == "/_sim/stats/reset" and method == "POST":
        sim.reset_stats()
        raise _Reply(204)
    if path == "/_sim/faults":
        if method == "POST":
            try:
                sim.set_faults(**_json_body(raw))
            except (ValueError, TypeError) as exc:
                raise _error(400, "bad.request", str(exc)) from None
        elif method == "DELETE":
            sim.clear_faults()
        raise _Reply(200, asdict(sim.faults))
    if path == "/_sim/enroll" and method == "POST":
        body = _json_body(raw)
        try:
            key = sim.enroll(
                str(body["association_type"]), str(body["key_id"]), int(body.get("count", 1))
            )
        except KeyError:
            raise _error(404, "resource.not.found", "no such key") from None
        except ValueError as exc:
            raise _error(409, "key.exhausted", str(exc)) from None
        raise _Reply(200, {"id": key["id"], "usageCount": key["usageCount"]})
    if path == "/_sim/key" and method == "POST":
        body = _json_body(raw)
        unset = body.get("unset", [])
        changes = body.get("set", {})
        if not isinstance(changes, dict) or not isinstance(unset, list):
            raise _error(400, "bad.request", "set must be an object and unset a list")
        try:
            key = sim.patch_key(
                str(body.get("association_type")),
                str(body.get("key_id")),
                values=changes,
                remove=[str(n) for n in unset],
            )
        except KeyError:
            raise _error(404, "resource.not.found", "no such key") from None
        raise _Reply(200, dict(key))
    if path == "/_sim/expire-tokens" and method == "POST":
        sim.expire_tokens()
        raise _Reply(204)
    raise _error(404, "resource.not.found", "No such simulator control")
