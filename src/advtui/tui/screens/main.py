"""The main screen: the runs panel, the plots panel of the selected run, GPU and queue panels.

Everything that touches the disk (registry reads, events tails, GPU sampling, the scheduler)
runs in thread workers, which post what they found as messages; the handlers run on the UI
thread and redraw only the changed cells or plots. The event loop never waits on the disk.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Header

from advtui.errors import AdvtuiError
from advtui.tui.widgets.footer import BindingsFooter
from advtui.tui.widgets.plots_panel import PlotsPanel
from advtui.tui.widgets.runs_panel import RunsPanel
from advtui.tui.widgets.runs_table import RunsTable
from advtui.tui.widgets.system_panel import QueuePanel, SystemPanel

if TYPE_CHECKING:
    from advtui.tui.app import AdvtuiApp

ACTIVE = ("running", "queued")
# Streams of finished runs kept in memory after they were viewed (re-reading one is cheap).
RECENT_STREAMS = 16
# Seconds between the table's first paint and the start of the plots, samplers and scheduler.
FIRST_PAINT_GRACE = 0.1


# -- what the workers post -------------------------------------------------------------------------
class RegistryPolled(Message):
    """A poll's findings: the records (None: the registry did not change), the runs whose
    streams moved, and the store's damage messages (None: unchanged)."""

    def __init__(self, records: dict[str, dict] | None, changed: set[str], damage: list[str] | None) -> None:
        super().__init__()
        self.records, self.changed, self.damage = records, changed, damage


class SideSampled(Message):
    def __init__(self, system: Any, queue: Any, notes: list[str], queue_error: str | None) -> None:
        super().__init__()
        self.system, self.queue, self.notes, self.queue_error = system, queue, notes, queue_error


class StreamLoaded(Message):
    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id


class ActionDone(Message):
    """An action run in a worker (kill, resume) has something to say."""

    def __init__(self, message: str, severity: str, reread: bool = True) -> None:
        super().__init__()
        self.message, self.severity, self.reread = message, severity, reread


class MainScreen(Screen):
    BINDINGS = [
        Binding("n", "new_run", "New run"),
        Binding("e", "evaluate", "Eval"),
        Binding("space", "toggle_mark", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("w", "sweep", "Sweep"),
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
        self._registry_stamp: tuple | None = None
        self._poll_busy = threading.Lock()
        self._side_busy = threading.Lock()
        self.loaded = False  # True once the registry was read and the table filled
        self.side_loaded = False  # True once the GPU and queue panels show a sample with run names
        self._last_side: tuple[Any, Any] | None = None
        self._stopping: dict[str, threading.Event] = {}  # runs whose kill is in flight
        self._recently_selected: deque[str] = deque(maxlen=RECENT_STREAMS)
        self._last_error = ""

    @property
    def dash(self) -> "AdvtuiApp":
        return self.app  # type: ignore[return-value]

    # The runs panel holds the table's model; these are its parts the actions and tests use.
    @property
    def table(self) -> RunsTable:
        return self.runs.table

    @property
    def records(self) -> dict[str, dict]:
        return self.runs.records

    @property
    def marked(self) -> set[str]:
        return self.runs.marked

    @property
    def selected(self) -> str | None:
        return self.runs.selected

    # -- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        yield RunsPanel(self.dash.streams.peek, self.dash.now, id="top")
        with Horizontal(id="bottom"):
            yield PlotsPanel(id="plots")
            with Vertical(id="side"):
                yield SystemPanel(id="system")
                yield QueuePanel(id="queue")
        yield BindingsFooter()

    def on_mount(self) -> None:
        self.runs = self.query_one(RunsPanel)
        self.plots = self.query_one(PlotsPanel)
        self.runs.table.focus()
        # The registry is read right away (in a worker) and the table painted; the plots, the
        # scheduler (whose first step reconciles records with live processes) and the samplers
        # start after that first paint, so they do not compete with it.
        self.poll()
        self.set_interval(self.dash.poll_interval, self.poll)

    def _after_first_paint(self) -> None:
        self.run_worker(self.plots.mount_plots(), group="plots", exit_on_error=False)
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
            records, damage = self._read_registry_if_changed()
            known = records if records is not None else self.records
            active = [rid for rid, r in known.items() if r.get("status") in ACTIVE]
            selected = self.runs.selected
            if selected and selected in known and selected not in active:
                active.append(selected)
            for rid in list(self.marked):  # a copy: the UI thread may change the marks meanwhile
                if rid not in active and rid in known:
                    active.append(rid)
            changed = self.dash.streams.poll(active)
            # Finished runs browsed earlier stay in memory only while recently viewed.
            self.dash.streams.forget(set(active) | set(self._recently_selected))
            # Running runs' elapsed and ETA move every poll even without events: one table
            # update per poll covers both (each DataTable update repaints its visible rows).
            running = any(r.get("status") == "running" for r in known.values())
            if records is not None or changed or running or damage is not None:
                self.post_message(RegistryPolled(records, changed, damage))
        except AdvtuiError as exc:  # e.g. a damaged registry file: say so on screen
            message = str(exc)
            self._registry_stamp = None  # read again next time: it may have been repaired
            if message != self._last_error:
                self._last_error = message
                self.post_message(RegistryPolled({} if not self.loaded else None, set(), [message]))
        finally:
            self._poll_busy.release()

    def _read_registry_if_changed(self) -> tuple[dict[str, dict] | None, list[str] | None]:
        registry = self.dash.registry
        try:
            st = registry.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._registry_stamp and self.loaded:
            return None, None
        runs = registry.runs()  # the store pauses the cyclic GC, and freezes a large first listing
        self._registry_stamp = stamp
        self._last_error = ""
        return {r["id"]: r for r in runs}, list(registry.damaged)

    @on(RegistryPolled)
    def _registry_polled(self, message: RegistryPolled) -> None:
        if message.damage is not None:
            self.runs.show_damage(message.damage)
        if message.records is not None:
            self.runs.show_records(message.records)
            self._show_side()
        elif message.changed or self.records:
            self.runs.show_changed(message.changed)
        if not self.loaded:
            self.loaded = True
            self._show_side()
            self.runs.selection_changed(force=True)
            # A moment after the paint, not in the same frame: the deferred work must not
            # hold up the frame that shows the table.
            self.call_after_refresh(self.set_timer, FIRST_PAINT_GRACE, self._after_first_paint)
        elif self.selected in message.changed or message.records is not None:
            self.draw_selected()

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
            queue, queue_error = None, None
            try:
                if self.dash.run_scheduler:
                    notes.extend(services.scheduler_tick())
            except AdvtuiError as exc:  # a damaged queue file: the panel says so
                queue_error = str(exc)
            running = [r for r in self.records.values() if r.get("status") == "running"]
            system = services.sample_system(running)
            if queue_error is None:
                try:
                    queue = services.queue_state()  # after the sample: it counts the GPUs found
                except AdvtuiError as exc:
                    queue_error = str(exc)
            self.post_message(SideSampled(system, queue, notes, queue_error))
        finally:
            self._side_busy.release()

    @on(SideSampled)
    def _side_sampled(self, message: SideSampled) -> None:
        self._last_side = (message.system, message.queue)
        self._show_side()
        if message.queue_error:
            self.query_one(QueuePanel).show_error(message.queue_error)
        for note in message.notes:
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
    @on(RunsPanel.Selected)
    def _run_selected(self, message: RunsPanel.Selected) -> None:
        run_id = message.run_id
        if run_id:
            self._recently_selected.append(run_id)
        if run_id and self.dash.streams.peek(run_id) is None:
            # Not tailed yet (a finished run): read its stream in a worker, then draw.
            self.run_worker(lambda: self._load_stream(run_id), thread=True, group="load", exit_on_error=False)
        self.draw_selected()

    def _load_stream(self, run_id: str) -> None:
        self.dash.streams.get(run_id).poll()
        self.post_message(StreamLoaded(run_id))

    @on(StreamLoaded)
    def _stream_loaded(self, message: StreamLoaded) -> None:
        if message.run_id == self.selected:
            self.draw_selected()

    def draw_selected(self) -> None:
        run_id = self.selected
        record = self.records.get(run_id) if run_id else None
        stream = self.dash.streams.peek(run_id) if run_id else None
        self.plots.show(run_id, record, stream, any_runs=bool(self.records))

    # -- filter ------------------------------------------------------------------------------
    def action_filter(self) -> None:
        self.runs.open_filter()

    def action_clear_filter(self) -> None:
        self.runs.clear_filter()

    # -- marks, groups -----------------------------------------------------------------------
    def action_toggle_mark(self) -> None:
        self.runs.toggle_mark()

    @on(DataTable.RowSelected, "#runs")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_open(self) -> None:
        """Enter: a group header collapses or expands; a run opens its detail."""
        if not self.runs.toggle_group() and self.table.current_key:
            self.action_detail()

    # -- actions -----------------------------------------------------------------------------
    def action_new_run(self) -> None:
        from advtui.tui.screens.new_run import NewRunScreen

        system = self._last_side[0] if self._last_side else None
        gpus = len(system.gpus.gpus) if system is not None else 0
        self.app.push_screen(NewRunScreen(gpu_count=gpus), self._after_queue)

    def action_evaluate(self) -> None:
        from advtui.tui.screens.evaluate import EvaluateScreen

        ids = self.runs.selected_run_ids()
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
            self._reread()

    def _reread(self) -> None:
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

    def action_sweep(self) -> None:
        """The sweep of the group (or run) under the cursor: its combinations side by side."""
        from advtui.sweep import definition_path
        from advtui.tui.rows import GROUP_PREFIX
        from advtui.tui.screens.sweep import SweepScreen

        key = self.table.current_key or ""
        group = key[len(GROUP_PREFIX):] if key.startswith(GROUP_PREFIX) else (self.records.get(key) or {}).get("group")
        try:
            stored = bool(group) and definition_path(self.dash.registry.root, group).exists()
        except AdvtuiError:  # a group name no sweep could have
            stored = False
        if not stored:
            self.notify("not a sweep: `advtui sweep` queues one (its runs form a group)", severity="warning")
            return
        self.app.push_screen(SweepScreen(group))

    def action_detail(self) -> None:
        from advtui.tui.screens.detail import DetailScreen

        record = self.runs.current_run()
        if record is None:
            self.notify("no run selected", severity="warning")
            return
        self.app.push_screen(DetailScreen(record["id"]))

    def action_log(self) -> None:
        from advtui.tui.screens.log import LogScreen

        record = self.runs.current_run()
        if record is None:
            self.notify("no run selected", severity="warning")
            return
        self.app.push_screen(LogScreen(record["id"]))

    def action_kill(self) -> None:
        from advtui.tui.screens.confirm import ConfirmScreen

        chosen = self.runs.selected_run_ids()
        ids = [rid for rid in chosen if self.records.get(rid, {}).get("status") in ACTIVE]
        if not ids:
            self.notify("only running or queued runs can be killed", severity="warning")
            return
        names = ", ".join(f"{rid} ({self.records[rid].get('name')})" for rid in ids)
        if self.marked:
            # Marks win over the cursor: say so, so the run under the cursor is not assumed.
            skipped = len(chosen) - len(ids)
            question = f"Kill the {len(ids)} marked run{'s' if len(ids) > 1 else ''}: {names}?"
            detail = (f"The marks decide, not the cursor ({skipped} marked run{'s' if skipped > 1 else ''} "
                      "not running or queued left alone). " if skipped else "The marks decide, not the cursor. ")
        else:
            question, detail = f"Kill {names}?", ""

        def done(confirmed: bool | None) -> None:
            if confirmed:
                for rid in ids:
                    self._stopping[rid] = threading.Event()
                self.notify(f"stopping {', '.join(ids)}: SIGTERM, the run saves a checkpoint…", timeout=4)
                self.run_worker(lambda: self._kill_work(ids), thread=True, group="action", exit_on_error=False)

        self.app.push_screen(ConfirmScreen(question, detail + "It checkpoints and ends as killed; r resumes it."), done)

    def _kill_work(self, ids: list[str]) -> None:
        for rid in ids:
            try:
                message, severity = self.dash.services.kill(rid)
            finally:
                self._stopping.pop(rid, threading.Event()).set()
            self.post_message(ActionDone(message, severity))

    def action_resume(self) -> None:
        ids = [rid for rid in self.runs.selected_run_ids()
               if self.records.get(rid, {}).get("status") in ("killed", "failed")]
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
            self.post_message(ActionDone(message, severity))

    @on(ActionDone)
    def _action_done(self, message: ActionDone) -> None:
        self.notify(message.message, severity=message.severity, timeout=5)  # type: ignore[arg-type]
        if message.reread:
            self._reread()
