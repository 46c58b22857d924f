"""The learned optimizer against PGD on one fixed model: phi trained alone, then both attack.

Takes the final checkpoint of a finished rnn-adv run as the (frozen) classifier, trains a fresh
RNN optimizer for each variant for N ascent updates on 128-image training batches, then attacks
the same held-out test images with it and with PGD (eps/4 sign steps), printing the mean
cross-entropy at every step t = 0..10 and the ratio at t = 10 (the paper's Fig. 2 comparison).

Variants are INIT:GRAD_INPUT:DELTA_SCALE:PHI_LR, e.g. pgd:sign:0.5:0.01 (the defaults).

Usage: python bench/rnn_phi_only.py RUNS_DIR [--variants pgd:sign:0.5:0.01,pgd:rms:0.5:0.01] [--updates 25]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from advtui.core.paths import checkpoint_path, data_root
from advtui.engine.checkpoint import load_checkpoint
from advtui.engine.data import load_split
from advtui.engine.maximizers import PGD
from advtui.engine.rnn import RNNOptimizer
from advtui.engine.models import build_model
from advtui.engine.objectives import ce_per_example
from advtui.store.registry import Registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir", type=Path, help="A runs directory holding a finished rnn-adv run.")
    parser.add_argument("--variants", default="pgd:sign:0.5:0.01,pgd:sign:1.0:0.01,pgd:rms:0.5:0.01,pgd:rms:0.5:0.001")
    parser.add_argument("--updates", type=int, default=25)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--test", type=int, default=500)
    args = parser.parse_args()

    registry = Registry(args.runs_dir)
    record = next(r for r in registry.runs() if r["defense"] == "rnn-adv" and r["status"] == "finished")
    state = load_checkpoint(checkpoint_path(registry, record, "final"))
    model = build_model(record["model"], record["dataset"])
    model.load_state_dict(state["model"])
    model.eval().requires_grad_(False)
    train = load_split(record["dataset"], data_root(None), True, 4000, download=False)
    _, x_test, y_test = next(load_split(record["dataset"], data_root(None), False, args.test,
                                        download=False).batches(args.test, False))
    eps = args.eps
    torch.manual_seed(0)
    pgd = PGD(eps / 4).maximize(model, ce_per_example, x_test, y_test, eps, 10).trajectory
    print(f"model {record['id']} ({record['name']}), eps {eps}, {args.test} test images, {args.updates} phi updates")
    print(f"{'PGD':<22} t=0..10 {[round(v, 2) for v in pgd.tolist()]}")
    for variant in args.variants.split(","):
        init, grad_input, delta_scale, lr = variant.split(":")
        torch.manual_seed(1)
        rnn = RNNOptimizer(grad_input=grad_input, delta_scale=float(delta_scale), lr=float(lr), rnn_init=init)
        start, updates = time.perf_counter(), 0
        for epoch in range(100):
            for _, x, y in train.batches(128, True, 0, epoch):
                rnn.learn(rnn.maximize(model, ce_per_example, x, y, eps, 10, learn_graph=True))
                updates += 1
                if updates == args.updates:
                    break
            if updates == args.updates:
                break
        torch.manual_seed(0)
        traj = rnn.maximize(model, ce_per_example, x_test, y_test, eps, 10).trajectory
        print(f"{variant:<22} t=0..10 {[round(v, 2) for v in traj.tolist()]}  "
              f"at T: {traj[-1].item():.3f} vs PGD {pgd[-1].item():.3f} = {traj[-1].item() / pgd[-1].item():.3f}x"
              f"  ({time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main()
