"""Jobs on a Ray cluster: real workers (``--executor ray``), a real local cluster, real faults.

The module starts one cluster (``ray start --head --block``: 2 CPUs, 2 logical
GPUs) that every test's workers join by address, and stops it at the end
(no raylet left behind). Training is the demo preset on ``tiny_demo`` with
few steps per epoch, so each fold takes seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from engine.store import Store
from fsat_console.live import Overview
from fsat_console.widgets.status import status_line
from tests.helpers.processes import RAY_CLI, env_with_project, process_alive, run_cli, stop_ray_start
from tests.helpers.waiting import wait_for



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory) -> str:
    """A local Ray head for this module (2 CPUs, 2 logical GPUs); its address."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("ray") / "head.log", "wb")
    # Ray's workers run at nice 15 by default; on a machine shared with other work that only slows the tests.
    env = env_with_project(RAY_worker_niceness="0")
    head = subprocess.Popen([RAY_CLI, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=2",
                             "--include-dashboard=false", "--disable-usage-stats",
                             f"--object-store-memory={100 * 1024 * 1024}", "--block"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(port), timeout=60, what="the Ray head to listen")
        yield address
    finally:
        stop_ray_start(head)
        log.close()


def _answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _overview(store: Store) -> Overview:
    return Overview(jobs=store.list_jobs(), runs=store.list_runs(), workers=store.live_workers())


def test_an_unreachable_cluster_keeps_jobs_queued_and_says_why(db_path: Path, spawn_worker):
    job_id = int(run_cli("queue", "probe", db=db_path).stdout)
    spawn_worker(db_path, "--executor", "ray", "--ray-address", "127.0.0.1:9")
    store = Store(db_path)
    worker = wait_for(lambda: next((w for w in store.live_workers() if w.get("cluster")), None), timeout=60,
                      what="the worker to publish its cluster")
    assert "Ray cluster at 127.0.0.1:9 is unreachable" in json.loads(worker["cluster"])["error"]
    time.sleep(1.0)
    assert store.get_job(job_id).status == "queued"
    assert "⚠ ray: Ray cluster at 127.0.0.1:9 is unreachable" in status_line(_overview(store)).plain


def test_a_ray_worker_publishes_its_cluster_and_runs_jobs(db_path: Path, spawn_worker, ray_address: str):
    job_id = int(run_cli("queue", "probe", db=db_path).stdout)
    spawn_worker(db_path, "--executor", "ray", "--ray-address", ray_address)
    store = Store(db_path)
    wait_for(lambda: store.get_job(job_id).status == "done", timeout=120, what="the probe job")
    cluster = json.loads(store.live_workers()[0]["cluster"])
    assert (cluster["nodes"], cluster["gpus"], cluster["cpus"]) == (1, 2.0, 2.0)
    assert "ray 1 node · GPU 0 busy/2 free · CPU 0 busy/2 free" in status_line(_overview(store)).plain


# -- training on the cluster --------------------------------------------------------------------

#: Two folds of the demo preset, a few steps per epoch: seconds per fold on a CPU.
TRAIN = ["--preset", "demo", "--set", "audio.crop_seconds=2.0", "--set", "train.folds=[0,1]",
         "--set", "train.steps_per_epoch=4", "--set", "train.patience=9"]


def _queue_train(db: Path, data: Path, *overrides: str) -> int:
    args = ["queue", "train", "--data", str(data), *TRAIN]
    for item in overrides:
        args += ["--set", item]
    return int(run_cli(*args, db=db).stdout)


def _fold_scores(store: Store, run_id: str) -> dict[int, float]:
    return {r["fold"]: r["lwlrap"] for r in store.fold_scores(run_id)}


def test_train_infer_and_curriculum_folds_run_on_ray_with_the_same_scores_as_locally(tiny_demo: Path, tmp_path: Path,
                                                                                 spawn_worker, ray_address: str):
    local_db, ray_db = tmp_path / "local" / "experiments.db", tmp_path / "ray" / "experiments.db"
    local_db.parent.mkdir()
    ray_db.parent.mkdir()
    local_job = _queue_train(local_db, tiny_demo, "train.epochs=2")
    # CPU results are bit-identical for the same number of threads per fold (float sums are ordered
    # by it): a Ray fold gets cluster.cpus_per_fold = 1 thread, so the local job gets 1 too.
    assert spawn_worker(local_db, "--drain", env={"OMP_NUM_THREADS": "1"}).wait(timeout=600) == 0
    ray_job = _queue_train(ray_db, tiny_demo, "train.epochs=2", "cluster.cpus_per_fold=1")
    worker = spawn_worker(ray_db, "--executor", "ray", "--ray-address", ray_address, "--drain")
    store = Store(ray_db)
    # Both folds run at once, each on its own process of the cluster, and the job shows where.
    both = wait_for(lambda: [r for r in store.fold_tasks(ray_job) if r["status"] == "running" and r["pid"]]
                    if len([r for r in store.fold_tasks(ray_job) if r["status"] == "running"]) == 2 else None,
                    timeout=300, what="both folds running")
    assert len({r["pid"] for r in both}) == 2 and all(r["node"] for r in both)
    assert worker.wait(timeout=600) == 0
    job = store.get_job(ray_job)
    assert job.status == "done", job.error
    local = Store(local_db)
    assert local.get_job(local_job).status == "done"
    local_run, ray_run = local.get_job(local_job).run_id, job.run_id
    # Same spec, same seed, CPU: the same per-fold scores and epochs, whichever executor ran them.
    assert _fold_scores(store, ray_run) == pytest.approx(_fold_scores(local, local_run), abs=1e-6)
    assert [(e["fold"], e["epoch"]) for e in store.epochs(ray_run)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [e["val_lwlrap"] for e in store.epochs(ray_run)] == \
        pytest.approx([e["val_lwlrap"] for e in local.epochs(local_run)], abs=1e-6)
    assert store.get_run(ray_run)["cv_lwlrap"] == pytest.approx(local.get_run(local_run)["cv_lwlrap"], abs=1e-6)
    assert len(store.class_scores(ray_run)) == len(local.class_scores(local_run)) == 80
    ray_dir = Path(store.get_run(ray_run)["run_dir"])
    assert all((ray_dir / f"fold{k}" / "best.pt").exists() for k in (0, 1))
    assert [(r["fold"], r["status"]) for r in store.fold_tasks(ray_job)] == [(0, "done"), (1, "done")]
    # The local executor records where its folds ran too: this machine, the job's own process.
    assert [(r["fold"], r["status"]) for r in local.fold_tasks(local_job)] == [(0, "done"), (1, "done")]
    assert len({r["pid"] for r in local.fold_tasks(local_job)}) == 1
    # The console: the status line shows the cluster, the job details which node ran each fold.
    asyncio.run(_console_shows_folds(ray_db, ray_job, both[0]["node"]))

    # Inference of each run's folds, TTA on the out-of-fold clips and the test set: the same again.
    infer = ["--set", "infer.tta_crops=2", "--set", "infer.tta_crops_long=2", "--set", "write_submission=false"]
    local_infer = int(run_cli("queue", "infer", local_run, *infer, db=local_db).stdout)
    assert spawn_worker(local_db, "--drain", env={"OMP_NUM_THREADS": "1"}).wait(timeout=600) == 0
    ray_infer = int(run_cli("queue", "infer", ray_run, *infer, "--set", "cluster.gpus_per_fold=0", db=ray_db).stdout)
    assert spawn_worker(ray_db, "--executor", "ray", "--ray-address", ray_address, "--drain").wait(timeout=600) == 0
    local_done, ray_done = local.get_job(local_infer), store.get_job(ray_infer)
    assert (local_done.status, ray_done.status) == ("done", "done"), (local_done.error, ray_done.error)
    assert _fold_scores(store, ray_done.run_id) == pytest.approx(_fold_scores(local, local_done.run_id), abs=1e-6)
    assert len({r["pid"] for r in store.fold_tasks(ray_infer)}) == 2
    ray_infer_dir = Path(store.get_run(ray_done.run_id)["run_dir"])
    local_infer_dir = Path(local.get_run(local_done.run_id)["run_dir"])
    assert np.allclose(np.load(ray_infer_dir / "test.npy"), np.load(local_infer_dir / "test.npy"), atol=1e-6)

    # A curriculum from each run (one teacher per database): its student folds go to the cluster too.
    # Stage B wrecks the weights (a huge learning rate), so it is re-run with the fallback loss,
    # and that swap is reported from the nodes to the head.
    stages = ('[{name = "A", epochs = 1, noisy_weight = 0.5}, '
              '{name = "B", epochs = 1, noisy_weight = 1.0, head_lr = 50.0, encoder_lr = 50.0}]')
    curriculum = ["--preset", "demo_curriculum", "--set", f"stages={stages}", "--set", "swap_tolerance=0.0",
                  "--set", 'fallback_losses=["lsoft"]',
                  "--set", "patience=9", "--set", "filter.keep_threshold=0.5", "--set", "filter.pseudo_threshold=0.99",
                  "--set", 'filter.threshold_mode="per_class"']
    local_cur = int(run_cli("queue", "curriculum", local_run, *curriculum, db=local_db).stdout)
    assert spawn_worker(local_db, "--drain", env={"OMP_NUM_THREADS": "1"}).wait(timeout=600) == 0
    ray_cur = int(run_cli("queue", "curriculum", ray_run, *curriculum, "--set", "cluster.gpus_per_fold=0",
                          "--set", "cluster.cpus_per_fold=1", db=ray_db).stdout)
    # The head predicts the noisy clips with the teacher; one thread, as the local job, for equal filters.
    assert spawn_worker(ray_db, "--executor", "ray", "--ray-address", ray_address, "--drain",
                        env={"OMP_NUM_THREADS": "1"}).wait(timeout=600) == 0
    local_done, ray_done = local.get_job(local_cur), store.get_job(ray_cur)
    assert (local_done.status, ray_done.status) == ("done", "done"), (local_done.error, ray_done.error)
    ray_student, local_student = ray_done.run_id, local_done.run_id
    assert len({r["pid"] for r in store.fold_tasks(ray_cur)}) == 2
    # Both phases went to the cluster: the teacher folds' noisy predictions, then the student folds.
    cur_log = (Path(store.get_run(ray_student)["run_dir"]) / "job.log").read_text()
    assert cur_log.count("folds [0, 1] go to the ray cluster") == 2, cur_log
    assert sorted(p.name for p in (ray_dir / "noisy_pred").iterdir()) == ["fold0_crops1.npz", "fold1_crops1.npz"]
    assert [(r["fold"], r["status"]) for r in store.fold_tasks(ray_cur)] == [(0, "done"), (1, "done")]
    assert _fold_scores(store, ray_student) == pytest.approx(_fold_scores(local, local_student), abs=1e-6)
    assert [(e["fold"], e["epoch"], e["stage"]) for e in store.epochs(ray_student)] == \
        [(e["fold"], e["epoch"], e["stage"]) for e in local.epochs(local_student)]
    assert [e["val_lwlrap"] for e in store.epochs(ray_student)] == \
        pytest.approx([e["val_lwlrap"] for e in local.epochs(local_student)], abs=1e-6)
    swaps = [(s["fold"], s["stage"], s["attempt"], s["loss_to"]) for s in store.swaps(ray_student)]
    assert {(0, "B", 1, "lsoft"), (1, "B", 1, "lsoft")} <= set(swaps)
    assert swaps == [(s["fold"], s["stage"], s["attempt"], s["loss_to"]) for s in local.swaps(local_student)]
    assert store.get_run(ray_student)["cv_lwlrap"] == pytest.approx(local.get_run(local_student)["cv_lwlrap"],
                                                                    abs=1e-6)


async def _console_shows_folds(db: Path, job_id: int, node: str) -> None:
    from fsat_console.app import FsatConsole
    from tests.helpers.console import open_job_details, screen_text
    from tests.helpers.waiting import wait_until

    app = FsatConsole(db, poll_interval=0.1)
    async with app.run_test(size=(140, 45)) as pilot:
        await open_job_details(pilot, app, job_id)
        await wait_until(pilot, lambda: node in screen_text(app), timeout=10, what="the fold placement")
        text = screen_text(app)
        assert "folds (where each runs)" in text
        assert sum(1 for line in text.splitlines() if node in line and "done" in line) == 2


def _epochs_of(store: Store, run_id: str | None, fold: int) -> list[int]:
    return [e["epoch"] for e in store.epochs(run_id) if e["fold"] == fold] if run_id else []


def test_a_fold_process_that_dies_is_retried_from_its_last_checkpoint(tiny_demo: Path, db_path: Path,
                                                                     spawn_worker, ray_address: str):
    job_id = _queue_train(db_path, tiny_demo, "train.epochs=3", "train.folds=[0]", "cluster.max_retries=1")
    spawn_worker(db_path, "--executor", "ray", "--ray-address", ray_address, "--drain")
    store = Store(db_path)
    wait_for(lambda: _epochs_of(store, store.get_job(job_id).run_id, 0), timeout=300, what="fold 0's first epoch")
    (task,) = store.fold_tasks(job_id)
    os.kill(task["pid"], signal.SIGKILL)  # as the out-of-memory killer would
    wait_for(lambda: store.get_job(job_id).status in ("done", "failed"), timeout=300, what="the job to end")
    job = store.get_job(job_id)
    assert job.status == "done", job.error
    (task,) = store.fold_tasks(job_id)
    assert task["task_attempt"] == 2 and task["status"] == "done"
    log = (Path(store.get_run(job.run_id)["run_dir"]) / "job.log").read_text()
    resumed = [int(m) for m in re.findall(r"resuming at epoch (\d+)", log)]
    assert len(resumed) == 1 and resumed[0] >= 1  # from last.pt, not from scratch
    assert _epochs_of(store, job.run_id, 0) == [0, 1, 2]


def test_cancel_stops_every_fold_task_within_seconds(tiny_demo: Path, db_path: Path, spawn_worker,
                                                     ray_address: str):
    job_id = _queue_train(db_path, tiny_demo, "train.epochs=50", "train.steps_per_epoch=20")
    spawn_worker(db_path, "--executor", "ray", "--ray-address", ray_address)
    store = Store(db_path)
    running = wait_for(lambda: (lambda rows: rows if len(rows) == 2 else None)(
        [r for r in store.fold_tasks(job_id) if r["status"] == "running" and r["pid"]]), timeout=300,
        what="both folds running")
    run_cli("cancel", str(job_id), db=db_path)
    wait_for(lambda: store.get_job(job_id).status == "cancelled", timeout=30, what="the job to be cancelled")
    wait_for(lambda: not any(process_alive(r["pid"]) for r in running), timeout=10, what="every fold process to exit")
    assert {r["status"] for r in store.fold_tasks(job_id)} == {"cancelled"}
    run_id = store.get_job(job_id).run_id
    epochs = len(store.epochs(run_id))
    time.sleep(2.0)
    assert len(store.epochs(run_id)) == epochs  # nothing keeps training
    # The cluster has its CPUs and GPUs back.
    wait_for(lambda: (lambda c: c.get("cpus_free") == 2 and c.get("gpus_free") == 2)(
        json.loads(store.live_workers()[0]["cluster"])), timeout=30, what="the cluster's resources back")


def test_a_dead_head_worker_requeues_and_the_resumed_job_trains_only_unfinished_folds(
        tiny_demo: Path, db_path: Path, spawn_worker, ray_address: str):
    # Two CPUs per fold on a two-CPU cluster: one fold at a time, so one finishes before the kill.
    job_id = _queue_train(db_path, tiny_demo, "train.epochs=2", "cluster.cpus_per_fold=2")
    # A short lease, so the job is requeued seconds after the kill (the default 30 s is only waiting).
    first = spawn_worker(db_path, "--executor", "ray", "--ray-address", ray_address, "--lease", "3")
    store = Store(db_path)
    wait_for(lambda: store.get_job(job_id).run_id and store.fold_scores(store.get_job(job_id).run_id),
             timeout=300, what="the first fold to finish")
    done_before = {r["fold"] for r in store.fold_scores(store.get_job(job_id).run_id)}
    assert len(done_before) == 1
    pids = [r["pid"] for r in store.fold_tasks(job_id) if r["pid"]]
    os.kill(first.pid, signal.SIGKILL)  # the head worker dies; its job process follows it
    first.wait()
    wait_for(lambda: not any(process_alive(p) for p in pids), timeout=30, what="the killed attempt's fold tasks to end")
    second = spawn_worker(db_path, "--executor", "ray", "--ray-address", ray_address, "--lease", "3", "--drain")
    assert second.wait(timeout=600) == 0
    job = store.get_job(job_id)
    assert job.status == "done" and job.attempts == 2, job.error
    resubmitted = [r["fold"] for r in store.fold_tasks(job_id) if r["attempt"] == 2]
    assert resubmitted == sorted({0, 1} - done_before)
    assert sorted(r["fold"] for r in store.fold_scores(job.run_id)) == [0, 1]
    log = (Path(store.get_run(job.run_id)["run_dir"]) / "job.log").read_text()
    assert f"fold {min(done_before)}: already finished, kept" in log


def test_a_ray_worker_without_an_address_starts_a_local_ray_that_ends_with_it(db_path: Path, spawn_worker):
    job_id = int(run_cli("queue", "probe", db=db_path).stdout)
    worker = spawn_worker(db_path, "--executor", "ray", "--drain", env={"RAY_worker_niceness": "0"})
    assert worker.wait(timeout=300) == 0
    store = Store(db_path)
    assert store.get_job(job_id).status == "done"
    (row,) = store._query("SELECT executor, cluster FROM workers")
    cluster = json.loads(row["cluster"])
    assert row["executor"] == "ray" and cluster["nodes"] == 1 and cluster["cpus"] == os.cpu_count()
    # The worker's own cluster stopped with it: nothing answers at its address any more.
    host, port = cluster["address"].rsplit(":", 1)
    wait_for(lambda: not _answers(int(port), host), timeout=30, what="the worker's local Ray to stop")
