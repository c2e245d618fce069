"""Dependencies between jobs and the plans that queue them together.

A job may name parents (``job_deps``): it is claimed only once every parent
is ``done`` (:data:`READY`, part of the claim's one ``UPDATE``), whatever the
number of workers. While it waits its stored state stays ``queued``; what a
listing shows is derived from its ancestors (:meth:`Plans.job_waits`):

- *waiting* for its parents while none of its ancestors failed or was cancelled;
- *held* while one did, with the reason (``held: job 3 "teacher" failed``).
  Requeueing that ancestor releases it: nothing is stored, so nothing is
  left to undo.

A plan (``plans``, ``plan_steps``) is a named set of jobs queued in one
transaction by :meth:`Plans.enqueue_plan`, one job per step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from engine.errors import QueueFull
from engine.store.connection import Connection, StoreError, now as _now

#: The claim's condition (the ``jobs`` row in scope): every parent of the job is done.
READY = ("NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.parent_id "
         "WHERE d.job_id = jobs.id AND p.status != 'done')")

#: States of an ancestor that hold its queued descendants.
HOLDING_STATES = ("failed", "cancelled")


class ReservationMoved(StoreError):
    """The job ids a plan's specs were built for were taken meanwhile; build them again."""


@dataclass(frozen=True)
class PlanJob:
    """One step of a plan, ready to queue: its job's kind, spec and name, and its parents' step names."""

    step: str
    kind: str
    spec: dict
    name: str
    parents: tuple[str, ...] = ()
    #: Jobs outside the plan this step waits for (queued or running jobs that write runs it names).
    after: tuple[int, ...] = field(default=())


def insert_deps(c, job_id: int, parents: Iterable[int]) -> None:
    """Inside the write transaction ``c``: make ``job_id`` wait for ``parents`` (StoreError for a missing one)."""
    for parent in sorted(set(parents)):
        if not c.execute("SELECT 1 FROM jobs WHERE id = :id", {"id": parent}).fetchone():
            raise StoreError(f"no job with id {parent} to wait for")
        c.execute("INSERT OR IGNORE INTO job_deps(job_id, parent_id) VALUES (:job, :parent)",
                  {"job": job_id, "parent": parent})


class Plans(Connection):
    """Job dependencies, their derived waiting/held state, and plans (part of :class:`engine.store.Store`)."""

    def _has_plans(self) -> bool:
        """Whether the file has the dependency tables (a reader may hold a file older than schema 10)."""
        return bool(self._query("SELECT 1 AS x FROM sqlite_master WHERE type='table' AND name='job_deps'"))

    def next_job_id(self) -> int:
        """The id the next job queued will get (the table's largest id plus one)."""
        return int(self._query("SELECT COALESCE(MAX(id), 0) + 1 AS n FROM jobs")[0]["n"])

    def enqueue_plan(self, name: str, preset: str, steps: Sequence[PlanJob], *, first_id: int,
                     max_queued: int | None = None, priority: int = 0) -> int:
        """Queue every step as one job, in order, in one transaction; return the plan's id.

        The steps' specs name their parents' runs by the run ids their jobs
        will get (``<kind>-<job id>``), reserved from ``first_id`` on: when
        another job took that id meanwhile, :class:`ReservationMoved` is raised
        and nothing is queued. ``priority`` is every step's job priority.
        """
        from engine.store.queue import DEFAULT_MAX_QUEUED

        limit = DEFAULT_MAX_QUEUED if max_queued is None else max_queued
        now = _now()
        with self.write() as c:
            nxt = c.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM jobs").fetchone()[0]
            if nxt != first_id:
                raise ReservationMoved(f"job id {first_id} was taken meanwhile (next is {nxt})")
            waiting = c.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
            if waiting + len(steps) > limit:
                raise QueueFull(f"the queue holds {waiting} queued jobs; the plan's {len(steps)} would pass the "
                                f"limit of {limit} (wait for some to finish or cancel some)")
            plan_id = int(c.execute("INSERT INTO plans(name, preset, created_at) VALUES (:n, :p, :now)",
                                    {"n": name, "p": preset, "now": now}).lastrowid)
            ids: dict[str, int] = {}
            for position, step in enumerate(steps):
                job_id = int(c.execute(
                    "INSERT INTO jobs(id, kind, name, spec, created_at, priority) "
                    "VALUES (:id, :kind, :name, :spec, :now, :priority)",
                    {"id": first_id + position, "kind": step.kind, "name": step.name, "priority": priority,
                     "spec": json.dumps(step.spec, sort_keys=True), "now": now}).lastrowid)
                insert_deps(c, job_id, [ids[p] for p in step.parents] + list(step.after))
                c.execute("INSERT INTO plan_steps(plan_id, step, position, job_id) VALUES (:plan, :step, :pos, :job)",
                          {"plan": plan_id, "step": step.step, "pos": position, "job": job_id})
                ids[step.step] = job_id
            return plan_id

    def job_parents(self, job_id: int) -> list[int]:
        """The jobs this job waits for."""
        return [int(r["parent_id"]) for r in
                self._query("SELECT parent_id FROM job_deps WHERE job_id = :id ORDER BY parent_id", {"id": job_id})]

    def job_waits(self, job_ids: Iterable[int] | None = None) -> dict[int, dict]:
        """``{job id: {"state": "waiting" | "held", "reason": ...}}`` for queued jobs that cannot start yet.

        ``job_ids`` limits it to those jobs (default: every queued job).
        """
        wanted = None if job_ids is None else {int(j) for j in job_ids}
        if wanted == set() or not self._has_plans():
            return {}
        rows = self._query(
            "WITH RECURSIVE up(job_id, anc, depth) AS ("
            "  SELECT d.job_id, d.parent_id, 1 FROM job_deps d JOIN jobs j ON j.id = d.job_id "
            "  WHERE j.status = 'queued' "
            "  UNION SELECT up.job_id, d.parent_id, up.depth + 1 FROM up JOIN job_deps d ON d.job_id = up.anc) "
            "SELECT up.job_id, up.anc, MIN(up.depth) AS depth, a.status, a.name FROM up JOIN jobs a ON a.id = up.anc "
            "WHERE a.status != 'done' GROUP BY up.job_id, up.anc ORDER BY up.job_id, up.anc")
        out: dict[int, dict] = {}
        for r in rows:
            job_id = int(r["job_id"])
            if wanted is not None and job_id not in wanted:
                continue
            entry = out.setdefault(job_id, {"state": "waiting", "reason": "", "waiting_for": []})
            if r["status"] in HOLDING_STATES:
                if entry["state"] != "held":
                    entry["state"] = "held"
                    entry["reason"] = f"held: job {r['anc']} {r['name']!r} {r['status']}"
            elif r["depth"] == 1:
                entry["waiting_for"].append(int(r["anc"]))
        for entry in out.values():
            if entry["state"] == "waiting":
                entry["reason"] = "waiting for job " + ", ".join(map(str, entry["waiting_for"] or ["?"]))
        return out

    def count_startable_jobs(self) -> int:
        """Running jobs plus queued jobs that are not held: what a draining worker still waits for."""
        total = self.count_jobs("queued", "running")
        held = sum(1 for w in self.job_waits().values() if w["state"] == "held")
        return total - held

    # -- plans -------------------------------------------------------------------------------------

    def list_plans(self, *, limit: int = 50) -> list[dict]:
        """Plans, newest first, with how many of their jobs are in each state."""
        if not self._has_plans():
            return []
        plans = self._query("SELECT * FROM plans ORDER BY id DESC LIMIT :limit", {"limit": limit})
        for plan in plans:
            counts = self._query("SELECT j.status, COUNT(*) AS n FROM plan_steps s JOIN jobs j ON j.id = s.job_id "
                                 "WHERE s.plan_id = :id GROUP BY j.status", {"id": plan["id"]})
            plan["counts"] = {r["status"]: int(r["n"]) for r in counts}
        return plans

    def get_plan(self, plan_id: int) -> dict:
        """The plan's row; StoreError when there is none."""
        rows = self._query("SELECT * FROM plans WHERE id = :id", {"id": plan_id})
        if not rows:
            raise StoreError(f"no plan with id {plan_id}")
        return rows[0]

    def plan_steps(self, plan_id: int) -> list[dict]:
        """A plan's steps in preset order: the job's columns, its parents' step names and shown state."""
        rows = self._query(
            "SELECT s.step, s.position, j.id AS job_id, j.kind, j.name, j.status, j.run_id, j.progress, j.message, "
            "j.error, j.started_at, j.finished_at FROM plan_steps s JOIN jobs j ON j.id = s.job_id "
            "WHERE s.plan_id = :id ORDER BY s.position", {"id": plan_id})
        by_job = {r["job_id"]: r["step"] for r in rows}
        deps = self._query("SELECT d.job_id, d.parent_id FROM job_deps d JOIN plan_steps s ON s.job_id = d.job_id "
                           "WHERE s.plan_id = :id ORDER BY d.parent_id", {"id": plan_id})
        waits = self.job_waits(by_job)
        for r in rows:
            r["parents"] = [by_job.get(d["parent_id"], f"job {d['parent_id']}") for d in deps
                            if d["job_id"] == r["job_id"]]
            wait = waits.get(r["job_id"])
            r["state"] = wait["state"] if wait else r["status"]
            r["reason"] = wait["reason"] if wait else ""
        return rows

    def plan_of_job(self, job_id: int) -> int | None:
        """The plan a job belongs to, if any."""
        if not self._has_plans():
            return None
        rows = self._query("SELECT plan_id FROM plan_steps WHERE job_id = :id", {"id": job_id})
        return int(rows[0]["plan_id"]) if rows else None

    def cancel_plan(self, plan_id: int) -> dict[str, int]:
        """Cancel what has not started and ask the running steps to stop; ``{"cancelled": n, "stopping": m}``."""
        self.get_plan(plan_id)
        with self.write() as c:
            cancelled = c.execute(
                "UPDATE jobs SET status='cancelled', message='cancelled with its plan', finished_at=:now "
                "WHERE status='queued' AND id IN (SELECT job_id FROM plan_steps WHERE plan_id=:id)",
                {"now": _now(), "id": plan_id}).rowcount
            stopping = c.execute(
                "UPDATE jobs SET cancel_requested=1, message='cancelling' "
                "WHERE status='running' AND id IN (SELECT job_id FROM plan_steps WHERE plan_id=:id)",
                {"id": plan_id}).rowcount
        return {"cancelled": int(cancelled), "stopping": int(stopping)}
