"""The run store: runs, jobs, evaluation results and reproduction plans in small TinyDB files.

Layout (under the runs directory)::

    registry.json             _meta (schema), reproductions, any other small table; touched on
                              every write to the store, so its stat changes whenever anything does
    queue.json                jobs queued or running, and up to 100 that ended lately
    queue-archive/NNNNNNNN.json   ended jobs moved out of queue.json, 500 a file, oldest first
    <run-id>/run.json         the run's record (table ``runs``) and its evaluation results
                              (table ``results``)
    advtui.json.migrated      the single-file registry of earlier versions, kept after migration

A write touches one small file, so it costs the same at 10 runs and at 10,000. TinyDB is not
safe for several processes on its own, so every write goes through one code path per file: a
cross-process file lock (``FILE.lock``), a fresh read, the change, and an atomic replace (temp
file, fsync, rename) that first keeps the previous good file as ``FILE.bak``. Readers never take
a lock: the rename makes every read see either the old or the new file, never a torn one.

Reads parse each file once per process and keep it while its stat (inode, size, mtime, ctime)
is unchanged; a file written within a second of being read is read again (a coarse
filesystem clock could give two versions one mtime), so another process's write is always
seen. Listing 10,000 runs is then a directory scan and 10,000 stats. A process that never
listed them starts from ``.listing-cache.json`` (what a listing parsed, with each file's stat,
checked file by file), since one big parse costs less than 10,000 small ones.

Several files change together by nesting transactions: the queue first, then run files in id
order, then registry.json. Locks are always taken in that order (the other order raises), so
two processes never wait on each other. A damaged file is reported in one line and never
overwritten; a damaged run file hides only that run (listings report it in ``damaged``). A file
that parses but is not what its name says (``{}``, ``[]``, a registry.json without ``_meta``, a
run.json with other tables, a run field of the wrong type) is damaged too: taken as empty, the
next write would replace it and its ``.bak``. A job or reproduction plan whose fields do not
have their types is hidden alone and kept as it is in its file (``record_problems()``).
``store_problems()`` lists every damaged file and record in one line each (the dashboard).
A run folder that is a symbolic link is never followed (hidden, and refused before any write),
and no store file is read through a link. A migration never replaces an existing file.

Metrics are not stored here (they stream to each run's events.jsonl); only metadata is.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from filelock import Timeout
from tinydb import TinyDB
from tinydb.table import Document

from advtui.core.atomic import atomic_write_json
from advtui.core.memory import FREEZE_MIN_RUNS, cyclic_gc_paused, freeze_long_lived
from advtui.core.errors import AmbiguousRunError, RegistryError, RunNotFoundError
from advtui.store import files
from advtui.store.files import (
    _CACHE, _EMPTY, _LISTING_CACHES_READ, _bad_docs, _check, _created, _docs, _first, _match, _matches,
    _read, _read_keyed, _refuse_linked_folder, _write_error,
)
from advtui.store.listing import ListingCache
from advtui.store.locks import _Open, _Shard, _held, _lock_for
from advtui.store.migrate import LegacyMigration
from advtui.store.schema import (
    ARCHIVE_DIR, ENDED_JOB_STATUSES, JOBS, LEGACY_FILE, LOCK_TIMEOUT_S, META, QUEUE_FILE, REGISTRY_FILE,
    RESULTS, RUNS, RUN_FILE, SCHEMA_VERSION, _safe_id,
)


class Registry(ListingCache, LegacyMigration):
    """All access to the run store goes through here."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._dir = os.path.abspath(self.root)  # file and lock keys: one per file, however named
        self.path = self.root / REGISTRY_FILE  # its stat changes with every write to the store
        self.queue_path = self.root / QUEUE_FILE
        self.archive_dir = self.root / ARCHIVE_DIR
        self.legacy_path = self.root / LEGACY_FILE
        self._registry_file = os.path.join(self._dir, REGISTRY_FILE)
        self._queue_file = os.path.join(self._dir, QUEUE_FILE)
        self._archive = os.path.join(self._dir, ARCHIVE_DIR)
        # One line per damaged run file found by the last listing (the healthy runs are listed).
        self.damaged: list[str] = []
        self._damaged_ids: dict[str, str] = {}
        self._migrated = False
        self._store_ready = False

    # -- damage -----------------------------------------------------------------------------
    def store_problems(self) -> list[str]:
        """One line per store file that cannot be used (damaged, unreadable): registry.json and
        queue.json (whose damage stops every command: listings raise RegistryError with the
        same line), then the run files the last listing skipped (``damaged``). Empty when the
        store is sound. For front ends that show the store's state instead of raising."""
        problems = []
        for path in (self._registry_file, self._queue_file, *self._archive_files()):
            try:
                _read(path)
            except RegistryError as exc:
                problems.append(str(exc))
        return problems + list(self.damaged) + self.record_problems()

    def record_problems(self) -> list[str]:
        """One line per job or reproduction plan hidden because its fields are damaged (a
        ``priority: "high"``, an unknown eval option): the records beside it are read as usual."""
        lines = []
        for path in (self._queue_file, *self._archive_files(), self._registry_file):
            try:
                lines += [doc.problem for doc in _bad_docs(_read(path))]
            except RegistryError:
                continue  # a damaged file: store_problems says so in its own line
        return lines

    # -- files ------------------------------------------------------------------------------
    def run_path(self, run_id: str) -> Path:
        return self.root / run_id / RUN_FILE

    def _run_file(self, run_id: Any) -> str | None:
        return self._run_file_at(run_id) if _safe_id(run_id) else None

    def _run_file_at(self, run_id: str) -> str:
        """The run file of ``run_id``, an id already known to be safe (``_safe_id``)."""
        return os.path.join(self._dir, run_id, RUN_FILE)

    def _queue_shard(self) -> _Shard:
        return _Shard(self._queue_file, "queue", (0,), (JOBS,))

    def _run_shard(self, run_id: str) -> _Shard:
        return _Shard(self._run_file_at(run_id), "run", (1, run_id), (RUNS, RESULTS))

    def _registry_shard(self) -> _Shard:
        return _Shard(self._registry_file, "registry", (2,), None)

    def _shard_for(self, table: str, key: str | None) -> _Shard:
        if table == JOBS:
            return self._queue_shard()
        if table in (RUNS, RESULTS):
            if _safe_id(key):
                return self._run_shard(key)
            if table == RUNS or key is None:
                raise RunNotFoundError(f"the {table} table lives in each run's folder: name a run id, not {key!r}")
        return self._registry_shard()  # other tables, and results whose run id cannot name a folder

    # -- readiness: migration, schema, creation ----------------------------------------------
    def _ensure_ready(self, write: bool) -> None:
        if not self._migrated:
            self._migrate_legacy()
            self._migrated = True
        self._check_schema()
        if write and not self._store_ready:
            if not self.path.exists():
                try:
                    self.root.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise RegistryError(f"cannot create the runs folder {self.root}: {exc.strerror or exc}") from None
                with self._write(self._registry_shard(), ready=False) as opened:
                    meta = opened.db.table(META)
                    if not meta.all():
                        meta.insert({"schema": SCHEMA_VERSION, "created": time.time()})
            self._store_ready = True

    def _check_schema(self) -> None:
        """Refuse a store written by a newer advtui."""
        meta = _first(_read(self._registry_file), META)
        if meta and meta.get("schema", 0) > SCHEMA_VERSION:
            raise RegistryError(
                f"the registry {self.path} has schema {meta['schema']}, newer than this "
                f"advtui understands ({SCHEMA_VERSION}): upgrade advtui"
            )

    def _touch(self) -> None:
        """Mark a change: callers that watch ``path`` (the scheduler, the dashboard) see it."""
        now = time.time_ns()
        try:
            os.utime(self.path, ns=(now, now))
        except OSError:
            pass

    # -- writing ------------------------------------------------------------------------------
    @contextmanager
    def _write(self, shard: _Shard, ready: bool = True) -> Iterator[_Open]:
        """Hold ``shard`` locked with its current data; write it (atomically) when a level ends."""
        if ready:
            self._ensure_ready(write=True)
        held = _held()
        opened = held.get(shard.path)
        if opened is None:
            for other in held.values():
                if other.shard.order >= shard.order:
                    raise RuntimeError(f"lock order: {shard.path} taken while holding {other.shard.path} "
                                       "(take the queue, then run files in id order, then registry.json)")
            if shard.kind == "run":
                _refuse_linked_folder(os.path.dirname(shard.path))  # before its lock file is made in it
            lock = _lock_for(shard.path)
            try:
                os.makedirs(os.path.dirname(shard.path), exist_ok=True)
                lock.acquire()
            except Timeout as exc:
                raise RegistryError(
                    f"the registry file {shard.path} stayed locked for {LOCK_TIMEOUT_S:.0f}s; "
                    f"if no advtui process is running, delete {shard.path}.lock"
                ) from exc
            except OSError as exc:  # a runs folder that cannot be written (permissions, a full disk)
                raise _write_error(shard.path, exc) from None
            try:
                opened = _Open(shard, _check(files._load(shard.path)) or {}, lock)
            except BaseException:
                lock.release()
                raise
            held[shard.path] = opened
        elif opened.dirty or opened.archive:
            self._flush(opened)  # the outer level's changes stay if this nested one fails
        opened.depth += 1
        ok = False
        try:
            yield opened
            ok = True
        finally:
            opened.depth -= 1
            try:
                if ok and (opened.dirty or opened.archive):
                    self._flush(opened)
                elif not ok and opened.depth > 0 and (opened.dirty or opened.archive):
                    opened.reload()
            finally:
                if opened.depth == 0:
                    del held[shard.path]
                    opened.lock.release()

    def _flush(self, opened: _Open) -> None:
        try:
            self._flush_files(opened)
        except OSError as exc:  # nothing was replaced: the atomic write removed its temporary file
            raise _write_error(opened.shard.path, exc) from None

    def _flush_files(self, opened: _Open) -> None:
        path = opened.shard.path
        if opened.shard.kind == "queue":
            if opened.dirty:
                self._archive_ended(opened)  # into the archive first: a job is never in neither
                atomic_write_json(path, opened.data, backup=True)
            for chunk, data in sorted(opened.archive.items()):  # jobs moved back: queue.json first
                atomic_write_json(chunk, data, backup=True)
                _CACHE.pop(chunk, None)
            opened.archive.clear()
        else:
            atomic_write_json(path, opened.data, backup=True)
        opened.dirty = False
        _CACHE.pop(path, None)
        if opened.shard.kind != "registry":
            self._touch()  # registry.json itself gets a new inode, which its watchers see

    @contextmanager
    def transaction(self, table: str = JOBS, run_id: str | None = None) -> Iterator[TinyDB]:
        """Exclusive read-modify-write of the file holding ``table`` across processes: the queue
        (jobs, the default), a run's file (``runs`` and ``results``, with ``run_id``) or
        registry.json (any other table). The file is written once when the block ends, and not at
        all if it raises. Nest transactions to change several files as one step for other writers:
        the queue first, then run files, then registry.json."""
        with self._write(self._shard_for(table, run_id)) as opened:
            yield opened.db

    # -- generic tables (runs, jobs, results, others) ----------------------------------------
    def all(self, table: str) -> list[dict]:
        self._ensure_ready(write=False)
        return self._all(table)

    def _all(self, table: str) -> list[dict]:
        if table == RUNS:
            return self._runs()
        if table == JOBS:
            return self._all_jobs()
        if table == RESULTS:
            out = [dict(d) for _, data in self._scan() for d in _docs(data, RESULTS)]
            return out + [dict(d) for d in _docs(_read(self._registry_file), RESULTS)]
        return [dict(d) for d in _docs(_read(self._registry_file), table)]

    def _all_jobs(self, hot_only: bool = False) -> list[dict]:
        path = self._queue_file
        if hot_only:
            return [dict(d) for d in _docs(_read(path), JOBS)]
        for _ in range(20):
            key, hot_data = _read_keyed(path)
            archived = self._archived()
            # Jobs move between queue.json and the archive with queue.json written in between:
            # if it did not change meanwhile, the two reads agree (no job missed).
            if _read_keyed(path)[0] == key:
                break
        hot = list(_docs(hot_data, JOBS))
        ids = {d.get("id") for d in hot}
        by_id: dict[Any, dict] = {}
        for _, data in archived:  # an interrupted archiving may leave a copy: the newest wins
            for d in _docs(data, JOBS):
                if d.get("id") not in ids:
                    by_id[d.get("id")] = d
        return [dict(d) for d in by_id.values()] + [dict(d) for d in hot]

    def search(self, table: str, **match: Any) -> list[dict]:
        self._ensure_ready(write=False)
        if table == RUNS and "id" in match:
            found = self.get_run(match["id"])
            return [found] if found is not None and _matches(found, match) else []
        if table == RESULTS and "run_id" in match and _safe_id(match["run_id"]):
            return [dict(d) for d in _docs(_read(self._run_file_at(match["run_id"])), RESULTS) if _matches(d, match)]
        if table == JOBS:
            live = "status" in match and match["status"] not in ENDED_JOB_STATUSES
            if "id" in match and not live:  # ids are unique: the archive only if not in the queue
                same = [d for d in _docs(_read(self._queue_file), JOBS) if d.get("id") == match["id"]]
                if same:
                    return [dict(d) for d in same if _matches(d, match)]
            return [d for d in self._all_jobs(hot_only=live) if _matches(d, match)]
        return [d for d in self._all(table) if _matches(d, match)]

    def insert(self, table: str, doc: dict) -> dict:
        if table == RUNS:
            self._insert_run(doc)
            return doc
        key = doc.get("run_id") if table == RESULTS else None
        with self.transaction(table, key) as db:
            db.table(table).insert(doc)
        return doc

    def insert_multiple(self, table: str, docs: Iterable[dict]) -> int:
        """Insert many documents at once (benchmarks, imports): one write per file."""
        docs = list(docs)
        if table == RUNS:
            self._ensure_ready(write=True)
            for doc in docs:
                self._insert_run(doc, fsync=False)
            os.sync()
            self._touch()
        elif table == RESULTS:
            by_run: dict[Any, list[dict]] = {}
            for doc in docs:
                by_run.setdefault(doc.get("run_id"), []).append(doc)
            for run_id, group in by_run.items():
                with self.transaction(RESULTS, run_id) as db:
                    db.table(RESULTS).insert_multiple(group)
        elif table == JOBS:
            with self.transaction(JOBS) as db:
                db.table(JOBS).insert_multiple(docs)
        else:
            with self.transaction(table) as db:
                db.table(table).insert_multiple(docs)
        return len(docs)

    def _insert_run(self, doc: dict, fsync: bool = True) -> None:
        run_id = doc.get("id")
        if not _safe_id(run_id):
            raise RunNotFoundError(f"a run needs an id that can name a folder, not {run_id!r}")
        self._ensure_ready(write=True)
        with self._write(self._run_shard(run_id), ready=False) as opened:
            runs = opened.db.table(RUNS)
            if len(runs):
                raise RegistryError(f"a run with id {run_id!r} exists already in {self.root}")
            runs.insert(Document(doc, doc_id=1))
            if not fsync:  # bulk: the caller syncs once at the end
                atomic_write_json(opened.shard.path, opened.data, fsync=False)
                opened.dirty = False
                _CACHE.pop(opened.shard.path, None)

    def update(self, table: str, match: dict[str, Any], fields: dict[str, Any]) -> int:
        return self._change(table, match, lambda t: len(t.update(fields, _match(match))),
                            lambda doc: {**doc, **fields})

    def upsert(self, table: str, match: dict[str, Any], doc: dict) -> None:
        """Replace the document matching ``match`` (all of it), or insert ``doc``."""
        full = {**doc, **match}
        key = full.get("id") if table == RUNS else full.get("run_id") if table == RESULTS else None
        if table == RUNS and _safe_id(key) and not os.path.exists(self._run_file_at(key)):
            self._insert_run(full)
            return
        with self.transaction(table, key) as db:
            t = db.table(table)
            t.remove(_match(match))
            if table == JOBS:
                self._change_archived(self._held_queue(), match, lambda d: None)
            if table == RUNS:
                if len(t):
                    raise RegistryError(f"run {key} exists and does not match {match}: not replaced")
                t.insert(Document(full, doc_id=1))
            else:
                t.insert(full)

    def remove(self, table: str, match: dict[str, Any]) -> int:
        return self._change(table, match, lambda t: len(t.remove(_match(match))), lambda doc: None)

    def _held_queue(self) -> _Open:
        return _held()[self._queue_file]

    def _change(self, table: str, match: dict[str, Any], apply: Callable[[Any], int],
                change_doc: Callable[[dict], dict | None]) -> int:
        """Apply a TinyDB update or remove to the documents matching ``match``, wherever they live."""
        self._ensure_ready(write=True)
        if table == JOBS:
            with self._write(self._queue_shard(), ready=False) as opened:
                count = self._apply(opened, JOBS, apply)
                if not (count and "id" in match) and match.get("status", ENDED_JOB_STATUSES[0]) in ENDED_JOB_STATUSES:
                    count += self._change_archived(opened, match, change_doc)
                return count
        if table in (RUNS, RESULTS):
            key = "id" if table == RUNS else "run_id"
            if key in match:
                targets = [match[key]] if _safe_id(match[key]) else []
            else:
                targets = sorted({run_id for run_id, data in self._scan()
                                  if any(_matches(d, match) for d in _docs(data, table))})
            count = 0
            for run_id in targets:
                if not os.path.exists(self._run_file_at(run_id)):
                    continue  # no such run: nothing to change (and no folder to create)
                with self._write(self._run_shard(run_id), ready=False) as opened:
                    count += self._apply(opened, table, apply)
            if table == RESULTS and not (key in match and _safe_id(match[key])):
                with self._write(self._registry_shard(), ready=False) as opened:
                    count += self._apply(opened, table, apply)
            return count
        with self._write(self._registry_shard(), ready=False) as opened:
            return self._apply(opened, table, apply)

    @staticmethod
    def _apply(opened: _Open, table: str, apply: Callable[[Any], int]) -> int:
        was_dirty = opened.dirty
        count = apply(opened.db.table(table))
        if count == 0:
            opened.dirty = was_dirty  # nothing matched: TinyDB rewrote the same data, skip the write
        return count

    # -- runs -------------------------------------------------------------------------------
    def create_run(self, doc: dict) -> dict:
        """Insert a run with a fresh unique id (6 hex digits) and return it.

        The id is taken by creating the run's folder: mkdir is atomic, so two processes never
        get the same one."""
        self._ensure_ready(write=True)
        for _ in range(10_000):
            run_id = secrets.token_hex(3)
            try:
                os.mkdir(self.root / run_id)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise RegistryError(f"cannot create a run folder in {self.root}: {exc.strerror or exc}") from None
        else:
            raise RegistryError(f"no free run id in {self.root}")
        record = {"id": run_id, "status": "queued", "host": socket.gethostname(), "created": time.time(), **doc}
        record["id"] = run_id
        try:
            self._insert_run(record)
        except BaseException:
            try:  # the id is given back: no empty run folder is left behind
                for leftover in os.listdir(self.root / run_id):
                    if leftover.endswith(".lock"):
                        os.unlink(self.root / run_id / leftover)
                os.rmdir(self.root / run_id)
            except OSError:
                pass
            raise
        return record

    def update_run(self, run_id: str, **fields: Any) -> None:
        if self.update(RUNS, {"id": run_id}, fields) == 0:
            raise RunNotFoundError(f"no run with id {run_id!r} in {self.root}")

    def get_run(self, run_id: str) -> dict | None:
        self._ensure_ready(write=False)
        path = self._run_file(run_id)
        if path is not None:
            _refuse_linked_folder(os.path.dirname(path))
        record = _first(_read(path), RUNS) if path is not None else None
        return dict(record) if record is not None else None

    def runs(self) -> list[dict]:
        """Every run's record, oldest first (damaged run files are left out and listed in ``damaged``)."""
        self._ensure_ready(write=False)
        return self._runs()

    def _runs(self) -> list[dict]:
        first_listing = self._dir not in _LISTING_CACHES_READ
        with cyclic_gc_paused():
            records = [r.copy() for _, data in self._scan() for r in (data.get(RUNS) or _EMPTY).values()]
            if first_listing and len(records) >= FREEZE_MIN_RUNS:
                # The read cache this first listing filled lives as long as the process: frozen,
                # the full collection that re-enabling the collector would start next does not
                # walk it all for nothing (a sixth of `advtui ls` at 10,000 runs).
                freeze_long_lived()
        records.sort(key=_created)
        return records

    def resolve_run(self, ref: str) -> dict:
        """A run by exact id, unique id prefix, or unique name; a clear error otherwise."""
        if not ref:
            raise RunNotFoundError("give a run: its id, a unique prefix of it, or its name (`advtui ls` lists them)")
        exact = self.get_run(ref)  # a damaged run file raises its one-line error here
        if exact is not None:
            return exact
        runs = self.runs()
        by_prefix = [r for r in runs if r["id"].startswith(ref)]
        by_name = [r for r in runs if r.get("name") == ref]
        damaged = [run_id for run_id in self._damaged_ids if run_id.startswith(ref)] if ref else []
        if len(by_name) == 1:
            return by_name[0]
        if not by_name and len(by_prefix) + len(damaged) == 1:
            if damaged:
                raise RegistryError(self._damaged_ids[damaged[0]])
            return by_prefix[0]
        found = by_name or by_prefix + [{"id": run_id} for run_id in damaged]
        if len(found) > 1:
            ids = ", ".join(r["id"] for r in found[:5])
            raise AmbiguousRunError(f"{ref!r} matches several runs ({ids}): give the full id")
        raise RunNotFoundError(
            f"no run {ref!r} in {self.root}: `advtui ls` lists the runs there"
            " (or pass --runs-dir)"
        )

