"""Sweeps: queue a sweep's runs in one transaction, the folds each of its jobs trains, the screening step.

A sweep is one row in ``sweeps``, one row per point in ``sweep_points`` (its
settings, and once screened its decision), one row per point and seed in
``sweep_runs`` (the run it writes) and one row per queued job in
``sweep_jobs`` (the run, the stage and the folds that job trains). What a
sweep's points are and how the screening decides is ``engine.sweeps``'s; this
module only writes and reads the rows, each change in one ``BEGIN IMMEDIATE``
transaction.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from engine.store.connection import Connection, StoreError, now as _now
from engine.store.queue import DEFAULT_MAX_QUEUED, check_room, insert_job
from engine.store.schema import FINISHED_STATES

#: Stages of a sweep: its screening jobs run; its kept points complete (or no screening); cancelled.
SWEEP_STAGES = ("screening", "completing", "cancelled")


def sweep_run_id(sweep_id: int, point: int, seed: int) -> str:
    """The run a sweep's point trains with one seed: ``sweep-0003-p1-s2``."""
    return f"sweep-{sweep_id:04d}-p{point}-s{seed}"


class Sweeps(Connection):
    """Sweep rows (part of :class:`engine.store.Store`)."""

    def create_sweep(self, *, name: str, kind: str, preset: str, base: dict, axes: dict, seeds: Sequence[int],
                     points: Sequence[tuple[dict, Sequence[tuple[int, dict]]]], screen_fold: int | None,
                     keep: int | None, priority: int = 0, max_queued: int = DEFAULT_MAX_QUEUED) -> int:
        """Record a sweep and queue one job per point and seed, all in one transaction; returns the sweep id.

        ``points`` is ``[(settings, [(seed, spec dict), ...]), ...]``: each spec
        already passed ``engine.intake.prepare``. With ``screen_fold`` each job
        trains that fold only (stage ``screen``); without, every fold (``full``).
        """
        n_jobs = sum(len(runs) for _settings, runs in points)
        with self.write() as c:
            check_room(c, n_jobs, max_queued)
            sweep_id = int(c.execute(
                "INSERT INTO sweeps(name, kind, preset, base, axes, seeds, screen_fold, keep, stage, created_at) "
                "VALUES (:name, :kind, :preset, :base, :axes, :seeds, :screen_fold, :keep, :stage, :now)",
                {"name": name, "kind": kind, "preset": preset or "", "base": json.dumps(base, sort_keys=True),
                 "axes": json.dumps(axes), "seeds": json.dumps(list(seeds)), "screen_fold": screen_fold,
                 "keep": keep, "stage": "screening" if screen_fold is not None else "completing",
                 "now": _now()}).lastrowid)
            stage = "screen" if screen_fold is not None else "full"
            folds = json.dumps([screen_fold]) if screen_fold is not None else None
            for point, (settings, runs) in enumerate(points):
                c.execute("INSERT INTO sweep_points(sweep_id, point, settings) VALUES (:s, :p, :settings)",
                          {"s": sweep_id, "p": point, "settings": json.dumps(settings)})
                for seed, spec in runs:
                    run_id = sweep_run_id(sweep_id, point, seed)
                    c.execute("INSERT INTO sweep_runs(sweep_id, point, seed, run_id) VALUES (:s, :p, :seed, :r)",
                              {"s": sweep_id, "p": point, "seed": seed, "r": run_id})
                    spec = {**spec, "name": run_id}
                    job_id = insert_job(c, kind, json.dumps(spec, sort_keys=True), name=run_id, priority=priority,
                                        run_id=run_id)
                    c.execute("INSERT INTO sweep_jobs(job_id, sweep_id, run_id, stage, folds) "
                              "VALUES (:j, :s, :r, :stage, :folds)",
                              {"j": job_id, "s": sweep_id, "r": run_id, "stage": stage, "folds": folds})
            return sweep_id

    def job_folds(self, job_id: int) -> list[int] | None:
        """The folds a sweep's job trains (its screening fold), or None: every fold its spec names."""
        rows = self._query("SELECT folds FROM sweep_jobs WHERE job_id = :j", {"j": job_id})
        return json.loads(rows[0]["folds"]) if rows and rows[0]["folds"] is not None else None

    def get_sweep(self, sweep_id: int) -> dict:
        """A sweep's row (base, axes and seeds decoded); StoreError when there is none."""
        rows = self._query("SELECT * FROM sweeps WHERE id = :s", {"s": sweep_id})
        if not rows:
            raise StoreError(f"no sweep {sweep_id} (see `fsat sweep list`)")
        row = rows[0]
        for key in ("base", "axes", "seeds"):
            row[key] = json.loads(row[key])
        return row

    def list_sweeps(self) -> list[dict]:
        """Every sweep, newest first, with its counts of points and runs."""
        return self._query(
            "SELECT s.id, s.name, s.preset, s.stage, s.screen_fold, s.keep, "
            "(SELECT COUNT(*) FROM sweep_points p WHERE p.sweep_id = s.id) AS points, "
            "(SELECT COUNT(*) FROM sweep_runs r WHERE r.sweep_id = s.id) AS runs, "
            "datetime(s.created_at, 'unixepoch') AS created FROM sweeps s ORDER BY s.id DESC")

    def sweep_points(self, sweep_id: int) -> list[dict]:
        """A sweep's points in order: settings (decoded), decision, screening score, reason."""
        rows = self._query("SELECT * FROM sweep_points WHERE sweep_id = :s ORDER BY point", {"s": sweep_id})
        for row in rows:
            row["settings"] = json.loads(row["settings"])
        return rows

    def sweep_runs(self, sweep_id: int) -> list[dict]:
        """A sweep's runs (point, seed, run id) with the run's scores and its latest job's state."""
        return self._query(
            "SELECT sr.point, sr.seed, sr.run_id, r.status AS run_status, r.cv_lwlrap, r.config_hash, "
            "(SELECT COUNT(*) FROM fold_scores f WHERE f.run_id = sr.run_id) AS folds_done, "
            "(SELECT j.status FROM sweep_jobs sj JOIN jobs j ON j.id = sj.job_id WHERE sj.run_id = sr.run_id "
            " ORDER BY sj.job_id DESC LIMIT 1) AS job_status, "
            "(SELECT sj.stage FROM sweep_jobs sj WHERE sj.run_id = sr.run_id ORDER BY sj.job_id DESC LIMIT 1) "
            " AS job_stage "
            "FROM sweep_runs sr LEFT JOIN runs r ON r.id = sr.run_id WHERE sr.sweep_id = :s "
            "ORDER BY sr.point, sr.seed", {"s": sweep_id})

    def sweep_of_job(self, job_id: int) -> int | None:
        """The sweep that queued a job, or None."""
        rows = self._query("SELECT sweep_id FROM sweep_jobs WHERE job_id = :j", {"j": job_id})
        return int(rows[0]["sweep_id"]) if rows else None

    def sweep_of_run(self, run_id: str) -> int | None:
        """The sweep a run belongs to, or None."""
        rows = self._query("SELECT sweep_id FROM sweep_runs WHERE run_id = :r", {"r": run_id})
        return int(rows[0]["sweep_id"]) if rows else None

    def advance_sweep(self, sweep_id: int,
                      decide: Callable[[dict, list[dict]], dict[int, tuple[str, float | None, str]]]) -> list[int]:
        """After a job of the sweep ends: when every screening job has ended, record the decisions and
        queue the kept points' completions; returns the ids of the jobs queued (none until then).

        One ``BEGIN IMMEDIATE`` transaction that first checks the sweep is still screening, so
        however many processes call it, exactly one records the decision. ``decide(sweep, runs)``
        gets the sweep's row and one row per run (point, seed, run_id, its screening job's status
        and error, its screening fold's LWLRAP) and returns ``{point: (decision, score, reason)}``.
        """
        with self.write() as c:
            sweep = c.execute("SELECT * FROM sweeps WHERE id = :s", {"s": sweep_id}).fetchone()
            if sweep is None or sweep["stage"] != "screening":
                return []
            runs = [dict(r) for r in c.execute(
                "SELECT sr.point, sr.seed, sr.run_id, j.id AS job_id, j.status AS job_status, j.error, "
                "f.lwlrap AS screen_lwlrap "
                "FROM sweep_runs sr JOIN sweep_jobs sj ON sj.run_id = sr.run_id AND sj.stage = 'screen' "
                "JOIN jobs j ON j.id = sj.job_id "
                "LEFT JOIN fold_scores f ON f.run_id = sr.run_id AND f.fold = :fold "
                "WHERE sr.sweep_id = :s ORDER BY sr.point, sr.seed",
                {"s": sweep_id, "fold": sweep["screen_fold"]}).fetchall()]
            if any(r["job_status"] not in FINISHED_STATES for r in runs):
                return []
            decisions = decide(dict(sweep), runs)
            queued: list[int] = []
            for point, (decision, score, reason) in sorted(decisions.items()):
                c.execute("UPDATE sweep_points SET decision = :d, screen_lwlrap = :score, reason = :reason "
                          "WHERE sweep_id = :s AND point = :p",
                          {"d": decision, "score": score, "reason": reason, "s": sweep_id, "p": point})
                if decision == "kept":
                    queued += self._queue_completion(c, sweep_id, point)
            c.execute("UPDATE sweeps SET stage = 'completing' WHERE id = :s", {"s": sweep_id})
            return queued

    def complete_point(self, sweep_id: int, point: int) -> list[int]:
        """Queue the completion (every fold) of a screened-out point: the decision overridden by hand."""
        with self.write() as c:
            row = c.execute("SELECT decision FROM sweep_points WHERE sweep_id = :s AND point = :p",
                            {"s": sweep_id, "p": point}).fetchone()
            if row is None:
                raise StoreError(f"sweep {sweep_id} has no point {point}")
            if row["decision"] != "screened out":
                state = row["decision"] or "not screened yet"
                raise StoreError(f"point {point} of sweep {sweep_id} is {state}; only a screened-out point "
                                 "can be completed by hand")
            queued = self._queue_completion(c, sweep_id, point)
            c.execute("UPDATE sweep_points SET decision = 'completed by hand' WHERE sweep_id = :s AND point = :p",
                      {"s": sweep_id, "p": point})
            return queued

    @staticmethod
    def _queue_completion(c: Any, sweep_id: int, point: int) -> list[int]:
        """Queue every fold of a point's runs: the same runs (they resume and keep their screening fold)."""
        queued = []
        for job in c.execute(
                "SELECT j.kind, j.name, j.spec, j.priority, j.max_attempts, sj.run_id FROM sweep_runs sr "
                "JOIN sweep_jobs sj ON sj.run_id = sr.run_id AND sj.stage = 'screen' JOIN jobs j ON j.id = sj.job_id "
                "WHERE sr.sweep_id = :s AND sr.point = :p ORDER BY sr.seed",
                {"s": sweep_id, "p": point}).fetchall():
            job_id = insert_job(c, job["kind"], job["spec"], name=job["name"], priority=job["priority"],
                                max_attempts=job["max_attempts"], run_id=job["run_id"])
            c.execute("INSERT INTO sweep_jobs(job_id, sweep_id, run_id, stage, folds) "
                      "VALUES (:j, :s, :r, 'complete', NULL)", {"j": job_id, "s": sweep_id, "r": job["run_id"]})
            queued.append(job_id)
        return queued

    def screened_runs(self, run_ids: Sequence[str]) -> list[dict]:
        """Of these runs, the done ones that a screening sweep trained: what says whether they hold its
        screening fold only (``engine.sweeps.mark_screened`` decides).

        One row per such run: ``run_id``, ``screen_fold`` and its ``screen_lwlrap``, the sweep's
        ``base`` spec (JSON text: its ``train.n_folds``), ``folds_done`` and the point's ``decision``
        (None until the screening is decided). One indexed lookup per run asked for, in chunks.
        """
        ids = list(dict.fromkeys(str(r) for r in run_ids))
        out: list[dict] = []
        for start in range(0, len(ids), 500):
            bound = {f"_r{i}": r for i, r in enumerate(ids[start:start + 500])}
            out += self._query(
                "SELECT sr.run_id, sw.screen_fold, sw.base, sp.decision, f.lwlrap AS screen_lwlrap, "
                "(SELECT COUNT(*) FROM fold_scores g WHERE g.run_id = sr.run_id) AS folds_done "
                "FROM sweep_runs sr JOIN sweeps sw ON sw.id = sr.sweep_id "
                "JOIN sweep_points sp ON sp.sweep_id = sr.sweep_id AND sp.point = sr.point "
                "JOIN runs r ON r.id = sr.run_id "
                "LEFT JOIN fold_scores f ON f.run_id = sr.run_id AND f.fold = sw.screen_fold "
                f"WHERE sr.run_id IN ({', '.join(':' + k for k in bound)}) AND sw.screen_fold IS NOT NULL "
                "AND r.status = 'done'", bound)
        return out

    def runs_for_seed_groups(self, kinds: Sequence[str] = ("train", "curriculum"), *,
                             known: Sequence[str] = ()) -> list[dict]:
        """Every scored run of these kinds with its recorded config (decoded), config hash, seed, CV and fold mean.

        ``known``: config hashes the caller has already keyed (``engine.seeds.seed_groups``'s cache);
        the runs with one of them come back with ``config`` None, so a poll that repeats this query
        decodes only the configs it has not seen (1.7 kB of JSON each).
        """
        marks = ", ".join(f":k{i}" for i in range(len(kinds)))
        params: dict[str, Any] = {f"k{i}": k for i, k in enumerate(kinds)}
        params["known"] = json.dumps(list(known))
        rows = self._query(
            "SELECT r.id AS run_id, r.kind, r.config_hash, r.seed, r.cv_lwlrap, f.mean_fold_lwlrap, f.folds_done, "
            "CASE WHEN r.config_hash != '' AND r.config_hash IN (SELECT value FROM json_each(:known)) "
            "THEN NULL ELSE r.config END AS config FROM runs r "
            # One pass over fold_scores (the run_summary view counts per run: 1.5x slower at 10,000 runs).
            "JOIN (SELECT run_id, COUNT(*) AS folds_done, AVG(lwlrap) AS mean_fold_lwlrap FROM fold_scores "
            "GROUP BY run_id) f ON f.run_id = r.id "
            f"WHERE r.kind IN ({marks}) ORDER BY r.id", params)
        for row in rows:
            if row["config"] is not None:
                row["config"] = json.loads(row["config"] or "{}")
        return rows

    def cancel_sweep(self, sweep_id: int) -> int:
        """Cancel a sweep: its queued jobs are cancelled, nothing more is queued; returns how many jobs."""
        with self.write() as c:
            if c.execute("SELECT 1 FROM sweeps WHERE id = :s", {"s": sweep_id}).fetchone() is None:
                raise StoreError(f"no sweep {sweep_id} (see `fsat sweep list`)")
            cur = c.execute("UPDATE jobs SET status = 'cancelled', message = 'sweep cancelled', finished_at = :now "
                            "WHERE status = 'queued' AND id IN (SELECT job_id FROM sweep_jobs WHERE sweep_id = :s)",
                            {"s": sweep_id, "now": _now()})
            c.execute("UPDATE sweeps SET stage = 'cancelled' WHERE id = :s", {"s": sweep_id})
            return cur.rowcount
