"""Where a group's secret lives in Vault: the path template and the group slug (DESIGN.md)."""

from __future__ import annotations

import hashlib
import re
import string
import sys
from typing import Final

from vault_zpa.errors import ConfigError

DEFAULT_TEMPLATE: Final = "{prefix}/{association_type}/{group}"
STATE_DIR: Final = "_vault-zpa"
PLACEHOLDERS: Final = frozenset(
    {"prefix", "association_type", "group", "group_id", "microtenant_id"}
)
MAX_SEGMENT: Final = 128

_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def slug(name: str, *, fallback: str) -> str:
    """DESIGN.md's slug: runs outside [A-Za-z0-9._-] become one '-', trimmed of '-'.

    An empty result, '.' or '..' becomes `fallback`. Names longer than MAX_SEGMENT are cut and
    suffixed with a hash of the whole name, so long names stay distinct and paths stay bounded.
    """
    result = _UNSAFE_RUN.sub("-", name).strip("-")
    if result in ("", ".", ".."):
        return fallback
    if len(result) > MAX_SEGMENT:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        result = f"{result[: MAX_SEGMENT - 13].rstrip('-')}-{digest}"
    return result


def group_slug(group_name: str, group_id: str) -> str:
    return slug(group_name, fallback=slug(f"group-{group_id}", fallback="group-unknown"))


def validate_prefix(prefix: str) -> str:
    """The prefix is one or more safe segments; it is the fence no group name can cross."""
    segments = prefix.strip("/").split("/")
    for segment in segments:
        if not _SAFE_SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise ConfigError(
                f"prefix {prefix!r} is not a safe Vault path",
                hint="use segments of letters, digits, '.', '_' and '-' separated by '/'",
            )
    return "/".join(segments)


def validate_template(template: str) -> str:
    """A template uses known placeholders, starts with {prefix}/ and names the group."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"path template {template!r} is malformed: {exc}") from None
    unknown = fields - PLACEHOLDERS
    if unknown:
        raise ConfigError(
            f"path template {template!r} uses unknown placeholder(s) {sorted(unknown)}",
            hint=f"allowed: {', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))}",
        )
    if not template.startswith("{prefix}/"):
        raise ConfigError(f"path template {template!r} must start with '{{prefix}}/'")
    if not fields & {"group", "group_id"}:
        raise ConfigError(f"path template {template!r} must contain {{group}} or {{group_id}}")
    return template


def secret_path(
    template: str,
    *,
    prefix: str,
    association_type: str,
    group_name: str,
    group_id: str,
    microtenant_id: str | None,
) -> str:
    """Render the path of a group's secret, relative to the mount. Always under `prefix/`."""
    rendered = template.format(
        prefix=prefix,
        association_type=slug(association_type, fallback="unknown"),
        group=group_slug(group_name, group_id),
        group_id=slug(group_id, fallback="unknown"),
        microtenant_id=slug(microtenant_id or "", fallback="default"),
    )
    check_under_prefix(rendered, prefix)
    return sys.intern(rendered)  # the same path string as Vault's LIST: held once


def check_under_prefix(path: str, prefix: str) -> None:
    """Refuse any path that is not `prefix/` followed by safe segments (defence in depth)."""
    if not path.startswith(prefix + "/"):
        raise ConfigError(f"rendered path {path!r} is outside prefix {prefix!r}")
    rest = path[len(prefix) + 1 :].split("/")
    if any(s in ("", ".", "..") or not _SAFE_SEGMENT.fullmatch(s) for s in rest):
        raise ConfigError(f"rendered path {path!r} has an unsafe segment")
    if rest[0] == STATE_DIR:
        raise ConfigError(f"rendered path {path!r} collides with vault-zpa's own state directory")


def state_path(prefix: str, name: str) -> str:
    """Paths of the daemon's own state (leader lease, journals) under `<prefix>/_vault-zpa/`."""
    return f"{prefix}/{STATE_DIR}/{name}"
