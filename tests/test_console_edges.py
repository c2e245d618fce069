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


def append(path, text: str) -> None:
    """Append as the worker does: its own handle, flushed."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()


async def test_job_details_follow_the_log_after_a_requeue_and_the_status_line_stays_live(env: dict) -> None:
    from dataclasses import replace

    from fsat_console.live import DEFAULT_JOB_VIEW
    from fsat_console.screens.confirm import ConfirmScreen
    from fsat_console.screens.job import JobScreen
    from fsat_console.widgets.status import WorkerStatus
    from tests.helpers.recording import record_run

    store = env["store"]
    job = store.enqueue("train", {"train": {"epochs": 2}}, name="flaky")
    claimed = store.claim("w")
    store.fail_job(job, "no data", "Traceback\nno data", worker_id="w", attempt=claimed.attempts)
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_until(pilot, lambda: app.overview is not None, what="first poll")
        status = app.screen.query_one(WorkerStatus)
        # The jobs table shows failed jobs only: once requeued, the job is off its page.
        app.set_views(jobs=replace(DEFAULT_JOB_VIEW, filter="status:failed"))
        app.open_job(job)
        await wait_until(pilot, lambda: isinstance(app.screen, JobScreen), what="details")
        details = app.screen
        await pilot.press("R")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        await pilot.press("y")
        await wait_until(pilot, lambda: app.screen is details and details.job["status"] == "queued",
                         what="queued again")
        # A worker takes it again, makes its run and writes its log.
        store.claim("w2")
        run_dir = record_run(store, env["tmp"] / "runs", "train-0001", dataset_id=None, job_id=job, name="flaky",
                             status="running")
        append(run_dir / "job.log", "=== job 1 attempt 1 ===\nloading curated clips\n")
        await wait_until(pilot, lambda: details.job["status"] == "running" and details.job_log.following
                         and list(details.job_log.lines)[-1:] == ["loading curated clips"], what="the new run's log")
        append(run_dir / "job.log", "fold 0 epoch 1\n")
        await wait_until(pilot, lambda: list(details.job_log.lines)[-1:] == ["fold 0 epoch 1"], what="a later line")
        # The status line of the screen behind the details follows the polls too.
        store.enqueue("probe", {}, name="another")
        await wait_until(pilot, lambda: "1 queued" in str(status.render()), what="status line updated")
