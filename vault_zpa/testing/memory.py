"""An in-memory KvStore with KV v2 semantics (versions, check-and-set, custom_metadata, soft
delete). The same contract suite runs against it and against real OpenBao."""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

from vault_zpa.errors import CasConflict
from vault_zpa.model import SYNCED_VERSION, StoredSecret


@dataclass
class _Entry:
    versions: list[dict[str, str]] = field(default_factory=list)
    deleted: set[int] = field(default_factory=set)
    custom_metadata: dict[str, str] = field(default_factory=dict)


class MemoryKvStore:
    kv_version = 2

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.writes = 0
        self.metadata_writes = 0
        self.reads = 0
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="memory-kv")

    def executor(self) -> Executor:
        return self._pool

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def read(self, path: str) -> StoredSecret | None:
        with self._lock:
            self.reads += 1
            entry = self._entries.get(path)
            if entry is None or not entry.versions:
                return None
            current = len(entry.versions)
            data = None if current in entry.deleted else dict(entry.versions[-1])
            return StoredSecret(path, current, data, dict(entry.custom_metadata))

    def list_tree(self, root: str) -> list[str]:
        prefix = root.rstrip("/") + "/"
        with self._lock:
            return sorted(
                p for p, e in self._entries.items() if p.startswith(prefix) and e.versions
            )

    def write(
        self,
        path: str,
        data: Mapping[str, str],
        *,
        cas: int,
        custom_metadata: Mapping[str, str],
        remove: Collection[str] = (),
    ) -> int:
        with self._lock:
            entry = self._entries.setdefault(path, _Entry())
            if len(entry.versions) != cas:
                raise CasConflict(path=path, expected_version=cas)
            entry.versions.append(dict(data))
            self.writes += 1
            version = len(entry.versions)
        self.write_metadata(path, {**custom_metadata, SYNCED_VERSION: str(version)}, remove=remove)
        return version

    def write_metadata(
        self, path: str, custom_metadata: Mapping[str, str], *, remove: Collection[str] = ()
    ) -> None:
        """A merge, as Vault's PATCH of metadata: keys not named are kept."""
        with self._lock:
            entry = self._entries.setdefault(path, _Entry())
            for key in remove:
                entry.custom_metadata.pop(key, None)
            entry.custom_metadata.update(custom_metadata)
            self.metadata_writes += 1

    def soft_delete(self, path: str) -> None:
        with self._lock:
            entry = self._entries.get(path)
            if entry and entry.versions:
                entry.deleted.add(len(entry.versions))
