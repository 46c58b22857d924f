"""The defense table (docs/architecture.md): each defense is an outer objective plus an inner maximizer.

This is the one list of defenses: ``advtui.core.config`` validates run configs against it and
``advtui.engine.defenses`` builds the torch objects it names, so a defense added here is known
to the CLI, the dashboard, the comparison tables and the trainer alike.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DefenseSpec:
    objective: str  # plain | ce | trades
    maximizer: str | None  # None | pgd | pgd-bls | rnn | l2lda
    summary: str


DEFENSE_SPECS: dict[str, DefenseSpec] = {
    "plain": DefenseSpec("plain", None, "CE on clean x; no inner maximizer"),
    "advtrain": DefenseSpec("ce", "pgd", "CE on x' (Madry); PGD with sign steps"),
    "advtrain-bls": DefenseSpec("ce", "pgd-bls", "CE on x'; PGD with backtracking line search (eq. 4)"),
    "trades": DefenseSpec("trades", "pgd", "CE(x) + beta KL(f(x) || f(x')); PGD on the KL"),
    "rnn-adv": DefenseSpec("ce", "rnn", "CE on x'; the learned RNN optimizer (Algorithm 1)"),
    "rnn-trades": DefenseSpec("trades", "rnn", "TRADES objective; the learned RNN optimizer on the KL"),
    "l2lda": DefenseSpec("ce", "l2lda", "CE on x'; a CNN generator (Jang et al. 2019), the L2L baseline"),
}
DEFENSES: tuple[str, ...] = tuple(DEFENSE_SPECS)

# Inner maximizers that are learned by training (and so can be loaded from a run's checkpoint
# and used as an attacker).
LEARNED_MAXIMIZERS = ("rnn", "l2lda")


def learned_maximizer(record: dict) -> str | None:
    """The learned maximizer a run of this record's defense trains ("rnn", "l2lda"), else None."""
    spec = DEFENSE_SPECS.get(record.get("defense") or "")
    return spec.maximizer if spec is not None and spec.maximizer in LEARNED_MAXIMIZERS else None
