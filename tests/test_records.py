"""The typed records (core.records): what they take from the store, what they give back, and
the store's checks decoding through them."""

from __future__ import annotations

import msgspec
import pytest

from advtui.core.records import EVAL_OPTION_KEYS, JobRecord, Result, RunRecord
from advtui.store.schema import _RUN_FIELD_TYPES, _record_problem, _run_problem
from advtui.tui.widgets.system_panel import job_status


def test_a_record_keeps_its_other_keys_and_gives_back_what_it_took():
    doc = {"id": "a1b2c3", "status": "running", "epoch": 2, "created": 5, "config": {"epochs": 3},
           "resumed_from": {"epoch": 1}, "note": "by hand"}
    run = RunRecord.from_dict(doc)
    assert (run.id, run.status, run.epoch, run.created) == ("a1b2c3", "running", 2, 5.0)
    assert run.extra == {"resumed_from": {"epoch": 1}, "note": "by hand"}
    assert run.to_dict() == doc and run.configured_epochs == 3
    job = JobRecord.from_dict({"id": "j000001", "eval_options": {"limit": 50}, "legacy": True})
    assert job.eval_options is not None and job.eval_options.limit == 50
    assert job.to_dict() == {"id": "j000001", "eval_options": {"limit": 50}, "legacy": True}
    assert EVAL_OPTION_KEYS == ("limit", "batch_size", "eps", "step_size", "seed")
    result = Result.from_dict({"run_id": "a1b2c3", "attack": "pgd-10", "accuracy": 91, "robust_mask": "ff"})
    assert result.accuracy == 91.0 and result.extra == {"robust_mask": "ff"}


def test_a_record_the_store_refuses_is_refused_here_too():
    with pytest.raises(msgspec.ValidationError, match="priority"):
        JobRecord.from_dict({"id": "j000001", "priority": "high"})
    assert "priority" in _record_problem(JobRecord, {"id": "j000001", "priority": "high"})
    assert _record_problem(JobRecord, {"id": "j000001", "stopped_by": "user"}) is None
    assert _record_problem(JobRecord, {"id": "j000001", "stopped_by": "cron"}) is not None
    with pytest.raises(msgspec.ValidationError):
        RunRecord.from_dict({"id": "a1b2c3", "created": "yesterday"})
    assert _run_problem({"id": "a1b2c3", "created": "yesterday"}) == "has a run whose created is str, not a number"


def test_the_run_check_covers_every_checked_field_of_the_run_record():
    assert set(_RUN_FIELD_TYPES) == {
        "status", "name", "error", "defense", "dataset", "model", "host", "group", "device", "config", "checkpoints",
        "metrics", "epoch", "epochs", "pid", "created", "started", "ended", "pid_start_time"}
    assert _RUN_FIELD_TYPES["epoch"] == ((int,), "int") and _RUN_FIELD_TYPES["ended"] == ((int, float), "a number")


@pytest.mark.parametrize("doc, shown", [
    ({"status": "cancelled", "stopped_by": "user", "error": "killed by user: stopped by SIGTERM"}, "killed"),
    ({"status": "cancelled", "stopped_by": "user", "error": None}, "killed"),
    # a job archived by an earlier version: only its error says so
    ({"status": "cancelled", "error": "killed by user: its process had already ended"}, "killed"),
    ({"status": "cancelled", "error": "cancelled by `advtui queue cancel`"}, "cancelled"),
    ({"status": "failed", "error": "killed by user: not this one"}, "failed"),
    ({}, "?"),
])
def test_a_job_stopped_by_a_kill_is_called_killed(doc, shown):
    job = JobRecord.from_dict({"id": "j000001", **doc})
    assert job_status(job) == shown
    assert job.killed_by_user == (shown == "killed")
