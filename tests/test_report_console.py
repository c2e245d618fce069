"""``H`` in the console writes the HTML report of what is on screen: a run, a comparison, the blend being built.

The real app under Pilot on a database of recorded runs (``tests/helpers/report_world.py``);
the report is written by the real ``python -m engine.reporting`` subprocess the
key starts (the console never imports matplotlib: the import contract in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fsat_console.app import FsatConsole
from fsat_console.report import report_path
from fsat_console.screens.compare import CompareScreen
from fsat_console.screens.ensemble import EnsembleScreen
from fsat_console.screens.main import MainScreen
from fsat_console.screens.run import RunScreen
from tests.helpers.console import select_row, settle_workers
from tests.helpers.waiting import wait_until
from tests.helpers.report_world import ReportWorld, build_report_world, figure_names

#: Seconds a report may take on a busy machine (it takes a few).
REPORT_WAIT = 240.0


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> ReportWorld:
    return build_report_world(tmp_path_factory.mktemp("console-report"))


async def _ready(pilot) -> FsatConsole:
    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.screen, MainScreen) and app.overview is not None,
                     what="main screen")
    return app


def _messages(app) -> list[str]:
    return [n.message for n in app._notifications]


async def _press_report(pilot, out: Path) -> str:
    """Press H and wait for the report worker to finish; the page written."""
    out.unlink(missing_ok=True)
    await pilot.press("H")
    await wait_until(pilot, lambda: any(m == f"Wrote {out}" or "not written" in m for m in _messages(pilot.app))
                     or any(n.severity == "error" for n in pilot.app._notifications),
                     timeout=REPORT_WAIT, what="the report")
    await settle_workers(pilot, pilot.app)
    assert f"Wrote {out}" in _messages(pilot.app), _messages(pilot.app)
    return out.read_text(encoding="utf-8")


@pytest.mark.parametrize("which", ["train", "curriculum", "ensemble"])
async def test_h_on_a_run_screen_writes_that_runs_report(world: ReportWorld, which: str):
    run_id = {"train": world.trains[0], "curriculum": world.curriculum, "ensemble": world.ensemble}[which]
    app = FsatConsole(world.db, poll_interval=0.1)
    async with app.run_test(size=(160, 48)) as pilot:
        await _ready(pilot)
        app.open_run(run_id)
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.detail is not None,
                         what="the run screen")
        page = await _press_report(pilot, report_path(world.db, run_id))
    figures = figure_names(page)
    assert f"<h1>{run_id}" in page
    expected = {"train": "tta-gain", "curriculum": "curriculum-audit", "ensemble": "blend-methods"}[which]
    assert expected in figures


async def test_h_on_the_compare_screen_writes_the_comparison_against_its_baseline(world: ReportWorld):
    a, b, c = world.trains
    app = FsatConsole(world.db, poll_interval=0.1)
    async with app.run_test(size=(160, 48)) as pilot:
        await _ready(pilot)
        app.pin_run(b)
        app.open_compare([a, b, c])
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.comp is not None,
                         what="the comparison")
        page = await _press_report(pilot, report_path(world.db, f"compare-{a}-{b}-{c}"))
    assert f"deltas against {b}" in page
    assert "class-delta" in figure_names(page)


async def test_h_on_the_ensemble_screen_writes_the_blend_being_built(world: ReportWorld):
    members = sorted([world.trains[1], world.trains[2]])
    app = FsatConsole(world.db, poll_interval=0.1)
    async with app.run_test(size=(160, 48)) as pilot:
        await _ready(pilot)
        app.open_ensemble()
        await wait_until(pilot, lambda: isinstance(app.screen, EnsembleScreen) and app.screen.loaded,
                         what="the ensemble screen")
        screen = app.screen
        # Nothing in the blend yet: the key says what to do and writes nothing.
        await pilot.press("H")
        await wait_until(pilot, lambda: "Put runs in the blend first (space)." in _messages(app), what="the warning")
        for run_id in members:
            await select_row(pilot, screen.table, run_id)
            await pilot.press("space")
        await pilot.press("m")  # the next method after auto: what is shown is what is reported
        await wait_until(pilot, lambda: screen.state.members() == members, what="two members")
        method = screen.state.method
        page = await _press_report(pilot, report_path(world.db, "blend-" + "-".join(members)))
    assert "(not saved)" in page and f"method {method}" in page
    assert "blend-methods" in figure_names(page)


async def test_a_report_that_cannot_be_written_says_why_in_one_notification(world: ReportWorld):
    app = FsatConsole(world.db, poll_interval=0.1)
    async with app.run_test(size=(160, 48)) as pilot:
        await _ready(pilot)
        app.open_run("train-0404")  # not in the database
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="the run screen")
        await pilot.press("H")
        await wait_until(pilot, lambda: any(n.severity == "error" for n in app._notifications),
                         timeout=REPORT_WAIT, what="the error")
        await settle_workers(pilot, app)
        errors = [n for n in app._notifications if n.severity == "error"]
    assert [n.message for n in errors] == ["no run 'train-0404' (see `fsat runs`)"]
    assert errors[0].title == "Report not written"
    assert not report_path(world.db, "train-0404").exists()
