"""The L2LDA generator baseline: constraints, learning by ascent, size, and end to end through
`advtui run --defense l2lda` and `advtui eval --attacks l2lda-K:RUN`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from advtui.core.config import build_config
from advtui.engine.checkpoint import load_checkpoint
from advtui.engine.defenses import build_maximizer
from advtui.engine.l2lda import L2LDAGenerator, diversity, normalize_per_channel, parameter_count
from advtui.engine.objectives import ce_per_example
from advtui.store.registry import Registry


def _linear_mnist_model(seed: int = 0) -> nn.Module:
    """A small classifier whose loss reacts strongly to the input, so an attack has work to do."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        model[1].weight.mul_(20)
    return model.eval()


def _batch(n: int = 12, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=gen)
    x[:, :, :6] = 0.0  # MNIST-like: many pixels sit exactly on the box's edges
    x[:, :, -6:] = 1.0
    return x, torch.randint(0, 10, (n,), generator=gen)


@pytest.mark.parametrize("learn_graph", [False, True])
def test_generator_stays_in_the_eps_ball_and_the_image_box(learn_graph):
    model = _linear_mnist_model()
    x, y = _batch()
    gen = L2LDAGenerator(1, width=8, diversity_weight=0.5)
    # A large output scale makes every step saturate: the clipping must still hold.
    gen.step_fraction = 3.0
    eps, steps = 0.3, 5
    result = gen.maximize(model, ce_per_example, x, y, eps, steps, record=True, learn_graph=learn_graph)
    assert result.x_adv.shape == x.shape
    assert (result.x_adv - x).abs().max() <= eps + 1e-6
    assert result.x_adv.min() >= 0.0 and result.x_adv.max() <= 1.0
    assert (result.x_adv - x).abs().max() > 0.5 * eps  # it did move
    assert result.trajectory.shape == (steps + 1,)
    with torch.no_grad():
        assert result.trajectory[0] == pytest.approx(float(ce_per_example(model(x), y).mean()), rel=1e-5)
        final = float(ce_per_example(model(result.x_adv), y).mean())
    assert result.trajectory[-1] == pytest.approx(final, rel=1e-4)
    assert ("phi_objective" in result.info) == learn_graph


def test_learning_ascends_the_loss_at_every_step():
    model = _linear_mnist_model()
    x, y = _batch(8)
    torch.manual_seed(0)
    gen = L2LDAGenerator(1, width=8, lr=1e-2, diversity_weight=0.0)
    before = gen.maximize(model, ce_per_example, x, y, 0.1, 3).trajectory
    params_before = [p.detach().clone() for p in gen.net.parameters()]
    objectives = []
    for _ in range(6):
        result = gen.maximize(model, ce_per_example, x, y, 0.1, 3, learn_graph=True)
        objectives.append(float(result.info["phi_objective"].detach()))
        gen.learn(result)
        assert "phi_objective" not in result.info  # the unrolled graph is freed
    after = gen.maximize(model, ce_per_example, x, y, 0.1, 3).trajectory
    assert any(not torch.equal(a, b) for a, b in zip(params_before, gen.net.parameters()))
    # Gradient *ascent*: the generator's objective and its final-step loss both grew.
    assert objectives[-1] > objectives[0] + 3.0
    assert after[-1] > before[-1] + 1.0
    # The classifier itself was not touched.
    assert all(p.grad is None for p in model.parameters())


def test_diversity_term_and_gradient_normalization():
    x_a, x_b = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.2)
    z_a, z_b = torch.zeros(2, 8), torch.ones(2, 8)
    assert torch.allclose(diversity(x_a, x_b, z_a, z_b), torch.full((2,), 0.2))
    g = torch.randn(3, 2, 5, 5) * torch.tensor([1e-6, 1e3]).view(1, 2, 1, 1)
    normed = normalize_per_channel(g)
    rms = normed.pow(2).mean(dim=(2, 3)).sqrt()
    assert torch.allclose(rms, torch.ones(3, 2), atol=1e-4)  # every channel O(1) whatever its scale


def test_parameter_count_is_the_order_of_the_papers_table2():
    # Paper Table 2: 500,944 for L2LDA against 120 for the RNN optimizer.
    assert parameter_count("mnist") == 491_344
    assert parameter_count("cifar10") == 497_104
    config = build_config("l2lda", dataset="mnist")
    gen = build_maximizer("l2lda", config, torch.device("cpu"))
    assert isinstance(gen, L2LDAGenerator) and gen.learned
    assert gen.num_parameters() == 491_344
    small = build_maximizer("l2lda", build_config("l2lda", l2lda_width=16), torch.device("cpu"))
    assert small.num_parameters() < 50_000


def test_state_dict_round_trip_gives_the_same_attack():
    model = _linear_mnist_model()
    x, y = _batch(6)
    gen = L2LDAGenerator(1, width=8)
    for _ in range(2):
        gen.learn(gen.maximize(model, ce_per_example, x, y, 0.3, 3, learn_graph=True))
    copy = L2LDAGenerator(1, width=8)
    copy.load_state_dict(gen.state_dict())
    torch.manual_seed(5)
    a = gen.maximize(model, ce_per_example, x, y, 0.3, 3)
    torch.manual_seed(5)
    b = copy.maximize(model, ce_per_example, x, y, 0.3, 3)
    assert torch.equal(a.x_adv, b.x_adv)


def test_l2lda_trains_through_advtui_run_and_its_attacker_loads_in_eval(runs_root):
    args = ["run", "--defense", "l2lda", "--name", "gen", "--train-limit", "100", "--test-limit", "20",
            "--eval-limit", "20", "--batch-size", "50", "--epochs", "1", "--inner-steps", "2",
            "--compare-every", "1", "--device", "cpu"]
    proc = subprocess.run([sys.executable, "-m", "advtui", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ADVTUI_RUNS": str(runs_root)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    registry = Registry(runs_root)
    record = registry.resolve_run("gen")
    assert record["status"] == "finished" and record["defense"] == "l2lda"
    assert record["maximizer_params"] == 491_344
    state = load_checkpoint(runs_root / record["id"] / "checkpoints" / "final.pt")
    assert state["maximizer_kind"] == "l2lda" and state["maximizer"] is not None

    from advtui.evaluation import evaluate_run

    report = evaluate_run(registry, "gen", "natural,l2lda-3:gen", limit=20, device="cpu")
    by_attack = {d["attack"]: d for d in report.results}
    learned = by_attack[f"l2lda-3:{record['id']}"]
    assert len(learned["trajectory"]) == 4 and learned["n"] == 20
    assert learned["accuracy"] <= by_attack["natural"]["accuracy"]


def test_inputs_of_another_dataset_are_refused_in_one_line():
    from advtui.core.errors import ConfigError

    gen = L2LDAGenerator(1, width=8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()
    with pytest.raises(ConfigError, match="1-channel images"):
        gen.maximize(model, ce_per_example, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), 8 / 255, 2)


def test_checkpointed_steps_learn_exactly_as_the_full_graph_does():
    """Activation checkpointing of the generator's steps (the memory fix) changes no number: the
    same phi update, the same adversarial examples, and batch-norm statistics folded in once."""
    model = _linear_mnist_model()
    x, y = _batch(6)
    states = {}
    for checkpointed in (False, True):
        torch.manual_seed(0)
        gen = L2LDAGenerator(1, width=8, lr=1e-2, diversity_weight=0.3)
        gen.checkpoint_steps = checkpointed
        for _ in range(2):
            result = gen.maximize(model, ce_per_example, x, y, 0.3, 4, learn_graph=True)
            gen.learn(result)
        states[checkpointed] = ({k: v.clone() for k, v in gen.net.state_dict().items()}, result.x_adv)
    (plain, plain_adv), (ckpt, ckpt_adv) = states[False], states[True]
    assert torch.equal(plain_adv, ckpt_adv)
    for key in plain:
        assert torch.allclose(plain[key], ckpt[key], rtol=1e-5, atol=1e-7), key
    assert int(ckpt["down1.norm.num_batches_tracked"]) == 2 * 4  # once per step, not once more per recompute
