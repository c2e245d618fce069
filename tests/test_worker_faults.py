"""Ownership, leases and signals: real worker processes, real signals, a real database file."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

from engine.jobs.context import JobContext
from engine.store import Store
from tests.helpers.waiting import wait_for


def _marker_lines(marker: Path) -> list[str]:
    return marker.read_text().split() if marker.exists() else []


def test_mixed_leases_the_job_runs_once_and_ends_done(db_path: Path, spawn_worker):
    marker = db_path.parent / "marker.txt"
    store = Store(db_path)
    job_id = store.enqueue("probe", {"seconds": 6.0, "marker": str(marker)})
    owner = spawn_worker(db_path, "--lease", "30")
    wait_for(lambda: _marker_lines(marker), what="the job to start")
    # A second worker, idle and polling fast with a much shorter lease than the owner's.
    eager = spawn_worker(db_path, "--lease", "1.5", "--poll", "0.1")
    wait_for(lambda: len(store.live_workers()) == 2, what="both workers to be alive")
    assert store.get_job(job_id).status == "running"
    wait_for(lambda: store.get_job(job_id).status != "running", timeout=60, what="the job to end")
    for proc in (owner, eager):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    job = store.get_job(job_id)
    assert job.status == "done", (job.status, job.error)
    assert job.attempts == 1
    assert _marker_lines(marker) == [str(job_id), "1"]


def test_ctrl_c_to_the_process_group_puts_the_job_back_in_the_queue(db_path: Path, spawn_worker):
    store = Store(db_path)
    job_id = store.enqueue("probe", {"seconds": 120})
    proc = spawn_worker(db_path)
    wait_for(lambda: store.get_job(job_id).progress > 0, what="the job to report progress")
    run_id = store.get_job(job_id).run_id or f"probe-{job_id:04d}"
    # Ctrl-C in a terminal: SIGINT to every process of the foreground group (worker and job process).
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    job = store.get_job(job_id)
    assert (job.status, job.attempts, job.error) == ("queued", 0, None)
    log = (db_path.parent / "runs" / run_id / "job.log").read_text()
    assert "KeyboardInterrupt" not in log and "stopped: interrupted" in log


def test_a_killed_workers_row_stays_stopped_after_another_worker_finishes_its_job(db_path: Path,
                                                                                   spawn_worker):
    marker = db_path.parent / "marker.txt"
    store = Store(db_path)
    job_id = store.enqueue("probe", {"seconds": 1.0, "marker": str(marker)})
    first = spawn_worker(db_path, "--lease", "2")
    wait_for(lambda: _marker_lines(marker), what="the job to start")
    dead_id = store.get_job(job_id).worker_id
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    second = spawn_worker(db_path, "--lease", "2", "--drain")
    con = sqlite3.connect(db_path)
    row = lambda: con.execute("SELECT status, job_id FROM workers WHERE id=?", (dead_id,)).fetchone()  # noqa: E731
    wait_for(lambda: row()[0] == "stopped", what="the dead worker to be marked stopped")
    # Watch its row until the other worker has run the job and exited: it must never come back.
    seen = set()
    while second.poll() is None:
        seen.add(row())
    assert second.returncode == 0 and store.get_job(job_id).status == "done"
    seen.add(row())
    assert seen == {("stopped", None)}


def test_updates_by_an_earlier_attempt_are_ignored(db_path: Path):
    store = Store(db_path)
    job_id = store.enqueue("probe", {})
    old = store.claim("w1", lease_seconds=-1)
    assert store.requeue_stale() == [job_id]
    new = store.claim("w2", lease_seconds=30)
    assert (old.attempts, new.attempts) == (1, 2)
    # Neither the earlier worker nor an earlier attempt of the same worker may touch the job.
    assert not store.heartbeat_job(job_id, "w1", 1)
    assert not store.set_progress(job_id, 0.9, "stale", worker_id="w1", attempt=1)
    assert not store.fail_job(job_id, "stale failure", worker_id="w1", attempt=1)
    assert not store.finish_job(job_id, worker_id="w2", attempt=1)
    assert not store.release_job(job_id, worker_id="w1", attempt=1)
    assert not store.mark_cancelled(job_id, worker_id="w1", attempt=1)
    job = store.get_job(job_id)
    assert (job.status, job.worker_id, job.progress, job.error) == ("running", "w2", 0.0, None)
    assert store.requeue_stale() == []  # judged by its own 30 s lease
    assert store.finish_job(job_id, worker_id="w2", attempt=2)
    assert store.get_job(job_id).status == "done"


def test_progress_is_throttled_and_the_last_value_always_lands(db_path: Path, capsys):
    store = Store(db_path)
    job_id = store.enqueue("probe", {})
    job = store.claim("w", lease_seconds=30)
    ctx = JobContext(store=store, job=job, worker_id="w", run_id="probe-x", run_dir=db_path.parent)
    updates: list[str] = []
    store.conn.set_trace_callback(lambda sql: updates.append(sql) if sql.startswith("UPDATE jobs SET progress")
                                  else None)
    import time

    start = time.monotonic()
    for step in range(2000):
        ctx.progress(step / 4000, f"step {step}")
    elapsed = time.monotonic() - start
    # At most one write per write_interval window, plus the first.
    assert 1 <= len(updates) <= elapsed / ctx.write_interval + 2
    ctx.log("epoch 0: val lwlrap 0.5")  # an epoch line writes the progress held back
    assert store.get_job(job_id).message == "step 1999"
    ctx.progress(1.0, "fold done")
    assert store.get_job(job_id).progress == 1.0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "%" in ln]
    # One step line per log_interval window plus the final one; the epoch line is kept.
    assert len(lines) <= elapsed / ctx.log_interval + 2 and lines[-1].endswith("fold done")
