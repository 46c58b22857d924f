"""How values read on screen, the same in the CLI's tables and the dashboard.

Plain strings (and rich markup, which both front ends render); no widget or console here.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Union

from advtui.core.status import JobStatus, RunStatus

Number = Union[int, float]
NA = "n/a"  # a value that was not measured (a GPU or driver that does not report it)

# Colors of run statuses (and of job statuses, which add done and cancelled).
STATUS_STYLE: dict[str, str] = {
    RunStatus.QUEUED: "cyan", RunStatus.RUNNING: "yellow", RunStatus.FINISHED: "green", RunStatus.FAILED: "red",
    RunStatus.KILLED: "magenta", JobStatus.DONE: "green", JobStatus.CANCELLED: "dim",
}


def status_style(status: str | None) -> str:
    return STATUS_STYLE.get(status or "", "white")


def styled_status(status: str | None) -> str:
    """The status as rich markup in its color."""
    status = status or "-"
    return f"[{status_style(status)}]{status}[/]"


def fmt_time(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(seconds: float | None) -> str:
    """'42s', '3m07s', '2h05m'; '-' when unknown."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def fmt_seconds(seconds: float | None) -> str:
    """A duration as precise as it is short: '0.8 s', '12.4 s', then fmt_duration's '3m07s'."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 9.95 else f"{seconds:.0f} s"
    return fmt_duration(seconds)


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def short_device(device: str | None) -> str:
    """A record's device without its details: "cpu (2 threads)" -> "cpu", "cuda:0 (NVIDIA H100
    80GB HBM3)" -> "cuda:0"."""
    return (device or "-").split(" (")[0]


def error_summary(error: str | None) -> str:
    """The most telling line of a stored error: its last non-empty line (a traceback's or a
    log tail's end says what went wrong)."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def format_bytes(value: Number | str) -> str:
    if not isinstance(value, (int, float)):
        return NA
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return NA


def format_number(value: Number | str, unit: str = "", digits: int = 0) -> str:
    return f"{value:.{digits}f}{unit}" if isinstance(value, (int, float)) else NA


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # colour and cursor escapes (CSI sequences)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def plain_line(text: str, limit: int = 160) -> str:
    """The first non-empty line of ``text`` without terminal escapes or control characters
    (torch's and Ray's messages carry colours and several paragraphs)."""
    for line in _ANSI.sub("", text).splitlines():
        line = " ".join(_CONTROL.sub(" ", line).split())
        if line:
            return line[:limit]
    return ""
