"""Attack throughput of the evaluation suite: images/s for pgd-100 and cw-100 on this device.

Each is measured three ways in the same process, on the same model and examples:
  advtui      the attack as `advtui eval` runs it (advtui.engine.attacks: the Maximizer
              interface, per-step loss trajectory recorded) plus the prediction at x'
  reference   PGD written the usual way (a plain loop: requires_grad, autograd.grad,
              sign step, clamp) with the same loss, steps, step size and random start
  torchattacks  torchattacks.PGD (pgd-100 only; its CW is the L2 optimisation attack, a
              different thing), when the package is importable

Timings interleave the implementations and keep each one's best of --repeats rounds, so
a busy shared machine hurts them alike. The ratio column is reference time / advtui time
(above 1: advtui is faster).

    python bench/eval_throughput.py [--device auto] [--n N] [--batch-size B] [--repeats R]
    OMP_NUM_THREADS=1 python bench/eval_throughput.py --device cpu --n 64 --batch-size 64 --repeats 2
                                    [--run RUN --runs-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from advtui.core.config import build_config
from advtui.core.datasets import DATASET_SPECS
from advtui.core.attack_specs import parse_attack
from advtui.core.paths import data_root
from advtui.engine.attacks import CW_KAPPA, build_attack
from advtui.engine.data import load_split
from advtui.engine.models import build_model
from advtui.engine.train import device_name, resolve_device

EPS = 0.3
STEPS = 100


def reference_pgd(model, x, y, eps, alpha, steps, loss="ce"):
    """The textbook loop (Madry et al.'s code, and most papers' evaluation scripts)."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        if loss == "ce":
            objective = F.cross_entropy(logits, y)
        else:  # CW margin: -relu(z_y - max_{i != y} z_i + kappa), as in Madry's cw loss
            onehot = F.one_hot(y, logits.shape[1]).bool()
            correct = logits[onehot]
            wrong = logits.masked_fill(onehot, -1e4).amax(1)
            objective = -F.relu(correct - wrong + CW_KAPPA).sum()
        (grad,) = torch.autograd.grad(objective, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv


def load_model(args, device):
    if args.run:
        from advtui.engine.attacks import build_run_model
        from advtui.evaluation import run_checkpoint
        from advtui.store.registry import Registry
        from advtui.core.paths import runs_dir

        registry = Registry(runs_dir(args.runs_dir))
        record = registry.resolve_run(args.run)
        return build_run_model(run_checkpoint(registry, record, device=device), device), record["config"]["dataset"]
    torch.manual_seed(0)
    model = build_model("smallcnn", "mnist").to(device).eval()
    model.requires_grad_(False)
    return model, "mnist"


def examples(dataset, n, device):
    try:
        split = load_split(dataset, data_root(None), False, n, download=False)
        x = split.images.float().div(255.0)
        return x.to(device), split.labels.to(device)
    except Exception:  # no dataset here: random images of the right shape measure the same work
        spec = DATASET_SPECS[dataset]
        return torch.rand(n, *spec.shape, device=device), torch.randint(0, spec.num_classes, (n,), device=device)


def timed(fn, device) -> tuple[float, float]:
    """Wall seconds and this thread's CPU seconds (on the CPU with one thread: the work done,
    which another process on a busy machine does not inflate)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu_start = time.perf_counter(), time.thread_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.thread_time() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, default=None, help="examples (default 4096 on CUDA, 128 on CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 1024 on CUDA, 128 on CPU")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--run", default=None, help="use this run's checkpoint instead of a fresh SmallCNN")
    parser.add_argument("--runs-dir", default=None)
    args = parser.parse_args()

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    n = args.n or (4096 if cuda else 128)
    batch = args.batch_size or (1024 if cuda else 128)
    model, dataset = load_model(args, device)
    x_all, y_all = examples(dataset, n, device)
    config = build_config("plain", dataset=dataset, eps=EPS)
    alpha = EPS / 4

    try:
        import torchattacks
    except ImportError:
        torchattacks = None

    def over_batches(attack_one_batch):
        def run():
            correct = 0
            for i in range(0, n, batch):
                x, y = x_all[i:i + batch], y_all[i:i + batch]
                x_adv = attack_one_batch(x, y)
                with torch.no_grad():
                    correct += int((model(x_adv).argmax(1) == y).sum())
            return correct
        return run

    implementations: dict[str, dict] = {}
    for spec in (f"pgd-{STEPS}", f"cw-{STEPS}"):
        attack = build_attack(parse_attack(spec), None, {}, eps=EPS, device=device, target_config=config)
        loss = attack.spec.loss
        impls = {
            "advtui": over_batches(lambda x, y, a=attack: a.perturb(model, x, y, EPS).x_adv),
            "reference": over_batches(lambda x, y, loss=loss: reference_pgd(model, x, y, EPS, alpha, STEPS, loss)),
        }
        if torchattacks is not None and spec.startswith("pgd"):
            ta = torchattacks.PGD(model, eps=EPS, alpha=alpha, steps=STEPS, random_start=True)
            impls["torchattacks"] = over_batches(lambda x, y, ta=ta: ta(x, y))
        implementations[spec] = impls

    # Warm up (kernel selection, allocator) with two-step versions of both attacks on one batch.
    warm_x, warm_y = x_all[:batch], y_all[:batch]
    for family in ("pgd", "cw"):
        quick = build_attack(parse_attack(f"{family}-2"), None, {}, eps=EPS, device=device, target_config=config)
        quick.perturb(model, warm_x, warm_y, EPS)
        reference_pgd(model, warm_x, warm_y, EPS, alpha, 2, quick.spec.loss)

    best: dict[tuple[str, str], float] = {}
    best_cpu: dict[tuple[str, str], float] = {}
    accuracy: dict[tuple[str, str], float] = {}
    for _ in range(args.repeats):
        for spec, impls in implementations.items():
            for name, fn in impls.items():
                torch.manual_seed(0)
                result = {}
                seconds, cpu_seconds = timed(lambda: result.setdefault("correct", fn()), device)
                key = (spec, name)
                best[key] = min(best.get(key, float("inf")), seconds)
                best_cpu[key] = min(best_cpu.get(key, float("inf")), cpu_seconds)
                accuracy[key] = 100.0 * result["correct"] / n

    threads = "" if cuda else f", {os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.1f}"
    print(f"device: {device_name(device)}{threads}; torch {torch.__version__}; "
          f"torchattacks {'%s' % torchattacks.__version__ if torchattacks else 'not installed'}")
    print(f"model: {'run ' + args.run if args.run else 'SmallCNN (fresh)'} on {dataset}; n={n}, batch={batch}, "
          f"eps={EPS}, step={alpha}, best of {args.repeats}")
    cpu_columns = not cuda and torch.get_num_threads() == 1
    print(f"{'attack':<10} {'implementation':<14} {'images/s':>10} {'seconds':>9} {'robust %':>9} {'ratio':>7}"
          + (f" {'CPU s':>7} {'CPU ratio':>9}" if cpu_columns else ""))
    for spec, impls in implementations.items():
        ref, ref_cpu = best[(spec, "reference")], best_cpu[(spec, "reference")]
        for name in impls:
            seconds = best[(spec, name)]
            ratio = ref / seconds
            line = f"{spec:<10} {name:<14} {n / seconds:>10.1f} {seconds:>9.2f} {accuracy[(spec, name)]:>9.2f} {ratio:>7.2f}"
            if cpu_columns:
                line += f" {best_cpu[(spec, name)]:>7.2f} {ref_cpu / best_cpu[(spec, name)]:>9.2f}"
            print(line)
    print("ratio = reference seconds / this implementation's seconds (above 1: faster than the reference)"
          + ("; CPU columns: the same by this thread's CPU time (one thread)" if cpu_columns else ""))


if __name__ == "__main__":
    main()
