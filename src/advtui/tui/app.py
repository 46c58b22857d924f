"""The advtui dashboard (Textual): ``advtui`` with no arguments opens it.

The app owns what outlives a screen: the registry, the live streams of runs, and the
``Services`` that talk to the job runtime and the evaluation suite. Screens live in
``advtui.tui.screens``, widgets in ``advtui.tui.widgets``, styles in ``app.tcss``.
Quitting leaves launched runs running: they are separate processes, and the next start
reconnects to them through the registry.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from advtui.core.paths import runs_dir as resolve_runs_dir
from advtui.store.registry import Registry
from advtui.tui.live import StreamSet
from advtui.tui.screens.main import MainScreen

if TYPE_CHECKING:
    from advtui.jobs.launcher import Executor
    from advtui.tui.services import Services


class AdvtuiApp(App):
    """Runs table, live plots, GPU and queue panels, and the actions on runs."""

    CSS_PATH = "app.tcss"
    TITLE = "advtui"
    BINDINGS = [Binding("ctrl+c", "quit", "Quit", show=False, priority=True)]

    def __init__(
        self,
        runs_root: Path | str | None = None,
        *,
        poll_interval: float = 1.0,
        side_interval: float = 2.0,
        run_scheduler: bool = True,
        services: Services | None = None,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.runs_root = resolve_runs_dir(runs_root)
        self.runs_root.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(self.runs_root)
        self.streams = StreamSet(self.runs_root)
        self._services = services
        self._executor = executor  # where queued jobs run (jobs.launcher.Executor); None: here
        self._services_lock = threading.Lock()  # workers of several threads may ask first
        self.poll_interval = poll_interval
        self.side_interval = side_interval
        self.run_scheduler = run_scheduler
        self.now = clock
        self.sub_title = str(self.runs_root)

    @property
    def services(self) -> "Services":
        """Made on first use (after the first paint): the job runtime it imports (scheduler,
        queue, samplers) is not needed to show the runs table."""
        with self._services_lock:
            if self._services is None:
                from advtui.tui.services import Services

                self._services = Services(self.registry, executor=self._executor)
            return self._services

    def get_default_screen(self) -> Screen:
        return MainScreen()

    def on_unmount(self) -> None:
        # Hand the scheduler lock over (to a worker or the next dashboard); runs keep going.
        if self._services is not None:
            self._services.close()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if isinstance(screen, MainScreen):
            for action, title, help_text in (
                ("new_run", "New run", "Queue training run(s) from a form (n)"),
                ("evaluate", "Evaluate", "Queue an evaluation of the selected or marked runs (e)"),
                ("compare", "Compare marked runs", "Side by side: attacks, min, worst-case (c)"),
                ("sweep", "Open sweep", "The combinations of the sweep under the cursor, seeds aggregated (w)"),
                ("detail", "Run detail", "Config, checkpoints, eval results, sanity flags (d)"),
                ("log", "Run log", "The run's log, following as it grows (l)"),
                ("kill", "Kill run", "Stop the selected or marked runs, with a checkpoint (k)"),
                ("resume", "Resume run", "Re-queue a killed or failed run from its checkpoint (r)"),
                ("filter", "Filter runs", "Words or field:value, e.g. status:running (/)"),
            ):
                yield SystemCommand(title, help_text, getattr(screen, f"action_{action}"))


def run_dashboard(runs_dir: Path | str | None = None, executor: Executor | None = None) -> None:
    """Open the dashboard on ``runs_dir`` (default: $ADVTUI_RUNS or ./runs); queued jobs run
    through ``executor`` (a ``jobs.launcher.Executor``: a Ray cluster), else as processes here."""
    AdvtuiApp(runs_dir, executor=executor).run()
