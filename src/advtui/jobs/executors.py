"""Which executor runs the queue's jobs: the one table that knows every executor by name.

``launcher`` defines the ``Executor`` interface and the local one; a cluster executor lives in a
module of its own (``ray_executor``) that imports ``launcher``. Naming them here, above both,
keeps ``launcher`` free of any cluster module, so the two never import each other. A cluster
module is imported only when its row is used, so the local queue never loads Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from advtui.core.errors import ConfigError
from advtui.jobs.launcher import Executor, LocalExecutor


@dataclass(frozen=True)
class ExecutorKind:
    """One row: how ``--executor NAME`` builds its executor, and how a job it placed is reached
    again from the job's record (to stop it from another process)."""

    build: Callable[[str | None, float, float], Executor]  # (address, GPUs per job, CPUs per job)
    takes_address: bool = False  # whether --address means something to it
    reattach: Callable[[dict[str, Any]], Executor] | None = None  # None: this machine's processes


def _local(address: str | None, gpus_per_job: float, cpus_per_job: float) -> Executor:
    return LocalExecutor()


def _ray(address: str | None, gpus_per_job: float, cpus_per_job: float) -> Executor:
    from advtui.jobs.ray_executor import RayExecutor, RayResources

    executor = RayExecutor(address, RayResources(cpus=cpus_per_job, gpus=gpus_per_job))
    executor.ray  # connect
    return executor


def _ray_of_job(job: dict[str, Any]) -> Executor:
    from advtui.jobs.ray_executor import RayExecutor

    return RayExecutor(job.get("ray_address"))


EXECUTORS: dict[str, ExecutorKind] = {
    "local": ExecutorKind(_local),
    "ray": ExecutorKind(_ray, takes_address=True, reattach=_ray_of_job),
}


def build_executor(name: str, address: str | None = None, gpus_per_job: float = 1.0, cpus_per_job: float = 1.0
                   ) -> Executor:
    """The executor a ``--executor`` option names: ``local`` processes, or a Ray cluster at
    ``address`` (connected now, so a wrong address or a missing Ray is one clear error before
    anything runs)."""
    kind = EXECUTORS.get(name)
    if kind is None:
        raise ConfigError(f"--executor must be {' or '.join(EXECUTORS)}, got {name!r}")
    if address is not None and not kind.takes_address:
        with_address = " or ".join(n for n, k in EXECUTORS.items() if k.takes_address)
        raise ConfigError(f"--address is for --executor {with_address}")
    return kind.build(address, gpus_per_job, cpus_per_job)


def executor_of_job(job: dict[str, Any]) -> Executor | None:
    """The executor that can stop ``job`` wherever it placed it (a cluster's actor), or None
    when it runs as a process of this machine."""
    kind = EXECUTORS.get(job.get("executor") or "local")
    return kind.reattach(job) if kind is not None and kind.reattach is not None else None
