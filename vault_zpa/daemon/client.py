"""`vault-zpa rotate --daemon URL`: hand a rotation to a running daemon and, unless told not to,
wait for its outcome and report it as a local `rotate` would (same lines, same JSON, same exit
codes: 0 done, 1 something failed or was not found, 2 the request itself was wrong)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from vault_zpa.errors import ConfigError, VaultZpaError
from vault_zpa.masking import Secret
from vault_zpa.zpa.clouds import _is_loopback


class DaemonRequestFailed(VaultZpaError):
    exit_code = 1


class DaemonUnreachable(VaultZpaError):
    """No HTTP answer from the daemon (connection refused or reset, timeout)."""


def ask(
    url: str,
    *,
    association_type: str | None,
    groups: tuple[str, ...],
    all_due: bool,
    dry_run: bool,
    grace: float | None,
    token: Secret | None,
    wait: bool,
    timeout: float,
    output: str,
    echo: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    base = url.rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--daemon {url!r} must be an http(s)://HOST:PORT address")
    if token is not None and parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"--daemon {url!r}: the API token would cross the network in plain http",
            hint="use https:// (a TLS proxy in front of the daemon) or a loopback address",
        )
    headers = {"Authorization": f"Bearer {token.reveal()}"} if token is not None else {}
    body = {
        "association_type": association_type,
        "groups": list(groups),
        "all_due": all_due,
        "dry_run": dry_run,
        "grace": grace,
    }
    with httpx.Client(headers=headers, timeout=10) as client:
        accepted = _call(client, "POST", f"{base}/v1/rotate", base, json=body)
        request_id = str(accepted.get("id", ""))
        status_url = f"{base}/v1/requests/{request_id}"
        if not wait:
            if output == "json":
                echo(json.dumps({"request": accepted}))
            else:
                echo(f"rotate: request {request_id} queued with the daemon at {base}")
                echo(f"follow it with: curl {status_url}")
            return 0
        deadline = time.monotonic() + timeout
        pause = 0.2
        while True:
            try:
                found = _call(client, "GET", status_url, base)
            except DaemonUnreachable:
                # The daemon stopped (or died) after accepting: its answer is gone with it.
                raise DaemonRequestFailed(
                    f"lost contact with the daemon at {base} while waiting for request "
                    f"{request_id}; it may or may not have run: check `vault-zpa status` and "
                    "ask again"
                ) from None
            if found.get("state") in ("done", "failed"):
                break
            if time.monotonic() + pause > deadline:
                raise DaemonRequestFailed(
                    f"request {request_id} is still {found.get('state')} after {timeout:g}s; "
                    f"follow it with: curl {status_url}"
                )
            sleep(pause)
            pause = min(2.0, pause * 1.5)
    _render(found, output=output, echo=echo)
    return 0 if found.get("state") == "done" else 1


def _call(client: httpx.Client, method: str, url: str, base: str, **kwargs: Any) -> dict[str, Any]:
    try:
        response = client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise DaemonUnreachable(
            f"cannot reach the daemon at {base}: {type(exc).__name__}",
            hint="check --daemon and that `vault-zpa daemon` is running there",
        ) from None
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise VaultZpaError(f"the daemon at {base} answered HTTP {response.status_code}, not JSON")
    error = " ".join(str(data.get("error", "")).split())[:300]
    if response.status_code in (400, 401, 413):
        raise ConfigError(f"the daemon at {base} refused the request: {error}")
    if response.status_code >= 300:
        raise VaultZpaError(f"the daemon at {base} answered HTTP {response.status_code}: {error}")
    return data


def _render(found: dict[str, Any], *, output: str, echo: Callable[[str], None]) -> None:
    rotations: list[dict[str, Any]] = list(found.get("rotations") or [])
    missing: list[str] = list(found.get("not_found") or [])
    errors = [found["error"]] if found.get("error") else []
    dry_run = bool(found.get("dry_run"))
    mount = found.get("mount") or ""
    if mount:  # as a local `rotate --output json` has it
        rotations = [{**r, "kv_path": f"{mount}/{r.get('path')}"} for r in rotations]
    if output == "json":
        echo(
            json.dumps(
                {
                    "schema_version": 1,
                    "dry_run": dry_run,
                    "rotations": rotations,
                    "not_found": missing,
                    "errors": errors,
                    "request": {"id": found.get("id"), "state": found.get("state")},
                }
            )
        )
        return
    for r in rotations:
        decision = r.get("decision")
        verb = "would rotate" if dry_run and decision in ("start", "resume") else decision
        state = f" [{r['state']}]" if r.get("state") else ""
        error = f" FAILED: {r['error']}" if r.get("error") else ""
        echo(f"{verb:12} {mount}/{r.get('path')}{state}: {r.get('reason')}{error}")
    for name in missing:
        echo(f"not found: no group named {name!r} with a key in Vault")
    for error in errors:
        echo(f"error: {error}")
    if not rotations and not missing and not errors:
        echo("rotate: nothing is due")
