"""Peak memory of one learned-maximizer training step: the L2LDA generator against the RNN optimizer.

Each configuration runs in its own process (peak RSS is per process), on a SmallCNN and random
MNIST-shaped inputs: one ``maximize(..., learn_graph=True)`` and one ``learn`` step, as the
trainer does for every batch. The RNN optimizer at the same batch size and T is the reference.

Why L2LDA needed gigabytes: its phi objective is the loss at every one of the T steps (plus the
diversity term over a doubled batch), and each step's perturbation feeds the next, so the
backward pass runs through all T generator and classifier passes: every activation of the U-Net
(about 0.4 M floats per MNIST image at width 64) and of the classifier stayed alive for
2 x batch x T images until phi's gradient was taken. The authors' code does the same (it
accumulates the loss over its train_g_iter steps and calls backward once, the perturbation sum
undetached). ``l2lda-full`` is that (checkpoint_steps off); ``l2lda`` checkpoints each generator
step (its inputs kept, its activations recomputed in the backward pass), as training now does.

    python bench/l2lda_memory.py [--batch 32,128] [--steps 10] [--width 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def measure(kind: str, batch: int, steps: int, width: int) -> dict:
    import psutil
    import torch

    torch.manual_seed(0)
    from advtui.core.config import build_config
    from advtui.engine.defenses import build_maximizer
    from advtui.engine.models import build_model
    from advtui.engine.objectives import ce_per_example

    config = build_config("rnn-adv" if kind == "rnn" else "l2lda", l2lda_width=width, device="cpu")
    maximizer = build_maximizer("rnn" if kind == "rnn" else "l2lda", config, torch.device("cpu"))
    if kind == "l2lda-full":
        maximizer.checkpoint_steps = False
    model = build_model("smallcnn", "mnist")
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    result = maximizer.maximize(model, ce_per_example, x, y, 0.3, steps, record=True, learn_graph=True)
    maximizer.learn(result)
    return {"kind": kind, "batch": batch, "steps": steps, "width": width, "seconds": time.perf_counter() - start,
            "start_gib": before / 2**30, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="32,128")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)  # child process: kind batch steps width
    args = parser.parse_args()
    if args.one:
        kind, batch, steps, width = args.one
        print(json.dumps(measure(kind, int(batch), int(steps), int(width))))
        return
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print(f"{'maximizer':10s} {'batch':>5s} {'T':>3s} {'peak RSS GiB':>12s} {'above start':>11s} {'s':>6s}")
    for batch in (int(b) for b in args.batch.split(",")):
        rows = []
        for kind in ("rnn", "l2lda-full", "l2lda"):
            out = subprocess.run([sys.executable, __file__, "--one", kind, str(batch), str(args.steps), str(args.width)],
                                 capture_output=True, text=True, env=env, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
        for r in rows:
            print(f"{r['kind']:10s} {r['batch']:5d} {r['steps']:3d} {r['peak_gib']:12.2f} "
                  f"{r['peak_gib'] - r['start_gib']:11.2f} {r['seconds']:6.1f}")
        above = [r["peak_gib"] - r["start_gib"] for r in rows]
        print(f"  memory above start, l2lda-full / l2lda: {above[1] / max(above[2], 1e-3):.1f}x; time l2lda / "
              f"l2lda-full: {rows[2]['seconds'] / rows[1]['seconds']:.2f}; l2lda / rnn memory: {above[2] / max(above[0], 1e-3):.1f}x")


if __name__ == "__main__":
    main()
