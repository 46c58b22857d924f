"""Pilot tests of the main screen's panels: what the dashboard says about damaged files, and
each first-hour surprise a new user met (progress of short epochs, plain runs, the queue's
columns and capacity, the attack checklist without colour, kills, resumes, filtered counts)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from rich.console import Console

from advtui.store import lifecycle
from advtui.jobs.scheduler import Scheduler, SchedulerPolicy
from advtui.store.registry import JOBS, RUNS, Registry
from advtui.tui.screens.confirm import ConfirmScreen
from advtui.tui.screens.detail import DetailScreen
from advtui.tui.screens.evaluate import Checklist, EvaluateScreen
from advtui.tui.screens.main import MainScreen
from advtui.tui.widgets.system_panel import QueuePanel
from tui_support import NOW, SIZE, T0, fixed_app, pilot_test, select_run, static_text, wait_until


def rendered(renderable) -> str:
    console = Console(width=200, record=True, file=open(os.devnull, "w"))
    console.print(renderable)
    return console.export_text()


def notifications(app) -> list[str]:
    return [n.message for n in app._notifications]


async def ready(pilot) -> MainScreen:
    screen = pilot.app.screen
    await wait_until(pilot, lambda: screen.loaded and screen.side_loaded, what="the main screen's first data")
    return screen


async def detail_of(pilot, run_id: str) -> DetailScreen:
    app = pilot.app
    await select_run(pilot, run_id)
    await pilot.press("d")
    return await wait_until(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen.results_loaded
                            and app.screen, what=f"the detail screen of {run_id}")


# -- damaged files ----------------------------------------------------------------------------------
@pilot_test
async def test_a_damaged_run_file_is_named_on_screen_and_the_others_are_listed(fixed_runs):
    (fixed_runs / "c3d4e5" / "run.json").write_bytes(os.urandom(512))
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        notice = screen.query_one("#damage")
        assert notice.display
        text = " ".join(static_text(notice).split())
        assert "damaged registry" in text and str(fixed_runs / "c3d4e5" / "run.json") in text
        assert "left untouched" in text  # the store's own message, as it wrote it
        assert "c3d4e5" not in screen.table.row_keys and "a1b2c3" in screen.table.row_keys
        assert str(screen.table.border_title).startswith("runs 6/6")


@pilot_test
async def test_a_damaged_registry_file_is_a_message_not_an_empty_table(fixed_runs):
    good = (fixed_runs / "registry.json").read_bytes()
    (fixed_runs / "registry.json").write_bytes(os.urandom(300))
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_until(pilot, lambda: app.screen.loaded and app.screen, what="the first poll")
        text = " ".join(static_text(screen.query_one("#damage")).split())
        assert str(fixed_runs / "registry.json") in text and "corrupt" in text
        assert "no runs yet" not in str(screen.table.border_subtitle)
        assert "see the message above" in str(screen.table.border_subtitle)
        # Repaired from its copy: the notice goes and the runs come back.
        (fixed_runs / "registry.json").write_bytes(good)
        await wait_until(pilot, lambda: not screen.query_one("#damage").display and len(screen.records) == 7,
                         what="the runs after the repair")


@pilot_test
async def test_damaged_lines_of_an_events_stream_are_counted_in_the_caption(fixed_runs):
    with open(fixed_runs / "d4e5f6" / "events.jsonl", "ab") as f:
        f.write(b'{"kind":"step","time":1,"epo\n\x00\x9f garbage\n[1, 2]\n')
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await select_run(pilot, "d4e5f6")
        caption = screen.query_one("#caption")
        await wait_until(pilot, lambda: "3 damaged lines skipped" in static_text(caption), what="the count")
        assert app.streams.peek("d4e5f6").epochs  # the good lines are all there


# -- issue 12's dashboard items ---------------------------------------------------------------------
@pilot_test
async def test_a_run_with_fewer_batches_than_log_every_shows_progress_while_it_runs(tmp_path, fixed_runs):
    # A real run: 8 batches an epoch, --log-every left at its default of 10.
    env = {**os.environ, "ADVTUI_RUNS": str(tmp_path / "short"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "advtui", "run", "--defense", "plain", "--epochs", "1",
                           "--train-limit", "64", "--test-limit", "20", "--eval-limit", "20", "--batch-size", "8",
                           "--device", "cpu"], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    short = Registry(tmp_path / "short").runs()[0]
    assert short["config"]["log_every"] == 10
    events = [json.loads(line) for line in (tmp_path / "short" / short["id"] / "events.jsonl").read_text().splitlines()]
    cut = next(i for i, e in enumerate(events) if e["kind"] == "step" and e["batch"] < e["batches"])
    # The same run seen mid-epoch: its stream up to the first step, its record running.
    (fixed_runs / short["id"]).mkdir()
    (fixed_runs / short["id"] / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events[:cut + 1]))
    step = events[cut]
    Registry(fixed_runs).insert(RUNS, {**short, "status": "running", "epoch": 0, "metrics": {}, "ended": None,
                                     "train_time": None, "started": NOW - 5, "created": T0 + 9000})
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await select_run(pilot, short["id"])
        bar = screen.table.get_cell(short["id"], "progress").plain[:8]
        assert bar.strip(), "no progress shown for a run in its first epoch"
        assert len(bar.rstrip()) < 8  # and not done
        caption = static_text(screen.query_one("#caption"))
        assert f"batch {step['batch']}/{step['batches']}" in caption


@pilot_test
async def test_a_plain_run_says_it_has_no_inner_maximization_and_lists_no_rnn_options(fixed_runs):
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await wait_until(pilot, lambda: screen.plots.plots, what="the plots")
        await select_run(pilot, "a1b2c3")
        inner = screen.plots.plots[0]
        await pilot.pause(0.1)
        title = rendered(inner.render())
        assert "inner loss · plain: no inner maximization" in title
        assert "no inner trajectories yet" not in title
        assert "no inner max" in static_text(screen.query_one("#caption"))
        detail = await detail_of(pilot, "a1b2c3")
        text = static_text(detail.query_one("#detail-run"))
        assert "rnn_" not in text and "beta" not in text and "eps" in text
        await pilot.press("escape")
        detail = await detail_of(pilot, "d4e5f6")  # an rnn-adv run still lists them
        assert "rnn_hidden" in static_text(detail.query_one("#detail-run"))


@pilot_test
async def test_the_queue_panel_separates_status_and_kind_and_calls_a_kill_killed(fixed_runs):
    registry = Registry(fixed_runs)
    base = {"priority": 0, "needs": "auto", "gpu_index": None, "depends_on": [], "pid": None,
            "created": T0 + 5000, "started": T0 + 5001}
    registry.insert(JOBS, {**base, "id": "j2a1b2c", "kind": "eval", "run_id": "a1b2c3", "status": "cancelled",
                           "attacks": ["pgd-10"], "ended": T0 + 5002, "error": "cancelled by `advtui queue cancel`"})
    registry.insert(JOBS, {**base, "id": "j3e5f6a", "kind": "train", "run_id": "e5f6a7", "status": "cancelled",
                           "ended": T0 + 5003, "error": "killed by user: stopped by SIGTERM"})
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        lines = static_text(screen.query_one(QueuePanel)).splitlines()
        cancelled = next(line for line in lines if line.startswith("j2a1b2c"))
        assert "cancelled eval" in cancelled and "cancelledeval" not in cancelled
        killed = next(line for line in lines if line.startswith("j3e5f6a"))
        assert "killed    train" in killed and "cancelled" not in killed.split()[1]


@pilot_test
async def test_a_killed_runs_reason_is_not_shown_as_an_error(fixed_runs):
    registry = Registry(fixed_runs)
    lifecycle.mark_killed(registry, "e5f6a7", "stopped by SIGTERM at epoch 2, batch 13")
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        detail = await detail_of(pilot, "e5f6a7")
        text = static_text(detail.query_one("#detail-run"))
        assert "stopped\nstopped by SIGTERM at epoch 2, batch 13" in text
        assert "\nerror\n" not in text
        await pilot.press("escape")
        detail = await detail_of(pilot, "0a1b2c")  # a failed run's error is still one
        assert "\nerror\n" in static_text(detail.query_one("#detail-run"))


@pilot_test
async def test_the_evaluation_checklist_tells_checked_from_unchecked_without_colour(fixed_runs):
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await select_run(pilot, "b2c3d4")
        await pilot.press("e")
        form = await wait_until(pilot, lambda: isinstance(app.screen, EvaluateScreen) and app.screen, what="the form")
        attacks = form.query_one("#attacks", Checklist)
        await wait_until(pilot, lambda: attacks.option_count > 0, what="the attacks")
        lines = {}
        for y in range(attacks.option_count):
            text = attacks.render_line(y).text
            lines[attacks.get_option_at_index(y).value] = text
        assert all(lines[v].startswith("[x] ") for v in attacks.selected)
        unchecked = [v for v in lines if v not in attacks.selected]
        assert unchecked and all(lines[v].startswith("[ ] ") for v in unchecked)
        await pilot.press("space")  # toggles the highlighted one: its box changes shape
        first = attacks.get_option_at_index(0).value
        assert attacks.render_line(0).text.startswith("[x] " if first in attacks.selected else "[ ] ")


@pilot_test
async def test_k_with_marked_runs_says_it_acts_on_the_marks(fixed_runs):
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        for run_id in ("e5f6a7", "f6a7b8", "b2c3d4"):  # running, queued, finished
            await select_run(pilot, run_id)
            await pilot.press("space")
        await select_run(pilot, "a1b2c3")  # the cursor elsewhere
        await pilot.press("k")
        confirm = await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, what="a question")
        assert confirm.question.startswith("Kill the 2 marked runs: e5f6a7")
        assert "a1b2c3" not in confirm.question
        assert "1 marked run not running or queued left alone" in confirm.detail
        await pilot.press("n")
        assert Registry(fixed_runs).get_run("f6a7b8")["status"] == "queued"


@pilot_test
async def test_resume_names_the_checkpoints_point_and_elapsed_time_carries_on(fixed_runs):
    # e5f6a7 trained for 100 s, was stopped at epoch 1 batch 3 (its checkpoint says so) ...
    folder = fixed_runs / "e5f6a7"
    start = NOW - 1000
    events = [{"kind": "start", "time": start, "epoch": 0, "batch": 0, "config": {"epochs": 3}},
              {"kind": "step", "time": start + 50, "epoch": 0, "batch": 2, "batches": 32, "step": 2, "loss": 1.0},
              {"kind": "checkpoint", "time": start + 100, "epoch": 0, "batch": 3, "name": "last.pt", "path": "x"},
              {"kind": "end", "time": start + 100, "status": "killed", "epoch": 0, "batch": 3}]
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    registry = Registry(fixed_runs)
    registry.update_run("e5f6a7", status="killed", epoch=0, started=start, ended=start + 100,
                        error="stopped by SIGTERM at epoch 1, batch 3", checkpoints={"last": "checkpoints/last.pt"})
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await select_run(pilot, "e5f6a7")
        await pilot.press("r")
        await wait_until(pilot, lambda: any("continues from epoch 1 batch 3" in m for m in notifications(app)),
                         what=f"the resume message (have {notifications(app)})")
        assert registry.get_run("e5f6a7")["status"] == "queued"
        # ... and is running again since 60 s: 100 + 60 s of training, not 60.
        with open(folder / "events.jsonl", "a") as f:
            f.write(json.dumps({"kind": "start", "time": NOW - 60, "epoch": 0, "batch": 3, "resumed": True,
                                "config": {"epochs": 3}}) + "\n")
        registry.update_run("e5f6a7", status="running", started=NOW - 60, ended=None, error=None)
        await wait_until(pilot, lambda: screen.table.get_cell("e5f6a7", "elapsed").plain.strip() == "2m40s",
                         what="the elapsed time across the resume")


@pilot_test
async def test_the_footer_counts_follow_the_filter(fixed_runs):
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        assert str(screen.table.border_subtitle) == "1 failed, 4 finished, 1 queued, 1 running"
        await pilot.press("slash", *"defense:rnn", "enter")
        assert str(screen.table.border_subtitle) == "1 failed, 1 finished, 1 running (filtered)"
        assert str(screen.table.border_title).startswith("runs 3/7")
        await pilot.press("escape")
        assert str(screen.table.border_subtitle) == "1 failed, 4 finished, 1 queued, 1 running"


@pilot_test
async def test_the_queue_header_shows_the_scheduling_workers_slots(fixed_runs):
    # A worker with 3 slots on each GPU holds the scheduler lock (this process stands in for it).
    worker = Scheduler(Registry(fixed_runs), policy=SchedulerPolicy(cpu_slots=1, slots_per_gpu=3), role="worker")
    assert worker.acquire()
    try:
        app = fixed_app(fixed_runs)  # its own policy: 1 CPU slot, 1 per GPU
        async with app.run_test(size=SIZE) as pilot:
            screen = await ready(pilot)
            panel = screen.query_one(QueuePanel)
            # Both stand-in GPUs, 3 slots each, and the worker's CPU slot.
            assert str(panel.border_title) == "queue · 0/7 slots (2 GPU×3) · 2 waiting"
            assert f"scheduled by worker pid {os.getpid()}" in static_text(panel)
    finally:
        worker.release()


# -- opening it -----------------------------------------------------------------------------------
def test_advtui_without_a_command_opens_the_dashboard_without_loading_the_command_line():
    # The command line's modules are a fifth of the first paint: `advtui` alone skips them.
    code = ("import sys\n"
            "import advtui.tui.app as tui_app\n"
            "tui_app.run_dashboard = lambda runs_dir: print('DASHBOARD', runs_dir, 'advtui.cli' in sys.modules)\n"
            "from advtui.main import main\n"
            "for args in ([], ['--runs-dir', 'elsewhere'], ['--runs-dir=there']):\n"
            "    sys.argv = ['advtui', *args]\n"
            "    main()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["DASHBOARD None False", "DASHBOARD elsewhere False", "DASHBOARD there False"]


def test_the_dashboard_schedules_through_the_executor_it_is_given(tmp_path):
    # `advtui --executor ray --address ...` hands its executor to the dashboard's services: the
    # scheduler places jobs through it (Ray's own placement is tested in tests/test_ray.py).
    from advtui.jobs.launcher import LocalExecutor
    from advtui.tui.app import AdvtuiApp

    executor = LocalExecutor()
    app = AdvtuiApp(tmp_path / "runs", executor=executor)
    assert app.services.executor is executor
    assert app.services.scheduler.executor is executor


def test_a_bad_executor_for_the_dashboard_is_one_line():
    for args in (["--executor", "nope"], ["--address", "127.0.0.1:1"]):
        out = subprocess.run([sys.executable, "-m", "advtui", *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, out
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr


@pilot_test
async def test_the_footer_lists_the_keys_and_a_click_on_one_presses_it(fixed_runs):
    from advtui.tui.widgets.footer import BindingsFooter
    from textual.widgets import Input

    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        footer = app.screen.query_one(BindingsFooter)
        line = footer.render().plain
        for shown in ("n New run", "e Eval", "k Kill", "/ Filter", "q Quit", "^p palette"):
            assert shown in line, line
        start = line.index("/ Filter")
        await pilot.click(BindingsFooter, offset=(start + 1, 0))
        await wait_until(pilot, lambda: isinstance(app.focused, Input), what="the filter input focused by the click")


# -- the 80x24 terminal, k under the cursor, the values a run trained with ------------------------
NARROW = (80, 24)


@pilot_test
async def test_at_80x24_the_footer_keeps_quit_filter_and_the_palette_and_v_cycles_one_chart(fixed_runs):
    from advtui.tui.widgets.footer import BindingsFooter

    app = fixed_app(fixed_runs)
    async with app.run_test(size=NARROW) as pilot:
        screen = await ready(pilot)
        assert screen.has_class("narrow")
        line = app.screen.query_one(BindingsFooter).render().plain
        assert len(line) <= NARROW[0]
        assert line.startswith(" q Quit  / Filter  v Chart "), line
        assert line.rstrip().endswith("^p palette"), line
        # The table keeps the columns that fit, through robust accuracy.
        table = screen.table
        assert [str(c.value) for c in table.columns] == ["mark", "id", "name", "status", "health", "progress",
                                                          "clean", "robust"]
        assert table.virtual_size.width <= NARROW[0] - 2  # inside the panel's border: no horizontal scroll
        await select_run(pilot, "d4e5f6")
        await wait_until(pilot, lambda: screen.plots.plots, what="the plots")
        inner, loss, accuracy = screen.plots.plots
        shown = lambda: [p.display and p.parent.display for p in (inner, loss, accuracy)]  # noqa: E731
        assert shown() == [True, False, False]
        assert inner.size.width >= NARROW[0] - 2  # the whole width, not a third of it
        await pilot.press("v")
        assert shown() == [False, True, False]
        await pilot.press("v")
        assert shown() == [False, False, True]
        await pilot.press("v")
        assert shown() == [True, False, False]
        # Every panel fits the screen: nothing scrolls it (the stray scrollbar of the wide layout).
        assert screen.virtual_size.height <= NARROW[1] and not screen.show_vertical_scrollbar
        await pilot.press("q")
        await wait_until(pilot, lambda: app.return_code is not None, what="q to quit")


@pilot_test
async def test_a_wide_terminal_shows_every_chart_and_column_and_hides_v(fixed_runs):
    from advtui.tui.rows import COLUMNS
    from advtui.tui.widgets.footer import BindingsFooter

    app = fixed_app(fixed_runs)
    async with app.run_test(size=NARROW) as pilot:
        screen = await ready(pilot)
        await wait_until(pilot, lambda: screen.plots.plots, what="the plots")
        await pilot.resize_terminal(*SIZE)
        await wait_until(pilot, lambda: not screen.has_class("narrow"), what="the wide layout after a resize")
        assert [str(c.value) for c in screen.table.columns] == [c.key for c in COLUMNS]
        assert all(p.display for p in screen.plots.plots)
        line = app.screen.query_one(BindingsFooter).render().plain
        assert "v Chart" not in line and line.startswith(" n New run  e Eval "), line


@pilot_test
async def test_k_acts_on_the_cursor_row_when_no_marked_run_can_be_killed(fixed_runs):
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        for run_id in ("a1b2c3", "b2c3d4"):  # finished runs marked for a compare
            await select_run(pilot, run_id)
            await pilot.press("space")
        await select_run(pilot, "e5f6a7")  # the running run
        await pilot.press("k")
        confirm = await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, what="a question")
        assert confirm.question == "Kill e5f6a7 (rnn-adv-mnist-s1)?"
        assert confirm.detail.startswith("No marked run is running or queued: the run under the cursor is meant.")
        await pilot.press("n")
        # On a finished run, with only finished runs marked, there is nothing to kill.
        await select_run(pilot, "d4e5f6")
        await pilot.press("k")
        assert isinstance(app.screen, MainScreen)
        assert "only running or queued runs can be killed" in notifications(app)
    assert Registry(fixed_runs).get_run("e5f6a7")["status"] == "running"


@pilot_test
async def test_the_detail_screen_shows_the_step_size_in_force_as_show_does(fixed_runs):
    from typer.testing import CliRunner

    from advtui.cli import app as cli

    record = Registry(fixed_runs).get_run("b2c3d4")
    assert record["config"]["step_size"] is None and record["config"]["eps"] == 0.1
    shown = CliRunner().invoke(cli, ["show", "b2c3d4", "--runs-dir", str(fixed_runs)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and "step_size=0.025" in shown.output, shown.output
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        detail = await detail_of(pilot, "b2c3d4")
        text = static_text(detail.query_one("#detail-run"))
        assert re.search(r"step_size +0\.025 ", text) and "None" not in text, text


@pilot_test
async def test_a_run_cancelled_before_it_started_reads_cancelled_not_killed(fixed_runs):
    from advtui.jobs.queue import cancel_job

    registry = Registry(fixed_runs)
    cancel_job(registry, "j0f6a7b")  # f6a7b8's train job, still queued
    stored = registry.get_run("f6a7b8")
    assert stored["status"] == "killed" and "before it started" in stored["error"]  # the store keeps its word
    before = (fixed_runs / "f6a7b8" / "run.json").read_bytes()
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        assert screen.table.get_cell("f6a7b8", "status").plain == "cancelled"
        assert str(screen.table.border_subtitle) == "1 cancelled, 1 failed, 4 finished, 1 running"
        await pilot.press("slash", *"status:cancelled", "enter")
        assert screen.table.row_keys == ["f6a7b8"]
        await pilot.press("escape")
        await select_run(pilot, "f6a7b8")
        assert " cancelled " in static_text(screen.query_one("#caption"))
        detail = await detail_of(pilot, "f6a7b8")
        text = static_text(detail.query_one("#detail-run"))
        assert text.startswith("f6a7b8  trades-mnist-s0  cancelled") and "killed" not in text.split("\n")[0]
        assert "cancelled by user before it started" in text
    assert (fixed_runs / "f6a7b8" / "run.json").read_bytes() == before  # display only


@pilot_test
async def test_the_queue_panel_counts_cpu_slots_and_the_threads_each_job_gets(fixed_runs):
    from advtui.jobs.monitor import GpuSampler
    from advtui.jobs.scheduler import describe_slot, threads_per_job
    from advtui.tui.app import AdvtuiApp
    from advtui.tui.services import Services
    from tui_support import StandInNvml

    registry = Registry(fixed_runs)
    services = Services(registry, gpu_sampler=GpuSampler(nvml=StandInNvml([])))  # a machine without a GPU
    threads = threads_per_job(services.policy, 0)  # what the scheduler gives each job here
    app = AdvtuiApp(fixed_runs, services=services, run_scheduler=False, side_interval=3600.0, clock=lambda: NOW)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        panel = screen.query_one(QueuePanel)
        assert str(panel.border_title) == "queue · 0/1 CPU slot · 2 waiting"
        assert static_text(panel).startswith(f"each job: {threads} thread")
        # The same count the scheduler's start line and the run's device say ("cpu (N threads)").
        assert describe_slot({"slot": {"cpu": 1}}, threads) == f"CPU slot ({threads} threads)"
