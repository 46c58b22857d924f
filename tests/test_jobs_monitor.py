"""The monitor on this machine for real: NVML as it is here, processes through psutil."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from advtui.core.format import format_bytes, format_number
from advtui.jobs.monitor import NA, GpuSampler, ProcessSampler, process_owners
from advtui.store.registry import JOBS, Registry

# A parent that burns CPU and starts a child holding ~60 MB.
BUSY_TREE = ("import subprocess, sys, time\n"
             "child = subprocess.Popen([sys.executable, '-c', "
             "'import time; block = bytearray(60 * 2**20); print(1, flush=True); time.sleep(60)'], "
             "stdout=subprocess.PIPE)\n"
             "child.stdout.readline()\n"
             "print('ready', flush=True)\n"
             "end = time.time() + 60\n"
             "while time.time() < end: pass\n")


def test_gpu_sampler_on_this_machine_reports_what_it_finds_and_never_raises():
    sampler = GpuSampler()
    snap = sampler.sample()
    if snap.available:  # a machine with an NVIDIA driver
        assert snap.message.endswith(("GPU", "GPUs")) or "driver" in snap.message
        for gpu in snap.gpus:
            assert gpu.memory_total == NA or gpu.memory_total > 0
            assert gpu.utilization == NA or 0 <= gpu.utilization <= 100
        assert len(sampler.history(0)["time"]) == (1 if snap.gpus else 0)
    else:
        assert snap.gpus == [] and snap.message.startswith("no ")
        assert "NVML" in snap.message or "nvidia-ml-py" in snap.message
        assert sampler.history(0)["utilization"] == []
    sampler.sample()  # a second sample does not fail either
    sampler.close()


def test_process_sampler_sums_the_process_tree():
    busy = subprocess.Popen([sys.executable, "-c", BUSY_TREE], stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout.readline().strip() == "ready"
        started = psutil.Process(busy.pid).create_time()
        sampler = ProcessSampler()
        first = sampler.sample(busy.pid, started)
        assert first is not None and first.children == 1
        time.sleep(0.5)
        stats = sampler.sample(busy.pid, started)
        assert stats.cpu_percent > 20  # the busy loop (measured since the first sample)
        assert stats.memory_rss > 60 * 2**20  # the child's block counts
        assert stats.threads >= 2 and stats.children == 1
        assert sampler.sample(busy.pid, started - 3600) is None  # a reused pid is not this run
        runs = [{"id": "abc123", "pid": busy.pid, "pid_start_time": started}, {"id": "gone00", "pid": None}]
        assert list(sampler.sample_runs(runs)) == ["abc123"]
    finally:
        busy.kill()
        busy.wait()
    assert sampler.sample(busy.pid, started) is None


def test_process_owners_maps_pids_of_running_runs_and_jobs(tmp_path):
    reg = Registry(tmp_path)
    train = reg.create_run({"name": "t", "status": "running", "pid": os.getpid()})
    reg.create_run({"name": "old", "status": "finished", "pid": 1})
    reg.insert(JOBS, {"id": "j000001", "kind": "eval", "run_id": "abcdef", "status": "running", "pid": 4242})
    owners = process_owners(reg)
    assert set(owners) == {os.getpid(), 4242}
    assert owners[os.getpid()].run_id == train["id"] and owners[os.getpid()].kind == "train"
    assert (owners[4242].run_id, owners[4242].job_id, owners[4242].kind) == ("abcdef", "j000001", "eval")


def test_formatting_says_na_for_missing_values():
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(80 * 2**30) == "80.0 GiB" and format_bytes(NA) == NA
    assert format_number(71.4, "%") == "71%" and format_number(NA, "%") == NA


def test_gpus_command_prints_the_state_without_failing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "advtui", "gpus", "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    snap = GpuSampler().sample()
    if snap.available:
        assert "NVIDIA GPU" in proc.stdout
    else:
        assert proc.stdout.startswith(snap.message) and "jobs run in CPU slots" in proc.stdout
    assert "no running runs" in proc.stdout
