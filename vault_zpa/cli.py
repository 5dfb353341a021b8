"""The `vault-zpa` command line: build objects, call the core, render, map errors to exit codes.

Exit codes (EXIT_CODES below; the README and `vault-zpa --help` show the same table): 0 all
done; 1 something failed or needs attention, and the same command may succeed later with
nothing changed; 2 bad usage or configuration, which only a person can fix. The only `sys.exit`
of the program is in `main()`, which also renders a fatal error as JSON under `--output json`
(stdout) and `--log-format json` (stderr).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from vault_zpa import __version__, build, logs, report
from vault_zpa.config import Settings, load
from vault_zpa.errors import ConfigError, VaultZpaError, ZpaAuthError
from vault_zpa.masking import Secret
from vault_zpa.model import AssociationType
from vault_zpa.reconcile import Scope
from vault_zpa.sync import SyncOptions, run_once

log = logging.getLogger("vault_zpa")
F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES = """\b
Exit codes (every command):
  0  all done; nothing needs attention
  1  something failed or needs attention; the rest was done: an item, a ZPA listing or
     a provisioning failed, a write conflicted, drift or a group with no (eligible) key
     (status), a --group no listing has, a used-up key fetched, a rotation needing a
     person, or Vault/ZPA unreachable, sealed or failing past the retry budget (try
     again later)
  2  bad usage or configuration; nothing was done: flags, environment, config file,
     credentials refused (Vault token, AppRole, ZPA sign-in), an untrusted certificate
     or https to a plain-http Vault, an unknown VAULT_NAMESPACE, a missing mount or the
     wrong KV version, a policy lacking a capability, an unknown --owner, a wrapped
     token already unwrapped, expired, wrapping anything but the group's secret or an
     error answer, or made for another group (the token file's record, or the secret)
"""


class UpperChoice(click.Choice):  # type: ignore[type-arg]
    """Accepts any case but shows the choices as users type them (CONNECTOR_GRP): click shows
    a case-insensitive Choice's values lowercased, unlike the README and every error."""

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join(str(c) for c in self.choices) + "]"

    def get_invalid_choice_message(self, value: Any, ctx: click.Context | None) -> str:
        return f"{value!r} is not one of {', '.join(repr(c) for c in self.choices)}."

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[Any]:
        from click.shell_completion import CompletionItem

        return [
            CompletionItem(c)
            for c in map(str, self.choices)
            if c.lower().startswith(incomplete.lower())
        ]


TYPES = UpperChoice([t.value for t in AssociationType], case_sensitive=False)

# How main() renders a fatal error: set from the flags as click parses them (and from the
# settings once loaded), so even a usage error of `--output json` arrives as JSON.
_FATAL: dict[str, str | None] = {"output": None, "log_format": None}


def _remember(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            _FATAL[name] = value
        return value

    return callback


def output_option(fn: F) -> F:
    """--output text|json: the report format, and the format of a fatal error on stdout."""
    return click.option(
        "--output",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        callback=_remember("output"),
        help="text, or JSON for scripts (a fatal error is JSON on stdout too).",
    )(fn)


def common_options(fn: F) -> F:
    """--config, --log-level, --log-format on every command (DESIGN.md)."""
    fn = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default=None,
        callback=_remember("log_format"),
        help="Log format (env VAULT_ZPA_LOG_FORMAT).",
    )(fn)
    fn = click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        default=None,
        help="Log level (env VAULT_ZPA_LOG_LEVEL).",
    )(fn)
    fn = click.option(
        "--config",
        "config_path",
        type=str,
        default=None,
        help="TOML config file (env VAULT_ZPA_CONFIG).",
    )(fn)
    return fn


def settings_from(
    config_path: str | None,
    log_level: str | None,
    log_format: str | None,
    *,
    quiet: bool = True,
    flags: dict[str, Any] | None = None,
) -> Settings:
    """Load settings and set up logging. One-shot commands (quiet) log warnings and up unless
    a level is asked for; the daemon logs info by default."""
    values = {"log.level": log_level, "log.format": log_format, **(flags or {})}
    settings = load(path=config_path, environ=os.environ, flags=values)
    level = settings.log_level
    if quiet and settings.sources["log.level"] == "default":
        level = "warning"
        # Progress lines of a long run off a terminal (progress.py) show by default; an
        # explicit --log-level decides for them like for every other line.
        logging.getLogger("vault_zpa.progress").setLevel(logging.INFO)
    logs.setup(level, settings.log_format)
    if quiet and settings.sources["log.level"] == "default":
        logs.drop_reported()
    _FATAL["log_format"] = settings.log_format
    logs.new_run_id()
    return settings


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES,
)
@click.version_option(__version__, prog_name="vault-zpa")
def cli() -> None:
    """Keep Zscaler Private Access provisioning keys in HashiCorp Vault / OpenBao KV.

    Connectors read their key with `vault kv get`; vault-zpa keeps it current.
    """


@cli.command()
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option(
    "--association-type",
    "association_types",
    type=TYPES,
    multiple=True,
    help="Only this association type (repeatable; default: both).",
)
@click.option(
    "--group", "groups", multiple=True, help="Only the group with this exact name (repeatable)."
)
@click.option(
    "--prune",
    is_flag=True,
    help="Soft-delete managed secrets whose group has no key "
    "in ZPA any more (only after a complete listing).",
)
@click.option("--adopt", is_flag=True, help="Take over existing paths not yet marked as managed.")
@output_option
@click.option("--reveal", is_flag=True, help="Include key values in the output.")
@click.option("--verbose", "-v", is_flag=True, help="Also list unchanged groups.")
@click.option("--mount", default=None, help="KV mount (env VAULT_ZPA_MOUNT, default secret).")
@click.option("--prefix", default=None, help="Path prefix (env VAULT_ZPA_PREFIX, default zpa).")
@click.option("--concurrency", type=int, default=None, help="Parallel Vault requests.")
@common_options
@click.pass_context
def sync(
    ctx: click.Context,
    dry_run: bool,
    association_types: tuple[str, ...],
    groups: tuple[str, ...],
    prune: bool,
    adopt: bool,
    output: str,
    reveal: bool,
    verbose: bool,
    mount: str | None,
    prefix: str | None,
    concurrency: int | None,
    config_path: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Fetch provisioning keys from ZPA and write the changed ones to Vault."""
    settings = settings_from(
        config_path,
        log_level,
        log_format,
        flags={
            "vault.mount": mount,
            "vault.prefix": prefix,
            "vault.concurrency": concurrency,
            "sync.association_types": list(association_types) or None,
        },
    )
    with _connected(settings) as (store, monitor):
        if prune and store.kv_version == 1:
            # Refused before ZPA is listed or anything is written: a KV v1 delete cannot be
            # undone, and finding that out per orphan left the run half done.
            raise ConfigError(
                f"--prune needs a KV v2 mount: {settings.vault.mount} is KV v1, where deletes "
                "are not recoverable; run without --prune (orphans are still reported)"
            )
        options = SyncOptions(
            association_types=settings.association_types,
            prefix=settings.vault.prefix,
            rules=dict(settings.rules),
            scope=Scope(groups=frozenset(groups), prune=prune, adopt=adopt),
            dry_run=dry_run,
            provisions=settings.provision.covers,
        )
        result = run_once(
            source=monitor.source(),
            store=store,
            options=options,
            progress=monitor.progress,
            provisioner=build.provision_step(settings, monitor.zpa, store),
        )
    result = report.for_kv_version(result, store.kv_version)
    missing = report.not_found(groups, result.listings)
    mount = settings.vault.mount
    if output == "json":
        document = report.to_json(result, mount=mount, reveal=reveal)
        document["not_found"] = missing
        document["ok"] = document["ok"] and not missing
        click.echo(report.dumps(document))
    else:
        text = report.to_text(result, mount=mount, reveal=reveal, verbose=verbose)
        for name in missing:
            text += f"\nnot found: no group named {name!r} in ZPA (--group is exact)"
        click.echo(text)
    ctx.exit(1 if result.failed or missing else 0)


@cli.command()
@click.option(
    "--association-type",
    "association_types",
    type=TYPES,
    multiple=True,
    help="Only this association type (repeatable; default: both).",
)
@click.option("--group", "groups", multiple=True, help="Only the group with this exact name.")
@output_option
@common_options
@click.pass_context
def status(
    ctx: click.Context,
    association_types: tuple[str, ...],
    groups: tuple[str, ...],
    output: str,
    config_path: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Compare what Vault holds with ZPA now: usage, drift, leases, orphans. Writes nothing.

    Exit 1 when anything needs attention: a group missing, drifted, orphaned, conflicting or
    with no eligible key or no key at all, a rotation needing a person, a failed listing, an
    unknown --group."""
    from vault_zpa import status as status_view
    from vault_zpa.sync import inspect

    settings = settings_from(
        config_path,
        log_level,
        log_format,
        flags={"sync.association_types": list(association_types) or None},
    )
    with _connected(settings) as (store, monitor):
        snapshot = inspect(
            source=monitor.source(),
            store=store,
            options=SyncOptions(
                association_types=settings.association_types,
                prefix=settings.vault.prefix,
                rules=dict(settings.rules),
                scope=Scope(groups=frozenset(groups)),
                dry_run=True,
                provisions=settings.provision.covers,
            ),
            progress=monitor.progress,
        )
    missing = report.not_found(groups, snapshot.listings)
    mount, rotation = settings.vault.mount, settings.rotation
    if output == "json":
        click.echo(
            report.dumps(
                status_view.to_json(snapshot, mount=mount, rotation=rotation, not_found=missing)
            )
        )
    else:
        click.echo(status_view.to_text(snapshot, mount=mount, rotation=rotation, not_found=missing))
    # Drift, a missing secret, an orphan, a conflict, a group with no usable key, a rotation
    # needing a person, a failed listing or a --group nobody has: each needs attention (exit 1).
    ctx.exit(1 if status_view.needs_attention(snapshot, rotation) or missing else 0)


@cli.command()
@click.option(
    "--interval",
    default=None,
    help="Sync every DURATION (e.g. 5m; env VAULT_ZPA_INTERVAL). Default 5m.",
)
@click.option("--cron", default=None, help="Sync on a crontab schedule instead (UTC).")
@click.option("--jitter", default=None, help="Random delay added to each scheduled run.")
@click.option(
    "--listen",
    default=None,
    help="HOST:PORT of /healthz, /readyz, /metrics and POST /v1/sync (default 127.0.0.1:9850).",
)
@click.option(
    "--ha/--no-ha",
    default=None,
    help="Hold a leader lease in Vault so several replicas can run (default on).",
)
@click.option("--association-type", "association_types", type=TYPES, multiple=True)
@common_options
def daemon(
    interval: str | None,
    cron: str | None,
    jitter: str | None,
    listen: str | None,
    ha: bool | None,
    association_types: tuple[str, ...],
    config_path: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Run syncs on a schedule and on demand; serve health, readiness and metrics."""
    from vault_zpa.daemon.app import Daemon, DaemonConfig, check_listen
    from vault_zpa.daemon.http import parse_listen
    from vault_zpa.vault.lease import LeaderLease

    settings = settings_from(
        config_path,
        log_level,
        log_format,
        quiet=False,
        flags={
            "daemon.interval": interval,
            "daemon.cron": cron,
            "daemon.jitter": jitter,
            "daemon.listen": listen,
            "daemon.ha": ha,
            "sync.association_types": list(association_types) or None,
        },
    )
    from vault_zpa.config import check_schedule

    values = settings.values
    check_schedule(values, settings.sources)  # type: ignore[arg-type]
    host, port = parse_listen(values["daemon.listen"])
    token = _api_token(settings)
    check_listen(host, port, token)
    config = DaemonConfig(
        interval=values["daemon.interval"],
        cron=values["daemon.cron"] or None,
        jitter=values["daemon.jitter"],
        host=host,
        port=port,
        api_token=token,
        lease_period=values["daemon.lease_period"],
        full_sync_every=values["daemon.full_sync_every"],
        ha=values["daemon.ha"],
    )
    zpa = build.zpa_client(settings.zpa())
    store = build.kv_store(settings)
    build.provision_step(settings, zpa, store)  # checked at start-up: KV v2, certificates
    lease = (
        LeaderLease(store, prefix=settings.vault.prefix, period=config.lease_period)
        if config.ha
        else None
    )
    options = SyncOptions(
        association_types=settings.association_types,
        prefix=settings.vault.prefix,
        rules=dict(settings.rules),
        provisions=settings.provision.covers,
    )
    Daemon(
        config=config,
        zpa=zpa,
        store=store,
        options=options,
        lease=lease,
        rotation=settings.rotation,
        provision=settings.provision,
        kill_at=settings.values.get("sync.fault_kill_at") or None,
    ).run_forever()


def _api_token(settings: Settings) -> Secret | None:
    """The daemon API token: VAULT_ZPA_API_TOKEN, else the file VAULT_ZPA_API_TOKEN_FILE."""
    token: Secret | None = settings.values["daemon.api_token"] or None  # blank: not set
    if token is None and settings.values["daemon.api_token_file"]:
        from vault_zpa.config import read_secret_file

        token = read_secret_file(settings.values["daemon.api_token_file"], "daemon.api_token_file")
    return token


@cli.command()
@click.option(
    "--association-type",
    "association_type",
    type=TYPES,
    default=None,
    help="The group's association type (with --group).",
)
@click.option("--group", "groups", multiple=True, help="Rotate this group's key now (repeatable).")
@click.option("--all-due", is_flag=True, help="Rotate every key whose policy says it is due.")
@click.option("--grace", default=None, help="Keep the old key valid this long (e.g. 1h).")
@click.option("--dry-run", is_flag=True, help="Show what would rotate and why; change nothing.")
@click.option(
    "--daemon",
    "daemon_url",
    default=None,
    help="Ask the running daemon at this URL to rotate instead (its leader does it).",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="With --daemon: wait for the outcome and exit by it, or return once queued.",
)
@click.option(
    "--wait-timeout",
    default="10m",
    show_default=True,
    help="With --daemon: give up waiting after this long (exit 1; the request goes on).",
)
@output_option
@common_options
@click.pass_context
def rotate(
    ctx: click.Context,
    association_type: str | None,
    groups: tuple[str, ...],
    all_due: bool,
    grace: str | None,
    dry_run: bool,
    daemon_url: str | None,
    wait: bool,
    wait_timeout: str,
    output: str,
    config_path: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Rotate provisioning keys: a new key in ZPA, written to Vault, the old one removed after
    the grace period. Every step is journaled in Vault, so an interrupted rotation resumes."""
    from vault_zpa.config import MAX_GRACE, parse_duration
    from vault_zpa.daemon.requests import rotation_json
    from vault_zpa.sync import inspect, rotate_once

    if bool(groups) == all_due:
        raise click.UsageError("give --association-type T --group NAME, or --all-due")
    if groups and association_type is None:
        raise click.UsageError("--group needs --association-type")
    # Checked before anything is read or created: a grace past the bound (or inf/nan) used to
    # fail only after the new key existed, wedging the rotation. A ConfigError: exit 2, one line.
    grace_seconds = (
        parse_duration(grace, name="--grace", maximum=MAX_GRACE, allow_zero=True)
        if grace is not None
        else None
    )
    settings = settings_from(
        config_path,
        log_level,
        log_format,
        flags={"sync.association_types": [association_type] if association_type else None},
    )
    if daemon_url is not None:
        from vault_zpa.daemon import client

        ctx.exit(
            client.ask(
                daemon_url,
                association_type=association_type,
                groups=groups,
                all_due=all_due,
                dry_run=dry_run,
                grace=grace_seconds,
                token=_api_token(settings),
                wait=wait,
                timeout=parse_duration(wait_timeout, name="--wait-timeout", minimum=1.0),
                output=output,
                echo=click.echo,
            )
        )
    requested = (
        frozenset((AssociationType(association_type), g) for g in groups)
        if association_type
        else frozenset()
    )
    zpa = build.zpa_client(settings.zpa())
    store = build.kv_store(settings)
    if store.kv_version != 2:
        store.close()
        zpa.close()
        raise ConfigError(
            f"rotation needs a KV v2 mount; {settings.vault.mount!r} is KV v1 (its journal is "
            "written with check-and-set, which KV v1 lacks)",
            hint="vault secrets enable -path=<new mount> kv-v2, then VAULT_ZPA_MOUNT=<new mount>",
        )
    source = _RefusalWatch(zpa)
    try:
        snap = inspect(
            source=source,
            store=store,
            options=SyncOptions(
                association_types=settings.association_types,
                prefix=settings.vault.prefix,
                rules=dict(settings.rules),
                scope=Scope(groups=frozenset(groups)),
                dry_run=True,
                find_orphans=False,
            ),
        )
        results = rotate_once(
            zpa=zpa,
            store=store,
            prefix=settings.vault.prefix,
            items=snap.plan.items,
            stored=snap.stored,
            journals=snap.journals,
            listings=snap.listings,
            rotation=settings.rotation,
            rules=settings.rules,
            requested=requested,
            dry_run=dry_run,
            grace=grace_seconds,
            kill_at=settings.values.get("sync.fault_kill_at") or None,
        )
    finally:
        store.close()
        zpa.close()
    if source.refused is not None:
        # ZPA refused the sign-in: nothing can rotate until a person fixes the credentials
        # (exit 2, one line), not "no group named ... with a key in Vault".
        raise source.refused
    missing = sorted(g for g in groups if g not in {r.group_name for r in results})
    if output == "json":
        click.echo(
            report.dumps(
                {
                    "schema_version": 1,
                    "dry_run": dry_run,
                    "rotations": [rotation_json(r, mount=settings.vault.mount) for r in results],
                    "not_found": missing,
                    "errors": list(snap.errors),
                }
            )
        )
    else:
        for r in results:
            verb = (
                "would rotate"
                if dry_run and r.decision.action in ("start", "resume")
                else r.decision.action
            )
            state = f" [{r.state}]" if r.state else ""
            error = f" FAILED: {r.error}" if r.error else ""
            click.echo(
                f"{verb:12} {settings.vault.mount}/{r.path}{state}: {r.decision.reason}{error}"
            )
        for error in snap.errors:
            click.echo(f"error: {error}")
        for name in missing:
            if snap.errors:  # the group may well be there: ZPA could not say
                click.echo(f"not rotated: {name!r} (a ZPA listing failed, above)")
            else:
                click.echo(f"not found: no group named {name!r} with a key in Vault")
        if not results and not missing:
            off = "" if settings.rotation.any_enabled else " (rotation is off for every type)"
            click.echo(f"rotate: nothing is due{off}")
    # A rotation that needs a person is not "all done" either.
    failed = (
        any(r.error or r.decision.action == "blocked" for r in results)
        or bool(missing)
        or bool(snap.errors)
    )
    ctx.exit(1 if failed else 0)


@cli.command()
@click.option("--association-type", "association_type", type=TYPES, required=True)
@click.option("--group", required=True, help="The connector's group name.")
@click.option(
    "--group-id",
    default=None,
    help="The group's ZPA id (as sync reports it): needed when the name has no letter or digit "
    "a path can use, or its slug collided with another group's.",
)
@click.option(
    "--out",
    default=None,
    help="Where to write the key (default: the connector's own path for the association type).",
)
@click.option("--mode", default="0644", show_default=True, help="File mode (octal).")
@click.option("--owner", default=None, help="USER[:GROUP] to own the file (needs root).")
@click.option(
    "--wrapped-token-file",
    default=None,
    metavar="FILE",
    help="Redeem the single-use token `vault-zpa wrap` made (the token alone, or wrap's JSON) "
    "instead of reading with a Vault token; env VAULT_WRAPPED_TOKEN holds one too. The token "
    "is looked up first and refused, unused, unless it wraps a read of this group's path "
    "(and, given wrap's JSON, was made for this group).",
)
@click.option(
    "--approle-role",
    default=None,
    metavar="NAME",
    help="With a wrapped token made by `wrap --approle-role NAME`: unwrap the secret-id, log "
    "in with it (role_id from VAULT_ZPA_APPROLE_ROLE_ID[_FILE]) and read the key.",
)
@click.option("--mount", default=None, help="KV mount (env VAULT_ZPA_MOUNT, default secret).")
@click.option("--prefix", default=None, help="Path prefix (env VAULT_ZPA_PREFIX, default zpa).")
@common_options
def fetch(
    association_type: str,
    group: str,
    group_id: str | None,
    out: str | None,
    mode: str,
    owner: str | None,
    wrapped_token_file: str | None,
    approle_role: str | None,
    mount: str | None,
    prefix: str | None,
    config_path: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Connector host: read this group's key from Vault and write it for the connector service.

    Only read access to the group's own secret is needed (see `vault-zpa policy render`), or
    no Vault token at all with a wrapped token (--wrapped-token-file). A secret that names
    another group is never written. Exit 1 when the key cannot be read or written (missing or
    read-only directory), or is used up (written, with a warning); 2 on bad usage (an unknown
    --owner, a wrong KV version, a refused token; a wrapped token that was already unwrapped,
    has expired, wraps anything but this group's secret or an error answer, or was made for
    another group)."""
    from vault_zpa import fetch as fetching
    from vault_zpa import wrapping
    from vault_zpa.vault.kv import HvacKvStore

    try:
        file_mode = int(mode, 8)
        if not 0 <= file_mode <= 0o777:
            raise ValueError
    except ValueError:
        raise click.BadParameter(
            f"{mode!r} is not an octal file mode", param_hint="--mode"
        ) from None
    atype = AssociationType(association_type)
    settings = settings_from(
        config_path, log_level, log_format, flags={"vault.mount": mount, "vault.prefix": prefix}
    )
    uid, gid = fetching.parse_owner(owner) if owner else (None, None)
    paths = _group_paths(settings, atype, group, group_id, "fetch")
    target = out or fetching.DEFAULT_PATHS[atype]
    wrapped = _wrapped_token(wrapped_token_file)
    if approle_role is not None and wrapped is None:
        raise ConfigError(
            f"--approle-role goes with a wrapped token (--wrapped-token-file or {wrapping.ENV})"
        )
    if wrapped is not None:
        # What could stop the write is checked before the single-use token is spent: wrap's
        # record of the group it was made for, then --out, its directory and --owner.
        wrapping.check_claims(
            wrapped,
            association_type=atype.value,
            group=group,
            group_id=group_id,
            unwraps_to="provisioning_key" if approle_role is None else "approle_secret_id",
        )
        fetching.preflight_target(target, uid=uid, gid=gid)
    how = ""
    if wrapped is not None and approle_role is None:
        with _recipient(settings) as conn:
            secret = wrapping.redeem_kv(
                conn,
                wrapped,
                mount=settings.vault.mount,
                paths=paths,
                kv_version=settings.vault.kv_version,
                namespace=settings.vault.namespace,
                what=f"a read of {association_type} group {group!r}",
            )
        path = secret.path
        try:
            fetching.check_group(
                secret, where=f"{settings.vault.mount}/{path}", group_name=group, group_id=group_id
            )
        except fetching.FetchError as exc:
            # A name sharing this group's path ('A B', 'A-B') handed a bare token: only the
            # unwrapped secret could tell, and the token is gone with it.
            raise wrapping.WrappedTokenRefused(
                f"{exc.message}; nothing was written, and {wrapping.SPENT}: the host it was "
                "made for needs a new one",
                hint="run `vault-zpa wrap` again for that host, which would otherwise report "
                "this token as intercepted; handed wrap's JSON, which names the group, fetch "
                "refuses another group's token without unwrapping it",
            ) from None
        how = ", unwrapped"
    else:
        auth = None
        if wrapped is not None and approle_role is not None:
            auth = _unwrapped_login(settings, wrapped, approle_role)
            how = ", AppRole secret-id unwrapped"
        conn = build.vault_connection(settings.vault, auth=auth)
        try:
            version = fetching.kv_version(conn, settings.vault.mount, settings.vault.kv_version)
            store = HvacKvStore(conn, mount=settings.vault.mount, kv_version=version)
            path, secret = fetching.find_stored(
                store, paths, group_name=group, group_id=group_id, mount=settings.vault.mount
            )
        finally:
            conn.close()
    data = secret.data or {}
    where = f"{settings.vault.mount}/{path}"
    written = fetching.write_key(
        data.get("provisioning_key", ""), target, mode=file_mode, uid=uid, gid=gid
    )
    verb = "wrote" if written.changed else "unchanged:"
    click.echo(
        f"{verb} {target} from {where} ({written.length} characters, sha256 "
        f"{written.fingerprint}{how})"
    )
    _warn_used_up(secret, where)


def _warn_used_up(secret: Any, where: str) -> None:
    from vault_zpa import fetch as fetching

    used_up = fetching.exhausted(secret)
    if used_up is not None:
        # Handed over all the same (Vault's count may lag ZPA's), but a connector enrolling
        # with it will most likely be refused: a person must look (exit 1).
        click.echo(
            f"vault-zpa: warning: {where}: {used_up}; a connector may not enroll with it "
            "(add a key or raise max_usage in ZPA, then `vault-zpa sync`)",
            err=True,
        )
        click.get_current_context().exit(1)


def _wrapped_token(path: str | None) -> Any:
    """The wrapping token of --wrapped-token-file, else of VAULT_WRAPPED_TOKEN, else None.
    Never a flag's value: a token in argv shows in `ps` and shell history."""
    from vault_zpa import wrapping

    if path is not None:
        return wrapping.read_token_file(path)
    value = os.environ.get(wrapping.ENV)
    if value:
        return wrapping.parse_token(value, source=wrapping.ENV)
    return None


def _unwrapped_login(settings: Settings, wrapped: Any, role: str) -> Any:
    """An AppRole login whose secret-id comes out of the wrapping token; the role_id is the
    host's own (VAULT_ZPA_APPROLE_ROLE_ID[_FILE]), checked before the token is spent."""
    from vault_zpa import wrapping
    from vault_zpa.vault.auth import AppRoleAuth

    vault = settings.vault
    role_id_file = vault.approle_role_id_file
    if vault.approle_role_id is None and not role_id_file:
        raise ConfigError(
            "--approle-role needs the role's role_id: set VAULT_ZPA_APPROLE_ROLE_ID or "
            "VAULT_ZPA_APPROLE_ROLE_ID_FILE"
        )
    if vault.approle_role_id is None and role_id_file and not os.access(role_id_file, os.R_OK):
        raise ConfigError(
            f"cannot read the AppRole role_id file {role_id_file}; the wrapped token was not used"
        )
    with _recipient(settings) as conn:
        secret_id = wrapping.redeem_secret_id(
            conn, wrapped, approle_mount=vault.approle_mount, role=role
        )
    return AppRoleAuth(vault.approle_role_id, role_id_file, secret_id, None, vault.approle_mount)


@contextmanager
def _recipient(settings: Settings) -> Iterator[Any]:
    """A connection that holds no Vault token (the host has none): lookups need none, and the
    unwrap carries the wrapping token itself (wrapping.py)."""
    from vault_zpa import wrapping

    conn = build.vault_connection(settings.vault, auth=wrapping.NoToken())
    try:
        yield conn
    finally:
        conn.close()


@cli.command()
@click.option("--association-type", "association_type", type=TYPES, required=True)
@click.option("--group", required=True, help="The connector's group name.")
@click.option(
    "--group-id",
    default=None,
    help="The group's ZPA id (as sync reports it), for a name fetch needs it for.",
)
@click.option(
    "--ttl",
    default="15m",
    show_default=True,
    help="How long the token can be redeemed: 1s to 24h (e.g. 15m, 2h).",
)
@click.option(
    "--approle-role",
    default=None,
    metavar="NAME",
    help="Wrap a new secret-id of this AppRole role (the group's connector role) instead of "
    "the key; the host logs in with it (`fetch --approle-role NAME`).",
)
@click.option("--mount", default=None, help="KV mount (env VAULT_ZPA_MOUNT, default secret).")
@click.option("--prefix", default=None, help="Path prefix (env VAULT_ZPA_PREFIX, default zpa).")
@output_option
@common_options
def wrap(
    association_type: str,
    group: str,
    group_id: str | None,
    ttl: str,
    approle_role: str | None,
    mount: str | None,
    prefix: str | None,
    output: str,
    config_path: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Secure introduction: a single-use token that unwraps to this group's key.

    Prints the response-wrapping token, its accessor, TTL, expiry and creation path, never the
    key. The token IS printed (handing it over is its purpose): give it to one host, which
    redeems it with `vault-zpa fetch --wrapped-token-file FILE` (or VAULT_WRAPPED_TOKEN) and
    needs no other Vault credential. It works once and until --ttl; a token someone else
    redeemed first fails there with one line saying so. Needs read on the group's secret (the
    daemon's policy has it); with --approle-role, update on
    auth/<approle mount>/role/NAME/secret-id. Exit 1 when the key is used up (the token is
    printed all the same)."""
    from vault_zpa import fetch as fetching
    from vault_zpa import wrapping
    from vault_zpa.config import parse_duration
    from vault_zpa.vault.kv import HvacKvStore

    # Checked before anything is read: a bad --ttl is one line, exit 2.
    seconds = wrapping.check_ttl(
        parse_duration(ttl, name="--ttl", maximum=wrapping.MAX_TTL, minimum=wrapping.MIN_TTL)
    )
    if approle_role is not None:
        wrapping.check_role(approle_role)
    atype = AssociationType(association_type)
    settings = settings_from(
        config_path, log_level, log_format, flags={"vault.mount": mount, "vault.prefix": prefix}
    )
    paths = []
    if approle_role is None:
        paths = _group_paths(settings, atype, group, group_id, "wrap")
    secret = None
    where = None
    conn = build.vault_connection(settings.vault)
    try:
        if approle_role is not None:
            wrapped = wrapping.wrap_secret_id(
                conn, approle_mount=settings.vault.approle_mount, role=approle_role, ttl=seconds
            )
        else:
            version = fetching.kv_version(conn, settings.vault.mount, settings.vault.kv_version)
            store = HvacKvStore(conn, mount=settings.vault.mount, kv_version=version)
            path, secret = fetching.find_stored(
                store, paths, group_name=group, group_id=group_id, mount=settings.vault.mount
            )
            where = f"{settings.vault.mount}/{path}"
            wrapped = wrapping.wrap_kv_read(
                conn,
                mount=settings.vault.mount,
                path=path,
                kv_version=version,
                version=secret.version,
                ttl=seconds,
            )
    finally:
        conn.close()
    facts = wrapped.facts()
    if output == "json":
        document = {
            "schema_version": 1,
            **facts,
            "association_type": atype.value,
            "group_name": group,
            "group_id": (secret.data or {}).get("group_id", group_id) if secret else group_id,
            "unwraps_to": "approle_secret_id" if approle_role else "provisioning_key",
            "kv_path": where,
        }
        click.echo(report.dumps(document))
    else:
        for name, value in (
            ("wrapping_token", facts["token"]),
            ("wrapping_accessor", facts["accessor"]),
            ("wrapping_token_ttl", wrapping.human_ttl(wrapped.ttl)),
            ("wrapping_token_creation_time", facts["creation_time"]),
            ("wrapping_token_expires_at", facts["expires_at"]),
            ("wrapping_token_creation_path", facts["creation_path"]),
        ):
            click.echo(f"{name:<30} {value}")
    if secret is not None and where is not None:
        _warn_used_up(secret, where)


def _group_paths(
    settings: Settings, atype: AssociationType, group: str, group_id: str | None, command: str
) -> list[str]:
    """Where the group's secret may be, found by name as `fetch` and `wrap` are given it."""
    from vault_zpa import fetch as fetching

    rule = settings.rules[atype]
    if "{group_id}" in rule.path_template:
        raise click.UsageError(
            f"the path template uses {{group_id}}; {command} needs a template "
            "that names the group by {group}"
        )
    return fetching.candidate_paths(
        template=rule.path_template,
        prefix=settings.vault.prefix,
        association_type=atype,
        group_name=group,
        group_id=group_id,
        microtenant_id=settings.values.get("zpa.microtenant_id"),
    )


@cli.group()
def policy() -> None:
    """Least-privilege Vault policies: the daemon, each connector group, auditors."""


def _policies(
    settings: Settings,
    association_type: str | None,
    groups: tuple[str, ...],
    all_groups: bool,
    include_service: bool,
    group_id: str | None = None,
) -> list[Any]:
    from vault_zpa import policy as policies
    from vault_zpa.model import Listing

    vault = settings.vault
    version = 1 if vault.kv_version == "1" else 2
    out = []
    if include_service:
        out.append(
            policies.daemon_policy(mount=vault.mount, prefix=vault.prefix, kv_version=version)
        )
        out.append(
            policies.auditor_policy(mount=vault.mount, prefix=vault.prefix, kv_version=version)
        )
    if group_id is not None and len(groups) != 1:
        raise click.UsageError("--group-id goes with exactly one --group")
    if groups:
        if association_type is None:
            raise click.UsageError("--group needs --association-type")
        atype = AssociationType(association_type)
        for name in groups:
            out.append(
                policies.connector_policy(
                    association_type=atype,
                    group_name=name,
                    group_id=group_id or "",
                    mount=vault.mount,
                    prefix=vault.prefix,
                    template=settings.rules[atype].path_template,
                    kv_version=version,
                )
            )
    if all_groups:
        # Placed from the key and group listings by the planner itself: exactly the paths sync
        # writes (a group with no key yet included, at the path provisioning would give it).
        with build.zpa_client(settings.zpa()) as zpa:
            listings = [
                Listing(
                    atype,
                    tuple(zpa.list_provisioning_keys(atype)),
                    groups=tuple(zpa.list_groups(atype)),
                )
                for atype in settings.association_types
            ]
        out += policies.placed_connector_policies(
            listings,
            rules=settings.rules,
            mount=vault.mount,
            prefix=vault.prefix,
            kv_version=version,
        )
    # Vault lowercases policy names: two that differ only in case would be one policy.
    return policies.check_distinct(out)


def policy_options(fn: F) -> F:
    """The group selection shared by `policy render` and `policy apply`."""
    fn = click.option(
        "--group-id",
        default=None,
        help="The ZPA id of the one --group: needed when its name has no letter or digit a path "
        "can use.",
    )(fn)
    fn = click.option("--all-groups", is_flag=True, help="Every group ZPA lists.")(fn)
    fn = click.option("--group", "groups", multiple=True, help="A connector group (repeatable).")(
        fn
    )
    fn = click.option("--association-type", "association_type", type=TYPES, default=None)(fn)
    return common_options(fn)


def _type_settings(
    config_path: str | None,
    log_level: str | None,
    log_format: str | None,
    association_type: str | None,
) -> Settings:
    return settings_from(
        config_path,
        log_level,
        log_format,
        flags={"sync.association_types": [association_type] if association_type else None},
    )


@policy.command("render")
@policy_options
def policy_render(
    association_type: str | None,
    groups: tuple[str, ...],
    all_groups: bool,
    group_id: str | None,
    config_path: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Print policies as HCL: the daemon's and the auditor's, or the connector groups' ones."""
    settings = _type_settings(config_path, log_level, log_format, association_type)
    service = not groups and not all_groups
    for item in _policies(settings, association_type, groups, all_groups, service, group_id):
        click.echo(f"# ---- policy {item.name} ----")
        click.echo(item.text)


@policy.command("apply")
@policy_options
def policy_apply(
    association_type: str | None,
    groups: tuple[str, ...],
    all_groups: bool,
    group_id: str | None,
    config_path: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Write the policies to Vault (sys/policies/acl); unchanged ones are left alone."""
    from vault_zpa import policy as policies

    settings = _type_settings(config_path, log_level, log_format, association_type)
    conn = build.vault_connection(settings.vault)
    try:
        wanted = _policies(settings, association_type, groups, all_groups, True, group_id)
        currents = []
        for item in wanted:  # read (and check) every one before writing any
            path = f"sys/policies/acl/{item.name}"

            def read(c: Any, name: str = str(item.name)) -> str | None:
                return _read_policy(c, name)

            current = conn.call(read, path=path, capability="read", kind="sys")
            policies.check_replaces(item, current)
            currents.append(current)
        for item, current in zip(wanted, currents, strict=True):
            path = f"sys/policies/acl/{item.name}"
            name, text = str(item.name), str(item.text)

            def write(c: Any, name: str = name, text: str = text) -> Any:
                return c.sys.create_or_update_acl_policy(name=name, policy=text)

            if current == text:
                click.echo(f"unchanged {name}")
                continue
            conn.call(write, path=path, capability="update", kind="sys")
            click.echo(f"{'created' if current is None else 'updated'} {name}")
    finally:
        conn.close()


class _RefusalWatch:
    """The ZPA client as rotate's key source, remembering a refused sign-in (which the sync
    engine records as a failed listing) so the command can exit 2 with that one line."""

    def __init__(self, zpa: Any) -> None:
        self.zpa = zpa
        self.refused: ZpaAuthError | None = None

    def list_provisioning_keys(self, association_type: AssociationType) -> Any:
        try:
            return self.zpa.list_provisioning_keys(association_type)
        except ZpaAuthError as exc:
            self.refused = self.refused or exc
            raise


def _read_policy(client: Any, name: str) -> str | None:
    import hvac.exceptions

    try:
        body = client.sys.read_acl_policy(name)
    except hvac.exceptions.InvalidPath:
        return None
    return str((body.get("data") or body).get("policy", ""))


@contextmanager
def _connected(settings: Settings) -> Iterator[tuple[Any, Any]]:
    """The Vault store and a progress monitor (its `source()` is the ZPA client) for a one-shot
    run, all closed on the way out. Progress goes to stderr only: a live line on a terminal,
    log lines otherwise. The monitor starts before the first Vault request, so a Vault that
    hangs is named within seconds."""
    from vault_zpa.progress import Monitor, WatchedLimiter

    zpa_settings = settings.zpa()
    limiter = WatchedLimiter(zpa_settings.get_limit, zpa_settings.rate_window)
    zpa = build.zpa_client(zpa_settings, get_limiter=limiter)
    conn = None
    try:
        conn = build.vault_connection(settings.vault)
        tty = sys.stderr.isatty() and settings.log_format == "text"
        with Monitor(stream=sys.stderr, tty=tty, zpa=zpa, limiter=limiter, conn=conn) as monitor:
            store = build.kv_store(settings, conn)
            yield store, monitor
    finally:
        if conn is not None:
            conn.close()
        zpa.close()


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="0 picks a free port.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--connector-groups", type=click.IntRange(0, 100_000), default=3, show_default=True)
@click.option(
    "--service-edge-groups", type=click.IntRange(0, 100_000), default=2, show_default=True
)
@click.option("--keys-per-group", type=click.IntRange(0, 100), default=1, show_default=True)
@click.option(
    "--rate-limits/--no-rate-limits",
    default=True,
    show_default=True,
    help="Enforce ZPA's documented 20 GET / 10 writes per 10 s.",
)
@click.option(
    "--oneapi",
    is_flag=True,
    help="Print OneAPI client credentials (ZSCALER_CLIENT_ID, ...) instead of the legacy "
    "ZPA API key (ZPA_CLIENT_ID, ...).",
)
@click.option(
    "--tls",
    is_flag=True,
    help="Serve HTTPS with a self-signed certificate for loopback, made at start; prints "
    "SSL_CERT_FILE and REQUESTS_CA_BUNDLE lines naming a CA bundle that trusts it.",
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Also write the export lines to this file (mode 0600, atomically) once the simulator "
    "accepts connections; an old file there is removed at start and the file on exit.",
)
@click.option(
    "--background",
    is_flag=True,
    help="Print the lines once listening, then serve from a detached process "
    '(eval "$(vault-zpa simulator --background)"); stop it with kill "$VAULT_ZPA_SIMULATOR_PID".',
)
@common_options
def simulator(
    host: str,
    port: int,
    seed: int,
    connector_groups: int,
    service_edge_groups: int,
    keys_per_group: int,
    rate_limits: bool,
    oneapi: bool,
    tls: bool,
    env_file: str | None,
    background: bool,
    config_path: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Serve the ZPA API simulator on loopback until interrupted (Ctrl-C or SIGTERM).

    Prints `export NAME=value` lines for one credential kind (the legacy ZPA API key, or
    OneAPI with --oneapi) to `eval` or source:

    \b
      vault-zpa simulator --env-file /tmp/zpa.env &   # then, once the file exists:
      . /tmp/zpa.env
      eval "$(vault-zpa simulator --background)"       # or: one line, serves detached
    """
    import contextlib

    from vault_zpa.testing import zpa_simulator
    from vault_zpa.zpa.clouds import _is_loopback

    if not _is_loopback(host):
        raise click.BadParameter("the simulator only listens on loopback", param_hint="--host")
    if env_file:
        # A file left by an earlier run must not be mistaken for this one's.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(env_file)
    kind = "oneapi" if oneapi else "legacy"

    def start() -> zpa_simulator.ZpaSimulator:
        # Fixed credentials for docker-compose. Own names, so a shell holding real ZPA
        # credentials never hands them to the simulator (which prints what it accepts).
        return zpa_simulator.ZpaSimulator(
            client_id=os.environ.get("VAULT_ZPA_SIMULATOR_CLIENT_ID", ""),
            client_secret=os.environ.get("VAULT_ZPA_SIMULATOR_CLIENT_SECRET", ""),
            customer_id=os.environ.get("VAULT_ZPA_SIMULATOR_CUSTOMER_ID", ""),
            host=host,
            port=port,
            seed=seed,
            connector_groups=connector_groups,
            service_edge_groups=service_edge_groups,
            keys_per_group=keys_per_group,
            rate_limits=rate_limits,
            tls=tls,
        ).start()

    if background:
        try:
            text = zpa_simulator.serve_detached(start, kind=kind, env_file=env_file)
        except RuntimeError as exc:
            raise ConfigError(f"the simulator did not start: {exc}") from None
        click.echo(text, nl=False)
        pid = text.rstrip().rpartition("=")[2]
        click.echo(
            f"vault-zpa simulator: serving in the background; stop it with: kill {pid}", err=True
        )
        return
    try:
        sim = start()
    except OSError as exc:
        raise ConfigError(  # exit 2, like the daemon's listener
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint="choose another --port (0 picks a free one)",
        ) from None
    lines = sim.shell_lines(kind)
    try:
        if env_file:
            zpa_simulator.write_env_file(env_file, lines)
        for line in lines:
            click.echo(line)
        sys.stdout.flush()
        click.echo(
            f"vault-zpa simulator: serving {sim.url} ({kind} credentials"
            + (f", also in {env_file}" if env_file else "")
            + "); Ctrl-C stops it",
            err=True,
        )
        zpa_simulator.serve_until_signalled(sim)
    finally:
        sim.stop()
        if env_file:
            zpa_simulator.remove_env_file(env_file, lines)


@cli.command()
@click.option("--keep-running", is_flag=True, help="Leave OpenBao and the simulator up.")
@common_options
def demo(
    keep_running: bool, config_path: str | None, log_level: str | None, log_format: str | None
) -> None:
    """Start OpenBao (dev) and the ZPA simulator, run a real sync, read a key back."""
    from vault_zpa import demo as demo_module

    logs.setup(log_level or "warning", log_format or "text")
    demo_module.run(keep_running=keep_running, echo=click.echo)


from vault_zpa.doctor import doctor  # noqa: E402 - its own module; registered here

cli.add_command(doctor)


def main() -> None:
    """Entry point: the one place that turns errors into exit codes."""
    args = sys.argv[1:]
    # A usage error may come before click has parsed --output: look at the words themselves.
    for i, word in enumerate(args):
        if word == "--":
            break
        if word == "--output=json" or (word == "--output" and args[i + 1 : i + 2] == ["json"]):
            _FATAL["output"] = "json"
    try:
        code = cli.main(prog_name="vault-zpa", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("vault-zpa: aborted", err=True)
        code = 130
    except click.ClickException as exc:
        code = exc.exit_code
        if not _fatal("usage", exc.format_message(), None, code, show=exc.show):
            exc.show()
    except VaultZpaError as exc:
        code = exc.exit_code
        _fatal(type(exc).__name__, exc.message, exc.hint, code)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        code = 1
        _fatal(
            "internal",
            f"internal error: {type(exc).__name__}; rerun with --log-level debug for details "
            "and report it",
            None,
            code,
        )
    sys.exit(code if isinstance(code, int) else 0)


def _fatal(
    kind: str,
    message: str,
    hint: str | None,
    code: int,
    show: Callable[[], None] | None = None,
) -> bool:
    """Say why the run stopped, once, in the formats asked for: a JSON document on stdout
    under --output json (a script parsing stdout gets JSON, never nothing), and on stderr a
    JSON log line under --log-format json, else one text line. Messages never hold secrets
    (errors.py); the redacting filter runs over them all the same. Returns False when the
    caller's own rendering (click's usage text) should be used for stderr."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (), None)
    logs.REDACTOR.filter(record)
    text = record.getMessage()
    if hint:
        hint_record = log.makeRecord(log.name, logging.ERROR, __file__, 0, hint, (), None)
        logs.REDACTOR.filter(hint_record)
        hint = hint_record.getMessage()
    if _FATAL["output"] == "json":
        error = {"type": kind, "message": text, "hint": hint, "exit_code": code}
        click.echo(report.dumps({"schema_version": 1, "ok": False, "error": error}))
    log_format = _FATAL["log_format"] or os.environ.get("VAULT_ZPA_LOG_FORMAT", "text")
    if log_format == "json":
        record.run_id = logs.run_id()
        record.error_type = kind
        record.exit_code = code
        if hint:
            record.hint = hint
        click.echo(logs.JsonFormatter().format(record), err=True)
        return True
    if show is not None:
        return False
    click.echo(f"vault-zpa: error: {text}" + (f" ({hint})" if hint else ""), err=True)
    return True


_ = (functools, json)
