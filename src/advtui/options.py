"""The checks of every command's options, in one place, made before anything is written.

A training run's options are a ``RunConfig`` (``advtui.core.config``: ``run``, ``queue train``, the
dashboard's new-run form, and the epochs ``resume`` extends a run to). Everything else a command
takes (an evaluation's examples and radius, a worker's slots, a kill's grace, a refresh
interval, a filter, a device, a seed list) is checked here, by ``advtui eval``, ``queue eval``,
the dashboard's evaluation form and the queue functions below them alike. A bad value is one
``ConfigError`` line that names the option and what it takes; NaN and infinities are always
refused.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from advtui.core import ranges
from advtui.core.config import INT_RANGES
from advtui.core.ranges import MAX_INT
from advtui.core.errors import ConfigError

MAX_SEED = INT_RANGES["seed"][1]  # a run's seed: torch.manual_seed takes 64-bit seeds
MAX_SEEDS = 1000  # runs one `queue train --seeds` may queue
MAX_GRACE_S = 24 * 3600.0
MAX_INTERVAL_S = 24 * 3600.0
MAX_SLOTS = 1024
MAX_THREADS = 4096


def check_int(flag: str, value: Any, low: int, high: int) -> int:
    """``value`` if it is an integer in [low, high]; else one line naming ``flag``."""
    return ranges.check_int(flag, value, low, high, noun="a whole number", names_ceiling=False)


def check_float(flag: str, value: Any, low: float, high: float, *, open_low: bool = False,
                open_high: bool = False, unit: str = "") -> float:
    """``value`` if it is a finite number in the interval; else one line naming ``flag``."""
    return ranges.check_float(flag, value, low, high, open_low=open_low, open_high=open_high, unit=unit)


def check_choice(flag: str, value: str | None, choices: Iterable[str]) -> str | None:
    """``value`` (None: not given) if it is one of ``choices``; else one line listing them."""
    choices = tuple(choices)
    if value is not None and value not in choices:
        raise ConfigError(f"unknown {flag} {value!r}; choose one of: {', '.join(choices)}")
    return value


# -- evaluation (eval, queue eval, the dashboard's evaluation form, auto-evals) ------------------
def check_eval_options(*, limit: Any = None, batch_size: Any = None, eps: Any = None, step_size: Any = None,
                       seed: Any = None) -> None:
    """The options of an evaluation, None meaning not given (its default applies)."""
    if limit is not None:
        check_int("--limit", limit, 1, MAX_INT)
    if batch_size is not None:
        check_int("--batch-size", batch_size, 1, MAX_INT)
    if eps is not None:
        check_float("--eps", eps, 0.0, 1.0, unit=" (inputs are in [0, 1])")
    if step_size is not None:
        check_float("--step-size", step_size, 0.0, 1.0, open_low=True)
    if seed is not None:
        check_int("--seed", seed, 0, MAX_SEED)


_DEVICE = re.compile(r"auto|cpu(:0)?|cuda(:\d+)?")


def check_device(device: str) -> str:
    """A device as torch names it: auto, cpu (cpu:0 is the same), cuda or cuda:N."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return "cpu" if device == "cpu:0" else device


# -- training a run further ---------------------------------------------------------------------
def check_epochs(epochs: Any) -> int:
    """The epochs a run trains to: the same bounds as ``advtui run --epochs``."""
    low, high = INT_RANGES["epochs"]
    return check_int("--epochs", epochs, low, high)


def check_priority(priority: Any) -> int:
    return check_int("--priority", priority, -MAX_INT, MAX_INT)


def expand_seeds(text: str) -> list[int]:
    """'0,1,2' or '0-4' (or a mix) -> [0, 1, 2, ...] in order, without repeats. At most
    MAX_SEEDS seeds: the count is known from the ranges before any is expanded, so an absurd
    range is one line at once rather than minutes of work."""
    ranges: list[tuple[int, int]] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            low, dash, high = part.partition("-") if not part.startswith("-") else (part, "", "")
            ranges.append((int(low), int(high)) if dash else (int(part), int(part)))
    except ValueError:
        raise ConfigError(f"--seeds must be integers like 0,1,2 or 0-4, got {text!r}") from None
    if not ranges:
        raise ConfigError(f"--seeds must name at least one seed, got {text!r}")
    for low, high in ranges:
        for seed in (low, high):
            check_int("--seeds", seed, 0, MAX_SEED)
        if high < low:
            raise ConfigError(f"--seeds range {low}-{high} runs backwards: write {high}-{low}")
    count = _distinct_count(ranges)
    if count > MAX_SEEDS:
        raise ConfigError(f"--seeds names {count} seeds; at most {MAX_SEEDS} runs are queued at once")
    seen: set[int] = set()
    seeds: list[int] = []
    for low, high in ranges:
        for seed in range(low, high + 1):
            if seed not in seen:
                seen.add(seed)
                seeds.append(seed)
    return seeds


def _distinct_count(ranges: list[tuple[int, int]]) -> int:
    """How many integers the inclusive ranges cover together (overlaps counted once)."""
    count, reached = 0, None
    for low, high in sorted(ranges):
        if reached is not None:
            low = max(low, reached + 1)
        if high >= low:
            count += high - low + 1
        reached = high if reached is None else max(reached, high)
    return count


# -- stopping and watching ------------------------------------------------------------------------
def check_grace(grace: Any) -> float:
    """Seconds between SIGTERM and SIGKILL: 0 (SIGKILL at once) up to a day."""
    return check_float("--grace", grace, 0.0, MAX_GRACE_S, unit=" seconds")


def check_interval(flag: str, interval: Any) -> float:
    """A refresh or poll interval: more than 0, at most a day."""
    return check_float(flag, interval, 0.0, MAX_INTERVAL_S, open_low=True, unit=" seconds")


def check_worker_options(*, cpu_slots: Any, slots_per_gpu: Any, min_free_memory: Any, max_utilization: Any,
                         threads: Any, poll: Any, gpus_per_job: Any, cpus_per_job: Any) -> None:
    """``advtui worker``'s options. A CPU slot is where every job runs on a machine without a GPU,
    so zero CPU slots would leave such a machine nowhere to run anything."""
    check_int("--cpu-slots", cpu_slots, 1, MAX_SLOTS)
    check_int("--slots-per-gpu", slots_per_gpu, 1, MAX_SLOTS)
    check_float("--min-free-memory", min_free_memory, 0.0, 2.0**40, unit=" MiB")
    check_float("--max-utilization", max_utilization, 0.0, 100.0, unit=" %")
    if threads is not None:
        check_int("--threads", threads, 1, MAX_THREADS)
    check_interval("--poll", poll)
    check_ray_shares(gpus_per_job, cpus_per_job)


def check_ray_shares(gpus_per_job: Any, cpus_per_job: Any) -> None:
    """What each job asks Ray for: a fraction of a GPU shares one, 0 asks for none."""
    check_float("--gpus-per-job", gpus_per_job, 0.0, MAX_SLOTS)
    check_float("--cpus-per-job", cpus_per_job, 0.0, MAX_SLOTS)


# -- the paper's analyses and reproductions -----------------------------------------------------------
# A landscape costs grid^2 forward passes per example: 1001 points a side is already a million.
MAX_GRID = 1001
# What one grid point holds while a landscape is computed: its two coefficients (float32 and
# float64 copies), the meshgrid's two float64 values and the float64 sum of its losses.
LANDSCAPE_BYTES_PER_POINT = 2 * 4 + 2 * 8 + 2 * 8 + 8
# Per example of a batch of grid points: the perturbed image and the two scaled directions
# that build it (float32), before the model's own activations.
LANDSCAPE_IMAGE_COPIES = 3


def check_analysis_options(*, limit: Any = None, batch_size: Any = None, eps: Any = None, seed: Any = None,
                           grid: Any = None, span: Any = None) -> None:
    """``advtui analyze trajectories|landscape``'s options (None: not given)."""
    check_eval_options(limit=limit, batch_size=batch_size, eps=eps, seed=seed)
    if grid is not None:
        check_int("--grid", grid, 2, MAX_GRID)
    if span is not None:
        check_float("--span", span, 0.0, 1.0, open_low=True)


def check_landscape_memory(grid: int, batch_size: int, example_numel: int, gpu_free: int | None = None) -> None:
    """The arrays a landscape of ``grid`` x ``grid`` points allocates, against the memory free
    (the GPU's too, with ``gpu_free`` bytes, when it runs on one)."""
    points = grid * grid
    needed = points * LANDSCAPE_BYTES_PER_POINT + min(batch_size, points) * example_numel * 4 * LANDSCAPE_IMAGE_COPIES
    check_memory("--grid", grid, needed)
    if gpu_free is not None:
        check_memory("--grid", grid, needed, available=gpu_free, where="this GPU has")


def check_reproduce_options(*, seeds: Any, train_limit: Any, epochs: Any, priority: Any) -> None:
    """``advtui reproduce``'s overrides (None: the scale's value)."""
    if seeds is not None:
        check_int("--seeds", seeds, 1, MAX_SEEDS)
    if train_limit is not None:
        check_int("--train-limit", train_limit, 10, MAX_INT)
    if epochs is not None:
        check_epochs(epochs)
    check_priority(priority)


# -- memory that an option sizes --------------------------------------------------------------------
def available_memory() -> int:
    """Bytes this machine can give a new allocation without swapping (psutil's ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(flag: str, value: Any, needed_bytes: float, share: float = 0.5, available: int | None = None,
                 where: str = "this machine has") -> None:
    """Refuse ``flag value`` when what it sizes needs more than ``share`` of the memory free
    (``available`` bytes, else this machine's): on a shared machine the kernel's OOM killer
    picks *other* processes too."""
    available = available_memory() if available is None else available
    if needed_bytes > share * available:
        raise ConfigError(f"{flag} {value} needs about {_gib(needed_bytes)} of memory, more than half of the "
                          f"{_gib(available)} {where} free: choose a smaller {flag}")


def _gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"
