"""Inner maximizers: one interface for adversarial training and for attacks.

A maximizer takes a model, a per-example loss, clean inputs x, the loss target (labels, or the
clean prediction for TRADES' KL), eps and a number of steps, and returns x' inside the
L-inf eps-ball around x and inside [0, 1], together with the inner-loss trajectory: the mean
loss at x'_0, x'_1, ..., x'_T. That trajectory is the "inner-loss curve" of the dashboard and
the paper's Fig. 2.

Learned maximizers (the paper's RNN, the L2LDA generator) also carry their own parameters and
optimizer: ``learn(result)`` takes one ascent step on the weighted inner loss of the result.
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


def _mean_loss(model: nn.Module, loss_fn: InnerLoss, x_adv: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
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
            losses.append(_mean_loss(model, loss_fn, x_adv, target))
            trajectory = torch.stack(losses)
        return MaxResult(x_adv.detach(), trajectory)


class PGDBLS(Maximizer):
    """PGD whose step size is chosen per example by backtracking line search (paper eq. 4).

    Along the sign direction d = sign(g), start at alpha_0 and shrink by rho until
    L(P(x' + alpha d)) >= L(x') + c * alpha * g^T d (the Armijo condition of eq. 4 for the
    direction actually taken; with d = g it is eq. 4 exactly). An example whose condition never
    holds within ``max_backtracks`` trials keeps its point: no step that fails to increase the
    loss sufficiently is taken.
    """

    name = "pgd-bls"

    def __init__(self, alpha0: float, rho: float = 0.5, c: float = 1e-4, max_backtracks: int = 10,
                 init: str = "normal"):
        self.alpha0, self.rho, self.c, self.max_backtracks, self.init = alpha0, rho, c, max_backtracks, init

    def maximize(self, model, loss_fn, x, target, eps, steps, record=True):
        x_adv = random_start(x, eps, self.init)
        bshape = (-1,) + (1,) * (x.dim() - 1)
        losses, searches = [], []
        loss = None
        for _ in range(steps):
            loss, grad = loss_and_grad(model, loss_fn, x_adv, target)
            losses.append(loss.mean())
            direction = grad.sign()
            slope = (grad * direction).flatten(1).sum(1)  # g^T d per example
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
            searches.append({"alpha": alpha, "accepted": accepted, "loss_before": loss,
                             "loss_after": new_loss, "slope": slope})
            x_adv, loss = new_x, new_loss
        trajectory = None
        if record:
            # The accepted trial losses are the losses at x'_T: no extra forward pass needed.
            final = loss.mean() if loss is not None else _mean_loss(model, loss_fn, x_adv, target)
            losses.append(final)
            trajectory = torch.stack(losses)
        return MaxResult(x_adv.detach(), trajectory, {"line_searches": searches})


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


class CoordinateRNN(nn.Module):
    """The paper's learned optimizer m_phi: a one-layer vanilla RNN without bias terms, applied
    to every input coordinate as its own sequence (its own hidden state, shared weights).

        h_{t+1} = tanh(U g_t + W h_t)        (eq. 7 without b_2)
        delta_t = tanh(V h_{t+1})            (eq. 6 without b_1)

    delta_t reads the *updated* state, as in Andrychowicz et al. [1]: read literally, eq. 6 with
    h_0 = 0 would make the first step delta_0 = 0 whatever the gradient.
    With hidden size 10: U 10x1, W 10x10, V 1x10 = 120 parameters.
    """

    def __init__(self, hidden: int = 10, init: str = "pgd"):
        super().__init__()
        self.hidden = hidden
        self.cell = nn.RNNCell(1, hidden, bias=False, nonlinearity="tanh")  # U, W
        self.out = nn.Linear(hidden, 1, bias=False)  # V
        with torch.no_grad():
            if init == "pgd":
                self._init_like_pgd()
            # Start as an ascent method: a positive gradient must give a positive step, so the
            # first batches already produce useful adversarial examples.
            if self.forward(torch.ones(1), self.initial_state(1))[0].item() < 0:
                self.out.weight.neg_()

    def _init_like_pgd(self) -> None:
        """Start close to a sign-gradient step (Algorithm 1, line 3 allows a pre-trained start):
        every hidden unit reads the gradient with weight +-1, V sums them with the matching
        sign so that a unit gradient gives delta ~ 0.8 (tanh is far from saturation, so phi
        still learns), and W starts small so memory is learned, not imposed."""
        signs = torch.where(torch.rand(self.hidden, 1) < 0.5, -1.0, 1.0)
        self.cell.weight_ih.copy_(signs)
        self.cell.weight_hh.mul_(0.1)
        self.out.weight.copy_(signs.T * (1.1 / (self.hidden * torch.tanh(torch.tensor(1.0)))))

    def initial_state(self, n: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(n, self.hidden, device=device, dtype=dtype)

    def forward(self, g: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.cell(g.reshape(-1, 1), h)
        return torch.tanh(self.out(h)).reshape(g.shape), h


class RNNOptimizer(LearnedMaximizer):
    """The learned inner maximizer (paper eqs. 5-7, 10; Algorithm 1).

    x'_{t+1} = P(x'_t + delta_t), delta_t from the coordinate-wise RNN fed the scaled gradient.
    phi is trained by gradient *ascent* on sum_t w_t L(x'_t) with w_t = t.

    Without second-order terms (the default) g_t enters the RNN as a constant, and the
    gradient of L(x'_t) with respect to x'_t is g_t itself, already computed for the next step.
    So the phi-gradient comes from the surrogate sum_t w_t <g_t, x'_t> (identical gradient)
    and needs no second backward pass through the classifier: the only extra cost over PGD is
    the gradient at x'_T. With ``second_order=True`` the whole unrolled graph, Hessian terms
    included, is differentiated instead.
    """

    name = "rnn"

    def __init__(self, hidden: int = 10, grad_input: str = "sign", delta_scale: float = 0.5,
                 second_order: bool = False, optimizer: str = "adam", lr: float = 1e-2,
                 init: str = "normal", device: torch.device | str = "cpu", rnn_init: str = "pgd"):
        self.net = CoordinateRNN(hidden, rnn_init).to(device)
        self.grad_input, self.delta_scale, self.second_order, self.init = grad_input, delta_scale, second_order, init
        params = list(self.net.parameters())
        self.optimizer = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr, momentum=0.9)

    def _scale(self, g: torch.Tensor) -> torch.Tensor:
        if self.grad_input == "sign":
            return g.sign()
        if self.grad_input == "rms":  # per example, so every image's gradient is O(1)
            rms = g.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12)
            return g / rms.view((-1,) + (1,) * (g.dim() - 1))
        return g

    def maximize(self, model, loss_fn, x, target, eps, steps, record=True, learn_graph: bool = False):
        """``learn_graph`` keeps what ``learn`` needs (the graph from x'_t to phi and g_T)."""
        if self.second_order and learn_graph:
            return self._maximize_second_order(model, loss_fn, x, target, eps, steps)
        x_adv = random_start(x, eps, self.init)
        h = self.net.initial_state(x.numel(), x.device, x.dtype)
        losses, surrogate = [], x.new_zeros(())
        with torch.set_grad_enabled(learn_graph):
            for t in range(steps + 1):
                need_grad = t < steps or learn_graph
                if need_grad:
                    loss, grad = loss_and_grad(model, loss_fn, x_adv, target)
                    losses.append(loss.mean())
                    if learn_graph and t > 0:  # w_t = t; d L(x'_t) / d x'_t = g_t
                        surrogate = surrogate + t * (grad * x_adv).sum() / x.shape[0]
                elif record:
                    losses.append(_mean_loss(model, loss_fn, x_adv, target))
                if t == steps:
                    break
                delta, h = self.net(self._scale(grad), h)
                x_adv = project(x_adv + self.delta_scale * eps * delta, x, eps)
        trajectory = torch.stack(losses).detach() if (record or learn_graph) else None
        info = {"phi_objective": surrogate} if learn_graph else {}
        return MaxResult(x_adv.detach(), trajectory, info)

    def _maximize_second_order(self, model, loss_fn, x, target, eps, steps):
        x_adv = random_start(x, eps, self.init).requires_grad_(True)
        h = self.net.initial_state(x.numel(), x.device, x.dtype)
        objective, losses = x.new_zeros(()), []
        for t in range(steps + 1):
            loss = loss_fn(model(x_adv), target)
            losses.append(loss.detach().mean())
            if t > 0:
                objective = objective + t * loss.mean()
            if t == steps:
                break
            (grad,) = torch.autograd.grad(loss.sum(), x_adv, create_graph=True)
            delta, h = self.net(self._scale(grad), h)
            x_adv = project(x_adv + self.delta_scale * eps * delta, x, eps)
        return MaxResult(x_adv.detach(), torch.stack(losses), {"phi_objective": objective})

