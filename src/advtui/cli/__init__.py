"""The ``advtui`` command line (Typer). Thin: it parses, validates and calls the layers below.

Each group of commands lives in its own module and registers itself on ``app``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from advtui.errors import AdvtuiError

app = typer.Typer(
    name="advtui",
    help="Terminal experiment manager for adversarial training with learned inner optimizers.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    runs_dir: Optional[Path] = typer.Option(
        None, "--runs-dir", help="Runs directory for the dashboard (default $ADVTUI_RUNS or ./runs)."),
) -> None:
    """With no command, open the dashboard."""
    if ctx.invoked_subcommand is None:
        try:
            from advtui.tui.app import run_dashboard
        except ImportError:
            typer.echo(ctx.get_help())
            return
        run_dashboard(runs_dir)


# Command modules register themselves on ``app`` when imported.
from advtui.cli import runs  # noqa: E402,F401

for _optional in ("evaluate", "jobs", "paper"):
    try:
        __import__(f"advtui.cli.{_optional}")
    except ModuleNotFoundError as _exc:  # a command group not present in this build
        if _exc.name != f"advtui.cli.{_optional}":
            raise


def main() -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit."""
    try:
        app()  # standalone: Typer reports its own usage errors and exits
    except AdvtuiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
