"""A sweep's results: one row per combination, seeds aggregated, and the plots of ``report --sweep``.

Each run contributes its last per-epoch held-out accuracies (clean and PGD, from its record)
and the results of its latest evaluated checkpoint (one column per attack, ``min`` and
``worst-case``). A combination's cell is the mean over its seeds with a 95% t-interval
(mean ± t(0.975, n-1) · s / sqrt(n)); with fewer than 3 seeds the interval is not given, as
two points say little about training noise (DESIGN: "What a paired test says").

The best combination on the sort metric is marked only where it is significantly better than
every other combination: a paired t-test over the seeds the two share (the same seed gives the
same data order and initial weights, so pairing removes that part of the noise), p < 0.05,
at least 3 matched seeds.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advtui.store.results import latest_results
from advtui.core.errors import ConfigError
from advtui.store.registry import Registry
from advtui.sweep import Combination, RunState, SweepSpec, value_text, flag, match_runs

MIN_SEEDS_FOR_INTERVAL = 3
ALPHA = 0.05
CLEAN_KEYS = ("val_clean_acc", "test_clean_acc")
ROBUST_KEYS = ("val_pgd_acc", "test_pgd_acc")
VAL_ROBUST, VAL_CLEAN = "val-robust", "val-clean"


@dataclass
class Stat:
    by_seed: dict[int, float]
    mean: float | None = None
    half_width: float | None = None  # of the 95% t-interval; None below MIN_SEEDS_FOR_INTERVAL seeds
    std: float | None = None

    @property
    def n(self) -> int:
        return len(self.by_seed)


@dataclass
class SweepRow:
    combination: Combination
    cells: dict[str, Stat]
    statuses: dict[int, str]  # seed -> run status
    best: bool = False
    test_split: bool = False  # some run's per-epoch numbers are from the test set (no validation split)


@dataclass
class SweepComparison:
    spec: SweepSpec
    metrics: list[str]  # column keys: val-robust, val-clean, then attack specs, min, worst-case
    rows: list[SweepRow]
    sort: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sweep": self.spec.name, "swept": list(self.spec.grid), "metrics": self.metrics, "sort": self.sort,
            "rows": [{"combination": r.combination.index, "values": r.combination.values, "best": r.best,
                      "statuses": {str(k): v for k, v in r.statuses.items()},
                      "cells": {m: {"mean": s.mean, "half_width": s.half_width, "std": s.std, "n": s.n,
                                    "by_seed": {str(k): v for k, v in s.by_seed.items()}}
                                for m, s in r.cells.items()}}
                     for r in self.rows],
            "notes": self.notes,
        }


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _first(metrics: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = _finite(metrics.get(key))
        if value is not None:
            return value
    return None


def run_metrics(record: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The numbers one run gives the comparison: held-out accuracies, then its evaluation."""
    metrics = record.get("metrics") or {}
    out = {VAL_ROBUST: _first(metrics, ROBUST_KEYS), VAL_CLEAN: _first(metrics, CLEAN_KEYS)}
    for spec, doc in results.items():
        out[spec] = _finite(doc.get("accuracy"))
    return {k: v for k, v in out.items() if v is not None}


def t_interval(values: list[float]) -> tuple[float, float | None, float | None]:
    """(mean, half-width of the 95% t-interval or None under 3 values, sample std or None)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    std = statistics.stdev(values)
    if len(values) < MIN_SEEDS_FOR_INTERVAL:
        return mean, None, std
    from scipy import stats

    return mean, float(stats.t.ppf(1 - ALPHA / 2, len(values) - 1) * std / math.sqrt(len(values))), std


def paired_p(a: dict[int, float], b: dict[int, float]) -> tuple[int, float | None]:
    """(matched seeds, two-sided p of the paired t-test of a - b over them; None under 3 seeds
    or when every difference is the same, where the test is undefined)."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < MIN_SEEDS_FOR_INTERVAL:
        return len(seeds), None
    from scipy import stats

    diffs = [a[s] - b[s] for s in seeds]
    if statistics.pstdev(diffs) == 0:
        return len(seeds), None
    return len(seeds), float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)


def on_test_split(record: dict[str, Any]) -> bool:
    """A run recorded without a validation split: its per-epoch numbers are the test set's."""
    metrics = record.get("metrics") or {}
    return _first(metrics, ROBUST_KEYS[:1]) is None and _first(metrics, ROBUST_KEYS[1:]) is not None


def _collect(states: list[RunState], results: dict[str, dict[str, dict[str, Any]]]) -> list[SweepRow]:
    rows: dict[int, SweepRow] = {}
    for state in states:
        row = rows.setdefault(state.combination.index, SweepRow(state.combination, {}, {}))
        row.statuses[state.seed] = state.status
        if state.record is None:
            continue
        row.test_split |= on_test_split(state.record)
        for metric, value in run_metrics(state.record, results.get(state.record["id"], {})).items():
            row.cells.setdefault(metric, Stat({})).by_seed[state.seed] = value
    for row in rows.values():
        for stat in row.cells.values():
            stat.mean, stat.half_width, stat.std = t_interval(list(stat.by_seed.values()))
    return list(rows.values())


def _metric_order(rows: list[SweepRow]) -> list[str]:
    from advtui.core.attack_specs import attack_sort_key

    found = {m for r in rows for m in r.cells}
    head = [m for m in (VAL_ROBUST, VAL_CLEAN) if m in found]
    tail = [m for m in ("min", "worst-case") if m in found]
    attacks = sorted(found - set(head) - set(tail), key=_safe_sort_key(attack_sort_key))
    return head + attacks + tail


def _safe_sort_key(key):
    def sort_key(spec: str):
        try:
            return (0, key(spec), spec)
        except Exception:  # a spec of an older grammar: after the known ones, by name
            return (1, (), spec)
    return sort_key


def compare_sweep(registry: Registry, spec: SweepSpec, sort: str | None = None) -> SweepComparison:
    states = match_runs(registry, spec)
    if all(s.record is None for s in states):
        raise ConfigError(f"sweep {spec.name!r} has no runs yet: `advtui sweep --file "
                          f"{registry.root}/sweeps/{spec.name}.toml` queues them")
    results = latest_results(registry, [s.record["id"] for s in states if s.record is not None])
    rows = _collect(states, results)
    metrics = _metric_order(rows)
    sort = sort or (VAL_ROBUST if VAL_ROBUST in metrics else (metrics[0] if metrics else VAL_ROBUST))
    if metrics and sort not in metrics:
        raise ConfigError(f"--sort {sort!r} is not a metric of sweep {spec.name}: choose one of {', '.join(metrics)}")
    rows.sort(key=lambda r: (-(r.cells[sort].mean) if sort in r.cells else math.inf, r.combination.index))
    comparison = SweepComparison(spec, metrics, rows, sort)
    _mark_best(comparison)
    if any(r.test_split for r in rows):
        comparison.notes.append(f"{VAL_ROBUST} and {VAL_CLEAN} of runs recorded without a validation split are "
                                f"their test-set numbers, for monitoring only: choosing by them selects on the test set")
    return comparison


def _mark_best(comparison: SweepComparison) -> None:
    """Mark the leader on the sort metric only if a paired test over matched seeds puts it
    significantly above every other combination; otherwise say why not."""
    ranked = [r for r in comparison.rows if comparison.sort in r.cells]
    notes = comparison.notes
    if len(ranked) < 2:
        notes.append("fewer than two combinations have results: nothing to compare yet")
        return
    leader = ranked[0]
    undecided = []
    for other in ranked[1:]:
        matched, p = paired_p(leader.cells[comparison.sort].by_seed, other.cells[comparison.sort].by_seed)
        diff = leader.cells[comparison.sort].mean - other.cells[comparison.sort].mean
        if p is None:
            undecided.append(f"c{other.combination.index} ({matched} matched seed(s): test not available"
                             + (", needs 3" if matched < MIN_SEEDS_FOR_INTERVAL else ", identical differences") + ")")
        elif not (p < ALPHA and diff > 0):
            undecided.append(f"c{other.combination.index} (paired t over {matched} seeds, p={p:.3g})")
    if undecided and all("needs 3" in u for u in undecided):
        notes.append(f"c{leader.combination.index} leads on {comparison.sort}; best not marked: the paired test "
                     f"needs at least {MIN_SEEDS_FOR_INTERVAL} matched seeds")
    elif undecided:
        notes.append(f"c{leader.combination.index} leads on {comparison.sort} but is not significantly better than "
                     + "; ".join(undecided[:6]) + (f" and {len(undecided) - 6} more" if len(undecided) > 6 else ""))
    else:
        leader.best = True
        notes.append(f"c{leader.combination.index} is best on {comparison.sort}: above every other combination "
                     f"(paired t-test over matched seeds, p < {ALPHA})")
    if any(s.n < MIN_SEEDS_FOR_INTERVAL for r in comparison.rows for s in r.cells.values()):
        notes.append(f"± is a 95% t-interval over seeds; with fewer than {MIN_SEEDS_FOR_INTERVAL} seeds "
                     f"it is not available (n/a)")


def format_stat(stat: Stat | None) -> str:
    if stat is None or stat.mean is None:
        return "-"
    if stat.half_width is None:
        return f"{stat.mean:.2f} (±n/a, n={stat.n})"
    return f"{stat.mean:.2f} ± {stat.half_width:.2f} (n={stat.n})"


def status_text(row: SweepRow) -> str:
    counts: dict[str, int] = {}
    for status in row.statuses.values():
        counts[status] = counts.get(status, 0) + 1
    return " ".join(f"{n} {s}" for s, n in sorted(counts.items()))


# -- plots (report --sweep) -------------------------------------------------------------------------
def _axis(values: list[Any]) -> tuple[list[float], list[str] | None]:
    """Numbers stay numbers; words (defense, sign/rms) become positions with labels."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    labels = []
    for v in values:
        if value_text(v) not in labels:
            labels.append(value_text(v))
    return [float(labels.index(value_text(v))) for v in values], labels


def plot_points(comparison: SweepComparison, metric: str, param: str) -> tuple[list[float], list[float], list[float], list[str] | None]:
    """(x, mean, error = std over seeds (0 for one seed), categorical labels) of one panel."""
    rows = _plotted(comparison, metric)
    x, labels = _axis([r.combination.values[param] for r in rows])
    means = [r.cells[metric].mean for r in rows]
    errors = [r.cells[metric].std or 0.0 for r in rows]
    return x, means, errors, labels


def _plotted(comparison: SweepComparison, metric: str) -> list[SweepRow]:
    return [r for r in comparison.rows if metric in r.cells]


def sweep_png(comparison: SweepComparison, path: Path) -> Path:
    """Each metric (rows) against each swept parameter (columns); a point per combination,
    error bars the standard deviation over its seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    params, metrics = list(comparison.spec.grid), comparison.metrics
    fig = Figure(figsize=(3.6 * len(params), 2.8 * len(metrics)), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(metrics), len(params), squeeze=False)
    for i, metric in enumerate(metrics):
        for j, param in enumerate(params):
            ax = axes[i][j]
            x, means, errors, labels = plot_points(comparison, metric, param)
            ax.errorbar(x, means, yerr=errors, fmt="o", capsize=3)
            # Each point is a combination: name it, since the other swept values share its x.
            for row, xi, yi in zip(_plotted(comparison, metric), x, means, strict=True):
                ax.annotate(f"c{row.combination.index}", (xi, yi), textcoords="offset points", xytext=(5, 3), fontsize=7)
            if labels is None:
                if param.endswith("lr") or param == "weight_decay":
                    if x and min(x) > 0:
                        ax.set_xscale("log")
                ax.minorticks_off()
                ticks = sorted(set(x))
                labels = [value_text(v) for v in ticks]
                ax.set_xticks(ticks, labels)
            else:
                ax.set_xticks(range(len(labels)), labels)
            ax.set_xlabel(flag(param))
            ax.set_ylabel(f"{metric} %")
            ax.grid(alpha=0.3)
    fig.suptitle(f"sweep {comparison.spec.name}: mean over seeds, error bars one std")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def sweep_terminal(comparison: SweepComparison, metric: str, width: int = 80, height: int = 16,
                   color: bool = True) -> list[str]:
    """One plotext chart per swept parameter for ``metric`` (with ANSI colors unless ``color`` is False)."""
    import plotext as plt

    charts = []
    for param in comparison.spec.grid:
        x, means, errors, labels = plot_points(comparison, metric, param)
        if not x:
            continue
        plt.clear_figure()
        plt.plot_size(width, height)
        plt.error(x, means, yerr=errors)
        if labels is not None:
            plt.xticks(list(range(len(labels))), labels)
        plt.title(f"{metric} vs {flag(param)} (mean, error bar one std over seeds)")
        plt.xlabel(flag(param))
        text = plt.build()
        charts.append(text if color else plt.uncolorize(text))
    plt.clear_figure()
    return charts
