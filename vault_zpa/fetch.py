"""`vault-zpa fetch`: the connector side. Read one group's key from Vault and write it to the
file the connector service reads, atomically, with the mode and owner it expects.

Zscaler's runbook: App Connector `/opt/zscaler/var/provision_key`, Private Service Edge
`/opt/zscaler/var/service-edge/provision_key`, mode 644, written before the service starts
(zpa-api.md §9). The file ends with a newline, as Zscaler's own user_data writes it.

Which secret: the path sync uses for the group (layout.py), found from the name and, where
the name alone cannot place it, `--group-id`: a name with no usable character is refused
without it (exit 2), and a name whose slug collided lives at `<slug>-<group_id>`. A secret
naming another group is never taken, wherever it sits.

The existing `--out` is never read unless it is a regular file of sane size (it is only
compared, to skip a needless rewrite); a FIFO, device, socket or directory there is refused, a
symbolic link is replaced, not followed. Write failures (missing or read-only directory) are
one line and exit 1.

With a wrapped token (wrapping.py) the secret arrives by unwrapping instead of a read; the
same checks apply to it (`check_group`, `validate_key`), and `preflight_target` runs before
the single-use token is spent, so a key is never unwrapped only to be lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vault_zpa import layout
from vault_zpa.errors import ConfigError, VaultPermissionDenied, VaultZpaError
from vault_zpa.model import AssociationType, StoredSecret
from vault_zpa.vault.connection import VaultConnection
from vault_zpa.vault.kv import check_kv_version, preflight_kv_version

DEFAULT_PATHS = {
    AssociationType.CONNECTOR_GRP: "/opt/zscaler/var/provision_key",
    AssociationType.SERVICE_EDGE_GRP: "/opt/zscaler/var/service-edge/provision_key",
}
# <version>|<enrollment host>|<opaque>: treated as opaque beyond this shape (zpa-api.md §9).
KEY_SHAPE = re.compile(r"\d+\|[A-Za-z0-9.-]+\|[A-Za-z0-9+/=_-]{16,}")
# A key file is well under 1 KiB; anything larger at --out is not ours to read.
MAX_EXISTING = 64 * 1024


class FetchError(VaultZpaError):
    """The key could not be fetched or written; the existing file is untouched."""


@dataclass(frozen=True)
class Written:
    path: str
    changed: bool
    length: int
    fingerprint: str  # sha256 prefix: lets a person compare without seeing the key


class _Reader(Protocol):
    def read(self, path: str) -> StoredSecret | None: ...


def candidate_paths(
    *,
    template: str,
    prefix: str,
    association_type: AssociationType,
    group_name: str,
    group_id: str | None,
    microtenant_id: str | None,
) -> list[str]:
    """Where sync may hold this group's secret, in the order to try: the path of the name, then
    (given the id, for a name whose slug lost characters) the collision path `<slug>-<id>`."""
    layout.require_group_id(group_name, group_id)
    ref = layout.GroupRef(
        template, prefix, association_type.value, group_name, group_id or "", microtenant_id
    )
    paths = [ref.path()]
    if group_id and layout.is_lossy(group_name) and "{group}" in template:
        paths.append(ref.path(disambiguate=True))
    return list(dict.fromkeys(paths))


def find_secret(
    store: _Reader, paths: list[str], *, group_name: str, group_id: str | None, mount: str
) -> tuple[str, Mapping[str, str]]:
    path, secret = find_stored(store, paths, group_name=group_name, group_id=group_id, mount=mount)
    assert secret.data is not None
    return path, secret.data


def exhausted(secret: StoredSecret) -> str | None:
    """Why the key in this secret can enroll no more connectors, if it cannot: sync marks a
    group whose keys are all used up or disabled (`key_state`), and the counts say the rest."""
    meta = secret.custom_metadata
    data = secret.data or {}
    if meta.get("key_state") == "no-eligible-key":
        return "ZPA has no usable key for this group (used up or disabled); this is the last one"
    try:
        used, limit = int(meta.get("usage_count", "")), int(data.get("max_usage", ""))
    except ValueError:
        return None
    if limit and used >= limit:
        return f"the key has used {used} of {limit} enrollments"
    return None


def find_stored(
    store: _Reader, paths: list[str], *, group_name: str, group_id: str | None, mount: str
) -> tuple[str, StoredSecret]:
    """Read the candidates in order; the first secret of this group wins (its path and data).
    A secret that names another group is skipped, never returned. Raises FetchError (or the
    first denial) if none is found."""
    denied: VaultPermissionDenied | None = None
    refusal: str | None = None
    for path in paths:
        try:
            secret = store.read(path)
        except VaultPermissionDenied as exc:
            denied = denied or exc
            continue
        if secret is None or secret.data is None:
            continue
        other = _other_group(secret.data, group_name=group_name, group_id=group_id)
        if other is None:
            return path, secret
        refusal = refusal or (
            f"the secret at {mount}/{path} belongs to group {other}, not {group_name!r}"
        )
    if refusal is not None:
        raise FetchError(
            refusal,
            hint="check --group and --group-id name the same group (`vault-zpa sync --output "
            "json` lists both)"
            if group_id
            else "names whose slug collides live at <slug>-<group_id>: pass --group-id",
        )
    if denied is not None:
        raise denied
    raise FetchError(
        f"no provisioning key at {mount}/{paths[0]}",
        hint="check the group name (and --group-id), or run `vault-zpa sync` first",
    )


def check_group(secret: StoredSecret, *, where: str, group_name: str, group_id: str | None) -> None:
    """Refuse a secret (an unwrapped one: its path was checked, its content not yet) that
    names another group, as `find_stored` skips one."""
    other = _other_group(secret.data or {}, group_name=group_name, group_id=group_id)
    if other is not None:
        raise FetchError(
            f"the secret at {where} belongs to group {other}, not {group_name!r}",
            hint="check --group and --group-id name the same group",
        )


def kv_version(conn: VaultConnection, mount: str, configured: str) -> int:
    """As `vault kv get` finds it: sys/internal/ui/mounts, which a connector's own policy may
    read; KV v2 when that is not answered. A version set by hand is checked the same way, so
    a wrong one is one line (exit 2), not "no provisioning key"."""
    if configured == "auto":
        return preflight_kv_version(conn, mount) or 2
    version = int(configured)
    check_kv_version(conn, mount, version)
    return version


def preflight_target(path: str, *, uid: int | None = None, gid: int | None = None) -> None:
    """What `write_key` would refuse, checked before a single-use token is spent on a key that
    could then not be written: something at `path` that is not a regular file or a link, a
    missing directory, one this process may not write to, an --owner only root may give."""
    target = Path(path)
    _existing(target)
    if os.geteuid() != 0 and (
        (uid is not None and uid != os.geteuid())
        or (gid is not None and gid not in os.getgroups() and gid != os.getegid())
    ):
        raise FetchError(
            "--owner: only root may give the key file to another user or group; the wrapped "
            "token was not used",
            hint="run fetch as root, or leave out --owner",
        )
    directory = target.parent
    if not directory.is_dir():
        raise FetchError(
            f"directory {directory} does not exist; the wrapped token was not used",
            hint="is the connector package installed? or pass --out",
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise FetchError(
            f"cannot write {target}: no write permission in {directory}; the wrapped token "
            "was not used",
            hint="run as the user that may write there (root), or pass --out",
        )


def _other_group(data: Mapping[str, str], *, group_name: str, group_id: str | None) -> str | None:
    """Describe the group a secret names, if that is not ours. Fields absent (a secret put by
    hand) prove nothing either way; where present, the name and (when given) the id must both
    be this group's: a name and an id of two different groups match neither."""
    their_id, their_name = data.get("group_id"), data.get("group_name")
    same = their_name is None or their_name == group_name
    if group_id and their_id is not None:
        same = same and their_id == group_id
    if same:
        return None
    return f"{their_name!r} (id {their_id})" if their_id is not None else repr(their_name)


def validate_key(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FetchError("the secret holds an empty provisioning key; refusing to write it")
    if not KEY_SHAPE.fullmatch(value):
        raise FetchError(
            "the secret's provisioning_key does not look like a ZPA provisioning key "
            "(<version>|<host>|<key>); refusing to write it"
        )
    return value


def write_key(
    value: str,
    path: str,
    *,
    mode: int = 0o644,
    uid: int | None = None,
    gid: int | None = None,
) -> Written:
    """Write atomically: a temp file in the same directory, fsync, chmod/chown, rename, fsync
    the directory. A reader sees the old file or the new one, never a part."""
    key = validate_key(value)
    target = Path(path)
    content = (key + "\n").encode("ascii")
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:12]
    current = _existing(target)
    if current is not None:
        old, st = current
        if old == content and _owned(st, mode, uid, gid):
            return Written(path, False, len(key), fingerprint)
    directory = target.parent
    if not directory.is_dir():
        raise FetchError(
            f"directory {directory} does not exist",
            hint="is the connector package installed? or pass --out",
        )
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise FetchError(f"cannot write {target}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            if uid is not None or gid is not None:
                os.fchown(handle.fileno(), -1 if uid is None else uid, -1 if gid is None else gid)
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise FetchError(f"cannot write {target}: {exc.strerror}") from None
    return Written(path, True, len(key), fingerprint)


def _existing(target: Path) -> tuple[bytes, os.stat_result] | None:
    """The file at `target` and its status, only if it is a regular file of sane size: a link
    is not followed, a FIFO is never waited on (O_NONBLOCK), a device is never read. Anything
    there that a rename must not replace (FIFO, device, socket, directory) is refused."""
    try:
        kind = os.lstat(target).st_mode
    except OSError:
        return None  # absent (or its directory is): the write says what is wrong
    if stat.S_ISLNK(kind):
        return None  # replaced by the rename, never followed
    if not stat.S_ISREG(kind):
        raise FetchError(
            f"--out {target} is not a regular file; refusing to replace it",
            hint="remove it or choose another --out",
        )
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # swapped since the lstat, or unreadable: just replace it
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_EXISTING:
            return None
        return os.read(fd, MAX_EXISTING + 1), st
    except OSError:
        return None
    finally:
        os.close(fd)


def _owned(st: os.stat_result, mode: int, uid: int | None, gid: int | None) -> bool:
    return (
        (st.st_mode & 0o7777) == mode
        and (uid is None or st.st_uid == uid)
        and (gid is None or st.st_gid == gid)
    )


def parse_owner(owner: str) -> tuple[int | None, int | None]:
    """'user', 'user:group', ':group' or numeric ids."""
    import grp
    import pwd

    user, _, group = owner.partition(":")
    try:
        uid = (int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid) if user else None
        gid = (int(group) if group.isdigit() else grp.getgrnam(group).gr_gid) if group else None
    except KeyError:
        raise ConfigError(f"--owner {owner!r}: no such user or group") from None
    return uid, gid
