"""The executors table (jobs/executors.py): a new executor is its module and one row; the scheduler,
the CLI and the dashboard find everything they need about it through the row, never by its name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from advtui.core.config import build_config
from advtui.core.errors import ConfigError
from advtui.jobs import executors
from advtui.jobs.executors import (
    EXECUTORS, ExecutorKind, build_executor, check_runs_dir_shared, cluster_gpu_sampler, executor_help,
    executor_of_job, shares_executors,
)
from advtui.jobs.launcher import LaunchSpec, LocalExecutor, ProcessHandle
from advtui.jobs.queue import queue_train, resolve_job
from advtui.jobs.scheduler import Scheduler, describe_slot, launch_env
from advtui.store.registry import Registry


class FakeSlots:
    """A cluster that always has room: each job gets one CPU of it."""

    def pick(self, job: dict) -> tuple[dict | None, str | None]:
        return {"fake": {"cpus": 1.0, "gpus": 0.0}}, None

    def take(self, slot: dict) -> None:
        pass

    def threads(self) -> int:
        return 3


class FakeExecutor(LocalExecutor):
    """A pretend cluster that places its own jobs; it runs a trivial process here instead of the job."""

    name = "fake"
    title = "Fake"
    places_jobs = True

    def __init__(self, address: str | None = None) -> None:
        super().__init__()
        self.address = address
        self.specs: list[LaunchSpec] = []

    def cluster_slots(self, running_jobs: list[dict]) -> FakeSlots:
        return FakeSlots()

    def start(self, spec: LaunchSpec) -> ProcessHandle:
        self.specs.append(spec)
        handle = super().start(LaunchSpec([sys.executable, "-c", "pass"], spec.log_path))
        handle.executor, handle.placement = self.name, {"node": "n7"}
        return handle


class FakeSampler:
    def __init__(self, executor: Any, registry: Any) -> None:
        self.executor, self.registry = executor, registry


FAKE = ExecutorKind(
    lambda address, gpus, cpus: FakeExecutor(address), summary="a pretend cluster", gpus_summary="pretend GPUs",
    takes_address=True, address_help="Pretend cluster HOST:PORT", takes_shares=True,
    reattach=lambda job: FakeExecutor(job.get("fake_address")),
    describe_slot=lambda job, threads: f"Fake node {job.get('node')} ({threads} threads)",
    where=lambda job: f"fake {job.get('node')}",
    gpu_sampler=FakeSampler, check_shared_runs=lambda executor, root: ["n7 (10.0.0.7)"],
)


@pytest.fixture
def fake_row(monkeypatch):
    monkeypatch.setitem(EXECUTORS, "fake", FAKE)
    return FAKE


def test_a_new_row_is_accepted_by_executor_and_listed_in_the_help_texts(fake_row):
    executor = build_executor("fake", "head:1", 0.5, 2.0)
    assert isinstance(executor, FakeExecutor) and executor.address == "head:1"
    assert executor_help() == "local (processes here), ray (a Ray cluster) or fake (a pretend cluster)"
    assert executor_help(gpus=True).endswith("or fake (pretend GPUs)")
    assert shares_executors() == "ray or fake"
    assert "Pretend cluster HOST:PORT, with --executor fake" in executors.address_help()
    with pytest.raises(ConfigError, match="--executor must be local or ray or fake, got 'nope'"):
        build_executor("nope")
    with pytest.raises(ConfigError, match="--address is for --executor ray or fake"):
        build_executor("local", "head:1")

    # The dashboard's options are built from the table when the program is.
    import typer

    from advtui.main import _build_app

    command = typer.main.get_command(_build_app())
    helps = {p.name: p.help for p in command.params}
    assert helps["executor_name"] == ("Where the dashboard runs queued jobs: local (processes here), "
                                      "ray (a Ray cluster) or fake (a pretend cluster).")
    assert "with --executor fake" in helps["address"] and "--executor ray or fake" in helps["gpus_per_job"]


def test_the_existing_rows_keep_their_help_texts():
    assert executor_help() == "local (processes here) or ray (a Ray cluster)"
    assert executor_help(gpus=True) == "local (this machine's GPUs) or ray (every node of a Ray cluster)"


def test_a_job_it_placed_is_described_and_reached_through_its_row(fake_row, tmp_path):
    from advtui.cli.jobs import _where

    job = {"id": "j1", "executor": "fake", "slot": {"fake": {"cpus": 1.0}}, "node": "n7", "fake_address": "h:2"}
    assert describe_slot(job, 4) == "Fake node n7 (4 threads)"
    assert _where(job) == "fake n7"
    assert _where({**job, "slot": {}, "needs": "gpu"}) == "gpu"  # not started: what it needs
    reached = executor_of_job(job)
    assert isinstance(reached, FakeExecutor) and reached.address == "h:2"
    # the cluster's GPU sampler and its check that every node shares the runs directory
    executor = build_executor("fake")
    sampler = cluster_gpu_sampler(executor, "the registry")
    assert isinstance(sampler, FakeSampler) and sampler.executor is executor
    with pytest.raises(ConfigError, match=r"not shared with Fake node\(s\) n7 \(10.0.0.7\)"):
        check_runs_dir_shared(executor, tmp_path)
    # the local executor has neither: this machine's GPUs, nothing to check
    assert cluster_gpu_sampler(LocalExecutor(), None) is None
    check_runs_dir_shared(LocalExecutor(), tmp_path)
    # the local words, and those of a record naming an executor this program does not know
    assert describe_slot({"slot": {"gpu": 1}}, 2) == "GPU 1" and _where({"slot": {"gpu": 1}}) == "gpu 1"
    assert describe_slot({"executor": "gone", "slot": {"cpu": 1}}, 2) == "CPU slot (2 threads)"


def test_the_scheduler_places_a_job_through_a_new_cluster_executor(fake_row, tmp_path):
    reg = Registry(tmp_path)
    queued = queue_train(reg, build_config("plain", device="cpu"))
    executor = build_executor("fake")
    messages: list[str] = []
    scheduler = Scheduler(reg, executor, on_event=lambda kind, job, message: messages.append(message))
    try:
        started = scheduler.tick()
    finally:
        scheduler.release()
    assert [j["id"] for j in started] == [queued.job["id"]]
    job = resolve_job(reg, queued.job["id"])
    assert job["executor"] == "fake" and job["slot"] == {"fake": {"cpus": 1.0, "gpus": 0.0}} and job["node"] == "n7"
    (spec,) = executor.specs
    assert spec.resources == {"cpus": 1.0, "gpus": 0.0}  # its slot's resources, found by its name
    assert "CUDA_VISIBLE_DEVICES" not in spec.env and spec.env["OMP_NUM_THREADS"] == "3"  # the cluster picks GPUs
    assert any("started on Fake node n7 (3 threads)" in m for m in messages), messages


def test_launch_env_leaves_a_placed_jobs_gpus_to_its_cluster():
    assert launch_env({"ray": {"cpus": 1, "gpus": 1}}, 2, placed=True) == {"OMP_NUM_THREADS": "2",
                                                                           "MKL_NUM_THREADS": "2"}


def test_the_local_path_never_loads_a_cluster_module(tmp_path):
    code = ("import sys; from advtui.jobs.executors import build_executor, cluster_gpu_sampler, "
            "check_runs_dir_shared; from advtui.jobs.scheduler import describe_slot; import advtui.cli.jobs as c; "
            "import advtui.tui.services; e = build_executor('local'); assert cluster_gpu_sampler(e, None) is None; "
            f"check_runs_dir_shared(e, {str(tmp_path)!r}); describe_slot({{'slot': {{'cpu': 1}}}}, 1); "
            "c._where({'slot': {'gpu': 0}}); "
            "loaded = [m for m in sys.modules if m == 'ray' or m.startswith('ray.') or m.endswith('ray_executor')]; "
            "assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert done.returncode == 0, done.stderr
