"""Time to drain 4 queued tiny MNIST runs: `advtui worker --once` with the local executor
(2 CPU slots) against `--executor ray` on a 2-CPU Ray cluster (1 CPU per job), same runs.

The reference (local) is measured in the same run. Ray must talk over loopback only, so the
script re-runs itself inside a private network namespace (`unshare -rn`, `lo` up), where Ray
binds 127.0.0.1 alone. The Ray cluster's start is timed apart: a worker joins a running cluster.

    python bench/ray_drain.py [--runs 4] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = ["--defense", "plain", "--device", "cpu", "--train-limit", "200", "--test-limit", "20", "--eval-limit", "20",
        "--batch-size", "20", "--epochs", "1"]
INSIDE = "--inside-namespace"


def advtui(runs: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "advtui", *args, "--runs-dir", str(runs)],
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"advtui {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done


def drain(runs: Path, n: int, worker_args: list[str]) -> float:
    """Queue n runs in a fresh folder, then time one `advtui worker --once` until all are done."""
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    advtui(runs, "queue", "train", *TINY, "--seeds", f"0-{n - 1}")
    start = time.perf_counter()
    advtui(runs, "worker", "--once", "--poll", "0.2", *worker_args)
    seconds = time.perf_counter() - start
    from advtui.jobs.queue import list_jobs
    from advtui.store.registry import Registry

    statuses = [j["status"] for j in list_jobs(Registry(runs))]
    if statuses != ["done"] * n:
        raise SystemExit(f"not every job finished: {statuses}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(INSIDE, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.inside_namespace:
        argv = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], INSIDE]
        os.execvp("unshare", ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv])

    import ray

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    cluster_start = time.perf_counter() - started
    address = ray.get_runtime_context().gcs_address
    folder = Path(tempfile.mkdtemp(prefix="ray-drain-"))
    local, on_ray = [], []
    try:
        for _ in range(args.rounds):  # alternate, so a change in the machine's load hits both
            local.append(drain(folder / "local", args.runs, ["--cpu-slots", "2", "--threads", "1"]))
            on_ray.append(drain(folder / "ray", args.runs, ["--executor", "ray", "--address", address,
                                                             "--cpus-per-job", "1"]))
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
    best_local, best_ray = min(local), min(on_ray)
    print(f"drain {args.runs} queued tiny MNIST runs ({' '.join(TINY)}), 2 CPUs, best of {args.rounds}:")
    print(f"  local executor (2 CPU slots):       {best_local:6.1f} s   rounds: {', '.join(f'{t:.1f}' for t in local)}")
    print(f"  Ray executor (2-CPU cluster, 1/job): {best_ray:6.1f} s   rounds: {', '.join(f'{t:.1f}' for t in on_ray)}")
    print(f"  Ray / local: {best_ray / best_local:.2f}x   (Ray cluster start, not counted: {cluster_start:.1f} s)")


if __name__ == "__main__":
    main()
