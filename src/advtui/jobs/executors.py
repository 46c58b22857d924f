"""Which executor runs the queue's jobs: the one place that knows every executor by name.

``launcher`` defines the ``Executor`` interface and the local one; a cluster executor lives in a
module of its own (``ray_executor``) that imports ``launcher``. Naming them here, above both,
keeps ``launcher`` free of any cluster module, so the two never import each other.
"""

from __future__ import annotations

from advtui.jobs.launcher import Executor, LocalExecutor


def build_executor(name: str, address: str | None = None, gpus_per_job: float = 1.0, cpus_per_job: float = 1.0
                   ) -> Executor:
    """The executor a ``--executor`` option names: ``local`` processes, or a Ray cluster at
    ``address`` (connected now, so a wrong address or a missing Ray is one clear error before
    anything runs)."""
    from advtui.core.errors import ConfigError

    if name == "local":
        if address is not None:
            raise ConfigError("--address is for --executor ray")
        return LocalExecutor()
    if name != "ray":
        raise ConfigError(f"--executor must be local or ray, got {name!r}")
    from advtui.jobs.ray_executor import RayExecutor, RayResources

    executor = RayExecutor(address, RayResources(cpus=cpus_per_job, gpus=gpus_per_job))
    executor.ray  # connect
    return executor
