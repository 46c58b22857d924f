"""Where things live on disk: the runs directory, each run's folder and checkpoints, the data root."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any, Protocol, TypeGuard

from platformdirs import user_cache_dir

from advtui.core.errors import CheckpointError, ConfigError, UnsafePathError


class RunsRoot(Protocol):
    """What these functions need of the run store: its runs directory (the core knows no store)."""

    root: Path


RUNS_ENV = "ADVTUI_RUNS"
DATA_ENV = "ADVTUI_DATA"

# Checkpoint paths in a run's record are relative to the run's folder, so a runs directory can
# be moved or copied (to another machine, into a test's temporary folder) and stay valid.
LAST_CHECKPOINT, FINAL_CHECKPOINT = "checkpoints/last.pt", "checkpoints/final.pt"
BEST_CHECKPOINT = "checkpoints/best.pt"  # the epoch of the best validation PGD accuracy

# Run ids and names become folder names: keep them to a safe alphabet so no id can escape runs/.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def _chosen_path(explicit: str | os.PathLike | None, env_var: str) -> Path | None:
    """An explicit option, else the environment variable, resolved; None when neither is set."""
    value = explicit or os.environ.get(env_var)
    return Path(value).expanduser().resolve() if value else None


def runs_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The runs directory: --runs-dir, else $ADVTUI_RUNS, else ./runs."""
    return _chosen_path(explicit, RUNS_ENV) or Path("runs").resolve()


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The dataset root: --data-root, else $ADVTUI_DATA, else a per-user cache folder."""
    return _chosen_path(explicit, DATA_ENV) or Path(user_cache_dir("advtui")) / "data"


def is_safe_name(name: Any) -> TypeGuard[str]:
    """Whether ``name`` can be a run id or a folder name: the one rule the CLI and the store share."""
    # fullmatch: "$" would accept a final newline
    return isinstance(name, str) and bool(_SAFE_NAME.fullmatch(name)) and ".." not in name


def check_safe_name(name: str, what: str = "run name") -> str:
    """Reject names that could escape runs/ (path separators, '..', odd characters)."""
    if not is_safe_name(name):
        raise ConfigError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' only "
            "(at most 96 characters, no '..')"
        )
    return name


def run_dir(root: Path, run_id: str) -> Path:
    """The folder of one run, guaranteed to sit directly inside ``root``."""
    check_safe_name(run_id, "run id")
    path = (root / run_id).resolve()
    if path.parent != root.resolve():
        raise ConfigError(f"run id {run_id!r} would escape the runs directory")
    return path


# What a run writes in its folder: a symbolic link planted at one of these would redirect a
# write (an append, a checkpoint) out of the folder, so a run refuses to start over one.
RUN_FOLDER_ENTRIES = ("checkpoints", LAST_CHECKPOINT, FINAL_CHECKPOINT, "events.jsonl", "log.txt")


def refuse_planted_links(folder: Path) -> None:
    """UnsafePathError, before anything is written, when a file or folder the run writes in
    ``folder`` is a symbolic link."""
    for name in RUN_FOLDER_ENTRIES:
        path = Path(folder) / name
        if path.is_symlink():
            raise UnsafePathError(errno.ELOOP, f"{path} is a symbolic link: a run's files are never written or read "
                                               "through a link; remove it (the run recreates the file)")


def run_folder(registry: RunsRoot, record: dict[str, Any]) -> Path:
    """The folder of a run: runs/<run-id>/."""
    return run_dir(registry.root, record["id"])


def checkpoint_path(registry: RunsRoot, record: dict[str, Any], which: str = "final") -> Path:
    """Absolute path of a run's checkpoint ('final', else 'last'); CheckpointError if none."""
    checkpoints = record.get("checkpoints") or {}
    rel = checkpoints.get(which) or (checkpoints.get("last") if which == "final" else None)
    if not rel:
        raise CheckpointError(
            f"run {record['id']} ({record.get('status')}) has no {which} checkpoint yet")
    folder = run_folder(registry, record)
    path = (folder / str(rel)).resolve()
    # The record is data: a path in it that leaves the run's folder (``../../elsewhere.pt``, an
    # absolute path, a symlink out) is refused rather than followed.
    if not path.is_relative_to(folder):
        raise CheckpointError(
            f"run {record['id']}'s {which} checkpoint path {rel!r} leads outside its folder {folder}: refused")
    return path
