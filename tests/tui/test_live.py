"""The dashboard's model: incremental folding of events streams, downsampling, table rows."""

from __future__ import annotations

import json

import pytest

from advtui.core.events import EventWriter
from advtui.tui.live import RunStream, StreamSet, minmax_downsample
from advtui.core.format import error_summary
from advtui.tui.rows import RunRow, arrange, matches, progress_bar, run_row


def test_minmax_downsample_keeps_every_buckets_extremes():
    xs = list(range(10_000))
    ys = [0.0] * 10_000
    ys[1234], ys[8765] = 50.0, -7.0  # spikes a plain stride would skip
    out_x, out_y = minmax_downsample(xs, ys, 200)
    assert len(out_x) <= 200
    assert 50.0 in out_y and -7.0 in out_y
    assert out_x == sorted(out_x)  # still in order, drawable as a line
    assert minmax_downsample([1, 2, 3], [3, 2, 1], 200) == ([1, 2, 3], [3, 2, 1])


def test_run_stream_reads_only_new_events_and_folds_them(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path)
    stream = RunStream(tmp_path)
    assert stream.poll() is False  # nothing yet
    writer.emit("start", config={"epochs": 2}, epoch=0, batch=0)
    writer.emit("inner", epoch=0, batch=0, step=1, maximizer="rnn", losses=[1.0, 1.5, 1.8], pgd=[1.0, 1.4, 1.6])
    writer.emit("step", epoch=0, batch=5, batches=10, step=5, loss=2.0)
    assert stream.poll() is True
    assert stream.events_read == 3
    assert stream.inner_final.ys == [1.8] and stream.pgd_final.ys == [1.6]
    assert stream.progress(2) == pytest.approx(0.25)
    offset = stream._tail.offset
    # A writer caught mid-line: the partial line waits, nothing is lost or parsed twice.
    with open(path, "a") as f:
        f.write('{"kind":"epoch","time":1,"epoch":1,"test_clean_acc":90.0,')
    assert stream.poll() is False
    with open(path, "a") as f:
        f.write('"test_pgd_acc":40.0}\n')
    assert stream.poll() is True
    assert stream._tail.offset > offset and stream.events_read == 4
    assert stream.latest_epoch()["test_pgd_acc"] == 40.0
    assert stream.progress(2) == pytest.approx(0.5)
    writer.emit("step", epoch=1, batch=10, batches=10, step=20, loss=float("nan"))  # NaN is stored as null
    stream.poll()
    assert stream.outer_loss.ys == [2.0] and stream.last_step["step"] == 20
    writer.close()


def test_eta_comes_from_the_rate_since_the_latest_start(tmp_path):
    stream = RunStream(tmp_path)
    with open(tmp_path / "events.jsonl", "w") as f:
        # resumed at epoch 1 of 4 at t=1000; at t=1100 it is at epoch 2.0: 1 epoch per 100 s.
        f.write(json.dumps({"kind": "start", "time": 1000.0, "config": {"epochs": 4}, "epoch": 1, "batch": 0}) + "\n")
        f.write(json.dumps({"kind": "step", "time": 1100.0, "epoch": 1, "batch": 10, "batches": 10, "step": 20,
                            "loss": 1.0}) + "\n")
    stream.poll()
    assert stream.eta_seconds(4, now=1100.0) == pytest.approx(200.0)
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write(json.dumps({"kind": "end", "time": 1101.0, "status": "killed"}) + "\n")
    stream.poll()
    assert stream.eta_seconds(4, now=1200.0) is None


def _record(run_id, name, group=None, status="finished", robust=50.0, created=0):
    return {"id": run_id, "name": name, "group": group, "defense": "advtrain" if group else "plain",
            "dataset": "mnist", "model": "smallcnn", "status": status, "epoch": 2, "epochs": 2,
            "metrics": {"test_clean_acc": 90.0, "test_pgd_acc": robust, "train_loss": 0.5},
            "created": created, "train_time": 10.0}


def test_rows_filter_sort_and_collapsible_groups():
    rows = [run_row(_record("aaaaaa", "plain-s0", robust=1.0, created=1), None, False, now=100),
            run_row(_record("bbbbbb", "adv-s0", "adv", robust=60.0, created=2), None, True, now=100),
            run_row(_record("cccccc", "adv-s1", "adv", robust=55.0, created=3), None, False, now=100),
            run_row(_record("dddddd", "solo", "lonely", status="failed", robust=None, created=4), None, False, now=100)]
    arranged = arrange(rows, "", None, False, set())
    keys = [r.key for r in arranged]
    assert keys == ["aaaaaa", "group:adv", "bbbbbb", "cccccc", "dddddd"]  # a one-run group is a plain row
    header = arranged[1]
    assert header.cells()["robust"].plain == "55.0"  # the lowest over seeds, as the paper reports
    collapsed = arrange(rows, "", None, False, {"adv"})
    assert "bbbbbb" not in [r.key for r in collapsed]
    by_robust = arrange(rows, "", "robust", True, set())
    assert [r.key for r in by_robust][:3] == ["group:adv", "bbbbbb", "cccccc"]
    only_failed = arrange(rows, "status:fail", None, False, set())
    assert [r.run_id for r in only_failed] == ["dddddd"]
    assert matches(rows[1], "adv s0") and not matches(rows[1], "defense:plain")
    assert rows[1].cells["mark"].plain == "●"


def test_progress_bar_and_error_summary():
    assert progress_bar(0.0) == " " * 8 and progress_bar(1.0) == "█" * 8
    assert progress_bar(0.5).startswith("████") and len(progress_bar(0.51)) == 8
    assert error_summary("exit 2; last output:\nstarting\nerror: surrogate eps 0.3\n") == "error: surrogate eps 0.3"


def test_stream_set_polls_only_what_it_is_asked(tmp_path):
    for run_id in ("r1", "r2"):
        with EventWriter(tmp_path / run_id / "events.jsonl") as w:
            w.emit("step", epoch=0, batch=1, batches=2, step=1, loss=1.0)
    streams = StreamSet(tmp_path)
    assert streams.poll(["r1"]) == {"r1"}
    assert streams.peek("r2") is None
    assert streams.poll(["r1", "r2"]) == {"r2"}
    streams.forget({"r2"})
    assert streams.peek("r1") is None


def test_run_row_uses_the_live_stream_for_running_runs(tmp_path):
    with EventWriter(tmp_path / "events.jsonl") as w:
        w.emit("start", config={"epochs": 4}, epoch=0, batch=0)
        w.emit("step", epoch=1, batch=5, batches=10, step=15, loss=0.75)
    stream = RunStream(tmp_path)
    stream.poll()
    record = _record("eeeeee", "live", status="running")
    record.update(epoch=1, epochs=4, started=stream.start["time"])
    row = run_row(record, stream, False, now=stream.start["time"] + 30)
    assert row.cells["loss"].plain == "0.750"
    assert row.sort["progress"] == pytest.approx(1.5 / 4)
    assert row.cells["progress"].plain.endswith("1/4")
    assert row.cells["elapsed"].plain == "30s"
    assert isinstance(row, RunRow)
