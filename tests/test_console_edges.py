"""Rough edges of the console and the CLI: each test failed before its fix."""

from __future__ import annotations

import os
import signal

from fsat_console.app import FsatConsole
from fsat_console.screens.compare import CompareScreen
from fsat_console.widgets.live_table import LiveTable
from tests.helpers.console import screen_text, table
from tests.helpers.processes import process_alive, run_cli
from tests.helpers.waiting import wait_until
from tests.test_console import append


async def open_dialog_from_run(pilot, app, run_id: str, key: str, dialog_type, field: str):
    """Open the run screen of ``run_id``, press ``key``, wait until the dialog shows ``#field``; returns it."""
    app.open_run(run_id)
    await wait_until(pilot, lambda: getattr(app.screen, "detail", None) is not None, what="run screen")
    await pilot.press(key)
    await wait_until(pilot, lambda: isinstance(app.screen, dialog_type) and bool(app.screen.query(f"#{field}")),
                     what=f"dialog with #{field}")
    return app.screen


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


def kill_left(pids) -> None:
    """Whatever a test left running is killed."""
    for pid in pids:
        if pid and process_alive(pid):
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
        wait_for(lambda: not process_alive(pid), timeout=60, what="the idle worker to stop")
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
                                                for n in later._notifications),
                             what="the left worker mentioned")
            # Busy: quitting leaves it running its job.
            await pilot.press("q")
        assert "keeps running" in later.exit_note and process_alive(pid)
        (job,) = store.list_jobs()
        last = FsatConsole(env["db"], data_root=env["data"], start_worker=True, poll_interval=0.1)
        async with last.run_test(size=(160, 48)) as pilot:
            # Taken over while still busy: once idle, the watcher the earlier console left would stop it on
            # its own, before a console opened after that could mention it.
            await wait_until(pilot, lambda: any(str(pid) in n.message for n in last._notifications),
                             what="the left worker mentioned")
            store.request_cancel(job["id"])
            await wait_until(pilot, lambda: store.count_jobs("running", "queued") == 0, what="the probe cancelled")
            await pilot.press("q")
        assert f"stopped the idle worker (pid {pid})" in last.exit_note
        wait_for(lambda: not process_alive(pid), timeout=30, what="the worker gone")
    finally:
        kill_left([pid])


async def test_pinned_baseline_marks_sorts_and_filters_outlive_a_restart(world: dict) -> None:
    from dataclasses import replace

    first = FsatConsole(world["db"], poll_interval=0.1)
    async with first.run_test(size=(160, 48)) as pilot:
        runs = table(first, "runs")
        await wait_until(pilot, lambda: "train-0002" in runs.rows, what="runs")
        runs.move_cursor(row=runs.get_row_index("train-0002"))
        await pilot.press("p", "down", "space")
        marked = list(first.marked_runs)
        assert first.pinned_run == "train-0002" and len(marked) == 1
        first.set_views(runs=replace(first.run_view, filter="cv>0.1", order="cv", descending=False),
                        jobs=replace(first.job_view, filter="status:failed", order="kind", descending=False))
        await pilot.press("q")
    again = FsatConsole(world["db"], poll_interval=0.1)
    async with again.run_test(size=(160, 48)) as pilot:
        runs = table(again, "runs")
        await wait_until(pilot, lambda: again.overview is not None and runs.row_count > 0, what="runs")
        assert (again.pinned_run, again.marked_runs) == ("train-0002", marked)
        assert again.pinned_cv == world["store"].get_run("train-0002")["cv_lwlrap"]
        assert (again.run_view.filter, again.run_view.order, again.run_view.descending) == ("cv>0.1", "cv", False)
        assert (again.job_view.filter, again.job_view.order, again.job_view.descending) == (
            "status:failed", "kind", False)
        assert (runs.sort_column, runs.sort_reverse) == ("cv", False)
        assert (table(again, "jobs").sort_column, table(again, "jobs").sort_reverse) == ("kind", False)
        assert "filter: cv>0.1" in str(runs.border_title)


async def test_a_runs_full_config_shows_on_the_run_screen_and_in_fsat_show(env: dict) -> None:
    from tests.helpers.recording import record_run

    store = env["store"]
    record_run(store, env["tmp"] / "runs", "train-0001", dataset_id=None, cv=0.5,
               overrides=('model.arch="cnn14"', "train.epochs=17", "optim.head_lr=0.00042"))
    config = store.get_run("train-0001")["config"]
    assert config["train"]["epochs"] == 17
    shown = run_cli("show", "train-0001", db=env["db"]).stdout
    assert "train.epochs = 17" in shown and "optim.head_lr = 0.00042" in shown and 'model.arch = "cnn14"' in shown
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=(160, 48)) as pilot:
        app.open_run("train-0001")
        await wait_until(pilot, lambda: getattr(app.screen, "detail", None) is not None, what="run screen")
        pane = app.screen.query_one("#run-config")
        assert not pane.display and "audio.crop_seconds" not in screen_text(app)
        await pilot.press("g")
        # Every setting, sorted; the first ones on screen, the rest a scroll away.
        await wait_until(pilot, lambda: "audio.crop_seconds = 10.0" in screen_text(app), what="the config pane")
        text = str(app.screen.query_one("#run-config-text").render())
        assert "optim.head_lr = 0.00042" in text and "train.epochs = 17" in text and 'model.arch = "cnn14"' in text
        await pilot.press("g")
        await wait_until(pilot, lambda: "audio.crop_seconds" not in screen_text(app), what="the pane hidden")
        assert app.screen.query_one("#classes").display


async def test_notes_and_the_time_column_are_on_screen_at_160_columns(tmp_path, monkeypatch) -> None:
    from tests.helpers.worlds import fixed_console_db

    db = tmp_path / "experiments.db"
    fixed_console_db(db, monkeypatch)
    app = FsatConsole(db, poll_interval=0.1)
    async with app.run_test(size=(160, 48)) as pilot:
        runs = table(app, "runs")
        await wait_until(pilot, lambda: app.overview is not None and runs.row_count == len(app.overview.runs),
                         what="runs")
        await wait_until(pilot, lambda: "the reference" in screen_text(app), timeout=5, what="the note on screen")
        header = next(line for line in screen_text(app).splitlines() if "CV LWLRAP" in line)
        assert " time " in header and "note" in header
        assert runs.columns["name"].get_render_width(runs) <= 20


def test_fsat_wait_follow_prints_progress_and_log_lines_until_the_job_ends(db_path, spawn_worker) -> None:
    import subprocess

    from tests.helpers.processes import cli_cmd, env_with_project

    job = int(run_cli("queue", "probe", "--set", "seconds=4", "--name", "followed", db=db_path).stdout)
    follow = subprocess.Popen(cli_cmd("wait", "--follow", str(job), db=db_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env_with_project())
    spawn_worker(db_path)
    # Worker start-up and the probe: generous on a busy two-core machine.
    out, err = follow.communicate(timeout=180)
    assert follow.returncode == 0, err
    lines = out.splitlines()
    assert any(line.startswith(f"=== job {job} attempt 1") for line in lines)  # the worker's line in job.log
    assert any(f"job {job}: running" in line and "%" in line and "probe" in line for line in lines)
    assert lines[-1] == f"job {job}: done probe ok"


def test_fsat_wait_follow_into_a_closed_pipe_ends_quietly(db_path, spawn_worker) -> None:
    import subprocess

    from tests.helpers.processes import cli_cmd, env_with_project

    job = int(run_cli("queue", "probe", "--set", "seconds=60", "--name", "long", db=db_path).stdout)
    follow = subprocess.Popen(cli_cmd("wait", "--follow", str(job), db=db_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env_with_project())
    spawn_worker(db_path)
    assert follow.stdout.readline()  # the first line, as `| head -1` reads it
    follow.stdout.close()
    err = follow.stderr.read().decode()
    assert follow.wait(timeout=120) != 0
    assert "Traceback" not in err and "BrokenPipe" not in err


async def test_the_inference_dialog_and_the_ensemble_screen_queue_with_a_priority(world: dict) -> None:
    from textual.widgets import Input

    from fsat_console.screens.infer import InferScreen
    from tests.helpers.console import open_ensemble, select_row, settled

    store = world["store"]
    app = FsatConsole(world["db"], poll_interval=0.1)
    async with app.run_test(size=(160, 48)) as pilot:
        dialog = await open_dialog_from_run(pilot, app, "train-0001", "i", InferScreen, "priority")
        dialog.query_one("#priority", Input).value = "x"
        await pilot.press("enter")
        await wait_until(pilot, lambda: "whole number" in str(dialog.query_one("#priority-error").render()),
                         what="the priority error")
        dialog.query_one("#priority", Input).value = "7"
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(store.list_jobs()) == 1, what="the infer job")
        (infer_job,) = store.list_jobs()
        assert (infer_job["kind"], infer_job["priority"]) == ("infer", 7)

        app.pop_screen()
        screen = await open_ensemble(pilot, app)
        await select_row(pilot, screen.table, "train-0001")
        await pilot.press("space")
        await settled(pilot, screen)
        await pilot.press("P")
        await wait_until(pilot, lambda: "queued at priority 10" in str(screen.query_one("#blend-about").render()),
                         what="the priority shown")
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(store.list_jobs()) == 2, what="the ensemble job")
    blend = next(j for j in store.list_jobs() if j["kind"] == "ensemble")
    assert blend["priority"] == 10


async def test_greedy_scores_with_auto_skips_runs_without_test_and_a_train_run_beside_its_tta_run(world: dict) -> None:
    import numpy as np

    from engine.ensemble import Member, greedy_forward_selection
    from tests.helpers.console import open_ensemble, settled
    from tests.helpers.recording import add_run

    store, truth, tmp = world["store"], world["truth"], world["tmp"]
    rng = np.random.default_rng(3)
    strong = 1.0 / (1.0 + np.exp(-(truth * 2.5 + rng.normal(size=truth.shape))))
    tta = 1.0 / (1.0 + np.exp(-(truth * 1.8 + rng.normal(size=truth.shape))))
    # The strongest run has no test predictions: a blend with it could write no submission.
    add_run(store, tmp, "train-0006", strong, dataset_id=world["ds"], truth=truth, name="no test", test=False)
    # The TTA run of train-0001 stands for it.
    add_run(store, tmp, "infer-0007", tta, kind="infer", parent="train-0001", dataset_id=world["ds"], truth=truth,
            name="tta of good")
    app = FsatConsole(world["db"], poll_interval=0.1)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_ensemble(pilot, app)
        await wait_until(pilot, lambda: {"train-0006", "infer-0007"} <= set(screen.candidates), what="new runs")
        screen.state.method = "mean"  # whatever was chosen before: greedy scores with auto
        await pilot.press("g")
        await settled(pilot, screen)
        chosen = set(screen.state.weights)
        assert "train-0006" not in chosen and "test.npy" in screen.notes["train-0006"]
        assert "train-0001" not in chosen and "infer-0007" in screen.notes["train-0001"]
        assert screen.state.method == "auto"
        names = ["infer-0007", "train-0002"]
        oofs = {"infer-0007": tta, "train-0002": world["oofs"]["train-0002"]}
        picks, _, _ = greedy_forward_selection([Member(m, oofs[m]) for m in names], truth, max_steps=20,
                                               method="auto", folds=world["folds"])
        assert screen.state.weights == {names[k]: float(picks.count(k)) for k in set(picks)}


async def test_an_unknown_override_section_is_reported_under_the_overrides_naming_the_key(env: dict) -> None:
    from textual.widgets import Static

    from tests.helpers.console import open_queue_dialog, settle_workers

    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=(120, 40)) as pilot:
        queue = await open_queue_dialog(pilot, app)
        await pilot.press("home", "tab", "tab", *"train.epochs=3 trian.epochs=1", "enter")
        await settle_workers(pilot, app)
        assert not queue.query_one("#preset-error", Static).display
        error = queue.query_one("#overrides-error", Static)
        assert error.display and str(error.content).startswith("trian.epochs: ")
        assert "unknown setting" in str(error.content)
        assert env["store"].list_jobs() == []


def test_an_unknown_state_in_a_filter_is_an_error_listing_the_valid_ones(db_path) -> None:
    import pytest

    from engine.filters import FilterError, compile_filter
    from engine.store import JOB_STATES

    with pytest.raises(FilterError, match="status is one of .*done.*interrupted"):
        compile_filter("status:dne", "runs")
    with pytest.raises(FilterError, match="status is one of " + ", ".join(JOB_STATES)):
        compile_filter("priority>0 status!=finished", "jobs")
    compile_filter("status:DONE status:run*", "runs")  # any case, and wildcards stay free
    from engine.store import Store

    Store(db_path).close()
    out = run_cli("runs", "status:dne", db=db_path, check=False)
    assert out.returncode == 2 and "status is one of" in out.stderr and "Traceback" not in out.stderr


def test_fsat_presets_shows_each_presets_kind_and_description(db_path) -> None:
    import json

    from engine.intake import preset_about
    from engine.presets import list_presets

    rows = {r["name"]: r for r in json.loads(run_cli("presets", "--json", db=db_path).stdout)}
    melstats = list_presets()["baseline_melstats"]
    assert rows["baseline_melstats"]["kind"] == "baseline" and rows["tta"]["kind"] == "infer"
    assert rows["baseline_melstats"]["about"] == preset_about(melstats) != ""
    shown = run_cli("presets", db=db_path).stdout
    assert "kind" in shown and "baseline" in shown


def test_the_cli_takes_overrides_space_separated_as_the_console_does(db_path) -> None:
    from engine.store import Store

    job = int(run_cli("queue", "probe", "--set", 'seconds=2 marker="a b"', "--set", "fail=\"no\"",
                      db=db_path).stdout)
    with Store(db_path) as store:
        spec = store.get_job(job).spec
    assert (spec["seconds"], spec["marker"], spec["fail"]) == (2, "a b", "no")


async def test_the_baseline_dialog_queues_the_mel_statistics_baseline_without_a_panns_warning(env: dict,
                                                                                              monkeypatch) -> None:
    from textual.widgets import Checkbox, Input, Static

    from engine.data.labels import FSD2019_CLASSES
    from fsat_console.screens.infer import BaselineScreen
    from tests.helpers.recording import record_run

    monkeypatch.delenv("FSAT_PANNS_DIR", raising=False)
    store = env["store"]
    ds = store.register_dataset(env["data"], name="data", classes=FSD2019_CLASSES, n_curated=1)
    record_run(store, env["tmp"] / "runs", "train-0001", dataset_id=ds, overrides=('model.arch="small"',), cv=0.5)
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=(120, 48)) as pilot:
        dialog = await open_dialog_from_run(pilot, app, "train-0001", "b", BaselineScreen, "melstats")
        warning = dialog.query_one("#encoder-error", Static)
        assert warning.display  # the PANNs baseline has no encoder here
        dialog.query_one("#melstats", Checkbox).focus()
        await pilot.press("space")
        await wait_until(pilot, lambda: not warning.display, what="no PANNs warning for mel statistics")
        assert dialog.query_one("#c", Input).value == "0.3"  # the baseline_melstats preset's C
        await pilot.press("enter")
        await wait_until(pilot, lambda: not isinstance(app.screen, BaselineScreen), what="queued at the first enter")
    (job,) = store.list_jobs()
    spec = store.get_job(job["id"]).spec
    assert (job["kind"], spec["variant"], spec["C"]) == ("baseline", "mel_stats", 0.3)


def test_the_readme_sql_examples_name_no_run_and_print_rows_in_any_project(tmp_path, monkeypatch) -> None:
    import re
    import sqlite3
    from pathlib import Path

    from tests.helpers.worlds import fixed_console_db

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = next(b for b in readme.split("```bash")[1:] if "Runs by out-of-fold LWLRAP" in b).split("```")[0]
    queries = re.findall(r'experiments\.db \\\n\s+"(.*?)"', block, flags=re.S)
    assert len(queries) >= 8
    assert not [q for q in queries if re.search(r"'[a-z]+-\d{4}'", q)]  # no run id of one project
    db = tmp_path / "experiments.db"
    fixed_console_db(db, monkeypatch)  # finished train runs with scores and epochs, one tagged best; no curriculum
    with sqlite3.connect(db) as conn:
        for query in queries:
            rows = conn.execute(query).fetchall()
            assert rows or "curriculum" in query, query
