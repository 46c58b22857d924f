"""The analyses behind the paper's figures, computed on a run's checkpoint.

The engine reads no store: each analysis takes the run's record and checkpoint file; the layer
above (``advtui.evaluation``) finds them in the store from a run reference.

- ``compute_trajectories`` (Fig. 2): the mean attack loss at x'_0, x'_1, ..., x'_K for several
  attackers on the same test examples. Attackers are attack specs of ``advtui eval``
  (``pgd-10``, ``rnn-10:RUN``, ``l2lda-10:RUN``, ...), built by ``advtui.engine.attacks``.
  The mean is over *every* example of the set (not only the correctly classified ones), so
  the curves of different attackers average the same problems.
- ``compute_landscape`` (Fig. 3, after Engstrom et al. 2018): the CE loss of
  ``clip(x + a * sign(grad_x L(x, y)) + b * r, 0, 1)`` over a grid of (a, b) in
  [-span, span]^2, where r is a Rademacher vector (entries +-1 with equal probability) and
  sign(0) = +1 as in the paper's notation. Over several examples the grid is the mean loss.
  The Rademacher draw depends only on the seed: ``torch.Generator().manual_seed(seed)`` then
  ``torch.randint(0, 2, [n, C, H, W])`` mapped to {-1, +1}.

Each analysis returns a dataclass whose ``to_dict()`` is what ``save_*`` writes as JSON beside the
PNG, so a figure's numbers can always be checked against a direct computation.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from advtui.core.atomic import atomic_write_json
from advtui.core.attack_specs import AttackSpec
from advtui.core.paths import DATA_ENV, data_root
from advtui.engine.attacks import RunLookup, build_attacks, build_run_model, load_run_checkpoint
from advtui.engine.data import load_split
from advtui.engine.objectives import ce_per_example
from advtui.core.errors import ConfigError
from advtui.options import check_landscape_memory

DEFAULT_TRAJECTORY_LIMIT = 200
DEFAULT_GRID = 21
DEFAULT_BATCH_SIZE = 256


# -- shared ---------------------------------------------------------------------------------------------
def _test_examples(config, limit: int | None, data_root_opt: str | None, device: torch.device):
    """The first ``limit`` examples of the class-balanced test subset, like ``advtui eval``: an
    explicit data root wins, then $ADVTUI_DATA, then where the run read its data."""
    explicit = data_root_opt or (None if os.environ.get(DATA_ENV) else config.data_root)
    split = load_split(config.dataset, data_root(explicit), False, limit, seed=0).to(device)
    return split.images.float().div_(255.0), split.labels


def _target(record: dict[str, Any], path: Path, device: torch.device):
    """The run's checkpoint and its frozen model; CheckpointError (one line) when the file is
    missing or not a checkpoint of this run."""
    checkpoint = load_run_checkpoint(record, path, device=device)
    return checkpoint, build_run_model(checkpoint, device)


# -- Fig. 2: attack trajectories ---------------------------------------------------------------------
@dataclass
class TrajectoryCurve:
    attack: str  # canonical spec (source runs by id)
    label: str  # spec with source runs by name
    loss: str  # "ce" or "cw": what the values are
    values: list[float]  # mean loss at x'_0..x'_K
    accuracy: float  # % of the examples still classified correctly at x'_K


@dataclass
class TrajectoryAnalysis:
    run_id: str
    run_name: str | None
    defense: str | None
    checkpoint_hash: str
    eps: float
    n: int
    examples: str
    seed: int
    curves: list[TrajectoryCurve] = field(default_factory=list)
    kind: str = "trajectories"
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrajectoryAnalysis":
        curves = [TrajectoryCurve(**c) for c in data.get("curves", [])]
        return cls(**{**_own_fields(cls, data), "curves": curves})


def compute_trajectories(
    record: dict[str, Any], path: Path, specs: list[AttackSpec], runs: RunLookup, *,
    limit: int | None = DEFAULT_TRAJECTORY_LIMIT, batch_size: int = DEFAULT_BATCH_SIZE, eps: float | None = None,
    seed: int = 0, device: torch.device, data_root: str | None = None,
) -> TrajectoryAnalysis:
    """Mean loss at every attack step of each attacker (attack ``specs``, other runs found
    through ``runs``) on the model of the run ``record`` in checkpoint file ``path`` (paper Fig. 2).

    Every attacker starts from the same seed (``torch.manual_seed(seed)`` before it), so its
    curve does not depend on which attackers ran before it.
    """
    torch_device = device
    checkpoint, model = _target(record, path, torch_device)
    eval_eps = float(eps) if eps is not None else float(checkpoint.config.eps)
    attacks = build_attacks(specs, runs, record, eps=eval_eps, device=torch_device,
                            target_config=checkpoint.config)
    x_all, y_all = _test_examples(checkpoint.config, limit, data_root, torch_device)
    n = len(y_all)
    analysis = TrajectoryAnalysis(record["id"], record.get("name"), record.get("defense"), checkpoint.digest,
                                  eval_eps, n, f"{checkpoint.config.dataset}/test/{limit or 'all'}", seed)
    for attack in attacks:
        torch.manual_seed(seed)
        total, correct = None, 0
        for start in range(0, n, batch_size):
            x, y = x_all[start:start + batch_size], y_all[start:start + batch_size]
            result = attack.perturb(model, x, y, eval_eps, record=True)
            weighted = result.trajectory.detach().double() * len(y)
            total = weighted if total is None else total + weighted
            with torch.no_grad():
                correct += int((model(result.x_adv).argmax(1) == y).sum())
        values = (total / max(n, 1)).tolist()
        analysis.curves.append(TrajectoryCurve(attack.text, attack.label, attack.spec.loss, values,
                                               100.0 * correct / max(n, 1)))
    return analysis


# -- Fig. 3: loss landscape --------------------------------------------------------------------------
@dataclass
class LandscapeAnalysis:
    run_id: str
    run_name: str | None
    defense: str | None
    checkpoint_hash: str
    eps: float
    span: float
    n: int
    examples: str
    seed: int
    grad_axis: list[float]  # a: steps along sign(grad)
    random_axis: list[float]  # b: steps along the Rademacher direction
    loss: list[list[float]]  # loss[i][j] at (grad_axis[i], random_axis[j]), mean over examples
    max_loss: float
    min_loss: float
    origin_loss: float  # mean CE at the clean examples (a = b = 0)
    kind: str = "landscape"
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LandscapeAnalysis":
        return cls(**_own_fields(cls, data))


def _own_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of a saved analysis that are the class's fields: the file also keeps what others
    wrote beside them (the report stamps the settings it drew the figure with)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def rademacher(shape: torch.Size | tuple[int, ...], seed: int) -> torch.Tensor:
    """Entries +-1 with equal probability; depends only on ``seed`` and ``shape`` (CPU draw)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, tuple(shape), generator=gen).float().mul_(2).sub_(1)


def gradient_sign(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sign(grad_x CE(f(x), y)) with sign(0) = +1 (the paper's convention)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(ce_per_example(model(x), y).sum(), x)
    return torch.where(grad >= 0, torch.ones_like(grad), -torch.ones_like(grad))


def compute_landscape(
    record: dict[str, Any], path: Path, *, limit: int = 1, grid: int = DEFAULT_GRID, span: float | None = None,
    seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE, device: torch.device, data_root: str | None = None,
) -> LandscapeAnalysis:
    """CE loss over the plane spanned by sign(grad) and a Rademacher direction (paper Fig. 3),
    for the model of the run ``record`` in checkpoint file ``path``, on the first ``limit`` test
    examples (mean over them), ``grid`` x ``grid`` points in [-span, span]^2 (span defaults to
    the run's eps)."""
    torch_device = device
    checkpoint, model = _target(record, path, torch_device)
    reach = float(span) if span is not None else float(checkpoint.config.eps)
    x, y = _test_examples(checkpoint.config, limit, data_root, torch_device)
    gpu_free = torch.cuda.mem_get_info(torch_device)[0] if torch_device.type == "cuda" else None
    check_landscape_memory(grid, batch_size, x[0].numel(), gpu_free)
    n = len(y)
    directions_grad = gradient_sign(model, x, y)
    directions_random = rademacher(x.shape, seed).to(torch_device)
    axis = torch.linspace(-reach, reach, grid, dtype=torch.float64)
    a_grid, b_grid = torch.meshgrid(axis, axis, indexing="ij")
    coefficients = torch.stack([a_grid.flatten(), b_grid.flatten()], 1).to(torch_device, x.dtype)  # [G*G, 2]
    total = torch.zeros(grid * grid, dtype=torch.float64, device=torch_device)
    with torch.no_grad():
        for i in range(n):
            for start in range(0, grid * grid, batch_size):
                c = coefficients[start:start + batch_size]
                points = (x[i] + c[:, 0, None, None, None] * directions_grad[i]
                          + c[:, 1, None, None, None] * directions_random[i]).clamp(0.0, 1.0)
                losses = ce_per_example(model(points), y[i].expand(len(c)))
                total[start:start + len(c)] += losses.double()
    surface = (total / n).reshape(grid, grid).cpu()
    with torch.no_grad():
        origin = float(ce_per_example(model(x), y).double().mean())
    values = surface.tolist()
    return LandscapeAnalysis(
        record["id"], record.get("name"), record.get("defense"), checkpoint.digest, float(checkpoint.config.eps),
        reach, n, f"{checkpoint.config.dataset}/test/{limit}", seed, axis.tolist(), axis.tolist(), values,
        float(surface.max()), float(surface.min()), origin,
    )


# -- files -----------------------------------------------------------------------------------------
def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_json(path, data, indent=1)


def _prepare(out_dir: Path, stem: str) -> tuple[Path, Path]:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out_dir}: {exc.strerror or exc}") from exc
    return out_dir / f"{stem}.png", out_dir / f"{stem}.json"


def save_trajectories(analysis: TrajectoryAnalysis, out_dir: Path, stem: str = "trajectories") -> tuple[Path, Path]:
    """The figure as PNG and its numbers as JSON (same stem); returns (png, json)."""
    png, data = _prepare(Path(out_dir), stem)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for curve in analysis.curves:
        steps = list(range(len(curve.values)))
        ax.plot(steps, curve.values, marker="o", markersize=3,
                label=f"{curve.label} ({curve.loss}; acc {curve.accuracy:.1f}%)")
    ax.set_xlabel("attack step t")
    ax.set_ylabel("mean loss at x'_t")
    ax.set_title(f"{analysis.run_name or analysis.run_id} ({analysis.defense}): eps {analysis.eps:g}, n {analysis.n}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    _write_json(data, analysis.to_dict())
    return png, data


def save_landscape(analysis: LandscapeAnalysis, out_dir: Path, stem: str = "landscape") -> tuple[Path, Path]:
    """A surface (blue low, red high, as the paper's Fig. 3) and a heatmap, as PNG; numbers as JSON."""
    png, data = _prepare(Path(out_dir), stem)
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    z = np.array(analysis.loss)
    a, b = np.meshgrid(np.array(analysis.grad_axis), np.array(analysis.random_axis), indexing="ij")
    fig = Figure(figsize=(10, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    surface = fig.add_subplot(1, 2, 1, projection="3d")
    surface.plot_surface(a, b, z, cmap="coolwarm", linewidth=0, antialiased=True)
    surface.set_xlabel("sign(grad) step")
    surface.set_ylabel("Rademacher step")
    surface.set_zlabel("loss")
    heat = fig.add_subplot(1, 2, 2)
    image = heat.imshow(z.T, origin="lower", cmap="coolwarm", aspect="auto",
                        extent=[analysis.grad_axis[0], analysis.grad_axis[-1],
                                analysis.random_axis[0], analysis.random_axis[-1]])
    heat.set_xlabel("sign(grad) step")
    heat.set_ylabel("Rademacher step")
    fig.colorbar(image, ax=heat, label="loss")
    fig.suptitle(f"{analysis.run_name or analysis.run_id} ({analysis.defense}): max loss {analysis.max_loss:.3f}, "
                 f"n {analysis.n}")
    fig.tight_layout()
    fig.savefig(png)
    _write_json(data, analysis.to_dict())
    return png, data


def load_analysis(path: Path) -> TrajectoryAnalysis | LandscapeAnalysis:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return LandscapeAnalysis.from_dict(data) if data.get("kind") == "landscape" else TrajectoryAnalysis.from_dict(data)


# -- the terminal -------------------------------------------------------------------------------------
def trajectories_plot_text(analysis: TrajectoryAnalysis, width: int = 80, height: int = 20) -> str:
    """The curves as a plotext line chart (a string with ANSI colors)."""
    import plotext as plt

    plt.clear_figure()
    plt.plot_size(width, height)
    for curve in analysis.curves:
        plt.plot(list(range(len(curve.values))), curve.values, label=curve.label, marker="dot")
    plt.title(f"mean loss per attack step - {analysis.run_name or analysis.run_id}")
    plt.xlabel("step")
    text = plt.build()
    plt.clear_figure()
    return text


def _coolwarm(fraction: float) -> str:
    """Blue (low) through white to red (high), as an rgb() color for rich."""
    fraction = min(max(fraction, 0.0), 1.0)
    blue, white, red = (59, 76, 192), (221, 221, 221), (180, 4, 38)
    lo, hi, t = (blue, white, fraction * 2) if fraction < 0.5 else (white, red, fraction * 2 - 1)
    r, g, b = (round(lo[k] + (hi[k] - lo[k]) * t) for k in range(3))
    return f"rgb({r},{g},{b})"


def landscape_heatmap(analysis: LandscapeAnalysis):
    """A rich renderable: one colored cell per grid point, sign(grad) axis left to right,
    Rademacher axis bottom to top."""
    from rich.text import Text

    z = analysis.loss
    low, high = analysis.min_loss, analysis.max_loss
    scale = (high - low) or 1.0
    text = Text()
    grid = len(z)
    for j in reversed(range(len(z[0]))):
        for i in range(grid):
            text.append("  ", style=f"on {_coolwarm((z[i][j] - low) / scale)}")
        text.append("\n")
    text.append(f"x: sign(grad) step {analysis.grad_axis[0]:+.3f}..{analysis.grad_axis[-1]:+.3f}; "
                f"y: Rademacher step; blue {low:.3f} .. red {high:.3f}")
    return text
