"""Comparison tables: selection, per-run and per-defense rows, best flags, renderers, CLI."""

from __future__ import annotations

import csv
import io
import json
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from advtui.cli import app
from advtui.compare import build_comparison, format_cell, render, select_runs, to_csv, to_latex, to_markdown
from advtui.core.digests import mask_to_hex
from advtui.store.results import results_for_run, store_result
from advtui.evaluation import evaluate_run
from advtui.core.errors import ConfigError, RunNotFoundError
from advtui.store.registry import Registry

N = 20


def _run(registry, name, defense, *, group="g", params=0, train_time=100.0, epochs=2, device="cpu (2 threads)"):
    return registry.create_run({"name": name, "defense": defense, "group": group, "dataset": "mnist",
                                "model": "smallcnn", "status": "finished", "epoch": epochs, "epochs": epochs,
                                "maximizer_params": params, "train_time": train_time, "device": device,
                                "config": {"train_limit": 1000}, "metrics": {"epoch_time": 1.0}})


def _store(registry, run, attack, robust_count, *, family=None, steps=10, kind="attack", eps=0.3):
    mask = np.zeros(N, dtype=bool)
    mask[:robust_count] = True
    family = family or attack.rsplit("-", 1)[0]
    store_result(registry, {
        "kind": "attack", "run_id": run["id"], "attack": attack, "checkpoint_hash": "h" + run["id"],
        "label": attack, "family": family, "steps": steps, "restarts": 1, "source_run": None,
        "source_checkpoint_hash": None, "checkpoint": "checkpoints/final.pt", "date": time.time(),
        "eval_id": "e1", "settings": {"eps": eps, "examples": f"mnist/test/{N}", "n": N, "seed": 0},
        "accuracy": 100.0 * robust_count / N, "robust": robust_count, "n": N, "n_attacked": N,
        "accuracy_kind": kind, "clean_accuracy": 100.0, "clean_robust": N, "wall_time": 1.0, "loss": "ce",
        "trajectory": [0.1, 1.0], "trajectory_model": "target", "gradient": None,
        "robust_mask": mask_to_hex(mask), "flags": []})


@pytest.fixture
def table_registry(runs_root):
    """Two advtrain seeds, one rnn-adv run, one plain run, with hand-written results."""
    registry = Registry(runs_root)
    runs = {
        "adv-s0": _run(registry, "adv-s0", "advtrain", train_time=100.0),
        "adv-s1": _run(registry, "adv-s1", "advtrain", train_time=140.0),
        "rnn-s0": _run(registry, "rnn-s0", "rnn-adv", params=120, train_time=120.0),
        "plain": _run(registry, "plain", "plain", group="other", train_time=20.0),
    }
    for name, (nat, p10, cw) in {"adv-s0": (19, 16, 17), "adv-s1": (19, 12, 13),
                                 "rnn-s0": (18, 17, 15), "plain": (20, 0, 2)}.items():
        _store(registry, runs[name], "natural", nat, family="natural", steps=0)
        _store(registry, runs[name], "pgd-10", p10)
        _store(registry, runs[name], "cw-100", cw, family="cw", steps=100)
    return registry, runs


def test_per_run_rows_columns_and_best_flags(table_registry):
    registry, runs = table_registry
    table = build_comparison(registry, select_runs(registry, ["adv-s0", "rnn-s0", "plain"]))
    assert [c.key for c in table.columns] == ["natural", "pgd-10", "cw-100", "min", "worst-case",
                                              "maximizer_params", "epoch_time"]
    assert [r.label for r in table.rows] == ["adv-s0", "rnn-s0", "plain"]
    pgd = {r.label: r.cells["pgd-10"] for r in table.rows}
    assert pgd["adv-s0"].value == 80.0 and pgd["rnn-s0"].value == 85.0 and pgd["plain"].value == 0.0
    # 85 vs 80 on the same 20 examples (1 discordant example): within noise, so no best is marked
    assert [pgd[k].best for k in ("adv-s0", "rnn-s0", "plain")] == [False, False, False]
    nat = {r.label: r.cells["natural"] for r in table.rows}
    assert not nat["plain"].best and not nat["adv-s0"].best
    # cw-100: rnn-s0 robust on 15, adv-s0 on 17 of the same 20: adv-s0 leads by 2 discordant examples, p = 0.5
    assert not any(r.cells["cw-100"].best for r in table.rows)
    # min and worst-case per run; worst-case never above min
    rnn = table.cell(runs["rnn-s0"]["id"], "min")
    assert rnn.value == 75.0 and table.cell(runs["rnn-s0"]["id"], "worst-case").value == 75.0
    # Table 2 columns: plain has no inner maximizer; params best compares learned maximizers only
    assert table.cell(runs["plain"]["id"], "maximizer_params").value is None
    assert table.cell(runs["adv-s0"]["id"], "maximizer_params").value == 0
    assert not table.cell(runs["adv-s0"]["id"], "maximizer_params").best
    assert table.cell(runs["rnn-s0"]["id"], "epoch_time").value == 60.0  # train_time / epochs
    assert table.cell(runs["plain"]["id"], "epoch_time").best


def test_per_defense_rows_take_the_lowest_seed_with_mean_and_std(table_registry):
    registry, _ = table_registry
    table = build_comparison(registry, select_runs(registry, group="g"), by="defense")
    assert [r.key for r in table.rows] == ["advtrain", "rnn-adv"]  # the paper's defense order
    adv = next(r for r in table.rows if r.key == "advtrain")
    cell = adv.cells["pgd-10"]
    assert cell.value == 60.0 and cell.mean == 70.0 and cell.std == pytest.approx(14.1421, abs=1e-3)
    assert cell.count == 2 and len(adv.run_ids) == 2
    assert format_cell(cell, table.columns[1], "defense") == "60.00 (70.00 ± 14.14, CI n/a) n=20×2"
    assert cell.seeds_note == "n/a (2 seeds; needs 3)"
    assert adv.cells["epoch_time"].value == 60.0  # costs are means: (50 + 70) / 2
    rnn = next(r for r in table.rows if r.key == "rnn-adv")
    # two seeds of advtrain against one of rnn-adv: no paired test over seeds, so no best
    assert not rnn.cells["pgd-10"].best and not adv.cells["cw-100"].best
    assert any("1 matched seed(s), a paired test over seeds needs 3: no best marked" in n for n in table.notes)


def test_selection_by_defense_and_bad_selections(table_registry):
    registry, _ = table_registry
    assert {r["name"] for r in select_runs(registry, defenses=["advtrain"])} == {"adv-s0", "adv-s1"}
    assert len(select_runs(registry)) == 4  # no selection: every evaluated run
    with pytest.raises(ConfigError, match="no run in group 'nope' \\(groups: g, other\\)"):
        select_runs(registry, group="nope")
    with pytest.raises(ConfigError, match="unknown defense 'madry'"):
        select_runs(registry, defenses=["madry"])
    with pytest.raises(RunNotFoundError):
        select_runs(registry, ["ghost"])
    with pytest.raises(ConfigError, match="none of the attacks"):
        build_comparison(registry, select_runs(registry, ["plain"]), attacks="fgsm")


def test_attack_column_filter_recomputes_min_and_worst_case(table_registry):
    registry, runs = table_registry
    table = build_comparison(registry, select_runs(registry, ["adv-s1"]), attacks="cw-100,natural")
    assert [c.key for c in table.columns][:4] == ["cw-100", "natural", "min", "worst-case"]
    assert table.cell(runs["adv-s1"]["id"], "min").value == 65.0  # pgd-10 (60) is not shown


def test_renderers_show_the_same_numbers(table_registry):
    registry, runs = table_registry
    table = build_comparison(registry, select_runs(registry, group="g"), by="defense")
    md = to_markdown(table)
    assert "| Defense | Runs | natural | pgd-10 | cw-100 | min | worst-case | inner params | time/epoch (s) |" in md
    assert "60.00 (70.00 ± 14.14, CI n/a) n=20×2" in md
    rows = list(csv.reader(io.StringIO(to_csv(table))))
    header, adv = rows[0], rows[1]
    assert adv[header.index("pgd-10")] == "60" and adv[header.index("pgd-10 mean")] == "70"
    assert adv[header.index("pgd-10 n")] == "20" and adv[header.index("pgd-10 ci_low")] == ""  # 2 seeds: no interval
    latex = to_latex(table)
    assert r"$\pm$" in latex and r"\toprule" in latex
    registry.update_run(runs["plain"]["id"], name="plain_net")
    assert r"plain\_net & plain & 100.00" in to_latex(build_comparison(registry, select_runs(registry, ["plain_net"])))
    data = json.loads(render(table, "json"))
    assert data["by"] == "defense" and data["rows"][0]["cells"]["pgd-10"]["value"] == 60.0
    with pytest.raises(ConfigError, match="unknown format"):
        render(table, "xlsx")


def test_cumulative_and_flagged_cells_are_marked(runs_root):
    registry = Registry(runs_root)
    a, b = _run(registry, "a", "advtrain"), _run(registry, "b", "advtrain")
    _store(registry, a, "pgd-10", 10)
    _store(registry, a, "pgd-100", 18, steps=100)  # more steps, clearly higher: flagged
    _store(registry, b, "pgd-10", 10, kind="cumulative")
    table = build_comparison(registry, select_runs(registry))
    assert format_cell(table.cell(a["id"], "pgd-100"), table.columns[1]).endswith("!")
    assert format_cell(table.cell(b["id"], "pgd-10"), table.columns[0]) == "50.00 [27.2–72.8] n=20*"
    assert any(n.startswith("! a / pgd-100: robust accuracy rises with more steps") and "pgd-100x5" in n
               for n in table.notes)  # the flag names its cell and what to do
    assert any(note.startswith("* cumulative") for note in table.notes)


def test_compare_and_export_reproduce_stored_results(trained_runs, tmp_path):
    registry = Registry(trained_runs)
    for run in ("plain", "rnn-adv"):
        evaluate_run(registry, run, "natural,fgsm", limit=50, device="cpu", eps=0.2)
    stored = {run: results_for_run(registry, registry.resolve_run(run)["id"]) for run in ("plain", "rnn-adv")}

    result = CliRunner().invoke(app, ["compare", "plain", "rnn-adv"])
    assert result.exit_code == 0, result.output
    for run, docs in stored.items():
        assert run in result.output
        for attack in ("natural", "fgsm", "worst-case"):
            assert f"{docs[attack]['accuracy']:.2f}" in result.output
    assert "120" in result.output  # the RNN's parameter count (Table 2)

    out = tmp_path / "table.csv"
    result = CliRunner().invoke(app, ["export", "plain", "rnn-adv", "--format", "csv", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["Run"]: r for r in csv.DictReader(io.StringIO(out.read_text()))}
    for run, docs in stored.items():
        assert float(rows[run]["fgsm"]) == pytest.approx(docs["fgsm"]["accuracy"], abs=1e-4)
        assert float(rows[run]["min"]) == pytest.approx(docs["min"]["accuracy"], abs=1e-4)

    result = CliRunner().invoke(app, ["export", "--defense", "plain,rnn-adv", "--by", "defense", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {r["key"] for r in data["rows"]} == {"plain", "rnn-adv"}

    result = CliRunner().invoke(app, ["export", "plain", "--format", "xlsx"])
    assert result.exit_code != 0 and "unknown format" in str(result.exception)
