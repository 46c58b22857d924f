"""Typed, validated run configuration and the paper's presets.

A run's whole configuration is one ``RunConfig``; it is stored in the registry and in every
checkpoint, so a run can be resumed or reproduced from it alone. Presets fill in the paper's
recipes; explicit options override them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from advtui.core.datasets import DATASET_SPECS, DATASETS, DEFAULT_DATASET
from advtui.core.defenses import DEFENSES, uses_option
from advtui.core.paths import check_safe_name
from advtui.core.errors import ConfigError
from advtui.core.ranges import MAX_INT, MAX_RATE, check_float, check_int

MODELS = ("smallcnn", "vgg16", "resnet18", "wrn-34-10")
_WRN = re.compile(r"^wrn-(\d+)-(\d+)$")
# The smallest image side a model takes: VGG-16's five 2x2 max-poolings leave nothing of a
# 28x28 MNIST image (28 -> 14 -> 7 -> 3 -> 1 -> 0), so it needs CIFAR's 32x32.
MIN_IMAGE_SIDE = {"vgg16": 32}

# The paper's recipes (section 5.1 and the public code of its baselines). Milestones count
# epochs from 1, as the references' ``adjust_learning_rate(optimizer, epoch)`` does: the lower
# rate is in force from epoch m on (``if epoch >= m``).
PRESETS: dict[str, dict[str, Any]] = {
    # TRADES' MNIST recipe (train_trades_mnist.py): SmallCNN, batch 128, SGD lr 0.01 momentum
    # 0.9, no weight decay, 100 epochs, eps 0.3. Its schedule reads 55/75/90, but as an
    # if/elif chain whose first test (epoch >= 55) shadows the others: the rate is 0.001 from
    # epoch 55 to the end, and that is what the published numbers were trained with.
    "paper-mnist": dict(
        dataset="mnist", model="smallcnn", batch_size=128, lr=0.01, momentum=0.9,
        weight_decay=0.0, epochs=100, milestones=[55], eps=0.3,
    ),
    # TRADES' CIFAR-10 recipe (train_trades_cifar10.py): batch 128, SGD lr 0.1 momentum 0.9,
    # weight decay 2e-4, eps 8/255; 10x lower from epoch 75, 90 and 100 (of 100).
    "paper-cifar": dict(
        dataset="cifar10", model="vgg16", batch_size=128, lr=0.1, momentum=0.9,
        weight_decay=2e-4, epochs=100, milestones=[75, 90, 100], eps=8 / 255,
    ),
}
PRESETS["paper-cifar-vgg16"] = dict(PRESETS["paper-cifar"], model="vgg16")
PRESETS["paper-cifar-wrn"] = dict(PRESETS["paper-cifar"], model="wrn-34-10")
# TRADES' own MNIST training as published (train_trades_mnist.py): 40 inner steps of 0.01 with
# beta 1. The paper runs every defense with T = 10 (paper-mnist); this is the reference's recipe.
PRESETS["trades-mnist"] = dict(PRESETS["paper-mnist"], inner_steps=40, step_size=0.01, beta=1.0)
# Per dataset (core/datasets.py): the recipe of a run that names only the dataset, and TRADES' beta.
DEFAULT_PRESET = {name: spec.default_preset for name, spec in DATASET_SPECS.items()}
DEFAULT_BETA = {name: spec.default_beta for name, spec in DATASET_SPECS.items()}


@dataclass
class RunConfig:
    """Everything that determines a training run."""

    defense: str
    dataset: str = DEFAULT_DATASET
    model: str = "smallcnn"
    preset: str | None = None
    name: str | None = None
    group: str | None = None
    seed: int = 0
    # Outer optimization (SGD with momentum and a step schedule).
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: list[int] = field(default_factory=lambda: [55])  # lr x lr_gamma from each epoch (1-based)
    lr_gamma: float = 0.1
    # Threat model and inner maximization.
    eps: float = 0.3
    inner_steps: int = 10
    step_size: float | None = None  # PGD step; None means eps/4
    init: str = "normal"  # x'_0 = x + 0.001 N(0, I) (Algorithm 1), or "uniform" in the ball
    beta: float | None = None  # TRADES beta; None means the dataset's (1 on MNIST, 6 on CIFAR-10)
    inner_train_mode: bool = False  # run the inner maximizer with the model in train mode
    # Backtracking line search (paper eq. 4).
    bls_alpha0: float | None = None  # first candidate step; None means eps
    bls_rho: float = 0.5
    bls_c: float = 1e-4
    bls_max_backtracks: int = 10
    # The learned RNN optimizer (paper eqs. 5-7, 10). Defaults chosen by measurement (README).
    rnn_hidden: int = 10
    rnn_grad_input: str = "sign"  # how g_t is scaled before the RNN: sign | rms | raw
    rnn_init: str = "pgd"  # pgd: start close to a sign-gradient step; random: PyTorch's default init
    rnn_delta_scale: float = 0.5  # delta_t = rnn_delta_scale * eps * tanh(V h)
    rnn_second_order: bool = False  # let gradients flow through g_t (Hessian terms)
    rnn_optimizer: str = "adam"  # adam | sgd
    rnn_lr: float = 1e-2
    # L2LDA generator baseline.
    l2lda_lr: float = 1e-4
    l2lda_latent: int = 8
    l2lda_diversity: float = 0.1
    l2lda_width: int = 64  # generator channels: 64 gives ~0.5M parameters (paper Table 2)
    # Data and hardware.
    data_root: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    eval_limit: int = 1000  # validation (or, with val_size 0, test) examples of the per-epoch clean/PGD accuracy
    # Held out of the training split for the per-epoch evaluation and the best checkpoint
    # (Rice et al. 2020 hold out 1,000). None: default_val_size(train_limit); 0: no validation
    # split, and the per-epoch numbers are test numbers, for monitoring only.
    val_size: int | None = None
    early_stop: int | None = None  # stop after this many epochs without a better validation PGD accuracy
    device: str = "auto"
    nproc: int = 1  # processes (one per GPU) training this run with DistributedDataParallel
    init_from: str | None = None  # a run whose final weights start this one (Algorithm 1, line 3)
    deterministic: bool = False
    amp: bool = False
    # Recording.
    log_every: int = 10  # batches between step events
    compare_every: int = 20  # K: batches between inner-trajectory records (rnn runs: vs PGD)
    # Health checks (advtui.core.health): epoch ends at chance-level clean accuracy before a warning.
    chance_patience: int = 2

    # -- derived values ---------------------------------------------------------------------
    @property
    def pgd_step(self) -> float:
        return self.step_size if self.step_size is not None else self.eps / 4

    @property
    def trades_beta(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA[self.dataset]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> "RunConfig":
        """Check every value before anything is recorded: a bad one is a one-line ConfigError,
        never a run that fails later (torch rejects some values only when the optimizer is
        built) or one that finishes with NaN weights (an infinite or NaN rate)."""
        if self.defense not in DEFENSES:
            raise ConfigError(f"unknown defense {self.defense!r}; choose one of: {', '.join(DEFENSES)}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}")
        check_model_name(self.model)
        side = min(DATASET_SPECS[self.dataset].shape[1:])
        if side < MIN_IMAGE_SIDE.get(self.model, 0):
            fits = ", ".join(m for m in MODELS if side >= MIN_IMAGE_SIDE.get(m, 0))
            raise ConfigError(f"model {self.model} needs images of at least {MIN_IMAGE_SIDE[self.model]} pixels a "
                              f"side and {self.dataset}'s are {side}: choose {fits} or wrn-DEPTH-WIDTH")
        for name, (low, high) in INT_RANGES.items():
            _check_int(name, getattr(self, name), low, high)
        classes = DATASET_SPECS[self.dataset].num_classes
        self._check_validation(classes)
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None:
                # At least one example per class; the upper bound is the split's size, checked
                # when the data is loaded (a larger limit is a warning and the real size is kept).
                _check_int(name, value, classes, MAX_INT)
        if not isinstance(self.milestones, list):
            raise ConfigError(f"milestones must be a list of epochs, got {self.milestones!r}")
        for milestone in self.milestones:
            _check_int("milestones", milestone, 1, MAX_INT, "milestones are epochs counted from 1")
        for name, bounds in FLOAT_RANGES.items():
            value = getattr(self, name)
            if value is None and name in OPTIONAL_FLOATS:
                continue
            _check_float(name, value, *bounds)
        for name in ("init", "rnn_grad_input", "rnn_init", "rnn_optimizer"):
            choices = CHOICES[name]
            if getattr(self, name) not in choices:
                raise ConfigError(f"{_flag(name)} must be {' or '.join(choices)}, got {getattr(self, name)!r}")
        if not isinstance(self.device, str) or not re.fullmatch(r"(auto|cpu|cuda(:\d+)?)", self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.nproc < 1:
            raise ConfigError(f"nproc must be at least 1, got {self.nproc}")
        if self.batch_size % self.nproc:
            raise ConfigError(f"batch-size {self.batch_size} must be a multiple of --nproc {self.nproc}: "
                              f"each process trains an equal share of every batch")
        if self.name is not None:
            check_safe_name(self.name)
        return self

    def _check_validation(self, classes: int) -> None:
        """--val-size 0 or at least one example per class (its upper bound, the training split,
        is checked when the data is loaded); --early-stop needs a validation split to watch."""
        if self.val_size is not None:
            _check_int("val_size", self.val_size, 0, MAX_INT)
            if 0 < self.val_size < classes:
                raise ConfigError(f"val-size must be 0 (no validation split) or at least {classes} "
                                  f"(one example per class), got {self.val_size}")
        if self.early_stop is not None:
            _check_int("early_stop", self.early_stop, 1, 100_000)
            if self.val_size == 0:
                raise ConfigError("--early-stop watches the validation split: drop --val-size 0 or --early-stop")


# A validation split of 1,000 examples, as Rice et al. (2020) hold out of CIFAR-10's training
# set; with a --train-limit below 10,000, a tenth of it (the per-epoch evaluation then costs
# about a tenth of an epoch), and never under one example per class (MIN_VAL_SIZE: 10 classes).
DEFAULT_VAL_SIZE = 1000
MIN_VAL_SIZE = 10


def default_val_size(train_limit: int | None, dataset: str | None = None) -> int:
    """1,000, or a tenth of ``train_limit`` (the training images asked for, or a split's size),
    and at least one image per class of ``dataset`` (of 10 classes when it is not given)."""
    if train_limit is None:
        return DEFAULT_VAL_SIZE
    spec = DATASET_SPECS.get(dataset) if isinstance(dataset, str) else None
    return max(spec.num_classes if spec else MIN_VAL_SIZE, min(DEFAULT_VAL_SIZE, train_limit // 10))


# Integer options: (smallest, largest). Every one is checked, so a negative, zero or absurd
# value is refused before the run exists. The seed seeds torch, which takes 64-bit seeds.
INT_RANGES: dict[str, tuple[int, int]] = {
    "seed": (0, 2**63 - 1), "epochs": (1, 100_000), "batch_size": (1, MAX_INT), "inner_steps": (1, 100_000),
    "bls_max_backtracks": (0, 1000), "rnn_hidden": (1, 100_000), "l2lda_latent": (0, 100_000),
    "l2lda_width": (1, 100_000), "eval_limit": (1, MAX_INT), "log_every": (1, MAX_INT),
    "compare_every": (1, MAX_INT), "chance_patience": (1, 100_000),
}
# Float options: (low, high, low excluded, high excluded); NaN and infinities are always refused.
# Rates and weights have no natural ceiling, but one past a million (MAX_RATE) only ever trains to NaN.
FLOAT_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "lr": (0.0, MAX_RATE, True, False), "momentum": (0.0, 1.0, False, True),
    "weight_decay": (0.0, MAX_RATE, False, False), "lr_gamma": (0.0, MAX_RATE, True, False),
    "eps": (0.0, 1.0, True, False),  # inputs are in [0, 1]
    "step_size": (0.0, 1.0, True, False), "beta": (0.0, MAX_RATE, False, False),
    "bls_alpha0": (0.0, MAX_RATE, True, False), "bls_rho": (0.0, 1.0, True, True), "bls_c": (0.0, 1.0, True, True),
    "rnn_delta_scale": (0.0, MAX_RATE, True, False), "rnn_lr": (0.0, MAX_RATE, True, False),
    "l2lda_lr": (0.0, MAX_RATE, True, False), "l2lda_diversity": (0.0, MAX_RATE, False, False),
}
OPTIONAL_FLOATS = ("step_size", "beta", "bls_alpha0")  # None: a default derived from other values
CHOICES = {"init": ("normal", "uniform"), "rnn_grad_input": ("sign", "rms", "raw"),
           "rnn_init": ("pgd", "random"), "rnn_optimizer": ("adam", "sgd")}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _check_int(name: str, value: Any, low: int, high: int, what: str | None = None) -> None:
    check_int(_flag(name), value, low, high, what=what)


def _check_float(name: str, value: Any, low: float, high: float, open_low: bool, open_high: bool) -> None:
    check_float(_flag(name), value, low, high, open_low=open_low, open_high=open_high, open_ended_words=True)


def values_in_force(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded config with the defaults it ran with filled in: the PGD step (eps/4 unless
    given) and, for a defense whose objective uses it (TRADES'), beta (the dataset's, 1 on MNIST,
    6 on CIFAR-10, unless given); beta is left out for defenses that do not use it. Never raises on
    an odd record."""
    shown = dict(config)
    eps = config.get("eps")
    if shown.get("step_size") is None and isinstance(eps, (int, float)):
        shown["step_size"] = eps / 4
    if not uses_option(config.get("defense"), "beta"):
        shown.pop("beta", None)
    elif shown.get("beta") is None:
        shown["beta"] = DEFAULT_BETA.get(config.get("dataset") or "", None)
    if "val_size" not in config:
        shown["val_size"] = 0  # recorded before validation splits: it trained (and resumes) on the whole split
    elif shown["val_size"] is None:
        train_limit = config.get("train_limit")
        shown["val_size"] = default_val_size(train_limit if isinstance(train_limit, int) else None,
                                             config.get("dataset"))
    if shown.get("early_stop") is None:
        shown["early_stop"] = "off"
    return shown


# A WideResNet has (depth - 4) / 6 blocks in each of its 3 stages (Zagoruyko & Komodakis 2016):
# depth 10 is the smallest with a block; the bounds keep a typo from asking for terabytes.
WRN_DEPTHS = (10, 1000)
WRN_WIDTHS = (1, 100)


def check_model_name(model: str) -> None:
    if model in MODELS:
        return
    match = _WRN.match(model) if isinstance(model, str) else None
    if match is None:
        raise ConfigError(f"unknown model {model!r}; choose one of: {', '.join(MODELS)} (or wrn-DEPTH-WIDTH)")
    depth, width = int(match[1]), int(match[2])
    if (depth - 4) % 6 or not WRN_DEPTHS[0] <= depth <= WRN_DEPTHS[1]:
        raise ConfigError(f"model {model}: a WideResNet's depth must be 6n+4 between {WRN_DEPTHS[0]} and "
                          f"{WRN_DEPTHS[1]} (16, 28, 34...), got {depth}")
    if not WRN_WIDTHS[0] <= width <= WRN_WIDTHS[1]:
        raise ConfigError(f"model {model}: a WideResNet's width must be between {WRN_WIDTHS[0]} and "
                          f"{WRN_WIDTHS[1]}, got {width}")


def build_config(defense: str, preset: str | None = None, **overrides: Any) -> RunConfig:
    """Preset values, then explicit options (those not None), then validation."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    dataset = overrides.get("dataset")
    if preset is None:
        if dataset is not None and dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
        preset = DEFAULT_PRESET[dataset or DEFAULT_DATASET]
    values: dict[str, Any] = dict(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = RunConfig(defense=defense, preset=preset, **values)
    return config.validate()


def recorded_config(record: dict[str, Any]) -> RunConfig:
    """The validated config a run's record holds, to start it again (``resume``, a queued run's
    process): a record without one, or with a value of the wrong type (``eps: "big"``, edited
    by hand), is one ConfigError line, before anything is written or loaded."""
    config, run_id = record.get("config"), record.get("id")
    if type(config) is not dict or type(config.get("defense")) is not str:
        raise ConfigError(f"run {run_id} has no recorded config to start from (its {run_id}/run.json lost it): "
                          "start a new run with `advtui run`")
    try:
        return RunConfig.from_dict(config).validate()
    except ConfigError as exc:
        raise ConfigError(f"run {run_id}'s recorded config is damaged ({exc}): fix {run_id}/run.json by hand "
                          "or start a new run") from None
