"""Where `advtui run` spends its time before the first batch, against importing torch.

Runs a real `advtui run` (the CLI's own code path, in a fresh process, on a fresh runs
directory) with every start-up stage timed, and in another fresh process the reference: the
time to import torch and torchvision (plus starting CUDA when the run uses it). Prints

  * the reference, measured in the same invocation,
  * the run's stages in order (CLI import, device, data, registry, model, first batch, and
    after its one short epoch: evaluation, checkpoint, final record),
  * "beyond the reference": wall time from process start to the start of the first batch,
    minus the reference (the aim is at most 5 s).

Usage: python bench/startup.py [--device auto] [--defense advtrain] [--repeats 2] [--train-limit 256]
                               [--dataset mnist] [-- extra advtui run options, e.g. --eval-limit 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# The driver runs in a fresh process: every import it makes is timed from a cold interpreter.
DRIVER = r"""
import json, sys, time
from functools import wraps
started = time.perf_counter()
marks = []
def mark(name, since):
    marks.append((name, time.perf_counter() - since))

t = time.perf_counter(); import torch, torchvision; mark("import torch, torchvision", t)
device = sys.argv[1]
if device in ("cuda", "auto") and torch.cuda.is_available():
    t = time.perf_counter(); torch.zeros(1, device="cuda"); torch.cuda.synchronize(); mark("start CUDA", t)
t = time.perf_counter(); import advtui.main; mark("import the advtui CLI", t)
import advtui.runner as runner
import advtui.engine.train as train
from advtui.store import lifecycle

first_batch = {}
timed_once = set()
def timed(owner, name, label, once=False):
    # Wrap owner.name so that each call (or only the first, with once) is timed as label.
    original = getattr(owner, name)
    @wraps(original)
    def wrapper(*args, **kwargs):
        if once and label in timed_once:
            return original(*args, **kwargs)
        timed_once.add(label)
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            mark(label, t)
    setattr(owner, name, wrapper)

from advtui.store.registry import Registry
timed(Registry, "update_run", "update the run record", once=True)
timed(train, "resolve_device", "resolve the device")
timed(train, "load_data", "load the data (train + test splits)")
timed(runner, "Registry", "open the registry")
timed(lifecycle, "create_running", "create the run record")
timed(train.Trainer, "__init__", "build the trainer (model, maximizer, data to device)")
timed(train.Trainer, "start_event", "write the start event")

timed(train, "evaluate_clean_and_pgd", "after the epoch: clean + PGD evaluation")
timed(train, "save_checkpoint", "after the epoch: save the checkpoint")
timed(lifecycle, "mark_finished", "after the epoch: record the finished run")

original_batch = train.Trainer.train_batch
def train_batch(self, *args, **kwargs):
    if "first" in first_batch:
        return original_batch(self, *args, **kwargs)
    first_batch["first"] = time.perf_counter() - started
    if self.device.type == "cuda":
        torch.cuda.synchronize(self.device)
    t = time.perf_counter()
    out = original_batch(self, *args, **kwargs)
    out["loss"].item()
    mark("the first batch itself", t)
    return out
train.Trainer.train_batch = train_batch

sys.argv = ["advtui", "run", *sys.argv[2:]]
try:
    advtui.main.main()
except SystemExit as exit:  # typer exits after the command
    if exit.code not in (0, None):
        raise
print("STARTUP " + json.dumps({"marks": marks, "to_first_batch": first_batch.get("first")}))
"""

REFERENCE = r"""
import sys, time
t = time.perf_counter()
import torch, torchvision
if sys.argv[1] in ("cuda", "auto") and torch.cuda.is_available():
    torch.zeros(1, device="cuda"); torch.cuda.synchronize()
print("REFERENCE", time.perf_counter() - t)
"""


def _run_python(code: str, args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall time of a fresh interpreter running ``code`` (interpreter start included), and its output."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"benchmark process failed:\n{done.stderr[-3000:]}")
    return wall, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--defense", default="advtrain")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many fresh processes each")
    parser.add_argument("--train-limit", type=int, default=256, help="training examples of the one epoch run")
    parser.add_argument("extra", nargs="*", help="more `advtui run` options (after --)")
    args = parser.parse_args()

    env = dict(os.environ)
    best_reference, best_run = float("inf"), None
    for _ in range(args.repeats):
        # Interleaved, so a busy machine slows both alike.
        wall, out = _run_python(REFERENCE, [args.device], env)
        best_reference = min(best_reference, wall)
        with tempfile.TemporaryDirectory() as runs:
            run_args = [args.device, "--defense", args.defense, "--dataset", args.dataset, "--epochs", "1",
                        "--train-limit", str(args.train_limit), "--device", args.device, "--runs-dir", runs,
                        "--log-every", "1", *args.extra]
            wall, out = _run_python(DRIVER, run_args, env)
        line = next(l for l in out.splitlines() if l.startswith("STARTUP "))
        result = json.loads(line[len("STARTUP "):])
        if result["to_first_batch"] is None:
            raise SystemExit("the run never reached its first batch:\n" + out[-3000:])
        if best_run is None or result["to_first_batch"] < best_run["to_first_batch"]:
            best_run = result

    print(f"advtui run --defense {args.defense} --dataset {args.dataset} --device {args.device} "
          f"{' '.join(args.extra)} (best of {args.repeats} fresh processes; load average {os.getloadavg()[0]:.1f})")
    print(f"reference: a fresh python importing torch + torchvision{' + starting CUDA' if args.device != 'cpu' else ''}: "
          f"{best_reference:6.2f} s (interpreter start included)")
    print("advtui run, stage by stage (seconds, in order):")
    for name, seconds in best_run["marks"]:
        print(f"  {name:<55} {seconds:6.2f}")
    to_first = best_run["to_first_batch"]
    print(f"from process start to the first batch: {to_first:6.2f} s "
          f"(+ interpreter start, which the reference includes)")
    beyond = to_first - sum(s for n, s in best_run["marks"] if n.startswith(("import torch", "start CUDA")))
    print(f"beyond importing torch{' and starting CUDA' if args.device != 'cpu' else ''}: {beyond:6.2f} s (aim <= 5 s)")


if __name__ == "__main__":
    main()
