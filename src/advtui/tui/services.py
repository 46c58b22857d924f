"""The dashboard's single doorway to the job runtime (``advtui.jobs``), the stored evaluation
results and attack specs (``advtui.core``) and the comparison tables (``advtui.compare``).

The dashboard holds no queue, scheduler, sampler or comparison logic of its own: every method
here calls those modules. None of them imports torch (evaluations run in launched processes),
which keeps the first paint fast. Methods are called from worker threads and do not raise for
the user's mistakes: actions return a message and a severity for a toast.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import psutil

from advtui.core.config import RunConfig
from advtui.core.attack_specs import default_attacks, parse_attack
from advtui.core.defenses import learned_maximizer
from advtui.core.errors import AdvtuiError
from advtui.jobs.executors import cluster_gpu_sampler
from advtui.jobs.launcher import Executor, LocalExecutor
from advtui.jobs.monitor import GpuSampler, GpuSnapshot, ProcessSampler, ProcessStats, process_owners
from advtui.jobs.queue import kill as kill_target
from advtui.jobs.queue import list_jobs, parse_seeds, queue_eval, queue_train, resume, resume_point, seed_configs
from advtui.jobs.scheduler import Scheduler, SchedulerPolicy, read_holder, threads_per_job
from advtui.store.registry import RUNS, Registry

# Finished jobs listed in the queue panel below the active ones.
RECENT_JOBS = 4
HISTORY = 60  # CPU samples kept for the no-GPU sparkline


@dataclass
class SystemSample:
    """What the GPU panel draws: NVML's snapshot with its history, or the CPU and memory of
    this machine when there is no NVIDIA GPU; plus CPU/memory of each running run."""

    gpus: GpuSnapshot
    gpu_history: dict[int, list[float | None]]
    cpu_percent: float
    cpu_history: list[float]
    cpu_count: int
    memory_used: int
    memory_total: int
    runs: dict[str, ProcessStats] = field(default_factory=dict)


@dataclass
class QueueState:
    jobs: list[dict]  # active jobs first (running, then queued), then the latest finished
    running: int
    queued: int
    cpu_slots: int
    slots_per_gpu: int
    gpus: int | None  # GPUs the scheduler may use; None when it runs on another host
    scheduler: str  # who schedules: "this dashboard", "worker pid N on HOST", or "none"
    threads: int | None = None  # math threads each job gets (OMP_NUM_THREADS); None: not known here


class Services:
    def __init__(self, registry: Registry, policy: SchedulerPolicy | None = None,
                 gpu_sampler: GpuSampler | None = None, executor: Executor | None = None):
        self.registry = registry
        self.policy = policy or SchedulerPolicy()
        # Where queued jobs run: processes here, or a cluster (``build_executor``), whose every
        # node's GPUs the panel then shows (the sampler its row in ``jobs.executors`` names).
        self.executor = executor or LocalExecutor()
        if gpu_sampler is None:
            gpu_sampler = cluster_gpu_sampler(self.executor, registry)
        self.gpu_sampler = gpu_sampler or GpuSampler()
        self.process_sampler = ProcessSampler()
        self.messages: deque[str] = deque()
        # The scheduler samples GPUs for its own decisions with its own sampler, so the panel's
        # history stays evenly spaced.
        self.scheduler = Scheduler(registry, self.executor, policy=self.policy, on_event=self._on_event,
                                   role="dashboard")
        self._cpu_history: deque[float] = deque(maxlen=HISTORY)
        self._has_gpus: bool | None = None  # unknown until the first sample
        self._gpu_indices: list[int] = []  # this machine's GPUs, from the latest sample
        self._jobs: list[dict] = []
        self._jobs_stamp: tuple | None = None
        self._tick_stamp: tuple | None = None
        self._lock = threading.Lock()
        psutil.cpu_percent(None)  # starts psutil's measuring interval

    def _on_event(self, kind: str, job: dict, message: str) -> None:
        self.messages.append(message)

    def _drain(self) -> list[str]:
        out = []
        while self.messages:
            out.append(self.messages.popleft())
        return out

    # -- runtime -----------------------------------------------------------------------------
    def scheduler_tick(self) -> list[str]:
        """One scheduling step: start ready jobs, record ended ones (the first step also
        reconciles records whose process vanished). A no-op while another scheduler
        (``advtui worker`` or another dashboard) holds the lock. Returns what happened."""
        with self._lock:
            # A step reads the whole registry. When it has not changed since the last step, no
            # job launched here is running (whose exit must be collected) and nothing is queued
            # (which may wait for a GPU to free up), a step would change nothing: skip it.
            stamp = _stamp(self.registry.path)
            known_jobs = self._jobs if stamp == self._jobs_stamp else None
            idle_queue = known_jobs is not None and not any(j.get("status") == "queued" for j in known_jobs)
            if stamp is not None and stamp == self._tick_stamp and idle_queue and not self.scheduler.running():
                return self._drain()
            self.scheduler.tick()
            self._tick_stamp = _stamp(self.registry.path)
            return self._drain()

    def close(self) -> None:
        """Give the scheduler lock back; launched runs keep going."""
        with self._lock:
            self.scheduler.release()
            self.gpu_sampler.close()

    def sample_system(self, running: list[dict] | None = None) -> SystemSample:
        """GPUs (or CPU and memory) now, and CPU/memory of the ``running`` runs' processes (the
        caller's copy of the records; read from the registry when not given)."""
        if running is None:
            running = self.registry.search(RUNS, status="running") if self.registry.path.exists() else []
        # Mapping GPU processes to runs reads the registry: only worth it where there are GPUs.
        try:
            owners = process_owners(self.registry) if running and self._has_gpus is not False else {}
        except (TypeError, ValueError, KeyError):
            # A record of the wrong shape (the runs panel names it): the GPUs are still worth
            # drawing, without the run names on them.
            owners = {}
        snapshot = self.gpu_sampler.sample(owners)
        self._has_gpus = bool(snapshot.gpus)
        self._gpu_indices = [g.index for g in snapshot.gpus]
        history = {g.index: self.gpu_sampler.history(g.index)["utilization"] for g in snapshot.gpus}
        cpu = psutil.cpu_percent(None)
        self._cpu_history.append(cpu)
        memory = psutil.virtual_memory()
        return SystemSample(snapshot, history, cpu, list(self._cpu_history), psutil.cpu_count() or 1,
                            memory.total - memory.available, memory.total,
                            self.process_sampler.sample_runs(running))

    def queue_state(self) -> QueueState:
        # The jobs only change when the registry file does: skip re-reading it otherwise.
        stamp = _stamp(self.registry.path)
        if stamp is not None and stamp == self._jobs_stamp:
            jobs = self._jobs
        else:
            jobs = list_jobs(self.registry) if stamp is not None else []
            self._jobs, self._jobs_stamp = jobs, stamp
        running = [j for j in jobs if j.get("status") == "running"]
        queued = sorted((j for j in jobs if j.get("status") == "queued"),
                        key=lambda j: (-_number(j.get("priority")), _number(j.get("created"))))
        ended = sorted((j for j in jobs if j.get("status") not in ("running", "queued")),
                       key=lambda j: _number(j.get("ended")), reverse=True)[:RECENT_JOBS]
        cpu_slots, slots_per_gpu, allowed = self.policy.cpu_slots, self.policy.slots_per_gpu, self.policy.gpus
        threads = self.policy.threads_per_job
        gpu_indices = self._gpu_indices
        if self.scheduler.active:
            who = "this dashboard"
            if self.executor.places_jobs:
                address = self.executor.address
                who += f", jobs on {self.executor.title}" + (f" at {address}" if address else "")
            if self.scheduler.last_gpus is not None:
                gpu_indices = [g.index for g in self.scheduler.last_gpus.gpus]
        else:
            holder = read_holder(self.registry.root)
            who = (f"{holder.get('role', '?')} pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
                   if holder else "none")
            slots = (holder or {}).get("slots")
            if isinstance(slots, dict):
                # Another process schedules: its slots are the queue's capacity, not ours.
                cpu_slots = int(slots.get("cpu_slots") or 0)
                slots_per_gpu = int(slots.get("slots_per_gpu") or 1)
                allowed = slots.get("gpus")
                threads = slots.get("threads_per_job") if isinstance(slots.get("threads_per_job"), int) else None
                if holder.get("host") != socket.gethostname():
                    gpu_indices = None  # its GPUs are not the ones this machine samples
        gpus = (len([i for i in gpu_indices if allowed is None or i in allowed])
                if gpu_indices is not None else None)
        # The threads the scheduler gives each job, worked out as it does (its cores shared by
        # its slots); a scheduler on another host has cores this machine cannot count.
        per_job = (threads_per_job(SchedulerPolicy(cpu_slots=cpu_slots, slots_per_gpu=slots_per_gpu,
                                                   threads_per_job=threads), gpus)
                   if gpus is not None else threads)
        return QueueState(running + queued + ended, len(running), len(queued), cpu_slots, slots_per_gpu, gpus, who,
                          per_job)

    # -- actions -----------------------------------------------------------------------------
    def kill(self, run_id: str) -> tuple[str, str]:
        try:
            report = kill_target(self.registry, run_id)
        except AdvtuiError as exc:
            return str(exc), "error"
        return report.message, "information"

    def resume(self, run_id: str) -> tuple[str, str]:
        try:
            queued = resume(self.registry, run_id)
        except AdvtuiError as exc:
            return str(exc), "error"
        start = resume_point(self.registry, queued.run)
        return f"run {run_id} queued again as job {queued.job['id']}: continues from {start}", "information"

    def queue_training(self, config: RunConfig, seeds: str | None, auto_eval: str | None,
                       eval_limit: int | None) -> list[dict]:
        """Queue one run (or one per seed, grouped); raises AdvtuiError for bad input."""
        configs = seed_configs(config, parse_seeds(seeds)) if seeds else [config]
        queued = []
        for cfg in configs:
            queued.append(queue_train(self.registry, cfg, auto_eval=auto_eval or None,
                                      eval_options={"limit": eval_limit}))
        return [q.run for q in queued]

    def queue_evaluation(self, run_ids: list[str], attacks: list[str], options: dict[str, Any]) -> list[dict]:
        return [queue_eval(self.registry, run_id, attacks, options=options) for run_id in run_ids]

    # -- evaluation results ------------------------------------------------------------------
    def results(self, run_id: str) -> dict[str, dict]:
        # Imported here, not at the top: the results store loads numpy, which the first paint
        # of the dashboard does not need (the detail and compare screens do).
        from advtui.store.results import results_for_run

        return results_for_run(self.registry, run_id)

    def comparison(self, run_ids: list[str], by: str = "run", **options):
        """The compare model of these runs; ``options`` as build_comparison's (diff, at, baseline)."""
        from advtui.compare import build_comparison  # see results(): numpy, only when asked

        runs = [r for r in (self.registry.get_run(rid) for rid in run_ids) if r is not None]
        return build_comparison(self.registry, runs, by=by, **options)

    @staticmethod
    def check_attacks(specs: list[str]) -> list[str]:
        """Canonical spec texts; AdvtuiError (one line) for a malformed one."""
        return [parse_attack(s).text for s in specs]

    @staticmethod
    def default_attacks(record: dict) -> list[str]:
        return [s.text for s in default_attacks(record)]

    @staticmethod
    def learned_attackers(runs: list[dict]) -> list[tuple[str, dict]]:
        """(attack family, run) for every run whose checkpoint holds a learned maximizer
        (rnn-adv, rnn-trades: "rnn"; l2lda: "l2lda") usable as an attacker."""
        found = []
        for run in runs:
            learned = learned_maximizer(run)
            if learned is not None and (run.get("checkpoints") or {}):
                found.append((learned, run))
        return found


def _number(value: Any) -> float:
    """A job's priority or time as a sort key; a damaged value (``priority: "high"``) sorts as 0,
    so the panel still lists every job (the scheduler's own error about it shows above them)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _stamp(path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
