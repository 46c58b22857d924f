"""``advtui run``, ``ls`` and ``show``: train in the foreground and inspect runs."""

from __future__ import annotations

import functools
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from advtui.cli import app
from advtui.cli.common import (
    RunsDirOption, console, err_console, fmt_duration, fmt_pct, fmt_time, open_registry, styled_status,
)
from advtui.config import DEFENSES, RunConfig, build_config
from advtui.events import EVENTS_FILE, read_events
from advtui.health import ERROR, WARNING, Finding, record_findings, replay, worst_level
from advtui.runner import RunPlan, checkpoint_path, execute_run, plan_queued, plan_resume, run_folder


class ProgressDisplay:
    """A progress bar on a terminal (epoch and batch, loss, images/s, ETA); plain lines otherwise
    (a launched run's output goes to its log file)."""

    def __init__(self, interactive: bool):
        self.interactive = interactive
        self.progress: Progress | None = None
        self.task = None
        self.last_line = 0.0

    def __enter__(self) -> "ProgressDisplay":
        if self.interactive:
            self.progress = Progress(
                TextColumn("[bold]{task.fields[label]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  {task.fields[speed]} img/s  {task.fields[acc]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.__exit__(*exc)

    def record(self, record: dict) -> None:
        err_console.print(f"run [bold]{record['id']}[/] ({record['name']}) on {record['device']}")

    def __call__(self, p) -> None:
        total = p.epochs * p.batches
        done = p.epoch * p.batches + p.batch
        m = p.metrics
        acc = ""
        if "test_clean_acc" in m:
            acc = f"test clean {m['test_clean_acc']:.1f}% pgd {m['test_pgd_acc']:.1f}%"
        if self.progress is not None:
            if self.task is None:
                self.task = self.progress.add_task("train", total=total, label="", loss="-", speed="-", acc="")
            fields = {"label": f"epoch {min(p.epoch + 1, p.epochs)}/{p.epochs} batch {p.batch}/{p.batches}"}
            if p.loss is not None:
                fields.update(loss=f"{p.loss:.4f}", speed=f"{p.images_per_s:,.0f}")
            if acc:
                fields["acc"] = acc
            self.progress.update(self.task, completed=done, **fields)
        elif acc or time.monotonic() - self.last_line > 30:
            self.last_line = time.monotonic()
            loss = f" loss {p.loss:.4f} {p.images_per_s:,.0f} img/s" if p.loss is not None else ""
            print(f"epoch {p.epoch}/{p.epochs} batch {p.batch}/{p.batches}{loss} {acc}".rstrip(), flush=True)
        for finding in p.health:  # said as it happens: a long run's screen must not look healthy
            self._say(health_line(finding))

    def _say(self, markup: str) -> None:
        if self.progress is not None:
            self.progress.console.print(markup)  # above the bar
        else:  # a log file: one unwrapped line, in order with the progress lines
            print(Text.from_markup(markup).plain, flush=True)


HEALTH_STYLE = {ERROR: "red", WARNING: "yellow"}


def health_line(finding: Finding) -> str:
    """One finding as a line of rich markup: its level, then its message (what to try)."""
    if not finding.active:
        return f"[dim]cleared at epoch {finding.cleared}: {escape(finding.message)}[/]"
    return f"[{HEALTH_STYLE[finding.level]}]{finding.level}[/]: {escape(finding.message)}"


def health_cell(findings: list[Finding]) -> str:
    """The ``ls`` health column: ``!`` and the number of active findings, red for an error."""
    level = worst_level(findings)
    if level is None:
        return ""
    return f"[bold {HEALTH_STYLE[level]}]!{len([f for f in findings if f.active])}[/]"


# The training options shared by `advtui run` and `advtui queue train`: (name, type, typer option).
# Every option defaults to None (unset), so a preset's values apply unless given explicitly.
TRAIN_OPTIONS: list[tuple[str, Any, Any]] = [
    ("defense", Optional[str], typer.Option(None, "--defense", "-d", help=f"One of: {', '.join(DEFENSES)}.")),
    ("dataset", Optional[str], typer.Option(None, help="mnist or cifar10.")),
    ("model", Optional[str], typer.Option(None, help="smallcnn, vgg16, resnet18, wrn-34-10 (wrn-DEPTH-WIDTH).")),
    ("epochs", Optional[int], typer.Option(None, help="Training epochs.")),
    ("batch_size", Optional[int], typer.Option(None, "--batch-size", help="Batch size.")),
    ("eps", Optional[float], typer.Option(None, help="L-inf radius, in (0, 1] (MNIST 0.3, CIFAR-10 8/255).")),
    ("inner_steps", Optional[int], typer.Option(None, "--inner-steps", "-T", help="Inner maximization steps T (10).")),
    ("step_size", Optional[float], typer.Option(None, "--step-size", help="PGD step size (default eps/4).")),
    ("lr", Optional[float], typer.Option(None, help="Classifier learning rate.")),
    ("momentum", Optional[float], typer.Option(None, help="SGD momentum.")),
    ("weight_decay", Optional[float], typer.Option(None, "--weight-decay", help="SGD weight decay.")),
    ("milestones", Optional[str], typer.Option(None, help="Epochs at which lr decays 10x, e.g. 55,75,90.")),
    ("beta", Optional[float], typer.Option(None, help="TRADES beta (default 1 on MNIST, 6 on CIFAR-10).")),
    ("seed", Optional[int], typer.Option(None, help="Random seed.")),
    ("device", Optional[str], typer.Option(None, help="auto, cpu, cuda or cuda:N.")),
    ("name", Optional[str], typer.Option(None, help="A name for the run (default DEFENSE-DATASET-sSEED).")),
    ("group", Optional[str], typer.Option(None, help="Group name (seeds of one experiment).")),
    ("preset", Optional[str], typer.Option(None, help="paper-mnist, paper-cifar, paper-cifar-vgg16, paper-cifar-wrn, trades-mnist.")),
    ("data_root", Optional[str], typer.Option(None, "--data-root", help="Dataset root (default $ADVTUI_DATA or a cache folder).")),
    ("train_limit", Optional[int], typer.Option(None, "--train-limit", help="Class-balanced training subset size.")),
    ("test_limit", Optional[int], typer.Option(None, "--test-limit", help="Class-balanced test subset size.")),
    ("eval_limit", Optional[int], typer.Option(None, "--eval-limit", help="Test examples for per-epoch accuracy (1000).")),
    ("init", Optional[str], typer.Option(None, help="Inner start: normal (x + 0.001 N(0,I)) or uniform.")),
    ("inner_train_mode", bool, typer.Option(False, "--inner-train-mode", help="Keep the model in train mode during the inner maximization.")),
    ("rnn_grad_input", Optional[str], typer.Option(None, "--rnn-grad-input", help="RNN gradient input scaling: sign, rms or raw.")),
    ("rnn_init", Optional[str], typer.Option(None, "--rnn-init", help="RNN start: pgd (close to a sign-gradient step) or random.")),
    ("rnn_delta_scale", Optional[float], typer.Option(None, "--rnn-delta-scale", help="RNN step: delta = scale * eps * tanh(V h).")),
    ("rnn_second_order", bool, typer.Option(False, "--rnn-second-order", help="Backpropagate through g_t (Hessian terms).")),
    ("rnn_optimizer", Optional[str], typer.Option(None, "--rnn-optimizer", help="Optimizer of phi: adam or sgd.")),
    ("rnn_lr", Optional[float], typer.Option(None, "--rnn-lr", help="Learning rate of phi.")),
    ("l2lda_width", Optional[int], typer.Option(None, "--l2lda-width", help="L2LDA generator channels (64: ~0.5M parameters).")),
    ("l2lda_lr", Optional[float], typer.Option(None, "--l2lda-lr", help="L2LDA generator learning rate.")),
    ("l2lda_latent", Optional[int], typer.Option(None, "--l2lda-latent", help="L2LDA latent noise size.")),
    ("l2lda_diversity", Optional[float], typer.Option(None, "--l2lda-diversity", help="L2LDA diversity term weight.")),
    ("compare_every", Optional[int], typer.Option(None, "--compare-every", help="Batches between inner trajectory records (K).")),
    ("log_every", Optional[int], typer.Option(None, "--log-every", help="Batches between step events.")),
    ("chance_patience", Optional[int], typer.Option(None, "--chance-patience", help="Epoch ends at chance-level clean accuracy (under 20%) before a health warning (2).")),
    ("deterministic", bool, typer.Option(False, "--deterministic", help="Deterministic kernels (slower).")),
    ("amp", bool, typer.Option(False, "--amp", help="bfloat16 autocast on CUDA.")),
    ("init_from", Optional[str], typer.Option(None, "--init-from", help="Start from RUN's final weights (classifier, and its learned optimizer when the kinds match).")),
]
_TRAIN_OPTION_NAMES = tuple(name for name, _, _ in TRAIN_OPTIONS)


def with_train_options(command: Callable) -> Callable:
    """Give a command every training option of TRAIN_OPTIONS.

    The command declares a ``train_options: dict`` parameter and receives the options there
    (None or False when not given), so the list exists once for every command that builds a
    RunConfig. Typer reads the command's ``__signature__``, which is extended here.
    """
    signature = inspect.signature(command)
    # The training options come first in --help; the command's own options follow them.
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
           for p in signature.parameters.values() if p.name != "train_options"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
             for name, annotation, option in TRAIN_OPTIONS]
    clash = {p.name for p in own} & set(_TRAIN_OPTION_NAMES)
    if clash:
        raise TypeError(f"{command.__name__} redefines training options {sorted(clash)}")

    @functools.wraps(command)
    def with_options(*args: Any, **kwargs: Any) -> Any:
        options = {name: kwargs.pop(name, None) for name in _TRAIN_OPTION_NAMES}
        return command(*args, **kwargs, train_options=options)

    with_options.__signature__ = signature.replace(parameters=[*added, *own])  # type: ignore[attr-defined]
    return with_options


def config_overrides(train_options: dict[str, Any]) -> dict[str, Any]:
    """RunConfig overrides from the training options (defense and preset excluded; None = unset)."""
    overrides = {k: v for k, v in train_options.items() if k not in ("defense", "preset")}
    milestones = overrides.get("milestones")
    overrides["milestones"] = _parse_ints(milestones, "milestones") if milestones else None
    for flag in ("inner_train_mode", "rnn_second_order", "deterministic", "amp"):
        overrides[flag] = overrides.get(flag) or None  # an absent flag keeps the preset's value
    return overrides


def build_config_from_options(train_options: dict[str, Any], **fixed: Any) -> RunConfig:
    """A validated RunConfig from the training options; ``fixed`` values win over the options."""
    defense = fixed.pop("defense", None) or train_options.get("defense")
    if defense is None:
        raise typer.BadParameter(f"--defense is required (one of: {', '.join(DEFENSES)})")
    overrides = {**config_overrides(train_options), **fixed}
    return build_config(defense, train_options.get("preset"), **overrides)


@app.command()
@with_train_options
def run(
    runs_dir: Optional[Path] = RunsDirOption,
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue RUN from its last checkpoint."),
    run_id: Optional[str] = typer.Option(None, "--run-id", hidden=True, help="Attach to a queued record (used by the scheduler)."),
    *,
    train_options: dict[str, Any],
) -> None:
    """Train one run in the foreground, recorded in the registry like any other."""
    registry = open_registry(runs_dir)
    if resume:
        plan = plan_resume(registry, resume, {k: train_options[k] for k in ("epochs", "device", "data_root")})
    elif run_id:
        plan = plan_queued(registry, run_id)
    else:
        plan = RunPlan(build_config_from_options(train_options))
    interactive = sys.stderr.isatty()
    with ProgressDisplay(interactive) as display:
        record = execute_run(plan, registry.root, on_progress=display, on_record=display.record)
    m = record.get("metrics") or {}
    console.print(
        f"[green]finished[/] {record['id']} ({record['name']}): {record['defense']} {record['dataset']}/"
        f"{record['model']}, {record['epochs']} epochs in {fmt_duration(record.get('train_time'))}; "
        f"test clean {fmt_pct(m.get('test_clean_acc'))}%, PGD-{record['config']['inner_steps']} "
        f"{fmt_pct(m.get('test_pgd_acc'))}% (n={m.get('test_n', '-')})"
    )
    for finding in record_findings(record):  # finished, but not healthy: say so last
        console.print("  " + health_line(finding))


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, got {text!r}") from None


@app.command("ls")
def list_runs(
    runs_dir: Optional[Path] = RunsDirOption,
    status: Optional[str] = typer.Option(None, help="Only runs with this status."),
    defense: Optional[str] = typer.Option(None, help="Only runs of this defense."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List runs."""
    runs = open_registry(runs_dir).runs()
    runs = [r for r in runs if (status is None or r.get("status") == status)
            and (defense is None or r.get("defense") == defense)]
    if as_json:
        console.print_json(json.dumps(runs))
        return
    if not runs:
        console.print("no runs yet: start one with `advtui run --defense rnn-adv`")
        return
    table = Table(box=None, header_style="bold")
    for col in ("id", "name", "defense", "data/model", "status", "health", "epoch", "clean %", "pgd %", "device",
                "started"):
        table.add_column(col, justify="right" if col in ("epoch", "clean %", "pgd %") else "left")
    unhealthy = 0
    for r in runs:
        m = r.get("metrics") or {}
        findings = record_findings(r)
        unhealthy += bool(findings)
        table.add_row(
            r["id"], r.get("name", "-"), r.get("defense", "-"), f"{r.get('dataset')}/{r.get('model')}",
            styled_status(r.get("status")), health_cell(findings), f"{r.get('epoch', 0)}/{r.get('epochs', '?')}",
            fmt_pct(m.get("test_clean_acc")), fmt_pct(m.get("test_pgd_acc")),
            (r.get("device") or "-").split(" (")[0], fmt_time(r.get("started")),
        )
    console.print(table)
    if unhealthy:
        console.print(f"!N under health: N warnings (red: an error), on {unhealthy} run{'s' if unhealthy > 1 else ''}; "
                      "`advtui show RUN` says what to try")


@app.command()
def show(
    run_ref: str = typer.Argument(..., metavar="RUN", help="Run id, id prefix or name."),
    runs_dir: Optional[Path] = RunsDirOption,
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
) -> None:
    """Show a run's config, status, last metrics and checkpoints."""
    registry = open_registry(runs_dir)
    r = registry.resolve_run(run_ref)
    events = list(read_events(run_folder(registry, r) / EVENTS_FILE))
    history = run_health(r, events)
    if as_json:
        # The record, with the health checks of its whole stream: ``health`` the findings that
        # hold now (as ``ls --json`` has them), ``health_history`` every one, cleared ones too.
        console.print_json(json.dumps({**r, "health": [f.to_dict() for f in history if f.active],
                                       "health_history": [f.to_dict() for f in history]}))
        return
    console.print(f"[bold]{r['id']}[/]  {r.get('name')}  {styled_status(r.get('status'))}")
    console.print(f"  defense {r.get('defense')}  dataset {r.get('dataset')}  model {r.get('model')}  "
                  f"device {r.get('device') or '-'}  pid {r.get('pid') or '-'}  host {r.get('host') or '-'}")
    console.print(f"  epoch {r.get('epoch', 0)}/{r.get('epochs')}  started {fmt_time(r.get('started'))}  "
                  f"ended {fmt_time(r.get('ended'))}  train time {fmt_duration(r.get('train_time'))}")
    console.print(f"  parameters: model {r.get('model_params', '-'):,}  inner maximizer {r.get('maximizer_params', '-')}"
                  if isinstance(r.get("model_params"), int) else "  parameters: -")
    if r.get("error"):
        console.print(f"  [red]error[/]: {r['error'].splitlines()[-1] if r['error'] else ''}")
    cfg = r.get("config") or {}
    keys = ("eps", "inner_steps", "step_size", "batch_size", "lr", "momentum", "weight_decay", "milestones",
            "beta", "seed", "train_limit", "test_limit", "preset")
    console.print("  config: " + "  ".join(f"{k}={cfg.get(k)}" for k in keys if k in cfg))
    m = r.get("metrics") or {}
    if m:
        console.print("  last metrics: " + "  ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items() if v is not None))
    for label in r.get("checkpoints") or {}:
        path = checkpoint_path(registry, r, label)
        console.print(f"  checkpoint {label}: {path}" + ("" if path.exists() else " [red](missing)[/]"))
    _print_health(history)
    inner = [e for e in events if e.get("kind") == "inner"]
    if inner:
        last = inner[-1]
        line = "  last inner trajectory (" + str(last.get("maximizer")) + "): " + " ".join(
            f"{v:.3f}" for v in last["losses"])
        console.print(line)
        if "pgd" in last:
            console.print("  PGD on the same batch:          " + " ".join(f"{v:.3f}" for v in last["pgd"]))


def run_health(record: dict, events: list[dict]) -> list[Finding]:
    """A run's findings, cleared ones included: the checks replayed over its stream (so runs
    recorded before health checks get them too), else what its record keeps (no stream yet)."""
    if events:
        return replay(events, record.get("config")).findings
    return record_findings(record)


def _print_health(findings: list[Finding]) -> None:
    if not findings:
        console.print("  health: [green]no warnings[/]")
        return
    console.print("  health:")
    for finding in findings:
        console.print("    " + health_line(finding))
