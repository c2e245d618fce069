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


async def test_compare_shows_the_seed_group_of_runs_that_have_two_or_more_seeds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.specs import TrainSpec, to_dict
    from fsat_console.screens.compare import CompareScreen
    from fsat_console.widgets.live_table import LiveTable

    db, data = console_world(tmp_path, monkeypatch)
    with Store(db) as store:
        for run_id, seed, width, cv in (("a1", 1, 8, 0.6), ("a2", 2, 8, 0.7), ("b1", 1, 16, 0.5)):
            spec = TrainSpec()
            spec.train.seed, spec.model.width, spec.train.n_folds = seed, width, 2
            store.create_run(run_id, kind="train", config=to_dict(spec), seed=seed)
            for fold in (0, 1):
                store.record_fold(run_id, fold, lwlrap=cv, best_epoch=1, n_val=5)
            store.finish_run(run_id, cv_lwlrap=cv)
    app = FsatConsole(db, data_root=data, poll_interval=0.1)
    async with app.run_test(size=(160, 45)) as pilot:
        app.open_compare(["a1", "b1"])
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.query("#compare-runs"),
                         what="the compare screen")
        table = app.screen.query_one("#compare-runs", LiveTable)
        await wait_until(pilot, lambda: table.row_count == 2 and "group" in [c.key for c in table.specs],
                         what="the seed-group column")
        cells = [str(c) for c in table.get_row("a1")]
        assert "2: 0.6500 ± 0.0707" in cells
        assert "1: 0.5000" in [str(c) for c in table.get_row("b1")]
        # n: is the difference larger than noise? (no oof.npy here: the clips cannot tell, the seeds can)
        await pilot.press("n")
        await wait_until(pilot, lambda: any("seeds" in str(n.message) and "b1" in str(n.message)
                                            for n in app._notifications), what="the noise verdict")
        said = next(str(n.message) for n in app._notifications if "seeds" in str(n.message))
        assert "clips cannot tell" in said and "single seed" in said


async def test_the_command_palette_finds_a_sweep_and_opens_its_view(tmp_path: Path, monkeypatch) -> None:
    db, data = console_world(tmp_path, monkeypatch)
    with Store(db) as store:
        sweep_id = sweeps.queue_sweep(store, preset="tiny", data_root=data, grid=["model.width=[8,16]"],
                                      name="widths")
    app = FsatConsole(db, data_root=data, poll_interval=0.1)
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.press("ctrl+p")
        await pilot.pause()
        for ch in "widths":
            await pilot.press(ch)
        await wait_until(pilot, lambda: "Sweep" in str(app.screen.query("CommandList").first().get_option_at_index(0).prompt)
                         if app.screen.query("CommandList") and app.screen.query("CommandList").first().option_count
                         else False, what="the sweep in the palette")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, SweepScreen) and app.screen.sweep_id == sweep_id,
                         what="the sweep view")
