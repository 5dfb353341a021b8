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
- the real API's answers of zpa-api.md §12: missing objects 400 `resource.not.found`, 18-digit
  ids, non-exportable keys without their value, microtenant 0/unset/unknown, group create 201,
  overload 401 "Resource Access Blocked", 503 `retryable.server.error` with `Retry-After: 10s`,
  a migrated tenant's non-JSON "only through Zscaler OneAPI"; HTTPS with `tls=True`.
- fault injection and test controls under `/_sim/` (not part of ZPA): see `Faults` and `_admin`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import random
import re
import secrets
import shlex
import shutil
import ssl
import tempfile
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
    only_endpoint: str = ""  # ... or to one endpoint: provisioningKey, appConnectorGroup, ...
    unauthorized_next: int = 0  # the next N API requests answer 401 (as if the token expired)
    # Aimed at provisioning keys (`only_association_type` narrows them to one type):
    drop_after_create_next: int = 0  # the next N creates happen, then the connection closes
    swap_page1_next: int = 0  # after page 1 of the next N multi-page listings: one of its keys
    #                           is deleted and one added to that key's group (same total)
    empty_listing_next: int = 0  # the next N listings answer 200 with the body `{}`
    listing_omit: str = ""  # comma-separated envelope fields left out of listings
    listing_total_pages: str = ""  # listings announce this totalPages (e.g. "1000000")
    search_strips_unsafe: bool = False  # search values lose characters outside [A-Za-z0-9 _/.-]
    search_rejects_unsafe: bool = False  # ... or such a search answers 400 bad.request
    # Real-shaped answers of a loaded ZPA (zpa-api.md §12):
    overload_401_next: int = 0  # the next N API requests answer 401 "Resource Access Blocked"
    unavailable_next: int = 0  # the next N answer 503 retryable.server.error + Retry-After
    unavailable_retry_after: int = 10  # seconds announced by those 503s (ZPA sends "10s")


@dataclass
class _Window:
    started: float = 0.0
    count: int = 0


@dataclass
class SimulatorStats:
    requests: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    enrollments: Counter[str] = field(default_factory=Counter)  # by outcome (enroll_with)


@dataclass(frozen=True)
class KeyEvent:
    """One change to a stored key, as `record_events=True` keeps them (`sim.events`): what it
    was at wall-clock time `at` (time.time(), comparable with Vault's version times). `kind` is
    created | enrolled | updated | deleted; `value` is the key value on `created` only."""

    at: float
    kind: str
    association_type: str
    key_id: str
    group_id: str
    enabled: bool
    usage_count: int
    max_usage: int
    value: str = ""


class EnrollmentRejected(Exception):
    """An enrollment ZPA refuses: `reason` is unknown-key | disabled | exhausted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
        tls: bool = False,
        not_found_status: int = 400,
        key_group_fields: bool = False,
        migrated: bool = False,
        record_events: bool = False,
    ) -> None:
        rng = random.Random(seed)
        self.host = host
        self.tls = tls
        # Real ZPA answers a missing object with 400 resource.not.found (zpa-api.md §12); 404
        # is what older readings (and TF/GO's other branch) expect.
        self.not_found_status = not_found_status
        # Recent OneAPI recordings carry no appConnectorGroupId/Name on key objects.
        self.key_group_fields = key_group_fields
        # A tenant migrated to ZIdentity: legacy API calls answer non-JSON "only through
        # Zscaler OneAPI" (zpa-api.md §4, §12).
        self.migrated = migrated
        # Every change to a key (create, enrollment, update, delete) with its time, for
        # benchmarks that replay ZPA's truth (benchmarks/enrollment.py); off by default.
        self.record_events = record_events
        self.events: list[KeyEvent] = []
        self.microtenants: dict[str, dict[str, Any]] = {}
        self.cert_file: str | None = None  # the self-signed certificate (PEM), with --tls
        self.ca_bundle: str | None = None  # certifi's CAs plus that certificate
        self._cert_dir: str | None = None
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
        # 18-digit ids, as ZPA's (e.g. 216196257331394583), kept as strings everywhere.
        self._next_id = 216196257331300000 + rng.randrange(10**5) * 1000
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
        self._server: _Server | None = None
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
                self.add_microtenant(microtenant_id)
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
        exportable: bool = True,
    ) -> dict[str, Any]:
        """A key; with `exportable=False` its value is kept (enrollments still work) but
        hidden from GET answers, as ZPA does (zpa-api.md §12)."""
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
                "exportable": exportable,
                "readOnly": False,
                "zscalerManaged": False,
                "enrollmentCertId": self.cert_id(association_type),
                "provisioningKey": value or self.make_key_value(),
            }
            group = self.groups[association_type][group_id]
            tenant = microtenant_id or group.get("microtenantId")
            if tenant:
                key["microtenantId"] = tenant
                self.add_microtenant(tenant)
            self.keys[association_type][key_id] = key
            self.record(association_type, key, "created")
            return key

    def add_microtenant(self, microtenant_id: str, name: str = "") -> dict[str, Any]:
        """Make a microtenant known (groups and keys seeded in one register it too): only
        known ids (and "0", the default one) are accepted as `microtenantId`."""
        with self._lock:
            return self.microtenants.setdefault(
                microtenant_id,
                {
                    "id": microtenant_id,
                    "name": name or f"microtenant-{microtenant_id}",
                    "enabled": True,
                },
            )

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
            self.record(association_type, key, "updated")
            return key

    def enroll(self, association_type: str, key_id: str, count: int = 1) -> dict[str, Any]:
        """What a connector's enrollment does to its key: usageCount += count (up to maxUsage)."""
        with self._lock:
            key = self.keys[association_type][key_id]
            usage = int(key["usageCount"]) + count
            if usage > int(key["maxUsage"]) or not key["enabled"]:
                raise ValueError("key is exhausted or disabled")
            key["usageCount"] = str(usage)
            self.record(association_type, key, "enrolled")
            return key

    def enroll_with(self, value: str) -> tuple[str, dict[str, Any]]:
        """What a connector's enrollment with a provisioning key *value* does: find the key
        (any association type), refuse it if deleted (unknown), disabled or used up, else
        usageCount += 1. Returns (association type, key); raises EnrollmentRejected."""
        with self._lock:
            for atype, store in self.keys.items():
                for key in store.values():
                    if key.get("provisioningKey") != value:
                        continue
                    if not key["enabled"]:
                        reason = "disabled"
                    elif int(key["usageCount"]) >= int(key["maxUsage"]):
                        reason = "exhausted"
                    else:
                        key["usageCount"] = str(int(key["usageCount"]) + 1)
                        self.stats.enrollments["enrolled"] += 1
                        self.record(atype, key, "enrolled")
                        return atype, key
                    self.stats.enrollments[reason] += 1
                    raise EnrollmentRejected(reason)
            self.stats.enrollments["unknown-key"] += 1
            raise EnrollmentRejected("unknown-key")

    def delete_key(self, association_type: str, key_id: str) -> None:
        """Delete one key as an admin does in the console. Raises KeyError for an unknown key."""
        with self._lock:
            key = self.keys[association_type].pop(key_id)
            self.record(association_type, key, "deleted")

    def record(self, association_type: str, key: dict[str, Any], kind: str) -> None:
        """Keep a KeyEvent for this key's current state (with `record_events` only)."""
        if not self.record_events:
            return

        def number(name: str) -> int:
            try:
                return int(str(key.get(name)))
            except ValueError:
                return 0

        with self._lock:
            self.events.append(
                KeyEvent(
                    at=time.time(),
                    kind=kind,
                    association_type=association_type,
                    key_id=str(key.get("id", "")),
                    group_id=str(key.get("zcomponentId", "")),
                    enabled=key.get("enabled") is True,
                    usage_count=number("usageCount"),
                    max_usage=number("maxUsage"),
                    value=str(key.get("provisioningKey", "")) if kind == "created" else "",
                )
            )

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
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def env(self, kind: str = "legacy") -> dict[str, str]:
        """Environment variables a client of one credential kind ("legacy" API key or
        "oneapi" client credentials) needs to reach this simulator, and with TLS its CA."""
        env: dict[str, str] = {"ZPA_BASE_URL": self.url}
        if kind == "legacy":
            env.update(
                ZPA_CLIENT_ID=self.client_id,
                ZPA_CLIENT_SECRET=self.client_secret,
                ZPA_CUSTOMER_ID=self.customer_id,
            )
        elif kind == "oneapi":
            env.update(
                ZSCALER_CLIENT_ID=self.oneapi_client_id,
                ZSCALER_CLIENT_SECRET=self.oneapi_client_secret,
                ZPA_CUSTOMER_ID=self.customer_id,
                # The simulator is its own ZIdentity: vault-zpa's token URL override.
                VAULT_ZPA_ZPA_TOKEN_URL=f"{self.url}/oauth2/v1/token",
            )
        else:
            raise ValueError(f"unknown credential kind {kind!r} (legacy or oneapi)")
        if self.ca_bundle:
            # A bundle of certifi's CAs plus ours: a shell that sources these lines still
            # trusts public CAs (requests replaces its CAs with REQUESTS_CA_BUNDLE).
            env["SSL_CERT_FILE"] = self.ca_bundle
            env["REQUESTS_CA_BUNDLE"] = self.ca_bundle
        return env

    def shell_lines(self, kind: str = "legacy") -> list[str]:
        """`export NAME=value` lines (values shell-quoted) for `eval` or `.`."""
        return [f"export {name}={shlex.quote(value)}" for name, value in self.env(kind).items()]

    def start(self) -> ZpaSimulator:
        simulator = self

        class Handler(_Handler):
            sim = simulator

        self._server = _Server((self.host, self._port), Handler)
        if self.tls:
            self._cert_dir = tempfile.mkdtemp(prefix="zpa-simulator-tls-")
            self.cert_file, key_file = write_self_signed(self.host, self._cert_dir)
            self.ca_bundle = os.path.join(self._cert_dir, "ca-bundle.pem")
            _write_bundle(self.ca_bundle, self.cert_file)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(self.cert_file, key_file)
            # The handshake runs in the handler's thread, not in accept(): one stalled client
            # cannot block the listener.
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
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
        if self._cert_dir is not None:
            shutil.rmtree(self._cert_dir, ignore_errors=True)
            self._cert_dir = None

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


def write_self_signed(host: str, directory: str) -> tuple[str, str]:
    """A self-signed certificate for loopback (`host`, 127.0.0.1, ::1, localhost), valid for
    30 days, and its private key: written to `directory` as cert.pem and key.pem (0600)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vault-zpa ZPA simulator")])
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    try:
        extra: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        extra = x509.DNSName(host)
    if extra not in sans:
        sans.append(extra)
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        # A self-signed trust anchor that also serves: the extensions strict verifiers
        # (Python 3.13's VERIFY_X509_STRICT) insist on.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file = os.path.join(directory, "cert.pem")
    key_file = os.path.join(directory, "key.pem")
    with open(cert_file, "wb") as out:
        out.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_file, key_file


def _write_bundle(path: str, cert_file: str) -> None:
    import certifi

    with open(path, "w", encoding="ascii") as out:
        with open(certifi.where(), encoding="ascii") as public:
            out.write(public.read())
        with open(cert_file, encoding="ascii") as ours:
            out.write("\n# vault-zpa ZPA simulator (self-signed)\n" + ours.read())


def write_env_file(path: str, lines: list[str]) -> None:
    """Write shell lines to `path` atomically (a temp file in the same directory, renamed over
    it), mode 0600: a reader sees no file or the whole file, never a partial one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".zpa-simulator-env-", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("".join(f"{line}\n" for line in lines))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_env_file(path: str, lines: list[str]) -> None:
    """Remove the env file on exit if it still holds what this run wrote."""
    with contextlib.suppress(OSError):
        with open(path, encoding="utf-8") as current:
            if current.read() != "".join(f"{line}\n" for line in lines):
                return
        os.unlink(path)


def serve_until_signalled(sim: ZpaSimulator) -> None:
    """Serve until SIGINT or SIGTERM (`kill`), then return so the caller cleans up."""
    import signal

    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def serve_detached(
    start: Callable[[], ZpaSimulator], *, kind: str, env_file: str | None = None
) -> str:
    """Start the simulator in a forked, detached process and return its shell lines (plus
    `export VAULT_ZPA_SIMULATOR_PID=N`) once it accepts connections. The child lets go of
    the caller's stdout and stderr, so `eval "$(vault-zpa simulator --background)"` returns.
    Raises RuntimeError with the child's reason if it could not start."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: serve
        status = 1
        try:
            os.close(read_end)
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.close(devnull)
            try:
                sim = start()
            except OSError as exc:
                os.write(write_end, f"!cannot listen: {exc.strerror}".encode())
                os.close(write_end)
                os._exit(1)
            lines = [*sim.shell_lines(kind), f"export VAULT_ZPA_SIMULATOR_PID={os.getpid()}"]
            try:
                if env_file:
                    write_env_file(env_file, lines)
                os.write(write_end, "".join(f"{line}\n" for line in lines).encode())
                os.close(write_end)
                serve_until_signalled(sim)
                status = 0
            finally:
                sim.stop()
                if env_file:
                    remove_env_file(env_file, lines)
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    text = b"".join(chunks).decode()
    if not text or text.startswith("!"):
        os.waitpid(pid, 0)
        raise RuntimeError(text[1:] or "the simulator exited before it listened")
    return text


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that hangs up or fails the TLS handshake is not our error


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


def _too_many(retry_after: int) -> _Reply:
    """ZPA's 429, as recorded (zpa-api.md §6): `exception`, `id`, `reason`, `retry-after: Ns`."""
    return _Reply(
        429,
        {
            "exception": "invalid.toomanyrequests",
            "id": "invalid.toomanyrequests",
            "reason": "Exceeded the number of requests allowed.",
        },
        {"retry-after": f"{retry_after}s"},
    )


def _not_found(sim: ZpaSimulator, what: str) -> _Reply:
    return _error(sim.not_found_status, "resource.not.found", f"{what} not found")


# What a tenant migrated to ZIdentity answers legacy API calls with: not JSON (GO errorx).
ONEAPI_ONLY = "This API endpoint can be accessed only through Zscaler OneAPI"


class _Handler(BaseHTTPRequestHandler):
    sim: ZpaSimulator
    protocol_version = "HTTP/1.1"
    server_version = "zpa-simulator"

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: tests read stats, not access logs

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(30)  # a client that never finishes the handshake
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()

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
            if isinstance(reply.body, bytes):  # a non-JSON answer; its type is in headers
                body = reply.body
            else:
                body = b"" if reply.body is None else json.dumps(reply.body).encode()
            if reply.malformed and reply.status == 200:
                body = body[: max(1, len(body) // 2)]
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if body and "Content-Type" not in reply.headers:
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
    if sim.migrated and not oneapi:
        raise _Reply(403, ONEAPI_ONLY.encode(), {"Content-Type": "text/html"})
    endpoint = _endpoint_name(rest)
    atype = rest[1] if rest[:1] == ["associationType"] and len(rest) > 1 else ""
    malformed = _inject(sim, method, query, atype, endpoint)
    retry = sim.take_rate(method)
    if retry is not None:
        raise _too_many(retry)
    if sim.faults.latency:
        time.sleep(sim.faults.latency)
    try:
        tenant = query.get("microtenantId") or None
        if tenant is not None and tenant != "0" and tenant not in sim.microtenants:
            # An unknown microtenant is an error, never an empty tenant (zpa-api.md §12).
            raise _error(400, "bad.request", f"Invalid microtenant id {tenant}")
        if version == "v1" and rest[0] == "microtenants" and method == "GET":
            if len(rest) == 1:
                raise _Reply(200, _page(list(sim.microtenants.values()), query))
            found = sim.microtenants.get(rest[1]) if len(rest) == 2 else None
            if found is None:
                raise _not_found(sim, f"Microtenant {rest[1]}")
            raise _Reply(200, found)
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
                    raise _not_found(sim, f"Enrollment certificate {rest[1]}")
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


def _inject(
    sim: ZpaSimulator, method: str, query: dict[str, str], atype: str, endpoint: str = ""
) -> bool:
    """Apply fault injection to one API request; returns True if the body must be malformed."""
    f = sim.faults
    with sim._lock:
        if f.only_endpoint and endpoint != f.only_endpoint:
            return False
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
            raise _too_many(f.retry_after)
        if f.overload_401_next > 0:
            # GO notes this 401 arrives instead of a 429 under load (zpa-api.md §12); the body's
            # exact shape is not recorded, its words are.
            f.overload_401_next -= 1
            sim.stats.rate_limited += 1
            raise _error(401, "resource.access.blocked", "Resource Access Blocked")
        if f.unavailable_next > 0:
            f.unavailable_next -= 1
            raise _error(
                503,
                "retryable.server.error",
                "Service temporarily unavailable, retry later",
                **{"Retry-After": f"{f.unavailable_retry_after}s"},
            )
        failure_id = "retryable.server.error" if f.error_status == 503 else "server.error"
        if f.fail_next > 0:
            f.fail_next -= 1
            raise _error(f.error_status, failure_id, "Injected failure")
        if f.error_rate and sim._rng.random() < f.error_rate:
            raise _error(f.error_status, failure_id, "Injected failure")
        if f.fail_page and method == "GET" and query.get("page") == str(f.fail_page):
            raise _error(f.error_status, failure_id, f"Injected failure on page {f.fail_page}")
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
    reject_unsafe: bool = False,
) -> dict[str, Any]:
    try:
        page = max(1, int(query.get("page", "1")))
        size = min(max_size, max(1, int(query.get("pagesize", "20"))))
    except ValueError:
        raise _error(400, "bad.request", "page and pagesize must be numbers") from None
    search = query.get("search")
    if search:
        items = _search(items, search, strip_unsafe, reject_unsafe)
    items = sorted(items, key=lambda i: int(i["id"]))
    total = len(items)
    pages = math.ceil(total / size)
    chunk = items[(page - 1) * size : page * size]
    return {"totalPages": str(pages), "totalCount": str(total), "list": chunk}


def _search(
    items: list[dict[str, Any]],
    expression: str,
    strip_unsafe: bool = False,
    reject_unsafe: bool = False,
) -> list[dict[str, Any]]:
    # `name+EQ+x` and the HELP page's space-separated `maxUsage EQ 2` (zpa-api.md §12).
    parts = re.split(r"[+ ]", expression, maxsplit=2)
    if len(parts) != 3:
        raise _error(400, "bad.request", "search must be <field>+<OP>+<value>")
    name, op, value = parts
    if reject_unsafe and re.search(r"[^A-Za-z0-9 _/.-]", value):
        raise _error(400, "bad.request", "Invalid characters in the search value")
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
            body = _page(
                items,
                query,
                sim.max_page_size,
                faults.search_strips_unsafe,
                faults.search_rejects_unsafe,
            )
            first_page = query.get("page", "1") == "1" and int(body["totalPages"]) > 1
            if faults.change_between_pages and first_page:
                first_group = next(iter(sim.groups[atype]))
                sim.add_key(atype, first_group, name="appeared-mid-listing")
            if aimed and faults.swap_page1_next > 0 and first_page and body["list"]:
                # A rotation elsewhere: one key of page 1 goes, a new one (last in id order)
                # comes; the total stays the same, so only page 1 tells.
                faults.swap_page1_next -= 1
                gone = store.pop(str(body["list"][0]["id"]))
                sim.record(atype, gone, "deleted")
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
            raise _not_found(sim, f"Provisioning key {rest[0]}")
        if method == "GET":
            raise _Reply(200, _key_view(sim, atype, key))
        if method == "PUT":
            body = _json_body(raw)
            for name in ("name", "maxUsage", "enabled", "enrollmentCertId", "ipAcl", "uiConfig"):
                if name in body:
                    key[name] = str(body[name]) if name == "maxUsage" else body[name]
            key["modifiedTime"] = str(int(time.time()))
            sim.record(atype, key, "updated")
            raise _Reply(204)
        if method == "DELETE":
            sim.record(atype, store.pop(rest[0]), "deleted")
            raise _Reply(204)
    raise _error(405, "method.not.allowed", f"{method} is not allowed here")


def _key_view(sim: ZpaSimulator, atype: str, key: dict[str, Any]) -> dict[str, Any]:
    group = sim.groups[atype].get(key["zcomponentId"], {})
    cert = sim.certs.get(key["enrollmentCertId"], {})
    view = dict(key)
    view["zcomponentName"] = group.get("name", "")
    view["enrollmentCertName"] = cert.get("name", "")
    if sim.key_group_fields and atype == "CONNECTOR_GRP":
        view["appConnectorGroupId"] = key["zcomponentId"]
        view["appConnectorGroupName"] = group.get("name", "")
    if view.get("exportable") is False:
        view.pop("provisioningKey", None)  # hidden in GET answers (zpa-api.md §12)
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
        exportable=body.get("exportable", True) is not False,
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
            raise _Reply(201, group)  # groups answer 201 (keys 200), zpa-api.md §12
        if len(rest) != 1:
            raise _error(404, "resource.not.found", "No such endpoint")
        found = store.get(rest[0])
        if found is None or not _visible(found, tenant):
            raise _not_found(sim, f"Group {rest[0]}")
        group = found
        if method == "GET":
            raise _Reply(200, group)
        if method == "DELETE":
            del store[rest[0]]
            for key_id in [k for k, v in sim.keys[atype].items() if v["zcomponentId"] == rest[0]]:
                sim.record(atype, sim.keys[atype].pop(key_id), "deleted")
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
                    "enrollments": dict(sim.stats.enrollments),
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
        if "provisioning_key" in body:
            # A connector enrolling with the key value it was given (zpa-api.md §9): a deleted
            # key is unknown to ZPA (401, what the connector logs for a wrong key); a disabled
            # or used-up one is refused (409). Not rate limited: enrollment is not the API.
            try:
                atype, key = sim.enroll_with(str(body["provisioning_key"]))
            except EnrollmentRejected as exc:
                if exc.reason == "unknown-key":
                    raise _error(
                        401, "enrollment.key.invalid", "Unknown provisioning key"
                    ) from None
                raise _error(409, f"key.{exc.reason}", f"The key is {exc.reason}") from None
            raise _Reply(
                200,
                {
                    "association_type": atype,
                    "id": key["id"],
                    "zcomponentId": key["zcomponentId"],
                    "usageCount": key["usageCount"],
                    "maxUsage": key["maxUsage"],
                },
            )
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
    if path == "/_sim/tenant" and method == "POST":
        body = _json_body(raw)
        with sim._lock:
            if "migrated" in body:
                sim.migrated = bool(body["migrated"])
            if "not_found_status" in body:
                sim.not_found_status = int(body["not_found_status"])
            if "key_group_fields" in body:
                sim.key_group_fields = bool(body["key_group_fields"])
            state = {
                "migrated": sim.migrated,
                "not_found_status": sim.not_found_status,
                "key_group_fields": sim.key_group_fields,
            }
        raise _Reply(200, state)
    if path == "/_sim/microtenant" and method == "POST":
        body = _json_body(raw)
        if not isinstance(body.get("id"), str) or not body["id"]:
            raise _error(400, "bad.request", "id (a string) is required")
        raise _Reply(200, sim.add_microtenant(body["id"], str(body.get("name") or "")))
    if path == "/_sim/expire-tokens" and method == "POST":
        sim.expire_tokens()
        raise _Reply(204)
    raise _error(404, "resource.not.found", "No such simulator control")
