"""The experiment manager runtime: job queue, scheduler, process launcher and monitoring.

- ``queue``: train and eval jobs in the registry (``queue_train``, ``queue_eval``,
  ``cancel_job``, ``kill``, ``resume``, ``list_jobs``, ``resolve_job``).
- ``scheduler``: ``Scheduler`` starts queued jobs on free GPU/CPU slots under a lock that
  only one process holds; ``reconcile()`` repairs records after a crash; ``tick()`` steps it.
- ``launcher``: the ``Executor`` interface and ``LocalExecutor`` (subprocesses in their own
  session, output to the run's log).
- ``monitor``: ``GpuSampler`` (NVML) and ``ProcessSampler`` (psutil).

Nothing here imports torch, so the dashboard and CLI stay quick to start.
"""

from advtui.jobs.launcher import ExitStatus, Executor, LaunchSpec, LocalExecutor, ProcessHandle
from advtui.jobs.monitor import NA, GpuSampler, GpuSnapshot, GpuState, ProcessSampler, process_owners
from advtui.jobs.queue import (
    JobNotFoundError, KillReport, QueuedTraining, cancel_job, kill, list_jobs, queue_eval, queue_train,
    resolve_job, resume, seed_configs,
)
from advtui.jobs.scheduler import Scheduler, SchedulerPolicy, read_holder

__all__ = [
    "ExitStatus", "Executor", "LaunchSpec", "LocalExecutor", "ProcessHandle",
    "NA", "GpuSampler", "GpuSnapshot", "GpuState", "ProcessSampler", "process_owners",
    "JobNotFoundError", "KillReport", "QueuedTraining", "cancel_job", "kill", "list_jobs", "queue_eval",
    "queue_train", "resolve_job", "resume", "seed_configs",
    "Scheduler", "SchedulerPolicy", "read_holder",
]
