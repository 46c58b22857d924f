"""The main screen: runs table, live plots of the selected run, GPU and queue panels.

Everything that touches the disk (registry reads, events tails, GPU sampling, the scheduler)
runs in thread workers; results come back to the UI thread with ``call_from_thread`` and only
changed cells or plots are redrawn.
"""

from __future__ import annotations

import gc
import os
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from advtui.core.format import short_device, status_style
from advtui.errors import AdvtuiError
from advtui.health import ERROR, record_findings, worst_level
from advtui.tui.rows import GROUP_PREFIX, GroupRow, RunRow, arrange, run_row
from advtui.tui.widgets.plots import AccuracyPlot, InnerLossPlot, TrainingLossPlot
from advtui.tui.widgets.runs_table import RunsTable, is_group_key
from advtui.tui.widgets.system_panel import QueuePanel, SystemPanel, set_titles, text_key

if TYPE_CHECKING:
    from advtui.tui.app import AdvtuiApp

ACTIVE = ("running", "queued")
# Streams of finished runs kept in memory after they were viewed (re-reading one is cheap).
RECENT_STREAMS = 16
# Sorting by one of these columns reorders the table as runs progress.
LIVE_COLUMNS = ("progress", "loss", "clean", "robust", "elapsed", "eta")


class MainScreen(Screen):
    BINDINGS = [
        Binding("n", "new_run", "New run"),
        Binding("e", "evaluate", "Eval"),
        Binding("space", "toggle_mark", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("d", "detail", "Detail"),
        Binding("l", "log", "Log"),
        Binding("k", "kill", "Kill"),
        Binding("r", "resume", "Resume"),
        Binding("slash", "filter", "Filter"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, dict] = {}
        self.rows: dict[str, RunRow] = {}
        self.marked: set[str] = set()
        self.collapsed: set[str] = set()
        self.filter_text = ""
        self.selected: str | None = None
        self._registry_stamp: tuple | None = None
        self._poll_busy = threading.Lock()
        self._side_busy = threading.Lock()
        self.loaded = False  # True once the registry was read and the table filled
        self.side_loaded = False  # True once the GPU and queue panels show a sample with run names
        self._last_side: tuple[Any, Any] | None = None
        self._stopping: dict[str, threading.Event] = {}  # runs whose kill is in flight
        self._arranged: list[RunRow | GroupRow] | None = None  # the table's rows, in order
        self._recently_selected: deque[str] = deque(maxlen=RECENT_STREAMS)
        self._last_error = ""
        self._caption_text: tuple | None = None

    @property
    def dash(self) -> "AdvtuiApp":
        return self.app  # type: ignore[return-value]

    # -- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="top"):
            yield Input(placeholder="filter: words or field:value, e.g. status:running defense:rnn (esc clears)",
                        id="filter")
            yield RunsTable(id="runs")
        with Horizontal(id="bottom"):
            with Vertical(id="plots"):
                yield Static(" no run selected", id="caption")
                with Horizontal(id="plot-row"):
                    yield InnerLossPlot(id="inner-plot")
                    with Vertical(id="plot-col"):
                        yield TrainingLossPlot(id="loss-plot")
                        yield AccuracyPlot(id="acc-plot")
            with Vertical(id="side"):
                yield SystemPanel(id="system")
                yield QueuePanel(id="queue")
        yield Footer()

    def on_mount(self) -> None:
        self.table = self.query_one(RunsTable)
        self.table.focus()
        # The registry is read right away (in a worker) and the table painted; the scheduler,
        # whose first step reconciles records with live processes, and the samplers start after
        # that first paint, so they do not compete with it.
        self.poll()
        self.set_interval(self.dash.poll_interval, self.poll)

    def _start_side(self) -> None:
        self.side_tick()
        self.set_interval(self.dash.side_interval, self.side_tick)

    # -- polling (workers) -------------------------------------------------------------------
    def poll(self) -> None:
        """Read the registry if it changed and tail the streams of active and selected runs."""
        if not self._poll_busy.acquire(blocking=False):
            return  # the previous poll is still running: skip rather than pile up
        self.run_worker(self._poll_work, thread=True, group="poll", exit_on_error=False)

    def _poll_work(self) -> None:
        try:
            records = self._read_registry_if_changed()
            known = records if records is not None else self.records
            active = [rid for rid, r in known.items() if r.get("status") in ACTIVE]
            if self.selected and self.selected in known and self.selected not in active:
                active.append(self.selected)
            for rid in list(self.marked):  # a copy: the UI thread may change the marks meanwhile
                if rid not in active and rid in known:
                    active.append(rid)
            changed = self.dash.streams.poll(active)
            # Finished runs browsed earlier stay in memory only while recently viewed.
            self.dash.streams.forget(set(active) | set(self._recently_selected))
            # Running runs' elapsed and ETA move every poll even without events: one table
            # update per poll covers both (each DataTable update repaints its visible rows).
            running = any(r.get("status") == "running" for r in known.values())
            if records is not None or changed or running:
                self.app.call_from_thread(self._apply, records, changed)
        except AdvtuiError as exc:  # e.g. a corrupt registry: say so, keep showing what we have
            if str(exc) != self._last_error:
                self._last_error = str(exc)
                self.app.call_from_thread(self.notify, str(exc), severity="error", timeout=10)
        finally:
            self._poll_busy.release()

    def _read_registry_if_changed(self) -> dict[str, dict] | None:
        path = self.dash.registry.path
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._registry_stamp and self.loaded:
            return None
        runs = self.dash.registry.runs()
        self._registry_stamp = stamp
        return {r["id"]: r for r in runs}

    def _apply(self, records: dict[str, dict] | None, changed: set[str]) -> None:
        now = self.dash.now()
        if records is not None:
            self.records = records
            self.marked &= set(records)
            # Thousands of small objects, none in a cycle: the cyclic collector would walk
            # every record again and again while they are made (as in the registry's listing).
            collecting = gc.isenabled()
            gc.disable()
            try:
                peek, marked = self.dash.streams.peek, self.marked
                self.rows = {rid: run_row(r, peek(rid), rid in marked, now) for rid, r in records.items()}
            finally:
                if collecting:
                    gc.enable()
        else:
            running = {rid for rid, r in self.records.items() if r.get("status") == "running"}
            for rid in changed | running:
                if rid in self.records:
                    self.rows[rid] = run_row(self.records[rid], self.dash.streams.peek(rid), rid in self.marked, now)
            changed = changed | running
        self.refresh_table(None if records is not None else changed)
        if records is not None:
            self._show_side()
        if not self.loaded:
            self.loaded = True
            self._show_side()
            self._selection_changed()
            self.call_after_refresh(self._start_side)
        elif self.selected in changed or records is not None:
            self.draw_selected()

    def refresh_table(self, changed: set[str] | None = None) -> None:
        """Show ``self.rows`` in the table. With ``changed`` (runs whose values moved, not their
        status or membership), the order is kept and only those rows and their group headers
        are redrawn, unless the table is filtered or sorted by a column that moves live."""
        if (changed is None or self._arranged is None or self.filter_text
                or self.table.sort_column in LIVE_COLUMNS):
            self._arranged = arrange(self.rows.values(), self.filter_text, self.table.sort_column,
                                     self.table.sort_reverse, self.collapsed)
            self.table.show_rows(self._arranged)
        else:
            groups = {self.rows[rid].group for rid in changed if rid in self.rows and self.rows[rid].group}
            patched: list[RunRow | GroupRow] = []
            updates: dict[str, dict] = {}
            for item in self._arranged:
                if isinstance(item, GroupRow):
                    if item.name in groups:
                        item = GroupRow(item.name, [self.rows.get(m.run_id, m) for m in item.members], item.collapsed)
                        updates[item.key] = item.cells()
                elif item.run_id in changed and item.run_id in self.rows:
                    item = self.rows[item.run_id]
                    updates[item.key] = item.cells
                patched.append(item)
            self._arranged = patched
            self.table.update_rows(updates)
        self._update_titles()

    def _update_titles(self) -> None:
        arranged = self._arranged or []
        total = len(self.records)
        counts: dict[str, int] = {}
        for r in self.records.values():
            counts[r.get("status", "-")] = counts.get(r.get("status", "-"), 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        shown = len([r for r in arranged if isinstance(r, RunRow)])
        set_titles(self.table, f"runs {shown}/{total}" + (f"  filter: {self.filter_text}" if self.filter_text else ""),
                   summary or "no runs yet: press n to start one")

    def side_tick(self) -> None:
        """Scheduler step (reconciliation on the first), GPU/system sample and queue listing,
        off the UI thread."""
        if not self._side_busy.acquire(blocking=False):
            return
        self.run_worker(self._side_work, thread=True, group="side", exit_on_error=False)

    def _side_work(self) -> None:
        try:
            services = self.dash.services
            notes: list[str] = []
            if self.dash.run_scheduler:
                notes.extend(services.scheduler_tick())
            running = [r for r in self.records.values() if r.get("status") == "running"]
            system = services.sample_system(running)
            queue = services.queue_state()
            self.app.call_from_thread(self._apply_side, system, queue, notes)
        finally:
            self._side_busy.release()

    def _apply_side(self, system: Any, queue: Any, notes: list[str]) -> None:
        self._last_side = (system, queue)
        self._show_side()
        for note in notes:
            self.notify(note, timeout=4)

    def _show_side(self) -> None:
        """Draw the panels from the latest sample (again when run names arrive later)."""
        if self._last_side is None:
            return
        system, queue = self._last_side
        self.query_one(SystemPanel).show(system, self.records)
        self.query_one(QueuePanel).show(queue, self.records)
        self.side_loaded = self.loaded

    # -- selection and plots -----------------------------------------------------------------
    @on(DataTable.RowHighlighted, "#runs")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._selection_changed()

    def _selection_changed(self) -> None:
        key = self.table.current_key
        run_id = None
        if key and is_group_key(key):
            group = key[len(GROUP_PREFIX):]
            members = [rid for rid, r in self.records.items() if r.get("group") == group]
            run_id = members[0] if members else None
        elif key:
            run_id = key
        if run_id == self.selected and self.loaded:
            return
        self.selected = run_id
        if run_id:
            self._recently_selected.append(run_id)
        if run_id and self.dash.streams.peek(run_id) is None:
            # Not tailed yet (a finished run): read its stream in a worker, then draw.
            self.run_worker(lambda: self._load_stream(run_id), thread=True, group="load", exit_on_error=False)
        self.draw_selected()

    def _load_stream(self, run_id: str) -> None:
        self.dash.streams.get(run_id).poll()
        self.app.call_from_thread(self.draw_selected)

    def draw_selected(self) -> None:
        run_id = self.selected
        record = self.records.get(run_id) if run_id else None
        stream = self.dash.streams.peek(run_id) if run_id else None
        text = (Text(" no run selected" if self.records else " no runs yet: press n to start one")
                if record is None else self._caption(record, stream))
        if text_key(text) != self._caption_text:  # an update re-lays out the screen: only on change
            self._caption_text = text_key(text)
            self.query_one("#caption", Static).update(text, layout=False)
        for plot in (self.query_one(InnerLossPlot), self.query_one(TrainingLossPlot), self.query_one(AccuracyPlot)):
            plot.show(run_id, stream, "")

    def _caption(self, record: dict, stream) -> Text:
        status = record.get("status", "-")
        text = Text(" ")
        text.append(record["id"], style="bold")
        text.append(f"  {record.get('name', '-')}  ")
        text.append(status, style=status_style(status))
        cfg = record.get("config") or {}
        text.append(f"  {record.get('defense')} eps {cfg.get('eps', '-')} T={cfg.get('inner_steps', '-')}"
                    f"  {short_device(record.get('device'))}", style="dim")
        findings = record_findings(record)
        if findings:  # the row's marker, spelt out for the selected run
            text.append(f"  ! {len(findings)} health finding{'s' if len(findings) > 1 else ''} (d: details)",
                        style="bold red" if worst_level(findings) == ERROR else "bold yellow")
        step = stream.last_step if stream else None
        if step and status == "running":
            text.append(f"  epoch {step['epoch'] + 1}/{record.get('epochs')} batch {step['batch']}/{step['batches']}"
                        f"  {step.get('images_per_s', 0):,.0f} img/s  lr {step.get('lr', 0):.3g}")
        return text

    # -- filter ------------------------------------------------------------------------------
    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.refresh_table()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self.table.focus()
        if not event.value.strip():
            event.input.display = False

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.filter_text = ""
        self.refresh_table()
        self.table.focus()

    # -- marks, groups -----------------------------------------------------------------------
    def _selected_run_ids(self) -> list[str]:
        """Marked runs if any, else the run (or the group's runs) under the cursor."""
        if self.marked:
            return [rid for rid in self.records if rid in self.marked]
        key = self.table.current_key
        if key and is_group_key(key):
            group = key[len(GROUP_PREFIX):]
            return [rid for rid, r in self.records.items() if r.get("group") == group]
        return [key] if key else []

    def action_toggle_mark(self) -> None:
        key = self.table.current_key
        if not key:
            return
        if is_group_key(key):
            group = key[len(GROUP_PREFIX):]
            members = {rid for rid, r in self.records.items() if r.get("group") == group}
            if members <= self.marked:
                self.marked -= members
            else:
                self.marked |= members
            changed = members
        else:
            self.marked ^= {key}
            changed = {key}
        now = self.dash.now()
        for rid in changed:
            self.rows[rid] = run_row(self.records[rid], self.dash.streams.peek(rid), rid in self.marked, now)
        self.refresh_table(changed)
        if self.table.cursor_row < self.table.row_count - 1:
            self.table.move_cursor(row=self.table.cursor_row + 1)

    @on(DataTable.RowSelected, "#runs")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_open(self) -> None:
        """Enter: a group header collapses or expands; a run opens its detail."""
        key = self.table.current_key
        if key and is_group_key(key):
            group = key[len(GROUP_PREFIX):]
            self.collapsed ^= {group}
            self.refresh_table()
        elif key:
            self.action_detail()

    @on(RunsTable.SortChanged)
    def _sort_changed(self, event: RunsTable.SortChanged) -> None:
        self.refresh_table()

    # -- actions -----------------------------------------------------------------------------
    def _current_run(self) -> dict | None:
        key = self.table.current_key
        if key and not is_group_key(key):
            return self.records.get(key)
        if self.selected:
            return self.records.get(self.selected)
        return None

    def action_new_run(self) -> None:
        from advtui.tui.screens.new_run import NewRunScreen

        system = self._last_side[0] if self._last_side else None
        gpus = len(system.gpus.gpus) if system is not None else 0
        self.app.push_screen(NewRunScreen(gpu_count=gpus), self._after_queue)

    def action_evaluate(self) -> None:
        from advtui.tui.screens.evaluate import EvaluateScreen

        ids = self._selected_run_ids()
        runs = [self.records[rid] for rid in ids if rid in self.records]
        if not runs:
            self.notify("select or mark a run to evaluate", severity="warning")
            return
        unfinished = [r["id"] for r in runs if r.get("status") != "finished"]
        if unfinished and len(unfinished) == len(runs):
            # An eval of a running run waits for its final checkpoint; say so rather than refuse.
            self.notify(f"{', '.join(unfinished)} not finished: the evaluation will start when training ends",
                        timeout=5)
        self.app.push_screen(EvaluateScreen(runs, list(self.records.values())), self._after_queue)

    def _after_queue(self, message: str | None) -> None:
        if message:
            self.notify(message, timeout=5)
            self._registry_stamp = None
            self.side_tick()
            self.poll()

    def action_compare(self) -> None:
        from advtui.tui.screens.compare import CompareScreen

        ids = [rid for rid in self.records if rid in self.marked]
        if len(ids) < 1:
            self.notify("mark runs with space first, then press c to compare them", severity="warning")
            return
        self.app.push_screen(CompareScreen(ids))

    def action_detail(self) -> None:
        from advtui.tui.screens.detail import DetailScreen

        record = self._current_run()
        if record is None:
            self.notify("no run selected", severity="warning")
            return
        self.app.push_screen(DetailScreen(record["id"]))

    def action_log(self) -> None:
        from advtui.tui.screens.log import LogScreen

        record = self._current_run()
        if record is None:
            self.notify("no run selected", severity="warning")
            return
        self.app.push_screen(LogScreen(record["id"]))

    def action_kill(self) -> None:
        from advtui.tui.screens.confirm import ConfirmScreen

        ids = [rid for rid in self._selected_run_ids() if self.records.get(rid, {}).get("status") in ACTIVE]
        if not ids:
            self.notify("only running or queued runs can be killed", severity="warning")
            return
        names = ", ".join(f"{rid} ({self.records[rid].get('name')})" for rid in ids)

        def done(confirmed: bool | None) -> None:
            if confirmed:
                for rid in ids:
                    self._stopping[rid] = threading.Event()
                self.notify(f"stopping {', '.join(ids)}: SIGTERM, the run saves a checkpoint…", timeout=4)
                self.run_worker(lambda: self._kill_work(ids), thread=True, group="action", exit_on_error=False)

        self.app.push_screen(ConfirmScreen(f"Kill {names}?",
                                           "It checkpoints and ends as killed; r resumes it."), done)

    def _kill_work(self, ids: list[str]) -> None:
        for rid in ids:
            try:
                message, severity = self.dash.services.kill(rid)
            finally:
                self._stopping.pop(rid, threading.Event()).set()
            self.app.call_from_thread(self.notify, message, severity=severity, timeout=5)
        self._registry_stamp = None

    def action_resume(self) -> None:
        ids = [rid for rid in self._selected_run_ids() if self.records.get(rid, {}).get("status") in ("killed", "failed")]
        if not ids:
            self.notify("only killed or failed runs can be resumed", severity="warning")
            return
        self.run_worker(lambda: self._resume_work(ids), thread=True, group="action", exit_on_error=False)

    def _resume_work(self, ids: list[str]) -> None:
        for rid in ids:
            stopping = self._stopping.get(rid)
            if stopping is not None:
                # The run already says killed, but its job is settled only when the kill
                # returns (the process has exited): resume after that, not before.
                stopping.wait(timeout=120)
            message, severity = self.dash.services.resume(rid)
            self.app.call_from_thread(self.notify, message, severity=severity, timeout=5)
        self._registry_stamp = None
        self.app.call_from_thread(self.side_tick)
