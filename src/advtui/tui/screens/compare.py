"""``c``: the marked runs side by side.

The table is ``advtui.compare.build_comparison`` (the same model ``advtui compare`` prints): the
paper's Table 3 columns (attacks, min, worst-case) with the best per column highlighted, then
Table 2's cost columns (inner maximizer parameters, time per epoch). When several marked runs
share a defense (seeds), a second table gives per defense the lowest over its runs with mean ±
std. Below, their inner-loss trajectories and training curves are overlaid with a legend.

The choices of ``advtui compare``: ``f`` adds the config fields that differ (--diff), ``a`` cycles
the per-epoch metrics at the best epoch, the final one, or none (--at), and ``b`` makes the
highlighted run the baseline every other row shows its deltas to (again: no baseline).
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from advtui.compare import format_cell
from advtui.core.epochs import epoch_accuracy
from advtui.tui.widgets.plots import OverlayPlot


class CompareScreen(Screen):
    BINDINGS = [
        Binding("escape,q,c", "app.pop_screen", "Back"),
        Binding("r", "reload", "Reload"),
        Binding("f", "toggle_diff", "Config diff"),
        Binding("a", "cycle_at", "At epoch"),
        Binding("b", "baseline", "Baseline"),
    ]
    AT_CYCLE = (None, "best", "final")

    def __init__(self, run_ids: list[str]) -> None:
        super().__init__()
        self.run_ids = run_ids
        self.comparison = None
        self.by_defense = None
        self.loaded = False
        self.options: dict = {"diff": False, "at": None, "baseline": None}

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="compare"):
            yield DataTable(id="compare-runs", cursor_type="row", zebra_stripes=True)
            yield DataTable(id="compare-defenses", cursor_type="row", zebra_stripes=True)
            yield Static(id="compare-notes")
            with Horizontal(id="compare-plots"):
                yield OverlayPlot(id="compare-inner")
                yield OverlayPlot(id="compare-loss")
                yield OverlayPlot(id="compare-acc")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"compare {len(self.run_ids)} runs"
        self.query_one("#compare-runs", DataTable).border_title = "loading…"
        self.query_one("#compare-defenses", DataTable).display = False
        self.action_reload()

    def action_toggle_diff(self) -> None:
        self.options["diff"] = not self.options["diff"]
        self.action_reload()

    def action_cycle_at(self) -> None:
        cycle = self.AT_CYCLE
        self.options["at"] = cycle[(cycle.index(self.options["at"]) + 1) % len(cycle)]
        self.action_reload()

    def action_baseline(self) -> None:
        table = self.query_one("#compare-runs", DataTable)
        if not table.row_count:
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        self.options["baseline"] = None if self.options["baseline"] == key else key
        self.action_reload()

    def action_reload(self) -> None:
        self.run_worker(self._load, thread=True, group="compare", exclusive=True, exit_on_error=False)

    def _load(self) -> None:
        app = self.app
        services = app.services  # type: ignore[attr-defined]
        try:
            comparison = services.comparison(self.run_ids, by="run", **self.options)
            records = [app.registry.get_run(rid) for rid in self.run_ids]  # type: ignore[attr-defined]
            defenses = [r.get("defense") for r in records if r]
            by_defense = services.comparison(self.run_ids, by="defense") if len(defenses) > len(set(defenses)) else None
        except Exception as exc:  # noqa: BLE001 - shown to the user, the screen stays usable
            app.call_from_thread(self._error, f"{type(exc).__name__}: {exc}")
            return
        streams = {}
        for rid in self.run_ids:
            stream = app.streams.get(rid)  # type: ignore[attr-defined]
            stream.poll()
            streams[rid] = stream
        app.call_from_thread(self._show, comparison, by_defense, {r["id"]: r for r in records if r}, streams)

    def _error(self, message: str) -> None:
        self.query_one("#compare-notes", Static).update(Text(message, style="red"))
        self.loaded = True

    def _fill(self, table: DataTable, comparison, lead: list[str]) -> None:
        table.clear(columns=True)
        for label in lead:
            table.add_column(label, key=label)
        for column in comparison.columns:
            table.add_column(column.label, key=column.key)
        for row in comparison.rows:
            first = [row.label, row.defense or "-"] if comparison.by == "run" else [row.label, str(len(row.run_ids))]
            cells: list = list(first)
            for column in comparison.columns:
                cell = row.cells.get(column.key)
                text = format_cell(cell, column, comparison.by) if cell is not None else "-"
                style = "bold green" if cell is not None and cell.best else ("yellow" if cell is not None and cell.flags else "")
                cells.append(Text(text, style=style, justify="right"))
            table.add_row(*cells, key=row.key)

    def _show(self, comparison, by_defense, records: dict[str, dict], streams: dict) -> None:
        self.comparison, self.by_defense = comparison, by_defense
        runs_table = self.query_one("#compare-runs", DataTable)
        self._fill(runs_table, comparison, ["run", "defense"])
        choices = [f"at {self.options['at']}" if self.options["at"] else "",
                   "config diff" if self.options["diff"] else "",
                   f"baseline {self.options['baseline']}" if self.options["baseline"] else ""]
        runs_table.border_title = ("robust accuracy % per run, [95% interval] n · best (paired test) in green"
                                   + "".join(f" · {c}" for c in choices if c))
        defenses = self.query_one("#compare-defenses", DataTable)
        if by_defense is not None:
            self._fill(defenses, by_defense, ["defense", "runs"])
            defenses.border_title = "per defense: lowest over its runs (mean ± std)"
            defenses.display = True
        self.query_one("#compare-notes", Static).update(Text("\n".join(comparison.notes), style="dim"))
        names = {rid: f"{rid} {records.get(rid, {}).get('name', '')}" for rid in self.run_ids}
        inner, loss, acc = [], [], []
        for rid in self.run_ids:
            stream = streams[rid]
            if stream.recent_inner:
                latest = stream.recent_inner[-1]["losses"]
                inner.append((names[rid], list(range(len(latest))), latest))
            xs, ys = stream.outer_loss.downsampled(400)
            loss.append((names[rid], xs, ys))
            epochs = sorted(stream.epochs.items())
            acc.append((names[rid], [e for e, _ in epochs],
                        [epoch_accuracy(m).robust or 0.0 for _, m in epochs]))
        self.query_one("#compare-inner", OverlayPlot).show_series("latest inner-loss trajectory", "inner step t", inner)
        self.query_one("#compare-loss", OverlayPlot).show_series("outer loss over training", "step", loss)
        self.query_one("#compare-acc", OverlayPlot).show_series("robust (pgd) accuracy % per epoch", "epoch", acc)
        self.loaded = True
