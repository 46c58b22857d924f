"""Attacks for evaluation: a parsed spec (``advtui.core.attack_specs``) built into a runnable attack.

An attack is the same shape as a defense's inner problem (DESIGN.md): a per-example loss (CE,
or the Carlini-Wagner margin) plus a ``Maximizer`` plus a number of steps, so every attack
reports its per-step loss trajectory like the training maximizers do. The spec grammar and
its canonical names live in ``advtui.core.attack_specs``, which needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from advtui.config import RunConfig
from advtui.core.attack_specs import AttackSpec
from advtui.core.paths import checkpoint_path
from advtui.core.results import file_digest
from advtui.engine.checkpoint import load_checkpoint
from advtui.engine.defenses import build_maximizer
from advtui.engine.maximizers import PGD, PGDBLS, Maximizer, MaxResult, loss_and_grad, project
from advtui.engine.models import build_model
from advtui.engine.objectives import ce_per_example
from advtui.errors import CheckpointError, ConfigError
from advtui.registry import Registry

CW_KAPPA = 50.0


# -- losses --------------------------------------------------------------------------------------
def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = CW_KAPPA) -> torch.Tensor:
    """Carlini-Wagner margin per example: min(max_{i != y} z_i - z_y, kappa).

    Positive exactly when the example is misclassified; capped at kappa so a confidently wrong
    example stops pulling. The other classes' maximum masks the true class with -inf, not 0, so
    it stays right when every logit is negative (masking by multiplying with 0 would pick 0).
    """
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return torch.clamp(others - true, max=kappa)


LOSSES = {"ce": ce_per_example, "cw": cw_margin_loss}


class FGSM(Maximizer):
    """One signed-gradient step of size eps from the clean input (Goodfellow et al.)."""

    name = "fgsm"

    def maximize(self, model, loss_fn, x, target, eps, steps=1, record=True):
        loss, grad = loss_and_grad(model, loss_fn, x, target)
        x_adv = project(x + eps * grad.sign(), x, eps)
        trajectory = None
        if record:
            with torch.no_grad():
                trajectory = torch.stack([loss.mean(), loss_fn(model(x_adv), target).mean()])
        return MaxResult(x_adv.detach(), trajectory)


# -- checkpoints of runs -------------------------------------------------------------------------
@dataclass
class RunCheckpoint:
    """A run's model (and learned maximizer, if any) as stored in one checkpoint file."""

    record: dict[str, Any]
    path: Path
    digest: str  # sha256 of the file, 16 hex digits: what results are keyed by
    state: dict[str, Any]
    config: RunConfig


def load_run_checkpoint(registry: Registry, record: dict[str, Any], path: Path | str | None = None,
                        device: torch.device | str = "cpu") -> RunCheckpoint:
    """The run's final checkpoint (else its last), or ``path``; CheckpointError when missing,
    corrupt, or not a checkpoint of this run's dataset and model."""
    file = Path(path).expanduser() if path is not None else checkpoint_path(registry, record, "final")
    state = load_checkpoint(file, map_location=device)
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"checkpoint {file} has no run config: it was not written by advtui")
    config = RunConfig.from_dict(state["config"])
    for field in ("dataset", "model"):
        if record.get(field) is not None and getattr(config, field) != record[field]:
            raise CheckpointError(
                f"checkpoint {file} holds a {config.dataset}/{config.model} model but run {record['id']} is "
                f"{record['dataset']}/{record['model']}: pass a checkpoint of this run")
    return RunCheckpoint(record, file, file_digest(file), state, config)


def frozen(module: nn.Module) -> nn.Module:
    """Eval mode, no parameter gradients: attacks differentiate with respect to inputs only."""
    module.eval()
    module.requires_grad_(False)
    return module


def build_run_model(checkpoint: RunCheckpoint, device: torch.device | str) -> nn.Module:
    model = build_model(checkpoint.config.model, checkpoint.config.dataset).to(device)
    try:
        model.load_state_dict(checkpoint.state["model"])
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise CheckpointError(f"checkpoint {checkpoint.path} does not fit a {checkpoint.config.model} model ({first})") from exc
    return frozen(model)


def _freeze_maximizer(maximizer: Maximizer) -> Maximizer:
    """Freeze every module a learned maximizer holds (its weights are an attacker now)."""
    for value in vars(maximizer).values():
        if isinstance(value, nn.Module):
            frozen(value)
    if isinstance(maximizer, nn.Module):
        frozen(maximizer)
    return maximizer


# -- runnable attacks ----------------------------------------------------------------------------
@dataclass
class Attack:
    """A resolved spec, ready to run: ``perturb`` gives x' and the loss trajectory."""

    spec: AttackSpec  # source resolved to a run id
    label: str  # spec text with the source run named by its name, for tables
    loss_fn: Any
    maximizer: Maximizer | None  # None for natural
    surrogate: nn.Module | None = None  # transfer: where the adversarial examples are crafted
    source: RunCheckpoint | None = None

    @property
    def text(self) -> str:
        return self.spec.text

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                record: bool = True) -> MaxResult:
        """x' for one batch (one restart). The trajectory is the mean attack loss at
        x'_0..x'_K, on the surrogate for transfer attacks, on ``model`` otherwise."""
        if self.maximizer is None:
            trajectory = None
            if record:
                with torch.no_grad():
                    trajectory = self.loss_fn(model(x), y).mean().reshape(1)
            return MaxResult(x, trajectory)
        crafted_on = self.surrogate if self.surrogate is not None else model
        return self.maximizer.maximize(crafted_on, self.loss_fn, x, y, eps, self.spec.steps, record=record)


def _source_label(record: dict[str, Any]) -> str:
    return record.get("name") or record["id"]


def build_attack(spec: AttackSpec, registry: Registry, target: dict[str, Any], *, eps: float,
                 step_size: float | None = None, device: torch.device | str = "cpu",
                 target_config: RunConfig | None = None) -> Attack:
    """Everything an attack needs, loaded and checked: a bad source run, a checkpoint without the
    right learned maximizer, or a surrogate of another dataset or eps raises here, before any
    example is attacked."""
    step = step_size if step_size is not None else eps / 4
    config = target_config or RunConfig.from_dict(target["config"])
    loss_fn = LOSSES[spec.loss]
    if spec.family == "natural":
        return Attack(spec, spec.text, loss_fn, None)
    if spec.family == "fgsm":
        return Attack(spec, spec.text, loss_fn, FGSM())
    if spec.family in ("pgd", "cw"):
        return Attack(spec, spec.text, loss_fn, PGD(step, init="uniform"))
    if spec.family == "pgd-bls":
        # The line search starts each step at alpha_0 = eps (the training default) and halves.
        return Attack(spec, spec.text, loss_fn,
                      PGDBLS(eps, config.bls_rho, config.bls_c, config.bls_max_backtracks, init="uniform"))

    source_record = registry.resolve_run(spec.source) if spec.source else target
    resolved = spec.with_source(source_record["id"])
    label = resolved.with_source(_source_label(source_record)).text
    source = load_run_checkpoint(registry, source_record, device=device)
    if spec.learned:
        return Attack(resolved, label, loss_fn, _load_learned_maximizer(spec, source, device), source=source)

    # transfer-pgd-K: craft on the surrogate with PGD, evaluate on the target.
    if source.config.dataset != config.dataset:
        raise ConfigError(f"{spec.text}: surrogate run {source_record['id']} is {source.config.dataset}, the "
                          f"evaluated run is {config.dataset}: pick a surrogate trained on {config.dataset}")
    if abs(source.config.eps - eps) > 1e-9:
        raise ConfigError(
            f"{spec.text}: surrogate run {source_record['id']} was trained at eps {source.config.eps:g} but this "
            f"evaluation is at eps {eps:g}: pick a surrogate trained at eps {eps:g}, or pass --eps {source.config.eps:g}")
    surrogate = build_run_model(source, device)
    return Attack(resolved, label, loss_fn, PGD(step, init="uniform"), surrogate=surrogate, source=source)


def _load_learned_maximizer(spec: AttackSpec, source: RunCheckpoint, device) -> Maximizer:
    """The learned maximizer of a run's checkpoint, rebuilt from its config, loaded, frozen."""
    run = source.record
    kind = source.state.get("maximizer_kind")
    if kind != spec.family or source.state.get("maximizer") is None:
        have = f"a {kind} maximizer" if kind else "no inner maximizer"
        raise ConfigError(
            f"{spec.text}: run {run['id']} ({run.get('defense')}) has no learned {spec.family} maximizer in "
            f"{source.path.name} ({have}): use a run trained with "
            f"{'rnn-adv or rnn-trades' if spec.family == 'rnn' else 'l2lda'}")
    try:
        maximizer = build_maximizer(spec.family, source.config, torch.device(device))
    except ImportError as exc:
        raise ConfigError(f"{spec.text}: this advtui has no {spec.family} maximizer ({exc})") from exc
    try:
        maximizer.load_state_dict(source.state["maximizer"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{spec.text}: the {spec.family} maximizer in {source.path} does not load ({first})") from exc
    return _freeze_maximizer(maximizer)


def build_attacks(specs: Iterable[AttackSpec], registry: Registry, target: dict[str, Any], **kwargs) -> list[Attack]:
    """Build every attack before running any, so bad input fails before anything is measured.
    Specs that resolve to the same canonical attack are kept once."""
    attacks: list[Attack] = []
    for spec in specs:
        attack = build_attack(spec, registry, target, **kwargs)
        if all(a.text != attack.text for a in attacks):
            attacks.append(attack)
    return attacks
