"""A sweep on a real Ray cluster: its runs are queued jobs, so `advtui worker --executor ray` runs them.

As in tests/test_ray.py, the cluster talks over loopback only, in a private network namespace
(`unshare -rn`, then `lo` up); this file, run as a script (`python tests/test_sweep_ray.py OUT`),
starts the cluster, queues a tiny sweep with the real CLI, drains it with one Ray worker and
writes what it saw to OUT/scenario.json for the test to read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_ray import _namespace_problem, record_scenario  # a private network namespace with Ray, or why not

TINY = ["--defense", "plain", "--device", "cpu", "--train-limit", "20", "--test-limit", "10", "--eval-limit", "10",
        "--batch-size", "10", "--epochs", "1"]


def test_a_sweep_is_drained_by_a_ray_worker(tmp_path, mnist_root):
    why = _namespace_problem()
    if why:
        pytest.skip(why)
    env = {**os.environ, "ADVTUI_DATA": str(mnist_root), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("ADVTUI_RUNS", None)
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$0" "$1" "$2"',
                           sys.executable, str(Path(__file__).resolve()), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    path = tmp_path / "scenario.json"
    output = done.stdout[-3000:] + done.stderr[-3000:]
    assert path.exists(), f"the scenario wrote nothing (exit {done.returncode}):\n{output}"
    seen = json.loads(path.read_text())
    assert not seen.get("error"), seen.get("error", "") + output
    assert seen["queue_exit"] == 0 and "4 new run(s) queued" in seen["queue_output"]
    assert seen["worker_exit"] == 0, seen["worker_output"]
    assert sorted(r["name"] for r in seen["runs"]) == ["ray-c1-s0", "ray-c1-s1", "ray-c2-s0", "ray-c2-s1"]
    assert all(r["status"] == "finished" and r["group"] == "ray" for r in seen["runs"])
    assert len(seen["jobs"]) == 4 and all(j["status"] == "done" and j.get("executor") == "ray" for j in seen["jobs"])
    assert seen["compare_exit"] == 0 and len(seen["compare"]["rows"]) == 2


def _play(out: Path) -> dict:
    import ray

    from advtui.jobs.queue import list_jobs
    from advtui.store.registry import Registry

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False, namespace="advtui")
    address = ray.get_runtime_context().gcs_address
    root = out / "runs"
    os.environ["ADVTUI_RUNS"] = str(root)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "advtui", *args], capture_output=True, text=True, timeout=400)

    queued = cli("sweep", *TINY, "--name", "ray", "--grid", "lr=0.01,0.05", "--seeds", "0,1")
    worker = cli("worker", "--executor", "ray", "--address", address, "--poll", "0.3", "--cpus-per-job", "1", "--once")
    compared = cli("compare", "--sweep", "ray", "--json")
    registry = Registry(root)
    return {"queue_exit": queued.returncode, "queue_output": queued.stdout + queued.stderr,
            "worker_exit": worker.returncode, "worker_output": worker.stdout + worker.stderr,
            "jobs": list_jobs(registry), "runs": registry.runs(),
            "compare_exit": compared.returncode,
            "compare": json.loads(compared.stdout) if compared.returncode == 0 else compared.stderr}


if __name__ == "__main__":
    record_scenario(_play, Path(sys.argv[1]))
