"""Sweeps: training options over a grid or sampled at random, seeds included, queued as one.

A sweep is a definition (``SweepSpec``): fixed training options, swept options (a list of
values each, or a range ``LOW:HIGH`` for random search), seeds, an order and what the queue
needs (priority, automatic evaluation). Its runs form one group named after the sweep, each
named ``SWEEP-cI-sSEED`` (combination I, counted from 1). The definition is stored as TOML in
``runs/sweeps/NAME.toml``, so ``advtui sweep --file`` repeats it: only the combinations that are
missing, failed or killed are queued again.

Values are converted by the same converters as ``advtui run``'s options (Typer's, given by
``advtui.cli.sweep``), and every run's config is built through the same path (``build_config_from_options``) and validated before
anything is queued.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from advtui.core.config import RunConfig
from advtui.core.atomic import atomic_write_text
from advtui.core.paths import check_safe_name
from advtui.core.errors import AdvtuiError, ConfigError
from advtui.store.registry import Registry

SWEEPS_DIR = "sweeps"
MAX_SWEEP_RUNS = 10_000  # the most runs one sweep may hold, --yes or not: checked before anything is expanded
MAX_RUNS_WITHOUT_YES = 64  # a larger sweep needs --yes: a typo in a grid should not queue hundreds of runs
ORDERS = ("given", "shuffled")
NOT_SWEPT = ("name", "group", "seed")  # a sweep names and groups its runs; seeds have --seeds
SIGNIFICANT_DIGITS = 3  # sampled floats are rounded so that names, tables and the TOML file stay readable
FAILED = ("failed", "killed")  # a re-run queues these again


class SweepFileError(AdvtuiError):
    """A sweep file that cannot be read or parsed."""


@dataclass(frozen=True)
class Range:
    """``LOW:HIGH`` for random search: log-uniform for rates, uniform otherwise, ints for int options."""

    low: Any
    high: Any

    def text(self) -> str:
        return f"{value_text(self.low)}:{value_text(self.high)}"


@dataclass
class SweepSpec:
    name: str
    fixed: dict[str, Any]  # option -> value for every run
    grid: dict[str, list[Any] | Range]  # swept option -> values (or a range, with random)
    seeds: list[int] = field(default_factory=lambda: [0])
    random: int = 0  # 0: the whole grid; N: N combinations sampled
    random_seed: int = 0
    order: str = "given"
    priority: int = 0
    auto_eval: str | None = None
    auto_eval_limit: int | None = None


@dataclass
class Combination:
    index: int  # from 1, in expansion order
    values: dict[str, Any]  # swept option -> value

    def label(self) -> str:
        return " ".join(f"{flag(k)}={value_text(v)}" for k, v in self.values.items())


@dataclass
class PlannedRun:
    combination: Combination
    seed: int
    config: RunConfig

    @property
    def key(self) -> str:
        return f"c{self.combination.index}-s{self.seed}"


# -- options ------------------------------------------------------------------------------------
def flag(name: str) -> str:
    return name.replace("_", "-")


class OptionTable(Protocol):
    """The training options a sweep may name, and their converters (``advtui.cli.sweep`` gives
    the converters of ``advtui run``'s own options, so a value is checked exactly as there)."""

    def name(self, text: str) -> str: ...

    def convert(self, name: str, value: Any) -> Any: ...

    def kind(self, name: str) -> str: ...  # "int", "float", "bool" or "str"


class StoredOptions:
    """For a definition stored by ``queue_sweep``: its names and values were checked when it was
    written, so they are taken as they are (the dashboard reads sweeps without the CLI)."""

    def name(self, text: str) -> str:
        return text.strip().lstrip("-").replace("-", "_")

    def convert(self, name: str, value: Any) -> Any:
        return value

    def kind(self, name: str) -> str:
        return "float"  # a stored range was checked numeric when written; _number reads its ends back


def is_log_scale(name: str) -> bool:
    """Rates are sampled log-uniformly (Bergstra & Bengio 2012): lr, rnn-lr, l2lda-lr, weight-decay."""
    return name == "lr" or name.endswith("_lr") or name == "weight_decay"


def parse_grid(options: OptionTable, text: str) -> tuple[str, list[Any] | Range]:
    """``NAME=V1,V2,...`` or ``NAME=LOW:HIGH`` -> (option, values or Range)."""
    name_text, eq, values_text = text.partition("=")
    if not eq or not name_text.strip():
        raise ConfigError(f"--grid {text!r}: write NAME=V1,V2 (or NAME=LOW:HIGH with --random)")
    name = options.name(name_text)
    if ":" in values_text and "," not in values_text:
        low, _, high = values_text.partition(":")
        return name, make_range(options, name, low, high)
    return name, make_values(options, name, [v for v in values_text.split(",") if v.strip()])


def make_values(options: OptionTable, name: str, raw: list[Any]) -> list[Any]:
    if not raw:
        raise ConfigError(f"{flag(name)} has no values: give at least one, e.g. {flag(name)}=V1,V2")
    values = [options.convert(name, v) for v in raw]
    seen: list[Any] = []
    for value in values:
        if value in seen:
            raise ConfigError(f"{flag(name)} lists {value_text(value)} twice")
        seen.append(value)
    return values


def make_range(options: OptionTable, name: str, low: Any, high: Any) -> Range:
    if options.kind(name) not in ("int", "float"):
        raise ConfigError(f"{flag(name)}={value_text(low)}:{value_text(high)}: a range needs a numeric option; "
                          f"list the values instead ({flag(name)}=A,B)")
    lo, hi = (_number(options.convert(name, end)) for end in (low, high))
    if not lo < hi:
        raise ConfigError(f"{flag(name)}={value_text(lo)}:{value_text(hi)}: the low end must be below the high end")
    if is_log_scale(name) and lo <= 0:
        raise ConfigError(f"{flag(name)}={value_text(lo)}:{value_text(hi)}: a rate is sampled log-uniformly, "
                          f"so its range must be positive")
    return Range(lo, hi)


def _number(value: Any) -> Any:
    """A stored range's ends are text ("1e-4:1e-1"): read back as the numbers they were."""
    if not isinstance(value, str):
        return value
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{value!r} is not a number") from None


# -- expansion ------------------------------------------------------------------------------------
def expand(spec: SweepSpec) -> list[Combination]:
    """The combinations: the whole grid (in the order given), or ``random`` sampled ones."""
    if not spec.grid:
        raise ConfigError("nothing to sweep: give at least one --grid NAME=V1,V2")
    if spec.random:
        return _sample(spec)
    ranges = [name for name, values in spec.grid.items() if isinstance(values, Range)]
    if ranges:
        raise ConfigError(f"{flag(ranges[0])}={spec.grid[ranges[0]].text()} is a range: ranges need --random N")
    names = list(spec.grid)
    return [Combination(i, dict(zip(names, values, strict=True)))
            for i, values in enumerate(itertools.product(*(spec.grid[n] for n in names)), start=1)]


def _sample(spec: SweepSpec) -> list[Combination]:
    """``random`` combinations drawn with ``random_seed``: repeats are drawn again (up to a
    bound), so a small discrete space gives fewer combinations rather than duplicates."""
    rng = random.Random(spec.random_seed)
    found: list[dict[str, Any]] = []
    for _ in range(spec.random * 20):
        if len(found) == spec.random:
            break
        values = {name: _draw(rng, name, choice) for name, choice in spec.grid.items()}
        if values not in found:
            found.append(values)
    return [Combination(i, values) for i, values in enumerate(found, start=1)]


def _draw(rng: random.Random, name: str, choice: list[Any] | Range) -> Any:
    if not isinstance(choice, Range):
        return rng.choice(choice)
    if isinstance(choice.low, int) and not isinstance(choice.low, bool):
        return rng.randint(choice.low, choice.high)
    if is_log_scale(name):
        value = math.exp(rng.uniform(math.log(choice.low), math.log(choice.high)))
    else:
        value = rng.uniform(choice.low, choice.high)
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def run_name(sweep: str, combination: Combination, seed: int) -> str:
    return f"{sweep}-c{combination.index}-s{seed}"


def plan(spec: SweepSpec, build: Callable[..., RunConfig]) -> list[PlannedRun]:
    """Every run of the sweep, each config built (and validated) by ``build`` -- the training
    options' own path, ``build_config_from_options`` -- before anything is queued. The first
    bad combination is one ConfigError naming it."""
    check_safe_name(spec.name, "sweep name")
    if spec.order not in ORDERS:
        raise ConfigError(f"order must be one of: {', '.join(ORDERS)}, got {spec.order!r}")
    if not spec.seeds:
        raise ConfigError("a sweep needs at least one seed (--seeds 0,1,2)")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"seeds {spec.seeds} name a seed twice")
    if spec.random < 0:
        raise ConfigError(f"random must be 0 (the whole grid) or a number of combinations, got {spec.random}")
    combinations = spec.random or math.prod(
        len(values) for values in spec.grid.values() if not isinstance(values, Range))  # a range needs --random
    if combinations * len(spec.seeds) > MAX_SWEEP_RUNS:
        raise ConfigError(f"this sweep would hold {combinations * len(spec.seeds):,} runs, more than "
                          f"{MAX_SWEEP_RUNS:,}: narrow the grid, --random or --seeds")
    runs = []
    for combination in expand(spec):
        for seed in spec.seeds:
            options = {**spec.fixed, **combination.values}
            try:
                config = build(options, seed=seed, group=spec.name, name=run_name(spec.name, combination, seed))
            except ConfigError as exc:
                raise ConfigError(f"combination {combination.index} ({combination.label()}, seed {seed}): {exc}") from None
            runs.append(PlannedRun(combination, seed, config))
    if spec.order == "shuffled":
        random.Random(spec.random_seed).shuffle(runs)
    return runs


def check_size(runs: list[PlannedRun], yes: bool) -> None:
    if len(runs) > MAX_RUNS_WITHOUT_YES and not yes:
        raise ConfigError(f"this sweep has {len(runs)} runs (more than {MAX_RUNS_WITHOUT_YES}): "
                          f"pass --yes to queue them all, or narrow the grid")


def swept_names(spec: SweepSpec) -> list[str]:
    return list(spec.grid)


# -- the TOML file --------------------------------------------------------------------------------
def value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    if isinstance(value, (list, tuple)):
        return ",".join(value_text(v) for v in value)
    return str(value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Range):
        return _toml_value(value.text())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _toml_key(name: str) -> str:
    return flag(name)


def to_toml(spec: SweepSpec) -> str:
    """The file that reproduces ``spec`` (read back by ``from_toml``)."""
    lines = [f"# advtui sweep --file THIS_FILE: {spec.name}",
             f"name = {_toml_value(spec.name)}",
             f"seeds = {_toml_value(spec.seeds)}",
             f"order = {_toml_value(spec.order)}",
             f"random = {spec.random}",
             f"random-seed = {spec.random_seed}",
             f"priority = {spec.priority}"]
    if spec.auto_eval:
        lines.append(f"auto-eval = {_toml_value(spec.auto_eval)}")
    if spec.auto_eval_limit is not None:
        lines.append(f"auto-eval-limit = {spec.auto_eval_limit}")
    lines += ["", "[fixed]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in spec.fixed.items()]
    lines += ["", "[grid]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in spec.grid.items()]
    return "\n".join(lines) + "\n"


_TOP_KEYS = {"name", "seeds", "order", "random", "random-seed", "priority", "auto-eval", "auto-eval-limit",
             "fixed", "grid"}


def from_toml(text: str, source: str = "sweep file", options: OptionTable | None = None) -> SweepSpec:
    """A SweepSpec from TOML text; a file that does not parse or says something unknown is
    one SweepFileError or ConfigError naming ``source``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SweepFileError(f"{source} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise SweepFileError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    for table in ("fixed", "grid"):
        if not isinstance(data.get(table, {}), dict):
            raise SweepFileError(f"{source}: [{table}] must be a table of option = value")
    options = options or StoredOptions()
    try:
        return SweepSpec(
            name=_typed(data, "name", str, source),
            fixed={options.name(k): options.convert(options.name(k), v) for k, v in data.get("fixed", {}).items()},
            grid=dict(_grid_entry(options, k, v, source) for k, v in data.get("grid", {}).items()),
            seeds=[_typed({"seed": s}, "seed", int, source) for s in _typed(data, "seeds", list, source, [0])],
            random=_typed(data, "random", int, source, 0),
            random_seed=_typed(data, "random-seed", int, source, 0),
            order=_typed(data, "order", str, source, "given"),
            priority=_typed(data, "priority", int, source, 0),
            auto_eval=_typed(data, "auto-eval", str, source, None),
            auto_eval_limit=_typed(data, "auto-eval-limit", int, source, None),
        )
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _typed(data: dict, key: str, kind: type, source: str, default: Any = ...) -> Any:
    if key not in data:
        if default is ...:
            raise SweepFileError(f"{source}: {key} is missing")
        return default
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SweepFileError(f"{source}: {key} must be {kind.__name__}, got {value!r}")
    return value


def _grid_entry(options: OptionTable, key: str, value: Any, source: str) -> tuple[str, list[Any] | Range]:
    name = options.name(key)
    if isinstance(value, list):
        return name, make_values(options, name, value)
    if isinstance(value, str) and ":" in value:
        low, _, high = value.partition(":")
        return name, make_range(options, name, low, high)
    raise SweepFileError(f"{source}: grid {key} must be a list of values or \"LOW:HIGH\", got {value!r}")


def read_file(path: Path, options: OptionTable | None = None) -> SweepSpec:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SweepFileError(f"cannot read sweep file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SweepFileError(f"sweep file {path} is not UTF-8 text") from None
    return from_toml(text, str(path), options)


# -- the store ------------------------------------------------------------------------------------
def definition_path(root: Path, name: str) -> Path:
    return Path(root) / SWEEPS_DIR / f"{check_safe_name(name, 'sweep name')}.toml"


def stored_sweeps(root: Path) -> list[str]:
    folder = Path(root) / SWEEPS_DIR
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def load_stored(root: Path, name: str) -> SweepSpec:
    path = definition_path(root, name)
    if not path.exists():
        known = stored_sweeps(root)
        raise ConfigError(f"no sweep {name!r} in {root}" + (f" (sweeps: {', '.join(known)})" if known
                                                            else ": `advtui sweep --name NAME ...` queues one"))
    return read_file(path)


def check_same_definition(root: Path, spec: SweepSpec) -> bool:
    """True when the sweep is stored already (with the same definition); a stored sweep of the
    same name with another definition is an error: its runs would not be this sweep's."""
    path = definition_path(root, spec.name)
    if not path.exists():
        return False
    stored = read_file(path)
    if to_toml(stored) != to_toml(spec):
        raise ConfigError(f"sweep {spec.name!r} exists with another definition ({path}): choose another --name, "
                          f"or `advtui sweep --file {path}` to queue its missing runs")
    return True


@dataclass
class RunState:
    combination: Combination
    seed: int
    record: dict[str, Any] | None  # the latest run of this name in the sweep's group, if any
    planned: PlannedRun | None = None  # its config, where the sweep was planned (not when only watched)

    @property
    def status(self) -> str:
        return (self.record or {}).get("status") or "missing"

    @property
    def key(self) -> str:
        return f"c{self.combination.index}-s{self.seed}"


def match_runs(registry: Registry, spec: SweepSpec, runs: list[PlannedRun] | None = None,
               records: list[dict[str, Any]] | None = None) -> list[RunState]:
    """Each run of the sweep (planned, or every combination and seed) with the stored run of
    its name in the sweep's group: names are SWEEP-cI-sSEED, fixed by the definition."""
    if runs is None:
        pairs = [(c, seed, None) for c in expand(spec) for seed in spec.seeds]
    else:
        pairs = [(p.combination, p.seed, p) for p in runs]
    by_name: dict[str, dict[str, Any]] = {}
    for record in records if records is not None else registry.runs():
        if record.get("group") == spec.name:
            name = record.get("name")
            if name not in by_name or (record.get("created") or 0) >= (by_name[name].get("created") or 0):
                by_name[name] = record
    return [RunState(c, seed, by_name.get(run_name(spec.name, c, seed)), planned) for c, seed, planned in pairs]


@dataclass
class QueueOutcome:
    new: list[RunState]  # queued for the first time
    again: list[RunState]  # failed or killed before: queued again (resumed from their checkpoint)
    kept: list[RunState]  # queued, running or finished already


def queue_sweep(registry: Registry, spec: SweepSpec, runs: list[PlannedRun]) -> QueueOutcome:
    """Store the definition and queue the runs that are missing, failed or killed. Every check
    (attacks, warm starts) is made before the first run is queued."""
    from advtui.jobs.queue import parse_attacks, queue_train, resume, warm_start_dependencies

    if spec.auto_eval:
        parse_attacks(spec.auto_eval)
    states = match_runs(registry, spec, runs)
    new = [s for s in states if s.record is None]
    again = [s for s in states if s.status in FAILED]
    for state in new:
        warm_start_dependencies(registry, state.planned.config.to_dict())
    path = definition_path(registry.root, spec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, to_toml(spec))
    eval_options = {"limit": spec.auto_eval_limit}
    for state in new:
        queue_train(registry, state.planned.config, priority=spec.priority, auto_eval=spec.auto_eval,
                    eval_options=eval_options)
    for state in again:
        resume(registry, state.record["id"], priority=spec.priority)
    return QueueOutcome(new, again, [s for s in states if s.record is not None and s.status not in FAILED])
