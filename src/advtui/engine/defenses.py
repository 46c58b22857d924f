"""The torch side of the defense table (``advtui.core.defenses``): its objectives and maximizers.

``OBJECTIVES`` and ``MAXIMIZERS`` build each by the name the table's rows use, from a run's
config; a new objective or maximizer is its class in ``engine/`` and one entry here.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

from advtui.core.config import RunConfig
from advtui.core.defenses import DEFENSE_SPECS
from advtui.engine.l2lda import L2LDAGenerator
from advtui.engine.maximizers import PGD, PGDBLS, Maximizer
from advtui.engine.objectives import Objective, PlainObjective, TradesObjective
from advtui.engine.rnn import RNNOptimizer


def _pgd_bls(config: RunConfig, device: torch.device) -> PGDBLS:
    alpha0 = config.bls_alpha0 if config.bls_alpha0 is not None else config.eps
    return PGDBLS(alpha0, config.bls_rho, config.bls_c, config.bls_max_backtracks, config.init)


def _rnn(config: RunConfig, device: torch.device) -> RNNOptimizer:
    return RNNOptimizer(
        hidden=config.rnn_hidden, grad_input=config.rnn_grad_input, delta_scale=config.rnn_delta_scale,
        second_order=config.rnn_second_order, optimizer=config.rnn_optimizer, lr=config.rnn_lr,
        init=config.init, device=device, rnn_init=config.rnn_init,
    )


# The outer objectives, by the names of core.defenses.OBJECTIVE_OPTIONS.
OBJECTIVES: dict[str, Callable[[RunConfig], Objective]] = {
    "plain": lambda config: PlainObjective(),
    "ce": lambda config: Objective(),
    "trades": lambda config: TradesObjective(config.trades_beta),
}

# The inner maximizers, by the names of core.defenses.MAXIMIZER_OPTIONS.
MAXIMIZERS: dict[str, Callable[[RunConfig, torch.device], Maximizer]] = {
    "pgd": lambda config, device: PGD(config.pgd_step, config.init),
    "pgd-bls": _pgd_bls,
    "rnn": _rnn,
    "l2lda": L2LDAGenerator.from_config,
}

_Built = TypeVar("_Built")


def _builder(table: dict[str, _Built], kind: str, what: str) -> _Built:
    try:
        return table[kind]
    except KeyError:
        raise ValueError(f"unknown {what} {kind!r}; known: {', '.join(table)}") from None


def build_objective(config: RunConfig) -> Objective:
    """The outer objective of ``config``'s defense."""
    return _builder(OBJECTIVES, DEFENSE_SPECS[config.defense].objective, "objective")(config)


def build_maximizer(kind: str | None, config: RunConfig, device: torch.device) -> Maximizer | None:
    """The inner maximizer named ``kind`` (None: none), configured from ``config``."""
    if kind is None:
        return None
    return _builder(MAXIMIZERS, kind, "maximizer")(config, device)


def defense_maximizer(config: RunConfig, device: torch.device) -> Maximizer | None:
    """The inner maximizer of ``config``'s defense (None for one without inner maximization)."""
    return build_maximizer(DEFENSE_SPECS[config.defense].maximizer, config, device)
