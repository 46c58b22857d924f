"""The main screen: the runs panel, the plots panel of the selected run, GPU and queue panels.

Everything that touches the disk (registry reads, events tails, GPU sampling, the scheduler)
runs in thread workers, which post what they found as messages; the handlers run on the UI
thread and redraw only the changed cells or plots. The event loop never waits on the disk.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Header
from textual.worker import Worker, WorkerState

from advtui.core.errors import AdvtuiError
from advtui.core.status import ACTIVE_RUNS, can_resume
from advtui.tui.failures import one_line, runs_one_by_one, vet_records
from advtui.tui.rows import COLUMNS, NARROW_COLUMNS
from advtui.tui.widgets.footer import BindingsFooter
from advtui.tui.widgets.plots_panel import PlotsPanel
from advtui.tui.widgets.runs_panel import RunsPanel
from advtui.tui.widgets.runs_table import RunsTable
from advtui.tui.widgets.system_panel import QueuePanel, SystemPanel

if TYPE_CHECKING:
    from advtui.tui.app import AdvtuiApp

ACTIVE = ACTIVE_RUNS
# Streams of finished runs kept in memory after they were viewed (re-reading one is cheap).
RECENT_STREAMS = 16
# What each worker group does, for the line that says it failed.
WORKER_WHAT = {"plots": "drawing the plots", "load": "reading the run's events", "action": "the action",
               "poll": "reading the runs", "side": "sampling and scheduling"}
# Below either size the layout is the narrow one (see MainScreen._fit_layout): at 80x24, the
# default terminal, the wide one cut off the footer, the table and the charts.
NARROW_WIDTH, NARROW_HEIGHT = 110, 32
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
    """A side tick's findings; each ``*_error`` is the one line of a part that failed (None: it
    worked), shown in its panel in place of the data."""

    def __init__(self, system: Any, queue: Any, notes: list[str], queue_error: str | None,
                 system_error: str | None = None, scheduler_error: str | None = None) -> None:
        super().__init__()
        self.system, self.queue, self.notes, self.queue_error = system, queue, notes, queue_error
        self.system_error, self.scheduler_error = system_error, scheduler_error


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
        Binding("v", "next_chart", "Chart"),  # a narrow terminal's one chart: the next one
        Binding("q", "app.quit", "Quit"),
    ]
    # When the footer cannot show every key (an 80-column terminal), these come first.
    FOOTER_FIRST = ("app.quit", "filter", "next_chart", "new_run", "detail", "kill", "toggle_mark", "resume",
                    "evaluate", "compare", "log")

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
        # The one lines of the side tick's parts that failed: sampling, the queue, scheduling.
        self._side_problems: tuple[str | None, str | None, str | None] = (None, None, None)

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
        self._fit_layout(self.app.size.width, self.app.size.height)
        self.runs.table.focus()
        # The registry is read right away (in a worker) and the table painted; the plots, the
        # scheduler (whose first step reconciles records with live processes) and the samplers
        # start after that first paint, so they do not compete with it.
        self.poll()
        self.set_interval(self.dash.poll_interval, self.poll)

    def on_resize(self, event: events.Resize) -> None:
        self._fit_layout(event.size.width, event.size.height)

    def _fit_layout(self, width: int, height: int) -> None:
        """Below NARROW_WIDTH x NARROW_HEIGHT the panels stack (the plots above the GPU and
        queue panels) and one chart shows at a time; below NARROW_WIDTH the table also keeps
        only the columns that fit."""
        narrow = width < NARROW_WIDTH or height < NARROW_HEIGHT
        if narrow != self.has_class("narrow"):
            self.set_class(narrow, "narrow")
            self.plots.set_narrow(narrow)
            self.query_one(SystemPanel).compact = narrow
            self.query_one(QueuePanel).compact = narrow
            self._show_side()
            self.refresh_bindings()  # v (next chart) shows only then
        self.table.use_columns(NARROW_COLUMNS if width < NARROW_WIDTH else COLUMNS)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "next_chart":
            return self.has_class("narrow")  # hidden (and inert) while every chart shows
        return True

    def action_next_chart(self) -> None:
        self.plots.next_chart()
        self.draw_selected()

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
        except Exception as exc:  # noqa: BLE001 - a damaged registry file, or worse: say so on screen
            message = one_line(exc)
            if not isinstance(exc, AdvtuiError):
                message = f"reading the runs failed: {message} (tried again every {self.dash.poll_interval:g}s)"
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
        try:
            runs = registry.runs()  # the store pauses the cyclic GC, and freezes a large first listing
            damage = list(registry.damaged)
        except AdvtuiError:
            raise  # the store's own one line (a damaged registry.json): shown as it is
        except Exception as exc:  # noqa: BLE001 - one odd record must not hide every run
            runs, damage = runs_one_by_one(registry)
            stamp = None  # read again next poll: the record may be repaired by then
            failure = f"listing the runs failed ({one_line(exc)}); they were read one by one"
        else:
            failure = None
        records, problems = vet_records(runs)
        damage += problems
        if failure and not damage:  # no record to blame: the listing's own error is the news
            damage.append(failure)
        if damage:
            stamp = None  # a record left out may be repaired by hand, which registry.json does not see
        self._registry_stamp = stamp
        self._last_error = ""
        return records, damage

    @on(RegistryPolled)
    def _registry_polled(self, message: RegistryPolled) -> None:
        try:
            self._show_polled(message)
        except Exception as exc:  # noqa: BLE001 - a record the checks let through: a line, not a crash
            self.runs.show_damage([f"drawing the runs failed: {one_line(exc)}"])

    def _show_polled(self, message: RegistryPolled) -> None:
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
        """Each part fails on its own: its panel shows the one line, the others still draw, and
        the next tick tries again (a scheduler step that raised is retried, not abandoned)."""
        try:
            self.post_message(self._side_sample())
        finally:
            self._side_busy.release()

    def _side_sample(self) -> SideSampled:
        notes: list[str] = []
        system = queue = None
        system_error = queue_error = scheduler_error = None
        every = f"tried again every {self.dash.side_interval:g}s"
        try:
            services = self.dash.services
        except Exception as exc:  # noqa: BLE001 - e.g. the job runtime failed to load
            message = f"the job runtime could not start: {one_line(exc)} ({every})"
            return SideSampled(None, None, notes, message, message)
        try:
            if self.dash.run_scheduler:
                notes.extend(services.scheduler_tick())
        except AdvtuiError as exc:  # a damaged queue file: the panel says so
            queue_error = one_line(exc)
        except Exception as exc:  # noqa: BLE001 - a job or record the scheduler cannot handle
            scheduler_error = f"scheduling failed: {one_line(exc)}; no job starts meanwhile ({every})"
        try:
            running = [r for r in self.records.values() if r.get("status") == "running"]
            system = services.sample_system(running)
        except Exception as exc:  # noqa: BLE001
            system_error = f"sampling failed: {one_line(exc)} ({every})"
        if queue_error is None:
            try:
                queue = services.queue_state()  # after the sample: it counts the GPUs found
            except Exception as exc:  # noqa: BLE001 - a damaged queue file, or a job of the wrong shape
                queue_error = one_line(exc)
        return SideSampled(system, queue, notes, queue_error, system_error, scheduler_error)

    @on(SideSampled)
    def _side_sampled(self, message: SideSampled) -> None:
        previous = self._last_side or (None, None)
        # A part that failed shows its error line, not its previous (stale) sample.
        self._last_side = (message.system if message.system_error is None else previous[0],
                           message.queue if message.queue_error is None else previous[1])
        self._side_problems = (message.system_error, message.queue_error, message.scheduler_error)
        self._show_side()
        for note in message.notes:
            self.notify(note, timeout=4)

    def _show_side(self) -> None:
        """Draw the panels from the latest sample (again when run names arrive later)."""
        if self._last_side is None:
            return
        system, queue = self._last_side
        system_error, queue_error, scheduler_error = self._side_problems
        if system_error:
            self.query_one(SystemPanel).show_error(system_error)
        else:
            self.query_one(SystemPanel).show(system, self.records)
        if queue_error:
            self.query_one(QueuePanel).show_error(queue_error)
        else:
            self.query_one(QueuePanel).show(queue, self.records, scheduler_error)
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

        ids, detail = self._kill_targets()
        if not ids:
            self.notify("only running or queued runs can be killed", severity="warning")
            return
        names = ", ".join(f"{rid} ({self.records[rid].get('name')})" for rid in ids)
        from_marks = bool(self.marked) and set(ids) <= self.marked
        question = (f"Kill the {len(ids)} marked run{'s' if len(ids) > 1 else ''}: {names}?" if from_marks
                    else f"Kill {names}?")

        def done(confirmed: bool | None) -> None:
            if confirmed:
                for rid in ids:
                    self._stopping[rid] = threading.Event()
                self.notify(f"stopping {', '.join(ids)}: SIGTERM, the run saves a checkpoint…", timeout=4)
                self.run_worker(lambda: self._kill_work(ids), thread=True, group="action", exit_on_error=False)

        self.app.push_screen(ConfirmScreen(question, detail + "It checkpoints and ends as killed; r resumes it."), done)

    def _killable(self, ids: list[str]) -> list[str]:
        return [rid for rid in ids if self.records.get(rid, {}).get("status") in ACTIVE]

    def _kill_targets(self) -> tuple[list[str], str]:
        """The runs ``k`` stops, and what the question adds about the marks: the marked runs
        that can be stopped; when none of them can (finished runs left marked for a compare),
        the run under the cursor, as ``space`` users expect."""
        if self.marked:
            chosen = self.runs.selected_run_ids()
            ids = self._killable(chosen)
            if ids:
                # Marks win over the cursor: say so, so the run under the cursor is not assumed.
                skipped = len(chosen) - len(ids)
                if not skipped:
                    return ids, "The marks decide, not the cursor. "
                return ids, (f"The marks decide, not the cursor ({skipped} marked run{'s' if skipped > 1 else ''} "
                             "not running or queued left alone). ")
        ids = self._killable(self.runs.cursor_run_ids())
        if ids and self.marked:
            return ids, "No marked run is running or queued: the run under the cursor is meant. "
        return ids, ""

    def _kill_work(self, ids: list[str]) -> None:
        for rid in ids:
            try:
                message, severity = self.dash.services.kill(rid)
            finally:
                self._stopping.pop(rid, threading.Event()).set()
            self.post_message(ActionDone(message, severity))

    def action_resume(self) -> None:
        ids = [rid for rid in self.runs.selected_run_ids()
               if can_resume(self.records.get(rid, {}).get("status"))]
        if not ids:
            self.notify("a finished run is not resumed from here: `advtui resume RUN --epochs N` trains it further",
                        severity="warning")
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

    @on(Worker.StateChanged)
    def _worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A worker that raised (the polls catch their own errors; this is for the rest: kill,
        resume, loading a stream, mounting the plots) says so instead of ending silently."""
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            what = WORKER_WHAT.get(event.worker.group, event.worker.group)
            self.notify(f"{what} failed: {one_line(event.worker.error)}", severity="error", timeout=8)

    @on(ActionDone)
    def _action_done(self, message: ActionDone) -> None:
        self.notify(message.message, severity=message.severity, timeout=5)  # type: ignore[arg-type]
        if message.reread:
            self._reread()
