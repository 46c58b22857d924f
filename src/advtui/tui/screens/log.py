"""A run's log, following as it grows.

A run launched by the scheduler writes its output to ``runs/<id>/log.txt``; a run started with
``advtui run`` in a terminal has no log file, so its events stream is shown as log lines
instead. Either way only new bytes are read on each tick.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Log

from advtui.core.epochs import epoch_accuracy
from advtui.core.events import EVENTS_FILE, EventTail, LineTail

LOG_FILE = "log.txt"
# A long log is opened at its end: the first read takes at most this many bytes.
INITIAL_BYTES = 256 * 1024


class TextTail(LineTail):
    """New complete lines of a text file since the last call, opened near its end."""

    def __init__(self, path: Path, initial_bytes: int = INITIAL_BYTES):
        super().__init__(path, initial_bytes)

    def read_new(self) -> list[str]:
        lines = [raw.decode("utf-8", errors="replace") for raw in self.read_lines()]
        # A progress bar redraws its line with carriage returns: keep the last state of it.
        return [line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r") for line in lines]


def format_event(event: dict) -> str:
    """One line per event, for runs without a log file."""
    when = dt.datetime.fromtimestamp(event.get("time", 0)).strftime("%H:%M:%S")
    kind = event.get("kind", "?")
    if kind == "step":
        body = (f"epoch {event.get('epoch', 0) + 1} batch {event.get('batch')}/{event.get('batches')}  "
                f"loss {_f(event.get('loss'), '.4f')}  train acc {_f(event.get('train_acc'), '.1f')}%  "
                f"{_f(event.get('images_per_s'), ',.0f')} img/s  lr {_f(event.get('lr'), '.3g')}")
    elif kind == "inner":
        losses = event.get("losses") or []
        body = f"{event.get('maximizer')} inner loss {' '.join(_f(v, '.3f') for v in losses)}"
        if event.get("pgd"):
            body += f"  | pgd {' '.join(_f(v, '.3f') for v in event['pgd'])}"
    elif kind == "epoch":
        a = epoch_accuracy(event)
        body = (f"epoch {event.get('epoch')} done in {_f(event.get('epoch_time'), '.1f')}s  "
                f"train loss {_f(event.get('train_loss'), '.4f')}  {a.label} clean {_f(a.clean, '.2f')}%  "
                f"robust {_f(a.robust, '.2f')}%  (n={a.n if a.n is not None else '-'})")
    elif kind == "start":
        body = (f"{'resumed' if event.get('resumed') else 'started'} on {event.get('device')}  "
                f"train {event.get('train_size')} "
                + (f"val {event.get('val_size')}  " if "val_size" in event else f"test {event.get('test_size')}  ") +
                f"params {event.get('model_params')} + maximizer {event.get('maximizer_params')}")
    elif kind == "checkpoint":
        body = f"checkpoint {event.get('name')} (epoch {event.get('epoch')}, batch {event.get('batch')})"
    elif kind == "end":
        body = f"ended {event.get('status')}" + (f": {event['error']}" if event.get("error") else "")
    else:
        body = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("kind", "time"))[:300]
    return f"{when} {kind:<10} {body}"


def _f(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


class LogScreen(Screen):
    """The run's output: log.txt (training), each eval job's log, or the events stream; ``s``
    switches between them."""

    BINDINGS = [
        Binding("escape,q,l", "app.pop_screen", "Back"),
        Binding("f", "toggle_follow", "Follow on/off"),
        Binding("s", "next_source", "Next log"),
        Binding("g", "top", "Top", show=False),
        Binding("G", "bottom", "Bottom", show=False),
    ]

    def __init__(self, run_id: str, interval: float = 0.5) -> None:
        super().__init__()
        self.run_id = run_id
        self.interval = interval
        self.follow = True
        self._busy = threading.Lock()  # one read at a time: tails keep offsets
        self._tail: TextTail | EventTail | None = None
        self.source: Path | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Log(id="log", highlight=False, auto_scroll=True)
        yield Footer()

    def on_mount(self) -> None:
        self.folder = self.app.runs_root / self.run_id  # type: ignore[attr-defined]
        record = self.app.registry.get_run(self.run_id) or {}  # type: ignore[attr-defined]
        self.title = f"log · {self.run_id} {record.get('name', '')}"
        self.log_widget = self.query_one(Log)
        self.log_widget.focus()
        sources = self.sources()
        self.open_source(sources[0])
        self.set_interval(self.interval, self.read_more)

    def sources(self) -> list[Path]:
        """log.txt first (a run started from a terminal has none), eval logs newest first, then
        the events stream."""
        evals = sorted(self.folder.glob("eval-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
        log = self.folder / LOG_FILE
        return ([log] if log.exists() else []) + evals + [self.folder / EVENTS_FILE]

    def open_source(self, path: Path) -> None:
        with self._busy:
            self.source = path
            self._tail = EventTail(path) if path.name == EVENTS_FILE else TextTail(path)
            self.log_widget.clear()
        note = " (events as lines: the run has no log file)" if path.name == EVENTS_FILE and \
            not (self.folder / LOG_FILE).exists() else ""
        self.sub_title = f"{path.name}{note}"
        self.log_widget.border_title = self._follow_title()
        self.read_more()

    def action_next_source(self) -> None:
        sources = self.sources()
        index = sources.index(self.source) + 1 if self.source in sources else 0
        self.open_source(sources[index % len(sources)])

    def _follow_title(self) -> str:
        name = self.source.name if self.source else ""
        return f"{self.run_id} · {name} · {'following' if self.follow else 'paused (f follows)'}"

    def read_more(self) -> None:
        if self._busy.locked():
            return
        self.run_worker(self._read_work, thread=True, group="log", exit_on_error=False)

    def _read_work(self) -> None:
        if not self._busy.acquire(blocking=False):
            return
        try:
            tail, source = self._tail, self.source
            if tail is None:
                return
            new = tail.read_new()
            lines = [format_event(e) for e in new] if isinstance(tail, EventTail) else new
        finally:
            self._busy.release()
        if lines:
            self.app.call_from_thread(self._append, lines, source)

    def _append(self, lines: list[str], source: Path | None) -> None:
        if source != self.source:
            return  # read from a source the user has since switched away from
        self.log_widget.auto_scroll = self.follow
        self.log_widget.write_lines(lines)

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        self.log_widget.border_title = self._follow_title()
        if self.follow:
            self.log_widget.scroll_end(animate=False)

    def action_top(self) -> None:
        self.follow = False
        self.log_widget.border_title = self._follow_title()
        self.log_widget.scroll_home(animate=False)

    def action_bottom(self) -> None:
        self.log_widget.scroll_end(animate=False)
