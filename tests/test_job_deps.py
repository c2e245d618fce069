"""Dependencies between jobs: a job waits for its parents, whatever the number of workers.

Real database files, real worker processes running probe jobs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engine.store import MIGRATIONS, Store, StoreError
from engine.store.plans import PlanJob, ReservationMoved
from tests.helpers.processes import env_with_project, worker_cmd


def _finish(store: Store, worker: str) -> int:
    job = store.claim(worker)
    assert job is not None
    assert store.finish_job(job.id, worker_id=worker, attempt=job.attempts)
    return job.id


def test_a_child_is_not_claimed_until_its_parent_is_done(db_path: Path):
    store = Store(db_path)
    parent = store.enqueue("probe", {})
    child = store.enqueue("probe", {}, priority=10, after=(parent,))
    first = store.claim("w1")
    assert first.id == parent  # the child's higher priority does not let it pass its parent
    assert store.claim("w2") is None
    assert store.job_waits()[child] == {"state": "waiting", "reason": f"waiting for job {parent}",
                                        "waiting_for": [parent]}
    store.finish_job(parent, worker_id="w1", attempt=first.attempts)
    assert store.job_waits() == {}
    assert store.claim("w2").id == child


def test_a_job_may_not_wait_for_a_job_that_does_not_exist(db_path: Path):
    store = Store(db_path)
    with pytest.raises(StoreError, match="no job with id 99"):
        store.enqueue("probe", {}, after=(99,))
    assert store.count_jobs("queued") == 0


def test_a_failed_parent_holds_its_descendants_and_a_requeue_releases_them(db_path: Path):
    store = Store(db_path)
    parent = store.enqueue("probe", {}, name="teacher")
    child = store.enqueue("probe", {}, after=(parent,))
    grandchild = store.enqueue("probe", {}, after=(child,))
    job = store.claim("w")
    store.fail_job(parent, "boom", worker_id="w", attempt=job.attempts)
    waits = store.job_waits()
    assert waits[child]["state"] == "held" and waits[child]["reason"] == f"held: job {parent} 'teacher' failed"
    assert waits[grandchild]["state"] == "held" and "'teacher' failed" in waits[grandchild]["reason"]
    assert store.claim("w") is None
    # Held jobs are not what a draining worker waits for.
    assert store.count_startable_jobs() == 0
    store.requeue_job(parent)
    waits = store.job_waits()
    assert waits[child]["state"] == "waiting" and waits[grandchild]["state"] == "waiting"
    assert store.count_startable_jobs() == 3
    assert [_finish(store, "w") for _ in range(3)] == [parent, child, grandchild]


def test_a_cancelled_parent_holds_its_child(db_path: Path):
    store = Store(db_path)
    parent = store.enqueue("probe", {}, name="p")
    child = store.enqueue("probe", {}, after=(parent,))
    assert store.request_cancel(parent) == "cancelled"
    assert store.job_waits()[child]["reason"] == f"held: job {parent} 'p' cancelled"
    assert store.claim("w") is None


def _steps() -> list[PlanJob]:
    return [PlanJob("a", "probe", {}, "a"), PlanJob("b", "probe", {}, "b", parents=("a",)),
            PlanJob("c", "probe", {}, "c", parents=("a",)), PlanJob("d", "probe", {}, "d", parents=("b", "c"))]


def test_a_plan_is_queued_at_its_reserved_ids_or_not_at_all(db_path: Path):
    store = Store(db_path)
    store.enqueue("probe", {})
    first = store.next_job_id()
    assert first == 2
    store.enqueue("probe", {})  # takes id 2 meanwhile
    with pytest.raises(ReservationMoved):
        store.enqueue_plan("p", "demo", _steps(), first_id=first)
    assert store.count_jobs("queued") == 2 and store.list_plans() == []
    plan = store.enqueue_plan("p", "demo", _steps(), first_id=store.next_job_id())
    steps = store.plan_steps(plan)
    assert [(s["step"], s["job_id"], s["parents"], s["state"]) for s in steps] == [
        ("a", 3, [], "queued"), ("b", 4, ["a"], "waiting"), ("c", 5, ["a"], "waiting"), ("d", 6, ["b", "c"], "waiting")]
    assert store.plan_of_job(6) == plan


def test_cancelling_a_plan_cancels_what_has_not_started_and_stops_what_runs(db_path: Path):
    store = Store(db_path)
    plan = store.enqueue_plan("p", "demo", _steps(), first_id=store.next_job_id())
    other = store.enqueue("probe", {})
    running = store.claim("w")
    assert store.cancel_plan(plan) == {"cancelled": 3, "stopping": 1}
    assert store.get_job(running.id).cancel_requested
    assert [s["status"] for s in store.plan_steps(plan)] == ["running", "cancelled", "cancelled", "cancelled"]
    assert store.get_job(other).status == "queued"
    with pytest.raises(StoreError, match="no plan with id 99"):
        store.cancel_plan(99)


def test_two_workers_never_start_a_dependent_job_before_its_parent_is_done(db_path: Path):
    """A diamond of probe jobs and an independent one, drained by two real worker processes."""
    store = Store(db_path)
    plan = store.enqueue_plan("p", "demo", [
        PlanJob("a", "probe", {"seconds": 1.5}, "a"),
        PlanJob("b", "probe", {"seconds": 0.5}, "b", parents=("a",)),
        PlanJob("c", "probe", {"seconds": 1.0}, "c", parents=("a",)),
        PlanJob("d", "probe", {"seconds": 0.2}, "d", parents=("b", "c"))], first_id=store.next_job_id())
    # Independent jobs queued after the plan but ahead of it in priority keep the second worker busy and
    # free at every moment a dependent job could be wrongly taken.
    for _ in range(3):
        store.enqueue("probe", {"seconds": 0.3}, priority=-1)
    workers = [subprocess.Popen(worker_cmd(db_path, "--drain"), cwd=db_path.parent, env=env_with_project(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for w in workers:
        _out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-2000:]
    jobs = {s["step"]: store.get_job(s["job_id"]) for s in store.plan_steps(plan)}
    assert all(j.status == "done" for j in jobs.values()), {k: j.message for k, j in jobs.items()}
    for child, parents in {"b": "a", "c": "a", "d": "bc"}.items():
        for parent in parents:
            assert jobs[child].started_at >= jobs[parent].finished_at, (child, parent)
    assert store.count_jobs("done") == 7


def test_fsat_jobs_shows_a_waiting_and_a_held_job_with_the_reason(db_path: Path):
    import json

    from tests.helpers.processes import run_cli

    store = Store(db_path)
    parent = store.enqueue("probe", {}, name="teacher")
    child = store.enqueue("probe", {}, after=(parent,))
    rows = {r["id"]: r for r in json.loads(run_cli("jobs", "--json", db=db_path).stdout)}
    assert (rows[parent]["status"], rows[child]["status"]) == ("queued", "waiting")
    assert rows[child]["message"] == f"waiting for job {parent}"
    job = store.claim("w")
    store.fail_job(parent, "boom", worker_id="w", attempt=job.attempts)
    rows = {r["id"]: r for r in json.loads(run_cli("jobs", "--json", db=db_path).stdout)}
    assert rows[child]["status"] == "held" and rows[child]["message"] == f"held: job {parent} 'teacher' failed"


def test_a_reader_of_a_file_older_than_the_dependencies_sees_no_waits(tmp_path: Path):
    path = tmp_path / "experiments.db"
    old = Store(path, schema_version=max(v for v, _what, _fn in MIGRATIONS if v < 12))
    old.enqueue("probe", {})
    old.close()
    reader = Store(path, readonly=True)
    assert reader.job_waits() == {} and reader.list_plans() == [] and reader.plan_of_job(1) is None
