"""The SQLite queue and the worker, with real database files and real worker processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from engine.errors import QueueFull
from engine.store import SCHEMA_VERSION, Store, StoreError
from tests.helpers.waiting import wait_for


def _open_store(path: str, barrier) -> int:
    barrier.wait()
    store = Store(path)
    version = store.schema_version()
    store.close()
    return version


def test_schema_created_once_when_processes_race(db_path: Path):
    n = 6
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            versions = pool.starmap(_open_store, [(str(db_path), barrier)] * n)
    assert versions == [SCHEMA_VERSION] * n
    con = sqlite3.connect(db_path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT COUNT(*) FROM meta WHERE key='schema_version'").fetchone()[0] == 1


def test_claim_order_priority_and_states(db_path: Path):
    store = Store(db_path)
    low = store.enqueue("probe", {}, name="low")
    high = store.enqueue("probe", {}, name="high", priority=5)
    store.register_worker("w")
    first = store.claim("w")
    assert first.id == high and first.status == "running" and first.attempts == 1
    assert store.claim("w").id == low
    assert store.claim("w") is None
    assert store.finish_job(high, worker_id="w", attempt=1)
    assert store.fail_job(low, "ValueError: bad", "Traceback ...\nValueError: bad", worker_id="w", attempt=1)
    jobs = {j["id"]: j for j in store.list_jobs()}
    assert jobs[high]["status"] == "done" and jobs[high]["progress"] == 1.0
    failed = store.get_job(low)
    assert failed.status == "failed" and failed.traceback.endswith("ValueError: bad")


def test_queue_full_is_refused_and_loses_nothing(db_path: Path):
    store = Store(db_path)
    for _ in range(3):
        store.enqueue("probe", {}, max_queued=3)
    with pytest.raises(QueueFull, match="3 queued jobs"):
        store.enqueue("probe", {}, max_queued=3)
    assert store.count_jobs("queued") == 3


def test_unknown_job(db_path: Path):
    store = Store(db_path)
    with pytest.raises(StoreError, match="no job with id 42"):
        store.request_cancel(42)


def test_stale_job_requeued_then_failed_after_max_attempts(db_path: Path):
    store = Store(db_path)
    job_id = store.enqueue("probe", {}, max_attempts=2)
    # A negative lease is stale the moment it is claimed.
    store.claim("dead-worker", lease_seconds=-1)
    assert store.requeue_stale() == [job_id]
    assert store.get_job(job_id).status == "queued"
    store.claim("dead-worker", lease_seconds=-1)
    assert store.requeue_stale() == []
    job = store.get_job(job_id)
    assert job.status == "failed" and "tried 2 time(s)" in job.error


def test_two_workers_run_each_job_exactly_once(db_path: Path, spawn_worker):
    marker = db_path.parent / "marker.txt"
    store = Store(db_path)
    ids = [store.enqueue("probe", {"seconds": 0.05, "marker": str(marker)}) for _ in range(24)]
    a = spawn_worker(db_path, "--drain")
    b = spawn_worker(db_path, "--drain")
    assert a.wait(timeout=120) == 0 and b.wait(timeout=120) == 0
    lines = marker.read_text().split()
    ran = Counter(int(x) for x in lines[::2])
    assert sorted(ran) == ids and set(ran.values()) == {1}
    assert store.count_jobs("done") == len(ids)
    workers = {j["worker_id"] for j in store.list_jobs()}
    assert len(workers) == 2, "both workers should have taken jobs"


def test_killed_worker_job_is_requeued_and_completes(db_path: Path, spawn_worker):
    marker = db_path.parent / "marker.txt"
    store = Store(db_path)
    job_id = store.enqueue("probe", {"seconds": 2.0, "marker": str(marker)})
    first = spawn_worker(db_path, "--lease", "2")
    wait_for(lambda: marker.exists() and marker.read_text().strip(), what="the job to start")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert store.get_job(job_id).status == "running"  # nobody knows yet that the worker died
    second = spawn_worker(db_path, "--lease", "2", "--drain")
    assert second.wait(timeout=60) == 0
    job = store.get_job(job_id)
    assert job.status == "done" and job.attempts == 2
    assert marker.read_text().split() == [str(job_id), "1", str(job_id), "2"]


def test_crashing_job_fails_and_worker_carries_on(db_path: Path, spawn_worker):
    store = Store(db_path)
    boom = store.enqueue("probe", {"fail": "deliberate failure"})
    crash = store.enqueue("probe", {"exit_code": 7})
    ok = store.enqueue("probe", {"seconds": 0.1})
    proc = spawn_worker(db_path, "--drain")
    assert proc.wait(timeout=60) == 0
    failed = store.get_job(boom)
    assert failed.status == "failed" and "deliberate failure" in failed.error
    assert "Traceback" in failed.traceback and "probe.py" in failed.traceback
    crashed = store.get_job(crash)
    assert crashed.status == "failed" and "exited with code 7" in crashed.error
    assert store.get_job(ok).status == "done"


def test_cancel_running_job_within_seconds(db_path: Path, spawn_worker):
    store = Store(db_path)
    job_id = store.enqueue("probe", {"seconds": 120})
    spawn_worker(db_path)
    wait_for(lambda: store.get_job(job_id).progress > 0, what="the job to report progress")
    assert store.request_cancel(job_id) == "running"
    wait_for(lambda: store.get_job(job_id).status == "cancelled", timeout=15, what="the cancel")
    queued = store.enqueue("probe", {})
    assert store.request_cancel(queued) == "cancelled"


def test_sigterm_stops_worker_cleanly_and_requeues_job(db_path: Path, spawn_worker):
    store = Store(db_path)
    job_id = store.enqueue("probe", {"seconds": 120})
    proc = spawn_worker(db_path)
    wait_for(lambda: store.get_job(job_id).progress > 0, what="the job to report progress")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    job = store.get_job(job_id)
    assert job.status == "queued" and job.attempts == 0
    assert store.live_workers() == []


def test_worker_cli_help_runs():
    out = subprocess.run([sys.executable, "-m", "engine.worker", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--drain" in out.stdout


def test_the_jobs_check_constraint_holds_exactly_the_job_states(db_path: Path):
    from engine.store import JOB_STATES

    Store(db_path).close()
    sql = sqlite3.connect(db_path).execute("SELECT sql FROM sqlite_master WHERE name='jobs'").fetchone()[0]
    check = sql[sql.index("CHECK"):]
    listed = check[check.index("(", check.index("IN")) + 1:check.index(")")]
    assert tuple(s.strip().strip("'") for s in listed.split(",")) == JOB_STATES
