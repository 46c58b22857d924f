"""The dashboard's compare screen offers the choices of ``advtui compare``: --diff (f), --at (a)
and --baseline (b), on the fixed runs of tui_support."""

from __future__ import annotations

import pytest
from tui_support import SIZE, fixed_app, pilot_test, select_run, wait_until

from advtui.tui.screens.compare import CompareScreen

RUNS = ("a1b2c3", "b2c3d4", "c3d4e5", "d4e5f6")


async def _open_compare(pilot) -> CompareScreen:
    screen = pilot.app.screen
    await wait_until(pilot, lambda: screen.loaded and screen.side_loaded, what="the main screen's first data")
    for run_id in RUNS:
        await select_run(pilot, run_id)
        await pilot.press("space")
    await pilot.press("c")
    return await wait_until(pilot, lambda: isinstance(pilot.app.screen, CompareScreen) and pilot.app.screen.loaded
                            and pilot.app.screen, what="the compare screen", timeout=60)


async def _reloaded(pilot, compare: CompareScreen, key: str) -> None:
    compare.loaded = False
    await pilot.press(key)
    await wait_until(pilot, lambda: compare.loaded, what=f"the compare screen after {key!r}", timeout=60)


@pilot_test
async def test_diff_at_and_baseline_keys_change_the_table(fixed_runs):
    app = fixed_app(fixed_runs)
    async with app.run_test(size=SIZE) as pilot:
        compare = await _open_compare(pilot)
        assert not any(c.group in ("config", "epoch") for c in compare.comparison.columns)
        table = compare.query_one("#compare-runs")
        cell = compare.comparison.cell("a1b2c3", "natural")
        assert f"[{cell.low:.1f}–{cell.high:.1f}] n={cell.n}" in str(table.get_cell("a1b2c3", "natural"))

        await _reloaded(pilot, compare, "f")
        config = [c.key for c in compare.comparison.columns if c.group == "config"]
        records = [app.registry.get_run(r)["config"] for r in RUNS]
        assert config and all(len({str(r.get(k.split(":", 1)[1])) for r in records}) > 1 for k in config)

        await _reloaded(pilot, compare, "a")
        assert "epoch:epoch" in [c.key for c in compare.comparison.columns]
        assert compare.options["at"] == "best" and "at best" in table.border_title

        table.move_cursor(row=0)
        await _reloaded(pilot, compare, "b")
        base = compare.comparison.rows[0].key
        assert compare.comparison.baseline == base
        others = [r for r in compare.comparison.rows if r.key != base and "natural" in r.cells]
        assert others and all(r.cells["natural"].delta == pytest.approx(
            r.cells["natural"].value - compare.comparison.cell(base, "natural").value) for r in others)
        await _reloaded(pilot, compare, "b")  # again: no baseline
        assert compare.comparison.baseline is None
