"""Shared fixtures: real MNIST from $ADVTUI_DATA (or ../shared/data) and small trained runs.

``trained_runs`` trains a few real models once per test session (shared between xdist workers
through a file lock) and hands each test its own copy of the runs directory, so tests may
change the registry freely.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]

# Tests run two at a time on two cores (pytest -n 2), and most start training subprocesses:
# one math thread per process avoids oversubscription, which slows torch down many times over.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _mnist_root() -> Path:
    root = Path(os.environ.get("ADVTUI_DATA") or REPO.parent / "shared" / "data")
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.fail(f"real MNIST is not under {root}/MNIST/raw: set ADVTUI_DATA to the data folder")
    return root


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    """One intra-op thread here and in the commands tests start, whatever the environment says:
    on a small shared machine OpenMP's spinning makes two threads per process several times
    slower than one."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    return _mnist_root()


@pytest.fixture
def runs_root(tmp_path, monkeypatch, mnist_root) -> Path:
    """An empty runs directory, also exported as $ADVTUI_RUNS for CLI and subprocess tests."""
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv("ADVTUI_RUNS", str(root))
    monkeypatch.setenv("ADVTUI_DATA", str(mnist_root))
    return root


# name -> (defense, options). Small but real: enough steps that plain reaches high clean
# accuracy (so PGD at eps 0.3 breaks it) and the adversarial defenses have begun to learn.
# The adversarially trained runs start from the plain model's weights (--init-from, Algorithm 1
# line 3) and use eps 0.1: a warm start gives models with clean and robust accuracy well above
# chance in one short epoch, a fraction of what training from scratch at eps 0.3 costs
# (tests/test_learning.py trains one from scratch).
TRAINED_RUNS = {
    "plain": ("plain", dict(epochs=3, lr=0.05, train_limit=4000)),
    "advtrain": ("advtrain", dict(epochs=1, lr=0.01, train_limit=2000, eps=0.1, init_from="plain")),
    "rnn-adv": ("rnn-adv", dict(epochs=1, lr=0.01, train_limit=2000, eps=0.1, init_from="plain")),
}
TRAINED_COMMON = dict(test_limit=500, batch_size=64, eval_limit=200, seed=0)


def _train_all(root: Path, data: Path) -> None:
    from advtui.core.config import build_config
    from advtui.runner import RunPlan, execute_run

    for name, (defense, opts) in TRAINED_RUNS.items():
        config = build_config(defense, name=name, data_root=str(data), device="cpu",
                              **TRAINED_COMMON, **opts)
        execute_run(RunPlan(config), root)


@pytest.fixture(scope="session")
def _trained_runs_cache(tmp_path_factory, worker_id, mnist_root) -> Path:
    # Under xdist every worker's basetemp sits in one per-session folder: share the runs there.
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if worker_id != "master" else base) / "advtui-trained-runs"
    with FileLock(str(shared) + ".lock"):
        marker = shared / "done.json"
        if not marker.exists():
            if shared.exists():
                shutil.rmtree(shared)
            shared.mkdir(parents=True)
            _train_all(shared / "runs", mnist_root)
            marker.write_text(json.dumps(sorted(TRAINED_RUNS)))
    return shared / "runs"


@pytest.fixture
def trained_runs(_trained_runs_cache, tmp_path, monkeypatch, mnist_root) -> Path:
    """A private copy of a runs directory holding finished runs named plain, advtrain, rnn-adv."""
    root = tmp_path / "runs"
    shutil.copytree(_trained_runs_cache, root)
    monkeypatch.setenv("ADVTUI_RUNS", str(root))
    monkeypatch.setenv("ADVTUI_DATA", str(mnist_root))
    return root
