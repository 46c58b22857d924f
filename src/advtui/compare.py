"""Runs side by side in the format of the paper's tables: selection, a plain table model, renderers.

The model (``Comparison``: columns, rows, cells with best-per-column flags, notes) knows nothing
of rich, typer or textual, so ``advtui compare`` (a rich table), ``advtui export`` (md, csv,
latex, json), the dashboard's compare screen and the Markdown report all show the same numbers.

Columns: one per attack spec found in the selected runs' results (Table 3 order), ``min`` and
``worst-case`` (recomputed over exactly the attack columns shown, from the stored per-example
masks), then the paper's Table 2 columns: trainable parameters of the inner maximizer (the run
record's ``maximizer_params``; "-" for a defense without one) and training time per epoch
(``train_time / epoch``, else the last epoch's ``metrics.epoch_time``).

Rows: one per run, or one per defense (``by="defense"``) where each accuracy cell is the lowest
over the defense's runs (the paper reports the lowest of its seeds) with mean and standard
deviation beside it; cost cells are means. Each run contributes the results of the checkpoint
it was evaluated on most recently.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from advtui.core.attack_specs import AttackSpecError, attack_sort_key, parse_attack, parse_attack_list
from advtui.core.defenses import DEFENSE_SPECS, DEFENSES
from advtui.store.results import latest_results, summarize
from advtui.core.errors import ConfigError
from advtui.store.registry import Registry

FORMATS = ("md", "csv", "latex", "json")
ROW_KINDS = ("run", "defense")
PARAMS, EPOCH_TIME = "maximizer_params", "epoch_time"


@dataclass
class Column:
    key: str  # attack spec, "min", "worst-case", "maximizer_params" or "epoch_time"
    label: str
    group: str  # "attack" | "summary" | "cost"
    higher_is_better: bool = True
    unit: str = "%"


@dataclass
class Cell:
    value: float | None = None  # what the cell shows: a run's number, or the lowest over a defense's runs
    mean: float | None = None
    std: float | None = None  # sample standard deviation over runs (None for a single run)
    count: int = 0  # runs with a number here
    best: bool = False
    cumulative: bool = False  # a cascade result: robust to this and all earlier attacks
    flags: list[str] = field(default_factory=list)  # sanity-check messages
    n: int | None = None  # test examples behind an accuracy


@dataclass
class Row:
    key: str  # run id, or defense
    label: str
    defense: str | None
    run_ids: list[str]
    cells: dict[str, Cell]


@dataclass
class Comparison:
    by: str  # "run" | "defense"
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    def cell(self, row_key: str, column_key: str) -> Cell:
        row = next(r for r in self.rows if r.key == row_key)
        return row.cells.get(column_key, Cell())

    def to_dict(self) -> dict[str, Any]:
        return {
            "by": self.by,
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


def build_comparison(registry: Registry, runs: list[dict[str, Any]], *, by: str = "run",
                     attacks: str | Iterable[str] | None = None) -> Comparison:
    """The comparison table of ``runs`` (see the module docstring)."""
    if by not in ROW_KINDS:
        raise ConfigError(f"rows must be per run or per defense, got {by!r}")
    all_runs = registry.runs()
    names = {r["id"]: r.get("name") or r["id"] for r in all_runs}
    results = latest_results(registry, [r["id"] for r in runs])
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

    run_rows = [_run_row(record, results.get(record["id"], {}), attack_keys, names) for record in runs]
    rows = run_rows if by == "run" else _defense_rows(runs, run_rows, columns)
    _mark_best(rows, columns)
    return Comparison(by, columns, rows, _notes(runs, results, attack_keys, rows, columns, by))


def _run_row(record: dict[str, Any], docs: dict[str, dict[str, Any]], attack_keys: list[str],
             names: dict[str, str]) -> Row:
    cells: dict[str, Cell] = {}
    shown = [docs[k] for k in attack_keys if k in docs]
    for doc in shown:
        cells[doc["attack"]] = Cell(doc["accuracy"], doc["accuracy"], None, 1, cumulative=doc.get("accuracy_kind") == "cumulative",
                                    flags=[f["message"] for f in doc.get("flags") or []], n=doc["n"])
    if shown:
        # min and worst-case over exactly the columns shown, on the most recent setting's examples
        latest = max(shown, key=lambda d: d.get("date", 0))
        same = [d for d in shown if d["settings"]["examples"] == latest["settings"]["examples"]
                and d["n"] == latest["n"] and d["settings"]["eps"] == latest["settings"]["eps"]]
        left_out = [d["label"] for d in shown if d not in same]
        note = [f"excludes {', '.join(left_out)} (other eps or examples)"] if left_out else []
        for name, summary in summarize(same).items():
            cells[name] = Cell(summary["accuracy"], summary["accuracy"], None, 1, flags=list(note), n=summary["n"])
    for key, value in ((PARAMS, _maximizer_params(record)), (EPOCH_TIME, _epoch_time(record))):
        if value is not None:
            cells[key] = Cell(value, value, None, 1)
    return Row(record["id"], names.get(record["id"], record["id"]), record.get("defense"), [record["id"]], cells)


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
            values = [c.value for c in present]
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else None
            # Accuracies: the lowest over seeds, as the paper reports; costs: the mean.
            shown = min(values) if column.group != "cost" else mean
            cells[column.key] = Cell(shown, mean, std, len(values), cumulative=any(c.cumulative for c in present),
                                     flags=sorted({f for c in present for f in c.flags}),
                                     n=min((c.n for c in present if c.n is not None), default=None))
        defense = members[0][0].get("defense")
        rows.append(Row(key, key, defense, [record["id"] for record, _ in members], cells))
    return rows


def _mark_best(rows: list[Row], columns: list[Column]) -> None:
    """Best per column (ties all marked), when at least two rows have a number. The parameter
    column compares learned maximizers only (PGD's 0 parameters is not a learned optimizer)."""
    for column in columns:
        candidates = [r.cells[column.key] for r in rows if column.key in r.cells and r.cells[column.key].value is not None]
        if column.key == PARAMS:
            candidates = [c for c in candidates if c.value > 0]
        if len(candidates) < 2:
            continue
        pick = max if column.higher_is_better else min
        target = pick(c.value for c in candidates)
        for c in candidates:
            c.best = bool(abs(c.value - target) <= 1e-9 * max(1.0, abs(target)))


def _notes(runs, results, attack_keys, rows, columns, by) -> list[str]:
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
    notes.append("min = lowest attack column; worst-case = per example, robust only if no shown attack broke it.")
    if by == "defense":
        notes.append("Per defense: the lowest over its runs, with mean ± std over runs in parentheses; costs are means.")
    if any(c.cumulative for r in rows for c in r.cells.values()):
        notes.append("* cumulative (cascade evaluation): robust to this attack and every attack evaluated before it.")
    if any(c.flags for r in rows for c in r.cells.values()):
        notes.append("! sanity flag raised: see `advtui eval` output or the JSON export.")
    devices = {(r.get("device") or "-").split(" (")[0] for r in runs if r.get("train_time") or (r.get("metrics") or {}).get("epoch_time")}
    if len(devices) > 1:
        notes.append(f"time/epoch was measured on different devices ({', '.join(sorted(devices))}): not comparable.")
    sizes = {(r.get("config") or {}).get("train_limit") for r in runs}
    if len(sizes) > 1:
        notes.append("time/epoch: runs trained on different numbers of examples.")
    return notes


# -- text -------------------------------------------------------------------------------------------
def format_value(value: float | None, column: Column) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column.key == PARAMS:
        return f"{int(round(value))}"
    return f"{value:.2f}"


def format_cell(cell: Cell, column: Column, by: str = "run", spread: bool = True) -> str:
    """The cell's text: the number, "(mean ± std)" for multi-run defense rows, then "*" for a
    cumulative (cascade) number and "!" when a sanity flag was raised."""
    text = format_value(cell.value, column)
    if text == "-":
        return text
    if spread and by == "defense" and cell.count > 1 and cell.std is not None and column.key != PARAMS:
        text += f" ({format_value(cell.mean, column)} ± {format_value(cell.std, column)})"
    if cell.cumulative:
        text += "*"
    if cell.flags:
        text += "!"
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
    lines.append("- **bold**: best in its column.")
    return "\n".join(lines) + "\n"


def to_csv(comparison: Comparison) -> str:
    """Plain numbers for spreadsheets: per-defense tables add mean and std columns."""
    out = io.StringIO()
    writer = csv.writer(out)
    head = _head(comparison) + ["run_ids"]
    for column in comparison.columns:
        head.append(column.label)
        if comparison.by == "defense":
            head += [f"{column.label} mean", f"{column.label} std"]
    writer.writerow(head)

    def num(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}".rstrip("0").rstrip(".")

    for row in comparison.rows:
        line = _lead(comparison, row) + [" ".join(row.run_ids)]
        for column in comparison.columns:
            cell = row.cells.get(column.key, Cell())
            line.append(num(cell.value))
            if comparison.by == "defense":
                line += [num(cell.mean), num(cell.std)]
        writer.writerow(line)
    return out.getvalue()


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text).replace("±", r"$\pm$")


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
