"""Does the learned optimizer beat PGD at equal steps on the same model? (paper Fig. 2)

Trains a plain SmallCNN on an MNIST slice once, then, from those weights (Algorithm 1, line 3:
"initialize with pre-trained configurations"; adversarial training from scratch at eps 0.3
sits at chance for its first epochs, where every maximizer finds the same loss), trains rnn-adv
runs for each setting of the options the paper leaves open (gradient input scaling, step
scaling to eps, phi's learning rate and optimizer, second-order terms), then
reports, from the run's own `inner` events (PGD run on the same batch with the same T every K
batches) and from a held-out test batch attacked by both on the final model:

    mean inner loss at step T: RNN vs PGD, their ratio, and how often the RNN is ahead.

Usage: python bench/rnn_vs_pgd.py [--train-limit 3000] [--epochs 2] [--variants default,...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from advtui.core.config import build_config
from advtui.core.paths import data_root
from advtui.engine.checkpoint import load_checkpoint
from advtui.engine.data import load_split
from advtui.engine.defenses import build_maximizer
from advtui.engine.maximizers import PGD
from advtui.engine.models import build_model
from advtui.engine.objectives import ce_per_example
from advtui.core.events import read_events
from advtui.store.registry import Registry
from advtui.runner import RunPlan, execute_run

VARIANTS = {
    "default": {},
    "rms-input": {"rnn_grad_input": "rms"},
    "random-init": {"rnn_init": "random"},
    "random-init-rms": {"rnn_init": "random", "rnn_grad_input": "rms", "rnn_lr": 1e-3},
    "delta-0.25": {"rnn_delta_scale": 0.25},
    "delta-1.0": {"rnn_delta_scale": 1.0},
    "phi-lr-1e-3": {"rnn_lr": 1e-3},
    "phi-sgd": {"rnn_optimizer": "sgd", "rnn_lr": 1e-2},
    "second-order": {"rnn_second_order": True},
}


def held_out_comparison(root: Path, record: dict, n: int = 500) -> tuple[float, float]:
    """RNN-T and PGD-T mean loss at step T on held-out test images, on the final model."""
    state = load_checkpoint(root / record["id"] / "checkpoints" / "final.pt")
    config = build_config(record["defense"], **{k: v for k, v in state["config"].items()
                                                if k not in ("defense", "preset")})
    model = build_model(config.model, config.dataset)
    model.load_state_dict(state["model"])
    model.eval()
    rnn = build_maximizer("rnn", config, torch.device("cpu"))
    rnn.load_state_dict(state["maximizer"])
    test = load_split("mnist", data_root(None), train=False, limit=n, download=False)
    _, x, y = next(test.batches(n, shuffle=False))
    torch.manual_seed(0)
    r = rnn.maximize(model, ce_per_example, x, y, config.eps, config.inner_steps).trajectory[-1].item()
    torch.manual_seed(0)
    p = PGD(config.pgd_step).maximize(model, ce_per_example, x, y, config.eps, config.inner_steps).trajectory[-1].item()
    return r, p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-limit", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--plain-epochs", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="advtui-rnn-vs-pgd-"))
    print(f"rnn-adv on {args.train_limit} MNIST images, {args.epochs} epochs, eps {args.eps}, T=10; "
          f"device cpu, {torch.get_num_threads()} threads; runs in {root}")
    plain = execute_run(RunPlan(build_config(
        "plain", name="bench-plain", train_limit=args.train_limit, test_limit=1000, eval_limit=500,
        epochs=args.plain_epochs, lr=0.05, batch_size=64, device="cpu")), root)
    print(f"warm start: plain, clean {plain['metrics']['test_clean_acc']:.1f}%")
    header = f"{'variant':<14}{'train RNN@T':>12}{'train PGD@T':>12}{'ratio':>8}{'RNN ahead':>10}" \
             f"{'test RNN@T':>11}{'test PGD@T':>11}{'ratio':>8}{'clean%':>8}{'pgd%':>7}{'time':>7}"
    print(header)
    for name in args.variants.split(","):
        opts = VARIANTS[name]
        config = build_config("rnn-adv", name=f"bench-{name}", train_limit=args.train_limit, test_limit=1000,
                              eval_limit=500, epochs=args.epochs, eps=args.eps, lr=args.lr, batch_size=128,
                              compare_every=5, device="cpu", init_from=plain["id"], **opts)
        start = time.perf_counter()
        record = execute_run(RunPlan(config), root)
        seconds = time.perf_counter() - start
        inner = list(read_events(root / record["id"] / "events.jsonl", {"inner"}))
        late = inner[len(inner) // 2:]  # the second half of training: the optimizer has learned
        rnn_t = [e["losses"][-1] for e in late]
        pgd_t = [e["pgd"][-1] for e in late]
        ahead = sum(r > p for r, p in zip(rnn_t, pgd_t)) / max(len(late), 1)
        test_r, test_p = held_out_comparison(root, record)
        m = record["metrics"]
        print(f"{name:<14}{statistics.mean(rnn_t):>12.4f}{statistics.mean(pgd_t):>12.4f}"
              f"{statistics.mean(rnn_t) / statistics.mean(pgd_t):>8.3f}{ahead:>10.0%}"
              f"{test_r:>11.4f}{test_p:>11.4f}{test_r / test_p:>8.3f}"
              f"{m['test_clean_acc']:>8.1f}{m['test_pgd_acc']:>7.1f}{seconds:>6.0f}s", flush=True)
    Registry(root)  # runs stay in the temporary folder for inspection


if __name__ == "__main__":
    sys.exit(main())
