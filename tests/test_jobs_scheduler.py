"""The scheduler's lock, reconciliation and failure handling, with real processes."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from advtui.core.config import build_config
from advtui.core.errors import RegistryError
from advtui.jobs.queue import queue_train, resolve_job
from advtui.jobs.scheduler import Scheduler, read_holder
from advtui.store.registry import JOBS, QUEUE_FILE, Registry


def test_only_one_scheduler_acts_at_a_time(tmp_path):
    reg = Registry(tmp_path)
    first, second = Scheduler(reg, role="dashboard"), Scheduler(reg, role="worker")
    assert first.acquire() and first.active
    assert not second.acquire() and not second.active
    assert second.tick() == [] and second.reconcile() == []
    holder = second.holder()
    assert holder["role"] == "dashboard" and holder["pid"] == psutil.Process().pid
    first.release()
    assert read_holder(tmp_path) is None
    assert second.acquire(timeout=1) and not first.acquire()
    second.release()


def test_the_lock_holder_in_another_process_blocks_us_until_it_exits(tmp_path):
    script = ("import sys, time; from pathlib import Path; from advtui.store.registry import Registry; "
              "from advtui.jobs.scheduler import Scheduler; "
              "s = Scheduler(Registry(Path(sys.argv[1]))); assert s.acquire(); print('held', flush=True); "
              "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        ours = Scheduler(Registry(tmp_path))
        assert not ours.acquire(timeout=0.2)
        assert read_holder(tmp_path)["pid"] == holder.pid
        holder.kill()  # the OS releases a dead holder's lock: no stale lock to delete by hand
        holder.wait()
        assert ours.acquire(timeout=5)
        ours.release()
    finally:
        holder.kill()
        holder.wait()


def test_reconcile_fails_runs_whose_process_vanished_or_was_replaced(tmp_path):
    reg = Registry(tmp_path)
    me = psutil.Process()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    vanished = reg.create_run({"name": "vanished", "status": "running", "pid": gone.pid,
                               "pid_start_time": time.time() - 50})
    reused = reg.create_run({"name": "reused", "status": "running", "pid": me.pid,
                             "pid_start_time": me.create_time() - 3600})
    alive = reg.create_run({"name": "alive", "status": "running", "pid": me.pid, "pid_start_time": me.create_time()})
    elsewhere = reg.create_run({"name": "elsewhere", "status": "running", "pid": gone.pid, "host": "other-host"})
    (tmp_path / vanished["id"]).mkdir(exist_ok=True)  # the store makes it with the record
    (tmp_path / vanished["id"] / "log.txt").write_text("epoch 3/10 batch 7/50 loss 0.42\n")
    scheduler = Scheduler(reg)
    try:
        messages = scheduler.reconcile()
    finally:
        scheduler.release()
    assert len(messages) == 2
    v, r = reg.get_run(vanished["id"]), reg.get_run(reused["id"])
    assert v["status"] == "failed" and v["error"].startswith("process vanished (pid")
    assert v["error"].endswith("last output:\nepoch 3/10 batch 7/50 loss 0.42") and v["ended"]
    assert r["status"] == "failed" and "now belongs to another process" in r["error"]
    assert reg.get_run(alive["id"])["status"] == "running"
    assert reg.get_run(elsewhere["id"])["status"] == "running"  # another machine's process: not ours to judge


def test_a_job_outliving_its_scheduler_is_adopted_then_finished(tmp_path):
    reg = Registry(tmp_path)
    queued = queue_train(reg, build_config("plain", device="cpu"))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    started = psutil.Process(sleeper.pid).create_time()
    # what a scheduler that has exited left behind: a running job and its run
    reg.update(JOBS, {"id": queued.job["id"]}, {"status": "running", "pid": sleeper.pid, "pid_start_time": started,
                                                 "host": psutil.os.uname().nodename, "slot": {"cpu": 1}})
    reg.update_run(queued.run["id"], status="running", pid=sleeper.pid, pid_start_time=started)
    events = []
    scheduler = Scheduler(reg, on_event=lambda kind, job, message: events.append(kind))
    try:
        assert scheduler.tick() == []
        assert "adopted" in events and list(scheduler.running()) == [queued.job["id"]]
        assert resolve_job(reg, queued.job["id"])["status"] == "running"
        sleeper.kill()
        sleeper.wait()
        scheduler.tick()
    finally:
        scheduler.release()
    job = resolve_job(reg, queued.job["id"])
    assert job["status"] == "failed" and job["exit_code"] is None
    assert reg.get_run(queued.run["id"])["error"].startswith("process vanished")
    assert scheduler.running() == {}


def test_a_child_that_dies_before_recording_its_run_fails_it_with_its_log(tmp_path, mnist_root):
    reg = Registry(tmp_path)
    queued = queue_train(reg, build_config("plain", device="cpu", data_root=str(mnist_root)))
    # an impossible model: the child exits at start, before it touches the run record
    reg.update_run(queued.run["id"], config={**queued.run["config"], "model": "resnet9000"})
    scheduler = Scheduler(reg)
    try:
        (started,) = scheduler.tick()
        assert started["pid"] and started["slot"] == {"cpu": 1}
        assert started["argv"][1:] == ["-m", "advtui", "run", "--run-id", queued.run["id"], "--runs-dir",
                                       str(tmp_path)]
        deadline = time.monotonic() + 60
        while scheduler.running() and time.monotonic() < deadline:
            scheduler.tick()
            time.sleep(0.1)
    finally:
        scheduler.release()
    job = resolve_job(reg, queued.job["id"])
    run = reg.get_run(queued.run["id"])
    assert job["status"] == "failed" and job["exit_code"] == 2
    assert run["status"] == "failed" and "ended (exit 2) before recording its end" in run["error"]
    assert run["error"].splitlines()[-1].startswith(
        f"error: run {queued.run['id']}'s recorded config is damaged (unknown model 'resnet9000'")
    assert job["error"] == run["error"]
    log = (tmp_path / queued.run["id"] / "log.txt").read_text()
    assert log.startswith("==== ") and "(unknown model 'resnet9000'" in log


def test_a_hand_edited_run_id_is_never_launched(tmp_path):
    reg = Registry(tmp_path)
    reg.insert(JOBS, {"id": "jbad001", "kind": "train", "run_id": "../../escape", "status": "queued",
                      "priority": 0, "needs": "cpu", "depends_on": [], "created": time.time()})
    scheduler = Scheduler(reg)
    try:
        assert scheduler.tick() == []
    finally:
        scheduler.release()
    job = resolve_job(reg, "jbad001")
    assert job["status"] == "failed" and "invalid run id" in job["error"] and job.get("pid") is None
    assert not (tmp_path.parent / "escape").exists()


def test_a_corrupt_registry_stops_the_scheduler_and_is_left_untouched(tmp_path):
    reg = Registry(tmp_path)
    queue_train(reg, build_config("plain", device="cpu"))
    broken = b'{"runs": {"1": {"id": "abc"'
    (tmp_path / QUEUE_FILE).write_bytes(broken)
    scheduler = Scheduler(reg)
    try:
        with pytest.raises(RegistryError, match="corrupt"):
            scheduler.tick()
    finally:
        scheduler.release()
    assert (tmp_path / QUEUE_FILE).read_bytes() == broken


def test_an_idle_scheduler_reads_the_registry_only_when_it_changed(tmp_path):
    reg = Registry(tmp_path)
    reg.create_run({"name": "existing", "status": "finished"})
    reads = []
    read_all = reg.all
    reg.all = lambda table: reads.append(table) or read_all(table)
    scheduler = Scheduler(reg)
    try:
        scheduler.tick()
        assert reads == [JOBS]
        scheduler.tick()
        assert scheduler.idle() and reads == [JOBS]  # nothing queued, nothing written: no parse
        # a job of another worker holds the only CPU slot
        reg.insert(JOBS, {"id": "jbusy01", "kind": "train", "run_id": "abcdef", "status": "running",
                          "host": scheduler.host, "slot": {"cpu": 1}})
        scheduler.tick()
        assert len(reads) == 2
        queued = queue_train(reg, build_config("plain", device="cpu"))
        scheduler.tick()
        scheduler.tick()  # a queued job waits for a slot: look again every tick
        assert len(reads) == 4 and not scheduler.idle()
        assert resolve_job(reg, queued.job["id"])["status"] == "queued"
    finally:
        scheduler.release()
