"""KV storage for vault-zpa's secrets: the `KvStore` contract and its hvac implementation.

KV v2 (the default): data writes always carry check-and-set against the version read; volatile
facts go to `custom_metadata`, which creates no version. KV v1 has neither versions nor
metadata: the volatile facts ride in the data under `_meta_*` keys together with the `ttl` lease
hint, and writes are read-compare-write (documented in the README).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Executor
from typing import Any, Protocol

import hvac
import hvac.exceptions

from vault_zpa.errors import CasConflict, VaultError, VaultMountError, VaultPermissionDenied
from vault_zpa.model import SYNCED_VERSION, StoredSecret, interned
from vault_zpa.vault.connection import VaultConnection

V1_META_PREFIX = "_meta_"
log = logging.getLogger(__name__)


class KvStore(Protocol):
    """What the sync engine needs from Vault. Paths are relative to the mount."""

    kv_version: int

    def read(self, path: str) -> StoredSecret | None: ...

    def list_tree(self, root: str) -> list[str]: ...

    def write(
        self,
        path: str,
        data: Mapping[str, str],
        *,
        cas: int,
        custom_metadata: Mapping[str, str],
        remove: Collection[str] = (),
    ) -> int: ...

    def write_metadata(
        self, path: str, custom_metadata: Mapping[str, str], *, remove: Collection[str] = ()
    ) -> None:
        """Merge into custom_metadata: the keys given are set, the keys in `remove` deleted,
        every other key (another tool's, an operator's) and the secret's own settings
        (max_versions, delete_version_after) are kept."""

    def soft_delete(self, path: str) -> None: ...

    def executor(self) -> Executor: ...

    def close(self) -> None: ...


def detect_kv_version(conn: VaultConnection, mount: str) -> int:
    """1 or 2, as `vault kv get` finds it: `sys/internal/ui/mounts/<mount>` (any token with a
    capability under the mount may read it, so a connector's policy is enough), else
    `sys/mounts/<mount>`. A missing or non-KV mount is a configuration error."""
    version = preflight_kv_version(conn, mount)
    if version is not None:
        return version
    missing = VaultMountError(
        f"Vault has no secrets engine mounted at {mount!r}",
        hint=f"enable one: vault secrets enable -path={mount} kv-v2",
    )
    try:
        info = conn.call(
            lambda c: c.adapter.get(f"/v1/sys/mounts/{mount}"),
            path=f"sys/mounts/{mount}",
            capability="read",
            kind="sys",
        )
    except hvac.exceptions.InvalidPath:
        raise missing from None
    except VaultPermissionDenied:
        raise VaultMountError(
            f"this token may not read sys/mounts/{mount}, so the KV version is unknown",
            hint=f"set VAULT_ZPA_KV_VERSION=2 (or 1), or grant read on sys/mounts/{mount}",
        ) from None
    except VaultError as exc:
        # OpenBao answers 400 "No secret engine mount at ..." where Vault answers 404.
        if "no secret engine mount" in exc.message.lower():
            raise missing from None
        raise
    return _version_of(info, mount)


def preflight_kv_version(conn: VaultConnection, mount: str) -> int | None:
    """GET sys/internal/ui/mounts/<mount> (the vault CLI's KV preflight): the version, or None
    when this Vault or this token will not say (then the caller falls back). A path that is
    not a KV mount at all is refused here already."""
    try:
        info = conn.call(
            lambda c: c.adapter.get(f"/v1/sys/internal/ui/mounts/{mount}"),
            path=f"sys/internal/ui/mounts/{mount}",
            capability="read",
            kind="sys",
        )
    except (hvac.exceptions.InvalidPath, VaultPermissionDenied):
        return None
    except VaultError as exc:
        if exc.exit_code == 2:
            raise  # a refused token or TLS: no fallback will do better
        return None
    data = info.get("data", info) if isinstance(info, dict) else {}
    if data.get("path", "").rstrip("/") != mount.strip("/"):
        return None  # the mount is deeper or elsewhere: let sys/mounts say it precisely
    return _version_of(info, mount)


def check_kv_version(conn: VaultConnection, mount: str, configured: int) -> None:
    """VAULT_ZPA_KV_VERSION set by hand: refuse it (one line, exit 2) when the mount says
    otherwise, instead of writing v2 paths into a v1 mount or reading v1 paths of a v2 one."""
    actual = preflight_kv_version(conn, mount)
    if actual is not None and actual != configured:
        raise VaultMountError(
            f"VAULT_ZPA_KV_VERSION={configured}, but the mount {mount!r} is KV v{actual}",
            hint="unset VAULT_ZPA_KV_VERSION (vault-zpa detects the version) or set it to "
            f"{actual}",
        )


def _version_of(info: Any, mount: str) -> int:
    data = info.get("data", info) if isinstance(info, dict) else {}
    if data.get("type") not in ("kv", "generic"):
        raise VaultMountError(f"the mount {mount!r} is a {data.get('type')!r} engine, not KV")
    version = str((data.get("options") or {}).get("version") or "1")
    return 2 if version == "2" else 1


class HvacKvStore:
    """KvStore over a real Vault/OpenBao, through `VaultConnection.call` for every request."""

    def __init__(
        self,
        conn: VaultConnection,
        *,
        mount: str,
        kv_version: int = 2,
        max_versions: int = 5,
        ttl: str | None = None,
    ) -> None:
        self.conn = conn
        self.mount = mount
        self.kv_version = kv_version
        self.max_versions = max_versions
        self.ttl = ttl
        self._patch_denied = False

    def __repr__(self) -> str:
        return f"HvacKvStore({self.conn.addr!r}, mount={self.mount!r}, v{self.kv_version})"

    def executor(self) -> Executor:
        return self.conn.executor()

    def close(self) -> None:
        self.conn.close()

    def _full(self, path: str, area: str) -> str:
        return f"{self.mount}/{area}/{path}" if self.kv_version == 2 else f"{self.mount}/{path}"

    # -- reads --------------------------------------------------------------------------

    def read(self, path: str) -> StoredSecret | None:
        """GET <mount>/data/<path> (v2: data, version and custom_metadata in one request)."""
        if self.kv_version == 1:
            return self._read_v1(path)

        def get(c: hvac.Client) -> Any:
            return c.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self.mount, raise_on_deleted_version=False
            )

        try:
            body = self.conn.call(
                get, path=self._full(path, "data"), capability="read", kind="read"
            )
        except hvac.exceptions.InvalidPath as exc:
            self._no_mount(exc)
            return None
        payload = body.get("data") or {}
        meta = payload.get("metadata") or {}
        data = payload.get("data")
        return StoredSecret(
            path=path,
            version=int(meta.get("version") or 0),
            data=_strings(data) if isinstance(data, dict) else None,
            custom_metadata=_strings(meta.get("custom_metadata") or {}),
        )

    def _read_v1(self, path: str) -> StoredSecret | None:
        try:
            body = self.conn.call(
                lambda c: c.secrets.kv.v1.read_secret(path=path, mount_point=self.mount),
                path=self._full(path, ""),
                capability="read",
                kind="read",
            )
        except hvac.exceptions.InvalidPath as exc:
            self._no_mount(exc)
            return None
        raw = _strings(body.get("data") or {})
        data = {k: v for k, v in raw.items() if not k.startswith(V1_META_PREFIX) and k != "ttl"}
        meta = {k[len(V1_META_PREFIX) :]: v for k, v in raw.items() if k.startswith(V1_META_PREFIX)}
        return StoredSecret(path=path, version=0, data=data, custom_metadata=meta)

    def _no_mount(self, exc: hvac.exceptions.InvalidPath) -> None:
        """A 404 that says no route matched is a missing mount, not a missing secret."""
        if any("no handler for route" in str(e) for e in (exc.errors or [])):
            raise VaultMountError(
                f"Vault has no secrets engine mounted at {self.mount!r}",
                hint="check VAULT_ZPA_MOUNT (`bao secrets list` shows the mounts)",
            )

    def list_tree(self, root: str) -> list[str]:
        """LIST <mount>/metadata/<root>/ recursively: every leaf path under `root`."""
        out: list[str] = []
        pending = [root.rstrip("/") + "/"]
        while pending:
            folder = pending.pop()

            def ls(c: hvac.Client, folder: str = folder) -> Any:
                if self.kv_version == 2:
                    return c.secrets.kv.v2.list_secrets(path=folder, mount_point=self.mount)
                return c.secrets.kv.v1.list_secrets(path=folder, mount_point=self.mount)

            try:
                body = self.conn.call(
                    ls, path=self._full(folder, "metadata"), capability="list", kind="list"
                )
            except hvac.exceptions.InvalidPath:
                continue
            for name in (body.get("data") or {}).get("keys") or []:
                if name.endswith("/"):
                    pending.append(folder + name)
                else:
                    out.append(sys.intern(folder + name))  # shared with the planner's path
        return sorted(out)

    # -- writes -------------------------------------------------------------------------

    def write(
        self,
        path: str,
        data: Mapping[str, str],
        *,
        cas: int,
        custom_metadata: Mapping[str, str],
        remove: Collection[str] = (),
    ) -> int:
        """v2: POST data with options.cas, then PATCH metadata (with `synced_version`, the
        version written). Returns the new version."""
        if self.kv_version == 1:
            self._write_v1(path, data, custom_metadata, remove=remove)
            return 0

        def put(c: hvac.Client) -> Any:
            return c.secrets.kv.v2.create_or_update_secret(
                path=path, secret=dict(data), cas=cas, mount_point=self.mount
            )

        try:
            body = self.conn.call(
                put, path=self._full(path, "data"), capability="update", kind="write"
            )
        except CasConflict:
            raise CasConflict(path=path, expected_version=cas) from None
        version = int((body.get("data") or {}).get("version") or 0)
        # The version we wrote, so a later read tells an edit made in Vault (a newer version)
        # from a change in ZPA. A new secret gets our max_versions once; afterwards it is the
        # operator's to change.
        meta = {**custom_metadata, SYNCED_VERSION: str(version)}
        self._patch_metadata(path, meta, remove, first=version == 1, after_write=True)
        return version

    def write_metadata(
        self, path: str, custom_metadata: Mapping[str, str], *, remove: Collection[str] = ()
    ) -> None:
        """PATCH <mount>/metadata/<path> (a JSON merge patch): creates no version and leaves
        keys we do not name, max_versions and delete_version_after as they are."""
        if self.kv_version == 1:
            current = self._read_v1(path)
            if current is not None and current.data is not None:
                merged = {**current.custom_metadata, **custom_metadata}
                self._write_v1(path, current.data, merged, remove=remove)
            return
        self._patch_metadata(path, custom_metadata, remove, first=False)

    def _patch_metadata(
        self,
        path: str,
        custom_metadata: Mapping[str, str],
        remove: Collection[str],
        *,
        first: bool,
        after_write: bool = False,
    ) -> None:
        patch: dict[str, Any] = {
            "custom_metadata": {
                **{k: None for k in remove if k not in custom_metadata},
                **_fit_metadata(custom_metadata),
            }
        }
        if first:
            patch["max_versions"] = self.max_versions
        url = f"/v1/{self.mount}/metadata/{path}"

        def meta(c: hvac.Client) -> Any:
            return c.adapter.request(
                "PATCH",
                url,
                headers={"Content-Type": "application/merge-patch+json"},
                json=patch,
            )

        if not self._patch_denied:
            try:
                self._patch_after_write(meta, path, retry_404=after_write)
                return
            except VaultPermissionDenied:
                # A policy written for an earlier vault-zpa (no "patch"): read-merge-write.
                self._patch_denied = True
                log.warning(
                    "this token may not patch %s; merging metadata by read and write instead "
                    '(not atomic: add "patch" to the metadata rule of vault-zpa\'s policy)',
                    self._full(path, "metadata"),
                )
        self._merge_metadata(path, patch)

    def _patch_after_write(
        self, meta: Callable[[hvac.Client], Any], path: str, *, retry_404: bool
    ) -> None:
        """PATCH metadata; a 404 right after our own data write (`retry_404`) is a Raft standby
        that has not applied that write yet (standbys serve reads locally): retried briefly.
        Elsewhere a 404 means the secret is not there, and is raised at once."""
        for attempt in range(8 if retry_404 else 1):
            try:
                self.conn.call(
                    meta, path=self._full(path, "metadata"), capability="patch", kind="metadata"
                )
                return
            except hvac.exceptions.InvalidPath:
                if not retry_404:
                    raise
                if attempt == 7:
                    raise VaultError(
                        f"Vault has no metadata at {self._full(path, 'metadata')!r} after "
                        "writing it (a standby that is far behind?)"
                    ) from None
                time.sleep(0.05 * 2**attempt)

    def _merge_metadata(self, path: str, patch: Mapping[str, Any]) -> None:
        """GET then POST metadata, carrying over the settings an operator may have changed."""
        current = self.conn.call(
            lambda c: c.secrets.kv.v2.read_secret_metadata(path=path, mount_point=self.mount),
            path=self._full(path, "metadata"),
            capability="read",
            kind="metadata",
        )
        info = (current or {}).get("data") or {}
        custom = dict(info.get("custom_metadata") or {})
        for key, value in patch["custom_metadata"].items():
            if value is None:
                custom.pop(key, None)
            else:
                custom[key] = value
        max_versions = patch.get("max_versions", info.get("max_versions", self.max_versions))

        def post(c: hvac.Client) -> Any:
            return c.secrets.kv.v2.update_metadata(
                path=path,
                mount_point=self.mount,
                max_versions=max_versions,
                custom_metadata=_fit_metadata(custom),
                delete_version_after=info.get("delete_version_after") or "0s",
                cas_required=info.get("cas_required"),
            )

        self.conn.call(
            post, path=self._full(path, "metadata"), capability="update", kind="metadata"
        )

    def _write_v1(
        self,
        path: str,
        data: Mapping[str, str],
        custom_metadata: Mapping[str, str],
        *,
        remove: Collection[str] = (),
    ) -> None:
        body: dict[str, str] = dict(data)
        body.update({V1_META_PREFIX + k: v for k, v in custom_metadata.items() if k not in remove})
        if self.ttl:
            body["ttl"] = self.ttl
        self.conn.call(
            lambda c: c.secrets.kv.v1.create_or_update_secret(
                path=path, secret=body, mount_point=self.mount
            ),
            path=self._full(path, ""),
            capability="update",
            kind="write",
        )

    def soft_delete(self, path: str) -> None:
        """v2: DELETE <mount>/data/<path> (recoverable with `vault kv undelete`)."""
        if self.kv_version == 1:
            raise VaultMountError("pruning needs a KV v2 mount: KV v1 deletes are not recoverable")
        self.conn.call(
            lambda c: c.secrets.kv.v2.delete_latest_version_of_secret(
                path=path, mount_point=self.mount
            ),
            path=self._full(path, "data"),
            capability="delete",
            kind="delete",
        )


def _strings(value: Mapping[str, Any]) -> dict[str, str]:
    """Field names and short values interned: at 20,000 secrets the duplicates were most of the
    sync's memory."""
    return {
        interned(str(k)): interned(v if isinstance(v, str) else str(v)) for k, v in value.items()
    }


def _fit_metadata(meta: Mapping[str, str]) -> dict[str, str]:
    """Vault's custom_metadata limits: <= 64 keys, keys <= 128, values 1..512 characters."""
    fitted = {k[:128]: (v or "-")[:512] for k, v in meta.items()}
    return dict(list(fitted.items())[:64])
