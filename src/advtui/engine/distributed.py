"""One run on several processes: PyTorch DistributedDataParallel, launched by torchrun.

``advtui run --nproc N`` re-executes itself under ``torch.distributed.run`` (torchrun), which
starts N ranks with RANK/WORLD_SIZE/LOCAL_RANK in their environment. Each rank:

- takes an equal, contiguous share of every global batch (the global batch is ``--batch-size``,
  drawn in the same order on every rank, so the run sees the batches a single process would);
- runs the inner maximization on its share, with its own random stream (seed + rank);
- trains the classifier through ``DistributedDataParallel`` (gradients averaged over ranks) and
  averages a learned optimizer's gradients the same way (``average_grads``), so one step
  equals a single process's step on the whole batch, up to float rounding;
- agrees with the others on stopping (a SIGTERM reaches every rank, maybe at different batches):
  they stop together at a log point, after rank 0 wrote the checkpoint.

Rank 0 alone writes events, checkpoints and the registry. Its checkpoint carries every rank's
random state, so a resumed run continues each rank's stream exactly. NCCL on GPUs, gloo on the
CPU (https://pytorch.org/docs/stable/distributed.html#which-backend-to-use).
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# How long the ranks wait for each other once training has ended (rank 0 writes the final
# checkpoint meanwhile), and for the process group to tear down: a rank that hangs there must
# not keep the run's processes alive, nor let its record say the run finished.
FINAL_BARRIER_TIMEOUT_S = 120.0
CLOSE_TIMEOUT_S = 30.0

RANK_ENV = "RANK"
WORLD_ENV = "WORLD_SIZE"
LOCAL_RANK_ENV = "LOCAL_RANK"


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls) -> "Ranks":
        """What torchrun set; a process it did not start is rank 0 of 1."""
        if WORLD_ENV not in os.environ:
            return cls()
        return cls(int(os.environ[RANK_ENV]), int(os.environ[WORLD_ENV]), int(os.environ.get(LOCAL_RANK_ENV, 0)))

    # -- set up and tear down ------------------------------------------------------------------
    def device(self, device: torch.device) -> torch.device:
        """Each rank on its own GPU (torchrun's LOCAL_RANK); the CPU stays the CPU."""
        if device.type == "cuda" and self.distributed:
            return torch.device("cuda", self.local_rank)
        return device

    def init(self, device: torch.device) -> None:
        if not self.distributed or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)

    def close(self) -> bool:
        """Tear the process group down; False if that did not end within CLOSE_TIMEOUT_S."""
        if self.distributed and dist.is_initialized():
            return _within(dist.destroy_process_group, CLOSE_TIMEOUT_S)
        return True

    def finish(self) -> bool:
        """Every rank at the end of training, within FINAL_BARRIER_TIMEOUT_S; False if one
        did not arrive (it hangs, or died without the group noticing)."""
        if not self.distributed or not dist.is_initialized():
            return True
        if dist.get_backend() == "nccl":  # the barrier's thread must name this rank's GPU
            device = torch.cuda.current_device()
            return _within(lambda: dist.barrier(device_ids=[device]), FINAL_BARRIER_TIMEOUT_S)
        return _within(dist.barrier, FINAL_BARRIER_TIMEOUT_S)

    # -- collectives (no-ops on one process) ---------------------------------------------------
    def _tensor(self, value: Any, device: torch.device) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.float64 if device.type == "cpu" else torch.float32,
                               device=device).clone()

    def mean(self, value: Any, device: torch.device) -> torch.Tensor:
        if not self.distributed:
            return value
        t = self._tensor(value, device)
        dist.all_reduce(t)
        return t / self.world

    def total(self, value: Any, device: torch.device) -> torch.Tensor:
        if not self.distributed:
            return value
        t = self._tensor(value, device)
        dist.all_reduce(t)
        return t

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if it is True on any rank."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def average_grads(self, params: list[torch.Tensor]) -> None:
        """Average the ``.grad`` of ``params`` over the ranks, in place (as DDP does)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()

    def from_main(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous, equal share of a global batch."""
        if not self.distributed:
            return x
        size = len(x) // self.world
        return x[self.rank * size: (self.rank + 1) * size]


def _within(call, timeout_s: float) -> bool:
    """``call()`` on a daemon thread; whether it returned within ``timeout_s``. A collective that
    never returns cannot be interrupted: its thread is left behind, and the caller leaves
    with ``abandon``."""
    done = threading.Event()

    def run() -> None:
        try:
            call()
        finally:
            done.set()

    threading.Thread(target=run, name=f"advtui-{getattr(call, '__name__', 'collective')}", daemon=True).start()
    return done.wait(timeout_s)


def abandon(message: str, code: int = 1) -> None:
    """Leave this rank now, with ``message`` on stderr: a collective thread still waits on a rank
    that hangs, and an ordinary exit would wait on it too. torchrun then stops the other ranks."""
    if message:
        print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)


class NullEvents:
    """The events writer of ranks other than 0: they compute what rank 0 writes."""

    path = None

    def emit(self, kind: str, **fields: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "NullEvents":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def under_torchrun() -> bool:
    return WORLD_ENV in os.environ


def torchrun_argv(nproc: int, argv: list[str]) -> list[str]:
    """This command again under torchrun with ``nproc`` ranks on this machine. ``--standalone``
    gives the ranks a private rendezvous on a free local port. ``--nproc`` itself is left out
    (torchrun's parser would take it for its own --nproc-per-node); each rank reads the count
    from WORLD_SIZE."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "advtui", *without_nproc(argv)]


def without_nproc(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def exec_under_torchrun(nproc: int, argv: list[str]) -> None:
    """Replace this process with torchrun running ``advtui ARGV`` on ``nproc`` ranks: the pid
    the scheduler recorded stays the run's, and a SIGTERM to its process group reaches every rank.
    The ranks talk over loopback (one machine), for gloo and NCCL's bootstrap alike."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, torchrun_argv(nproc, argv))
