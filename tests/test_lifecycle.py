"""A run's life (advtui.store.lifecycle): the moves, the races they lose on purpose, and the
moves it refuses."""

from __future__ import annotations

import os

import pytest

from advtui.core.config import build_config
from advtui.store import lifecycle
from advtui.core.process import record_alive
from advtui.store.registry import Registry


def queued(tmp_path, **options) -> tuple[Registry, dict]:
    registry = Registry(tmp_path)
    config = build_config("plain", device="cpu", epochs=2, **options).to_dict()
    return registry, lifecycle.create_queued(registry, config)


def test_a_queued_record_is_named_and_shaped_from_its_config(tmp_path):
    registry, run = queued(tmp_path, seed=3)
    stored = registry.get_run(run["id"])
    assert stored["status"] == "queued" and stored["name"] == "plain-mnist-s3"
    assert (stored["defense"], stored["dataset"], stored["model"], stored["epochs"], stored["epoch"]) == (
        "plain", "mnist", "smallcnn", 2, 0)
    assert stored["config"]["seed"] == 3 and stored["checkpoints"] == {}


def test_starting_records_this_process_and_clears_an_earlier_end(tmp_path):
    registry, run = queued(tmp_path)
    assert lifecycle.mark_killed(registry, run["id"], "killed before it started", only_from="queued")
    lifecycle.mark_running(registry, run["id"], device="cpu (1 threads)")
    stored = registry.get_run(run["id"])
    assert stored["status"] == "running" and stored["pid"] == os.getpid() and record_alive(stored)
    assert stored["error"] is None and stored["ended"] is None and stored["device"] == "cpu (1 threads)"
    lifecycle.mark_finished(registry, run["id"], train_time=5.0)
    stored = registry.get_run(run["id"])
    assert stored["status"] == "finished" and stored["ended"] >= stored["started"] and stored["train_time"] == 5.0


def test_a_guarded_move_loses_to_a_change_made_meanwhile(tmp_path):
    """The scheduler fails a run only if it is still running: a run that recorded its own end
    first keeps it."""
    registry, run = queued(tmp_path)
    lifecycle.mark_running(registry, run["id"])
    lifecycle.mark_finished(registry, run["id"])
    assert not lifecycle.mark_failed(registry, run["id"], "process vanished", only_from="running")
    assert registry.get_run(run["id"])["status"] == "finished"
    assert not lifecycle.record_launch(registry, run["id"], 1, 0.0, "host")  # only a queued run shows a launch pid
    assert registry.get_run(run["id"]).get("pid") == os.getpid()


def test_moves_the_life_does_not_have_are_refused(tmp_path):
    registry, run = queued(tmp_path)
    with pytest.raises(ValueError, match="from finished to killed"):
        lifecycle.mark_killed(registry, run["id"], "no", only_from="finished")
    assert registry.get_run(run["id"])["status"] == "queued"


def test_queued_again_clears_the_end_and_keeps_the_progress(tmp_path):
    registry, run = queued(tmp_path)
    lifecycle.mark_running(registry, run["id"])
    registry.update_run(run["id"], epoch=1)
    lifecycle.mark_failed(registry, run["id"], "RuntimeError: boom")
    lifecycle.mark_queued_again(registry, run["id"], epochs=4)
    stored = registry.get_run(run["id"])
    assert (stored["status"], stored["error"], stored["ended"], stored["epoch"], stored["epochs"]) == (
        "queued", None, None, 1, 4)
