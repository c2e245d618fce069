"""The console under Pilot: open a screen and wait until it shows its data, read tables and the screen."""

from __future__ import annotations

from tests.helpers.waiting import wait_until


def table(app, table_id: str):
    """A ``LiveTable`` of the current screen, by id."""
    from fsat_console.widgets.live_table import LiveTable

    return app.screen.query_one(f"#{table_id}", LiveTable)


def cell_text(t, row_key: str, column: str) -> str:
    """Plain text of one cell of a ``LiveTable``."""
    return t.get_cell(row_key, column).plain


async def open_queue_dialog(pilot, app, *, press: bool = True, timeout: float = 5.0):
    """Press n (unless the app opens the dialog itself) and wait until the preset list has focus."""
    from textual.widgets import OptionList

    from fsat_console.screens.queue import QueueScreen

    if press:
        await pilot.press("n")

    def preset_list_focused() -> bool:
        # The dialog may be the screen before its widgets are mounted.
        if not isinstance(app.screen, QueueScreen):
            return False
        presets = app.screen.query("#preset")
        return bool(presets) and app.focused is presets.first(OptionList)

    await wait_until(pilot, preset_list_focused, timeout=timeout, what="queue dialog")
    return app.screen


async def open_job_details(pilot, app, job_id: int):
    """Select the job in the jobs table and press enter; returns the job details screen."""
    from fsat_console.screens.job import JobScreen

    jobs = table(app, "jobs")
    await wait_until(pilot, lambda: str(job_id) in jobs.rows, what="job row")
    await pilot.press("tab")
    assert app.focused is jobs
    jobs.move_cursor(row=jobs.get_row_index(str(job_id)))
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(app.screen, JobScreen), what="job details")
    return app.screen


async def settle_workers(pilot, app) -> None:
    """Before a negative check: let the key presses land, then wait for every worker the app started to finish."""
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


async def open_and_settle(pilot, open_screen, ready, what: str):
    """Open a screen (``open_screen(app)``), wait until ``ready(app)`` holds (it shows its data), then until the
    workers that load it are done: nothing on it changes after. Returns the screen."""
    app = pilot.app
    open_screen(app)
    await wait_until(pilot, lambda: ready(app), what=what)
    await settle_workers(pilot, app)
    return app.screen


def screen_text(app) -> str:
    """The current screen rendered to plain text, line by line."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def open_ensemble(pilot, app):
    """Press e and wait until the candidates are listed."""
    from fsat_console.screens.ensemble import EnsembleScreen
    from fsat_console.screens.main import MainScreen

    await wait_until(pilot, lambda: isinstance(app.screen, MainScreen) and app.overview is not None,
                     what="main screen")
    await pilot.press("e")
    await wait_until(pilot, lambda: isinstance(app.screen, EnsembleScreen) and app.screen.loaded,
                     what="ensemble screen with its runs")
    return app.screen


async def select_row(pilot, table, key: str) -> None:
    """Move the cursor to the row ``key`` with the arrow keys."""
    await pilot.press(*["up"] * table.row_count)
    for _ in range(table.row_count):
        if table.selected_key() == key:
            return
        await pilot.press("down")
    assert table.selected_key() == key, f"row {key} not reachable"


async def settled(pilot, screen) -> None:
    """Wait until the ensemble screen's blend shown is the blend chosen."""
    await wait_until(pilot, lambda: screen.outcome is not None and screen.outcome.key == screen.state.key()
                     and screen._pending_key is None and not screen.greedy_running, what="blend score")
