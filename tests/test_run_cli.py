"""`advtui run` end to end on real MNIST slices: every defense, bad input, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from advtui.core.config import DEFENSES
from advtui.engine.checkpoint import load_checkpoint
from advtui.store.registry import Registry
from store_support import store_snapshot

TINY = ["--train-limit", "200", "--test-limit", "100", "--eval-limit", "50", "--batch-size", "50",
        "--epochs", "1", "--inner-steps", "3", "--compare-every", "1", "--log-every", "1", "--device", "cpu"]


def advtui(*args: str, env_root: Path, check: bool = False, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADVTUI_RUNS": str(env_root)}
    return subprocess.run([sys.executable, "-m", "advtui", *args], capture_output=True, text=True,
                          env=env, check=check, timeout=300, **kw)


def events_of(root: Path, run_id: str) -> list[dict]:
    return [json.loads(l) for l in (root / run_id / "events.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("defense", DEFENSES)
def test_every_defense_runs_end_to_end(runs_root, defense):
    proc = advtui("run", "--defense", defense, *TINY, env_root=runs_root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "finished" in proc.stdout
    (record,) = Registry(runs_root).runs()
    assert record["status"] == "finished" and record["defense"] == defense
    assert record["epoch"] == 1 and 0 <= record["metrics"]["val_clean_acc"] <= 100
    assert (runs_root / record["id"] / "checkpoints" / "final.pt").exists()
    events = events_of(runs_root, record["id"])
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and "epoch" in kinds and "step" in kinds
    start = events[0]
    assert start["model_params"] > 100_000
    if defense.startswith("rnn"):
        assert start["maximizer_params"] == 120
    if defense != "plain":
        inner = [e for e in events if e["kind"] == "inner"]
        assert inner and len(inner[0]["losses"]) == 4  # t = 0..T with T = 3
        if defense.startswith("rnn") or defense == "l2lda":
            assert len(inner[0]["pgd"]) == 4  # PGD on the same batch, for the live comparison
    state = load_checkpoint(runs_root / record["id"] / "checkpoints" / "final.pt")
    assert state["epoch"] == 1 and state["config"]["defense"] == defense


@pytest.mark.parametrize("args, message", [
    (["--defense", "nope"], "unknown defense"),
    (["--defense", "plain", "--model", "resnet9000"], "unknown model"),
    (["--defense", "plain", "--eps", "0"], "eps must be in (0, 1]"),
    (["--defense", "plain", "--eps", "1.5"], "eps must be in (0, 1]"),
    (["--defense", "plain", "--data-root", "/nonexistent/data"], "could not be downloaded"),
    (["--resume", "abcdef"], "no run 'abcdef'"),
    (["--defense", "plain", "--device", "cuda"], "no CUDA device"),
    (["--defense", "plain", "--name", "../escape"], "invalid run name"),
])
def test_bad_input_is_one_line_and_leaves_the_registry_untouched(runs_root, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    Registry(runs_root).create_run({"name": "existing", "status": "finished"})
    before = store_snapshot(runs_root)
    env = {**os.environ}
    if "--data-root" in args:
        env.pop("ADVTUI_DATA", None)
    proc = subprocess.run([sys.executable, "-m", "advtui", "run", *args, "--train-limit", "100"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert store_snapshot(runs_root) == before


def _final_weights(root: Path, run_id: str) -> dict:
    return load_checkpoint(root / run_id / "checkpoints" / "final.pt")["model"]


def test_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path, mnist_root):
    args = ["run", "--defense", "rnn-adv", "--train-limit", "400", "--test-limit", "100", "--eval-limit", "50",
            "--batch-size", "25", "--epochs", "2", "--inner-steps", "3", "--log-every", "1",
            "--device", "cpu", "--deterministic", "--seed", "5"]
    env_base = {**os.environ, "ADVTUI_DATA": str(mnist_root), "OMP_NUM_THREADS": "1"}

    straight = tmp_path / "straight"
    subprocess.run([sys.executable, "-m", "advtui", *args], env={**env_base, "ADVTUI_RUNS": str(straight)},
                   check=True, capture_output=True, timeout=300)
    (ref,) = Registry(straight).runs()

    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "advtui", *args], env={**env_base, "ADVTUI_RUNS": str(stopped)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    run_id = None
    while time.time() < deadline:  # stop it in the middle of its second epoch
        runs = Registry(stopped).runs()
        if runs:
            run_id = runs[0]["id"]
            path = stopped / run_id / "events.jsonl"
            steps = [e for e in (json.loads(l) for l in path.read_text().splitlines()
                                 if l.endswith("}")) if e["kind"] == "step"] if path.exists() else []
            if any(e["epoch"] == 1 and e["batch"] >= 3 for e in steps):
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "advtui run --resume" in err
    record = Registry(stopped).get_run(run_id)
    assert record["status"] == "killed" and (stopped / run_id / "checkpoints" / "last.pt").exists()
    state = load_checkpoint(stopped / run_id / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and 0 < state["batch"] < 16
    assert events_of(stopped, run_id)[-1] == {**events_of(stopped, run_id)[-1], "kind": "end", "status": "killed"}

    resumed = subprocess.run([sys.executable, "-m", "advtui", "run", "--resume", run_id],
                             env={**env_base, "ADVTUI_RUNS": str(stopped)}, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    record = Registry(stopped).get_run(run_id)
    assert record["status"] == "finished" and record["epoch"] == 2
    a, b = _final_weights(straight, ref["id"]), _final_weights(stopped, run_id)
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key
    assert record["metrics"]["val_pgd_acc"] == pytest.approx(ref["metrics"]["val_pgd_acc"])


def test_ls_and_show(trained_runs):
    proc = advtui("ls", env_root=trained_runs)
    assert proc.returncode == 0 and "plain" in proc.stdout and "rnn-adv" in proc.stdout
    proc = advtui("show", "rnn-adv", env_root=trained_runs)
    assert proc.returncode == 0, proc.stderr
    assert "inner maximizer 120" in proc.stdout and "checkpoint final" in proc.stdout
    assert "PGD on the same batch" in proc.stdout
    proc = advtui("show", "nothing-like-this", env_root=trained_runs)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no run")


def test_init_from_starts_from_another_runs_weights(trained_runs):
    registry = Registry(trained_runs)
    plain = registry.resolve_run("plain")
    bad = advtui("run", "--defense", "advtrain", "--model", "resnet18", "--init-from", "plain", *TINY,
                 env_root=trained_runs)
    assert bad.returncode == 2 and "trained smallcnn on mnist, not resnet18" in bad.stderr
    ok = advtui("run", "--defense", "rnn-adv", "--init-from", "plain", "--lr", "1e-9", "--name", "warm", *TINY,
                env_root=trained_runs)
    assert ok.returncode == 0, ok.stderr
    warm = registry.resolve_run("warm")
    assert warm["config"]["init_from"] == "plain"
    # with a negligible learning rate the warm-started classifier is still the plain model
    source = _final_weights(trained_runs, plain["id"])
    started = _final_weights(trained_runs, warm["id"])
    for key in source:
        assert torch.allclose(source[key].float(), started[key].float(), atol=1e-5), key


def test_progress_lines_count_batches_from_one_and_the_epoch_end_claims_no_batch():
    from advtui.cli.runs import progress_label, training_summary
    from advtui.engine.train import Progress

    assert progress_label(Progress(0, 1, 1, 16, loss=2.3)) == "epoch 1/1 batch 1/16"
    assert progress_label(Progress(0, 1, 16, 16, loss=2.3)) == "epoch 1/1 batch 16/16"
    assert progress_label(Progress(1, 1, 0, 16, metrics={"test_clean_acc": 90.0})) == "epoch 1/1 done"
    assert training_summary({"epoch": 1, "train_time": 0.84}) == "1 epoch in 0.8 s"
    assert training_summary({"epoch": 3, "train_time": 12.4}) == "3 epochs in 12 s"
    assert training_summary({"epoch": 2, "train_time": 187.0}) == "2 epochs in 3m07s"


def test_show_prints_the_values_in_force_not_none(tmp_path):
    from advtui.core.config import build_config, values_in_force

    trades = values_in_force(build_config("trades", eps=0.2).to_dict())
    assert trades["step_size"] == pytest.approx(0.05) and trades["beta"] == 1.0
    assert values_in_force(build_config("trades", dataset="cifar10").to_dict())["beta"] == 6.0
    plain = values_in_force(build_config("plain", step_size=0.01).to_dict())
    assert plain["step_size"] == 0.01 and "beta" not in plain  # plain has no TRADES term
    registry = Registry(tmp_path)
    made = registry.create_run({"name": "t", "status": "finished", "config": build_config("trades").to_dict()})
    proc = advtui("show", made["id"], env_root=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (config_line,) = [line for line in proc.stdout.splitlines() if line.startswith("  config: ")]
    assert "step_size=0.075" in config_line and "beta=1" in config_line and "None" not in config_line
