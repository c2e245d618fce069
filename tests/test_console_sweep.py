"""The console's sweep dialog and sweep view, driven through Pilot on a real database."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Static

from engine import sweeps
from engine.store import Store
from fsat_console.app import FsatConsole
from fsat_console.screens.sweep import SweepDialog, SweepScreen
from tests.helpers.waiting import wait_until
from tests.helpers.worlds import console_world


async def _fill(pilot, dialog: SweepDialog, values: dict[str, str]) -> None:
    for field, value in values.items():
        dialog.query_one(f"#{field}", Input).value = value
    await pilot.pause()


async def test_the_dialog_refuses_a_bad_point_naming_it_and_queues_a_good_sweep_into_its_live_view(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, data = console_world(tmp_path, monkeypatch)
    Store(db).close()
    app = FsatConsole(db, data_root=data, poll_interval=0.1)
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.press("g")
        await wait_until(pilot, lambda: isinstance(app.screen, SweepDialog), what="the sweep dialog")
        dialog = app.screen
        assert dialog.query_one("#data-root", Input).value == str(data)
        await _fill(pilot, dialog, {"preset": "tiny", "grid": "model.width=[8,-2]", "seeds": "1,2",
                                    "screen-fold": "0", "keep": "1"})
        dialog.action_submit()
        error = dialog.query_one("#sweep-error", Static)
        await wait_until(pilot, lambda: "sweep point 1" in str(error.content), what="the refusal")
        assert "model.width" in str(error.content) and app.screen is dialog
        with Store(db, readonly=True) as store:
            assert store.list_sweeps() == [] and store.list_jobs() == []

        await _fill(pilot, dialog, {"grid": "model.width=[8,16]"})
        dialog.action_submit()
        await wait_until(pilot, lambda: isinstance(app.screen, SweepScreen), what="the sweep view")
        view = app.screen
        grid = view.query_one("#sweep-points", DataTable)
        await wait_until(pilot, lambda: grid.row_count == 2, what="two points")
        with Store(db) as store:
            (sweep,) = store.list_sweeps()
            assert sweep["runs"] == 4 and view.sweep_id == sweep["id"]
            # The view is live: screening jobs cancelled behind its back screen their points out.
            for job in store.list_jobs():
                store.request_cancel(job["id"])
            assert store.advance_sweep(sweep["id"], sweeps.decide) == []
        # Columns: model.width, point, rank, state, decision, ...
        await wait_until(pilot, lambda: grid.get_row("0")[4] == "screened out", what="the decision")
        assert grid.get_row("1")[3] == "cancelled"
        await pilot.press("c")
        message = view.query_one("#sweep-message", Static)
        await wait_until(pilot, lambda: "to complete it" in str(message.content), what="the override")
        await wait_until(pilot, lambda: grid.get_row("0")[4] == "completed by hand", what="the new decision")
