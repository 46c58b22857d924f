"""Standard AutoAttack on a run: advtui's ``aa`` against torchattacks' pieces run directly.

Two ways, on the same trained model, examples, eps and seed:
  advtui     ``evaluate_run(RUN, "natural,pgd-100,aa")``: the cascade as `advtui eval` runs it
             (every result stored, per-example masks, events), timed by the evaluation itself
  reference  the four torchattacks pieces built here by hand with the original AutoAttack's
             standard settings (APGD-CE 100 iterations, APGD-T 9 targets x 100, FAB-T 9 targets
             x 100, Square 5,000 queries, p_init 0.8), each run on the examples every earlier
             piece left robust: the original's run_standard_evaluation loop

It prints natural / pgd-100 / aa accuracy, each piece's robust count and time both ways, the
wall and CPU times of the two and their ratios (CPU time is what a machine shared with other
work inflates least), and whether the two robust sets are identical (they must be).

    python bench/autoattack.py RUN [--limit N] [--batch-size B] [--seed S] [--runs-dir DIR]
"""

from __future__ import annotations

import argparse
import time

import torch

from advtui.core.paths import runs_dir
from advtui.core.digests import hex_to_mask
from advtui.engine.attacks import build_run_model
from advtui.engine.evaluate import _test_split
from advtui.evaluation import evaluate_run, run_checkpoint
from advtui.engine.train import resolve_device
from advtui.store.registry import Registry


def reference_pieces(model, eps: float, seed: int):
    import torchattacks

    apgdt = torchattacks.APGDT(model, norm="Linf", eps=eps, steps=100, n_restarts=1, seed=seed, eot_iter=1, rho=0.75)
    apgdt.n_target_classes = 9
    fab = torchattacks.FAB(model, norm="Linf", eps=eps, steps=100, n_restarts=1, seed=seed, multi_targeted=True)
    fab.n_target_classes = 9
    return [("apgd-ce", torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, seed=seed, loss="ce",
                                          eot_iter=1, rho=0.75)),
            ("apgd-t", apgdt), ("fab-t", fab),
            ("square", torchattacks.Square(model, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, p_init=0.8,
                                           loss="margin", resc_schedule=False, seed=seed))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runs-dir", default=None)
    args = parser.parse_args()

    registry = Registry(runs_dir(args.runs_dir))
    options = dict(limit=args.limit, batch_size=args.batch_size, seed=args.seed, device=args.device)
    report = evaluate_run(registry, args.run, "natural,pgd-100", **options)
    cpu_start = time.process_time()
    aa_report = evaluate_run(registry, args.run, "aa", **options)
    aa_cpu = time.process_time() - cpu_start  # CPU time: what a machine shared with other work does not inflate
    docs = {d["attack"]: d for d in report.results + aa_report.results}
    eps = report.settings["eps"]
    print(f"run {report.run_id} ({report.run_name}), eps {eps:g}, n {report.settings['n']}, seed {args.seed}, "
          f"{report.settings['device']}")
    for attack in ("natural", "pgd-100", "aa"):
        d = docs[attack]
        print(f"  {attack:8s} {d['accuracy']:6.2f}%  ({d['robust']}/{d['n']})  {d['wall_time']:8.1f} s")

    record = registry.resolve_run(args.run)
    target = run_checkpoint(registry, record)
    device = resolve_device(args.device)
    model = build_run_model(target, device)
    split = _test_split(target.config, args.limit, None)[0].to(device)  # (examples, their ids, split size)
    x, y = split.images.float().div(255.0), split.labels
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    start, cpu_start = time.perf_counter(), time.process_time()
    for name, piece in reference_pieces(model, eps, args.seed):
        piece_start = time.perf_counter()
        idx = torch.nonzero(robust).flatten()
        for chunk in idx.split(args.batch_size):
            adv = piece(x[chunk], y[chunk])
            with torch.no_grad():
                robust[chunk] = model(adv).argmax(1) == y[chunk]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        print(f"  reference {name:8s} robust {int(robust.sum())}/{len(y)}  {time.perf_counter() - piece_start:8.1f} s")
    reference_time, reference_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    ours = torch.from_numpy(hex_to_mask(docs["aa"]["robust_mask"], len(y))).to(device)
    for piece in docs["aa"]["passes"]:
        print(f"  advtui    {piece['attack']:8s} robust {piece['robust']}/{len(y)}  {piece['wall_time']:8.1f} s")
    print(f"aa (advtui) {docs['aa']['wall_time']:.1f} s wall, {aa_cpu:.1f} s CPU; pieces run directly "
          f"{reference_time:.1f} s wall, {reference_cpu:.1f} s CPU; ratio reference / advtui: wall "
          f"{reference_time / docs['aa']['wall_time']:.2f}, CPU {reference_cpu / aa_cpu:.2f}; robust sets identical: "
          f"{bool(torch.equal(ours, robust))}")


if __name__ == "__main__":
    main()
