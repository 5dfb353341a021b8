"""Least-privilege Vault policies for the daemon, each connector group, and auditors.

The files in `policies/` are these templates rendered for the defaults (mount `secret`, prefix
`zpa`, KV v2); `vault-zpa policy render` renders them for any mount, prefix and group, and
`vault-zpa policy apply` writes them to Vault (only when they differ: idempotent).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vault_zpa import layout
from vault_zpa.errors import ConfigError
from vault_zpa.model import AssociationType, Listing
from vault_zpa.reconcile import Scope, TypeRule, desired

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    name: str
    text: str
    group: str = ""  # the connector group it is for ("" for the daemon and auditor policies)


def _paths(mount: str, kv_version: int, area: str, rest: str) -> str:
    return f"{mount}/{area}/{rest}" if kv_version == 2 else f"{mount}/{rest}"


def daemon_policy(*, mount: str = "secret", prefix: str = "zpa", kv_version: int = 2) -> Policy:
    """What sync, prune, rotation and the leader lease need under the prefix, nothing else."""
    if kv_version == 1:
        text = f"""# vault-zpa daemon (KV v1 mount "{mount}"): sync under {prefix}/ only.
path "{mount}/{prefix}/*" {{
  capabilities = ["create", "read", "update", "list"]
}}

# Detect the KV version of the mount.
path "sys/mounts/{mount}" {{
  capabilities = ["read"]
}}

# The token's own lookup and renewal (the default policy grants these too).
path "auth/token/lookup-self" {{
  capabilities = ["read"]
}}
path "auth/token/renew-self" {{
  capabilities = ["update"]
}}
"""
    else:
        text = f"""# vault-zpa daemon: sync, prune, rotation, leader lease; {mount}/{prefix}/ only.
# Key data: read to compare, create/update with check-and-set, delete = soft delete for --prune.
path "{mount}/data/{prefix}/*" {{
  capabilities = ["create", "read", "update", "delete"]
}}

# custom_metadata (usage, leases, ownership marker; patch = merge, so other keys and the
# secret's own settings survive) and listing for orphans. The rotation journal and the leader
# lease are secrets of their own under _vault-zpa/, covered by the data rule above.
path "{mount}/metadata/{prefix}/*" {{
  capabilities = ["create", "read", "update", "patch", "list"]
}}

# Detect the KV version of the mount.
path "sys/mounts/{mount}" {{
  capabilities = ["read"]
}}

# The token's own lookup and renewal (the default policy grants these too).
path "auth/token/lookup-self" {{
  capabilities = ["read"]
}}
path "auth/token/renew-self" {{
  capabilities = ["update"]
}}
"""
    return Policy("vault-zpa-daemon", text)


def auditor_policy(*, mount: str = "secret", prefix: str = "zpa", kv_version: int = 2) -> Policy:
    """Read-only view of what vault-zpa manages: metadata (usage, leases, rotation state) and
    listings, never the key values."""
    if kv_version == 1:
        text = f"""# vault-zpa auditor (KV v1 mount "{mount}"): list what is managed; KV v1 keeps no
# separate metadata, so reading it would reveal keys: listing only.
path "{mount}/{prefix}/*" {{
  capabilities = ["list"]
}}
"""
    else:
        text = f"""# vault-zpa auditor: metadata and listings of {mount}/{prefix}/, never keys.
path "{mount}/metadata/{prefix}/*" {{
  capabilities = ["read", "list"]
}}

# Rotation journals (states, key ids and names; never a key value).
path "{mount}/data/{prefix}/_vault-zpa/rotation/*" {{
  capabilities = ["read"]
}}
"""
    return Policy("vault-zpa-auditor", text)


def connector_policy(
    *,
    association_type: AssociationType,
    group_name: str,
    group_id: str = "",
    mount: str = "secret",
    prefix: str = "zpa",
    template: str = layout.DEFAULT_TEMPLATE,
    microtenant_id: str | None = None,
    kv_version: int = 2,
    path: str | None = None,
) -> Policy:
    """A connector group reads its own group's secret: no list, no write, no other group.

    `path` is the placement sync computed (see `placed_connector_policies`); without it the
    group is placed by its name as layout.py does when the name collides with no other. A name
    with no usable character needs `group_id`: it is refused rather than guessed."""
    if path is None:
        layout.require_group_id(group_name, group_id)
        path = layout.secret_path(
            template,
            prefix=prefix,
            association_type=association_type.value,
            group_name=group_name,
            group_id=group_id,
            microtenant_id=microtenant_id,
        )
    leaf = path.rsplit("/", 1)[-1]
    name = _bounded(f"vault-zpa-{association_type.value.lower().replace('_', '-')}-{leaf}")
    full = _paths(mount, kv_version, "data", path)
    text = f"""# vault-zpa: {association_type.value} group {_comment(group_name)} reads its key.
path "{full}" {{
  capabilities = ["read"]
}}

# The token's own lookup (vault-zpa fetch checks its token; the default policy grants it too).
path "auth/token/lookup-self" {{
  capabilities = ["read"]
}}
"""
    return Policy(name, text, group_name)


MAX_NAME = 128


def _bounded(name: str) -> str:
    """At most MAX_NAME characters: a longer name is cut and suffixed with a hash of the whole,
    so two long names that share their first 128 characters stay two policies."""
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name[: MAX_NAME - 13]}-{digest}"


def check_distinct(policies: Iterable[Policy]) -> list[Policy]:
    """Vault lowercases policy names, so `Lab` and `LAB` would be one policy, the second write
    replacing the first's grant. Refused (ConfigError, one line) before anything is written;
    the same policy asked for twice is kept once."""
    seen: dict[str, Policy] = {}
    out = []
    for item in policies:
        key = item.name.lower()
        other = seen.get(key)
        if other is None:
            seen[key] = item
            out.append(item)
        elif other != item and other.name == item.name:
            # Not a case clash: two group names with one slug, so one secret path that sync
            # reports as a collision and writes for neither.
            raise ConfigError(
                f"groups {other.group!r} and {item.group!r} map to the same secret path, so "
                f"to one policy {item.name!r}; nothing was written",
                hint="sync writes neither while they collide: rename one of the groups in ZPA",
            )
        elif other != item:
            raise ConfigError(
                f"policies {other.name!r} and {item.name!r} would be one Vault policy "
                f"({key!r}: Vault lowercases policy names); nothing was written",
                hint="Vault policy names ignore case: rename one of the groups in ZPA, or write "
                "a policy of your own granting both paths",
            )
    return out


def _granted_group(text: str) -> str | None:
    """The group a connector policy rendered by vault-zpa was written for (its first line)."""
    first = text.split("\n", 1)[0]
    if not first.startswith("# vault-zpa: ") or " group " not in first:
        return None
    return first.split(" group ", 1)[1].removesuffix(" reads its key.")


def check_replaces(item: Policy, current: str | None) -> None:
    """A policy already in Vault under this name (Vault ignores case) written for another
    group: `apply --group Lab` then `apply --group LAB` would silently take Lab's grant away.
    Refused (one line, exit 2) before anything is written."""
    if current is None or not item.group:
        return
    there = _granted_group(current)
    if there is not None and there != _comment(item.group):
        raise ConfigError(
            f"policy {item.name!r} in Vault already grants group {there!r}, not "
            f"{item.group!r} (Vault lowercases policy names); nothing was written",
            hint=f"if group {there!r} is gone, `vault policy delete {item.name.lower()}` and "
            "apply again; otherwise rename one of the groups in ZPA",
        )


def _comment(text: str) -> str:
    return "".join(c if c.isprintable() and c not in "\n\r" else "?" for c in text)[:100]


def placed_connector_policies(
    listings: Iterable[Listing],
    *,
    rules: Mapping[AssociationType, TypeRule],
    mount: str = "secret",
    prefix: str = "zpa",
    kv_version: int = 2,
) -> list[Policy]:
    """One connector policy per group (keyless ones included), at exactly the path sync places
    it (the same `reconcile.desired`, collisions resolved the same way). A group sync refuses
    to write (a true collision, no safe path) gets no policy: its path may hold another
    group's secret."""
    placed = desired(listings, prefix=prefix, rules=rules, scope=Scope())
    out = []
    for group in placed.groups:
        if group.path is None or group.path in placed.collisions:
            log.warning(
                "no policy for %s group %r (id %s): sync does not write it",
                group.association_type.value,
                group.group_name,
                group.group_id,
            )
            continue
        out.append(
            connector_policy(
                association_type=group.association_type,
                group_name=group.group_name,
                group_id=group.group_id,
                mount=mount,
                prefix=prefix,
                kv_version=kv_version,
                path=group.path,
            )
        )
    return out
