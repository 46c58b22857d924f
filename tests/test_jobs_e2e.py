"""The runtime end to end: real `advtui worker`, `kill`, `resume` and training processes on
small MNIST slices."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from advtui.core.config import build_config
from advtui.core.process import live_process
from advtui.store.results import results_for_run
from advtui.jobs.monitor import GpuSampler
from advtui.jobs.queue import list_jobs, queue_train, resolve_job
from advtui.jobs.scheduler import Scheduler, SchedulerPolicy, threads_per_job
from advtui.store.registry import Registry

TINY = ["--defense", "plain", "--device", "cpu", "--train-limit", "20", "--test-limit", "10", "--eval-limit", "10",
        "--batch-size", "10", "--epochs", "1", "--inner-steps", "1"]


def advtui(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "advtui", *args], capture_output=True, text=True, timeout=timeout)


def events_of(root: Path, run_id: str, kind: str) -> list[dict]:
    path = root / run_id / "events.jsonl"
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.endswith("}")]
    return [e for e in map(json.loads, lines) if e["kind"] == kind]


def threads_of_a_worker_job(cpu_slots: int) -> int:
    """The threads `advtui worker --cpu-slots N` gives each job here: the cores are shared by its
    CPU slots and one slot per GPU the machine has (so fewer on a GPU machine)."""
    sampler = GpuSampler()
    try:
        gpus = len(sampler.sample().gpus)
    finally:
        sampler.close()
    return threads_per_job(SchedulerPolicy(cpu_slots=cpu_slots), gpus)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_three_jobs_on_one_slot_run_one_after_another_and_a_second_worker_never_double_launches(runs_root):
    queued = advtui("queue", "train", *TINY, "--seeds", "0,1,2")
    assert queued.returncode == 0, queued.stderr
    assert queued.stdout.count("queued run") == 3 and "no scheduler is running" in queued.stderr
    workers = [subprocess.Popen([sys.executable, "-m", "advtui", "worker", "--once", "--poll", "0.2"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    # one worker launched all three; the other waited for the scheduler lock, then found nothing to do
    launches = sorted(o.count(" started on CPU slot") for o in outputs)
    assert launches == [0, 3], outputs
    assert "another scheduler (worker pid" in next(o for o in outputs if " started on " not in o)

    reg = Registry(runs_root)
    jobs = list_jobs(reg)
    assert [j["status"] for j in jobs] == ["done"] * 3 and all(j["exit_code"] == 0 for j in jobs)
    runs = sorted(reg.runs(), key=lambda r: r["started"])
    assert [r["name"] for r in runs] == ["plain-mnist-s0", "plain-mnist-s1", "plain-mnist-s2"]
    for earlier, later in zip(runs, runs[1:]):
        assert later["started"] >= earlier["ended"]  # one slot: never two trainings at once
    threads = threads_of_a_worker_job(cpu_slots=1)
    for run in runs:
        assert run["status"] == "finished" and run["epoch"] == 1 and run["group"] == "plain-mnist"
        assert run["device"] == f"cpu ({threads} threads)"
        assert len(events_of(runs_root, run["id"], "start")) == 1  # launched exactly once
        log = (runs_root / run["id"] / "log.txt").read_text()
        assert log.count("==== ") == 1 and "finished" in log


def test_kill_then_resume_finishes_the_run_and_its_auto_eval_starts_after_the_training(runs_root):
    # queued in-process (the CLI's `queue train` is exercised above): one process start less
    # 2 epochs of 40 batches: long enough that the kill below (a new process) still finds it training
    # on a loaded 2-core machine
    config = build_config("advtrain", inner_steps=2, device="cpu", train_limit=400, test_limit=20, eval_limit=10,
                          batch_size=10, epochs=2, log_every=1, name="victim")
    reg = Registry(runs_root)
    queue_train(reg, config, auto_eval="natural", eval_options={"limit": 10})
    run_id = reg.resolve_run("victim")["id"]
    first_train, evaluation = list_jobs(reg)

    scheduler = Scheduler(reg, role="dashboard")
    stop = threading.Event()
    driver = threading.Thread(target=scheduler.serve, kwargs=dict(poll_s=0.2, stop=stop), daemon=True)
    driver.start()
    try:
        wait_for(lambda: any(e["batch"] >= 2 for e in events_of(runs_root, run_id, "step")), 180,
                 "the first training steps")
        killed = advtui("kill", "victim", "--grace", "60")
        assert killed.returncode == 0, killed.stderr
        assert "stopped by SIGTERM" in killed.stdout and f"advtui resume {run_id}" in killed.stdout
        run = reg.get_run(run_id)
        assert run["status"] == "killed" and (runs_root / run_id / "checkpoints" / "last.pt").exists()
        wait_for(lambda: not scheduler.running(), 30, "the scheduler to collect the killed job")
        assert resolve_job(reg, first_train["id"])["status"] == "cancelled"
        blocked = resolve_job(reg, evaluation["id"])
        assert blocked["status"] == "cancelled" and blocked["blocked_by"] == first_train["id"]

        resumed = advtui("resume", "victim")
        assert resumed.returncode == 0, resumed.stderr
        assert "queued again" in resumed.stdout
        wait_for(lambda: all(j["status"] in ("done", "failed", "cancelled") for j in list_jobs(reg)), 300,
                 "the resumed training and its evaluation")
    finally:
        stop.set()
        driver.join(timeout=30)
        scheduler.release()

    run = reg.get_run(run_id)
    assert run["status"] == "finished" and run["epoch"] == 2, run.get("error")
    starts = events_of(runs_root, run_id, "start")
    assert [s["resumed"] for s in starts] == [False, True]
    jobs = {j["id"]: j for j in list_jobs(reg)}
    (second_train,) = [j for j in jobs.values() if j["kind"] == "train" and j["id"] != first_train["id"]]
    assert second_train["status"] == "done"
    evaluation = jobs[evaluation["id"]]
    assert evaluation["status"] == "done", evaluation.get("error")
    assert evaluation["depends_on"] == [second_train["id"]]
    assert evaluation["started"] >= second_train["ended"] >= run["ended"]
    assert evaluation["argv"][3:] == ["eval", run_id, "--attacks", "natural", "--runs-dir", str(runs_root),
                                      "--limit", "10"]
    assert "natural" in results_for_run(reg, run_id)
    assert (runs_root / run_id / "log.txt").read_text().count("==== ") == 2  # both launches, one log
    assert (runs_root / run_id / f"eval-{evaluation['id']}.log").exists()


def test_sigkilled_jobs_are_reconciled_to_failed_and_two_cpu_slots_share_the_cores(runs_root):
    args = ["--defense", "advtrain", "--inner-steps", "2", "--device", "cpu", "--train-limit", "400",
            "--test-limit", "20", "--eval-limit", "10", "--batch-size", "20", "--epochs", "3", "--seeds", "0,1"]
    assert advtui("queue", "train", *args).returncode == 0
    reg = Registry(runs_root)
    worker = subprocess.Popen([sys.executable, "-m", "advtui", "worker", "--cpu-slots", "2", "--poll", "0.2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: [r["status"] for r in reg.runs()] == ["running", "running"], 180,
                 "both runs to run at once")
        runs = reg.runs()
        assert {r["device"] for r in runs} == {f"cpu ({threads_of_a_worker_job(cpu_slots=2)} threads)"}
        worker.send_signal(signal.SIGKILL)  # the worker dies first: nobody sees the jobs end
        worker.wait(timeout=30)
        for run in runs:
            assert live_process(run["pid"], run["pid_start_time"]) is not None  # they outlived the worker
            os.killpg(run["pid"], signal.SIGKILL)
        for run in runs:
            wait_for(lambda: live_process(run["pid"], run["pid_start_time"]) is None, 30, "the kill")
    finally:
        worker.kill()
        worker.wait()
        for run in reg.runs():
            if live_process(run.get("pid"), run.get("pid_start_time")):
                os.killpg(run["pid"], signal.SIGKILL)

    assert [r["status"] for r in reg.runs()] == ["running", "running"]  # what the records still claim
    scheduler = Scheduler(reg)
    try:
        messages = scheduler.reconcile()
    finally:
        scheduler.release()
    assert len(messages) == 2
    for run in reg.runs():
        assert run["status"] == "failed" and run["error"].startswith("process vanished (pid")
    for job in list_jobs(reg):
        assert job["status"] == "failed" and job["exit_code"] is None and "process vanished" in job["error"]
