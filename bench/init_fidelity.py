"""What the reference initialization does to learning, measured against PyTorch's default init.

Trains the SmallCNN twice per seed on the same real MNIST batches, in the same run: once as
``build_model`` initializes it (TRADES' models/small_cnn.py: Kaiming-normal convolutions, zero
conv biases, a zero last layer) and once with every layer re-drawn by PyTorch's default
``reset_parameters``. Prints the test accuracy of each, per seed, and their mean ratio.

  * plain: SGD as in the MNIST recipe (lr 0.01, momentum 0.9, batch 128) for --plain-steps steps;
  * advtrain: one epoch of PGD-10 adversarial training at eps 0.3 (eval-mode inner maximization,
    step eps/4, x'_0 = x + 0.001 N(0, I)) at the quick scale's batch 32 and lr 0.05, then clean
    and PGD-10 accuracy.

Usage: python bench/init_fidelity.py [--seeds 3] [--plain-steps 32] [--adv-images 5000] [--device auto]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from advtui.core.paths import data_root
from advtui.engine.data import load_split
from advtui.engine.maximizers import PGD
from advtui.engine.models import build_model
from advtui.engine.objectives import ce_per_example
from advtui.engine.train import evaluate_clean_and_pgd, resolve_device

EPS = 0.3


def fresh_model(init: str, seed: int, device: torch.device) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("smallcnn", "mnist")
    if init == "pytorch-default":
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.reset_parameters()
    return model.to(device)


def train(model: nn.Module, split, batch_size: int, lr: float, steps: int, seed: int, adversarial: bool) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    pgd = PGD(EPS / 4, "normal")
    for b, x, y in split.batches(batch_size, True, seed, 0):
        if b >= steps:
            break
        if adversarial:
            model.eval()
            x = pgd(model, ce_per_example, x, y, EPS, 10, record=False).x_adv
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--plain-steps", type=int, default=32)
    parser.add_argument("--adv-images", type=int, default=5000)
    parser.add_argument("--test", type=int, default=1000, help="test examples")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    root = data_root(None)
    train_split = load_split("mnist", root, True, max(args.plain_steps * 128, args.adv_images), seed=0).to(device)
    test_split = load_split("mnist", root, False, args.test, seed=0).to(device)
    print(f"device {device}, {len(train_split)} training and {len(test_split)} test images, seeds 0..{args.seeds - 1}")
    rows = []
    for seed in range(args.seeds):
        row = {}
        for init in ("reference", "pytorch-default"):
            start = time.perf_counter()
            model = fresh_model(init, seed, device)
            train(model, train_split, 128, 0.01, args.plain_steps, seed, adversarial=False)
            plain = evaluate_clean_and_pgd(model, test_split, EPS, 10, EPS / 4, args.test, 500)["test_clean_acc"]
            model = fresh_model(init, seed, device)
            train(model, train_split, 32, 0.05, args.adv_images // 32, seed, adversarial=True)
            adv = evaluate_clean_and_pgd(model, test_split, EPS, 10, EPS / 4, args.test, 500)
            row[init] = (plain, adv["test_clean_acc"], adv["test_pgd_acc"])
            print(f"seed {seed} {init:>15}: plain {args.plain_steps} steps {plain:5.1f}% | advtrain 1 epoch of "
                  f"{args.adv_images} clean {adv['test_clean_acc']:5.1f}% PGD-10 {adv['test_pgd_acc']:5.1f}% "
                  f"({time.perf_counter() - start:.0f} s)")
        rows.append(row)
    for i, what in enumerate(("plain clean", "advtrain clean", "advtrain PGD-10")):
        ref = sum(r["reference"][i] for r in rows) / len(rows)
        default = sum(r["pytorch-default"][i] for r in rows) / len(rows)
        print(f"mean {what:>16}: reference init {ref:5.1f}%, PyTorch default {default:5.1f}%, "
              f"ratio {ref / max(default, 1e-9):.2f}x")


if __name__ == "__main__":
    main()
