"""The defense table (docs/architecture.md): each defense is an outer objective plus an inner maximizer.

This is the one list of defenses: ``advtui.core.config`` validates run configs against it and
``advtui.engine.defenses`` builds the torch objects it names, so a defense added here is known
to the CLI, the dashboard, the comparison tables and the trainer alike.

Each objective and each maximizer has a row saying which run options (``RunConfig`` fields) it
reads; the config display (``values_in_force``, the dashboard's detail screen) shows an option of
these rows only for the defenses that use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DefenseSpec:
    objective: str  # a key of OBJECTIVE_OPTIONS
    maximizer: str | None  # a key of MAXIMIZER_OPTIONS, or None: no inner maximization
    summary: str


# The options each outer objective and each inner maximizer reads, beyond those every run has:
# eps, inner_steps, init and step_size apply whatever the defense (the per-epoch evaluation
# attacks every run with PGD). The keys are the names DEFENSE_SPECS uses, and the names
# advtui.engine.defenses builds objectives and maximizers by.
OBJECTIVE_OPTIONS: dict[str, tuple[str, ...]] = {
    "plain": (),
    "ce": (),
    "trades": ("beta",),
}
MAXIMIZER_OPTIONS: dict[str, tuple[str, ...]] = {
    "pgd": (),
    "pgd-bls": ("bls_alpha0", "bls_rho", "bls_c", "bls_max_backtracks"),
    "rnn": ("rnn_hidden", "rnn_grad_input", "rnn_init", "rnn_delta_scale", "rnn_second_order", "rnn_optimizer",
            "rnn_lr"),
    "l2lda": ("l2lda_lr", "l2lda_latent", "l2lda_diversity", "l2lda_width"),
}


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


def _check_table() -> None:
    """Every objective and maximizer a defense names has its row of options (checked on import,
    so a defense that names an unknown one fails every command and test at once)."""
    for name, spec in DEFENSE_SPECS.items():
        if spec.objective not in OBJECTIVE_OPTIONS:
            raise ValueError(f"defense {name}: unknown objective {spec.objective!r}; add its row to OBJECTIVE_OPTIONS")
        if spec.maximizer is not None and spec.maximizer not in MAXIMIZER_OPTIONS:
            raise ValueError(f"defense {name}: unknown maximizer {spec.maximizer!r}; add its row to MAXIMIZER_OPTIONS")


_check_table()


# Every option some objective or maximizer reads: shown only for the defenses that use it.
DEFENSE_OPTIONS: frozenset[str] = frozenset(
    name for table in (OBJECTIVE_OPTIONS, MAXIMIZER_OPTIONS) for options in table.values() for name in options)


def defense_options(defense: object) -> frozenset[str]:
    """The options of DEFENSE_OPTIONS that ``defense`` uses: its objective's and its maximizer's;
    none for an unknown defense (or an odd value from a record edited by hand)."""
    spec = DEFENSE_SPECS.get(defense) if isinstance(defense, str) else None
    if spec is None:
        return frozenset()
    return frozenset(OBJECTIVE_OPTIONS[spec.objective] + MAXIMIZER_OPTIONS.get(spec.maximizer or "", ()))


def uses_option(defense: object, name: str) -> bool:
    """Whether ``name`` applies to ``defense``: an option every run has, or one its objective or
    maximizer reads."""
    return name not in DEFENSE_OPTIONS or name in defense_options(defense)


# Inner maximizers that are learned by training (and so can be loaded from a run's checkpoint
# and used as an attacker).
LEARNED_MAXIMIZERS = ("rnn", "l2lda")


def learned_maximizer(record: dict) -> str | None:
    """The learned maximizer a run of this record's defense trains ("rnn", "l2lda"), else None."""
    spec = DEFENSE_SPECS.get(record.get("defense") or "")
    return spec.maximizer if spec is not None and spec.maximizer in LEARNED_MAXIMIZERS else None
