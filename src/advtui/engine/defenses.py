"""The torch side of the defense table (``advtui.core.defenses``): its objectives and maximizers."""

from __future__ import annotations

import torch

from advtui.core.config import RunConfig
from advtui.core.defenses import DEFENSE_SPECS
from advtui.engine.l2lda import L2LDAGenerator
from advtui.engine.maximizers import PGD, PGDBLS, Maximizer
from advtui.engine.rnn import RNNOptimizer
from advtui.engine.objectives import Objective, PlainObjective, TradesObjective


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
        return L2LDAGenerator.from_config(config, device)
    raise ValueError(f"unknown maximizer {kind!r}")


def defense_maximizer(config: RunConfig, device: torch.device) -> Maximizer | None:
    return build_maximizer(DEFENSE_SPECS[config.defense].maximizer, config, device)
