"""Runs side by side in the format of the paper's tables: selection, a plain table model, renderers.

The model (``Comparison``: columns, rows, cells with best-per-column flags, notes) knows nothing
of rich, typer or textual, so ``advtui compare`` (a rich table), ``advtui export`` (md, csv,
latex, json), the dashboard's compare screen and the Markdown report all show the same numbers.

Columns: one per attack spec found in the selected runs' results (Table 3 order), ``min`` and
``worst-case`` (recomputed over exactly the attack columns shown, from the stored per-example
masks, on the examples every shown column shares), then the paper's Table 2 columns: trainable
parameters of the inner maximizer (the run record's ``maximizer_params``; "-" for a defense
without one) and training time per epoch (``train_time / epoch``, else the last epoch's
``metrics.epoch_time``); on request the config fields that differ (``diff``) and per-epoch
metrics from each run's events (``at``).

Rows: one per run, or one per defense (``by="defense"``) where each accuracy cell is the lowest
over the defense's runs (the paper reports the lowest of its seeds) with mean, standard
deviation and a t-interval over seeds beside it; cost cells are means. Each run contributes the
results of the checkpoint it was evaluated on most recently, at its training eps by default.

Trust: every accuracy cell carries its n and exact 95% interval (advtui.core.stats); a best is
marked only where it is ahead of the runner-up on a paired test; a cell whose eps, example set
or checkpoint kind differs from the rest of its column is marked and named in a note
(``strict`` refuses it); every note about a flag names its cell and what to do.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from itertools import zip_longest
from typing import Any, Iterable

import numpy as np

from advtui.core.attack_specs import AttackSpecError, attack_sort_key, parse_attack, parse_attack_list
from advtui.core.defenses import DEFENSE_SPECS, DEFENSES
from advtui.core.paths import run_dir
from advtui.store.results import PREFERENCES, checkpoint_kind, doc_mask, example_ids, example_set, latest_results
from advtui.core.stats import (ALPHA, MIN_SEEDS_FOR_INTERVAL, PairedDifference, over_seeds, paired_difference,
                               paired_t_p, proportion_interval)
from advtui.core.errors import AdvtuiError, ConfigError
from advtui.core.events import EVENTS_FILE, read_events
from advtui.store.registry import Registry

FORMATS = ("md", "csv", "latex", "json")
ROW_KINDS = ("run", "defense")
PARAMS, EPOCH_TIME = "maximizer_params", "epoch_time"


@dataclass
class Column:
    key: str  # attack spec, "min", "worst-case", "maximizer_params", "epoch_time", "config:NAME" or "epoch:NAME"
    label: str
    group: str  # "attack" | "summary" | "cost" | "config" | "epoch"
    higher_is_better: bool = True
    unit: str = "%"

    @property
    def is_accuracy(self) -> bool:
        return self.group in ("attack", "summary")


@dataclass
class Cell:
    value: float | None = None  # what the cell shows: a run's number, or the lowest over a defense's runs
    mean: float | None = None
    std: float | None = None  # sample standard deviation over runs (None for a single run)
    count: int = 0  # runs with a number here
    best: bool = False
    cumulative: bool = False  # a cascade result: robust to this and all earlier attacks
    flags: list[str] = field(default_factory=list)  # sanity-check messages
    flag_codes: list[str] = field(default_factory=list)  # their codes (advtui.store.results), in the same order
    n: int | None = None  # test examples behind an accuracy
    low: float | None = None  # 95% interval: exact binomial (a run), t over seeds of the mean (a defense)
    high: float | None = None
    robust: int | None = None  # robust examples (a run's accuracy cell)
    marks: list[str] = field(default_factory=list)  # why this cell is not like the rest of its column
    delta: float | None = None  # value minus the baseline row's
    config_value: str | None = None  # a config value (--diff columns)
    seeds_note: str | None = None  # why a defense row has no interval over seeds


@dataclass
class Row:
    key: str  # run id, or defense
    label: str
    defense: str | None
    run_ids: list[str]
    cells: dict[str, Cell]
    # Per accuracy column: (example ids, robust mask) for paired tests; not part of the exported table.
    masks: dict[str, tuple[Any, Any]] = field(default_factory=dict, repr=False)
    seeds: list[Any] = field(default_factory=list)
    # Per column, per seed: each run's value (defense rows), for paired tests over matched seeds.
    seed_values: dict[str, dict[Any, float]] = field(default_factory=dict, repr=False)


@dataclass
class Comparison:
    by: str  # "run" | "defense"
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    baseline: str | None = None  # the row key deltas are taken against

    def cell(self, row_key: str, column_key: str) -> Cell:
        row = next(r for r in self.rows if r.key == row_key)
        return row.cells.get(column_key, Cell())

    def to_dict(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "baseline": self.baseline,
            "columns": [asdict(c) for c in self.columns],
            "rows": [{"key": r.key, "label": r.label, "defense": r.defense, "run_ids": r.run_ids,
                      "cells": {c.key: {**asdict(r.cells.get(c.key, Cell())),
                                        "text": format_cell(r.cells.get(c.key, Cell()), c, self.by)}
                                for c in self.columns}}
                     for r in self.rows],
            "notes": self.notes,
        }


# -- selection -------------------------------------------------------------------------------------
def select_runs(registry: Registry, refs: Iterable[str] = (), group: str | None = None,
                defenses: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Runs named in ``refs`` (ids, prefixes or names), else every run; narrowed to ``group``
    and ``defenses`` when given. With no selection at all: every run that has results."""
    refs, defenses = list(refs), [d for d in defenses if d]
    for defense in defenses:
        if defense not in DEFENSES:
            raise ConfigError(f"unknown defense {defense!r}; choose one of: {', '.join(DEFENSES)}")
    runs: list[dict[str, Any]] = []
    if refs:
        for ref in refs:
            record = registry.resolve_run(ref)
            if all(r["id"] != record["id"] for r in runs):
                runs.append(record)
    else:
        runs = registry.runs()
    if group is not None:
        groups = sorted({r.get("group") for r in runs if r.get("group")})
        runs = [r for r in runs if r.get("group") == group]
        if not runs:
            known = f" (groups: {', '.join(groups)})" if groups else " (no run has a group: `advtui run --group NAME`)"
            raise ConfigError(f"no run in group {group!r}{known}")
    if defenses:
        runs = [r for r in runs if r.get("defense") in defenses]
        if not runs:
            raise ConfigError(f"no run of defense {', '.join(defenses)} in this selection: `advtui ls` lists the runs")
    if not refs and group is None and not defenses:
        evaluated = latest_results(registry)
        runs = [r for r in runs if evaluated.get(r["id"])]
        if not runs:
            raise ConfigError("no evaluated runs yet: `advtui eval RUN` first, or name the runs to compare")
    if not runs:
        raise ConfigError("no runs selected: name runs, or use --group / --defense")
    return runs


# -- building the table ----------------------------------------------------------------------------
def _epoch_time(record: dict[str, Any]) -> float | None:
    epochs, total = record.get("epoch"), record.get("train_time")
    if epochs and total:
        return float(total) / float(epochs)
    value = (record.get("metrics") or {}).get("epoch_time")
    return float(value) if value is not None else None


def _maximizer_params(record: dict[str, Any]) -> float | None:
    spec = DEFENSE_SPECS.get(record.get("defense", ""))
    if spec is None or spec.maximizer is None:
        return None  # no inner maximizer at all (plain)
    value = record.get("maximizer_params")
    return float(value) if value is not None else None


def _select_columns(available: dict[str, str], attacks: str | Iterable[str] | None, names: dict[str, str]) -> list[str]:
    """Attack columns: all available in table order, or those matching ``attacks`` in its order.
    A learned or transfer spec without a source run matches every source."""
    if attacks is None:
        return sorted(available, key=attack_sort_key)
    chosen: list[str] = []
    by_name = {name: run_id for run_id, name in names.items()}
    for spec in parse_attack_list(attacks):
        if spec.source is None:
            matches = [k for k in sorted(available, key=attack_sort_key) if _same_attack_any_source(k, spec)]
        else:
            source = spec.source if spec.source in names else by_name.get(spec.source, spec.source)
            if source not in names:
                source = next((i for i in names if i.startswith(spec.source)), spec.source)
            matches = [k for k in available if k == spec.with_source(source).text]
        chosen.extend(k for k in matches if k not in chosen)
    return chosen


def _same_attack_any_source(text: str, spec) -> bool:
    try:
        other = parse_attack(text)
    except AttackSpecError:
        return False
    return other.with_source(None) == spec


AT_CHOICES = ("best", "final")  # or an epoch number
# Run-config fields that name a run rather than describe its training: never a --diff column.
IDENTITY_FIELDS = ("name", "group", "data_root", "init_from", "preset")


def build_comparison(registry: Registry, runs: list[dict[str, Any]], *, by: str = "run",
                     attacks: str | Iterable[str] | None = None, strict: bool = False, eps: float | None = None,
                     prefer: str = "largest", diff: bool = False, at: str | None = None,
                     baseline: str | None = None) -> Comparison:
    """The comparison table of ``runs`` (see the module docstring). ``strict`` refuses a column
    that mixes eps, example sets or checkpoint kinds; ``eps`` picks the results at that eps;
    ``prefer`` ("largest" or "latest") chooses between results of one attack on different
    samples; ``diff`` adds the config fields that differ; ``at`` ("best", "final" or an epoch)
    adds the per-epoch metrics of that epoch with their min and max over epochs; ``baseline``
    (a run among ``runs``) gives every other row its deltas."""
    if by not in ROW_KINDS:
        raise ConfigError(f"rows must be per run or per defense, got {by!r}")
    if prefer not in PREFERENCES:
        raise ConfigError(f"--prefer must be one of: {', '.join(PREFERENCES)}, got {prefer!r}")
    at_epoch = parse_at(at)
    baseline_id = _baseline_id(registry, runs, baseline)
    all_runs = registry.runs()
    names = {r["id"]: r.get("name") or r["id"] for r in all_runs}
    results = latest_results(registry, [r["id"] for r in runs], eps=eps, prefer=prefer, run_eps=_training_eps(runs))
    available: dict[str, str] = {}
    for docs in results.values():
        for key, doc in docs.items():
            if doc.get("kind") == "attack":
                available.setdefault(key, doc.get("label") or key)
    attack_keys = _select_columns(available, attacks, names)
    if attacks is not None and not attack_keys:
        raise ConfigError(f"none of the attacks {attacks!r} has results for these runs: `advtui eval RUN --attacks ...` first")
    columns = [Column(k, available[k], "attack") for k in attack_keys]
    columns += [Column("min", "min", "summary"), Column("worst-case", "worst-case", "summary"),
                Column(PARAMS, "inner params", "cost", higher_is_better=False, unit=""),
                Column(EPOCH_TIME, "time/epoch (s)", "cost", higher_is_better=False, unit="s")]
    if diff:
        columns += _config_columns(runs)
    epochs = {r["id"]: _epoch_metrics(registry, r) for r in runs} if at_epoch is not None else {}
    if at_epoch is not None:
        columns += _epoch_columns(at_epoch, epochs)

    mismatches = _column_mismatches(runs, results, attack_keys, names)
    if strict and mismatches:
        first = mismatches[0]
        raise ConfigError(f"--strict: column {first.column} mixes results that are not comparable ({first.why} "
                          f"for {first.run_label}, {len(mismatches)} cell(s) in all): evaluate them alike "
                          f"(`advtui eval RUN --attacks {first.column} --eps E --limit N`) or drop --strict to see them marked")
    run_rows = [_run_row(record, results.get(record["id"], {}), attack_keys, names) for record in runs]
    for row in run_rows:
        _add_config_cells(row, next(r for r in runs if r["id"] == row.key), columns)
        _add_epoch_cells(row, epochs.get(row.key), at_epoch, columns)
    for m in mismatches:
        cell = next(r for r in run_rows if r.key == m.run_id).cells.get(m.column)
        if cell is not None:
            cell.marks.append(m.why)
    rows = run_rows if by == "run" else _defense_rows(runs, run_rows, columns)
    tests = _mark_best(rows, columns, by)
    comparison = Comparison(by, columns, rows, [])
    if baseline_id is not None:
        comparison.baseline = _apply_baseline(rows, columns, baseline_id)
    comparison.notes = _notes(runs, results, attack_keys, rows, columns, by, mismatches, tests, names, at_epoch)
    comparison.notes += _audit_notes(registry, runs)
    return comparison


def _audit_notes(registry: Registry, runs: list[dict[str, Any]]) -> list[str]:
    """The audit's findings across each run's results (advtui.curves), beyond the per-cell flags."""
    from advtui.curves import audit_run

    notes = []
    for record in runs:
        for finding in audit_run(registry, record).findings:
            if finding["code"] in ("eps-up", "no-zero-at-large-eps", "aa-far-below-pgd"):
                notes.append(f"audit {record.get('name') or record['id']} ({finding['code']}): {finding['message']}.")
    return notes


def _training_eps(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {r["id"]: float(eps) for r in runs if (eps := (r.get("config") or {}).get("eps")) is not None}


# -- which results may share a column --------------------------------------------------------------
@dataclass
class Mismatch:
    column: str
    run_id: str
    run_label: str
    why: str


def _setting(doc: dict[str, Any]) -> dict[str, Any]:
    return {"eps": doc["settings"]["eps"], "examples": example_set(doc), "checkpoint": checkpoint_kind(doc),
            "n": doc["n"]}


def _column_mismatches(runs, results, attack_keys, names) -> list[Mismatch]:
    """Cells whose eps, example set or checkpoint kind differs from most of their column's."""
    out: list[Mismatch] = []
    for key in attack_keys:
        docs = {r["id"]: results.get(r["id"], {}).get(key) for r in runs}
        docs = {rid: d for rid, d in docs.items() if d is not None}
        if len(docs) < 2:
            continue
        settings = {rid: _setting(d) for rid, d in docs.items()}
        if any(not (d.get("manifest") or {}).get("examples_hash") for d in docs.values()):
            # A result stored before manifests has no ids' hash: compare all by their examples' name.
            for rid, d in docs.items():
                settings[rid]["examples"] = f"{d['settings']['examples']}:{d['n']}"
        natural = all(d.get("family") == "natural" for d in docs.values())
        for field_name, describe in (("eps", lambda d: f"eps {d['settings']['eps']:g}"),
                                     ("examples", lambda d: f"{d['n']} examples ({d['settings']['examples']})"),
                                     ("checkpoint", lambda d: f"checkpoint {checkpoint_kind(d)}")):
            values = [s[field_name] for s in settings.values()]
            if len(set(values)) < 2 or (natural and field_name == "eps"):  # clean accuracy has no eps
                continue
            common = max(set(values), key=lambda v: (values.count(v), str(v)))
            reference = next(d for rid, d in docs.items() if settings[rid][field_name] == common)
            for rid, d in docs.items():
                if settings[rid][field_name] != common:
                    out.append(Mismatch(key, rid, names.get(rid, rid),
                                        f"{describe(d)}, the rest of the column {describe(reference)}"))
    return out


# -- one row per run ---------------------------------------------------------------------------------
def _accuracy_cell(robust: int, n: int, **extra: Any) -> Cell:
    value = 100.0 * robust / max(n, 1)
    interval = proportion_interval(robust, n)
    low, high = interval if interval else (None, None)
    return Cell(value, value, None, 1, n=n, robust=robust, low=low, high=high, **extra)


def _aligned_masks(docs: list[dict[str, Any]]) -> tuple[Any, dict[str, Any], list[str]]:
    """The example ids every doc shares and each doc's robust mask on them, in id order, plus the
    labels of docs left out (stored without ids, on another example set than the rest)."""
    with_ids = [(d, example_ids(d)) for d in docs]
    known = [(d, ids) for d, ids in with_ids if ids is not None]
    unknown = [d for d, ids in with_ids if ids is None]
    left_out: list[str] = []
    if known:
        shared = known[0][1]
        for _, ids in known[1:]:
            shared = np.intersect1d(shared, ids)
        sets = {example_set(d) for d, _ in known}
        left_out = [d["label"] for d in unknown if example_set(d) not in sets]
        usable = known + [(d, next(ids for k, ids in known if example_set(k) == example_set(d)))
                          for d in unknown if example_set(d) in sets]
    else:
        # Results stored before manifests: the examples text and n say which set they share.
        latest = max(unknown, key=lambda d: d.get("date", 0))
        usable = [(d, _pseudo_ids(d)) for d in unknown if example_set(d) == example_set(latest)]
        left_out = [d["label"] for d in unknown if example_set(d) != example_set(latest)]
        shared = _pseudo_ids(latest)
    masks = {}
    for d, ids in usable:
        mask = doc_mask(d)
        if mask is None:
            continue
        masks[d["attack"]] = mask[np.isin(ids, shared)]
    return shared, masks, left_out


def _run_row(record: dict[str, Any], docs: dict[str, dict[str, Any]], attack_keys: list[str],
             names: dict[str, str]) -> Row:
    cells: dict[str, Cell] = {}
    row = Row(record["id"], names.get(record["id"], record["id"]), record.get("defense"), [record["id"]], cells,
              seeds=[(record.get("config") or {}).get("seed")])
    shown = [docs[k] for k in attack_keys if k in docs]
    for doc in shown:
        cells[doc["attack"]] = _accuracy_cell(doc["robust"], doc["n"], cumulative=doc.get("accuracy_kind") == "cumulative",
                                              flags=[f["message"] for f in doc.get("flags") or []],
                                              flag_codes=[f["code"] for f in doc.get("flags") or []])
        ids, mask = example_ids(doc), doc_mask(doc)
        if mask is not None:
            row.masks[doc["attack"]] = (ids if ids is not None else _pseudo_ids(doc), mask)
    if shown:
        _summary_cells(row, shown)
    for key, value in ((PARAMS, _maximizer_params(record)), (EPOCH_TIME, _epoch_time(record))):
        if value is not None:
            cells[key] = Cell(value, value, None, 1)
    return row


def _pseudo_ids(doc: dict[str, Any]) -> Any:
    """Stand-in ids for a result stored without them: its example set's name keeps two such
    results apart unless they were measured on the same set."""
    return np.array([f"{example_set(doc)}#{i}" for i in range(doc["n"])])


def _summary_cells(row: Row, shown: list[dict[str, Any]]) -> None:
    """min and worst-case over the examples every shown column shares (see _aligned_masks)."""
    shared, masks, left_out = _aligned_masks(shown)
    n = len(shared)
    if not masks or n == 0:
        return
    note = [f"over the {n} examples every shown column shares"] if any(d["n"] != n for d in shown) else []
    if left_out:
        note.append(f"excludes {', '.join(left_out)} (stored without example ids, on other examples)")
    exact = [d for d in shown if d.get("accuracy_kind") == "attack" and d["attack"] in masks]
    if exact:
        lowest = min(exact, key=lambda d: (int(masks[d["attack"]].sum()), attack_sort_key(d["attack"])))
        low_mask = masks[lowest["attack"]]
        row.cells["min"] = _accuracy_cell(int(low_mask.sum()), n, flags=list(note))
        row.masks["min"] = (np.asarray(shared), low_mask)
    worst = np.ones(n, dtype=bool)
    for mask in masks.values():
        worst &= mask
    row.cells["worst-case"] = _accuracy_cell(int(worst.sum()), n, flags=list(note))
    row.masks["worst-case"] = (np.asarray(shared), worst)


# -- one row per defense -----------------------------------------------------------------------------
def _defense_rows(runs: list[dict[str, Any]], run_rows: list[Row], columns: list[Column]) -> list[Row]:
    mixed = len({(r.get("dataset"), r.get("model")) for r in runs}) > 1
    groups: dict[str, list[tuple[dict[str, Any], Row]]] = {}
    for record, row in zip(runs, run_rows):
        key = record.get("defense") or "?"
        if mixed:
            key += f" ({record.get('dataset')}/{record.get('model')})"
        groups.setdefault(key, []).append((record, row))
    order = {d: i for i, d in enumerate(DEFENSES)}
    rows = []
    for key in sorted(groups, key=lambda k: (order.get(k.split(" ")[0], len(order)), k)):
        members = groups[key]
        cells = {}
        for column in columns:
            present = [row.cells[column.key] for _, row in members if column.key in row.cells]
            if not present:
                continue
            cells[column.key] = _defense_cell(column, present)
        defense = members[0][0].get("defense")
        rows.append(Row(key, key, defense, [record["id"] for record, _ in members], cells,
                        seeds=[(record.get("config") or {}).get("seed") for record, _ in members]))
        rows[-1].seed_values = {column.key: {(record.get("config") or {}).get("seed"): row.cells[column.key].value
                                             for record, row in members if column.key in row.cells}
                                for column in columns}
    return rows


def _defense_cell(column: Column, present: list[Cell]) -> Cell:
    if column.group == "config":
        texts = sorted({c.config_value or "" for c in present})
        return Cell(config_value="/".join(texts), count=len(present))
    values = [c.value for c in present if c.value is not None]
    if not values:
        return Cell(count=len(present))
    summary = over_seeds(values)
    # Accuracies: the lowest over seeds, as the paper reports; costs and epoch metrics: the mean.
    shown = min(values) if column.is_accuracy else summary.mean
    flags = sorted({pair for c in present for pair in zip_longest(c.flags, c.flag_codes, fillvalue="")})
    return Cell(shown, summary.mean, summary.std, len(values), cumulative=any(c.cumulative for c in present),
                flags=[f for f, _ in flags], flag_codes=[code for _, code in flags],
                n=min((c.n for c in present if c.n is not None), default=None),
                low=summary.low, high=summary.high,
                marks=sorted({m for c in present for m in c.marks}),
                seeds_note=None if summary.low is not None else summary.interval_text)


# -- best per column, only where it is ahead beyond noise ------------------------------------------------
def _mark_best(rows: list[Row], columns: list[Column], by: str) -> dict[str, str]:
    """Mark the best cell of each column. Accuracy columns: only when the best row is ahead of
    the runner-up on a paired test at 5% (exact McNemar on the examples both share for runs; a
    paired t-test over matched seeds for defenses). The parameter column compares learned
    maximizers only (PGD's 0 parameters is not a learned optimizer). Returns, per accuracy
    column, the sentence saying what the test found."""
    tests: dict[str, str] = {}
    for column in columns:
        if column.group == "config":
            continue
        candidates = [r for r in rows if column.key in r.cells and r.cells[column.key].value is not None]
        if column.key == PARAMS:
            candidates = [r for r in candidates if r.cells[column.key].value > 0]
        if len(candidates) < 2:
            continue
        sign = 1.0 if column.higher_is_better else -1.0
        candidates.sort(key=lambda r: -sign * r.cells[column.key].value)
        top, second = candidates[0], candidates[1]
        if not column.is_accuracy:
            target = top.cells[column.key].value
            for r in candidates:
                c = r.cells[column.key]
                c.best = bool(abs(c.value - target) <= 1e-9 * max(1.0, abs(target)))
            continue
        ahead, sentence = _ahead(top, second, column, by)
        top.cells[column.key].best = ahead
        tests[column.key] = sentence
    return tests


def _ahead(top: Row, second: Row, column: Column, by: str) -> tuple[bool, str]:
    a, b = top.cells[column.key], second.cells[column.key]
    gap = a.value - b.value
    lead = f"{column.label}: {top.label} {a.value:.2f} vs {second.label} {b.value:.2f}"
    if gap <= 0:
        return False, f"{lead}: tied, no best marked"
    if by == "run":
        paired = _paired_on_shared(top.masks.get(column.key), second.masks.get(column.key))
        if paired is None:
            return False, f"{lead}: no shared examples to test on, no best marked"
        verdict = "marked best" if paired.p < ALPHA else "not significant, no best marked"
        return paired.p < ALPHA, (f"{lead}: {paired.difference:+.2f} on {paired.n} shared examples, "
                                  f"exact McNemar p = {paired.p:.3g}, {verdict}")
    values_a = top.seed_values.get(column.key, {})
    values_b = second.seed_values.get(column.key, {})
    seeds = sorted((s for s in values_a if s in values_b), key=str)
    p = paired_t_p([values_a[s] for s in seeds], [values_b[s] for s in seeds])
    if p is None:
        return False, (f"{lead}: {len(seeds)} matched seed(s), a paired test over seeds needs "
                       f"{MIN_SEEDS_FOR_INTERVAL}: no best marked")
    verdict = "marked best" if p < ALPHA else "not significant, no best marked"
    return p < ALPHA, f"{lead}: paired t-test over {len(seeds)} matched seeds p = {p:.3g}, {verdict}"


def _paired_on_shared(a, b) -> PairedDifference | None:
    """The paired difference of two (ids, mask) on the examples both share; None if none."""
    if a is None or b is None:
        return None
    ids_a, mask_a = a
    ids_b, mask_b = b
    shared, ia, ib = np.intersect1d(ids_a, ids_b, return_indices=True)
    if shared.size == 0:
        return None
    return paired_difference(np.asarray(mask_a)[ia], np.asarray(mask_b)[ib])


# -- baseline deltas ------------------------------------------------------------------------------------
def _baseline_id(registry: Registry, runs: list[dict[str, Any]], baseline: str | None) -> str | None:
    if baseline is None:
        return None
    try:
        record = registry.resolve_run(baseline)
    except AdvtuiError:
        record = None
    if record is None or all(r["id"] != record["id"] for r in runs):
        shown = ", ".join(r.get("name") or r["id"] for r in runs[:6]) + (", ..." if len(runs) > 6 else "")
        raise ConfigError(f"--baseline {baseline} is not among the compared runs ({shown}): "
                          "name one of them, or add it to the runs compared")
    return record["id"]


def _apply_baseline(rows: list[Row], columns: list[Column], baseline_id: str) -> str:
    base = next(r for r in rows if baseline_id in r.run_ids)
    for row in rows:
        for column in columns:
            cell, ref = row.cells.get(column.key), base.cells.get(column.key)
            if row is base or cell is None or ref is None or cell.value is None or ref.value is None:
                continue
            cell.delta = cell.value - ref.value
    return base.key


# -- --diff: the config fields that differ -----------------------------------------------------------
def _config_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(_config_text(v) for v in value)
    return "-" if value is None else str(value)


def _config_columns(runs: list[dict[str, Any]]) -> list[Column]:
    configs = [r.get("config") or {} for r in runs]
    keys = sorted({k for c in configs for k in c} - set(IDENTITY_FIELDS))
    differing = [k for k in keys if len({_config_text(c.get(k)) for c in configs}) > 1]
    return [Column(f"config:{k}", k, "config", unit="") for k in differing]


def _add_config_cells(row: Row, record: dict[str, Any], columns: list[Column]) -> None:
    config = record.get("config") or {}
    for column in columns:
        if column.group == "config":
            row.cells[column.key] = Cell(config_value=_config_text(config.get(column.key.split(":", 1)[1])), count=1)


# -- --at: per-epoch metrics ------------------------------------------------------------------------------
def parse_at(at: str | None) -> str | int | None:
    """--at: "best", "final" or a positive epoch number."""
    if at is None:
        return None
    text = str(at).strip().lower()
    if text in AT_CHOICES:
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ConfigError(f"--at must be best, final or an epoch number (1 or more), got {at!r}")


@dataclass
class EpochMetrics:
    epochs: dict[int, dict[str, Any]]
    prefix: str  # "val_" when the run held out a validation split, else "test_"
    best_epoch: int | None  # the run's recorded best epoch, else the epoch of the highest robust accuracy


def _epoch_metrics(registry: Registry, record: dict[str, Any]) -> EpochMetrics:
    path = run_dir(registry.root, record["id"]) / EVENTS_FILE
    epochs: dict[int, dict[str, Any]] = {}
    for event in read_events(path, {"epoch"}):
        epoch = event.get("epoch")
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1:
            epochs[epoch] = event  # a resumed run may repeat an epoch: the last one counts
    prefix = "val_" if any(f"val_{m}" in e for e in epochs.values() for m in ("pgd_acc", "clean_acc")) else "test_"
    best = record.get("best_epoch")
    if best is None:
        scored = [(e[f"{prefix}pgd_acc"], k) for k, e in epochs.items() if e.get(f"{prefix}pgd_acc") is not None]
        best = max(scored, key=lambda t: (t[0], -t[1]))[1] if scored else None
    return EpochMetrics(dict(sorted(epochs.items())), prefix, best)


EPOCH_METRICS = (("clean_acc", "clean"), ("pgd_acc", "robust"))


def _chosen_epoch(metrics: EpochMetrics, at: str | int) -> int | None:
    if not metrics.epochs:
        return None
    if at == "best":
        return metrics.best_epoch
    if at == "final":
        return max(metrics.epochs)
    return at if at in metrics.epochs else None


def _epoch_columns(at: str | int, epochs: dict[str, EpochMetrics]) -> list[Column]:
    prefixes = {m.prefix for m in epochs.values() if m.epochs}
    split = "val" if prefixes == {"val_"} else "test" if prefixes == {"test_"} else "val/test"
    columns = [Column("epoch:epoch", f"epoch ({at})", "epoch", unit="")]
    for metric, label in EPOCH_METRICS:
        columns.append(Column(f"epoch:{metric}", f"{split} {label} @{at}", "epoch"))
    columns += [Column("epoch:pgd_acc:max", f"{split} robust max", "epoch"),
                Column("epoch:pgd_acc:min", f"{split} robust min", "epoch"),
                Column("epoch:train_loss", f"train loss @{at}", "epoch", higher_is_better=False, unit="")]
    return columns


def _add_epoch_cells(row: Row, metrics: EpochMetrics | None, at: str | int | None, columns: list[Column]) -> None:
    if metrics is None or at is None:
        return
    epoch = _chosen_epoch(metrics, at)
    series = [e.get(f"{metrics.prefix}pgd_acc") for e in metrics.epochs.values()]
    series = [float(v) for v in series if v is not None]
    values: dict[str, float | None] = {"epoch:pgd_acc:max": max(series, default=None),
                                       "epoch:pgd_acc:min": min(series, default=None)}
    if epoch is not None:
        event = metrics.epochs.get(epoch, {})
        values["epoch:epoch"] = float(epoch)
        values["epoch:train_loss"] = event.get("train_loss")
        for metric, _ in EPOCH_METRICS:
            values[f"epoch:{metric}"] = event.get(f"{metrics.prefix}{metric}")
        n = event.get(f"{metrics.prefix}n")
    else:
        n = None
    for column in columns:
        if column.group == "epoch" and values.get(column.key) is not None:
            value = float(values[column.key])
            unit_n = n if column.key in ("epoch:clean_acc", "epoch:pgd_acc") else None
            row.cells[column.key] = Cell(value, value, None, 1, n=unit_n)


# -- notes ----------------------------------------------------------------------------------------------
FLAG_ACTIONS = {
    "steps-up": "rerun with more steps or restarts (pgd-100x5) and check the model is deterministic",
    "transfer-stronger": "the white-box attacks are failing: try aa or more restarts, and check gradients",
    "square-stronger": "gradients look masked: trust aa (it includes Square) over the gradient attacks",
    "zero-gradient": "gradient attacks cannot move these examples: add a black-box attack (square-5000)",
    "nonfinite-gradient": "check the model for NaN-producing layers before trusting this number",
    "nonfinite-loss": "check the model for NaN-producing layers before trusting this number",
    "eps0-mismatch": "the attack changes predictions at eps 0: check the model is in eval mode and deterministic",
}


def _flag_notes(rows: list[Row], columns: list[Column]) -> list[str]:
    """One note per flagged cell: which cell, what was found, what to do."""
    notes = []
    for row in rows:
        for column in columns:
            cell = row.cells.get(column.key)
            if cell is None:
                continue
            if column.group == "summary":
                notes.extend(f"! {row.label} / {column.label}: {message}; evaluate every shown attack on the same "
                             "examples (same --limit) for a number over all of them." for message in cell.flags)
                continue
            for message, code in zip(cell.flags, cell.flag_codes):
                action = FLAG_ACTIONS.get(code, "see `advtui show` for the run's results")
                notes.append(f"! {row.label} / {column.label}: {message}; {action}.")
    return notes


def _notes(runs, results, attack_keys, rows, columns, by, mismatches, tests, names, at_epoch) -> list[str]:
    notes = []
    settings = {}
    for run_id, docs in results.items():
        for key in attack_keys:
            doc = docs.get(key)
            if doc:
                s = doc["settings"]
                settings.setdefault((s["examples"], doc["n"], s["eps"]), set()).add(run_id)
    if settings:
        parts = [f"eps {eps:g} on {n} test examples ({examples})" for examples, n, eps in sorted(settings)]
        lead = "Robust accuracy (%)" if len(settings) == 1 else "Robust accuracy (%), MIXED settings across cells"
        notes.append(f"{lead}: {'; '.join(parts)}. An example is robust if correct at x and at x'.")
    else:
        notes.append("No evaluation results for these runs yet: `advtui eval RUN` first.")
    if by == "run":
        notes.append("[low–high] = exact (Clopper-Pearson) 95% interval of the cell; n = test examples behind it.")
    else:
        notes.append("Per defense: the lowest over its runs, then (mean ± std over runs, 95% t-interval of the mean "
                     f"over seeds; n/a with fewer than {MIN_SEEDS_FOR_INTERVAL} seeds); n = test examples per run; "
                     "costs and epoch metrics are means.")
    notes.append("min = lowest attack column, worst-case = robust only if no shown attack broke it; both over "
                 "the examples every shown column shares.")
    notes.extend(f"Best-in-column test, {t}." for t in tests.values())
    grouped: dict[tuple[str, str], list[str]] = {}
    for m in mismatches:
        grouped.setdefault((m.run_label, m.why), []).append(m.column)
    for (label, why), cols in grouped.items():
        notes.append(f"≠ {label} / {', '.join(cols)}: {why}; not comparable in one column: evaluate it alike "
                     f"(`advtui eval {label} --attacks {','.join(cols)} ...`), pick results with --eps, "
                     "or --strict to refuse.")
    if any(c.cumulative for r in rows for c in r.cells.values()):
        notes.append("* cumulative (cascade evaluation): robust to this attack and every attack evaluated before it.")
    notes.extend(_flag_notes(rows, columns))
    if any(c.delta is not None for r in rows for c in r.cells.values()):
        base = next((r.label for r in rows if all(c.delta is None for c in r.cells.values())), "the baseline")
        notes.append(f"(Δ) = difference to the baseline {base}; accuracy deltas come with no test here: "
                     "`advtui compare A B --paired` tests one.")
    if at_epoch is not None:
        notes.append(_at_note(at_epoch, columns))
    devices = {(r.get("device") or "-").split(" (")[0] for r in runs if r.get("train_time") or (r.get("metrics") or {}).get("epoch_time")}
    if len(devices) > 1:
        notes.append(f"time/epoch was measured on different devices ({', '.join(sorted(devices))}): not comparable.")
    sizes = {(r.get("config") or {}).get("train_limit") for r in runs}
    if len(sizes) > 1:
        notes.append("time/epoch: runs trained on different numbers of examples.")
    return notes


def _at_note(at_epoch, columns: list[Column]) -> str:
    test = any(c.group == "epoch" and c.label.startswith("test") for c in columns)
    which = {"best": "the best epoch (the run's recorded best, else the highest per-epoch robust accuracy)",
             "final": "the last recorded epoch"}.get(at_epoch, f"epoch {at_epoch}")
    text = f"Epoch columns: per-epoch metrics at {which}, and the min and max over epochs."
    if test:
        text += " They were measured on test examples: an epoch chosen by them is selected on the test set."
    return text


# -- text -------------------------------------------------------------------------------------------
def format_value(value: float | None, column: Column) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column.key == PARAMS or column.key == "epoch:epoch":
        return f"{int(round(value))}"
    return f"{value:.2f}"


def uncertainty_text(cell: Cell, column: Column, by: str = "run") -> str:
    """What an accuracy cell rests on: a run's "[low–high] n=N"; a defense's "(mean ± std,
    [low, high]) n=N×runs", the interval n/a with fewer than 3 seeds."""
    if not column.is_accuracy or cell.value is None:
        return ""
    if by == "defense" and cell.count > 1:
        interval = f"[{cell.low:.2f}, {cell.high:.2f}]" if cell.low is not None else "CI n/a"
        std = f" ± {cell.std:.2f}" if cell.std is not None else ""
        return f" ({cell.mean:.2f}{std}, {interval}) n={cell.n}×{cell.count}"
    interval = f" [{cell.low:.1f}–{cell.high:.1f}]" if cell.low is not None else ""
    return f"{interval} n={cell.n}" if cell.n is not None else interval


def format_cell(cell: Cell, column: Column, by: str = "run", spread: bool = True) -> str:
    """The cell's text: the number, its interval and n for an accuracy ("(mean ± std, interval)"
    for multi-run defense rows), "(+d)" against a baseline, then "*" for a cumulative (cascade)
    number, "!" when a sanity flag was raised and "≠" when it is not comparable with the rest of
    its column."""
    if column.group == "config":
        return cell.config_value if cell.config_value is not None else "-"
    text = format_value(cell.value, column)
    if text == "-":
        return text
    if spread:
        if column.is_accuracy:
            text += uncertainty_text(cell, column, by)
        elif by == "defense" and cell.count > 1 and cell.std is not None and column.key != PARAMS:
            text += f" ({format_value(cell.mean, column)} ± {format_value(cell.std, column)})"
    if cell.delta is not None:
        text += f" ({cell.delta:+.2f})"
    if cell.cumulative:
        text += "*"
    if cell.flags:
        text += "!"
    if cell.marks:
        text += "≠"
    return text


def _head(comparison: Comparison) -> list[str]:
    return ["Run", "Defense"] if comparison.by == "run" else ["Defense", "Runs"]


def _lead(comparison: Comparison, row: Row) -> list[str]:
    return [row.label, row.defense or "-"] if comparison.by == "run" else [row.label, str(len(row.run_ids))]


def to_markdown(comparison: Comparison) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    head = _head(comparison) + [c.label for c in comparison.columns]
    lines = ["| " + " | ".join(esc(h) for h in head) + " |",
             "|" + "|".join([":---"] * 2 + ["---:"] * len(comparison.columns)) + "|"]
    for row in comparison.rows:
        cells = []
        for column in comparison.columns:
            cell = row.cells.get(column.key, Cell())
            text = esc(format_cell(cell, column, comparison.by))
            cells.append(f"**{text}**" if cell.best else text)
        lines.append("| " + " | ".join([esc(t) for t in _lead(comparison, row)] + cells) + " |")
    lines.append("")
    lines.extend(f"- {note}" for note in comparison.notes)
    lines.append("- **bold**: best in its column, ahead of the runner-up on a paired test at 5%.")
    return "\n".join(lines) + "\n"


def to_csv(comparison: Comparison) -> str:
    """Plain numbers for spreadsheets: each accuracy column adds its n and 95% interval (per
    defense: of the mean over seeds), per-defense tables mean and std columns too."""
    out = io.StringIO()
    writer = csv.writer(out)
    head = _head(comparison) + ["run_ids"]
    for column in comparison.columns:
        head.append(column.label)
        if comparison.by == "defense":
            head += [f"{column.label} mean", f"{column.label} std"]
        if column.is_accuracy:
            head += [f"{column.label} n", f"{column.label} ci_low", f"{column.label} ci_high"]
    writer.writerow(head)

    def num(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}".rstrip("0").rstrip(".")

    for row in comparison.rows:
        line = _lead(comparison, row) + [" ".join(row.run_ids)]
        for column in comparison.columns:
            cell = row.cells.get(column.key, Cell())
            line.append(cell.config_value or "" if column.group == "config" else num(cell.value))
            if comparison.by == "defense":
                line += [num(cell.mean), num(cell.std)]
            if column.is_accuracy:
                line += ["" if cell.n is None else str(cell.n), num(cell.low), num(cell.high)]
        writer.writerow(line)
    return out.getvalue()


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text).replace("±", r"$\pm$").replace("≠", r"$\neq$")


def to_latex(comparison: Comparison) -> str:
    """A booktabs tabular; best per column in bold, notes as comments."""
    head = _head(comparison) + [c.label for c in comparison.columns]
    lines = [f"% {note}" for note in comparison.notes]
    lines += [r"\begin{tabular}{ll" + "r" * len(comparison.columns) + "}", r"\toprule",
              " & ".join(_latex_escape(h) for h in head) + r" \\", r"\midrule"]
    for row in comparison.rows:
        cells = [_latex_escape(t) for t in _lead(comparison, row)]
        for column in comparison.columns:
            cell = row.cells.get(column.key, Cell())
            text = _latex_escape(format_cell(cell, column, comparison.by))
            cells.append(rf"\textbf{{{text}}}" if cell.best else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_json(comparison: Comparison) -> str:
    return json.dumps(comparison.to_dict(), indent=2) + "\n"


def render(comparison: Comparison, fmt: str) -> str:
    renderers = {"md": to_markdown, "csv": to_csv, "latex": to_latex, "json": to_json}
    if fmt not in renderers:
        raise ConfigError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return renderers[fmt](comparison)
