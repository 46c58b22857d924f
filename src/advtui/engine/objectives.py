"""Outer objectives and the inner losses their maximizers climb.

- ``ce`` (Madry et al.): inner loss CE(f(x'), y); outer loss CE(f(x'_T), y).
- ``trades`` (Zhang et al.): inner loss KL(f(x) || f(x')) against the clean prediction;
  outer loss CE(f(x), y) + beta * KL(f(x) || f(x'_T)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def ce_per_example(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


def kl_per_example(logits_adv: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """KL(p_clean || softmax(logits_adv)) per example; ``p_clean`` holds probabilities."""
    log_q = F.log_softmax(logits_adv.float(), dim=1)
    return F.kl_div(log_q, p_clean.float(), reduction="none").sum(1)


class Objective:
    name = "ce"

    def inner_target(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the inner loss compares against (labels, or the clean prediction)."""
        return y

    inner_loss = staticmethod(ce_per_example)

    def outer_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor):
        """Returns (loss, logits on x'_T, logits on clean x or None)."""
        logits_adv = model(x_adv)
        return F.cross_entropy(logits_adv.float(), y), logits_adv, None


class PlainObjective(Objective):
    name = "plain"

    def outer_loss(self, model, x, x_adv, y):
        logits = model(x)
        return F.cross_entropy(logits.float(), y), None, logits


class TradesObjective(Objective):
    name = "trades"

    def __init__(self, beta: float):
        self.beta = beta

    def inner_target(self, model, x, y):
        with torch.no_grad():
            return F.softmax(model(x).float(), dim=1)

    inner_loss = staticmethod(kl_per_example)

    def outer_loss(self, model, x, x_adv, y):
        logits_clean = model(x)
        logits_adv = model(x_adv)
        natural = F.cross_entropy(logits_clean.float(), y)
        robust = kl_per_example(logits_adv, F.softmax(logits_clean.float(), dim=1)).mean()
        return natural + self.beta * robust, logits_adv, logits_clean
