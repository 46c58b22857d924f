"""The GPU path of the monitor and the scheduler's GPU choice, on a stand-in NVML module.

This machine has no NVIDIA GPU, so NVML is replaced here (and only here) by a small module
with pynvml's functions, driven by a table of GPUs; everything else (registry, scheduler
logic, pid-to-run mapping through psutil) is real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from advtui.core.config import build_config
from advtui.jobs.monitor import NA, GpuSampler, process_owners
from advtui.jobs.queue import queue_train
from advtui.jobs.scheduler import Scheduler, SchedulerPolicy, _FreeSlots, launch_env
from advtui.store.registry import JOBS, Registry

MiB = 2**20


class NVMLError(Exception):
    def __init__(self, value: int = 999):
        super().__init__(f"NVML error {value}")
        self.value = value


class NVMLError_NotSupported(NVMLError):
    def __init__(self):
        super().__init__(3)


class NVMLError_LibraryNotFound(NVMLError):
    def __init__(self):
        super().__init__(12)


class StandInNvml:
    """pynvml's interface over a list of GPU dicts; a value of NotImplemented means 'not supported'."""

    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus: list[dict], init_error: Exception | None = None):
        self.gpus, self.init_error = gpus, init_error
        self.initialised = self.shut_down = False

    def _get(self, handle: int, key: str):
        value = self.gpus[handle][key]
        if value is NotImplemented:
            raise NVMLError_NotSupported()
        return value

    def nvmlInit(self):
        if self.init_error is not None:
            raise self.init_error
        self.initialised = True

    def nvmlShutdown(self):
        self.shut_down = True

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"  # old pynvml versions return bytes

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetName(self, h):
        return self._get(h, "name")

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h:04d}"

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self._get(h, "util"), memory=0)

    def nvmlDeviceGetMemoryInfo(self, h):
        total, used = self._get(h, "total_mib") * MiB, self._get(h, "used_mib") * MiB
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._get(h, "temp")

    def nvmlDeviceGetPowerUsage(self, h):
        return self._get(h, "power_mw")

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return self._get(h, "limit_mw")

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=pid, usedGpuMemory=mem) for pid, mem in self.gpus[h].get("procs", [])]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        raise NVMLError_NotSupported()


def gpu(name="NVIDIA H100", util=0, used_mib=500, total_mib=81_559, temp=35, power_mw=70_000,
        limit_mw=700_000, procs=()):
    return dict(name=name, util=util, used_mib=used_mib, total_mib=total_mib, temp=temp, power_mw=power_mw,
                limit_mw=limit_mw, procs=list(procs))


def test_sampler_reports_every_field_and_maps_processes_to_runs(tmp_path):
    reg = Registry(tmp_path)
    run = reg.create_run({"name": "r", "status": "running", "pid": os.getpid()})
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        nvml = StandInNvml([
            gpu(util=87, used_mib=20_000, procs=[(os.getpid(), 19_000 * MiB), (child.pid, None), (999_999, 1)]),
            gpu(name="Tesla T4", util=NotImplemented, temp=NotImplemented, power_mw=NotImplemented,
                limit_mw=NotImplemented),
        ])
        sampler = GpuSampler(history=3, nvml=nvml)
        snap = sampler.sample(process_owners(reg))
        assert snap.available and snap.message == "2 NVIDIA GPUs, driver 550.54.15"
        first, second = snap.gpus
        assert (first.index, first.name, first.uuid, first.utilization) == (0, "NVIDIA H100", "GPU-0000", 87)
        assert first.memory_used == 20_000 * MiB and first.memory_total == 81_559 * MiB
        assert first.memory_free == 61_559 * MiB and first.memory_percent == pytest.approx(24.52, abs=0.01)
        assert (first.temperature, first.power, first.power_limit) == (35, 70.0, 700.0)
        procs = {p.pid: p for p in first.processes}
        assert procs[os.getpid()].run_id == run["id"] and procs[os.getpid()].used_memory == 19_000 * MiB
        # a child process of a run's process (a data-loader worker) belongs to the run too
        assert procs[child.pid].run_id == run["id"] and procs[child.pid].used_memory == NA
        assert procs[999_999].run_id is None  # someone else's process
        # an unsupported query gives n/a for that value only
        assert second.name == "Tesla T4" and second.memory_total == 81_559 * MiB
        assert (second.utilization, second.temperature, second.power, second.power_limit) == (NA, NA, NA, NA)
        assert second.processes == []
    finally:
        child.kill()
        child.wait()


def test_history_ring_keeps_the_last_samples():
    nvml = StandInNvml([gpu(util=10)])
    sampler = GpuSampler(history=3, nvml=nvml)
    for util in (10, 20, 30, 40):
        nvml.gpus[0]["util"] = util
        sampler.sample()
    nvml.gpus[0]["util"] = NotImplemented
    sampler.sample()
    history = sampler.history(0)
    assert history["utilization"] == [30, 40, None]
    assert len(history["memory"]) == 3 and history["memory"][0] == pytest.approx(100 * 500 / 81_559)
    assert history["time"] == sorted(history["time"])
    assert sampler.history(5) == {"time": [], "utilization": [], "memory": []}
    sampler.close()
    assert nvml.shut_down


def test_no_driver_is_reported_plainly_and_never_raises():
    sampler = GpuSampler(nvml=StandInNvml([], init_error=NVMLError_LibraryNotFound()))
    for _ in range(2):
        snap = sampler.sample()
        assert not snap.available and snap.gpus == []
        assert snap.message.startswith("no NVIDIA GPU: NVML is unavailable") and "NVML error 12" in snap.message


def snapshot_of(gpus: list[dict]):
    return GpuSampler(nvml=StandInNvml(gpus)).sample()


def job(needs="auto", gpu_index=None):
    return {"needs": needs, "gpu_index": gpu_index}


def test_gpu_choice_follows_free_memory_and_utilization_thresholds():
    snap = snapshot_of([
        gpu(used_mib=60_000),  # 0: least free memory
        gpu(used_mib=1_000, util=99),  # 1: most free, but busy with someone else's work
        gpu(used_mib=10_000, util=20),  # 2: the pick
        gpu(used_mib=81_000),  # 3: less than 1 GiB free
    ])
    policy = SchedulerPolicy(min_free_memory_mib=1024, max_gpu_utilization=90)
    slots = _FreeSlots(policy, snap, running=[])
    assert slots.pick(job()) == ({"gpu": 2}, None)
    slots.take({"gpu": 2})
    assert slots.pick(job("gpu")) == ({"gpu": 0}, None)  # one slot per GPU: 2 is full
    slots.take({"gpu": 0})
    assert slots.pick(job()) == (None, None)  # 1 is too busy, 3 too full: wait
    assert slots.pick(job(gpu_index=3)) == (None, None)
    assert slots.pick(job(gpu_index=7))[1].startswith("it asks for GPU 7")
    assert slots.pick(job("cpu")) == ({"cpu": 1}, None)  # CPU jobs use CPU slots even here


def test_slots_per_gpu_counts_running_jobs_and_ignores_our_own_load():
    snap = snapshot_of([gpu(used_mib=30_000, util=100), gpu(used_mib=2_000, util=95)])
    running = [{"slot": {"gpu": 0}}]
    slots = _FreeSlots(SchedulerPolicy(slots_per_gpu=2), snap, running)
    # GPU 0 is at 100% because of our own job: a second slot there is still fine.
    assert slots.pick(job()) == ({"gpu": 0}, None)
    slots.take({"gpu": 0})
    assert slots.pick(job()) == (None, None)  # GPU 1 is busy with foreign work
    only_one = _FreeSlots(SchedulerPolicy(slots_per_gpu=2, gpus=(1,), max_gpu_utilization=99), snap, running)
    assert only_one.pick(job()) == ({"gpu": 1}, None)
    # threads: 1 CPU slot + 1 GPU * 2 slots share the cores
    assert only_one.threads() == max(1, len(os.sched_getaffinity(0)) // 3)


def test_without_gpus_auto_jobs_take_cpu_slots_and_gpu_jobs_fail_clearly():
    snap = GpuSampler(nvml=StandInNvml([], init_error=NVMLError_LibraryNotFound())).sample()
    slots = _FreeSlots(SchedulerPolicy(cpu_slots=2), snap, running=[{"slot": {"cpu": 1}}])
    assert slots.pick(job()) == ({"cpu": 2}, None)
    slots.take({"cpu": 2})
    assert slots.pick(job()) == (None, None)
    slot, reason = slots.pick(job("gpu"))
    assert slot is None and reason.startswith("it needs a GPU, but this machine has none usable (no NVIDIA GPU")
    assert _FreeSlots(SchedulerPolicy(cpu_slots=0), snap, []).pick(job())[1].startswith("it needs a CPU slot")


def test_launch_env_pins_one_gpu_or_hides_them_all():
    assert launch_env({"gpu": 3}, 4) == {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4",
                                         "CUDA_VISIBLE_DEVICES": "3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert launch_env({"cpu": 1}, 1)["CUDA_VISIBLE_DEVICES"] == ""


def test_scheduler_fails_a_gpu_job_on_a_machine_without_gpus(tmp_path, mnist_root):
    reg = Registry(tmp_path)
    queued = queue_train(reg, build_config("plain", device="cuda:1", data_root=str(mnist_root)))
    assert queued.job["needs"] == "gpu" and queued.job["gpu_index"] == 1
    assert queued.run["config"]["device"] == "cuda"  # CUDA_VISIBLE_DEVICES makes GPU 1 the child's cuda:0
    sampler = GpuSampler(nvml=StandInNvml([], init_error=NVMLError_LibraryNotFound()))
    scheduler = Scheduler(reg, gpu_sampler=sampler)
    try:
        assert scheduler.tick() == []
    finally:
        scheduler.release()
    (failed,) = reg.search(JOBS, id=queued.job["id"])
    assert failed["status"] == "failed" and "needs a GPU" in failed["error"]
    assert reg.get_run(queued.run["id"])["status"] == "failed"
