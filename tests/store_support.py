"""Helpers for tests about the run store's files."""

from __future__ import annotations

import json
from pathlib import Path

from advtui.store.registry import ARCHIVE_DIR, LEGACY_FILE, QUEUE_FILE, REGISTRY_FILE, RUN_FILE


def store_snapshot(root: Path) -> dict[str, bytes]:
    """The bytes of every file of the run store under ``root``, by path relative to it: what a
    command that failed must leave exactly as it was."""
    root = Path(root)
    files = [root / REGISTRY_FILE, root / QUEUE_FILE, *root.glob(f"{ARCHIVE_DIR}/*.json"), *root.glob(f"*/{RUN_FILE}")]
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(files) if p.exists()}


def legacy_jobs_root(root: Path, count: int, ended: int) -> dict[str, dict]:
    """A runs directory ``root`` holding only a single-file registry of earlier versions with
    ``count`` jobs, the first ``ended`` of them done and the rest queued; its jobs table."""
    root.mkdir()
    jobs = {str(i + 1): {"id": f"j{i:06x}", "status": "done" if i < ended else "queued", "created": float(i)}
            for i in range(count)}
    (root / LEGACY_FILE).write_text(json.dumps({"_meta": {"1": {"schema": 1, "created": 1.0}}, "jobs": jobs}))
    return jobs
