"""The attack spec grammar, the CW margin loss, FGSM, and building attacks from runs' checkpoints."""

from __future__ import annotations

import pytest
import torch

from advtui.core.attack_specs import (
    AttackSpec, AttackSpecError, attack_sort_key, default_attacks, parse_attack, parse_attack_list,
)
from advtui.engine.attacks import FGSM, build_attack, cw_margin_loss
from advtui.engine.maximizers import PGD
from advtui.engine.rnn import RNNOptimizer
from advtui.engine.objectives import ce_per_example
from advtui.evaluation import run_lookup
from advtui.core.errors import AdvtuiError, CheckpointError, ConfigError, RunNotFoundError
from advtui.store.registry import Registry


@pytest.mark.parametrize("text, family, steps, restarts, source, canonical", [
    ("natural", "natural", 0, 1, None, "natural"),
    ("FGSM", "fgsm", 1, 1, None, "fgsm"),
    ("pgd-10", "pgd", 10, 1, None, "pgd-10"),
    ("pgd-100x5", "pgd", 100, 5, None, "pgd-100x5"),
    ("cw-100", "cw", 100, 1, None, "cw-100"),
    ("pgd-bls-10", "pgd-bls", 10, 1, None, "pgd-bls-10"),
    ("rnn-10", "rnn", 10, 1, None, "rnn-10"),
    ("rnn-40:My-Run_1", "rnn", 40, 1, "My-Run_1", "rnn-40:My-Run_1"),
    ("l2lda-10:abc123", "l2lda", 10, 1, "abc123", "l2lda-10:abc123"),
    ("transfer:plain", "transfer-pgd", 20, 1, "plain", "transfer-pgd-20:plain"),
    ("transfer-pgd-7x2:plain", "transfer-pgd", 7, 2, "plain", "transfer-pgd-7x2:plain"),
])
def test_parse_valid_specs(text, family, steps, restarts, source, canonical):
    spec = parse_attack(text)
    assert (spec.family, spec.steps, spec.restarts, spec.source) == (family, steps, restarts, source)
    assert spec.text == canonical
    assert parse_attack(spec.text) == spec  # the canonical text parses back to the same spec


@pytest.mark.parametrize("text, message", [
    ("", "unknown attack"),
    ("deepfool-10", "unknown attack"),
    ("pgd", "needs a step count"),
    ("pgd-", "unknown attack"),
    ("pgd-0", "between 1 and"),
    ("pgd-ten", "unknown attack"),
    ("natural-10", "takes no step count"),
    ("fgsm:plain", "takes no source run"),
    ("pgd-10:plain", "takes no source run"),
    ("fgsmx3", "deterministic"),
    ("transfer", "needs a source run"),
    ("transfer-pgd-10", "needs a source run"),
    ("rnn-10:", "empty source"),
    ("pgd-10x0", "restarts must be"),
])
def test_parse_rejects_bad_specs_with_one_line(text, message):
    with pytest.raises(AttackSpecError) as info:
        parse_attack(text)
    assert isinstance(info.value, AdvtuiError)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_parse_attack_list_splits_dedups_and_rejects_empty():
    specs = parse_attack_list("natural, pgd-10 pgd-10,cw-100")
    assert [s.text for s in specs] == ["natural", "pgd-10", "cw-100"]
    assert [s.text for s in parse_attack_list(["pgd-10,fgsm", "natural"])] == ["pgd-10", "fgsm", "natural"]
    with pytest.raises(AttackSpecError, match="no attack given"):
        parse_attack_list(" , ")
    with pytest.raises(AttackSpecError, match="unknown attack 'bogus'"):
        parse_attack_list("pgd-10,bogus")


def test_sort_key_follows_the_paper_table_order():
    specs = ["cw-100", "transfer-pgd-20:x", "pgd-100", "natural", "rnn-10:x", "pgd-10", "fgsm", "pgd-bls-10"]
    assert sorted(specs, key=attack_sort_key) == [
        "natural", "fgsm", "pgd-10", "pgd-100", "cw-100", "pgd-bls-10", "rnn-10:x", "transfer-pgd-20:x"]


def test_default_attacks_add_the_runs_own_learned_optimizer():
    assert [s.text for s in default_attacks({"id": "aaaaaa", "defense": "advtrain"})] == [
        "natural", "pgd-10", "pgd-100", "cw-100"]
    assert default_attacks({"id": "bbbbbb", "defense": "rnn-trades"})[-1] == AttackSpec("rnn", 10, 1, "bbbbbb")


def test_cw_margin_is_right_when_every_logit_is_negative():
    logits = torch.tensor([[-5.0, -1.0, -3.0], [-2.0, -4.0, -9.0]])
    y = torch.tensor([1, 2])
    # example 0 is correct: margin = max(-5, -3) - (-1) = -2; example 1 is wrong: -2 - (-9) = 7
    assert torch.allclose(cw_margin_loss(logits, y), torch.tensor([-2.0, 7.0]))
    # The masking-by-zero bug would have taken max(other) = 0 and given 1 and 9.
    assert cw_margin_loss(logits - 100.0, y).tolist() == pytest.approx([-2.0, 7.0])


def test_cw_margin_is_capped_at_kappa_and_positive_exactly_when_misclassified():
    logits = torch.tensor([[0.0, 80.0], [3.0, 1.0], [1.0, 3.0]])
    y = torch.tensor([0, 0, 0])
    loss = cw_margin_loss(logits, y)
    assert loss[0].item() == 50.0  # capped at kappa
    assert (loss > 0).tolist() == (logits.argmax(1) != y).tolist()


def test_fgsm_takes_one_signed_step_of_size_eps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    x = torch.rand(5, 1, 4, 4) * 0.5 + 0.25  # away from the box edges, so nothing is clipped
    y = torch.tensor([0, 1, 2, 0, 1])
    result = FGSM().maximize(model, ce_per_example, x, y, eps=0.1)
    x_req = x.clone().requires_grad_(True)
    ce_per_example(model(x_req), y).sum().backward()
    assert torch.allclose(result.x_adv, x + 0.1 * x_req.grad.sign())
    assert result.trajectory.shape == (2,) and result.trajectory[1] > result.trajectory[0]


# -- building attacks from the trained runs -----------------------------------------------------------
def test_rnn_attack_loads_the_learned_optimizer_of_a_run(trained_runs):
    registry = Registry(trained_runs)
    rnn_run, target = registry.resolve_run("rnn-adv"), registry.resolve_run("advtrain")
    attack = build_attack(parse_attack("rnn-10:rnn-adv"), run_lookup(registry), target, eps=0.1)
    assert attack.text == f"rnn-10:{rnn_run['id']}" and attack.label == "rnn-10:rnn-adv"
    assert isinstance(attack.maximizer, RNNOptimizer) and attack.maximizer.num_parameters() == 120
    assert not any(p.requires_grad for p in attack.maximizer.net.parameters())
    saved = attack.source.state["maximizer"]["net"]
    for key, value in attack.maximizer.net.state_dict().items():
        assert torch.equal(value, saved[key])  # the trained weights, not a fresh RNN
    # Without a source the evaluated run's own optimizer is used, under the same canonical key.
    own = build_attack(parse_attack("rnn-10"), run_lookup(registry), rnn_run, eps=0.1)
    assert own.text == attack.text


@pytest.mark.parametrize("spec, target, error, message", [
    ("rnn-10:plain", "advtrain", ConfigError, "has no learned rnn maximizer"),
    ("rnn-10", "advtrain", ConfigError, "has no learned rnn maximizer"),
    ("l2lda-10:rnn-adv", "advtrain", ConfigError, "has no learned l2lda maximizer in final.pt (a rnn maximizer)"),
    ("rnn-10:nosuchrun", "advtrain", RunNotFoundError, "no run 'nosuchrun'"),
    ("transfer:plain", "advtrain", ConfigError, "trained at eps 0.3 but this evaluation is at eps 0.1"),
])
def test_bad_sources_fail_with_one_line(trained_runs, spec, target, error, message):
    registry = Registry(trained_runs)
    with pytest.raises(error) as info:
        build_attack(parse_attack(spec), run_lookup(registry), registry.resolve_run(target), eps=0.1)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_transfer_attack_crafts_on_the_surrogate(trained_runs):
    registry = Registry(trained_runs)
    attack = build_attack(parse_attack("transfer-pgd-5:advtrain"), run_lookup(registry), registry.resolve_run("rnn-adv"), eps=0.1)
    assert isinstance(attack.maximizer, PGD) and attack.maximizer.step_size == pytest.approx(0.025)
    assert attack.surrogate is not None and not attack.surrogate.training
    assert not any(p.requires_grad for p in attack.surrogate.parameters())


def test_missing_checkpoint_of_a_source_is_a_checkpoint_error(trained_runs):
    registry = Registry(trained_runs)
    rnn_run = registry.resolve_run("rnn-adv")
    for name in ("final.pt", "last.pt"):
        (trained_runs / rnn_run["id"] / "checkpoints" / name).unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        build_attack(parse_attack("rnn-10:rnn-adv"), run_lookup(registry), registry.resolve_run("advtrain"), eps=0.1)
