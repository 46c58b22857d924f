"""Latency of the run registry as it grows: insert, update and query with N runs stored.

For each registry size (default 1,000 and 10,000 runs of realistic size: a full RunConfig and
last-epoch metrics each), it times, one operation at a time, as the CLI, the dashboard and
the scheduler use them:
  insert      Registry.create_run (lock, read, new id, write whole file atomically)
  update      Registry.update_run (lock, read, change one record, write)
  job claim   Registry.update on the jobs table, compare-and-set on status (the scheduler)
  query       Registry.get_run by id (lock-free read of the whole file)
  list        Registry.runs() (what `advtui ls` and the dashboard's table read)
and prints p50 and p99 in milliseconds. The reference, measured in the same run on the same
file, is the least any whole-file JSON store must do per write: json.loads + json.dumps +
write + fsync + rename; the ratio column is operation p50 / reference p50.

    python bench/registry.py [--sizes 1000,10000] [--samples 60] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from advtui.config import build_config
from advtui.registry import JOBS, REGISTRY_FILE, RUNS, Registry


def realistic_run(i: int) -> dict:
    config = build_config("rnn-adv", seed=i % 5, name=f"bench-{i}", group=f"group-{i // 5}").to_dict()
    return {
        "id": f"{i:06x}", "name": config["name"], "group": config["group"], "defense": "rnn-adv",
        "dataset": "mnist", "model": "smallcnn", "config": config, "status": "finished", "epoch": 100,
        "epochs": 100, "checkpoints": {"last": "checkpoints/last.pt", "final": "checkpoints/final.pt"},
        "metrics": {"epoch": 100, "train_loss": 0.1234, "train_acc": 97.5, "inner_final_loss": 0.345,
                    "epoch_time": 61.2, "lr": 0.0001, "test_clean_acc": 99.1, "test_pgd_acc": 96.2, "test_n": 1000},
        "pid": 100000 + i, "pid_start_time": 1.7e9 + i, "host": "bench-host", "device": "cuda:0 (NVIDIA H100)",
        "created": 1.7e9 + i, "started": 1.7e9 + i, "ended": 1.7e9 + i + 3600, "error": None,
        "model_params": 312_202, "maximizer_params": 120, "train_time": 6120.0,
    }


def fill(root: Path, n: int) -> Registry:
    """A registry holding ``n`` runs and as many jobs, written in one transaction."""
    registry = Registry(root)
    with registry.transaction() as db:
        db.table(RUNS, cache_size=0).insert_multiple(realistic_run(i) for i in range(n))
        db.table(JOBS, cache_size=0).insert_multiple(
            {"id": f"j{i:06x}", "kind": "train", "run_id": f"{i:06x}", "status": "done", "priority": 0}
            for i in range(n))
    return registry


def timed(fn, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def reference_write(path: Path) -> None:
    """Read, parse, serialise and atomically replace the file: the floor of a whole-file store."""
    data = json.loads(path.read_text())
    tmp = path.with_suffix(".bench.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, separators=(",", ":")))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path.with_suffix(".bench.copy"))


def bench_size(base: Path, n: int, samples: int) -> list[tuple[str, list[float]]]:
    root = base / f"registry-{n}"
    root.mkdir(parents=True)
    registry = fill(root, n)
    size_mb = (root / REGISTRY_FILE).stat().st_size / 1e6
    print(f"\n{n:,} runs ({size_mb:.1f} MB file), {samples} samples per operation")
    counter = iter(range(10**9))
    ids = [f"{i:06x}" for i in range(0, n, max(1, n // samples))]

    results = [("reference write", timed(lambda: reference_write(root / REGISTRY_FILE), samples))]
    results.append(("insert", timed(lambda: registry.create_run(realistic_run(n + next(counter))), samples)))
    results.append(("update", timed(
        lambda: registry.update_run(ids[next(counter) % len(ids)], status="running", epoch=3), samples)))
    results.append(("job claim", timed(lambda: registry.update(
        JOBS, {"id": f"j{next(counter) % n:06x}", "status": "done"}, {"status": "done"}), samples)))
    results.append(("query", timed(lambda: registry.get_run(ids[next(counter) % len(ids)]), samples)))
    results.append(("list", timed(registry.runs, samples)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="Registry sizes, comma-separated.")
    parser.add_argument("--samples", type=int, default=60, help="Timed operations of each kind per size.")
    parser.add_argument("--dir", default=None, help="Where to build the registries (default: a temp folder).")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"registry latency in {tmp} (ms; ratio = p50 / reference write p50)")
        for n in sizes:
            results = bench_size(Path(tmp), n, args.samples)
            reference = percentile(results[0][1], 50)
            print(f"  {'operation':<16} {'p50':>9} {'p99':>9} {'ratio':>7}")
            for name, values in results:
                print(f"  {name:<16} {percentile(values, 50):9.2f} {percentile(values, 99):9.2f} "
                      f"{percentile(values, 50) / reference:7.2f}")


if __name__ == "__main__":
    main()
