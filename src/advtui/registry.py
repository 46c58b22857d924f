"""The run registry: metadata of runs, jobs and evaluation results in TinyDB (``runs/advtui.json``).

TinyDB is not safe for several processes on its own, so every write goes through
``Registry.transaction``: a cross-process file lock, a fresh read of the file, the change, and an
atomic replace (temp file, fsync, rename). Readers never take the lock: the rename makes every
read see either the old or the new file, never a torn one. The query cache is off, so no process
acts on a stale view. Before each replace the previous good file is kept as ``advtui.json.bak``.

Metrics are not stored here (they stream to each run's events.jsonl); only metadata is.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout
from tinydb import Query, TinyDB
from tinydb.storages import Storage
from tinydb.table import Document

from advtui.errors import RegistryError, RunNotFoundError

REGISTRY_FILE = "advtui.json"
SCHEMA_VERSION = 1
LOCK_TIMEOUT_S = 60.0

RUNS, JOBS, RESULTS, META = "runs", "jobs", "results", "_meta"

# Run statuses. ``queued`` runs exist in the registry before their process starts.
RUN_STATUSES = ("queued", "running", "finished", "failed", "killed")


class AtomicJSONStorage(Storage):
    """TinyDB storage that refuses to read a corrupt file and writes by atomic rename."""

    def __init__(self, path: str, backup: bool = True):
        self.path = Path(path)
        self.backup = backup

    def read(self) -> dict | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RegistryError(f"cannot read the registry {self.path}: {exc}") from exc
        if not text.strip():
            # The storage never writes an empty file (it replaces by rename), so an empty one was
            # truncated by something else: treating it as a new registry would lose every run
            # and, at the next write, the last good copy too.
            raise RegistryError(
                f"the registry {self.path} is empty (truncated?); it was left untouched. "
                f"The last good copy is {self.path}.bak: inspect it and copy it over the registry"
            )
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
        except ValueError as exc:
            raise RegistryError(
                f"the registry {self.path} is corrupt ({exc}); it was left untouched. "
                f"The last good copy is {self.path}.bak: inspect it and copy it over the registry"
            ) from exc
        return data

    def write(self, data: dict) -> None:
        payload = json.dumps(data, separators=(",", ":"))
        fd, tmp = tempfile.mkstemp(prefix=".advtui.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            if self.backup and self.path.exists():
                self._keep_last_good_copy(f"{tmp}.bak")
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _keep_last_good_copy(self, bak_tmp: str) -> None:
        """Keep the current file (it parsed: every write follows a read) as advtui.json.bak."""
        try:
            os.link(self.path, bak_tmp)  # a hard link costs nothing
        except OSError:  # a filesystem without hard links
            shutil.copyfile(self.path, bak_tmp)
        os.replace(bak_tmp, f"{self.path}.bak")

    def close(self) -> None:
        pass


def _match(fields: dict[str, Any]):
    """A TinyDB query matching documents whose fields equal ``fields``."""
    q = Query()
    cond = None
    for key, value in fields.items():
        term = q[key] == value
        cond = term if cond is None else (cond & term)
    return cond if cond is not None else q.noop()


class Registry:
    """All access to ``advtui.json`` goes through here."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / REGISTRY_FILE
        self._lock = FileLock(str(self.root / f"{REGISTRY_FILE}.lock"), timeout=LOCK_TIMEOUT_S)

    # -- low level --------------------------------------------------------------------------
    def _db(self) -> TinyDB:
        return TinyDB(str(self.path), storage=AtomicJSONStorage)

    def _check_schema(self, data: dict) -> bool:
        """Refuse a registry written by a newer advtui; True if it records its schema already.

        Takes the raw file contents (one parse serves the check and what follows: the whole
        file is parsed on every read, so each parse saved counts as the registry grows)."""
        meta = list((data.get(META) or {}).values())
        if meta and meta[0].get("schema", 0) > SCHEMA_VERSION:
            raise RegistryError(
                f"the registry {self.path} has schema {meta[0]['schema']}, newer than this "
                f"advtui understands ({SCHEMA_VERSION}): upgrade advtui"
            )
        return bool(meta)

    @contextmanager
    def transaction(self) -> Iterator[TinyDB]:
        """Exclusive read-modify-write access across processes."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout as exc:
            raise RegistryError(
                f"the registry {self.path} stayed locked for {LOCK_TIMEOUT_S:.0f}s; "
                f"if no advtui process is running, delete {self._lock.lock_file}"
            ) from exc
        try:
            db = self._db()
            if not self._check_schema(db.storage.read() or {}):
                db.table(META, cache_size=0).insert({"schema": SCHEMA_VERSION, "created": time.time()})
            yield db
        finally:
            self._lock.release()

    def _read_table(self, table: str) -> list[dict]:
        """Lock-free read of one table (atomic renames make it consistent)."""
        if not self.path.exists():
            return []
        data = AtomicJSONStorage(str(self.path)).read() or {}
        self._check_schema(data)
        return [dict(doc) for doc in (data.get(table) or {}).values()]

    # -- generic tables (runs, jobs, results) ------------------------------------------------
    def all(self, table: str) -> list[dict]:
        return self._read_table(table)

    def search(self, table: str, **match: Any) -> list[dict]:
        return [d for d in self._read_table(table) if all(d.get(k) == v for k, v in match.items())]

    def insert(self, table: str, doc: dict) -> dict:
        with self.transaction() as db:
            db.table(table, cache_size=0).insert(doc)
        return doc

    def update(self, table: str, match: dict[str, Any], fields: dict[str, Any]) -> int:
        with self.transaction() as db:
            return len(db.table(table, cache_size=0).update(fields, _match(match)))

    def upsert(self, table: str, match: dict[str, Any], doc: dict) -> None:
        """Replace the document matching ``match`` (all of it), or insert ``doc``."""
        with self.transaction() as db:
            t = db.table(table, cache_size=0)
            t.remove(_match(match))
            t.insert({**doc, **match})

    def remove(self, table: str, match: dict[str, Any]) -> int:
        with self.transaction() as db:
            return len(db.table(table, cache_size=0).remove(_match(match)))

    # -- runs -------------------------------------------------------------------------------
    def create_run(self, doc: dict) -> dict:
        """Insert a run with a fresh unique id (6 hex digits) and return it."""
        with self.transaction() as db:
            runs = db.table(RUNS, cache_size=0)
            # One parse of the file gives both the ids in use and the next document number
            # (TinyDB would otherwise read the whole file once more to find it).
            stored = (db.storage.read() or {}).get(RUNS) or {}
            taken = {r.get("id") for r in stored.values()}
            next_doc_id = max((int(k) for k in stored), default=0) + 1
            run_id = secrets.token_hex(3)
            while run_id in taken:
                run_id = secrets.token_hex(3)
            record = {
                "id": run_id,
                "status": "queued",
                "host": socket.gethostname(),
                "created": time.time(),
                **doc,
            }
            record["id"] = run_id
            runs.insert(Document(record, doc_id=next_doc_id))
        return record

    def update_run(self, run_id: str, **fields: Any) -> None:
        if self.update(RUNS, {"id": run_id}, fields) == 0:
            raise RunNotFoundError(f"no run with id {run_id!r} in {self.path}")

    def get_run(self, run_id: str) -> dict | None:
        found = self.search(RUNS, id=run_id)
        return found[0] if found else None

    def runs(self) -> list[dict]:
        return sorted(self._read_table(RUNS), key=lambda r: r.get("created", 0))

    def resolve_run(self, ref: str) -> dict:
        """A run by exact id, unique id prefix, or unique name; a clear error otherwise."""
        runs = self.runs()
        exact = [r for r in runs if r["id"] == ref]
        if exact:
            return exact[0]
        by_prefix = [r for r in runs if r["id"].startswith(ref)]
        by_name = [r for r in runs if r.get("name") == ref]
        for found in (by_name, by_prefix):
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                ids = ", ".join(r["id"] for r in found[:5])
                raise RunNotFoundError(f"{ref!r} matches several runs ({ids}): give the full id")
        raise RunNotFoundError(
            f"no run {ref!r} in {self.root}: `advtui ls` lists the runs there"
            " (or pass --runs-dir)"
        )
