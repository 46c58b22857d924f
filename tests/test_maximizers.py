"""Every inner maximizer keeps x' in the eps-ball and in [0, 1]; the RNN is the paper's; BLS steps
satisfy the Armijo condition; phi moves to increase the weighted inner loss."""

from __future__ import annotations

import pytest
import torch

from advtui.engine.maximizers import PGD, PGDBLS, project
from advtui.engine.models import SmallCNN
from advtui.engine.objectives import ce_per_example
from advtui.engine.rnn import CoordinateRNN, RNNOptimizer


@pytest.fixture(scope="module")
def model_and_batch():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    # The reference init zeroes the last layer, so a fresh model's loss is flat in x (every input
    # gradient is zero); these tests need one whose loss depends on its input.
    model.classifier[-1].reset_parameters()
    x = torch.rand(16, 1, 28, 28)
    x[:4] = 0.0  # images on the box boundary exercise the [0, 1] clamp
    x[4:8] = 1.0
    y = torch.randint(0, 10, (16,))
    return model, x, y


def _maximizers():
    return [
        PGD(0.3 / 4, "normal"),
        PGD(0.3 / 4, "uniform"),
        PGDBLS(alpha0=0.3),
        RNNOptimizer(device="cpu"),
        RNNOptimizer(grad_input="sign", delta_scale=1.0, device="cpu"),
    ]


@pytest.mark.parametrize("maximizer", _maximizers(), ids=lambda m: f"{m.name}")
@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_stays_in_ball_and_box(model_and_batch, maximizer, eps):
    model, x, y = model_and_batch
    result = maximizer.maximize(model, ce_per_example, x, y, eps, 5)
    assert (result.x_adv - x).abs().max() <= eps + 1e-6
    assert result.x_adv.min() >= 0.0 and result.x_adv.max() <= 1.0
    assert result.trajectory.shape == (6,)
    assert torch.isfinite(result.trajectory).all()


def test_pgd_increases_loss_with_sign_steps(model_and_batch):
    model, x, y = model_and_batch
    result = PGD(0.3 / 4).maximize(model, ce_per_example, x, y, 0.3, 10)
    assert result.trajectory[-1] > result.trajectory[0]
    # sign steps of eps/4 from x + 0.001 N(0, I): away from the box, every coordinate sits on a
    # multiple of eps/4 (up to the start noise) or on the ball's surface
    interior = (x > 0.35) & (x < 0.65)
    moved = (result.x_adv - x)[interior] / (0.3 / 4)
    assert (moved - moved.round()).abs().max() < 0.1


def test_rnn_has_120_parameters_and_no_bias():
    rnn = CoordinateRNN(hidden=10)
    names = dict(rnn.named_parameters())
    assert sum(p.numel() for p in names.values()) == 120
    assert not any("bias" in n for n in names)
    assert RNNOptimizer(device="cpu").num_parameters() == 120


def test_rnn_is_coordinate_wise():
    """Each coordinate is its own sequence: changing one gradient coordinate changes only that
    coordinate's step."""
    rnn = CoordinateRNN()
    g = torch.randn(2, 1, 4, 4)
    h = rnn.initial_state(g.numel())
    d1, _ = rnn(g, h)
    g2 = g.clone()
    g2[0, 0, 1, 2] += 5.0
    d2, _ = rnn(g2, h)
    changed = (d1 != d2)
    assert changed.sum() == 1 and changed[0, 0, 1, 2]


def test_rnn_starts_as_an_ascent_method():
    rnn = CoordinateRNN()
    delta, _ = rnn(torch.tensor([1.0, -1.0]), rnn.initial_state(2))
    assert delta[0] > 0 > delta[1]


def _weighted_inner_loss(opt: RNNOptimizer, model, x, y, eps, steps, seed):
    torch.manual_seed(seed)
    traj = opt.maximize(model, ce_per_example, x, y, eps, steps).trajectory
    return sum(t * traj[t].item() for t in range(1, steps + 1))


def test_phi_moves_to_increase_the_weighted_inner_loss(model_and_batch):
    model, x, y = model_and_batch
    torch.manual_seed(1)
    opt = RNNOptimizer(lr=0.02, device="cpu")
    before = _weighted_inner_loss(opt, model, x, y, 0.3, 5, seed=3)
    for _ in range(15):
        result = opt.maximize(model, ce_per_example, x, y, 0.3, 5, learn_graph=True)
        opt.learn(result)
    after = _weighted_inner_loss(opt, model, x, y, 0.3, 5, seed=3)
    assert after > before


def test_first_order_surrogate_equals_autograd_through_the_unrolled_graph(model_and_batch):
    """The cheap phi-gradient (sum_t w_t <g_t, x'_t>) equals differentiating sum_t w_t L(x'_t)
    through the whole unrolled computation with g_t held constant."""
    model, x, y = model_and_batch
    x, y = x[8:], y[8:]
    opt = RNNOptimizer(device="cpu")
    params = list(opt.net.parameters())
    torch.manual_seed(7)
    surrogate = opt.maximize(model, ce_per_example, x, y, 0.3, 4, learn_graph=True).info["phi_objective"]
    fast = torch.autograd.grad(surrogate, params)

    torch.manual_seed(7)
    from advtui.engine.maximizers import random_start

    x_adv = random_start(x, 0.3)
    h = opt.net.initial_state(x.numel())
    objective = 0.0
    for t in range(5):
        x_req = x_adv if x_adv.requires_grad else x_adv.requires_grad_(True)
        loss = ce_per_example(model(x_req), y)
        if t > 0:
            objective = objective + t * loss.mean()
        if t == 4:
            break
        (g,) = torch.autograd.grad(loss.sum(), x_req, retain_graph=True)
        delta, h = opt.net(opt._scale(g.detach()), h)
        x_adv = project(x_adv + opt.delta_scale * 0.3 * delta, x, 0.3)
    exact = torch.autograd.grad(objective, params)
    for a, b in zip(fast, exact):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_second_order_option_runs_and_learns(model_and_batch):
    model, x, y = model_and_batch
    opt = RNNOptimizer(second_order=True, device="cpu")
    before = [p.detach().clone() for p in opt.net.parameters()]
    result = opt.maximize(model, ce_per_example, x, y, 0.3, 3, learn_graph=True)
    opt.learn(result)
    assert any(not torch.equal(a, b) for a, b in zip(before, opt.net.parameters()))
    assert (result.x_adv - x).abs().max() <= 0.3 + 1e-6


def test_bls_steps_satisfy_the_armijo_condition(model_and_batch):
    model, x, y = model_and_batch
    bls = PGDBLS(alpha0=0.3, rho=0.5, c=1e-4)
    result = bls.maximize(model, ce_per_example, x, y, 0.3, 5)
    searches = result.info["line_searches"]
    assert len(searches) == 5
    assert any(s["accepted"].any() for s in searches)
    for s in searches:
        acc = s["accepted"]
        lhs = s["loss_after"][acc]
        rhs = s["loss_before"][acc] + 1e-4 * s["alpha"][acc] * s["slope"][acc]
        assert (lhs >= rhs - 1e-6).all()
        # step sizes come from alpha_0 * rho^k
        k = torch.log2(0.3 / s["alpha"][acc])
        assert torch.allclose(k, k.round(), atol=1e-4)
        # examples whose search failed keep their point (no loss decrease)
        assert torch.equal(s["loss_after"][~acc], s["loss_before"][~acc])
    # the loss never decreases along a BLS trajectory
    assert (result.trajectory[1:] - result.trajectory[:-1] >= -1e-6).all()


def test_maximizers_give_no_parameter_gradients(model_and_batch):
    model, x, y = model_and_batch
    for p in model.parameters():
        p.grad = None
    for m in _maximizers():
        m.maximize(model, ce_per_example, x, y, 0.3, 2)
    assert all(p.grad is None for p in model.parameters())


def test_project_is_box_and_ball():
    x = torch.tensor([0.0, 0.5, 1.0])
    out = project(torch.tensor([-1.0, 2.0, 0.2]), x, 0.1)
    assert torch.allclose(out, torch.tensor([0.0, 0.6, 0.9]))


def _rnn_maximize_through_autograd(opt: RNNOptimizer, model, x, y, eps, steps):
    """The RNN maximizer written the direct way: every coordinate its own sequence and the
    phi-gradient taken by autograd through the recorded unroll (g_t held constant)."""
    from advtui.engine.maximizers import loss_and_grad, random_start

    x_adv = random_start(x, eps, opt.init)
    h = opt.net.initial_state(x.numel())
    losses, surrogate = [], x.new_zeros(())
    for t in range(steps + 1):
        loss, grad = loss_and_grad(model, ce_per_example, x_adv, y)
        losses.append(loss.mean())
        if t > 0:
            surrogate = surrogate + t * (grad * x_adv).sum() / x.shape[0]
        if t == steps:
            break
        delta, h = opt.net(opt._scale(grad), h)
        x_adv = project(x_adv + opt.delta_scale * eps * delta, x, eps)
    phi_grads = torch.autograd.grad(surrogate, list(opt.net.parameters()))
    return x_adv.detach(), torch.stack(losses).detach(), phi_grads


@pytest.mark.parametrize("grad_input,share_histories", [("sign", True), ("sign", False), ("rms", False)])
def test_rnn_fast_unroll_equals_the_direct_autograd_version(model_and_batch, grad_input, share_histories):
    """Same seed, same x', same inner losses and the same phi-gradient as the direct version,
    per sign history or per coordinate (images on the box boundary included)."""
    model, x, y = model_and_batch
    torch.manual_seed(5)
    opt = RNNOptimizer(grad_input=grad_input, device="cpu")
    opt.share_histories = share_histories
    with torch.no_grad():  # a state that is not the PGD-like start, so W and memory matter
        for p in opt.net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    params = list(opt.net.parameters())
    torch.manual_seed(11)
    reference_x, reference_losses, reference_grads = _rnn_maximize_through_autograd(opt, model, x, y, 0.3, 6)
    torch.manual_seed(11)
    result = opt.maximize(model, ce_per_example, x, y, 0.3, 6, record=True, learn_graph=True)
    fast_grads = torch.autograd.grad(result.info["phi_objective"], params)
    assert torch.allclose(result.x_adv, reference_x, atol=1e-6, rtol=0)
    assert torch.allclose(result.trajectory, reference_losses, atol=1e-6, rtol=1e-6)
    for fast, exact in zip(fast_grads, reference_grads):
        assert torch.allclose(fast, exact, rtol=1e-4, atol=1e-6)
    # the attack path (no phi-gradient kept) gives the same x' too
    torch.manual_seed(11)
    attack = opt.maximize(model, ce_per_example, x, y, 0.3, 6, record=True)
    assert torch.allclose(attack.x_adv, reference_x, atol=1e-6, rtol=0)


def test_sign_histories_are_shared_across_coordinates():
    """With sign inputs the RNN runs once per distinct history: at most 3^t rows at step t."""
    from advtui.engine.rnn import _RNNUnroll

    torch.manual_seed(0)
    net = CoordinateRNN()
    unroll = _RNNUnroll(net, 1000, "cpu", torch.float32, share_histories=True, keep=False)
    direct = _RNNUnroll(net, 1000, "cpu", torch.float32, share_histories=False, keep=False)
    for t in range(1, 5):
        signs = torch.randint(-1, 2, (10, 1, 10, 10)).float()
        with torch.no_grad():
            shared_delta, own_delta = unroll.step(signs), direct.step(signs)
        assert unroll.states[-1].shape[0] <= 3 ** t
        assert torch.allclose(shared_delta, own_delta, atol=1e-7, rtol=0)


def test_projection_slope_is_autograds_including_ties():
    from advtui.engine.rnn import project_with_slope

    x = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.2, 0.9, 0.3, 0.7])
    z = torch.tensor([0.0, 0.3, 1.0, 0.7, 0.8, 0.2, 0.6, 0.81, -0.1, 1.2, 0.0, 1.0])
    z_req = z.clone().requires_grad_(True)
    project(z_req, x, 0.3).sum().backward()
    out, slope = project_with_slope(z, x + 0.3, x - 0.3)
    assert torch.equal(out, project(z, x, 0.3))
    assert torch.equal(slope, z_req.grad)
    assert (slope == 0.5).any()  # the ties were exercised


def _bls_one_example(model, x, y, x_adv, alpha0, rho, c, max_backtracks, eps):
    """One backtracking line search step for one example, as Nocedal & Wright's Algorithm 3.1
    (for ascent, along d = sign(g)): returns the new point, its loss and the step size."""
    x_req = x_adv.detach().requires_grad_(True)
    loss = ce_per_example(model(x_req), y)
    (grad,) = torch.autograd.grad(loss.sum(), x_req)
    direction = grad.sign()
    slope = (grad * direction).sum()
    alpha = torch.tensor(alpha0)
    for _ in range(max_backtracks):
        trial = project(x_adv + alpha * direction, x, eps)
        with torch.no_grad():
            trial_loss = ce_per_example(model(trial), y)
        if trial_loss >= loss.detach() + c * alpha * slope:
            return trial, trial_loss, alpha, True
        alpha = alpha * rho
    return x_adv, loss.detach(), alpha, False


@pytest.mark.parametrize("search", PGDBLS.SEARCHES)
def test_bls_over_the_batch_equals_one_example_at_a_time(model_and_batch, search):
    model, x, y = model_and_batch
    bls = PGDBLS(alpha0=0.3, rho=0.5, c=1e-4, max_backtracks=4, search=search)
    torch.manual_seed(3)
    result = bls.maximize(model, ce_per_example, x, y, 0.3, 4)
    torch.manual_seed(3)
    from advtui.engine.maximizers import random_start

    x_adv = random_start(x, 0.3)
    outcomes = set()
    for step, search_record in enumerate(result.info["line_searches"]):
        rows = [_bls_one_example(model, x[i:i + 1], y[i:i + 1], x_adv[i:i + 1], 0.3, 0.5, 1e-4, 4, 0.3)
                for i in range(len(y))]
        x_adv = torch.cat([r[0] for r in rows])
        accepted = torch.tensor([r[3] for r in rows])
        assert torch.equal(search_record["accepted"], accepted)
        assert torch.allclose(search_record["alpha"], torch.stack([r[2] for r in rows]).reshape(-1))
        assert torch.allclose(search_record["loss_after"], torch.cat([r[1] for r in rows]), atol=1e-5)
        outcomes.update(torch.log2(0.3 / search_record["alpha"]).round().long().tolist())
    assert torch.allclose(result.x_adv, x_adv, atol=1e-6, rtol=0)
    assert len(outcomes) >= 2  # some examples backtracked and some did not


def test_bls_searches_agree_exactly(model_and_batch):
    model, x, y = model_and_batch
    outputs = []
    for search in PGDBLS.SEARCHES:
        torch.manual_seed(4)
        outputs.append(PGDBLS(alpha0=0.3, max_backtracks=3, search=search).maximize(model, ce_per_example, x, y, 0.3, 5))
    rounds, at_once = outputs
    # Same steps taken, so the same points; a loss may differ in its last bit, as a forward pass
    # over a different batch composition can.
    assert torch.equal(rounds.x_adv, at_once.x_adv)
    assert torch.allclose(rounds.trajectory, at_once.trajectory, atol=1e-6, rtol=0)
    for a, b in zip(rounds.info["line_searches"], at_once.info["line_searches"]):
        for key in ("alpha", "accepted", "loss_before", "slope"):
            assert torch.equal(a[key], b[key]) if key != "loss_before" else torch.allclose(a[key], b[key], atol=1e-6)
        assert torch.allclose(a["loss_after"], b["loss_after"], atol=1e-6, rtol=0)
    assert any((~s["accepted"]).any() for s in rounds.info["line_searches"])  # a failed search was covered


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_default_paths_equal_the_direct_versions(model_and_batch):
    """On CUDA the RNN runs per coordinate and BLS searches all candidates at once (the CPU
    defaults differ): both still give the direct versions' results."""
    model, x, y = model_and_batch
    device = torch.device("cuda")
    model, x, y = model.to(device), x.to(device), y.to(device)
    torch.manual_seed(5)
    opt = RNNOptimizer(device=device)
    assert not opt._share_histories(device)
    torch.manual_seed(11)
    from advtui.engine.maximizers import loss_and_grad, random_start

    x_adv, h, surrogate = random_start(x, 0.3, opt.init), opt.net.initial_state(x.numel(), device), 0.0
    for t in range(5):
        loss, grad = loss_and_grad(model, ce_per_example, x_adv, y)
        if t > 0:
            surrogate = surrogate + t * (grad * x_adv).sum() / x.shape[0]
        if t == 4:
            break
        delta, h = opt.net(opt._scale(grad), h)
        x_adv = project(x_adv + opt.delta_scale * 0.3 * delta, x, 0.3)
    exact = torch.autograd.grad(surrogate, list(opt.net.parameters()))
    torch.manual_seed(11)
    result = opt.maximize(model, ce_per_example, x, y, 0.3, 4, learn_graph=True)
    fast = torch.autograd.grad(result.info["phi_objective"], list(opt.net.parameters()))
    assert torch.allclose(result.x_adv, x_adv.detach(), atol=1e-5, rtol=0)
    for a, b in zip(fast, exact):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)

    outputs = []
    for search in (None, "rounds"):
        torch.manual_seed(4)
        outputs.append(PGDBLS(alpha0=0.3, max_backtracks=3, search=search).maximize(model, ce_per_example, x, y, 0.3, 3))
    assert torch.allclose(outputs[0].x_adv, outputs[1].x_adv, atol=1e-5, rtol=0)
    for a, b in zip(outputs[0].info["line_searches"], outputs[1].info["line_searches"]):
        assert torch.equal(a["accepted"], b["accepted"]) and torch.allclose(a["alpha"], b["alpha"])
