"""A sweep in the runs table: its group row says done, running, queued and failed, and the
best combination so far on the validation metric (the robust column: each run's last per-epoch
held-out robust accuracy).

A group is a sweep when every member is named ``GROUP-cI-sSEED`` (``advtui sweep`` names its
runs so): the row needs no file read, so the table stays as fast with sweeps as without.
"""

from __future__ import annotations

import re
import statistics
from typing import Any

from rich.text import Text

from advtui.core.format import status_style

KINDS = (("done", ("finished",)), ("running", ("running",)), ("queued", ("queued",)), ("failed", ("failed", "killed")))


def member_combination(group: str, name: str) -> tuple[int, int] | None:
    """(combination, seed) of a sweep run's name, else None."""
    if not name.startswith(group + "-"):
        return None
    found = re.fullmatch(r"c(\d+)-s(\d+)", name[len(group) + 1:])
    return (int(found.group(1)), int(found.group(2))) if found else None


def best_combination(values: dict[int, list[float]]) -> tuple[int, float, int] | None:
    """(combination, mean over its seeds, seeds) of the highest mean; ties: the lower index."""
    if not values:
        return None
    index = max(values, key=lambda i: (statistics.fmean(values[i]), -i))
    return index, statistics.fmean(values[index]), len(values[index])


def sweep_cells(group: str, members: list[Any]) -> dict[str, Any] | None:
    """The group row's name cell when the group is a sweep (its progress and best so far), else None:
    the status column is too narrow for four counts."""
    combos: dict[int, list[float]] = {}
    counts = {kind: 0 for kind, _ in KINDS}
    for member in members:
        sort = member.sort
        parsed = member_combination(group, str(sort.get("name") or ""))
        if parsed is None:
            return None
        for kind, statuses in KINDS:
            if sort.get("status") in statuses:
                counts[kind] += 1
        if sort.get("robust") is not None:
            combos.setdefault(parsed[0], []).append(sort["robust"])
    name = Text(group, style="bold")
    name.append(" sweep:", style="dim")
    for kind, statuses in KINDS:
        name.append(f" {counts[kind]} {kind}", style=status_style(statuses[0]) if counts[kind] else "dim")
    best = best_combination(combos)
    if best is not None:
        name.append(f" · best c{best[0]} {best[1]:.1f}% (n={best[2]})", style="bold green")
    return {"name": name}
