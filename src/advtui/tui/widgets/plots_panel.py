"""The plots panel: a caption line for the selected run and its three live plots.

The plots (textual-plotext) are mounted only after the first paint: importing and laying out
plotext is not needed to show the runs table, which is what a user waits for.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from advtui.core.defenses import DEFENSE_SPECS
from advtui.core.format import short_device, status_style
from advtui.core.events import EVENTS_FILE, damaged_note
from advtui.core.health import ERROR, record_findings, worst_level
from advtui.tui.live import RunStream
from advtui.tui.rows import shown_status
from advtui.tui.widgets.system_panel import text_key


def inner_note(record: dict | None) -> str:
    """Why a run has no inner-loss curve to draw, when it never will."""
    spec = DEFENSE_SPECS.get((record or {}).get("defense") or "")
    if spec is not None and spec.maximizer is None:
        return f"{record.get('defense')}: no inner maximization"  # type: ignore[union-attr]
    return ""


def caption(record: dict, stream: RunStream | None) -> Text:
    status = shown_status(record)
    text = Text(" ")
    text.append(record["id"], style="bold")
    text.append(f"  {record.get('name', '-')}  ")
    text.append(status, style=status_style(status))
    cfg = record.get("config") or {}
    inner = "no inner max" if inner_note(record) else f"T={cfg.get('inner_steps', '-')}"
    text.append(f"  {record.get('defense')} eps {cfg.get('eps', '-')} {inner}  {short_device(record.get('device'))}",
                style="dim")
    findings = record_findings(record)
    if findings:  # the row's marker, spelt out for the selected run
        text.append(f"  ! {len(findings)} health finding{'s' if len(findings) > 1 else ''} (d: details)",
                    style="bold red" if worst_level(findings) == ERROR else "bold yellow")
    if stream is not None and stream.damaged_lines:
        text.append(f"  {damaged_note(stream.damaged_lines)} in {EVENTS_FILE}", style="bold yellow")
    step = stream.last_step if stream else None
    if step and status == "running":
        text.append(f"  epoch {step['epoch'] + 1}/{record.get('epochs')} batch {step['batch']}/{step['batches']}"
                    f"  {step.get('images_per_s', 0):,.0f} img/s  lr {step.get('lr', 0):.3g}")
    return text


# The charts in the order ``v`` cycles through them on a narrow terminal.
CHART_NAMES = ("inner loss", "loss over training", "accuracy per epoch")


class PlotsPanel(Vertical):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._caption_key: tuple | None = None
        self._shown: tuple[str | None, dict | None, RunStream | None] = (None, None, None)
        self.plots: tuple = ()  # mounted by ``mount_plots``
        # On a narrow terminal one chart takes the whole panel (three side by side would be
        # ten columns each, too narrow for their axes and legends); ``chart`` is its index.
        self.narrow = False
        self.chart = 0

    def set_narrow(self, narrow: bool) -> None:
        self.narrow = narrow
        self._show_charts()

    def next_chart(self) -> str:
        """The next chart on a narrow terminal; returns its name."""
        self.chart = (self.chart + 1) % len(CHART_NAMES)
        self._show_charts()
        return CHART_NAMES[self.chart]

    def _show_charts(self) -> None:
        if not self.plots:
            return
        inner, loss, accuracy = self.plots
        column = self.query_one("#plot-col", Vertical)
        if not self.narrow:
            inner.display = column.display = loss.display = accuracy.display = True
            return
        chosen = self.plots[self.chart]
        inner.display = chosen is inner
        column.display = chosen is not inner
        loss.display, accuracy.display = chosen is loss, chosen is accuracy

    def compose(self) -> ComposeResult:
        yield Static(" no run selected", id="caption")
        yield Horizontal(id="plot-row")

    async def mount_plots(self) -> None:
        """Add the plots (after the first paint) and draw the selected run in them."""
        if self.plots:
            return
        from advtui.tui.widgets.plots import AccuracyPlot, InnerLossPlot, TrainingLossPlot

        inner, loss, accuracy = InnerLossPlot(id="inner-plot"), TrainingLossPlot(id="loss-plot"), AccuracyPlot(id="acc-plot")
        row = self.query_one("#plot-row", Horizontal)
        await row.mount(inner, Vertical(loss, accuracy, id="plot-col"))
        self.plots = (inner, loss, accuracy)
        self._show_charts()
        self.show(*self._shown)

    def show(self, run_id: str | None, record: dict | None, stream: RunStream | None, any_runs: bool = True) -> None:
        self._shown = (run_id, record, stream)
        text = (Text(" no run selected" if any_runs else " no runs yet: press n to start one")
                if record is None else caption(record, stream))
        if text_key(text) != self._caption_key:  # an update re-lays out the screen: only on change
            self._caption_key = text_key(text)
            self.query_one("#caption", Static).update(text, layout=False)
        note = inner_note(record)
        for plot in self.plots:
            plot.show(run_id, stream, note)
