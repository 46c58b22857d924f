"""Training throughput per defense, and against a straightforward reference loop.

Prints, on the current device (CUDA when present):
  * images/s of a full training step (inner maximization + outer update) for every defense,
    through the engine's own Trainer on real MNIST batches held on the device;
  * the cost of an rnn-adv step relative to an advtrain step (aim: <= 1.15);
  * advtrain through the engine against a reference loop written the usual way (a torchvision
    DataLoader over the dataset and PGD with loss.backward() on the input), same model, same
    batch size, same number of steps, measured in the same run.

Usage: python bench/train_throughput.py [--batches 20] [--batch-size 128] [--device auto]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader

from advtui.config import DEFENSES, build_config
from advtui.core.paths import data_root
from advtui.engine.data import load_split
from advtui.engine.models import build_model
from advtui.engine.train import Trainer, resolve_device
from advtui.events import EventWriter


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_throughput(defense: str, train, test, device, batches: int, batch_size: int, warmup: int = 2) -> float:
    config = build_config(defense, batch_size=batch_size, epochs=1, device=str(device), log_every=10**9,
                          compare_every=10**9)
    with tempfile.TemporaryDirectory() as tmp, EventWriter(Path(tmp) / "events.jsonl") as events:
        trainer = Trainer(config, Path(tmp), device, train, test, events)
        it = trainer.train_split.batches(batch_size, True, 0, 0)
        for _ in range(warmup):
            _, x, y = next(it)
            trainer.train_batch(x, y, record_inner=False)
        _sync(device)
        start = time.perf_counter()
        images = 0
        for _ in range(batches):
            try:
                _, x, y = next(it)
            except StopIteration:
                it = trainer.train_split.batches(batch_size, True, 0, 1)
                _, x, y = next(it)
            out = trainer.train_batch(x, y, record_inner=False)
            images += len(y)
        out["loss"].item()
        _sync(device)
        return images / (time.perf_counter() - start)


def reference_pgd(model, x, y, eps, alpha, steps):
    """PGD as it is usually written (Madry/TRADES code): backward() into x.grad each step."""
    x_adv = (x + 0.001 * torch.randn_like(x)).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        model.zero_grad()
        loss.backward()
        x_adv = x_adv.detach() + alpha * x_adv.grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1).detach()
    return x_adv


def reference_throughput(device, batches: int, batch_size: int, warmup: int = 2) -> float:
    dataset = torchvision.datasets.MNIST(str(data_root(None)), train=True, download=False,
                                         transform=torchvision.transforms.ToTensor())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0, drop_last=True)
    model = build_model("smallcnn", "mnist").to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        if i == warmup + batches:
            break
        x, y = x.to(device), y.to(device)
        model.eval()
        x_adv = reference_pgd(model, x, y, 0.3, 0.075, 10)
        model.train()
        opt.zero_grad()
        loss = F.cross_entropy(model(x_adv), y)
        loss.backward()
        opt.step()
        if i >= warmup:
            images += len(y)
    loss.item()
    _sync(device)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--defenses", default=",".join(DEFENSES))
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); SmallCNN on MNIST, batch {args.batch_size}, T=10, {args.batches} timed batches")
    root = data_root(None)
    train = load_split("mnist", root, True, None, download=False)
    test = load_split("mnist", root, False, 100, download=False)
    speeds = {}
    for defense in args.defenses.split(","):
        torch.manual_seed(0)
        speeds[defense] = engine_throughput(defense, train, test, device, args.batches, args.batch_size)
        print(f"  {defense:<14} {speeds[defense]:>10,.0f} images/s", flush=True)
    if "rnn-adv" in speeds and "advtrain" in speeds:
        print(f"rnn-adv step / advtrain step: {speeds['advtrain'] / speeds['rnn-adv']:.3f}x the time (aim <= 1.15)")
    torch.manual_seed(0)
    ref = reference_throughput(device, args.batches, args.batch_size)
    print(f"reference loop (DataLoader + usual PGD), advtrain: {ref:,.0f} images/s")
    if "advtrain" in speeds:
        print(f"engine advtrain / reference: {speeds['advtrain'] / ref:.2f}x the throughput")


if __name__ == "__main__":
    main()
