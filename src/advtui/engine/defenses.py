"""A defense is an outer objective plus an inner maximizer (DESIGN.md's table)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from advtui.config import RunConfig
from advtui.engine.maximizers import PGD, PGDBLS, Maximizer, RNNOptimizer
from advtui.engine.objectives import Objective, PlainObjective, TradesObjective


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


def build_objective(config: RunConfig) -> Objective:
    kind = DEFENSE_SPECS[config.defense].objective
    if kind == "plain":
        return PlainObjective()
    if kind == "trades":
        return TradesObjective(config.trades_beta)
    return Objective()


def build_maximizer(kind: str | None, config: RunConfig, device: torch.device) -> Maximizer | None:
    """The inner maximizer named ``kind``, configured from ``config``."""
    if kind is None:
        return None
    if kind == "pgd":
        return PGD(config.pgd_step, config.init)
    if kind == "pgd-bls":
        alpha0 = config.bls_alpha0 if config.bls_alpha0 is not None else config.eps
        return PGDBLS(alpha0, config.bls_rho, config.bls_c, config.bls_max_backtracks, config.init)
    if kind == "rnn":
        return RNNOptimizer(
            hidden=config.rnn_hidden, grad_input=config.rnn_grad_input, delta_scale=config.rnn_delta_scale,
            second_order=config.rnn_second_order, optimizer=config.rnn_optimizer, lr=config.rnn_lr,
            init=config.init, device=device, rnn_init=config.rnn_init,
        )
    if kind == "l2lda":
        from advtui.engine.l2lda import L2LDAGenerator  # the baseline's own module

        return L2LDAGenerator.from_config(config, device)
    raise ValueError(f"unknown maximizer {kind!r}")


def defense_maximizer(config: RunConfig, device: torch.device) -> Maximizer | None:
    return build_maximizer(DEFENSE_SPECS[config.defense].maximizer, config, device)
