"""Live resource sampling: NVIDIA GPUs through NVML, run processes through psutil.

``GpuSampler.sample()`` returns a ``GpuSnapshot``: per GPU its utilization, memory used/total,
temperature, power, and the processes on it mapped to run ids; each sample also feeds a
history ring per GPU (``history(index)``) for sparklines. Where there is no NVIDIA driver or
no ``nvidia-ml-py``, the snapshot says so in ``message`` (``available`` is False) and nothing
raises; a query a GPU does not support gives ``NA`` ("n/a") for that value only.

``ProcessSampler.sample(pid, create_time)`` gives CPU % and resident memory of a run's process
together with its children (data-loading workers, an eval's subprocesses).

Both are cheap enough to call every second from a dashboard's worker thread; neither touches
the registry (``process_owners(registry)`` builds the pid -> run map once per refresh).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import psutil

from advtui.core.format import NA, Number
from advtui.core.process import live_process
from advtui.store.registry import JOBS, RUNS, Registry

DEFAULT_HISTORY = 120  # samples kept per GPU (two minutes at one sample a second)


@dataclass
class ProcessOwner:
    """Which run (and job) a pid belongs to."""

    run_id: str
    job_id: str | None = None
    kind: str = "train"  # train | eval


@dataclass
class GpuProcess:
    pid: int
    used_memory: Number | str  # bytes, or NA
    run_id: str | None = None
    job_id: str | None = None
    kind: str | None = None


@dataclass
class GpuState:
    index: int
    name: str
    uuid: str
    utilization: Number | str  # percent of time a kernel ran, or NA
    memory_used: Number | str  # bytes
    memory_total: Number | str  # bytes
    temperature: Number | str  # degrees C
    power: Number | str  # watts
    power_limit: Number | str  # watts
    processes: list[GpuProcess] = field(default_factory=list)

    @property
    def memory_free(self) -> Number | str:
        if isinstance(self.memory_used, (int, float)) and isinstance(self.memory_total, (int, float)):
            return self.memory_total - self.memory_used
        return NA

    @property
    def memory_percent(self) -> float | str:
        if isinstance(self.memory_used, (int, float)) and isinstance(self.memory_total, (int, float)) \
                and self.memory_total > 0:
            return 100.0 * self.memory_used / self.memory_total
        return NA


@dataclass
class GpuSnapshot:
    time: float
    available: bool  # NVML answered (there may still be zero GPUs)
    message: str  # one line for people: what was found, or why nothing was
    driver: str | None = None
    gpus: list[GpuState] = field(default_factory=list)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuSampler:
    """Samples every NVIDIA GPU through NVML; never raises for a missing driver or query.

    ``nvml`` is the ``pynvml`` module; tests pass a stand-in with the same functions.
    """

    def __init__(self, history: int = DEFAULT_HISTORY, nvml: Any = None):
        self._nvml = nvml
        self._history_len = history
        self._history: dict[int, deque] = {}
        self._ready: bool | None = None  # None: not tried yet
        self._why_not = ""
        self._driver: str | None = None

    # -- NVML session -------------------------------------------------------------------------
    def _init(self) -> bool:
        if self._ready is not None:
            return self._ready
        if self._nvml is None:
            try:
                import pynvml  # nvidia-ml-py
            except ImportError:
                return self._fail("no NVML: the nvidia-ml-py package is not installed")
            self._nvml = pynvml
        try:
            self._nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            return self._fail(f"no NVIDIA GPU: NVML is unavailable ({_text(exc) or type(exc).__name__})")
        self._driver = self._query(self._nvml.nvmlSystemGetDriverVersion)
        self._driver = None if self._driver == NA else _text(self._driver)
        self._ready = True
        return True

    def _fail(self, why: str) -> bool:
        self._ready, self._why_not = False, why
        return False

    def close(self) -> None:
        if self._ready:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
        self._ready = None

    def _query(self, fn, *args: Any) -> Any:
        """One NVML call; NA when the GPU or driver does not support it (or it fails)."""
        try:
            return fn(*args)
        except Exception:  # NVMLError_NotSupported, _NoPermission, _GpuIsLost, a missing function
            return NA

    # -- sampling -------------------------------------------------------------------------------
    def sample(self, owners: dict[int, ProcessOwner] | None = None) -> GpuSnapshot:
        """The current state of every GPU; ``owners`` maps pids to runs (``process_owners``)."""
        now = time.time()
        if not self._init():
            return GpuSnapshot(now, False, self._why_not)
        nvml = self._nvml
        count = self._query(nvml.nvmlDeviceGetCount)
        if count == NA:
            return GpuSnapshot(now, False, "no NVIDIA GPU: NVML could not count the devices", self._driver)
        gpus = []
        for index in range(int(count)):
            handle = self._query(nvml.nvmlDeviceGetHandleByIndex, index)
            if handle == NA:
                continue
            gpus.append(self._sample_gpu(index, handle, owners or {}))
        for gpu in gpus:
            ring = self._history.setdefault(gpu.index, deque(maxlen=self._history_len))
            ring.append((now, gpu.utilization, gpu.memory_percent))
        plural = "" if len(gpus) == 1 else "s"
        message = f"{len(gpus)} NVIDIA GPU{plural}" + (f", driver {self._driver}" if self._driver else "")
        return GpuSnapshot(now, True, message, self._driver, gpus)

    def _sample_gpu(self, index: int, handle: Any, owners: dict[int, ProcessOwner]) -> GpuState:
        nvml, q = self._nvml, self._query
        name = q(nvml.nvmlDeviceGetName, handle)
        uuid = q(nvml.nvmlDeviceGetUUID, handle)
        rates = q(nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = q(nvml.nvmlDeviceGetMemoryInfo, handle)
        temperature = q(nvml.nvmlDeviceGetTemperature, handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
        power = q(nvml.nvmlDeviceGetPowerUsage, handle)
        limit = q(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        return GpuState(
            index=index,
            name=_text(name),
            uuid=_text(uuid),
            utilization=_number(getattr(rates, "gpu", NA)),
            memory_used=_number(getattr(memory, "used", NA)),
            memory_total=_number(getattr(memory, "total", NA)),
            temperature=_number(temperature),
            power=_number(power, scale=1e-3),  # NVML reports milliwatts
            power_limit=_number(limit, scale=1e-3),
            processes=self._processes(handle, owners),
        )

    def _processes(self, handle: Any, owners: dict[int, ProcessOwner]) -> list[GpuProcess]:
        nvml, found = self._nvml, {}
        for query in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            fn = getattr(nvml, query, None)
            entries = self._query(fn, handle) if fn is not None else NA
            if entries == NA:
                continue
            for entry in entries:
                pid = int(getattr(entry, "pid", 0))
                if pid and pid not in found:
                    owner = owner_of(pid, owners)
                    found[pid] = GpuProcess(
                        pid, _number(getattr(entry, "usedGpuMemory", None)),
                        owner.run_id if owner else None, owner.job_id if owner else None,
                        owner.kind if owner else None)
        return list(found.values())

    def history(self, index: int) -> dict[str, list]:
        """Past samples of one GPU, oldest first: times, utilization %, memory % (NA kept as None)."""
        ring = self._history.get(index, ())
        return {
            "time": [t for t, _, _ in ring],
            "utilization": [u if u != NA else None for _, u, _ in ring],
            "memory": [m if m != NA else None for _, _, m in ring],
        }


def _number(value: Any, scale: float = 1.0) -> Number | str:
    """A number from NVML, or NA (NVML gives None for memory it cannot attribute)."""
    if value is None or value == NA or isinstance(value, bool):
        return NA
    try:
        number = float(value) * scale
    except (TypeError, ValueError):
        return NA
    return int(number) if scale == 1.0 and float(value).is_integer() else number


def process_owners(registry: Registry) -> dict[int, ProcessOwner]:
    """pid -> run for every running run and running job in the registry (job pids win: they
    also tell an evaluation apart from a training)."""
    owners: dict[int, ProcessOwner] = {}
    for run in registry.search(RUNS, status="running"):
        if run.get("pid"):
            owners[int(run["pid"])] = ProcessOwner(run["id"])
    for job in registry.search(JOBS, status="running"):
        if job.get("pid") and job.get("run_id"):
            owners[int(job["pid"])] = ProcessOwner(job["run_id"], job["id"], job.get("kind", "train"))
    return owners


def owner_of(pid: int, owners: dict[int, ProcessOwner]) -> ProcessOwner | None:
    """The run a pid belongs to, looking through its parents (a run's worker processes)."""
    if pid in owners:
        return owners[pid]
    try:
        for parent in psutil.Process(pid).parents():
            if parent.pid in owners:
                return owners[parent.pid]
    except psutil.Error:
        pass
    return None


@dataclass
class ProcessStats:
    """CPU and memory of one process together with all its children."""

    pid: int
    cpu_percent: float  # percent of one core, summed over the tree (may exceed 100)
    memory_rss: int  # bytes, summed over the tree
    threads: int
    children: int


class ProcessSampler:
    """Per-run CPU and memory through psutil.

    CPU % is measured between two calls (psutil's own method), so the first sample of a
    process reads 0.0; keep one sampler and call it periodically.
    """

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def _tracked(self, proc: psutil.Process) -> psutil.Process:
        known = self._procs.get(proc.pid)
        try:
            if known is not None and known.create_time() == proc.create_time():
                return known
        except psutil.Error:
            pass
        proc.cpu_percent(None)  # starts its measuring interval
        self._procs[proc.pid] = proc
        return proc

    def sample(self, pid: int | None, create_time: float | None = None) -> ProcessStats | None:
        """Stats for the process (and children) started at ``create_time``; None if it is gone."""
        root = live_process(pid, create_time)
        if root is None:
            return None
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        cpu, rss, threads, counted = 0.0, 0, 0, 0
        for proc in tree:
            try:
                tracked = self._tracked(proc)
                with tracked.oneshot():
                    cpu += tracked.cpu_percent(None)
                    rss += tracked.memory_info().rss
                    threads += tracked.num_threads()
                counted += 1
            except psutil.Error:  # a child that exited meanwhile
                continue
        self._forget_dead()
        return ProcessStats(root.pid, cpu, rss, threads, max(counted - 1, 0))

    def sample_runs(self, runs: list[dict]) -> dict[str, ProcessStats]:
        """run id -> stats for the records given that have a live process."""
        stats = {}
        for run in runs:
            found = self.sample(run.get("pid"), run.get("pid_start_time"))
            if found is not None:
                stats[run["id"]] = found
        return stats

    def _forget_dead(self) -> None:
        for pid, proc in list(self._procs.items()):
            if not proc.is_running():
                del self._procs[pid]
