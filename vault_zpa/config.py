"""Settings, read in one place from flags > environment > TOML file > defaults.

`load(path=..., environ=..., flags=...)` is the only reader of the environment. Every problem is
a `ConfigError` naming where the value came from (flag, variable, or file and key) and why it is
wrong. Secrets come from the environment or files only, and are wrapped in `Secret`.

Durations ('90s', '5m', '1h30m', '30d', or a number of seconds) are finite and bounded wherever
they come from (flag, variable, TOML): nothing longer than `MAX_DURATION` (3650 days, ten years)
is accepted, and settings with a natural scale are tighter: a rotation grace at most 365 days,
the leader lease period 5 s to 1 day (Vault counts `delete_version_after` in whole seconds, and a
sub-second period would become `0s`, "never"), timeouts and the rate window at most 1 hour,
retry budgets and jitter at most 1 day, the daemon interval 1 s to 365 days.
Non-finite numbers (inf, nan, 1e400) anywhere in the TOML file are refused with the key named.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vault_zpa import layout
from vault_zpa.errors import ConfigError
from vault_zpa.masking import REDACTOR, Secret
from vault_zpa.model import AssociationType
from vault_zpa.provision import ProvisionSettings
from vault_zpa.provision import check_compatible as check_provision_compatible
from vault_zpa.provision import parse_policy as parse_provision
from vault_zpa.reconcile import TypeRule
from vault_zpa.rotation import RotationPolicy, RotationSettings, check_compatible, parse_policy

# ---- value parsers ------------------------------------------------------------------------

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
MAX_DURATION = 3650 * DAY  # ten years of 365 days: the default bound of every duration
MAX_GRACE = 365 * DAY  # a grace longer than a year is a typo, not a policy
MIN_LEASE_PERIOD = 5.0  # below this, renewals cannot keep up and Vault rounds toward `0s`
MAX_LEASE_PERIOD = DAY  # fail-over waits one period; longer is an outage, not HA
_MAX_DURATION_TEXT = 64  # characters: no real duration is longer


class InvalidDuration(ConfigError, ValueError):
    """A duration that is malformed, not finite, or out of bounds. A ConfigError (exit 2) that
    is also a ValueError, so option parsers that add their own `where` keep doing so."""


def _human(seconds: float) -> str:
    for size, unit in ((DAY, "day"), (HOUR, "hour"), (MINUTE, "minute")):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g}s"


def parse_duration(
    value: Any,
    *,
    name: str | None = None,
    minimum: float | None = None,
    maximum: float = MAX_DURATION,
    allow_zero: bool = False,
) -> float:
    """'90s', '5m', '1h30m', '30d', or a number of seconds: a finite float in
    (0, maximum] (0 too with `allow_zero`), at least `minimum` unless it is 0.

    Anything else raises InvalidDuration, one line: `name: reason (got 'value')`."""

    def refuse(reason: str) -> InvalidDuration:
        shown = str(value)[:_MAX_DURATION_TEXT] if not isinstance(value, bool) else str(value)
        return InvalidDuration(f"{name + ': ' if name else ''}{reason} (got {shown!r})")

    malformed = "must be a duration such as 30s, 5m, 1h or 30d"
    if isinstance(value, bool):
        raise refuse(malformed)
    if isinstance(value, int):
        if abs(value) > 10**18:  # float() of a huge int overflows; no duration is this long
            raise refuse(f"must be at most {_human(maximum)}")
        seconds = float(value)
    elif isinstance(value, float):
        seconds = value
    elif isinstance(value, str):
        text = value.strip().lower()
        if len(text) > _MAX_DURATION_TEXT:
            raise refuse("is too long to be a duration")
        if _SECONDS.fullmatch(text):
            seconds = float(text)
        else:
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise refuse(malformed)
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise refuse(malformed)
    if not math.isfinite(seconds):
        raise refuse("must be a finite duration, not inf or nan")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise refuse("must be a positive duration" + (" or 0" if allow_zero else ""))
    if seconds > maximum:
        raise refuse(f"must be at most {_human(maximum)}")
    if minimum is not None and 0 < seconds < minimum:
        raise refuse(f"must be at least {_human(minimum)}")
    return seconds


def parse_duration_or_zero(value: Any, **bounds: Any) -> float:
    """Like parse_duration, but 0 (or '0s', '0m', ...) is allowed: 'none at all'."""
    return parse_duration(value, allow_zero=True, **bounds)


def _duration(
    *, minimum: float | None = None, maximum: float = MAX_DURATION, allow_zero: bool = False
) -> Callable[[Any], float]:
    """An option parser: a duration with these bounds (the caller adds where it came from)."""

    def parse(value: Any) -> float:
        return parse_duration(value, minimum=minimum, maximum=maximum, allow_zero=allow_zero)

    return parse


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _int_between(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        # ASCII digits only, and few of them: int() would also take '١٦', '1_6' or 4,000 digits.
        text = str(value).strip() if isinstance(value, int | str) else ""
        if isinstance(value, bool) or not re.fullmatch(r"-?[0-9]{1,18}", text):
            raise ValueError(f"must be a whole number from {low} to {high}")
        number = int(text)
        if not low <= number <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return number

    return parse


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if any(ord(c) < 32 for c in value):
        raise ValueError("must not contain control characters")
    return value.strip()


def _multiline(value: Any) -> str:
    """Text that may span lines (a PEM key)."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if any(ord(c) < 32 and c not in "\r\n\t" for c in value):
        raise ValueError("must not contain control characters")
    return value.strip()


def check_schedule(values: dict[str, Any], sources: Mapping[str, str]) -> None:
    """For the daemon only (a connector's `fetch` must not fail over a daemon setting): one
    schedule, and a jitter that cannot swamp it. Both an interval and a cron given (from
    any source) is refused rather than one silently winning; the default jitter (15s) is
    shortened to half an interval shorter than 30s, and a jitter set longer than the interval
    is refused (runs would drift up to interval + jitter apart)."""
    interval, cron, jitter = (values.get(f"daemon.{k}") for k in ("interval", "cron", "jitter"))
    where = {k: sources.get(f"daemon.{k}", "default") for k in ("interval", "cron", "jitter")}
    if cron and where["interval"] != "default":
        raise ConfigError(
            f"both {where['interval']} and {where['cron']} set the daemon's schedule; set one",
            hint="--interval DURATION or --cron EXPR (env VAULT_ZPA_INTERVAL / VAULT_ZPA_CRON)",
        )
    if cron or interval is None or jitter is None or jitter <= interval:
        if (
            not cron
            and interval is not None
            and jitter is not None
            and where["jitter"] == "default"
        ):
            values["daemon.jitter"] = min(jitter, interval / 2)
        return
    if where["jitter"] == "default":
        values["daemon.jitter"] = interval / 2
        return
    raise ConfigError(
        f"{where['jitter']}: a jitter of {jitter:g}s is longer than the {interval:g}s interval",
        hint="use a jitter at most as long as the interval",
    )


def _cron(value: Any) -> str:
    """A 5-field crontab expression (UTC), read as cron reads it (vault_zpa/daemon/schedule.py)."""
    from vault_zpa.daemon.schedule import parse_cron

    return parse_cron(_text(value))


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value).lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


def _association_types(value: Any) -> tuple[AssociationType, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    out: list[AssociationType] = []
    for item in items:
        name = _text(item).upper()
        try:
            out.append(AssociationType(name))
        except ValueError:
            raise ValueError(f"{name!r} is not CONNECTOR_GRP or SERVICE_EDGE_GRP") from None
    if not out:
        raise ValueError("must name at least one association type")
    return tuple(dict.fromkeys(out))


def _pattern(value: Any) -> re.Pattern[str]:
    try:
        return re.compile(_text(value))
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression ({exc})") from None


def _template(value: Any) -> str:
    try:
        return layout.validate_template(_text(value))
    except ConfigError as exc:
        raise ValueError(exc.message) from None


def _prefix(value: Any) -> str:
    try:
        return layout.validate_prefix(_text(value))
    except ConfigError as exc:
        raise ValueError(exc.message) from None


def _mount(value: Any) -> str:
    text = _text(value).strip("/")
    if not re.fullmatch(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*", text) or ".." in text.split("/"):
        raise ValueError("must be a mount path of letters, digits, '.', '_', '-' and '/'")
    return text


# ---- the option table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    name: str  # section.key in the TOML file; also the flag name used by the CLI
    env: tuple[str, ...]
    parse: Callable[[Any], Any]
    default: Any = None
    secret: bool = False


OPTIONS: tuple[Option, ...] = (
    # ZPA
    Option("zpa.auth", ("VAULT_ZPA_ZPA_AUTH",), _choice("auto", "legacy", "oneapi"), "auto"),
    Option("zpa.use_legacy_client", ("ZSCALER_USE_LEGACY_CLIENT",), parse_bool),
    Option("zpa.client_id", ("ZPA_CLIENT_ID",), _text),
    Option("zpa.client_secret", ("ZPA_CLIENT_SECRET",), _text, secret=True),
    Option("zpa.client_secret_file", ("ZPA_CLIENT_SECRET_FILE",), _text),
    Option("zpa.customer_id", ("ZPA_CUSTOMER_ID", "ZSCALER_CUSTOMER_ID"), _text),
    Option("zpa.cloud", ("ZPA_CLOUD",), _text, "PRODUCTION"),
    Option("zpa.microtenant_id", ("ZPA_MICROTENANT_ID",), _text),
    Option("zpa.base_url", ("ZPA_BASE_URL",), _text),
    Option("zpa.oneapi_client_id", ("ZSCALER_CLIENT_ID",), _text),
    Option("zpa.oneapi_client_secret", ("ZSCALER_CLIENT_SECRET",), _text, secret=True),
    Option("zpa.private_key", ("ZSCALER_PRIVATE_KEY",), _multiline, secret=True),
    Option("zpa.vanity_domain", ("ZSCALER_VANITY_DOMAIN",), _text),
    Option("zpa.oneapi_cloud", ("ZSCALER_CLOUD",), _text, "production"),
    Option("zpa.token_url", ("VAULT_ZPA_ZPA_TOKEN_URL",), _text),
    Option("zpa.partner_id", ("ZSCALER_PARTNER_ID",), _text),
    Option("zpa.timeout", ("VAULT_ZPA_ZPA_TIMEOUT",), _duration(maximum=HOUR), 30.0),
    Option("zpa.retry_budget", ("VAULT_ZPA_ZPA_RETRY_BUDGET",), _duration(maximum=DAY), 120.0),
    Option("zpa.get_limit", ("VAULT_ZPA_ZPA_GET_LIMIT",), _int_between(1, 10_000), 20),
    Option("zpa.write_limit", ("VAULT_ZPA_ZPA_WRITE_LIMIT",), _int_between(1, 10_000), 10),
    Option("zpa.rate_window", ("VAULT_ZPA_ZPA_RATE_WINDOW",), _duration(maximum=HOUR), 10.0),
    # Vault
    Option("vault.addr", ("VAULT_ADDR",), _text, "https://127.0.0.1:8200"),
    Option("vault.token", ("VAULT_TOKEN",), _text, secret=True),
    Option("vault.token_file", ("VAULT_ZPA_TOKEN_FILE",), _text),
    Option("vault.namespace", ("VAULT_NAMESPACE",), _text),
    Option("vault.cacert", ("VAULT_CACERT",), _text),
    Option("vault.capath", ("VAULT_CAPATH",), _text),
    Option("vault.client_cert", ("VAULT_CLIENT_CERT",), _text),
    Option("vault.client_key", ("VAULT_CLIENT_KEY",), _text),
    Option("vault.skip_verify", ("VAULT_SKIP_VERIFY",), parse_bool, False),
    Option(
        "vault.auth_method",
        ("VAULT_ZPA_AUTH_METHOD",),
        _choice("token", "approle", "kubernetes"),
        "token",
    ),
    Option("vault.approle_role_id", ("VAULT_ZPA_APPROLE_ROLE_ID",), _text, secret=True),
    Option("vault.approle_role_id_file", ("VAULT_ZPA_APPROLE_ROLE_ID_FILE",), _text),
    Option("vault.approle_secret_id", ("VAULT_ZPA_APPROLE_SECRET_ID",), _text, secret=True),
    Option("vault.approle_secret_id_file", ("VAULT_ZPA_APPROLE_SECRET_ID_FILE",), _text),
    Option("vault.approle_mount", ("VAULT_ZPA_APPROLE_MOUNT",), _mount, "approle"),
    Option("vault.kubernetes_role", ("VAULT_ZPA_KUBERNETES_ROLE",), _text),
    Option(
        "vault.kubernetes_jwt_file",
        ("VAULT_ZPA_KUBERNETES_JWT_FILE",),
        _text,
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
    ),
    Option("vault.kubernetes_mount", ("VAULT_ZPA_KUBERNETES_MOUNT",), _mount, "kubernetes"),
    Option("vault.mount", ("VAULT_ZPA_MOUNT",), _mount, "secret"),
    Option("vault.prefix", ("VAULT_ZPA_PREFIX",), _prefix, "zpa"),
    Option("vault.kv_version", ("VAULT_ZPA_KV_VERSION",), _choice("auto", "1", "2"), "auto"),
    Option("vault.max_versions", ("VAULT_ZPA_MAX_VERSIONS",), _int_between(2, 100), 5),
    Option("vault.concurrency", ("VAULT_ZPA_CONCURRENCY",), _int_between(1, 256), 16),
    Option("vault.timeout", ("VAULT_ZPA_VAULT_TIMEOUT",), _duration(maximum=HOUR), 30.0),
    Option("vault.retry_budget", ("VAULT_ZPA_VAULT_RETRY_BUDGET",), _duration(maximum=DAY), 60.0),
    # Sync
    Option(
        "sync.association_types",
        ("VAULT_ZPA_ASSOCIATION_TYPES",),
        _association_types,
        (AssociationType.CONNECTOR_GRP, AssociationType.SERVICE_EDGE_GRP),
    ),
    Option("sync.path_template", ("VAULT_ZPA_PATH_TEMPLATE",), _template, layout.DEFAULT_TEMPLATE),
    Option("sync.key_name_pattern", ("VAULT_ZPA_KEY_NAME_PATTERN",), _pattern),
    Option("sync.lease", ("VAULT_ZPA_LEASE",), _duration(), 30 * DAY),
    Option(
        "sync.max_rotations_per_run",
        ("VAULT_ZPA_MAX_ROTATIONS_PER_RUN",),
        _int_between(1, 10_000),
        10,
    ),
    Option(
        "sync.max_provisions_per_run",
        ("VAULT_ZPA_MAX_PROVISIONS_PER_RUN",),
        _int_between(1, 10_000),
        10,
    ),
    # Fault injection for the crash tests only: SIGKILL ourselves at this rotation step.
    Option(
        "sync.fault_kill_at",
        ("VAULT_ZPA_FAULT_KILL_AT",),
        _choice("", "intent", "created", "written", "old_removed"),
    ),
    # Daemon
    Option(
        "daemon.interval",
        ("VAULT_ZPA_INTERVAL",),
        _duration(minimum=1.0, maximum=365 * DAY),
        300.0,
    ),
    Option("daemon.cron", ("VAULT_ZPA_CRON",), _cron),
    Option("daemon.jitter", ("VAULT_ZPA_JITTER",), _duration(maximum=DAY, allow_zero=True), 15.0),
    Option("daemon.listen", ("VAULT_ZPA_LISTEN",), _text, "127.0.0.1:9850"),
    Option("daemon.api_token", ("VAULT_ZPA_API_TOKEN",), _text, secret=True),
    Option("daemon.api_token_file", ("VAULT_ZPA_API_TOKEN_FILE",), _text),
    Option(
        "daemon.lease_period",
        ("VAULT_ZPA_LEASE_PERIOD",),
        _duration(minimum=MIN_LEASE_PERIOD, maximum=MAX_LEASE_PERIOD),
        30.0,
    ),
    Option("daemon.ha", ("VAULT_ZPA_HA",), parse_bool, True),
    Option("daemon.full_sync_every", ("VAULT_ZPA_FULL_SYNC_EVERY",), _int_between(1, 100_000), 12),
    # Logging
    Option(
        "log.level", ("VAULT_ZPA_LOG_LEVEL",), _choice("debug", "info", "warning", "error"), "info"
    ),
    Option("log.format", ("VAULT_ZPA_LOG_FORMAT",), _choice("text", "json"), "text"),
)
_BY_NAME = {o.name: o for o in OPTIONS}
TYPE_RULE_KEYS = {"path_template": _template, "key_name_pattern": _pattern, "lease": parse_duration}
# Validated by vault_zpa.rotation.parse_policy and vault_zpa.provision.parse_policy.
RESERVED_TYPE_SECTIONS = {"rotation", "provision"}


# ---- settings records ---------------------------------------------------------------------


@dataclass(frozen=True)
class ZpaSettings:
    mode: str  # "legacy" | "oneapi"
    customer_id: str
    base_url: str
    token_url: str
    client_id: str
    client_secret: Secret | None
    private_key: Secret | None
    microtenant_id: str | None
    partner_id: str | None
    timeout: float
    retry_budget: float
    get_limit: int
    write_limit: int
    rate_window: float


@dataclass(frozen=True)
class VaultSettings:
    addr: str
    token: Secret | None
    token_file: str | None
    namespace: str | None
    cacert: str | None
    capath: str | None
    client_cert: str | None
    client_key: str | None
    skip_verify: bool
    auth_method: str
    approle_role_id: Secret | None
    approle_role_id_file: str | None
    approle_secret_id: Secret | None
    approle_secret_id_file: str | None
    approle_mount: str
    kubernetes_role: str | None
    kubernetes_jwt_file: str
    kubernetes_mount: str
    mount: str
    prefix: str
    kv_version: str
    max_versions: int
    concurrency: int
    timeout: float
    retry_budget: float


@dataclass(frozen=True)
class Settings:
    """Everything a command needs, validated. `zpa` is built lazily: only commands that talk
    to ZPA require its credentials."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    vault: VaultSettings
    association_types: tuple[AssociationType, ...]
    rules: Mapping[AssociationType, TypeRule]
    log_level: str
    log_format: str
    rotation: RotationSettings = field(default_factory=RotationSettings)
    provision: ProvisionSettings = field(default_factory=ProvisionSettings)

    def zpa(self) -> ZpaSettings:
        return _zpa_settings(self.values, self.sources)


def load(
    *, path: str | None, environ: Mapping[str, str], flags: Mapping[str, Any] | None = None
) -> Settings:
    """flags > environment > config file > defaults. `path` None falls back to VAULT_ZPA_CONFIG."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    path = path or environ.get("VAULT_ZPA_CONFIG") or None
    file_values, type_sections = _read_file(path) if path else ({}, {})
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        raw, where = option.default, "default"
        if option.name in file_values:
            raw, where = (
                file_values[option.name],
                f"{path}: [{option.name.split('.')[0]}] {option.name.split('.', 1)[1]}",
            )
        for env in option.env:
            if env in environ and environ[env] != "":
                raw, where = environ[env], env
                break
        if option.name in flags:
            raw, where = flags[option.name], f"--{option.name.split('.', 1)[1].replace('_', '-')}"
        if raw is not None and where != "default":
            try:
                raw = option.parse(raw)
            except ValueError as exc:
                # InvalidDuration already shows the value it refused.
                shown = (
                    ""
                    if option.secret or isinstance(exc, InvalidDuration)
                    else f" (got {str(raw)[:60]!r})"
                )
                raise ConfigError(f"{where}: {exc}{shown}") from None
        if option.secret and isinstance(raw, str) and raw:
            REDACTOR.register(raw)
            raw = Secret(raw)
        values[option.name] = raw
        sources[option.name] = where
    _token_helper_file(values, sources, environ)
    vault = _vault_settings(values, sources)
    rules = _rules(values, type_sections, path)
    rotation = _rotation(values, type_sections, path)
    # Rotated keys the key_name_pattern would not select make a create/delete loop: refuse.
    check_compatible(rules, rotation)
    provision = ProvisionSettings(
        {
            atype: parse_provision(
                type_sections[atype.value]["provision"],
                f"{path}: [association_type.{atype.value}.provision]",
            )
            for atype in AssociationType
            if "provision" in type_sections.get(atype.value, {})
        },
        values["sync.max_provisions_per_run"],
    )
    # The same loop for provisioning: a key the pattern would not select is never served.
    check_provision_compatible(rules, provision)
    return Settings(
        values=values,
        sources=sources,
        vault=vault,
        association_types=values["sync.association_types"],
        rules=rules,
        log_level=values["log.level"],
        log_format=values["log.format"],
        rotation=rotation,
        provision=provision,
    )


def _read_file(path: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the config file is not UTF-8 text") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    _refuse_non_finite(path, document, [])
    flat: dict[str, Any] = {}
    types: dict[str, dict[str, Any]] = {}
    for section, body in document.items():
        if section == "association_type":
            if not isinstance(body, dict):
                raise ConfigError(f"{path}: [association_type] must be a table of tables")
            for name, rule in body.items():
                _check_type_section(path, name, rule)
                types[name] = rule
            continue
        if section not in ("zpa", "vault", "sync", "daemon", "log") or not isinstance(body, dict):
            raise ConfigError(
                f"{path}: unknown section or key {section!r}",
                hint="sections are [zpa], [vault], [sync], [daemon], [log], "
                "[association_type.<TYPE>]",
            )
        for key, value in body.items():
            name = f"{section}.{key}"
            if name not in _BY_NAME:
                raise ConfigError(f"{path}: [{section}] {key}: unknown key")
            if isinstance(value, dict):
                raise ConfigError(f"{path}: [{section}] {key}: must be a value, not a table")
            flat[name] = value
    return flat, types


def _refuse_non_finite(path: str, value: Any, keys: list[str]) -> None:
    """TOML reads inf, nan and 1e400 as floats; no setting wants one. Refused here, once, with
    the key named, so no parser downstream meets a non-finite number."""
    if isinstance(value, float) and not math.isfinite(value):
        section = ".".join(keys[:-1]) or "top level"
        raise ConfigError(f"{path}: [{section}] {keys[-1]}: must be a finite number (got {value})")
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_non_finite(path, item, [*keys, str(key)])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_non_finite(path, item, [*keys[:-1], f"{keys[-1] if keys else ''}[{index}]"])


def _check_type_section(path: str, name: str, rule: Any) -> None:
    try:
        AssociationType(name)
    except ValueError:
        raise ConfigError(
            f"{path}: [association_type.{name}]: unknown association type",
            hint="use CONNECTOR_GRP or SERVICE_EDGE_GRP",
        ) from None
    if not isinstance(rule, dict):
        raise ConfigError(f"{path}: [association_type.{name}] must be a table")
    for key, value in rule.items():
        where = f"{path}: [association_type.{name}] {key}"
        if key in RESERVED_TYPE_SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: must be a table")
            if key == "provision":
                parse_provision(value, f"{path}: [association_type.{name}.provision]")
            else:
                _rotation_tables(path, name, value)
            continue
        if key not in TYPE_RULE_KEYS:
            raise ConfigError(
                f"{where}: unknown key",
                hint=f"known: {', '.join(sorted(TYPE_RULE_KEYS))}, rotation, provision",
            )
        try:
            TYPE_RULE_KEYS[key](value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _rotation_tables(
    path: str, name: str, table: Mapping[str, Any]
) -> tuple[RotationPolicy, dict[tuple[AssociationType, str], RotationPolicy]]:
    """[association_type.T.rotation] and its optional [... .rotation.groups."Name"] overrides."""
    where = f"{path}: [association_type.{name}.rotation]"
    base = parse_policy(table, where)
    groups = table.get("groups", {})
    if not isinstance(groups, dict):
        raise ConfigError(f"{where} groups: must be a table of group names")
    per_group = {}
    for group, override in groups.items():
        if not isinstance(override, dict):
            raise ConfigError(f"{where} groups.{group!r}: must be a table")
        per_group[(AssociationType(name), group)] = parse_policy(
            override, f"{path}: [association_type.{name}.rotation.groups.{group!r}]", base
        )
    return base, per_group


def _rotation(
    values: Mapping[str, Any], types: Mapping[str, Mapping[str, Any]], path: str | None
) -> RotationSettings:
    policies: dict[AssociationType, RotationPolicy] = {}
    per_group: dict[tuple[AssociationType, str], RotationPolicy] = {}
    for atype in AssociationType:
        table = types.get(atype.value, {}).get("rotation")
        if table is not None:
            base, groups = _rotation_tables(str(path), atype.value, table)
            policies[atype] = base
            per_group.update(groups)
    return RotationSettings(
        policies,
        per_group,
        values["sync.max_rotations_per_run"],
        # Another process's unfinished INTENT is left alone this long: its search and its
        # create can each take the ZPA retry budget plus one attempt's timeout (Rotator).
        takeover=2 * (values["zpa.retry_budget"] + values["zpa.timeout"]) + 5.0,
    )


def _rules(
    values: Mapping[str, Any], types: Mapping[str, Mapping[str, Any]], path: str | None
) -> dict[AssociationType, TypeRule]:
    rules = {}
    for atype in AssociationType:
        section = types.get(atype.value, {})
        template = section.get("path_template", values["sync.path_template"])
        pattern = section.get("key_name_pattern")
        rules[atype] = TypeRule(
            path_template=_template(template),
            key_name_pattern=_pattern(pattern)
            if pattern is not None
            else values["sync.key_name_pattern"],
            lease_seconds=int(
                (
                    (section.get("rotation") or {}).get("after")
                    and parse_duration(section["rotation"]["after"])
                )
                or parse_duration(section.get("lease", values["sync.lease"]))
            ),
        )
    return rules


def _token_helper_file(
    values: dict[str, Any], sources: dict[str, str], environ: Mapping[str, str]
) -> None:
    """As the vault CLI does: with no VAULT_TOKEN (and no token file of ours), the token
    `vault login` left in ~/.vault-token (its default token helper). Re-read at each login."""
    if values["vault.token"] is not None or values["vault.token_file"]:
        return
    home = environ.get("HOME")
    if home and (Path(home) / ".vault-token").is_file():
        values["vault.token_file"] = str(Path(home) / ".vault-token")
        sources["vault.token_file"] = "~/.vault-token"


def _opt_str(values: Mapping[str, Any], name: str) -> str | None:
    value = values.get(name)
    return value if isinstance(value, str) and value else None


def _vault_settings(v: Mapping[str, Any], sources: Mapping[str, str]) -> VaultSettings:
    from vault_zpa.zpa.clouds import check_url

    addr = v["vault.addr"]
    try:
        check_url(addr, sources["vault.addr"])
    except ConfigError as exc:
        if "plain http" not in exc.message:
            raise
        # The vault CLI allows http anywhere; we warn loudly instead of refusing (see cli).
    method = v["vault.auth_method"]
    if method == "approle" and not (v["vault.approle_role_id"] or v["vault.approle_role_id_file"]):
        raise ConfigError(
            "AppRole auth needs VAULT_ZPA_APPROLE_ROLE_ID or VAULT_ZPA_APPROLE_ROLE_ID_FILE"
        )
    if method == "kubernetes" and not v["vault.kubernetes_role"]:
        raise ConfigError("Kubernetes auth needs VAULT_ZPA_KUBERNETES_ROLE")
    if bool(v["vault.client_cert"]) != bool(v["vault.client_key"]):
        raise ConfigError("VAULT_CLIENT_CERT and VAULT_CLIENT_KEY must be set together")
    return VaultSettings(
        addr=addr,
        token=v["vault.token"],
        token_file=_opt_str(v, "vault.token_file"),
        namespace=_opt_str(v, "vault.namespace"),
        cacert=_opt_str(v, "vault.cacert"),
        capath=_opt_str(v, "vault.capath"),
        client_cert=_opt_str(v, "vault.client_cert"),
        client_key=_opt_str(v, "vault.client_key"),
        skip_verify=v["vault.skip_verify"],
        auth_method=method,
        approle_role_id=v["vault.approle_role_id"],
        approle_role_id_file=_opt_str(v, "vault.approle_role_id_file"),
        approle_secret_id=v["vault.approle_secret_id"],
        approle_secret_id_file=_opt_str(v, "vault.approle_secret_id_file"),
        approle_mount=v["vault.approle_mount"],
        kubernetes_role=_opt_str(v, "vault.kubernetes_role"),
        kubernetes_jwt_file=v["vault.kubernetes_jwt_file"],
        kubernetes_mount=v["vault.kubernetes_mount"],
        mount=v["vault.mount"],
        prefix=v["vault.prefix"],
        kv_version=v["vault.kv_version"],
        max_versions=v["vault.max_versions"],
        concurrency=v["vault.concurrency"],
        timeout=v["vault.timeout"],
        retry_budget=v["vault.retry_budget"],
    )


def _zpa_settings(v: Mapping[str, Any], sources: Mapping[str, str]) -> ZpaSettings:
    from vault_zpa.zpa.clouds import check_url, legacy_base_url, oneapi_urls

    has_legacy = bool(v["zpa.client_id"] or v["zpa.client_secret"])
    has_oneapi = bool(
        v["zpa.oneapi_client_id"] or v["zpa.oneapi_client_secret"] or v["zpa.private_key"]
    )
    mode = v["zpa.auth"]
    if mode == "auto" and v["zpa.use_legacy_client"] is not None:
        mode = "legacy" if v["zpa.use_legacy_client"] else "oneapi"
    if mode == "auto":
        if has_legacy and has_oneapi:
            raise ConfigError(
                "both legacy ZPA API key (ZPA_CLIENT_ID) and OneAPI (ZSCALER_CLIENT_ID) "
                "credentials are set",
                hint="set ZSCALER_USE_LEGACY_CLIENT=true or false to say which to use",
            )
        if not (has_legacy or has_oneapi):
            raise ConfigError(
                "no ZPA credentials: set ZPA_CLIENT_ID and ZPA_CLIENT_SECRET (legacy API key) "
                "or ZSCALER_CLIENT_ID with ZSCALER_CLIENT_SECRET or ZSCALER_PRIVATE_KEY (OneAPI)"
            )
        mode = "legacy" if has_legacy else "oneapi"
    customer = _opt_str(v, "zpa.customer_id")
    if not customer:
        raise ConfigError("ZPA_CUSTOMER_ID is not set", hint="it is the tenant id of your ZPA")
    if not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", customer):
        raise ConfigError(
            f"{sources['zpa.customer_id']}: ZPA customer id must be digits (got {customer[:40]!r})"
        )
    base_override = _opt_str(v, "zpa.base_url")
    if base_override:
        base_override = check_url(base_override, sources["zpa.base_url"])
    secret: Secret | None
    private_key: Secret | None = None
    if mode == "legacy":
        client_id = _opt_str(v, "zpa.client_id")
        secret = v["zpa.client_secret"] or _secret_file(v, "zpa.client_secret_file")
        if not client_id or secret is None:
            raise ConfigError("legacy ZPA auth needs ZPA_CLIENT_ID and ZPA_CLIENT_SECRET")
        base = base_override or legacy_base_url(v["zpa.cloud"])
        token_url = f"{base}/signin"
        if not base_override and v["zpa.cloud"].upper() == "DEV":
            from vault_zpa.zpa.clouds import DEV_TOKEN_URL

            token_url = DEV_TOKEN_URL
    else:
        from vault_zpa.zpa.auth import load_private_key

        client_id = _opt_str(v, "zpa.oneapi_client_id")
        secret = v["zpa.oneapi_client_secret"]
        if v["zpa.private_key"] is not None:
            if secret is not None:
                raise ConfigError(
                    "ZSCALER_CLIENT_SECRET and ZSCALER_PRIVATE_KEY are mutually exclusive; set one"
                )
            private_key = load_private_key(v["zpa.private_key"].reveal())
        if not client_id or (secret is None and private_key is None):
            raise ConfigError(
                "OneAPI auth needs ZSCALER_CLIENT_ID and ZSCALER_CLIENT_SECRET or "
                "ZSCALER_PRIVATE_KEY"
            )
        token_override = _opt_str(v, "zpa.token_url")
        if token_override and base_override:
            token_url, base = check_url(token_override, sources["zpa.token_url"]), base_override
        else:
            derived_token, derived_base = oneapi_urls(
                v["zpa.oneapi_cloud"], _opt_str(v, "zpa.vanity_domain") or ""
            )
            token_url = (
                check_url(token_override, sources["zpa.token_url"])
                if token_override
                else derived_token
            )
            base = base_override or derived_base
    return ZpaSettings(
        mode=mode,
        customer_id=customer,
        base_url=base,
        token_url=token_url,
        client_id=client_id,
        client_secret=secret,
        private_key=private_key,
        microtenant_id=_opt_str(v, "zpa.microtenant_id"),
        partner_id=_opt_str(v, "zpa.partner_id"),
        timeout=v["zpa.timeout"],
        retry_budget=v["zpa.retry_budget"],
        get_limit=v["zpa.get_limit"],
        write_limit=v["zpa.write_limit"],
        rate_window=v["zpa.rate_window"],
    )


def _secret_file(v: Mapping[str, Any], name: str) -> Secret | None:
    path = _opt_str(v, name)
    if not path:
        return None
    return read_secret_file(path, name)


def read_secret_file(path: str, name: str) -> Secret:
    """A secret kept in a file (trailing newline stripped); registered for log redaction."""
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"cannot read the secret file {path} ({name})") from None
    if not value:
        raise ConfigError(f"the secret file {path} ({name}) is empty")
    REDACTOR.register(value)
    return Secret(value)
