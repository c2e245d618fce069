"""Snapshots of the main, run, job and ensemble screens at 80x24 and 160x48 (pytest-textual-snapshot).

The data is recorded through the engine's own recording code at fixed times
(``tests.helpers.worlds.fixed_console_db``), the console's clock is pinned and the
time zone is UTC, so nothing on screen depends on when the test runs. Update
the snapshots after a deliberate change with ``pytest --snapshot-update``
and look at them (``snapshot_report.html``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fsat_console.app import FsatConsole
from fsat_console.screens.job import JobScreen
from tests.helpers.console import open_and_settle, screen_text, settle_workers, table
from tests.helpers.waiting import wait_until
from tests.helpers.worlds import fixed_console_db

SIZES = [(80, 24), (160, 48)]


@pytest.fixture
def fixed_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    db = tmp_path / "experiments.db"
    ids = fixed_console_db(db, monkeypatch)

    def make() -> FsatConsole:
        return FsatConsole(db, poll_interval=0.1)

    return make, ids


async def settle(pilot) -> None:
    """Until the polls' rows and seed groups are on screen; the header shows the file name, not the test's folder."""
    app = pilot.app
    await wait_until(pilot, lambda: app.overview is not None and app.overview.groups is not None
                     and table(app, "runs").row_count == len(app.overview.runs)
                     and table(app, "jobs").row_count == len(app.overview.jobs), what="the polls' rows and groups")
    app.sub_title = "experiments.db"
    await settle_workers(pilot, app)


def opened(open_screen, ready, what: str):
    """A ``run_before``: the main screen settled, then the screen ``open_screen(app)`` opens drawn with its data."""

    async def run_before(pilot) -> None:
        await settle(pilot)
        await open_and_settle(pilot, open_screen, ready, what)

    return run_before


def folds_drawn(app) -> bool:
    """The run screen has its run and its folds table rows."""
    return getattr(app.screen, "detail", None) is not None and table(app, "folds").row_count > 0


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_main_screen(snap_compare, fixed_app, size) -> None:
    make, _ = fixed_app
    assert snap_compare(make(), terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_run_screen_of_a_stopped_run(snap_compare, fixed_app, size) -> None:
    make, ids = fixed_app
    open_run = opened(lambda app: app.open_run(ids["stopped"]), folds_drawn, "the run's folds")
    assert snap_compare(make(), terminal_size=size, run_before=open_run)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_run_screen_of_an_ensemble(snap_compare, fixed_app, size) -> None:
    make, ids = fixed_app
    open_run = opened(lambda app: app.open_run(ids["ensemble"]), folds_drawn, "the run's folds")
    assert snap_compare(make(), terminal_size=size, run_before=open_run)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_job_details_of_a_failed_job(snap_compare, fixed_app, size) -> None:
    make, ids = fixed_app
    open_job = opened(lambda app: app.open_job(ids["failed_job"]), lambda app: isinstance(app.screen, JobScreen)
                      and "no PANNs checkpoint configured" in screen_text(app), "the job's error")
    assert snap_compare(make(), terminal_size=size, run_before=open_job)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ensemble_screen(snap_compare, fixed_app, size) -> None:
    make, _ = fixed_app
    open_ensemble = opened(lambda app: app.open_ensemble(), lambda app: getattr(app.screen, "loaded", False),
                           "the ensemble candidates")
    assert snap_compare(make(), terminal_size=size, run_before=open_ensemble)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_compare_screen(snap_compare, fixed_app, size) -> None:
    make, ids = fixed_app

    def open_compare(app) -> None:
        app.pin_run(ids["runs"][0], ids["cv"][ids["runs"][0]])
        app.open_compare(ids["runs"])

    run_before = opened(open_compare, lambda app: getattr(app.screen, "comp", None) is not None, "the comparison")
    assert snap_compare(make(), terminal_size=size, run_before=run_before)
