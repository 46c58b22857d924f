"""Support for the dashboard tests: a deterministic runs directory for snapshots, a stand-in
NVML (this machine has no NVIDIA GPU; NVML is the one thing replaced), and polling helpers."""

from __future__ import annotations

import asyncio
import functools
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from advtui.core.config import build_config
from advtui.core.events import EVENTS_FILE
from advtui.jobs.monitor import GpuSampler
from advtui.jobs.scheduler import SchedulerPolicy
from advtui.store.registry import JOBS, RUNS, Registry
from advtui.tui.app import AdvtuiApp
from advtui.tui.services import Services

# Every timestamp in the fixed data is relative to this instant; the app's clock is pinned to
# NOW so elapsed and ETA columns do not move between runs.
T0 = 1_780_000_000.0
NOW = T0 + 3 * 3600
SIZE = (160, 48)


# -- a stand-in NVML module ------------------------------------------------------------------------
class _Struct:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class StandInNvml:
    """pynvml's functions over a fixed table of GPUs (utilization %, memory bytes, °C, mW)."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus: list[dict]):
        self.gpus = gpus

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str: return "550.54.15"
    def nvmlDeviceGetCount(self) -> int: return len(self.gpus)
    def nvmlDeviceGetHandleByIndex(self, i: int) -> int: return i
    def nvmlDeviceGetName(self, h: int) -> str: return self.gpus[h]["name"]
    def nvmlDeviceGetUUID(self, h: int) -> str: return f"GPU-{h:04d}"
    def nvmlDeviceGetUtilizationRates(self, h: int): return _Struct(gpu=self.gpus[h]["util"], memory=0)
    def nvmlDeviceGetMemoryInfo(self, h: int): return _Struct(used=self.gpus[h]["used"], total=self.gpus[h]["total"])
    def nvmlDeviceGetTemperature(self, h: int, kind: int) -> int: return self.gpus[h]["temp"]
    def nvmlDeviceGetPowerUsage(self, h: int) -> int: return self.gpus[h]["power_mw"]
    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int: return self.gpus[h]["limit_mw"]
    def nvmlDeviceGetComputeRunningProcesses(self, h: int): return []
    def nvmlDeviceGetGraphicsRunningProcesses(self, h: int): return []


GIB = 2**30
FIXED_GPUS = [
    {"name": "NVIDIA H100 80GB HBM3", "util": 87, "used": 41 * GIB, "total": 80 * GIB, "temp": 61,
     "power_mw": 412_000, "limit_mw": 700_000},
    {"name": "NVIDIA H100 80GB HBM3", "util": 3, "used": 1 * GIB, "total": 80 * GIB, "temp": 34,
     "power_mw": 71_000, "limit_mw": 700_000},
]


def fixed_app(root: Path, **kwargs: Any) -> AdvtuiApp:
    """The dashboard on ``root`` with two stand-in GPUs, a pinned clock and no scheduler (the
    snapshot data's queued job must stay queued)."""
    registry = Registry(root)
    # Threads per job pinned: the queue panel shows them, and the snapshots must not depend on
    # this machine's cores.
    services = Services(registry, policy=SchedulerPolicy(threads_per_job=2),
                        gpu_sampler=GpuSampler(nvml=StandInNvml(FIXED_GPUS)))
    kwargs.setdefault("side_interval", 3600.0)  # one GPU sample: a fixed sparkline
    return AdvtuiApp(root, services=services, run_scheduler=False, clock=lambda: NOW, **kwargs)


def pilot_test(test):
    """Run an ``async def`` test (it drives the app with ``App.run_test``) in its own event loop."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))
    return run


async def wait_until(pilot, predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1,
                     what: str = "condition") -> Any:
    """Let the app run until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await pilot.pause(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# -- the fixed runs directory ---------------------------------------------------------------------
def _write_events(folder: Path, events: list[dict]) -> None:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / EVENTS_FILE, "w", encoding="utf-8") as f:
        for event in events:
            f.write(json.dumps(event, separators=(",", ":")) + "\n")


def _training_events(config: dict, start: float, epochs_done: int, batches: int, partial: int,
                     learned: bool, scale: float) -> list[dict]:
    """A deterministic events stream shaped like the trainer's: start, step every 4 batches,
    inner every 8 (with PGD's trajectory for learned maximizers), epoch ends."""
    T = config["inner_steps"]
    events: list[dict] = [{"kind": "start", "time": start, "config": config, "resumed": False, "epoch": 0,
                           "batch": 0, "model_params": 312202, "maximizer_params": 120 if learned else 0,
                           "device": "cpu (2 threads)", "train_size": 2000, "test_size": 500}]
    t = start
    total_batches = epochs_done * batches + partial
    for g in range(1, total_batches + 1):
        epoch, batch = divmod(g - 1, batches)
        batch += 1
        t += 2.0
        progress = g / (batches * 3)
        outer = 0.35 + 1.95 * math.exp(-4 * progress) * scale + 0.04 * math.sin(g)
        if config["defense"] != "plain" and g % 8 == 0:
            base = 0.3 + 1.8 * math.exp(-3 * progress) * scale
            rise = 0.9 * (1 - 0.5 * progress)
            losses = [round(base + rise * (1 - math.exp(-1.2 * s)) + 0.01 * math.cos(g + s), 4) for s in range(T + 1)]
            inner = {"kind": "inner", "time": t, "epoch": epoch, "batch": batch - 1, "step": g,
                     "maximizer": "rnn" if learned else "pgd", "losses": losses}
            if learned:
                inner["pgd"] = [round(base + 0.8 * rise * (1 - math.exp(-0.6 * s)), 4) for s in range(T + 1)]
            events.append(inner)
        if g % 4 == 0:
            events.append({"kind": "step", "time": t, "epoch": epoch, "batch": batch, "batches": batches,
                           "step": g, "loss": round(outer, 4), "train_acc": round(60 + 30 * progress, 2),
                           "clean_acc": round(70 + 25 * progress, 2), "lr": 0.05, "images_per_s": 640.0})
        if batch == batches:
            e = epoch + 1
            events.append({"kind": "epoch", "time": t + 5, "epoch": e, "train_loss": round(outer, 4),
                           "train_acc": round(60 + 30 * progress, 2),
                           "inner_final_loss": None if config["defense"] == "plain" else round(1.2 - 0.1 * e, 4),
                           "epoch_time": 64.0 + e, "lr": 0.05,
                           "test_clean_acc": round(88 + 2 * e - 3 * (scale - 1), 2),
                           "test_pgd_acc": round((0.5 if config["defense"] == "plain" else 40 + 6 * e) / scale, 2),
                           "test_n": 200})
            t += 5
    return events


FIXED_RUNS = [
    # id, name, group, defense, status, epochs done, partial batches, scale of the losses
    ("a1b2c3", "plain-mnist-s0", None, "plain", "finished", 3, 0, 1.0),
    ("b2c3d4", "adv-s0", "adv", "advtrain", "finished", 3, 0, 1.0),
    ("c3d4e5", "adv-s1", "adv", "advtrain", "finished", 3, 0, 1.05),
    ("d4e5f6", "rnn-adv-mnist-s0", None, "rnn-adv", "finished", 3, 0, 0.95),
    ("e5f6a7", "rnn-adv-mnist-s1", None, "rnn-adv", "running", 1, 13, 0.97),
    ("f6a7b8", "trades-mnist-s0", None, "trades", "queued", 0, 0, 1.0),
    ("0a1b2c", "rnn-trades-mnist-s0", None, "rnn-trades", "failed", 0, 6, 1.0),
]
BATCHES = 32
# Every option the detail screen shows, pinned, so the snapshots do not follow the defaults.
PINNED_CONFIG = dict(momentum=0.9, weight_decay=0.0, milestones=[55, 75, 90], inner_steps=10, init="normal",
                     rnn_hidden=10, rnn_grad_input="sign", rnn_delta_scale=0.5, rnn_lr=0.01, compare_every=20,
                     log_every=10)


def build_fixed_runs(root: Path) -> Registry:
    """A runs directory with fixed records, events, checkpoints, a queued job and eval results."""
    from advtui.core.digests import mask_to_hex
    from advtui.store.results import store_result

    root.mkdir(parents=True, exist_ok=True)
    registry = Registry(root)
    for i, (run_id, name, group, defense, status, done, partial, scale) in enumerate(FIXED_RUNS):
        eps = 0.3 if defense == "plain" else 0.1
        config = build_config(defense, name=name, group=group, epochs=3, eps=eps, train_limit=2000, test_limit=500,
                              eval_limit=200, batch_size=64, lr=0.05, seed=1 if name.endswith("s1") else 0,
                              device="cpu", **PINNED_CONFIG).to_dict()
        start = T0 + 600 * i
        learned = defense.startswith("rnn")
        events = _training_events(config, start, done, BATCHES, partial, learned, scale)
        if status in ("queued",):
            events = []
        folder = root / run_id
        _write_events(folder, events)
        epochs = [e for e in events if e["kind"] == "epoch"]
        record: dict[str, Any] = {
            "id": run_id, "name": name, "group": group, "defense": defense, "dataset": "mnist", "model": "smallcnn",
            "config": config, "status": status, "epoch": len(epochs), "epochs": 3, "checkpoints": {},
            "metrics": {k: v for k, v in epochs[-1].items() if k not in ("kind", "time")} if epochs else {},
            "pid": None, "pid_start_time": None, "host": "lab-gpu-1", "device": "cpu (2 threads)",
            "created": start - 5, "started": start if events else None, "ended": None, "error": None,
            "model_params": 312202, "maximizer_params": 120 if learned else 0,
        }
        if status == "finished":
            record.update(ended=events[-1]["time"], train_time=3 * 66.0,
                          checkpoints={"last": "checkpoints/last.pt", "final": "checkpoints/final.pt"})
        if status == "failed":
            record.update(ended=start + 40, error="RuntimeError: the inner loss became NaN at epoch 1 batch 6\n"
                                                   "last output:\nTraceback ...\nRuntimeError: NaN inner loss")
        if status == "queued":
            record.update(device=None, host=None)
        for label, rel in (record["checkpoints"] or {}).items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\0" * (1_249_000 + (label == "final")))
            os.utime(path, (start + 800, start + 800))
        registry.insert(RUNS, record)
    registry.insert(JOBS, {"id": "j0f6a7b", "kind": "train", "run_id": "f6a7b8", "status": "queued", "priority": 0,
                           "needs": "auto", "gpu_index": None, "depends_on": [], "created": T0 + 4000,
                           "started": None, "ended": None, "pid": None, "error": None})
    registry.insert(JOBS, {"id": "j1e5f6a", "kind": "eval", "run_id": "e5f6a7", "status": "queued", "priority": 0,
                           "needs": "auto", "gpu_index": None, "depends_on": [], "created": T0 + 4001,
                           "attacks": ["natural", "pgd-10"], "started": None, "ended": None, "pid": None, "error": None})

    # Evaluation results through the evaluation module's own store (flags and summaries included).
    rng = np.random.default_rng(7)
    n = 100
    accuracy = {  # attack -> robust accuracy per run (percent of n)
        "a1b2c3": {"natural": 98, "pgd-10": 1, "pgd-100": 0, "cw-100": 0},
        "b2c3d4": {"natural": 97, "pgd-10": 71, "pgd-100": 68, "cw-100": 66},
        "c3d4e5": {"natural": 96, "pgd-10": 69, "pgd-100": 65, "cw-100": 64},
        "d4e5f6": {"natural": 97, "pgd-10": 76, "pgd-100": 73, "cw-100": 71, "rnn-10:d4e5f6": 78},
    }
    order = np.arange(n)
    for j, (run_id, columns) in enumerate(accuracy.items()):
        rng.shuffle(order)
        for k, (attack, acc) in enumerate(columns.items()):
            mask = np.zeros(n, dtype=bool)
            mask[order[:acc]] = True
            family, _, rest = attack.partition("-")
            steps = 0 if attack == "natural" else int(rest.split(":")[0])
            doc = {
                "kind": "attack", "run_id": run_id, "attack": attack, "label": attack.replace(":d4e5f6", ""),
                "family": family, "steps": steps, "restarts": 1, "source_run": "d4e5f6" if ":" in attack else None,
                "source_checkpoint_hash": None, "checkpoint_hash": f"{j:016x}", "checkpoint": "checkpoints/final.pt",
                "date": T0 + 9000 + 60 * k, "eval_id": f"e{j}",
                "settings": {"eps": 0.3 if run_id == "a1b2c3" else 0.1, "step_size": None, "limit": n,
                             "examples": f"mnist/test/{n}", "n": n, "batch_size": 256, "seed": 0, "device": "cpu",
                             "cascade": False},
                "accuracy": float(acc), "robust": acc, "n": n, "n_attacked": columns["natural"],
                "accuracy_kind": "attack", "clean_accuracy": float(columns["natural"]), "clean_robust": columns["natural"],
                "wall_time": 1.5 + 2.5 * steps / 10, "trajectory": [0.1 + 0.05 * s for s in range(steps + 1)],
                "trajectory_model": "target", "loss": "cw" if family == "cw" else "ce",
                "gradient": {"checked": n, "zero": 0, "nonfinite": 0}, "robust_mask": mask_to_hex(mask), "flags": [],
            }
            store_result(registry, doc)
    return registry


def static_text(widget) -> str:
    """The text a Static shows (its content may be any rich renderable)."""
    from rich.console import Console

    console = Console(width=200, record=True, file=open(os.devnull, "w"))
    console.print(widget.content)
    return console.export_text()


async def select_run(pilot, run_id: str) -> None:
    """Put the runs table's cursor on ``run_id``."""
    table = pilot.app.screen.table
    await wait_until(pilot, lambda: run_id in table.row_keys, what=f"run {run_id} in the table")
    table.select_key(run_id)
    await pilot.pause(0.05)
