"""Pilot tests of the dashboard's actions.

The first group runs on the fixed runs directory (no processes). The second drives real jobs:
the dashboard's own scheduler launches ``advtui run`` / ``advtui eval`` subprocesses on tiny
MNIST slices, exactly as a user's dashboard would.
"""

from __future__ import annotations

import json

import pytest
from textual.widgets import Button, Input, Label, Log, Select, SelectionList

from advtui.core.config import build_config
from advtui.store.results import results_for_run
from advtui.jobs.launcher import stop_process
from advtui.jobs.queue import list_jobs
from advtui.store.registry import Registry
from advtui.tui.app import AdvtuiApp
from advtui.tui.screens.compare import CompareScreen
from advtui.tui.screens.confirm import ConfirmScreen
from advtui.tui.screens.detail import DetailScreen
from advtui.tui.screens.evaluate import EvaluateScreen
from advtui.tui.screens.log import LogScreen
from advtui.tui.screens.main import MainScreen
from advtui.tui.screens.new_run import NewRunScreen
from tui_support import SIZE, fixed_app, pilot_test, select_run, static_text, wait_until

TINY = {"train_limit": "200", "test_limit": "100", "eval_limit": "50", "epochs": "1"}


def status_cell(app, run_id: str) -> str:
    table = app.screen_stack[0].table
    if run_id not in table.row_keys:
        return ""
    return table.get_cell(run_id, "status").plain


async def ready(pilot) -> MainScreen:
    screen = pilot.app.screen
    await wait_until(pilot, lambda: screen.loaded, what="the runs table")
    return screen


# -- on fixed data ------------------------------------------------------------------------------
@pilot_test
async def test_filter_sort_marks_and_groups(fixed_runs):
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        table = screen.table
        assert table.row_keys[:3] == ["a1b2c3", "group:adv", "b2c3d4"]
        await pilot.press("slash", *"defense:rnn", "enter")
        assert table.row_keys == ["d4e5f6", "e5f6a7", "0a1b2c"]
        assert "filter: defense:rnn" in str(table.border_title)
        await pilot.press("escape")
        assert len(table.row_keys) == 8
        # s sorts by the next column, S reverses; the header shows the direction.
        await pilot.press("s")
        assert table.sort_column == "id" and table.row_keys[0] == "0a1b2c"
        await pilot.press("S")
        assert table.sort_reverse and table.row_keys[0] == "f6a7b8"
        assert str(table.columns["id"].label) == "id▼"
        table.set_sort(None, False)
        await pilot.pause()
        # Enter on a group header folds its seeds away and back.
        await select_run(pilot, "group:adv")
        await pilot.press("enter")
        assert "b2c3d4" not in table.row_keys and "group:adv" in table.row_keys
        await pilot.press("enter")
        assert "b2c3d4" in table.row_keys
        # Space on a group marks all its runs; on a run it toggles that run.
        await select_run(pilot, "group:adv")
        await pilot.press("space")
        assert screen.marked == {"b2c3d4", "c3d4e5"}
        await select_run(pilot, "d4e5f6")
        await pilot.press("space")
        assert screen.marked == {"b2c3d4", "c3d4e5", "d4e5f6"}
        assert table.get_cell("d4e5f6", "mark").plain == "●"


@pilot_test
async def test_log_follows_the_events_stream_and_the_log_file(fixed_runs):
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await select_run(pilot, "e5f6a7")
        await pilot.press("l")
        log_screen = await wait_until(pilot, lambda: isinstance(app.screen, LogScreen) and app.screen, what="the log")
        log = log_screen.query_one(Log)
        await wait_until(pilot, lambda: log.line_count > 10, what="the events as log lines")
        before = log.line_count
        with open(fixed_runs / "e5f6a7" / "events.jsonl", "a") as f:  # the run goes on
            f.write(json.dumps({"kind": "step", "time": 0, "epoch": 1, "batch": 20, "batches": 32, "step": 52,
                                "loss": 0.6123, "train_acc": 80.0, "images_per_s": 700.0, "lr": 0.05}) + "\n")
        await wait_until(pilot, lambda: log.line_count == before + 1, what="the new event in the log")
        assert "loss 0.6123" in log.lines[-1]
        await pilot.press("escape")
        # A launched run writes log.txt: the screen follows that file instead.
        (fixed_runs / "b2c3d4" / "log.txt").write_text("epoch 1/3 batch 4/32 loss 2.1\n")
        await select_run(pilot, "b2c3d4")
        await pilot.press("l")
        log_screen = await wait_until(pilot, lambda: isinstance(app.screen, LogScreen) and app.screen, what="the log")
        log = log_screen.query_one(Log)
        await wait_until(pilot, lambda: log.line_count == 1, what="the log file")
        with open(fixed_runs / "b2c3d4" / "log.txt", "a") as f:
            f.write("epoch 1/3 batch 8/32 loss 1.7\n")
        await wait_until(pilot, lambda: log.line_count == 2, what="the appended line")
        assert log.lines[-1] == "epoch 1/3 batch 8/32 loss 1.7"
        await pilot.press("s")  # the next source: this run's events stream
        await wait_until(pilot, lambda: log_screen.source.name == "events.jsonl" and log.line_count > 10,
                         what="the events stream after s")


@pilot_test
async def test_detail_shows_a_failed_runs_error_and_kill_asks_first(fixed_runs):
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await select_run(pilot, "0a1b2c")
        await pilot.press("d")
        detail = await wait_until(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen.results_loaded
                                  and app.screen, what="the detail screen")
        assert "NaN inner loss" in static_text(detail.query_one("#detail-run"))
        await pilot.press("escape")
        # k on a finished run refuses; on the queued one it asks, and "n" leaves it alone.
        await select_run(pilot, "a1b2c3")
        await pilot.press("k")
        assert isinstance(app.screen, MainScreen)
        await select_run(pilot, "f6a7b8")
        await pilot.press("k")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert isinstance(app.screen, MainScreen)
        assert Registry(fixed_runs).get_run("f6a7b8")["status"] == "queued"


@pilot_test
async def test_a_health_warning_marks_the_row_and_fills_the_detail_screens_health_section(fixed_runs):
    # A fourth epoch of b2c3d4 whose PGD accuracy is above its clean accuracy, as the training
    # process would have written it: the epoch in the stream, the warning in the record.
    with open(fixed_runs / "b2c3d4" / "events.jsonl", "a") as f:
        f.write(json.dumps({"kind": "epoch", "time": 0, "epoch": 4, "train_loss": 0.3, "test_clean_acc": 40.0,
                            "test_pgd_acc": 55.0, "test_n": 200}) + "\n")
    finding = {"code": "robust-above-natural", "level": "warning", "epoch": 4, "cleared": None,
               "message": "robust accuracy above natural at epoch 4 (PGD 55.0% > clean 40.0%): ..."}
    Registry(fixed_runs).update_run("b2c3d4", health=[finding])
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        assert screen.table.get_cell("b2c3d4", "health").plain == "!"
        assert screen.table.get_cell("c3d4e5", "health") == " "
        await select_run(pilot, "b2c3d4")
        assert "! 1 health finding (d: details)" in static_text(screen.query_one("#caption"))
        await pilot.press("d")
        detail = await wait_until(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen.results_loaded
                                  and app.screen, what="the detail screen")
        text = static_text(detail.query_one("#detail-run"))
        assert "health" in text and "robust accuracy above natural at epoch 4 (PGD 55.0% > clean 40.0%)" in text
        assert "pgd-100" in text  # the replayed check's own message says what to try


@pilot_test
async def test_new_run_form_shows_errors_where_they_are(fixed_runs):
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await wait_until(pilot, lambda: screen.side_loaded, what="the GPU panel's first sample")
        await pilot.press("n")
        form = await wait_until(pilot, lambda: isinstance(app.screen, NewRunScreen) and app.screen, what="the form")
        form.query_one("#eps", Input).value = "2"
        form.query_one("#seeds", Input).value = "0,x"
        form.query_one("#epochs", Input).value = "three"
        await pilot.pause()
        assert "not a whole number" in str(form.query_one("#epochs-error", Label).render())
        form.query_one("#epochs", Input).value = "3"
        await pilot.pause()
        assert "eps must be in (0, 1]" in str(form.query_one("#eps-error", Label).render())
        assert form.query_one("#eps-error", Label).display
        assert "seeds must be integers" in str(form.query_one("#seeds-error", Label).render())
        assert form.query_one("#submit", Button).disabled
        form.query_one("#eps", Input).value = "8/255"
        form.query_one("#seeds", Input).value = "0-2"
        form.query_one("#auto_eval", Input).value = "natural,deepfool-10"
        await wait_until(pilot, lambda: "unknown attack" in str(form.query_one("#auto_eval-error", Label).render()),
                         what="the attack spec check")
        assert not form.query_one("#eps-error", Label).display
        form.query_one("#auto_eval", Input).value = "natural,pgd-10"
        await wait_until(pilot, lambda: not form.query_one("#submit", Button).disabled, what="a valid form")
        devices = [value for _, value in form.query_one("#device", Select)._options]
        assert devices[-2:] == ["cuda:0", "cuda:1"]  # one entry per GPU the panel found
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)
        assert len(Registry(fixed_runs).runs()) == 7  # cancelled: nothing queued


@pilot_test
async def test_palette_offers_the_actions_and_q_quits(fixed_runs):
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        titles = {command.title for command in app.get_system_commands(screen)}
        assert {"New run", "Evaluate", "Compare marked runs", "Run detail", "Run log", "Kill run",
                "Resume run", "Filter runs"} <= titles
        await pilot.press("ctrl+p", *"run detail")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, DetailScreen), what="the detail screen from the palette")
        await pilot.press("escape")
        await pilot.press("q")
        await wait_until(pilot, lambda: app.return_code is not None, what="the app to exit")
    assert app.return_code == 0


# -- real jobs ------------------------------------------------------------------------------------
@pytest.fixture
def stop_leftovers():
    """Whatever a failing test left running is stopped (launched runs outlive the dashboard)."""
    roots = []
    yield roots.append
    for root in roots:
        for job in list_jobs(Registry(root), "running"):
            stop_process(job.get("pid"), job.get("pid_start_time"), 5.0)


@pilot_test
async def test_launch_from_the_form_reaches_finished(runs_root, stop_leftovers):
    stop_leftovers(runs_root)
    app = AdvtuiApp(runs_root, poll_interval=0.5, side_interval=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("n")
        form = await wait_until(pilot, lambda: isinstance(app.screen, NewRunScreen) and app.screen, what="the form")
        form.query_one("#defense", Select).value = "plain"
        form.query_one("#device", Select).value = "cpu"
        for key, value in TINY.items():
            form.query_one(f"#{key}", Input).value = value
        await pilot.pause()
        assert not form.errors
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), what="the form to close")
        runs = Registry(runs_root).runs()
        assert len(runs) == 1 and runs[0]["defense"] == "plain" and runs[0]["config"]["train_limit"] == 200
        run_id = runs[0]["id"]
        await wait_until(pilot, lambda: status_cell(app, run_id) == "finished", timeout=150,
                         what="the launched run to finish in the table")
        row = app.screen.table
        assert row.get_cell(run_id, "progress").plain.endswith("1/1")
        epochs = [e for e in _events(runs_root / run_id) if e["kind"] == "epoch"]
        # trained, then evaluated on its 20 validation images (a tenth of --train-limit 200)
        assert len(epochs) == 1 and epochs[0]["val_n"] == 20
        assert row.get_cell(run_id, "clean").plain == f"{epochs[0]['val_clean_acc']:.1f}"
        assert (runs_root / run_id / "log.txt").exists()


@pilot_test
async def test_kill_and_resume_from_the_keyboard(runs_root, stop_leftovers):
    stop_leftovers(runs_root)
    app = AdvtuiApp(runs_root, poll_interval=0.5, side_interval=0.5)
    config = build_config("advtrain", epochs=2, inner_steps=2, train_limit=400, test_limit=100, eval_limit=50,
                          batch_size=50, log_every=1, compare_every=2, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        run_id = app.services.queue_training(config, None, None, None)[0]["id"]
        await select_run(pilot, run_id)
        stream = lambda: app.streams.peek(run_id)  # noqa: E731
        await wait_until(pilot, lambda: stream() and stream().last_step is not None, timeout=120,
                         what="the run to train its first batch")
        assert status_cell(app, run_id) == "running"
        await pilot.press("k")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_until(pilot, lambda: status_cell(app, run_id) == "killed", timeout=60, what="the run to be killed")
        record = Registry(runs_root).get_run(run_id)
        assert record["checkpoints"].get("last"), "a killed run keeps its checkpoint"
        stopped_at = stream().last_step["step"]
        await pilot.press("r")
        await wait_until(pilot, lambda: status_cell(app, run_id) in ("queued", "running"), timeout=30,
                         what="the run to be queued again")
        await wait_until(pilot, lambda: status_cell(app, run_id) == "finished", timeout=150,
                         what="the resumed run to finish")
        resumed = [e for e in _events(runs_root / run_id) if e["kind"] == "start"]
        assert len(resumed) == 2 and resumed[1]["resumed"] is True
        assert resumed[1]["epoch"] * 8 + resumed[1]["batch"] >= stopped_at - 1  # continued, not restarted


def _events(folder):
    with open(folder / "events.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


@pilot_test
async def test_queue_an_eval_then_compare_the_marked_runs(trained_runs, stop_leftovers):
    stop_leftovers(trained_runs)
    registry = Registry(trained_runs)
    target, learned = registry.resolve_run("advtrain"), registry.resolve_run("rnn-adv")
    app = AdvtuiApp(trained_runs, poll_interval=0.5, side_interval=0.5)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await select_run(pilot, target["id"])
        await pilot.press("e")
        form = await wait_until(pilot, lambda: isinstance(app.screen, EvaluateScreen) and app.screen, what="the checklist")
        await wait_until(pilot, lambda: not form.query_one("#submit", Button).disabled, timeout=60,
                         what="the attack choices")
        attacks = form.query_one("#attacks", SelectionList)
        offered = [attacks.get_option_at_index(i).value for i in range(attacks.option_count)]
        learned_attack = f"rnn-10:{learned['id']}"
        assert learned_attack in offered  # the rnn run's learned optimizer, as an attacker
        assert set(attacks.selected) >= {"natural", "pgd-10", "pgd-100", "cw-100"}  # the paper's defaults
        attacks.deselect_all()
        for spec in ("natural", "pgd-10", learned_attack):
            attacks.select(spec)
        form.query_one("#surrogate", Select).value = learned["id"]  # black-box transfer from the rnn run
        form.query_one("#limit", Input).value = "50"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.screen is screen, what="the checklist to close")
        wanted = {"natural", "pgd-10", learned_attack, f"transfer-pgd-20:{learned['id']}", "worst-case"}
        await wait_until(pilot, lambda: wanted <= set(results_for_run(registry, target["id"])), timeout=150,
                         interval=0.5, what="the evaluation results")
        await pilot.press("d")
        detail = await wait_until(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen.results_loaded
                                  and app.screen, timeout=30, what="the detail screen")
        assert wanted <= set(detail.results)
        await pilot.press("escape")
        for run_id in (target["id"], learned["id"]):
            await select_run(pilot, run_id)
            await pilot.press("space")
        await pilot.press("c")
        compare = await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.loaded
                                   and app.screen, timeout=60, what="the compare screen")
        assert [row.key for row in compare.comparison.rows] == [target["id"], learned["id"]]
        natural = compare.comparison.cell(target["id"], "natural").value
        assert natural == results_for_run(registry, target["id"])["natural"]["accuracy"]
        table = compare.query_one("#compare-runs")
        assert table.row_count == 2 and str(table.get_cell(target["id"], "natural")).startswith(f"{natural:.2f} [")
