"""Latency of the run store as it grows: insert, update, job claim, query and listing with N runs.

For each store size (default 1,000 and 10,000 runs of realistic size: a full RunConfig and
last-epoch metrics each, plus one ended job per run and a few queued ones), it builds the
store as an earlier advtui left it (one ``advtui.json``; the sharded store migrates it on first
use, and the migration time is printed), then times, one operation at a time, as the CLI, the
dashboard and the scheduler use them:
  insert      Registry.create_run (a new run: its id, its file)
  update      Registry.update_run (change one record: the runner each epoch)
  job claim   Registry.update on the jobs table, compare-and-set queued -> running (the scheduler)
  query       Registry.get_run by id (a lock-free read)
  list        Registry.runs() (what `advtui ls` and the dashboard's table read), in a process
              that listed before (what the dashboard does every refresh)
  list cold   the same in a process that never read the store (the first paint, `advtui ls`);
              the sharded store starts from the listing cache an earlier listing left
  jobs list   Registry.all("jobs") (`advtui queue ls`, the dashboard's queue panel)
and prints p50 and p99 in milliseconds. The reference, measured in the same run, is the least a
whole-file JSON store must do per write at that size: json.loads + json.dumps + write + fsync +
rename of the single file; the ratio column is operation p50 / reference p50.

It runs against whichever advtui is importable, so the same script measures the single-file
registry of earlier versions (PYTHONPATH=/path/to/old/src) and the sharded store:

    python bench/registry.py [--sizes 1000,10000] [--samples 60] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import advtui.store.files as store_files
import advtui.store.registry as store
from advtui.core.config import build_config
from advtui.store.registry import JOBS, Registry

LEGACY = getattr(store, "LEGACY_FILE", "advtui.json")
SHARDED = hasattr(store, "QUEUE_FILE")


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


def realistic_job(i: int, status: str) -> dict:
    return {"id": f"j{i:06x}", "kind": "train", "run_id": f"{i:06x}", "status": status, "priority": 0,
            "needs": "gpu", "gpu_index": None, "depends_on": [], "created": 1.7e9 + i,
            "started": 1.7e9 + i + 1 if status != "queued" else None,
            "ended": 1.7e9 + i + 3600 if status != "queued" else None, "pid": None, "pid_start_time": None,
            "host": None, "slot": None, "log": None, "exit_code": 0 if status == "done" else None,
            "error": None, "blocked_by": None, "kill_requested": None}


def fill(root: Path, n: int, queued: int) -> Path:
    """The single-file registry an earlier advtui would have written: ``n`` finished runs, one
    done job each, and ``queued`` queued jobs. Returns its path."""
    root.mkdir(parents=True)
    jobs = [realistic_job(i, "done") for i in range(n)] + [realistic_job(n + i, "queued") for i in range(queued)]
    data = {"_meta": {"1": {"schema": 1, "created": 1.7e9}},
            "runs": {str(i + 1): realistic_run(i) for i in range(n)},
            "jobs": {str(i + 1): job for i, job in enumerate(jobs)}}
    path = root / LEGACY
    path.write_text(json.dumps(data, separators=(",", ":")))
    return path


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


def cold_list(registry: Registry) -> None:
    forget = getattr(store_files, "clear_read_cache", None)
    if forget is not None:
        forget()  # as in a process that never read the store
    registry.runs()


def bench_size(base: Path, n: int, samples: int) -> list[tuple[str, list[float]]]:
    root = base / f"registry-{n}"
    legacy = fill(root, n, queued=samples)
    reference = base / f"reference-{n}.json"
    reference.write_bytes(legacy.read_bytes())
    size_mb = legacy.stat().st_size / 1e6
    registry = Registry(root)
    start = time.perf_counter()
    registry.get_run("000000")  # the sharded store migrates the single file here
    first_use = time.perf_counter() - start
    if SHARDED:
        run_kb = registry.run_path("000000").stat().st_size / 1e3
        print(f"\n{n:,} runs (single file {size_mb:.1f} MB, migrated in {first_use:.1f}s to run files of "
              f"{run_kb:.1f} kB and a {registry.queue_path.stat().st_size / 1e3:.1f} kB queue), "
              f"{samples} samples per operation")
    else:
        print(f"\n{n:,} runs ({size_mb:.1f} MB file), {samples} samples per operation")
    counter = iter(range(10**9))
    ids = [f"{i:06x}" for i in range(0, n, max(1, n // samples))]
    claims = iter(range(n, n + samples))

    results = [("reference write", timed(lambda: reference_write(reference), samples))]
    results.append(("insert", timed(lambda: registry.create_run(realistic_run(n + next(counter))), samples)))
    results.append(("update", timed(
        lambda: registry.update_run(ids[next(counter) % len(ids)], status="running", epoch=3), samples)))
    results.append(("job claim", timed(lambda: registry.update(
        JOBS, {"id": f"j{next(claims):06x}", "status": "queued"},
        {"status": "running", "started": time.time(), "host": "bench-host", "slot": {"gpu": 0}}), samples)))
    results.append(("query", timed(lambda: registry.get_run(ids[next(counter) % len(ids)]), samples)))
    registry.runs()
    results.append(("list", timed(registry.runs, samples)))
    results.append(("list cold", timed(lambda: cold_list(registry), max(3, samples // 10))))
    results.append(("jobs list", timed(lambda: registry.all(JOBS), max(3, samples // 4))))
    assert len(registry.runs()) == n + samples
    assert sum(j["status"] == "running" for j in registry.all(JOBS)) == samples
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="Store sizes (runs), comma-separated.")
    parser.add_argument("--samples", type=int, default=60, help="Timed operations of each kind per size.")
    parser.add_argument("--dir", default=None, help="Where to build the stores (default: a temp folder).")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        kind = "sharded store" if SHARDED else "single-file registry"
        print(f"{kind} ({store.__file__}) latency in {tmp} (ms; ratio = p50 / reference write p50)")
        for n in sizes:
            results = bench_size(Path(tmp), n, args.samples)
            reference = percentile(results[0][1], 50)
            print(f"  {'operation':<16} {'p50':>9} {'p99':>9} {'ratio':>7}")
            for name, values in results:
                print(f"  {name:<16} {percentile(values, 50):9.2f} {percentile(values, 99):9.2f} "
                      f"{percentile(values, 50) / reference:7.2f}")


if __name__ == "__main__":
    main()
