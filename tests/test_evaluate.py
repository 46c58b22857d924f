"""Evaluating trained runs under attacks: accuracies, stored results, events, flags, bad input.

Budgets are small (50-100 test examples, few steps) so the file runs in well under a minute of
CPU; the models are the real ones of the ``trained_runs`` fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from advtui.cli import app
from advtui.engine.checkpoint import load_checkpoint, save_checkpoint
from advtui.core.digests import hex_to_mask, mask_to_hex
from advtui.store.results import compute_flags, results_for_run, summarize
from advtui.evaluation import evaluate_run
from advtui.core.errors import AdvtuiError
from advtui.store.registry import RESULTS, Registry
from store_support import store_snapshot


def _eval(root: Path, run: str, attacks: str, **kw):
    kw.setdefault("limit", 100)
    kw.setdefault("device", "cpu")
    return evaluate_run(Registry(root), run, attacks, **kw)


def _eval_events(root: Path, run_id: str) -> list[dict]:
    lines = (root / run_id / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == "eval"]


def test_plain_model_is_broken_by_pgd_and_everything_is_recorded(trained_runs):
    report = _eval(trained_runs, "plain", "natural,pgd-10")
    natural, pgd = report.results
    assert natural["attack"] == "natural" and natural["accuracy"] > 60  # the fixture's plain model: ~75-90%
    assert pgd["accuracy"] < 10  # eps 0.3 breaks an undefended model
    assert pgd["n"] == 100 and pgd["n_attacked"] == natural["robust"]  # only clean-correct examples attacked
    assert len(pgd["trajectory"]) == 11 and pgd["trajectory"][-1] > pgd["trajectory"][0]
    assert report.settings["eps"] == 0.3 and report.settings["step_size"] == pytest.approx(0.075)

    run_id = report.run_id
    stored = results_for_run(Registry(trained_runs), run_id)
    assert list(stored) == ["natural", "pgd-10", "min", "worst-case"]
    assert stored["pgd-10"]["accuracy"] == pgd["accuracy"]
    assert stored["pgd-10"]["checkpoint"] == "checkpoints/final.pt"
    assert stored["min"]["accuracy"] == pgd["accuracy"] and stored["min"]["argmin"] == "pgd-10"
    assert stored["worst-case"]["accuracy"] <= stored["min"]["accuracy"]

    events = _eval_events(trained_runs, run_id)
    phases = [e["phase"] for e in events]
    assert phases[0] == "start" and phases[-1] == "end" and phases.count("attack") == 2 and "progress" in phases
    attack_event = next(e for e in events if e["phase"] == "attack" and e["attack"] == "pgd-10")
    assert attack_event["trajectory"] == pytest.approx(pgd["trajectory"])
    assert events[-1]["status"] == "finished" and events[-1]["worst_case"]["n"] == 100


def test_eps_zero_gives_natural_accuracy_exactly(trained_runs):
    report = _eval(trained_runs, "plain", "natural,fgsm,pgd-3,cw-3,rnn-3:rnn-adv", eps=0.0)
    accuracies = {d["attack"].split(":")[0]: d["accuracy"] for d in report.results}
    assert len(set(accuracies.values())) == 1, accuracies
    assert all(not d["flags"] for d in report.results)


def test_more_steps_do_not_raise_robust_accuracy(trained_runs):
    # eps 0.1 leaves the plain model partly robust, so the comparison is not 0 vs 0.
    report = _eval(trained_runs, "plain", "pgd-2,pgd-16", eps=0.1, limit=80)
    few, many = report.results
    assert 5 < few["accuracy"] < 100
    assert many["accuracy"] <= few["accuracy"] + 2.0
    assert not any(f["code"] == "steps-up" for f in many["flags"])
    assert report.summaries["worst-case"]["accuracy"] <= report.summaries["min"]["accuracy"]


def test_learned_optimizer_and_transfer_attacks_run(trained_runs):
    registry = Registry(trained_runs)
    rnn_run, surrogate = registry.resolve_run("rnn-adv"), registry.resolve_run("advtrain")
    report = _eval(trained_runs, "rnn-adv", "natural,pgd-5,rnn-5,transfer-pgd-5:advtrain", limit=60)
    by_family = {d["family"]: d for d in report.results}
    rnn = by_family["rnn"]
    assert rnn["attack"] == f"rnn-5:{rnn_run['id']}" and rnn["source_run"] == rnn_run["id"]
    assert len(rnn["trajectory"]) == 6 and rnn["source_checkpoint_hash"]
    transfer = by_family["transfer-pgd"]
    assert transfer["source_run"] == surrogate["id"] and transfer["trajectory_model"] == "surrogate"
    assert transfer["gradient"] is None  # black box: the target's gradients are never used
    for d in report.results:
        assert d["accuracy"] <= by_family["natural"]["accuracy"]

    # worst-case is per example: exactly the AND of the stored masks, never above min
    masks = [hex_to_mask(d["robust_mask"], d["n"]) for d in report.results]
    worst = report.summaries["worst-case"]
    assert worst["robust"] == int(np.logical_and.reduce(masks).sum())
    assert worst["accuracy"] <= report.summaries["min"]["accuracy"]
    assert set(worst["over"]) == {d["attack"] for d in report.results}


def test_l2lda_generator_of_a_run_is_an_attacker(trained_runs, mnist_root):
    from advtui.core.config import build_config
    from advtui.runner import RunPlan, execute_run

    # A tiny but real l2lda run: two generator updates are enough to have a checkpoint to load.
    config = build_config("l2lda", name="l2lda-tiny", data_root=str(mnist_root), device="cpu", train_limit=100,
                          test_limit=20, eval_limit=10, batch_size=50, epochs=1, inner_steps=2, eps=0.3)
    l2lda_run = execute_run(RunPlan(config), trained_runs)
    report = _eval(trained_runs, "plain", "natural,l2lda-3:l2lda-tiny", limit=40)
    natural, l2lda = report.results
    assert l2lda["attack"] == f"l2lda-3:{l2lda_run['id']}" and l2lda["label"] == "l2lda-3:l2lda-tiny"
    assert len(l2lda["trajectory"]) == 4 and l2lda["accuracy"] <= natural["accuracy"]


def test_rerunning_replaces_only_the_same_key(trained_runs):
    registry = Registry(trained_runs)
    first = _eval(trained_runs, "plain", "natural,fgsm", limit=50)
    natural_before = results_for_run(registry, first.run_id)["natural"]
    _eval(trained_runs, "plain", "fgsm", limit=50, seed=1)
    docs = registry.search(RESULTS, run_id=first.run_id)
    assert sorted(d["attack"] for d in docs) == ["fgsm", "min", "natural", "worst-case"]
    stored = results_for_run(registry, first.run_id)
    assert stored["fgsm"]["settings"]["seed"] == 1 and stored["fgsm"]["eval_id"] != first.eval_id
    assert stored["natural"] == natural_before  # untouched

    # Another checkpoint of the same run is another key: both sets of results survive.
    ckpt = trained_runs / first.run_id / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt)
    state["epoch_note"] = "a different file"
    save_checkpoint(ckpt, state)
    other = _eval(trained_runs, "plain", "fgsm", limit=50, checkpoint=ckpt)
    assert other.checkpoint_hash != first.checkpoint_hash
    assert results_for_run(registry, first.run_id, first.checkpoint_hash)["fgsm"]["settings"]["seed"] == 1
    assert list(results_for_run(registry, first.run_id)) == ["fgsm", "min", "worst-case"]  # the latest checkpoint


def test_cascade_runs_later_attacks_on_survivors_and_says_so(trained_runs):
    report = _eval(trained_runs, "plain", "natural,fgsm,pgd-5", cascade=True, eps=0.15)
    natural, fgsm, pgd = report.results
    assert fgsm["accuracy_kind"] == "attack" and fgsm["n_attacked"] == natural["robust"]
    assert pgd["accuracy_kind"] == "cumulative" and pgd["n_attacked"] == fgsm["robust"]
    assert pgd["accuracy"] <= fgsm["accuracy"]
    assert report.summaries["worst-case"]["accuracy"] == pgd["accuracy"]
    assert "pgd-5" not in report.summaries["min"]["over"]  # a cumulative number is not a column


def test_zero_input_gradients_are_flagged_and_cw_still_moves(trained_runs):
    registry = Registry(trained_runs)
    run = registry.resolve_run("plain")
    state = load_checkpoint(trained_runs / run["id"] / "checkpoints" / "final.pt")
    # Logits scaled by 1e4: softmax saturates to exactly one-hot, so the CE gradient is exactly 0.
    for key in ("classifier.5.weight", "classifier.5.bias"):
        state["model"][key] = state["model"][key] * 1e4
    saturated = trained_runs / run["id"] / "checkpoints" / "last.pt"  # only a run's own checkpoints are the run
    save_checkpoint(saturated, state)
    report = _eval(trained_runs, "plain", "natural,pgd-5,cw-5", limit=50, checkpoint="last")
    natural, pgd, cw = report.results
    codes = {d["attack"]: [f["code"] for f in d["flags"]] for d in report.results}
    assert "zero-gradient" in codes["pgd-5"] and pgd["gradient"]["zero"] > 0
    assert "zero-gradient" not in codes["cw-5"]  # the margin loss does not saturate
    assert cw["accuracy"] < pgd["accuracy"]


def _doc(attack, family, steps, mask, *, source=None, kind="attack", eps=0.3):
    mask = np.asarray(mask, dtype=bool)
    return {"attack": attack, "label": attack, "family": family, "steps": steps, "restarts": 1,
            "source_run": source, "accuracy_kind": kind, "n": len(mask), "robust": int(mask.sum()),
            "accuracy": 100.0 * mask.mean(), "robust_mask": mask_to_hex(mask), "settings": {"eps": eps},
            "clean_robust": len(mask), "trajectory": [1.0, 2.0], "gradient": {"checked": 10, "zero": 0, "nonfinite": 0}}


def test_flags_for_rising_steps_and_strong_transfer_need_more_than_noise():
    n = 100
    weak = np.zeros(n, dtype=bool)
    weak[:50] = True
    noisy = weak.copy()
    noisy[[0, 60]] = [False, True]  # one example each way: noise
    rising = weak.copy()
    rising[50:70] = True  # 20 more robust examples with 10x the steps: not noise
    flags = compute_flags([_doc("pgd-10", "pgd", 10, weak), _doc("pgd-100", "pgd", 100, noisy)])
    assert flags == {"pgd-10": [], "pgd-100": []}
    flags = compute_flags([_doc("pgd-10", "pgd", 10, weak), _doc("pgd-100", "pgd", 100, rising)])
    assert [f["code"] for f in flags["pgd-100"]] == ["steps-up"] and flags["pgd-10"] == []
    # The same numbers with different attack families are not a steps-up problem.
    assert compute_flags([_doc("pgd-10", "pgd", 10, weak), _doc("cw-100", "cw", 100, rising)])["cw-100"] == []

    strong_transfer = np.zeros(n, dtype=bool)
    strong_transfer[:20] = True
    flags = compute_flags([_doc("pgd-10", "pgd", 10, weak),
                           _doc("transfer-pgd-20:abc", "transfer-pgd", 20, strong_transfer, source="abc")])
    assert [f["code"] for f in flags["transfer-pgd-20:abc"]] == ["transfer-stronger"]
    flags = compute_flags([_doc("pgd-10", "pgd", 10, strong_transfer),
                           _doc("transfer-pgd-20:abc", "transfer-pgd", 20, weak, source="abc")])
    assert flags["transfer-pgd-20:abc"] == []

    broken = _doc("pgd-3", "pgd", 3, weak, eps=0.0)
    broken["gradient"] = {"checked": 10, "zero": 0, "nonfinite": 2}
    broken["trajectory"] = [1.0, None]
    assert {f["code"] for f in compute_flags([broken])["pgd-3"]} == {"nonfinite-gradient", "nonfinite-loss", "eps0-mismatch"}


def test_summaries_count_per_example_and_skip_cumulative_columns():
    a = np.array([1, 1, 0, 1, 0, 1], dtype=bool)
    b = np.array([1, 0, 1, 1, 0, 1], dtype=bool)
    c = np.array([0, 0, 0, 1, 0, 0], dtype=bool)
    summary = summarize([_doc("pgd-10", "pgd", 10, a), _doc("cw-10", "cw", 10, b),
                         _doc("fgsm", "fgsm", 1, c, kind="cumulative")])
    assert summary["min"]["accuracy"] == pytest.approx(100 * 4 / 6) and summary["min"]["over"] == ["pgd-10", "cw-10"]
    assert summary["worst-case"]["robust"] == 1  # only example 3 survives all three
    assert hex_to_mask(mask_to_hex(a), 6).tolist() == a.tolist()


# -- the command line ---------------------------------------------------------------------------------------
def test_eval_command_prints_the_table(trained_runs):
    result = CliRunner().invoke(app, ["eval", "plain", "--attacks", "natural,fgsm", "--limit", "50",
                                      "--device", "cpu", "--batch-size", "20"])
    assert result.exit_code == 0, result.output
    assert "natural" in result.output and "fgsm" in result.output and "worst-case" in result.output
    assert "done, " in result.output  # plain progress lines when not on a terminal
    stored = results_for_run(Registry(trained_runs), Registry(trained_runs).resolve_run("plain")["id"])
    assert f"{stored['fgsm']['accuracy']:.2f}" in result.output


@pytest.mark.parametrize("args, error, message", [
    (["plain", "--attacks", "natural,pgd-10,deepfool-5"], "AttackSpecError", "unknown attack 'deepfool-5'"),
    (["advtrain", "--attacks", "pgd-10,rnn-10:plain"], "ConfigError", "has no learned rnn maximizer"),
    (["advtrain", "--attacks", "transfer:plain"], "ConfigError", "trained at eps 0.3"),
    (["nosuchrun"], "RunNotFoundError", "no run 'nosuchrun'"),
    (["plain", "--eps", "1.5"], "ConfigError", "--eps must be in [0, 1]"),
    (["plain", "--checkpoint", "CORRUPT"], "CheckpointError", "is corrupt or not a checkpoint"),
    (["plain", "--checkpoint", "MISSING"], "CheckpointError", "does not exist"),
    (["plain", "--checkpoint", "OTHER"], "CheckpointError", "is not one of run"),
    (["plain", "--checkpoint", "epoch:99"], "ConfigError", "has trained 3 epochs: pass an epoch from 1 to 3"),
])
def test_bad_input_changes_nothing(trained_runs, args, error, message):
    plain, other = (Registry(trained_runs).resolve_run(name)["id"] for name in ("plain", "advtrain"))
    corrupt = trained_runs / plain / "checkpoints" / "last.pt"  # the run's own file, damaged
    corrupt.write_bytes(b"not a checkpoint at all")
    args = [str(trained_runs / other / "checkpoints" / "final.pt") if a == "OTHER" else a for a in args]
    args = [str(corrupt) if a == "CORRUPT" else str(trained_runs / "missing.pt") if a == "MISSING" else a for a in args]
    _eval(trained_runs, "plain", "natural", limit=20)  # something stored that must survive
    before = store_snapshot(trained_runs)
    events_before = {p: p.read_bytes() for p in trained_runs.glob("*/events.jsonl")}
    result = CliRunner().invoke(app, ["eval", *args, "--limit", "20", "--device", "cpu"])
    assert result.exit_code != 0
    assert isinstance(result.exception, AdvtuiError) and type(result.exception).__name__ == error
    assert message in str(result.exception) and "\n" not in str(result.exception)
    assert store_snapshot(trained_runs) == before
    assert {p: p.read_bytes() for p in trained_runs.glob("*/events.jsonl")} == events_before


def test_bad_input_is_one_line_on_stderr_and_a_nonzero_exit(trained_runs):
    before = store_snapshot(trained_runs)
    proc = subprocess.run([sys.executable, "-m", "advtui", "eval", "advtrain", "--attacks", "rnn-10"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "ADVTUI_RUNS": str(trained_runs)})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: rnn-10: run ") and "rnn-adv or rnn-trades" in lines[0]
    assert store_snapshot(trained_runs) == before
