"""``advtui report``: the reproduced tables beside the paper's numbers, with figures.

For every table reproduced with ``advtui reproduce`` (the plans in the registry table
``reproductions``), the report builds the measured table with ``advtui.compare`` (rows per
defense, the lowest over seeds as the paper reports, ``min`` over the table's attack columns),
writes each cell as ``measured (paper)``, and draws the two side by side as a PNG. Quick- and
test-scale tables are labelled as such: their numbers come from a slice of the data and a few
epochs and are not comparable to the paper's.

For the white-box tables (3, 4, 5) it adds the paper's analyses on the table's own models:
Fig. 2 (mean loss per attack step of PGD-10, the L2LDA generator and the RNN optimizer, on the
AdvTrain, TRADES, RNN-Adv and RNN-TRADES models) and Fig. 3 (loss landscapes of every row's
model, with their maximum losses), plus the paper's Table 2 (parameters of the inner maximizer,
training time per epoch). Analyses are cached beside the report (PNG + JSON) and recomputed only
when a checkpoint changed.

Beside every table, the learning curve of each of its row runs (read from the ``epoch`` events of
``runs/<run-id>/events.jsonl``: clean and PGD-T accuracy on the validation split, or on the test
split for a run without one, after each epoch), as a markdown table and as small multiples (``figures/<table>-<scale>-learning.png``, one
panel per row defense), so a reader sees whether a row is a run that never learned: a run whose
clean accuracy stays under twice chance for its dataset (``core.health.chance_accuracy``: 20% for
10 classes) at every epoch is flagged.

Output: ``OUT/report.md``, ``OUT/report.json`` (the measured numbers, per table and cell) and
``OUT/figures/*.png`` (+ the figures' data as JSON).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from advtui.compare import EPOCH_TIME, PARAMS, build_comparison
from advtui.core.atomic import atomic_write_json, atomic_write_text
from advtui.core.config import PRESETS
from advtui.core.epochs import epoch_accuracy
from advtui.core.paths import checkpoint_path, run_dir
from advtui.core.digests import file_digest
from advtui.core.stats import half_width, proportion_interval
from advtui.core.status import ACTIVE_JOBS
from advtui.core.errors import AdvtuiError, ConfigError
from advtui.core.events import EVENTS_FILE, LineTail
# One threshold for the live check and the report: twice chance on the run's dataset.
from advtui.core.health import CHANCE_ACCURACY as CHANCE_ACCURACY, DEFAULT_CHANCE_LEVEL, chance_accuracy, chance_level
from advtui.store.registry import JOBS, Registry
from advtui.reproduce import PAPER_TABLE2, ROW_LABELS, SCALES, TABLES, reproductions

FIG2_DEFENSES = ("advtrain", "trades", "rnn-adv", "rnn-trades")  # the paper's four panels
WHITE_BOX_TABLES = ("table3", "table4", "table5")
DEFAULT_REPORT_DIR = "report"
# chance_accuracy(dataset) (from advtui.core.health): % natural accuracy under which a model has not
# learned (CHANCE_ACCURACY, 20%, for 10 classes), for the evaluated Natural column and the learning
# curves alike; chance_level(dataset): % accuracy of a guess (the dotted line of the learning figure).
CHANCE_LEVEL = DEFAULT_CHANCE_LEVEL  # 10 classes
CURVE_POINTS = 6  # epochs shown per run in the markdown (first and last always among them)


@dataclass
class TableResult:
    table: str
    scale: str
    measured: dict[str, dict[str, float | None]]  # defense -> column label -> value (None: missing)
    paper: dict[str, dict[str, float]]
    runs: dict[str, list[str]]
    filled: int
    cells: int
    figures: list[str] = field(default_factory=list)
    curves: dict[str, dict[str, Any]] = field(default_factory=dict)  # run id -> Curve.to_dict()
    uncertainty: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # see _uncertainty


@dataclass
class ReportResult:
    path: Path
    tables: list[TableResult]
    pending: list[str]  # "table4 (quick)": plans without results yet
    figures: list[Path]


Status = Callable[[str], None]


def _note(status: Status | None, message: str) -> None:
    if status is not None:
        status(message)


# -- the measured tables ---------------------------------------------------------------------------
def _comparison(registry: Registry, plan: dict[str, Any]):
    """The comparison model of a plan's row runs, or None when no row has a result yet."""
    known = {r["id"]: r for r in registry.runs()}
    runs = [known[run_id] for defense in TABLES[plan["table"]].rows for run_id in plan["rows"].get(defense, [])
            if run_id in known]
    if not runs:
        return None, []
    attacks = [c["attack"] for c in plan["columns"]]
    try:
        comparison = build_comparison(registry, runs, by="defense", attacks=attacks)
    except ConfigError:  # none of the attacks has a result yet
        return None, runs
    return comparison, runs


def _extra_comparison(registry: Registry, plan: dict[str, Any], runs: list[dict[str, Any]]):
    """The columns beyond the paper's (AutoAttack), compared apart so that they stay out of the
    paper's Min; None when there are none or none has a result yet."""
    extra = [c["attack"] for c in plan.get("extra_columns") or []]
    if not extra or not runs:
        return None
    try:
        return build_comparison(registry, runs, by="defense", attacks=extra)
    except ConfigError:
        return None


def _measured(plan: dict[str, Any], comparison, extra=None) -> dict[str, dict[str, Any]]:
    """defense -> paper column label (then the extra columns' labels) -> the comparison's cell
    (lowest over seeds) or None."""
    spec = TABLES[plan["table"]]
    by_key = {row.key: row for row in comparison.rows} if comparison is not None else {}
    extra_by_key = {row.key: row for row in extra.rows} if extra is not None else {}
    out: dict[str, dict[str, Any]] = {}
    for defense in spec.rows:
        row = by_key.get(defense)
        cells: dict[str, Any] = {}
        for column in plan["columns"]:
            cells[column["label"]] = row.cells.get(column["attack"]) if row else None
        if spec.has_min:
            cells["Min"] = row.cells.get("min") if row else None
        extra_row = extra_by_key.get(defense)
        for column in plan.get("extra_columns") or []:
            cells[column["label"]] = extra_row.cells.get(column["attack"]) if extra_row else None
        out[defense] = cells
    return out


def _value(cell) -> float | None:
    return None if cell is None or cell.value is None else float(cell.value)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _table_markdown(plan: dict[str, Any], measured: dict[str, dict[str, Any]]) -> list[str]:
    spec = TABLES[plan["table"]]
    labels = spec.labels
    extra = [c["label"] for c in plan.get("extra_columns") or []]
    heads = labels + [f"{label} (beyond the paper)" for label in extra]
    lines = ["| Defense | " + " | ".join(heads) + " |", "|:---|" + "---:|" * len(heads)]
    for defense in spec.rows:
        paper = dict(zip(labels, spec.paper[defense]))
        cells = []
        for label in labels + extra:
            cell = measured[defense][label]
            text = _fmt(_value(cell))
            if cell is not None and cell.best:
                text = f"**{text}**"
            if cell is not None and getattr(cell, "flags", None):
                text += "!"
            cells.append(f"{text} ({paper[label]:.2f})" if label in paper else text)
        lines.append(f"| {ROW_LABELS[defense]} | " + " | ".join(cells) + " |")
    return lines


def _interval_markdown(plan: dict[str, Any], measured: dict[str, dict[str, Any]]) -> list[str]:
    """The table's cells again, as their 95% intervals and the examples (and seeds) behind each:
    exact binomial for one run, a t-interval of the mean over seeds from 3 seeds."""
    spec = TABLES[plan["table"]]
    labels = spec.labels + [c["label"] for c in plan.get("extra_columns") or []]
    shown = [c for row in measured.values() for c in row.values() if c is not None and c.value is not None]
    if not shown:
        return []
    sizes = {(c.n, c.count) for c in shown}
    common = len(sizes) == 1  # every cell rests on the same n and seeds: say it once, above the table

    def text(cell: Any) -> str:
        if cell is None or cell.value is None:
            return "–"
        low, high = cell.low, cell.high
        if (low is None or high is None) and cell.count == 1 and cell.n:
            # one seed: the run's own exact binomial interval on its examples
            low, high = proportion_interval(round(cell.value * cell.n / 100), cell.n) or (None, None)
        interval = "–" if low is None or high is None else f"{low:.1f}–{high:.1f}"
        if common:
            return interval
        return f"{interval} (n={cell.n if cell.n else '?'}" + (f", {cell.count} seeds)" if cell.count > 1 else ")")

    n, seeds = next(iter(sizes))
    caption = ("95% intervals of the measured cells (%)"
               + (f", each on {n} test examples and {seeds} seed(s)" if common and n else "")
               + ": exact binomial for one run; over seeds, a t-interval of the mean (3 seeds or more).")
    lines = ["", caption, "", "| Defense | " + " | ".join(labels) + " |", "|:---|" + "---:|" * len(labels)]
    for defense in spec.rows:
        lines.append(f"| {ROW_LABELS[defense]} | " + " | ".join(text(measured[defense][label]) for label in labels)
                     + " |")
    return lines


def _uncertainty(measured: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """defense -> column label -> what the cell rests on: n (test examples per run), runs (seeds),
    and the 95% interval (exact binomial for one run; t over seeds of the mean from 3 seeds)."""
    return {d: {label: {"n": c.n, "runs": c.count, "low": c.low, "high": c.high, "mean": c.mean, "std": c.std}
                for label, c in cells.items() if c is not None and c.value is not None}
            for d, cells in measured.items()}


def _resolution_note(measured: dict[str, dict[str, Any]]) -> str | None:
    """How many examples and seeds the table's numbers rest on, and the smallest difference
    between two cells that this can resolve: the widest 95% half-width among the cells (exact
    binomial at the cell's accuracy on its n), and over seeds the widest half-width of the
    t-interval where there are 3 seeds or more."""
    cells = [c for row in measured.values() for c in row.values() if c is not None and c.value is not None and c.n]
    if not cells:
        return None
    sizes = sorted({c.n for c in cells})
    seeds = sorted({c.count for c in cells})
    widest = max(half_width(c.mean if c.mean is not None else c.value, c.n) or 0.0 for c in cells)
    text = (f"Each number rests on {'/'.join(map(str, sizes))} test examples per run and "
            f"{'/'.join(map(str, seeds))} seed(s). On that many examples a cell's exact 95% interval reaches "
            f"±{widest:.1f} points: differences between cells smaller than that are not resolved")
    seed_widths = [(c.high - c.low) / 2 for c in cells if c.low is not None and c.high is not None and c.count > 1]
    if seed_widths:
        text += f"; over seeds, the 95% t-interval of a mean reaches ±{max(seed_widths):.1f} points"
    elif max(seeds) > 1:
        text += "; an interval over seeds needs 3 seeds or more"
    else:
        text += "; with one seed, nothing here measures training noise"
    return text + ". Bold marks a best only where it is ahead of the runner-up on a paired test over seeds."


def _settings_line(registry: Registry, plan: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    configs = [r.get("config") or {} for r in runs]
    if not configs:
        return ""
    first = configs[0]
    epochs = sorted({c.get("epochs") for c in configs})
    train = first.get("train_limit")
    devices = sorted({(r.get("device") or "-").split(" (")[0] for r in runs if r.get("device")})
    limit = plan["eval_options"].get("limit")
    return (f"Models: {first.get('dataset')}/{first.get('model')}, eps {first.get('eps'):.4g}, "
            f"{'/'.join(str(e) for e in epochs)} epoch{'' if epochs == [1] else 's'} on {'all' if train is None else train} training examples, "
            f"T = {first.get('inner_steps')} inner steps; seeds {', '.join(str(s) for s in plan['seeds'])} "
            f"(each cell is the lowest over seeds, as the paper reports); evaluated on "
            f"{'the whole test set' if limit is None else f'{limit} test examples'}"
            + (f"; trained on {', '.join(devices)}" if devices else "") + ".")


def _pending_jobs(registry: Registry, plan: dict[str, Any]) -> int:
    ids = {run_id for ids in plan["rows"].values() for run_id in ids} | set(plan.get("surrogates", {}).values())
    return sum(1 for j in registry.all(JOBS) if j.get("run_id") in ids and j.get("status") in ACTIVE_JOBS)


# -- figures ---------------------------------------------------------------------------------------
def _bar_chart(plan: dict[str, Any], measured, path: Path) -> Path:
    """Measured (bars) against the paper (black ticks), one group per column."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    spec = TABLES[plan["table"]]
    labels = spec.labels
    fig = Figure(figsize=(max(6.0, 1.3 * len(labels) + 2), 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(spec.rows)
    positions = np.arange(len(labels))
    for k, defense in enumerate(spec.rows):
        xs = positions - 0.4 + width * (k + 0.5)
        values = [_value(measured[defense][label]) for label in labels]
        ax.bar(xs, [v if v is not None else 0 for v in values], width, label=ROW_LABELS[defense])
        ax.scatter(xs, spec.paper[defense], marker="_", color="black", s=60, zorder=3,
                   label="paper" if k == 0 else None)
    ax.set_xticks(positions, labels)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    scale = SCALES[plan["scale"]]
    ax.set_title(f"{spec.name}: measured ({plan['scale']} scale) vs paper (black ticks)"
                 + ("" if scale.name == "full" else " - not comparable"), fontsize=9)
    ax.legend(fontsize=7, ncol=len(spec.rows) + 1, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _cached(path: Path, checkpoint_hash: str, **settings: Any) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("checkpoint_hash") != checkpoint_hash:
        return None
    if any(data.get("report_settings", {}).get(k) != v for k, v in settings.items()):
        return None
    return data


_DIGESTS: dict[tuple[str, float], str] = {}


def _checkpoint_hash(registry: Registry, record: dict[str, Any] | None) -> str | None:
    """The final checkpoint's digest (what results are keyed by), or None when it has none."""
    if not record or not (record.get("checkpoints") or {}).get("final"):
        return None
    try:
        path = checkpoint_path(registry, record, "final")
        key = (str(path), path.stat().st_mtime)
    except (AdvtuiError, OSError):
        return None
    if key not in _DIGESTS:
        _DIGESTS[key] = file_digest(path)
    return _DIGESTS[key]


def _stamp(path: Path, settings: dict[str, Any]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data["report_settings"] = settings
    atomic_write_json(path, data, indent=1)


def _fig2(registry: Registry, plan: dict[str, Any], figures: Path, device: str, status: Status | None) -> list[str]:
    """Fig. 2 panels on this table's models: markdown lines (empty if nothing to draw)."""
    from advtui.engine.analysis import TrajectoryAnalysis, save_trajectories
    from advtui.evaluation import analyze_trajectories

    attackers = plan.get("attackers") or {}
    if "l2lda" not in attackers or "rnn-adv" not in attackers:
        return []
    specs = ["pgd-10", f"l2lda-10:{attackers['l2lda']}", f"rnn-10:{attackers['rnn-adv']}"]
    limit = SCALES[plan["scale"]].analysis["trajectory_limit"]
    lines, rows = [], []
    for defense in FIG2_DEFENSES:
        run_ids = plan["rows"].get(defense) or []
        record = registry.get_run(run_ids[0]) if run_ids else None
        digest = _checkpoint_hash(registry, record)
        sources = [_checkpoint_hash(registry, registry.get_run(a)) for a in (attackers["l2lda"], attackers["rnn-adv"])]
        if digest is None or None in sources:
            rows.append(f"| {ROW_LABELS[defense]} | not trained yet | | | |")
            continue
        stem = f"{plan['table']}-{plan['scale']}-fig2-{defense}"
        settings = {"attackers": specs, "limit": limit, "attacker_checkpoints": sources}
        cached = _cached(figures / f"{stem}.json", digest, **settings)
        if cached is not None and (figures / f"{stem}.png").exists():
            analysis = TrajectoryAnalysis.from_dict(cached)
        else:
            _note(status, f"Fig. 2: attack trajectories on {record['name']}")
            analysis = analyze_trajectories(registry, record["id"], specs, limit=limit, device=device)
            save_trajectories(analysis, figures, stem)
            _stamp(figures / f"{stem}.json", settings)
        lines.append(f"![Fig. 2 {ROW_LABELS[defense]}](figures/{stem}.png)")
        finals = {c.attack.split("-")[0]: c.values[-1] for c in analysis.curves}
        first = {c.attack.split("-")[0]: c.values[1] if len(c.values) > 1 else None for c in analysis.curves}
        rows.append(f"| {ROW_LABELS[defense]} | " + " | ".join(
            f"{_fmt(first.get(k))} → {_fmt(finals.get(k))}" for k in ("pgd", "l2lda", "rnn")) + f" | {analysis.n} |")
    head = ["### Fig. 2: loss at every attack step (10 steps)", "",
            f"Mean CE loss over the same {limit} test examples, on this table's models; attackers: PGD-10, the "
            "L2LDA generator and the RNN optimizer learned by this table's l2lda and rnn-adv runs. The paper "
            "finds RNN-Adv's loss highest at every step, most clearly in the first ones.", "",
            "| Model | PGD-10 step 1 → 10 | L2LDA step 1 → 10 | RNN-Adv step 1 → 10 | n |", "|:---|---:|---:|---:|---:|"]
    return head + rows + [""] + lines + [""]


def _fig3(registry: Registry, plan: dict[str, Any], figures: Path, device: str, status: Status | None) -> list[str]:
    from advtui.engine.analysis import LandscapeAnalysis, save_landscape
    from advtui.evaluation import analyze_landscape

    scale = SCALES[plan["scale"]]
    limit, grid = scale.analysis["landscape_limit"], scale.analysis["landscape_grid"]
    paper_max = {"advtrain": 7.61, "rnn-adv": 3.66}
    lines, rows = [], []
    for defense in TABLES[plan["table"]].rows:
        run_ids = plan["rows"].get(defense) or []
        record = registry.get_run(run_ids[0]) if run_ids else None
        digest = _checkpoint_hash(registry, record)
        if digest is None:
            rows.append(f"| {ROW_LABELS[defense]} | not trained yet | | |")
            continue
        stem = f"{plan['table']}-{plan['scale']}-fig3-{defense}"
        settings = {"limit": limit, "grid": grid}
        cached = _cached(figures / f"{stem}.json", digest, **settings)
        if cached is not None and (figures / f"{stem}.png").exists():
            analysis = LandscapeAnalysis.from_dict(cached)
        else:
            _note(status, f"Fig. 3: loss landscape of {record['name']}")
            analysis = analyze_landscape(registry, record["id"], limit=limit, grid=grid, device=device)
            save_landscape(analysis, figures, stem)
            _stamp(figures / f"{stem}.json", settings)
        lines.append(f"![Fig. 3 {ROW_LABELS[defense]}](figures/{stem}.png)")
        paper = f"{paper_max[defense]:.2f}" if defense in paper_max else "–"
        rows.append(f"| {ROW_LABELS[defense]} | {analysis.max_loss:.3f} | {analysis.origin_loss:.3f} | {paper} |")
    head = ["### Fig. 3: loss landscapes", "",
            f"CE loss over x + a·sign(∇x L) + b·r (r Rademacher), a, b in [-eps, eps], {grid}x{grid} points, "
            f"{limit} test example(s). The paper (VGG-16) reports the maximum loss falling from 7.61 (AdvTrain) to "
            "3.66 (RNN-Adv) and smoother surfaces for the RNN defenses.", "",
            "| Model | max loss | clean loss | paper's max (VGG-16) |", "|:---|---:|---:|---:|"]
    return head + rows + [""] + lines + [""]


def _table2(plan: dict[str, Any], comparison) -> list[str]:
    if comparison is None:
        return []
    by_key = {row.key: row for row in comparison.rows}
    rows = []
    for defense, (params, seconds) in PAPER_TABLE2.items():
        row = by_key.get(defense)
        p = _value(row.cells.get(PARAMS)) if row else None
        t = _value(row.cells.get(EPOCH_TIME)) if row else None
        rows.append(f"| {ROW_LABELS[defense]} | {'–' if p is None else f'{int(p):,}'} ({params:,}) | "
                    f"{_fmt(t)} ({seconds:.2f}) |")
    return ["### Table 2: cost of the learned maximizers", "",
            "Measured (paper). Time per epoch depends on the device and the training set size "
            "(the paper: four 1080 Ti GPUs, full data).", "",
            "| Defense | Parameters | Time per epoch (s) |", "|:---|---:|---:|", *rows, ""]


# -- learning curves -------------------------------------------------------------------------------
_EPOCH_LINE = re.compile(rb'"kind"\s*:\s*"epoch"')


@dataclass
class Curve:
    """One run's test accuracy after each epoch, from its ``epoch`` events."""

    run_id: str
    defense: str
    seed: int | None
    name: str
    status: str
    planned: int | None  # epochs in the run's config
    epochs: list[int]
    clean: list[float | None]
    pgd: list[float | None]
    test_n: int | None = None  # examples per epoch-end evaluation, on ``split``
    pgd_steps: int | None = None
    split: str = "test"  # "val": the validation split; "test": --val-size 0 or an older run
    dataset: str | None = None  # the run's (None: not recorded; chance is then 10 classes')

    @property
    def flag(self) -> str:
        """"no epochs recorded", "never left chance", "back at chance" (learned, then fell back to
        chance by the last epoch) or "" (above chance: twice chance on the run's dataset)."""
        known = [v for v in self.clean if v is not None]
        if not known:
            return "no epochs recorded"
        threshold = chance_accuracy(self.dataset)
        if max(known) < threshold:
            return "never left chance"
        if self.clean[-1] is not None and self.clean[-1] < threshold:
            return "back at chance"
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "defense": self.defense, "seed": self.seed, "name": self.name,
                "status": self.status, "planned_epochs": self.planned, "epochs": self.epochs, "clean": self.clean,
                "pgd": self.pgd, "test_n": self.test_n, "pgd_steps": self.pgd_steps, "split": self.split,
                "flag": self.flag}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def epoch_events(path: Path) -> list[dict[str, Any]]:
    """A run's ``epoch`` events, one per epoch (the last written wins: a resumed run may repeat one),
    in epoch order; damaged lines (torn, not JSON objects, not UTF-8) and a missing file give none."""
    try:
        lines = LineTail(path).read_lines()
    except OSError:
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in lines:
        if not _EPOCH_LINE.search(line):  # skip the many step and inner events unparsed
            continue
        try:
            event = json.loads(line)
        except ValueError:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
            continue
        if not isinstance(event, dict) or event.get("kind") != "epoch":
            continue
        epoch = event.get("epoch")
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1:
            by_epoch[epoch] = event
    return [by_epoch[e] for e in sorted(by_epoch)]


def run_curve(registry: Registry, run_id: str, defense: str, record: dict[str, Any] | None = None) -> Curve:
    record = record if record is not None else registry.get_run(run_id)
    config = (record or {}).get("config") or {}
    try:
        events = epoch_events(run_dir(registry.root, run_id) / EVENTS_FILE)
    except ConfigError:  # an id that is not a safe folder name has no folder to read
        events = []
    accuracies = [epoch_accuracy(e) for e in events]  # validation numbers, or test ones with --val-size 0
    sizes = {a.n for a in accuracies if a.n is not None}
    return Curve(run_id, defense, config.get("seed"), (record or {}).get("name") or run_id,
                 (record or {}).get("status") or "not in the registry", config.get("epochs"),
                 [e["epoch"] for e in events], [_number(a.clean) for a in accuracies],
                 [_number(a.robust) for a in accuracies],
                 max(sizes) if len(sizes) == 1 else None, config.get("inner_steps"),
                 accuracies[-1].split if accuracies else "test", config.get("dataset"))


def _curves(registry: Registry, plan: dict[str, Any]) -> list[Curve]:
    """The learning curves of a plan's row runs, in the table's row order, seeds in plan order."""
    known = {r["id"]: r for r in registry.runs()}
    return [run_curve(registry, run_id, defense, known.get(run_id) or {})
            for defense in TABLES[plan["table"]].rows for run_id in plan["rows"].get(defense, [])]


def table_dataset(plan: dict[str, Any]) -> str | None:
    """The dataset of a reproduced table's runs (its preset's)."""
    return PRESETS.get(TABLES[plan["table"]].preset, {}).get("dataset")


def _sample(n: int, points: int = CURVE_POINTS) -> list[int]:
    """Indices of at most ``points`` of ``n`` epochs, evenly spread, first and last included."""
    if n <= points:
        return list(range(n))
    return sorted({round(k * (n - 1) / (points - 1)) for k in range(points)})


def _seed_text(seed: Any) -> str:
    return "–" if seed is None else str(seed)


def _sequence(values: list[float | None], shown: list[int]) -> str:
    return " → ".join("–" if values[i] is None else f"{values[i]:.0f}" for i in shown)


def _learning_markdown(curves: list[Curve], figure: Path | None, dataset: str | None = None) -> list[str]:
    if not curves:
        return []
    threshold, chance = chance_accuracy(dataset), chance_level(dataset)
    sizes = sorted({c.test_n for c in curves if c.test_n is not None})
    steps = sorted({c.pgd_steps for c in curves if c.pgd_steps is not None})
    pgd = f"PGD-{steps[0]}" if len(steps) == 1 else "PGD-T"
    splits = {c.split for c in curves if c.epochs}
    where = "validation" if splits == {"val"} else "test" if splits <= {"test"} else "validation (or test)"
    on = (f"the first {'/'.join(f'{n:,}' for n in sizes)} {where} examples" if sizes else f"held-out {where} examples")
    # Runs longer than CURVE_POINTS epochs show a sample: said once when they all show the same epochs.
    samples = {tuple(c.epochs[i] for i in _sample(len(c.epochs))) for c in curves if len(c.epochs) > CURVE_POINTS}
    common = next(iter(samples)) if len(samples) == 1 else None
    sampled = ("" if not samples else f" (runs of more than {CURVE_POINTS} epochs: epochs "
               + (", ".join(map(str, common)) if common else f"{CURVE_POINTS} epochs, evenly spaced") + ")")
    lines = ["### Learning curves", "",
             f"Clean and {pgd} accuracy (%) of every row run on {on} after each epoch (model in eval mode; "
             f"PGD with each run's T inner steps), first → last epoch{sampled}. A run whose clean accuracy "
             f"stays under {threshold:g}% (chance: {chance:g}%) never learned.", ""]
    if figure is not None:
        lines += [f"![{figure.stem}](figures/{figure.name})", ""]
    lines += [f"| Defense | Seed | Run | Epochs | Clean % | {pgd} % | Check |", "|:---|---:|:---|:---|:---|:---|:---|"]
    for c in curves:
        label = ROW_LABELS.get(c.defense, c.defense)
        if not c.epochs:
            lines.append(f"| {label} | {_seed_text(c.seed)} | `{c.run_id}` | – | no epochs recorded | | "
                         f"no epochs recorded ({c.status}) |")
            continue
        shown = _sample(len(c.epochs))
        done = str(c.epochs[-1]) if c.planned in (None, c.epochs[-1]) else f"{c.epochs[-1]} of {c.planned}"
        if len(shown) < len(c.epochs) and common is None:
            done += " (shown: " + ", ".join(str(c.epochs[i]) for i in shown) + ")"
        below = chance_accuracy(c.dataset if c.dataset is not None else dataset)
        check = {"never left chance": f"**never left chance** (clean < {below:g}% at every epoch)",
                 "back at chance": f"**back at chance** (clean < {below:g}% at the last epoch)",
                 "no epochs recorded": "no accuracy recorded", "": "above chance"}[c.flag]
        lines.append(f"| {label} | {_seed_text(c.seed)} | `{c.run_id}` | {done} | {_sequence(c.clean, shown)} | "
                     f"{_sequence(c.pgd, shown)} | {check} |")
    return lines + [""]


def _learning_chart(plan: dict[str, Any], curves: list[Curve], path: Path) -> Path | None:
    """Small multiples, one panel per row defense: each seed's clean (solid) and PGD (dashed)
    accuracy per epoch; the numbers beside it as JSON. None when no run recorded an epoch."""
    if not any(c.epochs for c in curves):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    spec = TABLES[plan["table"]]
    dataset = table_dataset(plan)
    chance = chance_level(dataset)
    defenses = [d for d in spec.rows if plan["rows"].get(d)]
    cols = min(len(defenses), 3)
    rows = math.ceil(len(defenses) / cols)
    fig = Figure(figsize=(3.0 * cols + 0.4, 2.4 * rows + 0.9), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    last = max((c.epochs[-1] for c in curves if c.epochs), default=1)
    seeds = sorted({c.seed for c in curves if c.seed is not None})
    colors = {seed: f"C{k % 10}" for k, seed in enumerate(seeds)}
    for k, ax in enumerate(axes.flat):
        if k >= len(defenses):
            ax.set_visible(False)
            continue
        defense = defenses[k]
        mine = [c for c in curves if c.defense == defense]
        ax.axhline(chance, color="gray", linestyle=":", linewidth=1)
        for c in mine:
            color = colors.get(c.seed, "black")
            for values, style in ((c.pgd, "--"), (c.clean, "-")):
                ys = [math.nan if v is None else v for v in values]
                # Dots on every epoch while they stay readable (a run of one epoch is only dots): PGD's a
                # ring, clean's a dot drawn over it, so equal values show both; unclipped at 0 and 100.
                (line,) = ax.plot(c.epochs, ys, linestyle=style, color=color, linewidth=1.4, clip_on=False,
                                  marker="o" if len(c.epochs) <= 30 else None, markersize=3.5 if style == "-" else 6,
                                  markerfacecolor=color if style == "-" else "none", zorder=3 if style == "-" else 2)
                line.set_in_layout(False)  # unclipped lines would otherwise skew tight_layout
        stuck = [c for c in mine if c.flag in ("never left chance", "back at chance")]
        empty = [c for c in mine if not c.epochs]
        remarks = ([f"{len(stuck)} of {len(mine)} at chance"] if stuck else []) + \
            ([f"{len(empty)} of {len(mine)} without epochs"] if empty else [])
        ax.set_title(ROW_LABELS.get(defense, defense) + ("\n" + ", ".join(remarks) if remarks else ""),
                     fontsize=9, color="crimson" if stuck else "black")
        if len(empty) == len(mine):
            ax.text(0.5, 0.5, "no epochs recorded", transform=ax.transAxes, ha="center", va="center",
                    fontsize=8, color="gray")
        ax.set_ylim(0, 100)
        ax.set_xlim(0.5, last + 0.5)
        if last <= 6:
            ax.set_xticks(range(1, last + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        ax.grid(alpha=0.25)
        if k % cols == 0:
            ax.set_ylabel("accuracy (%)", fontsize=8)
        if k >= len(defenses) - cols:
            ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7, labelbottom=True)
    steps = sorted({c.pgd_steps for c in curves if c.pgd_steps is not None})
    pgd = f"PGD-{steps[0]}" if len(steps) == 1 else "PGD-T"
    handles = [Line2D([], [], color="black", linestyle="-", marker="o", markersize=3.5, label="clean"),
               Line2D([], [], color="black", linestyle="--", marker="o", markersize=6, markerfacecolor="none",
                      label=pgd),
               Line2D([], [], color="gray", linestyle=":", label=f"chance ({chance:g}%)")]
    handles += [Line2D([], [], color=colors[s], linewidth=3, label=f"seed {s}") for s in seeds]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    scale = SCALES[plan["scale"]]
    fig.suptitle(f"{spec.name} ({scale.name} scale): test accuracy after each epoch", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path)
    atomic_write_text(path.with_suffix(".json"), json.dumps({
        "table": spec.name, "scale": scale.name, "chance_accuracy": chance_accuracy(dataset), "chance_level": chance,
        "runs": [c.to_dict() for c in curves]}, indent=1))
    return path


def _robustness_section(registry: Registry, runs: list[dict[str, Any]], path: Path) -> tuple[list[str], Path | None]:
    """Accuracy against eps and against attack iterations of the row runs that were evaluated so
    (advtui.curves), as a PNG and a table, with the audit's findings; nothing when no run has a curve."""
    from advtui.curves import audit_run, save_curves_png

    audits = [audit_run(registry, record) for record in runs]
    if not any(a.curves for a in audits):
        return [], None
    png = save_curves_png(audits, path)
    lines = ["### Robustness curves", "",
             "Robust accuracy against eps and against attack iterations (each point: accuracy, its exact 95% "
             "interval and n). A sound evaluation falls with both and reaches about 0 at a large eps.", "",
             f"![robustness curves](figures/{png.name})", "",
             "| Run | Curve | Held fixed | Points |", "|:---|:---|:---|:---|"]
    for audit in audits:
        for c in audit.curves:
            points = "; ".join(f"{p.x:g}: {p.accuracy:.2f} [{p.low:.1f}–{p.high:.1f}] n={p.n}" for p in c.points)
            lines.append(f"| `{audit.run_id}` | {c.kind}: {c.series} | {c.at} | {points} |")
    findings = [f"- audit `{a.run_id}` ({f['code']}): {f['message']}." for a in audits for f in a.findings]
    return lines + [""] + (findings or ["- audit: no finding on these results."]) + [""], png


# -- the report ------------------------------------------------------------------------------------
def build_report(registry: Registry, tables: list[str] | None = None, out_dir: Path | None = None, *,
                 device: str = "auto", analyses: bool = True, status: Status | None = None) -> ReportResult:
    """Write the report for ``tables`` (default: every reproduced table); ConfigError when
    nothing was reproduced or nothing has results yet."""
    plans = reproductions(registry, tables)
    if not plans:
        which = f" of {', '.join(tables)}" if tables else ""
        raise ConfigError(f"no reproduction{which} recorded in {registry.root}: `advtui reproduce table3` queues one, "
                          "then `advtui worker` runs it")
    out = Path(out_dir) if out_dir is not None else registry.root / DEFAULT_REPORT_DIR
    figures = out / "figures"
    try:
        figures.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {figures}: {exc.strerror or exc}") from exc

    sections: list[str] = []
    results: list[TableResult] = []
    pending: list[str] = []
    written: list[Path] = []
    for plan in plans:
        spec, scale = TABLES[plan["table"]], SCALES[plan["scale"]]
        comparison, runs = _comparison(registry, plan)
        title = f"{spec.name} ({scale.name})"
        if comparison is None:
            pending.append(f"{title}: {_pending_jobs(registry, plan)} job(s) queued or running")
            continue
        measured = _measured(plan, comparison, _extra_comparison(registry, plan, runs))
        values = {d: {k: _value(c) for k, c in cells.items()} for d, cells in measured.items()}
        filled = sum(v is not None for cells in values.values() for v in cells.values())
        cells = sum(len(cells) for cells in values.values())
        chart = _bar_chart(plan, measured, figures / f"{spec.name}-{scale.name}.png")
        written.append(chart)
        paper = {d: dict(zip(spec.labels, spec.paper[d])) for d in spec.rows}
        result = TableResult(spec.name, scale.name, values, paper, plan["rows"], filled, cells, [chart.name],
                             uncertainty=_uncertainty(measured))
        results.append(result)

        lines = [f"## Table {spec.name.removeprefix('table')}: {spec.title}", ""]
        if scale.name != "full":
            lines += [f"> **{scale.label}.** Cells read *measured (paper)*; the measured numbers rehearse the "
                      "pipeline and say nothing about the paper's claims.", ""]
        setting = _settings_line(registry, plan, runs)
        if setting:
            lines += [setting, ""]
        lines += _table_markdown(plan, measured)
        lines += _interval_markdown(plan, measured)
        lines += [""]
        # The comparison's own notes, less those about columns and parentheses this table lays out
        # differently (no worst-case column; parentheses hold the paper's number here).
        notes = [n for n in comparison.notes if not n.startswith(("min = ", "Per defense"))]
        if spec.has_min:
            notes.append("Min = the lowest attack column (the paper's Min).")
        if plan.get("extra_columns"):
            notes.append("AA (beyond the paper): AutoAttack's standard version (APGD-CE, APGD-T, FAB-T, Square as a "
                         "cascade, built from torchattacks' pieces with the original settings) on the same examples; "
                         "the paper reports no AutoAttack numbers, and AA is not part of its Min.")
        threshold = chance_accuracy(table_dataset(plan))
        chance = [ROW_LABELS[d] for d in spec.rows
                  if (values[d].get("Natural") is not None and values[d]["Natural"] < threshold)]
        if chance:
            notes.append(f"{', '.join(chance)}: natural accuracy under {threshold:g}%, at chance level (not "
                         "learned at this scale): the other columns of such a row mean nothing.")
        curves = _curves(registry, plan)
        stuck = [c for c in curves if c.flag in ("never left chance", "back at chance")]
        if stuck:
            notes.append("Learning curves: " + "; ".join(
                f"{flag} (clean accuracy under {threshold:g}%"
                + (" at every epoch" if flag == "never left chance" else " at the last epoch") + "): "
                + ", ".join(f"{ROW_LABELS.get(c.defense, c.defense)} (seed {_seed_text(c.seed)}, `{c.run_id}`)"
                            for c in stuck if c.flag == flag)
                for flag in ("never left chance", "back at chance") if any(c.flag == flag for c in stuck))
                + ": the cells of such a run's row come from a model that did not learn.")
        notes += [spec.note] if spec.note else []
        if filled < cells:
            waiting = _pending_jobs(registry, plan)
            notes.append(f"{cells - filled} of {cells} cells have no result yet ({waiting} job(s) queued or running).")
        resolution = _resolution_note(measured)
        if resolution:
            notes.append(resolution)
        notes.append("Cells: measured (paper); **bold**: best measured in its column, ahead of the runner-up on a "
                     "paired test at 5%; ! a sanity flag was raised (`advtui compare --group GROUP` names each flagged "
                     "cell and what to do).")
        lines += [f"- {n}" for n in notes] + ["", f"![{spec.name}](figures/{chart.name})", ""]
        learning = _learning_chart(plan, curves, figures / f"{spec.name}-{scale.name}-learning.png")
        if learning is not None:
            written.append(learning)
            result.figures.append(learning.name)
        result.curves = {c.run_id: c.to_dict() for c in curves}
        lines += _learning_markdown(curves, learning, table_dataset(plan))
        robustness, robustness_png = _robustness_section(registry, runs, figures / f"{spec.name}-{scale.name}-robustness.png")
        if robustness_png is not None:
            written.append(robustness_png)
            result.figures.append(robustness_png.name)
        lines += robustness
        if spec.name in WHITE_BOX_TABLES:
            lines += _table2(plan, comparison)
            if analyses:
                fig2 = _fig2(registry, plan, figures, device, status)
                fig3 = _fig3(registry, plan, figures, device, status)
                lines += fig2 + fig3
                written += sorted(figures.glob(f"{spec.name}-{scale.name}-fig*.png"))
        sections.append("\n".join(lines))

    if not results:
        raise ConfigError("no results yet for " + "; ".join(pending) + ": start `advtui worker` (or open the dashboard) "
                          "and run `advtui report` when the jobs are done")
    header = ["# advtui reproduction report", "",
              f"Xiong & Hsieh, *Improved Adversarial Training via Learned Optimizer*: measured tables beside the "
              f"paper's. Written {time.strftime('%Y-%m-%d %H:%M')} from {registry.root}.", ""]
    if pending:
        header += ["Not in this report yet (no results): " + "; ".join(pending) + ".", ""]
    text = "\n".join(header) + "\n" + "\n\n".join(sections) + "\n"
    path = out / "report.md"
    atomic_write_text(path, text)
    atomic_write_text(out / "report.json", json.dumps({"written": time.time(), "pending": pending, "tables": [
        {"table": r.table, "scale": r.scale, "measured": r.measured, "paper": r.paper, "runs": r.runs,
         "filled": r.filled, "cells": r.cells, "figures": r.figures, "curves": r.curves,
         "uncertainty": r.uncertainty} for r in results]}, indent=1))
    return ReportResult(path, results, pending, written)

