"""The statuses of runs and jobs, and how each may change: the one place that lists them.

The store validates records against these names, the lifecycle and the queue move records
along these tables, and the CLI and the dashboard colour and filter by them. A new status is
one member here and its row in the table (then its colour in ``core.format``).

Records keep the plain string (``RunStatus.KILLED == "killed"``): they are JSON.
"""

from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10: the same, written out
    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


class RunStatus(StrEnum):
    QUEUED = "queued"  # in the store before its process starts (a queued train job will start it)
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    KILLED = "killed"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


RUN_STATUSES: tuple[str, ...] = tuple(s.value for s in RunStatus)
JOB_STATUSES: tuple[str, ...] = tuple(s.value for s in JobStatus)

ACTIVE_RUNS: tuple[str, ...] = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
ENDED_RUNS: tuple[str, ...] = (RunStatus.FINISHED.value, RunStatus.FAILED.value, RunStatus.KILLED.value)
ACTIVE_JOBS: tuple[str, ...] = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
# Jobs in these statuses are over and may move to the archive; any other status stays in queue.json.
ENDED_JOBS: tuple[str, ...] = (JobStatus.DONE.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)

# status -> the statuses a run may move to from it. A running record whose process died
# without recording its end (SIGKILL, power loss) may be started or queued again like a
# stopped run, once the process is known to be gone.
RUN_TRANSITIONS: dict[str, tuple[str, ...]] = {
    RunStatus.QUEUED: (RunStatus.RUNNING, RunStatus.FAILED, RunStatus.KILLED),
    RunStatus.RUNNING: (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED, RunStatus.RUNNING, RunStatus.QUEUED),
    RunStatus.FINISHED: (RunStatus.QUEUED, RunStatus.RUNNING),
    RunStatus.FAILED: (RunStatus.QUEUED, RunStatus.RUNNING),
    RunStatus.KILLED: (RunStatus.QUEUED, RunStatus.RUNNING),
}

# status -> the statuses a job may move to from it: a scheduler claims a queued job, a job ends
# (or cannot start, or is cancelled before it does), and ``resume`` queues again the evaluations
# that a stopped training cancelled.
JOB_TRANSITIONS: dict[str, tuple[str, ...]] = {
    JobStatus.QUEUED: (JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED),
    JobStatus.RUNNING: (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED),
    JobStatus.DONE: (),
    JobStatus.FAILED: (),
    JobStatus.CANCELLED: (JobStatus.QUEUED,),
}


def can_resume(status: str | None, *, more_epochs: bool = False) -> bool:
    """Whether a run in ``status`` may be queued again to continue from its last checkpoint
    (``advtui resume``, the dashboard's resume): any run but a finished one, which resumes
    only to train more epochs. The queue also refuses a run whose process is alive or that
    already has a queued or running train job: the status alone cannot say that."""
    return status != RunStatus.FINISHED or more_epochs
