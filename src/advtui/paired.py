"""``advtui compare A B --paired``: is A ahead of B beyond noise, per attack column?

Two runs: per attack, the difference on the test examples both were evaluated on, its exact 95%
interval and the exact McNemar p-value, from the stored per-example robust masks. That tests
these two checkpoints (which test examples were drawn), not the two defenses (which seed was
drawn): the output says so. Two defenses over matched seeds: the same per seed, then the mean
of the per-seed differences with a paired t-interval over seeds (from 3 seeds) and a Wilcoxon
signed-rank p (from 6). See ``advtui.core.stats``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from advtui.core.attack_specs import attack_sort_key
from advtui.store.results import doc_mask, example_ids, example_set, latest_results
from advtui.core.stats import (MIN_SEEDS_FOR_INTERVAL, MIN_SEEDS_FOR_WILCOXON, PairedDifference, SeedSummary,
                               over_seeds, paired_difference)
from advtui.core.errors import ConfigError
from advtui.store.registry import Registry

ONE_PAIR_CAVEAT = (
    "This tests these two checkpoints on the same test examples (evaluation noise), not the two defenses: "
    "which training seed was drawn is not in it, and at small budgets that noise is the larger. For a claim "
    "about the defenses, train matched seeds (`advtui queue train --defense D --seeds 0-4` for each) and run "
    "`advtui compare --paired --defense A,B`.")


@dataclass
class SeedPair:
    seed: Any
    run_a: str
    run_b: str
    test: PairedDifference | None  # None: the two results share no example


@dataclass
class ColumnTest:
    attack: str
    label: str
    pairs: list[SeedPair]
    over_seeds: SeedSummary | None = None  # matched seeds: the per-seed differences


@dataclass
class PairedReport:
    side_a: str
    side_b: str
    by: str  # "run" | "defense"
    columns: list[ColumnTest] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.side_a, "b": self.side_b, "by": self.by, "notes": self.notes,
                "columns": [{"attack": c.attack, "label": c.label,
                             "pairs": [{"seed": p.seed, "run_a": p.run_a, "run_b": p.run_b,
                                        "test": p.test.to_dict() if p.test else None} for p in c.pairs],
                             "over_seeds": c.over_seeds.to_dict() if c.over_seeds else None}
                            for c in self.columns]}


def _sides(runs: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """Two runs, or the runs of exactly two defenses; ConfigError otherwise."""
    if len(runs) == 2:
        return "run", [runs[0]], [runs[1]]
    defenses = list(dict.fromkeys(r.get("defense") for r in runs))
    if len(defenses) != 2:
        raise ConfigError(f"--paired compares two sides: name two runs, or select the runs of two defenses "
                          f"(--defense A,B), not {len(runs)} runs of {len(defenses)} defense(s)")
    return "defense", [r for r in runs if r.get("defense") == defenses[0]], \
        [r for r in runs if r.get("defense") == defenses[1]]


def _seed(record: dict[str, Any]) -> Any:
    return (record.get("config") or {}).get("seed")


def _matched(a_runs, b_runs) -> list[tuple[Any, dict[str, Any], dict[str, Any]]]:
    by_seed_b = {}
    for r in b_runs:
        by_seed_b.setdefault(_seed(r), r)
    pairs = []
    for r in a_runs:
        if _seed(r) in by_seed_b:
            pairs.append((_seed(r), r, by_seed_b.pop(_seed(r))))
    return sorted(pairs, key=lambda p: str(p[0]))


def _aligned(doc_a: dict[str, Any], doc_b: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The two robust masks on the examples both were evaluated on, or None when they share none."""
    mask_a, mask_b = doc_mask(doc_a), doc_mask(doc_b)
    if mask_a is None or mask_b is None:
        return None
    ids_a, ids_b = example_ids(doc_a), example_ids(doc_b)
    if ids_a is None or ids_b is None:
        # Stored without ids: only the same named example set lines up.
        return (mask_a, mask_b) if example_set(doc_a) == example_set(doc_b) and len(mask_a) == len(mask_b) else None
    _, ia, ib = np.intersect1d(ids_a, ids_b, return_indices=True)
    return (mask_a[ia], mask_b[ib]) if ia.size else None


def paired_report(registry: Registry, runs: list[dict[str, Any]], *, eps: float | None = None,
                  prefer: str = "largest", attacks: list[str] | None = None) -> PairedReport:
    """The paired comparison of the selected runs (two runs, or two defenses by seed)."""
    by, a_runs, b_runs = _sides(runs)
    names = {r["id"]: r.get("name") or r["id"] for r in runs}
    if by == "run":
        pairs = [(_seed(a_runs[0]), a_runs[0], b_runs[0])]
        side_a, side_b = names[a_runs[0]["id"]], names[b_runs[0]["id"]]
    else:
        pairs = _matched(a_runs, b_runs)
        side_a, side_b = a_runs[0].get("defense"), b_runs[0].get("defense")
        if not pairs:
            raise ConfigError(f"--paired: no seed of {side_a} matches a seed of {side_b} "
                              f"({sorted(map(str, {_seed(r) for r in a_runs}))} vs "
                              f"{sorted(map(str, {_seed(r) for r in b_runs}))}): train the same seeds of both")
    run_eps = {r["id"]: float(e) for r in runs if (e := (r.get("config") or {}).get("eps")) is not None}
    results = latest_results(registry, [r["id"] for r in runs], eps=eps, prefer=prefer, run_eps=run_eps)
    report = PairedReport(side_a, side_b, by)
    keys = sorted({k for _, a, b in pairs for k, d in results.get(a["id"], {}).items()
                   if d.get("kind") == "attack" and d.get("accuracy_kind") == "attack" and k in results.get(b["id"], {})},
                  key=attack_sort_key)
    if attacks:
        keys = [k for k in keys if k in attacks]
    for key in keys:
        column = ColumnTest(key, "", [])
        for seed, a, b in pairs:
            doc_a, doc_b = results[a["id"]].get(key), results[b["id"]].get(key)
            if doc_a is None or doc_b is None:
                continue
            column.label = doc_a.get("label") or key
            aligned = _aligned(doc_a, doc_b)
            column.pairs.append(SeedPair(seed, names[a["id"]], names[b["id"]],
                                         paired_difference(*aligned) if aligned else None))
        if by == "defense":
            diffs = [p.test.difference for p in column.pairs if p.test is not None]
            column.over_seeds = over_seeds(diffs, differences=True) if diffs else None
        report.columns.append(column)
    if not any(p.test for c in report.columns for p in c.pairs):
        raise ConfigError(f"--paired: {side_a} and {side_b} share no evaluated example under any attack: "
                          "evaluate both on the same examples (`advtui eval RUN --attacks ... --limit N`, same N)")
    report.notes = _notes(report)
    return report


def _notes(report: PairedReport) -> list[str]:
    notes = [f"Difference = {report.side_a} minus {report.side_b}, in points of robust accuracy, on the examples "
             "both were evaluated on; 95% interval exact given the discordant examples; p = exact McNemar "
             "(a binomial test at 1/2 on the examples only one side kept robust)."]
    if report.by == "run":
        notes.append(ONE_PAIR_CAVEAT)
    else:
        seeds = max((len(c.pairs) for c in report.columns), default=0)
        notes.append(f"Over {seeds} matched seed(s): mean of the per-seed differences with a paired t-interval "
                     f"(needs {MIN_SEEDS_FOR_INTERVAL} seeds) and an exact Wilcoxon signed-rank p (needs "
                     f"{MIN_SEEDS_FOR_WILCOXON}, the fewest with which it can reach 5%). Each seed's McNemar p "
                     "tests that seed's pair of checkpoints only.")
    unmatched = [f"{c.label} (seed {p.seed})" for c in report.columns for p in c.pairs if p.test is None]
    if unmatched:
        notes.append(f"No shared examples, no test: {', '.join(unmatched)}.")
    return notes
