"""Rough edges of the console and the CLI: each test failed before its fix."""

from __future__ import annotations

import os
import signal

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


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists and is not a zombie (the console's child exits into one)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def kill_left(pids) -> None:
    """Whatever a test left running is killed."""
    for pid in pids:
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


async def quit_while_busy(env: dict, seconds: float) -> int:
    """Start a console with its worker, queue a probe of ``seconds``, quit while it runs; returns the worker pid."""
    store = env["store"]
    app = FsatConsole(env["db"], data_root=env["data"], start_worker=True, poll_interval=0.1)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_until(pilot, lambda: app.worker_process is not None, what="worker spawn")
        pid = app.worker_process.pid
        job = store.enqueue("probe", {"seconds": seconds}, name="slow")
        # Worker start-up imports the engine: a minute on a busy two-core machine.
        await wait_until(pilot, lambda: store.get_job(job).status == "running", timeout=90, what="job running")
        await pilot.press("q")
    assert "keeps running" in app.exit_note
    return pid


async def test_a_worker_left_busy_by_quit_stops_once_its_work_is_done(env: dict) -> None:
    from tests.helpers.waiting import wait_for

    pid = None
    try:
        pid = await quit_while_busy(env, 3.0)
        assert env["store"].count_jobs("running", "queued") == 1
        wait_for(lambda: env["store"].count_jobs("running", "queued") == 0, timeout=90, what="the probe to finish")
        # Once nothing is queued or running, it goes (bounded by the watcher's polls on a busy machine).
        wait_for(lambda: not pid_alive(pid), timeout=60, what="the idle worker to stop")
        assert env["store"].live_workers() == []
    finally:
        kill_left([pid])


async def test_a_later_console_mentions_the_left_worker_and_stops_it_on_quit_once_idle(env: dict) -> None:
    from tests.helpers.waiting import wait_for

    pid = None
    store = env["store"]
    try:
        pid = await quit_while_busy(env, 600.0)
        later = FsatConsole(env["db"], data_root=env["data"], start_worker=True, poll_interval=0.1)
        async with later.run_test(size=(160, 48)) as pilot:
            await wait_until(pilot, lambda: any(str(pid) in n.message and "earlier console" in n.message
                                                for n in later._notifications), timeout=20,
                             what="the left worker mentioned")
            # Busy: quitting leaves it running its job.
            await pilot.press("q")
        assert "keeps running" in later.exit_note and pid_alive(pid)
        (job,) = store.list_jobs()
        store.request_cancel(job["id"])
        wait_for(lambda: store.count_jobs("running", "queued") == 0, timeout=60, what="the probe cancelled")
        last = FsatConsole(env["db"], data_root=env["data"], start_worker=True, poll_interval=0.1)
        async with last.run_test(size=(160, 48)) as pilot:
            await wait_until(pilot, lambda: any(str(pid) in n.message for n in last._notifications), timeout=20,
                             what="the left worker mentioned")
            await pilot.press("q")
        assert f"stopped the idle worker (pid {pid})" in last.exit_note
        wait_for(lambda: not pid_alive(pid), timeout=30, what="the worker gone")
    finally:
        kill_left([pid])
