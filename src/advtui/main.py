"""The ``advtui`` program: the dashboard when no command is given, else a command of the CLI.

It sits above ``advtui.cli`` and ``advtui.tui``, which never import each other: the only
place that knows both front ends.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from advtui import cli
from advtui.errors import AdvtuiError

app = typer.Typer(name="advtui", help=cli.HELP, no_args_is_help=False, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode="rich")


@app.callback(invoke_without_command=True)
def _dashboard_without_a_command(
    ctx: typer.Context,
    runs_dir: Optional[Path] = typer.Option(
        None, "--runs-dir", help="Runs directory for the dashboard (default $ADVTUI_RUNS or ./runs)."),
) -> None:
    """With no command, open the dashboard."""
    if ctx.invoked_subcommand is None:
        from advtui.tui.app import run_dashboard  # Textual loads for the dashboard only

        run_dashboard(runs_dir)


app.add_typer(cli.app)


def main() -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit."""
    try:
        app()  # standalone: Typer reports its own usage errors and exits
    except AdvtuiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
