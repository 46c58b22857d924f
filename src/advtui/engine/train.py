"""The training engine: one loop for every defense (Algorithm 1 generalised).

Per batch: the inner maximizer finds x'_T with the model in eval mode (or train mode when
asked), a learned maximizer takes its ascent step on the weighted inner loss, then the
classifier takes its descent step on the outer objective. Metrics stream to events.jsonl;
the registry is touched only at start, at each epoch end and at the end.
"""

from __future__ import annotations

import contextlib
import platform
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import advtui
from advtui.core.config import RunConfig
from advtui.core.defenses import DEFENSE_SPECS
from advtui.core.paths import data_root
from advtui.engine.checkpoint import load_checkpoint, save_checkpoint
from advtui.engine.data import SPLIT_SIZES, Split, load_split, load_train_and_val
from advtui.engine.defenses import build_objective, defense_maximizer
from advtui.engine.distributed import Ranks
from advtui.engine.maximizers import PGD, Maximizer
from advtui.engine.models import build_model, count_parameters
from advtui.engine.objectives import ce_per_example
from advtui.engine.vision import import_torchvision
from advtui.core.errors import ConfigError
from advtui.core.events import EventWriter
from advtui.core.health import ERROR, Finding, HealthMonitor, RunUnhealthy

torchvision = import_torchvision()


def resolve_device(spec: str) -> torch.device:
    """'auto' is CUDA when present, else the CPU; asking for CUDA without one is an error."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cpu":
        # A zero-initialized last layer (the SmallCNN reference init) can send denormal numbers
        # through the first batches' gradients, which some CPUs compute many times slower;
        # flushing them to zero changes no result that matters at float32.
        torch.set_flush_denormal(True)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("no CUDA device is available here: use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{spec} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


@dataclass
class TrainingData:
    """What a run reads: its training images and the split its per-epoch evaluation reads."""

    train: Split
    monitor: Split  # the validation split; the test split with --val-size 0
    monitor_split: str  # "val" or "test"
    val_ids: list[int] = field(default_factory=list)  # indices into the training split
    train_split_size: int = 0  # images in the dataset's whole training split
    test_split_size: int = 0


def load_data(config: RunConfig) -> TrainingData:
    """The run's data. With a validation split the test split is not read at all: it is left
    to ``advtui eval``, so nothing chosen during training (best.pt, early stopping) saw it."""
    root = data_root(config.data_root)
    sizes = SPLIT_SIZES[config.dataset]
    if config.val_size == 0:
        train = load_split(config.dataset, root, True, config.train_limit, seed=0)
        test = load_split(config.dataset, root, False, config.test_limit, seed=0)
        return TrainingData(train, test, "test", [], sizes["train"], len(test))
    data = load_train_and_val(config.dataset, root, config.train_limit, config.val_size, config.seed)
    return TrainingData(data.train, data.val, "val", data.val_ids, data.split_size, sizes["test"])


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    return int((model(x).argmax(1) == y).sum())


def evaluate_clean_and_pgd(
    model: nn.Module, split: Split, eps: float, steps: int, step_size: float, limit: int, batch_size: int,
    split_name: str = "val",
) -> dict[str, Any]:
    """Clean and PGD-``steps`` accuracy (%) on the first ``limit`` examples of ``split`` (the
    validation split, or the test split: ``split_name``), in eval mode; the keys say which
    (``val_clean_acc`` or ``test_clean_acc``, as ``advtui.core.epochs`` reads them)."""
    was_training = model.training
    model.eval()
    pgd = PGD(step_size, init="uniform")
    n = clean = robust = 0
    for _, x, y in split.batches(batch_size, shuffle=False):
        if n >= limit:
            break
        x, y = x[: limit - n], y[: limit - n]
        clean += _accuracy(model, x, y)
        x_adv = pgd(model, ce_per_example, x, y, eps, steps, record=False).x_adv
        robust += _accuracy(model, x_adv, y)
        n += len(y)
    model.train(was_training)
    return {f"{split_name}_clean_acc": 100.0 * clean / max(n, 1), f"{split_name}_pgd_acc": 100.0 * robust / max(n, 1),
            f"{split_name}_n": n, "eval_split": split_name}


def step_schedule(config: RunConfig) -> Callable[[int], float]:
    """The lr factor of epoch ``e`` (counted from 0): lr_gamma once for every milestone m with
    e + 1 >= m, as the references' ``adjust_learning_rate`` does with epochs counted from 1.
    (MultiStepLR stepped after each epoch would lower the rate one epoch later.)"""
    milestones, gamma = tuple(config.milestones), config.lr_gamma
    return lambda e: gamma ** sum(1 for m in milestones if e + 1 >= m)


@dataclass
class Progress:
    """What a progress display needs after each batch."""

    epoch: int
    epochs: int
    batch: int
    batches: int
    loss: float | None = None
    images_per_s: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    health: list[Finding] = field(default_factory=list)  # health findings raised or cleared just now


# Held-out batches on which a learned maximizer is compared with PGD at each epoch end.
VAL_COMPARE_BATCHES = 4


class StopRequested(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Trainer:
    """Trains one run; owns its model, maximizer, optimizers, data and events."""

    def __init__(self, config: RunConfig, run_dir: Path, device: torch.device, train: Split, monitor: Split,
                 events: EventWriter, on_progress: Callable[[Progress], None] | None = None,
                 on_epoch: Callable[[dict[str, Any], Path], None] | None = None,
                 health: HealthMonitor | None = None, ranks: Ranks | None = None, monitor_split: str = "val"):
        self.config, self.run_dir, self.device = config, Path(run_dir), device
        # Several processes training one run (advtui.engine.distributed); rank 0 of 1 otherwise.
        self.ranks = ranks or Ranks()
        self.events, self.on_progress, self.on_epoch = events, on_progress, on_epoch
        # Fed every event this trainer writes; the runner passes one that has replayed the
        # stream so far when a run resumes, so a condition that began before keeps its epoch.
        self.health = health if health is not None else HealthMonitor(config.to_dict())
        self.ckpt_dir = self.run_dir / "checkpoints"
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        # The per-epoch evaluation reads ``monitor``: the validation split, which also chooses
        # best.pt and early stopping; or, with --val-size 0, the test split, for monitoring only.
        self.train_split, self.monitor = train.to(device), monitor.to(device)
        self.monitor_split = monitor_split
        self.model = build_model(config.model, config.dataset).to(device)
        self.objective = build_objective(config)
        self.maximizer: Maximizer | None = defense_maximizer(config, device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, step_schedule(config))
        # Learned maximizers are compared live against PGD with the same T on the same batch.
        self.reference_pgd = PGD(config.pgd_step, config.init) if self.maximizer is not None and self.maximizer.learned else None
        # The classifier's training step goes through DDP (gradients averaged over the ranks);
        # the inner maximization uses the bare model, as each rank attacks its own share.
        self.train_model: nn.Module = self.model
        if self.ranks.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
            if self.maximizer is not None and self.maximizer.learned:
                self.maximizer.average_grads = self.ranks.average_grads
            if self.ranks.rank > 0:  # every rank built the same weights; now each its own noise
                torch.manual_seed(config.seed + self.ranks.rank)
                random.seed(config.seed + self.ranks.rank)
        self.epoch, self.batch, self.global_step, self.elapsed = 0, 0, 0, 0.0
        self.accum = self._fresh_accum()
        self.last_metrics: dict[str, Any] = {}
        self.stop_signal: int | None = None
        # The epoch (1-based) of the best validation PGD accuracy so far, kept in best.pt.
        self.best_epoch: int | None = None
        self.best_val_pgd: float | None = None
        self.stopped_early: dict[str, Any] | None = None

    # -- state --------------------------------------------------------------------------------
    @staticmethod
    def _fresh_accum() -> dict[str, float]:
        return {"loss_sum": 0.0, "batches": 0.0, "correct": 0.0, "count": 0.0,
                "inner_final_sum": 0.0, "inner_count": 0.0}

    def state(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "config": self.config.to_dict(), "epoch": self.epoch, "batch": self.batch,
            "global_step": self.global_step, "elapsed": self.elapsed, "accum": dict(self.accum),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "maximizer": self.maximizer.state_dict() if self.maximizer is not None and self.maximizer.learned else None,
            "maximizer_kind": DEFENSE_SPECS[self.config.defense].maximizer,
            "rng": rng, "last_metrics": self.last_metrics,
            "best": {"epoch": self.best_epoch, "val_pgd_acc": self.best_val_pgd},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("maximizer") is not None and self.maximizer is not None:
            self.maximizer.load_state_dict(state["maximizer"])
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.global_step, self.elapsed = int(state["global_step"]), float(state["elapsed"])
        self.accum = dict(state["accum"])
        self.last_metrics = dict(state.get("last_metrics") or {})
        best = state.get("best") or {}
        self.best_epoch, self.best_val_pgd = best.get("epoch"), best.get("val_pgd_acc")
        rng = state["rng"]
        per_rank = rng.get("ranks") or []
        if self.ranks.distributed and len(per_rank) == self.ranks.world:
            rng = per_rank[self.ranks.rank]  # each rank continues its own random stream
        torch.set_rng_state(rng["torch"])
        random.setstate(_as_tuple(rng["python"]))
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def resume_from(self, path: Path) -> None:
        self.load_state(load_checkpoint(path, map_location=self.device))

    def save(self, name: str = "last.pt") -> Path:
        state = self.state()
        if self.ranks.distributed:
            state["rng"]["ranks"] = self.ranks.gather(dict(state["rng"]))  # every rank's random state
            if not self.ranks.main:
                return self.ckpt_dir / name  # rank 0 writes it
        path = save_checkpoint(self.ckpt_dir / name, state)
        self.events.emit("checkpoint", path=str(path), epoch=self.epoch, batch=self.batch, name=name)
        return path

    # -- one batch ----------------------------------------------------------------------------
    def _autocast(self):
        if self.config.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_batch(self, x: torch.Tensor, y: torch.Tensor, record_inner: bool) -> dict[str, Any]:
        cfg, model = self.config, self.model
        out: dict[str, Any] = {}
        x_adv = x
        with self._autocast():
            if self.maximizer is not None:
                model.train(cfg.inner_train_mode)
                target = self.objective.inner_target(model, x, y)
                loss_fn = self.objective.inner_loss
                learned = self.maximizer.learned
                if learned:
                    result = self.maximizer.maximize(model, loss_fn, x, target, cfg.eps, cfg.inner_steps,
                                                     record=True, learn_graph=True)
                    self.maximizer.learn(result)
                else:
                    result = self.maximizer.maximize(model, loss_fn, x, target, cfg.eps, cfg.inner_steps,
                                                     record=record_inner)
                x_adv = result.x_adv
                out["trajectory"] = result.trajectory
                if record_inner and self.reference_pgd is not None:
                    out["pgd_trajectory"] = self.reference_pgd.maximize(
                        model, loss_fn, x, target, cfg.eps, cfg.inner_steps, record=True).trajectory
            model.train()
            loss, logits_adv, logits_clean = self.objective.outer_loss(self.train_model, x, x_adv, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        logits = logits_adv if logits_adv is not None else logits_clean
        out["loss"] = loss.detach()
        out["correct"] = (logits.detach().argmax(1) == y).sum()
        return out

    # -- the loop -----------------------------------------------------------------------------
    def _request_stop(self, signum: int, _frame: Any) -> None:
        self.stop_signal = signum

    def fit(self) -> dict[str, Any]:
        """Train from the current state to the last epoch. Raises StopRequested on a signal
        after checkpointing at the next batch boundary."""
        cfg = self.config
        old = {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while self.epoch < cfg.epochs:
                self._run_epoch()
                if self._early_stop_due():
                    break
            return self.last_metrics
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def _run_epoch(self) -> None:
        cfg, split = self.config, self.train_split
        n_batches = split.num_batches(cfg.batch_size)
        # An epoch no longer than --log-every would log only at its end, and a watcher would see
        # no progress until then: log about four times per epoch instead.
        log_every = cfg.log_every if n_batches > cfg.log_every else max(1, n_batches // 4)
        epoch_start = time.perf_counter()
        window_start, window_images = time.perf_counter(), 0
        window_loss, window_correct, window_batches = 0.0, 0.0, 0
        for b, x, y in split.batches(cfg.batch_size, True, cfg.seed, self.epoch, start=self.batch):
            x, y = self.ranks.shard(x), self.ranks.shard(y)  # every rank draws the same global batch
            record_inner = self.global_step % cfg.compare_every == 0 and self.maximizer is not None
            out = self.train_batch(x, y, record_inner)
            self.batch, self.global_step = b + 1, self.global_step + 1
            window_images += len(y)
            window_batches += 1
            # Tensors stay on the device; .item() (a sync) happens only at log points.
            window_loss = out["loss"] + window_loss
            window_correct = out["correct"] + window_correct
            self.accum["count"] += len(y) * self.ranks.world
            if record_inner and out.get("trajectory") is not None:
                self._emit_inner(out, b)
            logged = window_batches == log_every or b + 1 == n_batches
            if logged:
                self._emit_step(window_loss, window_correct, window_images, window_batches, window_start, x, y, n_batches)
                window_start, window_images = time.perf_counter(), 0
                window_loss, window_correct, window_batches = 0.0, 0.0, 0
            if self._stop_now(logged):
                if window_batches:  # fold the unlogged part of the window into the totals
                    self._fold_window(window_loss, window_correct, window_batches)
                self.elapsed += time.perf_counter() - epoch_start
                self.save()
                raise StopRequested(self.stop_signal)
        self.elapsed += time.perf_counter() - epoch_start
        self._end_epoch(time.perf_counter() - epoch_start)

    def _early_stop_due(self) -> bool:
        """--early-stop P: no better validation PGD accuracy for P epochs (Rice et al. 2020 stop
        on held-out robust accuracy; best.pt already holds the best epoch)."""
        patience = self.config.early_stop
        if patience is None or self.best_epoch is None or self.epoch - self.best_epoch < patience:
            return False
        if self.epoch >= self.config.epochs:
            return False  # it ends here anyway: not a stop
        self.stopped_early = {"epoch": self.epoch, "best_epoch": self.best_epoch, "patience": patience}
        self.events.emit("early_stop", **self.stopped_early)
        return True

    def _stop_now(self, logged: bool) -> bool:
        """Stop after this batch? One process stops at once on a signal; several agree at log
        points (a signal may reach them at different batches, and a rank that stopped alone
        would leave the others waiting for its gradients)."""
        if not self.ranks.distributed:
            return self.stop_signal is not None
        return logged and self.ranks.any(self.stop_signal is not None, self.device)

    def _emit_inner(self, out: dict[str, Any], batch: int) -> None:
        # The mean inner loss over the global batch: each rank's share is the same size.
        traj = self.ranks.mean(out["trajectory"].float(), self.device).tolist()
        self.accum["inner_final_sum"] += traj[-1]
        self.accum["inner_count"] += 1
        fields = {"epoch": self.epoch, "batch": batch, "step": self.global_step,
                  "maximizer": DEFENSE_SPECS[self.config.defense].maximizer, "losses": traj}
        if out.get("pgd_trajectory") is not None:
            fields["pgd"] = self.ranks.mean(out["pgd_trajectory"].float(), self.device).tolist()
        self.events.emit("inner", **fields)
        self._check_health("inner", fields)

    def _check_health(self, kind: str, fields: dict[str, Any]) -> list[Finding]:
        """Feed the event just written to the health monitor (with its real floats: the stream
        holds null for a NaN) and write what it found as ``health`` events. An error-level
        finding stops training: RunUnhealthy, which the runner records as the run's failure."""
        findings = self.health.feed({"kind": kind, **fields})
        for finding in findings:
            self.events.emit("health", **finding.to_dict())
        errors = [f for f in findings if f.level == ERROR and f.active]
        if errors:
            raise RunUnhealthy(errors[0])
        return findings

    def _fold_window(self, loss_sum, correct_sum, batches: int) -> float:
        loss_total = float(loss_sum)
        self.accum["loss_sum"] += loss_total
        self.accum["correct"] += float(correct_sum)
        self.accum["batches"] += batches
        return loss_total

    def _emit_step(self, loss_sum, correct_sum, images, batches, start, x, y, n_batches) -> None:
        # Over the global batch: the ranks' mean losses (equal shares) and summed counts.
        loss_sum = self.ranks.mean(loss_sum, self.device)
        correct_sum = self.ranks.total(correct_sum, self.device)
        images *= self.ranks.world
        loss_total = self._fold_window(loss_sum, correct_sum, batches)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = max(time.perf_counter() - start, 1e-9)
        self.model.eval()
        clean_acc = 100.0 * float(self.ranks.total(_accuracy(self.model, x, y), self.device)) / (len(y) * self.ranks.world)
        self.model.train()
        fields = {
            "epoch": self.epoch, "batch": self.batch, "batches": n_batches, "step": self.global_step,
            "loss": loss_total / batches, "train_acc": 100.0 * float(correct_sum) / images,
            "clean_acc": clean_acc, "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": images / seconds,
        }
        self.events.emit("step", **fields)
        # The window's loss sum is NaN (or inf) if any of its batches was: checking here, where
        # it is already on the host, catches a diverged run without a sync per batch.
        self._check_health("step", fields)
        if self.on_progress:
            self.on_progress(Progress(self.epoch, self.config.epochs, self.batch, n_batches,
                                      fields["loss"], fields["images_per_s"], fields))

    def _end_epoch(self, epoch_time: float) -> None:
        cfg = self.config
        a = self.accum
        metrics = {
            "epoch": self.epoch + 1,
            "train_loss": a["loss_sum"] / max(a["batches"], 1),
            "train_acc": 100.0 * a["correct"] / max(a["count"], 1),
            "inner_final_loss": a["inner_final_sum"] / a["inner_count"] if a["inner_count"] else None,
            "epoch_time": epoch_time,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        # Evaluated once, on rank 0 (the ranks hold the same weights), and shared with the others.
        evaluation = evaluate_clean_and_pgd(self.model, self.monitor, cfg.eps, cfg.inner_steps, cfg.pgd_step,
                                            cfg.eval_limit, max(cfg.batch_size, 256),
                                            self.monitor_split) if self.ranks.main else None
        metrics.update(self.ranks.from_main(evaluation))
        findings: list[Finding] = []
        if self.ranks.main and self.monitor_split == "val" and self.reference_pgd is not None:
            findings += self._compare_on_validation()
        improved = self._note_best(metrics)
        self.scheduler.step()
        self.epoch, self.batch = self.epoch + 1, 0
        self.accum = self._fresh_accum()
        self.last_metrics = metrics
        self.events.emit("epoch", **metrics)
        findings += self._check_health("epoch", metrics)
        path = self.save("last.pt")
        if improved:
            self.save("best.pt")  # written like last.pt: a reader sees the old best or the new one
        if self.on_epoch:
            self.on_epoch(metrics, path)
        if self.on_progress:
            self.on_progress(Progress(self.epoch, cfg.epochs, 0, self.train_split.num_batches(cfg.batch_size),
                                      metrics=metrics, health=findings))

    def _note_best(self, metrics: dict[str, Any]) -> bool:
        """Is this epoch's validation PGD accuracy the best so far? Records the best epoch in
        ``metrics``. On test numbers (--val-size 0) nothing is chosen."""
        robust = metrics.get("val_pgd_acc")
        if self.monitor_split != "val" or robust is None:
            return False
        improved = self.best_val_pgd is None or robust > self.best_val_pgd
        if improved:
            self.best_epoch, self.best_val_pgd = metrics["epoch"], robust
        metrics["best_epoch"] = self.best_epoch
        return improved

    def _compare_on_validation(self) -> list[Finding]:
        """The learned maximizer against PGD with the same T on held-out batches, as training
        compares them on its own batches: ``val_inner`` events, which the health checks read."""
        cfg, model = self.config, self.model
        was_training = model.training
        model.eval()  # as the per-epoch evaluation: no batch-norm statistics move
        size = max(1, min(cfg.batch_size, min(cfg.eval_limit, len(self.monitor)) // VAL_COMPARE_BATCHES))
        findings: list[Finding] = []
        for b, x, y in self.monitor.batches(size, shuffle=False):
            if b >= VAL_COMPARE_BATCHES:
                break
            target = self.objective.inner_target(model, x, y)
            loss_fn = self.objective.inner_loss
            learned = self.maximizer.maximize(model, loss_fn, x, target, cfg.eps, cfg.inner_steps, record=True)
            pgd = self.reference_pgd.maximize(model, loss_fn, x, target, cfg.eps, cfg.inner_steps, record=True)
            fields = {"epoch": self.epoch, "batch": b, "maximizer": DEFENSE_SPECS[cfg.defense].maximizer,
                      "losses": learned.trajectory.float().tolist(), "pgd": pgd.trajectory.float().tolist()}
            self.events.emit("val_inner", **fields)
            findings += self._check_health("val_inner", fields)
        model.train(was_training)
        return findings

    def start_event(self, resumed: bool) -> None:
        maximizer_params = self.maximizer.num_parameters() if self.maximizer is not None else 0
        fields = dict(
            config=self.config.to_dict(), resumed=resumed, epoch=self.epoch, batch=self.batch,
            model_params=count_parameters(self.model), maximizer_params=maximizer_params,
            device=device_name(self.device), train_size=len(self.train_split),
            **{f"{self.monitor_split}_size": len(self.monitor)}, eval_split=self.monitor_split,
            versions={"advtui": advtui.__version__, "torch": torch.__version__,
                      "torchvision": torchvision.__version__, "python": platform.python_version()},
        )
        self.events.emit("start", **fields)
        self._check_health("start", fields)


def _as_tuple(value: Any) -> Any:
    """random.setstate needs tuples where a checkpoint round-trip may give lists."""
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value
