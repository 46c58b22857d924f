"""``advtui run``, ``ls`` and ``show``: train in the foreground and inspect runs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from advtui.cli.common import RunsDirOption, console, err_console, open_registry
from advtui.cli.train_options import build_config_from_options, with_train_options
from advtui.core.config import DEFENSES, default_val_size, values_in_force
from advtui.store import lifecycle
from advtui.core.checkpoints import describe as describe_checkpoint
from advtui.core.checkpoints import kept_epoch, kind_from_path
from advtui.core.epochs import MONITOR_NOTE, epoch_accuracy, has_epoch_accuracy
from advtui.core.format import fmt_duration, fmt_pct, fmt_seconds, fmt_time, short_device, styled_status
from advtui.core.paths import checkpoint_path, run_folder
from advtui.store.results import evaluated_checkpoints, results_for_run
from advtui.core.events import EVENTS_FILE, damaged_note, read_stream
from advtui.core.health import ERROR, WARNING, Finding, record_findings, replay, worst_level
from advtui.options import check_choice
from advtui.runner import VAL_IDS_FILE, RunPlan, execute_run, plan_queued, plan_resume, relaunch_distributed

app = typer.Typer()  # run, ls, show: commands of the root, no group of their own


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
        if has_epoch_accuracy(m):
            a = epoch_accuracy(m)
            acc = f"{a.label} clean {fmt_pct(a.clean)}% pgd {fmt_pct(a.robust)}%"
        if self.progress is not None:
            if self.task is None:
                self.task = self.progress.add_task("train", total=total, label="", loss="-", speed="-", acc="")
            fields = {"label": progress_label(p)}
            if p.loss is not None:
                fields.update(loss=f"{p.loss:.4f}", speed=f"{p.images_per_s:,.0f}")
            if acc:
                fields["acc"] = acc
            self.progress.update(self.task, completed=done, **fields)
        elif acc or time.monotonic() - self.last_line > 30:
            self.last_line = time.monotonic()
            loss = f" loss {p.loss:.4f} {p.images_per_s:,.0f} img/s" if p.loss is not None else ""
            print(f"{progress_label(p)}{loss}{': ' + acc if acc else ''}", flush=True)
        for finding in p.health:  # said as it happens: a long run's screen must not look healthy
            self._say(health_line(finding))

    def _say(self, markup: str) -> None:
        if self.progress is not None:
            self.progress.console.print(markup)  # above the bar
        else:  # a log file: one unwrapped line, in order with the progress lines
            print(Text.from_markup(markup).plain, flush=True)


def progress_label(p) -> str:
    """Where training is: "epoch 1/3 batch 16/16" after a batch (batches done, counted from 1),
    "epoch 1/3 done" after an epoch's evaluation (which belongs to no batch)."""
    if has_epoch_accuracy(p.metrics):
        return f"epoch {p.epoch}/{p.epochs} done"
    return f"epoch {p.epoch + 1}/{p.epochs} batch {p.batch}/{p.batches}"


def best_note(record: dict) -> str:
    """"; best epoch 2 (best.pt)" for a run that chose one, and how an early stop ended it."""
    best = record.get("best_epoch")
    note = f"; best epoch {best} (best.pt)" if isinstance(best, int) else ""
    early = record.get("stopped_early")
    if isinstance(early, dict):
        note += (f"; stopped early after epoch {early.get('epoch')}: no better validation PGD accuracy "
                 f"for {early.get('patience')} epochs")
    return note


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def training_summary(record: dict) -> str:
    """How a run ended, for the line `advtui run` prints last: "1 epoch in 0.8 s"."""
    return f"{plural(record.get('epoch') or 0, 'epoch')} in {fmt_seconds(record.get('train_time'))}"


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
    relaunch_distributed(plan.config, sys.argv[1:])  # --nproc N: N processes under torchrun
    interactive = sys.stderr.isatty()
    with ProgressDisplay(interactive) as display:
        record = execute_run(plan, registry.root, on_progress=display, on_record=display.record,
                             on_warning=lambda text: print(f"warning: {text}", file=sys.stderr, flush=True))
    a = epoch_accuracy(record.get("metrics"))
    console.print(
        f"[green]finished[/] {record['id']} ({record['name']}): {record['defense']} {record['dataset']}/"
        f"{record['model']}, {training_summary(record)}; "
        f"{a.label} clean {fmt_pct(a.clean)}%, PGD-{record['config']['inner_steps']} "
        f"{fmt_pct(a.robust)}% (n={a.n if a.n is not None else '-'}){best_note(record)}"
    )
    for finding in record_findings(record):  # finished, but not healthy: say so last
        console.print("  " + health_line(finding))


@app.command("ls")
def list_runs(
    runs_dir: Optional[Path] = RunsDirOption,
    status: Optional[str] = typer.Option(None, help="Only runs with this status."),
    defense: Optional[str] = typer.Option(None, help="Only runs of this defense."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List runs."""
    check_choice("--status", status, lifecycle.RUN_STATUSES)
    check_choice("--defense", defense, DEFENSES)
    registry = open_registry(runs_dir)
    runs = lifecycle.settle_all_vanished(registry, registry.runs())
    for problem in registry.damaged:  # a damaged run file hides that run only: say which
        print(f"warning: {problem}", file=sys.stderr)
    runs = [r for r in runs if (status is None or r.get("status") == status)
            and (defense is None or r.get("defense") == defense)]
    if as_json:
        console.print_json(json.dumps(runs))
        return
    if not runs:
        console.print("no runs yet: start one with `advtui run --defense rnn-adv`")
        return
    table = Table(box=None, header_style="bold")
    for col in ("id", "name", "defense", "data/model", "status", "health", "epoch", "best", "clean %", "pgd %",
                "device", "started"):
        table.add_column(col, justify="right" if col in ("epoch", "best", "clean %", "pgd %") else "left")
    unhealthy = monitoring = 0
    for r in runs:
        a = epoch_accuracy(r.get("metrics"))
        findings = record_findings(r)
        unhealthy += bool(findings)
        monitoring += a.split == "test" and a.robust is not None
        best = r.get("best_epoch")
        table.add_row(
            r["id"], r.get("name", "-"), r.get("defense", "-"), f"{r.get('dataset')}/{r.get('model')}",
            styled_status(r.get("status")), health_cell(findings), f"{r.get('epoch', 0)}/{r.get('epochs', '?')}",
            str(best) if isinstance(best, int) else "-",
            fmt_pct(a.clean) + ("†" if a.split == "test" and a.clean is not None else ""),
            fmt_pct(a.robust) + ("†" if a.split == "test" and a.robust is not None else ""),
            short_device(r.get("device")), fmt_time(r.get("started")),
        )
    console.print(table)
    if monitoring:  # the other numbers are the validation split's
        console.print(f"†: the test split's per-epoch numbers, {MONITOR_NOTE} (--val-size 0, or recorded "
                      "before validation splits)")
    if unhealthy:
        console.print(f"!N under health: N warnings (red: an error), on {unhealthy} run{'s' if unhealthy > 1 else ''}; "
                      "`advtui show RUN` says what to try")


@app.command()
def show(
    run_ref: str = typer.Argument(..., metavar="RUN", help="Run id, id prefix or name."),
    runs_dir: Optional[Path] = RunsDirOption,
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
) -> None:
    """Show a run's config, status, last metrics, checkpoints (and the best epoch) and evaluation results."""
    registry = open_registry(runs_dir)
    r = lifecycle.settle_vanished(registry, registry.resolve_run(run_ref))
    stream = read_stream(run_folder(registry, r) / EVENTS_FILE)
    events = stream.events
    history = run_health(r, events)
    if stream.damaged:  # said on stderr, so --json output stays JSON
        print(f"warning: {run_folder(registry, r) / EVENTS_FILE}: {damaged_note(stream.damaged)}", file=sys.stderr)
    results = stored_results(registry, r["id"])
    if as_json:
        # The record, with the health checks of its whole stream: ``health`` the findings that
        # hold now (as ``ls --json`` has them), ``health_history`` every one, cleared ones too;
        # and its evaluation results (without the per-example masks).
        console.print_json(json.dumps({**r, "health": [f.to_dict() for f in history if f.active],
                                       "health_history": [f.to_dict() for f in history],
                                       "events_damaged": stream.damaged,
                                       "results": [_result_summary(d) for d in results]}))
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
    cfg = values_in_force(r.get("config") or {})
    keys = ("eps", "inner_steps", "step_size", "batch_size", "lr", "momentum", "weight_decay", "milestones",
            "beta", "seed", "train_limit", "test_limit", "val_size", "early_stop", "preset")
    console.print("  config: " + "  ".join(f"{k}={_config_value(cfg[k])}" for k in keys if k in cfg))
    m = r.get("metrics") or {}
    if m:
        console.print("  last metrics: " + "  ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items() if v is not None))
    console.print("  " + _validation_line(r))
    for label in r.get("checkpoints") or {}:
        path = checkpoint_path(registry, r, label)
        epoch = kept_epoch(r, label)
        held = f" (epoch {epoch})" if epoch is not None else ""
        console.print(f"  checkpoint {label}{held}: {path}" + ("" if path.exists() else " [red](missing)[/]"))
    _print_results(results)
    _print_health(history)
    inner = [e for e in events if e.get("kind") == "inner"]
    if inner:
        last = inner[-1]
        line = "  last inner trajectory (" + str(last.get("maximizer")) + "): " + " ".join(
            _loss(v) for v in last["losses"])
        console.print(line)
        if last.get("pgd"):
            console.print("  PGD on the same batch:          " + " ".join(_loss(v) for v in last["pgd"]))
    if stream.damaged:
        console.print(f"  events: [yellow]{damaged_note(stream.damaged)}[/]")


def _validation_line(r: dict) -> str:
    """What the per-epoch numbers were measured on, and the best epoch they chose."""
    config = r.get("config") or {}
    split = r.get("eval_split") or (epoch_accuracy(r.get("metrics")).split if has_epoch_accuracy(r.get("metrics"))
                                     else None)
    size = r.get("val_size") if isinstance(r.get("val_size"), int) else config.get("val_size")
    if split is None:  # not started: what it will hold out (a record without val_size predates them)
        if "val_size" in config and size is None:
            size = default_val_size(config.get("train_limit"), config.get("dataset"))
        split = "val" if size else "test"
    if split == "val":
        where = f"per-epoch accuracy on a validation split of {size} training images ({VAL_IDS_FILE} holds their ids)"
    else:
        where = f"per-epoch accuracy on the test split, {MONITOR_NOTE}: no validation split, no best checkpoint"
    return where + best_note(r)


def stored_results(registry, run_id: str) -> list[dict]:
    """Every stored evaluation result of a run (attack columns, then min and worst-case), per
    evaluated checkpoint, the most recently evaluated first."""
    docs: list[dict] = []
    for entry in evaluated_checkpoints(registry, run_id):
        docs += results_for_run(registry, run_id, entry["checkpoint_hash"]).values()
    return docs


def _checkpoint_of(doc: dict) -> str:
    kind = doc.get("checkpoint_kind") or kind_from_path(doc.get("checkpoint"))
    return describe_checkpoint(kind, doc.get("checkpoint_epoch"))


def _result_summary(doc: dict) -> dict:
    """A stored result as ``show --json`` lists it: what it measured, on what, from which checkpoint."""
    settings = doc.get("settings") or {}
    return {"attack": doc.get("attack"), "label": doc.get("label"), "kind": doc.get("kind"),
            "accuracy": doc.get("accuracy"), "robust": doc.get("robust"), "n": doc.get("n"),
            "accuracy_kind": doc.get("accuracy_kind"), "eps": settings.get("eps"),
            "examples": settings.get("examples"),
            "checkpoint_kind": doc.get("checkpoint_kind") or kind_from_path(doc.get("checkpoint")),
            "checkpoint_epoch": doc.get("checkpoint_epoch"), "checkpoint": doc.get("checkpoint"),
            "checkpoint_hash": doc.get("checkpoint_hash"), "date": doc.get("date"),
            "flags": [f.get("code") for f in doc.get("flags") or [] if isinstance(f, dict)]}


def _print_results(results: list[dict]) -> None:
    if not results:
        console.print("  evaluation results: none yet (`advtui eval RUN` runs the paper's attacks)")
        return
    console.print("  evaluation results:")
    table = Table(box=None, header_style="bold", padding=(0, 1), pad_edge=False)
    table.add_column("", width=3)  # indents the table under its heading
    for col, justify in (("attack", "left"), ("accuracy %", "right"), ("robust/n", "right"), ("eps", "right"),
                         ("checkpoint", "left"), ("flags", "left")):
        table.add_column(col, justify=justify)
    for doc in results:
        eps = (doc.get("settings") or {}).get("eps")
        robust = doc.get("robust")
        flags = ", ".join(f.get("code", "") for f in doc.get("flags") or [] if isinstance(f, dict))
        table.add_row("", escape(str(doc.get("label") or doc.get("attack"))),
                      fmt_pct(doc.get("accuracy")) + ("*" if doc.get("accuracy_kind") == "cumulative" else ""),
                      f"{robust if robust is not None else '-'}/{doc.get('n', '-')}",
                      f"{eps:g}" if isinstance(eps, (int, float)) else "-", _checkpoint_of(doc),
                      f"[yellow]{escape(flags)}[/]" if flags else "")
    console.print(table)


def _loss(value: float | None) -> str:
    return "nan" if value is None else f"{value:.3f}"  # the stream writes NaN and inf as null


def _config_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return "-" if value is None else str(value)


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
