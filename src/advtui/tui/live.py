"""Live run state folded from events streams, independent of any widget.

Each ``RunStream`` tails one run's ``events.jsonl`` with ``EventTail`` (only new bytes are read)
and folds the events into the series the dashboard draws: outer loss and inner loss at step T
over training, the latest inner trajectories (with PGD's on the same batch for learned
maximizers), per-epoch accuracies, and what the progress and ETA columns need. Polling happens
in worker threads; widgets read the folded state on the UI thread, so every mutation bumps
``version`` last and readers take copies.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from advtui.core.events import EVENTS_FILE, EventTail
from advtui.core.health import HealthMonitor

# How many recent inner trajectories the inner-loss plot overlays.
RECENT_INNER = 6
# Eval events kept per run (attack progress lines for the detail screen).
RECENT_EVALS = 200


def minmax_downsample(xs: Sequence[float], ys: Sequence[float], max_points: int) -> tuple[list[float], list[float]]:
    """Reduce a series to about ``max_points`` points keeping each bucket's min and max.

    Plain decimation would hide spikes (a diverging inner loss, a NaN-adjacent blow-up); keeping
    both extremes of every bucket, in their original order, preserves the envelope a researcher
    looks for while bounding the cost of drawing a months-long run.
    """
    n = len(xs)
    if n <= max_points or max_points < 4:
        return list(xs), list(ys)
    buckets = max_points // 2
    size = n / buckets
    out_x: list[float] = []
    out_y: list[float] = []
    for b in range(buckets):
        lo, hi = int(b * size), int((b + 1) * size) if b < buckets - 1 else n
        if hi <= lo:
            continue
        seg = range(lo, hi)
        i_min = min(seg, key=lambda i: _finite_or(ys[i], math.inf))
        i_max = max(seg, key=lambda i: _finite_or(ys[i], -math.inf))
        for i in sorted({i_min, i_max}):
            out_x.append(xs[i])
            out_y.append(ys[i])
    return out_x, out_y


def _finite_or(value: Any, default: float) -> float:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else default


@dataclass
class Series:
    """An append-only (x, y) series; None values (NaN on disk) are skipped."""

    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)

    def add(self, x: Any, y: Any) -> None:
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(y):
            self.xs.append(float(x))
            self.ys.append(float(y))

    def __len__(self) -> int:
        return len(self.xs)

    def last(self) -> float | None:
        return self.ys[-1] if self.ys else None

    def downsampled(self, max_points: int) -> tuple[list[float], list[float]]:
        n = min(len(self.xs), len(self.ys))  # a consistent prefix even while a worker appends
        return minmax_downsample(self.xs[:n], self.ys[:n], max_points)


class RunStream:
    """The folded events of one run. ``poll`` reads what was appended since the last call."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / EVENTS_FILE
        self._tail = EventTail(self.path)
        self._lock = threading.Lock()
        self.version = 0
        self.outer_loss = Series()  # x: global step
        self.inner_final = Series()  # x: global step, y: inner loss at step T
        self.pgd_final = Series()  # learned maximizers: PGD's loss at step T on the same batch
        self.recent_inner: deque[dict] = deque(maxlen=RECENT_INNER)
        self.epochs: dict[int, dict] = {}  # completed epoch (1-based) -> metrics
        self.evals: deque[dict] = deque(maxlen=RECENT_EVALS)
        self.start: dict | None = None  # the latest start event (a resume writes a new one)
        self.last_step: dict | None = None
        self.end: dict | None = None
        self.health = HealthMonitor()  # the health checks replayed over the stream as it grows
        self.events_read = 0
        # Seconds trained before the latest start (a resumed run): each earlier start to its end
        # (or, for a process that died without one, to its last event).
        self.earlier_time = 0.0
        self._last_time: float | None = None

    @property
    def damaged_lines(self) -> int:
        """Lines skipped as damaged (a crashed writer, a damaged disk): the caption says how
        many, instead of a damaged stream quietly looking shorter than it is."""
        return self._tail.damaged

    def poll(self) -> bool:
        """Fold new events in; True if anything changed."""
        with self._lock:
            damaged_before = self.damaged_lines
            events = self._tail.read_new()
            if not events:
                if self.damaged_lines != damaged_before:
                    self.version += 1
                    return True
                return False
            for event in events:
                self._fold(event)
            self.events_read += len(events)
            self.version += 1
            return True

    def _fold(self, event: dict) -> None:
        self.health.feed(event)
        kind = event.get("kind")
        if kind == "step":
            self.last_step = event
            self.outer_loss.add(event.get("step"), event.get("loss"))
        elif kind == "inner":
            losses = event.get("losses") or []
            if losses:
                self.recent_inner.append(event)
                self.inner_final.add(event.get("step"), losses[-1])
                pgd = event.get("pgd")
                if pgd:
                    self.pgd_final.add(event.get("step"), pgd[-1])
        elif kind == "epoch":
            if isinstance(event.get("epoch"), int):
                self.epochs[event["epoch"]] = event
        elif kind == "start":
            if self.start is not None:
                began = self.start.get("time")
                ended = (self.end or {}).get("time", self._last_time)
                if isinstance(began, (int, float)) and isinstance(ended, (int, float)):
                    self.earlier_time += max(0.0, ended - began)
            self.start, self.end = event, None
        elif kind == "end":
            self.end = event
        elif kind == "eval":
            self.evals.append(event)
        if isinstance(event.get("time"), (int, float)):
            self._last_time = event["time"]

    # -- derived values for the table --------------------------------------------------------
    def progress(self, epochs: int | None) -> float | None:
        """Fraction of training done, from the latest step or epoch event."""
        epochs = epochs or (self.start or {}).get("config", {}).get("epochs")
        if not epochs:
            return None
        done = max(self.epochs) if self.epochs else 0
        step = self.last_step
        if step and step.get("batches"):
            in_epoch = step["epoch"] + step["batch"] / step["batches"]
            # A step event of an epoch already completed (seen before its epoch event) must
            # not move the bar backwards.
            done = max(done, in_epoch)
        return min(1.0, done / epochs)

    def eta_seconds(self, epochs: int | None, now: float | None = None) -> float | None:
        """Remaining time, from the rate since the latest (re)start of the process."""
        if self.start is None or self.end is not None:
            return None
        p = self.progress(epochs)
        epochs = epochs or self.start.get("config", {}).get("epochs") or 1
        p0 = (self.start.get("epoch", 0) + self._start_fraction()) / epochs
        if p is None or p <= p0:
            return None
        now = now if now is not None else time.time()
        rate = (p - p0) / max(now - self.start.get("time", now), 1e-6)
        return (1.0 - p) / rate if rate > 0 else None

    def _start_fraction(self) -> float:
        start = self.start or {}
        batch = start.get("batch") or 0
        step = self.last_step or {}
        return batch / step["batches"] if batch and step.get("batches") else 0.0

    def latest_epoch(self) -> dict | None:
        return self.epochs[max(self.epochs)] if self.epochs else None

    def is_learned(self) -> bool:
        return any("pgd" in e for e in self.recent_inner)


class StreamSet:
    """One ``RunStream`` per run id, created on first use and polled by the caller's worker."""

    def __init__(self, runs_root: Path):
        self.runs_root = Path(runs_root)
        self._streams: dict[str, RunStream] = {}
        self._lock = threading.Lock()

    def get(self, run_id: str) -> RunStream:
        with self._lock:
            stream = self._streams.get(run_id)
            if stream is None:
                stream = self._streams[run_id] = RunStream(self.runs_root / run_id)
            return stream

    def peek(self, run_id: str) -> RunStream | None:
        return self._streams.get(run_id)

    def poll(self, run_ids: Sequence[str]) -> set[str]:
        """Poll the given runs; the ids whose state changed."""
        return {run_id for run_id in run_ids if self.get(run_id).poll()}

    def forget(self, keep: set[str]) -> None:
        with self._lock:
            for run_id in list(self._streams):
                if run_id not in keep:
                    del self._streams[run_id]
