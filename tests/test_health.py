"""Health checks on live runs: each check on crafted events streams (fast, torch-free), the
training process failing a diverged run end to end, and how ls, show and the runs table say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advtui.cli import app
from advtui.core.events import EVENTS_FILE, EventWriter
from advtui.core.health import (
    ERROR, WARNING, Finding, HealthMonitor, record_findings, replay,
)
from advtui.store.registry import RUNS, Registry
from advtui.runner import _health_monitor
from advtui.tui.rows import GroupRow, run_row

CONFIG = {"defense": "rnn-adv", "lr": 0.01, "eps": 0.3, "rnn_lr": 0.01, "rnn_grad_input": "sign",
          "chance_patience": 2}


def start(**config) -> dict:
    return {"kind": "start", "config": {**CONFIG, **config}, "epoch": 0, "batch": 0}


def step(epoch: int, batch: int, loss) -> dict:
    return {"kind": "step", "epoch": epoch, "batch": batch, "batches": 10, "loss": loss}


def inner(epoch: int, learned_final: float, pgd_final: float | None) -> dict:
    event = {"kind": "inner", "epoch": epoch, "batch": 0, "maximizer": "rnn", "losses": [0.1, learned_final]}
    if pgd_final is not None:
        event["pgd"] = [0.1, pgd_final]
    return event


def epoch_end(epoch: int, clean: float, robust: float, train_loss=0.5) -> dict:
    return {"kind": "epoch", "epoch": epoch, "train_loss": train_loss, "test_clean_acc": clean,
            "test_pgd_acc": robust}


def healthy_stream(epochs: int = 4) -> list[dict]:
    """A learning rnn-adv run: clean accuracy rising from 60%, robust below clean, and the
    learned optimizer ahead of PGD on one of the two compared batches of each epoch."""
    events = [start()]
    for e in range(epochs):
        events += [step(e, 5, 1.0 - 0.1 * e), inner(e, 1.3, 1.1), inner(e, 1.0, 1.2), step(e, 10, 0.9 - 0.1 * e)]
        events.append(epoch_end(e + 1, 60.0 + 5 * e, 30.0 + 5 * e))
    return events


def codes(findings) -> list[str]:
    return [f.code for f in findings]


# -- the checks, on crafted streams --------------------------------------------------------------
def test_a_healthy_stream_raises_nothing():
    assert replay(healthy_stream()).findings == []
    plain = [start(defense="plain"), step(0, 10, 0.4), epoch_end(1, 95.0, 0.5)]
    assert replay(plain).findings == []


@pytest.mark.parametrize("loss, said", [(None, "non-finite (nan or inf)"), (float("nan"), "nan"),
                                        (float("inf"), "inf")])
def test_a_non_finite_loss_is_an_error_with_what_to_try(loss, said):
    # None is how a NaN reads back from the stream; the training process sees the real float.
    monitor = HealthMonitor()
    monitor.feed(start(lr=0.5))
    assert monitor.feed(step(0, 20, 2.3)) == []
    (finding,) = monitor.feed(step(1, 40, loss))
    assert (finding.code, finding.level, finding.epoch) == ("nan-loss", ERROR, 2)
    assert finding.message == f"loss became {said} in epoch 2, by batch 40: lower --lr (now 0.5) or check the data"
    assert monitor.feed(step(1, 50, loss)) == []  # said once


def test_a_non_finite_train_loss_at_an_epoch_end_is_an_error_too():
    (finding,) = replay([start(), epoch_end(1, 50.0, 20.0, train_loss=None)]).findings
    assert finding.code == "nan-loss" and finding.level == ERROR and "train loss of epoch 1" in finding.message


def test_stuck_at_chance_after_the_patience_once_then_cleared():
    monitor = HealthMonitor()
    monitor.feed(start())
    assert monitor.feed(epoch_end(1, 11.3, 11.3)) == []  # one epoch at chance: patience is 2
    (finding,) = monitor.feed(epoch_end(2, 12.6, 12.6))
    assert (finding.code, finding.level, finding.epoch) == ("stuck-at-chance", WARNING, 1)
    assert finding.message.startswith("stuck at chance since epoch 1: clean accuracy 12.6%")
    assert "--init-from RUN" in finding.message and "lower --eps (now 0.3)" in finding.message
    assert monitor.feed(epoch_end(3, 10.0, 10.0)) == []  # persists: not raised again
    (cleared,) = monitor.feed(epoch_end(4, 55.0, 20.0))
    assert cleared.code == "stuck-at-chance" and cleared.cleared == 4 and not cleared.active
    assert monitor.active == [] and codes(monitor.findings) == ["stuck-at-chance"]


def test_chance_patience_comes_from_the_runs_config():
    events = [start(chance_patience=3), epoch_end(1, 10.0, 10.0), epoch_end(2, 19.9, 10.0)]
    assert replay(events).findings == []
    (finding,) = replay([*events, epoch_end(3, 10.0, 10.0)]).findings
    assert finding.epoch == 1 and "for 3 epochs" in finding.message
    # A plain run has no eps to lower: the advice fits the defense.
    (plain,) = replay([start(defense="plain"), epoch_end(1, 9.8, 0.0), epoch_end(2, 9.8, 0.0)]).findings
    assert "--eps" not in plain.message and "--lr (now 0.01)" in plain.message


def test_a_streak_broken_by_one_good_epoch_starts_over():
    events = [start(), epoch_end(1, 10.0, 5.0), epoch_end(2, 40.0, 5.0), epoch_end(3, 10.0, 5.0)]
    assert replay(events).findings == []
    (finding,) = replay([*events, epoch_end(4, 10.0, 5.0)]).findings
    assert finding.message.startswith("stuck at chance since epoch 3")


def test_learned_optimizer_behind_pgd_on_every_compared_batch_of_an_epoch():
    events = [start(), inner(0, 0.9, 1.2), inner(0, 1.0, 1.1), inner(0, 0.8, 1.0), inner(0, 0.5, None),
              epoch_end(1, 60.0, 30.0)]
    (finding,) = replay(events).findings
    assert (finding.code, finding.level, finding.epoch) == ("rnn-behind-pgd", WARNING, 1)
    assert "all 3 compared batches" in finding.message and "(mean 0.900 vs 1.100)" in finding.message
    assert "--rnn-lr (now 0.01)" in finding.message and "--init-from RUN" in finding.message
    # An rms-input run is told to try the sign input.
    (rms,) = replay([start(rnn_grad_input="rms"), *events[1:]]).findings
    assert "--rnn-grad-input sign (now rms)" in rms.message
    (generator,) = replay([start(defense="l2lda", l2lda_lr=1e-4), *events[1:]]).findings
    assert generator.message.startswith("L2LDA generator behind PGD") and "--l2lda-lr (now 0.0001)" in generator.message


def test_learned_optimizer_ahead_once_or_never_compared_is_no_warning():
    ahead_once = [start(), inner(0, 0.9, 1.2), inner(0, 1.0, 1.2), inner(0, 1.3, 1.1), epoch_end(1, 60.0, 30.0)]
    assert replay(ahead_once).findings == []
    pgd_only = [start(defense="advtrain"), inner(0, 0.9, None), epoch_end(1, 60.0, 30.0)]
    assert replay(pgd_only).findings == []
    non_finite = [start(), inner(0, float("nan"), 1.0), epoch_end(1, 60.0, 30.0)]
    assert replay(non_finite).findings == []


def test_learned_optimizer_behind_is_raised_once_and_cleared_when_it_catches_up():
    monitor = HealthMonitor(CONFIG)
    for event in (*[inner(0, 0.9, 1.2)] * 3, epoch_end(1, 60.0, 30.0)):
        new = monitor.feed(event)
    assert codes(new) == ["rnn-behind-pgd"]
    for event in (*[inner(1, 0.9, 1.2)] * 3, epoch_end(2, 61.0, 31.0)):
        assert monitor.feed(event) == []
    # An epoch without a compared batch, or with too few to tell, says nothing either way.
    assert monitor.feed(epoch_end(3, 62.0, 32.0)) == [] and codes(monitor.active) == ["rnn-behind-pgd"]
    for event in (inner(3, 1.5, 1.2), epoch_end(4, 62.0, 32.0)):
        assert monitor.feed(event) == []
    for event in [inner(4, 1.5, 1.2)] * 3:
        monitor.feed(event)
    (cleared,) = monitor.feed(epoch_end(5, 63.0, 33.0))
    assert cleared.cleared == 5 and monitor.active == []


def test_robust_above_natural_by_more_than_a_point():
    assert replay([start(), epoch_end(1, 45.0, 46.0)]).findings == []  # within a point: noise
    (finding,) = replay([start(), epoch_end(1, 45.0, 50.0)]).findings
    assert (finding.code, finding.level, finding.epoch) == ("robust-above-natural", WARNING, 1)
    assert "PGD 50.0% > clean 45.0%" in finding.message and "pgd-100" in finding.message
    assert "eval mode" in finding.message


def test_a_restart_clears_an_error_and_forgets_the_unfinished_epochs_comparisons():
    monitor = replay([start(), *[inner(0, 0.9, 1.2)] * 3, step(0, 4, None)])
    assert codes(monitor.active) == ["nan-loss"]
    (cleared,) = monitor.feed({**start(), "epoch": 0, "batch": 0})  # resumed from the start of epoch 1
    assert cleared.code == "nan-loss" and cleared.cleared == 1
    # The comparisons recorded before the restart belonged to weights that no longer exist: with
    # them, five batches behind would be a finding; without them, two are too few to tell.
    assert monitor.feed(inner(0, 0.9, 1.2)) == [] and monitor.feed(inner(0, 0.9, 1.2)) == []
    assert monitor.feed(epoch_end(1, 60.0, 30.0)) == []


def test_replay_takes_the_training_process_message_for_its_findings():
    recorded = Finding("nan-loss", ERROR, 1, "loss became nan in epoch 1, by batch 3: lower --lr (now 1e+06) "
                                                 "or check the data")
    monitor = replay([start(), step(0, 3, None), {"kind": "health", **recorded.to_dict()}])
    assert monitor.findings == [recorded]


def test_findings_round_trip_and_old_or_malformed_records_have_none():
    finding = Finding("stuck-at-chance", WARNING, 2, "stuck at chance since epoch 2: ...")
    assert Finding.from_dict(json.loads(json.dumps(finding.to_dict()))) == finding
    assert record_findings({"id": "abc"}) == []  # recorded before health checks
    assert record_findings({"health": "junk"}) == []
    assert record_findings({"health": [None, {"code": 3}, finding.to_dict()]}) == [finding]


def test_the_module_does_not_import_torch():
    proc = subprocess.run([sys.executable, "-c", "import advtui.core.health, sys; assert 'torch' not in sys.modules"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_a_resumed_run_replays_its_stream_so_warnings_are_not_raised_twice(tmp_path):
    from advtui.core.config import build_config

    path = tmp_path / EVENTS_FILE
    with EventWriter(path) as events:
        for event in [start(), epoch_end(1, 10.0, 10.0), epoch_end(2, 10.0, 10.0)]:
            events.emit(event.pop("kind"), **event)
    monitor = _health_monitor(build_config("rnn-adv"), path)
    assert codes(monitor.active) == ["stuck-at-chance"]
    assert monitor.feed(epoch_end(3, 10.0, 10.0)) == []
    assert monitor.active[0].epoch == 1  # still "since epoch 1"


# -- end to end: a diverging run fails with the reason ----------------------------------------------
def test_an_absurd_learning_rate_fails_the_run_with_the_nan_reason(runs_root):
    args = ["run", "--defense", "plain", "--lr", "1e6", "--train-limit", "200", "--test-limit", "100",
            "--eval-limit", "50", "--batch-size", "50", "--epochs", "2", "--log-every", "1", "--device", "cpu",
            "--seed", "0"]
    proc = subprocess.run([sys.executable, "-m", "advtui", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ADVTUI_RUNS": str(runs_root)})
    assert proc.returncode == 1, proc.stderr
    (record,) = Registry(runs_root).runs()
    assert record["status"] == "failed"
    # The training process saw the real float (a stream read back only has null for it).
    assert record["error"].startswith("loss became nan in epoch 1, by batch ")
    assert record["error"].endswith(": lower --lr (now 1e+06) or check the data")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: run {record['id']} failed: {record['error']}"]
    assert "Traceback" not in proc.stderr
    assert [(f["code"], f["level"]) for f in record["health"]] == [("nan-loss", ERROR)]
    events = [json.loads(line) for line in (runs_root / record["id"] / EVENTS_FILE).read_text().splitlines()]
    assert [e["kind"] for e in events[-3:]] == ["step", "health", "end"]
    assert events[-3]["loss"] is None  # written as null: JSON has no NaN
    assert events[-2]["message"] == record["error"]
    assert events[-1]["status"] == "failed" and events[-1]["error"] == record["error"]
    assert not any(e["kind"] == "epoch" for e in events)  # it stopped in epoch 1, not at its end


# -- display ---------------------------------------------------------------------------------------
STUCK = Finding("stuck-at-chance", WARNING, 1, "stuck at chance since epoch 1: clean accuracy 11.0% (chance 10%) "
                                               "for 2 epochs; check the model init")


def _crafted_runs(root: Path) -> Registry:
    """An old-style record (no health field, no stream) and a stuck run with its stream."""
    registry = Registry(root)
    base = {"dataset": "mnist", "model": "smallcnn", "epochs": 3, "epoch": 2, "created": 1.0,
            "metrics": {"test_clean_acc": 11.0, "test_pgd_acc": 9.0}}
    registry.insert(RUNS, {**base, "id": "aaa111", "name": "old", "defense": "plain", "status": "finished"})
    registry.insert(RUNS, {**base, "id": "bbb222", "name": "stuck", "defense": "advtrain", "status": "running",
                           "config": {"defense": "advtrain", "eps": 0.3}, "health": [STUCK.to_dict()]})
    with EventWriter(root / "bbb222" / EVENTS_FILE) as events:
        events.emit("start", config={"defense": "advtrain", "eps": 0.3, "chance_patience": 2}, epoch=0, batch=0)
        events.emit("epoch", epoch=1, train_loss=2.3, test_clean_acc=11.0, test_pgd_acc=9.0)
        events.emit("epoch", epoch=2, train_loss=2.3, test_clean_acc=11.0, test_pgd_acc=9.0)
    return registry


def test_ls_marks_runs_with_warnings_and_its_json_carries_them(tmp_path):
    root = tmp_path / "runs"
    _crafted_runs(root)
    result = CliRunner().invoke(app, ["ls", "--runs-dir", str(root)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if line.split()[:1] in (["aaa111"], ["bbb222"])}
    assert "!1" in rows["bbb222"] and "!" not in rows["aaa111"]
    assert "advtui show RUN" in result.output
    listed = json.loads(CliRunner().invoke(app, ["ls", "--runs-dir", str(root), "--json"]).output)
    assert {r["id"]: r.get("health") for r in listed} == {"aaa111": None, "bbb222": [STUCK.to_dict()]}


def test_show_lists_the_findings_of_the_stream_and_old_runs_still_show(tmp_path):
    root = tmp_path / "runs"
    _crafted_runs(root)
    result = CliRunner().invoke(app, ["show", "stuck", "--runs-dir", str(root)])
    assert result.exit_code == 0, result.output
    assert "health:" in result.output and "warning: stuck at chance since epoch 1" in result.output
    assert "lower --eps (now 0.3)" in result.output  # the replayed check's own message
    shown = json.loads(CliRunner().invoke(app, ["show", "stuck", "--runs-dir", str(root), "--json"]).output)
    assert [f["code"] for f in shown["health"]] == ["stuck-at-chance"] == [f["code"] for f in shown["health_history"]]
    old = CliRunner().invoke(app, ["show", "old", "--runs-dir", str(root)])
    assert old.exit_code == 0 and "health: no warnings" in old.output
    assert json.loads(CliRunner().invoke(app, ["show", "old", "--runs-dir", str(root), "--json"]).output)["health"] == []


def test_the_runs_table_marks_a_row_and_its_group():
    stuck = {"id": "bbb222", "group": "g", "status": "running", "health": [STUCK.to_dict()]}
    failed = {"id": "ccc333", "group": "g", "status": "failed",
              "health": [Finding("nan-loss", ERROR, 1, "loss became nan").to_dict()]}
    old = {"id": "aaa111", "group": "g", "status": "finished"}
    rows = {r["id"]: run_row(r, None, marked=False, now=0.0) for r in (stuck, failed, old)}
    assert rows["aaa111"].cells["health"] == " "
    assert (rows["bbb222"].cells["health"].plain, rows["bbb222"].cells["health"].style) == ("!", "bold yellow")
    assert rows["ccc333"].cells["health"].style == "bold red"
    assert rows["bbb222"].search_text["health"] == "stuck-at-chance warning"
    assert GroupRow("g", list(rows.values()), collapsed=True).cells()["health"].style == "bold red"
    assert GroupRow("g", [rows["aaa111"]], collapsed=True).cells()["health"] == " "
