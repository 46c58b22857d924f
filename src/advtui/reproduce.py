"""Reproducing the paper's tables: which runs and evaluations each table needs, queued as jobs.

``advtui reproduce table3 --scale quick`` plans the training runs of every row of Table 3 (one
per defense and seed), the attacker runs its columns need (the L2LDA generator and the RNN
optimizer of the first seed's l2lda and rnn-adv runs; the surrogates of Table 7) and one
evaluation per row run, then queues them through ``advtui.jobs.queue`` so a worker (or the
dashboard) runs them on free GPUs. An evaluation waits for its own training and for the
trainings of the attacker runs it uses.

Nothing is done twice: a finished run with the same settings (its config, without names,
device, data folder or logging options) is reused, as is a queued or running one whose train
job is active; an evaluation is queued only for the attacks that have no stored result with the
same number of test examples and no active eval job. The plan is recorded in the registry
table ``reproductions`` (one document per table and scale), where ``advtui report`` finds it.

Scales: ``full`` is the paper's recipe (the preset: 100 epochs, the whole training set,
evaluation on the whole test set, five seeds by default). ``quick`` shrinks epochs, data and
the L2LDA generator's width so a table can be rehearsed on a CPU; its numbers are not the
paper's and the report labels them so. ``tiny`` (hidden) is smaller still, for tests.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from advtui.core.config import PRESETS, RunConfig, build_config, default_val_size
from advtui.core.attack_specs import parse_attack
from advtui.core.paths import run_folder
from advtui.store.results import all_results_for_run
from advtui.core.stats import MIN_SEEDS_FOR_INTERVAL, half_width
from advtui.core.status import ACTIVE_JOBS, ACTIVE_RUNS
from advtui.core.errors import ConfigError
from advtui.jobs.queue import queue_eval, queue_train
from advtui.store.registry import JOBS, Registry

REPRODUCTIONS = "reproductions"  # registry table: one plan per (table, scale)
SURROGATE_SEED = 1000  # Table 7's surrogates: "the same architecture ... a different random seed"

# -- the paper's tables ----------------------------------------------------------------------------
# Column spec templates name attacker runs by role: {l2lda} and {rnn-adv} are the first seed's
# runs of those rows; {surrogate:D} is Table 7's surrogate trained with defense D.
WHITE_BOX_COLUMNS = (
    ("Natural", "natural"), ("PGD-10", "pgd-10"), ("PGD-100", "pgd-100"), ("CW100", "cw-100"),
    ("L2LDA", "l2lda-10:{l2lda}"), ("RNN-Adv", "rnn-10:{rnn-adv}"),
)
ALL_DEFENSES = ("plain", "advtrain", "trades", "l2lda", "rnn-adv", "rnn-trades")
ROW_LABELS = {"plain": "Plain", "advtrain": "AdvTrain", "advtrain-bls": "AdvTrain+BLS", "trades": "TRADES",
              "l2lda": "L2LDA", "rnn-adv": "RNN-Adv", "rnn-trades": "RNN-TRADES"}


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    preset: str
    rows: tuple[str, ...]  # defenses, in the paper's order
    columns: tuple[tuple[str, str], ...]  # (paper's column label, attack spec template)
    paper: dict[str, tuple[float, ...]]  # defense -> the paper's numbers, in column order (+ Min last)
    has_min: bool = True
    surrogates: tuple[str, ...] = ()  # defenses of Table 7's surrogate runs
    note: str = ""

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self.columns] + (["Min"] if self.has_min else [])


TABLES: dict[str, TableSpec] = {
    "table1": TableSpec(
        "table1", "Effects of the inner solution quality on robust accuracy (%) (MNIST)", "paper-mnist",
        ("advtrain", "advtrain-bls"), (("Natural", "natural"), ("PGD", "pgd-10"), ("PGD+BLS", "pgd-bls-10")),
        {"advtrain": (96.43, 87.33, 86.09), "advtrain-bls": (96.70, 88.71, 88.00)}, has_min=False,
        note="The paper does not give the attacks' step counts for Table 1: PGD and PGD+BLS use 10 steps here.",
    ),
    "table3": TableSpec(
        "table3", "Robust accuracy under white-box attacks (MNIST, 4-layer CNN)", "paper-mnist", ALL_DEFENSES,
        WHITE_BOX_COLUMNS,
        {"plain": (99.46, 1.04, 0.42, 83.63, 5.94, 0.79, 0.42),
         "advtrain": (99.17, 94.89, 94.28, 98.38, 95.83, 94.39, 94.28),
         "trades": (99.52, 95.77, 95.50, 98.72, 96.03, 95.50, 95.50),
         "l2lda": (98.76, 94.73, 93.22, 97.69, 95.28, 93.16, 93.16),
         "rnn-adv": (99.20, 95.80, 95.62, 98.75, 96.05, 95.51, 95.51),
         "rnn-trades": (99.46, 96.09, 95.83, 98.85, 96.56, 95.80, 95.80)},
    ),
    "table4": TableSpec(
        "table4", "Robust accuracy under white-box attacks (CIFAR-10, VGG-16)", "paper-cifar-vgg16", ALL_DEFENSES,
        WHITE_BOX_COLUMNS,
        {"plain": (93.66, 0.74, 0.09, 0.08, 0.89, 0.43, 0.08),
         "advtrain": (81.11, 42.32, 40.75, 42.26, 43.55, 41.07, 40.75),
         "trades": (78.08, 48.83, 48.30, 45.94, 49.94, 48.38, 45.95),
         "l2lda": (77.47, 35.49, 34.27, 35.31, 36.27, 34.54, 34.27),
         "rnn-adv": (81.22, 44.98, 42.89, 43.67, 46.20, 43.21, 42.89),
         "rnn-trades": (80.76, 50.23, 49.42, 47.23, 51.29, 49.49, 47.23)},
    ),
    "table5": TableSpec(
        "table5", "Robust accuracy under white-box attacks (CIFAR-10, WideResNet)", "paper-cifar-wrn", ALL_DEFENSES,
        WHITE_BOX_COLUMNS,
        {"plain": (95.14, 0.01, 0.00, 0.00, 0.02, 0.00, 0.00),
         "advtrain": (86.28, 46.64, 45.13, 46.64, 48.46, 45.41, 45.13),
         "trades": (85.89, 54.28, 52.68, 53.68, 56.49, 53.00, 52.68),
         "l2lda": (85.30, 45.47, 44.35, 44.19, 47.16, 44.54, 44.19),
         "rnn-adv": (85.92, 47.62, 45.98, 47.26, 49.40, 46.23, 45.98),
         "rnn-trades": (84.21, 56.35, 55.68, 54.11, 58.86, 55.80, 54.11)},
    ),
    "table6": TableSpec(
        "table6", "Generalization to more steps of the learned optimizer (CIFAR-10, VGG-16)", "paper-cifar-vgg16",
        ALL_DEFENSES, (("10", "rnn-10:{rnn-adv}"), ("40", "rnn-40:{rnn-adv}")),
        {"plain": (0.43, 0.03), "advtrain": (41.07, 40.70), "trades": (48.38, 48.27), "l2lda": (34.54, 34.19),
         "rnn-adv": (43.21, 42.89), "rnn-trades": (49.49, 49.28)}, has_min=False,
        note="The RNN-Adv attacker (the learned optimizer of the rnn-adv run) with 10 and 40 steps.",
    ),
    "table7": TableSpec(
        "table7", "Robust accuracy under black-box transfer attacks (CIFAR-10, VGG-16)", "paper-cifar-vgg16",
        ("advtrain", "trades", "l2lda", "rnn-adv", "rnn-trades"),
        (("Plain-Net", "transfer:{surrogate:plain}"), ("PGD-Net", "transfer:{surrogate:advtrain}")),
        {"advtrain": (79.94, 62.57), "trades": (77.01, 65.41), "l2lda": (76.37, 60.32), "rnn-adv": (80.58, 63.17),
         "rnn-trades": (79.54, 67.09)}, has_min=False, surrogates=("plain", "advtrain"),
        note=f"PGD-20 crafted on a surrogate of the same architecture trained with seed {SURROGATE_SEED} "
             "(Plain-Net: natural training; PGD-Net: 10-step PGD adversarial training).",
    ),
}
# Beyond the paper: AutoAttack (standard version) as an optional extra column of the white-box
# tables (``reproduce --autoattack``). It is not part of the paper's Min.
AUTOATTACK_COLUMN = ("AA", "aa")
AUTOATTACK_TABLES = ("table1", "table3", "table4", "table5")

# Table 2: trainable parameters of the inner maximizer and training time per epoch (s).
PAPER_TABLE2 = {"rnn-adv": (120, 268.50), "rnn-trades": (120, 443.52), "l2lda": (500944, 1972.41)}


# -- scales ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    name: str
    train: dict[str, dict[str, Any]]  # dataset -> RunConfig overrides
    eval_limit: dict[str, int | None]  # dataset -> test examples per evaluation (None: all)
    seeds: int  # default number of seeds
    analysis: dict[str, int]  # report figures: trajectory examples, landscape examples and grid
    label: str
    hidden: bool = False


# Quick: a CPU rehearsal of a table. On MNIST, 5 epochs of 5,000 training images in batches of
# 32 at lr 0.05 (5x the recipe's), 10x lower from epoch 4: measured on a 2-core CPU, what
# adversarial training at eps 0.3 from scratch needs to leave its initial plateau and stay above
# 80% natural accuracy (at a constant lr 0.05, advtrain reached 33, 74, 79, 83% clean after epochs
# 1-4 and rnn-adv 29, 69, 82, then 74%; at lr 0.1 in batches of 64 advtrain fell back to chance in
# its second epoch). The L2LDA generator has 16 channels (37k parameters instead of 0.5M: the
# full one alone would take most of a rehearsal's time).
_QUICK_COMMON = dict(milestones=[], eval_limit=200, l2lda_width=16)
_TINY_COMMON = dict(epochs=1, milestones=[], inner_steps=2, batch_size=25, eval_limit=10, test_limit=20,
                    l2lda_width=8, log_every=1)
SCALES: dict[str, Scale] = {
    "full": Scale("full", {"mnist": {}, "cifar10": {}}, {"mnist": None, "cifar10": None}, 5,
                  {"trajectory_limit": 1000, "landscape_limit": 1, "landscape_grid": 21},
                  "full scale: the paper's recipe"),
    "quick": Scale("quick",
                   {"mnist": dict(_QUICK_COMMON, epochs=5, milestones=[4], train_limit=5000, test_limit=500, batch_size=32,
                                   lr=0.05),
                    "cifar10": dict(_QUICK_COMMON, epochs=2, train_limit=1000, test_limit=200, batch_size=64)},
                   {"mnist": 200, "cifar10": 100}, 1,
                   {"trajectory_limit": 200, "landscape_limit": 1, "landscape_grid": 21},
                   "QUICK SCALE (a rehearsal on a slice of the data, a few epochs): not comparable to the paper"),
    "tiny": Scale("tiny",
                  {"mnist": dict(_TINY_COMMON, train_limit=50), "cifar10": dict(_TINY_COMMON, train_limit=50)},
                  {"mnist": 20, "cifar10": 20}, 1,
                  {"trajectory_limit": 20, "landscape_limit": 1, "landscape_grid": 5},
                  "TINY TEST SCALE (a smoke test of the pipeline): meaningless numbers", hidden=True),
}
VISIBLE_SCALES = tuple(name for name, scale in SCALES.items() if not scale.hidden)

# Config fields that do not change what a run learns: a finished run that differs from the plan
# only in these is reused.
NOT_IDENTITY = ("name", "group", "preset", "device", "data_root", "test_limit", "eval_limit", "log_every",
                "compare_every")


def table_spec(name: str) -> TableSpec:
    key = name.lower().strip()
    if key in TABLES:
        return TABLES[key]
    raise ConfigError(f"unknown table {name!r}; choose one of: {', '.join(TABLES)}")


def scale_spec(name: str) -> Scale:
    if name in SCALES:
        return SCALES[name]
    raise ConfigError(f"unknown scale {name!r}; choose one of: {', '.join(VISIBLE_SCALES)}")


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    identity = {k: v for k, v in config.items() if k not in NOT_IDENTITY}
    # The validation images held out, as trained: a planned run's default (None) is what its
    # record will say once started, and a run recorded before validation splits held out none.
    held_out = config.get("val_size", 0)
    identity["val_size"] = default_val_size(config.get("train_limit")) if held_out is None else held_out
    return identity


def scaled_config(table: TableSpec, scale: Scale, defense: str, seed: int, *, device: str = "auto",
                  data_root: str | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The RunConfig of one row run: the table's preset, the scale's shrinking, then ``overrides``."""
    dataset = PRESETS[table.preset]["dataset"]
    values = {**scale.train[dataset], **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return build_config(defense, table.preset, seed=seed, device=device, data_root=data_root, **values)


# -- the plan --------------------------------------------------------------------------------------
@dataclass
class PlannedRun:
    role: str  # defense of a row, or "surrogate:<defense>"
    seed: int
    config: RunConfig
    run: dict[str, Any] | None = None  # the reused record, or the queued one after apply
    action: str = "queue"  # queue | reuse-finished | reuse-active
    train_job: str | None = None  # the active train job to wait for


@dataclass
class PlannedEval:
    run: PlannedRun
    attacks: list[str]  # spec templates resolved to run ids (after apply)
    missing: list[str] = field(default_factory=list)  # attacks still to evaluate
    action: str = "queue"  # queue | done | active
    job: dict[str, Any] | None = None


@dataclass
class Reproduction:
    table: TableSpec
    scale: Scale
    seeds: list[int]
    runs: list[PlannedRun]
    evals: list[PlannedEval]
    eval_options: dict[str, Any]
    extra_columns: tuple[tuple[str, str], ...] = ()  # (label, spec) beyond the paper's columns

    def rows(self) -> dict[str, list[PlannedRun]]:
        out: dict[str, list[PlannedRun]] = {}
        for planned in self.runs:
            if not planned.role.startswith("surrogate:"):
                out.setdefault(planned.role, []).append(planned)
        return out

    def role_run(self, role: str) -> PlannedRun:
        """The attacker run of a role: the first seed's run of a row, or a surrogate."""
        return next(p for p in self.runs if p.role == role)


def _unique_name(registry: Registry, base: str, taken: set[str]) -> str:
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name


def _recorded_config(record: dict[str, Any]) -> dict[str, Any]:
    """A record's config with today's fields filled in, except that a record without
    ``val_size`` (written before validation splits) held out none."""
    recorded = record.get("config") or {}
    config = RunConfig.from_dict(recorded).to_dict()
    if "val_size" not in recorded:
        config["val_size"] = 0
    return config


def _find_reusable(registry: Registry, config: RunConfig, runs: list[dict[str, Any]], jobs: list[dict[str, Any]]):
    """A finished run with the same identity (final checkpoint on disk), else a queued/running one
    whose train job is active: (record, action, active train job id)."""
    wanted = run_identity(config.to_dict())
    same = [r for r in runs if run_identity(_recorded_config(r)) == wanted]
    for record in sorted(same, key=lambda r: -(r.get("ended") or 0)):
        final = (record.get("checkpoints") or {}).get("final")
        if record.get("status") == "finished" and final and (run_folder(registry, record) / final).exists():
            return record, "reuse-finished", None
    for record in same:
        active = [j for j in jobs if j.get("run_id") == record["id"] and j.get("kind") == "train"
                  and j.get("status") in ACTIVE_JOBS]
        if record.get("status") in ACTIVE_RUNS and active:
            return record, "reuse-active", active[-1]["id"]
    return None, "queue", None


def plan_reproduction(registry: Registry, table_name: str, scale_name: str = "quick", seeds: int | None = None, *,
                      device: str = "auto", data_root: str | None = None,
                      overrides: dict[str, Any] | None = None, autoattack: bool = False) -> Reproduction:
    """What ``table_name`` needs at ``scale_name``: the row runs (one per defense and seed), the
    surrogates, and one evaluation per row run; each marked to queue or reuse. ``autoattack``
    adds AutoAttack (``aa``) as an extra column beyond the paper's (white-box tables only)."""
    table, scale = table_spec(table_name), scale_spec(scale_name)
    if autoattack and table.name not in AUTOATTACK_TABLES:
        raise ConfigError(f"--autoattack adds a white-box column: it goes with {', '.join(AUTOATTACK_TABLES)}, "
                          f"not {table.name}")
    n_seeds = scale.seeds if seeds is None else seeds
    if n_seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {n_seeds}")
    if n_seeds >= SURROGATE_SEED:
        raise ConfigError(f"--seeds must be below {SURROGATE_SEED} (the surrogates' seed)")
    seed_list = list(range(n_seeds))
    dataset = PRESETS[table.preset]["dataset"]
    runs_now, jobs_now = registry.runs(), registry.all(JOBS)
    planned: list[PlannedRun] = []
    for defense in table.rows:
        for seed in seed_list:
            planned.append(PlannedRun(defense, seed, scaled_config(table, scale, defense, seed, device=device,
                                                                    data_root=data_root, overrides=overrides)))
    for defense in table.surrogates:
        planned.append(PlannedRun(f"surrogate:{defense}", SURROGATE_SEED, scaled_config(
            table, scale, defense, SURROGATE_SEED, device=device, data_root=data_root, overrides=overrides)))
    # Attacker roles a column needs but the rows lack (none of the paper's tables, but keep it safe).
    for _, template in table.columns:
        for role in _roles(template):
            if not any(p.role == role for p in planned):
                defense = role.split(":", 1)[-1]
                planned.append(PlannedRun(role, seed_list[0], scaled_config(
                    table, scale, defense, seed_list[0], device=device, data_root=data_root, overrides=overrides)))
    for p in planned:
        p.run, p.action, p.train_job = _find_reusable(registry, p.config, runs_now, jobs_now)
    reproduction = Reproduction(table, scale, seed_list, planned, [],
                                {"limit": scale.eval_limit[dataset]}, (AUTOATTACK_COLUMN,) if autoattack else ())
    for p in planned:
        if not p.role.startswith("surrogate:") and p.role in table.rows:
            reproduction.evals.append(PlannedEval(p, []))
    return reproduction


def _roles(template: str) -> list[str]:
    return re.findall(r"\{([^}]+)\}", template)


def resolve_attacks(reproduction: Reproduction) -> list[str]:
    """The table's attack specs with attacker roles replaced by run ids (runs must be known), in
    the canonical form results are stored under (``transfer:ID`` is ``transfer-pgd-20:ID``)."""
    specs = []
    for _, template in reproduction.table.columns:
        text = template
        for role in _roles(template):
            run = reproduction.role_run(role).run
            if run is None:
                raise ConfigError(f"attacker run for {role} is not planned yet")
            text = text.replace("{" + role + "}", run["id"])
        specs.append(parse_attack(text).text)
    return specs + [parse_attack(spec).text for _, spec in reproduction.extra_columns]


def _stored_attacks(registry: Registry, run_id: str, limit: int | None) -> set[str]:
    """Attack specs with a stored result for the run's most recent checkpoint on ``limit`` examples."""
    # Every stored sample size counts, not only the one a comparison would show.
    return {doc["attack"] for doc in all_results_for_run(registry, run_id)
            if (doc.get("settings") or {}).get("limit") == limit}


def _active_eval_attacks(jobs: list[dict[str, Any]], run_id: str, options: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for job in jobs:
        if (job.get("kind") == "eval" and job.get("run_id") == run_id and job.get("status") in ACTIVE_JOBS
                and (job.get("eval_options") or {}).get("limit") == options.get("limit")):
            found.update(job.get("attacks") or [])
    return found


def apply_reproduction(registry: Registry, reproduction: Reproduction, *, priority: int = 0) -> Reproduction:
    """Queue what the plan marks to queue (runs first, then evaluations that wait for them) and
    record the plan in the registry."""
    taken = {r.get("name") for r in registry.runs()}
    table, scale = reproduction.table, reproduction.scale
    dataset = PRESETS[table.preset]["dataset"]
    for p in reproduction.runs:
        if p.action != "queue":
            continue
        surrogate = p.role.startswith("surrogate:")
        defense = p.config.defense
        base = f"{'surrogate-' if surrogate else ''}{defense}-{dataset}-{p.config.model}-{scale.name}-s{p.seed}"
        group = f"{table.preset}-{scale.name}" + ("-surrogates" if surrogate else "")
        config = RunConfig.from_dict({**p.config.to_dict(), "name": _unique_name(registry, base, taken),
                                      "group": group}).validate()
        queued = queue_train(registry, config, priority=priority)
        p.run, p.train_job = queued.run, queued.job["id"]
    specs = resolve_attacks(reproduction)  # every spec goes through the one parser
    jobs_now = registry.all(JOBS)
    for e in reproduction.evals:
        run_id = e.run.run["id"]
        e.attacks = list(specs)
        done = _stored_attacks(registry, run_id, reproduction.eval_options["limit"]) if e.run.action == "reuse-finished" else set()
        active = _active_eval_attacks(jobs_now, run_id, reproduction.eval_options)
        e.missing = [s for s in specs if s not in done and s not in active]
        if not e.missing:
            e.action = "done" if all(s in done for s in specs) else "active"
            continue
        waits = sorted({reproduction.role_run(role).train_job for _, t in table.columns for role in _roles(t)}
                       - {None, e.run.train_job})
        e.job = queue_eval(registry, run_id, e.missing, options=reproduction.eval_options, priority=priority,
                           depends_on=waits)
        e.action = "queue"
    _record(registry, reproduction, specs)
    return reproduction


def _record(registry: Registry, reproduction: Reproduction, specs: list[str]) -> None:
    table, scale = reproduction.table, reproduction.scale
    rows = {defense: [p.run["id"] for p in planned] for defense, planned in reproduction.rows().items()}
    surrogates = {p.role: p.run["id"] for p in reproduction.runs if p.role.startswith("surrogate:")}
    columns = [{"label": label, "attack": spec} for (label, _), spec in zip(table.columns, specs)]
    extra = [{"label": label, "attack": spec, "beyond_paper": True}
             for (label, _), spec in zip(reproduction.extra_columns, specs[len(table.columns):])]
    previous = [d for d in registry.all(REPRODUCTIONS) if d.get("table") == table.name and d.get("scale") == scale.name]
    if previous and not extra:  # a later reproduce without --autoattack keeps the column it had
        extra = previous[-1].get("extra_columns") or []
    doc = {"table": table.name, "scale": scale.name, "preset": table.preset, "seeds": reproduction.seeds,
           "rows": rows, "surrogates": surrogates, "columns": columns, "extra_columns": extra,
           "eval_options": reproduction.eval_options,
           "attackers": {role: reproduction.role_run(role).run["id"]
                         for _, t in table.columns for role in _roles(t)},
           "updated": time.time()}
    registry.upsert(REPRODUCTIONS, {"table": table.name, "scale": scale.name}, doc)


TYPICAL_ACCURACY = 85.0  # % at which the resolution is stated: robust accuracy of a good MNIST defense


def resolution_line(reproduction: Reproduction) -> str:
    """What the planned table's numbers will rest on: examples, seeds, and the smallest difference
    between two cells that this can resolve (the exact 95% half-width at TYPICAL_ACCURACY)."""
    limit = reproduction.eval_options.get("limit")
    n = limit if limit is not None else 10_000  # MNIST's and CIFAR-10's test splits alike
    seeds = len(reproduction.seeds)
    width = half_width(TYPICAL_ACCURACY, n)
    over = ("an interval over seeds is given (t, 3 seeds or more)" if seeds >= MIN_SEEDS_FOR_INTERVAL else
            f"with {seeds} seed(s) per defense no interval over seeds (training noise) can be given; "
            f"--seeds {MIN_SEEDS_FOR_INTERVAL} or more for one")
    return (f"Each cell will rest on {n:,} test examples and {seeds} seed(s): at {TYPICAL_ACCURACY:g}% an exact 95% "
            f"interval is ±{width:.1f} points, so smaller differences are not resolved; {over}.")


def reproductions(registry: Registry, tables: list[str] | None = None) -> list[dict[str, Any]]:
    """Recorded plans, full scale before quick, in table order."""
    order = {name: i for i, name in enumerate(TABLES)}
    scales = {name: i for i, name in enumerate(SCALES)}
    wanted = None if not tables else {table_spec(t).name for t in tables}
    docs = [d for d in registry.all(REPRODUCTIONS) if (wanted is None or d.get("table") in wanted)
            and d.get("table") in TABLES and d.get("scale") in SCALES]  # another version's tables: not readable here
    return sorted(docs, key=lambda d: (order.get(d.get("table"), 99), scales.get(d.get("scale"), 99)))
