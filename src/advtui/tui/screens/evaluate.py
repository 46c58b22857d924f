"""``e``: queue an evaluation of the selected (or marked) runs.

A checklist of attacks: the paper's white-box columns, the learned optimizer of every rnn run
(and l2lda generator) as an attacker, and black-box transfer from a surrogate run chosen in a
list. The run's default attacks (``advtui eval``'s) start checked. Specs are parsed by
``advtui.core.attack_specs`` and the jobs queued by ``advtui.jobs.queue.queue_eval``; the
dashboard's scheduler runs them and the results appear in the detail and compare screens.
"""

from __future__ import annotations

from typing import Any

from rich.segment import Segment
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.strip import Strip
from textual.widgets import Button, Input, Label, Select, SelectionList, Static
from textual.widgets._toggle_button import ToggleButton  # the box glyph SelectionList draws
from textual.widgets.option_list import OptionDoesNotExist
from textual.widgets.selection_list import Selection, SelectionType

from advtui.core.attack_specs import EVALUATION_CHECKLIST
from advtui.core.errors import AdvtuiError
from advtui.options import check_eval_options

WHITE_BOX = EVALUATION_CHECKLIST  # the paper's white-box attacks, then AutoAttack (core.attack_specs)
NO_SURROGATE = "none"


class Checklist(SelectionList[SelectionType]):
    """A SelectionList whose boxes read ``[x]`` and ``[ ]``: checked and unchecked differ in
    shape, not only in colour (a monochrome terminal, a colour-blind reader)."""

    def render_line(self, y: int) -> Strip:
        line = super().render_line(y)
        segments = list(line)
        _, scroll_y = self.scroll_offset
        try:
            selection = self.get_option_at_index(scroll_y + y)
        except OptionDoesNotExist:
            return line
        if len(segments) < 3 or segments[1].text != ToggleButton.BUTTON_INNER:
            return line  # not the box SelectionList draws: leave the line as it is
        mark = "x" if selection.value in self._selected else " "
        segments[0:3] = [Segment("[", segments[0].style), Segment(mark, segments[1].style),
                         Segment("]", segments[2].style)]
        return Strip(segments, line.cell_length)


class EvaluateScreen(ModalScreen[str | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Queue"),
    ]

    def __init__(self, targets: list[dict], all_runs: list[dict]) -> None:
        super().__init__()
        self.targets = targets
        target_ids = {t["id"] for t in targets}
        # A transfer attack crafts its examples at the target's eps, so only surrogates trained
        # at that eps are offered (the evaluation refuses others).
        eps = {(t.get("config") or {}).get("eps") for t in targets}
        self.surrogates = [r for r in all_runs if r["id"] not in target_ids and (r.get("checkpoints") or {}).get("final")
                           and (r.get("config") or {}).get("eps") in eps]
        self.all_runs = all_runs

    def compose(self) -> ComposeResult:
        names = ", ".join(f"{t['id']} ({t.get('name')})" for t in self.targets)
        with Vertical(id="dialog", classes="form"):
            yield Static(f"Evaluate {names}", classes="dialog-title")
            yield Label("attacks (space toggles; the run's default attacks are checked)", classes="muted")
            yield Checklist[str](id="attacks")
            with Horizontal(classes="field-row"):
                yield Label("transfer from", classes="field-label")
                yield Select([("none", NO_SURROGATE)] + [(f"{r['id']} {r.get('name', '')} ({r.get('defense')}, eps {(r.get('config') or {}).get('eps')})", r["id"])
                                                         for r in self.surrogates],
                             value=NO_SURROGATE, allow_blank=False, id="surrogate", compact=True)
            with Horizontal(classes="field-row"):
                yield Label("more attacks", classes="field-label")
                yield Input(placeholder="specs, e.g. pgd-40x5, rnn-40:RUN, transfer-pgd-50:RUN", id="extra", compact=True)
            with Horizontal(classes="field-row"):
                yield Label("test examples", classes="field-label")
                yield Input(placeholder="all of the run's test set", id="limit", compact=True)
            with Horizontal(classes="field-row"):
                yield Label("eps", classes="field-label")
                yield Input(placeholder="the run's eps", id="eps", compact=True)
            yield Label("", id="eval-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Cancel (esc)", id="cancel")
                yield Button("Queue (ctrl+s)", variant="primary", id="submit", disabled=True)

    def on_mount(self) -> None:
        attacks = self.query_one("#attacks", SelectionList)
        attacks.border_title = "loading attacks…"
        attacks.focus()
        self.run_worker(self._load_choices, thread=True, group="choices", exit_on_error=False)

    def _load_choices(self) -> None:
        services = self.app.services  # type: ignore[attr-defined]
        try:
            defaults: list[str] = []
            for target in self.targets:
                defaults += [d for d in services.default_attacks(target) if d not in defaults]
            learned = services.learned_attackers(self.all_runs)
        except AdvtuiError as exc:
            self.app.call_from_thread(self._error, str(exc))
            return
        self.app.call_from_thread(self._show_choices, defaults, learned)

    def _show_choices(self, defaults: list[str], learned: list[tuple[str, dict]]) -> None:
        attacks = self.query_one("#attacks", SelectionList)
        options: list[Selection] = []
        seen = set()
        own = {t["id"] for t in self.targets}
        for spec, label in WHITE_BOX:
            options.append(Selection(label, spec, spec in defaults))
            seen.add(spec)
        for family, run in learned:
            for steps in (10, 40):
                spec = f"{family}-{steps}:{run['id']}"
                whose = "own" if run["id"] in own else f"{run['id']} {run.get('name', '')}"
                options.append(Selection(f"{family}-{steps} · learned optimizer of {whose}", spec, spec in defaults))
                seen.add(spec)
        for spec in defaults:
            if spec not in seen:
                options.append(Selection(spec, spec, True))
        attacks.clear_options()
        attacks.add_options(options)
        attacks.border_title = f"{len(options)} attacks"
        self.query_one("#submit", Button).disabled = False

    def _error(self, message: str) -> None:
        self.query_one("#eval-error", Label).update(message)

    def chosen(self) -> tuple[list[str], dict[str, Any]]:
        """The attack list and eval options from the form; ValueError with a message if bad."""
        specs = list(self.query_one("#attacks", SelectionList).selected)
        surrogate = self.query_one("#surrogate", Select).value
        if surrogate not in (NO_SURROGATE, Select.BLANK, None):
            specs.append(f"transfer:{surrogate}")
        extra = self.query_one("#extra", Input).value
        specs += [s.strip() for s in extra.replace(" ", ",").split(",") if s.strip()]
        if not specs:
            raise ValueError("check at least one attack")
        options: dict[str, Any] = {}
        limit = self.query_one("#limit", Input).value.strip()
        if limit:
            if not limit.isdigit() or int(limit) < 1:
                raise ValueError(f"test examples must be a positive whole number, got {limit!r}")
            options["limit"] = int(limit)
        eps = self.query_one("#eps", Input).value.strip()
        if eps:
            try:
                options["eps"] = float(eps)
            except ValueError:
                raise ValueError(f"eps must be a number, got {eps!r}") from None
        try:  # the checks of `advtui eval` and `queue eval` (NaN, a radius outside [0, 1]...)
            check_eval_options(**options)
        except AdvtuiError as exc:
            raise ValueError(str(exc)) from None
        return specs, options

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#submit")
    def action_submit(self) -> None:
        if self.query_one("#submit", Button).disabled:
            return
        try:
            specs, options = self.chosen()
        except ValueError as exc:
            self._error(str(exc))
            self.app.bell()
            return
        self._error("queueing…")
        self.query_one("#submit", Button).disabled = True
        self.run_worker(lambda: self._queue(specs, options), thread=True, group="queue", exit_on_error=False)

    def _queue(self, specs: list[str], options: dict[str, Any]) -> None:
        services = self.app.services  # type: ignore[attr-defined]
        try:
            canonical = services.check_attacks(specs)
            jobs = services.queue_evaluation([t["id"] for t in self.targets], canonical, options)
        except AdvtuiError as exc:
            self.app.call_from_thread(self._failed, str(exc))
            return
        waits = [j for j in jobs if j.get("depends_on")]
        after = f" ({len(waits)} after training)" if waits else ""
        self.app.call_from_thread(
            self.dismiss, f"queued {len(jobs)} eval job{'s' if len(jobs) > 1 else ''}{after}: {', '.join(canonical)}")

    def _failed(self, message: str) -> None:
        self._error(message)
        self.query_one("#submit", Button).disabled = False
