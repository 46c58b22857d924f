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
from rich.markup import escape
from rich.text import Text
from rich.table import Table

from advtui.cli.common import RunsDirOption, console, err_console, open_registry
from advtui.compare import FORMATS, ROW_KINDS, build_comparison, format_cell, render, select_runs
from advtui.core.checkpoints import describe as describe_checkpoint
from advtui.core.format import fmt_duration
from advtui.core.errors import ConfigError
from advtui.options import check_device, check_eval_options

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
    log file): one when each attack starts and ends, and one every LINE_EVERY_S in between. The
    lines go to ``stream`` (standard output unless given; standard error under ``--json``, whose
    standard output carries the JSON only). Both count examples of the evaluation set: done out
    of the limit, robust out of done, so the last line agrees with the table."""

    LINE_EVERY_S = 10.0

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
        text = progress_text(p)
        if self.progress is not None:
            if p.index not in self.tasks:
                self.tasks[p.index] = self.progress.add_task("eval", total=max(p.total, 1), label=label, acc="")
            self.progress.update(self.tasks[p.index], completed=p.done, total=max(p.total, 1), acc=text)
            return
        first = p.index not in self.tasks
        self.tasks.setdefault(p.index, 0)
        if first or p.finished or time.monotonic() - self.last_line > self.LINE_EVERY_S:
            self.last_line = time.monotonic()
            print(f"{label}: {'done, ' if p.finished else ''}{p.done}/{p.total} {text}".rstrip(),
                  file=self.stream or sys.stdout, flush=True)


def progress_text(p) -> str:
    """Robust out of done ("robust 9/20 = 45.00%" once finished), then where a long attack is:
    its pass (restarts, cascade pieces) and its step on the batch being attacked."""
    if p.finished:
        return f"robust {p.robust}/{p.total} = {p.accuracy:.2f}%"
    parts = [f"robust {p.robust}/{p.done} so far" if p.done else ""]
    if p.passes > 1:
        parts.append(f"pass {p.pass_index + 1}/{p.passes}")
    if p.steps and p.step:
        parts.append(f"step {p.step}/{p.steps}")
    return ", ".join(part for part in parts if part)


def _interval_text(robust: int, n: int) -> str:
    """The exact 95% interval of robust/n, in percent."""
    from advtui.core.stats import proportion_interval

    interval = proportion_interval(robust, n)
    return f"[{interval[0]:.1f}–{interval[1]:.1f}]" if interval else "-"


def _eval_table(report) -> Table:
    table = Table(box=None, header_style="bold", title=None)
    for col, justify in (("attack", "left"), ("accuracy %", "right"), ("robust/n", "right"), ("95% interval", "right"),
                         ("attacked", "right"), ("time", "right"), ("final loss", "right"), ("checks", "left")):
        table.add_column(col, justify=justify)
    for doc in report.results:
        cumulative = doc["accuracy_kind"] == "cumulative"
        final = doc["trajectory"][-1] if doc["trajectory"] else None
        flags = "; ".join(f["message"] for f in doc["flags"])
        table.add_row(doc["label"], f"{doc['accuracy']:.2f}" + ("*" if cumulative else ""),
                      f"{doc['robust']}/{doc['n']}", _interval_text(doc["robust"], doc["n"]),
                      str(doc["n_attacked"]), fmt_duration(doc["wall_time"]),
                      "-" if final is None else f"{final:.4f}" + (" (surrogate)" if doc["trajectory_model"] == "surrogate" else ""),
                      f"[yellow]{flags}[/]" if flags else "[green]ok[/]")
    low, worst = report.summaries.get("min"), report.summaries.get("worst-case")
    if low:
        table.add_row("[bold]min[/]", f"[bold]{low['accuracy']:.2f}[/]", "", "", "", "", "", f"lowest column: {low['argmin_label']}")
    if worst:
        table.add_row("[bold]worst-case[/]", f"[bold]{worst['accuracy']:.2f}[/]", f"{worst['robust']}/{worst['n']}",
                      _interval_text(worst["robust"], worst["n"]), "", "", "", "per example, over every stored attack")
    return table


@app.command("eval")
def eval_command(
    run_ref: str = typer.Argument(..., metavar="RUN", help="Run id, id prefix or name."),
    attacks: Optional[str] = typer.Option(None, "--attacks", "-a", help=ATTACKS_HELP),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Test examples (class-balanced subset; default all)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Examples per attack batch."),
    eps: Optional[str] = typer.Option(None, help="L-inf radius (default: the run's training eps); several, "
                                                 "comma-separated (0.1,0.2,0.3,0.4), evaluate each in turn and are "
                                                 "stored per eps: a robustness curve (`advtui compare RUN --curves`)."),
    step_size: Optional[float] = typer.Option(None, "--step-size", help="PGD/CW step size (default eps/4)."),
    seed: int = typer.Option(0, help="Seed of the attacks' random starts."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Which checkpoint of RUN: best (the epoch of the best "
                                             "validation PGD accuracy), final, last, epoch:N (when best or final holds "
                                             "epoch N), or one of RUN's own checkpoint files. Default: final (last "
                                             "if RUN has not finished)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    cascade: bool = typer.Option(False, "--cascade", help="Run each later attack only on examples still unbroken (faster; "
                                                          "their own numbers become cumulative, marked *)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Dataset root (default $ADVTUI_DATA or the run's)."),
    runs_dir: Optional[Path] = RunsDirOption,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
) -> None:
    """Attack a run's checkpoint and store accuracy, loss trajectories and sanity checks."""
    check_eval_options(limit=limit, batch_size=batch_size, step_size=step_size, seed=seed)
    device = check_device(device)
    from advtui.evaluation import evaluate_run  # torch: loaded by this command only

    eps_values = parse_eps_list(eps)
    registry = open_registry(runs_dir)
    interactive = sys.stderr.isatty() and not as_json
    reports = []
    for value in eps_values:
        with EvalProgressDisplay(interactive, sys.stderr if as_json else None) as display:
            reports.append(evaluate_run(
                registry, run_ref, attacks, limit=limit, batch_size=batch_size, eps=value,
                step_size=step_size, seed=seed, checkpoint=checkpoint, device=device, cascade=cascade,
                data_root=data_root, on_progress=display))
        if not as_json:
            _print_eval_report(reports[-1])
    if as_json:
        data = [r.to_dict() for r in reports]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))


def parse_eps_list(text: str | None) -> list[float | None]:
    """--eps: one radius or several, comma-separated, each a number in [0, 1]; [None] for the
    run's own eps. A bad value is a one-line ConfigError before anything runs."""
    if text is None:
        return [None]
    values: list[float | None] = []
    for part in text.split(","):
        try:
            value = float(part.strip())
        except ValueError:
            raise ConfigError(f"--eps takes numbers in [0, 1], comma-separated (0.1,0.2,0.3), got {text!r}") from None
        check_eval_options(eps=value)  # NaN, inf and values outside [0, 1] are one line
        if value not in values:
            values.append(value)
    return values


def _print_eval_report(report) -> None:
    s = report.settings
    out = _output_console()
    out.print(f"[bold]{report.run_id}[/] ({report.run_name}) checkpoint "
              f"{describe_checkpoint(report.checkpoint_kind, report.checkpoint_epoch)} {report.checkpoint} "
                  f"[dim]{report.checkpoint_hash}[/]: eps {s['eps']:g}, step {s['step_size']:g}, n {s['n']} "
                  f"({s['examples']}), seed {s['seed']}, {s['device']}, {fmt_duration(report.wall_time)}")
    out.print(_eval_table(report))
    out.print("[dim]Robust = correct at x and at x'. Attacks ran only on the examples correct at x "
                  "(which cannot change a column)" + ("; * = cumulative (cascade): robust to this and every "
                                                      "earlier attack." if s["cascade"] else ".") + "[/]")


def rich_comparison(comparison) -> Table:
    """The comparison model (advtui.compare.Comparison) as a rich Table: best per column in bold
    green, cells not comparable with their column in yellow."""
    table = Table(header_style="bold", box=None)
    for head in (["run", "defense"] if comparison.by == "run" else ["defense", "runs"]):
        table.add_column(head)
    for column in comparison.columns:
        table.add_column(column.label, justify="left" if column.group == "config" else "right", no_wrap=True)
    for row in comparison.rows:
        lead = [row.label, row.defense or "-"] if comparison.by == "run" else [row.label, str(len(row.run_ids))]
        if comparison.baseline == row.key:
            lead[0] += " (baseline)"
        cells = []
        for column in comparison.columns:
            cell = row.cells.get(column.key)
            text = escape(format_cell(cell, column, comparison.by)) if cell else "-"
            style = "bold green" if cell and cell.best else "yellow" if cell and (cell.marks or cell.flags) else ""
            cells.append(f"[{style}]{text}[/]" if style else text)
        table.add_row(*lead, *cells)
    return table


def _selected(runs_dir, refs, group, defense):
    registry = open_registry(runs_dir)
    defenses = [d for value in defense or [] for d in value.split(",") if d.strip()]
    return registry, select_runs(registry, refs or [], group, defenses)


def _comparison(runs_dir, refs, group, defense, by, attacks, **options):
    if by not in ROW_KINDS:
        raise ConfigError(f"--by must be one of: {', '.join(ROW_KINDS)}, got {by!r}")
    registry, runs = _selected(runs_dir, refs, group, defense)
    return build_comparison(registry, runs, by=by, attacks=attacks, **options)


def _paired_table(report) -> Table:
    table = Table(header_style="bold", box=None)
    per_seed = report.by == "defense"
    heads = ["attack"] + (["seed"] if per_seed else []) + ["n shared", report.side_a, report.side_b,
                                                             "difference", "95% interval", "McNemar p"]
    for head in heads:
        table.add_column(escape(str(head)), justify="left" if head in ("attack", "seed") else "right")
    for column in report.columns:
        for pair in column.pairs:
            lead = [column.label] + ([str(pair.seed)] if per_seed else [])
            t = pair.test
            if t is None:
                table.add_row(*lead, "0", "-", "-", "no shared examples", "-", "-")
                continue
            style = "bold" if t.p < 0.05 else ""
            table.add_row(*lead, str(t.n), f"{t.accuracy_a:.2f}", f"{t.accuracy_b:.2f}",
                          f"[{style}]{t.difference:+.2f}[/]" if style else f"{t.difference:+.2f}",
                          f"[{t.low:+.2f}, {t.high:+.2f}]", f"{t.p:.3g}")
        summary = column.over_seeds
        if per_seed and summary is not None:
            wilcoxon = f"Wilcoxon p {summary.wilcoxon_p:.3g}" if summary.wilcoxon_p is not None else ""
            std = f" ± {summary.std:.2f}" if summary.std is not None else ""
            table.add_row(f"[bold]{escape(column.label)}[/]", "mean", "", "", "",
                          f"[bold]{summary.mean:+.2f}{std}[/]", escape(summary.interval_text), wilcoxon)
    return table


def _paired(runs_dir, refs, group, defense, attacks, eps, prefer, as_json) -> None:
    from advtui.paired import paired_report

    registry, runs = _selected(runs_dir, refs, group, defense)
    wanted = [a.strip() for a in attacks.split(",")] if attacks else None
    report = paired_report(registry, runs, eps=eps, prefer=prefer, attacks=wanted)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    out = _output_console()
    out.print(f"[bold]{escape(str(report.side_a))}[/] vs [bold]{escape(str(report.side_b))}[/], paired on shared examples")
    out.print(_paired_table(report))
    for note in report.notes:
        out.print(f"[dim]{escape(note)}[/]")


def _curves(runs_dir, refs, group, defense, png, as_json) -> None:
    from advtui.curves import audit_run, curves_plot_text, save_curves_png

    registry, runs = _selected(runs_dir, refs, group, defense)
    audits = [audit_run(registry, record) for record in runs]
    if not any(a.curves for a in audits):
        raise ConfigError("no robustness curve yet: evaluate one attack at several eps (`advtui eval RUN --attacks "
                          "pgd-100 --eps 0.1,0.2,0.3,0.4`) or with several step counts (--attacks pgd-10,pgd-20,pgd-50,pgd-100)")
    written = save_curves_png(audits, png) if png is not None else None
    if as_json:
        print(json.dumps({"runs": [{"run_id": a.run_id, "curves": [c.to_dict() for c in a.curves],
                                    "findings": a.findings} for a in audits],
                          "png": str(written) if written else None}, indent=2))
        return
    out = _output_console()
    for kind in ("eps", "steps"):
        text = curves_plot_text(audits, kind, width=min(out.width, 110))
        if text:
            out.print(Text.from_ansi(text))
    table = Table(header_style="bold", box=None)
    for head in ("run", "curve", "held fixed", "points: x accuracy [95% interval] n"):
        table.add_column(head)
    for audit in audits:
        for c in audit.curves:
            points = "  ".join(f"{p.x:g}: {p.accuracy:.2f} [{p.low:.1f}–{p.high:.1f}] n={p.n}" for p in c.points)
            table.add_row(escape(audit.run_label), f"{c.kind}: {escape(c.series)}", c.at, points)
    out.print(table)
    findings = [(a.run_label, f) for a in audits for f in a.findings]
    for label, f in findings:
        out.print(f"[yellow]audit {escape(label)} ({f['code']}): {escape(f['message'])}[/]")
    if not findings:
        out.print("[green]audit: no finding[/] on these results")
    if written:
        err_console.print(f"wrote {written}")


RefsArgument = typer.Argument(None, metavar="[RUN]...", help="Runs to compare (ids, prefixes or names).")
GroupOption = typer.Option(None, "--group", "-g", help="All runs of this group.")
DefenseOption = typer.Option(None, "--defense", "-d", help="Only these defenses (repeat or comma-separate).")
ByOption = typer.Option("run", "--by", help="Rows per run, or per defense (lowest over seeds, mean ± std).")
ColumnsOption = typer.Option(None, "--attacks", "-a", help="Attack columns to show, in this order (default: all evaluated).")
EpsOption = typer.Option(None, "--eps", help="Show the results evaluated at this eps (default: the eps most attacks were "
                                              "evaluated at).")
PreferOption = typer.Option("largest", "--prefer", help="Between results of one attack on different samples: "
                                                        "largest (more examples) or latest.")


@app.command()
def compare(
    refs: Optional[list[str]] = RefsArgument,
    group: Optional[str] = GroupOption,
    defense: Optional[list[str]] = DefenseOption,
    by: str = ByOption,
    attacks: Optional[str] = ColumnsOption,
    eps: Optional[float] = EpsOption,
    prefer: str = PreferOption,
    strict: bool = typer.Option(False, "--strict", help="Refuse a column that mixes eps, example sets or checkpoints."),
    diff: bool = typer.Option(False, "--diff", help="Add the config fields that differ between the runs."),
    at: Optional[str] = typer.Option(None, "--at", help="Add per-epoch metrics at the best epoch, the final one, or "
                                                        "epoch N (best, final, N), with min and max over epochs."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Show every other row's difference to this run."),
    paired: bool = typer.Option(False, "--paired", help="Two runs (or two defenses over matched seeds): per attack, "
                                                        "the difference on shared examples, its 95% interval and "
                                                        "the exact McNemar p."),
    curves: bool = typer.Option(False, "--curves", help="Draw robust accuracy against eps and against attack "
                                                        "iterations, from every stored result, with the audit's findings."),
    png: Optional[Path] = typer.Option(None, "--png", help="With --curves: also write the curves to this PNG file."),
    runs_dir: Optional[Path] = RunsDirOption,
    as_json: bool = typer.Option(False, "--json", help="Print the table model as JSON."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="One row per combination of this sweep, seeds aggregated."),
    sort: Optional[str] = typer.Option(None, "--sort", help="With --sweep: the metric rows are sorted by (default val-robust)."),
) -> None:
    """Runs side by side: attack columns with n and 95% intervals, min, worst-case, inner-maximizer
    parameters, time per epoch; --paired tests two runs or defenses against each other; --sweep
    gives one row per combination of a sweep."""
    check_eval_options(eps=eps)
    if sweep is not None:
        if refs or group or defense:
            raise ConfigError("--sweep selects the runs itself: drop the RUN arguments, --group and --defense")
        from advtui.cli.sweep import print_sweep_comparison

        print_sweep_comparison(runs_dir, sweep, sort, as_json)
        return
    if sort is not None:
        raise ConfigError("--sort goes with --sweep")
    if png is not None and not curves:
        raise ConfigError("--png goes with --curves: add --curves")
    if curves:
        _curves(runs_dir, refs, group, defense, png, as_json)
        return
    if paired:
        _paired(runs_dir, refs, group, defense, attacks, eps, prefer, as_json)
        return
    comparison = _comparison(runs_dir, refs, group, defense, by, attacks, strict=strict, eps=eps, prefer=prefer,
                             diff=diff, at=at, baseline=baseline)
    if as_json:
        print(render(comparison, "json"), end="")
        return
    out = _output_console()
    out.print(rich_comparison(comparison))
    for note in comparison.notes:
        out.print(f"[dim]{escape(note)}[/]")
    out.print("[dim][bold green]bold green[/]: best in its column, ahead of the runner-up on a paired test at 5%; "
              "[yellow]yellow[/]: a flag (!) or a cell not comparable with its column (≠), named above.[/]")


EXPORT_FORMATS = (*FORMATS, "robustbench")


def _export_robustbench(refs, group, defense, out, checkpoint, runs_dir) -> None:
    if group or defense or len(refs or []) != 1:
        raise ConfigError("--format robustbench exports one run: name exactly one RUN (no --group or --defense)")
    from advtui.evaluation import export_robustbench  # torch: loaded by this format only

    done = export_robustbench(open_registry(runs_dir), refs[0], out or Path("robustbench"), checkpoint)
    card = done.card
    err_console.print(f"wrote {done.weights} (state dict) and {done.card_path} (model card: {card['architecture']}, "
                      f"eps {card['eps']}, clean {card['clean_acc']}% (n={card['clean_acc_n']}), "
                      f"AutoAttack {card['autoattack_acc']}% (n={card['autoattack_acc_n']}))")


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
