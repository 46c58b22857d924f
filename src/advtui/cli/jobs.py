"""``advtui queue train|eval|ls|cancel``, ``worker``, ``kill``, ``resume`` and ``gpus``."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table

from advtui.cli.common import RunsDirOption, console, err_console, open_registry
from advtui.cli.train_options import build_config_from_options, with_train_options
from advtui.core.status import JOB_STATUSES
from advtui.core.format import fmt_time, format_bytes, format_number, plain_line, styled_status
from advtui.core.errors import ConfigError
from advtui.jobs.launcher import DEFAULT_GRACE_S, describe_exit
from advtui.jobs.executors import (
    address_help, build_executor, check_runs_dir_shared, cluster_gpu_sampler, executor_help, kind_of_job,
    shares_executors,
)
from advtui.jobs.monitor import GpuSampler, GpuSnapshot, ProcessSampler, process_owners
from advtui.jobs.queue import (
    cancel_job, kill as kill_target, list_jobs, parse_seeds, queue_eval as add_eval, queue_train as add_train,
    resume as resume_run, resume_point, seed_configs,
)
from advtui.options import (
    MAX_INT, check_choice, check_epochs, check_eval_options, check_grace, check_int, check_interval, check_priority,
    check_worker_options,
)
from advtui.jobs.scheduler import Scheduler, SchedulerPolicy, read_holder
from advtui.store.registry import RUNS

app = typer.Typer()  # queue (a group), worker, kill, resume, gpus: commands of the root
queue_app = typer.Typer(help="Queue trainings and evaluations for `advtui worker` (or the dashboard) to run.",
                        no_args_is_help=True)
app.add_typer(queue_app, name="queue")


@queue_app.command("train")
@with_train_options
def queue_train(
    seeds: Optional[str] = typer.Option(None, "--seeds", help="One run per seed, e.g. 0,1,2,3,4 or 0-4, in one group."),
    auto_eval: Optional[str] = typer.Option(None, "--auto-eval", metavar="ATTACKS",
                                            help="Evaluate each run with these attacks once it has finished, e.g. natural,pgd-10."),
    auto_eval_limit: Optional[int] = typer.Option(None, "--auto-eval-limit", help="Test examples for the auto-eval."),
    priority: int = typer.Option(0, help="Higher starts first."),
    runs_dir: Optional[Path] = RunsDirOption,
    *,
    train_options: dict[str, Any],
) -> None:
    """Queue a training run (same options as `advtui run`); a worker or the dashboard starts it."""
    if auto_eval_limit is not None:
        check_int("--auto-eval-limit", auto_eval_limit, 1, MAX_INT)
    check_priority(priority)
    base = build_config_from_options(train_options)
    configs = seed_configs(base, parse_seeds(seeds)) if seeds else [base]
    registry = open_registry(runs_dir)
    for config in configs:
        queued = add_train(registry, config, priority=priority, auto_eval=auto_eval,
                           eval_options={"limit": auto_eval_limit})
        evals = "".join(f", then eval job {e['id']} ({','.join(e['attacks'])})" for e in queued.evals)
        console.print(f"queued run [bold]{queued.run['id']}[/] ({queued.run['name']}) as job "
                      f"{queued.job['id']}{evals}")
    _hint_worker(registry)


@queue_app.command("eval")
def queue_eval(
    run_refs: list[str] = typer.Argument(..., metavar="RUN...", help="Run ids, id prefixes or names."),
    attacks: Optional[str] = typer.Option(None, "--attacks", help="Attack list, e.g. natural,pgd-10,cw-100 (default: `advtui eval`'s)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Test examples."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size."),
    eps: Optional[float] = typer.Option(None, help="L-inf radius (default the run's)."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    priority: int = typer.Option(0, help="Higher starts first."),
    runs_dir: Optional[Path] = RunsDirOption,
) -> None:
    """Queue `advtui eval` of runs; a run still training is evaluated when its training is done."""
    options = {"limit": limit, "batch_size": batch_size, "eps": eps, "seed": seed}
    check_eval_options(**options)
    registry = open_registry(runs_dir)
    for ref in run_refs:
        job = add_eval(registry, ref, attacks, options=options, priority=priority)
        after = f" after job {', '.join(job['depends_on'])}" if job["depends_on"] else ""
        console.print(f"queued eval job [bold]{job['id']}[/] of run {job['run_id']}{after}")
    _hint_worker(registry)


@queue_app.command("ls")
def queue_ls(
    status: Optional[str] = typer.Option(None, help="Only jobs with this status (queued, running, done, failed, cancelled)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    runs_dir: Optional[Path] = RunsDirOption,
) -> None:
    """List jobs, oldest first."""
    check_choice("--status", status, JOB_STATUSES)
    registry = open_registry(runs_dir)
    jobs = list_jobs(registry, status)
    for problem in registry.record_problems():  # a damaged job is left out of the queue: say which
        print(f"warning: {problem}", file=sys.stderr)
    if as_json:
        console.print_json(json.dumps(jobs))
        return
    if not jobs:
        console.print("no jobs: `advtui queue train --defense rnn-adv` queues one")
        return
    names = {r["id"]: r.get("name", "") for r in registry.all(RUNS)}
    table = Table(box=None, header_style="bold")
    for column in ("job", "kind", "run", "name", "status", "prio", "slot", "after", "pid", "started", "note"):
        table.add_column(column, overflow="fold" if column == "note" else "ellipsis")
    for job in jobs:
        where = _where(job)
        note = plain_line(job.get("error") or "", limit=80)
        if job.get("kind") == "eval" and not note:
            note = ",".join(job.get("attacks") or ["(default attacks)"])
        if job.get("exit_code") not in (None, 0) and not note:
            note = describe_exit(job["exit_code"])
        table.add_row(job["id"], job.get("kind", "?"), job.get("run_id", "?"), names.get(job.get("run_id"), "?"),
                      styled_status(job.get("status")), str(job.get("priority", 0)), where,
                      ",".join(job.get("depends_on") or []) or "-", str(job.get("pid") or "-"),
                      fmt_time(job.get("started")), note)
    console.print(table)


@queue_app.command("cancel")
def queue_cancel(
    job_refs: list[str] = typer.Argument(..., metavar="JOB...", help="Job ids (or unique prefixes)."),
    runs_dir: Optional[Path] = RunsDirOption,
) -> None:
    """Cancel queued jobs (a running one is stopped with `advtui kill`)."""
    registry = open_registry(runs_dir)
    for ref in job_refs:
        job = cancel_job(registry, ref)
        console.print(f"cancelled job {job['id']} ({job['kind']} of run {job['run_id']})")


def _where(job: dict) -> str:
    """The job's slot: 'gpu 0', 'cpu', or what the row of the executor that placed it says
    ('ray 10.0.0.5 gpu 1': a Ray node and the GPUs Ray gave it); a queued job's needs."""
    slot = job.get("slot") or {}
    kind = kind_of_job(job)
    if slot and kind is not None and kind.where is not None:
        return kind.where(job)
    return f"gpu {slot['gpu']}" if "gpu" in slot else ("cpu" if slot else job.get("needs", ""))


def _hint_worker(registry) -> None:
    if read_holder(registry.root) is None:
        err_console.print("[dim]no scheduler is running: start `advtui worker` (or open the dashboard)[/]")


def _parse_gpu_list(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if not text:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--gpus must be GPU indices like 0,1, got {text!r}") from None


@app.command()
def worker(
    once: bool = typer.Option(False, "--once", help="Exit when the queue is empty and its jobs have ended."),
    cpu_slots: int = typer.Option(1, "--cpu-slots", help="Jobs at once on CPU (machines without a GPU, or --device cpu jobs)."),
    slots_per_gpu: int = typer.Option(1, "--slots-per-gpu", help="Jobs at once per GPU."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="Use only these GPU indices, e.g. 0,1."),
    min_free_memory: float = typer.Option(1024.0, "--min-free-memory", help="MiB a GPU must have free to get a job."),
    max_utilization: float = typer.Option(90.0, "--max-utilization", help="Skip GPUs busier than this % with others' work."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads per job (default: CPU cores / slots)."),
    poll: float = typer.Option(1.0, "--poll", help="Seconds between scheduling steps."),
    executor_name: str = typer.Option("local", "--executor", help=f"{executor_help()}."),
    address: Optional[str] = typer.Option(None, "--address", help=address_help()),
    gpus_per_job: float = typer.Option(1.0, "--gpus-per-job", help=f"With --executor {shares_executors()}: GPUs each job asks for on a cluster with GPUs (0.25: four runs share one)."),
    cpus_per_job: float = typer.Option(1.0, "--cpus-per-job", help=f"With --executor {shares_executors()}: CPUs each job asks for (also its math threads)."),
    runs_dir: Optional[Path] = RunsDirOption,
) -> None:
    """Run queued jobs headless (the dashboard does the same while it is open).

    Only one scheduler acts at a time: a second worker waits for the first.

    Jobs keep running when the worker stops; the next worker or dashboard watches them again.
    With --executor ray each job runs on the node of a Ray cluster that Ray picks.
    """
    check_worker_options(cpu_slots=cpu_slots, slots_per_gpu=slots_per_gpu, min_free_memory=min_free_memory,
                         max_utilization=max_utilization, threads=threads, poll=poll, gpus_per_job=gpus_per_job,
                         cpus_per_job=cpus_per_job)
    registry = open_registry(runs_dir)
    policy = SchedulerPolicy(cpu_slots=cpu_slots, slots_per_gpu=slots_per_gpu, gpus=_parse_gpu_list(gpus),
                             min_free_memory_mib=min_free_memory, max_gpu_utilization=max_utilization,
                             threads_per_job=threads)

    def say(message: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}")

    executor = build_executor(executor_name, address, gpus_per_job, cpus_per_job)
    if executor.places_jobs:
        registry.root.mkdir(parents=True, exist_ok=True)
        say(executor.describe())
        check_runs_dir_shared(executor, registry.root)
    scheduler = Scheduler(registry, executor, policy=policy, on_event=lambda kind, job, message: say(message),
                          role="worker")
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        say(f"worker on {registry.root} ({_describe_slots(scheduler)})")
        scheduler.serve(once=once, poll_s=poll, stop=stop, say=say)
    finally:
        still = len(scheduler.running())
        scheduler.release()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stop.is_set() and still:
        say(f"worker stopped; {still} job(s) keep running (the next worker or dashboard watches them)")
    elif once:
        say("queue drained")


def _describe_slots(scheduler: Scheduler) -> str:
    if scheduler.executor.places_jobs:
        return f"{scheduler.executor.title} places each job"
    snapshot = scheduler.gpu_sampler.sample()
    policy = scheduler.policy
    if snapshot.gpus:
        return f"{snapshot.message}; {policy.slots_per_gpu} slot(s) per GPU, {policy.cpu_slots} CPU slot(s)"
    return f"{snapshot.message}; {policy.cpu_slots} CPU slot(s)"


@app.command("kill")
def kill_command(
    ref: str = typer.Argument(..., metavar="RUN|JOB", help="A run (id, prefix or name) or a job id."),
    grace: float = typer.Option(DEFAULT_GRACE_S, "--grace", help="Seconds between SIGTERM and SIGKILL."),
    runs_dir: Optional[Path] = RunsDirOption,
) -> None:
    """Stop a run or job: SIGTERM (the run saves a checkpoint and ends 'killed'), SIGKILL after --grace."""
    check_grace(grace)
    registry = open_registry(runs_dir)
    report = kill_target(registry, ref, grace_s=grace)
    console.print(report.message)
    if report.run_id and report.outcome != "cancelled":
        run = registry.get_run(report.run_id) or {}
        if run.get("status") == "killed":
            console.print(f"run {report.run_id} is killed: `advtui resume {report.run_id}` queues it again")


@app.command("resume")
def resume_command(
    run_ref: str = typer.Argument(..., metavar="RUN", help="Run id, id prefix or name."),
    epochs: Optional[int] = typer.Option(None, help="Train to this many epochs (also extends a finished run)."),
    priority: int = typer.Option(0, help="Higher starts first."),
    runs_dir: Optional[Path] = RunsDirOption,
) -> None:
    """Queue a killed or failed run again; it continues from its last checkpoint."""
    from advtui.runner import check_resume_checkpoint  # torch: loaded when a checkpoint is checked

    if epochs is not None:
        check_epochs(epochs)
    registry = open_registry(runs_dir)
    queued = resume_run(registry, run_ref, epochs=epochs, priority=priority, check_start=(
        lambda run, config: check_resume_checkpoint(registry, run, config)))
    start = resume_point(registry, queued.run)
    evals = f"; eval job(s) {', '.join(e['id'] for e in queued.evals)} queued again" if queued.evals else ""
    console.print(f"queued run [bold]{queued.run['id']}[/] ({queued.run.get('name')}) as job {queued.job['id']}: "
                  f"continues from {start}{evals}")
    _hint_worker(registry)


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list, width: int = 30) -> str:
    """Utilization history (0-100) as block characters; gaps (n/a) as spaces."""
    return "".join(" " if v is None else SPARK[min(len(SPARK) - 1, int(v / 100 * len(SPARK)))]
                   for v in values[-width:])


def render_gpus(snapshot: GpuSnapshot, sampler: GpuSampler, runs: list[dict], stats: dict) -> Group:
    """The GPU table (or the reason there is none) and the running runs' CPU and memory."""
    parts: list[Any] = []
    if snapshot.gpus:
        table = Table(box=None, header_style="bold", title=snapshot.message, title_justify="left")
        for column in ("gpu", "name", "util", "memory", "temp", "power", "history", "processes"):
            table.add_column(column)
        for gpu in snapshot.gpus:
            memory = f"{format_bytes(gpu.memory_used)} / {format_bytes(gpu.memory_total)}"
            power = f"{format_number(gpu.power, ' W')} / {format_number(gpu.power_limit, ' W')}"
            procs = " ".join(f"{p.pid}" + (f"→{p.run_id}" + (f"({p.kind})" if p.kind == "eval" else "")
                                           if p.run_id else "") for p in gpu.processes) or "-"
            table.add_row(str(gpu.index), gpu.name, format_number(gpu.utilization, "%"), memory,
                          format_number(gpu.temperature, "°C"), power,
                          sparkline(sampler.history(gpu.index)["utilization"]), procs)
        parts.append(table)
    else:
        parts.append(f"{snapshot.message}; jobs run in CPU slots")
    live = [r for r in runs if r["id"] in stats]
    if live:
        runs_table = Table(box=None, header_style="bold", title="running runs (process and children)",
                           title_justify="left")
        for column in ("run", "name", "pid", "cpu %", "memory", "threads", "children"):
            runs_table.add_column(column)
        for run in live:
            s = stats[run["id"]]
            runs_table.add_row(run["id"], run.get("name", ""), str(s.pid), f"{s.cpu_percent:.0f}",
                               format_bytes(s.memory_rss), str(s.threads), str(s.children))
        parts.append(runs_table)
    else:
        parts.append("no running runs")
    return Group(*parts)


@app.command()
def gpus(
    watch: bool = typer.Option(False, "--watch", help="Refresh until Ctrl-C."),
    interval: float = typer.Option(2.0, help="Seconds between refreshes with --watch."),
    executor_name: str = typer.Option("local", "--executor", help=f"{executor_help(gpus=True)}."),
    address: Optional[str] = typer.Option(None, "--address", help=address_help()),
    runs_dir: Optional[Path] = RunsDirOption,
) -> None:
    """GPU utilization, memory, temperature, power and their runs; CPU and memory of running runs."""
    check_interval("--interval", interval)
    registry = open_registry(runs_dir)
    processes = ProcessSampler()
    executor = build_executor(executor_name, address, 0.0, 1.0)
    sampler = cluster_gpu_sampler(executor, registry) or GpuSampler()

    def frame() -> Group:
        runs = registry.search(RUNS, status="running") if registry.path.exists() else []
        owners = process_owners(registry) if registry.path.exists() and not executor.places_jobs else {}
        snapshot = sampler.sample(owners)
        return render_gpus(snapshot, sampler, runs, processes.sample_runs(runs))

    try:
        if not watch:
            frame()  # CPU % is measured between two samples
            time.sleep(0.2)
            console.print(frame())
            return
        with Live(frame(), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame())
    except KeyboardInterrupt:
        console.print()
    finally:
        sampler.close()
