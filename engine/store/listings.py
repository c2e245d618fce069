"""The listings the console and ``fsat runs`` / ``fsat jobs`` read: pages, counts, totals and change stamps.

Every listing is filtered, sorted and paged in SQL (``engine.filters``
compiles a filter to a named-parameter WHERE clause over :data:`_RUN_SELECT`
or :data:`_JOB_SELECT`), so a page costs the same with 10 runs or 100,000.
Run rows come back as :class:`engine.store.rows.RunSummary`, keyed
``run_id``; job rows as dicts keyed ``id``.
"""

from __future__ import annotations

from typing import Any, Sequence, cast

from engine.store.connection import Connection, StoreError
from engine.store.rows import RunSummary

#: Sort keys of :meth:`Store.page_runs` -> SQL expression (over ``_RUN_SELECT``'s columns).
RUN_ORDER = {
    "run_id": "r.id", "name": "r.name COLLATE NOCASE", "model": "r.model COLLATE NOCASE",
    "kind": "r.kind", "status": "CASE r.status WHEN 'running' THEN 0 WHEN 'interrupted' THEN 1 "
    "WHEN 'failed' THEN 2 WHEN 'cancelled' THEN 3 WHEN 'done' THEN 4 ELSE 5 END",
    "folds": "folds_done", "cv": "r.cv_lwlrap", "mean_fold": "mean_fold_lwlrap", "test": "r.test_lwlrap",
    "created": "r.created_at", "finished": "r.finished_at", "duration": "r.finished_at - r.created_at",
    "tags": "tags", "note": "r.note", "seed": "r.seed",
}
_RUN_NOT_NULL = {"run_id", "created", "kind", "name", "model", "status", "folds", "note"}
_JOB_NOT_NULL = {"id", "kind", "name", "priority", "status", "progress", "attempts", "created", "message"}
#: Sort keys of :meth:`Store.page_jobs`.
JOB_ORDER = {
    "id": "j.id", "kind": "j.kind", "name": "j.name COLLATE NOCASE", "priority": "j.priority",
    "status": "CASE j.status WHEN 'running' THEN 0 WHEN 'queued' THEN 1 WHEN 'failed' THEN 2 "
    "WHEN 'cancelled' THEN 3 ELSE 4 END",
    "progress": "j.progress", "attempts": "j.attempts", "created": "j.created_at", "started": "j.started_at",
    "finished": "j.finished_at", "duration": "COALESCE(j.finished_at, j.heartbeat_at) - j.started_at",
    "message": "j.message",
}
_RUN_SELECT = (
    "SELECT r.id AS run_id, r.kind, r.name, r.model, r.status, r.cv_lwlrap, r.test_lwlrap, "
    "(SELECT COUNT(*) FROM fold_scores f WHERE f.run_id = r.id) AS folds_done, "
    "(SELECT AVG(f.lwlrap) FROM fold_scores f WHERE f.run_id = r.id) AS mean_fold_lwlrap, "
    "r.seed, r.device, r.job_id, d.name AS dataset, datetime(r.created_at, 'unixepoch') AS created, "
    "(SELECT group_concat(t.tag, ' ') FROM (SELECT tag FROM run_tags WHERE run_id = r.id ORDER BY tag) t) AS tags, "
    "r.note, r.archived, r.parent_run_id, r.dataset_id, r.created_at, r.finished_at "
    "FROM runs r LEFT JOIN datasets d ON d.id = r.dataset_id")
_JOB_SELECT = (
    "SELECT j.id, j.kind, j.name, j.status, j.priority, j.run_id, j.progress, j.message, j.error, j.attempts, "
    "j.max_attempts, j.worker_id, j.created_at, j.started_at, j.finished_at, j.heartbeat_at, "
    "j.cancel_requested FROM jobs j")


class Listings(Connection):
    """Paged, filtered and sorted listings of runs and jobs, and change cues (part of :class:`engine.store.Store`)."""

    # -- runs ------------------------------------------------------------------------------------------

    def _summaries(self, sql: str, params: Sequence[Any] | dict = ()) -> list[RunSummary]:
        """The rows of a query over ``run_summary`` or :data:`_RUN_SELECT` (keyed ``run_id``)."""
        return cast(list[RunSummary], self._query(sql, params))

    def list_runs(self, *, limit: int = 200) -> list[RunSummary]:
        """Runs with their headline scores, newest first."""
        return self._summaries("SELECT * FROM run_summary ORDER BY created DESC, run_id DESC LIMIT :limit",
                               {"limit": limit})

    def child_runs(self, run_id: str, *, kind: str | None = None) -> list[RunSummary]:
        """Runs made from ``run_id`` (``parent_run_id``), optionally of one kind: run_summary rows, newest first."""
        sql = "SELECT * FROM run_summary WHERE parent_run_id=:run_id"
        params: dict[str, Any] = {"run_id": run_id}
        if kind is not None:
            sql += " AND kind=:kind"
            params["kind"] = kind
        return self._summaries(sql + " ORDER BY created DESC, run_id DESC", params)

    def page_runs(self, *, where: str = "1", params: dict | None = None, order: str = "created",
                  descending: bool = True, limit: int | None = 200, offset: int = 0,
                  archived: bool | None = False) -> list[RunSummary]:
        """One page of runs (``run_summary`` columns) matching a filter, sorted in SQL.

        ``where``/``params`` come from :func:`engine.filters.compile_filter`
        (named parameters only). ``order`` is a key of :data:`RUN_ORDER`;
        missing values sort last in both directions and the run id breaks
        ties, so pages never overlap. ``archived`` False hides archived runs,
        True shows only them, None shows both. ``limit`` None returns every row.
        """
        sql, bound = self._run_where(where, params, archived)
        expr = RUN_ORDER.get(order)
        if expr is None:
            raise StoreError(f"cannot sort runs by {order!r}; one of {', '.join(RUN_ORDER)}")
        direction = "DESC" if descending else "ASC"
        # Columns that are never NULL need no "missing last" term, so an index can serve the order.
        nulls = "" if order in _RUN_NOT_NULL else f"({expr}) IS NULL, "
        sql = (f"{_RUN_SELECT} WHERE {sql} ORDER BY {nulls}{expr} {direction}, r.id {direction}"
               " LIMIT :_limit OFFSET :_offset")
        bound.update(_limit=-1 if limit is None else int(limit), _offset=max(0, int(offset)))
        return self._summaries(sql, bound)

    def count_runs(self, *, where: str = "1", params: dict | None = None, archived: bool | None = False) -> int:
        """How many runs match a filter (see :meth:`page_runs`)."""
        sql, bound = self._run_where(where, params, archived)
        return int(self._query(f"SELECT COUNT(*) AS n FROM runs r WHERE {sql}", bound)[0]["n"])

    @staticmethod
    def _run_where(where: str, params: dict | None, archived: bool | None) -> tuple[str, dict]:
        bound = dict(params or {})
        sql = f"({where or '1'})"
        if archived is not None:
            sql += " AND r.archived = :_archived"
            bound["_archived"] = 1 if archived else 0
        return sql, bound

    def run_rows(self, run_ids: Sequence[str]) -> list[RunSummary]:
        """``run_summary`` rows of the given runs (in the order asked; unknown ids are left out)."""
        if not run_ids:
            return []
        bound = {f"_r{i}": str(r) for i, r in enumerate(run_ids)}
        rows = self._summaries(f"{_RUN_SELECT} WHERE r.id IN ({', '.join(':' + k for k in bound)})", bound)
        by_id = {r["run_id"]: r for r in rows}
        return [by_id[str(r)] for r in run_ids if str(r) in by_id]

    def infer_runs_of(self, run_id: str) -> list[RunSummary]:
        """Inference runs made from ``run_id`` (``run_summary`` rows, newest first); one indexed lookup."""
        return self._summaries(f"{_RUN_SELECT} WHERE r.parent_run_id = :parent AND r.kind = 'infer' "
                               "ORDER BY r.created_at DESC, r.id DESC", {"parent": run_id})

    def blendable_runs(self) -> list[RunSummary]:
        """Every finished run with a run folder (``run_summary`` columns plus ``run_dir``), newest first."""
        return self._summaries(f"SELECT s.*, r.run_dir FROM ({_RUN_SELECT} WHERE r.status = 'done' "
                               "AND r.run_dir != '') s JOIN runs r ON r.id = s.run_id "
                               "ORDER BY s.created_at DESC, s.run_id DESC")

    # -- jobs ------------------------------------------------------------------------------------------

    def list_jobs(self, *, status: str | None = None, limit: int = 200) -> list[dict]:
        """Jobs, newest first, without spec/traceback (cheap for live tables)."""
        sql = ("SELECT id, kind, name, status, priority, run_id, progress, message, error, attempts, "
               "max_attempts, worker_id, created_at, started_at, finished_at, cancel_requested "
               "FROM jobs")
        if status:
            sql += " WHERE status = :status"
        sql += " ORDER BY id DESC LIMIT :limit"
        return self._query(sql, {"status": status, "limit": limit})

    def count_jobs(self, *statuses: str) -> int:
        """How many jobs are in any of the given states."""
        names = {f"s{i}": s for i, s in enumerate(statuses)}
        marks = ",".join(f":{k}" for k in names)
        return int(self._query(f"SELECT COUNT(*) AS n FROM jobs WHERE status IN ({marks})", names)[0]["n"])

    def page_jobs(self, *, where: str = "1", params: dict | None = None, order: str = "id",
                  descending: bool = True, limit: int | None = 200, offset: int = 0) -> list[dict]:
        """One page of jobs (the :meth:`list_jobs` columns) matching a filter, sorted in SQL."""
        expr = JOB_ORDER.get(order)
        if expr is None:
            raise StoreError(f"cannot sort jobs by {order!r}; one of {', '.join(JOB_ORDER)}")
        direction = "DESC" if descending else "ASC"
        bound = dict(params or {})
        bound.update(_limit=-1 if limit is None else int(limit), _offset=max(0, int(offset)))
        nulls = "" if order in _JOB_NOT_NULL else f"({expr}) IS NULL, "
        return self._query(f"{_JOB_SELECT} WHERE ({where or '1'}) ORDER BY {nulls}{expr} {direction}, "
                           f"j.id {direction} LIMIT :_limit OFFSET :_offset", bound)

    def count_jobs_where(self, *, where: str = "1", params: dict | None = None) -> int:
        """How many jobs match a filter."""
        return int(self._query(f"SELECT COUNT(*) AS n FROM jobs j WHERE ({where or '1'})",
                               dict(params or {}))[0]["n"])

    def job_status_counts(self) -> dict[str, int]:
        """Jobs per status over the whole table (the status line's true totals)."""
        rows = self._query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        return {r["status"]: int(r["n"]) for r in rows}

    def jobs_ended_since(self, since: float) -> list[dict]:
        """Jobs that became done or failed after ``since`` (Unix seconds), oldest first."""
        return self._query(f"{_JOB_SELECT} WHERE j.finished_at > :since AND j.status IN ('done', 'failed') "
                           "ORDER BY j.finished_at", {"since": since})

    def last_ended_at(self) -> float | None:
        """When the most recent job ended."""
        return self._query("SELECT MAX(finished_at) AS t FROM jobs")[0]["t"]

    # -- totals and change cues ---------------------------------------------------------------------

    def run_totals(self) -> dict[str, int]:
        """``{"runs": shown-by-default, "archived": archived}`` over the whole table."""
        rows = self._query("SELECT archived, COUNT(*) AS n FROM runs GROUP BY archived")
        counts = {int(r["archived"]): int(r["n"]) for r in rows}
        return {"runs": counts.get(0, 0), "archived": counts.get(1, 0)}

    def run_stamp(self) -> tuple:
        """Changes whenever a run is added, finishes, is rescored, tagged or archived (cheap change cue)."""
        row = self._query("SELECT COUNT(*) AS n, MAX(created_at) AS c, MAX(finished_at) AS f, "
                          "TOTAL(cv_lwlrap) AS cv, TOTAL(archived) AS a, "
                          "(SELECT COUNT(*) FROM run_tags) AS t FROM runs")[0]
        return tuple(row.values())
