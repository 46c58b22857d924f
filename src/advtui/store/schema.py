"""What the store's files and records are: names, tables, schema version, and the checks that
tell a damaged file or record from a good one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

from advtui.core.paths import is_safe_name
from advtui.core.records import EVAL_OPTION_KEYS as EVAL_OPTION_KEYS  # what `advtui eval` takes from a job
from advtui.core.records import JobRecord, RunRecord
from advtui.core.status import ENDED_JOBS, RUN_STATUSES


REGISTRY_FILE = "registry.json"
QUEUE_FILE = "queue.json"
ARCHIVE_DIR = "queue-archive"
RUN_FILE = "run.json"
LEGACY_FILE = "advtui.json"  # the single-file registry of earlier versions (schema 1)
MIGRATED_SUFFIX = ".migrated"
SCHEMA_VERSION = 2
LEGACY_SCHEMA_VERSION = 1
LOCK_TIMEOUT_S = 60.0

RUNS, JOBS, RESULTS, META = "runs", "jobs", "results", "_meta"

ENDED_JOB_STATUSES = ENDED_JOBS  # these may move to the archive; any other status stays in queue.json

_safe_id = is_safe_name  # a record's id names its folder: the CLI's rule for run names


class StorePaths:
    """Where a store's files are, as ``Registry.__init__`` sets them: what its parts (the
    listing, the archive, the migration) work under."""

    root: Path  # the runs directory, as given
    path: Path  # registry.json
    queue_path: Path
    legacy_path: Path
    _dir: str  # the runs directory made absolute: the key of its files and locks
    _registry_file: str
    _queue_file: str
    _archive: str  # queue-archive/


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
# hidden with one line, not a traceback in `ls`, `compare` or the worker. The fields are
# ``RunRecord``'s checked ones (core.records); the check is by ``type()``, so that its line can
# name the field and the type found.
_NUMBER = (int, float)  # not bool: type() is checked, and json gives True/False as bool
_CHECKED_TYPES: dict[type, tuple[tuple[type, ...], str]] = {
    msgspec.inspect.StrType: ((str,), "str"), msgspec.inspect.DictType: ((dict,), "dict"),
    msgspec.inspect.IntType: ((int,), "int"), msgspec.inspect.FloatType: (_NUMBER, "a number"),
}


def _run_field_types() -> dict[str, tuple[tuple[type, ...], str]]:
    """{field: (the types it takes, how a message names them)} for each ``X | None`` field of
    ``RunRecord`` (its id is checked before, with the file's shape)."""
    table = {}
    record = msgspec.inspect.type_info(RunRecord)
    assert isinstance(record, msgspec.inspect.StructType)
    for info in record.fields:
        if info.required or not isinstance(info.type, msgspec.inspect.UnionType):
            continue
        kinds = [t for t in info.type.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(kinds) == 1 and type(kinds[0]) in _CHECKED_TYPES:
            table[info.name] = _CHECKED_TYPES[type(kinds[0])]
    return table


_RUN_FIELD_TYPES = _run_field_types()


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


# A job is checked by decoding it as the queue's readers do (core.records.JobRecord).
_RECORD_SCHEMAS: dict[str, tuple[type[msgspec.Struct], str]] = {JOBS: (JobRecord, "job"), "reproductions": (_Plan, "plan")}


class _BadDoc(dict):
    """A record whose fields do not have their types: kept in its file as it is (it is a dict,
    so TinyDB and json write it back unchanged) and left out of every read (``_docs``)."""

    __slots__ = ("problem",)
    problem: str  # one line: which record, what is wrong with it, what to do


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


