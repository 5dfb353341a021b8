"""Least-privilege Vault policies for the daemon, each connector group, and auditors.

The files in `policies/` are these templates rendered for the defaults (mount `secret`, prefix
`zpa`, KV v2); `vault-zpa policy render` renders them for any mount, prefix and group, and
`vault-zpa policy apply` writes them to Vault (only when they differ: idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass

from vault_zpa import layout
from vault_zpa.model import AssociationType


@dataclass(frozen=True)
class Policy:
    name: str
    text: str


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
"""
    else:
        text = f"""# vault-zpa daemon: sync, prune, rotation, leader lease; {mount}/{prefix}/ only.
# Key data: read to compare, create/update with check-and-set, delete = soft delete for --prune.
path "{mount}/data/{prefix}/*" {{
  capabilities = ["create", "read", "update", "delete"]
}}

# custom_metadata (usage, leases, rotation journal, ownership marker) and listing for orphans.
path "{mount}/metadata/{prefix}/*" {{
  capabilities = ["create", "read", "update", "list"]
}}

# Detect the KV version of the mount.
path "sys/mounts/{mount}" {{
  capabilities = ["read"]
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
) -> Policy:
    """A connector group reads its own group's secret: no list, no write, no other group."""
    path = layout.secret_path(
        template,
        prefix=prefix,
        association_type=association_type.value,
        group_name=group_name,
        group_id=group_id or group_name,
        microtenant_id=microtenant_id,
    )
    leaf = path.rsplit("/", 1)[-1]
    name = f"vault-zpa-{association_type.value.lower().replace('_', '-')}-{leaf}"[:128]
    full = _paths(mount, kv_version, "data", path)
    text = f"""# vault-zpa: {association_type.value} group {_comment(group_name)} reads its key.
path "{full}" {{
  capabilities = ["read"]
}}
"""
    return Policy(name, text)


def _comment(text: str) -> str:
    return "".join(c if c.isprintable() and c not in "\n\r" else "?" for c in text)[:100]
