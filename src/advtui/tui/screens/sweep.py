"""``w`` on a sweep's group row: its combinations, with only the swept parameters as columns.

One row per combination: the swept values, its runs' statuses, then each metric as the mean
over its seeds (``advtui.sweep_results``, the model ``advtui compare --sweep`` prints). The
leader is green only where it is significantly better than every other combination.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from advtui.sweep import value_text, flag, load_stored
from advtui.sweep_results import compare_sweep, format_stat, status_text


class SweepScreen(Screen):
    BINDINGS = [
        Binding("escape,q,w", "app.pop_screen", "Back"),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.sweep_name = name
        self.comparison = None
        self.loaded = False

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="sweep"):
            yield DataTable(id="sweep-combinations", cursor_type="row", zebra_stripes=True)
            yield Static(id="sweep-notes")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"sweep {self.sweep_name}"
        self.query_one("#sweep-combinations", DataTable).border_title = "loading…"
        self.action_reload()

    def action_reload(self) -> None:
        self.run_worker(self._load, thread=True, group="sweep", exclusive=True, exit_on_error=False)

    def _load(self) -> None:
        app = self.app
        registry = app.registry  # type: ignore[attr-defined]
        try:
            comparison = compare_sweep(registry, load_stored(registry.root, self.sweep_name))
        except Exception as exc:  # noqa: BLE001 - shown to the user, the screen stays usable
            app.call_from_thread(self._error, str(exc))
            return
        app.call_from_thread(self._show, comparison)

    def _error(self, message: str) -> None:
        self.query_one("#sweep-notes", Static).update(Text(message, style="red"))
        self.loaded = True

    def _show(self, comparison) -> None:
        self.comparison = comparison
        table = self.query_one("#sweep-combinations", DataTable)
        table.clear(columns=True)
        swept = list(comparison.spec.grid)
        for key in ("comb", *(flag(k) for k in swept), "runs", *comparison.metrics):
            table.add_column(key, key=key)
        for row in comparison.rows:
            style = "bold green" if row.best else ""
            cells = [Text(f"c{row.combination.index}" + (" *" if row.best else ""), style=style)]
            cells += [Text(value_text(row.combination.values[k]), style=style) for k in swept]
            cells.append(Text(status_text(row)))
            cells += [Text(format_stat(row.cells.get(m)), style=style, justify="right") for m in comparison.metrics]
            table.add_row(*cells, key=f"c{row.combination.index}")
        table.border_title = f"{len(comparison.rows)} combinations · sorted by {comparison.sort} · mean over seeds"
        self.query_one("#sweep-notes", Static).update(Text("\n".join(comparison.notes), style="dim"))
        self.loaded = True
