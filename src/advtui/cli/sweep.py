"""``advtui sweep``: training options over a grid or at random, seeds included, queued as one."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from advtui import sweep as sweeps
from advtui.cli.common import RunsDirOption, console, err_console, open_registry
from advtui.cli.train_options import TRAIN_OPTIONS, build_config_from_options, with_train_options
from advtui.options import MAX_INT, MAX_SEED, check_int, check_priority
from advtui.core.errors import ConfigError
from advtui.jobs.queue import parse_seeds
from advtui.jobs.scheduler import read_holder

app = typer.Typer()  # sweep: a command of the root


class TyperOptions:
    """The training options of ``advtui run`` as Typer builds them from TRAIN_OPTIONS: a swept
    value goes through the very converter its flag would."""

    def __init__(self) -> None:
        probe = typer.Typer()

        @probe.command()
        @with_train_options
        def _probe(*, train_options: dict) -> None:  # pragma: no cover - only its parameters are read
            pass

        self.params = {p.name: p for p in typer.main.get_command(probe).params if p.name}

    def name(self, text: str) -> str:
        name = text.strip().lstrip("-").replace("-", "_")
        if name not in self.params:
            raise ConfigError(f"unknown training option {text.strip()!r}: a sweep takes the options of "
                              f"`advtui run --help` (e.g. rnn-lr, inner-steps, defense)")
        if name in sweeps.NOT_SWEPT:
            raise ConfigError(f"{sweeps.flag(name)} cannot be swept: " + (
                "give seeds with --seeds" if name == "seed" else "a sweep names and groups its runs (--name names the sweep)"))
        return name

    def kind(self, name: str) -> str:
        annotation = self.params[name].type_descriptor.annotation
        return {int: "int", float: "float", bool: "bool"}.get(annotation, "str")

    def convert(self, name: str, value: Any) -> Any:
        param = self.params[name]
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = repr(value)
        elif isinstance(value, (int, str)):
            text = str(value)
        else:
            raise ConfigError(f"{sweeps.flag(name)}: {value!r} is not a value (a number, a word or true/false)")
        try:  # the coercion typer applies to the flag's own value on the command line
            return param.get_runtime_param().coerce(text.strip(), param=param, ctx=None)
        except typer.BadParameter as exc:
            raise ConfigError(f"{sweeps.flag(name)}={text}: {exc.format_message()}") from None


@functools.cache
def typer_options() -> TyperOptions:
    return TyperOptions()


def build_run_config(options: dict[str, Any], **fixed: Any):
    """A run's config through ``advtui run``'s own path (presets, overrides, validation)."""
    every = {name: None for name, _, _ in TRAIN_OPTIONS}
    return build_config_from_options({**every, **options}, **fixed)


def spec_from_flags(train_options: dict[str, Any], grid: list[str], seeds: Optional[str], random_n: int,
                    random_seed: int, order: str, priority: int, auto_eval: Optional[str],
                    auto_eval_limit: Optional[int]) -> sweeps.SweepSpec:
    options = typer_options()
    swept: dict[str, Any] = {}
    for text in grid:
        name, values = sweeps.parse_grid(options, text)
        if name in swept:
            raise ConfigError(f"--grid {sweeps.flag(name)} is given twice: list all its values in one --grid")
        swept[name] = values
    given = {k: v for k, v in train_options.items() if v is not None and v is not False}
    if given.get("group") is not None:
        raise ConfigError("--group is the sweep's own: its runs are grouped under the sweep --name")
    if given.get("seed") is not None and seeds:
        raise ConfigError("give either --seed or --seeds")
    seed_list = parse_seeds(seeds) if seeds else [given.get("seed", 0)]
    fixed = {k: v for k, v in given.items() if k not in ("name", "group", "seed")}
    both = [k for k in fixed if k in swept]
    if both:
        raise ConfigError(f"{sweeps.flag(both[0])} is both fixed (--{sweeps.flag(both[0])}) and swept (--grid): give one")
    if random_n < 0:
        raise ConfigError(f"--random must be 0 (the whole grid) or a number of combinations, got {random_n}")
    # Checked before any sampling: a huge N would otherwise draw for ever.
    check_int("--random", random_n, 0, sweeps.MAX_SWEEP_RUNS)
    check_int("--random-seed", random_seed, 0, MAX_SEED)
    check_priority(priority)
    if auto_eval_limit is not None:
        check_int("--auto-eval-limit", auto_eval_limit, 1, MAX_INT)
    name = given.get("name") or default_name(fixed, swept)
    return sweeps.SweepSpec(name=name, fixed=fixed, grid=swept, seeds=seed_list, random=random_n,
                            random_seed=random_seed, order=order, priority=priority, auto_eval=auto_eval,
                            auto_eval_limit=auto_eval_limit)


def default_name(fixed: dict[str, Any], swept: dict[str, Any]) -> str:
    """DEFENSE-OPTION-OPTION (e.g. rnn-adv-rnn-lr-inner-steps) when no --name is given."""
    head = fixed.get("defense") or "sweep"
    return "-".join([head, *(sweeps.flag(k) for k in swept)])


def runs_table(spec: sweeps.SweepSpec, states: list[sweeps.RunState]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("run", "name", "seed", *(sweeps.flag(k) for k in spec.grid), "status"):
        table.add_column(column)
    for state in states:
        values = [sweeps.value_text(state.combination.values[k]) for k in spec.grid]
        table.add_row(state.key, sweeps.run_name(spec.name, state.combination, state.seed), str(state.seed), *values,
                      state.status)
    return table


@app.command("sweep")
@with_train_options
def sweep_command(
    grid: Optional[list[str]] = typer.Option(None, "--grid", "-G", metavar="NAME=V1,V2",
                                             help="A swept option and its values (repeat); NAME=LOW:HIGH with --random."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Seeds of every combination, e.g. 0,1,2 or 0-4."),
    random_n: int = typer.Option(0, "--random", metavar="N", help="Sample N combinations instead of the whole grid."),
    random_seed: int = typer.Option(0, "--random-seed", help="Seed of the sampling and of --order shuffled."),
    order: str = typer.Option("given", "--order", help="given (the grid's order) or shuffled."),
    priority: int = typer.Option(0, "--priority", help="Higher starts first."),
    auto_eval: Optional[str] = typer.Option(None, "--auto-eval", metavar="ATTACKS",
                                            help="Evaluate each run with these attacks once it has finished, e.g. natural,pgd-10."),
    auto_eval_limit: Optional[int] = typer.Option(None, "--auto-eval-limit", help="Test examples for the auto-eval."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="A sweep file (TOML), instead of the flags."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs and print the sweep file; queue nothing."),
    print_file: bool = typer.Option(False, "--print-file", help="Print the sweep file that reproduces this sweep."),
    yes: bool = typer.Option(False, "--yes", "-y", help=f"Queue a sweep of more than {sweeps.MAX_RUNS_WITHOUT_YES} runs."),
    runs_dir: Optional[Path] = RunsDirOption,
    *,
    train_options: dict[str, Any],
) -> None:
    """Queue a sweep: training options over a grid (or at random), every combination with each
    seed, checked before any run is queued. Running it again queues only the missing or failed runs.

    --name names the sweep (its runs are NAME-cI-sSEED, in group NAME); the other training options
    are fixed for every run."""
    if file is not None:
        flags = [k for k, v in train_options.items() if v not in (None, False)]
        own = {"grid": grid, "seeds": seeds, "random": random_n, "random-seed": random_seed,
               "order": order != "given", "priority": priority, "auto-eval": auto_eval, "auto-eval-limit": auto_eval_limit}
        flags += [k for k, v in own.items() if v not in (None, 0, False, [])]
        if flags:
            raise ConfigError(f"--file gives the whole sweep: drop --{sweeps.flag(flags[0])} (or edit the file)")
        spec = sweeps.read_file(file, typer_options())
    else:
        spec = spec_from_flags(train_options, grid or [], seeds, random_n, random_seed, order, priority,
                               auto_eval, auto_eval_limit)
    planned = sweeps.plan(spec, build_run_config)
    registry = open_registry(runs_dir)
    if dry_run or print_file:
        states = sweeps.match_runs(registry, spec, planned) if registry.root.exists() else [
            sweeps.RunState(p.combination, p.seed, None, p) for p in planned]
        combos = len({p.combination.index for p in planned})
        console.print(f"sweep [bold]{spec.name}[/]: {combos} combination(s) x {len(spec.seeds)} seed(s) = "
                      f"{len(planned)} run(s), every config checked")
        console.print(runs_table(spec, states))
        console.print("[dim]# the sweep file (advtui sweep --file FILE):[/]")
        console.print(sweeps.to_toml(spec), markup=False, end="")
        if dry_run:
            return
    sweeps.check_size(planned, yes)
    again = sweeps.check_same_definition(registry.root, spec)
    outcome = sweeps.queue_sweep(registry, spec, planned)
    _say_outcome(spec, outcome, again, registry.root)
    if (outcome.new or outcome.again) and read_holder(registry.root) is None:
        err_console.print("[dim]no scheduler is running: start `advtui worker` (or open the dashboard)[/]")


def _keys(states: list[sweeps.RunState]) -> str:
    keys = [s.key for s in states]
    return ", ".join(keys[:12]) + (f" and {len(keys) - 12} more" if len(keys) > 12 else "")


def _say_outcome(spec: sweeps.SweepSpec, outcome: sweeps.QueueOutcome, again: bool, root: Path) -> None:
    parts = [f"{len(outcome.new)} new run(s) queued" + (f" ({_keys(outcome.new)})" if outcome.new else "")]
    if outcome.again:
        parts.append(f"{len(outcome.again)} failed or killed run(s) queued again, from their last checkpoint "
                     f"({_keys(outcome.again)})")
    if outcome.kept:
        parts.append(f"{len(outcome.kept)} already queued, running or finished")
    head = f"sweep [bold]{spec.name}[/]" + (" (again)" if again else "")
    console.print(f"{head}: " + "; ".join(parts))
    console.print(f"definition: {sweeps.definition_path(root, spec.name)}; "
                  f"watch in the dashboard, then `advtui compare --sweep {spec.name}`")


# -- compare --sweep and report --sweep ----------------------------------------------------------------
def _stored(runs_dir: Optional[Path], name: str):
    registry = open_registry(runs_dir)
    return registry, sweeps.load_stored(registry.root, name)


def print_sweep_comparison(runs_dir: Optional[Path], name: str, sort: Optional[str], as_json: bool) -> None:
    """`advtui compare --sweep NAME`: one row per combination, seeds aggregated."""
    import json

    from advtui.sweep_results import compare_sweep, format_stat, status_text

    registry, spec = _stored(runs_dir, name)
    comparison = compare_sweep(registry, spec, sort)
    if as_json:
        print(json.dumps(comparison.to_dict(), indent=2))
        return
    table = Table(box=None, header_style="bold", title=f"sweep {spec.name}, sorted by {comparison.sort}",
                  title_justify="left")
    for column in ("comb", *(sweeps.flag(k) for k in spec.grid), "runs"):
        table.add_column(column)
    for metric in comparison.metrics:
        table.add_column(metric, justify="right")
    for row in comparison.rows:
        cells = [format_stat(row.cells.get(m)) for m in comparison.metrics]
        lead = f"c{row.combination.index}" + (" *" if row.best else "")
        values = [sweeps.value_text(row.combination.values[k]) for k in spec.grid]
        style = "bold green" if row.best else None
        table.add_row(lead, *values, status_text(row), *cells, style=style)
    console.print(table)
    for note in comparison.notes:
        console.print(f"[dim]{note}[/]")


def write_sweep_report(runs_dir: Optional[Path], name: str, out: Optional[Path], sort: Optional[str]) -> None:
    """`advtui report --sweep NAME`: each metric against each swept parameter, PNG and terminal."""
    from advtui.sweep_results import compare_sweep, sweep_png, sweep_terminal

    registry, spec = _stored(runs_dir, name)
    comparison = compare_sweep(registry, spec, sort)
    if not comparison.metrics:
        raise ConfigError(f"sweep {name!r} has no measured numbers yet: its runs record them after each epoch")
    path = sweep_png(comparison, (out or registry.root / "report") / f"sweep-{spec.name}.png")
    for chart in sweep_terminal(comparison, comparison.sort, color=sys.stdout.isatty()):
        print(chart)
    console.print(f"wrote {path} ({len(comparison.metrics)} metric(s) x {len(spec.grid)} swept parameter(s))")
