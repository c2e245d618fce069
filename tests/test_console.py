"""The Textual console, driven with Pilot on a real SQLite file.

The test itself plays the other processes: it writes jobs, runs and scores
through ``engine.store.Store`` on its own connection while the console is
open, and checks that the console shows them without a key press. One test
lets the console start a real ``python -m engine.worker`` process; another
runs a real worker whose job reports progress while the console watches.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path

import numpy as np

from textual.command import CommandList, CommandPalette
from textual.widgets import Input, Static
from watchdog.utils import BaseThread

from engine.data.labels import FSD2019_CLASSES
from engine.metrics import per_class_lwlrap
from fsat_console.app import FsatConsole
from fsat_console.screens.confirm import ConfirmScreen
from fsat_console.screens.help import HelpScreen, help_table
from fsat_console.screens.main import MainScreen
from fsat_console.screens.dialogs import preset_about, split_overrides
from fsat_console.screens.queue import train_presets
from tests.helpers.console import cell_text, open_job_details, open_queue_dialog, screen_text, settle_workers, table
from tests.helpers.datasets import multi_hot_truth
from tests.helpers.processes import heavy_modules_loaded_by
from tests.helpers.recording import finish_trained_run, record_run, record_trained_fold, stream_epochs, tagger_scores
from tests.helpers.waiting import wait_until

SIZE = (140, 45)


def help_text(screen) -> str:
    """Every line of the help screen's key list, rendered wide enough to hold it."""
    from io import StringIO

    from rich.console import Console

    console = Console(width=200, file=StringIO(), color_system=None)
    console.print(help_table(screen.sections))
    return console.file.getvalue()


# -- (a) queue a job with keys only ---------------------------------------------------------


async def test_queue_job_from_modal_with_keys_only(env: dict) -> None:
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        queue = await open_queue_dialog(pilot, app)
        await pilot.press("home")  # the test preset is first in the list
        assert queue.preset == "tiny"
        assert queue.query_one("#data-root", Input).value == str(env["data"].resolve())
        await pilot.press("tab", "tab")  # preset -> data root -> overrides
        assert app.focused is queue.query_one("#overrides", Input)
        await pilot.press(*"train.epochs=3 train.folds=[0]")
        await pilot.press("tab", "backspace", "7")  # priority
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), what="dialog to close")

        jobs = env["store"].list_jobs()
        assert len(jobs) == 1
        job = env["store"].get_job(jobs[0]["id"])
        assert (job.kind, job.status, job.name, job.priority) == ("train", "queued", "tiny", 7)
        assert job.spec["train"]["epochs"] == 3
        assert job.spec["train"]["folds"] == [0]
        assert job.spec["train"]["batch_size"] == 4  # from the preset
        assert job.spec["data"]["root"] == str(env["data"].resolve())

        key = str(job.id)
        await wait_until(pilot, lambda: key in table(app, "jobs").rows, what="job row")
        jobs_table = table(app, "jobs")
        assert cell_text(jobs_table, key, "name") == "tiny"
        assert cell_text(jobs_table, key, "status").endswith("queued")


# -- (b) a bad override is shown under its field; nothing is queued ---------------------------


async def test_bad_override_shows_field_error_and_queues_nothing(env: dict) -> None:
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        queue = await open_queue_dialog(pilot, app)
        await pilot.press("home", "tab", "tab", *"train.epochs=abc", "enter")
        await settle_workers(pilot, app)

        error = queue.query_one("#overrides-error", Static)
        assert app.screen is queue
        assert error.display
        assert "train.epochs" in str(error.content)
        assert "whole number" in str(error.content)
        assert queue.query_one("#overrides", Input).value == "train.epochs=abc"
        assert env["store"].list_jobs() == []

        # Nothing is lost: fix the value in place and queue.
        await pilot.press("backspace", "backspace", "backspace", "2", "enter")
        await app.workers.wait_for_complete()
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), what="dialog to close")
        jobs = env["store"].list_jobs()
        assert len(jobs) == 1
        assert env["store"].get_job(jobs[0]["id"]).spec["train"]["epochs"] == 2


async def test_missing_data_root_is_shown_under_its_field(env: dict) -> None:
    app = FsatConsole(env["db"], data_root=env["tmp"] / "nowhere", poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        queue = await open_queue_dialog(pilot, app)
        await pilot.press("enter")
        await settle_workers(pilot, app)
        error = queue.query_one("#data-root-error", Static)
        assert error.display and "no such folder" in str(error.content)
        assert app.screen is queue
        assert env["store"].list_jobs() == []


async def test_full_queue_is_reported_in_the_dialog(env: dict) -> None:
    for _ in range(1000):  # the store's default limit of waiting jobs
        env["store"].enqueue("train", {}, name="filler")
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        queue = await open_queue_dialog(pilot, app)
        await pilot.press("home", "enter")
        await settle_workers(pilot, app)
        error = queue.query_one("#queue-error", Static)
        assert app.screen is queue
        assert error.display and "Queue full" in str(error.content)
    assert len(env["store"].list_jobs(limit=2000)) == 1000


def test_queue_dialog_lists_only_training_presets(env: dict) -> None:
    configs = env["tmp"] / "configs"
    (configs / "zz_tta.toml").write_text('kind = "infer"\nrun_id = "train-0001"\n')
    (configs / "zz_train.toml").write_text('# Two epochs,\n# for a smoke test.\nkind = "train"\n'
                                           '# not part of the description\n[train]\nepochs = 2\n')
    presets = train_presets()
    assert "tiny" in presets and "zz_train" in presets
    assert "zz_tta" not in presets
    assert preset_about(presets["zz_train"]) == "Two epochs, for a smoke test."
    assert preset_about(presets["tiny"]) == ""


def test_split_overrides_keeps_lists_and_quoted_strings_together() -> None:
    assert split_overrides('train.epochs=3  train.folds=[0, 1] name="my run" x=1') == [
        "train.epochs=3", "train.folds=[0, 1]", 'name="my run"', "x=1"]
    assert split_overrides("   ") == []


# -- (c) scores written by another connection appear live on the run screen --------------------


async def test_run_screen_updates_live_without_key_press(env: dict) -> None:
    store = env["store"]
    n_clips = 5 * len(FSD2019_CLASSES)
    truth = multi_hot_truth(n_clips, len(FSD2019_CLASSES), seed=3)
    folds = np.arange(n_clips) // len(FSD2019_CLASSES)  # every class has positives in every fold
    oof = tagger_scores(truth, skill=3.0, seed=7)
    ds = store.register_dataset(env["data"], name="data", classes=FSD2019_CLASSES, n_curated=n_clips)
    job_id = store.enqueue("train", {"train": {"epochs": 2, "folds": [0, 1]}}, name="live")
    store.claim("w")
    run_id = "train-0001"
    runs_root = env["tmp"] / "runs"
    record_run(store, runs_root, run_id, dataset_id=ds, job_id=job_id, name="live", status="running",
               overrides=('model.arch="small"', "train.epochs=2", "train.folds=[0, 1]"))
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: run_id in table(app, "runs").rows, what="run row")
        await pilot.press("enter")
        await wait_until(pilot, lambda: type(app.screen).__name__ == "RunScreen", what="run screen")
        screen = app.screen
        await wait_until(pilot, lambda: screen.detail is not None, what="first load")
        assert cell_text(table(app, "folds"), "0", "lwlrap") == "—"
        assert table(app, "classes").row_count == 0

        # The test plays the training job: epochs as its folds report them, then fold 0's scores.
        fold0 = stream_epochs(store, run_id, 0, [0.41, 0.55], seconds=2.0)
        stream_epochs(store, run_id, 1, [0.38], seconds=2.0)
        fold0_lwlrap = record_trained_fold(store, runs_root, run_id, 0, fold0, truth, oof, folds)
        assert fold0_lwlrap == 0.55  # the best epoch's score, as early stopping saw it

        folds_table = table(app, "folds")
        await wait_until(pilot, lambda: cell_text(folds_table, "0", "lwlrap") == "0.5500", what="fold 0's score")
        assert cell_text(folds_table, "0", "best_epoch") == "2"
        assert cell_text(folds_table, "0", "n_val") == str(int((folds == 0).sum()))
        assert cell_text(folds_table, "0", "epochs") == "2/2"
        assert cell_text(folds_table, "1", "epochs") == "1/2"
        assert cell_text(folds_table, "1", "lwlrap") == "—"
        chart = screen.query_one("#chart")
        await wait_until(pilot, lambda: chart.series == {0: [(1, 0.41), (2, 0.55)], 1: [(1, 0.38)]},
                         what="the epochs in the chart")

        # Fold 1 ends, then the run: its out-of-fold scores over the two folds trained.
        fold1 = stream_epochs(store, run_id, 1, [0.47], first_epoch=2, seconds=2.0)
        record_trained_fold(store, runs_root, run_id, 1, fold1, truth, oof, folds)
        finish_trained_run(store, runs_root, run_id, truth)
        rows = np.isin(folds, [0, 1])
        lrap, weights = per_class_lwlrap(truth[rows], oof[rows])
        n_pos = truth[rows].sum(axis=0).astype(int)

        classes = table(app, "classes")
        await wait_until(pilot, lambda: classes.row_count == 80, what="the out-of-fold class scores")
        # Classes sorted by out-of-fold LRAP, best first, with weight and positives.
        order = [int(k) for k in classes.keys_in_order()]
        assert sorted(order) == list(range(80))
        shown = [lrap[i] for i in order]
        assert shown == sorted(shown, reverse=True)
        for i in (order[0], order[-1]):
            assert cell_text(classes, str(i), "class") == FSD2019_CLASSES[i]
            assert cell_text(classes, str(i), "lrap") == f"{lrap[i]:.4f}"
            assert cell_text(classes, str(i), "weight") == f"{weights[i] * 100:.2f}%"
            assert cell_text(classes, str(i), "n_pos") == str(n_pos[i])
        mean_fold = (0.55 + 0.47) / 2
        await wait_until(pilot, lambda: f"{mean_fold:.4f}" in screen_text(app), what="the header's mean fold LWLRAP")

        # f switches the class table to fold 0 (its own scores, recorded when the fold ended).
        lrap0, _ = per_class_lwlrap(truth[folds == 0], oof[folds == 0])
        await pilot.press("f")
        await wait_until(pilot, lambda: classes.row_count == 80 and screen.class_fold == 0, what="fold 0 classes")
        shown0 = [lrap0[int(k)] for k in classes.keys_in_order()]
        assert shown0 == sorted(shown0, reverse=True)
        top = classes.keys_in_order()[0]
        assert cell_text(classes, top, "lrap") == f"{lrap0[int(top)]:.4f}"
        assert "fold 0" in classes.border_title

        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), what="main screen")


async def test_tables_keep_cursor_row_and_sort_when_data_changes(env: dict) -> None:
    store = env["store"]
    for i, cv in enumerate((0.61, 0.83, 0.72)):
        record_run(store, env["tmp"] / "runs", f"train-{i:04d}", dataset_id=None, name=f"run{i}", cv=cv)
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        runs = table(app, "runs")
        await wait_until(pilot, lambda: runs.row_count == 3, what="three runs")
        # A digit sorts by that sortable column: 4 = CV LWLRAP (high first).
        await pilot.press("4")
        assert runs.sort_column == "cv" and runs.sort_reverse
        await wait_until(pilot, lambda: app.overview.run_view.order == "cv", what="the sort done in SQL")
        assert runs.keys_in_order() == ["train-0001", "train-0002", "train-0000"]
        assert runs.selected_key() == "train-0001"  # a new sort shows its top row

        # A better run arrives from another connection: it goes on top, the cursor stays on its row.
        record_run(store, env["tmp"] / "runs", "train-0003", dataset_id=None, name="run3", cv=0.9)
        await wait_until(pilot, lambda: runs.row_count == 4, what="new run")
        assert runs.keys_in_order() == ["train-0003", "train-0001", "train-0002", "train-0000"]
        assert runs.selected_key() == "train-0001"
        assert runs.cursor_row == 1
        assert cell_text(runs, "train-0003", "cv") == "0.9000"

        await pilot.press("S")  # reverse: lowest CV LWLRAP first
        assert runs.keys_in_order() == ["train-0000", "train-0002", "train-0001", "train-0003"]
        assert runs.selected_key() == "train-0000"


async def test_job_progress_from_a_worker_process_appears_without_key_press(env: dict, spawn_worker) -> None:
    # Far longer than the test waits (the job is still running when the test ends): on a busy machine the
    # worker and its job may take minutes to start, and the probe must not end before the bar has moved.
    seconds = 600.0
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        jobs = table(app, "jobs")
        await wait_until(pilot, lambda: app.overview is not None, what="first poll")
        # A real worker runs a real probe job, which reports its progress every 0.1 s.
        job_id = env["store"].enqueue("probe", {"seconds": seconds}, name="progress")
        key = str(job_id)
        spawn_worker(env["db"])
        message = re.compile(r"probe (\d+\.\d)/600\.0s")
        seen: list[tuple[float, float]] = []  # (elapsed in the message, percent in the progress column)

        def progress_moved() -> bool:
            if key not in jobs.rows or not cell_text(jobs, key, "status").endswith("running"):
                return False
            found = message.fullmatch(cell_text(jobs, key, "message"))
            percent = re.search(r"(\d+)%$", cell_text(jobs, key, "progress"))
            if found is None or percent is None:
                return False
            elapsed, shown = float(found.group(1)), float(percent.group(1))
            if not seen or seen[-1] != (elapsed, shown):
                seen.append((elapsed, shown))
            # The row changed on its own, more than once, and the bar has moved. Waiting for a second
            # value, not for a percentage: a slow console may see the first value late, already past it.
            return len(seen) >= 2 and seen[-1][0] > seen[0][0] and shown >= 1

        # Generous: the bound only has to outlast a worker start on a loaded machine (the probe runs 600 s).
        await wait_until(pilot, progress_moved, timeout=300.0, what="the probe's progress to move in the jobs table")
        # Fraction and message come from one write: the bar shows the message's share of the time.
        for elapsed, shown in seen:
            assert abs(shown - 100 * elapsed / seconds) <= 1.0, (elapsed, shown)
        assert cell_text(jobs, key, "name") == "progress"
        row = env["store"].get_job(job_id)
        assert row.status == "running" and row.progress * 100 >= seen[-1][1] - 0.5


# -- (d) cancel a queued job ------------------------------------------------------------------


async def test_cancel_queued_job_from_jobs_table(env: dict) -> None:
    store = env["store"]
    first = store.enqueue("train", {}, name="keep")
    second = store.enqueue("train", {}, name="drop")
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        jobs = table(app, "jobs")
        await wait_until(pilot, lambda: jobs.row_count == 2, what="two jobs")
        await pilot.press("tab")
        assert app.focused is jobs
        assert jobs.selected_key() == str(second)  # newest first

        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        await pilot.press("n")  # changing one's mind keeps the job
        await settle_workers(pilot, app)
        assert store.get_job(second).status == "queued"

        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        await pilot.press("y")
        await app.workers.wait_for_complete()
        assert store.get_job(second).status == "cancelled"
        assert store.get_job(first).status == "queued"
        await wait_until(pilot, lambda: cell_text(jobs, str(second), "status").endswith("cancelled"),
                         what="cancelled status in the table")


# -- the job details follow the job's log as the worker writes it ------------------------------


def watchdog_threads() -> list[threading.Thread]:
    """Live watchdog threads (observers, emitters, inotify readers)."""
    return [t for t in threading.enumerate() if isinstance(t, BaseThread) and t.is_alive()]


def append(path: Path, text: str) -> None:
    """Append as another process would: its own file handle, flushed."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()


async def test_job_log_shows_lines_appended_by_another_writer(env: dict) -> None:
    store = env["store"]
    job_id = store.enqueue("train", {"train": {"epochs": 1}}, name="logged")
    store.claim("w")
    run_dir = record_run(store, env["tmp"] / "runs", "train-0001", dataset_id=None, job_id=job_id, name="logged",
                         status="running")
    log_path = run_dir / "job.log"
    log_path.write_text("".join(f"setup {i}\n" for i in range(250)))
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_job_details(pilot, app, job_id)
        log = screen.job_log
        # The last 200 lines of what is already there.
        expected = [f"setup {i}" for i in range(50, 250)]
        await wait_until(pilot, lambda: list(log.lines) == expected, what="the tail of the existing log")
        assert log.following
        assert str(log_path) in screen_text(app)

        # The job writes on; the test only waits. A line written in two parts shows once complete.
        append(log_path, "fold 0 epoch 1 val lwlrap 0.41\nfold 0 epoch 2 val ")
        await wait_until(pilot, lambda: log.lines[-1] == "fold 0 epoch 1 val lwlrap 0.41",
                         what="the first appended line")
        append(log_path, "lwlrap 0.55\n")
        await wait_until(pilot, lambda: log.lines[-1] == "fold 0 epoch 2 val lwlrap 0.55",
                         what="the completed line")
        assert list(log.lines[-3:]) == ["setup 249", "fold 0 epoch 1 val lwlrap 0.41",
                                        "fold 0 epoch 2 val lwlrap 0.55"]
        assert len(log.lines) == 200
        # The view follows the end: the newest line is on screen.
        await wait_until(pilot, lambda: "fold 0 epoch 2 val lwlrap 0.55" in screen_text(app),
                         what="the newest line on screen")

        # A file that shrinks (truncated, then written again) is shown from its start.
        log_path.write_text("attempt 2\n")
        await wait_until(pilot, lambda: list(log.lines) == ["attempt 2"], what="the truncated log")
        append(log_path, "resumed from fold 1\n")
        await wait_until(pilot, lambda: list(log.lines) == ["attempt 2", "resumed from fold 1"],
                         what="lines after truncation")


async def test_job_log_is_followed_once_the_run_and_the_file_exist(env: dict) -> None:
    store = env["store"]
    job_id = store.enqueue("train", {"train": {"epochs": 1}}, name="waiting")
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_job_details(pilot, app, job_id)
        log = screen.job_log
        # Queued: no run, nothing to follow, and no empty log box (the summary says why).
        await wait_until(pilot, lambda: log.lines and log.lines[0].startswith("no log yet"), what="no log yet")
        assert log.observer is None and not log.display
        assert "not started" in screen_text(app)

        # The job starts: its run (and run directory) appear, the log file not yet.
        store.claim("w")
        run_dir = record_run(store, env["tmp"] / "runs", "train-0001", dataset_id=None, job_id=job_id,
                             name="waiting", status="running")
        await wait_until(pilot, lambda: log.following, what="the run directory watched")
        assert list(log.lines) == ["no log yet"]
        assert screen.job["run_id"] == "train-0001"

        # The worker creates the log and writes to it.
        append(run_dir / "job.log", "=== job 1 attempt 1 ===\nloading curated clips\n")
        await wait_until(pilot, lambda: list(log.lines) == ["=== job 1 attempt 1 ===", "loading curated clips"],
                         what="the new file's lines")
        append(run_dir / "job.log", "fold 0 epoch 1\n")
        await wait_until(pilot, lambda: log.lines[-1] == "fold 0 epoch 1", what="an appended line")


async def test_job_log_observer_stops_when_the_details_close(env: dict) -> None:
    store = env["store"]
    job_id = store.enqueue("train", {}, name="closing")
    store.claim("w")
    run_dir = record_run(store, env["tmp"] / "runs", "train-0001", dataset_id=None, job_id=job_id, name="closing",
                         status="running")
    (run_dir / "job.log").write_text("started\n")
    before = watchdog_threads()
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_job_details(pilot, app, job_id)
        log = screen.job_log
        await wait_until(pilot, lambda: list(log.lines) == ["started"], what="the log")
        observer = log.observer
        assert observer is not None and observer.is_alive()
        assert len(watchdog_threads()) > len(before)

        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), what="main screen")
        await wait_until(pilot, lambda: not observer.is_alive() and watchdog_threads() == before,
                         what="the observer's threads to end")
        assert log.observer is None
        # Writing to the file after closing reaches nobody and breaks nothing.
        append(run_dir / "job.log", "after close\n")
        await settle_workers(pilot, app)
        assert watchdog_threads() == before


# -- --demo: write the demo dataset with a progress bar, then offer the demo preset -------------


async def test_demo_writes_dataset_then_opens_queue_with_demo_preset(env: dict) -> None:
    root = env["tmp"] / "demo_data"
    small = {"clips_per_class": 1, "noisy_per_class": 1, "test_per_class": 1, "max_seconds": 0.5}
    app = FsatConsole(env["db"], data_root=root, demo=True, poll_interval=0.1, demo_options=small)
    async with app.run_test(size=SIZE) as pilot:
        queue = await open_queue_dialog(pilot, app, press=False, timeout=30.0)
        await wait_until(pilot, lambda: queue.preset == "demo", what="the demo preset highlighted")
        assert queue.query_one("#data-root", Input).value == str(root.resolve())
        with open(root / "train_curated.csv") as fh:
            assert len(fh.read().strip().splitlines()) == 1 + len(FSD2019_CLASSES)
        assert (root / "sample_submission.csv").is_file()

        await pilot.press("enter")  # the user only confirms
        await app.workers.wait_for_complete()
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), what="dialog to close")
    (job,) = env["store"].list_jobs()
    spec = env["store"].get_job(job["id"]).spec
    assert spec["data"]["root"] == str(root.resolve())
    assert job["name"] == spec["name"]


# -- (e) help ----------------------------------------------------------------------------------


async def test_help_screen_lists_keys_and_database(env: dict) -> None:
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        text = screen_text(app)
        assert str(env["db"].resolve()) in text
        keys = help_text(app.screen)  # the whole scrollable list, not only what fits
        for words in ("Cancel the selected job", "Queue a training job", "Per-class table", "Quit",
                      "Filter the focused table", "Compare the marked runs", "out-of-fold (CV) LWLRAP"):
            assert words in keys, words
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), what="main screen")


async def test_command_palette_reaches_every_screen_and_every_run(env: dict) -> None:
    job_id = env["store"].enqueue("train", {}, name="palette")
    runs_root = env["tmp"] / "runs"
    record_run(env["store"], runs_root, "train-0042", dataset_id=None, job_id=job_id, name="palette", cv=0.5)
    # 1,004 newer runs: the one to find is far beyond any page the tables show.
    for i in range(1, 1005):
        record_run(env["store"], runs_root, f"infer-{i + 1000:04d}", kind="infer", parent="train-0042",
                   dataset_id=None, name=f"tta {i}", status="running")
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.overview is not None and app.overview.runs, what="first poll")
        assert "train-0042" not in table(app, "runs").rows  # not on the first page
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for title in ("Runs and jobs", "Queue a training job", "Help"):
            assert title in titles, title
        await pilot.press("ctrl+p")
        await wait_until(pilot, lambda: isinstance(app.screen, CommandPalette), what="palette")
        await pilot.press(*"train-0042")
        results = app.screen.query_one(CommandList)

        def run_on_top() -> bool:
            option = results.highlighted_option
            return option is not None and "Run train-0042 palette" in str(option.prompt)

        await wait_until(pilot, run_on_top, what="the run as the top match")
        await pilot.press("enter")
        await wait_until(pilot, lambda: getattr(app.screen, "run_id", None) == "train-0042", what="run screen")
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), what="main screen")
        # Jobs too, by id.
        await pilot.press("ctrl+p")
        await wait_until(pilot, lambda: isinstance(app.screen, CommandPalette), what="palette")
        await pilot.press(*f"job {job_id} palette")
        results = app.screen.query_one(CommandList)
        await wait_until(pilot, lambda: results.highlighted_option is not None
                         and f"Job {job_id} palette" in str(results.highlighted_option.prompt), what="the job")


async def test_deleted_database_is_reported_not_raised(env: dict) -> None:
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.overview is not None, what="first poll")
        for suffix in ("", "-wal", "-shm"):
            Path(str(env["db"]) + suffix).unlink(missing_ok=True)
        await wait_until(pilot, lambda: app.live_problem is not None, what="problem report")
        assert "gone" in app.live_problem
        assert str(env["db"].resolve()) in app.live_problem
        assert app.is_running


# -- (f) start-up stays light ---------------------------------------------------------------------


def test_console_import_does_not_load_heavy_libraries() -> None:
    assert heavy_modules_loaded_by("import fsat_console.app, fsat_console.screens.run") == []


# -- (g) the console starts a worker when none is alive ---------------------------------------------


async def test_console_starts_worker_when_none_alive(env: dict) -> None:
    app = FsatConsole(env["db"], data_root=env["data"], start_worker=True, poll_interval=0.1)
    process = None
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.worker_process is not None, what="worker spawn")
            process = app.worker_process
            pid = process.pid
            await wait_until(pilot, lambda: any(w["pid"] == pid for w in env["store"].live_workers()),
                             timeout=30.0, what="worker row")
            await wait_until(pilot, lambda: f"worker pid {pid}" in screen_text(app), what="status line")
        assert (env["tmp"] / "worker.log").exists()
        # Closing the console leaves the worker running.
        assert process.poll() is None
    finally:
        if process is not None:
            os.killpg(process.pid, signal.SIGTERM)  # its own session: the pid is the group id
            process.wait(timeout=30)


async def test_console_does_not_start_a_second_worker(env: dict) -> None:
    env["store"].register_worker("already-here", pid=os.getpid())
    app = FsatConsole(env["db"], data_root=env["data"], start_worker=True, poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await wait_until(pilot, lambda: app.overview is not None, what="first poll")
        assert app.worker_process is None
        assert [w["id"] for w in env["store"].live_workers()] == ["already-here"]
        assert f"worker pid {os.getpid()}" in screen_text(app)
