"""``advtui analyze``, ``reproduce`` and ``report``: the paper's figures and tables end to end."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from advtui.cli.common import RunsDirOption, console, err_console, open_registry
from advtui.core.paths import checkpoint_path
from advtui.core.errors import ConfigError
from advtui.jobs.scheduler import read_holder
from advtui.options import check_analysis_options, check_device, check_reproduce_options
from advtui.report import build_report
from advtui.reproduce import apply_reproduction, plan_reproduction, resolution_line, table_spec

# The analyses load torch (advtui.engine) inside their commands only, so the others start fast.

app = typer.Typer()  # analyze (a group), reproduce, report: commands of the root
analyze_app = typer.Typer(help="The analyses behind the paper's figures, on a run's checkpoint.",
                          no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")

DeviceOption = typer.Option("auto", help="auto, cpu, cuda or cuda:N.")


def _checked_run(registry, run_ref: str) -> dict:
    """The run, known to have a checkpoint: checked before torch loads, so bad input fails fast."""
    record = registry.resolve_run(run_ref)
    checkpoint_path(registry, record, "final")  # CheckpointError (one line) when it has none yet
    return record


OutOption = typer.Option(None, "--out", "-o", help="Folder for the PNG and its JSON data (default runs/<run-id>/analysis).")
DataRootOption = typer.Option(None, "--data-root", help="Dataset root (default $ADVTUI_DATA or the run's).")


@analyze_app.command("trajectories")
def analyze_trajectories_command(
    run_ref: str = typer.Argument(..., metavar="RUN", help="The model attacked: run id, id prefix or name."),
    attackers: str = typer.Option("pgd-10", "--attackers", "-a",
                                  help="Attack specs, e.g. pgd-10,rnn-10:RUN2,l2lda-10:RUN3 (grammar of `advtui eval`)."),
    limit: int = typer.Option(200, "--limit", "-n", help="Test examples (class-balanced subset)."),
    eps: Optional[float] = typer.Option(None, help="L-inf radius (default: the run's training eps)."),
    seed: int = typer.Option(0, help="Seed of the attackers' random starts and latent codes."),
    batch_size: int = typer.Option(256, "--batch-size", help="Examples per batch."),
    device: str = DeviceOption,
    out: Optional[Path] = OutOption,
    data_root: Optional[str] = DataRootOption,
    runs_dir: Optional[Path] = RunsDirOption,
) -> None:
    """Mean loss at every attack step of each attacker on the same examples (paper Fig. 2)."""
    check_analysis_options(limit=limit, batch_size=batch_size, eps=eps, seed=seed)
    device = check_device(device)
    registry = open_registry(runs_dir)
    run_ref = _checked_run(registry, run_ref)["id"]
    from advtui.engine.analysis import save_trajectories, trajectories_plot_text
    from advtui.evaluation import analyze_trajectories, default_output_dir

    with err_console.status("attacking..."):
        analysis = analyze_trajectories(registry, run_ref, attackers, limit=limit, batch_size=batch_size, eps=eps,
                                        seed=seed, device=device, data_root=data_root)
    png, data = save_trajectories(analysis, out or default_output_dir(registry, analysis.run_id))
    console.print(Text.from_ansi(trajectories_plot_text(analysis, width=min(console.width, 100))))
    table = Table(box=None, header_style="bold")
    for column in ("attacker", "loss", "x'_0", "x'_1", "x'_K", "accuracy %"):
        table.add_column(column, justify="left" if column in ("attacker", "loss") else "right")
    for curve in analysis.curves:
        values = curve.values
        table.add_row(curve.label, curve.loss, f"{values[0]:.4f}", f"{values[1]:.4f}" if len(values) > 1 else "-",
                      f"{values[-1]:.4f}", f"{curve.accuracy:.2f}")
    console.print(table)
    console.print(f"{analysis.run_id} ({analysis.run_name}): eps {analysis.eps:g}, n {analysis.n} ({analysis.examples}), "
                  f"seed {analysis.seed}")
    console.print(f"wrote {png} and {data}")


@analyze_app.command("landscape")
def analyze_landscape_command(
    run_ref: str = typer.Argument(..., metavar="RUN", help="Run id, id prefix or name."),
    limit: int = typer.Option(1, "--limit", "-n", help="Test examples (the surface is their mean loss)."),
    grid: int = typer.Option(21, "--grid", help="Points per axis."),
    span: Optional[float] = typer.Option(None, help="Each axis covers [-span, span] (default: the run's eps)."),
    seed: int = typer.Option(0, help="Seed of the Rademacher direction."),
    batch_size: int = typer.Option(256, "--batch-size", help="Grid points per batch."),
    device: str = DeviceOption,
    out: Optional[Path] = OutOption,
    data_root: Optional[str] = DataRootOption,
    runs_dir: Optional[Path] = RunsDirOption,
) -> None:
    """Loss over the plane of sign(gradient) and a random Rademacher direction (paper Fig. 3)."""
    check_analysis_options(limit=limit, batch_size=batch_size, seed=seed, grid=grid, span=span)
    device = check_device(device)
    registry = open_registry(runs_dir)
    run_ref = _checked_run(registry, run_ref)["id"]
    from advtui.engine.analysis import landscape_heatmap, save_landscape
    from advtui.evaluation import analyze_landscape, default_output_dir

    with err_console.status("computing the loss surface..."):
        analysis = analyze_landscape(registry, run_ref, limit=limit, grid=grid, span=span, seed=seed,
                                     batch_size=batch_size, device=device, data_root=data_root)
    png, data = save_landscape(analysis, out or default_output_dir(registry, analysis.run_id))
    console.print(landscape_heatmap(analysis))
    console.print(f"{analysis.run_id} ({analysis.run_name}, {analysis.defense}): max loss [bold]{analysis.max_loss:.4f}[/], "
                  f"min {analysis.min_loss:.4f}, clean {analysis.origin_loss:.4f}; span ±{analysis.span:g}, "
                  f"{grid}x{grid} grid, n {analysis.n}")
    console.print(f"wrote {png} and {data}")


@app.command()
def reproduce(
    table: str = typer.Argument(..., metavar="TABLE", help="table1, table3, table4, table5, table6 or table7."),
    scale: str = typer.Option("quick", "--scale", help="full (the paper's recipe) or quick (a CPU rehearsal)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Seeds per defense (default: 5 at full scale, 1 at quick)."),
    device: str = typer.Option("auto", help="Device of the queued runs: auto (a GPU when the worker has one), cpu, cuda."),
    train_limit: Optional[int] = typer.Option(None, "--train-limit", help="Override the scale's training examples."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the scale's epochs."),
    priority: int = typer.Option(0, help="Priority of the queued jobs (higher starts first)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan, queue nothing."),
    autoattack: bool = typer.Option(False, "--autoattack", help="Also evaluate AutoAttack (aa, standard version), an "
                                                                "extra column beyond the paper's (white-box tables)."),
    data_root: Optional[str] = DataRootOption,
    runs_dir: Optional[Path] = RunsDirOption,
) -> None:
    """Queue every training run and evaluation a table of the paper needs (finished ones are reused)."""
    check_reproduce_options(seeds=seeds, train_limit=train_limit, epochs=epochs, priority=priority)
    registry = open_registry(runs_dir)
    overrides = {"train_limit": train_limit, "epochs": epochs}
    if epochs is not None:
        overrides["milestones"] = []  # the preset's decay epochs do not fit a changed length
    plan = plan_reproduction(registry, table, scale, seeds, device=device, data_root=data_root, overrides=overrides,
                             autoattack=autoattack)
    if not dry_run:
        plan = apply_reproduction(registry, plan, priority=priority)
    listing = Table(box=None, header_style="bold", title=f"{plan.table.name} at {plan.scale.name} scale "
                    f"({plan.table.preset}, seeds {', '.join(str(s) for s in plan.seeds)})", title_justify="left")
    for column in ("role", "seed", "run", "action", "job"):
        listing.add_column(column)
    actions = {"queue": "queued" if not dry_run else "would queue", "reuse-finished": "reused (finished)",
               "reuse-active": "reused (queued/running)"}
    for p in plan.runs:
        run = p.run or {}
        listing.add_row(p.role, str(p.seed), f"{run.get('id', '-')} {run.get('name', '')}".strip(), actions[p.action],
                        p.train_job or "-")
    console.print(listing)
    console.print(resolution_line(plan))
    if dry_run:
        console.print(f"dry run: {sum(p.action == 'queue' for p in plan.runs)} run(s) and up to {len(plan.evals)} "
                      "evaluation(s) would be queued")
        return
    queued_evals = [e for e in plan.evals if e.action == "queue"]
    for e in plan.evals:
        what = {"queue": f"queued eval job {e.job['id'] if e.job else '-'} ({len(e.missing)} attack(s))",
                "done": "all results stored", "active": "eval already queued"}[e.action]
        console.print(f"  eval {e.run.run['id']} ({e.run.role} s{e.run.seed}): {what}")
    new_runs = sum(p.action == "queue" for p in plan.runs)
    console.print(f"{new_runs} run(s) and {len(queued_evals)} evaluation(s) queued; "
                  f"then `advtui report --table {plan.table.name}`")
    if (new_runs or queued_evals) and read_holder(registry.root) is None:
        err_console.print("[dim]no scheduler is running: start `advtui worker` (or open the dashboard)[/]")


@app.command()
def report(
    tables: Optional[list[str]] = typer.Option(None, "--table", "-t", help="Only these tables (repeat); default: every reproduced one."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for report.md and figures/ (default runs/report)."),
    device: str = DeviceOption,
    no_analyses: bool = typer.Option(False, "--no-analyses", help="Leave out the Fig. 2 and Fig. 3 analyses."),
    runs_dir: Optional[Path] = RunsDirOption,
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Instead: each metric of this sweep against each swept parameter (PNG and terminal)."),
) -> None:
    """A Markdown report: each reproduced table beside the paper's numbers, with figures."""
    if sweep is not None:
        if tables:
            raise ConfigError("--sweep draws one sweep: drop --table")
        from advtui.cli.sweep import write_sweep_report

        write_sweep_report(runs_dir, sweep, out, None)
        return
    registry = open_registry(runs_dir)
    for problem in registry.record_problems():  # a damaged plan is left out of the report: say which
        print(f"warning: {problem}", file=sys.stderr)
    names = [t for value in tables or [] for t in value.split(",") if t.strip()]
    if names:
        for name in names:
            table_spec(name)  # an unknown table is an error before anything is written
    with err_console.status("writing the report...") as spinner:
        result = build_report(registry, names or None, out, device=device, analyses=not no_analyses,
                              status=lambda message: spinner.update(message))
    for table in result.tables:
        console.print(f"{table.table} ({table.scale}): {table.filled}/{table.cells} cells measured")
    for line in result.pending:
        console.print(f"[yellow]pending[/] {line}")
    console.print(f"wrote {result.path} ({len(result.figures)} figure(s))")
