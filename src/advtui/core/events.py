"""The per-run metrics stream: ``runs/<run-id>/events.jsonl``.

One JSON object per line, append-only, each with ``kind`` and ``time``. The training hot path
writes here (never to the registry); the dashboard tails the file, reading only new bytes.

Kinds written by the engine: ``start`` (config, parameter counts, device, versions), ``inner``
(inner-loss trajectories, for rnn runs beside PGD's on the same batch), ``step`` (outer loss,
batch accuracies, lr, images/s), ``val_inner`` (at an epoch end, a learned maximizer's and PGD's
trajectories on a held-out batch), ``epoch`` (train metrics, the clean and PGD accuracy on the
validation split, or on the test split with ``--val-size 0``: ``eval_split`` says which, and
``best_epoch``, epoch time), ``early_stop`` (epoch, best_epoch, patience), ``checkpoint``
(last.pt, best.pt, final.pt), ``eval`` (attack progress and results) and ``end``.

``health`` events carry the findings of the training process's health checks
(``advtui.core.health``): ``code`` (``nan-loss``, ``stuck-at-chance``, ``rnn-behind-pgd``,
``rnn-behind-pgd-val``, ``robust-above-natural``, ``robust-overfitting``,
``catastrophic-overfitting``), ``level`` (``warning`` or ``error``), ``epoch`` (1-based, where the
condition began), ``message`` (what went wrong and what to try) and ``cleared`` (null when the
finding is raised; the epoch at which the condition ended, in a second event, when it clears).
A ``nan-loss`` error is followed by an ``end`` event with ``status`` ``failed`` and the message
as ``error``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from advtui.core.atomic import open_append

EVENTS_FILE = "events.jsonl"


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventWriter:
    """Appends events to a run's stream; each line is flushed so tailers see it at once.

    ``skip_epochs``: epochs whose ``epoch`` event the stream has already (a run killed while
    saving the checkpoint after that event redoes the epoch's end when resumed): not written
    again, so each epoch ends once in the stream however often it was retried."""

    def __init__(self, path: Path, skip_epochs: Iterable[int] = ()):
        self.path = Path(path)
        self.skip_epochs = frozenset(skip_epochs)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open_append(self.path, text=True)  # a link planted at events.jsonl is refused
        if _ends_torn(self.path):
            # A writer killed mid-line left a partial last line: start on a new one, so the
            # first event of this writer is not glued to it (and lost with it).
            self._file.write("\n")

    def emit(self, kind: str, **fields: Any) -> None:
        if kind == "epoch" and fields.get("epoch") in self.skip_epochs:
            return
        record = {"kind": kind, "time": round(time.time(), 3), **_clean(fields)}
        # One write call per line: with O_APPEND, concurrent writers (a run and an eval
        # of the same run) never interleave within a line.
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._file.close()
            except OSError:
                pass  # a full disk: each line was flushed when written, so nothing is held back

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_torn(path: Path) -> bool:
    """Whether the file's last byte is not a newline (a line was cut off mid-write)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except OSError:
        return False


class LineTail:
    """Complete lines appended to a file since the last call, as bytes; a partial last line (a
    writer mid-append) waits for its end. ``initial_bytes`` starts a long file near its end."""

    def __init__(self, path: Path, initial_bytes: int | None = None):
        self.path = Path(path)
        self.initial_bytes = initial_bytes
        self.offset: int | None = None if initial_bytes is not None else 0
        self._partial = b""

    def read_lines(self) -> list[bytes]:
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return []
        if self.offset is None:  # only with initial_bytes: start that far from the end
            self.offset = max(0, size - (self.initial_bytes or 0))
        if size < self.offset:  # the file was replaced: start over
            self.offset, self._partial = 0, b""
        if size == self.offset:
            return []
        try:  # never through a link planted at the stream's name (O_NOFOLLOW), as it is never written through
            with os.fdopen(os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                f.seek(self.offset)
                chunk = f.read(size - self.offset)
        except OSError:  # not a readable file (a folder in its place, no permission, a link): nothing to read
            return []
        self.offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        return lines


# The fields readers index directly, per kind, and the types they must have: an event without
# them (a line edited by hand, a writer of another version) is damaged, not a crash downstream.
_NUMBER = (int, float, type(None))  # NaN and infinities are written as null
_REQUIRED: dict[str, dict[str, tuple[type, ...]]] = {
    "inner": {"losses": (list,)},
    "val_inner": {"losses": (list,)},
    "epoch": {"epoch": (int,)},
}
_OPTIONAL_LISTS = {"inner": ("pgd",), "val_inner": ("pgd",)}


def _well_formed(event: Any) -> bool:
    if type(event) is not dict or type(event.get("kind")) is not str:
        return False
    kind = event["kind"]
    for name, types in _REQUIRED.get(kind, {}).items():
        value = event.get(name)
        if type(value) not in types:
            return False
        if type(value) is list and not all(type(v) in _NUMBER for v in value):
            return False
    for name in _OPTIONAL_LISTS.get(kind, ()):
        value = event.get(name)
        if value is not None and (type(value) is not list or not all(type(v) in _NUMBER for v in value)):
            return False
    return True


class EventTail(LineTail):
    """Reads a stream incrementally: each ``read_new`` returns only events appended since the
    last call. Damaged lines (not JSON, not UTF-8, not an event object, or an event without
    the fields of its kind) are skipped and counted in ``damaged``."""

    def __init__(self, path: Path, initial_bytes: int | None = None):
        super().__init__(path, initial_bytes)
        self.damaged = 0  # lines skipped as damaged since this tail was made

    def read_new(self) -> list[dict]:
        events = []
        for line in self.read_lines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
                event = None
            if _well_formed(event):
                events.append(event)
            else:
                self.damaged += 1  # a torn or damaged line (a crashed writer): skip it, keep the rest
        return events


def damaged_note(count: int) -> str:
    """How readers say that lines were skipped: "2 damaged lines skipped"."""
    return f"{count} damaged line{'s' if count != 1 else ''} skipped"


@dataclass
class EventStream:
    """A whole stream, read at once: its events and how many damaged lines were skipped."""

    events: list[dict]
    damaged: int = 0


def read_stream(path: Path) -> EventStream:
    """Every event of a stream, with the count of damaged lines (a missing file has none)."""
    tail = EventTail(path)
    events = tail.read_new()
    return EventStream(events, tail.damaged)


def read_events(path: Path, kinds: set[str] | None = None) -> Iterator[dict]:
    """All events of a stream (optionally of some kinds), for one-shot readers; damaged lines
    are skipped (``read_stream`` counts them)."""
    for event in read_stream(path).events:
        if kinds is None or event.get("kind") in kinds:
            yield event


def ended_epochs(path: Path) -> set[int]:
    """The epochs (counted from 1) whose ``epoch`` event a stream holds."""
    return {event["epoch"] for event in read_events(path, {"epoch"})}
