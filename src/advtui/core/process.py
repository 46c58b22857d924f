"""Is a recorded process still the one we started? One answer for the runner, the queue, the
scheduler and the monitors.

A process is identified by its pid *and* its start time (psutil ``create_time``): after a
reboot or a long time, the same pid may belong to an unrelated process, which must never be
mistaken for a run, let alone signalled.
"""

from __future__ import annotations

import socket
from typing import Any

import psutil

# Two reads of one process's start time can differ slightly when the clock is adjusted
# (psutil derives it from the boot time); a reused pid starts much later than that.
START_TIME_TOLERANCE_S = 1.0


def live_process(pid: int | None, create_time: float | None) -> psutil.Process | None:
    """The process ``pid`` if it is alive and is the one started at ``create_time``; else None.

    A zombie (exited, not yet reaped) counts as gone. Without a recorded start time the pid
    alone is trusted.
    """
    if not pid:
        return None
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if create_time is not None and abs(proc.create_time() - float(create_time)) > START_TIME_TOLERANCE_S:
            return None
        return proc
    except (psutil.Error, TypeError, ValueError):
        return None


def why_not_alive(pid: int | None, create_time: float | None) -> str:
    """A short explanation for a process that ``live_process`` found gone."""
    if not pid:
        return "no pid was recorded"
    if create_time is None:
        return f"no start time was recorded with pid {pid}, so it cannot be told from a process that reused the pid"
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return f"pid {pid} has exited"
        return f"pid {pid} now belongs to another process ({proc.name()}, started {proc.create_time():.0f})"
    except psutil.Error:
        return f"pid {pid} is gone"


def record_alive(record: dict[str, Any]) -> bool:
    """Whether the process a run or job record names (``pid``, ``pid_start_time``) is alive.
    A record without the start time (edited by hand, or of another program) names no process
    that can be trusted: any process may have the pid now, so it is never taken for the run."""
    if record.get("pid_start_time") is None:
        return False
    return live_process(record.get("pid"), record.get("pid_start_time")) is not None


def this_process() -> dict[str, Any]:
    """This process as a record names it: pid, start time and host."""
    me = psutil.Process()
    return {"pid": me.pid, "pid_start_time": me.create_time(), "host": socket.gethostname()}
