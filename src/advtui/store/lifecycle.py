"""A run's record and its life: the one place that writes a run's ``status``.

::

    queued ──► running ──► finished
      │           ├──────► failed
      │           └──────► killed
      ├──► failed            (never started: unstartable, its dependency failed, its launch failed)
      └──► killed            (cancelled or killed before it started)

    failed | killed | finished ──► queued     (resume; a finished run trains further epochs)
    anything but running ──► running          (`advtui run --resume` attaches to any stopped run)
    running ──► what it was before            (a restart that failed before training: put_back)
    queued ──► what it was before             (a resume cancelled before it started: put_back_queued)

A ``running`` record whose process is gone (``kill -9``, a crash) is marked failed by whoever
reads it first (``settle_vanished``: ``ls``, ``show``, ``kill``, ``resume``; the scheduler's
reconcile does the same for the runs it launched).

The runner (the training process itself), the queue (cancel, kill, resume) and the scheduler
(launch failures, vanished processes) all move runs through these functions, so every record
ends the same way whoever ended it. Writes that race with another process (the scheduler
failing a run while the run records its own end) name the status they expect with
``only_from``: the change happens only if the record still has it, and the call says whether
it did.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from advtui.core.process import record_alive, this_process, why_not_alive
from advtui.core.errors import AdvtuiError
from advtui.core.status import ACTIVE_RUNS, ENDED_RUNS, RUN_STATUSES, RUN_TRANSITIONS
from advtui.store.registry import RUNS, Registry

QUEUED, RUNNING, FINISHED, FAILED, KILLED = RUN_STATUSES
# The sets and the transition table are the core's (advtui.core.status); these names stay the lifecycle's.
ACTIVE, ENDED, TRANSITIONS = ACTIVE_RUNS, ENDED_RUNS, RUN_TRANSITIONS


def default_run_name(config: dict[str, Any]) -> str:
    return config.get("name") or f"{config['defense']}-{config['dataset']}-s{config['seed']}"


def _new_record(config: dict[str, Any]) -> dict[str, Any]:
    """The fields a new run's record starts with, from its whole (validated) config."""
    return {
        "name": default_run_name(config), "group": config.get("group"), "defense": config["defense"],
        "dataset": config["dataset"], "model": config["model"], "config": config,
        "epochs": config["epochs"], "epoch": 0, "checkpoints": {}, "metrics": {},
    }


def _running_fields(**fields: Any) -> dict[str, Any]:
    """A run that starts now in this process; an earlier end (of a resumed run) is cleared."""
    return {"status": RUNNING, **this_process(), "started": time.time(), "ended": None, "error": None, **fields}


def _check(only_from: str | None, to: str) -> None:
    if only_from is not None and to not in TRANSITIONS[only_from]:
        raise ValueError(f"a run cannot move from {only_from} to {to}")


def _move(registry: Registry, run_id: str, to: str, only_from: str | None, fields: dict[str, Any]) -> bool:
    _check(only_from, to)
    change = {**fields, "status": to}
    if only_from is None:
        registry.update_run(run_id, **change)  # RunNotFoundError if there is no such run
        return True
    return registry.update(RUNS, {"id": run_id, "status": only_from}, change) > 0


# -- birth -----------------------------------------------------------------------------------------
def create_queued(registry: Registry, config: dict[str, Any]) -> dict[str, Any]:
    """A new run waiting for a scheduler to start it (``advtui queue train``, the dashboard)."""
    return _create(registry, config, {"status": QUEUED})


def create_running(registry: Registry, config: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A new run that this process starts training now (``advtui run`` in the foreground)."""
    return _create(registry, config, _running_fields(**fields))


def _create(registry: Registry, config: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """Insert a new run under a name no other run of the folder has. Every creation holds the
    queue's lock while it picks the name and writes the record, so two processes creating
    runs at once cannot both take one name."""
    with registry.transaction():
        record = _new_record(config)
        name = unique_name(record["name"], {r.get("name") for r in registry.runs()})
        if name != record["name"]:
            record["name"] = name
            if record["config"].get("name") is not None:
                record["config"] = {**record["config"], "name": name}
        return registry.create_run({**record, **fields})


def unique_name(name: str, taken: set[Any]) -> str:
    """``name``, or ``name-2``, ``name-3``... the first that is not ``taken``."""
    if name not in taken:
        return name
    number = 2
    while f"{name}-{number}" in taken:
        number += 1
    return f"{name}-{number}"


# -- moves -----------------------------------------------------------------------------------------
def mark_running(registry: Registry, run_id: str, **fields: Any) -> dict[str, Any]:
    """This process starts (or resumes) training an existing run; returns the fields written."""
    change = _running_fields(**fields)
    registry.update_run(run_id, **change)
    return change


def record_launch(registry: Registry, run_id: str, pid: int, pid_start_time: float, host: str) -> bool:
    """A scheduler launched the run's process: until the process attaches (``mark_running``),
    the queued record shows this pid, so a kill in between finds it."""
    return registry.update(RUNS, {"id": run_id, "status": QUEUED},
                           {"pid": pid, "pid_start_time": pid_start_time, "host": host}) > 0


def mark_finished(registry: Registry, run_id: str, **fields: Any) -> None:
    _move(registry, run_id, FINISHED, None, {"ended": time.time(), **fields})


def mark_failed(registry: Registry, run_id: str, error: str, *, only_from: str | None = None,
                **fields: Any) -> bool:
    """The run ended with ``error`` (or never started); False if ``only_from`` no longer held."""
    return _move(registry, run_id, FAILED, only_from, {"ended": time.time(), "error": error, **fields})


def mark_killed(registry: Registry, run_id: str, error: str, *, only_from: str | None = None,
                **fields: Any) -> bool:
    """The run was stopped (its last checkpoint stays, so ``resume`` continues it), or cancelled
    before it started; False if ``only_from`` no longer held."""
    return _move(registry, run_id, KILLED, only_from, {"ended": time.time(), "error": error, **fields})


def put_back(registry: Registry, run_id: str, before: dict[str, Any]) -> bool:
    """A restart that failed before training began (a checkpoint that does not fit, say): the
    record returns to the fields it had (``before``, its status among them), as if never
    started; False if it is no longer ``running``."""
    _check(RUNNING, before.get("status") or FAILED)
    return registry.update(RUNS, {"id": run_id, "status": RUNNING}, before) > 0


def put_back_queued(registry: Registry, run_id: str, before: dict[str, Any]) -> bool:
    """A resume cancelled (or killed) before its process started: the record returns to the
    fields ``resume`` rewrote (``before``, its status among them); False if it is no longer
    ``queued`` (its process started meanwhile)."""
    if before.get("status") not in (FINISHED, FAILED, KILLED):
        return mark_killed(registry, run_id, "cancelled before it started", only_from=QUEUED)
    return registry.update(RUNS, {"id": run_id, "status": QUEUED}, before) > 0


def mark_queued_again(registry: Registry, run_id: str, **fields: Any) -> None:
    """A stopped run waits to be started again (``advtui resume``); its last end is cleared."""
    _move(registry, run_id, QUEUED, None, {"ended": None, "error": None, **fields})


# -- a process that died without recording its end -------------------------------------------------
def settle_vanished(registry: Registry, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as it stands once a dead process is accounted for: a ``running`` run of this
    host whose process (pid and start time, as the scheduler checks) is gone is marked failed
    with "process vanished", so no command shows a dead run as running (``kill -9``, a crash,
    a power cut). Where the store cannot be written, the returned record says so unrecorded."""
    if record.get("status") != RUNNING or record.get("host") not in (None, socket.gethostname()):
        return record
    if record_alive(record):
        return record
    reason = f"process vanished ({why_not_alive(record.get('pid'), record.get('pid_start_time'))})"
    try:
        mark_failed(registry, record["id"], reason, only_from=RUNNING)
        return registry.get_run(record["id"]) or record
    except (OSError, AdvtuiError):  # a read-only or full store: say what is true, unrecorded
        return {**record, "status": FAILED, "error": f"{reason} (not recorded: the store cannot be written)"}


def settle_all_vanished(registry: Registry, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``settle_vanished`` for a listing: only the running records are looked at."""
    return [settle_vanished(registry, r) if r.get("status") == RUNNING else r for r in records]
