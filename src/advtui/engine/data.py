"""Datasets held whole on the training device.

A per-sample DataLoader is where small-model adversarial training loses most of its time on
MNIST-sized images, so each split is loaded once through torchvision, kept as a single uint8
tensor on the device, and batched by indexing with a shuffled permutation. CIFAR-10's random
crop (4-pixel padding) and horizontal flip run on the same device, on whole batches.

What each dataset is (classes, shape, split sizes, augmentation, where its files are and their
format) is its row in ``advtui.core.datasets.DATASET_SPECS``; the loaders here follow the row.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from advtui.core.config import default_val_size
from advtui.core.datasets import DATASET_SPECS, DatasetSpec
from advtui.engine.vision import import_torchvision
from advtui.core.errors import ConfigError, DataMissingError

from advtui.core.format import plain_line

torchvision = import_torchvision()

# Views of the dataset table, by dataset name.
DATASET_SHAPES = {name: spec.shape for name, spec in DATASET_SPECS.items()}
SPLIT_SIZES = {name: {"train": spec.train_size, "test": spec.test_size} for name, spec in DATASET_SPECS.items()}
CIFAR_FOLDER = DATASET_SPECS["cifar10"].source.folder


@dataclass
class Split:
    """One split of a dataset: uint8 images [N, C, H, W] and int64 labels [N], on one device."""

    images: torch.Tensor
    labels: torch.Tensor
    augment: bool = False  # random crop + flip when batching for training (CIFAR-10's)
    pad: int = 4  # the crop's zero padding, in pixels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device), self.augment, self.pad)

    def batches(
        self, batch_size: int, shuffle: bool, seed: int = 0, epoch: int = 0, start: int = 0
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield (batch index, x in [0, 1], y). The order of epoch ``epoch`` depends only on
        (seed, epoch), and each batch's augmentation only on (seed, epoch, batch index), so a
        resumed run can start at batch ``start`` and see exactly what it would have seen."""
        n = len(self)
        device = self.images.device
        if shuffle:
            gen = torch.Generator().manual_seed(_mix(seed, epoch))
            order = torch.randperm(n, generator=gen).to(device)
        else:
            order = torch.arange(n, device=device)
        n_batches = (n + batch_size - 1) // batch_size
        for b in range(start, n_batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            x = self.images[idx].float().div_(255.0)
            if self.augment:
                x = crop_and_flip(x, torch.Generator().manual_seed(_mix(seed, epoch, b + 1)), self.pad)
            yield b, x, self.labels[idx]

    def num_batches(self, batch_size: int) -> int:
        return (len(self) + batch_size - 1) // batch_size


def _mix(*values: int) -> int:
    """A stable seed from several integers."""
    h = 1469598103934665603
    for v in values:
        h = ((h ^ (v + 0x9E3779B9)) * 1099511628211) % (1 << 63)
    return h


def crop_and_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, per image, in one gather."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=gen).to(x.device)
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def _classes(labels: torch.Tensor, num_classes: int | None) -> int:
    """``num_classes``, or (not given) as many as the labels name: 0 to the largest."""
    if num_classes is not None:
        return num_classes
    return int(labels.max()) + 1 if labels.numel() else 0


def balanced_subset(labels: torch.Tensor, limit: int | None, seed: int = 0,
                    num_classes: int | None = None) -> torch.Tensor | None:
    """Indices of a class-balanced subset of ``limit`` examples (None: keep everything).
    The subset depends only on ``seed``, so every run with the same limit sees the same data."""
    if limit is None or limit >= labels.shape[0]:
        return None
    classes = _classes(labels, num_classes)
    gen = torch.Generator().manual_seed(_mix(seed, limit))
    per_class = [limit // classes + (1 if c < limit % classes else 0) for c in range(classes)]
    chosen = []
    for c, k in enumerate(per_class):
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(members.numel(), generator=gen)[:k]])
    return torch.cat(chosen).sort().values


def train_val_indices(labels: torch.Tensor, train_limit: int | None, val_size: int,
                      seed: int, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (into the training split) of the images a run trains on and of its validation
    split: ``val_size`` class-balanced images fixed by ``seed``, never trained on.

    With a --train-limit that leaves room, the training subset is the one ``load_split`` gives
    for that limit (the same images as without a validation split) and the validation images
    are drawn from the rest of the split (when it holds enough of every class); otherwise they
    are drawn first and the run trains on all the others (at most ``train_limit`` of them,
    class-balanced)."""
    n = labels.shape[0]
    classes = _classes(labels, num_classes)
    everything = torch.arange(n)
    gen = torch.Generator().manual_seed(_mix(seed, val_size, 0x7A1))  # not the training subset's stream
    train = balanced_subset(labels, train_limit, seed=0, num_classes=classes)
    if train is not None and train.numel() + val_size <= n:
        rest = everything[~_member(everything, train)]
        val = rest[_balanced_pick(labels[rest], val_size, gen, classes)]
        if val.numel() == val_size:  # the rest held enough of every class
            return train, val.sort().values
    val = _balanced_pick(labels, val_size, gen, classes).sort().values
    rest = everything[~_member(everything, val)]
    if train_limit is not None and train_limit < rest.numel():
        rest = rest[balanced_subset(labels[rest], train_limit, seed=0, num_classes=classes)]
    return rest, val


def _member(values: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    mask[chosen] = True
    return mask


def _balanced_pick(labels: torch.Tensor, count: int, gen: torch.Generator, classes: int) -> torch.Tensor:
    """Positions of ``count`` examples spread evenly over the ``classes`` classes (the first
    count % classes one more), drawn with ``gen``; a class with too few examples gives what it has."""
    chosen = []
    for c in range(classes):
        members = torch.nonzero(labels == c).flatten()
        k = count // classes + (1 if c < count % classes else 0)
        chosen.append(members[torch.randperm(members.numel(), generator=gen)[:k]])
    return torch.cat(chosen)


def _missing(dataset: str, root: Path, cause: Exception | None) -> DataMissingError:
    where = root / DATASET_SPECS[dataset].source.folder
    why = ""
    if cause is not None:
        text = str(cause)
        offline = any(s in text for s in ("urlopen", "Name or service", "Temporary failure", "Network is unreachable"))
        first_line = plain_line(text, limit=120) or type(cause).__name__
        why = " (offline: no network)" if offline else f" ({type(cause).__name__}: {first_line})"
    return DataMissingError(
        f"{dataset} is not under {where} and could not be downloaded{why}: "
        f"put the files there, or pass --data-root / set ADVTUI_DATA to where they are"
    )


def _load_idx(spec: DatasetSpec, root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset in MNIST's format, read by its torchvision class (``DatasetSource.torchvision_class``)."""
    reader = getattr(torchvision.datasets, spec.source.torchvision_class)
    try:
        ds = reader(str(root), train=train, download=False)
    except RuntimeError as first:
        if not download:
            raise _missing(spec.name, root, None) from first
        try:
            ds = reader(str(root), train=train, download=True)
        except Exception as exc:  # offline: URLError, socket errors, ...
            raise _missing(spec.name, root, exc) from exc
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long()


def _load_mnist(root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _load_idx(DATASET_SPECS["mnist"], root, train, download)


class CifarUnpickler(pickle.Unpickler):
    """Reads the CIFAR-10 python batches without running code from the data root.

    The format is pickle, and a plain ``pickle.load`` calls whatever a file names: a crafted
    file under the data root would run code. A batch holds only a dict of bytes, strings,
    lists of ints and one numpy array, so the only objects it may construct are numpy's array
    and dtype (its reconstructor included) and bytes; every other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3: str -> bytes, nothing else
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR-10 batch holds only arrays")
        return super().find_class(module, name)


def _read_cifar_batches(folder: Path, files, shape: tuple[int, int, int] = (3, 32, 32)
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Read batches in the CIFAR-10 python (pickle) format, with the restricted unpickler
    (CIFAR-100's batches too: their labels are ``fine_labels``)."""
    images, labels = [], []
    for name in files:
        with open(folder / name, "rb") as f:
            entry = CifarUnpickler(f, encoding="latin1").load()
        if not isinstance(entry, dict) or "data" not in entry or not ("labels" in entry or "fine_labels" in entry):
            raise ValueError(f"{name} is not a CIFAR-10 batch (no data and labels)")
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, *shape))
        labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)


def _load_cifar_python(spec: DatasetSpec, root: Path, train: bool,
                       download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset in CIFAR's python format: the batches read here, downloaded by torchvision's class."""
    source = spec.source
    folder = root / source.folder
    files = source.train_files if train else source.test_files
    if not all((folder / f).exists() for f in files):
        if not download:
            raise _missing(spec.name, root, None)
        try:  # torchvision downloads, verifies checksums and extracts the archive
            getattr(torchvision.datasets, source.torchvision_class)(str(root), train=train, download=True)
        except Exception as exc:
            raise _missing(spec.name, root, exc) from exc
    try:
        return _read_cifar_batches(folder, files, spec.shape)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError, IndexError) as exc:
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise DataMissingError(f"{spec.name} files under {folder} are unreadable ({reason}): "
                               "delete them to re-download") from None


# How each format of core.datasets.FORMATS is read.
READERS = {"idx": _load_idx, "cifar-python": _load_cifar_python}


def _read(dataset: str, root: Path, train: bool, download: bool) -> tuple[DatasetSpec, torch.Tensor, torch.Tensor]:
    """The row of ``dataset`` and its split's images and labels, read as the row's source says."""
    spec = DATASET_SPECS[dataset]
    images, labels = READERS[spec.source.format](spec, Path(root), train, download)
    return spec, images, labels


def _augmented(spec: DatasetSpec, images: torch.Tensor, labels: torch.Tensor, train: bool) -> Split:
    """A split of ``spec``'s images, augmented as the row says when they are trained on."""
    if train and spec.augmentation == "crop-flip":
        return Split(images, labels, augment=True, pad=spec.crop_padding)
    return Split(images, labels, augment=False)


@dataclass
class TrainAndValidation:
    """A run's training images and its validation split, both from the training split."""

    train: Split
    val: Split
    val_ids: list[int]  # indices into the dataset's training split
    split_size: int  # images in the whole training split


def load_train_and_val(dataset: str, root: Path, train_limit: int | None, val_size: int | None,
                       seed: int) -> TrainAndValidation:
    """Load the training split once and cut it into training images and a validation split
    (``train_val_indices``) of ``val_size`` images (None: ``default_val_size``, of
    ``train_limit`` or of the split)."""
    spec, images, labels = _read(dataset, root, True, True)
    n = labels.shape[0]
    if val_size is None:
        val_size = min(default_val_size(train_limit if train_limit is not None else n, dataset), n - 1)
    if val_size >= n:
        raise ConfigError(f"--val-size {val_size} is not smaller than the {n} training images of {dataset}: "
                          f"hold out fewer (default {default_val_size(None)}), or pass --val-size 0")
    train_idx, val_idx = train_val_indices(labels, train_limit, val_size, seed, spec.num_classes)
    return TrainAndValidation(
        _augmented(spec, images[train_idx], labels[train_idx], True),
        _augmented(spec, images[val_idx], labels[val_idx], False),  # evaluated as it is, like the test split
        val_idx.tolist(), labels.shape[0])


def load_split(
    dataset: str, root: Path, train: bool, limit: int | None = None, download: bool = True, seed: int = 0
) -> Split:
    """Load a split (optionally a class-balanced subset) on the CPU."""
    spec, images, labels = _read(dataset, root, train, download)
    subset = balanced_subset(labels, limit, seed, spec.num_classes)
    if subset is not None:
        images, labels = images[subset], labels[subset]
    return _augmented(spec, images, labels, train)
