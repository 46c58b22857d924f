import pickle

import numpy as np
import pytest
import torch

from advtui.engine.data import CIFAR_FOLDER, balanced_subset, crop_and_flip, load_split
from advtui.core.errors import DataMissingError


def test_mnist_real_files_and_balanced_subset(mnist_root):
    split = load_split("mnist", mnist_root, train=False, limit=200, download=False)
    assert split.images.shape == (200, 1, 28, 28) and split.images.dtype == torch.uint8
    assert torch.bincount(split.labels, minlength=10).tolist() == [20] * 10
    full = load_split("mnist", mnist_root, train=False, download=False)
    assert len(full) == 10000
    assert torch.bincount(full.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_subset_is_stable_and_uneven_limits_spread_over_classes():
    labels = torch.arange(1000) % 10
    a, b = balanced_subset(labels, 25), balanced_subset(labels, 25)
    assert torch.equal(a, b)
    counts = torch.bincount(labels[a], minlength=10)
    assert counts.sum() == 25 and counts.max() - counts.min() <= 1


def test_batches_are_deterministic_per_epoch_and_resume_mid_epoch(mnist_root):
    split = load_split("mnist", mnist_root, train=True, limit=100, download=False)
    full = [(b, y.clone()) for b, _, y in split.batches(16, True, seed=3, epoch=2)]
    again = [(b, y.clone()) for b, _, y in split.batches(16, True, seed=3, epoch=2, start=4)]
    assert [b for b, _ in again] == [4, 5, 6]
    for (b1, y1), (b2, y2) in zip(full[4:], again):
        assert b1 == b2 and torch.equal(y1, y2)
    other_epoch = [y for _, _, y in split.batches(16, True, seed=3, epoch=3)]
    assert not torch.equal(other_epoch[0], full[0][1])
    x = next(split.batches(16, False))[1]
    assert x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0


def _write_cifar(root, n_per_batch=20):
    folder = root / CIFAR_FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "labels": [i % 10 for i in range(n_per_batch)], "batch_label": name}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)


def test_cifar10_python_format(tmp_path):
    _write_cifar(tmp_path)
    train = load_split("cifar10", tmp_path, train=True, download=False)
    test = load_split("cifar10", tmp_path, train=False, limit=10, download=False)
    assert train.images.shape == (100, 3, 32, 32) and train.augment
    assert test.images.shape == (10, 3, 32, 32) and not test.augment
    # the channel-first layout of the python format is kept: pixel 0 of channel 1 is byte 1024
    raw = pickle.load(open(tmp_path / CIFAR_FOLDER / "data_batch_1", "rb"))["data"]
    assert train.images[0, 1, 0, 0] == raw[0, 1024]
    _, x, _ = next(train.batches(8, True))
    assert x.shape == (8, 3, 32, 32)


def test_crop_and_flip_shapes_and_content():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = crop_and_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # every output pixel is either padding (0) or a pixel of the same image
    for i in range(2):
        values = set(out[i].flatten().tolist()) - {0.0}
        assert values <= set(x[i].flatten().tolist())


def test_missing_data_offline_is_one_clear_line(tmp_path):
    with pytest.raises(DataMissingError) as info:
        load_split("mnist", tmp_path / "nowhere", train=True, download=False)
    message = str(info.value)
    assert "\n" not in message and "MNIST/raw" in message and "--data-root" in message
    with pytest.raises(DataMissingError):
        load_split("cifar10", tmp_path / "nowhere", train=True, download=False)


def test_cifar10_trains_end_to_end_through_the_cli(tmp_path):
    import os
    import subprocess
    import sys

    _write_cifar(tmp_path / "data")
    env = {**os.environ, "ADVTUI_RUNS": str(tmp_path / "runs")}
    proc = subprocess.run(
        [sys.executable, "-m", "advtui", "run", "--defense", "advtrain", "--dataset", "cifar10", "--model", "resnet18",
         "--data-root", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "25", "--inner-steps", "2",
         "--eval-limit", "20", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    from advtui.store.registry import Registry

    (record,) = Registry(tmp_path / "runs").runs()
    assert record["status"] == "finished" and record["config"]["eps"] == pytest.approx(8 / 255)
    assert record["config"]["beta"] is None and record["config"]["weight_decay"] == 2e-4
