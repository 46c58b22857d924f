"""Which executor runs the queue's jobs: the one table that knows every executor by name.

``launcher`` defines the ``Executor`` interface and the local one; a cluster executor lives in a
module of its own (``ray_executor``) that imports ``launcher``. Naming them here, above both,
keeps ``launcher`` free of any cluster module, so the two never import each other. A cluster
module is imported only when its row is used, so the local queue never loads Ray.

Everything the rest of the program would otherwise decide by an executor's name is in its row:
the words the ``--executor`` help texts use for it, how a job it placed is described for people,
the GPU sampler that covers its machines, and the check that its machines share the runs
directory. The scheduler, the CLI and the dashboard look these up here, never by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from advtui.core.errors import ConfigError
from advtui.jobs.launcher import Executor, LocalExecutor


@dataclass(frozen=True)
class ExecutorKind:
    """One row: how ``--executor NAME`` builds its executor, what the help texts call it, how a
    job it placed is reached again from the job's record (to stop it from another process) and
    described for people, and what a cluster needs besides (its GPU sampler, its storage check)."""

    build: Callable[[str | None, float, float], Executor]  # (address, GPUs per job, CPUs per job)
    summary: str  # where its jobs run, for --executor help texts: "processes here"
    gpus_summary: str  # whose GPUs `advtui gpus --executor NAME` shows: "this machine's GPUs"
    takes_address: bool = False  # whether --address means something to it
    address_help: str = ""  # what --address is to it (with takes_address)
    takes_shares: bool = False  # whether --gpus-per-job and --cpus-per-job mean something to it
    reattach: Callable[[dict[str, Any]], Executor] | None = None  # None: this machine's processes
    # How a job it placed is described, from the job's record: the scheduler's line when it starts
    # ('Ray node 10.0.0.5 (GPU 1)'; given the job and its math threads) and `advtui queue ls`'s
    # column ('ray 10.0.0.5 gpu 1'). None: the scheduler's own words for its GPU and CPU slots.
    describe_slot: Callable[[dict[str, Any], int], str] | None = None
    where: Callable[[dict[str, Any]], str] | None = None
    # ``GpuSampler``'s interface over every machine it places jobs on, given the executor and the
    # registry (for `advtui gpus` and the dashboard's GPU panel). None: this machine's GPUs.
    gpu_sampler: Callable[[Executor, Any], Any] | None = None
    # The machines that do not see the runs directory as this one does (empty: all do), checked
    # before a worker or dashboard places jobs. None: nothing to check (jobs run here).
    check_shared_runs: Callable[[Executor, Path], list[str]] | None = None


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


def _ray_gpus(job: dict[str, Any]) -> str:
    return ",".join(job.get("gpus") or [])


def _ray_slot(job: dict[str, Any], threads: int) -> str:
    gpus = _ray_gpus(job)
    return f"Ray node {job.get('node', '?')} ({f'GPU {gpus}' if gpus else f'{threads} CPU thread(s)'})"


def _ray_where(job: dict[str, Any]) -> str:
    gpus = _ray_gpus(job)
    return f"ray {job.get('node', '?')}" + (f" gpu {gpus}" if gpus else " cpu")


def _ray_gpu_sampler(executor: Executor, registry: Any) -> Any:
    from advtui.jobs.ray_executor import ClusterGpuSampler, RayExecutor

    assert isinstance(executor, RayExecutor)
    return ClusterGpuSampler(executor, registry)


def _ray_shared_runs(executor: Executor, root: Path) -> list[str]:
    from advtui.jobs.ray_executor import RayExecutor, check_shared_runs

    assert isinstance(executor, RayExecutor)
    return check_shared_runs(executor, root)


EXECUTORS: dict[str, ExecutorKind] = {
    "local": ExecutorKind(_local, summary="processes here", gpus_summary="this machine's GPUs"),
    "ray": ExecutorKind(
        _ray, summary="a Ray cluster", gpus_summary="every node of a Ray cluster",
        takes_address=True, takes_shares=True,
        address_help="Ray cluster address HOST:PORT (default $RAY_ADDRESS, else the cluster `ray start` runs here)",
        reattach=_ray_of_job, describe_slot=_ray_slot, where=_ray_where,
        gpu_sampler=_ray_gpu_sampler, check_shared_runs=_ray_shared_runs),
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


def kind_of_job(job: dict[str, Any]) -> ExecutorKind | None:
    """The row of the executor that started ``job`` (its record names it; older records, and
    queued jobs, are local); None for a name this program does not know."""
    return EXECUTORS.get(job.get("executor") or "local")


def kind_of(executor: Executor) -> ExecutorKind | None:
    """The row an executor was built from (None for one no row names, a test's own)."""
    return EXECUTORS.get(executor.name)


def executor_of_job(job: dict[str, Any]) -> Executor | None:
    """The executor that can stop ``job`` wherever it placed it (a cluster's actor), or None
    when it runs as a process of this machine."""
    kind = kind_of_job(job)
    return kind.reattach(job) if kind is not None and kind.reattach is not None else None


# -- what the options' help texts say, from the rows ---------------------------------------------
def _names(rows: list[str]) -> str:
    return ", ".join(rows[:-1]) + " or " + rows[-1] if len(rows) > 1 else "".join(rows)


def executor_help(gpus: bool = False) -> str:
    """Each executor's name and summary: 'local (processes here) or ray (a Ray cluster)'; with
    ``gpus``, whose GPUs it shows: 'local (this machine's GPUs) or ray (every node of ...)'."""
    return _names([f"{name} ({kind.gpus_summary if gpus else kind.summary})" for name, kind in EXECUTORS.items()])


def address_help() -> str:
    """--address's help: what it is to each executor that takes one."""
    parts = [f"{kind.address_help}, with --executor {name}" for name, kind in EXECUTORS.items() if kind.takes_address]
    return "; ".join(parts) + "." if parts else "A cluster's address (no executor takes one)."


def shares_executors() -> str:
    """The executors --gpus-per-job and --cpus-per-job mean something to: 'ray'."""
    return _names([name for name, kind in EXECUTORS.items() if kind.takes_shares]) or "none"


# -- what a cluster needs besides ---------------------------------------------------------------
def cluster_gpu_sampler(executor: Executor, registry: Any) -> Any | None:
    """The sampler over every machine ``executor`` places jobs on, or None: this machine's GPUs."""
    kind = kind_of(executor)
    return kind.gpu_sampler(executor, registry) if kind is not None and kind.gpu_sampler is not None else None


def check_runs_dir_shared(executor: Executor, root: Path) -> None:
    """Every machine the executor places jobs on must see the runs directory (shared storage):
    jobs write their records there. A ConfigError names the ones that do not."""
    kind = kind_of(executor)
    if kind is None or kind.check_shared_runs is None:
        return
    missing = kind.check_shared_runs(executor, root)
    if missing:
        raise ConfigError(f"the runs directory {root} is not shared with {executor.title} node(s) "
                          f"{', '.join(missing)}: put it on storage every node mounts at the same path")
