"""The scheduler: starts queued jobs on free GPU or CPU slots and records how they end.

Driving it (``advtui worker`` does exactly this; the dashboard does it from a worker thread)::

    scheduler = Scheduler(Registry(root), LocalExecutor(), SchedulerPolicy(cpu_slots=2),
                          on_event=lambda kind, job, message: ...)
    if scheduler.acquire():          # the scheduler lock: False while another one acts
        scheduler.reconcile()        # running records whose process vanished -> failed
        while ...:
            started = scheduler.tick()   # -> list of job docs started by this call
            time.sleep(1)
        scheduler.release()          # launched processes keep running

``tick()`` (1) collects jobs whose process ended and marks them done/failed/cancelled from the
exit code and the run record, (2) cancels jobs whose dependency failed, (3) starts the ready
queued jobs, highest priority first, while slots are free. It takes the lock itself if it can
(and returns [] when another scheduler holds it), reconciles once on first use, and is safe to
call from one thread while other threads read the registry. ``on_event(kind, job, message)``
is called for "started", "finished", "adopted" and "reconciled".

Only one scheduler acts at a time: ``runs/scheduler.lock`` (a file lock, released by the OS if
the holder dies) is held from ``acquire`` to ``release``; ``holder()`` says who has it. Job
claims are also compare-and-set in the registry, so a job can never start twice.

Slots follow nvitop's device selection: a GPU qualifies when it has at least
``min_free_memory_mib`` free and, unless one of our jobs already runs there, utilization at most
``max_gpu_utilization`` %; the qualifying GPU with the most free memory wins; each GPU takes
``slots_per_gpu`` jobs, pinned with ``CUDA_VISIBLE_DEVICES`` (and ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
so NVML's index is CUDA's). A job whose device is ``auto`` waits for a GPU on a machine that has
one; on a machine without, it takes one of ``cpu_slots`` CPU slots. Every job gets
``OMP_NUM_THREADS`` = CPU cores / slots, so parallel jobs do not oversubscribe the cores.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock, Timeout

from advtui.store import lifecycle
from advtui.core.atomic import atomic_write_json
from advtui.core.format import plain_line
from advtui.core.paths import check_safe_name, run_dir
from advtui.core.records import JobRecord, RunRecord
from advtui.core.status import ACTIVE_RUNS
from advtui.core.process import live_process, record_alive, why_not_alive
from advtui.core.errors import ConfigError, RegistryError
from advtui.jobs.executors import kind_of_job
from advtui.jobs.launcher import ExitStatus, Executor, LaunchSpec, LocalExecutor, ProcessHandle, describe_exit, log_tail
from advtui.jobs.monitor import NA, GpuSampler, GpuSnapshot, GpuState
from advtui.jobs.queue import EVAL_OPTION_FLAGS, cancel_dependents, finish_job
from advtui.store.registry import JOBS, RUNS, Registry

SCHEDULER_LOCK = "scheduler.lock"
SCHEDULER_HOLDER = "scheduler.json"
TRAIN_LOG = "log.txt"

EventCallback = Callable[[str, dict, str], None]


@dataclass
class SchedulerPolicy:
    """How many jobs may run where."""

    cpu_slots: int = 1  # jobs at once on CPU (machines without a usable GPU, or --device cpu)
    slots_per_gpu: int = 1
    min_free_memory_mib: float = 1024.0  # a GPU with less free memory is not used
    max_gpu_utilization: float = 90.0  # %: a GPU busier than this (with none of our jobs) is not used
    gpus: tuple[int, ...] | None = None  # only these GPU indices (None: all)
    threads_per_job: int | None = None  # torch threads per job (None: CPU cores / slots)

    def validate(self) -> "SchedulerPolicy":
        if self.cpu_slots < 0 or self.slots_per_gpu < 1:
            raise ConfigError("--cpu-slots must be >= 0 and --slots-per-gpu >= 1")
        if self.threads_per_job is not None and self.threads_per_job < 1:
            raise ConfigError("--threads must be at least 1")
        return self


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_job(policy: SchedulerPolicy, gpus: int) -> int:
    """The math threads each job gets: ``--threads``, else the CPU cores shared by every slot
    (the CPU slots and those of the ``gpus`` usable GPUs), so parallel jobs do not
    oversubscribe the cores."""
    if policy.threads_per_job:
        return policy.threads_per_job
    slots = policy.cpu_slots + gpus * policy.slots_per_gpu
    return max(1, cpu_count() // max(1, slots))


class Scheduler:
    def __init__(
        self,
        registry: Registry,
        executor: Executor | None = None,
        policy: SchedulerPolicy | None = None,
        gpu_sampler: GpuSampler | None = None,
        on_event: EventCallback | None = None,
        role: str = "worker",
    ):
        self.registry = registry
        self.executor = executor or LocalExecutor()
        self.policy = (policy or SchedulerPolicy()).validate()
        self.gpu_sampler = gpu_sampler or GpuSampler()
        self.on_event = on_event
        self.role = role  # shown to others by holder(): "worker", "dashboard"
        self.host = socket.gethostname()
        self.last_gpus: GpuSnapshot | None = None
        self._lock = FileLock(str(registry.root / SCHEDULER_LOCK), thread_local=False)
        self._handles: dict[str, ProcessHandle] = {}  # job id -> process this scheduler watches
        self._reconciled = False
        self._quiet_stamp: tuple | None = None  # the registry as last seen with nothing queued
        self._mutex = threading.RLock()

    # -- the scheduler lock -------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True while this scheduler holds the lock."""
        return self._lock.is_locked

    def acquire(self, timeout: float = 0.0) -> bool:
        """Take the scheduler lock (waiting up to ``timeout`` s); False if another scheduler has it."""
        with self._mutex:
            if self._lock.is_locked:
                return True
            self.registry.root.mkdir(parents=True, exist_ok=True)
            try:
                self._lock.acquire(timeout=timeout)
            except Timeout:
                return False
            self._write_holder()
            return True

    def release(self) -> None:
        """Give the lock back; processes it launched keep running (the next scheduler adopts them)."""
        with self._mutex:
            if not self._lock.is_locked:
                return
            try:
                (self.registry.root / SCHEDULER_HOLDER).unlink()
            except OSError:
                pass
            self._lock.release(force=True)
            self._reconciled = False
            self._quiet_stamp = None
            self._handles.clear()

    close = release

    def _write_holder(self) -> None:
        # The slots it schedules on, so a dashboard shows this scheduler's capacity, not its own.
        slots = {"cpu_slots": self.policy.cpu_slots, "slots_per_gpu": self.policy.slots_per_gpu,
                 "gpus": list(self.policy.gpus) if self.policy.gpus is not None else None,
                 "threads_per_job": self.policy.threads_per_job}
        info = {"pid": os.getpid(), "host": self.host, "role": self.role, "since": time.time(), "slots": slots}
        atomic_write_json(self.registry.root / SCHEDULER_HOLDER, info)

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock, as it wrote when taking it ({pid, host, role, since}); None if
        nobody does (a holder that died releases the lock with its process)."""
        if self.active:
            return {"pid": os.getpid(), "host": self.host, "role": self.role}
        return read_holder(self.registry.root)

    def _holder_note(self, wait_s: float = 1.0) -> dict[str, Any]:
        """The lock holder's note, waiting a moment for it: the holder writes it just after
        taking the lock, so a scheduler that just lost the race may look before it exists."""
        deadline = time.monotonic() + wait_s
        while True:
            holder = self.holder()
            if holder is not None or time.monotonic() >= deadline:
                return holder or {}
            time.sleep(0.05)

    # -- reconciliation -----------------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """Match 'running' records with live processes on this host: adopt the living (they were
        launched by a scheduler that has exited), finish the jobs whose process ended, and mark
        runs whose process is gone, or whose pid now belongs to another process, failed with
        "process vanished". Returns what it changed, one line each."""
        with self._mutex:
            if not self.acquire():
                return []
            messages: list[str] = []
            self.last_gpus = self.gpu_sampler.sample()  # what the machine has, known from the start
            for job in self.registry.search(JOBS, status="running"):
                if job["id"] in self._handles or not self._watches(job):
                    continue
                messages.append(self._reconcile_job(job))
            for run in self.registry.search(RUNS, status="running"):
                if run.get("host") not in (None, self.host):
                    continue
                if not record_alive(run):
                    reason = f"process vanished ({why_not_alive(run.get('pid'), run.get('pid_start_time'))})"
                    folder = self._run_folder(run["id"])
                    tail = log_tail(folder / TRAIN_LOG) if folder else ""
                    error = reason + (f"; last output:\n{tail}" if tail else "")
                    if lifecycle.mark_failed(self.registry, run["id"], error, only_from=lifecycle.RUNNING):
                        messages.append(f"run {run['id']}: {reason}: marked failed")
                        self._emit("reconciled", {}, messages[-1])
            for problem in self.registry.damaged + self.registry.record_problems():
                # Said once: what it hides is left out of scheduling, and everything else runs.
                messages.append(f"skipped: {problem}")
                self._emit("reconciled", {}, messages[-1])
            self._reconciled = True
            return messages

    def _reconcile_job(self, job: dict) -> str:
        pid, started = job.get("pid"), job.get("pid_start_time")
        if pid is None and job["kind"] == "train":
            # Claimed, but the scheduler stopped before recording the pid: the run knows it
            # once the process has attached to its record.
            run = self.registry.get_run(job["run_id"]) or {}
            if run.get("status") == "running":
                pid, started = run.get("pid"), run.get("pid_start_time")
                self.registry.update(JOBS, {"id": job["id"]}, {"pid": pid, "pid_start_time": started})
                job = {**job, "pid": pid, "pid_start_time": started}
        handle = self.executor.attach(pid, started, self._log_path(job), job=job) if pid else None
        if handle is not None:
            self._handles[job["id"]] = handle
            self._emit("adopted", job, f"job {job['id']}: process {pid} still running, watching it again")
            return f"job {job['id']}: adopted running process {pid}"
        status = self._finish(job, ExitStatus(None, reason=self.executor.why_lost(job)))
        return f"job {job['id']}: its process ended while no scheduler watched it: {status}"

    # -- the periodic step --------------------------------------------------------------------------
    def tick(self) -> list[dict]:
        """Collect ended jobs, then start ready ones; returns the jobs started (with pid)."""
        with self._mutex:
            if not self.acquire():
                return []
            if not self._reconciled:
                self.reconcile()
            stamp = self._registry_stamp()
            if not self._collect() and stamp is not None and stamp == self._quiet_stamp:
                return []  # nothing queued last time and nothing written since: skip the parse
            jobs = self.registry.all(JOBS)
            queued = [j for j in jobs if j.get("status") == "queued"]
            self._quiet_stamp = None if queued else stamp
            if not queued:
                return []
            queued = self._settle_dependencies(queued, {j["id"]: j for j in jobs})
            if not queued:
                return []
            running = [j for j in jobs if j.get("status") == "running" and self._watches(j)]
            if self.executor.places_jobs:  # a cluster: it knows what is free on which node
                slots = self.executor.cluster_slots(running)
            else:
                snapshot = self.last_gpus = self.gpu_sampler.sample()
                slots = _FreeSlots(self.policy, snapshot, running)
            started = []
            for job in sorted(queued, key=_claim_order):
                slot, impossible = slots.pick(job)
                if impossible:
                    self._fail_unstartable(job, impossible)
                elif slot is not None:
                    launched = self._launch(job, slot, slots.threads())
                    if launched is not None:
                        started.append(launched)
                        slots.take(slot)
            return started

    def _watches(self, job: dict) -> bool:
        """Whether a running job is this scheduler's to watch: started by the same kind of
        executor and, for local processes, on this host (a cluster executor reaches every node)."""
        if (job.get("executor") or "local") != self.executor.name:
            return False
        return self.executor.places_jobs or job.get("host") in (None, self.host)

    def running(self) -> dict[str, ProcessHandle]:
        """Jobs this scheduler is watching (launched or adopted), by job id."""
        return dict(self._handles)

    def idle(self) -> bool:
        """Nothing running under this scheduler and nothing queued: a --once worker may exit."""
        if self._handles:
            return False
        stamp = self._registry_stamp()
        if stamp is not None and stamp == self._quiet_stamp:
            return True
        return not any(j.get("status") == "queued" for j in self.registry.all(JOBS))

    def serve(self, once: bool = False, poll_s: float = 1.0, stop: threading.Event | None = None,
              wait_for_lock: bool = True, say: Callable[[str], None] | None = None) -> None:
        """Run the scheduler until ``stop`` is set (or, with ``once``, until the queue is drained
        and every job it watches has ended). Waits for the lock while another scheduler acts."""
        stop = stop or threading.Event()
        said_waiting = False
        while not stop.is_set():
            if not self.acquire():
                if not wait_for_lock:
                    return
                if not said_waiting and say is not None:
                    holder = self._holder_note()
                    say(f"another scheduler ({holder.get('role', '?')} pid {holder.get('pid', '?')} on "
                        f"{holder.get('host', '?')}) is active; waiting for it to finish")
                    said_waiting = True
                stop.wait(poll_s)
                continue
            self.tick()
            if once and self.idle():
                return
            stop.wait(poll_s)

    # -- ending jobs ---------------------------------------------------------------------------------
    def _collect(self) -> int:
        """Record the jobs whose process ended; returns how many ended."""
        ended = 0
        for job_id, handle in list(self._handles.items()):
            status = self.executor.poll(handle)
            if status is None:
                continue
            ended += 1
            del self._handles[job_id]
            found = self.registry.search(JOBS, id=job_id)
            if found and found[0]["status"] == "running" and found[0].get("pid") == handle.pid:
                self._finish(found[0], status)
        return ended

    def _registry_stamp(self) -> tuple | None:
        """Changes with every write: the registry is replaced by rename, so a new inode each time.

        The whole file is parsed on each read, which costs more as it grows, so an idle
        scheduler only reads it again when it changed."""
        try:
            st = os.stat(self.registry.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _finish(self, job: dict, exit_status: ExitStatus) -> str:
        """Record how a job's process ended: the job's final status, and for a training whose
        process died before recording its own end, the run as failed with its log's last lines."""
        code = exit_status.code
        tail = log_tail(self._log_path(job))
        gone = exit_status.reason or why_not_alive(job.get("pid"), job.get("pid_start_time"))
        if job["kind"] == "train":
            run = self._run_of(job)[0] or {}  # a damaged run file: the job alone is recorded
            run_status = run.get("status", "failed")
            if run_status in lifecycle.ACTIVE:
                reason = (f"process vanished ({gone})" if code is None
                          else f"the process ended ({describe_exit(code)}) before recording its end")
                error = reason + (f"; last output:\n{tail}" if tail else "")
                lifecycle.mark_failed(self.registry, job["run_id"], error, only_from=run_status)
                run = self._run_of(job)[0] or {}
                run_status = "failed"
            if code is None:
                status = {"finished": "done", "killed": "cancelled"}.get(run_status, "failed")
            elif code == 0:
                status = "done" if run_status == "finished" else "failed"
            else:
                status = "cancelled" if run_status == "killed" or job.get("kill_requested") else "failed"
            error = None if status == "done" else (run.get("error") or tail or describe_exit(code))
        else:
            if code == 0:
                status, error = "done", None
            elif code is None:
                status, error = "failed", f"process vanished ({gone}); its exit status is unknown"
            else:
                status = "cancelled" if job.get("kill_requested") else "failed"
                error = describe_exit(code)
            if error and tail:
                error += f"; last output:\n{tail}"
        finish_job(self.registry, job, status, exit_code=code, error=error)
        if status != "done":
            cancel_dependents(self.registry, job, status)
        detail = f"{describe_exit(code)}" + (f": {plain_line(error)}" if error else "")
        self._emit("finished", {**job, "status": status, "exit_code": code, "error": error},
                   f"job {job['id']} ({job['kind']} of run {job['run_id']}) {status}: {detail}")
        return status

    def _run_of(self, job: dict) -> tuple[dict | None, str | None]:
        """(the job's run, None), or (None, the one line that says why) when its run file is
        damaged: one bad record fails its own jobs, never the scheduler and the whole queue."""
        try:
            return self.registry.get_run(job["run_id"]), None
        except RegistryError as exc:
            return None, str(exc)

    def _fail_unstartable(self, job: dict, reason: str) -> None:
        if finish_job(self.registry, job, "failed", error=reason):
            if job["kind"] == "train":
                try:
                    lifecycle.mark_failed(self.registry, job["run_id"], reason, only_from=lifecycle.QUEUED)
                except RegistryError:
                    pass  # its run file is damaged and is never overwritten: the job says why
            cancel_dependents(self.registry, job, "failed")
            self._emit("finished", {**job, "status": "failed", "error": reason}, f"job {job['id']} failed: {reason}")

    def _settle_dependencies(self, queued: list[dict], by_id: dict[str, dict]) -> list[dict]:
        """The queued jobs that may start now; cancel or fail those that never can."""
        ready = []
        for job in queued:
            typed = JobRecord.from_dict(job)
            try:
                check_safe_name(str(typed.run_id), "run id")
            except ConfigError as exc:
                self._fail_unstartable(job, str(exc))
                continue
            depends_on = typed.depends_on or []
            deps = [by_id.get(d) for d in depends_on]
            missing = [d for d, dep in zip(depends_on, deps) if dep is None]
            if missing:
                self._fail_unstartable(job, f"depends on job {missing[0]}, which does not exist")
                continue
            # The store checked every job's status on reading (through JobRecord): no decoding again,
            # once per dependent job, on every tick.
            broken = [dep for dep in deps if dep.get("status") in ("failed", "cancelled")]
            if broken:
                cancel_dependents(self.registry, broken[0], broken[0]["status"])
                continue
            if any(dep.get("status") != "done" for dep in deps):
                continue  # still waiting
            record, damaged = self._run_of(job)
            run = RunRecord.from_dict(record) if record is not None else None
            if damaged is not None:
                self._fail_unstartable(job, f"{damaged}; once it is mended, `advtui resume {typed.run_id}` "
                                            "queues the run again")
            elif record is None or run is None:
                self._fail_unstartable(job, f"run {typed.run_id} is not in the registry")
            elif typed.kind == "train" and run.status != "queued":
                self._fail_unstartable(job, f"run {run.id} is {run.status}, not queued")
            elif typed.kind == "eval" and not self._final_checkpoint_exists(record):
                if run.status in ACTIVE_RUNS:
                    continue  # trained outside the queue: wait for it
                self._fail_unstartable(job, f"run {run.id} ({run.status}) has no final checkpoint")
            else:
                ready.append(job)
        return ready

    def _final_checkpoint_exists(self, run: dict) -> bool:
        rel = (run.get("checkpoints") or {}).get("final")
        folder = self._run_folder(run["id"])
        return bool(rel) and folder is not None and (folder / rel).exists()

    # -- starting jobs -------------------------------------------------------------------------------
    def _log_path(self, job: dict) -> Path | None:
        """runs/<run-id>/log.txt for training (a resumed run appends), eval-<job-id>.log for an eval."""
        folder = self._run_folder(job["run_id"])
        if folder is None:
            return None
        return folder / (TRAIN_LOG if job["kind"] == "train" else f"eval-{job['id']}.log")

    def _run_folder(self, run_id: Any) -> Path | None:
        try:
            return run_dir(self.registry.root, str(run_id))
        except ConfigError:  # an id that would leave runs/ (a hand-edited registry): no folder
            return None

    def command(self, job: dict) -> list[str]:
        """The argument list a job runs (never a shell string)."""
        root = str(self.registry.root)
        if job["kind"] == "train":
            return [sys.executable, "-m", "advtui", "run", "--run-id", job["run_id"], "--runs-dir", root]
        argv = [sys.executable, "-m", "advtui", "eval", job["run_id"]]
        if job.get("attacks"):
            argv += ["--attacks", ",".join(job["attacks"])]
        argv += ["--runs-dir", root]
        for key, value in (job.get("eval_options") or {}).items():
            argv += [EVAL_OPTION_FLAGS[key], str(value)]
        return argv

    def _launch(self, job: dict, slot: dict, threads: int) -> dict | None:
        log_path = self._log_path(job)
        assert log_path is not None  # run ids were checked by _settle_dependencies
        claimed = {"status": "running", "started": time.time(), "host": self.host, "slot": slot,
                   "log": str(log_path.relative_to(self.registry.root)), "scheduler_pid": os.getpid(),
                   "executor": self.executor.name}
        if not self.registry.update(JOBS, {"id": job["id"], "status": "queued"}, claimed):
            return None  # cancelled meanwhile
        job = {**job, **claimed}
        argv = self.command(job)
        try:
            placed = self.executor.places_jobs  # a cluster's slot is {its name: the resources it asks for}
            handle = self.executor.start(LaunchSpec(argv, log_path, launch_env(slot, threads, placed=placed),
                                                    job_id=job["id"],
                                                    resources=dict(slot.get(self.executor.name) or {}) if placed else {}))
        except OSError as exc:
            reason = f"could not start {argv[0]}: {exc}"
            finish_job(self.registry, job, "failed", error=reason)
            if job["kind"] == "train":
                lifecycle.mark_failed(self.registry, job["run_id"], reason, only_from=lifecycle.QUEUED)
            cancel_dependents(self.registry, job, "failed")
            self._emit("finished", {**job, "status": "failed", "error": reason}, f"job {job['id']} failed: {reason}")
            return None
        self._handles[job["id"]] = handle
        process = {"pid": handle.pid, "pid_start_time": handle.create_time, "argv": argv, "host": handle.host,
                   **handle.placement}
        self.registry.update(JOBS, {"id": job["id"]}, process)
        if job["kind"] == "train":
            lifecycle.record_launch(self.registry, job["run_id"], handle.pid, handle.create_time, handle.host)
        job.update(process)
        where = describe_slot(job, threads)
        self._emit("started", job, f"job {job['id']} ({job['kind']} of run {job['run_id']}) started on "
                                   f"{where}, pid {handle.pid}")
        return job

    def _emit(self, kind: str, job: dict, message: str) -> None:
        if self.on_event is not None:
            self.on_event(kind, job, message)


def _claim_order(job: dict) -> tuple[int, float]:
    """Queued jobs start by priority, highest first, then oldest first."""
    typed = JobRecord.from_dict(job)
    return -(typed.priority or 0), typed.created or 0


def describe_slot(job: dict, threads: int) -> str:
    """Where a started job runs, for people: 'GPU 0', 'CPU slot (2 threads)', or what the row of
    the executor that placed it says ('Ray node 10.0.0.5 (GPU 1)')."""
    kind = kind_of_job(job)
    if kind is not None and kind.describe_slot is not None:
        return kind.describe_slot(job, threads)
    slot = job.get("slot") or {}
    return f"GPU {slot['gpu']}" if "gpu" in slot else f"CPU slot ({threads} threads)"


def launch_env(slot: dict, threads: int, placed: bool = False) -> dict[str, str]:
    """The environment a job gets on top of the scheduler's: its GPU, or none, and its threads.
    A job a cluster ``placed`` gets its GPUs from the cluster (Ray's actor sets
    CUDA_VISIBLE_DEVICES to the GPUs Ray gave it)."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if placed:
        return env
    if "gpu" in slot:
        # NVML numbers GPUs in PCI bus order; make CUDA use the same order so the index matches.
        env.update(CUDA_VISIBLE_DEVICES=str(slot["gpu"]), CUDA_DEVICE_ORDER="PCI_BUS_ID")
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU slot: keep it off every GPU
    return env


def read_holder(root: Path) -> dict[str, Any] | None:
    """The scheduler lock holder's note, if the process that wrote it is still alive."""
    try:
        info = json.loads((Path(root) / SCHEDULER_HOLDER).read_text())
    except (OSError, ValueError):
        return None
    if info.get("host") == socket.gethostname() and live_process(info.get("pid"), None) is None:
        return None
    return info


class _FreeSlots:
    """The slots free for this tick, from the policy, the GPUs and the jobs running on this host."""

    def __init__(self, policy: SchedulerPolicy, snapshot: GpuSnapshot, running: list[dict]):
        self.policy = policy
        self.gpus: dict[int, GpuState] = {
            g.index: g for g in snapshot.gpus if policy.gpus is None or g.index in policy.gpus}
        self.why_no_gpu = snapshot.message if not snapshot.gpus else "none of its GPUs is allowed (--gpus)"
        self.gpu_used = {index: 0 for index in self.gpus}
        self.cpu_used = 0
        for job in running:
            self.take(job.get("slot") or {"cpu": 0})

    def take(self, slot: dict) -> None:
        if "gpu" in slot:
            self.gpu_used[slot["gpu"]] = self.gpu_used.get(slot["gpu"], 0) + 1
        else:
            self.cpu_used += 1

    def threads(self) -> int:
        return threads_per_job(self.policy, len(self.gpus))

    def pick(self, job: dict) -> tuple[dict | None, str | None]:
        """(slot, None) to start now; (None, None) to wait; (None, reason) if it never can here."""
        typed = JobRecord.from_dict(job)
        needs = typed.needs or "auto"
        if needs == "cpu" or (needs == "auto" and not self.gpus):
            if self.policy.cpu_slots == 0:
                return None, "it needs a CPU slot and this scheduler has --cpu-slots 0"
            return ({"cpu": self.cpu_used + 1}, None) if self.cpu_used < self.policy.cpu_slots else (None, None)
        if not self.gpus:
            return None, f"it needs a GPU, but this machine has none usable ({self.why_no_gpu})"
        if (typed.nproc or 1) > 1:
            return None, ("a --nproc run on GPUs needs one GPU per process: run it with `advtui run --nproc N` "
                          "or queue it for `advtui worker --executor ray`")
        wanted = typed.gpu_index
        if wanted is not None and wanted not in self.gpus:
            return None, f"it asks for GPU {wanted}, which this scheduler does not have ({sorted(self.gpus)})"
        candidates = [g for g in self.gpus.values() if (wanted is None or g.index == wanted) and self._fits(g)]
        if not candidates:
            return None, None
        best = max(candidates, key=lambda g: (_num(g.memory_free), -self.gpu_used[g.index], -g.index))
        return {"gpu": best.index}, None

    def _fits(self, gpu: GpuState) -> bool:
        used = self.gpu_used[gpu.index]
        if used >= self.policy.slots_per_gpu:
            return False
        free = gpu.memory_free
        if free != NA and free < self.policy.min_free_memory_mib * 2**20:
            return False
        # Our own job makes its GPU busy; the threshold guards against other people's work.
        if used == 0 and gpu.utilization != NA and gpu.utilization > self.policy.max_gpu_utilization:
            return False
        return True


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0
