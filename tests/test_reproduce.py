"""`advtui reproduce` queues what a table needs; a worker runs it; `advtui report` puts it beside
the paper. End to end at the hidden tiny scale on real MNIST, plus planning and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advtui.store.registry import JOBS, Registry
from advtui.reproduce import (
    REPRODUCTIONS, SCALES, SURROGATE_SEED, TABLES, apply_reproduction, plan_reproduction, run_identity, scaled_config,
)


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    """One intra-op thread in every process started here: on a small shared machine OpenMP's
    spinning makes two threads per process several times slower than one."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def advtui(*args: str, root: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "advtui", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "ADVTUI_RUNS": str(root)})


def _one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_reproduce_table3_tiny_then_worker_then_report_fills_every_cell(runs_root, tmp_path):
    proc = advtui("reproduce", "table3", "--scale", "tiny", "--device", "cpu", root=runs_root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    registry = Registry(runs_root)
    runs = registry.runs()
    by_defense = {r["defense"]: r for r in runs}
    assert sorted(by_defense) == sorted(TABLES["table3"].rows) and len(runs) == 6
    assert all(r["status"] == "queued" and r["config"]["seed"] == 0 and r["config"]["train_limit"] == 50 for r in runs)
    jobs = registry.all(JOBS)
    trains = {j["run_id"]: j for j in jobs if j["kind"] == "train"}
    evals = {j["run_id"]: j for j in jobs if j["kind"] == "eval"}
    assert set(trains) == set(evals) == {r["id"] for r in runs}
    l2lda, rnn = by_defense["l2lda"]["id"], by_defense["rnn-adv"]["id"]
    expected = ["natural", "pgd-10", "pgd-100", "cw-100", f"l2lda-10:{l2lda}", f"rnn-10:{rnn}"]
    for run_id, job in evals.items():
        assert job["attacks"] == expected and job["eval_options"] == {"limit": 20}
        # Each evaluation waits for its own training and for the attackers' trainings.
        assert set(job["depends_on"]) == {trains[run_id]["id"], trains[l2lda]["id"], trains[rnn]["id"]}

    # Nothing has results yet: the report says so in one line.
    _one_error_line(advtui("report", root=runs_root), "no results yet", "table3 (tiny)")
    # Asking again queues nothing new: the queued runs and their evaluations are reused.
    again = advtui("reproduce", "table3", "--scale", "tiny", "--device", "cpu", root=runs_root)
    assert again.returncode == 0 and "0 run(s) and 0 evaluation(s) queued" in again.stdout, again.stdout
    assert len(registry.all(JOBS)) == 12

    worker = advtui("worker", "--once", "--cpu-slots", "2", "--threads", "1", "--poll", "0.2", root=runs_root,
                    timeout=900)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-2000:]
    statuses = {j["id"]: j["status"] for j in registry.all(JOBS)}
    assert set(statuses.values()) == {"done"}, [(j["id"], j["kind"], j["status"], j.get("error")) for j in registry.all(JOBS)]

    out = tmp_path / "report"
    proc = advtui("report", "--table", "table3", "--out", str(out), "--device", "cpu", root=runs_root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "table3 (tiny): 42/42 cells measured" in proc.stdout
    data = json.loads((out / "report.json").read_text())
    (table,) = data["tables"]
    assert table["table"] == "table3" and table["scale"] == "tiny" and table["filled"] == table["cells"] == 42
    for defense, cells in table["measured"].items():
        assert all(v is not None and 0 <= v <= 100 for v in cells.values()), (defense, cells)
        assert cells["Min"] == min(v for k, v in cells.items() if k != "Min")
    text = (out / "report.md").read_text()
    assert "TINY TEST SCALE" in text and "| RNN-Adv |" in text and "(95.51)" in text  # the paper's RNN-Adv Min
    assert "–" not in text.split("| Defense |", 1)[1].split("\n\n", 1)[0]  # no empty measured cell
    figures = out / "figures"
    assert (figures / "table3-tiny.png").stat().st_size > 5000
    # Each row run's learning curve, read from its events: one epoch at this scale, flagged if at chance.
    assert set(table["curves"]) == {r["id"] for r in runs}
    section = text.split("### Learning curves", 1)[1].split("###", 1)[0]
    for run_id, curve in table["curves"].items():
        assert curve["epochs"] == [1] and 0 <= curve["clean"][0] <= 100 and 0 <= curve["pgd"][0] <= 100, curve
        assert curve["flag"] == ("never left chance" if curve["clean"][0] < 20 else "")
        (line,) = [ln for ln in section.splitlines() if f"| `{run_id}` |" in ln]
        assert f"| 1 | {curve['clean'][0]:.0f} | {curve['pgd'][0]:.0f} |" in line
    assert (figures / "table3-tiny-learning.png").read_bytes()[:4] == b"\x89PNG"
    assert "table3-tiny-learning.png" in table["figures"]
    for defense in ("advtrain", "trades", "rnn-adv", "rnn-trades"):
        fig2 = json.loads((figures / f"table3-tiny-fig2-{defense}.json").read_text())
        assert [c["attack"] for c in fig2["curves"]] == ["pgd-10", f"l2lda-10:{l2lda}", f"rnn-10:{rnn}"]
        assert (figures / f"table3-tiny-fig2-{defense}.png").exists()
    for defense in TABLES["table3"].rows:
        fig3 = json.loads((figures / f"table3-tiny-fig3-{defense}.json").read_text())
        assert fig3["run_id"] == by_defense[defense]["id"] and f"{fig3['max_loss']:.3f}" in text
    # Table 2 beside the paper: the generator's parameters at this scale's width.
    l2lda_params = registry.get_run(l2lda)["maximizer_params"]
    assert f"{l2lda_params:,} (500,944)" in text and "| RNN-Adv | 120 (120) |" in text

    # Everything done: reproducing again reuses every run and every stored result.
    again = advtui("reproduce", "table3", "--scale", "tiny", "--device", "cpu", root=runs_root)
    assert again.returncode == 0 and again.stdout.count("all results stored") == 6, again.stdout
    assert "0 run(s) and 0 evaluation(s) queued" in again.stdout and len(registry.all(JOBS)) == 12


def test_table7_plans_surrogates_and_transfer_evaluations(runs_root):
    registry = Registry(runs_root)
    plan = apply_reproduction(registry, plan_reproduction(registry, "table7", "quick", device="cpu"))
    roles = {p.role: p for p in plan.runs}
    assert set(roles) == {"advtrain", "trades", "l2lda", "rnn-adv", "rnn-trades", "surrogate:plain", "surrogate:advtrain"}
    assert roles["surrogate:plain"].seed == SURROGATE_SEED and roles["surrogate:plain"].config.defense == "plain"
    assert all(p.config.model == "vgg16" and p.config.dataset == "cifar10" for p in plan.runs)
    plain, pgd_net = roles["surrogate:plain"].run["id"], roles["surrogate:advtrain"].run["id"]
    jobs = registry.all(JOBS)
    evals = [j for j in jobs if j["kind"] == "eval"]
    assert len(evals) == 5 and {j["run_id"] for j in evals} == {roles[d].run["id"] for d in TABLES["table7"].rows}
    for job in evals:
        assert job["attacks"] == [f"transfer-pgd-20:{plain}", f"transfer-pgd-20:{pgd_net}"]
        assert {roles["surrogate:plain"].train_job, roles["surrogate:advtrain"].train_job} <= set(job["depends_on"])
    (doc,) = registry.all(REPRODUCTIONS)
    assert doc["table"] == "table7" and doc["surrogates"] == {"surrogate:plain": plain, "surrogate:advtrain": pgd_net}
    # Table 4 shares Table 7's VGG-16 runs: queued ones are reused, only the plain row is new.
    table4 = apply_reproduction(registry, plan_reproduction(registry, "table4", "quick", device="cpu"))
    actions = {p.role: p.action for p in table4.runs}
    assert actions.pop("plain") == "queue" and set(actions.values()) == {"reuse-active"}


def test_a_finished_run_with_the_same_settings_is_reused(runs_root):
    registry = Registry(runs_root)
    config = scaled_config(TABLES["table1"], SCALES["quick"], "advtrain", 0, device="cuda")
    record = registry.create_run({"name": "mine", "defense": "advtrain", "dataset": "mnist", "model": "smallcnn",
                                  "config": {**config.to_dict(), "name": "mine", "device": "cuda", "log_every": 3},
                                  "status": "finished", "checkpoints": {"final": "checkpoints/final.pt"}})
    final = runs_root / record["id"] / "checkpoints" / "final.pt"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"x")
    plan = plan_reproduction(registry, "table1", "quick", device="cpu")
    actions = {p.role: (p.action, (p.run or {}).get("id")) for p in plan.runs}
    assert actions["advtrain"] == ("reuse-finished", record["id"])
    assert actions["advtrain-bls"] == ("queue", None)
    # A different number of epochs is a different run.
    other = plan_reproduction(registry, "table1", "quick", device="cpu", overrides={"epochs": 3})
    assert {p.role: p.action for p in other.runs}["advtrain"] == "queue"
    # A record without val_size (written before validation splits) held out nothing; a planned
    # run's default is the size its record will say once started.
    assert run_identity({"name": "a", "device": "cpu", "seed": 1}) == {"seed": 1, "val_size": 0}
    assert run_identity({"seed": 1, "train_limit": 5000, "val_size": None}) == run_identity(
        {"seed": 1, "train_limit": 5000, "val_size": 500})


def test_bad_input_is_one_clear_line(runs_root):
    _one_error_line(advtui("reproduce", "table9", root=runs_root), "unknown table 'table9'", "table3")
    _one_error_line(advtui("reproduce", "table3", "--scale", "huge", root=runs_root), "unknown scale 'huge'")
    _one_error_line(advtui("reproduce", "table3", "--seeds", "0", root=runs_root), "--seeds")
    _one_error_line(advtui("report", root=runs_root), "no reproduction", "advtui reproduce")
    _one_error_line(advtui("report", "--table", "table2", root=runs_root), "unknown table 'table2'")
    assert Registry(runs_root).all(JOBS) == []
