"""Which of a run's checkpoints an evaluation reads: ``--checkpoint best|final|last|epoch:N``,
or a path that must be one of the run's own checkpoint files.

Torch-free: the choice is resolved, and refused in one line, before any model is loaded or any
result stored. A result then names its checkpoint by kind and epoch (``checkpoint_kind``,
``checkpoint_epoch``), so a comparison can tell the best epoch from the final one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from advtui.core.errors import CheckpointError, ConfigError
from advtui.core.paths import RunsRoot, checkpoint_path, run_folder

KINDS = ("best", "final", "last")
CHOICES_HELP = "best, final, last or epoch:N"
_EPOCH = re.compile(r"^epoch:(\S+)$")


def resolve_checkpoint(registry: RunsRoot, record: dict[str, Any], choice: str | Path | None) -> tuple[Path, str]:
    """(the file, its kind) for ``choice``: None is the final checkpoint (the last one of a run
    that has not finished); a kind must exist; ``epoch:N`` names the kept checkpoint of epoch N;
    a path must be one of the run's own checkpoints (another run's model is evaluated as that run)."""
    kept = record.get("checkpoints") or {}
    if choice is None:
        kind = "final" if kept.get("final") else "last"
        return checkpoint_path(registry, record, kind), kind
    text = str(choice)
    if text in KINDS:
        return _kept(registry, record, text), text
    match = _EPOCH.match(text)
    if match:
        kind = _kind_of_epoch(record, match.group(1))
        return _kept(registry, record, kind), kind
    return _own_file(registry, record, Path(text).expanduser())


def _kept(registry: RunsRoot, record: dict[str, Any], kind: str) -> Path:
    if not (record.get("checkpoints") or {}).get(kind):
        raise CheckpointError(f"run {record['id']} ({record.get('status')}) has no {kind} checkpoint{_why_none(kind)}: "
                              f"it keeps {_kept_list(record)}")
    path = checkpoint_path(registry, record, kind)
    if not path.is_file():
        raise CheckpointError(f"run {record['id']}'s {kind} checkpoint {path} does not exist: it keeps "
                              f"{_kept_list(record, existing_only=registry)}")
    return path


def _why_none(kind: str) -> str:
    if kind == "best":
        return " (a run trained with --val-size 0, or before validation splits, chooses none)"
    if kind == "final":
        return " (it has not finished)"
    return ""


def _kept_list(record: dict[str, Any], existing_only: RunsRoot | None = None) -> str:
    """"best (epoch 2), last (epoch 3)": the run's checkpoints, for an error line."""
    names = []
    for kind in KINDS:
        if not (record.get("checkpoints") or {}).get(kind):
            continue
        if existing_only is not None and not checkpoint_path(existing_only, record, kind).is_file():
            continue
        epoch = kept_epoch(record, kind)
        names.append(f"{kind} (epoch {epoch})" if epoch is not None else kind)
    return ", ".join(names) or "no checkpoint"


def kept_epoch(record: dict[str, Any], kind: str) -> int | None:
    """The epoch a kept checkpoint holds, as the record knows it: best_epoch for best.pt, the
    epochs done for final.pt; last.pt's is known only at an epoch's end (a finished run)."""
    if kind == "best":
        best = record.get("best_epoch")
        return best if isinstance(best, int) else None
    if kind == "final" or record.get("status") == "finished":
        done = record.get("epoch")
        return done if isinstance(done, int) else None
    return None


def _kind_of_epoch(record: dict[str, Any], text: str) -> str:
    """``epoch:N`` is the best or final checkpoint when it holds epoch N (no other epochs are kept)."""
    try:
        epoch = int(text)
    except ValueError:
        raise ConfigError(f"--checkpoint epoch:{text}: N must be an epoch number, as in epoch:3") from None
    recorded = record.get("epoch")
    done = recorded if isinstance(recorded, int) else 0
    if epoch < 1 or epoch > done:
        raise ConfigError(f"--checkpoint epoch:{epoch}: run {record['id']} has trained {done} epoch"
                          f"{'' if done == 1 else 's'}: pass an epoch from 1 to {done}" if done else
                          f"--checkpoint epoch:{epoch}: run {record['id']} has not finished an epoch yet")
    for kind in ("best", "final"):
        if (record.get("checkpoints") or {}).get(kind) and kept_epoch(record, kind) == epoch:
            return kind
    raise CheckpointError(f"--checkpoint epoch:{epoch}: run {record['id']} keeps no checkpoint of epoch {epoch}, "
                          f"only {_kept_list(record)}")


def _own_file(registry: RunsRoot, record: dict[str, Any], path: Path) -> tuple[Path, str]:
    """A path given by hand: the kind of the run's own checkpoint it is, else refused."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: pass --checkpoint {CHOICES_HELP} "
                              f"(run {record['id']} keeps {_kept_list(record)})")
    resolved = path.resolve()
    for kind in KINDS:
        if (record.get("checkpoints") or {}).get(kind) and checkpoint_path(registry, record, kind) == resolved:
            return resolved, kind
    raise CheckpointError(f"--checkpoint {path} is not one of run {record['id']}'s checkpoints (in "
                          f"{run_folder(registry, record) / 'checkpoints'}): evaluate another run's model as that run, "
                          f"or pass --checkpoint {CHOICES_HELP}")


def describe(kind: str | None, epoch: int | None) -> str:
    """"best (epoch 2)", "final (epoch 3)", or "-" for a result stored before kinds were recorded."""
    if not kind:
        return "-"
    return f"{kind} (epoch {epoch})" if isinstance(epoch, int) else kind


def kind_from_path(label: str | None) -> str | None:
    """The kind of an older result, whose stored path (relative to the run folder) names it."""
    name = Path(str(label or "")).name
    return name[:-3] if name in ("best.pt", "final.pt", "last.pt") else None
