"""The life of a training run: registry record, events stream, trainer, and its ending.

``advtui run`` (foreground), the scheduler's launched processes and ``--resume`` all go
through ``execute_run``, so a run is recorded the same way whoever started it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from advtui.core.config import RunConfig, recorded_config
from advtui.store import lifecycle
from advtui.core.atomic import atomic_copy, remove_stale_temporaries
from advtui.core.defenses import DEFENSE_SPECS
from advtui.core.paths import (
    BEST_CHECKPOINT, DATA_ENV, FINAL_CHECKPOINT, LAST_CHECKPOINT, checkpoint_path, data_root, refuse_planted_links,
    run_dir,
)
from advtui.core.errors import AdvtuiError, CheckpointError, ConfigError
from advtui.core.events import EVENTS_FILE, EventWriter, ended_epochs, read_events
from advtui.core.health import HealthMonitor, RunUnhealthy, replay
from advtui.core.status import can_resume
from advtui.store.registry import Registry


class RunInterrupted(AdvtuiError):
    """The run was stopped by a signal; its checkpoint is written and its status is 'killed'."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class RunFailed(AdvtuiError):
    exit_code = 1


@dataclass
class RunPlan:
    """What to run: a new run, a queued record to attach to, or a run to resume."""

    config: RunConfig
    record: dict[str, Any] | None = None  # an existing record (queued or resumed)
    checkpoint: Path | None = None  # resume from here


def plan_resume(registry: Registry, ref: str, overrides: dict[str, Any]) -> RunPlan:
    """Resume RUN from its last checkpoint; ``overrides`` may extend epochs or change device."""
    record = lifecycle.settle_vanished(registry, registry.resolve_run(ref))
    if record.get("status") == "running":
        raise ConfigError(f"run {record['id']} is still running (pid {record.get('pid')}): kill it first")
    stored = recorded_config(record)
    if not can_resume(record.get("status"), more_epochs=bool(overrides.get("epochs"))):
        raise ConfigError(f"run {record['id']} already finished: pass --epochs N (more than "
                          f"{stored.epochs}) to train it further")
    if overrides.get("epochs") is not None and overrides["epochs"] <= (record.get("epoch") or 0):
        done = record.get("epoch") or 0
        raise ConfigError(f"--epochs must be more than the {done} epoch{'' if done == 1 else 's'} run {record['id']} "
                          "has done")
    if not (record.get("checkpoints") or {}).get("last"):
        raise CheckpointError(f"run {record['id']} has no checkpoint to resume from: start it again instead")
    checkpoint = checkpoint_path(registry, record, "last")
    given = {k: v for k, v in overrides.items() if v is not None}
    if "val_size" not in (record.get("config") or {}):
        given["val_size"] = 0  # recorded before validation splits: it goes on with the data it had
    if not given.get("data_root") and os.environ.get(DATA_ENV):
        given["data_root"] = None  # $ADVTUI_DATA wins over the recorded root; --data-root over both
    config = RunConfig.from_dict({**stored.to_dict(), **given})
    return RunPlan(config.validate(), record, checkpoint)


def check_resume_checkpoint(registry: Registry, record: dict[str, Any], config: RunConfig) -> None:
    """The checkpoint a queued resume will continue from, loaded (on the CPU) and checked to fit
    the run's model now: a resume that could not start is refused before the run is queued
    again, so the record stays as it was. A run without a checkpoint starts over."""
    if not (record.get("checkpoints") or {}).get("last"):
        return
    from advtui.engine.checkpoint import check_model_state, load_checkpoint

    path = checkpoint_path(registry, record, "last")
    state = load_checkpoint(path, map_location="cpu")
    check_model_state(_model_shapes(config), state.get("model"), path, f"{config.model} on {config.dataset}",
                      state.get("config"))


def plan_queued(registry: Registry, run_id: str) -> RunPlan:
    """Attach to a record created by the queue (status 'queued')."""
    record = registry.resolve_run(run_id)
    has_checkpoint = bool((record.get("checkpoints") or {}).get("last"))
    return RunPlan(recorded_config(record), record,
                   checkpoint_path(registry, record, "last") if has_checkpoint else None)


# Fields a start writes over an existing record: kept before, and put back when a resume fails
# before training starts, so the run is left as it was (a finished run stays finished).
_START_FIELDS = ("status", "pid", "pid_start_time", "host", "started", "ended", "error", "config", "epochs",
                 "device")
STATUS_WRITE_TRIES = 3
STATUS_WRITE_PAUSE_S = 0.25  # then 0.5, 0.75: a moment for temporary files to go


def execute_run(
    plan: RunPlan,
    runs_root: Path,
    on_progress: Callable | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Validate, load data, create/attach the record, train, and record how it ended.

    Everything that can fail on bad input (options, device, data, checkpoint, whether the
    checkpoint fits the model) is checked before the registry is touched, so a failed start
    leaves it unchanged. From the moment the record says ``running`` this function owns its last
    word: whatever is raised (a full disk included) ends the run ``failed`` with the reason, or,
    for a resume that fails before training starts, puts the record back as it was.
    """
    # torch loads here, not at module level: `advtui ls` and the dashboard import this module.
    from advtui.engine.checkpoint import check_model_state, load_checkpoint
    from advtui.engine.distributed import Ranks
    from advtui.engine.train import device_name, load_data, resolve_device

    # The data root this run reads (--data-root, else $ADVTUI_DATA, else the cache folder), resolved
    # and recorded in its config: its evaluations and resumes find the data in a shell without it.
    config = replace(plan.config, data_root=str(data_root(plan.config.data_root))).validate()
    ranks = Ranks.from_env()  # one of --nproc processes under torchrun, or the only one
    config = replace(config, nproc=ranks.world)
    device = ranks.device(resolve_device(config.device))
    data = load_data(config)
    config = _real_sizes(config, len(data.train), data.test_split_size, on_warning, len(data.val_ids),
                         data.train_split_size)
    state = load_checkpoint(plan.checkpoint, map_location=device) if plan.checkpoint else None

    registry = Registry(runs_root)
    if plan.record is not None:
        refuse_planted_links(run_dir(registry.root, plan.record["id"]))
    warm_start = _load_warm_start(registry, config, device) if state is None and config.init_from else None
    if state is not None:
        check_model_state(_model_shapes(config), state.get("model"), plan.checkpoint,
                          f"{config.model} on {config.dataset}", state.get("config"))
    ranks.init(device)
    if not ranks.main:
        _train_as_helper_rank(config, ranks, device, data, state, warm_start, runs_root, plan)
    if plan.record is None:
        record = lifecycle.create_running(registry, config.to_dict(), device=device_name(device))
        before = None
    else:
        before = {k: plan.record.get(k) for k in _START_FIELDS}
        started = lifecycle.mark_running(registry, plan.record["id"], config=config.to_dict(),
                                         epochs=config.epochs, device=device_name(device))
        record = {**plan.record, **started}
    # Only a run that was stopped (or finished) and is started again is put back on an early
    # failure; a new or queued run that cannot start has failed.
    restore = before if before is not None and before.get("status") != lifecycle.QUEUED else None
    try:
        return _train(registry, record, config, device, ranks, state, warm_start, data, restore,
                      on_progress, on_record)
    except (RunInterrupted, RunFailed, _Restored):
        raise
    except BaseException as exc:
        _fail(registry, record["id"], exc)
        raise  # _fail raises RunFailed for an Exception; KeyboardInterrupt and the like go on


class _Restored(AdvtuiError):
    """A resume failed before training began; the record was put back as it was."""

    exit_code = 1


def _train(registry: Registry, record: dict[str, Any], config: RunConfig, device, ranks, state, warm_start,
           data, restore: dict[str, Any] | None, on_progress, on_record) -> dict[str, Any]:
    from advtui.engine.train import StopRequested, Trainer

    run_id = record["id"]
    folder = run_dir(registry.root, run_id)
    if on_record:
        on_record(record)
    events = None
    try:
        health = _health_monitor(config, folder / EVENTS_FILE)

        def epoch_done(metrics: dict[str, Any], path: Path) -> None:
            registry.update_run(run_id, epoch=metrics["epoch"], metrics=metrics,
                                checkpoints=_checkpoints(trainer), best_epoch=trainer.best_epoch,
                                health=health.active_dicts())

        # This process owns the run now: what a killed save of an earlier one left can go.
        remove_stale_temporaries(folder / "checkpoints", tuple(Path(name).name for name in (
            LAST_CHECKPOINT, FINAL_CHECKPOINT, BEST_CHECKPOINT)))
        ended = ended_epochs(folder / EVENTS_FILE) if state is not None else set()
        events = EventWriter(folder / EVENTS_FILE, skip_epochs=ended)
        trainer = Trainer(config, folder, device, data.train, data.monitor, events, on_progress, epoch_done, health,
                          ranks, monitor_split=data.monitor_split)
        _start_from(trainer, state, warm_start)
        _write_validation_ids(folder, config, data)
    except BaseException as exc:
        if events is not None:
            events.close()
        if restore is None or not isinstance(exc, Exception):
            raise
        _put_back(registry, run_id, restore, exc)

    with events:
        trainer.start_event(resumed=state is not None)  # a restart clears an earlier error finding
        registry.update_run(run_id, model_params=_count(trainer.model), maximizer_params=(
            trainer.maximizer.num_parameters() if trainer.maximizer is not None else 0),
            health=health.active_dicts(), eval_split=data.monitor_split, val_size=len(data.val_ids),
            val_ids_file=VAL_IDS_FILE if data.val_ids else None)
        try:
            metrics = trainer.fit()
        except StopRequested as stop:
            _emit_end(events, "killed", signal=str(stop), epoch=trainer.epoch, batch=trainer.batch)
            _record_end(registry, run_id, lifecycle.mark_killed,
                        f"stopped by {stop} at epoch {trainer.epoch + 1}, batch {trainer.batch}", "killed",
                        checkpoints=_checkpoints(trainer), health=health.active_dicts())
            raise RunInterrupted(
                f"run {run_id} stopped by {stop}; checkpoint saved: `advtui run --resume {run_id}` continues it",
                stop.signum,
            ) from None
        except RunUnhealthy as unhealthy:
            # The finding's message is the whole story (what went wrong, what to try): it is
            # the record's error as it is, with no exception type in front.
            message = unhealthy.finding.message
            _emit_end(events, "failed", error=message, epoch=trainer.epoch, batch=trainer.batch)
            note = _record_end(registry, run_id, lifecycle.mark_failed, message, "failed",
                               health=health.active_dicts())
            raise RunFailed(f"run {run_id} failed: {message}{note}") from None
        except BaseException as exc:
            _emit_end(events, "failed", error=_describe(exc))
            raise
        final = trainer.ckpt_dir / "final.pt"
        atomic_copy(trainer.ckpt_dir / "last.pt", final)  # a link planted at final.pt is replaced, not followed
        events.emit("checkpoint", path=str(final), epoch=trainer.epoch, batch=0, name="final.pt")
        if not ranks.finish():
            _abandon_unfinished_ranks(registry, run_id, events, ranks)
        events.emit("end", status="finished", metrics=metrics, elapsed=trainer.elapsed)
        lifecycle.mark_finished(registry, run_id, metrics=metrics, train_time=trainer.elapsed,
                                health=health.active_dicts(), best_epoch=trainer.best_epoch,
                                stopped_early=trainer.stopped_early,
                                checkpoints={**_checkpoints(trainer), "final": FINAL_CHECKPOINT})
    ranks.close()
    return registry.get_run(run_id) or record


def _describe(exc: BaseException) -> str:
    """An exception as one line: its type and its message's first line."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        text = f"{exc.strerror}{where}"
    else:
        lines = str(exc).strip().splitlines()
        text = lines[0] if lines else ""
    if isinstance(exc, AdvtuiError):
        return text
    return f"{type(exc).__name__}: {text}".strip().rstrip(":")


def _emit_end(events: EventWriter, status: str, **fields: Any) -> None:
    """The stream's last event, if the disk takes it: the record, not the stream, is the truth."""
    try:
        events.emit("end", status=status, **fields)
    except OSError:
        pass


def _record_end(registry: Registry, run_id: str, mark: Callable[..., Any], message: str, status: str,
                **fields: Any) -> str:
    """Write a run's end, trying again a few times (a full disk may free up as temporary files
    are removed); '' when it was written, else a note saying the record could not be changed."""
    last: BaseException | None = None
    for attempt in range(STATUS_WRITE_TRIES):
        try:
            mark(registry, run_id, message[:2000], only_from=lifecycle.RUNNING, **fields)
            return ""
        except (OSError, AdvtuiError) as exc:
            last = exc
            time.sleep(STATUS_WRITE_PAUSE_S * (attempt + 1))
    return (f"; its status could not be recorded as {status} ({_describe(last)}): the record still says "
            f"running until `advtui ls` finds its process gone")


def _fail(registry: Registry, run_id: str, exc: BaseException) -> None:
    """End the run ``failed`` for ``exc``; raise RunFailed (one line) for an ordinary exception."""
    message = _describe(exc)
    note = _record_end(registry, run_id, lifecycle.mark_failed, message, "failed")
    if isinstance(exc, Exception):
        raise RunFailed(f"run {run_id} failed: {message}{note}") from exc


def _put_back(registry: Registry, run_id: str, before: dict[str, Any], exc: Exception) -> None:
    """A resume failed before training: the record returns to what it was, and the reason is
    one line (the run can be resumed again once the cause is fixed)."""
    message = _describe(exc)
    try:
        lifecycle.put_back(registry, run_id, before)
        note = f"; run {run_id} is {before.get('status')} as before"
    except (OSError, AdvtuiError) as write_error:
        note = _record_end(registry, run_id, lifecycle.mark_failed, message, "failed") or (
            f"; it could not be put back ({_describe(write_error)}) and is marked failed")
    raise _Restored(f"cannot resume run {run_id}: {message}{note}") from exc


def _real_sizes(config: RunConfig, n_train: int, n_test: int, on_warning: Callable[[str], None] | None,
                n_val: int = 0, train_split_size: int | None = None) -> RunConfig:
    """A limit above a split's size trains on the whole split: say so, and record the real size
    (and the validation split's size, which the default rule decided). ``n_train`` is what the
    run trains on: the training split less its ``n_val`` validation images."""
    changes: dict[str, Any] = {"val_size": n_val}
    held_out = f" left after the {n_val} validation images" if n_val else ""
    total_train = train_split_size if train_split_size is not None else n_train
    for name, size, total in (("train_limit", n_train, total_train), ("test_limit", n_test, n_test)):
        limit = getattr(config, name)
        if limit is not None and limit > size:
            changes[name] = size
            if on_warning is not None:
                split = "training" if name == "train_limit" else "test"
                more = f"the {size} training images of {config.dataset}{held_out}" if size < total else (
                    f"the {size} {split} images of {config.dataset}")
                on_warning(f"--{name.replace('_', '-')} {limit} is more than {more}: using all {size} "
                           f"(recorded as {size})")
    return replace(config, **changes)


VAL_IDS_FILE = "validation.json"


def _write_validation_ids(folder: Path, config: RunConfig, data) -> None:
    """The validation split's ids (indices into the dataset's training split), beside the run's
    events: what a later check of "never trained on, never the test set" reads."""
    if not data.val_ids:
        return
    from advtui.core.atomic import atomic_open

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_open(folder / VAL_IDS_FILE, "w") as f:
        json.dump({"dataset": config.dataset, "split": "train", "seed": config.seed, "size": len(data.val_ids),
                   "train_limit": config.train_limit, "ids": data.val_ids}, f)


def _checkpoints(trainer) -> dict[str, str]:
    """The record's checkpoints while training: last.pt, and best.pt once one was chosen."""
    found = {"last": LAST_CHECKPOINT}
    if trainer.best_epoch is not None:
        found["best"] = BEST_CHECKPOINT
    return found


def _model_shapes(config: RunConfig):
    """The run's model, for checking that a checkpoint fits it (on the meta device: no memory)."""
    import torch

    from advtui.engine.models import build_model

    try:
        with torch.device("meta"):
            return build_model(config.model, config.dataset)
    except Exception:  # an initializer that needs real memory: build it on the CPU
        return build_model(config.model, config.dataset)


def _abandon_unfinished_ranks(registry: Registry, run_id: str, events: EventWriter, ranks) -> None:
    """A rank did not reach the end of training with rank 0: the run failed (its weights are in
    final.pt, but a rank that hangs may have diverged), and every process goes."""
    from advtui.engine.distributed import FINAL_BARRIER_TIMEOUT_S, abandon

    message = (f"a rank of the {ranks.world} processes did not reach the end of training within "
               f"{FINAL_BARRIER_TIMEOUT_S:g}s of rank 0; the run's processes were stopped")
    _emit_end(events, "failed", error=message)
    events.close()
    note = _record_end(registry, run_id, lifecycle.mark_failed, message, "failed")
    abandon(f"error: run {run_id} failed: {message}{note}")


def _train_as_helper_rank(config: RunConfig, ranks, device, data, state, warm_start, runs_root: Path,
                          plan: RunPlan) -> None:
    """Ranks other than 0 of a --nproc run: train in step with rank 0, which alone writes the
    events, checkpoints and registry; then leave quietly (rank 0 reports the run)."""
    import sys

    from advtui.engine.distributed import NullEvents, abandon
    from advtui.engine.train import StopRequested, Trainer

    folder = run_dir(Path(runs_root), plan.record["id"]) if plan.record else Path(runs_root)
    trainer = Trainer(config, folder, device, data.train, data.monitor, NullEvents(),
                      health=HealthMonitor(config.to_dict()), ranks=ranks, monitor_split=data.monitor_split)
    _start_from(trainer, state, warm_start)
    try:
        trainer.fit()
    except StopRequested as stop:
        ranks.close()
        sys.exit(128 + stop.signum)
    if not ranks.finish() or not ranks.close():
        abandon("")  # rank 0 says why; this rank must not outlive the run
    sys.exit(0)


def relaunch_distributed(config: RunConfig, argv: list[str]) -> None:
    """With --nproc N (N > 1), replace this process with torchrun running the same command on
    N ranks; under torchrun already, or with one process, do nothing."""
    from advtui.engine.distributed import exec_under_torchrun, under_torchrun

    if config.nproc > 1 and not under_torchrun():
        exec_under_torchrun(config.nproc, argv)


def _health_monitor(config: RunConfig, events_path: Path) -> HealthMonitor:
    """The run's health monitor. A resumed run replays its stream so far, so a warning raised
    before is not raised again and "stuck since epoch N" keeps its N."""
    if not events_path.exists():
        return HealthMonitor(config.to_dict())
    return replay(read_events(events_path), config.to_dict())


def _load_warm_start(registry: Registry, config: RunConfig, device) -> dict[str, Any]:
    """The final checkpoint of ``config.init_from``, checked to fit this run's model (keys,
    shapes and tensors) before the run is recorded."""
    from advtui.engine.checkpoint import check_model_state, load_checkpoint

    source = registry.resolve_run(config.init_from)
    path = checkpoint_path(registry, source, "final")
    state = load_checkpoint(path, map_location=device)
    src = state.get("config") or {}
    if (src.get("model"), src.get("dataset")) != (config.model, config.dataset):
        raise ConfigError(
            f"--init-from {source['id']} trained {src.get('model')} on {src.get('dataset')}, "
            f"not {config.model} on {config.dataset}")
    check_model_state(_model_shapes(config), state.get("model"), path, f"{config.model} on {config.dataset}", src)
    return state


def _start_from(trainer, state: dict[str, Any] | None, warm_start: dict[str, Any] | None) -> None:
    """A resumed run continues from its checkpoint; a new one may start from another run's weights."""
    if state is not None:
        trainer.load_state(state)
    elif warm_start is not None:
        _apply_warm_start(trainer, warm_start)


def _apply_warm_start(trainer, state: dict[str, Any]) -> None:
    """Start from pre-trained weights (Algorithm 1, line 3): the classifier, and the learned
    optimizer too when the source trained one of the same kind. Optimizer states start fresh."""
    trainer.model.load_state_dict(state["model"])
    same_kind = state.get("maximizer_kind") == DEFENSE_SPECS[trainer.config.defense].maximizer
    if same_kind and state.get("maximizer") is not None and trainer.maximizer is not None:
        trainer.maximizer.load_state_dict({"net": state["maximizer"]["net"]})


def _count(model) -> int:
    from advtui.engine.models import count_parameters

    return count_parameters(model)
