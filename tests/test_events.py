import json

from advtui.core.events import EventTail, EventWriter, read_events


def test_tail_reads_only_new_events_and_waits_for_complete_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read_new() == []
    with EventWriter(path) as w:
        w.emit("step", loss=1.0)
        w.emit("step", loss=0.5, bad=float("nan"))
    first = tail.read_new()
    assert [e["loss"] for e in first] == [1.0, 0.5]
    assert first[1]["bad"] is None  # NaN is written as null: every line stays valid JSON
    assert tail.read_new() == []
    with open(path, "a") as f:
        f.write('{"kind": "epoch", "ep')
    assert tail.read_new() == []  # a partial line is held back
    with open(path, "a") as f:
        f.write('och": 1}\n')
    assert tail.read_new() == [{"kind": "epoch", "epoch": 1}]
    assert tail.offset == path.stat().st_size


def test_read_events_filters_kinds(tmp_path):
    path = tmp_path / "e.jsonl"
    with EventWriter(path) as w:
        for k in ("start", "step", "inner", "step"):
            w.emit(k)
    assert [e["kind"] for e in read_events(path, {"step"})] == ["step", "step"]
    for line in path.read_text().splitlines():
        assert "time" in json.loads(line)
