"""Every ``--json`` prints only JSON on standard output (progress goes to standard error), and a
run records the data root it read, so its evaluations need no $ADVTUI_DATA later (issue 12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from advtui.core.config import build_config
from advtui.core.paths import DATA_ENV
from advtui.store.registry import Registry
from advtui.runner import RunPlan, execute_run, plan_resume

TINY = dict(train_limit=100, test_limit=100, eval_limit=20, batch_size=50, epochs=1, device="cpu", seed=0)


def advtui(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "advtui", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture
def tiny_run(runs_root) -> dict:
    """A finished one-epoch plain run, trained with $ADVTUI_DATA set and no --data-root."""
    config = build_config("plain", name="tiny", **TINY)
    assert config.data_root is None
    return execute_run(RunPlan(config), runs_root)


def test_every_json_option_prints_json_only(tiny_run, runs_root):
    env = dict(os.environ)
    cases = [
        ["eval", "tiny", "--attacks", "natural,fgsm", "--limit", "20", "--device", "cpu", "--json"],
        ["compare", "tiny", "--json"],
        ["ls", "--json"],
        ["show", "tiny", "--json"],
        ["queue", "ls", "--json"],
    ]
    for args in cases:
        proc = advtui(*args, env=env)
        assert proc.returncode == 0, (args, proc.stderr)
        json.loads(proc.stdout)  # nothing else on standard output
    # The progress lines of eval are still there, on standard error.
    proc = advtui(*cases[0], env=env)
    assert "[1/2] natural: done" in proc.stderr and "[1/2]" not in proc.stdout
    assert {r["attack"] for r in json.loads(proc.stdout)["results"]} >= {"natural", "fgsm"}


def test_run_records_its_data_root_and_eval_uses_it_without_env(tiny_run, runs_root, mnist_root, tmp_path):
    record = Registry(runs_root).get_run(tiny_run["id"])
    assert record["config"]["data_root"] == str(Path(mnist_root).resolve())
    home = tmp_path / "home"
    home.mkdir()  # no cache folder with MNIST in it
    env = {k: v for k, v in os.environ.items() if k not in (DATA_ENV, "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    proc = advtui("eval", tiny_run["id"], "--attacks", "natural", "--limit", "20", "--device", "cpu", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "natural" in proc.stdout


def test_resume_uses_the_recorded_root_unless_one_is_given(tiny_run, runs_root, mnist_root, monkeypatch, tmp_path):
    registry = Registry(runs_root)
    recorded = str(Path(mnist_root).resolve())
    monkeypatch.delenv(DATA_ENV)
    assert plan_resume(registry, "tiny", {"epochs": 2}).config.data_root == recorded
    other = str(tmp_path / "elsewhere")
    assert plan_resume(registry, "tiny", {"epochs": 2, "data_root": other}).config.data_root == other
    monkeypatch.setenv(DATA_ENV, other)  # $ADVTUI_DATA wins over the recorded root
    assert plan_resume(registry, "tiny", {"epochs": 2}).config.data_root is None
