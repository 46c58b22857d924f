"""Writing the store's files: one lock per file, taken in a fixed order, and the TinyDB of a locked file."""

from __future__ import annotations

import threading
from typing import Any

from filelock import FileLock
from tinydb import TinyDB
from tinydb.storages import Storage

from advtui.store import files
from advtui.store.files import _check
from advtui.store.schema import JOBS, LOCK_TIMEOUT_S, RUNS


# -- writing files: one lock per file, in a fixed order ------------------------------------------
_LOCKS: dict[str, FileLock] = {}  # one lock object per file and process, so nesting is re-entrant
_LOCKS_GUARD = threading.Lock()
_local = threading.local()


def _lock_for(path: str) -> FileLock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(path)
        if lock is None:
            lock = _LOCKS[path] = FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT_S)
        return lock


class _Shard:
    """One file of the store: where it is, which tables it holds, where its lock comes in order."""

    __slots__ = ("path", "kind", "order", "tables")

    def __init__(self, path: str, kind: str, order: tuple, tables: tuple[str, ...] | None):
        self.path, self.kind, self.order, self.tables = path, kind, order, tables


class _Open:
    """A file this thread holds locked for writing: its data (changed in place by TinyDB)."""

    def __init__(self, shard: _Shard, data: dict, lock: FileLock):
        self.shard, self.data, self.lock = shard, data, lock
        self.dirty = False
        self.depth = 0
        self.archive: dict[str, dict] = {}  # queue only: archive files changed, written after it
        self.db = _ShardDB(_MemoryStorage(self), shard)

    def reload(self) -> None:
        """Back to the file as last written (a nested step failed: its changes are dropped)."""
        self.data = _check(files._load(self.shard.path)) or {}
        self.dirty = False
        self.archive.clear()
        for table in self.db._tables.values():
            table._next_id = None
            table.clear_cache()


def _held() -> dict[str, _Open]:
    held = getattr(_local, "held", None)
    if held is None:
        held = _local.held = {}
    return held


class _MemoryStorage(Storage):
    """The open file's data; TinyDB's writes only mark it changed (it is written at the end)."""

    def __init__(self, opened: _Open):
        self.opened = opened

    def read(self) -> dict:
        return self.opened.data

    def write(self, data: dict) -> None:
        self.opened.data = data
        self.opened.dirty = True

    def close(self) -> None:
        pass


class _ShardDB(TinyDB):
    """The TinyDB of one store file, limited to the tables that live in it (query cache off)."""

    def __init__(self, storage: _MemoryStorage, shard: _Shard):  # noqa: D107 - storage given, not built
        self._storage = storage
        self._opened = True
        self._tables = {}
        self._shard = shard

    def table(self, name: str, **kwargs: Any):
        allowed = self._shard.tables
        if (allowed is not None and name not in allowed) or (allowed is None and name in (RUNS, JOBS)):
            raise RuntimeError(f"table {name!r} does not live in {self._shard.path}")
        kwargs["cache_size"] = 0
        return super().table(name, **kwargs)


