"""Reading the store's files: one parse per version of each file, per process (the read cache)."""

from __future__ import annotations

import errno
import json
import os
import time
from typing import Any, Iterable

import msgspec
from tinydb import Query

from advtui.core.atomic import backup_path
from advtui.core.errors import RegistryError
from advtui.store.schema import RUN_FILE, _BadDoc, _mark_bad_records, _shape_problem, _tables_of_documents


# A file whose mtime is within this of the moment it was read may have been written again in the
# same clock tick: its cached copy is not trusted (as git does with "racily clean" entries).
RACY_NS = 1_000_000_000


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


