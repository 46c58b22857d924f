"""AutoAttack (``aa``, ``apgd-ce-K``, ``apgd-t-K``, ``square-K``): the grammar, the original's
standard settings, and the cascade checked against torchattacks' pieces run directly on the
same trained model and examples, and against pgd-100.

The end-to-end test shrinks the standard settings (30 iterations, 3 target classes, 50 Square
queries on 24 examples) so it runs in seconds on a CPU; the full settings are checked
separately, piece by piece.
"""

from __future__ import annotations

import json

import pytest
import torch

from advtui.core.attack_specs import (EVALUATION_CHECKLIST, AttackSpecError, attack_sort_key, parse_attack,
                                      parse_attack_list)
from advtui.core.digests import hex_to_mask
from advtui.engine import attacks as engine_attacks
from advtui.engine.attacks import AutoAttackSettings, autoattack_piece, build_run_model
from advtui.engine.data import load_split
from advtui.evaluation import evaluate_run, run_checkpoint
from advtui.store.registry import Registry


# -- grammar ---------------------------------------------------------------------------------------------
def test_autoattack_specs_parse_to_canonical_names():
    assert parse_attack("AA").text == "aa" and parse_attack("aa").steps == 100
    assert parse_attack("apgd-ce-100").family == "apgd-ce" and parse_attack("apgd-ce-100").steps == 100
    spec = parse_attack("apgd-t-50x2")
    assert (spec.family, spec.steps, spec.restarts, spec.text) == ("apgd-t", 50, 2, "apgd-t-50x2")
    assert parse_attack("square-5000").text == "square-5000"
    assert not parse_attack("square-100").white_box_gradient and parse_attack("aa").white_box_gradient
    assert [s.text for s in parse_attack_list("aa, pgd-100 apgd-ce-10")] == ["aa", "pgd-100", "apgd-ce-10"]


@pytest.mark.parametrize("bad, says", [
    ("aa-10", "takes no step count"),
    ("aax2", "standard version"),
    ("square", "needs a step count"),
    ("apgd-ce", "needs a step count"),
    ("apgd-t-10:somerun", "takes no source run"),
    ("apgd-dlr-10", "unknown attack"),
])
def test_bad_autoattack_specs_are_one_line_errors(bad, says):
    with pytest.raises(AttackSpecError, match=says) as info:
        parse_attack(bad)
    assert "\n" not in str(info.value)


def test_autoattack_columns_come_after_the_papers_and_are_in_the_checklist():
    order = sorted(["aa", "square-5000", "pgd-100", "natural", "apgd-t-100", "apgd-ce-100", "cw-100"], key=attack_sort_key)
    assert order == ["natural", "pgd-100", "cw-100", "apgd-ce-100", "apgd-t-100", "square-5000", "aa"]
    assert "aa" in [spec for spec, _ in EVALUATION_CHECKLIST]


# -- the original's standard settings ---------------------------------------------------------------------
def test_pieces_carry_the_original_standard_settings():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    apgd = autoattack_piece("apgd-ce", model, 0.3, seed=7)
    assert (apgd.steps, apgd.n_restarts, apgd.loss, apgd.thr_decr, apgd.eot_iter, apgd.seed) == (100, 1, "ce", 0.75, 1, 7)
    apgdt = autoattack_piece("apgd-t", model, 0.3, seed=7)
    assert (apgdt.steps, apgdt.n_restarts, apgdt.n_target_classes) == (100, 1, 9)
    fab = autoattack_piece("fab-t", model, 0.3, seed=7)
    assert (fab.steps, fab.n_restarts, fab.n_target_classes, fab.multi_targeted) == (100, 1, 9, True)
    assert (fab.alpha_max, fab.eta, fab.beta) == (0.1, 1.05, 0.9)
    square = autoattack_piece("square", model, 0.3, seed=7)
    assert (square.n_queries, square.p_init, square.rescale_schedule, square.loss, square.n_restarts) == (5000, 0.8, False, "margin", 1)
    assert {p.eps for p in (apgd, apgdt, fab, square)} == {0.3}


# -- the cascade against the package run directly, and against pgd-100 ------------------------------------
SMALL = AutoAttackSettings(iterations=30, target_classes=3, square_queries=50)
N, EPS, SEED = 24, 0.2, 3


def _direct_cascade(model, x, y, correct):
    """Standard AutoAttack by hand from torchattacks: each piece on the still-robust examples."""
    import torchattacks

    apgdt = torchattacks.APGDT(model, norm="Linf", eps=EPS, steps=SMALL.iterations, n_restarts=1, seed=SEED)
    apgdt.n_target_classes = SMALL.target_classes
    fab = torchattacks.FAB(model, norm="Linf", eps=EPS, steps=SMALL.iterations, n_restarts=1, seed=SEED,
                           multi_targeted=True)
    fab.n_target_classes = SMALL.target_classes
    pieces = [
        torchattacks.APGD(model, norm="Linf", eps=EPS, steps=SMALL.iterations, n_restarts=1, seed=SEED, loss="ce"),
        apgdt,
        fab,
        torchattacks.Square(model, norm="Linf", eps=EPS, n_queries=SMALL.square_queries, n_restarts=1, p_init=0.8,
                            resc_schedule=False, seed=SEED),
    ]
    robust = correct.clone()
    for piece in pieces:
        idx = torch.nonzero(robust).flatten()
        if idx.numel():
            adv = piece(x[idx], y[idx])
            assert (adv - x[idx]).abs().max() <= EPS + 1e-6
            with torch.no_grad():
                robust[idx] = model(adv).argmax(1) == y[idx]
    return robust


def test_aa_equals_the_torchattacks_cascade_and_is_not_weaker_than_pgd100(trained_runs, monkeypatch, mnist_root):
    monkeypatch.setattr(engine_attacks, "AA_STANDARD", SMALL)
    registry = Registry(trained_runs)
    report = evaluate_run(registry, "advtrain", "natural,pgd-100,aa", limit=N, eps=EPS, seed=SEED, device="cpu",
                          batch_size=N)
    natural, pgd100, aa = report.results
    assert aa["attack"] == "aa" and aa["accuracy_kind"] == "attack" and aa["n_attacked"] == natural["robust"]
    assert 0 < aa["robust"] < natural["robust"]  # a comparison of something, not 0 = 0
    assert aa["robust"] <= pgd100["robust"]
    assert aa["wall_time"] > 0 and aa["trajectory"] == []  # a cascade has no single loss curve
    pieces = aa["passes"]
    assert [p["attack"] for p in pieces] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert all(a["robust"] >= b["robust"] for a, b in zip(pieces, pieces[1:])) and pieces[-1]["robust"] == aa["robust"]
    assert sum(p["wall_time"] for p in pieces) <= aa["wall_time"] + 1e-6

    record = registry.resolve_run("advtrain")
    model = build_run_model(run_checkpoint(registry, record), "cpu")
    split = load_split("mnist", mnist_root, False, N, seed=0)
    x, y = split.images.float().div(255.0), split.labels
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    direct = _direct_cascade(model, x, y, correct)
    ours = torch.from_numpy(hex_to_mask(aa["robust_mask"], N))
    assert torch.equal(ours, direct)
    assert report.summaries["worst-case"]["robust"] <= aa["robust"]


def test_a_single_piece_runs_and_is_stored_like_any_attack(trained_runs):
    report = evaluate_run(Registry(trained_runs), "advtrain", "apgd-ce-5,square-20", limit=16, eps=0.2, device="cpu")
    apgd, square = report.results
    for doc in (apgd, square):
        assert doc["accuracy"] <= doc["clean_accuracy"] and doc["n"] == 16 and doc["wall_time"] > 0
        assert len(doc["trajectory"]) == 2  # CE at x and at x'
    assert apgd["gradient"]["checked"] > 0 and square["gradient"] is None  # Square never reads gradients


# -- export for the ecosystem -----------------------------------------------------------------------------
def test_export_robustbench_writes_a_loadable_state_dict_and_a_zoo_card(trained_runs, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from advtui.cli import app
    from advtui.engine.models import build_model

    runner = CliRunner()
    out = tmp_path / "zoo"
    refused = runner.invoke(app, ["export", "advtrain", "--format", "robustbench", "--out", str(out)])
    assert refused.exit_code != 0 and "-a natural,aa" in str(refused.exception) and not out.exists()
    assert runner.invoke(app, ["export", "advtrain", "plain", "--format", "robustbench"]).exit_code != 0

    monkeypatch.setattr(engine_attacks, "AA_STANDARD", AutoAttackSettings(iterations=5, target_classes=2, square_queries=20))
    registry = Registry(trained_runs)
    aa = evaluate_run(registry, "advtrain", "aa", limit=20, device="cpu").results[0]
    done = runner.invoke(app, ["export", "advtrain", "--format", "robustbench", "--out", str(out)])
    assert done.exit_code == 0, done.output

    card = json.loads((out / "model_info" / "mnist" / "Linf" / "advtrain.json").read_text())
    assert set(card) >= {"link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                         "architecture", "eps", "clean_acc", "reported", "autoattack_acc"}
    assert (card["dataset"], card["architecture"], card["eps"]) == ("mnist", "SmallCNN", "0.1")
    assert card["autoattack_acc"] == f"{aa['accuracy']:.2f}" and card["clean_acc"] == f"{aa['clean_accuracy']:.2f}"
    assert card["additional_data"] is False and card["number_forward_passes"] == 1
    assert card["clean_acc_n"] == card["autoattack_acc_n"] == 20  # the examples each accuracy rests on
    assert "(n=20)" in done.output

    state = torch.load(out / "models" / "mnist" / "Linf" / "advtrain.pt", weights_only=True)
    model = build_model("smallcnn", "mnist")
    model.load_state_dict(state)
    stored = build_run_model(run_checkpoint(registry, registry.resolve_run("advtrain")), "cpu")
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), stored(x))


@pytest.mark.parametrize("damage", [{"accuracy": "high"}, {"n": None}, {"settings": {"seed": 0}}])
def test_export_refuses_a_damaged_autoattack_result_in_one_line_and_writes_nothing(damage, tmp_path):
    from types import SimpleNamespace

    from advtui.core.errors import ConfigError
    from advtui.engine.export import write_robustbench

    good = {"run_id": "r1", "attack": "aa", "accuracy": 80.0, "robust": 16, "n": 20, "clean_accuracy": 95.0,
            "clean_robust": 19, "settings": {"eps": 0.3, "seed": 0, "limit": 20}}
    target = SimpleNamespace(path=tmp_path / "final.pt", digest="abc")
    with pytest.raises(ConfigError, match=r"run r1's stored AutoAttack result .*-a natural,aa` again"):
        write_robustbench({"id": "r1"}, target, {"aa": {**good, **damage}}, tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()


def test_eps_is_written_as_the_zoo_writes_it():
    from advtui.engine.export import architecture_name, eps_text

    assert (eps_text(8 / 255), eps_text(0.3), eps_text(0.1)) == ("8/255", "0.3", "0.1")
    assert (architecture_name("wrn-34-10"), architecture_name("vgg16")) == ("WideResNet-34-10", "VGG-16")


def _doc(attack, family, robust, n=100, passes=None):
    return {"attack": attack, "label": attack, "family": family, "steps": 100, "restarts": 1, "source_run": None,
            "accuracy": float(robust), "robust": robust, "n": n, "accuracy_kind": "attack", "gradient": None,
            "trajectory": [], "settings": {"eps": 0.3}, "clean_robust": n, "passes": passes}


def test_square_beating_the_gradient_attacks_is_flagged_as_autoattack_does():
    from advtui.store.results import compute_flags

    cascade = [{"attack": "apgd-ce", "robust": 60}, {"attack": "apgd-t", "robust": 58},
               {"attack": "fab-t", "robust": 58}, {"attack": "square", "robust": 50}]
    flags = compute_flags([_doc("aa", "aa", 50, passes=cascade), _doc("pgd-100", "pgd", 60),
                           _doc("square-5000", "square", 40)])
    assert [f["code"] for f in flags["aa"]] == ["square-stronger"] and "8 more of 100" in flags["aa"][0]["message"]
    assert [f["code"] for f in flags["square-5000"]] == ["square-stronger"]
    assert flags["pgd-100"] == []
    cascade[-1]["robust"] = 58  # Square broke nothing more: no warning
    quiet = compute_flags([_doc("aa", "aa", 58, passes=cascade), _doc("square-5000", "square", 60),
                           _doc("pgd-100", "pgd", 60)])
    assert quiet == {"aa": [], "square-5000": [], "pgd-100": []}
