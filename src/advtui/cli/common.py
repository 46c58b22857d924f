"""What every command module shares: the consoles, the --runs-dir option, opening the registry.

How values read (times, durations, statuses) is ``advtui.core.format``, shared with the dashboard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from advtui.core.paths import runs_dir
from advtui.store.registry import Registry

console = Console(highlight=False)
if not console.is_terminal:  # piped or logged: don't squeeze tables into 80 columns
    console = Console(highlight=False, width=200)
err_console = Console(stderr=True, highlight=False)

RunsDirOption = typer.Option(None, "--runs-dir", help="Runs directory (default $ADVTUI_RUNS or ./runs).")


def open_registry(runs_dir_opt: Optional[Path]) -> Registry:
    return Registry(runs_dir(runs_dir_opt))
