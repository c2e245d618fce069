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
