"""Training throughput per defense, and against a straightforward reference loop.

Prints, on the current device (CUDA when present):
  * images/s of a full training step (inner maximization + outer update) for every defense,
    through the engine's own Trainer on real MNIST batches held on the device;
  * the cost of an rnn-adv step relative to an advtrain step (aim: <= 1.15), and advtrain-bls
    throughput relative to advtrain (aim: >= 0.3); on the CPU also by CPU time, which a busy
    shared machine disturbs far less than wall time;
  * advtrain through the engine against a reference loop written the usual way (a torchvision
    DataLoader over the dataset and PGD with loss.backward() on the input), same model, same
    batch size, same number of steps, measured in the same run.

Usage: python bench/train_throughput.py [--batches 20] [--rounds 3] [--batch-size 128] [--device auto]
       python bench/train_throughput.py --device cpu --batches 2 --rounds 3 --defenses advtrain,rnn-adv,advtrain-bls
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

from advtui.core.config import DEFENSES, build_config
from advtui.core.paths import data_root
from advtui.engine.data import load_split
from advtui.engine.models import build_model
from advtui.engine.train import Trainer, resolve_device
from advtui.core.events import EventWriter


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EngineTiming:
    """One defense's Trainer on real MNIST batches held on the device, timed a round at a time.

    Rounds of all defenses interleave and each keeps its best round, so a busy shared machine
    slows them alike. Each round records wall time and, on the CPU, this thread's CPU time (with
    one thread, the work done: what another process takes from the machine does not count)."""

    def __init__(self, defense: str, train, test, device, batch_size: int, warmup: int, tmp: Path):
        config = build_config(defense, batch_size=batch_size, epochs=1, device=str(device), log_every=10**9,
                              compare_every=10**9)
        self.events = EventWriter(tmp / f"{defense}.jsonl")
        self.trainer = Trainer(config, tmp, device, train, test, self.events)
        self.device, self.batch_size, self.epoch = device, batch_size, 0
        self.batches = self.trainer.train_split.batches(batch_size, True, 0, 0)
        # The warm-up batches also take the model off its initial state: the SmallCNN reference
        # init has a zero last layer, where every input gradient is zero (and BLS never backtracks).
        for _ in range(warmup):
            self.step()
        self.best_wall = self.best_cpu = float("inf")

    def step(self) -> dict:
        try:
            _, x, y = next(self.batches)
        except StopIteration:
            self.epoch += 1
            self.batches = self.trainer.train_split.batches(self.batch_size, True, 0, self.epoch)
            _, x, y = next(self.batches)
        return self.trainer.train_batch(x, y, record_inner=False)

    def timed_round(self, batches: int) -> None:
        _sync(self.device)
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(batches):
            out = self.step()
        out["loss"].item()
        _sync(self.device)
        self.best_wall = min(self.best_wall, time.perf_counter() - wall)
        self.best_cpu = min(self.best_cpu, time.thread_time() - cpu)


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
    parser.add_argument("--batches", type=int, default=20, help="batches per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per defense (best kept)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per defense first")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--defenses", default=",".join(DEFENSES))
    parser.add_argument("--no-reference", action="store_true", help="skip the reference loop")
    args = parser.parse_args()
    device = resolve_device(args.device)
    cpu = device.type == "cpu"
    name = torch.cuda.get_device_name(device) if not cpu else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); SmallCNN on MNIST, batch {args.batch_size}, T=10; best of {args.rounds} "
          f"interleaved rounds of {args.batches} batches, after {args.warmup} warm-up batches")
    root = data_root(None)
    train = load_split("mnist", root, True, None, download=False)
    test = load_split("mnist", root, False, 100, download=False)
    defenses = args.defenses.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        timings = {}
        for defense in defenses:
            torch.manual_seed(0)
            timings[defense] = EngineTiming(defense, train, test, device, args.batch_size, args.warmup, Path(tmp))
        for _ in range(args.rounds):
            for timing in timings.values():
                timing.timed_round(args.batches)
        for timing in timings.values():
            timing.events.close()
    images = args.batches * args.batch_size
    speeds = {d: images / t.best_wall for d, t in timings.items()}
    cpu_speeds = {d: images / t.best_cpu for d, t in timings.items()}
    header = f"  {'defense':<14} {'images/s':>10}" + (f" {'images per CPU-s':>17}" if cpu else "")
    print(header)
    for defense in defenses:
        line = f"  {defense:<14} {speeds[defense]:>10,.0f}"
        print(line + (f" {cpu_speeds[defense]:>17,.0f}" if cpu else ""), flush=True)

    def ratio_line(label: str, ratio: dict[str, float], aim: str) -> str:
        text = f"{label}: {ratio['wall']:.3f}x"
        if cpu:
            text += f" wall time, {ratio['cpu']:.3f}x CPU time"
        return text + f" ({aim})"

    if "advtrain" in speeds:
        base = timings["advtrain"]
        if "rnn-adv" in speeds:
            rnn = timings["rnn-adv"]
            print(ratio_line("rnn-adv step / advtrain step", {"wall": rnn.best_wall / base.best_wall,
                             "cpu": rnn.best_cpu / base.best_cpu}, "aim <= 1.15"))
        if "advtrain-bls" in speeds:
            bls = timings["advtrain-bls"]
            print(ratio_line("advtrain-bls throughput / advtrain throughput", {
                "wall": base.best_wall / bls.best_wall, "cpu": base.best_cpu / bls.best_cpu}, "aim >= 0.3"))
    if args.no_reference:
        return
    torch.manual_seed(0)
    ref = reference_throughput(device, args.batches, args.batch_size)
    print(f"reference loop (DataLoader + usual PGD), advtrain: {ref:,.0f} images/s")
    if "advtrain" in speeds:
        print(f"engine advtrain / reference: {speeds['advtrain'] / ref:.2f}x the throughput")


if __name__ == "__main__":
    main()
