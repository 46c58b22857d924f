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
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:  # the environment (permissions, a full disk) rather than a bug: one line too
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


def one_line(text: str) -> str:
    """A message as one line: a record's error or a file name may hold a newline."""
    return " ".join(text.split("\n")).replace("\r", " ")
