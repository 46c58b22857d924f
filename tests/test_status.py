"""Run and job statuses have one owner (advtui.core.status): the store validates against it, the
lifecycle moves runs along its table, and one resume rule serves the queue and the dashboard."""

from __future__ import annotations

import json

import pytest

from advtui.core.config import build_config
from advtui.core.errors import ConfigError
from advtui.core.format import STATUS_STYLE
from advtui.core.status import (
    ACTIVE_JOBS, ACTIVE_RUNS, ENDED_JOBS, ENDED_RUNS, JOB_STATUSES, JOB_TRANSITIONS, RUN_STATUSES, RUN_TRANSITIONS,
    JobStatus, RunStatus, can_resume,
)
from advtui.jobs.queue import resume
from advtui.runner import plan_resume
from advtui.store import lifecycle
from advtui.store.registry import RUN_FILE, Registry
from advtui.store.schema import ENDED_JOB_STATUSES


@pytest.mark.parametrize("statuses, transitions, active, ended", [
    (RUN_STATUSES, RUN_TRANSITIONS, ACTIVE_RUNS, ENDED_RUNS),
    (JOB_STATUSES, JOB_TRANSITIONS, ACTIVE_JOBS, ENDED_JOBS),
])
def test_every_status_has_a_row_moves_only_to_known_statuses_and_is_active_or_ended(statuses, transitions, active,
                                                                                    ended):
    assert set(transitions) == set(statuses)
    assert all(set(targets) <= set(statuses) for targets in transitions.values())
    assert sorted(active + ended) == sorted(statuses) and not set(active) & set(ended)
    assert all(type(s) is str for s in statuses + active + ended)  # records keep plain JSON strings


def test_the_lifecycle_the_store_and_the_colours_read_the_core_tables():
    assert lifecycle.TRANSITIONS is RUN_TRANSITIONS and lifecycle.ACTIVE is ACTIVE_RUNS
    assert ENDED_JOB_STATUSES is ENDED_JOBS
    assert set(RUN_STATUSES) | set(JOB_STATUSES) == set(STATUS_STYLE)
    assert lifecycle.KILLED == RunStatus.KILLED == "killed" and JobStatus.CANCELLED == "cancelled"


def test_a_finished_run_resumes_only_to_train_more_epochs():
    assert [s for s in RUN_STATUSES if not can_resume(s)] == ["finished"]
    assert can_resume("finished", more_epochs=True) and can_resume("killed") and can_resume("failed")


@pytest.mark.parametrize("resume_it", [
    lambda registry, run_id: resume(registry, run_id),  # `advtui resume`, the dashboard's r
    lambda registry, run_id: plan_resume(registry, run_id, {}),  # `advtui run --resume`
])
def test_resuming_a_finished_run_without_more_epochs_is_refused_and_writes_nothing(tmp_path, resume_it):
    registry = Registry(tmp_path)
    run = lifecycle.create_queued(registry, build_config("plain", device="cpu", epochs=1).to_dict())
    lifecycle.mark_running(registry, run["id"], device="cpu")
    lifecycle.mark_finished(registry, run["id"], train_time=1.0)
    before = (tmp_path / run["id"] / RUN_FILE).read_bytes()
    with pytest.raises(ConfigError, match="already finished: pass --epochs N"):
        resume_it(registry, run["id"])
    assert (tmp_path / run["id"] / RUN_FILE).read_bytes() == before
    assert registry.get_run(run["id"])["status"] == "finished"


def test_a_status_outside_the_table_hides_the_run_with_one_line(tmp_path):
    registry = Registry(tmp_path)
    run = lifecycle.create_queued(registry, build_config("plain", device="cpu", epochs=1).to_dict())
    path = tmp_path / run["id"] / RUN_FILE
    data = json.loads(path.read_text())
    next(iter(data["runs"].values()))["status"] = "paused"
    path.write_text(json.dumps(data))
    assert registry.runs() == []
    assert len(registry.damaged) == 1 and "'paused' is none of queued, running, finished, failed, killed" in \
        registry.damaged[0]
