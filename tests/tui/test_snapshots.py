"""Snapshots of the main, detail and compare screens at 160x48, and of the main screen at
80x24 (the default terminal: the narrow layout), on fixed data (conftest's ``fixed_runs``:
fixed records, events, results, a pinned clock and two stand-in GPUs).

Review changes with ``pytest tests/tui --snapshot-update`` and the generated report."""

from __future__ import annotations

from tui_support import SIZE, fixed_app, select_run, wait_until


def _settle(app) -> None:
    # The header shows the runs folder, which is a temporary path here.
    app.sub_title = "runs"


async def _main_ready(pilot) -> None:
    screen = pilot.app.screen
    await wait_until(pilot, lambda: screen.loaded and screen.side_loaded, what="the main screen's first data")
    await select_run(pilot, "d4e5f6")  # the rnn-adv run: its inner-loss plot shows PGD beside it
    await wait_until(pilot, lambda: pilot.app.streams.peek("d4e5f6") and pilot.app.streams.peek("d4e5f6").events_read,
                     what="the selected run's events")
    await pilot.pause(0.3)
    _settle(pilot.app)


def test_main_screen(snap_compare, fixed_runs):
    assert snap_compare(fixed_app(fixed_runs), terminal_size=SIZE, run_before=_main_ready)


def test_main_screen_at_80x24(snap_compare, fixed_runs):
    # Stacked panels, one chart (the rnn run's inner loss beside PGD's, with its legend), the
    # columns that fit, and the footer's essential keys with the palette's.
    assert snap_compare(fixed_app(fixed_runs), terminal_size=(80, 24), run_before=_main_ready)


async def _detail_ready(pilot) -> None:
    await _main_ready(pilot)
    await pilot.press("d")
    await wait_until(pilot, lambda: getattr(pilot.app.screen, "results_loaded", False), what="the detail screen")
    _settle(pilot.app)


def test_detail_screen(snap_compare, fixed_runs):
    assert snap_compare(fixed_app(fixed_runs), terminal_size=SIZE, run_before=_detail_ready)


async def _compare_ready(pilot) -> None:
    screen = pilot.app.screen
    await wait_until(pilot, lambda: screen.loaded and screen.side_loaded, what="the main screen's first data")
    for run_id in ("a1b2c3", "b2c3d4", "c3d4e5", "d4e5f6"):
        await select_run(pilot, run_id)
        await pilot.press("space")
    await pilot.press("c")
    await wait_until(pilot, lambda: getattr(pilot.app.screen, "loaded", False) and pilot.app.screen is not screen,
                     what="the compare screen", timeout=60)
    await pilot.pause(0.3)
    _settle(pilot.app)


def test_compare_screen(snap_compare, fixed_runs):
    assert snap_compare(fixed_app(fixed_runs), terminal_size=SIZE, run_before=_compare_ready)
