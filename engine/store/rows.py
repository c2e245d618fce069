"""The rows the store hands out: a job as a dataclass."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

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
