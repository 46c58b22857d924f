"""The attack-spec grammar: parsing, validation, canonical names and table order.

Torch-free, so the CLI, the queue, the dashboard and the comparison tables check and sort
specs without loading the engine; ``advtui.engine.attacks`` turns a parsed spec into a
runnable attack.

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

Beyond the paper, AutoAttack (Croce & Hein 2020), built from torchattacks' pieces with the
original package's standard settings (``advtui.engine.attacks`` says which and why)::

    aa                   standard AutoAttack: APGD-CE, APGD-T, FAB-T, Square, each run only on
                         the examples every earlier one left robust
    apgd-ce-K            APGD on the cross-entropy, K iterations
    apgd-t-K             targeted APGD on the DLR loss, K iterations per target (9 targets)
    square-K             Square Attack (black box, margin loss), K queries

``xR`` repeats a randomized attack R times from fresh random starts; an example counts as
robust only if it survives every restart (e.g. ``pgd-100x5``). Specs are case-insensitive
except for the run reference. Canonical spec text (the key results are stored under) always
names the source run by its id: ``rnn-10`` evaluated on run a1b2c3 is ``rnn-10:a1b2c3``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Iterable

from advtui.core.defenses import LEARNED_MAXIMIZERS, learned_maximizer
from advtui.core.errors import ConfigError

TRANSFER_DEFAULT_STEPS = 20  # the black-box PGD-20 of TRADES' evaluation code
MAX_STEPS = 100_000
MAX_RESTARTS = 1_000


@dataclass(frozen=True)
class Family:
    """What the grammar allows for one attack family. ``steps`` and ``source`` are "no",
    "required" or "optional"; ``usage`` is how the help text writes it."""

    steps: str
    source: str
    restarts: bool
    usage: str
    listed: bool = True  # in the order results are shown (``transfer`` is stored as transfer-pgd)
    autoattack: bool = False  # run through torchattacks


# The one table of families: the regex, the order, the help text and the AutoAttack set are
# derived from it. The paper's attacks first, then AutoAttack's ("beyond the paper").
FAMILIES: dict[str, Family] = {
    "natural": Family("no", "no", False, "natural"),
    "fgsm": Family("no", "no", False, "fgsm"),
    "pgd": Family("required", "no", True, "pgd-K"),
    "cw": Family("required", "no", True, "cw-K"),
    "pgd-bls": Family("required", "no", True, "pgd-bls-K"),
    "rnn": Family("required", "optional", True, "rnn-K[:RUN]"),
    "l2lda": Family("required", "optional", True, "l2lda-K[:RUN]"),
    "transfer": Family("no", "required", True, "transfer:RUN", listed=False),
    "transfer-pgd": Family("required", "required", True, "transfer-pgd-K:RUN"),
    "apgd-ce": Family("required", "no", True, "apgd-ce-K", autoattack=True),
    "apgd-t": Family("required", "no", True, "apgd-t-K", autoattack=True),
    "square": Family("required", "no", True, "square-K", autoattack=True),
    "aa": Family("no", "no", False, "aa", autoattack=True),
}
FAMILY_ORDER = tuple(name for name, family in FAMILIES.items() if family.listed)
AUTOATTACK_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.autoattack)
AA_ITERATIONS = 100  # what the spec "aa" stores as its steps: the standard version's APGD/FAB iterations
LEARNED_FAMILIES = LEARNED_MAXIMIZERS  # the attacker is a maximizer learned by a training run
_SPEC = re.compile(  # longest names first, so "pgd" never takes the start of "pgd-bls"
    rf"^(?P<family>{'|'.join(sorted(FAMILIES, key=len, reverse=True))})"
    r"(?:-(?P<steps>\d+))?(?:x(?P<restarts>\d+))?(?::(?P<source>.*))?$"
)
KNOWN_ATTACKS = ", ".join(family.usage for family in FAMILIES.values())

# The dashboard's evaluation checklist: (spec, label), the paper's white-box attacks, then
# AutoAttack beyond the paper. Learned attackers and transfer sources are added per run.
EVALUATION_CHECKLIST = (
    ("natural", "natural (clean accuracy)"),
    ("fgsm", "fgsm"),
    ("pgd-10", "pgd-10"),
    ("pgd-20", "pgd-20"),
    ("pgd-100", "pgd-100"),
    ("cw-100", "cw-100 (CW margin loss, kappa 50)"),
    ("pgd-bls-10", "pgd-bls-10 (backtracking line search)"),
    ("aa", "aa (AutoAttack, standard: APGD-CE, APGD-T, FAB-T, Square; beyond the paper)"),
)


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
        head = self.family if self.family in ("natural", "fgsm", "aa") else f"{self.family}-{self.steps}"
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
    def autoattack(self) -> bool:
        """AutoAttack or one of its pieces (run through torchattacks)."""
        return self.family in AUTOATTACK_FAMILIES

    @property
    def white_box_gradient(self) -> bool:
        """Attacks that follow the target model's own input gradients (Square only queries
        the model's scores)."""
        return self.family not in ("natural", "transfer-pgd", "square")

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
    rules = FAMILIES[family]
    steps_rule, source_rule, restarts_ok = rules.steps, rules.source, rules.restarts
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
        if family == "aa":
            raise AttackSpecError(f"attack {raw!r}: aa is AutoAttack's standard version (one restart per piece); "
                                  f"for more restarts use its pieces, e.g. apgd-ce-100x5")
        raise AttackSpecError(f"attack {raw!r}: {family} is deterministic, restarts (xR) make no sense")
    n_steps = int(steps) if steps is not None else {"fgsm": 1, "aa": AA_ITERATIONS}.get(family, 0)
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
    learned = learned_maximizer(record)
    if learned is not None:
        specs.append(AttackSpec(learned, 10, 1, record["id"]))
    return specs


def attack_sort_key(spec_text: str) -> tuple:
    """Table order: natural, fgsm, pgd, cw, pgd-bls, rnn, l2lda, transfer, then AutoAttack's
    (apgd-ce, apgd-t, square, aa); within a family by steps."""
    try:
        spec = parse_attack(spec_text)
    except AttackSpecError:
        return (len(FAMILY_ORDER), 0, 0, spec_text)
    return (FAMILY_ORDER.index(spec.family), spec.steps, spec.restarts, spec.source or "")


def attack_specs_for(attacks: str | Iterable[str | AttackSpec] | None, record: dict[str, Any]) -> list[AttackSpec]:
    """Parse an attack list (None: the run's default list)."""
    if attacks is None:
        return default_attacks(record)
    if isinstance(attacks, str):
        return parse_attack_list(attacks)
    items = list(attacks)
    specs = [a for a in items if isinstance(a, AttackSpec)]
    if items and len(specs) == len(items):
        return specs
    return parse_attack_list([str(a) for a in items])


def check_transfer_source(spec: AttackSpec, source_id: str, target_id: str) -> None:
    """A transfer attack crafted on the evaluated model itself is white-box PGD: stored as a
    black-box transfer column it would pass for what it is not."""
    if spec.transfer and source_id == target_id:
        raise ConfigError(f"{spec.text}: the surrogate is the evaluated run {target_id} itself, which makes it "
                          f"white-box PGD: use pgd-{spec.steps}, or name another run as the surrogate")
