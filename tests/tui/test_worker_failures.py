"""Pilot tests of the dashboard when its background work fails: a damaged record, a scheduling
step or a GPU sample that raises. Each failure shows one line where its data would have been,
the rest of the screen still works, and the next tick tries again."""

from __future__ import annotations

import json

from advtui.jobs.monitor import GpuSampler
from advtui.jobs.scheduler import Scheduler
from advtui.store.registry import Registry
from advtui.tui.widgets.system_panel import QueuePanel, SystemPanel
from tui_support import SIZE, fixed_app, pilot_test, static_text, wait_until

OTHER_RUNS = {"b2c3d4", "c3d4e5", "d4e5f6", "e5f6a7", "f6a7b8", "0a1b2c"}


def set_record_field(root, run_id: str, **fields) -> None:
    """Edit a run.json by hand, as a user (or a stray script) might."""
    path = root / run_id / "run.json"
    data = json.loads(path.read_text())
    (record,) = data["runs"].values()
    record.update(fields)
    path.write_text(json.dumps(data))


def text_of(widget) -> str:
    return " ".join(static_text(widget).split())


@pilot_test
async def test_one_record_with_a_wrong_type_leaves_the_other_runs_listed_and_names_itself(fixed_runs):
    set_record_field(fixed_runs, "a1b2c3", created="yesterday")
    app = fixed_app(fixed_runs, poll_interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        await wait_until(pilot, lambda: screen.loaded and screen.side_loaded, what="the first data")
        assert set(screen.records) == OTHER_RUNS
        assert "a1b2c3" not in screen.table.row_keys and "b2c3d4" in screen.table.row_keys
        notice = screen.query_one("#damage")
        assert notice.display and "a1b2c3" in text_of(notice), text_of(notice)
        # The side panels drew their sample: neither waits for ever.
        assert "reading the queue" not in text_of(screen.query_one(QueuePanel))
        assert "sampling" not in text_of(screen.query_one(SystemPanel))
        # Repaired, it is listed again and the notice goes.
        set_record_field(fixed_runs, "a1b2c3", created=1_780_000_000.0)
        await wait_until(pilot, lambda: "a1b2c3" in screen.table.row_keys, what="the repaired run listed again")
        await wait_until(pilot, lambda: not notice.display, what="the notice to go")


@pilot_test
async def test_a_listing_that_raises_still_lists_each_readable_run(fixed_runs, monkeypatch):
    def broken_listing(self):
        raise TypeError("'<' not supported between instances of 'float' and 'str'")

    monkeypatch.setattr(Registry, "runs", broken_listing)
    app = fixed_app(fixed_runs, poll_interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        await wait_until(pilot, lambda: screen.loaded, what="the runs read one by one")
        assert set(screen.records) == OTHER_RUNS | {"a1b2c3"}
        text = text_of(screen.query_one("#damage"))
        assert "listing the runs failed (TypeError: '<' not supported" in text, text


@pilot_test
async def test_a_scheduling_step_that_raises_is_shown_in_the_queue_panel_and_retried(fixed_runs, monkeypatch):
    calls = []

    def failing_tick(self):
        calls.append(1)
        raise AssertionError

    monkeypatch.setattr(Scheduler, "tick", failing_tick)
    # The scheduler runs here (it raises before it could start any job of the fixed data).
    app = fixed_app(fixed_runs, side_interval=0.2)
    app.run_scheduler = True
    async with app.run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        panel = screen.query_one(QueuePanel)
        await wait_until(pilot, lambda: "scheduling failed" in text_of(panel), what="the scheduler's error line")
        text = text_of(panel)
        assert "scheduling failed: AssertionError (at test_worker_failures.py:" in text, text
        assert "j0f6a7b" in text  # the jobs are still listed under it
        assert "sampling" not in text_of(screen.query_one(SystemPanel))  # the GPU panel drew
        await wait_until(pilot, lambda: len(calls) >= 3, what="the step tried again")
        monkeypatch.undo()  # the cause goes away: the line goes with it
        await wait_until(pilot, lambda: "scheduling failed" not in text_of(panel), what="the line to go")


@pilot_test
async def test_a_gpu_sample_that_raises_is_shown_in_the_gpu_panel_and_the_queue_still_draws(fixed_runs, monkeypatch):
    def failing_sample(self, owners=None):
        raise RuntimeError("NVML: driver/library version mismatch")

    monkeypatch.setattr(GpuSampler, "sample", failing_sample)
    app = fixed_app(fixed_runs, side_interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        system = screen.query_one(SystemPanel)
        await wait_until(pilot, lambda: "sampling failed" in text_of(system), what="the sampler's error line")
        assert "RuntimeError: NVML: driver/library version mismatch" in text_of(system)
        assert str(system.border_title) == "GPUs · sampling failed"
        queue = screen.query_one(QueuePanel)
        await wait_until(pilot, lambda: "j0f6a7b" in text_of(queue), what="the queue listed beside it")
