"""Attacks for evaluation: the spec grammar, its validation, and building a runnable attack.

An attack is the same shape as a defense's inner problem (DESIGN.md): a per-example loss (CE,
or the Carlini-Wagner margin) plus a ``Maximizer`` plus a number of steps, so every attack
reports its per-step loss trajectory like the training maximizers do.

Grammar, parsed and validated here and nowhere else::

    NAME[-STEPS][xRESTARTS][:SOURCE]

    natural              the clean inputs
    fgsm                 one signed-gradient step of size eps from x
    pgd-K                K sign steps of size --step-size (default eps/4), uniform random start
    cw-K                 pgd-K on the CW margin loss min(max_{i!=y} z_i - z_y, kappa), kappa = 50
    pgd-bls-K            PGD with backtracking line search (paper eq. 4, Table 1)
    rnn-K[:RUN]          the learned RNN optimizer of RUN's checkpoint as an attacker, K steps
                         (no RUN: the evaluated run's own optimizer)
    l2lda-K[:RUN]        the L2LDA generator of RUN's checkpoint as an attacker
    transfer:RUN         black box: pgd-20 on RUN's model (the surrogate), evaluated on the target
    transfer-pgd-K:RUN   the same with K steps

``xR`` repeats a randomized attack R times from fresh random starts; an example counts as
robust only if it survives every restart (e.g. ``pgd-100x5``). Specs are case-insensitive
except for the run reference. Canonical spec text (the key results are stored under) always
names the source run by its id: ``rnn-10`` evaluated on run a1b2c3 is ``rnn-10:a1b2c3``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from advtui.config import RunConfig
from advtui.engine.defenses import DEFENSE_SPECS, build_maximizer
from advtui.engine.maximizers import PGD, PGDBLS, Maximizer, MaxResult, loss_and_grad, project
from advtui.engine.objectives import ce_per_example
from advtui.errors import CheckpointError, ConfigError
from advtui.registry import Registry

CW_KAPPA = 50.0
TRANSFER_DEFAULT_STEPS = 20  # the black-box PGD-20 of TRADES' evaluation code
MAX_STEPS = 100_000
MAX_RESTARTS = 1_000

# family -> what the grammar allows: steps ("no" | "required" | "optional"), source
# ("no" | "optional" | "required"), restarts allowed.
_FAMILIES: dict[str, tuple[str, str, bool]] = {
    "natural": ("no", "no", False),
    "fgsm": ("no", "no", False),
    "pgd": ("required", "no", True),
    "cw": ("required", "no", True),
    "pgd-bls": ("required", "no", True),
    "rnn": ("required", "optional", True),
    "l2lda": ("required", "optional", True),
    "transfer": ("no", "required", True),
    "transfer-pgd": ("required", "required", True),
}
FAMILY_ORDER = ("natural", "fgsm", "pgd", "cw", "pgd-bls", "rnn", "l2lda", "transfer-pgd")
LEARNED_FAMILIES = ("rnn", "l2lda")  # the attacker is a maximizer learned by a training run
_SPEC = re.compile(
    r"^(?P<family>pgd-bls|transfer-pgd|natural|fgsm|pgd|cw|rnn|l2lda|transfer)"
    r"(?:-(?P<steps>\d+))?(?:x(?P<restarts>\d+))?(?::(?P<source>.*))?$"
)
KNOWN_ATTACKS = "natural, fgsm, pgd-K, cw-K, pgd-bls-K, rnn-K[:RUN], l2lda-K[:RUN], transfer:RUN, transfer-pgd-K:RUN"


class AttackSpecError(ConfigError):
    """A malformed or unknown attack spec."""


@dataclass(frozen=True)
class AttackSpec:
    """One parsed attack spec. ``source`` is the run reference as written (None: none given)."""

    family: str
    steps: int = 0  # 0 for natural, 1 for fgsm
    restarts: int = 1
    source: str | None = None

    @property
    def text(self) -> str:
        """The canonical spec (with ``source`` as it currently stands: an id once resolved)."""
        head = self.family if self.family in ("natural", "fgsm") else f"{self.family}-{self.steps}"
        if self.restarts > 1:
            head += f"x{self.restarts}"
        return f"{head}:{self.source}" if self.source else head

    def __str__(self) -> str:
        return self.text

    @property
    def learned(self) -> bool:
        return self.family in LEARNED_FAMILIES

    @property
    def transfer(self) -> bool:
        return self.family == "transfer-pgd"

    @property
    def white_box_gradient(self) -> bool:
        """Attacks that follow the target model's own input gradients."""
        return self.family not in ("natural", "transfer-pgd")

    @property
    def loss(self) -> str:
        return {"natural": "ce", "cw": "cw"}.get(self.family, "ce")

    def with_source(self, source: str | None) -> "AttackSpec":
        return replace(self, source=source)


def parse_attack(spec: str) -> AttackSpec:
    """Parse and validate one spec; AttackSpecError (one line, with the grammar) otherwise."""
    raw = (spec or "").strip()
    head, sep, source = raw.partition(":")
    match = _SPEC.match(head.lower() + sep + source)
    if not match:
        raise AttackSpecError(f"unknown attack {raw!r}: use one of {KNOWN_ATTACKS} (e.g. pgd-100, rnn-10:RUN)")
    family = match["family"]
    steps_rule, source_rule, restarts_ok = _FAMILIES[family]
    steps, restarts, source = match["steps"], match["restarts"], match["source"]
    if source is not None and not source.strip():
        raise AttackSpecError(f"attack {raw!r} has an empty source after ':': name a run (id, prefix or name)")
    if steps_rule == "no" and steps is not None:
        raise AttackSpecError(f"attack {raw!r}: {family} takes no step count")
    if steps_rule == "required" and steps is None:
        raise AttackSpecError(f"attack {raw!r}: {family} needs a step count, e.g. {family}-10")
    if source_rule == "no" and source is not None:
        raise AttackSpecError(f"attack {raw!r}: {family} takes no source run")
    if source_rule == "required" and source is None:
        raise AttackSpecError(f"attack {raw!r}: {family} needs a source run, e.g. {family}:RUN")
    if restarts is not None and not restarts_ok:
        raise AttackSpecError(f"attack {raw!r}: {family} is deterministic, restarts (xR) make no sense")
    n_steps = int(steps) if steps is not None else (1 if family == "fgsm" else 0)
    if steps is not None and not 1 <= n_steps <= MAX_STEPS:
        raise AttackSpecError(f"attack {raw!r}: the step count must be between 1 and {MAX_STEPS}")
    n_restarts = int(restarts) if restarts is not None else 1
    if not 1 <= n_restarts <= MAX_RESTARTS:
        raise AttackSpecError(f"attack {raw!r}: restarts must be between 1 and {MAX_RESTARTS}")
    if family == "transfer":  # the short form is pgd-20 on the surrogate
        family, n_steps = "transfer-pgd", TRANSFER_DEFAULT_STEPS
    return AttackSpec(family, n_steps, n_restarts, source.strip() if source else None)


def parse_attack_list(text: str | Iterable[str]) -> list[AttackSpec]:
    """Specs separated by commas and/or spaces (or an iterable of specs), duplicates dropped."""
    items = re.split(r"[,\s]+", text) if isinstance(text, str) else [s for t in text for s in re.split(r"[,\s]+", t)]
    specs: list[AttackSpec] = []
    for item in items:
        if item.strip():
            spec = parse_attack(item)
            if spec not in specs:
                specs.append(spec)
    if not specs:
        raise AttackSpecError(f"no attack given: list some of {KNOWN_ATTACKS}")
    return specs


def default_attacks(record: dict[str, Any]) -> list[AttackSpec]:
    """The paper's Table 3 columns: natural, pgd-10, pgd-100, cw-100, plus the run's own learned
    optimizer as a 10-step attacker when it has one."""
    specs = [parse_attack(s) for s in ("natural", "pgd-10", "pgd-100", "cw-100")]
    kind = DEFENSE_SPECS.get(record.get("defense", ""))
    if kind is not None and kind.maximizer in LEARNED_FAMILIES:
        specs.append(AttackSpec(kind.maximizer, 10, 1, record["id"]))
    return specs


def attack_sort_key(spec_text: str) -> tuple:
    """Table order: natural, fgsm, pgd, cw, pgd-bls, rnn, l2lda, transfer; then steps."""
    try:
        spec = parse_attack(spec_text)
    except AttackSpecError:
        return (len(FAMILY_ORDER), 0, 0, spec_text)
    return (FAMILY_ORDER.index(spec.family), spec.steps, spec.restarts, spec.source or "")


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


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def load_run_checkpoint(registry: Registry, record: dict[str, Any], path: Path | str | None = None,
                        device: torch.device | str = "cpu") -> RunCheckpoint:
    """The run's final checkpoint (else its last), or ``path``; CheckpointError when missing,
    corrupt, or not a checkpoint of this run's dataset and model."""
    from advtui.engine.checkpoint import load_checkpoint
    from advtui.runner import checkpoint_path

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
    from advtui.engine.models import build_model

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
