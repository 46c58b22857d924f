"""The queue on a real Ray cluster: `advtui worker --executor ray`, kill, resume, a dead Ray actor.

Ray must talk over loopback only, so the cluster runs in a private network namespace this
module makes (`unshare -rn`, then `lo` up: Ray binds 127.0.0.1 alone). Everything that talks to
the cluster runs in there: this file, run as a script (`python tests/test_ray.py OUT`), plays the
whole scenario once per module (one cluster start) and writes what it saw to OUT/scenario.json;
the tests read it. The scenario's processes are the real CLI and real training on MNIST slices.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from advtui.jobs.ray_executor import RayResources, RaySlots

REPO = Path(__file__).resolve().parents[1]
TINY = ["--defense", "plain", "--device", "cpu", "--train-limit", "20", "--test-limit", "10", "--eval-limit", "10",
        "--batch-size", "10", "--epochs", "1"]
# Long enough (3 epochs of 300 batches) to be stopped mid-run on a slow shared machine, and for its
# twin to be still running when its Ray worker is killed; under a minute in all.
SLOW = ["--defense", "plain", "--device", "cpu", "--train-limit", "3000", "--test-limit", "10", "--eval-limit", "10",
        "--batch-size", "10", "--epochs", "3", "--log-every", "5"]


# -- no cluster needed ----------------------------------------------------------------------------
def test_ray_slots_share_a_gpu_in_fractions_and_wait_when_full():
    slots = RaySlots(RayResources(cpus=1, gpus=0.25), cpus=8, gpus=1.0, total_cpus=8, total_gpus=1)
    picked = []
    for _ in range(5):
        slot, why = slots.pick({"needs": "auto"})
        assert why is None
        if slot is None:
            break
        picked.append(slot)
        slots.take(slot)
    assert picked == [{"ray": {"cpus": 1, "gpus": 0.25}}] * 4  # four runs on one GPU, the fifth waits
    cpu_only = RaySlots(RayResources(cpus=2), cpus=2, gpus=0, total_cpus=2, total_gpus=0)
    assert cpu_only.pick({"needs": "auto"}) == ({"ray": {"cpus": 2, "gpus": 0.0}}, None)
    assert "has none" in cpu_only.pick({"needs": "gpu"})[1]
    assert "more than the Ray cluster has" in RaySlots(RayResources(cpus=4), 2, 0, 2, 0).pick({"needs": "cpu"})[1]
    # a DDP run (--nproc 2) takes one whole GPU per process, and a CPU share per process
    four_gpus = RaySlots(RayResources(cpus=1, gpus=0.25), cpus=8, gpus=4, total_cpus=8, total_gpus=4)
    assert four_gpus.pick({"needs": "gpu", "nproc": 2}) == ({"ray": {"cpus": 2, "gpus": 2.0}}, None)


def test_executor_ray_without_ray_installed_says_how_to_install_it(tmp_path):
    # A module set to None in sys.modules makes `import ray` fail as if it were not installed.
    code = ("import sys; sys.modules['ray'] = None; sys.argv = ['advtui', 'worker', '--executor', 'ray', "
            f"'--once', '--runs-dir', {str(tmp_path)!r}]; from advtui.main import main; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "error: Ray is not installed: `pip install -e '.[ray]'` (or `pip install ray`) adds it"]


# -- the scenario on a real cluster ----------------------------------------------------------------
def _namespace_problem() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs `unshare` and `ip` (util-linux, iproute2) for a private network namespace"
    probe = subprocess.run(["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a private network namespace here (unshare -rn: {probe.stderr.strip()[:120]})"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed (pip install -e '.[ray]')"
    return None


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, mnist_root) -> dict:
    why = _namespace_problem()
    if why:
        pytest.skip(why)
    out = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "ADVTUI_DATA": str(mnist_root), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("ADVTUI_RUNS", None)
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$0" "$1" "$2"',
                           sys.executable, str(Path(__file__).resolve()), str(out)],
                          capture_output=True, text=True, timeout=420, env=env, cwd=REPO)
    path = out / "scenario.json"
    assert path.exists(), f"the scenario wrote nothing (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(path.read_text())
    result["output"] = done.stdout[-4000:] + done.stderr[-4000:]
    assert not result.get("error"), result["error"] + "\n" + result["output"]
    return result


def test_the_worker_runs_two_queued_jobs_on_ray_to_finished(scenario):
    first = scenario["first"]
    assert first["worker_exit"] == 0, first["worker_output"]
    assert "Ray cluster at 127.0.0.1:" in first["worker_output"]
    assert first["worker_output"].count("started on Ray node 127.0.0.1") == 2
    assert [j["status"] for j in first["jobs"]] == ["done", "done"]
    for job, run in zip(first["jobs"], first["runs"]):
        assert job["executor"] == "ray" and job["node"] == "127.0.0.1" and job["gpus"] == []
        assert job["actor"] == f"advtui-job-{job['id']}" and job["slot"] == {"ray": {"cpus": 1.0, "gpus": 0.0}}
        assert run["status"] == "finished" and run["checkpoints"]["final"]
        assert run["final_exists"] and run["events"][0] == "start" and run["events"][-1] == "end"
        assert "step" in run["events"] and "epoch" in run["events"]
    assert first["actors_left"] == []  # every job's actor was released once its process ended


def test_kill_through_the_cli_stops_the_ray_job_with_a_checkpoint_and_resume_finishes_it(scenario):
    killed = scenario["killed"]
    assert killed["kill_exit"] == 0, killed["kill_output"]
    assert "stopped by SIGTERM" in killed["kill_output"]
    assert killed["run_after_kill"]["status"] == "killed"
    assert killed["job_after_kill"]["status"] == "cancelled"
    assert killed["process_gone_after_kill"]
    assert 0 < killed["run_after_kill"]["batch_at_kill"] < 300  # stopped mid-epoch, checkpointed
    assert killed["run_after_resume"]["status"] == "finished"
    assert killed["resumed_job"]["status"] == "done" and killed["resumed_job"]["executor"] == "ray"
    # the resumed process continued from the checkpoint: one start event per launch, one end
    assert killed["events"].count("start") == 2 and killed["events"][-1] == "end"


def test_a_job_whose_ray_actor_died_is_reconciled_to_failed(scenario):
    dead = scenario["dead_actor"]
    assert dead["training_process_gone"]  # it died with its actor (PR_SET_PDEATHSIG)
    assert dead["job"]["status"] == "failed"
    assert "Ray actor" in dead["job"]["error"]
    assert dead["run"]["status"] == "failed" and "Ray actor" in dead["run"]["error"]
    assert dead["reconciled_output"].count("is gone") >= 1


# -- the scenario itself (runs inside the namespace) ------------------------------------------------
def _advtui(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "advtui", *args], capture_output=True, text=True, timeout=timeout)


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _events(root: Path, run_id: str) -> list[dict]:
    path = root / run_id / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _play(out: Path) -> dict:
    import psutil
    import ray

    from advtui.jobs.queue import list_jobs
    from advtui.store.registry import Registry

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             namespace="advtui")
    address = ray.get_runtime_context().gcs_address
    root = out / "runs"
    root.mkdir()
    os.environ["ADVTUI_RUNS"] = str(root)
    registry = Registry(root)
    result: dict = {"address": address}
    worker = ["worker", "--executor", "ray", "--address", address, "--poll", "0.3", "--cpus-per-job", "1"]

    # 1. two tiny jobs, one worker --once
    queued = _advtui("queue", "train", *TINY, "--seeds", "0,1")
    assert queued.returncode == 0, queued.stderr
    first = _advtui(*worker, "--once")
    jobs = list_jobs(registry)
    runs = []
    for job in jobs:
        run = registry.get_run(job["run_id"]) or {}
        final = (run.get("checkpoints") or {}).get("final")
        runs.append({**run, "final_exists": bool(final) and (root / run["id"] / final).exists(),
                     "events": [e["kind"] for e in _events(root, run["id"])]})
    actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("advtui-job-")]
    result["first"] = {"worker_exit": first.returncode, "worker_output": first.stdout + first.stderr,
                       "jobs": jobs, "runs": runs, "actors_left": actors}

    # 2. two longer jobs under a background worker, which then stops (its jobs keep running)
    before = {j["id"] for j in jobs}
    assert _advtui("queue", "train", *SLOW, "--seeds", "2,3").returncode == 0
    background = subprocess.Popen([sys.executable, "-m", "advtui", *worker], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
    def both_started():
        started = [j for j in list_jobs(registry) if j["id"] not in before
                   and j["status"] == "running" and j.get("actor_pid")]
        return started if len(started) == 2 else None

    to_kill, to_crash = _wait(both_started, 240, "both longer jobs to start on Ray")
    _wait(lambda: any(e["kind"] == "step" for e in _events(root, to_kill["run_id"])), 240, "a training step")
    background.send_signal(signal.SIGTERM)
    background.communicate(timeout=60)

    # 3. kill one through the CLI: Ray's actor stops it, the run checkpoints and ends killed
    killing = _advtui("kill", to_kill["run_id"], "--grace", "60")
    run_after_kill = registry.get_run(to_kill["run_id"]) or {}
    run_after_kill["batch_at_kill"] = (torch_free_checkpoint_batch(root, to_kill["run_id"]))
    killed = {"kill_exit": killing.returncode, "kill_output": killing.stdout + killing.stderr,
              "run_after_kill": run_after_kill,
              "job_after_kill": next(j for j in list_jobs(registry) if j["id"] == to_kill["id"]),
              "process_gone_after_kill": not psutil.pid_exists(to_kill["pid"])}

    # 4. kill the other one's Ray worker process, as a crashed node would
    os.kill(int(to_crash["actor_pid"]), signal.SIGKILL)
    gone = _wait(lambda: not _alive(to_crash["pid"]) or None, 30, "the training process to die with its actor")

    # 5. resume the killed run; a new worker reconciles the crashed job and finishes the resumed one
    resumed = _advtui("resume", to_kill["run_id"])
    assert resumed.returncode == 0, resumed.stderr
    second = _advtui(*worker, "--once")
    assert second.returncode == 0, second.stdout + second.stderr
    jobs = list_jobs(registry)
    killed.update(run_after_resume=registry.get_run(to_kill["run_id"]),
                  resumed_job=[j for j in jobs if j["run_id"] == to_kill["run_id"]][-1],
                  events=[e["kind"] for e in _events(root, to_kill["run_id"])])
    result["killed"] = killed
    result["dead_actor"] = {"training_process_gone": bool(gone), "reconciled_output": second.stdout,
                            "job": next(j for j in jobs if j["id"] == to_crash["id"]),
                            "run": registry.get_run(to_crash["run_id"])}
    return result


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def torch_free_checkpoint_batch(root: Path, run_id: str) -> int:
    """The batch the killed run stopped at, from its 'end' event (no torch needed)."""
    ends = [e for e in _events(root, run_id) if e["kind"] == "end"]
    return int(ends[-1].get("batch", -1)) if ends else -1


def record_scenario(play: Callable[[Path], dict], target: Path) -> None:
    """Play a scenario in ``target`` (this process runs inside the private namespace) and write
    what it found, or how it failed, to ``target/scenario.json`` for the test to read."""
    try:
        outcome = play(target)
    except BaseException as exc:  # recorded for the tests, which show it with the output
        import traceback

        outcome = {"error": "".join(traceback.format_exception(exc))}
    (target / "scenario.json").write_text(json.dumps(outcome, default=str))


if __name__ == "__main__":
    record_scenario(_play, Path(sys.argv[1]))
