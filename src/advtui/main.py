"""The ``advtui`` program: the dashboard when no command is given, else a command of the CLI.

It sits above ``advtui.cli`` and ``advtui.tui``, which never import each other: the only
place that knows both front ends.
"""

# No ``from __future__ import annotations``: Typer reads the callback's annotations, which name
# ``typer`` imported inside ``_build_app``.
import sys
from pathlib import Path
from typing import Any, Optional

from advtui.core.errors import AdvtuiError

RUNS_DIR_OPTION = "--runs-dir"


def _build_app() -> Any:
    import typer

    from advtui import cli
    from advtui.jobs.executors import address_help, executor_help, shares_executors

    program = typer.Typer(name="advtui", help=cli.HELP, no_args_is_help=False, add_completion=False,
                          pretty_exceptions_enable=False, rich_markup_mode="rich")

    @program.callback(invoke_without_command=True)
    def _dashboard_without_a_command(
        ctx: typer.Context,
        runs_dir: Optional[Path] = typer.Option(
            None, RUNS_DIR_OPTION, help="Runs directory for the dashboard (default $ADVTUI_RUNS or ./runs)."),
        executor_name: str = typer.Option(
            "local", "--executor", help=f"Where the dashboard runs queued jobs: {executor_help()}."),
        address: Optional[str] = typer.Option(None, "--address", help=address_help()),
        gpus_per_job: float = typer.Option(
            1.0, "--gpus-per-job", min=0.0,
            help=f"GPUs each job asks for, with --executor {shares_executors()} (fractions share a GPU)."),
        cpus_per_job: float = typer.Option(
            1.0, "--cpus-per-job", min=0.0, help=f"CPUs each job asks for, with --executor {shares_executors()}."),
    ) -> None:
        """With no command, open the dashboard."""
        from advtui.options import check_ray_shares

        check_ray_shares(gpus_per_job, cpus_per_job)
        if ctx.invoked_subcommand is None:
            from advtui.tui.app import run_dashboard  # Textual loads for the dashboard only

            executor = None
            if executor_name != "local" or address is not None:
                from advtui.core.paths import runs_dir as resolve_runs_dir
                from advtui.jobs.executors import build_executor, check_runs_dir_shared

                executor = build_executor(executor_name, address, gpus_per_job, cpus_per_job)
                check_runs_dir_shared(executor, resolve_runs_dir(runs_dir))
            run_dashboard(runs_dir, executor)

    program.add_typer(cli.app)
    return program


def __getattr__(name: str) -> Any:
    # ``app`` (the Typer program) is built on first use: opening the dashboard does not need the
    # command line's modules, and importing them is a fifth of the dashboard's first paint.
    if name == "app":
        program = globals()["app"] = _build_app()
        return program
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _dashboard_runs_dir(args: list[str]) -> tuple[bool, str | None]:
    """(True, runs dir or None) when ``args`` only open the dashboard: nothing, or ``--runs-dir DIR``."""
    if not args:
        return True, None
    if len(args) == 2 and args[0] == RUNS_DIR_OPTION and not args[1].startswith("-"):
        return True, args[1]
    if len(args) == 1 and args[0].startswith(RUNS_DIR_OPTION + "=") and len(args[0]) > len(RUNS_DIR_OPTION) + 1:
        return True, args[0].split("=", 1)[1]
    return False, None


def main() -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit."""
    try:
        dashboard, runs_dir = _dashboard_runs_dir(sys.argv[1:])
        if dashboard:
            from advtui.tui.app import run_dashboard

            run_dashboard(runs_dir)
            return
        _run_program(__getattr__("app"))
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


def _run_program(program: Any) -> None:
    """Run the Typer program; a usage error (an unknown option, a value that does not parse) is
    one line naming the option, like every other error, instead of Click's boxed panel."""
    from typer import Abort

    try:  # Typer 0.2x carries its own copy of Click; earlier versions use Click itself
        from typer._click.exceptions import NoArgsIsHelpError, UsageError
    except ImportError:
        from click.exceptions import NoArgsIsHelpError, UsageError

    try:
        code = program(standalone_mode=False)
    except NoArgsIsHelpError as exc:  # a group named without a command: its help
        print(exc.format_message())
        sys.exit(exc.exit_code)
    except UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "advtui"
        print(f"error: {one_line(exc.format_message())} (see `{command} --help`)", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Abort:
        raise KeyboardInterrupt from None
    if isinstance(code, int) and code:  # a command (or --help) that asked for an exit code
        sys.exit(code)


def one_line(text: str) -> str:
    """A message as one line: a record's error or a file name may hold a newline."""
    return " ".join(text.split("\n")).replace("\r", " ")
