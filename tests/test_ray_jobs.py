"""Jobs on a Ray cluster: real workers (``--executor ray``), a real local cluster, real faults.

The module starts one cluster (``ray start --head --block``: 2 CPUs, 2 logical
GPUs) that every test's workers join by address, and stops it at the end
(no raylet left behind). Training is the demo preset on ``tiny_demo`` with
few steps per epoch, so each fold takes seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.store import Store
from fsat_console.live import Overview
from fsat_console.widgets.status import status_line
from tests.conftest import PROJECT, run_cli, wait_for

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory) -> str:
    """A local Ray head for this module (2 CPUs, 2 logical GPUs); its address."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("ray") / "head.log", "wb")
    env = dict(os.environ, PYTHONPATH=str(PROJECT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    head = subprocess.Popen([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=2",
                             "--include-dashboard=false", "--disable-usage-stats",
                             f"--object-store-memory={100 * 1024 * 1024}", "--block"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(port), timeout=60, what="the Ray head to listen")
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
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


def test_folds_train_in_parallel_on_ray_with_the_same_scores_as_locally(tiny_demo: Path, tmp_path: Path,
                                                                        spawn_worker, ray_address: str):
    local_db, ray_db = tmp_path / "local" / "experiments.db", tmp_path / "ray" / "experiments.db"
    local_db.parent.mkdir()
    ray_db.parent.mkdir()
    local_job = _queue_train(local_db, tiny_demo, "train.epochs=2")
    assert spawn_worker(local_db, "--drain", env={"OMP_NUM_THREADS": "1"}).wait(timeout=600) == 0
    ray_job = _queue_train(ray_db, tiny_demo, "train.epochs=2")
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
