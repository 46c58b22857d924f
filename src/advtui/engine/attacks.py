"""Attacks for evaluation: a parsed spec (``advtui.core.attack_specs``) built into a runnable attack.

An attack is the same shape as a defense's inner problem (docs/architecture.md): a per-example loss (CE,
or the Carlini-Wagner margin) plus a ``Maximizer`` plus a number of steps, so every attack
reports its per-step loss trajectory like the training maximizers do. The spec grammar and
its canonical names live in ``advtui.core.attack_specs``, which needs no torch.

The engine reads no store: a run's checkpoint is loaded from the file it is given, and an attack
that reads another run (a learned maximizer's, a transfer surrogate's) finds that run through
the ``RunLookup`` the layer above passes in (``advtui.evaluation.run_lookup``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from advtui.core.config import RunConfig
from advtui.core.attack_specs import AttackSpec, check_transfer_source
from advtui.core.defenses import DEFENSE_SPECS
from advtui.core.format import plain_line
from advtui.core.digests import file_digest
from advtui.engine.checkpoint import load_checkpoint
from advtui.engine.defenses import build_maximizer
from advtui.engine.maximizers import PGD, PGDBLS, Maximizer, MaxResult, loss_and_grad, project
from advtui.engine.models import build_model
from advtui.engine.objectives import ce_per_example
from advtui.core.errors import CheckpointError, ConfigError

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


# -- AutoAttack, from torchattacks' pieces ---------------------------------------------------------
@dataclass(frozen=True)
class AutoAttackSettings:
    """The standard version of the original AutoAttack (Croce & Hein 2020), as its reference code
    sets it: fra31/auto-attack, ``autoattack/autoattack.py``, ``AutoAttack.__init__`` and
    ``set_version('standard')``: APGD-CE with 100 iterations and 1 restart; APGD-T on the
    targeted DLR loss, 9 target classes, 100 iterations, 1 restart; FAB-T, 9 target classes,
    100 iterations, 1 restart (alpha_max 0.1, eta 1.05, beta 0.9); Square, 5,000 queries,
    p_init 0.8, margin loss, ``resc_schedule=False``; rho 0.75 and one EOT iteration for APGD.

    The original package is not installable here, so the pieces are torchattacks' ports. Its
    own ``torchattacks.AutoAttack`` is not used because its defaults differ from the original
    (10 iterations, ``n_classes - 1`` targets, Square's ``resc_schedule=True``, clock seeds)."""

    iterations: int = 100
    target_classes: int = 9
    square_queries: int = 5000
    square_p_init: float = 0.8
    rho: float = 0.75


AA_STANDARD = AutoAttackSettings()

# The standard cascade, in the original's order (attacks_to_run of version 'standard').
AA_PIECES = ("apgd-ce", "apgd-t", "fab-t", "square")


def autoattack_piece(name: str, model: nn.Module, eps: float, seed: int, *, iterations: int | None = None,
                     queries: int | None = None, restarts: int = 1,
                     settings: AutoAttackSettings | None = None):
    """One of AutoAttack's pieces as a torchattacks attack with the original's settings:
    ``apgd-ce``, ``apgd-t``, ``fab-t`` (``iterations`` default 100) or ``square`` (``queries``
    default 5,000). Every piece seeds torch's generator with ``seed`` at each call, as the
    original does with a fixed seed, so results repeat."""
    import torchattacks  # only evaluations with these attacks need it

    settings = settings or AA_STANDARD
    iterations = iterations or settings.iterations
    if name == "apgd-ce":
        return torchattacks.APGD(model, norm="Linf", eps=eps, steps=iterations, n_restarts=restarts, seed=seed,
                                 loss="ce", eot_iter=1, rho=settings.rho)
    if name == "apgd-t":
        piece = torchattacks.APGDT(model, norm="Linf", eps=eps, steps=iterations, n_restarts=restarts, seed=seed,
                                   eot_iter=1, rho=settings.rho)
        piece.n_target_classes = settings.target_classes  # torchattacks' default is n_classes - 1
        return piece
    if name == "fab-t":
        piece = torchattacks.FAB(model, norm="Linf", eps=eps, steps=iterations, n_restarts=restarts, seed=seed,
                                 alpha_max=0.1, eta=1.05, beta=0.9, multi_targeted=True)
        piece.n_target_classes = settings.target_classes
        return piece
    if name == "square":
        return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=queries or settings.square_queries,
                                   n_restarts=restarts, p_init=settings.square_p_init, loss="margin",
                                   resc_schedule=False, seed=seed)
    raise ValueError(f"unknown AutoAttack piece {name!r}")


class TorchattacksPiece(Maximizer):
    """A torchattacks attack as a maximizer: x' is what the attack returns, kept inside the eps
    ball and [0, 1] (a no-op for these attacks, which project themselves: a guard so that no
    example can count as broken from outside the threat model). The pieces carry the model they
    attack, so each is built for the model it is first handed. The trajectory is the CE at x
    and at x' (the pieces do not expose their per-iteration losses)."""

    def __init__(self, name: str, build: Callable[[nn.Module], Any]):
        self.name = name
        self._build = build
        self._built: dict[int, Any] = {}

    def attack_for(self, model: nn.Module):
        if id(model) not in self._built:
            self._built[id(model)] = self._build(model)
        return self._built[id(model)]

    def maximize(self, model, loss_fn, x, target, eps, steps=0, record=True):
        x_adv = project(self.attack_for(model)(x, target).detach(), x, eps)
        trajectory = None
        if record:
            with torch.no_grad():
                trajectory = torch.stack([loss_fn(model(x), target).mean(), loss_fn(model(x_adv), target).mean()])
        return MaxResult(x_adv, trajectory)


def autoattack_maximizers(spec: AttackSpec, eps: float, seed: int,
                          settings: AutoAttackSettings | None = None) -> list[TorchattacksPiece]:
    """The passes of an AutoAttack spec: the four pieces of ``aa`` (each run on what the
    earlier ones left robust), or the one piece of ``apgd-ce-K``, ``apgd-t-K``, ``square-K``
    (restarts xR are the piece's own ``n_restarts``)."""
    settings = settings or AA_STANDARD
    if spec.family == "aa":
        return [TorchattacksPiece(name, lambda model, name=name: autoattack_piece(name, model, eps, seed, settings=settings))
                for name in AA_PIECES]
    if spec.family == "square":
        build = lambda model: autoattack_piece("square", model, eps, seed, queries=spec.steps,  # noqa: E731
                                               restarts=spec.restarts, settings=settings)
    else:
        build = lambda model: autoattack_piece(spec.family, model, eps, seed, iterations=spec.steps,  # noqa: E731
                                               restarts=spec.restarts, settings=settings)
    return [TorchattacksPiece(spec.family, build)]


# -- checkpoints of runs -------------------------------------------------------------------------
@dataclass
class RunCheckpoint:
    """A run's model (and learned maximizer, if any) as stored in one checkpoint file."""

    record: dict[str, Any]
    path: Path
    digest: str  # sha256 of the file, 16 hex digits: what results are keyed by
    state: dict[str, Any]
    config: RunConfig
    kind: str | None = None  # best, final or last, when known


@dataclass(frozen=True)
class RunLookup:
    """What attacks that read other runs need of the run store, given by the layer above the
    engine: ``resolve`` a run reference to its record (an error line for an unknown one), and a
    record's ``final_checkpoint`` file (its last one before it finishes; an error line for none)."""

    resolve: Callable[[str], dict[str, Any]]
    final_checkpoint: Callable[[dict[str, Any]], Path]


def load_run_checkpoint(record: dict[str, Any], path: Path | str, device: torch.device | str = "cpu") -> RunCheckpoint:
    """The checkpoint file ``path`` of the run ``record``; CheckpointError when missing, corrupt,
    or not a checkpoint of this run's dataset and model."""
    file = Path(path).expanduser()
    state = load_checkpoint(file, map_location=device)
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"checkpoint {file} has no run config: it was not written by advtui")
    config = RunConfig.from_dict(state["config"])
    for key in ("dataset", "model"):
        if record.get(key) is not None and getattr(config, key) != record[key]:
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
        first = plain_line(str(exc)) or type(exc).__name__
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
    # Cascades (AutoAttack): pass k runs stages[k] on the examples every earlier pass left robust.
    stages: list[Maximizer] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.spec.text

    @property
    def passes(self) -> int:
        """How many times the evaluation runs the attack on the still-robust examples: the
        restarts of a randomized attack, or the pieces of a cascade."""
        if self.stages:
            return len(self.stages)
        if self.maximizer is None or self.spec.autoattack:  # AutoAttack's pieces restart inside
            return 1
        return self.spec.restarts

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                record: bool = True, stage: int = 0, on_step: Callable[[int], None] | None = None) -> MaxResult:
        """x' for one batch (one pass). The trajectory is the mean attack loss at
        x'_0..x'_K, on the surrogate for transfer attacks, on ``model`` otherwise. ``on_step``
        hears the steps done so far, counted as forward passes of the model the attack
        crafts on (one per step for PGD and CW), so a long attack on one batch shows progress."""
        if self.maximizer is None:
            trajectory = None
            if record:
                with torch.no_grad():
                    trajectory = self.loss_fn(model(x), y).mean().reshape(1)
            return MaxResult(x, trajectory)
        maximizer = self.stages[stage] if self.stages else self.maximizer
        crafted_on = self.surrogate if self.surrogate is not None else model
        if on_step is not None:
            crafted_on = StepCounter(crafted_on, on_step, self.spec.steps)
        return maximizer.maximize(crafted_on, self.loss_fn, x, y, eps, self.spec.steps, record=record)


class StepCounter(nn.Module):
    """``model`` as it is, telling ``on_step`` how many forward passes it has made (at most
    ``steps``): the attack loops see the same module, parameters and modes."""

    def __init__(self, model: nn.Module, on_step: Callable[[int], None], steps: int):
        super().__init__()
        self.model = model
        self.on_step = on_step
        self.steps = steps
        self.calls = 0
        self.training = model.training  # not train(): that would set every layer of the model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.model(*args, **kwargs)
        self.calls += 1
        self.on_step(min(self.calls, self.steps) if self.steps else self.calls)
        return out


def _source_label(record: dict[str, Any]) -> str:
    return record.get("name") or record["id"]


def build_attack(spec: AttackSpec, runs: RunLookup, target: dict[str, Any], *, eps: float,
                 step_size: float | None = None, device: torch.device | str = "cpu",
                 target_config: RunConfig | None = None, seed: int = 0) -> Attack:
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
    if spec.autoattack:
        stages = autoattack_maximizers(spec, eps, seed)
        # One stage records a trajectory only for a single piece: a cascade's x' comes from several.
        return Attack(spec, spec.text, loss_fn, stages[0], stages=stages if len(stages) > 1 else [])
    if spec.family == "pgd-bls":
        # The line search starts each step at alpha_0 = eps (the training default) and halves.
        return Attack(spec, spec.text, loss_fn,
                      PGDBLS(eps, config.bls_rho, config.bls_c, config.bls_max_backtracks, init="uniform"))

    source_record = runs.resolve(spec.source) if spec.source else target
    if spec.transfer:
        check_transfer_source(spec, source_record["id"], target["id"])
    resolved = spec.with_source(source_record["id"])
    label = resolved.with_source(_source_label(source_record)).text
    source = load_run_checkpoint(source_record, runs.final_checkpoint(source_record), device=device)
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
            f"{' or '.join(d for d, row in DEFENSE_SPECS.items() if row.maximizer == spec.family)}")
    try:
        maximizer = build_maximizer(spec.family, source.config, torch.device(device))
    except ImportError as exc:
        raise ConfigError(f"{spec.text}: this advtui has no {spec.family} maximizer ({exc})") from exc
    try:
        maximizer.load_state_dict(source.state["maximizer"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        first = plain_line(str(exc)) or type(exc).__name__
        raise CheckpointError(f"{spec.text}: the {spec.family} maximizer in {source.path} does not load ({first})") from exc
    return _freeze_maximizer(maximizer)


def build_attacks(specs: Iterable[AttackSpec], runs: RunLookup, target: dict[str, Any], **kwargs) -> list[Attack]:
    """Build every attack before running any, so bad input fails before anything is measured.
    Specs that resolve to the same canonical attack are kept once."""
    attacks: list[Attack] = []
    for spec in specs:
        attack = build_attack(spec, runs, target, **kwargs)
        if all(a.text != attack.text for a in attacks):
            attacks.append(attack)
    return attacks
