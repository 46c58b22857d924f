"""The dashboard's forms refuse what the command line refuses, with the same line, and queue
nothing (the checks are advtui.options and advtui.core.config, shared with `eval` and `queue`)."""

from __future__ import annotations

from textual.widgets import Button, Input, Label

from advtui.store.registry import Registry
from advtui.tui.screens.evaluate import EvaluateScreen
from store_support import store_snapshot
from tui_support import SIZE, fixed_app, pilot_test, select_run, wait_until


@pilot_test
async def test_the_evaluation_form_refuses_what_eval_refuses(fixed_runs):
    finished = next(r for r in Registry(fixed_runs).runs() if r.get("status") == "finished")
    before = store_snapshot(fixed_runs)
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.loaded, what="the runs table")
        await select_run(pilot, finished["id"])
        await pilot.press("e")
        form = await wait_until(pilot, lambda: isinstance(app.screen, EvaluateScreen) and app.screen, what="the form")
        await wait_until(pilot, lambda: not form.query_one("#submit", Button).disabled, timeout=60,
                         what="the attack choices")
        for eps, message in (("nan", "--eps must be a finite number, got nan"),
                             ("2", "--eps must be in [0, 1] (inputs are in [0, 1]), got 2")):
            form.query_one("#eps", Input).value = eps
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert str(form.query_one("#eval-error", Label).render()) == message
            assert isinstance(app.screen, EvaluateScreen)  # still open: nothing was queued
    assert store_snapshot(fixed_runs) == before
