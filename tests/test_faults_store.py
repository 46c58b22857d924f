"""Fault injection on the run store and the run folders: a second migration, damaged field
types, a damaged record in front of the queue, planted symlinks, a pid without its start time,
and what a kill in the middle of a checkpoint leaves behind.

Each case asserts what the user sees (exit code, one line), the status afterwards, and that
stored files are byte-for-byte as before where nothing should have changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advtui.registry import (
    ARCHIVE_DIR, JOBS, LEGACY_FILE, QUEUE_FILE, REGISTRY_FILE, RESULTS, RUN_FILE, RUNS, Registry,
)
from store_support import store_snapshot
from test_faults import cli, one_error_line

LEGACY = Path(__file__).parent / "data" / "advtui-v1.json"


def every_file(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """The bytes of every plain file under ``root`` (locks aside), by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and not p.name.endswith(".lock")
            and not str(p.relative_to(root)).startswith(skip)}


# == a second migration ============================================================================
def test_a_legacy_file_beside_a_used_store_without_its_registry_file_changes_no_byte_of_it(tmp_path):
    """The store was migrated and used (results with their .bak, a job queued, a run changed);
    then registry.json was lost and the single-file registry came back. The migration that runs
    again keeps every existing file byte for byte and writes only what is missing."""
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copy(LEGACY, root / LEGACY_FILE)
    registry = Registry(root)
    runs = registry.runs()  # the first migration
    first, second, third = sorted(r["id"] for r in runs)
    for value in (0.5, 0.25):  # two writes: the run file and its .bak both hold results now
        registry.insert(RESULTS, {"run_id": first, "attack": "pgd-10", "robust_acc": value})
    registry.update_run(second, status="killed", error="stopped by hand")
    registry.insert(JOBS, {"id": "jabcdef", "kind": "train", "run_id": second, "status": "queued", "priority": 0,
                           "created": time.time()})
    shutil.rmtree(root / third)  # a run the store lost: the legacy file still has it
    for lost in (REGISTRY_FILE, REGISTRY_FILE + ".bak"):
        (root / lost).unlink(missing_ok=True)
    os.replace(root / f"{LEGACY_FILE}.migrated", root / LEGACY_FILE)
    before = every_file(root, skip=(LEGACY_FILE,))
    assert any(k.endswith(RUN_FILE + ".bak") for k in before) and QUEUE_FILE in before

    again = Registry(root)
    listed = {r["id"]: r for r in again.runs()}
    after = every_file(root, skip=(LEGACY_FILE, REGISTRY_FILE, third))
    assert after == before  # not one byte of the files that existed changed, .bak files included
    assert listed[second]["status"] == "killed"
    assert [r["robust_acc"] for r in again.search(RESULTS, run_id=first, attack="pgd-10")] == [0.5, 0.25]
    assert "jabcdef" in {j["id"] for j in again.all(JOBS)}
    assert third in listed  # what was missing came back from the legacy file
    (meta,) = json.loads((root / REGISTRY_FILE).read_text())["_meta"].values()
    assert sorted(meta["migrated"]["kept_newer"]) == sorted([f"{first}/{RUN_FILE}", f"{second}/{RUN_FILE}",
                                                             QUEUE_FILE])
    assert not (root / LEGACY_FILE).exists() and (root / f"{LEGACY_FILE}.migrated").exists()


def test_a_migration_interrupted_before_the_queue_finishes_the_archive_without_touching_its_files(tmp_path,
                                                                                                  monkeypatch):
    import advtui.registry as store

    monkeypatch.setattr(store, "ARCHIVE_CHUNK", 2)
    root = tmp_path / "runs"
    root.mkdir()
    jobs = {str(i + 1): {"id": f"j{i:06x}", "status": "done" if i < 5 else "queued", "created": float(i)}
            for i in range(7)}
    (root / LEGACY_FILE).write_text(json.dumps({"_meta": {"1": {"schema": 1, "created": 1.0}}, "jobs": jobs}))
    Registry(root).runs()
    # as if the first migration died after its first archive file
    for name in (REGISTRY_FILE, QUEUE_FILE, f"{ARCHIVE_DIR}/00000002.json", f"{ARCHIVE_DIR}/00000003.json"):
        os.unlink(root / name)
    os.replace(root / f"{LEGACY_FILE}.migrated", root / LEGACY_FILE)
    first_chunk = (root / ARCHIVE_DIR / "00000001.json").read_bytes()
    registry = Registry(root)
    assert sorted(j["id"] for j in registry.all(JOBS)) == sorted(j["id"] for j in jobs.values())
    assert (root / ARCHIVE_DIR / "00000001.json").read_bytes() == first_chunk
    assert len(registry.all(JOBS)) == 7  # no job twice
