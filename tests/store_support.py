"""Helpers for tests about the run store's files."""

from __future__ import annotations

from pathlib import Path

from advtui.store.registry import ARCHIVE_DIR, QUEUE_FILE, REGISTRY_FILE, RUN_FILE


def store_snapshot(root: Path) -> dict[str, bytes]:
    """The bytes of every file of the run store under ``root``, by path relative to it: what a
    command that failed must leave exactly as it was."""
    root = Path(root)
    files = [root / REGISTRY_FILE, root / QUEUE_FILE, *root.glob(f"{ARCHIVE_DIR}/*.json"), *root.glob(f"*/{RUN_FILE}")]
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(files) if p.exists()}
