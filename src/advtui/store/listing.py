"""Listing the runs: a scan of the run folders, and the listing cache that a fresh process starts from."""

from __future__ import annotations

import math
import os
from typing import Any

from advtui.core.atomic import atomic_write_json
from advtui.core.memory import cyclic_gc_paused
from advtui.core.errors import RegistryError
from advtui.store import files
from advtui.store.files import (
    _CACHE, _Damaged, _LISTING_CACHES_READ, _LOADS, _check, _decode_json, _linked_folder_message,
)
from advtui.store.schema import RUNS, RUN_FILE, StorePaths, _safe_id, _tables_of_documents


# What this and other processes parsed from run files, with each file's stat: a process that
# never listed the runs starts from it instead of parsing every run file (one big parse is
# faster than 10,000 small ones). A cache only: checked file by file, rewritten when a listing
# had to parse a tenth of the run files or more, ignored if unreadable.
LISTING_CACHE = ".listing-cache.json"
LISTING_CACHE_MIN_RUNS = 1000  # below this, parsing every run file is fast anyway
LISTING_CACHE_VERSION = 2  # 2: configs stored once per kind, each run keeping what differs

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
        if doc is None or type(delta) is not dict or type(index) is not int or not 0 <= index < n_bases:
            return False
        base = bases[index]
        if not delta.keys() <= base.keys():
            return False
        doc["config"] = {**base, **delta}
    return True



class ListingCache(StorePaths):
    """How a store lists its runs: a scan of the run folders, started from the listing cache."""

    damaged: list[str]  # one line per damaged run file the last listing skipped
    _damaged_ids: dict[str, str]  # the same lines by run id

    def _scan(self) -> list[tuple[str, dict]]:
        """(run id, its file's data) for every readable run file; damaged ones go to ``damaged``.

        The hot loop of every listing: one stat per run, and a parse only for files that changed."""
        try:
            entries = list(os.scandir(self._dir))
        except FileNotFoundError:
            entries = []
        except OSError as exc:
            raise RegistryError(f"cannot read the runs directory {self.root}: {exc.strerror or exc}") from exc
        found: list[tuple[str, dict]] = []
        damaged: dict[str, str] = {}
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
            if type(mtime) is int and read_at - mtime <= files.RACY_NS:
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
                    data = _check(files._load(path))
                else:
                    st = stat(path)
                    if (cached[0] == (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                            and cached[1] - st.st_mtime_ns > files.RACY_NS):
                        data = _check(cached[2])
                    else:
                        data = _check(files._load(path))
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
