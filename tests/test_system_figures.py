"""System figures per epoch: recorded by a real training job, stored (schema 11), shown by the console."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.store import Store
from fsat_console.app import FsatConsole
from fsat_console.live import Poller
from fsat_console.widgets.status import epochs_system, status_line, system_text
from tests.helpers.console import screen_text
from tests.helpers.processes import run_cli
from tests.helpers.recording import record_run
from tests.helpers.waiting import wait_until

SIZE = (160, 48)


@pytest.mark.slow
def test_a_cpu_training_job_records_device_and_peak_rss_per_epoch(tiny_demo: Path, tmp_path: Path, spawn_worker):
    db = tmp_path / "experiments.db"
    run_cli("queue", "train", "--data", str(tiny_demo), "--preset", "demo", "--set", "train.epochs=2",
            "--set", "train.folds=[0]", "--set", "audio.crop_seconds=1.0", db=db)
    assert spawn_worker(db, "--drain").wait(timeout=600) == 0
    store = Store(db)
    (run,) = store._query("SELECT id AS run_id FROM runs")
    epochs = store.epochs(run["run_id"])
    assert len(epochs) == 2
    for e in epochs:
        # On a CPU: the device and the job's peak RSS; no GPU figures.
        assert e["device"] == "cpu"
        assert e["peak_gpu_mib"] is None and e["gpu_util"] is None
        # The job process imports torch and holds the model: well above 50 MiB, below the machine's memory.
        assert 50 < e["peak_rss_mib"] < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    assert store.latest_epoch_system([run["run_id"]])[run["run_id"]]["device"] == "cpu"
    store.close()


def _running_job_with_epoch(env: dict, **figures) -> str:
    """A running train job whose run has one recorded epoch with ``figures``, and a busy worker on it."""
    store = env["store"]
    ds = store.register_dataset(env["data"], name="data", classes=["a", "b"], n_curated=4)
    job_id = store.enqueue("train", {"train": {"epochs": 2, "folds": [0]}}, name="sys")
    store.register_worker("w1", pid=os.getpid())
    store.claim("w1")
    run_id = "train-0001"
    record_run(store, env["tmp"] / "runs", run_id, dataset_id=ds, job_id=job_id, name="sys", status="running",
               overrides=('model.arch="small"', "train.epochs=2", "train.folds=[0]"))
    store.set_job_run(job_id, run_id)
    store.worker_heartbeat("w1", job_id)
    store.record_epoch(run_id, 0, 0, train_loss=1.0, val_loss=1.0, val_lwlrap=0.5, lr=1e-3, seconds=2.0,
                       clips_per_sec=10.0, **figures)
    return run_id


def test_status_line_shows_the_running_jobs_figures_gpu(env: dict):
    _running_job_with_epoch(env, device="NVIDIA H100 80GB HBM3", peak_gpu_mib=12595.2, gpu_util=87.4,
                            peak_rss_mib=2150.0)
    poller = Poller(env["db"])
    overview, _ = poller.poll(force=True)
    poller.close()
    line = status_line(overview).plain
    assert "NVIDIA H100 80GB HBM3 · GPU 12.3 GiB · 87% · RSS 2.1 GiB" in line


def test_status_line_on_a_cpu_shows_what_applies(env: dict):
    _running_job_with_epoch(env, device="cpu", peak_rss_mib=812.4)
    poller = Poller(env["db"])
    overview, _ = poller.poll(force=True)
    poller.close()
    line = status_line(overview).plain
    assert "cpu · RSS 812 MiB" in line and "GPU" not in line and "%" not in line.split("cpu")[1]


def test_no_figures_before_the_first_epoch_and_for_old_epochs():
    assert system_text(None) is None and system_text({"device": None}) is None
    assert epochs_system([{"device": None, "peak_rss_mib": None}]) is None
    summary = epochs_system([{"device": "cpu", "peak_rss_mib": 700.0, "peak_gpu_mib": None, "gpu_util": None},
                             {"device": "cpu", "peak_rss_mib": 900.0, "peak_gpu_mib": None, "gpu_util": None}])
    assert summary == {"device": "cpu", "peak_gpu_mib": None, "gpu_util": None, "peak_rss_mib": 900.0}


async def test_run_screen_header_and_status_line_show_the_figures(env: dict):
    run_id = _running_job_with_epoch(env, device="cpu", peak_rss_mib=812.4)
    env["store"].record_epoch(run_id, 0, 1, train_loss=0.9, val_loss=0.9, val_lwlrap=0.6, lr=1e-3, seconds=2.0,
                              clips_per_sec=10.0, device="cpu", peak_rss_mib=1536.0)
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: "cpu · RSS 1.5 GiB" in screen_text(app), what="status line figures")
        await wait_until(pilot, lambda: run_id in app.screen.query_one("#runs").rows, what="run row")
        await pilot.press("enter")
        await wait_until(pilot, lambda: type(app.screen).__name__ == "RunScreen", what="run screen")
        # The header: the peak over the run's epochs.
        await wait_until(pilot, lambda: "system cpu · RSS 1.5 GiB" in screen_text(app), what="header figures")
