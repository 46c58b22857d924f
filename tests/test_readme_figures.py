"""The figures the README quotes for its first command are what the command gives.

The test runs the README's first command exactly as written, stopped after its first epoch
(`--epochs 1`: the learning-rate schedule of the first epoch does not depend on the epoch count),
and compares the validation accuracies it records with the README's quoted epoch-1 figures. Those
were measured with one math thread, as tests run (conftest sets OMP_NUM_THREADS=1); another thread
count or torch build changes the order of floating-point sums, so a point of drift is allowed
and anything beyond it means the README (or a change to training) needs a look.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from advtui.store.registry import Registry

README = Path(__file__).resolve().parents[1] / "README.md"
TOLERANCE_POINTS = 2.0


def first_command() -> list[str]:
    """The `advtui run ...` of the README's first set-up command, as words."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## Set up and run.*?```bash\n(.*?)```", text, flags=re.S).group(1)
    run = next(part for part in block.split("&&") if part.strip().startswith("advtui run"))
    return shlex.split(run)[1:]


def quoted_epoch_one() -> tuple[float, float]:
    """The README's "epoch 1: CLEAN% / PGD%" figures of the first command."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"epoch 1: ([\d.]+)% / ([\d.]+)%", text)
    assert found, "the README no longer quotes the first command's epoch-1 figures as `epoch 1: C% / P%`"
    return float(found.group(1)), float(found.group(2))


@pytest.mark.slow
def test_the_first_commands_epoch_one_figures_are_the_readmes(runs_root, mnist_root):
    words = first_command()
    assert words[:3] == ["run", "--defense", "rnn-adv"] and "--epochs" in words
    at = words.index("--epochs")
    words[at + 1] = "1"
    done = subprocess.run([sys.executable, "-m", "advtui", *words], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = Registry(runs_root).runs()
    metrics = record["metrics"]
    clean, pgd = quoted_epoch_one()
    assert metrics["val_n"] == 500
    assert abs(metrics["val_clean_acc"] - clean) <= TOLERANCE_POINTS, (metrics, clean)
    assert abs(metrics["val_pgd_acc"] - pgd) <= TOLERANCE_POINTS, (metrics, pgd)
