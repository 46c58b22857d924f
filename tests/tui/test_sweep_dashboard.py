"""A sweep in the dashboard: its group row (progress, best so far) and its combinations screen."""

from __future__ import annotations

from textual.widgets import DataTable

from advtui import sweep as sweeps
from advtui.cli.sweep import build_run_config, spec_from_flags, typer_options
from advtui.store import lifecycle
from advtui.jobs.queue import finish_job, jobs_of_run
from advtui.store.registry import Registry
from advtui.tui.screens.sweep import SweepScreen
from tui_support import SIZE, fixed_app, pilot_test, select_run, wait_until

# lr value -> seed -> robust accuracy (None: the run failed before its first epoch).
OUTCOMES = {"0.01": {0: 40.0, 1: 42.0}, "0.05": {0: 30.0, 1: None}}


def sweep_runs(root) -> sweeps.SweepSpec:
    registry = Registry(root)
    options = {name: None for name in typer_options().params}
    options.update({"defense": "plain", "name": "lrs"})
    spec = spec_from_flags(options, ["lr=0.01,0.05"], "0,1", 0, 0, "given", 0, None, None)
    sweeps.queue_sweep(registry, spec, sweeps.plan(spec, build_run_config))
    for state in sweeps.match_runs(registry, spec):
        robust = OUTCOMES[sweeps.value_text(state.combination.values["lr"])][state.seed]
        run_id = state.record["id"]
        (job,) = jobs_of_run(registry, run_id, kind="train")
        finish_job(registry, job, "done" if robust is not None else "failed")
        if robust is None:
            lifecycle.mark_failed(registry, run_id, "diverged")
        else:
            lifecycle.mark_finished(registry, run_id, metrics={"epoch": 1, "test_pgd_acc": robust,
                                                               "test_clean_acc": robust + 50})
    return spec


@pilot_test
async def test_sweep_group_row_and_its_combinations(tmp_path):
    root = tmp_path / "runs"
    sweep_runs(root)
    loner = lifecycle.create_queued(Registry(root), build_run_config({"defense": "plain"}).to_dict())["id"]
    app = fixed_app(root)
    async with app.run_test(size=SIZE) as pilot:
        screen = pilot.app.screen
        await wait_until(pilot, lambda: screen.loaded, what="the runs table")
        table = screen.table
        await wait_until(pilot, lambda: "group:lrs" in table.row_keys, what="the sweep's group row")
        name = table.get_cell("group:lrs", "name").plain
        assert name == "lrs sweep: 3 done 0 running 0 queued 1 failed · best c1 41.0% (n=2)"
        await select_run(pilot, "group:lrs")
        await pilot.press("w")
        sweep_screen = await wait_until(pilot, lambda: isinstance(pilot.app.screen, SweepScreen) and pilot.app.screen,
                                        what="the sweep screen")
        await wait_until(pilot, lambda: sweep_screen.loaded, what="the sweep's combinations")
        combos = sweep_screen.query_one("#sweep-combinations", DataTable)
        # Only the swept parameter (lr) among the columns, then statuses and the metrics.
        assert [str(c.label) for c in combos.columns.values()] == ["comb", "lr", "runs", "val-robust", "val-clean"]
        assert combos.row_count == 2
        first = [str(v) for v in combos.get_row_at(0)]
        assert first[:3] == ["c1", "0.01", "2 finished"] and first[3] == "41.00 (±n/a, n=2)"
        second = [str(v) for v in combos.get_row_at(1)]
        assert second[:3] == ["c2", "0.05", "1 failed 1 finished"] and second[3] == "30.00 (±n/a, n=1)"
        await pilot.press("escape")
        assert pilot.app.screen is screen
        # On a member row, w opens its sweep too; on a run outside any sweep it opens nothing.
        member = next(k for k in table.row_keys if not k.startswith("group:"))
        await select_run(pilot, member)
        await pilot.press("w")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, SweepScreen), what="the sweep screen again")
        await pilot.press("escape")
        await select_run(pilot, loner)
        await pilot.press("w")
        await pilot.pause(0.3)
        assert pilot.app.screen is screen
        assert any("not a sweep" in n.message for n in pilot.app._notifications)
