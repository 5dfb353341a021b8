"""Response wrapping, for a secure introduction: `vault-zpa wrap` has Vault put one group's
secret (or a new AppRole secret-id) behind a single-use token, and `vault-zpa fetch
--wrapped-token-file` redeems that token on a host that holds no other Vault credential.

What this relies on, as OpenBao 2.x (and Vault) behave; tests/test_wrapping.py proves each
point on a real OpenBao:

- A request sent with `X-Vault-Wrap-TTL` is answered with `wrap_info` only (token, accessor,
  ttl, creation_time, creation_path). `creation_path` is the request's path, without the query
  and relative to the namespace: `secret/data/zpa/CONNECTOR_GRP/<slug>` for a KV v2 read,
  `secret/zpa/...` on KV v1, `auth/approle/role/<role>/secret-id` for a secret-id.
- `sys/wrapping/lookup` with the token in the body needs no Vault token and leaves the wrapping
  token usable. So the recipient checks *what* it was handed before using it up, and a token
  that wraps anything else is refused while it stays good for whoever it was meant for.
- A wrapping token sent as `X-Vault-Token` to any endpoint but `sys/wrapping/unwrap` (even one
  that denies it, such as `auth/token/lookup-self`) is used up. The recipient therefore never
  gives it to a token manager (which looks its token up, and does so again after a 403): its
  connection holds no token at all (`NoToken`), and only the one unwrap carries the wrapping
  token, and is not retried (a retried unwrap whose first answer was lost would read as
  "already unwrapped").
- Vault wraps an error answer too: a KV v2 read of a deleted or destroyed version, or a KV v1
  path read on a KV v2 mount, is wrapped with its 404, and only the unwrap (which spends the
  token) shows it. So what the recipient can know beforehand, it checks: the mount's KV version
  comes from VAULT_ZPA_KV_VERSION, else from Vault's unauthenticated `sys/internal/ui/mounts`
  listing, which names only mounts tuned `listing_visibility=unauth` (`.../mounts/<mount>` needs
  a token; the recipient has none); when neither says, both layouts' paths are accepted, and an
  error answer after the unwrap is one line (exit 2) saying what Vault answered.
- Two group names can share a path ('A B' and 'A-B'), so a creation path cannot tell which of
  them a token was made for. `wrap --output json` records the group, and a recipient handed
  that document refuses another group's token before unwrapping it; a bare token carries no
  such record, so the secret's own group fields are only seen after the unwrap.
- A used, an expired and a never-issued token get the same answer (400 "wrapping token is not
  valid or does not exist"). When the handover says when the token expires (the JSON that
  `wrap --output json` prints, or the vault CLI's `wrap_info`), or a lookup just saw it alive,
  the message tells "expired" from "already unwrapped by someone else".
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import hvac
import hvac.exceptions

from vault_zpa.errors import ConfigError, VaultError, VaultMountError, VaultUnavailable
from vault_zpa.masking import REDACTOR, Secret
from vault_zpa.model import StoredSecret
from vault_zpa.vault.auth import Login
from vault_zpa.vault.connection import VaultConnection
from vault_zpa.vault.kv import V1_META_PREFIX

MIN_TTL = 1  # Vault counts a wrapping TTL in whole seconds
MAX_TTL = 24 * 3600  # a token that waits longer than a day for its host is a standing secret
MAX_TOKEN_FILE = 64 * 1024  # a token (or wrap's JSON) is well under 1 KiB
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9._-]{8,1024}")
# Vault's own rule for AppRole role names (framework.GenericNameRegex): no '/' or '..' in a path.
ROLE_NAME = re.compile(r"\w(?:[\w.-]*\w)?")
INVALID = "wrapping token is not valid or does not exist"
# Near its expiry, "expired" and "already unwrapped" cannot be told apart across two clocks.
CLOCK_SLACK = 30.0
ENV = "VAULT_WRAPPED_TOKEN"
# What `wrap --output json` records about the token's purpose; a recipient refuses a token
# whose record contradicts its own flags before unwrapping it (a record only ever refuses).
CLAIMS = ("association_type", "group_name", "group_id", "unwraps_to")
SPENT = "the wrapping token is now spent"


class WrappedTokenRefused(VaultError):
    """The wrapping token cannot or must not be redeemed: already unwrapped, expired, unknown
    to Vault, or wrapping something other than what this host expects. Exit 2: only a new
    token, which a person issues, fixes it."""

    exit_code = 2


# -- the issuing side (`vault-zpa wrap`) -------------------------------------------------


@dataclass(frozen=True)
class Wrapped:
    """What `wrap` hands out: the single-use token and facts about it, never what it wraps."""

    token: Secret
    accessor: str
    ttl: int
    creation_time: str
    creation_path: str

    @property
    def expires_at(self) -> str:
        created = parse_time(self.creation_time)
        return stamp(created + timedelta(seconds=self.ttl)) if created else ""

    def facts(self) -> dict[str, Any]:
        """The JSON of `wrap --output json` (with `token` revealed: handing it out is the
        point); `fetch --wrapped-token-file` reads this document as it is."""
        return {
            "token": self.token.reveal(),
            "accessor": self.accessor,
            "ttl": self.ttl,
            "creation_time": self.creation_time,
            "expires_at": self.expires_at,
            "creation_path": self.creation_path,
        }


def check_ttl(seconds: float) -> int:
    """--ttl as Vault takes it: whole seconds, 1 s to 24 h (parse_duration has the bounds)."""
    if seconds != int(seconds) or seconds < MIN_TTL:
        raise ConfigError(f"--ttl: must be whole seconds, at least 1s (got {seconds:g}s)")
    return int(seconds)


def check_role(role: str) -> str:
    if not ROLE_NAME.fullmatch(role) or len(role) > 256:
        raise ConfigError(
            f"--approle-role {role[:64]!r} is not an AppRole role name "
            "(letters, digits, '_', '-', '.', not at either end)"
        )
    return role


def wrap_kv_read(
    conn: VaultConnection, *, mount: str, path: str, kv_version: int, version: int, ttl: int
) -> Wrapped:
    """GET <mount>/data/<path>?version=N (KV v2; <mount>/<path> on v1) with X-Vault-Wrap-TTL:
    the version that was just checked to be this group's is the one wrapped, whatever is
    written after."""
    if kv_version == 2:
        full = f"{mount}/data/{path}"
        params: dict[str, Any] = {"version": version} if version else {}
    else:
        full, params = f"{mount}/{path}", {}

    def read(c: hvac.Client) -> Any:
        return c.adapter.get(f"/v1/{full}", params=params, wrap_ttl=f"{ttl}s")

    try:
        body = conn.call(read, path=full, capability="read", kind="read")
    except hvac.exceptions.InvalidPath:
        raise VaultError(
            f"{full} disappeared between reading and wrapping it", hint="run wrap again"
        ) from None
    return _wrapped(body, full)


def wrap_secret_id(conn: VaultConnection, *, approle_mount: str, role: str, ttl: int) -> Wrapped:
    """POST auth/<mount>/role/<role>/secret-id with X-Vault-Wrap-TTL: a new secret-id that
    nobody sees but whoever unwraps it."""
    full = f"auth/{approle_mount}/role/{check_role(role)}/secret-id"

    def create(c: hvac.Client) -> Any:
        return c.adapter.post(f"/v1/{full}", wrap_ttl=f"{ttl}s")

    try:
        body = conn.call(create, path=full, capability="update", kind="write")
    except hvac.exceptions.InvalidPath:  # 404: no such role, or no AppRole mount there
        raise ConfigError(
            f"Vault has no AppRole role {role!r} at auth/{approle_mount}",
            hint="check --approle-role and VAULT_ZPA_APPROLE_MOUNT (`bao list "
            f"auth/{approle_mount}/role`)",
        ) from None
    return _wrapped(body, full)


def _wrapped(body: Any, full: str) -> Wrapped:
    info = body.get("wrap_info") if isinstance(body, dict) else None
    if not isinstance(info, dict) or not info.get("token"):
        # Never shown: an unwrapped answer holds the secret itself.
        raise VaultError(
            f"Vault answered {full} without wrapping the response",
            hint="is a proxy or agent between here and Vault dropping the X-Vault-Wrap-TTL "
            "header? point VAULT_ADDR at Vault itself",
        )
    token = str(info["token"])
    REDACTOR.register(token)
    return Wrapped(
        token=Secret(token),
        accessor=str(info.get("accessor") or ""),
        ttl=int(info.get("ttl") or 0),
        creation_time=str(info.get("creation_time") or ""),
        creation_path=str(info.get("creation_path") or ""),
    )


# -- the receiving side (`vault-zpa fetch --wrapped-token-file`) ---------------------------


@dataclass(frozen=True)
class WrappedToken:
    """A wrapping token handed to this host, and when it expires if the handover says so
    (only used to word an error; Vault alone decides whether the token is good)."""

    token: Secret
    source: str
    expires_at: datetime | None = None
    # What the handover says the token was made for (wrap's JSON only); never trusted to
    # accept anything, only to refuse before unwrapping.
    claims: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NoToken:
    """The recipient's Vault 'login': no token at all. `sys/wrapping/lookup` needs none, and
    the unwrap carries the wrapping token itself, in that one request only."""

    describe: str = "no token (a wrapping token's recipient)"

    def login(self, client: hvac.Client) -> Login:
        return Login(Secret(""), 0.0, False)


def read_token_file(path: str) -> WrappedToken:
    """The token file, strictly: at most 64 KiB of UTF-8 text holding the token alone (blank
    lines and spaces around it are fine), or the JSON `vault-zpa wrap --output json` printed,
    or the vault CLI's `-format=json` answer with `wrap_info`. Its content is never shown.

    A regular file only: opened with O_NONBLOCK, so a FIFO with no writer is refused at once
    instead of waiting forever, and its type checked on the open file (fstat), so a device or a
    directory is refused too. A symbolic link is followed (a Kubernetes secret volume and
    /run/secrets are links), and what it leads to must be a regular file as well."""
    source = f"the wrapped token file {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror}") from None
    chunks: list[bytes] = []
    size = 0
    try:
        kind = os.fstat(fd).st_mode
        if not stat.S_ISREG(kind):
            raise ConfigError(
                f"{source} is not a regular file ({_kind(kind)}): not a wrapping token",
                hint="write the token (or wrap's JSON) to a file and pass that",
            )
        while size <= MAX_TOKEN_FILE:
            chunk = os.read(fd, MAX_TOKEN_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > MAX_TOKEN_FILE:
        raise ConfigError(f"{source} is larger than 64 KiB: not a wrapping token")
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source} is not text: not a wrapping token") from None
    return parse_token(text, source=source)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def parse_token(text: str, *, source: str) -> WrappedToken:
    value = text.strip()
    if not value:
        raise ConfigError(
            f"{source} is empty", hint="it should hold the token `vault-zpa wrap` printed"
        )
    expires: datetime | None = None
    token: object = value
    claims: dict[str, str] = {}
    if value.startswith("{"):
        try:
            document = json.loads(value)
        except ValueError:
            raise ConfigError(f"{source} starts like JSON but is not valid JSON") from None
        token, expires = _from_document(document)
        claims = _claims(document)
    if not isinstance(token, str) or not TOKEN_SHAPE.fullmatch(token):
        raise ConfigError(
            f"{source} does not hold a wrapping token",
            hint="it should hold the token alone, or the JSON `vault-zpa wrap --output json` "
            "prints",
        )
    REDACTOR.register(token)
    return WrappedToken(Secret(token), source, expires, claims)


def _from_document(document: object) -> tuple[object, datetime | None]:
    """`wrap --output json` (token, expires_at) or the vault CLI's answer (wrap_info: token,
    creation_time, ttl)."""
    if not isinstance(document, dict):
        return None, None
    info = document.get("wrap_info")
    info = info if isinstance(info, dict) else document
    expires = parse_time(str(info.get("expires_at") or ""))
    if expires is None:
        created = parse_time(str(info.get("creation_time") or ""))
        ttl = info.get("ttl")
        if created is not None and isinstance(ttl, int) and not isinstance(ttl, bool):
            expires = created + timedelta(seconds=ttl)
    return info.get("token"), expires


def _claims(document: object) -> dict[str, str]:
    """wrap's record of what the token is for (its JSON's top level: the vault CLI's answer
    has none of these)."""
    if not isinstance(document, dict):
        return {}
    return {
        name: document[name]
        for name in CLAIMS
        if isinstance(document.get(name), str) and document[name]
    }


_UNWRAPS_TO = {
    "provisioning_key": "a provisioning key",
    "approle_secret_id": "an AppRole secret-id",
}


def check_claims(
    token: WrappedToken,
    *,
    association_type: str,
    group: str,
    group_id: str | None,
    unwraps_to: str,
) -> None:
    """Refuse, before anything is asked of Vault, a token whose handover (wrap's JSON) says
    it was made for another group or for the other kind of secret. Two group names may share
    a path ('A B' and 'A-B'), so this record is the only thing that tells them apart before
    the unwrap; a bare token has none, and is checked after it."""
    claims = token.claims
    their_type, their_group = claims.get("association_type"), claims.get("group_name")
    if their_type not in (None, association_type) or their_group not in (None, group):
        made = (
            f"{their_type or association_type} group {their_group!r}"
            if their_group is not None
            else f"a {their_type} group"
        )
        raise WrappedTokenRefused(
            f"{token.source} says the token was made for {made}, not {association_type} "
            f"group {group!r}; refused without unwrapping it",
            hint="pass the --association-type and --group that `vault-zpa wrap` was given, or "
            "ask for a token made for this group; the token is left unused for its own host",
        )
    theirs = claims.get("group_id")
    if group_id and theirs is not None and theirs != group_id:
        raise WrappedTokenRefused(
            f"{token.source} says the token was made for group id {theirs}, not --group-id "
            f"{group_id}; refused without unwrapping it",
            hint="check --group-id (`vault-zpa sync --output json` lists the ids); the token "
            "is left unused for its own host",
        )
    kind = claims.get("unwraps_to")
    if kind is not None and kind != unwraps_to:
        raise WrappedTokenRefused(
            f"{token.source} says the token unwraps to {_UNWRAPS_TO.get(kind, repr(kind))}, "
            f"not {_UNWRAPS_TO[unwraps_to]}; refused without unwrapping it",
            hint="a secret-id token goes with `fetch --approle-role NAME`, a key token without it",
        )


@dataclass(frozen=True)
class Lookup:
    """What `sys/wrapping/lookup` says about a live wrapping token."""

    creation_path: str
    creation_ttl: int
    creation_time: str

    @property
    def expires_at(self) -> datetime | None:
        created = parse_time(self.creation_time)
        return created + timedelta(seconds=self.creation_ttl) if created else None


def lookup(conn: VaultConnection, token: WrappedToken) -> Lookup | None:
    """POST sys/wrapping/lookup with the token in the body and no X-Vault-Token: what the
    token wraps, without using it up. None when Vault does not know it (used, expired, never
    issued)."""

    def ask(c: hvac.Client) -> Any:
        try:
            return c.adapter.post("/v1/sys/wrapping/lookup", json={"token": token.token.reveal()})
        except hvac.exceptions.InvalidRequest as exc:
            if _says_invalid(exc):
                return None
            raise

    body = conn.call(ask, path="sys/wrapping/lookup", capability="update", kind="sys")
    if body is None:
        return None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise VaultError("Vault's answer to sys/wrapping/lookup has no data")
    return Lookup(
        creation_path=str(data.get("creation_path") or ""),
        creation_ttl=int(data.get("creation_ttl") or 0),
        creation_time=str(data.get("creation_time") or ""),
    )


def check(
    found: Lookup | None, token: WrappedToken, *, expected: Sequence[str], what: str
) -> Lookup:
    """Refuse, before unwrapping, a token Vault does not know, one that wraps anything but
    `expected`, and one made to live longer than a day."""
    if found is None:
        raise spent(token, None)
    if found.creation_path not in expected:
        raise WrappedTokenRefused(
            f"the wrapping token wraps the answer to {found.creation_path!r}, not {what} "
            f"({expected[0]}); refused without unwrapping it",
            hint="someone may be handing this host another secret; the token is left unused "
            "for whoever it was meant for. Ask for a token made by `vault-zpa wrap` for this "
            "group",
        )
    if found.creation_ttl > MAX_TTL:
        raise WrappedTokenRefused(
            f"the wrapping token was made to live {found.creation_ttl}s, more than 24 hours; "
            "refused without unwrapping it",
            hint="wrap with --ttl 24h or less",
        )
    return found


def unwrap(conn: VaultConnection, token: WrappedToken, *, wrapped: str) -> dict[str, Any] | None:
    """POST sys/wrapping/unwrap with the wrapping token as X-Vault-Token, the one request that
    carries it: the wrapped answer, once. None when Vault no longer knows the token. Not
    retried (the connection's retry budget is 0 for this call): a second try after a lost
    answer would find the token used and read as an interception. An error answer (Vault
    wraps a read's 404 as readily as its 200; `wrapped` is that read's path) is one line, exit
    2: the token is spent on it, and only a new one helps."""

    def redeem(c: hvac.Client) -> Any:
        try:
            return c.adapter.post(
                "/v1/sys/wrapping/unwrap", headers={"X-Vault-Token": token.token.reveal()}
            )
        except hvac.exceptions.InvalidRequest as exc:
            if _says_invalid(exc):
                return None
            return _Failed(exc)
        except _TRANSIENT:
            raise  # the connection's VaultUnavailable: the unwrap may not have happened
        except hvac.exceptions.VaultError as exc:
            # Caught here, not by the connection: it would answer a 403 by looking up a token
            # this connection does not have and then trying the unwrap again.
            return _Failed(exc)

    budget, conn.retry_budget = conn.retry_budget, 0.0
    try:
        body = conn.call(redeem, path="sys/wrapping/unwrap", capability="update", kind="sys")
    except VaultUnavailable as exc:
        if not exc.retryable:
            raise
        raise VaultUnavailable(
            f"{exc.message}; the unwrap may or may not have happened",
            hint="run fetch again; if it then says the token was already unwrapped, ask for "
            "a new token",
        ) from None
    finally:
        conn.retry_budget = budget
    if body is None:
        return None
    if isinstance(body, _Failed):
        raise _error_answer(body.exc, wrapped)
    if not isinstance(body, dict):
        raise VaultError("Vault's answer to sys/wrapping/unwrap is not JSON")
    return body


_TRANSIENT = (
    hvac.exceptions.VaultDown,
    hvac.exceptions.InternalServerError,
    hvac.exceptions.BadGateway,
    hvac.exceptions.RateLimitExceeded,
    hvac.exceptions.UnexpectedError,
)
_STATUS = {
    hvac.exceptions.InvalidRequest: 400,
    hvac.exceptions.Unauthorized: 401,
    hvac.exceptions.Forbidden: 403,
    hvac.exceptions.InvalidPath: 404,
    hvac.exceptions.UnsupportedOperation: 405,
    hvac.exceptions.PreconditionFailed: 412,
}
_V1_ON_V2 = "Invalid path for a versioned K/V secrets engine"


@dataclass(frozen=True)
class _Failed:
    exc: hvac.exceptions.VaultError


def _error_answer(exc: hvac.exceptions.VaultError, wrapped: str) -> WrappedTokenRefused:
    """The one line for an unwrap that returned an error status. A 404 can only be the wrapped
    read's (sys/wrapping/unwrap itself always exists): say which 404 it was, from what Vault
    sends with it (a KV v2 version's metadata, the v1-path warning); never its data."""
    status = _STATUS.get(type(exc))
    body = exc.json if isinstance(exc.json, dict) else {}
    if status == 404:
        data = _mapping(body.get("data"))
        meta = _mapping(data.get("metadata"))
        warnings = " ".join(str(w) for w in body.get("warnings") or [])
        if _V1_ON_V2 in warnings:
            what = "a KV v1 read of a KV v2 mount (`bao read`, not `bao kv get`)"
            fix = "ask for a token made by `vault-zpa wrap`"
        elif meta.get("destroyed") or meta.get("deletion_time"):
            version = meta.get("version") or "?"
            deleted = parse_time(str(meta.get("deletion_time") or ""))
            when = f" at {stamp(deleted)}" if deleted else ""
            gone = "destroyed" if meta.get("destroyed") else f"deleted{when}"
            what = f"its version {version} had been {gone}"
            fix = (
                "restore the group's secret (`vault-zpa sync` writes it again; `bao kv "
                "undelete` brings back a deleted version), then ask for a new token "
                "(`vault-zpa wrap` reads it live first)"
            )
        else:
            what = f"no secret at {wrapped!r} when the token was made"
            fix = "run `vault-zpa sync`, then ask for a new token"
        return WrappedTokenRefused(
            f"the wrapping token held Vault's 404 for {wrapped!r}: {what}; nothing was "
            f"written, and {SPENT}",
            hint=fix,
        )
    errors = "; ".join(str(e) for e in (exc.errors or []))[:200] or type(exc).__name__
    return WrappedTokenRefused(
        f"Vault answered the unwrap of {wrapped!r} with "
        f"{status or 'an error'} ({errors}); nothing was written, and the wrapping token is "
        "most likely spent",
        hint="ask for a new token",
    )


def spent(
    token: WrappedToken, valid_until: datetime | None, *, now: datetime | None = None
) -> WrappedTokenRefused:
    """The one line for a token Vault does not know: expired, or already unwrapped (someone
    else redeemed it: an interception), when the expiry is known; both otherwise."""
    now = now or datetime.now(UTC)
    until = valid_until or token.expires_at
    if until is not None:
        left = (until - now).total_seconds()
        if left <= 0:
            return WrappedTokenRefused(
                f"the wrapping token expired at {stamp(until)}; nothing was unwrapped",
                hint="ask for a new one (`vault-zpa wrap --ttl` long enough for the host to start)",
            )
        if left > CLOCK_SLACK:
            return WrappedTokenRefused(
                f"the wrapping token was already unwrapped (it was valid until {stamp(until)}): "
                "if this host did not unwrap it, it was intercepted",
                hint=_EXPOSED,
            )
    return WrappedTokenRefused(
        "the wrapping token is not valid: already unwrapped, expired, or never issued by this "
        "Vault; if it had not expired and this host did not unwrap it, it was intercepted",
        hint=_EXPOSED,
    )


_EXPOSED = (
    "treat what it wrapped as exposed: rotate the group's key (`vault-zpa rotate`) or destroy "
    "the AppRole secret-id, look for its accessor (wrap printed it) in Vault's audit log, and "
    "ask for a new token"
)


def kv_versions(conn: VaultConnection, *, mount: str, configured: str) -> tuple[int, ...]:
    """The KV versions the mount may be, as far as a host with no token can know:
    VAULT_ZPA_KV_VERSION, else Vault's unauthenticated listing (mounts tuned
    `listing_visibility=unauth` only), else both. A pinned version the listing contradicts
    is refused (exit 2), as `fetch` with a token refuses it."""
    listed = listed_kv_version(conn, mount)
    if configured != "auto":
        pinned = int(configured)
        if listed is not None and listed != pinned:
            raise VaultMountError(
                f"VAULT_ZPA_KV_VERSION={pinned}, but the mount {mount!r} is KV v{listed}; the "
                "wrapped token was not used",
                hint=f"unset VAULT_ZPA_KV_VERSION or set it to {listed}",
            )
        return (pinned,)
    return (listed,) if listed is not None else (2, 1)


def listed_kv_version(conn: VaultConnection, mount: str) -> int | None:
    """GET sys/internal/ui/mounts with no token: the KV version of `mount` if Vault lists it
    to anyone (`listing_visibility=unauth`), else None. `sys/internal/ui/mounts/<mount>`, the
    preflight `fetch` uses with a token, is denied without one."""

    def ask(c: hvac.Client) -> Any:
        return c.adapter.get("/v1/sys/internal/ui/mounts")

    try:
        body = conn.call(ask, path="sys/internal/ui/mounts", capability="read", kind="sys")
    except VaultUnavailable:
        raise  # the lookup next would fail the same way
    except (VaultError, hvac.exceptions.VaultError):
        return None
    data = body.get("data", body) if isinstance(body, dict) else {}
    secret = data.get("secret") if isinstance(data, dict) else None
    entry = secret.get(mount.strip("/") + "/") if isinstance(secret, dict) else None
    if not isinstance(entry, dict) or entry.get("type") not in ("kv", "generic"):
        return None
    options = _mapping(entry.get("options"))
    return 2 if str(options.get("version") or "1") == "2" else 1


def expected_kv_paths(
    *, mount: str, paths: Sequence[str], versions: Sequence[int], namespace: str | None
) -> dict[str, tuple[str, int]]:
    """creation_path -> (path under the mount, KV version), for each place sync may hold the
    group's secret in each layout of `versions` (kv_versions). A configured namespace may show
    in front of the path too."""
    out: dict[str, tuple[str, int]] = {}
    for path in paths:
        for version in versions:
            full = f"{mount}/data/{path}" if version == 2 else f"{mount}/{path}"
            out[full] = (path, version)
            if namespace and namespace.strip("/"):
                out[f"{namespace.strip('/')}/{full}"] = (path, version)
    return out


def redeem_kv(
    conn: VaultConnection,
    token: WrappedToken,
    *,
    mount: str,
    paths: Sequence[str],
    kv_version: str,
    namespace: str | None,
    what: str,
) -> StoredSecret:
    """Learn what can be learnt of the mount's KV version, look up, check, unwrap: the group's
    secret as the wrapped KV read returned it. A read of the group's path in the layout the
    mount is known not to have is refused before unwrapping (Vault would answer it 404)."""
    versions = kv_versions(conn, mount=mount, configured=kv_version)
    expected = expected_kv_paths(mount=mount, paths=paths, versions=versions, namespace=namespace)
    found = lookup(conn, token)
    if found is not None and found.creation_path not in expected:
        others = [v for v in (2, 1) if v not in versions]
        layout = expected_kv_paths(mount=mount, paths=paths, versions=others, namespace=namespace)
        if found.creation_path in layout:
            raise WrappedTokenRefused(
                f"the wrapping token wraps a KV v{layout[found.creation_path][1]} read "
                f"({found.creation_path!r}), but the mount {mount!r} is KV v{versions[0]}; "
                "refused without unwrapping it",
                hint="Vault would have answered that read 404. Ask for a token made by "
                "`vault-zpa wrap` (or `bao kv get -wrap-ttl`); this one is left unused",
            )
    found = check(found, token, expected=list(expected), what=what)
    body = unwrap(conn, token, wrapped=found.creation_path)
    if body is None:  # alive a moment ago: someone unwrapped it in between, or it just expired
        raise spent(token, found.expires_at)
    path, version = expected[found.creation_path]
    return _stored(body, path, version, found.creation_path)


def redeem_secret_id(
    conn: VaultConnection,
    token: WrappedToken,
    *,
    approle_mount: str,
    role: str,
) -> Secret:
    """Look up, check, unwrap: the AppRole secret-id the token wraps."""
    full = f"auth/{approle_mount}/role/{check_role(role)}/secret-id"
    found = check(
        lookup(conn, token), token, expected=[full], what=f"a secret-id of AppRole role {role!r}"
    )
    body = unwrap(conn, token, wrapped=full)
    if body is None:
        raise spent(token, found.expires_at)
    secret_id = (body.get("data") or {}).get("secret_id")
    if not isinstance(secret_id, str) or not secret_id:
        raise WrappedTokenRefused(
            f"the wrapped answer of {full} holds no secret_id; {SPENT}",
            hint="ask for a new token",
        )
    REDACTOR.register(secret_id)
    return Secret(secret_id)


def _stored(body: Mapping[str, Any], path: str, version: int, full: str) -> StoredSecret:
    payload = body.get("data")
    if version == 2 and isinstance(payload, dict):
        meta = payload.get("metadata") or {}
        payload = payload.get("data")
    else:
        meta = {}
    if not isinstance(payload, dict) or not payload:
        raise WrappedTokenRefused(
            f"the wrapped answer of {full} holds no data (the version was deleted?); {SPENT}",
            hint="ask for a new token",
        )
    raw = _strings(payload)
    key = raw.get("provisioning_key")
    if key:
        REDACTOR.register(key)
    if version == 2:
        custom = meta.get("custom_metadata") if isinstance(meta, dict) else None
        return StoredSecret(
            path=path,
            version=int((meta or {}).get("version") or 0),
            data=raw,
            custom_metadata=_strings(custom or {}),
        )
    data = {k: v for k, v in raw.items() if not k.startswith(V1_META_PREFIX) and k != "ttl"}
    facts = {k[len(V1_META_PREFIX) :]: v for k, v in raw.items() if k.startswith(V1_META_PREFIX)}
    return StoredSecret(path=path, version=0, data=data, custom_metadata=facts)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _strings(value: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def _says_invalid(exc: hvac.exceptions.VaultError) -> bool:
    return any(INVALID in str(e) for e in (exc.errors or []))


# -- times ---------------------------------------------------------------------------------

_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)")


def parse_time(text: str) -> datetime | None:
    """RFC 3339 as Vault writes it, with up to nanoseconds (fromisoformat takes micro)."""
    match = _RFC3339.fullmatch(text.strip())
    if not match:
        return None
    fraction = (match.group(2) or "")[:7]
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    try:
        return datetime.fromisoformat(match.group(1) + fraction + zone)
    except ValueError:
        return None


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_ttl(seconds: int) -> str:
    """900 -> '15m', 5400 -> '1h30m', 45 -> '45s'."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{secs}s" if secs or not text else "")
