"""Opening a run: loaded once, drawn once, with live refresh and the cursor kept (real app under Pilot).

The run screen used to load its run twice (once when opened, once more on
its first resume), reloaded the tables' pages with it, re-rendered every
visible cell of a table after each poll (a sort that moved nothing), and
rebuilt its footer on every update. These tests hold the behaviour those
fixes must keep, and the work they must not do again; the time itself is
measured in ``benchmarks/bench_console.py`` (open a run), never asserted here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.store import Store
from fsat_console.app import FsatConsole
from fsat_console.widgets.chart import EpochChart
from fsat_console.widgets.live_table import Cell, ColumnSpec, LiveTable, num_cell
from tests.helpers.waiting import wait_until
from tests.helpers.worlds import fixed_console_db


@pytest.fixture
def console_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    db = tmp_path / "experiments.db"
    ids = fixed_console_db(db, monkeypatch)
    return db, ids


async def _first_page(pilot, app: FsatConsole) -> None:
    await wait_until(pilot, lambda: app.overview is not None and app.screen.query_one("#runs").row_count > 0,
                     what="the first page of runs")


async def test_enter_on_a_run_loads_it_once_and_not_the_tables(console_db) -> None:
    db, ids = console_db
    app = FsatConsole(db, poll_interval=0.2)
    loads: list[tuple[str, int]] = []
    overviews: list[bool] = []
    poller = app.poller
    load_detail, load_overview = poller._load_detail, poller._load_overview

    def counted_detail(store, watch, force):
        loads.append(tuple(watch))
        return load_detail(store, watch, force)

    def counted_overview(store, force, *views):
        overviews.append(force)
        return load_overview(store, force, *views)

    poller._load_detail = counted_detail  # type: ignore[method-assign]
    poller._load_overview = counted_overview  # type: ignore[method-assign]
    async with app.run_test(size=(160, 48)) as pilot:
        await _first_page(pilot, app)
        runs = app.screen.query_one("#runs", LiveTable)
        runs.focus()
        runs.move_cursor(row=runs.get_row_index(ids["runs"][1]), animate=False)
        await pilot.pause(0.3)
        loads.clear()
        overviews.clear()
        await pilot.press("enter")
        await wait_until(pilot, lambda: getattr(app.screen, "detail", None) is not None, what="the run shown")
        screen = app.screen
        assert screen.run_id == ids["runs"][1]
        assert screen.query_one("#folds", LiveTable).row_count == 5
        assert screen.query_one("#classes", LiveTable).row_count == 80
        # Nothing changed in the database: one load of the run, and no forced reload of the pages.
        await pilot.pause(0.6)
        assert loads == [(ids["runs"][1], -1)]
        assert True not in overviews


async def test_an_open_run_still_refreshes_live_and_keeps_the_cursor_row(console_db) -> None:
    db, ids = console_db
    stopped = ids["stopped"]
    app = FsatConsole(db, poll_interval=0.1)
    async with app.run_test(size=(160, 48)) as pilot:
        await _first_page(pilot, app)
        app.open_run(stopped)
        await wait_until(pilot, lambda: getattr(app.screen, "detail", None) is not None, what="the run shown")
        folds = app.screen.query_one("#folds", LiveTable)
        folds.focus()
        folds.move_cursor(row=folds.get_row_index("2"), animate=False)
        await pilot.pause(0.2)
        # The stopped fold (4) gets its 18th epoch from another connection, as its job would write it.
        writer = Store(db)
        writer.record_epoch(stopped, 4, 18, train_loss=0.1, val_loss=0.1, val_lwlrap=0.9, lr=1e-4, seconds=13.0)
        writer.close()
        await wait_until(pilot, lambda: "18/20" in folds.column_texts("epochs"), what="the new epoch shown")
        assert folds.selected_key() == "2"


async def test_a_sync_that_moves_no_row_keeps_the_rendered_cells() -> None:
    from textual.app import App

    class One(App):
        def compose(self):
            yield LiveTable([ColumnSpec("name", "name"), ColumnSpec("score", "score", descending_first=True)],
                            sort_column="score", reverse=True, id="t")

    def rows(scores: dict[str, float]) -> list[tuple[str, list[Cell]]]:
        return [(k, [Cell(k, sort_key=k), num_cell(f"{v:.2f}", v)]) for k, v in scores.items()]

    app = One()
    async with app.run_test() as pilot:
        table = app.query_one(LiveTable)
        table.sync(rows({"a": 0.5, "b": 0.9, "c": 0.7}))
        await pilot.pause()
        assert table.keys_in_order() == ["b", "c", "a"]
        rendered = dict(table._cell_render_cache)  # what the screen drew
        assert rendered
        table.sync(rows({"a": 0.5, "b": 0.9, "c": 0.7}))  # a poll with nothing new
        await pilot.pause()
        # Nothing was drawn again: no cell was rendered anew (a sort would have dropped them all).
        assert dict(table._cell_render_cache) == rendered
        table.sync(rows({"a": 0.95, "b": 0.9, "c": 0.7}))  # a moves to the top: sorted again
        await pilot.pause()
        assert table.keys_in_order() == ["a", "b", "c"]


async def test_the_footer_is_rebuilt_only_when_its_keys_change(console_db) -> None:
    db, ids = console_db
    app = FsatConsole(db, poll_interval=0.1)
    async with app.run_test(size=(160, 48)) as pilot:
        await _first_page(pilot, app)
        app.open_run(ids["stopped"])
        await wait_until(pilot, lambda: getattr(app.screen, "detail", None) is not None, what="the run shown")
        await pilot.pause(0.3)
        from textual.widgets._footer import FooterKey

        keys = list(app.screen.query(FooterKey))
        assert "Resume" in [k.description for k in keys]
        await pilot.press("tab")  # focus moves to the folds table: the same keys act
        await pilot.pause(0.3)
        assert list(app.screen.query(FooterKey)) == keys
        app.open_run(ids["runs"][0])  # a finished run: Resume does not act, Infer does
        await wait_until(pilot, lambda: getattr(app.screen, "detail", None) is not None
                         and app.screen.run_id == ids["runs"][0], what="the other run shown")
        await pilot.pause(0.3)
        shown = [k.description for k in app.screen.query(FooterKey)]
        assert "Resume" not in shown and "Infer+TTA" in shown


async def test_the_chart_is_rebuilt_only_when_its_data_or_size_changes() -> None:
    from textual.app import App

    class One(App):
        def compose(self):
            yield EpochChart(id="chart")

    app = One()
    async with app.run_test(size=(80, 24)) as pilot:
        chart = app.query_one(EpochChart)
        series = {0: [(1, 0.5), (2, 0.6)], 1: [(1, 0.55), (2, 0.62)]}
        chart.show(series, "val LWLRAP", planned_epochs=10, best_epochs={0: 2})
        await pilot.pause()
        builds = []
        build = chart.plt.build
        chart.plt.build = lambda: builds.append(1) or build()  # type: ignore[method-assign]
        first = chart.render().plain
        chart.show(series, "val LWLRAP", planned_epochs=10, best_epochs={0: 2})  # same data again
        assert chart.render().plain == first and builds == []
        chart.show({0: series[0]}, "val LWLRAP", planned_epochs=10)
        assert chart.render().plain != first and builds == [1]


@pytest.mark.parametrize("which", ["stopped", "ensemble"])
async def test_at_160x48_the_run_tables_show_every_column(console_db, which) -> None:
    db, ids = console_db
    app = FsatConsole(db, poll_interval=0.2)
    async with app.run_test(size=(160, 48)) as pilot:
        await _first_page(pilot, app)
        app.open_run(ids[which])
        await wait_until(pilot, lambda: getattr(app.screen, "detail", None) is not None, what="the run shown")
        await pilot.pause(0.3)
        for table in app.screen.query(LiveTable):
            if table.display and table.row_count:
                # No column (n_val, n_pos) runs past the table's right edge.
                assert table.virtual_size.width <= table.scrollable_content_region.width, table.id


async def test_start_up_objects_are_frozen_after_the_first_paint_and_thawed_on_quit(console_db) -> None:
    import gc

    db, _ = console_db
    assert gc.get_freeze_count() == 0
    app = FsatConsole(db, poll_interval=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await _first_page(pilot, app)
        await wait_until(pilot, lambda: gc.get_freeze_count() > 0, what="start-up frozen")
    # Closed: every console a process starts (tests, benchmarks) can be collected again.
    assert gc.get_freeze_count() == 0
