"""The paper's learned inner maximizer: a coordinate-wise RNN optimizer (eqs. 5-7, 10; Algorithm 1).

- ``CoordinateRNN``: m_phi, a one-layer RNN without bias applied to every input coordinate as its
  own sequence, and its "pgd" initialization (close to a sign-gradient step; Algorithm 1, line 3
  allows a pre-trained start).
- ``RNNOptimizer``: the maximizer x'_{t+1} = P(x'_t + delta_t) and phi's training, gradient ascent
  on sum_t t L(x'_t) (Algorithm 1, line 17): first-order by default, through the surrogate
  ``_UnrolledSurrogate`` whose backpropagation through time is written out over the unroll kept
  by ``_RNNUnroll``; with ``second_order`` through the whole unrolled graph by autograd.
- ``project_with_slope``: the projection P and its elementwise derivative, which that written-out
  backpropagation needs.

The interface it implements (``LearnedMaximizer``) and the projection are in
``advtui.engine.maximizers``; the L2LDA generator, the other learned maximizer, in
``advtui.engine.l2lda``.
"""

from __future__ import annotations

import torch
from torch import nn

from advtui.engine.maximizers import LearnedMaximizer, MaxResult, loss_and_grad, mean_loss, project, random_start


def project_with_slope(z: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``project(z, x, eps)`` given the ball's bounds ``upper = x + eps`` and ``lower = x - eps``,
    and its elementwise derivative d project / d z exactly as autograd differentiates
    ``project``: torch.minimum and torch.maximum split the gradient in half at a tie, and clamp
    passes it only strictly inside (0, 1). Computed without building a graph, in float
    arithmetic (bool-to-float conversions cost more than the comparisons on a CPU)."""
    below_upper = torch.min(z, upper)
    inside_ball = torch.max(below_upper, lower)
    out = inside_ball.clamp(0.0, 1.0)
    slope = (upper - z).sign_().add_(1.0)  # 2 below the bound, 1 at a tie, 0 above
    slope.mul_((below_upper - lower).sign_().add_(1.0))
    slope.mul_((inside_ball > 0.0) & (inside_ball < 1.0)).mul_(0.25)
    return out, slope


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


class _RNNUnroll:
    """Runs the coordinate-wise RNN through the steps of one maximization and, when asked,
    keeps what the first-order phi-gradient needs (``_UnrolledSurrogate``).

    With sign inputs a coordinate's hidden state h_t is a function of its sign history
    s_0 .. s_{t-1} alone (h_0 = 0 and s_t is -1, 0 or +1), so ``share_histories`` runs the RNN
    once per distinct history present in the batch instead of once per coordinate: each
    coordinate holds the row of its history, at most 3^t rows at step t however many
    coordinates there are, and delta_t is gathered from the rows. Each row goes through the
    same ops as a coordinate would; the saving is memory traffic, which is what the RNN costs on
    a CPU (each step of the plain version reads and writes ten floats per coordinate several
    times). Otherwise every coordinate is its own row.
    """

    def __init__(self, net: "CoordinateRNN", coordinates: int, device, dtype, share_histories: bool, keep: bool):
        self.net, self.share_histories, self.keep = net, share_histories, keep
        self.states = [net.initial_state(1 if share_histories else coordinates, device, dtype)]  # h_0, h_1, ...
        self.rows = torch.zeros(coordinates, dtype=torch.long, device=device) if share_histories else None
        # Per step t, when kept: the row of h_t each row of h_{t+1} continues (None: the same row),
        # the rows' input s_t and delta_t, and each coordinate's row (None: its own).
        self.parents: list[torch.Tensor | None] = []
        self.inputs: list[torch.Tensor] = []
        self.deltas: list[torch.Tensor] = []
        self.coordinate_rows: list[torch.Tensor | None] = []
        # Filled by the maximizer: the projection's slope per step and g_1 .. g_T.
        self.slopes: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []

    def step(self, scaled: torch.Tensor) -> torch.Tensor:
        """delta_t for every coordinate of ``scaled`` (the RNN's input s_t), in its shape."""
        h = self.states[-1]
        if self.share_histories:
            # A coordinate's history code: 3 * (its row) + s_t + 1 (a NaN gradient counts as 0).
            code = torch.nan_to_num(scaled.reshape(-1), nan=0.0).long().add_(self.rows, alpha=3).add_(1)
            candidates = 3 * h.shape[0]
            if candidates <= code.numel() // 64:
                # Few possible histories: run them all, and the code is the row.
                histories, self.rows = torch.arange(candidates, device=h.device), code
            else:  # keep only the histories present
                present = torch.zeros(candidates, dtype=torch.bool, device=h.device)
                present[code] = True
                histories = present.nonzero().squeeze(1)
                self.rows = torch.index_select(present.cumsum(0).sub_(1), 0, code)
            parent = histories.div(3, rounding_mode="floor")
            row_inputs = (histories % 3 - 1).to(scaled.dtype)
            row_deltas, h = self.net(row_inputs, torch.index_select(h, 0, parent))
            delta = torch.index_select(row_deltas, 0, self.rows).reshape(scaled.shape)
            if self.keep:
                self.parents.append(parent)
                self.inputs.append(row_inputs)
                self.deltas.append(row_deltas)
                self.coordinate_rows.append(self.rows)
        else:
            delta, h = self.net(scaled, h)
            if self.keep:
                self.parents.append(None)
                self.inputs.append(scaled.reshape(-1))
                self.deltas.append(delta.reshape(-1))
                self.coordinate_rows.append(None)
        if self.keep:
            self.states.append(h)
        else:
            self.states[-1] = h
        return delta


class _UnrolledSurrogate(torch.autograd.Function):
    """The surrogate S = sum_{t=1..T} t <g_t, x'_t> / B as a function of phi = (U, W, V), whose
    backward is backpropagation through time written out for the coordinate-wise RNN:

        x'_{t+1} = P(x'_t + c delta_t),  delta_t = tanh(V h_{t+1}),  h_{t+1} = tanh(U s_t + W h_t)

    It is the gradient autograd gives through the unrolled graph with g_t held constant (tests
    pin the two together), without recording that graph during the unroll, and it works on the
    rows of ``_RNNUnroll`` (per history or per coordinate): a coordinate's gradient is added
    into its row, a row's into the row it continues."""

    @staticmethod
    def forward(ctx, value, weight_ih, weight_hh, weight_out, unroll, step_scale, batch):
        ctx.unroll, ctx.step_scale, ctx.batch = unroll, step_scale, batch
        ctx.save_for_backward(weight_hh, weight_out)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_value):
        unroll: _RNNUnroll = ctx.unroll
        ctx.unroll = None  # the unroll's tensors are freed with the graph
        weight_hh, weight_out = ctx.saved_tensors
        dtype = weight_hh.dtype  # under autocast the states may be bf16; phi's gradient is not
        hidden = weight_hh.shape[0]
        v_row = weight_out.reshape(1, hidden)
        grad_ih = torch.zeros(hidden, 1, dtype=dtype, device=weight_hh.device)
        grad_hh, grad_out = torch.zeros_like(weight_hh), torch.zeros_like(weight_out)
        grad_x = None  # dS / dx'_{t+1}, per coordinate
        grad_h = None  # dS / dh_{t+1} from later steps, per row
        for t in range(len(unroll.deltas) - 1, -1, -1):
            weight = (t + 1) / ctx.batch
            grad_x = unroll.grads[t].to(dtype) * weight if grad_x is None else grad_x.add_(unroll.grads[t], alpha=weight)
            grad_z = grad_x.mul_(unroll.slopes[t].to(dtype))  # dS / d(x'_t + c delta_t)
            flat = grad_z.reshape(-1)
            rows = unroll.coordinate_rows[t]
            delta = unroll.deltas[t].to(dtype)
            grad_delta = flat if rows is None else flat.new_zeros(delta.shape[0]).index_add_(0, rows, flat)
            # delta = tanh(o): dS/do = c dS/d(delta) (1 - delta^2)
            grad_o = (grad_delta * ctx.step_scale * (1.0 - delta * delta)).reshape(-1, 1)
            h_after = unroll.states[t + 1].to(dtype)
            grad_out.add_(grad_o.T @ h_after)
            grad_a = grad_o * v_row
            if grad_h is not None:
                grad_a.add_(grad_h)
            grad_a.mul_(1.0 - h_after * h_after)  # h_after = tanh(a)
            grad_ih.add_(grad_a.T @ unroll.inputs[t].to(dtype).reshape(-1, 1))
            if t > 0:  # h_0 = 0: neither W's gradient nor dS/dh_0 gets anything from step 0
                parent = unroll.parents[t]
                h_before = unroll.states[t].to(dtype)
                if parent is not None:
                    h_before = torch.index_select(h_before, 0, parent)
                grad_hh.add_(grad_a.T @ h_before)
                grad_h = grad_a @ weight_hh
                if parent is not None:
                    grad_h = grad_h.new_zeros(unroll.states[t].shape).index_add_(0, parent, grad_h)
            grad_x = grad_z  # x'_t enters z_t with slope one
        return None, grad_ih * grad_value, grad_hh * grad_value, grad_out * grad_value, None, None, None


class RNNOptimizer(LearnedMaximizer):
    """The learned inner maximizer (paper eqs. 5-7, 10; Algorithm 1).

    x'_{t+1} = P(x'_t + delta_t), delta_t from the coordinate-wise RNN fed the scaled gradient.
    phi is trained by gradient *ascent* on sum_t w_t L(x'_t) with w_t = t.

    Without second-order terms (the default) g_t enters the RNN as a constant, and the
    gradient of L(x'_t) with respect to x'_t is g_t itself, already computed for the next step.
    So the phi-gradient comes from the surrogate sum_t w_t <g_t, x'_t> (identical gradient)
    and needs no second backward pass through the classifier: the only extra cost over PGD is
    the gradient at x'_T and the RNN itself, whose backpropagation through time is written out
    (``_UnrolledSurrogate``) and, with sign inputs on the CPU, runs per sign history
    (``_RNNUnroll``). With ``second_order=True`` the whole unrolled graph, Hessian terms
    included, is differentiated by autograd instead.
    """

    name = "rnn"

    def __init__(self, hidden: int = 10, grad_input: str = "sign", delta_scale: float = 0.5,
                 second_order: bool = False, optimizer: str = "adam", lr: float = 1e-2,
                 init: str = "normal", device: torch.device | str = "cpu", rnn_init: str = "pgd"):
        self.net = CoordinateRNN(hidden, rnn_init).to(device)
        self.grad_input, self.delta_scale, self.second_order, self.init = grad_input, delta_scale, second_order, init
        self.share_histories: bool | None = None  # None: decided per device (_share_histories)
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
        """``learn_graph`` keeps what ``learn`` needs (the unrolled RNN states and g_1..g_T)."""
        if self.second_order and learn_graph:
            return self._maximize_second_order(model, loss_fn, x, target, eps, steps)
        x_adv = random_start(x, eps, self.init)
        step_scale = self.delta_scale * eps
        unroll = _RNNUnroll(self.net, x.numel(), x.device, x.dtype, self._share_histories(x.device), keep=learn_graph)
        losses, surrogate = [], x.new_zeros(())
        upper, lower = (x + eps, x - eps) if learn_graph else (None, None)
        # No autograd graph during the unroll: with learn_graph the unroll keeps what the
        # hand-written backpropagation through time of _UnrolledSurrogate needs.
        with torch.no_grad():
            for t in range(steps + 1):
                need_grad = t < steps or learn_graph
                if need_grad:
                    loss, grad = loss_and_grad(model, loss_fn, x_adv, target)
                    losses.append(loss.mean())
                    if learn_graph and t > 0:  # w_t = t; d L(x'_t) / d x'_t = g_t
                        surrogate = surrogate + t * torch.dot(grad.flatten(), x_adv.flatten()) / x.shape[0]
                        unroll.grads.append(grad)
                elif record:
                    losses.append(mean_loss(model, loss_fn, x_adv, target))
                if t == steps:
                    break
                delta = unroll.step(self._scale(grad))
                if learn_graph:
                    x_adv, slope = project_with_slope(x_adv + step_scale * delta, upper, lower)
                    unroll.slopes.append(slope)
                else:
                    x_adv = project(x_adv + step_scale * delta, x, eps)
        trajectory = torch.stack(losses) if (record or learn_graph) else None
        info = {}
        if learn_graph:
            cell = self.net.cell
            info["phi_objective"] = _UnrolledSurrogate.apply(
                surrogate, cell.weight_ih, cell.weight_hh, self.net.out.weight, unroll, step_scale, x.shape[0])
        return MaxResult(x_adv, trajectory, info)

    def _share_histories(self, device: torch.device) -> bool:
        """Run the RNN per sign history (see _RNNUnroll) with sign inputs on the CPU, where it
        saves most of the RNN's cost. On CUDA per-coordinate rows stay: finding the histories
        present needs a device-to-host sync per step, which costs more there than it saves."""
        if self.share_histories is not None:
            return self.share_histories
        return self.grad_input == "sign" and device.type == "cpu"

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
