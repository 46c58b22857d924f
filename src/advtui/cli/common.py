"""Options and helpers shared by the command modules."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from advtui.paths import runs_dir
from advtui.registry import Registry

console = Console(highlight=False)
if not console.is_terminal:  # piped or logged: don't squeeze tables into 80 columns
    console = Console(highlight=False, width=200)
err_console = Console(stderr=True, highlight=False)

RunsDirOption = typer.Option(None, "--runs-dir", help="Runs directory (default $ADVTUI_RUNS or ./runs).")

STATUS_STYLE = {
    "queued": "cyan", "running": "yellow", "finished": "green", "failed": "red", "killed": "magenta",
    "done": "green", "cancelled": "dim",
}


def open_registry(runs_dir_opt: Optional[Path]) -> Registry:
    return Registry(runs_dir(runs_dir_opt))


def fmt_time(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def styled_status(status: str | None) -> str:
    status = status or "-"
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"
