"""The SQLite store: schema, migrations, the job queue and every score.

This package is the only place that writes SQL. It is one class to its
callers, :class:`Store`, built from one part per concern:

- ``schema``: the tables, indexes and views, and the ordered migrations
  (:data:`MIGRATIONS`, :data:`SCHEMA_VERSION`);
- ``connection``: opening a file for reading or writing, WAL, the
  ``BEGIN IMMEDIATE`` write transaction, SQLite errors as :class:`StoreError`;
- ``queue``: enqueue, claim, heartbeat, the end of a job, leases, workers
  and fold tasks;
- ``records``: datasets, folds, runs and their scores, written and read back;
- ``plans``: dependencies between jobs (a job waits for its parents) and
  the plans that queue them together;
- ``listings``: the paged, filtered and sorted listings the console and
  ``fsat runs`` / ``fsat jobs`` read, totals and change cues;
- ``sweeps``: a sweep's points, runs and jobs, the folds a sweep's job trains, the screening step;
- ``rows``: :class:`Job`, and the run rows :class:`RunRow` and
  :class:`RunSummary`, both keyed ``run_id``.
"""

from __future__ import annotations

import time


def _now() -> float:
    """The store's clock (Unix seconds); every part reads it through this name (see ``connection.now``)."""
    return time.time()


from engine.store.connection import (Connection, StoreError, default_db_path, new_database_notice,  # noqa: E402
                                     runs_root)
from engine.store.lineage import Lineage  # noqa: E402
from engine.store.listings import JOB_ORDER, RUN_ORDER, Listings  # noqa: E402
from engine.store.plans import Plans  # noqa: E402
from engine.store.queue import DEFAULT_MAX_QUEUED, Queue  # noqa: E402
from engine.store.records import Records  # noqa: E402
from engine.store.rows import Job, RunRow, RunSummary  # noqa: E402
from engine.store.sweeps import Sweeps  # noqa: E402
from engine.store.schema import (  # noqa: E402
    DEFAULT_LEASE_SECONDS, FINISHED_STATES, JOB_STATES, MIGRATIONS, OOF, SCHEMA_VERSION)

__all__ = [
    "DEFAULT_LEASE_SECONDS", "DEFAULT_MAX_QUEUED", "FINISHED_STATES", "JOB_ORDER", "JOB_STATES",
    "MIGRATIONS", "OOF", "RUN_ORDER", "SCHEMA_VERSION", "Job", "RunRow", "RunSummary", "Store", "StoreError",
    "default_db_path", "new_database_notice", "runs_root",
]


class Store(Queue, Plans, Records, Listings, Sweeps, Lineage, Connection):
    """A connection to ``experiments.db`` with the queue and score operations.

    Three ways to open it:

    - ``Store(path)`` opens for writing (workers, job processes, ``fsat
      queue``): it creates the file and upgrades the schema when needed.
    - ``Store(path, readonly=True)`` opens for reading (listings, the
      console's polls): the file must exist; nothing is written, not even
      the schema (``PRAGMA query_only``), so a reader never waits on a
      writer's lock.
    - ``Store(path, lazy=True)`` (the console) reads like ``readonly`` and
      opens its writing connection, with any upgrade, on the first write.
      A missing file is created at once.

    A database that cannot be used (not an SQLite file, a newer schema, a
    missing file for a reader, a read-only file for a writer) raises
    :class:`StoreError` with one line naming the file. One Store may be
    shared between threads; separate processes each open their own.
    ``schema_version`` stops the upgrade at an older version: tests use it
    to write a database as an older release did.

    Each part is a subclass of :class:`~engine.store.connection.Connection`
    and shares its one pair of connections: :class:`~engine.store.queue.Queue`,
    :class:`~engine.store.records.Records` and
    :class:`~engine.store.listings.Listings`.
    """
