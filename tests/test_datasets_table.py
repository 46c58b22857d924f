"""The dataset table (core/datasets.py): every row is consistent, and what is derived from a row
(the model's logits, the loader, the chance level of the health checks and the report) follows it,
so a dataset is added with a row (and its preset) and no code elsewhere."""

from __future__ import annotations

import ast
import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from advtui.core import config, datasets
from advtui.core.config import MIN_IMAGE_SIDE, build_config
from advtui.core.errors import ConfigError
from advtui.core.datasets import AUGMENTATIONS, DATASET_SPECS, DATASETS, FORMATS, DatasetSource, DatasetSpec
from advtui.core.health import CHANCE_ACCURACY, HealthMonitor, chance_accuracy, chance_level
from advtui.engine import data
from advtui.engine.models import Normalize, build_model
from advtui.engine.vision import import_torchvision
from advtui.report import Curve, _learning_markdown
from test_layers import SRC, run_without_torch

MODELS = ("smallcnn", "vgg16", "resnet18", "wrn-10-1")  # every architecture, the WideResNet at its smallest


@pytest.mark.parametrize("name", DATASETS)
def test_every_row_is_consistent(name):
    spec = DATASET_SPECS[name]
    assert spec.name == name and spec.num_classes >= 2
    channels, height, width = spec.shape
    assert all(isinstance(v, int) and v > 0 for v in spec.shape) and height % 4 == 0 == width % 4  # L2LDA's sides
    assert spec.train_size > 0 and spec.test_size > 0
    assert spec.split_size(True) == spec.train_size and spec.split_size(False) == spec.test_size
    if spec.normalization is not None:
        assert [len(v) for v in spec.normalization] == [channels, channels] and min(spec.normalization[1]) > 0
    assert spec.augmentation in AUGMENTATIONS
    assert (spec.crop_padding > 0) == (spec.augmentation == "crop-flip")
    assert spec.source.format in FORMATS and spec.source.format in data.READERS
    assert hasattr(import_torchvision().datasets, spec.source.torchvision_class)
    if spec.source.format == "cifar-python":
        assert spec.source.train_files and spec.source.test_files
    # The default preset is a recipe for this dataset; its beta is the default TRADES beta.
    assert config.PRESETS[spec.default_preset]["dataset"] == name
    assert config.DEFAULT_PRESET[name] == spec.default_preset and config.DEFAULT_BETA[name] == spec.default_beta
    assert config.build_config("trades", dataset=name).trades_beta == spec.default_beta
    assert spec.chance == 1 / spec.num_classes and spec.chance_percent == pytest.approx(100 * spec.chance)


def test_the_names_other_modules_read_are_views_of_the_table():
    assert config.DATASETS == DATASETS == tuple(DATASET_SPECS) and datasets.DEFAULT_DATASET in DATASETS
    assert config.RunConfig("plain").dataset == datasets.DEFAULT_DATASET
    assert data.DATASET_SHAPES == {n: s.shape for n, s in DATASET_SPECS.items()}
    assert data.SPLIT_SIZES == {n: {"train": s.train_size, "test": s.test_size} for n, s in DATASET_SPECS.items()}
    # today's rows, exactly
    assert {n: (s.num_classes, s.shape, s.train_size, s.test_size, s.augmentation, s.crop_padding)
            for n, s in DATASET_SPECS.items()} == {"mnist": (10, (1, 28, 28), 60000, 10000, "none", 0),
                                                    "cifar10": (10, (3, 32, 32), 50000, 10000, "crop-flip", 4)}
    assert DATASET_SPECS["cifar10"].normalization == ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
    assert DATASET_SPECS["mnist"].normalization is None


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("model", MODELS)
def test_a_model_built_for_a_row_gives_its_logits_for_its_images(name, model):
    spec = DATASET_SPECS[name]
    if min(spec.shape[1:]) < MIN_IMAGE_SIDE.get(model, 0):
        # VGG-16's five 2x2 poolings leave nothing of a 28x28 image: refused when the config is checked
        with pytest.raises(ConfigError, match=f"model {model} needs images of at least 32 pixels a side"):
            build_config("advtrain", dataset=name, model=model)
        return
    net = build_model(model, name).eval()
    with torch.no_grad():
        assert net(torch.rand(2, *spec.shape)).shape == (2, spec.num_classes)
    assert isinstance(net[0], Normalize) if spec.normalization is not None else not isinstance(net, torch.nn.Sequential)


# A dataset that is not in the table: 100 grey 16x16 images, read as CIFAR's python batches.
TOY = DatasetSpec("toy100", "Toy-100", 100, (1, 16, 16), 300, 200, ((0.5,), (0.25,)), "crop-flip",
                  DatasetSource("cifar-python", "CIFAR100", "toy-100-python", ("train",), ("test",)),
                  default_preset="paper-cifar", default_beta=6.0, crop_padding=2)
TOY4 = dataclasses.replace(TOY, name="toy4", num_classes=4)


@pytest.fixture
def toy(monkeypatch, tmp_path) -> Path:
    """TOY and TOY4 in the table, TOY's files under tmp_path."""
    monkeypatch.setitem(DATASET_SPECS, "toy100", TOY)
    monkeypatch.setitem(DATASET_SPECS, "toy4", TOY4)
    folder = tmp_path / TOY.source.folder
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", TOY.train_size), ("test", TOY.test_size)):
        entry = {"data": rng.integers(0, 256, (n, 256), dtype=np.uint8), "fine_labels": [i % 100 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    return tmp_path


def test_a_new_row_is_built_and_loaded_from_the_row_alone(toy):
    net = build_model("smallcnn", "toy100").eval()
    assert net(torch.rand(3, 1, 16, 16)).shape == (3, 100) and net[0].mean.flatten().tolist() == [0.5]
    train = data.load_split("toy100", toy, train=True, limit=200, download=False)
    assert train.images.shape == (200, 1, 16, 16) and train.augment and train.pad == 2
    assert torch.bincount(train.labels, minlength=100).tolist() == [2] * 100  # balanced over the row's classes
    (_, x, _), = list(train.batches(200, True))
    assert x.shape == (200, 1, 16, 16)
    test = data.load_split("toy100", toy, train=False, download=False)
    assert len(test) == 200 and not test.augment
    both = data.load_train_and_val("toy100", toy, None, None, seed=0)
    assert len(both.val) == 100 and torch.bincount(both.val.labels, minlength=100).tolist() == [1] * 100
    assert len(both.train) == 200 and both.train.augment and not both.val.augment
    with pytest.raises(Exception, match="toy100 is not under .*toy-100-python"):
        data.load_split("toy100", toy / "nowhere", train=True, download=False)


def test_the_chance_level_is_the_rows():
    assert (chance_level("mnist"), chance_accuracy("mnist")) == (10.0, CHANCE_ACCURACY) == (10.0, 20.0)
    assert (chance_level("cifar10"), chance_accuracy("cifar10")) == (10.0, 20.0)
    assert (chance_level("no-such-dataset"), chance_accuracy(None)) == (10.0, 20.0)  # an odd record: 10 classes


def _stuck(dataset: str, clean: float) -> list[str]:
    monitor = HealthMonitor({"dataset": dataset, "defense": "plain", "chance_patience": 1})
    event = {"kind": "epoch", "epoch": 1, "eval_split": "val", "val_clean_acc": clean, "val_pgd_acc": 0.0, "val_n": 100}
    return [f.message for f in monitor.feed(event) if f.code == "stuck-at-chance"]


def test_health_and_report_read_chance_from_the_runs_dataset(toy):
    # 10 classes: under 20% is stuck (chance 10%), as before the table.
    assert _stuck("mnist", 19.9) and "(chance 10%)" in _stuck("mnist", 19.9)[0] and not _stuck("mnist", 20.0)
    # 100 classes: chance is 1%, stuck under 2%; 4 classes: chance 25%, stuck under 50%.
    assert (chance_level("toy100"), chance_accuracy("toy100")) == (1.0, 2.0)
    assert "(chance 1%)" in _stuck("toy100", 1.5)[0] and not _stuck("toy100", 3.0)
    assert "(chance 25%)" in _stuck("toy4", 40.0)[0] and not _stuck("toy4", 50.0)

    def flag(dataset, clean):
        return Curve("r", "advtrain", 0, "r", "finished", 1, list(range(1, len(clean) + 1)), clean, clean,
                     dataset=dataset).flag

    assert flag("mnist", [19.9]) == "never left chance" and flag(None, [19.9]) == "never left chance"
    assert flag("toy100", [19.9]) == "" and flag("toy100", [1.9]) == "never left chance"
    assert flag("toy4", [60.0, 45.0]) == "back at chance"
    text = "\n".join(_learning_markdown([Curve("r", "advtrain", 0, "r", "finished", 1, [1], [45.0], [0.0],
                                               dataset="toy4")], None, "toy4"))
    assert "stays under 50% (chance: 25%) never learned" in text and "clean < 50% at every epoch" in text


def test_the_table_is_torch_free_and_imports_nothing_of_advtui():
    tree = ast.parse((SRC / "core" / "datasets.py").read_text())
    imported = [n.module if isinstance(n, ast.ImportFrom) else a.name
                for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [n])]
    assert imported == ["__future__", "dataclasses"]
    proc = run_without_torch("""
        from advtui.core.datasets import DATASET_SPECS
        from advtui.core.config import build_config
        from advtui.core.health import chance_accuracy
        assert chance_accuracy("cifar10") == 20.0 and build_config("plain", dataset="cifar10").dataset == "cifar10"
        done(0)
    """)
    assert proc.returncode == 0, proc.stderr
