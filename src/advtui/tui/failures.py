"""What the dashboard does when reading fails: one line per failure, on screen, and the rest of
the runs still listed.

The store refuses damaged files in one line (``RegistryError``); anything else a worker thread
meets (a record of the wrong shape, a bug) must not end the thread silently and leave a panel
saying "reading…" for ever. Workers catch it, show ``one_line(exc)`` where the data would have
been, and try again on their next tick.
"""

from __future__ import annotations

import os
import traceback
from typing import Any

from advtui.core.format import plain_line
from advtui.core.errors import AdvtuiError
from advtui.store.registry import Registry

# The fields the runs table computes with (elapsed = now - started, progress = epoch / epochs,
# rows sorted by created): a record where one of them has another type is left out of the table
# with one line, not a traceback that empties the whole table.
NUMBER = (int, float)
RECORD_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "created": (NUMBER, "a time"),
    "started": (NUMBER, "a time"),
    "ended": (NUMBER, "a time"),
    "train_time": (NUMBER, "a number of seconds"),
    "epoch": ((int,), "a whole number"),
    "epochs": ((int,), "a whole number"),
    "status": ((str,), "a status"),
    "name": ((str,), "a name"),
    "group": ((str,), "a group name"),
    "defense": ((str,), "a defense"),
    "dataset": ((str,), "a dataset"),
    "model": ((str,), "a model"),
    "device": ((str,), "a device"),
    "host": ((str,), "a host name"),
    "error": ((str,), "a message"),
    "config": ((dict,), "an object"),
    "metrics": ((dict,), "an object"),
    "health": ((list,), "a list"),
}


def one_line(exc: BaseException) -> str:
    """An exception as one line: the store's own message, else the exception's kind, its first
    line and where it was raised (a bare ``AssertionError`` says nothing else)."""
    if isinstance(exc, AdvtuiError):
        return plain_line(str(exc)) or type(exc).__name__
    text = plain_line(str(exc))
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})"
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__) + where


def record_problem(record: Any) -> str | None:
    """Why the runs table cannot show ``record`` (None when it can)."""
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        return "a run record without an id"
    for name, (types, meaning) in RECORD_FIELD_TYPES.items():
        value = record.get(name)
        # bool is an int to Python, never a time or a count to the dashboard.
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            return f"run {record['id']}: its {name} is {value!r}, not {meaning}"
    return None


def vet_records(records: list[dict]) -> tuple[dict[str, dict], list[str]]:
    """The records the table can show, by id, and one line for each it cannot."""
    shown: dict[str, dict] = {}
    problems: list[str] = []
    for record in records:
        problem = record_problem(record)
        if problem is None:
            shown[record["id"]] = record
        else:
            problems.append(f"{problem}: the run is not listed (repair or remove its run.json)")
    return shown, problems


def runs_one_by_one(registry: Registry) -> tuple[list[dict], list[str]]:
    """Every run record readable on its own, and one line per folder that is not, for when the
    store's listing failed as a whole: one damaged record must not hide the rest."""
    records: list[dict] = []
    problems: list[str] = []
    try:
        # A symlinked folder is not followed: a run folder never leads out of the runs root.
        names = sorted(entry.name for entry in os.scandir(registry.root) if entry.is_dir(follow_symlinks=False))
    except OSError as exc:
        return records, problems + [f"cannot read the runs directory {registry.root}: {exc.strerror or exc}"]
    for name in names:
        try:
            record = registry.get_run(name)
        except Exception as exc:  # noqa: BLE001 - whatever one file does, the others are listed
            problems.append(f"run folder {name}: {one_line(exc)}")
            continue
        if record is not None:
            records.append(record)
    return records, problems
