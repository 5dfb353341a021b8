"""Where a group's secret lives in Vault: the path template and the group slug (DESIGN.md).

The one slug, used by sync, `fetch` and `policy render` alike:

- `group_slug(name, id)`: every run of characters outside [A-Za-z0-9._-] becomes one '-',
  trimmed of '-'; an empty result, '.' or '..' becomes `group-<group_id>`.
- A name is *lossy* when its slug is not the name itself (characters were replaced or dropped).
- Collisions (`assign_paths`): when several groups render to one path, every lossy one among
  them is placed again with the slug `<slug>-<group_id>`; a name that is its own slug keeps its
  path, so a new oddly named group never moves an existing plain one. "東京-1" and "大阪-1"
  (both `1`) become `1-<id>` each, and a group named "1" keeps `1`. Whatever still shares a path
  after that (two groups with the same plain name, or a plain name equal to another group's
  `<slug>-<id>`) is a true collision, reported by the planner for both groups.
- The rule depends only on the names and ids of one listing, so every run places every group
  the same way; a placement is always a rendered template, so it never leaves the prefix.
- `fetch` and `policy render` are given a name, not the id: a name whose slug is empty cannot be
  placed without `--group-id`, and they refuse it rather than guess (`needs_group_id`).
"""

from __future__ import annotations

import hashlib
import re
import string
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
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


def group_slug(group_name: str, group_id: str, *, disambiguate: bool = False) -> str:
    """The slug of a group; with `disambiguate`, `<slug>-<group_id>` (see the module docstring)."""
    result = slug(group_name, fallback=slug(f"group-{group_id}", fallback="group-unknown"))
    if disambiguate:
        result = slug(f"{result}-{slug(group_id, fallback='unknown')}", fallback="group-unknown")
    return result


def needs_group_id(group_name: str) -> bool:
    """True when the name alone has nothing a path can use: its slug is `group-<group_id>`."""
    return slug(group_name, fallback="") == ""


def is_lossy(group_name: str) -> bool:
    """True when the slug is not the name itself; only such names move on a collision."""
    return slug(group_name, fallback="") != group_name


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
    disambiguate: bool = False,
) -> str:
    """Render the path of a group's secret, relative to the mount. Always under `prefix/`."""
    rendered = template.format(
        prefix=prefix,
        association_type=slug(association_type, fallback="unknown"),
        group=group_slug(group_name, group_id, disambiguate=disambiguate),
        group_id=slug(group_id, fallback="unknown"),
        microtenant_id=slug(microtenant_id or "", fallback="default"),
    )
    check_under_prefix(rendered, prefix)
    return sys.intern(rendered)  # the same path string as Vault's LIST: held once


@dataclass(frozen=True, slots=True)
class GroupRef:
    """What places one group: its template and the values of the placeholders."""

    template: str
    prefix: str
    association_type: str
    group_name: str
    group_id: str
    microtenant_id: str | None

    def path(self, *, disambiguate: bool = False) -> str:
        return secret_path(
            self.template,
            prefix=self.prefix,
            association_type=self.association_type,
            group_name=self.group_name,
            group_id=self.group_id,
            microtenant_id=self.microtenant_id,
            disambiguate=disambiguate,
        )


def assign_paths(refs: Sequence[GroupRef]) -> list[str | ConfigError]:
    """Place every group of a run at once (the collision rule needs all of them): each result
    is the path, or the ConfigError that refused it. Paths still shared afterwards are true
    collisions for the caller to report. Pass every group a listing holds, not a filtered
    subset, or a filtered run would place a group where a full run does not."""
    placed: list[str | ConfigError] = []
    for ref in refs:
        try:
            placed.append(ref.path())
        except ConfigError as exc:
            placed.append(exc)
    by_path: dict[str, list[int]] = defaultdict(list)
    for index, path in enumerate(placed):
        if isinstance(path, str):
            by_path[path].append(index)
    for indexes in by_path.values():
        if len(indexes) < 2:
            continue
        for index in indexes:
            ref = refs[index]
            # Only a name whose slug lost characters can have caused the clash; a plain name
            # keeps its path (and a template without {group} gives the id nowhere to go).
            if not is_lossy(ref.group_name) or "{group}" not in ref.template:
                continue
            try:
                placed[index] = ref.path(disambiguate=True)
            except ConfigError as exc:
                placed[index] = exc
    return placed


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


def require_group_id(group_name: str, group_id: str | None) -> None:
    """fetch and policy render place a group by name; one with no usable character is stored by
    id, so they need the id rather than guess a path that may be another group's."""
    if needs_group_id(group_name) and not group_id:
        raise ConfigError(
            f"group name {group_name!r} has no character a Vault path can use, so its secret "
            "is stored by id (group-<group_id>)",
            hint="pass --group-id with the group_id `vault-zpa sync --output json` reports",
        )
