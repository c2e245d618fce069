"""The queue and its workers: enqueue, claim, heartbeat, progress, the end of a job, leases, fold tasks.

A job moves ``queued -> running -> done | failed | cancelled``
(``engine.store.schema.JOB_STATES``). A claim is one ``UPDATE ... RETURNING``
inside ``BEGIN IMMEDIATE``, so two workers never run the same job. A running
job whose heartbeat is older than the lease stored with its claim (its
worker died) goes back to ``queued`` until it has used ``max_attempts``,
then it is failed with a message saying so. Parameters are always named
(``:job_id``).
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Callable

from engine.errors import QueueFull
from engine.store.connection import Connection, StoreError, now as _now
from engine.store.plans import READY, insert_deps
from engine.store.rows import Job
from engine.store.schema import DEFAULT_LEASE_SECONDS

#: How many queued jobs :meth:`Queue.enqueue` accepts before it refuses with QueueFull.
DEFAULT_MAX_QUEUED = 1000

#: The condition every update of a running job by its worker or job process carries.
_OWNED = "id=:job_id AND status='running' AND worker_id=:worker_id AND attempts=:attempt"
#: A heartbeat older than the row's own lease (jobs and workers alike).
_STALE = "heartbeat_at < :now - lease_seconds"


def _owner(job_id: int, worker_id: str | None, attempt: int, **more: Any) -> dict:
    """The named parameters of :data:`_OWNED`, plus ``more``."""
    return {"job_id": job_id, "worker_id": worker_id, "attempt": attempt, **more}


def _first_line(text: str) -> str:
    """The first line of an error (at most 200 characters), for a job's one-line message."""
    return (text or "").strip().splitlines()[0][:200] if (text or "").strip() else ""


def insert_job(c, kind: str, payload: str, *, name: str = "", priority: int = 0, max_attempts: int = 3,
               run_id: str | None = None) -> int:
    """Insert a queued job inside the caller's write transaction; returns its id (``run_id``: the run it writes)."""
    cur = c.execute(
        "INSERT INTO jobs(kind, name, spec, priority, max_attempts, run_id, created_at) "
        "VALUES (:kind, :name, :spec, :priority, :max_attempts, :run_id, :now)",
        {"kind": kind, "name": name, "spec": payload, "priority": priority, "max_attempts": max_attempts,
         "run_id": run_id, "now": _now()})
    return int(cur.lastrowid)


def check_room(c, adding: int, max_queued: int) -> None:
    """QueueFull when adding ``adding`` jobs would leave more than ``max_queued`` queued."""
    waiting = c.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
    if waiting + adding > max_queued:
        raise QueueFull(f"the queue already holds {waiting} queued jobs (limit {max_queued}); "
                        "wait for some to finish or cancel some")


class Queue(Connection):
    """The job queue, the workers' rows and where each fold of a job runs (part of :class:`engine.store.Store`).

    Every change a worker or job process makes to a running job is
    conditional on owning the current attempt (worker id AND attempt
    number, see :data:`_OWNED`), so a worker that lost its job to a requeue
    can never overwrite what the new owner records. Each update returns
    whether it applied.
    """

    def enqueue(self, kind: str, spec: dict, *, name: str = "", priority: int = 0,
                max_attempts: int = 3, max_queued: int = DEFAULT_MAX_QUEUED,
                on_wait: Callable[[], None] | None = None, after: tuple[int, ...] = ()) -> int:
        """Add a job and return its id; raises QueueFull when ``max_queued`` jobs wait.

        ``after``: jobs it waits for (``engine.store.plans``): it is claimed once they are all done.

        ``on_wait`` is called when another process holds the write lock (see :meth:`write`).
        Which kinds exist and what a spec must hold is ``engine.intake``'s to check (it sits above
        the store and queues through here); a kind no worker knows fails when a worker claims it.
        """
        payload = json.dumps(spec, sort_keys=True)
        with self.write(on_wait=on_wait) as c:
            check_room(c, 1, max_queued)
            job_id = insert_job(c, kind, payload, name=name, priority=priority, max_attempts=max_attempts)
            insert_deps(c, job_id, after)
            return job_id

    def claim(self, worker_id: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Job | None:
        """Atomically take the highest-priority queued job whose parents are all done for ``worker_id``.

        One ``UPDATE ... RETURNING`` inside ``BEGIN IMMEDIATE``: two workers can
        never both get the same job. ``lease_seconds`` is stored on the job:
        the worker heartbeats within it, and every other worker judges the
        job stale by it.
        """
        now = _now()
        with self.write() as c:
            row = c.execute(
                "UPDATE jobs SET status='running', worker_id=:worker_id, started_at=COALESCE(started_at, :now), "
                "heartbeat_at=:now, attempts=attempts+1, lease_seconds=:lease, message='starting' "
                f"WHERE id = (SELECT id FROM jobs WHERE status='queued' AND {READY} "
                "            ORDER BY priority DESC, id LIMIT 1) "
                "RETURNING *", {"worker_id": worker_id, "now": now, "lease": float(lease_seconds)}).fetchone()
            if row is None:
                return None
            job = Job.from_row(row)
            c.execute("UPDATE workers SET status='busy', job_id=:job_id, heartbeat_at=:now WHERE id=:worker_id",
                      {"job_id": job.id, "now": now, "worker_id": worker_id})
            return job

    def get_job(self, job_id: int) -> Job:
        """The job with this id; StoreError when there is none."""
        rows = self._query("SELECT * FROM jobs WHERE id = :job_id", {"job_id": job_id})
        if not rows:
            raise StoreError(f"no job with id {job_id}")
        return Job.from_row(rows[0])

    def heartbeat_job(self, job_id: int, worker_id: str, attempt: int) -> bool:
        """Refresh the job's lease; False when the attempt is no longer ours (requeued, cancelled)."""
        with self.write() as c:
            cur = c.execute(f"UPDATE jobs SET heartbeat_at=:now WHERE {_OWNED}",
                            _owner(job_id, worker_id, attempt, now=_now()))
            return cur.rowcount == 1

    def set_progress(self, job_id: int, fraction: float, message: str = "", *, worker_id: str,
                     attempt: int) -> bool:
        """Record progress in [0, 1] and a short message for our running attempt."""
        fraction = min(1.0, max(0.0, float(fraction)))
        with self.write() as c:
            cur = c.execute(f"UPDATE jobs SET progress=:fraction, message=:message WHERE {_OWNED}",
                            _owner(job_id, worker_id, attempt, fraction=fraction, message=message))
            return cur.rowcount == 1

    def set_job_run(self, job_id: int, run_id: str) -> None:
        """Link a job to the run it produces."""
        with self.write() as c:
            c.execute("UPDATE jobs SET run_id=:run_id WHERE id=:job_id", {"run_id": run_id, "job_id": job_id})

    def finish_job(self, job_id: int, *, worker_id: str, attempt: int, message: str = "done") -> bool:
        """Mark our running attempt done."""
        with self.write() as c:
            cur = c.execute(f"UPDATE jobs SET status='done', progress=1, message=:message, finished_at=:now "
                            f"WHERE {_OWNED}", _owner(job_id, worker_id, attempt, message=message, now=_now()))
            return cur.rowcount == 1

    def fail_job(self, job_id: int, error: str, traceback: str | None = None, *, worker_id: str,
                 attempt: int) -> bool:
        """Mark our running attempt failed, keeping the error message and traceback."""
        now = _now()
        with self.write() as c:
            cur = c.execute(f"UPDATE jobs SET status='failed', error=:error, traceback=:traceback, "
                            f"message=:message, finished_at=:now WHERE {_OWNED}",
                            _owner(job_id, worker_id, attempt, error=error, traceback=traceback,
                                   message=_first_line(error), now=now))
            if cur.rowcount != 1:
                return False
            c.execute("UPDATE runs SET status='failed', finished_at=:now WHERE job_id=:job_id "
                      "AND status='running'", {"now": now, "job_id": job_id})
            return True

    def request_cancel(self, job_id: int) -> str:
        """Cancel a job: a queued one at once, a running one by flag (its worker stops it).

        Returns the job's status after the request.
        """
        with self.write() as c:
            row = c.execute("SELECT status FROM jobs WHERE id=:job_id", {"job_id": job_id}).fetchone()
            if row is None:
                raise StoreError(f"no job with id {job_id}")
            status = row[0]
            if status == "queued":
                c.execute("UPDATE jobs SET status='cancelled', message='cancelled before start', "
                          "finished_at=:now WHERE id=:job_id", {"now": _now(), "job_id": job_id})
                return "cancelled"
            if status == "running":
                c.execute("UPDATE jobs SET cancel_requested=1, message='cancelling' WHERE id=:job_id",
                          {"job_id": job_id})
            return status

    def mark_cancelled(self, job_id: int, *, worker_id: str, attempt: int) -> bool:
        """Record that our running attempt was stopped on request."""
        now = _now()
        with self.write() as c:
            cur = c.execute(f"UPDATE jobs SET status='cancelled', message='cancelled', finished_at=:now "
                            f"WHERE {_OWNED}", _owner(job_id, worker_id, attempt, now=now))
            if cur.rowcount != 1:
                return False
            c.execute("UPDATE runs SET status='cancelled', finished_at=:now WHERE job_id=:job_id "
                      "AND status='running'", {"now": now, "job_id": job_id})
            return True

    def release_job(self, job_id: int, *, worker_id: str, attempt: int,
                    message: str = "requeued: worker stopped") -> bool:
        """Put our running attempt back in the queue without counting it (clean worker stop)."""
        with self.write() as c:
            cur = c.execute(f"UPDATE jobs SET status='queued', worker_id=NULL, attempts=MAX(attempts-1, 0), "
                            f"message=:message WHERE {_OWNED}",
                            _owner(job_id, worker_id, attempt, message=message))
            if cur.rowcount != 1:
                return False
            c.execute("UPDATE runs SET status='interrupted' WHERE job_id=:job_id AND status='running'",
                      {"job_id": job_id})
            return True

    def requeue_stale(self) -> list[int]:
        """Requeue running jobs whose heartbeat is older than their own stored lease.

        Each job is judged by the lease its owner claimed it with, never by
        the caller's. A job that has used all its attempts is failed instead.
        Workers whose heartbeat is older than their own lease are marked
        stopped. Returns the ids of the jobs put back in the queue.
        """
        now = _now()
        requeued: list[int] = []
        with self.write() as c:
            stale = c.execute("SELECT id, attempts, max_attempts, worker_id FROM jobs "
                              f"WHERE status='running' AND {_STALE}", {"now": now}).fetchall()
            for job_id, attempts, max_attempts, worker_id in stale:
                owner = _owner(job_id, worker_id, attempts, now=now)
                if attempts >= max_attempts:
                    msg = (f"worker {worker_id} stopped heartbeating; the job was tried {attempts} "
                           f"time(s), the limit is {max_attempts}")
                    c.execute(f"UPDATE jobs SET status='failed', error=:error, message=:message, "
                              f"finished_at=:now WHERE {_OWNED} AND {_STALE}",
                              dict(owner, error=msg, message=_first_line(msg)))
                    c.execute("UPDATE runs SET status='failed', finished_at=:now WHERE job_id=:job_id "
                              "AND status IN ('running','interrupted')", owner)
                else:
                    c.execute(f"UPDATE jobs SET status='queued', worker_id=NULL, message=:message "
                              f"WHERE {_OWNED} AND {_STALE}",
                              dict(owner, message=f"requeued: worker {worker_id} stopped heartbeating"))
                    c.execute("UPDATE runs SET status='interrupted' WHERE job_id=:job_id AND status='running'",
                              owner)
                    requeued.append(int(job_id))
            c.execute(f"UPDATE workers SET status='stopped', job_id=NULL WHERE status != 'stopped' AND {_STALE}",
                      {"now": now})
        return requeued

    def requeue_job(self, job_id: int) -> Job:
        """Put a failed or cancelled job back in the queue with fresh attempts.

        The job keeps its id, so its run id (``<kind>-<id>``) and run folder
        stay the same: a training job resumes from its finished folds and the
        last checkpoint of the fold it stopped in. Its run shows
        ``interrupted`` until the worker picks it up.
        """
        with self.write() as c:
            row = c.execute("SELECT status FROM jobs WHERE id = :id", {"id": job_id}).fetchone()
            if row is None:
                raise StoreError(f"no job with id {job_id}")
            if row[0] not in ("failed", "cancelled"):
                raise StoreError(f"job {job_id} is {row[0]}; only failed or cancelled jobs can be requeued")
            c.execute("UPDATE jobs SET status='queued', attempts=0, cancel_requested=0, error=NULL, "
                      "traceback=NULL, worker_id=NULL, finished_at=NULL, "
                      "message=:msg WHERE id=:id", {"msg": f"requeued after {row[0]}", "id": job_id})
            c.execute("UPDATE runs SET status='interrupted', finished_at=NULL WHERE job_id=:id "
                      "AND status IN ('failed', 'cancelled')", {"id": job_id})
        return self.get_job(job_id)

    # -- workers ------------------------------------------------------------------
    #
    # A worker's row is written by that worker alone (register, heartbeat,
    # stop); another worker only marks it stopped once its heartbeat is older
    # than its own lease. So a killed worker's row never comes back to life.

    def register_worker(self, worker_id: str, pid: int | None = None, *,
                        lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        """Record a worker process as alive."""
        now = _now()
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO workers(id, pid, host, started_at, heartbeat_at, status, "
                      "lease_seconds) VALUES (:id, :pid, :host, :now, :now, 'idle', :lease)",
                      {"id": worker_id, "pid": pid or os.getpid(), "host": socket.gethostname(), "now": now,
                       "lease": float(lease_seconds)})

    def worker_heartbeat(self, worker_id: str, job_id: int | None = None) -> None:
        """Refresh a worker's heartbeat and what it is doing: busy with ``job_id``, or idle."""
        with self.write() as c:
            c.execute("UPDATE workers SET heartbeat_at=:now, status=:status, job_id=:job_id WHERE id=:id",
                      {"now": _now(), "status": "idle" if job_id is None else "busy", "job_id": job_id,
                       "id": worker_id})

    def worker_stopped(self, worker_id: str) -> None:
        """Record a clean worker exit."""
        with self.write() as c:
            c.execute("UPDATE workers SET status='stopped', job_id=NULL, heartbeat_at=:now WHERE id=:id",
                      {"now": _now(), "id": worker_id})

    def set_worker_cluster(self, worker_id: str, executor: str, cluster: dict | None) -> None:
        """Publish the executor a worker uses and, for a cluster, its nodes and free resources (or error)."""
        with self.write() as c:
            c.execute("UPDATE workers SET executor=?, cluster=? WHERE id=?",
                      (executor, None if cluster is None else json.dumps(cluster, sort_keys=True), worker_id))

    def live_workers(self, max_age: float = 10.0) -> list[dict]:
        """Workers that heartbeated within ``max_age`` seconds and did not stop."""
        return self._query("SELECT * FROM workers WHERE status != 'stopped' AND heartbeat_at >= :since "
                           "ORDER BY started_at", {"since": _now() - max_age})

    # -- where folds run --------------------------------------------------------------

    def record_fold_task(self, job_id: int, attempt: int, fold: int, *, status: str, node: str | None = None,
                         pid: int | None = None, task_attempt: int | None = None, message: str = "") -> None:
        """Record where (node, pid) and how (status, retry) one fold of a job's attempt runs.

        Fields left None keep their recorded value, so a status change does not forget the node.
        """
        with self.write() as c:
            c.execute(
                "INSERT INTO fold_tasks(job_id, attempt, fold, status, node, pid, task_attempt, message, updated_at) "
                "VALUES (?,?,?,?,COALESCE(?, ''),?,COALESCE(?, 0),?,?) "
                "ON CONFLICT(job_id, attempt, fold) DO UPDATE SET status=excluded.status, "
                "node=COALESCE(?, node), pid=COALESCE(?, pid), task_attempt=COALESCE(?, task_attempt), "
                "message=excluded.message, updated_at=excluded.updated_at",
                (job_id, attempt, fold, status, node, pid, task_attempt, message, _now(), node, pid, task_attempt))

    def fold_tasks(self, job_id: int) -> list[dict]:
        """Where each fold of a job ran or runs, by job attempt then fold."""
        return self._query("SELECT * FROM fold_tasks WHERE job_id=? ORDER BY attempt, fold", (job_id,))
