"""`advtui report` shows each row run's learning curve beside its table: crafted runs (a planned
Table 1 at the tiny scale, two seeds), hand-written results and hand-written events.jsonl streams;
nothing is trained, so these take seconds."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from scipy.stats import binomtest

from advtui.core.digests import mask_to_hex
from advtui.store.results import store_result
from advtui.core.paths import run_dir
from advtui.store.registry import Registry
from advtui.report import CHANCE_ACCURACY, Curve, build_report, epoch_events
from advtui.reproduce import REPRODUCTIONS, apply_reproduction, plan_reproduction

N = 20
PNG = b"\x89PNG\r\n\x1a\n"


def _store(registry, run_id, attack, accuracy, eps=0.3):
    robust = round(accuracy * N / 100)
    mask = np.zeros(N, dtype=bool)
    mask[:robust] = True
    family = "natural" if attack == "natural" else attack.rsplit("-", 1)[0]
    store_result(registry, {
        "kind": "attack", "run_id": run_id, "attack": attack, "checkpoint_hash": "h" + run_id, "label": attack,
        "family": family, "steps": 0 if attack == "natural" else 10, "restarts": 1, "source_run": None,
        "source_checkpoint_hash": None, "checkpoint": "checkpoints/final.pt", "date": time.time(), "eval_id": "e1",
        "settings": {"eps": eps, "examples": f"mnist/test/{N}", "n": N, "seed": 0}, "accuracy": 100.0 * robust / N,
        "robust": robust, "n": N, "n_attacked": N, "accuracy_kind": "attack", "clean_accuracy": 100.0,
        "clean_robust": N, "wall_time": 1.0, "loss": "ce", "trajectory": [0.1, 1.0], "trajectory_model": "target",
        "gradient": None, "robust_mask": mask_to_hex(mask), "flags": []})


def _events(registry, run_id, curve, *, extra: list[bytes] = ()) -> None:
    """An events.jsonl as the trainer writes it (start, steps, one epoch event per epoch) plus ``extra``
    raw lines; ``curve`` is [(clean, pgd), ...] for epochs 1, 2, ..."""
    folder = run_dir(registry.root, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"kind": "start", "time": 1.0, "epoch": 0})]
    for epoch, (clean, pgd) in enumerate(curve, start=1):
        lines.append(json.dumps({"kind": "step", "time": 2.0, "epoch": epoch - 1, "batch": 1, "loss": 2.3,
                                 "clean_acc": 50.0}, separators=(",", ":")))
        lines.append(json.dumps({"kind": "epoch", "time": 3.0, "epoch": epoch, "train_loss": 1.0, "train_acc": 50.0,
                                 "test_clean_acc": clean, "test_pgd_acc": pgd, "test_n": 200, "epoch_time": 4.0},
                                separators=(",", ":")))
    (folder / "events.jsonl").write_bytes(b"\n".join([line.encode() for line in lines] + list(extra)) + b"\n")


HEALTHY = [(11.5, 9.0), (40.2, 12.0), (71.0, 30.4), (85.0, 50.0), (90.0, 61.0), (93.0, 70.0), (95.6, 77.0),
           (97.4, 80.6)]
STUCK = [(11.35, 11.35), (11.35, 11.35), (15.2, 10.0)]


@pytest.fixture
def crafted(runs_root):
    """Table 1 planned at the tiny scale with 2 seeds and 8 epochs: four queued runs, three with results,
    events for three of them (healthy; 3 of 8 epochs with damaged lines; stuck at chance)."""
    registry = Registry(runs_root)
    plan = apply_reproduction(registry, plan_reproduction(registry, "table1", "tiny", seeds=2, device="cpu",
                                                          overrides={"epochs": 8}))
    ids = {(p.role, p.seed): p.run["id"] for p in plan.runs}
    (doc,) = registry.all(REPRODUCTIONS)
    attacks = [c["attack"] for c in doc["columns"]]
    for key, (nat, pgd, bls) in {("advtrain", 0): (97.5, 80.0, 75.0), ("advtrain", 1): (90.0, 60.0, 55.0),
                                 ("advtrain-bls", 0): (10.0, 10.0, 10.0)}.items():
        for attack, value in zip(attacks, (nat, pgd, bls)):
            _store(registry, ids[key], attack, value)
    _events(registry, ids[("advtrain", 0)], HEALTHY)
    # A run still going: 3 of 8 epochs, a torn last line, a line that is not UTF-8, a JSON line that is
    # not an object, and epoch 2 written twice (a resume replays it): the last one counts.
    _events(registry, ids[("advtrain", 1)], [(30.0, 5.0), (50.0, 20.0), (70.0, 40.0)], extra=[
        b'{"kind":"epoch","time":5.0,"epoch":2,"test_clean_acc":55.0,"test_pgd_acc":22.0,"test_n":200}',
        b'{"kind":"epoch","time":5.0,"epoch":9,"test_clean_acc":\xff\xfe}', b'"kind":"epoch"', b'[1, 2]',
        b'{"kind":"epoch","time":6.0,"epoch":4,"test_clean_a'])
    _events(registry, ids[("advtrain-bls", 0)], STUCK)
    return registry, ids


def test_report_shows_each_row_runs_learning_curve_and_flags_a_run_at_chance(crafted, tmp_path):
    registry, ids = crafted
    out = tmp_path / "report"
    result = build_report(registry, ["table1"], out, device="cpu", analyses=False)
    text = result.path.read_text()
    healthy, running = ids[("advtrain", 0)], ids[("advtrain", 1)]
    stuck, queued = ids[("advtrain-bls", 0)], ids[("advtrain-bls", 1)]

    section = text.split("### Learning curves", 1)[1]
    assert text.index("| Defense | Natural |") < text.index("### Learning curves")  # beside the table
    rows = {line.split("`")[1]: line for line in section.splitlines() if line.startswith("| ") and "`" in line}
    assert set(rows) == {healthy, running, stuck, queued}
    # 8 epochs: 6 shown, evenly spaced, first and last included; values rounded to whole percents.
    assert rows[healthy] == (f"| AdvTrain | 0 | `{healthy}` | 8 | 12 → 40 → 85 → 90 → 96 → 97 "
                             "| 9 → 12 → 50 → 61 → 77 → 81 | above chance |")
    assert "first → last epoch (runs of more than 6 epochs: epochs 1, 2, 4, 5, 7, 8)." in section
    assert rows[running] == f"| AdvTrain | 1 | `{running}` | 3 of 8 | 30 → 55 → 70 | 5 → 22 → 40 | above chance |"
    assert rows[stuck].startswith(f"| AdvTrain+BLS | 0 | `{stuck}` | 3 of 8 | 11 → 11 → 15 | 11 → 11 → 10 | "
                                  "**never left chance**")
    assert rows[queued] == (f"| AdvTrain+BLS | 1 | `{queued}` | – | no epochs recorded | | "
                            "no epochs recorded (queued) |")
    assert "| Clean % | PGD-2 % |" in section  # the tiny scale's T = 2 inner steps
    assert (f"Learning curves: never left chance (clean accuracy under 20% at every epoch): AdvTrain+BLS "
            f"(seed 0, `{stuck}`): the cells" in text)
    # The evaluated Natural column uses the same threshold.
    assert f"AdvTrain+BLS: natural accuracy under {CHANCE_ACCURACY:g}%" in text

    data = json.loads((out / "report.json").read_text())
    curves = data["tables"][0]["curves"]
    assert curves[healthy]["epochs"] == list(range(1, 9))
    assert curves[healthy]["clean"] == [c for c, _ in HEALTHY] and curves[healthy]["pgd"] == [p for _, p in HEALTHY]
    assert curves[running]["epochs"] == [1, 2, 3] and curves[running]["clean"] == [30.0, 55.0, 70.0]
    assert curves[stuck]["flag"] == "never left chance" and curves[healthy]["flag"] == ""
    assert (curves[queued]["epochs"], curves[queued]["clean"], curves[queued]["flag"]) == ([], [], "no epochs recorded")

    # Every number says what it rests on: n and seeds, and the smallest difference this resolves.
    assert ("Each number rests on 20 test examples per run and 1/2 seed(s). On that many examples a cell's exact "
            "95% interval reaches ±" in text) and "an interval over seeds needs 3 seeds or more" in text
    cell = data["tables"][0]["uncertainty"]["advtrain"]["Natural"]
    assert (cell["n"], cell["runs"], cell["low"]) == (20, 2, None)  # 2 seeds: no t-interval
    # ... and the table again as intervals: one seed gives the run's exact binomial interval (2 of 20
    # robust: scipy's Clopper-Pearson), two seeds none (a t-interval needs 3), each with its n and seeds.
    ci = binomtest(2, 20).proportion_ci(confidence_level=0.95, method="exact")
    intervals = text.split("95% intervals of the measured cells (%)", 1)[1].split("### Learning curves", 1)[0]
    bls_row = next(line for line in intervals.splitlines() if line.startswith("| AdvTrain+BLS |"))
    assert bls_row.split(" | ")[1] == f"{100 * ci.low:.1f}–{100 * ci.high:.1f} (n=20)"
    adv_row = next(line for line in intervals.splitlines() if line.startswith("| AdvTrain |"))
    assert adv_row.split(" | ")[1] == "– (n=20, 2 seeds)"

    png = out / "figures" / "table1-tiny-learning.png"
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    assert f"](figures/{png.name})" in section and png.name in data["tables"][0]["figures"] and png in result.figures
    beside = json.loads(png.with_suffix(".json").read_text())
    assert [r["run_id"] for r in beside["runs"]] == [healthy, running, stuck, queued]
    assert beside["runs"][2]["clean"] == [c for c, _ in STUCK]


def test_a_one_epoch_run_still_draws_and_runs_without_epochs_do_not_break_the_report(crafted, tmp_path):
    registry, ids = crafted
    for key in ids:
        (run_dir(registry.root, ids[key]) / "events.jsonl").unlink(missing_ok=True)
    # Without any epoch event: every run listed as such, no learning figure, the report still written.
    out = tmp_path / "none"
    text = build_report(registry, ["table1"], out, device="cpu", analyses=False).path.read_text()
    assert text.count("| no epochs recorded |") == 4 and not (out / "figures" / "table1-tiny-learning.png").exists()

    # One epoch: a single point per line, drawn as markers in seed 0's colour (C0, #1f77b4).
    _events(registry, ids[("advtrain", 0)], [(60.0, 30.0)])
    out = tmp_path / "one"
    text = build_report(registry, ["table1"], out, device="cpu", analyses=False).path.read_text()
    assert f"| AdvTrain | 0 | `{ids[('advtrain', 0)]}` | 1 of 8 | 60 | 30 | above chance |" in text
    from matplotlib.image import imread

    pixels = imread(out / "figures" / "table1-tiny-learning.png")[..., :3]
    panels = pixels[: int(0.85 * len(pixels))]  # above the legend (its seed-0 swatch is C0 too)
    c0 = np.abs(panels - np.array([0x1F, 0x77, 0xB4]) / 255).max(axis=-1) < 0.08
    assert c0.sum() > 20  # the two markers

    # Epoch events without accuracies (NaN is written as null): listed, not a crash.
    _events(registry, ids[("advtrain-bls", 1)], [(None, None)])
    text = build_report(registry, ["table1"], tmp_path / "nan", device="cpu", analyses=False).path.read_text()
    assert f"| `{ids[('advtrain-bls', 1)]}` | 1 of 8 | – | – | no accuracy recorded |" in text

    # Long runs with different epoch counts: each row says which epochs it shows.
    _events(registry, ids[("advtrain", 1)], HEALTHY)
    _events(registry, ids[("advtrain-bls", 0)], HEALTHY + [(98.0, 81.0), (98.5, 82.0)])
    text = build_report(registry, ["table1"], tmp_path / "long", device="cpu", analyses=False).path.read_text()
    assert f"| `{ids[('advtrain', 1)]}` | 8 (shown: 1, 2, 4, 5, 7, 8) | 12 → 40 → 85 → 90 → 96 → 97 |" in text
    assert f"| `{ids[('advtrain-bls', 0)]}` | 10 of 8 (shown: 1, 3, 5, 6, 8, 10) | 12 → 71 → 90 → 93 → 97 → 98 |" in text


def test_epoch_events_skip_damaged_lines_and_keep_the_last_of_a_repeated_epoch(tmp_path):
    path = tmp_path / "events.jsonl"
    assert epoch_events(path) == []  # no file yet
    path.write_bytes(b'{"kind":"epoch","epoch":1,"test_clean_acc":10}\n\x00\x00\x00\n'
                     b'{"kind": "epoch", "epoch": 1, "test_clean_acc": 12}\n{"kind":"epoch","epoch":"2"}\n'
                     b'{"kind":"epoch","epoch":0}\n{"kind":"step","epoch":3}\n{"kind":"epoch","epoch":3,"te')
    assert epoch_events(path) == [{"kind": "epoch", "epoch": 1, "test_clean_acc": 12}]


@pytest.mark.parametrize("clean, flag", [([19.99], "never left chance"), ([CHANCE_ACCURACY], ""),
                                         ([50.0, 12.0], "back at chance"), ([None, 12.0], "never left chance"),
                                         ([], "no epochs recorded"), ([None], "no epochs recorded")])
def test_the_chance_flag(clean, flag):
    assert Curve("r", "advtrain", 0, "r", "finished", 2, list(range(1, len(clean) + 1)), clean, clean).flag == flag


def test_report_draws_robustness_curves_with_the_audit(crafted, tmp_path):
    registry, ids = crafted
    run = ids[("advtrain", 0)]
    for eps, accuracy in ((0.1, 95.0), (0.6, 40.0)):  # 40% left at twice the training eps: flagged
        _store(registry, run, "pgd-2", accuracy, eps=eps)
    out = tmp_path / "report"
    result = build_report(registry, ["table1"], out, device="cpu", analyses=False)
    text = result.path.read_text()
    section = text.split("### Robustness curves", 1)[1]
    assert f"| `{run}` | eps: pgd-2 | steps 10 | 0.1: 95.00" in section and "0.6: 40.00" in section
    assert f"- audit `{run}` (no-zero-at-large-eps): at eps 0.6" in section
    png = out / "figures" / "table1-tiny-robustness.png"
    assert png.read_bytes()[:8] == PNG and png in result.figures


def test_autoattack_is_an_extra_column_beyond_the_paper_with_no_paper_number(runs_root, tmp_path):
    registry = Registry(runs_root)
    plan = apply_reproduction(registry, plan_reproduction(registry, "table1", "tiny", device="cpu", autoattack=True))
    (doc,) = registry.all(REPRODUCTIONS)
    assert doc["extra_columns"] == [{"label": "AA", "attack": "aa", "beyond_paper": True}]
    jobs = {j["run_id"]: j for j in registry.all("jobs") if j["kind"] == "eval"}
    assert all(j["attacks"][-1] == "aa" for j in jobs.values()) and len(jobs) == 2
    ids = {p.role: p.run["id"] for p in plan.runs}
    for role, values in {"advtrain": (95.0, 80.0, 75.0, 70.0), "advtrain-bls": (95.0, 85.0, 80.0, 60.0)}.items():
        for attack, value in zip(["natural", "pgd-10", "pgd-bls-10", "aa"], values):
            _store(registry, ids[role], attack, value)
    # Without --autoattack a later reproduce keeps the column.
    apply_reproduction(registry, plan_reproduction(registry, "table1", "tiny", device="cpu"))
    assert registry.all(REPRODUCTIONS)[0]["extra_columns"][0]["attack"] == "aa"

    text = build_report(registry, ["table1"], tmp_path / "report", device="cpu", analyses=False).path.read_text()
    assert "| Defense | Natural | PGD | PGD+BLS | AA (beyond the paper) |" in text
    row = next(line for line in text.splitlines() if line.startswith("| AdvTrain+BLS |"))
    # AA has no paper number; one seed per defense: no paired test over seeds, so no bold
    assert row.endswith("| 80.00 (88.00) | 60.00 |")
    assert next(line for line in text.splitlines() if line.startswith("| AdvTrain |")).endswith("| 70.00 |")
    assert "AA (beyond the paper): AutoAttack's standard version" in text
    table3 = apply_reproduction(registry, plan_reproduction(registry, "table3", "tiny", device="cpu", autoattack=True))
    assert table3.extra_columns == (("AA", "aa"),)
    with pytest.raises(Exception, match="white-box"):
        plan_reproduction(registry, "table7", "tiny", device="cpu", autoattack=True)
