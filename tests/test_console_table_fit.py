"""Console tables at 80 columns: a column that does not fit is hidden, free text shrinks first, no number is cut.

Before, the last column a table could partly show was cut at the border:
``3`` for 3.8, nothing for 2, ``25`` for ``25 s``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.app import App, ComposeResult

from fsat_console.app import FsatConsole
from fsat_console.widgets.live_table import Cell, ColumnSpec, LiveTable, num_cell
from tests.helpers.console import settle_workers, table
from tests.helpers.waiting import wait_until
from tests.helpers.worlds import fixed_console_db


def assert_fits(t: LiveTable) -> None:
    """Nothing partly visible: the shown columns fit the table, every cell outside free text is whole.

    A hidden column is one that would not fit even with every free-text column at its least width.
    """
    room = t.scrollable_content_region.width
    if room == 0 or not t.display:
        return  # not on screen
    shown = list(t.ordered_columns)
    width = sum(c.get_render_width(t) for c in shown)
    assert width <= room, (t.id, width, room)
    specs = {s.key: s for s in t.specs}
    pad = 2 * t.cell_padding
    for column in shown:
        spec = specs[str(column.key.value)]
        inner = column.get_render_width(t) - pad
        assert len(spec.label) <= inner or spec.shrink, (t.id, spec.key, "header cut")
        if spec.shrink:
            continue
        for row in t.rows:
            cell = t.get_cell(row, spec.key)
            assert cell.cell_len <= inner, (t.id, spec.key, cell.plain, inner)
    shown_keys = {str(c.key.value) for c in shown}
    hidden = [s for s in t.specs if s.key not in shown_keys]
    if hidden:
        least = sum((min(specs[k].min_width, c.get_render_width(t) - pad) if specs[k].shrink
                     else c.get_render_width(t) - pad) + pad for k, c in ((str(c.key.value), c) for c in shown))
        first = hidden[0]
        need = first.width or max([len(first.label) + 2] + [t.get_cell(r, first.key).cell_len for r in t.rows])
        if first.shrink:
            need = min(need, first.min_width)
        assert least + need + pad > room - t.styles.scrollbar_size_vertical, (t.id, first.key, "hidden but fits")


SPECS = [ColumnSpec("id", "run"), ColumnSpec("name", "name", width=30, shrink=True),
         ColumnSpec("cv", "CV LWLRAP", descending_first=True), ColumnSpec("folds", "folds"),
         ColumnSpec("time", "time"), ColumnSpec("score", "score"), ColumnSpec("note", "note", width=30, shrink=True)]


class TableApp(App):
    def compose(self) -> ComposeResult:
        yield LiveTable(SPECS, sort_column="cv", reverse=True, id="t")


def rows(n: int = 5) -> list[tuple[str, list[Cell]]]:
    return [(f"train-{i:04d}", [Cell(f"train-{i:04d}", sort_key=i), Cell("a rather long run name " * 2),
                                num_cell(f"{0.8 + i / 100:.4f}", 0.8 + i / 100), num_cell(str(i), i),
                                num_cell(f"{20 + i} s", 20 + i), num_cell("3.8", 3.8), Cell("a note " * 5)])
            for i in range(n)]


@pytest.mark.parametrize("width", [40, 60, 80, 120, 200])
async def test_a_table_hides_what_does_not_fit_and_shrinks_free_text_first(width: int) -> None:
    app = TableApp()
    async with app.run_test(size=(width, 12)) as pilot:
        t = app.query_one(LiveTable)
        t.sync(rows())
        await pilot.pause()
        assert_fits(t)
        shown = [str(c.key.value) for c in t.ordered_columns]
        assert shown[0] == "id" and "cv" in shown  # the row's name and the sort column always stay
        if width >= 200:
            assert shown == [s.key for s in SPECS]
        text = "\n".join(strip.text for strip in app.screen._compositor.render_strips())
        for key, label in (("time", "22 s"), ("score", "3.8"), ("folds", "2")):
            if key in shown:
                assert label in text


async def test_a_hidden_column_comes_back_when_the_terminal_widens_and_keeps_its_data() -> None:
    app = TableApp()
    async with app.run_test(size=(50, 12)) as pilot:
        t = app.query_one(LiveTable)
        t.sync(rows())
        await pilot.pause()
        assert "note" not in [str(c.key.value) for c in t.ordered_columns]
        assert t.get_cell("train-0001", "note").plain.startswith("a note")  # hidden, not lost
        t.sync([(k, cells[:6] + [Cell("changed while hidden")]) for k, cells in rows()])
        await pilot.resize_terminal(200, 12)
        await wait_until(pilot, lambda: "note" in [str(c.key.value) for c in t.ordered_columns], what="note shown")
        assert_fits(t)
        assert t.get_cell("train-0001", "note").plain == "changed while hidden"
        assert t.keys_in_order()[0] == "train-0004"  # still sorted by CV, best first


async def test_sorting_by_a_hidden_column_shows_it() -> None:
    app = TableApp()
    async with app.run_test(size=(60, 12)) as pilot:
        t = app.query_one(LiveTable)
        t.sync(rows())
        await pilot.pause()
        hidden = [s.key for s in t.specs if s.key not in {str(c.key.value) for c in t.ordered_columns}]
        assert "score" in hidden
        t.sort_by("time")
        await pilot.pause()
        assert "time" in [str(c.key.value) for c in t.ordered_columns]
        assert_fits(t)
        assert t.keys_in_order()[0] == "train-0000"  # the shortest time first


@pytest.fixture
def fixed_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    db = tmp_path / "experiments.db"
    ids = fixed_console_db(db, monkeypatch)
    monkeypatch.setenv("FSAT_PANNS_DIR", "")
    return (lambda: FsatConsole(db, poll_interval=0.1)), ids


async def test_every_table_of_the_console_fits_80_columns(fixed_app) -> None:
    make, ids = fixed_app
    app = make()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.overview is not None and table(app, "runs").row_count > 0
                         and table(app, "jobs").row_count > 0, what="the first poll's rows")
        await settle_workers(pilot, app)
        for name in ("runs", "jobs"):
            assert_fits(table(app, name))
        app.open_run(ids["stopped"])
        await wait_until(pilot, lambda: getattr(app.screen, "detail", None) is not None
                         and table(app, "folds").row_count > 0, what="the run's folds")
        await settle_workers(pilot, app)
        for t in app.screen.query(LiveTable):
            assert_fits(t)
        app.pop_screen()
        app.pin_run(ids["runs"][0], ids["cv"][ids["runs"][0]])
        app.open_compare(ids["runs"])
        await wait_until(pilot, lambda: getattr(app.screen, "comp", None) is not None, what="the comparison")
        await settle_workers(pilot, app)
        for t in app.screen.query(LiveTable):
            assert_fits(t)


async def test_a_first_fill_that_hides_columns_leaves_the_cursor_on_the_top_row_of_the_sort() -> None:
    # Rows arrive in another order than the sort (lowest CV first, the table sorts by CV, highest first), and
    # their widths make the table hide columns while it fills: the cursor must stay on the sort's first row.
    app = TableApp()
    async with app.run_test(size=(50, 12)) as pilot:
        t = app.query_one(LiveTable)
        await wait_until(pilot, lambda: t.size.width > 0, what="the table laid out")
        t.sync(rows(20))
        await pilot.pause()
        assert "note" not in [str(c.key.value) for c in t.ordered_columns]
        assert t.keys_in_order()[0] == "train-0019"
        assert (t.cursor_row, t.selected_key()) == (0, "train-0019")
        assert t.scroll_y == 0
