"""Every finished epoch of a Ray fold is recorded exactly once, whatever happens to the head or its stream.

A fold task sends its epoch records to a stream actor that the job process
(the head) drains. The fold keeps each finished epoch in its folder
(``fold<k>/epochs.jsonl``, before ``last.pt`` moves past it), so a head that
dies before writing a record, or a stream that is lost, costs no row: the
resumed fold sends its journal again and the head writes what the store lacks.
Real workers, a real local Ray head (this module's own), real SIGSTOP/SIGKILL.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from engine.store import Store
from tests.helpers.processes import process_alive, run_cli
from tests.helpers.waiting import wait_for
from tests.test_ray_jobs import ray_address  # noqa: F401 - the module's Ray head (a fixture)

#: One fold, three short epochs, never stopping early: seconds per epoch on a CPU.
FOLD = ["--preset", "demo", "--set", "audio.crop_seconds=1.0", "--set", "train.folds=[0]",
        "--set", "train.steps_per_epoch=3", "--set", "train.epochs=3", "--set", "train.patience=9",
        "--set", "optim.warmup_epochs=0", "--set", "cluster.cpus_per_fold=1"]


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _epochs(store: Store, run_id: str) -> list[tuple[int, int]]:
    return [(r["fold"], r["epoch"]) for r in store.epochs(run_id)]


def test_epochs_the_dead_head_never_wrote_are_recorded_once_by_the_resumed_job(
        tiny_demo: Path, db_path: Path, spawn_worker, ray_address: str):  # noqa: F811
    job_id = int(run_cli("queue", "train", "--data", str(tiny_demo), *FOLD, db=db_path).stdout)
    run_id = f"train-{job_id:04d}"
    fold_dir = db_path.parent / "runs" / run_id / "fold0"
    first = spawn_worker(db_path, "--executor", "ray", "--ray-address", ray_address, "--lease", "3")
    store = Store(db_path)
    task = wait_for(lambda: next((r for r in store.fold_tasks(job_id) if r["status"] == "running" and r["pid"]),
                                 None), timeout=300, what="fold 0 running on the cluster")
    # The head (the job process) stops draining the stream: the fold's records wait in the stream actor.
    head = wait_for(lambda: (_children(first.pid) or [None])[0], timeout=30, what="the job process")
    os.kill(head, signal.SIGSTOP)
    try:
        # last.prev.pt appears when epoch 1's resume file replaces epoch 0's; last.pt is back once it is saved.
        wait_for(lambda: (fold_dir / "last.prev.pt").exists() and (fold_dir / "last.pt").exists(), timeout=300,
                 what="two epochs of fold 0 saved while the head is stopped")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the head dies with its worker, the records in its stream with it
    first.wait()
    wait_for(lambda: not process_alive(task["pid"]), timeout=60, what="the killed attempt's fold task to end")
    written_by_first = _epochs(store, run_id)
    assert (0, 1) not in written_by_first, "the head wrote epoch 1 before it was killed: nothing was at stake"

    second = spawn_worker(db_path, "--executor", "ray", "--ray-address", ray_address, "--lease", "3", "--drain")
    assert second.wait(timeout=600) == 0
    job = store.get_job(job_id)
    assert job.status == "done" and job.attempts == 2, job.error
    assert _epochs(store, run_id) == [(0, 0), (0, 1), (0, 2)]
    log = (db_path.parent / "runs" / run_id / "job.log").read_text()
    assert "recorded from epochs.jsonl" in log and "resuming at epoch" in log


def _stream_actor_pids() -> list[int]:
    """Processes of the record stream actors (Ray titles an actor's process ``ray::RecordStream``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::RecordStream"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_lost_record_stream_is_made_again_and_no_epoch_is_lost(
        tiny_demo: Path, db_path: Path, spawn_worker, ray_address: str):  # noqa: F811
    job_id = int(run_cli("queue", "train", "--data", str(tiny_demo), *FOLD, db=db_path).stdout)
    run_id = f"train-{job_id:04d}"
    fold_dir = db_path.parent / "runs" / run_id / "fold0"
    worker = spawn_worker(db_path, "--executor", "ray", "--ray-address", ray_address, "--drain")
    wait_for(lambda: (fold_dir / "last.pt").exists(), timeout=300, what="fold 0's first epoch saved")
    actors = wait_for(_stream_actor_pids, timeout=30, what="the record stream actor")
    for pid in actors:
        os.kill(pid, signal.SIGKILL)
    assert worker.wait(timeout=600) == 0
    store = Store(db_path)
    job = store.get_job(job_id)
    assert job.status == "done" and job.attempts == 1, job.error
    assert _epochs(store, run_id) == [(0, 0), (0, 1), (0, 2)]
    log = (db_path.parent / "runs" / run_id / "job.log").read_text()
    assert "fold 0: submitted again: the record stream was lost (ActorDiedError)" in log
    assert "Traceback" not in log
