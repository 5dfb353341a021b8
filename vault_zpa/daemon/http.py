"""The daemon's listener.

GET  /healthz             alive
GET  /readyz              200 or 503, with the reason (engine.readiness)
GET  /metrics             Prometheus text
POST /v1/sync             a run now; full read-back unless the body says {"full": false}
POST /v1/rotate           {"association_type", "groups" | "all_due", "dry_run", "grace"}: 202 with
                          an id, 409 on a standby, 503 when too many requests wait
GET  /v1/requests/<id>    that request: queued | running | done | failed, per-group outcomes

Bound to anything but loopback, the POSTs and /v1/requests need `Authorization: Bearer <token>`.
The listener is bounded before any authentication: a missing-or-bad `Content-Length` (negative,
not a number, several) is a 400 and one over `max_body` a 413, answered before a body byte is
read; every socket read or write times out after `http_timeout`; at most `max_connections`
connections hold a handler thread, the rest get a 503 and are closed at once.
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest

from vault_zpa.config import MAX_GRACE, parse_duration_or_zero
from vault_zpa.daemon.requests import QueueFull
from vault_zpa.masking import Secret
from vault_zpa.model import AssociationType

log = logging.getLogger("vault_zpa.daemon")

_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_REQUEST_PATH = re.compile(r"/v1/requests/(?P<id>[0-9a-f]{1,64})")
_ROTATE_FIELDS = ("association_type", "groups", "all_due", "dry_run", "grace")
_ROTATE_KNOWN = ", ".join(_ROTATE_FIELDS)


class NotLeader(Exception):
    """This replica does not hold the leader lease; the message says who does."""


class Owner(Protocol):
    """What the handler asks of the daemon."""

    api_token: Secret | None
    max_body: int
    registry: CollectorRegistry

    def readiness(self) -> tuple[bool, dict[str, Any]]: ...

    def request_sync(self, full: bool = True) -> bool: ...

    def request_rotation(
        self,
        pairs: frozenset[tuple[AssociationType, str]],
        *,
        types: frozenset[AssociationType],
        all_due: bool,
        dry_run: bool,
        grace: float | None,
    ) -> dict[str, Any]: ...

    def request_status(self, request_id: str) -> dict[str, Any] | None: ...


def parse_listen(value: str) -> tuple[str, int]:
    from vault_zpa.errors import ConfigError

    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen {value!r} must be HOST:PORT", hint="e.g. 127.0.0.1:9850")
    return host, int(port)


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


def parse_rotate(body: bytes) -> dict[str, Any]:
    """The arguments of request_rotation from a POST /v1/rotate body, or a ValueError."""
    try:
        request = json.loads(body or b"{}")
    except RecursionError:
        raise ValueError("the body is nested too deeply to be a rotate request") from None
    except ValueError:
        raise ValueError("the body must be JSON") from None
    if not isinstance(request, dict):
        raise ValueError("the body must be a JSON object")
    unknown = sorted(str(k) for k in request if k not in _ROTATE_FIELDS)
    if unknown:  # a typo such as "dryrun": true must not turn into a real rotation
        raise ValueError(f"unknown field(s) {', '.join(unknown)[:100]}; known: {_ROTATE_KNOWN}")
    atype = request.get("association_type")
    groups = request.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise ValueError("groups must be a list of group names")
    flags = {name: request.get(name, False) for name in ("all_due", "dry_run")}
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be true or false")
    if bool(groups) == flags["all_due"]:
        raise ValueError("give groups (with association_type) or all_due, not both or neither")
    if (groups or atype is not None) and atype not in {t.value for t in AssociationType}:
        raise ValueError("association_type must be CONNECTOR_GRP or SERVICE_EDGE_GRP")
    return {
        "pairs": frozenset((AssociationType(str(atype)), g) for g in groups),
        "types": frozenset({AssociationType(str(atype))} if atype is not None else ()),
        "all_due": flags["all_due"],
        "dry_run": flags["dry_run"],
        "grace": parse_grace(request.get("grace")),
    }


def parse_sync(body: bytes) -> bool:
    """`full` of POST /v1/sync: true unless the body says {"full": false}."""
    if not body:
        return True
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError('the body must be empty or a JSON object such as {"full": true}') from None
    if not isinstance(request, dict) or not isinstance(request.get("full", True), bool):
        raise ValueError('the body must be empty or a JSON object such as {"full": true}')
    return bool(request.get("full", True))


class Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with a cap on handler threads: a connection past the cap is answered
    503 without blocking and closed, so idle or slow clients cannot pile up threads."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[Handler], *, max_connections: int
    ) -> None:
        self._slots = threading.BoundedSemaphore(max(1, max_connections))
        if ":" in address[0]:  # an IPv6 literal ([::1]:9850): the class default is IPv4 only
            self.address_family = socket.AF_INET6
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


class Handler(BaseHTTPRequestHandler):
    owner: Owner
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

    def _json(self, status: int, data: dict[str, Any]) -> None:
        self._send(status, json.dumps(data).encode())

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
        limit = self.owner.max_body
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

    def _authorized(self) -> bool:
        token = self.owner.api_token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        if secrets.compare_digest(given.encode(), f"Bearer {token.reveal()}".encode()):
            return True
        self._json(401, {"error": "a valid bearer token is required"})
        return False

    def do_GET(self) -> None:
        if "Transfer-Encoding" in self.headers or self.headers.get(
            "Content-Length", "0"
        ).strip() not in ("", "0"):
            self.close_connection = True  # a GET body is never read: do not parse it as a request
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._json(200, {"status": "ok"})
        elif path == "/readyz":
            ready, body = self.owner.readiness()
            self._json(200 if ready else 503, body)
        elif path == "/metrics":
            self._send(
                200,
                generate_latest(self.owner.registry),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        elif (match := _REQUEST_PATH.fullmatch(path)) is not None:
            if not self._authorized():
                return
            found = self.owner.request_status(match["id"])
            if found is None:
                self._json(404, {"error": "no such request (unknown, or too old to be kept)"})
            else:
                self._json(200, found)
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = self._body()
        if body is None:
            return
        if self.path not in ("/v1/sync", "/v1/rotate"):
            self._json(404, {"error": "not found"})
            return
        if not self._authorized():
            return
        try:
            if self.path == "/v1/rotate":
                self._json(202, self.owner.request_rotation(**parse_rotate(body)))
                return
            full = parse_sync(body)
        except ValueError as exc:
            self._json(400, {"error": " ".join(str(exc).split())[:200]})
            return
        except NotLeader as exc:
            self._json(409, {"error": str(exc)})
            return
        except QueueFull as exc:
            self._json(503, {"error": f"{exc}; try again later"})
            return
        started = self.owner.request_sync(full)
        self._json(202, {"accepted": True, "started": started, "queued": not started, "full": full})
