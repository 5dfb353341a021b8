"""The `vault-zpa` command line: build objects, call the core, render, map errors to exit codes.

Exit codes: 0 all done, 1 some items failed (the rest were done), 2 bad usage or configuration.
The only `sys.exit` of the program is in `main()`.
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
from vault_zpa.errors import ConfigError, VaultZpaError
from vault_zpa.model import AssociationType
from vault_zpa.reconcile import Scope
from vault_zpa.sync import Progress, SyncOptions, run_once

log = logging.getLogger("vault_zpa")
F = TypeVar("F", bound=Callable[..., Any])

TYPES = click.Choice([t.value for t in AssociationType], case_sensitive=False)


def common_options(fn: F) -> F:
    """--config, --log-level, --log-format on every command (DESIGN.md)."""
    fn = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default=None,
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
    logs.setup(level, settings.log_format)
    logs.new_run_id()
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
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
    zpa = build.zpa_client(settings.zpa())
    store = build.kv_store(settings)
    if prune and store.kv_version == 1:
        # Refused before ZPA is listed or anything is written: a KV v1 delete cannot be undone,
        # and finding that out per orphan left the run half done.
        store.close()
        zpa.close()
        raise ConfigError(
            f"--prune needs a KV v2 mount: {settings.vault.mount} is KV v1, where deletes are "
            "not recoverable; run without --prune (orphans are still reported)"
        )
    options = SyncOptions(
        association_types=settings.association_types,
        prefix=settings.vault.prefix,
        rules=dict(settings.rules),
        scope=Scope(groups=frozenset(groups), prune=prune, adopt=adopt),
        dry_run=dry_run,
    )
    try:
        with _progress(enabled=output == "text") as progress:
            result = run_once(source=zpa, store=store, options=options, progress=progress)
    finally:
        store.close()
        zpa.close()
    if output == "json":
        click.echo(report.dumps(report.to_json(result, mount=settings.vault.mount, reveal=reveal)))
    else:
        click.echo(
            report.to_text(result, mount=settings.vault.mount, reveal=reveal, verbose=verbose)
        )
    ctx.exit(1 if result.failed else 0)


@cli.command()
@click.option(
    "--association-type",
    "association_types",
    type=TYPES,
    multiple=True,
    help="Only this association type (repeatable; default: both).",
)
@click.option("--group", "groups", multiple=True, help="Only the group with this exact name.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
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
    """Compare what Vault holds with ZPA now: usage, drift, leases, orphans. Writes nothing."""
    from vault_zpa import status as status_view
    from vault_zpa.sync import inspect

    settings = settings_from(
        config_path,
        log_level,
        log_format,
        flags={"sync.association_types": list(association_types) or None},
    )
    zpa = build.zpa_client(settings.zpa())
    store = build.kv_store(settings)
    try:
        snapshot = inspect(
            source=zpa,
            store=store,
            options=SyncOptions(
                association_types=settings.association_types,
                prefix=settings.vault.prefix,
                rules=dict(settings.rules),
                scope=Scope(groups=frozenset(groups)),
                dry_run=True,
            ),
        )
    finally:
        store.close()
        zpa.close()
    mount = settings.vault.mount
    if output == "json":
        click.echo(
            report.dumps(status_view.to_json(snapshot, mount=mount, rotation=settings.rotation))
        )
    else:
        click.echo(status_view.to_text(snapshot, mount=mount, rotation=settings.rotation))
    ctx.exit(1 if snapshot.errors else 0)


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
    from vault_zpa.daemon import Daemon, DaemonConfig, parse_listen
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
    values = settings.values
    host, port = parse_listen(values["daemon.listen"])
    token = values["daemon.api_token"]
    if token is None and values["daemon.api_token_file"]:
        from vault_zpa.config import read_secret_file

        token = read_secret_file(values["daemon.api_token_file"], "daemon.api_token_file")
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
    lease = (
        LeaderLease(store, prefix=settings.vault.prefix, period=config.lease_period)
        if config.ha
        else None
    )
    options = SyncOptions(
        association_types=settings.association_types,
        prefix=settings.vault.prefix,
        rules=dict(settings.rules),
    )
    Daemon(
        config=config,
        zpa=zpa,
        store=store,
        options=options,
        lease=lease,
        rotation=settings.rotation,
        kill_at=settings.values.get("sync.fault_kill_at") or None,
    ).run_forever()


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
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
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
    output: str,
    config_path: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Rotate provisioning keys: a new key in ZPA, written to Vault, the old one removed after
    the grace period. Every step is journaled in Vault, so an interrupted rotation resumes."""
    from vault_zpa.config import MAX_GRACE, parse_duration
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
        _ask_daemon(daemon_url, association_type, groups, all_due, grace_seconds, settings)
        return
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
    try:
        snap = inspect(
            source=zpa,
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
    missing = sorted(g for g in groups if g not in {r.group_name for r in results})
    if output == "json":
        click.echo(
            report.dumps(
                {
                    "schema_version": 1,
                    "dry_run": dry_run,
                    "rotations": [
                        {
                            "path": r.path,
                            "group_name": r.group_name,
                            "decision": r.decision.action,
                            "reason": r.decision.reason,
                            "state": r.state,
                            "new_key_id": r.new_key_id,
                            "error": r.error,
                        }
                        for r in results
                    ],
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
        for name in missing:
            click.echo(f"not found: no group named {name!r} with a key in Vault")
        if not results and not missing:
            click.echo("rotate: nothing is due")
    # A rotation that needs a person is not "all done" either.
    failed = (
        any(r.error or r.decision.action == "blocked" for r in results)
        or bool(missing)
        or bool(snap.errors)
    )
    ctx.exit(1 if failed else 0)


def _ask_daemon(
    url: str,
    association_type: str | None,
    groups: tuple[str, ...],
    all_due: bool,
    grace: float | None,
    settings: Settings,
) -> None:
    import httpx

    token = settings.values.get("daemon.api_token")
    headers = {"Authorization": f"Bearer {token.reveal()}"} if token is not None else {}
    body = {
        "association_type": association_type,
        "groups": list(groups),
        "all_due": all_due,
        "grace": grace,
    }
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/v1/rotate", json=body, headers=headers, timeout=10
        )
    except httpx.HTTPError as exc:
        raise VaultZpaError(f"cannot reach the daemon at {url}: {type(exc).__name__}") from None
    if response.status_code != 202:
        raise VaultZpaError(
            f"the daemon at {url} refused: HTTP {response.status_code} {response.text[:200]}"
        )
    click.echo(f"rotate: queued with the daemon at {url}; it runs with the next sync")


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
    mount: str | None,
    prefix: str | None,
    config_path: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Connector host: read this group's key from Vault and write it for the connector service.

    Only read access to the group's own secret is needed (see `vault-zpa policy render`).
    A secret that names another group is never written. Exit 1 when the key cannot be read or
    written (missing or read-only directory), 2 on bad usage."""
    from vault_zpa import fetch as fetching
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
    rule = settings.rules[atype]
    if "{group_id}" in rule.path_template:
        raise click.UsageError(
            "the path template uses {group_id}; fetch needs a template "
            "that names the group by {group}"
        )
    paths = fetching.candidate_paths(
        template=rule.path_template,
        prefix=settings.vault.prefix,
        association_type=atype,
        group_name=group,
        group_id=group_id,
        microtenant_id=settings.values.get("zpa.microtenant_id"),
    )
    # A connector's policy cannot read sys/mounts: KV v2 unless told otherwise.
    version = 1 if settings.vault.kv_version == "1" else 2
    store = HvacKvStore(
        build.vault_connection(settings.vault), mount=settings.vault.mount, kv_version=version
    )
    try:
        path, data = fetching.find_secret(
            store, paths, group_name=group, group_id=group_id, mount=settings.vault.mount
        )
    finally:
        store.close()
    where = f"{settings.vault.mount}/{path}"
    target = out or fetching.DEFAULT_PATHS[atype]
    written = fetching.write_key(
        data.get("provisioning_key", ""), target, mode=file_mode, uid=uid, gid=gid
    )
    verb = "wrote" if written.changed else "unchanged:"
    click.echo(
        f"{verb} {target} from {where} ({written.length} characters, sha256 {written.fingerprint})"
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
        # Placed from the key listing by the planner itself: exactly the paths sync writes.
        with build.zpa_client(settings.zpa()) as zpa:
            listings = [
                Listing(atype, tuple(zpa.list_provisioning_keys(atype)))
                for atype in settings.association_types
            ]
        out += policies.placed_connector_policies(
            listings,
            rules=settings.rules,
            mount=vault.mount,
            prefix=vault.prefix,
            kv_version=version,
        )
    return out


def policy_options(fn: F) -> F:
    """The group selection shared by `policy render` and `policy apply`."""
    fn = click.option(
        "--group-id",
        default=None,
        help="The ZPA id of the one --group: needed when its name has no letter or digit a path "
        "can use.",
    )(fn)
    fn = click.option("--all-groups", is_flag=True, help="Every group ZPA lists with a key.")(fn)
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
    settings = _type_settings(config_path, log_level, log_format, association_type)
    conn = build.vault_connection(settings.vault)
    try:
        for item in _policies(settings, association_type, groups, all_groups, True, group_id):
            path = f"sys/policies/acl/{item.name}"
            name, text = str(item.name), str(item.text)

            def read(c: Any, name: str = name) -> str | None:
                return _read_policy(c, name)

            def write(c: Any, name: str = name, text: str = text) -> Any:
                return c.sys.create_or_update_acl_policy(name=name, policy=text)

            current = conn.call(read, path=path, capability="read", kind="sys")
            if current == text:
                click.echo(f"unchanged {name}")
                continue
            conn.call(write, path=path, capability="update", kind="sys")
            click.echo(f"{'created' if current is None else 'updated'} {name}")
    finally:
        conn.close()


def _read_policy(client: Any, name: str) -> str | None:
    import hvac.exceptions

    try:
        body = client.sys.read_acl_policy(name)
    except hvac.exceptions.InvalidPath:
        return None
    return str((body.get("data") or body).get("policy", ""))


@contextmanager
def _progress(*, enabled: bool) -> Iterator[Progress | None]:
    """A progress bar on a terminal (stderr) for long runs; nothing when piped."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    state: dict[str, Any] = {}

    def start(total: int) -> None:
        if "bar" in state:  # one bar per batch of reads
            state.pop("bar").__exit__(None, None, None)
        if total >= 200:
            bar = click.progressbar(length=total, label="reading Vault", file=sys.stderr)
            state["bar"] = bar.__enter__()

    def advance(n: int) -> None:
        if "bar" in state:
            state["bar"].update(n)

    try:
        yield Progress(start=start, advance=advance)
    finally:
        if "bar" in state:
            state["bar"].__exit__(None, None, None)


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
@common_options
def simulator(
    host: str,
    port: int,
    seed: int,
    connector_groups: int,
    service_edge_groups: int,
    keys_per_group: int,
    rate_limits: bool,
    config_path: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Serve the ZPA API simulator on loopback until interrupted.

    Prints shell lines (ZPA_BASE_URL=..., ZPA_CLIENT_ID=..., ...) to `eval` or `source`.
    """
    from vault_zpa.testing.zpa_simulator import ZpaSimulator
    from vault_zpa.zpa.clouds import _is_loopback

    if not _is_loopback(host):
        raise click.BadParameter("the simulator only listens on loopback", param_hint="--host")
    # Fixed credentials for docker-compose. Own names, so a shell holding real ZPA credentials
    # never hands them to the simulator (which prints what it accepts).
    sim = ZpaSimulator(
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
    ).start()
    for name, value in sim.env().items():
        click.echo(f"{name}={value}")
    click.echo(f"ZSCALER_CLIENT_ID={sim.oneapi_client_id}")
    click.echo(f"ZSCALER_CLIENT_SECRET={sim.oneapi_client_secret}")
    click.echo(
        f"# OneAPI: ZPA_BASE_URL={sim.url} VAULT_ZPA_ZPA_TOKEN_URL={sim.url}/oauth2/v1/token"
    )
    sys.stdout.flush()
    try:
        sim.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()


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


def main() -> None:
    """Entry point: the one place that turns errors into exit codes."""
    try:
        code = cli.main(prog_name="vault-zpa", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("vault-zpa: aborted", err=True)
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except VaultZpaError as exc:
        click.echo(f"vault-zpa: error: {exc}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        click.echo(
            f"vault-zpa: internal error: {type(exc).__name__}; rerun with "
            "--log-level debug for details and report it",
            err=True,
        )
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


_ = (functools, json)
