"""``n``: a form that queues training runs (one per seed) with validation messages in place.

Every field is checked as it changes: numbers are parsed here, and the whole configuration goes
through ``advtui.core.config.build_config`` (the same validation as ``advtui run``), whose message is
shown under the field it names. Queueing itself is ``advtui.jobs.queue.queue_train`` (through
``Services``); the scheduler inside the dashboard then starts the job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from advtui.core.config import DATASETS, DEFENSES, MODELS, RunConfig, build_config
from advtui.core.datasets import DEFAULT_DATASET
from advtui.core.errors import AdvtuiError
from advtui.jobs.queue import parse_seeds
from advtui.options import check_eval_options

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Field:
    key: str  # RunConfig field (or "seeds" / "auto_eval" / "auto_eval_limit")
    label: str
    parse: Callable[[str], Any] | None  # None: a Select
    hint: str = ""
    advanced: bool = False


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def _float(text: str) -> float:
    try:
        return float(eval_fraction(text))
    except ValueError:
        raise ValueError(f"{text!r} is not a number (e.g. 0.3 or 8/255)") from None


def eval_fraction(text: str) -> float:
    """'0.3' or '8/255' (how CIFAR radii are written)."""
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*", text)
    if match:
        return float(match[1]) / float(match[2])
    return float(text)


def _text(text: str) -> str:
    return text


FIELDS: tuple[Field, ...] = (
    Field("defense", "defense", None),
    Field("dataset", "dataset", None),
    Field("model", "model", None),
    Field("epochs", "epochs", _int, "preset: 100"),
    Field("eps", "eps", _float, "preset: 0.3 (MNIST), 8/255 (CIFAR-10)"),
    Field("inner_steps", "inner steps T", _int, "10"),
    Field("seeds", "seeds", _text, "e.g. 0 or 0,1,2,3,4 or 0-4 (one run each, grouped)"),
    Field("device", "device", None),
    Field("name", "name", _text, "default DEFENSE-DATASET-sSEED (the group with seeds)"),
    Field("auto_eval", "auto-eval", _text, "attacks after training, e.g. natural,pgd-10"),
    Field("train_limit", "train limit", _int, "examples (class-balanced); empty: all", advanced=True),
    Field("test_limit", "test limit", _int, "examples; empty: all", advanced=True),
    Field("eval_limit", "eval limit", _int, "test examples for per-epoch accuracy (1000)", advanced=True),
    Field("batch_size", "batch size", _int, "preset: 128", advanced=True),
    Field("lr", "lr", _float, "preset: 0.01 (MNIST), 0.1 (CIFAR-10)", advanced=True),
    Field("auto_eval_limit", "auto-eval limit", _int, "test examples for the auto-eval", advanced=True),
)
FORM_ONLY = ("seeds", "auto_eval", "auto_eval_limit")
# build_config messages name options the CLI way ("inner-steps must be ..."): map them back.
_MESSAGE_FIELDS = sorted(((f.key.replace("_", "-"), f.key) for f in FIELDS), key=lambda p: -len(p[0]))


def field_of_message(message: str) -> str | None:
    """The form field an error message is about (build_config names the option first)."""
    lowered = message.lower()
    for option, key in _MESSAGE_FIELDS:
        if re.search(rf"(^|[^a-z-]){re.escape(option)}([^a-z-]|$)", lowered):
            return key
    if "run name" in lowered:
        return "name"
    return None


class NewRunScreen(ModalScreen[str | None]):
    """Returns a one-line summary of what was queued (None when cancelled)."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Queue"),
    ]

    def __init__(self, gpu_count: int = 0) -> None:
        super().__init__()
        self.gpu_count = gpu_count
        self.errors: dict[str, str] = {}
        self._attack_check: tuple[str, str] = ("", "")  # (auto-eval text, its error) as last checked

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="form"):
            yield Static("New training run", classes="dialog-title")
            with VerticalScroll(id="form-body"):
                for f in FIELDS:
                    if not f.advanced:
                        yield from self._field(f)
                yield Static("data and optimizer", classes="form-section")
                for f in FIELDS:
                    if f.advanced:
                        yield from self._field(f)
            yield Label("", id="form-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Cancel (esc)", id="cancel")
                yield Button("Queue (ctrl+s)", variant="primary", id="submit")

    def _field(self, f: Field) -> ComposeResult:
        with Horizontal(classes="field-row"):
            yield Label(f.label, classes="field-label")
            if f.parse is None:
                yield Select(self._choices(f.key), value=self._default(f.key), allow_blank=False, id=f.key,
                             compact=True)
            else:
                yield Input(placeholder=f.hint, id=f.key, value="0" if f.key == "seeds" else "", compact=True)
        yield Label("", id=f"{f.key}-error", classes="error field-error")

    def _choices(self, key: str) -> list[tuple[str, str]]:
        if key == "defense":
            return [(d, d) for d in DEFENSES]
        if key == "dataset":
            return [(d, d) for d in DATASETS]
        if key == "model":
            return [(m, m) for m in MODELS]
        devices = list(DEVICES) + [f"cuda:{i}" for i in range(self.gpu_count)]
        return [(d, d) for d in devices]

    @staticmethod
    def _default(key: str) -> str:
        return {"defense": "rnn-adv", "dataset": DEFAULT_DATASET, "model": "smallcnn", "device": "auto"}[key]

    def on_mount(self) -> None:
        self.query_one("#defense", Select).focus()
        self.validate()

    # -- validation --------------------------------------------------------------------------
    def values(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Parsed field values (None for empty) and per-field parse errors."""
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for f in FIELDS:
            if f.parse is None:
                values[f.key] = self.query_one(f"#{f.key}", Select).value
                continue
            raw = self.query_one(f"#{f.key}", Input).value.strip()
            if not raw:
                values[f.key] = None
                continue
            try:
                values[f.key] = f.parse(raw)
            except ValueError as exc:
                errors[f.key] = str(exc)
        return values, errors

    def build(self) -> tuple[RunConfig | None, dict[str, Any], dict[str, str]]:
        values, errors = self.values()
        config = None
        if not errors:
            overrides = {k: v for k, v in values.items() if k not in FORM_ONLY and k != "defense"}
            try:
                config = build_config(values["defense"], None, **overrides)
            except AdvtuiError as exc:
                errors[field_of_message(str(exc)) or "_form"] = str(exc)
        if values.get("seeds") and "seeds" not in errors:
            try:
                parse_seeds(values["seeds"])
            except AdvtuiError as exc:
                errors["seeds"] = str(exc).replace("--seeds", "seeds")
        if values.get("auto_eval_limit") is not None and "auto_eval_limit" not in errors:
            try:  # the check `queue train --auto-eval-limit` makes
                check_eval_options(limit=values["auto_eval_limit"])
            except AdvtuiError as exc:
                errors["auto_eval_limit"] = str(exc).replace("--limit", "auto-eval limit")
        return config, values, errors

    def validate(self) -> RunConfig | None:
        config, values, errors = self.build()
        checked_text, attack_error = self._attack_check
        if attack_error and (values.get("auto_eval") or "") == checked_text:
            errors.setdefault("auto_eval", attack_error)
        self.errors = errors
        for f in FIELDS:
            label = self.query_one(f"#{f.key}-error", Label)
            label.update(errors.get(f.key, ""))
            label.display = f.key in errors
        self.query_one("#form-error", Label).update(errors.get("_form", ""))
        self.query_one("#submit", Button).disabled = bool(errors)
        if config is not None:
            self._show_defaults(config)
        return config if not errors else None

    def _show_defaults(self, config: RunConfig) -> None:
        """Empty fields show the value the preset gives them."""
        for key in ("epochs", "eps", "inner_steps", "batch_size", "lr", "eval_limit"):
            box = self.query_one(f"#{key}", Input)
            box.placeholder = f"{getattr(config, key):g} (preset {config.preset})" if key in ("eps", "lr") \
                else f"{getattr(config, key)} (preset {config.preset})"

    @on(Input.Changed)
    @on(Select.Changed)
    def _changed(self, event) -> None:
        self.validate()
        if getattr(event, "input", None) is not None and event.input.id == "auto_eval":
            self._check_attacks(event.value)

    def _check_attacks(self, text: str) -> None:
        """Check the auto-eval specs as they are typed (the grammar is a quick, torch-free parse)."""
        specs = [s.strip() for s in text.split(",") if s.strip()]
        if not specs:
            return
        try:
            self.app.services.check_attacks(specs)  # type: ignore[attr-defined]
            message = ""
        except AdvtuiError as exc:
            message = str(exc)
        self._attack_check = (text.strip(), message)
        self.validate()

    # -- submit ------------------------------------------------------------------------------
    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#submit")
    def action_submit(self) -> None:
        config = self.validate()
        if config is None:
            self.app.bell()
            return
        _, values, _ = self.build()
        self.query_one("#submit", Button).disabled = True
        self.query_one("#form-error", Label).update("queueing…")
        self.run_worker(lambda: self._queue(config, values), thread=True, group="queue", exit_on_error=False)

    def _queue(self, config: RunConfig, values: dict[str, Any]) -> None:
        services = self.app.services  # type: ignore[attr-defined]
        try:
            runs = services.queue_training(config, values.get("seeds"), values.get("auto_eval"),
                                           values.get("auto_eval_limit"))
        except AdvtuiError as exc:
            attack_error = type(exc).__name__ == "AttackSpecError"
            self.app.call_from_thread(self._failed, str(exc), "auto_eval" if attack_error else None)
            return
        ids = ", ".join(f"{r['id']} ({r['name']})" for r in runs)
        evals = f", auto-eval {values['auto_eval']}" if values.get("auto_eval") else ""
        self.app.call_from_thread(self.dismiss, f"queued {len(runs)} run{'s' if len(runs) > 1 else ''}: {ids}{evals}")

    def _failed(self, message: str, key: str | None = None) -> None:
        key = key or field_of_message(message.replace("--", ""))
        if key is not None:
            label = self.query_one(f"#{key}-error", Label)
            label.update(message)
            label.display = True
        else:
            self.query_one("#form-error", Label).update(message)
        self.query_one("#submit", Button).disabled = False

