"""The queue on a Ray cluster: each job is a Ray actor that runs the job's process on its node.

``RayExecutor`` implements the ``Executor`` interface. For every job it creates a detached actor
named ``advtui-job-<job id>`` that asks Ray for the job's resources (``cpus`` and ``gpus``; a
fraction of a GPU lets several small runs share one, and Ray's GPU fractions are logical only:
capping memory is the job's own business). Ray picks the node; the actor starts the same
``advtui run --run-id ...`` / ``advtui eval ...`` process there that the local executor would,
in its own session, with ``CUDA_VISIBLE_DEVICES`` set to the GPUs Ray gave the actor. The actor
is detached so a job outlives the scheduler that placed it, as a local job does; the next
scheduler finds it again by name.

Stopping goes through the actor: ``ray.cancel``/``ray.kill`` would end the actor, but a child
in its own session escapes Ray's clean-up, so the actor stops the process group itself
(SIGTERM, the run checkpoints, SIGKILL after the grace period), then the actor is released.
If the actor's worker process dies, the job's process is killed with it (``PR_SET_PDEATHSIG``)
and the job ends ``failed`` with the reason Ray gives.

The runs directory must be the same folder on every node (shared storage): ``check_shared_runs``
asks each node whether it sees a file written here.

Nothing here imports torch, and ``ray`` is imported only when an executor connects, so the CLI
and dashboard start without it (``pip install -e '.[ray]'`` adds it).
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advtui.core.format import plain_line
from advtui.core.errors import ConfigError
from advtui.jobs.launcher import (
    DEFAULT_GRACE_S, ExitStatus, Executor, LaunchSpec, ProcessHandle, spawn_logged, stop_process,
)

NAMESPACE = "advtui"
JOB_ACTOR_PREFIX = "advtui-job-"
PLACEMENT_TIMEOUT_S = 120.0  # the actor must be placed and its process started within this
CALL_TIMEOUT_S = 30.0
INSTALL_HINT = "Ray is not installed: `pip install -e '.[ray]'` (or `pip install ray`) adds it"
_PR_SET_PDEATHSIG = 1


def import_ray():
    """The ``ray`` module, or a one-line ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


def connect(address: str | None) -> Any:
    """Connect this process to the Ray cluster at ``address`` (default ``$RAY_ADDRESS``, else the
    cluster ``ray start`` left on this machine); never starts a private cluster, which would die
    with this process and take its jobs with it."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    target = address or os.environ.get("RAY_ADDRESS") or "auto"
    # Ray's core logs routine warnings (how it found this node's address) on stderr, into
    # every command's output: keep its errors only.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    try:
        ray.init(address=target, namespace=NAMESPACE, log_to_driver=False, configure_logging=False,
                 logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = plain_line(str(exc)) or type(exc).__name__
        raise ConfigError(f"cannot reach a Ray cluster at {target} ({first}): start one with "
                          f"`ray start --head` and pass --address HOST:PORT") from None
    return ray


def cluster_address() -> str | None:
    """The GCS address of the cluster this process is connected to."""
    ray = import_ray()
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:
        return None


def _die_with_parent() -> None:
    """In the child before exec: if the actor's worker process dies, the kernel kills this job
    too, so no training keeps running (and holding a GPU) unseen by Ray."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the job then outlives a dead actor
        pass


class JobProcess:
    """The actor body: one job's process on the node Ray chose (methods are quick, except
    ``stop``, which waits up to its grace period)."""

    def __init__(self) -> None:
        self._child: subprocess.Popen | None = None
        self._create_time = 0.0

    def start(self, argv: list[str], log_path: str, env: dict[str, str], cwd: str | None) -> dict[str, Any]:
        import ray

        gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        child_env = {**env,
                     # The GPUs Ray gave this actor, in NVML's (PCI bus) order as Ray counts them.
                     "CUDA_VISIBLE_DEVICES": ",".join(gpu_ids), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        node_ip = ray.util.get_node_ip_address()
        self._child, self._create_time = spawn_logged(
            argv, Path(log_path), child_env, cwd, preexec_fn=_die_with_parent,
            launched_by=f" by Ray on {socket.gethostname()} ({node_ip}, GPUs {','.join(gpu_ids) or 'none'})")
        return {"pid": self._child.pid, "create_time": self._create_time, "host": socket.gethostname(),
                "node_ip": node_ip, "node_id": ray.get_runtime_context().get_node_id(), "gpus": gpu_ids,
                "actor_pid": os.getpid()}

    def poll(self) -> int | None:
        return None if self._child is None else self._child.poll()

    def stop(self, grace_s: float) -> str:
        if self._child is None:
            return "gone"
        child = self._child
        return stop_process(child.pid, self._create_time, grace_s, reap=child.poll)


@dataclass
class RayResources:
    """What each job asks Ray for."""

    cpus: float = 1.0
    gpus: float = 0.0  # per job on a cluster with GPUs; a fraction lets jobs share one GPU

    def validate(self) -> "RayResources":
        if self.cpus <= 0:
            raise ConfigError(f"--cpus-per-job must be positive, got {self.cpus:g}")
        if self.gpus < 0 or (self.gpus > 1 and not float(self.gpus).is_integer()):
            raise ConfigError(f"--gpus-per-job must be a fraction in (0, 1] or a whole number, got {self.gpus:g}")
        return self


class RayExecutor(Executor):
    """Jobs as detached Ray actors on a cluster. ``address`` is the cluster's GCS address
    (HOST:PORT), None for ``$RAY_ADDRESS`` or the cluster ``ray start`` runs on this machine."""

    name = "ray"
    title = "Ray"
    places_jobs = True  # Ray chooses the node: the scheduler asks cluster_slots(), not its own GPUs

    def __init__(self, address: str | None = None, resources: RayResources | None = None):
        self.address = address
        self.resources = (resources or RayResources()).validate()
        self._ray = None
        self._actors: dict[str, Any] = {}  # actor name -> handle

    # -- the connection -----------------------------------------------------------------------
    @property
    def ray(self):
        if self._ray is None:
            self._ray = connect(self.address)
            self.address = cluster_address() or self.address
        return self._ray

    def describe(self) -> str:
        ray = self.ray
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        total = ray.cluster_resources()
        gpus = total.get("GPU", 0.0)
        return (f"Ray cluster at {self.address}: {len(nodes)} node(s), {total.get('CPU', 0):g} CPUs, "
                f"{gpus:g} GPUs; each job asks for {self.resources.cpus:g} CPU(s)"
                + (f" and {self.resources.gpus:g} GPU" if gpus else ""))

    # -- what fits now ------------------------------------------------------------------------
    def cluster_slots(self, running_jobs: list[dict]) -> "RaySlots":
        """The resources free for this scheduling step: the cluster's free CPUs and GPUs, less
        those held by our running jobs whose actors Ray may not have counted yet."""
        ray = self.ray
        total, free = ray.cluster_resources(), ray.available_resources()
        ours = [j for j in running_jobs if (j.get("slot") or {}).get("ray")]
        held_cpus = sum(float(j["slot"]["ray"].get("cpus", 0)) for j in ours)
        held_gpus = sum(float(j["slot"]["ray"].get("gpus", 0)) for j in ours)
        cpus = min(free.get("CPU", 0.0), total.get("CPU", 0.0) - held_cpus)
        gpus = min(free.get("GPU", 0.0), total.get("GPU", 0.0) - held_gpus)
        return RaySlots(self.resources, cpus, gpus, total.get("CPU", 0.0), total.get("GPU", 0.0))

    # -- the Executor interface ---------------------------------------------------------------
    def start(self, spec: LaunchSpec) -> ProcessHandle:
        ray = self.ray
        wanted = spec.resources or {"cpus": self.resources.cpus, "gpus": 0.0}
        name = JOB_ACTOR_PREFIX + (spec.job_id or secrets.token_hex(4))
        actor_class = ray.remote(JobProcess)
        actor = actor_class.options(
            name=name, namespace=NAMESPACE, lifetime="detached", max_restarts=0,
            num_cpus=float(wanted.get("cpus", 0.0)), num_gpus=float(wanted.get("gpus", 0.0)),
        ).remote()
        try:
            info = ray.get(actor.start.remote([str(a) for a in spec.argv], str(spec.log_path), dict(spec.env),
                                              str(spec.cwd) if spec.cwd else None), timeout=PLACEMENT_TIMEOUT_S)
        except Exception as exc:
            ray.kill(actor, no_restart=True)
            raise OSError(f"Ray could not start it ({_first_line(exc)})") from None
        self._actors[name] = actor
        return ProcessHandle(info["pid"], info["create_time"], info["host"], spec.log_path, self.name, ref=name,
                             placement={"node": info["node_ip"], "node_id": info["node_id"], "gpus": info["gpus"],
                                        "ray_address": self.address, "actor": name,
                                        "actor_pid": info["actor_pid"]})

    def poll(self, handle: ProcessHandle) -> ExitStatus | None:
        ray = self.ray
        actor = self._actor(handle.ref)
        if actor is None:
            return ExitStatus(None, reason=f"its Ray actor {handle.ref} is gone")
        try:
            code = ray.get(actor.poll.remote(), timeout=CALL_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            return None  # a busy node: ask again next step
        except ray.exceptions.RayActorError as exc:
            self._forget(handle.ref)
            return ExitStatus(None, reason=f"its Ray actor died ({_first_line(exc)})")
        if code is None:
            return None
        self._release(handle.ref)
        return ExitStatus(code)

    def stop(self, handle: ProcessHandle, grace_s: float = DEFAULT_GRACE_S) -> str:
        ray = self.ray
        actor = self._actor(handle.ref)
        if actor is None:
            return "gone"
        try:
            outcome = ray.get(actor.stop.remote(grace_s), timeout=grace_s + CALL_TIMEOUT_S)
        except ray.exceptions.RayActorError:
            outcome = "gone"  # the actor died, and its process with it
        self._release(handle.ref)
        return outcome

    def attach(self, pid: int, create_time: float | None, log_path: Path | None = None,
               job: dict | None = None) -> ProcessHandle | None:
        name = (job or {}).get("actor") or (JOB_ACTOR_PREFIX + job["id"] if job else None)
        actor = self._actor(name)
        if actor is None:
            return None
        try:
            self.ray.get(actor.poll.remote(), timeout=CALL_TIMEOUT_S)
        except Exception:  # dead, or unreachable: the caller records the job as ended
            return None
        return ProcessHandle(pid, create_time or 0.0, (job or {}).get("host") or "?", log_path, self.name, ref=name)

    def why_lost(self, job: dict) -> str | None:
        return f"its Ray actor {job.get('actor') or JOB_ACTOR_PREFIX + job['id']} is gone"

    # -- actors -------------------------------------------------------------------------------
    def _actor(self, name: str | None):
        if not name:
            return None
        if name in self._actors:
            return self._actors[name]
        try:
            actor = self.ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:  # no such actor (it ended, or never existed)
            return None
        self._actors[name] = actor
        return actor

    def _forget(self, name: str | None) -> None:
        self._actors.pop(name or "", None)

    def _release(self, name: str | None) -> None:
        """The job's process has ended: end its actor so Ray frees the job's CPUs and GPUs."""
        actor = self._actors.pop(name or "", None)
        if actor is not None:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:
                pass


class RaySlots:
    """Which queued jobs the cluster can take this step (same shape as the local slots)."""

    def __init__(self, resources: RayResources, cpus: float, gpus: float, total_cpus: float, total_gpus: float):
        self.resources, self.cpus, self.gpus = resources, cpus, gpus
        self.total_cpus, self.total_gpus = total_cpus, total_gpus

    def threads(self) -> int:
        return max(1, int(self.resources.cpus))

    def pick(self, job: dict) -> tuple[dict | None, str | None]:
        """(slot, None) to start now; (None, None) to wait; (None, reason) if the cluster never can."""
        needs = job.get("needs", "auto")
        if job.get("gpu_index") is not None:
            return None, f"it asks for GPU {job['gpu_index']}, but on Ray the cluster picks the GPU (use --device cuda)"
        want_gpu = needs == "gpu" or (needs == "auto" and self.total_gpus > 0)
        nproc = int(job.get("nproc") or 1)
        per_process = self.resources.gpus or 1.0
        if nproc > 1:  # one whole GPU per DDP process: they cannot share one device index
            per_process = max(1.0, per_process)
        gpus = per_process * nproc if want_gpu else 0.0
        cpus = self.resources.cpus * nproc
        if want_gpu and self.total_gpus <= 0:
            return None, "it needs a GPU, but the Ray cluster has none"
        if gpus > self.total_gpus or cpus > self.total_cpus:
            return None, (f"it asks for {cpus:g} CPU(s) and {gpus:g} GPU(s), more than the "
                          f"Ray cluster has ({self.total_cpus:g} CPUs, {self.total_gpus:g} GPUs)")
        if cpus > self.cpus + 1e-9 or gpus > self.gpus + 1e-9:
            return None, None
        return {"ray": {"cpus": cpus, "gpus": gpus}}, None

    def take(self, slot: dict) -> None:
        wanted = slot.get("ray") or {}
        self.cpus -= float(wanted.get("cpus", 0))
        self.gpus -= float(wanted.get("gpus", 0))


def check_shared_runs(executor: RayExecutor, runs_root: Path, timeout_s: float = 60.0) -> list[str]:
    """The alive nodes that do not see ``runs_root`` as this machine does (empty: all do).

    Writes a probe file here and asks a zero-CPU task pinned to each node to read it back."""
    ray = executor.ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = secrets.token_hex(8)
    probe = Path(runs_root) / f".ray-probe-{token}"
    probe.write_text(token)
    try:
        reader = ray.remote(num_cpus=0)(_read_probe)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [reader.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(probe)) for n in nodes]
        missing = []
        for node, ref in zip(nodes, refs):
            try:
                seen = ray.get(ref, timeout=timeout_s)
            except Exception as exc:
                seen = f"unreachable ({_first_line(exc)})"
            if seen != token:
                missing.append(f"{node.get('NodeManagerHostname', '?')} ({node.get('NodeManagerAddress', '?')})")
        return missing
    finally:
        probe.unlink(missing_ok=True)


def _read_probe(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _first_line(exc: BaseException) -> str:
    return plain_line(str(exc), limit=200) or type(exc).__name__


# -- GPUs of every node ------------------------------------------------------------------------------
GPU_SAMPLER_PREFIX = "advtui-gpus-"


class NodeGpus:
    """The actor body on one node: that node's NVML sampler (``GpuSampler``, which degrades to
    a one-line reason where the node has no NVIDIA GPU), mapping GPU processes to our runs."""

    def __init__(self) -> None:
        from advtui.jobs.monitor import GpuSampler

        self._sampler = GpuSampler()

    def sample(self, owners: dict) -> Any:
        return self._sampler.sample(owners)


class ClusterGpuSampler:
    """``GpuSampler``'s interface over a Ray cluster: one small ``NodeGpus`` actor per node
    (no CPU reserved, pinned to its node), their GPUs merged into one snapshot. Each GPU's
    name says its node; a node without NVIDIA GPUs is named in ``message``. The actors end
    with this process."""

    def __init__(self, executor: RayExecutor, registry=None, history: int = 120):
        self.executor, self.registry = executor, registry
        self._actors: dict[str, Any] = {}  # node id -> actor
        self._history_len = history
        self._history: dict[int, Any] = {}

    def _node_actors(self) -> list[tuple[dict, Any]]:
        ray = self.executor.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        found = []
        for node in (n for n in ray.nodes() if n.get("Alive")):
            actor = self._actors.get(node["NodeID"])
            if actor is None:
                actor = ray.remote(NodeGpus).options(
                    num_cpus=0, max_restarts=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote()
                self._actors[node["NodeID"]] = actor
            found.append((node, actor))
        return found

    def sample(self, owners: dict | None = None):
        from collections import deque

        from advtui.jobs.monitor import GpuSnapshot

        ray = self.executor.ray
        by_node = process_owners_by_node(self.registry) if self.registry is not None else {}
        nodes = self._node_actors()
        refs = [actor.sample.remote(by_node.get(node["NodeManagerAddress"], {})) for node, actor in nodes]
        now, gpus, without = time.time(), [], []
        for (node, _), ref in zip(nodes, refs):
            where = node.get("NodeManagerAddress", "?")
            try:
                snapshot = ray.get(ref, timeout=CALL_TIMEOUT_S)
            except Exception as exc:
                self._actors.pop(node["NodeID"], None)
                without.append(f"node {where}: no answer ({_first_line(exc)})")
                continue
            if not snapshot.gpus:
                without.append(f"no NVIDIA GPU on node {where} ({snapshot.message})")
            for gpu in snapshot.gpus:
                gpu.name = f"{where} #{gpu.index} {gpu.name}"
                gpu.index = len(gpus)
                gpus.append(gpu)
        for gpu in gpus:
            ring = self._history.setdefault(gpu.index, deque(maxlen=self._history_len))
            ring.append((now, gpu.utilization, gpu.memory_percent))
        message = f"{len(gpus)} NVIDIA GPU{'' if len(gpus) == 1 else 's'} on {len(nodes)} Ray node(s)"
        if without:
            message = "; ".join([message] + without) if gpus else "; ".join(without)
        return GpuSnapshot(now, bool(gpus), message, None, gpus)

    def history(self, index: int) -> dict[str, list]:
        from advtui.jobs.monitor import NA

        ring = self._history.get(index, ())
        return {"time": [t for t, _, _ in ring],
                "utilization": [u if u != NA else None for _, u, _ in ring],
                "memory": [m if m != NA else None for _, _, m in ring]}

    def close(self) -> None:
        if self.executor._ray is None:
            return
        for actor in self._actors.values():
            try:
                self.executor.ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self._actors.clear()


def process_owners_by_node(registry) -> dict[str, dict]:
    """node IP -> {pid: ProcessOwner} for the running jobs Ray placed (pids are per node)."""
    from advtui.jobs.monitor import ProcessOwner
    from advtui.store.registry import JOBS

    owners: dict[str, dict] = {}
    if not registry.path.exists():
        return owners
    for job in registry.search(JOBS, status="running"):
        if job.get("node") and job.get("pid") and job.get("run_id"):
            owners.setdefault(job["node"], {})[int(job["pid"])] = ProcessOwner(
                job["run_id"], job["id"], job.get("kind", "train"))
    return owners
