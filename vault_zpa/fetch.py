"""`vault-zpa fetch`: the connector side. Read one group's key from Vault and write it to the
file the connector service reads, atomically, with the mode and owner it expects.

Zscaler's runbook: App Connector `/opt/zscaler/var/provision_key`, Private Service Edge
`/opt/zscaler/var/service-edge/provision_key`, mode 644, written before the service starts
(zpa-api.md §9). The file ends with a newline, as Zscaler's own user_data writes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vault_zpa.errors import VaultZpaError
from vault_zpa.model import AssociationType

DEFAULT_PATHS = {
    AssociationType.CONNECTOR_GRP: "/opt/zscaler/var/provision_key",
    AssociationType.SERVICE_EDGE_GRP: "/opt/zscaler/var/service-edge/provision_key",
}
# <version>|<enrollment host>|<opaque>: treated as opaque beyond this shape (zpa-api.md §9).
KEY_SHAPE = re.compile(r"\d+\|[A-Za-z0-9.-]+\|[A-Za-z0-9+/=_-]{16,}")


class FetchError(VaultZpaError):
    """The key could not be fetched or written; the existing file is untouched."""


@dataclass(frozen=True)
class Written:
    path: str
    changed: bool
    length: int
    fingerprint: str  # sha256 prefix: lets a person compare without seeing the key


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
    try:
        if target.read_bytes() == content and _owned(target, mode, uid, gid):
            return Written(path, False, len(key), fingerprint)
    except OSError:
        pass
    directory = target.parent
    if not directory.is_dir():
        raise FetchError(
            f"directory {directory} does not exist",
            hint="is the connector package installed? or pass --out",
        )
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            if uid is not None or gid is not None:
                os.fchown(handle.fileno(), -1 if uid is None else uid, -1 if gid is None else gid)
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise FetchError(f"cannot write {target}: {exc.strerror}") from None
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return Written(path, True, len(key), fingerprint)


def _owned(target: Path, mode: int, uid: int | None, gid: int | None) -> bool:
    st = target.stat()
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
        raise FetchError(f"--owner {owner!r}: no such user or group") from None
    return uid, gid
