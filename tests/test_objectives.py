import torch
import torch.nn.functional as F

from advtui.engine.models import SmallCNN
from advtui.engine.objectives import Objective, TradesObjective, ce_per_example, kl_per_example


def test_trades_loss_matches_its_formula():
    torch.manual_seed(0)
    model = SmallCNN().eval()  # eval: no dropout, so the two evaluations agree
    x = torch.rand(8, 1, 28, 28)
    x_adv = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    y = torch.randint(0, 10, (8,))
    beta = 6.0
    loss, _, _ = TradesObjective(beta).outer_loss(model, x, x_adv, y)
    p = F.softmax(model(x), 1)
    q = F.softmax(model(x_adv), 1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    expected = F.cross_entropy(model(x), y) + beta * kl
    assert torch.allclose(loss, expected, atol=1e-5)


def test_kl_inner_loss_is_zero_at_the_clean_point_and_positive_elsewhere():
    torch.manual_seed(0)
    logits = torch.randn(4, 10)
    p = F.softmax(logits, 1)
    assert torch.allclose(kl_per_example(logits, p), torch.zeros(4), atol=1e-6)
    assert (kl_per_example(logits + torch.randn(4, 10), p) > 0).all()


def test_trades_inner_target_is_the_clean_prediction():
    model = SmallCNN().eval()
    x = torch.rand(3, 1, 28, 28)
    target = TradesObjective(1.0).inner_target(model, x, torch.zeros(3, dtype=torch.long))
    assert torch.allclose(target, F.softmax(model(x), 1))
    assert torch.allclose(target.sum(1), torch.ones(3))


def test_ce_objective_uses_the_adversarial_input():
    model = SmallCNN().eval()
    x, x_adv = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    y = torch.arange(4)
    loss, _, _ = Objective().outer_loss(model, x, x_adv, y)
    assert torch.allclose(loss, ce_per_example(model(x_adv), y).mean(), atol=1e-6)
