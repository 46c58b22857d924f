"""Migration from the single-file registry of earlier versions (advtui.json, schema 1)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from filelock import FileLock, Timeout

from advtui.core.atomic import atomic_write_json, backup_path
from advtui.core.errors import RegistryError
from advtui.store import archive, files
from advtui.store.archive import JobArchive
from advtui.store.files import _CACHE, _check, _docs, _first, _job_created
from advtui.store.schema import (
    ENDED_JOB_STATUSES, JOBS, LEGACY_FILE, LEGACY_SCHEMA_VERSION, LOCK_TIMEOUT_S, META, MIGRATED_SUFFIX,
    QUEUE_FILE, RESULTS, RUNS, RUN_FILE, SCHEMA_VERSION, _safe_id,
)


class LegacyMigration(JobArchive):
    """The single-file registry of earlier versions (advtui.json, schema 1) split into the sharded store."""

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
            loaded, raw = files._load(legacy, want_raw=True)
            data = _check(loaded)
            if data is None:
                return  # another process migrated it meanwhile
            digest = hashlib.sha256(raw).hexdigest()
            if self.path.exists():
                done = (_first(_check(files._load(self._registry_file)), META) or {}).get("migrated") or {}
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
            if _safe_id(run_id := doc.get("run_id")):
                results.setdefault(run_id, []).append(doc)
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
        for start in range(0, len(ended), archive.ARCHIVE_CHUNK):
            part = ended[start:start + archive.ARCHIVE_CHUNK]
            self._write_archive(os.path.join(self._archive, f"{first + start // archive.ARCHIVE_CHUNK:08d}.json"),
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
