"""The ``advtui`` command line (Typer). Thin: it parses, validates and calls the layers below.

Each module owns a Typer app of its commands; ``app`` gathers them with ``add_typer`` and no
name, so they are top-level commands: ``advtui run``, ``ls``, ``show`` (runs), ``eval``,
``compare``, ``export`` (evaluate), ``queue ...``, ``worker``, ``kill``, ``resume``, ``gpus``
(jobs), ``sweep``, ``analyze ...``, ``reproduce``, ``report`` (paper).

The ``advtui`` program (``advtui.main``) adds the dashboard as what runs without a command,
so the command line and the dashboard never import each other.
"""

from __future__ import annotations

import typer

from advtui.cli import evaluate, jobs, paper, runs, sweep

HELP = "Terminal experiment manager for adversarial training with learned inner optimizers."

# No name: added to the program (advtui.main), its commands join the program's own.
app = typer.Typer(help=HELP, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich")
for _module in (runs, evaluate, jobs, sweep, paper):  # the order `advtui --help` lists them in
    app.add_typer(_module.app)
