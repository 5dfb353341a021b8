"""`vault-zpa doctor`: why a fresh install does not work, in one command. Read-only.

The checks run in order, each on one line with the fix when something is wrong; a check whose
ground is missing (no ZPA sign-in, Vault sealed) is skipped, with the reason:

    config            the configuration parses (flags > environment > file > defaults)
    zpa.address       the ZPA API address answers (any HTTP status)
    zpa.credentials   ZPA accepts the sign-in (legacy API key or OneAPI client)
    zpa.customer_id   ZPA accepts the customer id with that token
    zpa.list.<TYPE>   each configured association type lists (keys and groups counted)
    zpa.microtenant   ZPA_MICROTENANT_ID names a microtenant of the customer (if set)
    vault.address     Vault answers sys/health
    vault.unsealed    ... and is initialized and unsealed
    vault.token       the token (or AppRole/Kubernetes login) is valid; its TTL
    vault.mount       the mount exists, is KV, and its version matches VAULT_ZPA_KV_VERSION
    vault.capabilities  sys/capabilities-self on the prefix grants what the daemon policy
                      (vault_zpa.policy.daemon_policy, rendered in policies/) grants
    vault.leader_lease  the lease path is usable (KV v2, capabilities) and who holds it
    clock             this host's clock against Vault's (the HTTP Date header)

Exit 0: all good (warnings allowed); 1: a check failed; 2: doctor could not run (the
configuration does not parse). Nothing is written to ZPA or Vault: ZPA is only signed in to and
listed; Vault is only read, and asked `sys/capabilities-self` (a query). A Vault login with
AppRole or Kubernetes does make a token, as every run of vault-zpa does. No secret is printed:
messages name settings, never their values.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import click
import httpx
import requests

from vault_zpa import build, layout, logs
from vault_zpa.config import Settings, ZpaSettings, load
from vault_zpa.errors import VaultZpaError, ZpaApiError, ZpaAuthError, ZpaError, ZpaUnavailable
from vault_zpa.masking import REDACTOR, Secret
from vault_zpa.model import AssociationType
from vault_zpa.policy import daemon_policy
from vault_zpa.vault.auth import tls_error
from vault_zpa.vault.connection import TlsSettings
from vault_zpa.vault.kv import detect_kv_version

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
TOKEN_TTL_WARN = 900.0  # seconds; VaultZpaVaultTokenExpiring alerts below this too
SKEW_WARN, SKEW_FAIL = 5.0, 30.0  # seconds between this host's clock and Vault's
PROBE_TIMEOUT = 10.0  # one request of doctor, and the retry budget of the library clients
POLICY_RULE = re.compile(r'path\s+"([^"]+)"\s*\{\s*capabilities\s*=\s*\[([^\]]*)\]', re.S)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str | None = None

    def line(self) -> str:
        text = f"{self.status.upper():<5} {self.name:<25} {self.detail}"
        return text + (f" -- fix: {self.fix}" if self.fix and self.status != OK else "")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def exit_code(checks: list[Check]) -> int:
    if any(c.name == "config" and c.status == FAIL for c in checks):
        return 2
    return 1 if any(c.status == FAIL for c in checks) else 0


def diagnose(
    *,
    config_path: str | None,
    environ: Mapping[str, str],
    flags: Mapping[str, Any] | None = None,
    clock: Callable[[], float] = time.time,
) -> Iterator[Check]:
    """Every check, in order, as it completes."""
    try:
        settings = load(path=config_path, environ=environ, flags=flags)
        zpa = settings.zpa()
    except VaultZpaError as exc:
        yield Check("config", FAIL, f"the configuration does not parse: {exc.message}", exc.hint)
        return
    path = config_path or environ.get("VAULT_ZPA_CONFIG") or None
    yield Check("config", OK, _describe_config(settings, zpa, path))
    yield from zpa_checks(settings, zpa)
    yield from vault_checks(settings, clock)


def _describe_config(settings: Settings, zpa: ZpaSettings, config_path: str | None) -> str:
    vault = settings.vault
    where = f"file {config_path}" if config_path else "no config file"
    return (
        f"configuration parses ({where}; ZPA {zpa.mode} client {zpa.client_id!r}, customer "
        f"{zpa.customer_id}; Vault {vault.addr} via {vault.auth_method}, mount "
        f"{vault.mount!r}, prefix {vault.prefix!r})"
    )


# ---- ZPA ---------------------------------------------------------------------------------


def zpa_checks(settings: Settings, zs: ZpaSettings) -> Iterator[Check]:
    """GET the API address, then sign in and list each configured association type."""
    try:
        with httpx.Client(timeout=min(zs.timeout, PROBE_TIMEOUT)) as http:
            status = http.get(zs.base_url).status_code
        yield Check("zpa.address", OK, f"{zs.base_url} answers (HTTP {status})")
    except httpx.HTTPError as exc:
        yield Check(
            "zpa.address",
            FAIL,
            f"cannot reach {zs.base_url}: {type(exc).__name__}",
            "check ZPA_CLOUD / ZSCALER_CLOUD (or ZPA_BASE_URL), DNS, HTTPS_PROXY and the "
            "firewall; for a private CA set SSL_CERT_FILE",
        )
        for name in _later_zpa_checks(settings, zs):
            yield Check(name, SKIP, "skipped: the ZPA API address does not answer")
        return
    names = {
        "legacy": "ZPA_CLIENT_ID / ZPA_CLIENT_SECRET",
        "oneapi": "ZSCALER_CLIENT_ID / ZSCALER_CLIENT_SECRET (or ZSCALER_PRIVATE_KEY)",
    }[zs.mode]
    quick = dataclasses.replace(zs, retry_budget=min(zs.retry_budget, PROBE_TIMEOUT))
    with build.zpa_client(quick) as client:
        results: dict[AssociationType, list[Any] | Exception] = {}
        for atype in settings.association_types:
            try:
                results[atype] = client.list_provisioning_keys(atype)
            except VaultZpaError as exc:
                results[atype] = exc
            if not _signed_in(client.stats.requests):
                break  # the first sign-in failed: the rest would only repeat it
        signed_in = _signed_in(client.stats.requests)
    first = next(iter(results.values()))
    if not signed_in:
        if isinstance(first, ZpaUnavailable):
            detail, fix = f"the sign-in could not reach ZPA: {first.message}", first.hint
        else:
            detail = f"ZPA refused the sign-in of {zs.mode} client {zs.client_id!r}" + (
                f": {first.message}" if isinstance(first, VaultZpaError) else ""
            )
            fix = (
                f"check {names}: a secret rotated or revoked in ZPA must be updated where "
                "vault-zpa reads it (env or *_FILE)"
            )
        yield Check("zpa.credentials", FAIL, detail, fix)
        for name in _later_zpa_checks(settings, zs)[1:]:
            yield Check(name, SKIP, "skipped: no ZPA sign-in")
        return
    yield Check("zpa.credentials", OK, f"ZPA accepted the sign-in of client {zs.client_id!r}")
    if isinstance(first, ZpaAuthError | ZpaApiError) and _refused(first):
        yield Check(
            "zpa.customer_id",
            FAIL,
            f"ZPA refused customer id {zs.customer_id} for this client: {first.message}",
            "set ZPA_CUSTOMER_ID to the tenant's id (ZPA Admin Portal: Administration > "
            "API Keys shows it) and make sure the API client belongs to that tenant",
        )
        for name in _later_zpa_checks(settings, zs)[2:]:
            yield Check(name, SKIP, "skipped: the customer id is refused")
        return
    tenant_error = next(
        (r for r in results.values() if isinstance(r, VaultZpaError) and _is_tenant(r)), None
    )
    yield Check("zpa.customer_id", OK, f"customer {zs.customer_id} answers")
    for atype in settings.association_types:
        result = results.get(atype)
        if tenant_error is not None:
            yield Check(f"zpa.list.{atype.value}", SKIP, "skipped: the microtenant is unknown")
        elif isinstance(result, list):
            groups = {key.group_id for key in result}
            yield Check(
                f"zpa.list.{atype.value}",
                OK,
                f"{len(result)} provisioning key(s) in {len(groups)} group(s)",
            )
        else:
            error = result if isinstance(result, Exception) else None
            yield Check(
                f"zpa.list.{atype.value}",
                FAIL,
                f"listing {atype.value} provisioning keys failed: "
                + (error.message if isinstance(error, VaultZpaError) else "not attempted"),
                (error.hint if isinstance(error, VaultZpaError) else None)
                or "give the API client read access to provisioning keys, or leave the type "
                "out with VAULT_ZPA_ASSOCIATION_TYPES",
            )
    if zs.microtenant_id is None:
        yield Check("zpa.microtenant", OK, "no microtenant set: every key of the customer")
    elif tenant_error is not None:
        yield Check("zpa.microtenant", FAIL, tenant_error.message, tenant_error.hint)
    else:
        yield Check("zpa.microtenant", OK, f"microtenant {zs.microtenant_id} accepted")


def _later_zpa_checks(settings: Settings, zs: ZpaSettings) -> list[str]:
    return [
        "zpa.credentials",
        "zpa.customer_id",
        *(f"zpa.list.{t.value}" for t in settings.association_types),
        "zpa.microtenant",
    ]


def _signed_in(requests_seen: Mapping[tuple[str, str, str], int]) -> bool:
    return any(
        endpoint == "auth" and status.startswith("2") for (_, endpoint, status) in requests_seen
    )


def _refused(exc: ZpaError) -> bool:
    """401 again right after a fresh sign-in, or 403/404 on the customer's own URL: the token
    is good, but not for this customer."""
    if isinstance(exc, ZpaAuthError):
        return True
    return isinstance(exc, ZpaApiError) and exc.status in (401, 403, 404)


def _is_tenant(exc: VaultZpaError) -> bool:
    return "ZPA_MICROTENANT_ID" in exc.message


# ---- Vault -------------------------------------------------------------------------------


class _Vault:
    """Plain read-only requests to Vault (no retries: doctor reports, it does not wait)."""

    def __init__(self, settings: Settings) -> None:
        vs = settings.vault
        self.addr = vs.addr.rstrip("/")
        self.namespace = vs.namespace
        self.tls = TlsSettings(vs.cacert, vs.capath, vs.client_cert, vs.client_key, vs.skip_verify)
        self.token: Secret | None = None
        self.timeout = min(vs.timeout, PROBE_TIMEOUT)

    def request(
        self, method: str, path: str, *, root: bool = False, **kwargs: Any
    ) -> requests.Response:
        headers: dict[str, str] = {}
        if self.token is not None:
            headers["X-Vault-Token"] = self.token.reveal()
        if self.namespace and not root:
            # sys/health is root-only: in any namespace Vault answers 400 "operation
            # unavailable in namespaces", which said nothing about seal state.
            headers["X-Vault-Namespace"] = self.namespace
        return requests.request(
            method,
            f"{self.addr}/v1/{path}",
            headers=headers,
            timeout=self.timeout,
            verify=self.tls.verify,
            cert=self.tls.cert,
            **kwargs,
        )


def vault_checks(settings: Settings, clock: Callable[[], float]) -> Iterator[Check]:
    vs = settings.vault
    vault = _Vault(settings)
    later = [
        "vault.unsealed",
        "vault.token",
        "vault.mount",
        "vault.capabilities",
        "vault.leader_lease",
        "clock",
    ]
    try:
        health = vault.request(
            "GET",
            "sys/health",
            root=True,
            params={
                "standbyok": "true",
                "perfstandbyok": "true",
                "sealedcode": "200",
                "uninitcode": "200",
            },
        )
        local = clock()
        body = health.json() if health.headers.get("content-type", "").startswith("app") else {}
    except requests.exceptions.SSLError as exc:
        # The same words as sync: https:// to a plain-http listener is not a CA problem.
        tls = tls_error(vs.addr, exc)
        yield Check("vault.address", FAIL, tls.message, tls.hint)
        for name in later:
            yield Check(name, SKIP, "skipped: Vault does not answer")
        return
    except (requests.RequestException, ValueError) as exc:
        yield Check(
            "vault.address",
            FAIL,
            f"cannot reach Vault at {vs.addr}: {type(exc).__name__}",
            "check VAULT_ADDR (scheme, host, port), DNS, proxies and the firewall",
        )
        for name in later:
            yield Check(name, SKIP, "skipped: Vault does not answer")
        return
    if not isinstance(body, dict) or "initialized" not in body or "sealed" not in body:
        # Some other HTTP server (a web server, a proxy's 404 page): not Vault, and nothing
        # it said proves Vault is unsealed.
        yield Check(
            "vault.address",
            FAIL,
            f"{vs.addr} answers HTTP {health.status_code}, but not as Vault or OpenBao "
            "(no sys/health status)",
            "check VAULT_ADDR (host, port, path) and any HTTP proxy in between",
        )
        for name in later:
            yield Check(name, SKIP, "skipped: Vault does not answer")
        return
    version = body.get("version") or "unknown version"
    yield Check("vault.address", OK, f"{vs.addr} answers (version {version})")
    sealed = body.get("sealed") is True or body.get("initialized") is False
    if sealed:
        what = "sealed" if body.get("initialized", True) else "not initialized"
        yield Check(
            "vault.unsealed",
            FAIL,
            f"Vault is {what}",
            "unseal it (`vault operator unseal`, or check auto-unseal) and run doctor again",
        )
        for name in later[1:-1]:
            yield Check(name, SKIP, f"skipped: Vault is {what}")
    else:
        yield Check("vault.unsealed", OK, "initialized and unsealed")
        yield from _token_and_after(settings, vault)
    yield _clock_check(health.headers.get("date"), local)


def _token_and_after(settings: Settings, vault: _Vault) -> Iterator[Check]:
    vs = settings.vault
    later = ["vault.mount", "vault.capabilities", "vault.leader_lease"]
    quick = dataclasses.replace(
        vs, retry_budget=min(vs.retry_budget, PROBE_TIMEOUT), timeout=vault.timeout
    )
    conn = None
    try:
        conn = build.vault_connection(quick)
        vault.token = conn.tokens.current()
        lookup = vault.request("GET", "auth/token/lookup-self")
        if lookup.status_code != 200:
            raise _Refused(f"lookup-self answered HTTP {lookup.status_code}")
        info = lookup.json().get("data") or {}
    except (VaultZpaError, _Refused, requests.RequestException, ValueError) as exc:
        message = exc.message if isinstance(exc, VaultZpaError) else str(exc)
        hint = exc.hint if isinstance(exc, VaultZpaError) else None
        yield Check(
            "vault.token",
            FAIL,
            f"no valid Vault token ({vs.auth_method}): {message}",
            hint
            or "set VAULT_TOKEN (or VAULT_ZPA_TOKEN_FILE) to a live token, or fix the "
            "AppRole/Kubernetes login settings",
        )
        for name in later:
            yield Check(name, SKIP, "skipped: no valid Vault token")
        if conn is not None:
            conn.close()
        return
    try:
        yield _token_check(info)
        version = None
        try:
            version = detect_kv_version(conn, vs.mount)
        except VaultZpaError as exc:
            yield Check("vault.mount", FAIL, exc.message, exc.hint)
        if version is None:
            for name in later[1:]:
                yield Check(name, SKIP, "skipped: the mount is unusable")
            return
        if vs.kv_version != "auto" and int(vs.kv_version) != version:
            yield Check(
                "vault.mount",
                FAIL,
                f"VAULT_ZPA_KV_VERSION={vs.kv_version}, but the mount {vs.mount!r} is KV "
                f"v{version}",
                f"unset VAULT_ZPA_KV_VERSION (vault-zpa detects it) or set it to {version}",
            )
            for name in later[1:]:
                yield Check(name, SKIP, "skipped: the KV version does not match")
            return
        told = "" if vs.kv_version == "auto" else ", as VAULT_ZPA_KV_VERSION says"
        yield Check("vault.mount", OK, f"{vs.mount}/ is KV v{version}{told}")
        yield _capabilities_check(settings, vault, version)
        yield _lease_check(settings, vault, version)
    finally:
        conn.close()


class _Refused(Exception):
    pass


def _token_check(info: Mapping[str, Any]) -> Check:
    ttl = float(info.get("ttl") or 0)
    renewable = bool(info.get("renewable"))
    policies = ", ".join(str(p) for p in info.get("policies") or []) or "none"
    if not ttl:
        return Check("vault.token", OK, f"valid, no expiry (policies: {policies})")
    left = _human(ttl)
    detail = f"valid, {left} left, {'renewable' if renewable else 'not renewable'} ({policies})"
    if ttl < TOKEN_TTL_WARN:
        return Check(
            "vault.token",
            WARN,
            detail,
            "the token expires soon: use a renewable (periodic) token or AppRole/Kubernetes "
            "login, whose tokens the daemon renews",
        )
    return Check("vault.token", OK, detail)


def required_capabilities(*, mount: str, prefix: str, kv_version: int) -> dict[str, frozenset[str]]:
    """What the daemon policy grants, rule by rule: {path pattern: capabilities}."""
    text = daemon_policy(mount=mount, prefix=prefix, kv_version=kv_version).text
    return {
        path: frozenset(c.strip().strip('"') for c in caps.split(",") if c.strip())
        for path, caps in POLICY_RULE.findall(text)
    }


def _probe_path(pattern: str) -> str:
    """A concrete path under a policy pattern: one a synced secret would have."""
    return pattern.replace("*", f"{AssociationType.CONNECTOR_GRP.value}/vault-zpa-doctor")


def _capabilities_of(vault: _Vault, paths: list[str]) -> dict[str, set[str]] | str:
    response = vault.request("POST", "sys/capabilities-self", json={"paths": paths})
    if response.status_code != 200:
        return f"sys/capabilities-self answered HTTP {response.status_code}"
    data = response.json()
    data = data.get("data", data)
    out = {}
    for path in paths:
        caps = set(data.get(path) or (data.get("capabilities") if len(paths) == 1 else []) or [])
        out[path] = caps
    return out


def _lacking(granted: set[str], wanted: frozenset[str]) -> list[str]:
    if "root" in granted:
        return []
    return sorted(wanted - granted)


def _capabilities_check(settings: Settings, vault: _Vault, version: int) -> Check:
    vs = settings.vault
    wanted = required_capabilities(mount=vs.mount, prefix=vs.prefix, kv_version=version)
    probes = {_probe_path(pattern): pattern for pattern in wanted}
    found = _capabilities_of(vault, list(probes))
    if isinstance(found, str):
        return Check(
            "vault.capabilities",
            WARN,
            f"cannot check: {found}",
            'grant update on "sys/capabilities-self" (Vault\'s default policy does)',
        )
    missing = []
    for probe, pattern in probes.items():
        lacking = _lacking(found[probe], wanted[pattern])
        if lacking:
            missing.append(f"{', '.join(lacking)} on {pattern}")
    if missing:
        return Check(
            "vault.capabilities",
            FAIL,
            "the token lacks " + "; ".join(missing),
            "apply the daemon policy (`vault-zpa policy apply`, or policies/vault-zpa-daemon.hcl "
            "rendered for this mount and prefix by `vault-zpa policy render`) to the token",
        )
    return Check(
        "vault.capabilities",
        OK,
        f"the token has what the daemon policy grants on {len(wanted)} path(s) under "
        f"{vs.mount}/ ({vs.prefix}/)",
    )


def _lease_check(settings: Settings, vault: _Vault, version: int) -> Check:
    vs = settings.vault
    if not settings.values.get("daemon.ha", True):
        return Check("vault.leader_lease", OK, "HA is off (VAULT_ZPA_HA=false): no lease")
    path = layout.state_path(vs.prefix, "leader")
    if version != 2:
        return Check(
            "vault.leader_lease",
            FAIL,
            f"the leader lease needs a KV v2 mount; {vs.mount!r} is KV v1",
            "use a KV v2 mount, or run a single daemon with --no-ha (VAULT_ZPA_HA=false)",
        )
    data_path, meta_path = f"{vs.mount}/data/{path}", f"{vs.mount}/metadata/{path}"
    found = _capabilities_of(vault, [data_path, meta_path])
    if isinstance(found, dict):
        missing = [
            f"{', '.join(lacking)} on {p}"
            for p, wanted in (
                (data_path, frozenset({"create", "read", "update"})),
                (meta_path, frozenset({"update"})),
            )
            if (lacking := _lacking(found[p], wanted))
        ]
        if missing:
            return Check(
                "vault.leader_lease",
                FAIL,
                f"the token cannot hold the lease at {vs.mount}/{path}: lacks "
                + "; ".join(missing),
                "apply the daemon policy (`vault-zpa policy apply`)",
            )
    response = vault.request("GET", f"{vs.mount}/data/{path}")
    if response.status_code == 404:
        return Check("vault.leader_lease", OK, f"{vs.mount}/{path}: free (no replica holds it)")
    if response.status_code != 200:
        return Check(
            "vault.leader_lease",
            FAIL,
            f"reading {vs.mount}/{path} answered HTTP {response.status_code}",
            "grant read on it (the daemon policy does)",
        )
    doc = response.json().get("data") or {}
    holder = str((doc.get("data") or {}).get("holder") or "")
    meta = doc.get("metadata") or {}
    # A live lease always has a deletion_time (delete_version_after): only a past one, or no
    # holder, means the lease is free. (Vault answers 404 once it has deleted the version.)
    if not holder or _past(str(meta.get("deletion_time") or "")):
        state = "free (released or lapsed)"
    else:
        until = str(meta.get("deletion_time") or "")
        state = f"held by {holder[:80]!r}, version {meta.get('version')}" + (
            f", lapses at {until[:19]}Z unless renewed" if until else ""
        )
    return Check("vault.leader_lease", OK, f"{vs.mount}/{path}: {state}")


def _past(stamp: str) -> bool:
    """An RFC 3339 time from Vault (nanoseconds, Z) is before now; False when unreadable."""
    if not stamp:
        return False
    try:
        moment = datetime.fromisoformat(stamp[:19] + "+00:00")
    except ValueError:
        return False
    return moment < datetime.now(UTC)


def _clock_check(date: str | None, local: float) -> Check:
    if not date:
        return Check("clock", WARN, "Vault sent no Date header: skew unknown")
    try:
        theirs = parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return Check("clock", WARN, f"Vault's Date header is unreadable: {date[:40]!r}")
    skew = local - theirs  # the header has whole seconds: up to 1 s of it is rounding
    side = "ahead of" if skew > 0 else "behind"
    detail = f"this host is {abs(skew):.0f}s {side} Vault"
    fix = "synchronise this host's clock (chrony, systemd-timesyncd or ntpd) with Vault's"
    if abs(skew) > SKEW_FAIL:
        return Check("clock", FAIL, detail + " (lease and rotation times drift)", fix)
    if abs(skew) > SKEW_WARN:
        return Check("clock", WARN, detail, fix)
    return Check("clock", OK, f"this host and Vault agree within {SKEW_WARN:.0f}s")


def _human(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    return f"{seconds // 60}m{seconds % 60}s"


# ---- the command -------------------------------------------------------------------------


def _safe(text: str) -> str:
    """Through the same redactor as the logs: a value registered as secret never shows."""
    record = logging.LogRecord("vault_zpa.doctor", logging.INFO, __file__, 0, text, None, None)
    REDACTOR.filter(record)
    return record.getMessage()


@click.command()
@click.option(
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text, or JSON for scripts.",
)
@click.option(
    "--config", "config_path", default=None, help="TOML config file (env VAULT_ZPA_CONFIG)."
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default=None,
    help="Log level (env VAULT_ZPA_LOG_LEVEL); default warning.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log format (env VAULT_ZPA_LOG_FORMAT).",
)
@click.pass_context
def doctor(
    ctx: click.Context,
    output: str,
    config_path: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Check configuration, ZPA and Vault, in order; one line each, with the fix. Read-only.

    Exit 0 all good (warnings allowed), 1 a check failed, 2 could not run (the configuration
    does not parse)."""
    logs.setup(
        log_level or "warning",
        log_format or os.environ.get("VAULT_ZPA_LOG_FORMAT", "text") or "text",
    )
    checks = []
    for check in diagnose(
        config_path=config_path,
        environ=os.environ,
        flags={"log.level": log_level, "log.format": log_format},
    ):
        check = dataclasses.replace(
            check,
            detail=_safe(check.detail),
            fix=_safe(check.fix) if check.fix else None,
        )
        checks.append(check)
        if output == "text":
            click.echo(check.line())
    code = exit_code(checks)
    if output == "json":
        document = {
            "schema_version": 1,
            "ok": code == 0,
            "exit_code": code,
            "checks": [c.to_json() for c in checks],
        }
        click.echo(json.dumps(document, indent=2))
    else:
        failed = sum(1 for c in checks if c.status == FAIL)
        warned = sum(1 for c in checks if c.status == WARN)
        click.echo(
            "doctor: all good"
            if not failed and not warned
            else f"doctor: {failed} problem(s), {warned} warning(s)"
        )
    ctx.exit(code)
