"""The rows the store hands out: a job as a dataclass, a run as a dict keyed ``run_id``.

A run has one key for its id wherever its row comes from: ``run_id``, as in
the ``run_summary`` view and every table that refers to a run (the ``runs``
table's own column is ``id``; :func:`run_row` renames it). Run rows stay
plain dicts, because callers read them by key and ``--json`` prints them as
they are; :class:`RunRow` and :class:`RunSummary` say which keys they hold.
"""

# No ``from __future__ import annotations`` here: TypedDict reads NotRequired[...] only from evaluated annotations.
import json
import sqlite3
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict, cast

from engine.store.schema import DEFAULT_LEASE_SECONDS


@dataclass
class Job:
    """One row of the jobs table, with its spec decoded."""

    id: int
    kind: str
    status: str
    priority: int
    name: str
    spec: dict
    run_id: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    worker_id: str | None
    heartbeat_at: float | None
    attempts: int
    max_attempts: int
    progress: float
    message: str
    error: str | None
    traceback: str | None
    cancel_requested: bool
    lease_seconds: float = DEFAULT_LEASE_SECONDS

    @classmethod
    def from_row(cls, row: sqlite3.Row | dict) -> "Job":
        """Build a Job from a ``SELECT * FROM jobs`` row (of any schema version this code reads)."""
        d = dict(row)
        d["spec"] = json.loads(d["spec"])
        d["cancel_requested"] = bool(d["cancel_requested"])
        return cls(**d)


class RunRow(TypedDict):
    """A run's whole record (``Store.get_run``): every column of ``runs``, config and versions decoded."""

    run_id: str
    job_id: int | None
    dataset_id: int | None
    parent_run_id: str | None
    kind: str
    name: str
    model: str
    status: str                 # running | interrupted | done | failed | cancelled
    config: dict
    config_hash: str
    seed: int | None
    device: str
    versions: dict
    git_commit: str
    run_dir: str
    cv_lwlrap: float | None
    test_lwlrap: float | None
    created_at: float
    finished_at: float | None
    warning: str | None
    note: str
    archived: int


class RunSummary(TypedDict):
    """A run in a listing (``run_summary`` columns): headline scores, fold count, dataset name and tags."""

    run_id: str
    kind: str
    name: str
    model: str
    status: str
    cv_lwlrap: float | None
    test_lwlrap: float | None
    folds_done: int
    mean_fold_lwlrap: float | None
    seed: int | None
    device: str
    job_id: int | None
    dataset: str | None         # the dataset's name
    created: str                # ``created_at`` as UTC text
    tags: str | None            # space-separated, sorted
    note: str
    archived: int
    parent_run_id: str | None
    dataset_id: int | None
    created_at: float
    finished_at: float | None
    run_dir: NotRequired[str]           # the view and ``blendable_runs`` carry it, the paged listings not
    warning: NotRequired[str | None]    # the view carries it, the paged listings not


def run_row(row: dict[str, Any]) -> RunRow:
    """A ``SELECT * FROM runs`` row as a :class:`RunRow`: ``id`` renamed ``run_id``, JSON columns decoded."""
    d = dict(row)
    out: dict[str, Any] = {"run_id": d.pop("id"), **d}
    out["config"] = json.loads(out["config"])
    out["versions"] = json.loads(out["versions"])
    return cast(RunRow, out)
