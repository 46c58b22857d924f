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

import errno
import hashlib
import json
import math
import os
import re
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import msgspec
from filelock import FileLock, Timeout
from tinydb import Query, TinyDB
from tinydb.storages import Storage
from tinydb.table import Document

from advtui.core.atomic import atomic_write_json, backup_path
from advtui.core.memory import FREEZE_MIN_RUNS, cyclic_gc_paused, freeze_long_lived
from advtui.errors import AmbiguousRunError, RegistryError, RunNotFoundError

REGISTRY_FILE = "registry.json"
QUEUE_FILE = "queue.json"
ARCHIVE_DIR = "queue-archive"
RUN_FILE = "run.json"
LEGACY_FILE = "advtui.json"  # the single-file registry of earlier versions (schema 1)
MIGRATED_SUFFIX = ".migrated"
# What this and other processes parsed from run files, with each file's stat: a process that
# never listed the runs starts from it instead of parsing every run file (one big parse is
# faster than 10,000 small ones). A cache only: checked file by file, rewritten when a listing
# had to parse a tenth of the run files or more, ignored if unreadable.
LISTING_CACHE = ".listing-cache.json"
LISTING_CACHE_MIN_RUNS = 1000  # below this, parsing every run file is fast anyway
LISTING_CACHE_VERSION = 2  # 2: configs stored once per kind, each run keeping what differs
SCHEMA_VERSION = 2
LEGACY_SCHEMA_VERSION = 1
LOCK_TIMEOUT_S = 60.0

RUNS, JOBS, RESULTS, META = "runs", "jobs", "results", "_meta"

# Run statuses. ``queued`` runs exist in the registry before their process starts.
RUN_STATUSES = ("queued", "running", "finished", "failed", "killed")
# Jobs in these statuses are over and may move to the archive; any other status stays in queue.json.
ENDED_JOB_STATUSES = ("done", "failed", "cancelled")
ARCHIVE_AFTER = 100  # ended jobs kept in queue.json before they move, all at once, to the archive
ARCHIVE_CHUNK = 500  # jobs per archive file, so archiving rewrites at most one file of this size

# A file whose mtime is within this of the moment it was read may have been written again in the
# same clock tick: its cached copy is not trusted (as git does with "racily clean" entries).
RACY_NS = 1_000_000_000

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")  # as advtui.paths.check_safe_name


def _safe_id(name: Any) -> bool:
    return isinstance(name, str) and bool(_SAFE_ID.fullmatch(name)) and ".." not in name


# -- reading files: one parse per version of each file, per process -------------------------------
class _Damaged:
    """A file that could not be parsed (cached like good data, so it is not re-read each time)."""

    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


_CACHE: dict[str, tuple[tuple, int, Any]] = {}  # path -> (stat key, read at (ns), data | _Damaged)
_LOADS = [0]  # files parsed by this process
_LISTING_CACHES_READ: set[str] = set()  # runs directories whose listing cache this process read


def clear_read_cache() -> None:
    """Forget every file this process has read (benchmarks: what a fresh process does)."""
    _CACHE.clear()
    _LISTING_CACHES_READ.clear()


def _stat_key(st: os.stat_result) -> tuple:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _damage_message(path: str, what: str) -> str:
    bak = backup_path(path)
    hint = (f"the last good copy is {bak}: inspect it and copy it over {os.path.basename(path)}"
            if bak.exists() else "there is no earlier copy")
    return f"the registry file {path} {what}; it was left untouched ({hint})"


def _tables_of_documents(data: Any) -> bool:
    """What TinyDB reads: {table: {doc id: {field: value}}}."""
    if type(data) is not dict:
        return False
    for table in data.values():
        if type(table) is not dict:
            return False
        for doc in table.values():
            if type(doc) is not dict:
                return False
    return True


# The fields of a run record that readers use, and their types (when present and not null): a
# record edited into another shape or type (``created: "yesterday"``) is a damaged file, one run
# hidden with one line, not a traceback in `ls`, `compare` or the worker.
_NUMBER = (int, float)  # not bool: type() is checked, and json gives True/False as bool
_RUN_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    **{name: ((str,), "str") for name in ("status", "name", "error", "defense", "dataset", "model", "host", "group",
                                          "device")},
    **{name: ((dict,), "dict") for name in ("config", "checkpoints", "metrics")},
    **{name: ((int,), "int") for name in ("epoch", "epochs", "pid")},
    **{name: (_NUMBER, "a number") for name in ("created", "started", "ended", "pid_start_time")},
}


def _run_problem(doc: dict) -> str | None:
    for name, (types, label) in _RUN_FIELD_TYPES.items():
        value = doc.get(name)
        if value is not None and type(value) not in types:
            return f"has a run whose {name} is {type(value).__name__}, not {label}"
    if doc.get("status") is not None and doc["status"] not in RUN_STATUSES:
        return f"has a run whose status {doc['status']!r} is none of {', '.join(RUN_STATUSES)}"
    for which, rel in (doc.get("checkpoints") or {}).items():
        if rel is not None and type(rel) is not str:
            return f"has a run whose {which} checkpoint is {type(rel).__name__}, not a path"
    return None


# -- typed records that live many to a file (jobs, reproduction plans) ----------------------------
# One damaged record must not take its neighbours with it: it is hidden from every reader (with
# one line in ``record_problems()``) and kept, as it is, in its file.
JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")
EVAL_OPTION_KEYS = ("limit", "batch_size", "eps", "step_size", "seed")  # what `advtui eval` takes from a job
_Number = float  # msgspec takes ints for a float field, and refuses bool and str


class _EvalOptions(msgspec.Struct, forbid_unknown_fields=True):
    limit: int | None = None
    batch_size: int | None = None
    eps: _Number | None = None
    step_size: _Number | None = None
    seed: int | None = None


class _Job(msgspec.Struct):
    """The fields of a job the queue and the scheduler read (others are kept, unchecked)."""

    id: str | None = None
    kind: Literal["train", "eval"] | None = None
    run_id: str | None = None
    status: Literal[JOB_STATUSES] | None = None  # type: ignore[valid-type]
    priority: int | None = None
    needs: Literal["gpu", "cpu", "auto"] | None = None
    gpu_index: int | None = None
    nproc: int | None = None
    depends_on: list[str] | None = None
    attacks: list[str] | None = None
    eval_options: _EvalOptions | None = None
    created: _Number | None = None
    started: _Number | None = None
    ended: _Number | None = None
    pid: int | None = None
    pid_start_time: _Number | None = None
    host: str | None = None
    slot: dict[str, Any] | None = None
    exit_code: int | None = None
    error: str | None = None
    blocked_by: str | None = None
    kill_requested: _Number | None = None


class _Plan(msgspec.Struct):
    """A reproduction plan (``advtui reproduce``), as ``advtui report`` reads it."""

    table: str
    scale: str
    rows: dict[str, list[str]]
    columns: list[dict[str, Any]]
    eval_options: dict[str, Any]
    extra_columns: list[dict[str, Any]] | None = None
    surrogates: dict[str, str] | None = None
    attackers: dict[str, str] | None = None
    seeds: list[int] | None = None


_RECORD_SCHEMAS: dict[str, tuple[type[msgspec.Struct], str]] = {JOBS: (_Job, "job"), "reproductions": (_Plan, "plan")}


class _BadDoc(dict):
    """A record whose fields do not have their types: kept in its file as it is (it is a dict,
    so TinyDB and json write it back unchanged) and left out of every read (``_docs``)."""

    __slots__ = ("problem",)


def _record_problem(schema: type[msgspec.Struct], doc: dict) -> str | None:
    try:
        msgspec.convert(doc, schema, strict=True)
    except msgspec.ValidationError as exc:
        return " ".join(str(exc).split())[:200]
    for column in (doc.get("columns") or []) if schema is _Plan else ():
        if type(column.get("attack")) is not str:
            return "a column without an attack"
    return None


def _mark_bad_records(path: str, data: dict) -> None:
    """Wrap each record of ``data`` that does not fit its table's schema in ``_BadDoc``."""
    for table, (schema, what) in _RECORD_SCHEMAS.items():
        docs = data.get(table)
        if not docs:
            continue
        for key, doc in docs.items():
            problem = _record_problem(schema, doc)
            if problem is not None:
                bad = docs[key] = _BadDoc(doc)
                name = doc.get("id") or doc.get("table") or f"#{key}"
                bad.problem = (f"the registry file {path} has a damaged {what} {name!s:.40} ({problem}); it is "
                               "hidden, and kept as it is: fix or remove it by hand")


def _shape_problem(path: str, data: dict) -> str | None:
    """What makes parsed JSON not this kind of store file (None when it is one). A file that
    parses but holds something else (``{}``, ``[]``, other tables) must not be taken as an
    empty store: the next write would replace it, and its backup, with nothing."""
    if not data:
        return "holds an empty object, not a registry"
    name = os.path.basename(path)
    tables = set(data)
    if name == REGISTRY_FILE:
        if not any(type(doc.get("schema")) is int for doc in data.get(META, {}).values()):
            return f"has no {META} table with a schema, so it is not a registry"
    elif name == LEGACY_FILE:
        for doc in data.get(META, {}).values():
            if "schema" in doc and type(doc["schema"]) is not int:
                return f"has a schema that is {type(doc['schema']).__name__}, not int"
    elif name == RUN_FILE:
        if not tables <= {RUNS, RESULTS}:
            return f"has tables {', '.join(sorted(tables - {RUNS, RESULTS}))}, not a run's ({RUNS}, {RESULTS})"
        runs = data.get(RUNS) or {}
        if len(runs) > 1 or any(type(doc.get("id")) is not str for doc in runs.values()):
            return f"does not hold one run with an id in its {RUNS} table"
        for doc in runs.values():
            problem = _run_problem(doc)
            if problem is not None:
                return problem
    elif name == QUEUE_FILE or os.path.basename(os.path.dirname(path)) == ARCHIVE_DIR:
        if tables != {JOBS}:
            return f"does not hold the {JOBS} table alone, so it is not a job queue"
    return None


def _parse(path: str, raw: bytes) -> Any:
    if not raw.strip():
        # Files are only ever replaced by rename, never written in place, so an empty one was
        # truncated by something else: treating it as empty would lose what it held.
        return _Damaged(_damage_message(path, "is empty (truncated?)"))
    try:
        data = json.loads(raw)
        if not _tables_of_documents(data):
            raise ValueError("not an object of tables of documents")
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = " ".join(str(exc).split())[:120]
        return _Damaged(_damage_message(path, f"is corrupt ({reason})"))
    problem = _shape_problem(path, data)
    if problem is not None:
        return _Damaged(_damage_message(path, problem))
    if os.path.basename(path) != RUN_FILE:
        _mark_bad_records(path, data)
    return data


def _load(path: str, want_raw: bool = False) -> Any:
    """Read and parse ``path`` now (and cache it): its data, None if missing, or _Damaged."""
    read_at = time.time_ns()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # a link planted at a store file is not read through
        try:
            st = os.fstat(fd)
            raw = os.read(fd, st.st_size + 1)  # plain syscalls: this runs once per file per listing
            if len(raw) != st.st_size:  # a short read, or changed in place (not by us): read to the end
                parts = [raw]
                while parts[-1]:
                    parts.append(os.read(fd, 1 << 20))
                raw = b"".join(parts)
        finally:
            os.close(fd)
    except FileNotFoundError:
        _CACHE.pop(path, None)
        return (None, b"") if want_raw else None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RegistryError(f"the registry file {path} is a symbolic link: it is not read or written through; "
                                "put the file itself there") from None
        raise RegistryError(f"cannot read the registry file {path}: {exc.strerror or exc}") from exc
    data = _parse(path, raw)
    _CACHE[path] = (_stat_key(st), read_at, data)
    _LOADS[0] += 1
    return (data, raw) if want_raw else data


def _check(data: Any) -> dict | None:
    if isinstance(data, _Damaged):
        raise RegistryError(data.message)
    return data


def _read(path: str) -> dict | None:
    """The parsed file (shared: never mutate it), None if it does not exist; RegistryError if damaged."""
    return _read_keyed(path)[1]


def _read_keyed(path: str) -> tuple[tuple | None, dict | None]:
    """(the file's stat key when read, its data): ``_read`` with what identifies the version read."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _CACHE.pop(path, None)
        return None, None
    except OSError as exc:
        raise RegistryError(f"cannot read the registry file {path}: {exc.strerror or exc}") from exc
    entry = _CACHE.get(path)
    if entry is None or entry[0] != _stat_key(st) or entry[1] - st.st_mtime_ns <= RACY_NS:
        _load(path)
        entry = _CACHE.get(path)
        if entry is None:  # deleted between the stat and the read
            return None, None
    return entry[0], _check(entry[2])


_EMPTY: dict = {}


def _write_error(path: str, exc: OSError) -> RegistryError:
    where = exc.filename if exc.filename else path
    return RegistryError(f"cannot write the registry file {path} ({exc.strerror or exc}: {where}); "
                         "it was left as it was")


def _decode_json(raw: bytes) -> Any:
    """msgspec parses the listing cache (8 MB at 10,000 runs) in half json's time, a tenth of
    the dashboard's first paint; it refuses the NaN json writes, which json then reads."""
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return json.loads(raw)


def _created(record: dict) -> float:
    created = record.get("created", 0)
    return created if type(created) in (int, float) else 0


def _job_created(job: dict) -> float:
    return _created(job) or 0


def _docs(data: dict | None, table: str) -> Iterable[dict]:
    """The table's records, less those whose fields are damaged (``_BadDoc``)."""
    return [d for d in ((data or {}).get(table) or {}).values() if d.__class__ is not _BadDoc]


def _bad_docs(data: dict | None) -> Iterable[_BadDoc]:
    return (d for table in (data or {}).values() for d in table.values() if d.__class__ is _BadDoc)


def _first(data: dict | None, table: str) -> dict | None:
    for doc in _docs(data, table):
        return doc
    return None


def _matches(doc: dict, match: dict[str, Any]) -> bool:
    return all(doc.get(k) == v for k, v in match.items())


def _match(fields: dict[str, Any]):
    """A TinyDB query matching documents whose fields equal ``fields``."""
    q = Query()
    cond = None
    for key, value in fields.items():
        term = q[key] == value
        cond = term if cond is None else (cond & term)
    return cond if cond is not None else q.noop()


# -- the listing cache's compact form ----------------------------------------------------------
# Most of a run record is its config, and configs differ from each other in a few fields. The
# cache keeps one copy of each kind of config (same fields in the same order, same defense) and,
# per run, only the fields whose value differs from it: a fresh process parses a third of the
# bytes, and rebuilds each config with one dict merge. Values other than str, int, float, bool
# and None are always kept per run, so no two runs' records share a mutable object.
_SCALARS = (str, int, float, bool, type(None))


def _first_item(pair: tuple) -> Any:
    return pair[0]


def _same_scalar(a: Any, b: Any) -> bool:
    if type(a) is not type(b) or type(a) not in _SCALARS or a != b:
        return False
    return type(a) is not float or math.copysign(1.0, a) == math.copysign(1.0, b)  # 0.0 and -0.0


def _shrink_configs(content: dict, bases: dict[tuple, tuple[int, dict]]) -> tuple[dict, dict]:
    """(content with each run's config replaced by its base's index, {doc id: the fields that
    differ from that base}); ``bases`` gains the configs of kinds not seen before."""
    runs = content.get(RUNS)
    if not runs:
        return content, {}
    shrunk_runs, configs = {}, {}
    for doc_id, doc in runs.items():
        config = doc.get("config")
        if type(config) is not dict or not config:
            shrunk_runs[doc_id] = doc
            continue
        kind = (tuple(config), config.get("defense") if type(config.get("defense")) is str else None)
        known = bases.get(kind)
        if known is None:
            known = bases[kind] = (len(bases), {k: (v if type(v) in _SCALARS else None) for k, v in config.items()})
        index, base = known
        configs[doc_id] = {k: v for k, v in config.items() if not _same_scalar(base[k], v)}
        shrunk_runs[doc_id] = {**doc, "config": index}
    return {**content, RUNS: shrunk_runs}, configs


def _expand_configs(runs: Any, configs: dict, bases: list, n_bases: int) -> bool:
    """Undo ``_shrink_configs`` in place; False if the entry is not what it wrote."""
    if type(runs) is not dict:
        return False
    for doc_id, delta in configs.items():
        doc = runs.get(doc_id)
        index = doc.get("config") if doc is not None else None
        if type(delta) is not dict or type(index) is not int or not 0 <= index < n_bases:
            return False
        base = bases[index]
        if not delta.keys() <= base.keys():
            return False
        doc["config"] = {**base, **delta}
    return True


def _linked_folder_message(folder: str) -> str:
    try:
        target = os.readlink(folder)
    except OSError:
        target = "?"
    return (f"the run folder {folder} is a symbolic link (to {target}): a run folder is never followed out of "
            "the runs folder, so that run is hidden and nothing is written through it; move the folder itself here")


def _refuse_linked_folder(folder: str) -> None:
    if os.path.islink(folder):
        raise RegistryError(_linked_folder_message(folder))


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
        self.data = _check(_load(self.shard.path)) or {}
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


class Registry:
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
        return os.path.join(self._dir, run_id, RUN_FILE) if _safe_id(run_id) else None

    def _queue_shard(self) -> _Shard:
        return _Shard(self._queue_file, "queue", (0,), (JOBS,))

    def _run_shard(self, run_id: str) -> _Shard:
        return _Shard(os.path.join(self._dir, run_id, RUN_FILE), "run", (1, run_id), (RUNS, RESULTS))

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
                opened = _Open(shard, _check(_load(shard.path)) or {}, lock)
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

    # -- the archive of ended jobs (written only under the queue's lock) ----------------------
    def _archive_files(self) -> list[str]:
        try:
            names = sorted(n for n in os.listdir(self._archive) if n.endswith(".json") and n[:-5].isdigit())
        except FileNotFoundError:
            return []
        return [os.path.join(self._archive, n) for n in names]

    def _archive_ended(self, opened: _Open) -> None:
        jobs = opened.data.get(JOBS) or {}
        ended = [(key, doc) for key, doc in jobs.items()
                 if doc.get("status") in ENDED_JOB_STATUSES and doc.__class__ is not _BadDoc]  # a damaged one stays
        if len(ended) <= ARCHIVE_AFTER:
            return
        ended.sort(key=lambda kd: (kd[1].get("ended") or 0, kd[1].get("created") or 0))
        files = self._archive_files()
        number = int(os.path.basename(files[-1])[:-5]) if files else 0
        if files and files[-1] not in opened.archive:
            path, docs = files[-1], dict((_check(_load(files[-1])) or {}).get(JOBS) or {})
        else:  # a file with jobs moved back out is written after queue.json: start a new one
            path, docs = None, {}
        next_id = max((int(k) for k in docs), default=0) + 1
        for _, doc in ended:
            if path is None or len(docs) >= ARCHIVE_CHUNK:
                if path is not None:
                    self._write_archive(path, docs)
                number += 1
                path, docs, next_id = os.path.join(self._archive, f"{number:08d}.json"), {}, 1
            docs[str(next_id)] = doc
            next_id += 1
        self._write_archive(path, docs)
        moved = {key for key, _ in ended}
        opened.data[JOBS] = {key: doc for key, doc in jobs.items() if key not in moved}

    def _write_archive(self, path: str, docs: dict) -> None:
        os.makedirs(self._archive, exist_ok=True)
        atomic_write_json(path, {JOBS: docs}, backup=True)
        _CACHE.pop(path, None)

    def _archived(self) -> list[tuple[str, dict]]:
        """(archive file, its data) for every archive file, oldest first."""
        return [(path, _read(path) or {}) for path in self._archive_files()]

    def archived_job_ids(self) -> set[str]:
        return {doc.get("id") for _, data in self._archived() for doc in _docs(data, JOBS)}

    def _change_archived(self, opened: _Open, match: dict[str, Any],
                         change: Callable[[dict], dict | None]) -> int:
        """Apply ``change`` to the archived jobs matching ``match`` (inside the queue's
        transaction); a job it returns with a live status moves back to queue.json, one it
        returns as None is removed. Files are read newest first: the newest copy of a job is the
        one that counts (an interrupted archiving can leave an older one, dropped here)."""
        count = 0
        seen: set[Any] = set()
        for path, data in reversed(self._archived()):
            docs = (opened.archive.get(path) or data).get(JOBS) or {}
            hits = [key for key, doc in docs.items() if _matches(doc, match) or doc.get("id") in seen]
            if not hits:
                continue
            docs = dict(docs)
            for key in hits:
                doc = docs.pop(key)
                if doc.get("id") in seen:
                    continue  # an older copy of a job already changed
                seen.add(doc.get("id"))
                count += 1
                new = change(dict(doc))
                if new is None:
                    continue
                if new.get("status") in ENDED_JOB_STATUSES:
                    docs[key] = new
                else:
                    opened.db.table(JOBS).insert(new)
            opened.archive[path] = {JOBS: docs}
        return count

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
            return [dict(d) for d in _docs(_read(self._run_file(match["run_id"])), RESULTS) if _matches(d, match)]
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
        if table == RUNS and _safe_id(key) and not os.path.exists(self._run_file(key)):
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
                if not os.path.exists(self._run_file(run_id)):
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

    def _scan(self) -> list[tuple[str, dict]]:
        """(run id, its file's data) for every readable run file; damaged ones go to ``damaged``.

        The hot loop of every listing: one stat per run, and a parse only for files that changed."""
        try:
            entries = list(os.scandir(self._dir))
        except FileNotFoundError:
            entries = []
        except OSError as exc:
            raise RegistryError(f"cannot read the runs directory {self.root}: {exc.strerror or exc}") from exc
        found, damaged = [], {}
        suffix = os.sep + RUN_FILE
        cache, stat = _CACHE, os.stat
        with cyclic_gc_paused():
            racy = 0
            if self._dir not in _LISTING_CACHES_READ:
                _LISTING_CACHES_READ.add(self._dir)
                racy = self._read_listing_cache(suffix)
            loads = _LOADS[0]
            self._scan_entries(entries, suffix, cache, stat, found, damaged)
            parsed = _LOADS[0] - loads
            # Rewritten when a tenth of the files had to be parsed, or when a hundredth were
            # cached too soon after being written to be trusted (now read again, they can be).
            if len(found) >= LISTING_CACHE_MIN_RUNS and (parsed * 10 >= len(found) or racy * 100 >= len(found)):
                self._write_listing_cache(found, suffix)
        self._damaged_ids = damaged
        self.damaged = list(damaged.values())
        return found

    def _read_listing_cache(self, suffix: str) -> int:
        """Start the read cache from the listing cache; returns how many of its entries were
        read too soon after their file's write to be trusted (those files are parsed again)."""
        racy = 0
        try:
            with open(os.path.join(self._dir, LISTING_CACHE), "rb") as f:
                data = _decode_json(f.read())
            if data.get("version") != LISTING_CACHE_VERSION:
                return racy  # another version's cache: the next listing that parses enough rewrites it
            bases, entries = data["configs"], list(data["files"].items())
            if type(bases) is not list or not all(type(b) is dict for b in bases):
                return racy
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return racy  # none yet, or unreadable: a cache only
        n_bases = len(bases)
        for run_id, entry in entries:
            try:
                ino, size, mtime, ctime, read_at, content, configs = entry
            except (TypeError, ValueError):
                continue
            path = self._dir + os.sep + run_id + suffix
            if not (_safe_id(run_id) and path not in _CACHE and _tables_of_documents(content)
                    and type(read_at) is int and type(configs) is dict):
                continue
            if configs and not _expand_configs(content.get(RUNS), configs, bases, n_bases):
                continue  # not as written: leave that file to be parsed
            _CACHE[path] = ((ino, size, mtime, ctime), read_at, content)
            if type(mtime) is int and read_at - mtime <= RACY_NS:
                racy += 1
        return racy

    def _write_listing_cache(self, found: list[tuple[str, dict]], suffix: str) -> None:
        files: dict[str, list] = {}
        bases: dict[tuple, tuple[int, dict]] = {}
        for run_id, _ in found:
            entry = _CACHE.get(self._dir + os.sep + run_id + suffix)
            if entry is not None and not isinstance(entry[2], _Damaged):
                content, configs = _shrink_configs(entry[2], bases)
                files[run_id] = [*entry[0], entry[1], content, configs]
        cache = {"version": LISTING_CACHE_VERSION, "configs": [base for _, base in sorted(bases.values(), key=_first_item)],
                 "files": files}
        try:  # no lock, no fsync: every writer writes a whole, valid cache, and losing it costs little
            atomic_write_json(os.path.join(self._dir, LISTING_CACHE), cache, fsync=False)
        except OSError:
            pass  # a read-only runs directory: list without it

    @staticmethod
    def _scan_entries(entries, suffix, cache, stat, found, damaged) -> None:
        for entry in entries:
            name = entry.name
            if not _safe_id(name):
                continue
            if entry.is_symlink():
                if entry.is_dir():
                    damaged[name] = _linked_folder_message(entry.path)
                continue
            if not entry.is_dir():
                continue
            path = entry.path + suffix
            try:
                cached = cache.get(path)
                if cached is None:  # never read here: read it (its stat comes with the read)
                    data = _check(_load(path))
                else:
                    st = stat(path)
                    if (cached[0] == (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                            and cached[1] - st.st_mtime_ns > RACY_NS):
                        data = _check(cached[2])
                    else:
                        data = _check(_load(path))
            except FileNotFoundError:
                continue
            except OSError as exc:
                damaged[name] = f"cannot read the registry file {path}: {exc.strerror or exc}"
                continue
            except RegistryError as exc:
                damaged[name] = str(exc)
                continue
            if data is not None:
                found.append((name, data))

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

    # -- migration from the single-file registry ------------------------------------------------
    def _migrate_legacy(self) -> None:
        """Split an ``advtui.json`` written by an earlier version into the store's files, once,
        under the lock its writers take (so no earlier advtui writes it meanwhile, and two
        processes starting at once migrate it once); the original is kept as
        ``advtui.json.migrated``."""
        legacy = str(self.legacy_path)
        if not os.path.exists(legacy):
            return
        lock = FileLock(f"{legacy}.lock", timeout=LOCK_TIMEOUT_S)
        try:
            lock.acquire()
        except Timeout as exc:
            raise RegistryError(f"the registry {legacy} stayed locked for {LOCK_TIMEOUT_S:.0f}s; "
                                f"if no advtui process is running, delete {legacy}.lock") from exc
        try:
            data, raw = _load(legacy, want_raw=True)
            if data is None:
                return  # another process migrated it meanwhile
            data = _check(data)
            digest = hashlib.sha256(raw).hexdigest()
            if self.path.exists():
                done = (_first(_check(_load(self._registry_file)), META) or {}).get("migrated") or {}
                if done.get("sha256") != digest:
                    raise RegistryError(
                        f"{legacy} and {self.path} both exist: an older advtui wrote {LEGACY_FILE} after "
                        f"the store moved to per-run files; stop older advtui processes and move "
                        f"{LEGACY_FILE} aside (the runs in it are not in the store)")
            else:
                self._split_legacy(data, digest)
            self._keep_legacy()
        finally:
            lock.release()

    def _split_legacy(self, data: dict, digest: str) -> None:
        meta = _first(data, META) or {}
        if meta.get("schema", 0) > LEGACY_SCHEMA_VERSION:
            raise RegistryError(f"the registry {self.legacy_path} has schema {meta['schema']}, newer than this "
                                f"advtui understands ({SCHEMA_VERSION}): upgrade advtui")
        runs: dict[str, dict] = {}
        duplicates = 0
        for doc in _docs(data, RUNS):
            run_id = doc.get("id")
            if not _safe_id(run_id):
                raise RegistryError(f"the registry {self.legacy_path} has a run whose id {run_id!r} cannot name "
                                    f"a folder; it was left untouched: fix that run's id by hand, then start again")
            if run_id in runs:
                duplicates += 1  # earlier versions showed the first: keep it (the original file stays)
                continue
            runs[run_id] = doc
        results: dict[str, list[dict]] = {}
        stray_results = []
        for doc in _docs(data, RESULTS):
            if _safe_id(doc.get("run_id")):
                results.setdefault(doc["run_id"], []).append(doc)
            else:
                stray_results.append(doc)
        # A file of the store that exists already is newer than the legacy file (written by an
        # interrupted migration of it, or by later use of a store whose registry.json was lost):
        # it is kept as it is, and only what is missing is written. Nothing is ever replaced or
        # deleted, so a second migration cannot lose results, backups or queued jobs.
        kept: list[str] = []
        for run_id in sorted(set(runs) | set(results)):
            folder = self.root / run_id
            if os.path.lexists(folder / RUN_FILE) or os.path.islink(folder):
                kept.append(f"{run_id}/{RUN_FILE}")
                continue
            folder.mkdir(parents=True, exist_ok=True)
            content = {RUNS: {"1": runs[run_id]} if run_id in runs else {},
                       RESULTS: {str(i): d for i, d in enumerate(results.get(run_id, []), 1)}}
            atomic_write_json(folder / RUN_FILE, content, fsync=False)
        jobs = sorted(_docs(data, JOBS), key=_job_created)
        if os.path.lexists(self._queue_file):
            kept.append(QUEUE_FILE)  # written after the archive: the jobs were migrated already
        else:
            self._migrate_jobs(jobs)
        os.sync()  # every file is on disk before registry.json says the migration is done
        small = {name: table for name, table in data.items() if name not in (RUNS, JOBS, RESULTS, META)}
        if stray_results:
            small[RESULTS] = {str(i): d for i, d in enumerate(stray_results, 1)}
        small[META] = {"1": {"schema": SCHEMA_VERSION, "created": meta.get("created", time.time()),
                             "migrated": {"from": LEGACY_FILE, "at": time.time(), "sha256": digest,
                                          "runs": len(runs), "jobs": len(jobs),
                                          "results": sum(map(len, results.values())) + len(stray_results),
                                          "duplicate_runs_dropped": duplicates, "kept_newer": kept}}}
        for path in (self.path, backup_path(self.path)):
            _CACHE.pop(str(path), None)
        atomic_write_json(self.path, small)

    def _migrate_jobs(self, jobs: list[dict]) -> None:
        """The legacy jobs into queue.json (live ones) and archive files (ended ones), but for
        those an existing archive file already holds (an interrupted migration wrote them):
        new archive files are numbered after the existing ones, which stay as they are."""
        archived = {doc.get("id") for _, data in self._archived() for doc in _docs(data, JOBS)}
        jobs = [j for j in jobs if j.get("id") not in archived]
        live = [j for j in jobs if j.get("status") not in ENDED_JOB_STATUSES]
        ended = [j for j in jobs if j.get("status") in ENDED_JOB_STATUSES]
        files = self._archive_files()
        first = int(os.path.basename(files[-1])[:-5]) + 1 if files else 1
        for start in range(0, len(ended), ARCHIVE_CHUNK):
            part = ended[start:start + ARCHIVE_CHUNK]
            self._write_archive(os.path.join(self._archive, f"{first + start // ARCHIVE_CHUNK:08d}.json"),
                                {str(i): d for i, d in enumerate(part, 1)})
        atomic_write_json(self.queue_path, {JOBS: {str(i): d for i, d in enumerate(live, 1)}}, fsync=False)

    def _keep_legacy(self) -> None:
        """Rename advtui.json (and its .bak) out of the way: advtui.json.migrated[.N]."""
        target = Path(f"{self.legacy_path}{MIGRATED_SUFFIX}")
        n = 0
        while target.exists():
            n += 1
            target = Path(f"{self.legacy_path}{MIGRATED_SUFFIX}.{n}")
        old_bak = backup_path(self.legacy_path)
        if old_bak.exists():
            os.replace(old_bak, backup_path(target))
        os.replace(self.legacy_path, target)
        _CACHE.pop(str(self.legacy_path), None)
