"""Rough edges of the console and the CLI: each test failed before its fix."""

from __future__ import annotations

from fsat_console.app import FsatConsole
from fsat_console.screens.compare import CompareScreen
from fsat_console.widgets.live_table import LiveTable
from tests.helpers.console import table
from tests.helpers.waiting import wait_until


async def open_compare(pilot, app, run_ids: list[str]) -> CompareScreen:
    """Mark ``run_ids`` in the runs table and press x; returns the compare screen once it shows its runs."""
    runs = table(app, "runs")
    await wait_until(pilot, lambda: all(r in runs.rows for r in run_ids), what="runs")
    app.marked_runs = list(run_ids)
    await pilot.press("x")
    await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.comp is not None,
                     what="compare screen")
    return app.screen


async def test_tab_on_the_compare_screen_reaches_the_runs_table_so_p_pins_a_baseline(world: dict) -> None:
    app = FsatConsole(world["db"], poll_interval=0.1)
    async with app.run_test(size=(160, 50)) as pilot:
        screen = await open_compare(pilot, app, ["train-0001", "train-0002"])
        assert screen.comp.baseline == "train-0001"
        runs = screen.query_one("#compare-runs", LiveTable)
        for _ in range(4):  # the classes table has focus; tab walks round to the runs table
            if app.focused is runs:
                break
            await pilot.press("tab")
        assert app.focused is runs
        runs.move_cursor(row=runs.get_row_index("train-0002"))
        await pilot.press("p")
        await wait_until(pilot, lambda: screen.comp.baseline == "train-0002", what="new baseline")
        assert app.pinned_run == "train-0002"
