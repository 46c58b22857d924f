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

Output: ``OUT/report.md``, ``OUT/report.json`` (the measured numbers, per table and cell) and
``OUT/figures/*.png`` (+ the figures' data as JSON).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from advtui.errors import AdvtuiError, ConfigError
from advtui.registry import JOBS, Registry
from advtui.reproduce import PAPER_TABLE2, ROW_LABELS, SCALES, TABLES, reproductions

FIG2_DEFENSES = ("advtrain", "trades", "rnn-adv", "rnn-trades")  # the paper's four panels
WHITE_BOX_TABLES = ("table3", "table4", "table5")
DEFAULT_REPORT_DIR = "report"
CHANCE_ACCURACY = 15.0  # % natural accuracy at or below which a 10-class model has not learned


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
    from advtui.compare import build_comparison

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


def _measured(plan: dict[str, Any], comparison) -> dict[str, dict[str, Any]]:
    """defense -> paper column label -> the comparison's cell (lowest over seeds) or None."""
    spec = TABLES[plan["table"]]
    by_key = {row.key: row for row in comparison.rows} if comparison is not None else {}
    out: dict[str, dict[str, Any]] = {}
    for defense in spec.rows:
        row = by_key.get(defense)
        cells: dict[str, Any] = {}
        for column in plan["columns"]:
            cells[column["label"]] = row.cells.get(column["attack"]) if row else None
        if spec.has_min:
            cells["Min"] = row.cells.get("min") if row else None
        out[defense] = cells
    return out


def _value(cell) -> float | None:
    return None if cell is None or cell.value is None else float(cell.value)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _table_markdown(plan: dict[str, Any], measured: dict[str, dict[str, Any]]) -> list[str]:
    spec = TABLES[plan["table"]]
    labels = spec.labels
    lines = ["| Defense | " + " | ".join(labels) + " |", "|:---|" + "---:|" * len(labels)]
    for defense in spec.rows:
        paper = dict(zip(labels, spec.paper[defense]))
        cells = []
        for label in labels:
            cell = measured[defense][label]
            text = _fmt(_value(cell))
            if cell is not None and cell.best:
                text = f"**{text}**"
            if cell is not None and getattr(cell, "flags", None):
                text += "!"
            cells.append(f"{text} ({paper[label]:.2f})")
        lines.append(f"| {ROW_LABELS[defense]} | " + " | ".join(cells) + " |")
    return lines


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
    return sum(1 for j in registry.all(JOBS) if j.get("run_id") in ids and j.get("status") in ("queued", "running"))


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
    from advtui.engine.attacks import file_digest
    from advtui.runner import checkpoint_path

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
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _fig2(registry: Registry, plan: dict[str, Any], figures: Path, device: str, status: Status | None) -> list[str]:
    """Fig. 2 panels on this table's models: markdown lines (empty if nothing to draw)."""
    from advtui.engine.analysis import TrajectoryAnalysis, analyze_trajectories, save_trajectories

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
    from advtui.engine.analysis import LandscapeAnalysis, analyze_landscape, save_landscape

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
    from advtui.compare import EPOCH_TIME, PARAMS

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
        measured = _measured(plan, comparison)
        values = {d: {k: _value(c) for k, c in cells.items()} for d, cells in measured.items()}
        filled = sum(v is not None for cells in values.values() for v in cells.values())
        cells = sum(len(cells) for cells in values.values())
        chart = _bar_chart(plan, measured, figures / f"{spec.name}-{scale.name}.png")
        written.append(chart)
        paper = {d: dict(zip(spec.labels, spec.paper[d])) for d in spec.rows}
        result = TableResult(spec.name, scale.name, values, paper, plan["rows"], filled, cells, [chart.name])
        results.append(result)

        lines = [f"## Table {spec.name.removeprefix('table')}: {spec.title}", ""]
        if scale.name != "full":
            lines += [f"> **{scale.label}.** Cells read *measured (paper)*; the measured numbers rehearse the "
                      "pipeline and say nothing about the paper's claims.", ""]
        setting = _settings_line(registry, plan, runs)
        if setting:
            lines += [setting, ""]
        lines += _table_markdown(plan, measured)
        lines += [""]
        # The comparison's own notes, less those about columns and parentheses this table lays out
        # differently (no worst-case column; parentheses hold the paper's number here).
        notes = [n for n in comparison.notes if not n.startswith(("min = ", "Per defense"))]
        if spec.has_min:
            notes.append("Min = the lowest attack column (the paper's Min).")
        chance = [ROW_LABELS[d] for d in spec.rows
                  if (values[d].get("Natural") is not None and values[d]["Natural"] <= CHANCE_ACCURACY)]
        if chance:
            notes.append(f"{', '.join(chance)}: natural accuracy at chance level (not learned at this scale): the "
                         "other columns of such a row mean nothing.")
        notes += [spec.note] if spec.note else []
        if filled < cells:
            waiting = _pending_jobs(registry, plan)
            notes.append(f"{cells - filled} of {cells} cells have no result yet ({waiting} job(s) queued or running).")
        notes.append("Cells: measured (paper); **bold**: best measured in its column; ! a sanity flag was raised "
                     "(`advtui compare --json` lists them).")
        lines += [f"- {n}" for n in notes] + ["", f"![{spec.name}](figures/{chart.name})", ""]
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
    _write(path, text)
    _write(out / "report.json", json.dumps({"written": time.time(), "pending": pending, "tables": [
        {"table": r.table, "scale": r.scale, "measured": r.measured, "paper": r.paper, "runs": r.runs,
         "filled": r.filled, "cells": r.cells, "figures": r.figures} for r in results]}, indent=1))
    return ReportResult(path, results, pending, written)


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
