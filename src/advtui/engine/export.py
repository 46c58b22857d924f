"""A run's model for the robustness ecosystem: ``advtui export RUN --format robustbench``.

Writes the model zoo's layout (RobustBench, ``robustbench/model_info`` and its ``models``
folder, README "Adding a new model"): ``models/<dataset>/Linf/<name>.pt`` holds the model's
state dict (tensors only, so ``torch.load(path, weights_only=True)`` reads it back, and
``advtui.engine.models.build_model(model, dataset).load_state_dict`` takes it), and
``model_info/<dataset>/Linf/<name>.json`` the model card with the zoo's fields: link, name,
authors, additional_data, number_forward_passes, dataset, venue, architecture, eps, clean_acc,
reported, autoattack_acc (accuracies as strings, in %), and footnote; beside them, the number of
test examples each accuracy rests on (clean_acc_n, autoattack_acc_n) and its exact 95% interval.

The accuracies are the stored ``aa`` result of the exported checkpoint (run ``advtui eval RUN
-a aa`` first); clean_acc is measured on the same examples. Fields only the author can know
(link, authors, venue, reported) are left empty to fill in. RobustBench's own zoo lists
CIFAR-10/100 and ImageNet only: an MNIST card is for the user's own records.

The engine reads no store: ``write_robustbench`` takes the loaded checkpoint and the results
already read for it; ``advtui.evaluation.export_robustbench`` finds both from a run reference.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import torch

from advtui.core.atomic import atomic_open, atomic_write_text
from advtui.core.stats import proportion_interval
from advtui.engine.attacks import RunCheckpoint
from advtui.core.errors import ConfigError
from advtui.core.records import Result

THREAT_MODEL = "Linf"
ARCHITECTURES = {"smallcnn": "SmallCNN", "vgg16": "VGG-16", "resnet18": "ResNet-18"}


@dataclass
class Export:
    weights: Path
    card_path: Path
    card: dict[str, Any]


def architecture_name(model: str) -> str:
    """The zoo's spelling: SmallCNN, VGG-16, ResNet-18, WideResNet-34-10."""
    wide = re.match(r"^wrn-(\d+)-(\d+)$", model)
    return f"WideResNet-{wide[1]}-{wide[2]}" if wide else ARCHITECTURES.get(model, model)


def eps_text(eps: float) -> str:
    """The zoo writes eps as a fraction of 255 where it is one (8/255), else as a number (0.3)."""
    in_255 = eps * 255
    if 0 < eps < 0.1 and abs(in_255 - round(in_255)) < 1e-6:
        return f"{round(in_255)}/255"
    return f"{eps:g}"


def _interval_text(count: int, n: int) -> str:
    low, high = proportion_interval(count, n)
    return f"{low:.2f}-{high:.2f}"


def model_name(record: dict[str, Any]) -> str:
    """A file name for the zoo: the run's name (or id), letters, digits, - and _ only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", record.get("name") or record["id"]).strip("-") or record["id"]


def write_robustbench(record: dict[str, Any], target: RunCheckpoint, results: dict[str, dict[str, Any]],
                      out_dir: Path) -> Export:
    """Write the model of the run ``record`` in checkpoint ``target`` and its card under ``out_dir``,
    from ``results`` (the stored results of that checkpoint, by attack spec); ConfigError (one line)
    when they hold no AutoAttack result. Nothing is written unless everything needed is there."""
    stored = results.get("aa")
    if stored is None:
        raise ConfigError(f"run {record['id']} has no AutoAttack result for checkpoint {target.path.name} "
                          f"({target.digest}): run `advtui eval {record['id']} -a natural,aa` first")
    try:
        aa = Result.from_dict(stored)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"run {record['id']}'s stored AutoAttack result is damaged ({exc}): run "
                          f"`advtui eval {record['id']} -a natural,aa` again") from None
    settings = aa.settings or {}
    if None in (aa.n, aa.accuracy, aa.robust, aa.clean_accuracy, aa.clean_robust) or "eps" not in settings:
        raise ConfigError(f"run {record['id']}'s stored AutoAttack result lacks its counts or eps: run "
                          f"`advtui eval {record['id']} -a natural,aa` again")
    config = target.config
    examples = "the full test set" if settings.get("limit") is None else f"{aa.n} test examples"
    card = {
        "link": "",
        "name": record.get("name") or record["id"],
        "authors": "",
        "additional_data": False,  # every advtui defense trains on the dataset's own training split
        "number_forward_passes": 1,  # a deterministic model: one pass per prediction
        "dataset": config.dataset,
        "venue": "",
        "architecture": architecture_name(config.model),
        "eps": eps_text(settings["eps"]),
        "clean_acc": f"{aa.clean_accuracy:.2f}",
        "reported": "",
        "autoattack_acc": f"{aa.accuracy:.2f}",
        # Beyond the zoo's fields: the examples each accuracy rests on, and its exact 95% interval.
        "clean_acc_n": aa.n,
        "autoattack_acc_n": aa.n,
        "clean_acc_ci95": _interval_text(aa.clean_robust, aa.n),
        "autoattack_acc_ci95": _interval_text(aa.robust, aa.n),
        "footnote": (f"advtui run {record['id']} ({record.get('defense')}), checkpoint {target.digest}; "
                     f"AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square; torchattacks pieces with the "
                     f"original settings) on {examples}, "
                     f"seed {settings.get('seed')}"),
    }
    name = model_name(record)
    weights = Path(out_dir) / "models" / config.dataset / THREAT_MODEL / f"{name}.pt"
    card_path = Path(out_dir) / "model_info" / config.dataset / THREAT_MODEL / f"{name}.json"
    state = {key: value.detach().cpu().contiguous() for key, value in target.state["model"].items()}
    try:
        weights.parent.mkdir(parents=True, exist_ok=True)
        card_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(weights, "wb") as f:
            torch.save(state, f)
        atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write the export under {out_dir}: {exc.strerror or exc}") from exc
    return Export(weights, card_path, card)
