"""Fig. 2 and Fig. 3 analyses: the PNGs exist and the numbers saved beside them match a direct
computation with the model, the data and the maximizers used by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advtui.core.config import RunConfig
from advtui.engine.checkpoint import load_checkpoint
from advtui.engine.data import load_split
from advtui.engine.maximizers import PGD
from advtui.engine.rnn import RNNOptimizer
from advtui.engine.models import build_model
from advtui.engine.objectives import ce_per_example
from advtui.store.registry import Registry


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory, mnist_root) -> Path:
    """Two real runs, small enough to train here in seconds: "plain" (the attacked model) and
    "rnn-adv" (whose learned optimizer is an attacker)."""
    from advtui.core.config import build_config
    from advtui.runner import RunPlan, execute_run

    root = tmp_path_factory.mktemp("analysis") / "runs"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, defense, opts in (("plain", "plain", dict(epochs=2, train_limit=1000)),
                                    ("rnn-adv", "rnn-adv", dict(epochs=1, train_limit=200, inner_steps=3))):
            config = build_config(defense, name=name, data_root=str(mnist_root), device="cpu", lr=0.05, batch_size=50,
                                  test_limit=50, eval_limit=20, seed=0, **opts)
            execute_run(RunPlan(config), root)
    finally:
        torch.set_num_threads(previous)
    return root


def advtui(*args: str, root) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "advtui", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ADVTUI_RUNS": str(root)})


def _model_and_config(root, record):
    state = load_checkpoint(root / record["id"] / "checkpoints" / "final.pt")
    config = RunConfig.from_dict(state["config"])
    model = build_model(config.model, config.dataset)
    model.load_state_dict(state["model"])
    return model.eval(), config, state


def _examples(mnist_root, n):
    split = load_split("mnist", mnist_root, False, n, seed=0)
    return split.images.float() / 255.0, split.labels


def test_trajectories_png_and_data_match_a_direct_computation(small_runs, mnist_root, tmp_path):
    registry = Registry(small_runs)
    target, rnn_run = registry.resolve_run("plain"), registry.resolve_run("rnn-adv")
    out = tmp_path / "fig2"
    proc = advtui("analyze", "trajectories", "plain", "--attackers", "pgd-10,rnn-10:rnn-adv", "--limit", "40",
                  "--seed", "3", "--device", "cpu", "--out", str(out), root=small_runs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "trajectories.png").stat().st_size > 5000
    assert "wrote" in proc.stdout and "pgd-10" in proc.stdout
    data = json.loads((out / "trajectories.json").read_text())
    assert data["run_id"] == target["id"] and data["n"] == 40 and data["eps"] == pytest.approx(0.3)
    curves = {c["attack"]: c for c in data["curves"]}
    assert set(curves) == {"pgd-10", f"rnn-10:{rnn_run['id']}"}

    # Direct computation: the same model, examples and seed, PGD and the RNN built by hand.
    model, config, _ = _model_and_config(small_runs, target)
    x, y = _examples(mnist_root, 40)
    torch.manual_seed(3)
    pgd = PGD(config.eps / 4, init="uniform").maximize(model, ce_per_example, x, y, config.eps, 10)
    assert curves["pgd-10"]["values"] == pytest.approx(pgd.trajectory.tolist(), rel=1e-4, abs=1e-5)
    with torch.no_grad():
        pgd_acc = 100.0 * float((model(pgd.x_adv).argmax(1) == y).float().mean())
    assert curves["pgd-10"]["accuracy"] == pytest.approx(pgd_acc)

    _, rnn_config, rnn_state = _model_and_config(small_runs, rnn_run)
    rnn = RNNOptimizer(hidden=rnn_config.rnn_hidden, grad_input=rnn_config.rnn_grad_input,
                       delta_scale=rnn_config.rnn_delta_scale, init=rnn_config.init)
    rnn.load_state_dict(rnn_state["maximizer"])
    torch.manual_seed(3)
    learned = rnn.maximize(model, ce_per_example, x, y, config.eps, 10)
    assert curves[f"rnn-10:{rnn_run['id']}"]["values"] == pytest.approx(learned.trajectory.tolist(), rel=1e-4, abs=1e-5)
    # Fig. 2's point: the loss climbs with the attack steps.
    assert curves["pgd-10"]["values"][-1] > curves["pgd-10"]["values"][0]


def test_landscape_png_and_data_match_a_direct_computation(small_runs, mnist_root, tmp_path):
    registry = Registry(small_runs)
    record = registry.resolve_run("plain")
    out = tmp_path / "fig3"
    proc = advtui("analyze", "landscape", "plain", "--limit", "2", "--grid", "7", "--seed", "11", "--device", "cpu",
                  "--out", str(out), root=small_runs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "landscape.png").stat().st_size > 5000
    data = json.loads((out / "landscape.json").read_text())
    assert "max loss" in proc.stdout and f"{data['max_loss']:.4f}" in proc.stdout
    grid = torch.tensor(data["loss"], dtype=torch.float64)
    assert grid.shape == (7, 7) and data["n"] == 2 and data["span"] == pytest.approx(0.3)
    assert data["max_loss"] == pytest.approx(float(grid.max()))

    model, config, _ = _model_and_config(small_runs, record)
    x, y = _examples(mnist_root, 2)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ce_per_example(model(xg), y).sum(), xg)
    direction = torch.where(grad >= 0, 1.0, -1.0)
    rademacher = torch.randint(0, 2, tuple(x.shape), generator=torch.Generator().manual_seed(11)).float() * 2 - 1
    axis = torch.linspace(-0.3, 0.3, 7, dtype=torch.float64).tolist()
    assert data["grad_axis"] == pytest.approx(axis) and data["random_axis"] == pytest.approx(axis)
    for i, j in [(0, 0), (6, 3), (3, 3), (5, 1), (2, 6)]:
        point = (x + axis[i] * direction + axis[j] * rademacher).clamp(0, 1)
        with torch.no_grad():
            expected = float(ce_per_example(model(point.float()), y).double().mean())
        assert grid[i, j].item() == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # Along +sign(grad) the loss of an undefended model climbs steeply.
    assert grid[6, 3] > grid[3, 3]
    assert data["origin_loss"] == pytest.approx(grid[3, 3].item(), rel=1e-4, abs=1e-5)


def test_analysis_on_a_run_without_checkpoint_is_one_clear_line(runs_root):
    registry = Registry(runs_root)
    registry.create_run({"name": "pending", "defense": "plain", "dataset": "mnist", "model": "smallcnn",
                         "config": RunConfig(defense="plain").to_dict(), "checkpoints": {}})
    for args in (["analyze", "landscape", "pending"], ["analyze", "trajectories", "pending"]):
        proc = advtui(*args, "--device", "cpu", root=runs_root)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "checkpoint" in lines[0], proc.stderr
    proc = advtui("analyze", "trajectories", "nope", root=runs_root)
    assert proc.returncode != 0 and proc.stderr.strip().startswith("error: no run 'nope'")


def test_trajectories_reject_a_stepless_attacker(small_runs):
    proc = advtui("analyze", "trajectories", "plain", "--attackers", "natural", "--device", "cpu", root=small_runs)
    assert proc.returncode != 0 and "natural has no attack steps" in proc.stderr
    proc = advtui("analyze", "trajectories", "plain", "--attackers", "bogus-3", "--device", "cpu", root=small_runs)
    assert proc.returncode != 0 and "unknown attack" in proc.stderr


def test_a_saved_analysis_that_the_report_stamped_loads_again():
    """The report adds its settings to an analysis' JSON (``report_settings``) and reads the file
    back on its next run instead of computing the figure again: the extra key must not break it."""
    from advtui.engine.analysis import LandscapeAnalysis, TrajectoryAnalysis, TrajectoryCurve

    curve = TrajectoryCurve("pgd-10", "pgd-10", "ce", [0.1, 0.5], 40.0)
    trajectories = TrajectoryAnalysis("r1", "name", "advtrain", "abc", 0.3, 10, "mnist/test/10", 0, [curve])
    stamped = {**json.loads(json.dumps(trajectories.to_dict())), "report_settings": {"limit": 10}}
    assert TrajectoryAnalysis.from_dict(stamped) == trajectories
    landscape = LandscapeAnalysis("r1", "name", "advtrain", "abc", 0.3, 2.0, 10, "mnist/test/10", 0,
                                  [0.0, 1.0], [0.0, 1.0], [[0.1, 0.2], [0.3, 0.4]], 0.4, 0.1, 0.1)
    stamped = {**json.loads(json.dumps(landscape.to_dict())), "report_settings": {"grid": 2}}
    assert LandscapeAnalysis.from_dict(stamped) == landscape
