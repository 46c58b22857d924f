"""Evaluations, analyses and exports of a run's checkpoint, between the store and the engine.

The engine computes and reads no store (docs/architecture.md). Here a run reference becomes the
run's record and checkpoint file, the engine computes, and what it measured is stored:

- ``evaluate_run``: what ``advtui eval``, a queued eval job and the dashboard call; each
  result is stored (``store.results.store_result``) as soon as its attack finishes.
- ``analyze_trajectories``, ``analyze_landscape``: the paper's Fig. 2 and Fig. 3
  (``advtui analyze``, ``advtui report``).
- ``export_robustbench``: ``advtui export RUN --format robustbench``, from the stored AutoAttack
  result of the exported checkpoint.

Every input is checked in the order the commands have always checked it, so a bad one is the
same error line whatever else is wrong. Loads torch (the engine): commands import this module
inside themselves, so the others start without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from advtui.core.attack_specs import AttackSpec, attack_specs_for, parse_attack_list
from advtui.core.checkpoints import resolve_checkpoint
from advtui.core.errors import ConfigError
from advtui.core.paths import checkpoint_path, run_folder
from advtui.engine.analysis import (
    DEFAULT_BATCH_SIZE as ANALYSIS_BATCH_SIZE, DEFAULT_GRID, DEFAULT_TRAJECTORY_LIMIT, LandscapeAnalysis,
    TrajectoryAnalysis, compute_landscape, compute_trajectories,
)
from advtui.engine.attacks import RunCheckpoint, RunLookup, load_run_checkpoint
from advtui.engine.evaluate import DEFAULT_BATCH_SIZE, EvalProgress, EvalReport, ResultSink, evaluate_checkpoint
from advtui.engine.export import Export, write_robustbench
from advtui.engine.train import resolve_device
from advtui.options import check_analysis_options, check_device, check_eval_options
from advtui.store.registry import Registry
from advtui.store.results import all_results_for_run, results_for_run, store_result


def run_lookup(registry: Registry) -> RunLookup:
    """How attacks find the runs they read (a learned maximizer's, a transfer surrogate's):
    by reference in ``registry``, and their final checkpoint (else last) in its runs folder."""
    return RunLookup(registry.resolve_run, lambda record: checkpoint_path(registry, record, "final"))


def result_sink(registry: Registry) -> ResultSink:
    """Results stored in ``registry`` as they come, and read back from it."""
    return ResultSink(lambda doc: store_result(registry, doc),
                      lambda run_id, digest: all_results_for_run(registry, run_id, digest))


def run_checkpoint(registry: Registry, record: dict[str, Any], path: Path | str | None = None,
                   device: Any = "cpu") -> RunCheckpoint:
    """The run's final checkpoint (else its last), or ``path``, loaded; CheckpointError when
    missing, corrupt, or not a checkpoint of this run's dataset and model."""
    file = Path(path).expanduser() if path is not None else checkpoint_path(registry, record, "final")
    return load_run_checkpoint(record, file, device)


# -- evaluation ------------------------------------------------------------------------------------------
def evaluate_run(
    registry: Registry,
    run_ref: str,
    attacks: str | Iterable[str | AttackSpec] | None = None,
    *,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    eps: float | None = None,
    step_size: float | None = None,
    seed: int = 0,
    checkpoint: str | Path | None = None,  # best, final, last, epoch:N or one of the run's own files
    device: str = "auto",
    cascade: bool = False,
    data_root: str | None = None,
    on_progress: Callable[[EvalProgress], None] | None = None,
) -> EvalReport:
    """Evaluate RUN's checkpoint (final, else last, or ``checkpoint``: ``resolve_checkpoint``) under ``attacks``
    (a spec list; None: the paper's Table 3 list) on the first ``limit`` test examples.

    eps defaults to the run's training eps, the PGD/CW step size to eps/4. Every result is
    stored as soon as its attack finishes; all input is checked before the first one runs.
    """
    record = registry.resolve_run(run_ref)
    specs = attack_specs_for(attacks, record)
    check_eval_options(limit=limit, batch_size=batch_size, eps=eps, step_size=step_size, seed=seed)
    torch_device = resolve_device(check_device(device))
    path, kind = resolve_checkpoint(registry, record, checkpoint)
    return evaluate_checkpoint(
        record, path, kind, specs, run_lookup(registry), result_sink(registry), run_folder(registry, record),
        limit=limit, batch_size=batch_size, eps=eps, step_size=step_size, seed=seed, device=torch_device,
        cascade=cascade, data_root=data_root, on_progress=on_progress)


# -- analyses (the paper's figures) ----------------------------------------------------------------------
def default_output_dir(registry: Registry, run_id: str) -> Path:
    return registry.root / run_id / "analysis"


def analyze_trajectories(
    registry: Registry, run_ref: str, attackers: str | list[str] = "pgd-10", *,
    limit: int | None = DEFAULT_TRAJECTORY_LIMIT, batch_size: int = ANALYSIS_BATCH_SIZE, eps: float | None = None,
    seed: int = 0, device: str = "auto", data_root: str | None = None,
) -> TrajectoryAnalysis:
    """Mean loss at every attack step of each attacker on RUN's final model (paper Fig. 2)."""
    check_analysis_options(limit=limit, batch_size=batch_size, eps=eps, seed=seed)
    specs = parse_attack_list(attackers)
    stepless = [s.text for s in specs if s.family == "natural"]
    if stepless:
        raise ConfigError("natural has no attack steps to draw: list attackers such as pgd-10, rnn-10:RUN, l2lda-10:RUN")
    torch_device = resolve_device(check_device(device))
    record = registry.resolve_run(run_ref)
    path = checkpoint_path(registry, record, "final")
    return compute_trajectories(record, path, specs, run_lookup(registry), limit=limit, batch_size=batch_size, eps=eps,
                                seed=seed, device=torch_device, data_root=data_root)


def analyze_landscape(
    registry: Registry, run_ref: str, *, limit: int = 1, grid: int = DEFAULT_GRID, span: float | None = None,
    seed: int = 0, batch_size: int = ANALYSIS_BATCH_SIZE, device: str = "auto", data_root: str | None = None,
) -> LandscapeAnalysis:
    """CE loss around RUN's final model's test examples (paper Fig. 3): ``compute_landscape``."""
    check_analysis_options(limit=limit, batch_size=batch_size, seed=seed, grid=grid, span=span)
    torch_device = resolve_device(check_device(device))
    record = registry.resolve_run(run_ref)
    path = checkpoint_path(registry, record, "final")
    return compute_landscape(record, path, limit=limit, grid=grid, span=span, seed=seed, batch_size=batch_size,
                             device=torch_device, data_root=data_root)


# -- export ----------------------------------------------------------------------------------------------
def export_robustbench(registry: Registry, run_ref: str, out_dir: Path, checkpoint: Path | None = None) -> Export:
    """Write RUN's model and card under ``out_dir``; ConfigError (one line) when the checkpoint
    has no stored AutoAttack result. Nothing is written unless everything needed is there."""
    record = registry.resolve_run(run_ref)
    target = run_checkpoint(registry, record, checkpoint)
    return write_robustbench(record, target, results_for_run(registry, record["id"], target.digest), out_dir)
