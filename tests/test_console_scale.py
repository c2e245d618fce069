"""The console with many runs, fast typing, destructive keys, failures and small terminals (Pilot, real SQLite).

Each test here was written against a defect seen in use and failed before
the fix: only the newest 200 runs existed for the console, keys typed fast
landed in the wrong field, ``c`` cancelled whatever the focused table had
selected, failures were silent, an idle worker outlived the console.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from pathlib import Path

import numpy as np
from textual.widgets import Input, Static

from engine.store import Store
from fsat_console.app import FsatConsole
from fsat_console.screens.compare import CompareScreen
from fsat_console.screens.confirm import ConfirmScreen
from fsat_console.screens.ensemble import EnsembleScreen
from fsat_console.screens.job import JobScreen
from fsat_console.screens.main import MainScreen
from fsat_console.screens.queue import QueueScreen
from fsat_console.widgets.live_table import LiveTable
from tests.helpers.console import open_queue_dialog, screen_text, settle_workers, table
from tests.helpers.datasets import multi_hot_truth
from tests.helpers.recording import finish_trained_run, record_run, record_trained_fold, stream_epochs, tagger_scores
from tests.helpers.waiting import wait_for, wait_until

SIZE = (160, 48)


def many_runs(store: Store, n: int, runs_root: Path) -> None:
    """``n`` finished cnn14 training runs (``record_run``); CV LWLRAP ``((i * 7919) % n) / n``, shuffled across ids."""
    for i in range(1, n + 1):
        record_run(store, runs_root, f"train-{i:04d}", dataset_id=None, name=f"run {i}", cv=((i * 7919) % n) / n,
                   overrides=('model.arch="cnn14"',))


async def test_every_run_is_reachable_and_totals_are_true(env: dict) -> None:
    many_runs(env["store"], 1005, env["tmp"] / "runs")
    best = sorted(range(1, 1006), key=lambda i: -((i * 7919) % 1005) / 1005)[:10]
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        runs = table(app, "runs")
        await wait_until(pilot, lambda: runs.row_count == 200, what="the first page")
        # The status line and the title count every run, not the page.
        await wait_until(pilot, lambda: "1,005 runs" in screen_text(app), what="true total in the status line")
        assert runs.border_title.startswith("Runs (1,005)")
        # Sorting by CV LWLRAP is done by the database: the ten best of all 1005 lead.
        await pilot.press("4")
        await wait_until(pilot, lambda: runs.keys_in_order()[:10] == [f"train-{i:04d}" for i in best],
                         what="the ten best runs on top")
        # Pages reach the oldest runs.
        await pilot.press("1")  # sort by run id, ascending
        await wait_until(pilot, lambda: runs.keys_in_order()[:1] == ["train-0001"], what="sorted by id")
        for _ in range(5):
            await pilot.press("right_square_bracket")
        await wait_until(pilot, lambda: runs.keys_in_order() == [f"train-{i:04d}" for i in range(1001, 1006)],
                         what="the last page")
        assert "1,001–1,005 of 1,005" in runs.border_subtitle


async def test_filter_bar_compiles_shows_errors_and_keeps_text(env: dict) -> None:
    store = env["store"]
    many_runs(store, 30, env["tmp"] / "runs")
    store.set_run_tags("train-0007", ["best"])
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        runs = table(app, "runs")
        await wait_until(pilot, lambda: runs.row_count == 30, what="runs")
        await pilot.press("slash")
        bar = app.screen.query_one("#command-bar", Input)
        assert app.focused is bar
        await pilot.press(*"cv>0.5 AND modle:cnn14", "enter")
        error = app.screen.query_one("#bar-error", Static)
        await wait_until(pilot, lambda: error.display, what="the error")
        assert "unknown field 'modle'" in str(error.render())
        assert bar.value == "cv>0.5 AND modle:cnn14" and bar.display  # nothing lost
        bar.value = "tag:best OR cv>0.95"
        await pilot.press("enter")
        expected = {"train-0007"} | {f"train-{i:04d}" for i in range(1, 31) if ((i * 7919) % 30) / 30 > 0.95}
        await wait_until(pilot, lambda: set(runs.rows) == {k for k in expected}, what="filtered rows")
        assert "filter: tag:best OR cv>0.95" in runs.border_title
        assert not bar.display and app.focused is runs


async def test_tags_and_notes_are_edited_inline_and_stored(env: dict) -> None:
    many_runs(env["store"], 3, env["tmp"] / "runs")
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        runs = table(app, "runs")
        await wait_until(pilot, lambda: runs.row_count == 3, what="runs")
        assert runs.selected_key() == "train-0003"
        await pilot.press("t", *"best paper", "enter")
        await wait_until(pilot, lambda: runs.get_cell("train-0003", "tags").plain == "best paper", what="tags")
        await pilot.press("N", *"mixup helps rare classes", "enter")
        await wait_until(pilot, lambda: "mixup" in runs.get_cell("train-0003", "note").plain, what="note")
    store = env["store"]
    assert store.run_tags("train-0003") == ["best", "paper"]
    assert store.get_run("train-0003")["note"] == "mixup helps rare classes"


async def test_archive_hides_a_run_and_keeps_it(env: dict) -> None:
    many_runs(env["store"], 3, env["tmp"] / "runs")
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        runs = table(app, "runs")
        await wait_until(pilot, lambda: runs.row_count == 3, what="runs")
        await pilot.press("a")
        await wait_until(pilot, lambda: "train-0003" not in runs.rows, what="the archived run hidden")
        assert env["store"].get_run("train-0003")["archived"] == 1
        await pilot.press("A")
        await wait_until(pilot, lambda: list(runs.rows) == ["train-0003"], what="the archive")
        assert runs.border_title.startswith("Archived runs (1)")


async def test_export_writes_every_matching_row(env: dict) -> None:
    many_runs(env["store"], 250, env["tmp"] / "runs")
    out = env["tmp"] / "exports" / "runs.md"
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        runs = table(app, "runs")
        await wait_until(pilot, lambda: runs.row_count == 200, what="runs")
        await pilot.press("E")
        bar = app.screen.query_one("#command-bar", Input)
        bar.value = str(out)
        await pilot.press("enter")
        await wait_until(pilot, lambda: out.exists(), what="the export")
    lines = out.read_text().splitlines()
    assert lines[0].startswith("| run_id | kind | name |") and len(lines) == 2 + 250


async def test_compare_marked_runs_against_a_pinned_baseline(env: dict) -> None:
    from engine.data.labels import FSD2019_CLASSES
    from engine.metrics import per_class_lwlrap

    store = env["store"]
    runs_root = env["tmp"] / "runs"
    n_clips = 2 * len(FSD2019_CLASSES)
    truth = multi_hot_truth(n_clips, len(FSD2019_CLASSES), seed=4)
    folds = np.arange(n_clips) // len(FSD2019_CLASSES)
    ds = store.register_dataset(env["data"], name="data", classes=FSD2019_CLASSES, n_curated=n_clips)
    oofs = {}
    for run_id, skill, epochs, seed in (("train-0001", 2.5, 10, 3), ("train-0002", 3.5, 20, 4)):
        record_run(store, runs_root, run_id, dataset_id=ds, status="running",
                   overrides=('model.arch="cnn14"', f"train.epochs={epochs}", "train.n_folds=2"))
        oofs[run_id] = tagger_scores(truth, skill, seed=seed)
        for k in range(2):
            records = stream_epochs(store, run_id, k, [0.1 * skill + 0.02 * k - 0.1 / e for e in (1, 2)])
            record_trained_fold(store, runs_root, run_id, k, records, truth, oofs[run_id], folds)
        finish_trained_run(store, runs_root, run_id, truth)
    cv = {r: store.get_run(r)["cv_lwlrap"] for r in oofs}
    lrap = {r: per_class_lwlrap(truth, oof)[0] for r, oof in oofs.items()}
    delta = {f"{b - a:+.4f}" for a, b in zip(lrap["train-0001"], lrap["train-0002"])}
    fold_scores = [f["lwlrap"] for f in store.fold_scores("train-0001")]
    summary = f"{statistics.mean(fold_scores):.4f} ± {statistics.stdev(fold_scores):.4f} (2)"
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        runs = table(app, "runs")
        await wait_until(pilot, lambda: runs.row_count == 2, what="runs")
        await pilot.press("1")  # by run id: train-0001 first
        await wait_until(pilot, lambda: runs.keys_in_order() == ["train-0001", "train-0002"], what="order")
        await pilot.press("p")  # pin train-0001 as the baseline
        await wait_until(pilot, lambda: runs.get_cell("train-0002", "delta").plain
                         == f"{cv['train-0002'] - cv['train-0001']:+.4f}", what="Δ column")
        await pilot.press("space", "space", "x")
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.comp is not None,
                         what="compare screen")
        screen = app.screen
        assert screen.comp.baseline == "train-0001"
        classes = screen.query_one("#compare-classes", LiveTable)
        await wait_until(pilot, lambda: classes.row_count == 80, what="80 classes")
        assert classes.sort_column == "delta:train-0002" and classes.sort_reverse
        assert {classes.get_cell(k, "delta:train-0002").plain for k in classes.rows} == delta
        diff = screen.query_one("#compare-diff", LiveTable)
        assert list(diff.rows) == ["train.epochs"]  # only what differs
        assert summary in screen_text(app)
        chart = screen.query_one("#compare-chart")
        assert [line.label for line in chart.lines] == ["train-0001", "train-0002"]
        assert chart.lines[0].marker != chart.lines[1].marker  # told apart without colour
        assert chart.x_max == 20  # the planned epochs


async def test_ensemble_builder_lists_every_finished_run(env: dict) -> None:
    from engine.data.labels import FSD2019_CLASSES

    store = env["store"]
    root = env["tmp"] / "ds"
    root.mkdir()
    ds = store.register_dataset(root, name="ds", classes=FSD2019_CLASSES, n_curated=4)
    runs_root = env["tmp"] / "runs"
    # The trained run they infer from holds no oof.npy: it is no candidate.
    record_run(store, runs_root, "train-0000", dataset_id=ds, overrides=('model.arch="cnn14"',), cv=0.5)
    for i in range(1, 206):
        record_run(store, runs_root, f"infer-{i:04d}", kind="infer", parent="train-0000", dataset_id=ds,
                   oof=np.full((4, 80), i / 300, dtype=np.float32), cv=i / 300)
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.overview is not None, what="first poll")
        await pilot.press("e")
        await wait_until(pilot, lambda: isinstance(app.screen, EnsembleScreen) and app.screen.loaded,
                         what="ensemble screen", timeout=20)
        assert len(app.screen.candidates) == 205
        assert "infer-0001" in app.screen.candidates


def burst(app, keys: list[str]) -> None:
    """Post keys the way the terminal driver does when they arrive together: all at once, no waiting."""
    from textual import events

    for key in keys:
        char = key if len(key) == 1 else ("\t" if key == "tab" else None)
        app.post_message(events.Key(key if len(key) > 1 else (key if key != " " else "space"), char))


async def test_fast_typing_in_the_queue_dialog_lands_in_the_right_fields(env: dict) -> None:
    keys = ["n", "tab", "tab", *"train.epochs=2", "tab", "tab", *"fast"]
    for trial in range(3):
        app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.overview is not None, what="first poll")
            burst(app, keys)
            await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen), what="dialog")
            queue = app.screen
            await wait_until(pilot, lambda: [i.value for i in queue.query("#name")] == ["fast"], timeout=20,
                             what=f"trial {trial}: the name typed last in the name field; fields: "
                                  + repr([(i.id, i.value) for i in queue.query(Input)]))
            assert queue.query_one("#overrides", Input).value == "train.epochs=2", trial
            assert queue.query_one("#data-root", Input).value == str(env["data"].resolve()), trial
            assert queue.query_one("#priority", Input).value == "0", trial


async def test_c_acts_only_on_the_jobs_table_and_names_what_it_cancels(env: dict) -> None:
    store = env["store"]
    running = store.enqueue("train", {"train": {"epochs": 8}}, name="long one")
    claimed = store.claim("w")
    store.set_progress(running, 0.42, "fold 2 epoch 7", worker_id="w", attempt=claimed.attempts)
    record_run(store, env["tmp"] / "runs", "train-0001", dataset_id=None, job_id=running, name="long one",
               status="running")
    queued = store.enqueue("probe", {}, name="other")
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        runs, jobs = table(app, "runs"), table(app, "jobs")
        await wait_until(pilot, lambda: runs.row_count == 1 and jobs.row_count == 2, what="rows")
        assert app.focused is runs
        await pilot.press("c")  # on the runs table: not a cancel key
        await settle_workers(pilot, app)
        assert not isinstance(app.screen, ConfirmScreen)
        assert "Cancel job" not in screen_text(app)  # not offered in the footer either
        await pilot.press("tab")
        jobs.move_cursor(row=jobs.get_row_index(str(running)))
        await wait_until(pilot, lambda: "Cancel job" in screen_text(app), what="c in the footer on a running job")
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        text = screen_text(app)
        for words in (f"Cancel job {running}", "train 'long one'", "running at 42%", "fold 2 epoch 7"):
            assert words in text, words
        await pilot.press("n")
    assert store.get_job(running).status == "running" and store.get_job(queued).status == "queued"


async def test_the_jobs_cursor_moves_to_the_job_just_queued(env: dict) -> None:
    store = env["store"]
    for i in range(5):
        store.enqueue("probe", {}, name=f"old {i}")
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        jobs = table(app, "jobs")
        await wait_until(pilot, lambda: jobs.row_count == 5, what="jobs")
        await pilot.press("tab", "down", "down", "down")
        assert jobs.selected_key() == "2"
        queue = await open_queue_dialog(pilot, app)
        await pilot.press("home", "enter")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), what="dialog closed")
        await wait_until(pilot, lambda: jobs.selected_key() == "6" and app.focused is jobs,
                         what="cursor on the new job")
        assert queue.queued_job == 6


async def test_a_failed_or_finished_job_raises_a_notification(env: dict) -> None:
    store = env["store"]
    failing = store.enqueue("probe", {}, name="doomed")
    ok = store.enqueue("probe", {}, name="fine")
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.overview is not None, what="first poll")
        first = store.claim("w")
        store.fail_job(failing, "CUDA out of memory at fold 3", worker_id="w", attempt=first.attempts)
        second = store.claim("w")
        store.finish_job(ok, message="CV LWLRAP 0.8100", worker_id="w", attempt=second.attempts)

        def notified() -> list[str]:
            return [n.message for n in app._notifications]

        await wait_until(pilot, lambda: any("doomed" in m and "CUDA out of memory" in m for m in notified())
                         and any("fine" in m and "CV LWLRAP 0.8100" in m for m in notified()),
                         what="two notifications")
        severities = {n.message.split(" ")[1]: n.severity for n in app._notifications if n.message.startswith("Job")}
        assert severities[str(failing)] == "error" and severities[str(ok)] == "information"


async def test_failed_job_details_show_the_error_once_and_no_empty_log(env: dict) -> None:
    store = env["store"]
    error = ("no PANNs checkpoint configured: set embed.checkpoint to a Cnn14 .pth file (see README, "
             "'PANNs checkpoints'); the baseline needs the pretrained encoder and nothing was computed")
    job = store.enqueue("baseline", {}, name="baseline")
    claimed = store.claim("w")
    store.fail_job(job, error, "Traceback (most recent call last):\nConfigError: no PANNs checkpoint",
                   worker_id="w", attempt=claimed.attempts)
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_until(pilot, lambda: app.overview is not None, what="first poll")
        app.open_job(job)
        await wait_until(pilot, lambda: isinstance(app.screen, JobScreen), what="details")

        def shown() -> str:
            return " ".join(screen_text(app).replace("█", " ").split())

        await wait_until(pilot, lambda: "nothing was computed" in shown(), what="the error, not cut")
        await settle_workers(pilot, app)
        flat = shown()
        assert flat.count("no PANNs checkpoint configured") == 1
        assert not app.screen.job_log.display
        assert "R retry" in flat and "c cancel" not in flat


async def test_quitting_stops_an_idle_worker_the_console_started(env: dict) -> None:
    app = FsatConsole(env["db"], data_root=env["data"], start_worker=True, poll_interval=0.1)
    process = None
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.worker_process is not None, what="worker spawn")
            process = app.worker_process
            await wait_until(pilot, lambda: any(w["pid"] == process.pid for w in env["store"].live_workers()),
                             timeout=30.0, what="worker alive")
            await pilot.press("q")
        assert process.wait(timeout=20) == 0
        assert "stopped the idle worker" in app.exit_note
        assert env["store"].live_workers() == []
    finally:
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def test_keep_worker_leaves_it_running(env: dict) -> None:
    app = FsatConsole(env["db"], data_root=env["data"], start_worker=True, poll_interval=0.1, keep_worker=True)
    process = None
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.worker_process is not None, what="worker spawn")
            process = app.worker_process
            await pilot.press("q")
        closed = time.time()
        # Still working after the console closed: its heartbeat moves on past the moment of closing.
        wait_for(lambda: any(w["pid"] == process.pid and w["heartbeat_at"] > closed
                             for w in env["store"].live_workers()), timeout=30, what="a heartbeat after quit")
        assert process.poll() is None and "keeps running" in app.exit_note
    finally:
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


async def test_a_new_database_says_where_it_is(tmp_path: Path) -> None:
    db = tmp_path / "fresh" / "experiments.db"
    app = FsatConsole(db, poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.overview is not None, what="first poll")
        assert any("a new one was created" in n.message and str(db.resolve()) in n.message
                   for n in app._notifications)
    again = FsatConsole(db, poll_interval=0.1)
    assert not again.created_db


async def test_live_columns_keep_their_width_while_messages_grow(env: dict) -> None:
    store = env["store"]
    job = store.enqueue("probe", {}, name="p")
    claimed = store.claim("w")
    store.set_progress(job, 0.1, "x", worker_id="w", attempt=claimed.attempts)
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        jobs = table(app, "jobs")
        await wait_until(pilot, lambda: jobs.row_count == 1, what="the job")
        widths = [c.get_render_width(jobs) for c in jobs.columns.values()]
        store.set_progress(job, 0.55, "fold 3 epoch 12 val lwlrap 0.8123 (best 0.8200) " * 3, worker_id="w",
                           attempt=claimed.attempts)
        await wait_until(pilot, lambda: "55%" in jobs.get_cell(str(job), "progress").plain, what="update")
        assert [c.get_render_width(jobs) for c in jobs.columns.values()] == widths


async def test_requeue_a_cancelled_job_resumes_its_run(env: dict) -> None:
    store = env["store"]
    job = store.enqueue("train", {"train": {"epochs": 20}}, name="long")
    claimed = store.claim("w")
    record_run(store, env["tmp"] / "runs", "train-0001", dataset_id=None, job_id=job, name="long", status="running",
               overrides=("train.epochs=20",))
    stream_epochs(store, "train-0001", 0, [0.5] * 17)
    store.request_cancel(job)
    store.mark_cancelled(job, worker_id="w", attempt=claimed.attempts)
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        runs = table(app, "runs")
        await wait_until(pilot, lambda: runs.row_count == 1, what="run")
        await pilot.press("enter")
        await wait_until(pilot, lambda: getattr(app.screen, "detail", None) is not None, what="run screen")
        folds = app.screen.query_one("#folds", LiveTable)
        await wait_until(pilot, lambda: "0" in folds.rows and folds.get_cell("0", "state").plain
                         == "⏸ stopped 17/20", what="stopped fold")
        await wait_until(pilot, lambda: "R Resume" in screen_text(app), what="R in the footer")
        assert "Cancel job" not in screen_text(app)
        await pilot.press("R")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        assert "Run train-0001 resumes" in screen_text(app)
        await pilot.press("y")
        await app.workers.wait_for_complete()
    again = store.get_job(job)
    assert (again.status, again.attempts) == ("queued", 0)
    assert store.get_run("train-0001")["status"] == "interrupted"


async def test_baseline_dialog_warns_when_no_panns_checkpoint_is_configured(env: dict, monkeypatch) -> None:
    from engine.data.labels import FSD2019_CLASSES
    from fsat_console.screens.infer import BaselineScreen

    monkeypatch.delenv("FSAT_PANNS_DIR", raising=False)
    store = env["store"]
    ds = store.register_dataset(env["data"], name="data", classes=FSD2019_CLASSES, n_curated=1)
    # A small-model run: its encoder cannot embed the baseline, so the dialog needs a PANNs checkpoint.
    record_run(store, env["tmp"] / "runs", "train-0001", dataset_id=ds, overrides=('model.arch="small"',), cv=0.5)
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        app.open_run("train-0001")
        await wait_until(pilot, lambda: getattr(app.screen, "detail", None) is not None, what="run screen")
        await pilot.press("b")
        await wait_until(pilot, lambda: isinstance(app.screen, BaselineScreen), what="baseline dialog")
        dialog = app.screen
        warning = dialog.query_one("#encoder-error", Static)
        assert warning.display and "no PANNs checkpoint is configured" in str(warning.render())
        assert "FSAT_PANNS_DIR is not set" in str(warning.render())
        await pilot.press("enter")
        await settle_workers(pilot, app)
        assert app.screen is dialog and store.list_jobs() == []  # warned, not queued
        assert "Enter again queues anyway" in str(warning.render())
        await pilot.press("enter")
        await wait_until(pilot, lambda: not isinstance(app.screen, BaselineScreen), what="queued anyway")
    assert [j["kind"] for j in store.list_jobs()] == ["baseline"]


async def test_a_checkpoint_in_fsat_panns_dir_means_no_warning(env: dict, monkeypatch) -> None:
    from fsat_console.screens.infer import panns_checkpoint_problem

    folder = env["tmp"] / "panns"
    folder.mkdir()
    monkeypatch.setenv("FSAT_PANNS_DIR", str(folder))
    assert "holds no Cnn14_mAP=0.431.pth" in panns_checkpoint_problem("", "")
    (folder / "Cnn14_mAP=0.431.pth").write_bytes(b"x")
    assert panns_checkpoint_problem("", "") is None
    assert panns_checkpoint_problem(str(env["tmp"] / "nope.pth"), "").endswith("does not exist")
    monkeypatch.delenv("FSAT_PANNS_DIR")
    assert panns_checkpoint_problem("", "train-0003") is None


async def test_a_training_fold_shows_its_time_and_eta(env: dict) -> None:
    store = env["store"]
    job = store.enqueue("train", {"train": {"epochs": 10}}, name="t")
    store.claim("w")
    record_run(store, env["tmp"] / "runs", "train-0001", dataset_id=None, job_id=job, status="running",
               overrides=("train.epochs=10", "train.n_folds=2"))
    stream_epochs(store, "train-0001", 0, [0.5] * 4, seconds=30.0)
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        app.open_run("train-0001")
        await wait_until(pilot, lambda: getattr(app.screen, "detail", None) is not None, what="run screen")
        folds = app.screen.query_one("#folds", LiveTable)
        await wait_until(pilot, lambda: "0" in folds.rows, what="fold rows")
        assert folds.get_cell("0", "time").plain == "2m00s"   # 4 epochs of 30 s
        assert folds.get_cell("0", "eta").plain == "3m00s"    # 6 more at the same pace
        assert folds.get_cell("1", "eta").plain == ""
