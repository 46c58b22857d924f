"""Inner maximizers: one interface for adversarial training and for attacks.

A maximizer takes a model, a per-example loss, clean inputs x, the loss target (labels, or the
clean prediction for TRADES' KL), eps and a number of steps, and returns x' inside the
L-inf eps-ball around x and inside [0, 1], together with the inner-loss trajectory: the mean
loss at x'_0, x'_1, ..., x'_T. That trajectory is the "inner-loss curve" of the dashboard and
the paper's Fig. 2.

This module holds that interface (``Maximizer``, ``MaxResult``), the projection P onto the
ball and the box, the start x'_0 of Algorithm 1, and the two hand-designed maximizers: PGD with
sign steps (paper eq. 3) and PGD with backtracking line search (eq. 4).

Learned maximizers also carry their own parameters and optimizer (``LearnedMaximizer``):
``learn(result)`` takes one ascent step on the weighted inner loss of the result (Algorithm 1,
line 17). They have their own modules: the paper's RNN optimizer in ``advtui.engine.rnn``, the
L2LDA generator in ``advtui.engine.l2lda``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

# logits [B, K], target -> per-example loss [B]
InnerLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MaxResult:
    x_adv: torch.Tensor  # detached, in the eps-ball and in [0, 1]
    trajectory: torch.Tensor | None  # [T + 1] mean loss at x'_0..x'_T (None when not recorded)
    info: dict[str, Any] = field(default_factory=dict)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Projection onto B(x, eps) intersected with the image box [0, 1]."""
    return torch.max(torch.min(x_adv, x + eps), x - eps).clamp(0.0, 1.0)


def random_start(x: torch.Tensor, eps: float, init: str = "normal") -> torch.Tensor:
    """x'_0: x + 0.001 N(0, I) as in Algorithm 1, or uniform in the eps-ball."""
    if init == "uniform":
        noise = torch.empty_like(x).uniform_(-eps, eps)
    else:
        noise = 0.001 * torch.randn_like(x)
    return project(x + noise, x, eps)


def loss_and_grad(model: nn.Module, loss_fn: InnerLoss, x_adv: torch.Tensor, target: torch.Tensor):
    """Per-example losses at x_adv and the input gradient of their sum (no parameter grads)."""
    with torch.enable_grad():  # attacks may run under no_grad; this gradient is always needed
        x_adv = x_adv.detach().requires_grad_(True)
        losses = loss_fn(model(x_adv), target)
        (grad,) = torch.autograd.grad(losses.sum(), x_adv)
    return losses.detach(), grad


def mean_loss(model: nn.Module, loss_fn: InnerLoss, x_adv: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return loss_fn(model(x_adv), target).mean()


class Maximizer:
    """Base class. Subclasses implement ``maximize``."""

    name = "none"
    learned = False

    def maximize(
        self, model: nn.Module, loss_fn: InnerLoss, x: torch.Tensor, target: torch.Tensor,
        eps: float, steps: int, record: bool = True,
    ) -> MaxResult:
        raise NotImplementedError

    def __call__(self, *args, **kwargs) -> MaxResult:
        return self.maximize(*args, **kwargs)

    def num_parameters(self) -> int:
        return 0


class PGD(Maximizer):
    """Projected gradient ascent with sign steps (paper eq. 3)."""

    name = "pgd"

    def __init__(self, step_size: float, init: str = "normal"):
        self.step_size = step_size
        self.init = init

    def maximize(self, model, loss_fn, x, target, eps, steps, record=True):
        x_adv = random_start(x, eps, self.init)
        losses = []
        for _ in range(steps):
            loss, grad = loss_and_grad(model, loss_fn, x_adv, target)
            losses.append(loss.mean())
            x_adv = project(x_adv + self.step_size * grad.sign(), x, eps)
        trajectory = None
        if record:  # the loss at x'_T costs one more forward pass, paid only when recorded
            losses.append(mean_loss(model, loss_fn, x_adv, target))
            trajectory = torch.stack(losses)
        return MaxResult(x_adv.detach(), trajectory)


class PGDBLS(Maximizer):
    """PGD whose step size is chosen per example by backtracking line search (paper eq. 4).

    Along the sign direction d = sign(g), start at alpha_0 and shrink by rho until
    L(P(x' + alpha d)) >= L(x') + c * alpha * g^T d (the Armijo condition of eq. 4 for the
    direction actually taken; with d = g it is eq. 4 exactly). This is the backtracking line
    search of Nocedal & Wright, Numerical Optimization, 2nd ed., Algorithm 3.1 (the paper's
    [24]), for ascent: the step taken is the first of alpha_0, rho alpha_0, rho^2 alpha_0, ...
    that satisfies the condition. An example whose condition never holds within
    ``max_backtracks`` trials keeps its point: no step that fails to increase the loss
    sufficiently is taken.

    Two ways to search, with the same result (the first accepted candidate of each example):
    ``rounds`` tries one candidate per round for the examples still searching, so it spends the
    fewest forward passes (best where the arithmetic is the cost: the CPU); ``all-at-once``
    evaluates all ``max_backtracks`` candidates of every example in one batched forward pass,
    with no host synchronisation and fixed shapes (best where launches and syncs are the cost:
    CUDA; it needs memory for max_backtracks times the batch). ``search=None`` picks by device.
    """

    name = "pgd-bls"
    SEARCHES = ("rounds", "all-at-once")

    def __init__(self, alpha0: float, rho: float = 0.5, c: float = 1e-4, max_backtracks: int = 10,
                 init: str = "normal", search: str | None = None):
        if search is not None and search not in self.SEARCHES:
            raise ValueError(f"search must be one of {self.SEARCHES}, got {search!r}")
        self.alpha0, self.rho, self.c, self.max_backtracks, self.init = alpha0, rho, c, max_backtracks, init
        self.search = search

    def maximize(self, model, loss_fn, x, target, eps, steps, record=True):
        search = self.search or ("all-at-once" if x.device.type == "cuda" else "rounds")
        line_search = self._search_all_at_once if search == "all-at-once" else self._search_in_rounds
        x_adv = random_start(x, eps, self.init)
        losses, searches = [], []
        loss = None
        for _ in range(steps):
            loss, grad = loss_and_grad(model, loss_fn, x_adv, target)
            losses.append(loss.mean())
            direction = grad.sign()
            slope = (grad * direction).flatten(1).sum(1)  # g^T d per example
            new_x, new_loss, alpha, accepted = line_search(model, loss_fn, x, target, eps, x_adv, direction,
                                                           loss, slope)
            searches.append({"alpha": alpha, "accepted": accepted, "loss_before": loss,
                             "loss_after": new_loss, "slope": slope})
            x_adv, loss = new_x, new_loss
        trajectory = None
        if record:
            # The accepted trial losses are the losses at x'_T: no extra forward pass needed.
            final = loss.mean() if loss is not None else mean_loss(model, loss_fn, x_adv, target)
            losses.append(final)
            trajectory = torch.stack(losses)
        return MaxResult(x_adv.detach(), trajectory, {"line_searches": searches})

    def _candidates(self, like: torch.Tensor) -> torch.Tensor:
        """alpha_0 rho^k for k = 0 .. max_backtracks, each the previous times rho in the loss's
        dtype (the rounding of a step size shrunk in place, round after round)."""
        alphas = [torch.full((), self.alpha0, dtype=like.dtype, device=like.device)]
        for _ in range(self.max_backtracks):
            alphas.append(alphas[-1] * self.rho)
        return torch.stack(alphas)

    def _search_in_rounds(self, model, loss_fn, x, target, eps, x_adv, direction, loss, slope):
        bshape = (-1,) + (1,) * (x.dim() - 1)
        alpha = torch.full_like(loss, self.alpha0)
        accepted = torch.zeros_like(loss, dtype=torch.bool)
        new_x, new_loss = x_adv.clone(), loss.clone()
        for _ in range(self.max_backtracks):
            todo = torch.nonzero(~accepted).flatten()
            if todo.numel() == 0:
                break
            trial = project(x_adv[todo] + alpha[todo].view(bshape) * direction[todo], x[todo], eps)
            with torch.no_grad():
                trial_loss = loss_fn(model(trial), target[todo])
            ok = trial_loss >= loss[todo] + self.c * alpha[todo] * slope[todo]
            hit = todo[ok]
            new_x[hit], new_loss[hit] = trial[ok], trial_loss[ok]
            accepted[hit] = True
            alpha[todo[~ok]] *= self.rho
        return new_x, new_loss, alpha, accepted

    def _search_all_at_once(self, model, loss_fn, x, target, eps, x_adv, direction, loss, slope):
        trials, batch = self.max_backtracks, x.shape[0]
        alphas = self._candidates(loss)
        tried = alphas[:trials]
        step = tried.view((trials,) + (1,) * x.dim()) * direction  # [K, B, ...]
        trial = project(x_adv + step, x, eps)
        with torch.no_grad():
            repeated_target = target.expand(trials, *target.shape).reshape(trials * batch, *target.shape[1:])
            trial_loss = loss_fn(model(trial.flatten(0, 1)), repeated_target).view(trials, batch)
        ok = trial_loss >= loss + (self.c * tried).unsqueeze(1) * slope  # [K, B]
        accepted = ok.any(0)
        first = ok.to(torch.uint8).argmax(0)  # the first accepted candidate (argmax returns the first maximum)
        examples = torch.arange(batch, device=x.device)
        bshape = (-1,) + (1,) * (x.dim() - 1)
        new_x = torch.where(accepted.view(bshape), trial[first, examples], x_adv)
        new_loss = torch.where(accepted, trial_loss[first, examples], loss)
        alpha = torch.where(accepted, alphas[first], alphas[trials])
        return new_x, new_loss, alpha, accepted


class LearnedMaximizer(Maximizer):
    """A maximizer with its own parameters (``net``) and optimizer, trained by gradient ascent
    on the objective that ``maximize(..., learn_graph=True)`` leaves in ``info["phi_objective"]``."""

    learned = True
    net: nn.Module
    optimizer: torch.optim.Optimizer
    grad_clip: float | None = None  # clip phi's gradient norm before each step
    # Set by a distributed run: averages phi's gradients over the processes (as DDP does the
    # classifier's) before clipping, so the step is the one a single process takes on the whole batch.
    average_grads: Callable[[list[torch.Tensor]], None] | None = None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def learn(self, result: MaxResult) -> None:
        """One ascent step of phi on the objective of ``result`` (Algorithm 1, line 17)."""
        params = list(self.net.parameters())
        grads = torch.autograd.grad(result.info["phi_objective"], params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = None if g is None else -g  # the optimizers minimize: negate for ascent
        if self.average_grads is not None:
            self.average_grads(params)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        result.info.pop("phi_objective", None)  # free the unrolled graph

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
