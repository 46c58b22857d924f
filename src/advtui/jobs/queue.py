"""The job queue: training and evaluation jobs stored in the registry's ``jobs`` table.

A job is one process to run for one run. Its document:

=================  ==========================================================================
``id``             ``j`` + 6 hex digits (never a run id, which is hex only, so ``kill REF``
                   can tell the two apart)
``kind``           ``train`` (``advtui run --run-id``) or ``eval`` (``advtui eval RUN``)
``run_id``         the run it trains or evaluates
``status``         queued, running, done, failed, cancelled
``priority``       higher starts first; equal priorities start oldest first
``needs``          ``gpu``, ``cpu`` or ``auto`` (a GPU where the machine has one, else a CPU slot)
``gpu_index``      the one GPU it must use (from ``--device cuda:N``), else None
``nproc``          train: processes of one DDP run (``--nproc``): that many GPUs (or CPU shares)
``depends_on``     job ids that must be ``done`` first (an auto-eval waits for its training,
                   a run started ``--init-from`` another waits for that one)
``attacks``        eval: the attack list passed to ``advtui eval --attacks``
``eval_options``   eval: {"limit", "batch_size", "eps", "seed"} given to ``advtui eval``
``pid``            the launched process, with ``pid_start_time`` (psutil create_time) and
                   ``host``; ``slot`` ({"gpu": i} or {"cpu": n}), ``log`` (relative to runs/)
``exit_code``      the process's exit code when known; ``error`` why it failed or was cancelled
``blocked_by``     the dependency whose failure cancelled it (``resume`` re-queues such jobs)
=================  ==========================================================================

The functions here only change the registry (and, for ``kill``, signal a process); starting
queued jobs is the scheduler's work (``advtui.jobs.scheduler``).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from advtui.core.config import RunConfig, recorded_config
from advtui.store import lifecycle
from advtui.core.attack_specs import check_transfer_source, parse_attack
from advtui.core.format import plain_line
from advtui.core.records import KILLED_BY_USER, JobRecord, RunRecord
from advtui.core.status import ACTIVE_JOBS, can_resume
from advtui.core.paths import run_dir
from advtui.core.process import record_alive
from advtui.core.errors import (
    AdvtuiError,
    AmbiguousRunError,
    ConfigError,
    RegistryError,
    RunNotFoundError,
)
from advtui.core.events import EVENTS_FILE, read_events
from advtui.jobs.launcher import DEFAULT_GRACE_S, stop_process
from advtui.options import check_epochs, check_eval_options, check_grace, check_priority, expand_seeds
from advtui.store.registry import JOBS, Registry
from advtui.jobs.executors import executor_of_job

ACTIVE = ACTIVE_JOBS
FINAL = ("done", "failed", "cancelled")
EVAL_OPTION_FLAGS = {"limit": "--limit", "batch_size": "--batch-size", "eps": "--eps", "step_size": "--step-size",
                     "seed": "--seed"}


class JobNotFoundError(AdvtuiError):
    """A job id that matches no job (or several)."""


@dataclass
class QueuedTraining:
    """What ``queue_train`` created: the run record, its train job, and its auto-eval jobs."""

    run: dict[str, Any]
    job: dict[str, Any]
    evals: list[dict[str, Any]] = field(default_factory=list)


# -- creating jobs ---------------------------------------------------------------------------------
def _insert_job(registry: Registry, doc: dict[str, Any]) -> dict[str, Any]:
    with registry.transaction() as db:
        jobs = db.table(JOBS, cache_size=0)
        taken = {j.get("id") for j in jobs.all()} | registry.archived_job_ids()  # ended jobs too
        job_id = "j" + secrets.token_hex(3)
        while job_id in taken:
            job_id = "j" + secrets.token_hex(3)
        job = {
            "id": job_id, "status": "queued", "priority": 0, "needs": "auto", "gpu_index": None,
            "depends_on": [], "created": time.time(), "started": None, "ended": None,
            "pid": None, "pid_start_time": None, "host": None, "slot": None, "log": None,
            "exit_code": None, "error": None, "blocked_by": None, "kill_requested": None,
            **doc,
        }
        job["id"] = job_id
        jobs.insert(job)
    return job


def device_needs(device: str) -> tuple[str, int | None]:
    """What a job with this --device needs: ('cpu'|'gpu'|'auto', the GPU index it asks for)."""
    if device == "cpu":
        return "cpu", None
    if device.startswith("cuda"):
        _, _, index = device.partition(":")
        return "gpu", int(index) if index else None
    return "auto", None


def parse_attacks(attacks: str) -> list[str]:
    """The comma-separated attack list, each spec checked now (not when the job runs)."""
    specs = [a.strip() for a in attacks.split(",") if a.strip()]
    if not specs:
        raise ConfigError("--attacks needs at least one attack, e.g. natural,pgd-10")
    for spec in specs:
        parse_attack(spec)
    return specs


def queue_train(
    registry: Registry,
    config: RunConfig,
    *,
    priority: int = 0,
    auto_eval: str | None = None,
    eval_options: dict[str, Any] | None = None,
) -> QueuedTraining:
    """Create a queued run record and its train job (and, with ``auto_eval``, eval jobs that
    wait for the training to finish). Nothing starts until a scheduler picks the job up."""
    attacks = parse_attacks(auto_eval) if auto_eval else None
    check_priority(priority)
    eval_options = _clean_eval_options(eval_options)
    after = warm_start_dependencies(registry, config.to_dict())
    needs, gpu_index = device_needs(config.device)
    if gpu_index is not None:
        # The scheduler pins the job to that GPU with CUDA_VISIBLE_DEVICES, where it is cuda:0.
        config = RunConfig.from_dict({**config.to_dict(), "device": "cuda"})
    with registry.transaction():  # one atomic step for other processes: no run without its job
        run = lifecycle.create_queued(registry, config.to_dict())
        job = _insert_job(registry, {"kind": "train", "run_id": run["id"], "priority": priority,
                                     "needs": needs, "gpu_index": gpu_index, "depends_on": after,
                                     "nproc": config.nproc})
        evals = []
        if attacks:
            evals.append(_insert_job(registry, {
                "kind": "eval", "run_id": run["id"], "priority": priority, "needs": needs,
                "gpu_index": gpu_index, "depends_on": [job["id"]], "attacks": attacks,
                "eval_options": eval_options, "auto": True,
            }))
    return QueuedTraining(run, job, evals)


def warm_start_dependencies(registry: Registry, config: dict[str, Any]) -> list[str]:
    """A run started from another run's final weights (--init-from) waits for that run's
    training when it is still queued or running; without a final checkpoint or any training
    ahead, it is an error now rather than a failed job later."""
    source_ref = config.get("init_from")
    if not source_ref:
        return []
    source = registry.resolve_run(source_ref)
    pending = [j["id"] for j in jobs_of_run(registry, source["id"], kind="train") if j["status"] in ACTIVE]
    if not pending and not (source.get("checkpoints") or {}).get("final"):
        raise ConfigError(f"--init-from {source['id']} ({source.get('status')}) has no final checkpoint "
                          f"and no training queued: `advtui resume {source['id']}` finishes it first")
    return pending


def seed_configs(base: RunConfig, seeds: list[int]) -> list[RunConfig]:
    """One config per seed, grouped: group defaults to the run name (or DEFENSE-DATASET) and each
    run is named GROUP-sSEED, so `compare --group` finds the seeds of one experiment."""
    group = base.group or base.name or f"{base.defense}-{base.dataset}"
    return [RunConfig.from_dict({**base.to_dict(), "seed": seed, "group": group, "name": f"{group}-s{seed}"})
            .validate() for seed in seeds]


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' or '0-4' (or a mix) -> [0, 1, 2, ...] without repeats (see options.expand_seeds)."""
    return expand_seeds(text)


def _clean_eval_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The given evaluation options, checked as `advtui eval` checks them: a job that would fail
    at the worker is refused now, before it is queued."""
    cleaned = {k: v for k, v in (options or {}).items() if v is not None and k in EVAL_OPTION_FLAGS}
    check_eval_options(**cleaned)
    return cleaned


def queue_eval(
    registry: Registry,
    run_ref: str,
    attacks: str | list[str] | None,
    *,
    options: dict[str, Any] | None = None,
    priority: int = 0,
    depends_on: list[str] | None = None,
) -> dict[str, Any]:
    """Queue ``advtui eval RUN --attacks ...`` (None: the eval command's default attacks). A run
    still training (or queued) gets an eval that waits for its train job; a run with no final
    checkpoint and no training ahead is an error. ``depends_on`` adds jobs to wait for (the
    trainings of the runs whose learned attackers or surrogates the attacks use)."""
    specs = parse_attacks(attacks) if isinstance(attacks, str) else (list(attacks) if attacks else None)
    check_priority(priority)
    eval_options = _clean_eval_options(options)
    run = registry.resolve_run(run_ref)
    for text in specs or []:
        spec = parse_attack(text)
        if spec.transfer and spec.source:
            check_transfer_source(spec, registry.resolve_run(spec.source)["id"], run["id"])
    pending = [j for j in jobs_of_run(registry, run["id"], kind="train") if j["status"] in ACTIVE]
    training_here = run.get("status") == "running" and record_alive(run)
    if not pending and not training_here and not (run.get("checkpoints") or {}).get("final"):
        raise ConfigError(f"run {run['id']} ({run.get('status')}) has no final checkpoint to evaluate: "
                          f"`advtui resume {run['id']}` finishes it first")
    needs, gpu_index = device_needs((run.get("config") or {}).get("device", "auto"))
    return _insert_job(registry, {
        "kind": "eval", "run_id": run["id"], "priority": priority, "needs": needs, "gpu_index": gpu_index,
        "depends_on": [j["id"] for j in pending] + [d for d in depends_on or [] if d not in {j["id"] for j in pending}],
        "attacks": specs, "eval_options": eval_options,
    })


# -- reading ------------------------------------------------------------------------------------------
def list_jobs(registry: Registry, status: str | None = None) -> list[dict[str, Any]]:
    jobs = registry.all(JOBS)
    if status is not None:
        jobs = [j for j in jobs if j.get("status") == status]
    return sorted(jobs, key=lambda j: j.get("created", 0))


def jobs_of_run(registry: Registry, run_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [j for j in list_jobs(registry) if j.get("run_id") == run_id and (kind is None or j.get("kind") == kind)]


def resolve_job(registry: Registry, ref: str) -> dict[str, Any]:
    """A job by exact id or unique id prefix."""
    jobs = registry.all(JOBS)
    exact = [j for j in jobs if j.get("id") == ref]
    if exact:
        return exact[0]
    found = [j for j in jobs if ref and j.get("id", "").startswith(ref)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise JobNotFoundError(f"{ref!r} matches several jobs ({', '.join(j['id'] for j in found[:5])}): give the full id")
    raise JobNotFoundError(f"no job {ref!r} in {registry.root}: `advtui queue ls` lists the jobs")


def is_job_ref(registry: Registry, ref: str) -> bool:
    return ref.startswith("j") and any(j.get("id", "").startswith(ref) for j in registry.all(JOBS))


# -- changing ----------------------------------------------------------------------------------------
def finish_job(registry: Registry, job: dict[str, Any], status: str, **fields: Any) -> bool:
    """Move a job from its current status to a final one, only if nobody did so meanwhile."""
    changed = registry.update(JOBS, {"id": job["id"], "status": job["status"]},
                              {"status": status, "ended": time.time(), **fields})
    return changed > 0


def cancel_dependents(registry: Registry, job: dict[str, Any], reason: str) -> list[str]:
    """Cancel the queued jobs that wait on ``job`` (which will never be done); returns their ids."""
    cancelled = []
    ended = JobRecord.from_dict(job)
    for other in list_jobs(registry, "queued"):
        waiting = JobRecord.from_dict(other)
        if ended.id in (waiting.depends_on or []):
            why = f"cancelled: {ended.kind} job {ended.id} of run {ended.run_id} {reason}"
            if finish_job(registry, other, "cancelled", blocked_by=ended.id, error=why):
                cancelled.append(other["id"])
                if waiting.kind == "train" and waiting.run_id:  # its run would otherwise stay queued forever
                    try:
                        lifecycle.mark_failed(registry, waiting.run_id, why, only_from=lifecycle.QUEUED)
                    except RegistryError:
                        pass  # a damaged run file is never overwritten: the cancelled job says why
                cancelled += cancel_dependents(registry, other, "was cancelled")
    return cancelled


def cancel_job(registry: Registry, ref: str, reason: str = "cancelled by user") -> dict[str, Any]:
    """Cancel a queued job (a running one is stopped with ``kill``). A cancelled train job's run
    becomes 'killed' (never started; ``resume`` queues it again) and its evals are cancelled."""
    job = resolve_job(registry, ref)
    if job["status"] == "running":
        raise ConfigError(f"job {job['id']} is running: `advtui kill {job['id']}` stops it")
    if job["status"] != "queued":
        raise ConfigError(f"job {job['id']} is already {job['status']}")
    if not finish_job(registry, job, "cancelled", error=reason):
        raise ConfigError(f"job {job['id']} changed status meanwhile: see `advtui queue ls`")
    if job["kind"] == "train" and isinstance(job.get("resumed_from"), dict):
        # A resume that never started: the run is what it was before `resume` (finished, killed...).
        lifecycle.put_back_queued(registry, job["run_id"], job["resumed_from"])
    elif job["kind"] == "train":
        lifecycle.mark_killed(registry, job["run_id"], f"{reason} before it started", only_from=lifecycle.QUEUED)
    cancel_dependents(registry, job, "was cancelled")
    return {**job, "status": "cancelled", "error": reason}


@dataclass
class KillReport:
    run_id: str | None
    job_id: str | None
    outcome: str  # cancelled (was queued) | terminated | killed (SIGKILL needed) | gone
    message: str


def kill(registry: Registry, ref: str, grace_s: float = DEFAULT_GRACE_S, executor=None) -> KillReport:
    """Stop a run or job: a queued job is cancelled; a running process gets SIGTERM (the run
    checkpoints and ends 'killed'), then SIGKILL after ``grace_s`` seconds.

    Blocks up to ``grace_s`` (+ a few seconds): call it from a worker thread in a UI. Works from
    any process (the scheduler that launched the job need not be this one).
    """
    check_grace(grace_s)
    job, record = _kill_target(registry, ref)
    run = RunRecord.from_dict(record) if record is not None else None
    typed = JobRecord.from_dict(job) if job is not None else None  # None exactly when job is
    if job is not None and typed is not None and typed.status == "queued":
        cancel_job(registry, job["id"], "cancelled by `advtui kill`")
        return KillReport(typed.run_id, typed.id, "cancelled", f"job {typed.id} was queued: cancelled")
    if job is not None and typed is not None and typed.pid is None:
        job = _wait_for_pid(registry, job)  # claimed a moment ago: its process is starting
        typed = JobRecord.from_dict(job)
    pid, started = (typed.pid, typed.pid_start_time) if typed else (None, None)
    if pid is None and run is not None:
        pid, started = run.pid, run.pid_start_time
    if job is not None:
        registry.update(JOBS, {"id": job["id"], "status": "running"}, {"kill_requested": time.time()})
    if executor is None and job is not None:
        # The process may be on another node: only the executor that placed it (a Ray actor) can stop it.
        executor = executor_of_job(job)
    if pid and started is None:
        outcome = "unverified"  # any process may have that pid now: it is never signalled
    elif executor is not None and job is not None and pid:
        handle = executor.attach(pid, started, job=job)
        outcome = executor.stop(handle, grace_s) if handle is not None else "gone"
    else:
        outcome = stop_process(pid, started, grace_s) if pid else "gone"
    run_id = run.id if run else typed.run_id if typed else None
    note = {"terminated": "stopped by SIGTERM", "killed": f"did not stop within {grace_s:g}s of SIGTERM: SIGKILL",
            "gone": "its process had already ended",
            "unverified": f"pid {pid} was not signalled: no start time was recorded with it, so it cannot be told "
                          "from another process that took the pid"}[outcome]
    if run is not None and (typed is None or typed.kind == "train"):
        # The run records 'killed' itself on SIGTERM; after a SIGKILL (or if it never got that
        # far) record it here. Its last checkpoint (if any) stays, so `resume` continues it.
        lifecycle.mark_killed(registry, run.id, f"killed: {note}", only_from=lifecycle.RUNNING)
        if typed is not None and isinstance(typed.resumed_from, dict):
            lifecycle.put_back_queued(registry, run.id, typed.resumed_from)  # a resume that never began
        else:
            lifecycle.mark_killed(registry, run.id, f"killed before it started: {note}", only_from=lifecycle.QUEUED)
    if job is not None:
        current = resolve_job(registry, job["id"])
        if current["status"] == "running":
            finish_job(registry, current, "cancelled", error=f"{KILLED_BY_USER}: {note}", stopped_by="user")
        cancel_dependents(registry, current, "was killed")
    what = f"run {run_id}" + (f" (job {job['id']})" if job else "")
    return KillReport(run_id, job["id"] if job else None, outcome, f"{what}: {note}")


def _wait_for_pid(registry: Registry, job: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = resolve_job(registry, job["id"])
        if job.get("pid") is not None or job["status"] != "running":
            break
        time.sleep(0.05)
    return job


def _kill_target(registry: Registry, ref: str) -> tuple[dict | None, dict | None]:
    """(job, run) to stop for REF: a job id, or a run whose training (or eval) is active."""
    if is_job_ref(registry, ref):
        job = resolve_job(registry, ref)
        if job["status"] not in ACTIVE:
            raise ConfigError(f"job {job['id']} is not running (status {job['status']})")
        run = registry.get_run(job["run_id"]) if job["kind"] == "train" else None
        return job, run
    try:
        run = lifecycle.settle_vanished(registry, registry.resolve_run(ref))
    except AmbiguousRunError:
        raise
    except RunNotFoundError:
        raise RunNotFoundError(f"no run or job {ref!r}: `advtui ls` lists runs, `advtui queue ls` jobs") from None
    active = [j for j in jobs_of_run(registry, run["id"]) if j["status"] in ACTIVE]
    train = [j for j in active if j["kind"] == "train"]
    if train:
        return train[-1], run
    if run.get("status") == "running" and record_alive(run):
        return None, run  # a foreground `advtui run`, not launched by a scheduler
    evals = [j for j in active if j["kind"] == "eval" and j["status"] == "running"]
    if evals:
        return evals[-1], None
    why = f": {plain_line(run['error'])}" if str(run.get("error") or "").startswith("process vanished") else ""
    raise ConfigError(f"run {run['id']} is not running (status {run.get('status')}){why}")


def resume_point(registry: Registry, record: dict[str, Any]) -> str:
    """Where a resumed run continues: its last checkpoint's point, as the trainer wrote it in
    the run's events (epoch counted from 1, batches done in it), else the record's epoch; "the
    start" for a run without a checkpoint."""
    if not (record.get("checkpoints") or {}).get("last"):
        return "the start"
    last = None
    for event in read_events(run_dir(registry.root, record["id"]) / EVENTS_FILE, {"checkpoint"}):
        if event.get("name", "last.pt") == "last.pt":
            last = event
    if last is not None and isinstance(last.get("epoch"), int) and isinstance(last.get("batch"), int):
        epoch, batch = last["epoch"], last["batch"]
    else:
        epoch, batch = int(record.get("epoch") or 0), 0
    if batch:
        return f"epoch {epoch + 1} batch {batch}"
    return f"the start of epoch {epoch + 1}" if epoch else "the start"


# The fields of a run record that ``resume`` rewrites: kept in the job, so a resume cancelled
# before it starts puts the run back exactly as it was (a finished run stays finished).
RESUME_REWRITES = ("status", "ended", "error", "config", "epochs")


def resume(registry: Registry, ref: str, *, epochs: int | None = None, priority: int = 0,
           check_start: Callable[[dict[str, Any], RunConfig], None] | None = None) -> QueuedTraining:
    """Queue a killed or failed run again: the launched ``advtui run --run-id`` continues from
    its last checkpoint (or starts over when it has none). ``epochs`` extends a run, which
    also lets a finished run train further. Auto-evals cancelled because the training stopped
    are queued again behind the new train job.

    Everything is checked before the record changes: the epochs (the bounds of ``run``), the
    whole recorded config, and, with ``check_start`` (the command line's and the dashboard's
    checkpoint check, which needs torch), that the run's checkpoint loads and fits its model."""
    if epochs is not None:
        check_epochs(epochs)
    check_priority(priority)
    run = lifecycle.settle_vanished(registry, registry.resolve_run(ref))
    status = run.get("status")
    active = [j for j in jobs_of_run(registry, run["id"], kind="train") if j["status"] in ACTIVE]
    if active:
        raise ConfigError(f"run {run['id']} already has {active[-1]['status']} job {active[-1]['id']}")
    if status == "running" and record_alive(run):
        raise ConfigError(f"run {run['id']} is running (pid {run.get('pid')}): `advtui kill {run['id']}` first")
    recorded_config(run)  # a config lost or damaged is refused before anything is written
    config = dict(run["config"])
    if epochs is not None:
        if epochs <= run.get("epoch", 0):
            raise ConfigError(f"--epochs must exceed the {run.get('epoch', 0)} epochs run {run['id']} has done")
        config["epochs"] = epochs
    elif not can_resume(status):
        raise ConfigError(f"run {run['id']} already finished: pass --epochs N (more than "
                          f"{config.get('epochs')}) to train it further")
    try:
        checked = RunConfig.from_dict(config).validate()
    except (TypeError, ConfigError) as exc:  # a record edited by hand or damaged
        raise ConfigError(f"run {run['id']} cannot be resumed: its recorded config is not valid ({exc})") from None
    if check_start is not None:
        check_start(run, checked)
    needs, gpu_index = device_needs(config.get("device", "auto"))
    # Only a run that never started from its source still needs it (later it has its own checkpoint).
    after = [] if (run.get("checkpoints") or {}).get("last") else warm_start_dependencies(registry, config)
    before = {k: run[k] for k in RESUME_REWRITES if k in run}
    with registry.transaction():
        lifecycle.mark_queued_again(registry, run["id"], config=config, epochs=config.get("epochs", run.get("epochs")))
        job = _insert_job(registry, {"kind": "train", "run_id": run["id"], "priority": priority,
                                     "needs": needs, "gpu_index": gpu_index, "resumed": True,
                                     "depends_on": after, "nproc": int(config.get("nproc") or 1),
                                     "resumed_from": before})
        previous = {j["id"] for j in jobs_of_run(registry, run["id"], kind="train")} - {job["id"]}
        evals = []
        for other in jobs_of_run(registry, run["id"], kind="eval"):
            if other["status"] == "cancelled" and other.get("blocked_by") in previous:
                registry.update(JOBS, {"id": other["id"], "status": "cancelled"},
                                {"status": "queued", "depends_on": [job["id"]], "blocked_by": None,
                                 "error": None, "ended": None, "stopped_by": None})
                evals.append({**other, "status": "queued", "depends_on": [job["id"]]})
    return QueuedTraining(registry.get_run(run["id"]) or run, job, evals)
