"""The per-epoch clean and PGD accuracy of a run, whichever split it was measured on.

A run with a validation split records ``val_clean_acc``, ``val_pgd_acc`` and ``val_n`` at each
epoch end (``eval_split: "val"``); a run trained with ``--val-size 0``, and every run recorded
before validation splits existed, records ``test_clean_acc``, ``test_pgd_acc`` and ``test_n``:
test numbers, shown "for monitoring only", since choosing anything by them selects on the test
set. Every reader of those numbers goes through ``epoch_accuracy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MONITOR_NOTE = "for monitoring only"


@dataclass(frozen=True)
class EpochAccuracy:
    clean: float | None
    robust: float | None
    n: int | None
    split: str  # "val" or "test"

    @property
    def label(self) -> str:
        """How the numbers are named on screen: "val", or "test" with the monitoring note."""
        return "val" if self.split == "val" else f"test ({MONITOR_NOTE})"


def epoch_accuracy(metrics: dict[str, Any] | None) -> EpochAccuracy:
    """The per-epoch accuracy in ``metrics`` (an ``epoch`` event or a record's ``metrics``)."""
    metrics = metrics or {}
    split = metrics.get("eval_split")
    if split not in ("val", "test"):
        split = "val" if "val_pgd_acc" in metrics else "test"
    n = metrics.get(f"{split}_n")
    return EpochAccuracy(_number(metrics.get(f"{split}_clean_acc")), _number(metrics.get(f"{split}_pgd_acc")),
                         n if isinstance(n, int) and not isinstance(n, bool) else None, split)


def has_epoch_accuracy(metrics: dict[str, Any] | None) -> bool:
    """Does ``metrics`` hold an epoch end's evaluation (not a batch's progress)?"""
    return metrics is not None and any(f"{split}_clean_acc" in metrics for split in ("val", "test"))


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
