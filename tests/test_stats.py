"""Uncertainty on compared numbers, and comparisons that refuse to mix what is not comparable:
intervals and McNemar checked against a computation by hand, crafted results with manifests,
crafted events streams; nothing is trained."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from advtui.cli import app
from advtui.compare import build_comparison, format_cell, select_runs
from advtui.core.paths import run_dir
from advtui.core.digests import ids_digest, ids_to_hex, mask_to_hex
from advtui.store.results import results_for_run, store_result
from advtui.core.stats import over_seeds, paired_difference, proportion_interval
from advtui.core.errors import ConfigError
from advtui.paired import paired_report
from advtui.store.registry import Registry
from store_support import store_snapshot

SPLIT = 100  # the crafted test split's size


# -- by hand: the binomial sums behind the exact interval and the exact McNemar test -------------------
def _tail_at_least(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def _solve(f, lo=0.0, hi=1.0) -> float:
    """The root of an increasing f on [lo, hi], by bisection."""
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    """The p at which P(X >= k) = 2.5% and the p at which P(X <= k) = 2.5%."""
    low = 0.0 if k == 0 else _solve(lambda p: _tail_at_least(k, n, p) - 0.025)
    high = 1.0 if k == n else _solve(lambda p: 0.025 - (1 - _tail_at_least(k + 1, n, p)))
    return low, high


def mcnemar_by_hand(b: int, c: int) -> float:
    m = b + c
    return min(1.0, 2 * sum(math.comb(m, i) for i in range(min(b, c) + 1)) / 2**m)


def test_intervals_and_mcnemar_equal_a_computation_by_hand():
    for k, n in ((0, 20), (17, 20), (20, 20), (85, 100), (3, 7)):
        low, high = proportion_interval(k, n)
        ref = clopper_pearson(k, n)
        assert low == pytest.approx(100 * ref[0], abs=1e-6) and high == pytest.approx(100 * ref[1], abs=1e-6)

    # Known masks over 30 examples: 12 robust under both, 9 only under A, 2 only under B, 7 under neither.
    a = np.array([1] * 12 + [1] * 9 + [0] * 2 + [0] * 7, dtype=bool)
    b = np.array([1] * 12 + [0] * 9 + [1] * 2 + [0] * 7, dtype=bool)
    test = paired_difference(a, b)
    assert (test.n, test.gained, test.lost) == (30, 9, 2)
    assert test.difference == pytest.approx(100 * 7 / 30)
    assert test.p == pytest.approx(mcnemar_by_hand(9, 2), abs=1e-12)  # 0.0654
    q_low, q_high = clopper_pearson(9, 11)  # the share of the 11 discordant examples A kept
    assert test.low == pytest.approx(100 * 11 / 30 * (2 * q_low - 1), abs=1e-6)
    assert test.high == pytest.approx(100 * 11 / 30 * (2 * q_high - 1), abs=1e-6)
    assert (test.low < 0) == (test.p >= 0.05)  # interval and test agree
    same = paired_difference(a, a)
    assert (same.p, same.low, same.high, same.difference) == (1.0, 0.0, 0.0, 0.0)


def test_an_interval_over_seeds_needs_three_seeds():
    two = over_seeds([60.0, 80.0])
    assert two.low is None and two.interval_text == "n/a (2 seeds; needs 3)" and two.std == pytest.approx(14.1421, 1e-4)
    values = [60.0, 70.0, 80.0]
    three = over_seeds(values)
    # mean ± t(0.975, 2) * s / sqrt(3), with t(0.975, 2) = 4.302652729...
    half = 4.302652729749464 * 10.0 / math.sqrt(3)
    assert (three.low, three.high) == (pytest.approx(70 - half), pytest.approx(70 + half))


# -- crafted runs and results ------------------------------------------------------------------------
def _run(registry, name, defense, *, seed=0, group="g", config=None, best_epoch=None):
    fields = {"name": name, "defense": defense, "group": group, "dataset": "mnist", "model": "smallcnn",
              "status": "finished", "epoch": 3, "epochs": 3, "maximizer_params": 0, "train_time": 30.0,
              "device": "cpu", "config": {"seed": seed, "lr": 0.05, "epochs": 3, "train_limit": 1000, **(config or {})}}
    if best_epoch is not None:
        fields["best_epoch"] = best_epoch
    return registry.create_run(fields)


def _store(registry, run, attack, robust_ids, *, ids=range(40), eps=0.3, checkpoint="final", date=None):
    """A result on the test examples ``ids``, robust on ``robust_ids``, with a manifest."""
    ids = np.array(sorted(ids))
    mask = np.isin(ids, list(robust_ids))
    family, _, steps = attack.rpartition("-") if attack[-1].isdigit() else (attack, "", "0")
    steps = int(steps)
    examples = f"mnist/test/{len(ids)}"
    store_result(registry, {
        "kind": "attack", "run_id": run["id"], "attack": attack, "checkpoint_hash": "h" + run["id"] + checkpoint,
        "label": attack, "family": family, "steps": steps, "restarts": 1, "source_run": None,
        "source_checkpoint_hash": None, "checkpoint": f"checkpoints/{checkpoint}.pt", "date": date or time.time(),
        "eval_id": "e1", "settings": {"eps": eps, "examples": examples, "n": len(ids), "seed": 0},
        "accuracy": 100.0 * mask.sum() / len(ids), "robust": int(mask.sum()), "n": len(ids), "n_attacked": len(ids),
        "accuracy_kind": "attack", "clean_accuracy": 100.0, "clean_robust": len(ids), "wall_time": 1.0, "loss": "ce",
        "trajectory": [0.1, 1.0], "trajectory_model": "target", "gradient": None, "robust_mask": mask_to_hex(mask),
        "flags": [], "manifest": {"eps": eps, "examples": examples, "n": len(ids), "split_size": SPLIT,
                                  "example_ids": ids_to_hex(ids, SPLIT), "examples_hash": ids_digest(ids),
                                  "checkpoint_kind": checkpoint, "spec": attack}})


def _cli(root, *args):
    proc = subprocess.run([sys.executable, "-m", "advtui", *args, "--runs-dir", str(root)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": "src"})
    return proc.returncode, proc.stdout, proc.stderr.strip().splitlines()


@pytest.fixture
def pair(runs_root):
    """Two runs on the same 40 examples: A robust on 0-29, B on 0-9 and 30-31 (A gains 20, loses 2)."""
    registry = Registry(runs_root)
    a, b = _run(registry, "a", "rnn-adv"), _run(registry, "b", "advtrain", config={"lr": 0.01})
    for attack in ("natural", "pgd-10"):
        _store(registry, a, attack, range(30) if attack == "pgd-10" else range(38))
        _store(registry, b, attack, [*range(10), 30, 31] if attack == "pgd-10" else range(37))
    return registry, a, b


def test_cells_carry_n_and_interval_and_best_only_beyond_noise(pair):
    registry, a, b = pair
    table = build_comparison(registry, select_runs(registry, ["a", "b"]))
    pgd = table.cell(a["id"], "pgd-10")
    assert (pgd.n, pgd.robust) == (40, 30)
    low, high = clopper_pearson(30, 40)
    assert pgd.low == pytest.approx(100 * low, abs=1e-6) and pgd.high == pytest.approx(100 * high, abs=1e-6)
    column = next(c for c in table.columns if c.key == "pgd-10")
    assert format_cell(pgd, column) == f"75.00 [{100 * low:.1f}–{100 * high:.1f}] n=40"
    # pgd-10: 20 against 2 discordant examples, p far below 5%: best. natural: 38 vs 37 (1 against 0): not.
    assert pgd.best and not table.cell(b["id"], "pgd-10").best
    assert not table.cell(a["id"], "natural").best and not table.cell(b["id"], "natural").best
    assert any(n.startswith("Best-in-column test, pgd-10: a 75.00 vs b 30.00: +45.00 on 40 shared examples, exact McNemar p = ")
               and n.endswith("marked best.") for n in table.notes)
    assert any("natural: a 95.00 vs b 92.50" in n and "not significant, no best marked" in n for n in table.notes)


def test_paired_cli_prints_difference_interval_and_mcnemar_with_the_checkpoint_caveat(pair):
    registry, _, _ = pair
    report = paired_report(registry, select_runs(registry, ["a", "b"]))
    test = next(c for c in report.columns if c.attack == "pgd-10").pairs[0].test
    assert (test.n, test.gained, test.lost) == (40, 20, 2) and test.p == pytest.approx(mcnemar_by_hand(20, 2))
    result = CliRunner().invoke(app, ["compare", "a", "b", "--paired", "--runs-dir", str(registry.root)])
    assert result.exit_code == 0, result.output
    line = next(line.strip() for line in result.output.splitlines() if line.strip().startswith("pgd-10"))
    assert line.split()[:5] == ["pgd-10", "40", "75.00", "30.00", "+45.00"]
    assert f"{test.p:.3g}" in line and f"[{test.low:+.2f}, {test.high:+.2f}]" in line
    assert "tests these two checkpoints" in result.output and "--seeds 0-4" in result.output


def test_paired_over_matched_seeds_gives_per_seed_tests_and_a_t_interval(runs_root):
    registry = Registry(runs_root)
    diffs = []
    for seed, (ra, rb) in enumerate(((30, 20), (28, 24), (33, 21))):
        a, b = _run(registry, f"rnn-s{seed}", "rnn-adv", seed=seed), _run(registry, f"adv-s{seed}", "advtrain", seed=seed)
        _store(registry, a, "pgd-10", range(ra))
        _store(registry, b, "pgd-10", range(rb))
        diffs.append(100.0 * (ra - rb) / 40)
    report = paired_report(registry, select_runs(registry, defenses=["rnn-adv", "advtrain"]))
    (column,) = report.columns
    assert [p.seed for p in column.pairs] == [0, 1, 2]
    assert [p.test.difference for p in column.pairs] == pytest.approx(diffs)
    assert [p.test.p for p in column.pairs] == pytest.approx([mcnemar_by_hand(ra - rb, 0)
                                                              for ra, rb in ((30, 20), (28, 24), (33, 21))])
    summary = column.over_seeds
    half = 4.302652729749464 * np.std(diffs, ddof=1) / math.sqrt(3)
    assert summary.mean == pytest.approx(np.mean(diffs)) and summary.low == pytest.approx(np.mean(diffs) - half)
    assert summary.wilcoxon_p is None  # 3 seeds: too few for the signed-rank test to reach 5%
    assert not any("tests these two checkpoints" in n for n in report.notes)


def test_paired_without_shared_examples_is_one_line_and_a_nonzero_exit(runs_root):
    registry = Registry(runs_root)
    a, b = _run(registry, "a", "rnn-adv"), _run(registry, "b", "advtrain")
    _store(registry, a, "pgd-10", range(5), ids=range(0, 20))
    _store(registry, b, "pgd-10", range(25, 30), ids=range(20, 40))
    before = store_snapshot(runs_root)
    code, out, err = _cli(runs_root, "compare", "a", "b", "--paired")
    assert code != 0 and out == "" and len(err) == 1
    assert err[0].startswith("error: --paired: a and b share no evaluated example") and "--limit N" in err[0]
    assert store_snapshot(runs_root) == before


def test_a_mismatched_column_is_marked_named_and_refused_under_strict(runs_root):
    registry = Registry(runs_root)
    a, b, c = (_run(registry, name, "advtrain") for name in ("a", "b", "c"))
    _store(registry, a, "pgd-10", range(20))
    _store(registry, b, "pgd-10", range(22))
    _store(registry, c, "pgd-10", range(10), eps=0.2)  # another eps only
    table = build_comparison(registry, select_runs(registry, ["a", "b", "c"]))
    assert table.cell(c["id"], "pgd-10").marks == ["eps 0.2, the rest of the column eps 0.3"]
    assert not table.cell(a["id"], "pgd-10").marks
    column = next(col for col in table.columns if col.key == "pgd-10")
    assert format_cell(table.cell(c["id"], "pgd-10"), column).endswith("≠")
    assert any(n.startswith("≠ c / pgd-10: eps 0.2, the rest of the column eps 0.3; not comparable") for n in table.notes)

    before = store_snapshot(runs_root)
    code, out, err = _cli(runs_root, "compare", "a", "b", "c", "--strict")
    assert code != 0 and out == "" and len(err) == 1
    assert err[0].startswith("error: --strict: column pgd-10 mixes results that are not comparable (eps 0.2")
    assert store_snapshot(runs_root) == before
    code, out, _ = _cli(runs_root, "compare", "a", "b", "--strict")
    assert code == 0 and "50.00" in out


def test_min_and_worst_case_use_the_examples_every_column_shares_and_the_larger_result_wins(runs_root):
    registry = Registry(runs_root)
    run = _run(registry, "a", "advtrain")
    _store(registry, run, "natural", range(38), ids=range(40))
    _store(registry, run, "pgd-10", range(20), ids=range(40))
    _store(registry, run, "aa", range(5), ids=range(20))  # aa on the first 20 only: robust on 5 of them
    table = build_comparison(registry, select_runs(registry, ["a"]))
    low, worst = table.cell(run["id"], "min"), table.cell(run["id"], "worst-case")
    assert (low.n, low.robust, worst.n, worst.robust) == (20, 5, 20, 5)
    assert low.flags == ["over the 20 examples every shown column shares"]
    assert "! a / min: over the 20 examples every shown column shares; evaluate every shown attack on the same " \
           "examples (same --limit) for a number over all of them." in table.notes
    # The same attack on 40 and on 20 examples: the larger wins unless the latest is asked for.
    _store(registry, run, "pgd-10", range(3), ids=range(20), date=time.time() + 10)
    docs = results_for_run(registry, run["id"])
    assert docs["pgd-10"]["n"] == 40 and results_for_run(registry, run["id"], prefer="latest")["pgd-10"]["n"] == 20
    assert len([d for d in registry.search("results", run_id=run["id"]) if d["attack"] == "pgd-10"]) == 2


def _events(registry, run, epochs):
    folder = run_dir(registry.root, run["id"])
    folder.mkdir(parents=True, exist_ok=True)
    lines = [{"kind": "epoch", "time": 1.0, "epoch": e, "train_loss": loss, "val_clean_acc": clean,
              "val_pgd_acc": pgd, "val_n": 1000} for e, (loss, clean, pgd) in enumerate(epochs, start=1)]
    (folder / "events.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture
def trained(runs_root):
    """Three runs with per-epoch validation metrics; b's best epoch recorded by its trainer."""
    registry = Registry(runs_root)
    runs = {"a": _run(registry, "a", "advtrain", config={"lr": 0.05, "beta": 1.0}),
            "b": _run(registry, "b", "rnn-adv", config={"lr": 0.01, "beta": 1.0}, best_epoch=2),
            "c": _run(registry, "c", "trades", seed=1, config={"lr": 0.05, "beta": 1.0})}
    _events(registry, runs["a"], [(2.0, 50.0, 30.0), (1.5, 70.0, 45.0), (1.2, 80.0, 40.0)])
    _events(registry, runs["b"], [(2.1, 55.0, 35.0), (1.4, 75.0, 38.0), (1.1, 82.0, 50.0)])
    _events(registry, runs["c"], [(2.2, 40.0, 20.0), (1.9, 60.0, 33.0), (1.6, 66.0, 41.0)])
    for name, robust in (("a", 20), ("b", 24), ("c", 12)):
        _store(registry, runs[name], "pgd-10", range(robust))
    return registry, runs


def _texts(table, column_key):
    column = next(c for c in table.columns if c.key == column_key)
    return {r.label: format_cell(r.cells[column_key], column) if column_key in r.cells else "-" for r in table.rows}


def test_at_best_diff_and_baseline_give_the_expected_table(trained):
    registry, runs = trained
    table = build_comparison(registry, select_runs(registry, ["a", "b", "c"]), diff=True, at="best", baseline="a")
    keys = [c.key for c in table.columns]
    # --diff: only lr and seed differ (beta, epochs and train_limit are equal)
    assert [k for k in keys if k.startswith("config:")] == ["config:lr", "config:seed"]
    assert _texts(table, "config:lr") == {"a": "0.05", "b": "0.01", "c": "0.05"}
    # --at best: a and c by their highest validation robust accuracy, b at its recorded best epoch
    assert _texts(table, "epoch:epoch") == {"a": "2", "b": "2 (+0.00)", "c": "3 (+1.00)"}
    assert _texts(table, "epoch:pgd_acc") == {"a": "45.00", "b": "38.00 (-7.00)", "c": "41.00 (-4.00)"}
    assert _texts(table, "epoch:pgd_acc:max") == {"a": "45.00", "b": "50.00 (+5.00)", "c": "41.00 (-4.00)"}
    assert _texts(table, "epoch:pgd_acc:min") == {"a": "30.00", "b": "35.00 (+5.00)", "c": "20.00 (-10.00)"}
    assert table.cell(runs["b"]["id"], "pgd-10").delta == pytest.approx(10.0)
    assert table.baseline == runs["a"]["id"]
    final = build_comparison(registry, select_runs(registry, ["a", "b"]), at="final")
    assert _texts(final, "epoch:clean_acc") == {"a": "80.00", "b": "82.00"}
    two = build_comparison(registry, select_runs(registry, ["a", "b"]), at="1")
    assert _texts(two, "epoch:train_loss") == {"a": "2.00", "b": "2.10"}


def test_a_baseline_outside_the_selection_is_one_line_and_a_nonzero_exit(trained):
    registry, _ = trained
    with pytest.raises(ConfigError, match="--baseline c is not among the compared runs"):
        build_comparison(registry, select_runs(registry, ["a", "b"]), baseline="c")
    before = store_snapshot(registry.root)
    for args, says in ((["a", "b", "--baseline", "c"], "error: --baseline c is not among the compared runs (a, b)"),
                       (["a", "b", "--at", "soon"], "error: --at must be best, final or an epoch number")):
        code, out, err = _cli(registry.root, "compare", *args)
        assert code != 0 and out == "" and len(err) == 1 and err[0].startswith(says)
    assert store_snapshot(registry.root) == before


def test_an_evaluation_stores_its_manifest_and_keeps_each_eps_beside_the_others(runs_root, mnist_root):
    import torch
    import torchattacks

    from advtui import __version__
    from advtui.core.config import build_config
    from advtui.store.results import all_results_for_run, example_ids
    from advtui.engine.data import balanced_subset, load_split
    from advtui.evaluation import evaluate_run
    from advtui.runner import RunPlan, execute_run

    run = execute_run(RunPlan(build_config("plain", name="tiny", train_limit=100, test_limit=100, eval_limit=20,
                                           batch_size=50, epochs=1, device="cpu", seed=0)), runs_root)
    registry = Registry(runs_root)
    for eps in (0.1, 0.2):
        evaluate_run(registry, "tiny", "natural,fgsm", limit=30, eps=eps, device="cpu")
    docs = all_results_for_run(registry, run["id"])
    assert sorted((d["attack"], d["settings"]["eps"]) for d in docs) == [
        ("fgsm", 0.1), ("fgsm", 0.2), ("natural", 0.1), ("natural", 0.2)]
    fgsm = next(d for d in docs if d["attack"] == "fgsm" and d["settings"]["eps"] == 0.2)
    manifest = fgsm["manifest"]
    assert (manifest["spec"], manifest["eps"], manifest["steps"], manifest["restarts"], manifest["seed"]) == \
        ("fgsm", 0.2, 1, 1, 0)
    assert manifest["step_size"] == pytest.approx(0.05) and manifest["n"] == 30
    assert (manifest["checkpoint_kind"], manifest["checkpoint_epoch"]) == ("final", 1)
    assert manifest["versions"] == {"advtui": __version__, "torch": torch.__version__,
                                    "torchattacks": torchattacks.__version__}
    # The ids are the class-balanced subset the evaluation ran on, in the order of its masks.
    labels = load_split("mnist", mnist_root, False, None).labels
    assert example_ids(fgsm).tolist() == balanced_subset(labels, 30, seed=0).tolist()
    assert manifest["examples_hash"] == ids_digest(balanced_subset(labels, 30, seed=0).numpy())


def test_compare_shows_the_training_eps_unless_another_is_asked_for(runs_root):
    registry = Registry(runs_root)
    run = _run(registry, "e", "advtrain", config={"eps": 0.3})
    _store(registry, run, "pgd-10", range(20), eps=0.3)
    for attack in ("pgd-10", "pgd-20"):  # evaluated later, and with more attacks, at eps 0.6
        _store(registry, run, attack, range(2), eps=0.6, date=time.time() + 10)
    shown = build_comparison(registry, select_runs(registry, ["e"]))
    assert [c.key for c in shown.columns if c.group == "attack"] == ["pgd-10"]
    assert shown.cell(run["id"], "pgd-10").value == 50.0
    other = build_comparison(registry, select_runs(registry, ["e"]), eps=0.6)
    assert [c.key for c in other.columns if c.group == "attack"] == ["pgd-10", "pgd-20"]
    assert other.cell(run["id"], "pgd-10").value == 5.0


def test_reproduce_says_what_a_planned_table_can_resolve(runs_root):
    from advtui.core.stats import half_width
    from advtui.reproduce import plan_reproduction, resolution_line

    quick = plan_reproduction(Registry(runs_root), "table3", "quick", device="cpu")
    assert resolution_line(quick) == (
        f"Each cell will rest on 200 test examples and 1 seed(s): at 85% an exact 95% interval is "
        f"±{half_width(85.0, 200):.1f} points, so smaller differences are not resolved; with 1 seed(s) per defense "
        "no interval over seeds (training noise) can be given; --seeds 3 or more for one.")
    result = CliRunner().invoke(app, ["reproduce", "table3", "--scale", "quick", "--seeds", "3", "--dry-run",
                                      "--runs-dir", str(runs_root)])
    assert result.exit_code == 0, result.output
    assert "3 seed(s): at 85% an exact 95% interval is" in result.output
    assert "an interval over seeds is given (t, 3 seeds or more)" in result.output
