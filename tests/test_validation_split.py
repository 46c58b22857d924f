"""The validation split, the best checkpoint, the overfitting alarms and ``--checkpoint``.

The split is checked on real MNIST (ids and pixels); best.pt and early stopping on runs whose
per-epoch evaluation returns a crafted sequence (real training, real checkpoints); the alarms on
crafted events streams; bad input through the program's entry point, with the store compared
byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from advtui.core.config import build_config, default_val_size
from advtui.engine.data import _load_mnist, train_val_indices
from advtui.core.health import WARNING, HealthMonitor, replay
from advtui.store.registry import Registry
from store_support import store_snapshot
from test_faults import cli  # `advtui ARGS` in this process through the program's entry point

TINY = ["--train-limit", "200", "--eval-limit", "64", "--batch-size", "50", "--epochs", "2", "--device", "cpu"]


def one_error_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def everything(root: Path) -> dict[str, bytes]:
    """The store's files and every run's events stream and checkpoints."""
    files = {**store_snapshot(root)}
    for path in sorted(root.glob("*/events.jsonl")) + sorted(root.glob("*/checkpoints/*.pt")):
        files[str(path.relative_to(root))] = path.read_bytes()
    return files


def _digests(images: torch.Tensor) -> set[str]:
    return {hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in images}


# -- the split ------------------------------------------------------------------------------------
@pytest.mark.parametrize("train_limit, val_size", [(5000, 500), (None, 1000), (59500, 1000)])
def test_validation_ids_are_disjoint_from_the_training_ids_and_the_test_split(mnist_root, train_limit, val_size):
    images, labels = _load_mnist(mnist_root, True, False)
    train, val = train_val_indices(labels, train_limit, val_size, seed=3)
    assert val.numel() == val_size and len(set(val.tolist())) == val_size
    assert not set(val.tolist()) & set(train.tolist())
    assert train.numel() == min(train_limit or 60000, 60000 - val_size)
    # Class-balanced, and fixed by the seed: the same seed gives the same ids, another seed others.
    assert torch.bincount(labels[val], minlength=10).tolist() == [val_size // 10] * 10
    assert torch.equal(train_val_indices(labels, train_limit, val_size, seed=3)[1], val)
    assert not torch.equal(train_val_indices(labels, train_limit, val_size, seed=4)[1], val)
    # Not one validation image is a test image, nor one the run trains on (by content).
    test_images, _ = _load_mnist(mnist_root, False, False)
    assert not _digests(images[val]) & _digests(test_images)
    assert not _digests(images[val]) & _digests(images[train])


def test_a_train_limit_that_leaves_room_keeps_the_same_training_images():
    """The validation images come from the rest of the split, so --train-limit 5000 trains on the
    very images it trained on before validation splits existed."""
    from advtui.engine.data import balanced_subset

    labels = torch.arange(60000) % 10
    train, _ = train_val_indices(labels, 5000, 500, seed=0)
    assert torch.equal(train, balanced_subset(labels, 5000, seed=0))


def test_the_default_size_is_a_thousand_or_a_tenth_of_a_small_train_limit():
    assert [default_val_size(limit) for limit in (None, 60000, 10000, 5000, 256, 50)] == [1000, 1000, 1000, 500, 25, 10]


def test_a_run_records_its_validation_ids_and_never_reads_the_test_split(runs_root, monkeypatch, capsys):
    import advtui.engine.train as train_module

    reads = []
    real_load_split = train_module.load_split
    monkeypatch.setattr(train_module, "load_split", lambda *a, **k: reads.append(a) or real_load_split(*a, **k))
    code, out, err = cli(monkeypatch, capsys, "run", "--defense", "plain", "--name", "v", *TINY, "--seed", "5")
    assert code == 0, err
    assert "val clean" in out and "best epoch" in out
    assert reads == []  # the training images and the validation split come from one read of the training split
    (record,) = Registry(runs_root).runs()
    assert (record["val_size"], record["config"]["val_size"], record["eval_split"]) == (20, 20, "val")
    saved = json.loads((runs_root / record["id"] / "validation.json").read_text())
    assert (saved["dataset"], saved["split"], saved["seed"], saved["size"]) == ("mnist", "train", 5, 20)
    _, labels = _load_mnist(Path(record["config"]["data_root"]), True, False)
    train, val = train_val_indices(labels, 200, 20, seed=5)
    assert saved["ids"] == val.tolist() and not set(saved["ids"]) & set(train.tolist())
    epochs = [json.loads(line) for line in (runs_root / record["id"] / "events.jsonl").read_text().splitlines()
              if '"kind":"epoch"' in line]
    assert [e["val_n"] for e in epochs] == [20, 20] and not any("test_pgd_acc" in e for e in epochs)


def test_val_size_zero_trains_on_the_split_and_marks_test_numbers_for_monitoring_only(runs_root, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "run", "--defense", "plain", "--name", "t", *TINY, "--val-size", "0",
                         "--test-limit", "64")
    assert code == 0, err
    assert "test (for monitoring only) clean" in out and "best epoch" not in out
    (record,) = Registry(runs_root).runs()
    assert record["best_epoch"] is None and "best" not in record["checkpoints"]
    assert not (runs_root / record["id"] / "checkpoints" / "best.pt").exists()
    assert record["metrics"]["eval_split"] == "test" and record["metrics"]["test_n"] == 64
    code, out, _ = cli(monkeypatch, capsys, "ls")
    assert code == 0 and "†" in out and "for monitoring only" in out
    code, out, _ = cli(monkeypatch, capsys, "show", "t")
    assert code == 0 and "test split, for monitoring only: no validation split, no best checkpoint" in out


@pytest.mark.parametrize("value, message", [
    ("-1", "val-size must be at least 0, got -1"),
    ("5", "val-size must be 0 (no validation split) or at least 10 (one example per class), got 5"),
    ("60000", "--val-size 60000 is not smaller than the 60000 training images of mnist"),
])
def test_a_bad_val_size_is_one_line_and_no_record(runs_root, monkeypatch, capsys, value, message):
    before = everything(runs_root)
    code, _, err = cli(monkeypatch, capsys, "run", "--defense", "plain", *TINY, "--val-size", value)
    assert code == 2
    one_error_line(err, message)
    assert everything(runs_root) == before and Registry(runs_root).runs() == []


def test_early_stop_needs_a_validation_split(runs_root, monkeypatch, capsys):
    before = everything(runs_root)
    code, _, err = cli(monkeypatch, capsys, "run", "--defense", "plain", *TINY, "--val-size", "0", "--early-stop", "2")
    assert code == 2
    one_error_line(err, "--early-stop watches the validation split")
    assert everything(runs_root) == before


# -- best.pt on a crafted run ---------------------------------------------------------------------
def _crafted_evaluation(monkeypatch, robust: list[float]):
    """The per-epoch evaluation returns these validation PGD accuracies, one per epoch (the
    training and the checkpoints stay real)."""
    import advtui.engine.train as train_module

    sequence = iter(robust)

    def evaluate(model, split, eps, steps, step_size, limit, batch_size, split_name="val"):
        return {f"{split_name}_clean_acc": 90.0, f"{split_name}_pgd_acc": next(sequence),
                f"{split_name}_n": 1000, "eval_split": split_name}

    monkeypatch.setattr(train_module, "evaluate_clean_and_pgd", evaluate)


def _run(runs_root: Path, name: str, epochs: int, **options):
    from advtui.runner import RunPlan, execute_run

    config = build_config("plain", name=name, epochs=epochs, train_limit=100, batch_size=50, eval_limit=20,
                          device="cpu", **options)
    return execute_run(RunPlan(config), runs_root)


def test_best_pt_holds_the_epoch_of_the_best_validation_robust_accuracy(runs_root, monkeypatch):
    from advtui.engine.checkpoint import load_checkpoint

    _crafted_evaluation(monkeypatch, [10.0, 30.0, 20.0, 20.0, 20.0])
    record = _run(runs_root, "crafted", 5)
    folder = runs_root / record["id"]
    assert record["status"] == "finished" and record["best_epoch"] == 2
    assert record["checkpoints"]["best"] == "checkpoints/best.pt"
    best = load_checkpoint(folder / "checkpoints" / "best.pt")
    assert best["epoch"] == 2 and best["last_metrics"]["val_pgd_acc"] == 30.0
    assert load_checkpoint(folder / "checkpoints" / "final.pt")["epoch"] == 5
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["kind"] == "checkpoint" and e["name"] == "best.pt"] == [1, 2]
    assert [e["best_epoch"] for e in events if e["kind"] == "epoch"] == [1, 2, 2, 2, 2]
    # 20% is 10 points under the best of 30% for epochs 3, 4 and 5: the robust-overfitting alarm,
    # raised live by the training process, names the best epoch and best.pt.
    (alarm,) = [e for e in events if e["kind"] == "health"]
    assert (alarm["code"], alarm["level"], alarm["epoch"]) == ("robust-overfitting", WARNING, 3)
    assert "best.pt holds epoch 2" in alarm["message"] and "--checkpoint best" in alarm["message"]
    assert [f["code"] for f in Registry(runs_root).get_run(record["id"])["health"]] == ["robust-overfitting"]


def test_early_stop_ends_the_run_after_patience_epochs_without_a_better_one(runs_root, monkeypatch):
    from advtui.engine.checkpoint import load_checkpoint

    _crafted_evaluation(monkeypatch, [10.0, 30.0, 25.0, 28.0, 40.0, 50.0])
    record = _run(runs_root, "early", 6, early_stop=2)
    assert record["status"] == "finished" and record["epoch"] == 4 and record["best_epoch"] == 2
    assert record["stopped_early"] == {"epoch": 4, "best_epoch": 2, "patience": 2}
    folder = runs_root / record["id"]
    assert load_checkpoint(folder / "checkpoints" / "final.pt")["epoch"] == 4
    assert load_checkpoint(folder / "checkpoints" / "best.pt")["epoch"] == 2


# -- eval --checkpoint ----------------------------------------------------------------------------
@pytest.fixture
def two_runs(runs_root, monkeypatch, capsys) -> Path:
    for name in ("a", "b"):
        code, _, err = cli(monkeypatch, capsys, "run", "--defense", "plain", "--name", name, *TINY)
        assert code == 0, err
    return runs_root


def _run_id(root: Path, name: str) -> str:
    return next(r["id"] for r in Registry(root).runs() if r["name"] == name)


def test_eval_of_best_and_epoch_n_stores_which_checkpoint_each_result_came_from(two_runs, monkeypatch, capsys):
    record = Registry(two_runs).get_run(_run_id(two_runs, "a"))
    best = record["best_epoch"]
    code, out, err = cli(monkeypatch, capsys, "eval", "a", "--checkpoint", "best", "-a", "natural", "--limit", "20",
                         "--device", "cpu", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["checkpoint_kind"], report["checkpoint_epoch"]) == ("best", best)
    assert [(d["checkpoint_kind"], d["checkpoint_epoch"]) for d in report["results"]] == [("best", best)]
    code, out, err = cli(monkeypatch, capsys, "eval", "a", "--checkpoint", "epoch:2", "-a", "natural", "--limit", "20",
                         "--device", "cpu", "--json")
    assert code == 0, err
    expected = "best" if best == 2 else "final"
    assert (json.loads(out)["checkpoint_kind"], json.loads(out)["checkpoint_epoch"]) == (expected, 2)
    # show lists the stored results, in text and JSON, each with its checkpoint.
    code, out, _ = cli(monkeypatch, capsys, "show", "a", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["best_epoch"] == best
    attacks = [r for r in shown["results"] if r["kind"] == "attack"]
    # Results are keyed by the checkpoint file's hash: with the best epoch the last, the second
    # evaluation replaced the first.
    assert {(r["checkpoint_kind"], r["checkpoint_epoch"]) for r in attacks} == {("best", best), (expected, 2)}
    assert all(r["attack"] == "natural" and r["n"] == 20 and r["accuracy"] is not None for r in attacks)
    code, out, _ = cli(monkeypatch, capsys, "show", "a")
    assert code == 0 and "evaluation results:" in out and f"best (epoch {best})" in out


@pytest.mark.parametrize("choice, message", [
    ("epoch:3", "--checkpoint epoch:3: run {a} has trained 2 epochs: pass an epoch from 1 to 2"),
    ("epoch:0", "--checkpoint epoch:0: run {a} has trained 2 epochs"),
    ("epoch:two", "--checkpoint epoch:two: N must be an epoch number"),
    ("{root}/nowhere.pt", "checkpoint {root}/nowhere.pt does not exist: pass --checkpoint best, final, last or epoch:N"),
    ("{root}/{b}/checkpoints/final.pt", "--checkpoint {root}/{b}/checkpoints/final.pt is not one of run {a}'s checkpoints"),
])
def test_a_bad_checkpoint_choice_is_one_line_and_nothing_changes(two_runs, monkeypatch, capsys, choice, message):
    names = {"a": _run_id(two_runs, "a"), "b": _run_id(two_runs, "b"), "root": str(two_runs)}
    before = everything(two_runs)
    code, out, err = cli(monkeypatch, capsys, "eval", "a", "--checkpoint", choice.format(**names), "-a", "natural",
                         "--limit", "20", "--device", "cpu")
    assert code == 2 and out == ""
    one_error_line(err, message.format(**names))
    assert everything(two_runs) == before


def test_a_missing_best_checkpoint_is_refused(two_runs, monkeypatch, capsys):
    run_id = _run_id(two_runs, "a")
    (two_runs / run_id / "checkpoints" / "best.pt").unlink()
    before = everything(two_runs)
    code, _, err = cli(monkeypatch, capsys, "eval", "a", "--checkpoint", "best", "-a", "natural", "--device", "cpu")
    assert code == 2
    one_error_line(err, f"run {run_id}'s best checkpoint", "does not exist: it keeps final (epoch 2), last (epoch 2)")
    assert everything(two_runs) == before


def test_epoch_n_that_no_kept_checkpoint_holds_names_the_kept_ones(runs_root, monkeypatch, capsys):
    _crafted_evaluation(monkeypatch, [10.0, 30.0, 20.0])
    run_id = _run(runs_root, "kept", 3)["id"]
    before = everything(runs_root)
    code, _, err = cli(monkeypatch, capsys, "eval", run_id, "--checkpoint", "epoch:1", "-a", "natural", "--device", "cpu")
    assert code == 2
    one_error_line(err, f"--checkpoint epoch:1: run {run_id} keeps no checkpoint of epoch 1, only best (epoch 2), "
                        "final (epoch 3), last (epoch 3)")
    assert everything(runs_root) == before


# -- the alarms, on crafted streams ----------------------------------------------------------------
CONFIG = {"defense": "rnn-adv", "lr": 0.01, "eps": 0.3, "rnn_lr": 0.01, "rnn_grad_input": "sign", "step_size": None}


def start(**config) -> dict:
    return {"kind": "start", "config": {**CONFIG, **config}, "epoch": 0, "batch": 0}


def val_epoch(epoch: int, robust: float, train_acc: float = 50.0, clean: float = 90.0, n: int = 1000) -> dict:
    return {"kind": "epoch", "epoch": epoch, "train_loss": 0.5, "train_acc": train_acc, "val_clean_acc": clean,
            "val_pgd_acc": robust, "val_n": n, "eval_split": "val"}


def val_inner(epoch: int, learned_final: float, pgd_final: float, batch: int = 0) -> dict:
    return {"kind": "val_inner", "epoch": epoch, "batch": batch, "maximizer": "rnn", "losses": [0.1, learned_final],
            "pgd": [0.1, pgd_final]}


def healthy(epochs: int = 8) -> list[dict]:
    """Validation robust accuracy rising with noise, the training attack's accuracy rising, and
    the learned optimizer ahead of PGD on held-out batches."""
    events = [start()]
    for e in range(epochs):
        events += [val_inner(e, 1.3, 1.2, b) for b in range(4)]
        events.append(val_epoch(e + 1, 30.0 + 3 * e - (2.0 if e % 2 else 0.0), train_acc=40.0 + 2 * e))
    return events


def test_the_healthy_stream_raises_no_alarm():
    assert replay(healthy()).findings == []


def test_robust_overfitting_names_the_best_epoch_and_clears_when_it_recovers():
    events = [start(), val_epoch(1, 40.0), val_epoch(2, 50.0), val_epoch(3, 45.0), val_epoch(4, 45.0)]
    assert replay(events).findings == []  # two epochs below: not yet
    monitor = replay([*events, val_epoch(5, 44.0)])
    (finding,) = monitor.findings
    assert (finding.code, finding.level, finding.epoch) == ("robust-overfitting", WARNING, 3)
    assert finding.message.startswith("robust overfitting since epoch 3: val PGD accuracy 44.0% has stayed more "
                                      "than 3.2 points below its best, 50.0% at epoch 2, for 3 epochs")
    assert "best.pt holds epoch 2" in finding.message and "advtui eval RUN --checkpoint best" in finding.message
    (cleared,) = monitor.feed(val_epoch(6, 48.0))  # within the margin again
    assert cleared.cleared == 6 and monitor.active == []


def test_robust_overfitting_margin_grows_with_the_noise_of_a_small_validation_split():
    # On 25 examples one example is 4 points: 40% -> 30% is within two standard errors (19.6).
    small = [start(), val_epoch(1, 40.0, n=25), *[val_epoch(e, 30.0, n=25) for e in (2, 3, 4, 5)]]
    assert replay(small).findings == []
    large = [start(), val_epoch(1, 40.0), *[val_epoch(e, 30.0) for e in (2, 3, 4, 5)]]
    assert [f.code for f in replay(large).findings] == ["robust-overfitting"]


def test_robust_overfitting_on_test_numbers_says_no_best_checkpoint_is_kept():
    def test_epoch(epoch, robust):
        return {"kind": "epoch", "epoch": epoch, "train_loss": 0.5, "test_clean_acc": 90.0, "test_pgd_acc": robust,
                "test_n": 1000, "eval_split": "test"}

    (finding,) = replay([start(), test_epoch(1, 50.0), *[test_epoch(e, 40.0) for e in (2, 3, 4)]]).findings
    assert "test (for monitoring only) PGD accuracy" in finding.message and "best.pt" not in finding.message
    assert "train with a validation split" in finding.message


def test_catastrophic_overfitting_fires_on_a_collapse_while_the_training_attack_holds():
    events = [start(), val_epoch(1, 45.0, train_acc=50.0), val_epoch(2, 48.0, train_acc=55.0),
              val_epoch(3, 5.0, train_acc=80.0)]
    monitor = replay(events)
    (finding,) = monitor.findings
    assert (finding.code, finding.level, finding.epoch) == ("catastrophic-overfitting", WARNING, 3)
    assert finding.message.startswith("catastrophic overfitting in epoch 3: val PGD accuracy fell from 48.0% to "
                                      "5.0% while the training attack's accuracy stayed at 80.0%")
    assert "best.pt holds epoch 2 (48.0%)" in finding.message and "--inner-steps" in finding.message
    assert monitor.feed(val_epoch(4, 4.0, train_acc=85.0)) == []  # the same collapse: said once
    (cleared,) = monitor.feed(val_epoch(5, 47.0, train_acc=60.0))
    assert cleared.code == "catastrophic-overfitting" and cleared.cleared == 5


def test_a_drop_with_the_training_attack_falling_too_or_under_20_points_is_not_catastrophic():
    both_fall = [start(), val_epoch(1, 48.0, train_acc=60.0), val_epoch(2, 10.0, train_acc=20.0)]
    assert replay(both_fall).findings == []  # the whole model got worse, not only against PGD
    small_drop = [start(), val_epoch(1, 48.0, train_acc=60.0), val_epoch(2, 30.0, train_acc=70.0)]
    assert replay(small_drop).findings == []
    plain = [start(defense="plain"), val_epoch(1, 48.0, train_acc=60.0), val_epoch(2, 0.0, train_acc=99.0)]
    assert replay(plain).findings == []  # plain trains on no attack


def test_learned_maximizer_behind_pgd_on_held_out_batches():
    events = [start(), *[val_inner(0, 1.0, 1.3, b) for b in range(4)], val_epoch(1, 40.0)]
    monitor = replay(events)
    (finding,) = monitor.findings
    assert (finding.code, finding.level, finding.epoch) == ("rnn-behind-pgd-val", WARNING, 1)
    assert "behind PGD on held-out data in epoch 1" in finding.message
    assert "all 4 validation batches (mean 1.000 vs 1.300)" in finding.message and "--rnn-lr" in finding.message
    for event in [*[val_inner(1, 1.4, 1.3, b) for b in range(4)], val_epoch(2, 41.0)]:
        new = monitor.feed(event)
    assert [(f.code, f.cleared) for f in new] == [("rnn-behind-pgd-val", 2)]


def test_behind_pgd_needs_enough_batches_and_a_real_difference():
    # One batch reading "mean 2.310 vs 2.310" was a warning; neither one batch nor a tie is.
    one_batch = [start(), val_inner(0, 2.3100, 2.3102), val_epoch(1, 40.0)]
    assert replay(one_batch).findings == []
    tie = [start(), *[val_inner(0, 2.3100, 2.3102, b) for b in range(4)], val_epoch(1, 40.0)]
    assert replay(tie).findings == []
    training_tie = [start(), *[{**val_inner(0, 2.3100, 2.3102), "kind": "inner"}] * 5, val_epoch(1, 40.0)]
    assert replay(training_tie).findings == []


def test_the_live_monitor_raises_each_alarm_once():
    monitor = HealthMonitor(CONFIG)
    raised = []
    for event in [start(), val_epoch(1, 40.0), val_epoch(2, 50.0), *[val_epoch(e, 40.0) for e in range(3, 8)]]:
        raised += monitor.feed(event)
    assert [f.code for f in raised] == ["robust-overfitting"]


def test_a_run_recorded_before_validation_splits_resumes_on_the_data_it_had(runs_root, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "run", "--defense", "plain", "--name", "old", *TINY[:-4],
                       "--epochs", "1", "--device", "cpu", "--val-size", "0", "--test-limit", "64")
    assert code == 0, err
    run_id = _run_id(runs_root, "old")
    path = runs_root / run_id / "run.json"
    stored = json.loads(path.read_text())
    for record in stored["runs"].values():  # as an earlier version wrote it: no val_size
        del record["config"]["val_size"]
    path.write_text(json.dumps(stored))
    code, out, err = cli(monkeypatch, capsys, "run", "--resume", run_id, "--epochs", "2")
    assert code == 0, err
    record = Registry(runs_root).get_run(run_id)
    assert record["epoch"] == 2 and record["config"]["val_size"] == 0 and record["metrics"]["eval_split"] == "test"
    assert not (runs_root / run_id / "validation.json").exists() and "best" not in record["checkpoints"]
