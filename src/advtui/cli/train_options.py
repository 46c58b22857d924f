"""The training options shared by ``advtui run`` and ``advtui queue train``, declared once."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Optional

import typer
from rich.markup import escape

from advtui.core.config import DEFAULT_PRESET, DEFENSES, PRESETS, RunConfig, build_config
from advtui.core.datasets import DATASET_SPECS, DATASETS, DEFAULT_DATASET
from advtui.core.health import CHANCE_MULTIPLE
from advtui.core.errors import ConfigError

def _either(names) -> str:
    names = list(names)
    return " or ".join(names) if len(names) <= 2 else f"{', '.join(names[:-1])} or {names[-1]}"


# Texts of the dataset table (core/datasets.py): "1 on MNIST, 6 on CIFAR-10", "paper-cifar with --dataset cifar10".
_BETAS = ", ".join(f"{spec.default_beta:g} on {spec.title}" for spec in DATASET_SPECS.values())
_PRESET_DEFAULTS = "; ".join([DEFAULT_PRESET[DEFAULT_DATASET]] + [
    f"{DEFAULT_PRESET[d]} with --dataset {d}" for d in DATASETS if d != DEFAULT_DATASET])

# (name, type, typer option). Every option defaults to None (unset), so a preset's values apply
# unless given explicitly.
TRAIN_OPTIONS: list[tuple[str, Any, Any]] = [
    ("defense", Optional[str], typer.Option(None, "--defense", "-d", help=f"One of: {', '.join(DEFENSES)}.")),
    ("dataset", Optional[str], typer.Option(None, help=f"{_either(DATASETS)}.")),
    ("model", Optional[str], typer.Option(None, help="smallcnn, vgg16, resnet18, wrn-34-10 (wrn-DEPTH-WIDTH).")),
    ("epochs", Optional[int], typer.Option(None, help="Training epochs.")),
    ("batch_size", Optional[int], typer.Option(None, "--batch-size", help="Batch size.")),
    ("eps", Optional[float], typer.Option(None, help="L-inf radius, in (0, 1].")),
    ("inner_steps", Optional[int], typer.Option(None, "--inner-steps", "-T", help="Inner maximization steps T.")),
    ("step_size", Optional[float], typer.Option(None, "--step-size", help="PGD step size (default eps/4).")),
    ("lr", Optional[float], typer.Option(None, help="Classifier learning rate.")),
    ("momentum", Optional[float], typer.Option(None, help="SGD momentum.")),
    ("weight_decay", Optional[float], typer.Option(None, "--weight-decay", help="SGD weight decay.")),
    ("milestones", Optional[str], typer.Option(None, help="Epochs at which lr decays 10x, e.g. 55,75,90.")),
    ("beta", Optional[float], typer.Option(None, help=f"TRADES beta (default {_BETAS}).")),
    ("seed", Optional[int], typer.Option(None, help="Random seed.")),
    ("device", Optional[str], typer.Option(None, help="auto, cpu, cuda or cuda:N.")),
    ("nproc", Optional[int], typer.Option(None, "--nproc", help="Processes training this run together (DistributedDataParallel through torchrun: one per GPU, gloo on the CPU).")),
    ("name", Optional[str], typer.Option(None, help="A name for the run (default DEFENSE-DATASET-sSEED).")),
    ("group", Optional[str], typer.Option(None, help="Group name (seeds of one experiment).")),
    ("preset", Optional[str], typer.Option(None, help=f"{', '.join(PRESETS)} (default {_PRESET_DEFAULTS}).")),
    ("data_root", Optional[str], typer.Option(None, "--data-root", help="Dataset root (default $ADVTUI_DATA or a cache folder).")),
    ("train_limit", Optional[int], typer.Option(None, "--train-limit", help="Class-balanced training subset size.")),
    ("test_limit", Optional[int], typer.Option(None, "--test-limit", help="Class-balanced test subset size.")),
    ("val_size", Optional[int], typer.Option(None, "--val-size", help="Training images held out (class-balanced, fixed by the seed) for the per-epoch accuracy and best.pt; 0: none, the per-epoch numbers are then test numbers, for monitoring only. " + escape("[default: 1000, or a tenth of --train-limit when smaller]"))),
    ("eval_limit", Optional[int], typer.Option(None, "--eval-limit", help="Validation (with --val-size 0: test) examples for per-epoch accuracy.")),
    ("early_stop", Optional[int], typer.Option(None, "--early-stop", help="Stop after this many epochs without a better validation PGD accuracy (best.pt keeps the best).")),
    ("init", Optional[str], typer.Option(None, help="Inner start: normal (x + 0.001 N(0,I)) or uniform.")),
    ("inner_train_mode", bool, typer.Option(False, "--inner-train-mode", help="Keep the model in train mode during the inner maximization.")),
    ("rnn_grad_input", Optional[str], typer.Option(None, "--rnn-grad-input", help="RNN gradient input scaling: sign, rms or raw.")),
    ("rnn_init", Optional[str], typer.Option(None, "--rnn-init", help="RNN start: pgd (close to a sign-gradient step) or random.")),
    ("rnn_delta_scale", Optional[float], typer.Option(None, "--rnn-delta-scale", help="RNN step: delta = scale * eps * tanh(V h).")),
    ("rnn_second_order", bool, typer.Option(False, "--rnn-second-order", help="Backpropagate through g_t (Hessian terms).")),
    ("rnn_optimizer", Optional[str], typer.Option(None, "--rnn-optimizer", help="Optimizer of phi: adam or sgd.")),
    ("rnn_lr", Optional[float], typer.Option(None, "--rnn-lr", help="Learning rate of phi.")),
    ("l2lda_width", Optional[int], typer.Option(None, "--l2lda-width", help="L2LDA generator channels (64: ~0.5M parameters).")),
    ("l2lda_lr", Optional[float], typer.Option(None, "--l2lda-lr", help="L2LDA generator learning rate.")),
    ("l2lda_latent", Optional[int], typer.Option(None, "--l2lda-latent", help="L2LDA latent noise size.")),
    ("l2lda_diversity", Optional[float], typer.Option(None, "--l2lda-diversity", help="L2LDA diversity term weight.")),
    ("compare_every", Optional[int], typer.Option(None, "--compare-every", help="Batches between inner trajectory records (K).")),
    ("log_every", Optional[int], typer.Option(None, "--log-every", help="Batches between step events.")),
    ("chance_patience", Optional[int], typer.Option(None, "--chance-patience", help=f"Epoch ends at chance-level clean accuracy (under {CHANCE_MULTIPLE}x chance: 20% for 10 classes) before a health warning.")),
    ("deterministic", bool, typer.Option(False, "--deterministic", help="Deterministic kernels (slower).")),
    ("amp", bool, typer.Option(False, "--amp", help="bfloat16 autocast on CUDA.")),
    ("init_from", Optional[str], typer.Option(None, "--init-from", help="Start from RUN's final weights (classifier, and its learned optimizer when the kinds match).")),
]
_TRAIN_OPTION_NAMES = tuple(name for name, _, _ in TRAIN_OPTIONS)


def effective_default(name: str, dataset: str = DEFAULT_DATASET) -> Any:
    """The value an unset option takes on ``dataset``: its default preset's, else RunConfig's
    field default (None where the option's help says what None means)."""
    preset = PRESETS[DEFAULT_PRESET[dataset]]
    if name in preset:
        return preset[name]
    spec = next((f for f in dataclasses.fields(RunConfig) if f.name == name), None)
    if spec is None:
        return None
    if spec.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return spec.default_factory()  # type: ignore[misc]
    return None if spec.default is dataclasses.MISSING else spec.default


def format_default(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(format_default(v) for v in value)
    if isinstance(value, float) and len(f"{value:g}") > 7 and abs(value * 255 - round(value * 255)) < 1e-9:
        return f"{round(value * 255)}/255"  # eps 8/255
    return f"{value:g}" if isinstance(value, float) else str(value)


def _with_default(name: str, option: Any) -> Any:
    """``option`` with its effective default at the end of its help: the options themselves
    default to None (so a preset's values apply), which --help would otherwise show as nothing."""
    first = effective_default(name, DEFAULT_DATASET)
    if first is None or isinstance(first, bool):
        return option
    text = format_default(first)
    for dataset in DATASETS:
        other = effective_default(name, dataset)
        if dataset != DEFAULT_DATASET and other != first and name != "dataset":
            text += f"; {format_default(other)} on {dataset}"
    option.help = f"{option.help} {escape(f'[default: {text}]')}"
    return option


for _name, _, _option in TRAIN_OPTIONS:
    _with_default(_name, _option)


def with_train_options(command: Callable) -> Callable:
    """Give a command every training option of TRAIN_OPTIONS.

    The command declares a ``train_options: dict`` parameter and receives the options there
    (None or False when not given), so the list exists once for every command that builds a
    RunConfig. Typer reads the command's ``__signature__``, which is extended here.
    """
    signature = inspect.signature(command)
    # The training options come first in --help; the command's own options follow them.
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
           for p in signature.parameters.values() if p.name != "train_options"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
             for name, annotation, option in TRAIN_OPTIONS]
    clash = {p.name for p in own} & set(_TRAIN_OPTION_NAMES)
    if clash:
        raise TypeError(f"{command.__name__} redefines training options {sorted(clash)}")

    @functools.wraps(command)
    def with_options(*args: Any, **kwargs: Any) -> Any:
        options = {name: kwargs.pop(name, None) for name in _TRAIN_OPTION_NAMES}
        return command(*args, **kwargs, train_options=options)

    with_options.__signature__ = signature.replace(parameters=[*added, *own])  # type: ignore[attr-defined]
    return with_options


def config_overrides(train_options: dict[str, Any]) -> dict[str, Any]:
    """RunConfig overrides from the training options (defense and preset excluded; None = unset)."""
    overrides = {k: v for k, v in train_options.items() if k not in ("defense", "preset")}
    milestones = overrides.get("milestones")
    overrides["milestones"] = _parse_ints(milestones, "milestones") if milestones else None
    for flag in ("inner_train_mode", "rnn_second_order", "deterministic", "amp"):
        overrides[flag] = overrides.get(flag) or None  # an absent flag keeps the preset's value
    return overrides


def build_config_from_options(train_options: dict[str, Any], **fixed: Any) -> RunConfig:
    """A validated RunConfig from the training options; ``fixed`` values win over the options."""
    defense = fixed.pop("defense", None) or train_options.get("defense")
    if defense is None:
        raise ConfigError(f"--defense is required (one of: {', '.join(DEFENSES)})")
    overrides = {**config_overrides(train_options), **fixed}
    return build_config(defense, train_options.get("preset"), **overrides)


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{what} must be comma-separated integers, got {text!r}") from None
