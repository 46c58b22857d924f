"""The layers of docs/architecture.md, checked: what must not load torch, and which way imports point.

1. Listing, comparing, exporting and the dashboard's first paint run in a subprocess where torch
   cannot be imported (a meta path finder refuses it and remembers every attempt, so an import
   swallowed by some ``except ImportError`` still fails the test).
2. A static walk over src/advtui: imports point down only, and a run's status has one writer.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import typer.main

from advtui.core.config import build_config
from advtui.store import lifecycle
from advtui.core.digests import mask_to_hex
from advtui.store.results import store_result
from advtui.store.registry import Registry

SRC = Path(__file__).resolve().parents[1] / "src" / "advtui"
TORCH = ("torch", "torchvision")

# Runs before the code under test in the subprocess: torch (and torchvision) cannot be imported.
NO_TORCH = textwrap.dedent("""
    import importlib.abc, os, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        tried = []

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("torch", "torchvision"):
                self.tried.append(name)
                raise ImportError(f"torch is unimportable in this test ({name})")
            return None

    sys.meta_path.insert(0, NoTorch())

    def done(code):
        if NoTorch.tried:
            print(f"TRIED TO IMPORT {sorted(set(NoTorch.tried))}", file=sys.stderr)
            os._exit(3)
        os._exit(code or 0)
""")


def run_without_torch(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    script = NO_TORCH + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout)


def advtui_without_torch(*args: str) -> subprocess.CompletedProcess:
    """``advtui ARGS`` in a process where torch is unimportable."""
    return run_without_torch("""
        import traceback
        sys.argv = ["advtui", *sys.argv[1:]]
        try:
            from advtui.main import main
            main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        done(code)
    """, *args)


def _result(run_id: str, attack: str, robust: np.ndarray, checkpoint_hash: str) -> dict:
    n = len(robust)
    family, _, steps = attack.partition("-")
    return {
        "kind": "attack", "run_id": run_id, "attack": attack, "label": attack, "family": family,
        "steps": int(steps or 0), "restarts": 1, "source_run": None, "source_checkpoint_hash": None,
        "checkpoint_hash": checkpoint_hash, "checkpoint": "checkpoints/final.pt", "date": 1.0, "eval_id": "e0",
        "settings": {"eps": 0.3, "step_size": 0.075, "limit": n, "examples": f"mnist/test/{n}", "n": n,
                     "batch_size": 256, "seed": 0, "device": "cpu", "cascade": False},
        "accuracy": 100.0 * robust.sum() / n, "robust": int(robust.sum()), "n": n, "n_attacked": n,
        "accuracy_kind": "attack", "clean_accuracy": 90.0, "clean_robust": 9, "wall_time": 1.0,
        "trajectory": [0.1, 0.5], "trajectory_model": "target", "loss": "ce", "gradient": None,
        "robust_mask": mask_to_hex(robust), "flags": [],
    }


@pytest.fixture
def evaluated_runs(tmp_path) -> tuple[Path, list[dict]]:
    """Two finished runs with stored results, written through the same torch-free core."""
    root = tmp_path / "runs"
    registry = Registry(root)
    runs = []
    for i, defense in enumerate(("plain", "rnn-adv")):
        config = build_config(defense, name=f"{defense}-run", device="cpu", epochs=1).to_dict()
        run = lifecycle.create_queued(registry, config)
        lifecycle.mark_finished(registry, run["id"], epoch=1, train_time=10.0 + i, maximizer_params=120 * i,
                                checkpoints={"last": "checkpoints/last.pt", "final": "checkpoints/final.pt"})
        robust = np.arange(10) < 9 - 4 * (i == 0)
        for attack in ("natural", "pgd-10"):
            store_result(registry, _result(run["id"], attack, robust if attack != "natural" else np.arange(10) < 9,
                                           f"{i:016x}"))
        runs.append(registry.get_run(run["id"]))
    return root, runs


def test_the_blocker_does_block_torch():
    proc = run_without_torch("""
        try:
            import torch
        except ImportError:
            os._exit(0)
        os._exit(1)
    """)
    assert proc.returncode == 0, proc.stderr


def test_the_program_loads_scipy_only_when_a_statistic_is_computed():
    """scipy.stats takes about 0.6 s to import: the CLI (every command module, `advtui run`'s
    path included) and the dashboard import without it; the first interval computed loads it."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        import advtui.main, advtui.cli, advtui.compare, advtui.runner, advtui.tui.app
        from advtui.main import _build_app
        _build_app()
        loaded = sorted(m for m in sys.modules if m.partition(".")[0] == "scipy")
        assert not loaded, loaded
        from advtui.core.stats import proportion_interval
        assert proportion_interval(1, 2) is not None and "scipy.stats" in sys.modules
    """)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_core_and_compare_import_without_torch():
    proc = run_without_torch("""
        import pkgutil, importlib
        import advtui.core
        for info in pkgutil.iter_modules(advtui.core.__path__):
            importlib.import_module(f"advtui.core.{info.name}")
        import advtui.compare, advtui.core.config, advtui.runner, advtui.jobs, advtui.reproduce, advtui.report
        done(0)
    """)
    assert proc.returncode == 0, proc.stderr


def test_ls_show_compare_and_export_run_without_torch(evaluated_runs):
    root, runs = evaluated_runs
    listed = advtui_without_torch("ls", "--runs-dir", str(root), "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(r["id"] for r in json.loads(listed.stdout)) == sorted(r["id"] for r in runs)
    table = advtui_without_torch("ls", "--runs-dir", str(root))
    assert table.returncode == 0 and "plain-run" in table.stdout and "finished" in table.stdout, table.stderr
    shown = advtui_without_torch("show", "rnn-adv-run", "--runs-dir", str(root))
    assert shown.returncode == 0 and runs[1]["id"] in shown.stdout, shown.stderr

    compared = advtui_without_torch("compare", "--runs-dir", str(root), "--json")
    assert compared.returncode == 0, compared.stderr
    rows = {row["label"]: row["cells"] for row in json.loads(compared.stdout)["rows"]}
    assert rows["plain-run"]["pgd-10"]["value"] == pytest.approx(50.0)
    assert rows["rnn-adv-run"]["pgd-10"]["value"] == pytest.approx(90.0)
    exported = advtui_without_torch("export", "--runs-dir", str(root), "--format", "csv")
    assert exported.returncode == 0 and "pgd-10" in exported.stdout.splitlines()[0], exported.stderr
    queue = advtui_without_torch("queue", "ls", "--runs-dir", str(root))
    assert queue.returncode == 0, queue.stderr


def test_a_command_that_needs_torch_says_so_under_the_blocker(evaluated_runs):
    """The blocker is not fooled: `advtui eval` does load torch, and the check catches it."""
    root, runs = evaluated_runs
    proc = advtui_without_torch("eval", runs[0]["id"], "--runs-dir", str(root), "--attacks", "natural")
    assert proc.returncode != 0 and "TRIED TO IMPORT" in proc.stderr


def test_the_dashboards_first_paint_and_its_results_screens_run_without_torch(evaluated_runs):
    root, runs = evaluated_runs
    proc = run_without_torch("""
        import asyncio, time
        from advtui.tui.app import AdvtuiApp
        from advtui.tui.screens.compare import CompareScreen
        from advtui.tui.screens.detail import DetailScreen

        async def until(pilot, condition, what):
            deadline = time.monotonic() + 60
            while not condition():
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out waiting for {what}")
                await pilot.pause(0.1)

        async def paint(root, ids):
            app = AdvtuiApp(root, run_scheduler=False)
            async with app.run_test(size=(160, 48)) as pilot:
                main = app.screen
                await until(pilot, lambda: main.loaded and main.side_loaded and len(main.records) == 2, "first paint")
                app.push_screen(DetailScreen(ids[0]))
                await until(pilot, lambda: getattr(app.screen, "results_loaded", False), "the detail screen")
                assert app.screen.results and "pgd-10" in app.screen.results, app.screen.results_error
                app.pop_screen()
                app.push_screen(CompareScreen(ids))
                await until(pilot, lambda: getattr(app.screen, "loaded", False), "the compare screen")

        asyncio.run(paint(sys.argv[1], sys.argv[2:]))
        done(0)
    """, str(root), *(r["id"] for r in runs))
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_program_lists_every_command_of_the_command_modules():
    from advtui import cli
    from advtui.cli import evaluate, jobs, paper, runs, sweep
    from advtui.main import app

    program = typer.main.get_command(app)
    listed = program.list_commands(None)
    # Module by module (a module's group after its commands), as `advtui --help` lists them.
    assert listed == ["run", "ls", "show", "eval", "compare", "export", "worker", "kill", "resume", "gpus",
                      "queue", "sweep", "reproduce", "report", "analyze"]
    def commands(module) -> list[str]:  # a module of one command is that command, not a group
        command = typer.main.get_command(module.app)
        return command.list_commands(None) if hasattr(command, "list_commands") else [command.name]

    owned = [name for module in (runs, evaluate, jobs, sweep, paper) for name in commands(module)]
    assert owned == listed  # each module owns its commands, and the program adds nothing else
    assert typer.main.get_command(cli.app).list_commands(None) == listed
    assert sorted(program.get_command(None, "queue").list_commands(None)) == ["cancel", "eval", "ls", "train"]
    assert sorted(program.get_command(None, "analyze").list_commands(None)) == ["landscape", "trajectories"]


# -- static checks -------------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions ('from x import y'
    counts as x and x.y, since y may be a submodule)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import (the checks read absolute ones)"
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


SOURCES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}
IMPORTS = {name: _imports(path) for name, path in SOURCES.items()}


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(importer_package: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{name} imports {target}" for name, targets in IMPORTS.items() if _in(name, importer_package)
                  for target in targets if any(_in(target, f) for f in forbidden))


def test_the_static_walk_sees_the_imports_it_checks():
    assert "advtui.engine.train" in SOURCES and "advtui.store.lifecycle" in SOURCES
    assert "torch" in IMPORTS["advtui.engine.train"]
    assert "advtui.core.process" in IMPORTS["advtui.store.lifecycle"]


def test_the_engine_never_imports_the_layers_above_it():
    above = ("advtui.runner", "advtui.evaluation", "advtui.jobs", "advtui.cli", "advtui.tui", "advtui.main",
             "advtui.compare", "advtui.reproduce", "advtui.report")
    assert _violations("advtui.engine", above) == []


def test_the_engine_never_imports_the_store():
    """The engine computes on what it is given (a run's record, its checkpoint file, results already
    read); reading and writing the store is the layer above (advtui.evaluation, advtui.runner)."""
    assert any(_in(t, "advtui.store") for t in IMPORTS["advtui.evaluation"])  # the walk sees store imports
    assert _violations("advtui.engine", ("advtui.store",)) == []


def test_the_cli_and_the_dashboard_never_import_each_other():
    assert _violations("advtui.cli", ("advtui.tui", "advtui.main")) == []
    assert _violations("advtui.tui", ("advtui.cli", "advtui.main")) == []


def test_the_core_imports_no_torch_and_no_engine_even_through_other_modules():
    assert _violations("advtui.core", TORCH + ("advtui.engine",)) == []
    # Transitively, over every import of every advtui module the core reaches.
    reached, todo = set(), [name for name in SOURCES if _in(name, "advtui.core")]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        todo.extend(t for t in IMPORTS.get(name, ()) if t in SOURCES)
    assert not [n for n in reached if _in(n, "advtui.engine")], sorted(reached)
    assert not [t for n in reached for t in IMPORTS[n] if any(_in(t, m) for m in TORCH)]


def test_the_core_imports_nothing_of_advtui_above_it():
    above = tuple(sorted({".".join(name.split(".")[:2]) for name in SOURCES} - {"advtui", "advtui.core"}))
    assert "advtui.store" in above and "advtui.engine" in above  # the walk sees the layers it forbids
    assert _violations("advtui.core", above) == []


def test_the_store_imports_only_the_core():
    outside = tuple(sorted({".".join(name.split(".")[:2]) for name in SOURCES}
                           - {"advtui", "advtui.core", "advtui.store"}))
    assert _violations("advtui.store", outside + TORCH) == []


def _runtime_imports(path: Path) -> set[str]:
    """The advtui modules a file imports when it runs: ``_imports`` less the ``if TYPE_CHECKING:``
    blocks, which only annotations read."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in SOURCES}


def _import_cycles() -> list[list[str]]:
    """Every group of modules that import each other, directly or through others, counting the
    imports inside functions too (Tarjan's strongly connected components)."""
    graph = {name: _runtime_imports(path) - {name} for name, path in SOURCES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in graph:
        if module not in index:
            visit(module)
    return cycles


def test_no_two_modules_import_each_other():
    assert "advtui.jobs.launcher" in _runtime_imports(SOURCES["advtui.jobs.ray_executor"])  # the walk sees imports
    assert _import_cycles() == []


def _writes_run_status(call: ast.Call) -> bool:
    """A registry call that would set a run's status: create_run, update_run(status=...), or a
    generic write to the runs table."""
    if not isinstance(call.func, ast.Attribute):
        return False
    method = call.func.attr
    if method == "create_run":
        return True
    if method == "update_run":
        return any(k.arg in ("status", None) for k in call.keywords)  # None: **fields could hold it
    if method in ("update", "upsert", "insert") and call.args:
        table = call.args[0]
        return (isinstance(table, ast.Name) and table.id == "RUNS") or (
            isinstance(table, ast.Constant) and table.value == "runs")
    return False


def test_a_runs_status_has_one_writer_the_lifecycle():
    writers = sorted(f"{name}:{node.lineno}" for name, path in SOURCES.items()
                     if name not in ("advtui.store.lifecycle", "advtui.store.registry")
                     for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                     if isinstance(node, ast.Call) and _writes_run_status(node))
    assert writers == []
