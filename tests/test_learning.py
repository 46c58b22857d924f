"""The MNIST recipe learns from scratch: the fidelity check behind every number the product shows.

With PyTorch's default init the SmallCNN sat at chance (12.6% clean and PGD) for six full-MNIST
epochs of adversarial training at eps 0.3; with the TRADES reference init it leaves chance
within its first epoch. This trains a real run, as a user would, on a real MNIST slice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from advtui.core.health import CHANCE_ACCURACY
from advtui.store.registry import Registry


def advtui(*args: str, env_root) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADVTUI_RUNS": str(env_root)}
    return subprocess.run([sys.executable, "-m", "advtui", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.slow
def test_advtrain_from_scratch_leaves_chance_in_its_first_epoch(runs_root):
    # The quick scale's optimizer settings (batch 32, lr 0.05) on 5,000 images: one epoch of
    # PGD-10 adversarial training at the paper's eps 0.3, from a fresh model, seed 0.
    proc = advtui("run", "--defense", "advtrain", "--epochs", "1", "--train-limit", "5000",
                  "--batch-size", "32", "--lr", "0.05", "--test-limit", "500", "--eval-limit", "500",
                  "--seed", "0", "--device", "cpu", env_root=runs_root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (record,) = Registry(runs_root).runs()
    assert record["config"]["eps"] == 0.3 and record["config"]["init_from"] is None
    epochs = [json.loads(line) for line in (runs_root / record["id"] / "events.jsonl").read_text().splitlines()
              if '"kind":"epoch"' in line]
    assert len(epochs) == 1
    # On the 500 validation images held out of the training split (a tenth of --train-limit).
    assert epochs[0]["eval_split"] == "val" and epochs[0]["val_n"] == 500
    clean, robust = epochs[0]["val_clean_acc"], epochs[0]["val_pgd_acc"]
    assert clean >= CHANCE_ACCURACY + 5, f"still at chance after one epoch: clean {clean}%, PGD {robust}%"
    assert robust > 10.0, f"PGD accuracy {robust}% is not above chance"
    assert not any(f["code"] == "stuck-at-chance" for f in record.get("health") or [])
