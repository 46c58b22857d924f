"""Starting, watching and stopping job processes, behind a small executor interface.

An ``Executor`` knows four things: how to ``start`` a command (an argument list, never a shell
string) with its output going to a log file, how to ``poll`` it for its exit, how to ``stop`` it
(SIGTERM, then SIGKILL after a grace period), and how to ``attach`` to a process that another
scheduler started earlier (the dashboard that launched it may have exited meanwhile).
``LocalExecutor`` runs processes on this machine; a cluster executor (Ray) can take its place
without the scheduler changing.

A process is identified by its pid *and* its start time (``advtui.core.process``): a reused
pid must never be mistaken for a run, let alone signalled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from advtui.core.atomic import open_append
from advtui.core.process import live_process

DEFAULT_GRACE_S = 30.0
LOG_TAIL_LINES = 20


@dataclass
class LaunchSpec:
    """What to run: an argument list, extra environment, and the file its output goes to."""

    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)  # set on top of this process's environment
    cwd: Path | None = None
    job_id: str | None = None  # names the job's process where the executor keeps one (a Ray actor)
    resources: dict[str, float] = field(default_factory=dict)  # {"cpus", "gpus"} a cluster executor asks for


@dataclass
class ProcessHandle:
    """A started (or re-attached) process; ``pid`` and ``create_time`` are stored on the job."""

    pid: int
    create_time: float
    host: str
    log_path: Path | None = None
    executor: str = "local"
    ref: str | None = None  # the executor's own name for it (a Ray actor's name)
    placement: dict = field(default_factory=dict)  # where a cluster put it: node, GPUs, ... (stored on the job)


@dataclass
class ExitStatus:
    """How a process ended. ``code`` is None when it was not ours to reap (an adopted process
    whose parent was another scheduler), so its exit code cannot be known."""

    code: int | None
    reason: str | None = None  # why the exit code is unknown, when the executor knows (its Ray actor died)

    @property
    def ok(self) -> bool:
        return self.code == 0


def describe_exit(code: int | None) -> str:
    """'exit 0', 'exit 2', 'signal SIGKILL', 'exit 143 (SIGTERM)', or 'unknown exit'."""
    if code is None:
        return "unknown exit"
    if code < 0:
        return f"signal {_signal_name(-code)}"
    if code > 128:
        return f"exit {code} ({_signal_name(code - 128)})"
    return f"exit {code}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def signal_process(pid: int, signum: int) -> None:
    """Signal the process group a launched process leads (it and its children), or the process
    alone when it leads no group of its own (a run started in the foreground with `advtui run`)."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return
    try:
        if group == pid and group != os.getpgrp():
            os.killpg(group, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def stop_process(pid: int, create_time: float | None, grace_s: float = DEFAULT_GRACE_S,
                 reap=None) -> str:
    """SIGTERM, wait up to ``grace_s`` for the process to exit, then SIGKILL.

    Returns "gone" (it was not running), "terminated" (it exited after SIGTERM) or "killed"
    (SIGKILL was needed). ``reap`` is called while waiting so a parent can collect its child
    (a zombie child would otherwise look alive to signal but never exit).
    """
    proc = live_process(pid, create_time)
    if proc is None:
        return "gone"
    signal_process(proc.pid, signal.SIGTERM)
    if _wait_gone(proc, create_time, grace_s, reap):
        return "terminated"
    signal_process(proc.pid, signal.SIGKILL)
    _wait_gone(proc, create_time, 10.0, reap)
    return "killed"


def _wait_gone(proc: psutil.Process, create_time: float | None, timeout_s: float, reap) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if live_process(proc.pid, create_time) is None:
            return True
        time.sleep(0.05)
    return live_process(proc.pid, create_time) is None


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES, max_bytes: int = 16_384) -> str:
    """The last ``lines`` lines of a log file ('' when there is none)."""
    if path is None:
        return ""
    try:  # not through a link planted at the log's name: its target is not the job's output
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    # A progress bar redraws its line with carriage returns: keep only the last drawing.
    kept = [line.rstrip("\r").rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    return "\n".join([line for line in kept if line][-lines:])


class Executor(ABC):
    """Where and how job processes run. Implementations must be usable from one thread at a time."""

    name = "abstract"  # its row's name in EXECUTORS (jobs/executors.py), recorded on each job it starts
    title = "this machine"  # what people call where it runs jobs: 'Ray' ("jobs on Ray at HOST:PORT")
    address: str | None = None  # the cluster it places jobs on, for an executor that takes --address
    # True when the executor, not the scheduler, chooses where a job runs (a cluster): the
    # scheduler then asks ``cluster_slots(running_jobs)`` what fits instead of sampling its GPUs.
    places_jobs = False

    @abstractmethod
    def start(self, spec: LaunchSpec) -> ProcessHandle:
        """Start ``spec.argv`` with its output appended to ``spec.log_path``; return at once."""

    @abstractmethod
    def poll(self, handle: ProcessHandle) -> ExitStatus | None:
        """None while the process runs; its ExitStatus once it has ended."""

    @abstractmethod
    def stop(self, handle: ProcessHandle, grace_s: float = DEFAULT_GRACE_S) -> str:
        """Stop the process (SIGTERM, then SIGKILL after ``grace_s``): 'gone'|'terminated'|'killed'."""

    @abstractmethod
    def attach(self, pid: int, create_time: float | None, log_path: Path | None = None,
               job: dict | None = None) -> ProcessHandle | None:
        """A handle on a process started earlier (perhaps by another scheduler), or None if it is
        gone; ``job`` is its job record, where the executor stored how to find it again."""

    def describe(self) -> str:
        """One line on where jobs run, for a worker's first line (a cluster: its nodes, CPUs, GPUs)."""
        return self.title

    def cluster_slots(self, running_jobs: list[dict]) -> Any:
        """With ``places_jobs``: what fits this scheduling step, with the local slots' ``pick``,
        ``take`` and ``threads``; a slot is ``{self.name: {"cpus": ..., "gpus": ...}}``, which
        ``start`` then gets as ``LaunchSpec.resources``."""
        raise NotImplementedError(f"the {self.name} executor does not place jobs itself")

    def why_lost(self, job: dict) -> str | None:
        """Why a job's process could not be found again, when the executor knows more than its pid."""
        return None

    def output(self, handle: ProcessHandle) -> Path | None:
        """Where the process's output goes."""
        return handle.log_path


def spawn_logged(argv: list[str], log_path: Path, env: dict[str, str], cwd: str | None = None,
                 launched_by: str = "", preexec_fn=None) -> tuple[subprocess.Popen, float]:
    """Start ``argv`` in its own session (so it outlives whoever started it, and a Ctrl-C in
    that terminal does not reach it), its output appended to ``log_path`` after one header line
    per launch (a resumed run appends to the same log). Returns the child and its start time."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open_append(log_path) as log:  # a link planted at the log is refused (UnsafePathError, an OSError)
        header = f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} launched{launched_by}: {' '.join(argv)}\n"
        log.write(header.encode())
        log.flush()
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, cwd=cwd, start_new_session=True, close_fds=True,
            preexec_fn=preexec_fn,
        )
    try:
        create_time = psutil.Process(child.pid).create_time()
    except psutil.Error:  # already exited and reaped: it cannot be confused with anything
        create_time = time.time()
    return child, create_time


class LocalExecutor(Executor):
    """Subprocesses on this machine, each in its own session so it outlives the scheduler (and
    a Ctrl-C in the scheduler's terminal does not reach it)."""

    name = "local"

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen] = {}

    def start(self, spec: LaunchSpec) -> ProcessHandle:
        child, create_time = spawn_logged(spec.argv, spec.log_path, spec.env, spec.cwd)
        self._children[child.pid] = child
        return ProcessHandle(child.pid, create_time, socket.gethostname(), spec.log_path, self.name)

    def poll(self, handle: ProcessHandle) -> ExitStatus | None:
        child = self._children.get(handle.pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return None
            del self._children[handle.pid]
            return ExitStatus(code)
        if live_process(handle.pid, handle.create_time) is not None:
            return None
        return ExitStatus(None)

    def stop(self, handle: ProcessHandle, grace_s: float = DEFAULT_GRACE_S) -> str:
        child = self._children.get(handle.pid)
        return stop_process(handle.pid, handle.create_time, grace_s,
                            reap=(lambda: child.poll()) if child is not None else None)

    def attach(self, pid: int, create_time: float | None, log_path: Path | None = None,
               job: dict | None = None) -> ProcessHandle | None:
        if pid in self._children:
            return ProcessHandle(pid, create_time or 0.0, socket.gethostname(), log_path, self.name)
        proc = live_process(pid, create_time)
        if proc is None:
            return None
        return ProcessHandle(pid, proc.create_time(), socket.gethostname(), log_path, self.name)

    def reap(self) -> None:
        """Collect exited children without reporting them (poll reports them later)."""
        for child in list(self._children.values()):
            child.poll()
