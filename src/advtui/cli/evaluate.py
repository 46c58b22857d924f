"""``advtui eval``, ``compare`` and ``export``: attack a checkpoint, put runs side by side."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from advtui.cli.common import RunsDirOption, console, err_console, open_registry
from advtui.compare import FORMATS, ROW_KINDS, build_comparison, format_cell, render, select_runs
from advtui.core.format import fmt_duration
from advtui.core.errors import ConfigError

app = typer.Typer()  # eval, compare, export: commands of the root, no group of their own

ATTACKS_HELP = ("Attack specs, comma-separated: natural, fgsm, pgd-K, cw-K, pgd-bls-K, rnn-K[:RUN], l2lda-K[:RUN], "
                "transfer:RUN, transfer-pgd-K:RUN; beyond the paper, AutoAttack: aa (standard: APGD-CE, APGD-T, "
                "FAB-T, Square), apgd-ce-K, apgd-t-K, square-K. xR adds R random restarts (pgd-100x5). "
                "Default: natural,pgd-10,pgd-100,cw-100 (+ rnn-10 of the run itself if it learned one).")


def _output_console() -> Console:
    """The console for tables: on a terminal its own width; piped into a file or a log, wide
    enough that a table with many attack columns is not squeezed into 80 characters."""
    return console if console.is_terminal else Console(highlight=False, width=max(console.width, 240))


class EvalProgressDisplay:
    """A progress bar per attack on a terminal; plain lines otherwise (a queued eval writes to a
    log file): one when each attack ends, and one every 30 s in between. The lines go to
    ``stream`` (standard output unless given; standard error under ``--json``, whose standard
    output carries the JSON only)."""

    def __init__(self, interactive: bool, stream=None):
        self.interactive = interactive
        self.stream = stream
        self.progress: Progress | None = None
        self.tasks: dict[int, int] = {}
        self.last_line = time.monotonic()

    def __enter__(self) -> "EvalProgressDisplay":
        if self.interactive:
            self.progress = Progress(
                TextColumn("[bold]{task.fields[label]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[acc]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=err_console, transient=False,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.__exit__(*exc)

    def __call__(self, p) -> None:
        label = f"[{p.index + 1}/{p.attacks}] {p.attack}"
        running = f"robust {100.0 * p.robust / p.done:.1f}% so far" if p.done else ""
        acc = f"{p.accuracy:.2f}%" if p.finished else running
        if self.progress is not None:
            if p.index not in self.tasks:
                self.tasks[p.index] = self.progress.add_task("eval", total=max(p.total, 1), label=label, acc="")
            self.progress.update(self.tasks[p.index], completed=p.done, total=max(p.total, 1), acc=acc)
        elif p.finished or time.monotonic() - self.last_line > 30:
            self.last_line = time.monotonic()
            print(f"{label}: {'done, ' if p.finished else ''}{p.done}/{p.total} {acc}".rstrip(),
                  file=self.stream or sys.stdout, flush=True)


def _eval_table(report) -> Table:
    table = Table(box=None, header_style="bold", title=None)
    for col, justify in (("attack", "left"), ("accuracy %", "right"), ("robust/n", "right"), ("attacked", "right"),
                         ("time", "right"), ("final loss", "right"), ("checks", "left")):
        table.add_column(col, justify=justify)
    for doc in report.results:
        cumulative = doc["accuracy_kind"] == "cumulative"
        final = doc["trajectory"][-1] if doc["trajectory"] else None
        flags = "; ".join(f["message"] for f in doc["flags"])
        table.add_row(doc["label"], f"{doc['accuracy']:.2f}" + ("*" if cumulative else ""),
                      f"{doc['robust']}/{doc['n']}", str(doc["n_attacked"]), fmt_duration(doc["wall_time"]),
                      "-" if final is None else f"{final:.4f}" + (" (surrogate)" if doc["trajectory_model"] == "surrogate" else ""),
                      f"[yellow]{flags}[/]" if flags else "[green]ok[/]")
    low, worst = report.summaries.get("min"), report.summaries.get("worst-case")
    if low:
        table.add_row("[bold]min[/]", f"[bold]{low['accuracy']:.2f}[/]", "", "", "", "", f"lowest column: {low['argmin_label']}")
    if worst:
        table.add_row("[bold]worst-case[/]", f"[bold]{worst['accuracy']:.2f}[/]", f"{worst['robust']}/{worst['n']}",
                      "", "", "", "per example, over every stored attack")
    return table


@app.command("eval")
def eval_command(
    run_ref: str = typer.Argument(..., metavar="RUN", help="Run id, id prefix or name."),
    attacks: Optional[str] = typer.Option(None, "--attacks", "-a", help=ATTACKS_HELP),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Test examples (class-balanced subset; default all)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Examples per attack batch."),
    eps: Optional[float] = typer.Option(None, help="L-inf radius (default: the run's training eps)."),
    step_size: Optional[float] = typer.Option(None, "--step-size", help="PGD/CW step size (default eps/4)."),
    seed: int = typer.Option(0, help="Seed of the attacks' random starts."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Evaluate this checkpoint file of RUN instead of its final one."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    cascade: bool = typer.Option(False, "--cascade", help="Run each later attack only on examples still unbroken (faster; "
                                                          "their own numbers become cumulative, marked *)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Dataset root (default $ADVTUI_DATA or the run's)."),
    runs_dir: Optional[Path] = RunsDirOption,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
) -> None:
    """Attack a run's checkpoint and store accuracy, loss trajectories and sanity checks."""
    from advtui.engine.evaluate import evaluate_run  # torch: loaded by this command only

    if batch_size < 1 or (limit is not None and limit < 1) or seed < 0:
        bad = "--batch-size" if batch_size < 1 else "--limit" if limit is not None and limit < 1 else "--seed"
        value = {"--batch-size": batch_size, "--limit": limit, "--seed": seed}[bad]
        raise ConfigError(f"{bad} must be {'0 or more' if bad == '--seed' else 'at least 1'}, got {value}")
    registry = open_registry(runs_dir)
    interactive = sys.stderr.isatty() and not as_json
    with EvalProgressDisplay(interactive, sys.stderr if as_json else None) as display:
        report = evaluate_run(
            registry, run_ref, attacks, limit=limit, batch_size=batch_size, eps=eps,
            step_size=step_size, seed=seed, checkpoint=checkpoint, device=device, cascade=cascade,
            data_root=data_root, on_progress=display)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    s = report.settings
    out = _output_console()
    out.print(f"[bold]{report.run_id}[/] ({report.run_name}) checkpoint {report.checkpoint} "
                  f"[dim]{report.checkpoint_hash}[/]: eps {s['eps']:g}, step {s['step_size']:g}, n {s['n']} "
                  f"({s['examples']}), seed {s['seed']}, {s['device']}, {fmt_duration(report.wall_time)}")
    out.print(_eval_table(report))
    out.print("[dim]Robust = correct at x and at x'. Attacks ran only on the examples correct at x "
                  "(which cannot change a column)" + ("; * = cumulative (cascade): robust to this and every "
                                                      "earlier attack." if s["cascade"] else ".") + "[/]")


def rich_comparison(comparison) -> Table:
    """The comparison model (advtui.compare.Comparison) as a rich Table: best per column in bold green."""
    table = Table(header_style="bold", box=None)
    for head in (["run", "defense"] if comparison.by == "run" else ["defense", "runs"]):
        table.add_column(head)
    for column in comparison.columns:
        table.add_column(column.label, justify="right")
    for row in comparison.rows:
        lead = [row.label, row.defense or "-"] if comparison.by == "run" else [row.label, str(len(row.run_ids))]
        cells = []
        for column in comparison.columns:
            cell = row.cells.get(column.key)
            text = format_cell(cell, column, comparison.by) if cell else "-"
            cells.append(f"[bold green]{text}[/]" if cell and cell.best else text)
        table.add_row(*lead, *cells)
    return table


def _comparison(runs_dir, refs, group, defense, by, attacks):
    if by not in ROW_KINDS:
        raise ConfigError(f"--by must be one of: {', '.join(ROW_KINDS)}, got {by!r}")
    registry = open_registry(runs_dir)
    defenses = [d for value in defense or [] for d in value.split(",") if d.strip()]
    runs = select_runs(registry, refs or [], group, defenses)
    return build_comparison(registry, runs, by=by, attacks=attacks)


RefsArgument = typer.Argument(None, metavar="[RUN]...", help="Runs to compare (ids, prefixes or names).")
GroupOption = typer.Option(None, "--group", "-g", help="All runs of this group.")
DefenseOption = typer.Option(None, "--defense", "-d", help="Only these defenses (repeat or comma-separate).")
ByOption = typer.Option("run", "--by", help="Rows per run, or per defense (lowest over seeds, mean ± std).")
ColumnsOption = typer.Option(None, "--attacks", "-a", help="Attack columns to show, in this order (default: all evaluated).")


@app.command()
def compare(
    refs: Optional[list[str]] = RefsArgument,
    group: Optional[str] = GroupOption,
    defense: Optional[list[str]] = DefenseOption,
    by: str = ByOption,
    attacks: Optional[str] = ColumnsOption,
    runs_dir: Optional[Path] = RunsDirOption,
    as_json: bool = typer.Option(False, "--json", help="Print the table model as JSON."),
) -> None:
    """Runs side by side: attack columns, min, worst-case, inner-maximizer parameters, time per epoch."""
    comparison = _comparison(runs_dir, refs, group, defense, by, attacks)
    if as_json:
        print(render(comparison, "json"), end="")
        return
    out = _output_console()
    out.print(rich_comparison(comparison))
    for note in comparison.notes:
        out.print(f"[dim]{note}[/]")
    out.print("[dim][bold green]bold green[/]: best in its column.[/]")


EXPORT_FORMATS = (*FORMATS, "robustbench")


def _export_robustbench(refs, group, defense, out, checkpoint, runs_dir) -> None:
    if group or defense or len(refs or []) != 1:
        raise ConfigError("--format robustbench exports one run: name exactly one RUN (no --group or --defense)")
    from advtui.engine.export import export_robustbench  # torch: loaded by this format only

    done = export_robustbench(open_registry(runs_dir), refs[0], out or Path("robustbench"), checkpoint)
    card = done.card
    err_console.print(f"wrote {done.weights} (state dict) and {done.card_path} (model card: {card['architecture']}, "
                      f"eps {card['eps']}, clean {card['clean_acc']}%, AutoAttack {card['autoattack_acc']}%)")


@app.command()
def export(
    refs: Optional[list[str]] = RefsArgument,
    group: Optional[str] = GroupOption,
    defense: Optional[list[str]] = DefenseOption,
    by: str = ByOption,
    attacks: Optional[str] = ColumnsOption,
    fmt: str = typer.Option("md", "--format", "-f", help=f"One of: {', '.join(EXPORT_FORMATS)}."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to this file (default: standard output); "
                                                                "robustbench: this folder (default ./robustbench)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="robustbench: export this checkpoint file of "
                                                                         "RUN instead of its final one."),
    runs_dir: Optional[Path] = RunsDirOption,
) -> None:
    """Write the comparison table as Markdown, CSV, LaTeX or JSON; or, with [bold]--format robustbench[/],
    one run's model (state dict) and model card in RobustBench's model-zoo layout."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    if fmt == "robustbench":
        _export_robustbench(refs, group, defense, out, checkpoint, runs_dir)
        return
    if checkpoint is not None:
        raise ConfigError("--checkpoint goes with --format robustbench only")
    text = render(_comparison(runs_dir, refs, group, defense, by, attacks), fmt)
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from exc
    err_console.print(f"wrote {out} ({fmt}, {text.count(chr(10))} lines)")
