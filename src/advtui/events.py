"""The per-run metrics stream: ``runs/<run-id>/events.jsonl``.

One JSON object per line, append-only, each with ``kind`` and ``time``. The training hot path
writes here (never to the registry); the dashboard tails the file, reading only new bytes.

Kinds written by the engine: ``start`` (config, parameter counts, device, versions), ``inner``
(inner-loss trajectories, for rnn runs beside PGD's on the same batch), ``step`` (outer loss,
batch accuracies, lr, images/s), ``epoch`` (train and test metrics, epoch time),
``checkpoint``, ``eval`` (attack progress and results) and ``end``.

``health`` events carry the findings of the training process's health checks
(``advtui.health``): ``code`` (``nan-loss``, ``stuck-at-chance``, ``rnn-behind-pgd``,
``robust-above-natural``), ``level`` (``warning`` or ``error``), ``epoch`` (1-based, where the
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
from pathlib import Path
from typing import Any, Iterator

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
    """Appends events to a run's stream; each line is flushed so tailers see it at once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)

    def emit(self, kind: str, **fields: Any) -> None:
        record = {"kind": kind, "time": round(time.time(), 3), **_clean(fields)}
        # One write call per line: with O_APPEND, concurrent writers (a run and an eval
        # of the same run) never interleave within a line.
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        if self.offset is None:
            self.offset = max(0, size - self.initial_bytes)
        if size < self.offset:  # the file was replaced: start over
            self.offset, self._partial = 0, b""
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        self.offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        return lines


class EventTail(LineTail):
    """Reads a stream incrementally: each ``read_new`` returns only events appended since the
    last call."""

    def read_new(self) -> list[dict]:
        events = []
        for line in self.read_lines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
                continue  # a torn or damaged line (a crashed writer): skip it, keep the rest
            if isinstance(event, dict):  # every event is an object; anything else is damage
                events.append(event)
        return events


def read_events(path: Path, kinds: set[str] | None = None) -> Iterator[dict]:
    """All events of a stream (optionally of some kinds), for one-shot readers like ``show``."""
    for event in EventTail(path).read_new():
        if kinds is None or event.get("kind") in kinds:
            yield event
