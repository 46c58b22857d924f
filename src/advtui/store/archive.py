"""The archive of ended jobs: queue.json keeps the jobs that are queued, running or ended lately."""

from __future__ import annotations

import os
from typing import Any, Callable

from advtui.core.atomic import atomic_write_json
from advtui.store import files
from advtui.store.files import _CACHE, _check, _docs, _matches, _read
from advtui.store.locks import _Open
from advtui.store.schema import ENDED_JOB_STATUSES, JOBS, StorePaths, _BadDoc


ARCHIVE_AFTER = 100  # ended jobs kept in queue.json before they move, all at once, to the archive
ARCHIVE_CHUNK = 500  # jobs per archive file, so archiving rewrites at most one file of this size


class JobArchive(StorePaths):
    """Ended jobs moved out of queue.json into queue-archive/, 500 a file (under the queue's lock)."""

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
        chunks = self._archive_files()
        number = int(os.path.basename(chunks[-1])[:-5]) if chunks else 0
        path: str | None = None
        docs: dict[str, dict] = {}
        if chunks and chunks[-1] not in opened.archive:
            path, docs = chunks[-1], dict((_check(files._load(chunks[-1])) or {}).get(JOBS) or {})
        # else a file with jobs moved back out is written after queue.json: start a new one
        next_id = max((int(k) for k in docs), default=0) + 1
        for _, doc in ended:
            if path is None or len(docs) >= ARCHIVE_CHUNK:
                if path is not None:
                    self._write_archive(path, docs)
                number += 1
                path, docs, next_id = os.path.join(self._archive, f"{number:08d}.json"), {}, 1
            docs[str(next_id)] = doc
            next_id += 1
        if path is not None:
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
        return {job_id for _, data in self._archived() for doc in _docs(data, JOBS)
                if isinstance(job_id := doc.get("id"), str)}

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
