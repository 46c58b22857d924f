"""The dataset table (docs/architecture.md): every fact about a dataset, in one row.

A row says how many classes the dataset has, the shape of an image, the size of each split,
the normalization the models apply (inside the model: attacks work in pixel space), the
augmentation of training batches, where its files are and how they are read, the recipe a run
starts from when it names only the dataset, the default TRADES beta, and so the chance level.

``advtui.core.config`` validates run configs against it, ``advtui.engine.data`` derives each
dataset's loader from its ``DatasetSource``, ``advtui.engine.models`` sizes the classifiers
from it, and the health checks and the report read chance from it; a dataset added here (and,
when it needs a recipe of its own, its preset in ``core/config.py``'s ``PRESETS``) is known to
the CLI, the dashboard, the trainer and the evaluation alike.
"""

from __future__ import annotations

from dataclasses import dataclass

# Augmentations of training batches (``advtui.engine.data``): none, or a random crop with zero
# padding (``DatasetSpec.crop_padding`` pixels) and a random horizontal flip, per image.
AUGMENTATIONS = ("none", "crop-flip")
# How a dataset's files are read (``advtui.engine.data``):
# - "idx": torchvision's class of that name reads them (MNIST's idx files: uint8 images [N, H, W]
#   in ``data``, labels in ``targets``) and downloads them when they are missing;
# - "cifar-python": the python (pickle) batches of CIFAR-10 and CIFAR-100, read here with a
#   restricted unpickler (no code runs from the data root); torchvision's class only downloads.
FORMATS = ("idx", "cifar-python")


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset's files are under the data root and how they are read."""

    format: str  # one of FORMATS
    torchvision_class: str  # the torchvision.datasets class that reads or downloads them
    folder: str  # under the data root: where the files are (named when they are missing)
    train_files: tuple[str, ...] = ()  # "cifar-python": the batches of each split
    test_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # what --dataset takes
    title: str  # how the help texts write it
    num_classes: int
    shape: tuple[int, int, int]  # (channels, height, width) of one image
    train_size: int  # images in the training split
    test_size: int  # images in the test split
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None  # (mean, std) per channel, or None
    augmentation: str  # one of AUGMENTATIONS, for training batches only
    source: DatasetSource
    default_preset: str  # the PRESETS recipe of a run that names only the dataset
    default_beta: float  # TRADES beta when --beta is not given
    crop_padding: int = 0  # "crop-flip": pixels of zero padding around the image before the crop

    @property
    def chance(self) -> float:
        """The accuracy (a fraction) of a uniform guess among the classes."""
        return 1 / self.num_classes

    @property
    def chance_percent(self) -> float:
        return 100.0 / self.num_classes

    def split_size(self, train: bool) -> int:
        return self.train_size if train else self.test_size


DATASET_SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist", "MNIST", 10, (1, 28, 28), 60000, 10000, None, "none",
        DatasetSource("idx", "MNIST", "MNIST/raw"),
        default_preset="paper-mnist", default_beta=1.0),
    # The python batches (cifar-10-python.tar.gz); mean and std of the training images.
    "cifar10": DatasetSpec(
        "cifar10", "CIFAR-10", 10, (3, 32, 32), 50000, 10000,
        ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)), "crop-flip",
        DatasetSource("cifar-python", "CIFAR10", "cifar-10-batches-py",
                      tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",)),
        default_preset="paper-cifar", default_beta=6.0, crop_padding=4),
}
DATASETS: tuple[str, ...] = tuple(DATASET_SPECS)
DEFAULT_DATASET = "mnist"  # a run that names neither a dataset nor a preset


def dataset_spec(name: str) -> DatasetSpec | None:
    """The row of ``name``; None for a dataset that is not in the table (an odd record)."""
    return DATASET_SPECS.get(name) if isinstance(name, str) else None
