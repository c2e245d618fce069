"""The SQLite store: schema, migrations, the job queue and every score.

This is the only module that writes SQL. Every process (the console, each
worker, each job child) opens its own connection: WAL mode so readers never
block the writer, ``busy_timeout`` so a briefly held lock waits instead of
failing, and every write is one short ``BEGIN IMMEDIATE`` transaction so two
writers never deadlock upgrading a read lock. Readers open the file
read-only (:class:`Store` with ``readonly=True``) and never write, not even
the schema, so they never wait on a writer.

Job states are :data:`JOB_STATES`. A running job whose heartbeat is older
than the lease stored with its claim (its worker died) goes back to
``queued`` until it has used ``max_attempts``, then it is failed with a
message saying so. Parameters are always named (``:job_id``).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import quote

from engine.errors import FsatError, QueueFull


#: Job kinds the worker knows how to run (``probe`` is a diagnostic that checks a worker setup).
JOB_KINDS = ("train", "curriculum", "infer", "baseline", "ensemble", "probe")
#: Every state a job can be in, in the order a job moves through them:
#: ``queued -> running -> done | failed | cancelled`` (a running job whose
#: worker died goes back to ``queued``). The jobs table's CHECK constraint
#: holds exactly these (tests/test_queue.py checks the two agree).
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
#: The states a job never leaves.
FINISHED_STATES = ("done", "failed", "cancelled")
#: ``class_scores.fold`` value for the out-of-fold scores of a run.
OOF = -1

DEFAULT_MAX_QUEUED = 1000
DEFAULT_LEASE_SECONDS = 30.0

#: Version 1: the first schema (tables, indexes and views as first released).
_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    id          INTEGER PRIMARY KEY,
    root        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    classes     TEXT NOT NULL,              -- JSON list, sample_submission order
    n_curated   INTEGER NOT NULL,
    n_noisy     INTEGER NOT NULL DEFAULT 0,
    n_test      INTEGER NOT NULL DEFAULT 0,
    fold_seed   INTEGER,
    n_folds     INTEGER,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS folds (
    dataset_id  INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    fname       TEXT NOT NULL,
    fold        INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, fname)
);
CREATE TABLE IF NOT EXISTS jobs (
    id                INTEGER PRIMARY KEY,
    kind              TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued','running','done','failed','cancelled')),
    priority          INTEGER NOT NULL DEFAULT 0,
    name              TEXT NOT NULL DEFAULT '',
    spec              TEXT NOT NULL,          -- JSON of the resolved job spec
    run_id            TEXT,
    created_at        REAL NOT NULL,
    started_at        REAL,
    finished_at       REAL,
    worker_id         TEXT,
    heartbeat_at      REAL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL DEFAULT 3,
    progress          REAL NOT NULL DEFAULT 0,
    message           TEXT NOT NULL DEFAULT '',
    error             TEXT,
    traceback         TEXT,
    cancel_requested  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(status, priority DESC, id);
CREATE TABLE IF NOT EXISTS runs (
    id             TEXT PRIMARY KEY,
    job_id         INTEGER REFERENCES jobs(id),
    dataset_id     INTEGER REFERENCES datasets(id),
    parent_run_id  TEXT,
    kind           TEXT NOT NULL,
    name           TEXT NOT NULL DEFAULT '',
    model          TEXT NOT NULL DEFAULT '',
    status         TEXT NOT NULL DEFAULT 'running',
    config         TEXT NOT NULL DEFAULT '{}',
    config_hash    TEXT NOT NULL DEFAULT '',
    seed           INTEGER,
    device         TEXT NOT NULL DEFAULT '',
    versions       TEXT NOT NULL DEFAULT '{}',
    git_commit     TEXT NOT NULL DEFAULT '',
    run_dir        TEXT NOT NULL DEFAULT '',
    cv_lwlrap      REAL,
    test_lwlrap    REAL,
    created_at     REAL NOT NULL,
    finished_at    REAL
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id         TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    fold           INTEGER NOT NULL,
    epoch          INTEGER NOT NULL,
    train_loss     REAL,
    val_loss       REAL,
    val_lwlrap     REAL,
    lr             REAL,
    seconds        REAL,
    clips_per_sec  REAL,
    PRIMARY KEY (run_id, fold, epoch)
);
CREATE TABLE IF NOT EXISTS fold_scores (
    run_id      TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    fold        INTEGER NOT NULL,
    lwlrap      REAL NOT NULL,
    best_epoch  INTEGER,
    n_val       INTEGER NOT NULL,
    PRIMARY KEY (run_id, fold)
);
CREATE TABLE IF NOT EXISTS class_scores (
    run_id      TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    fold        INTEGER NOT NULL,         -- -1 = out-of-fold over all curated clips
    class_idx   INTEGER NOT NULL,
    class_name  TEXT NOT NULL,
    lrap        REAL,                     -- NULL when the class has no positives there
    weight      REAL NOT NULL,            -- the class's share of positives (LWLRAP weight)
    n_pos       INTEGER NOT NULL,
    PRIMARY KEY (run_id, fold, class_idx)
);
CREATE TABLE IF NOT EXISTS run_members (
    run_id         TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    member_run_id  TEXT NOT NULL,
    weight         REAL NOT NULL,
    PRIMARY KEY (run_id, member_run_id)
);
CREATE TABLE IF NOT EXISTS workers (
    id            TEXT PRIMARY KEY,
    pid           INTEGER NOT NULL,
    host          TEXT NOT NULL,
    started_at    REAL NOT NULL,
    heartbeat_at  REAL NOT NULL,
    status        TEXT NOT NULL DEFAULT 'idle',  -- idle | busy | stopped
    job_id        INTEGER
);

CREATE VIEW IF NOT EXISTS run_summary AS
SELECT r.id AS run_id, r.kind, r.name, r.model, r.status, r.cv_lwlrap, r.test_lwlrap,
       (SELECT COUNT(*) FROM fold_scores f WHERE f.run_id = r.id) AS folds_done,
       (SELECT AVG(f.lwlrap) FROM fold_scores f WHERE f.run_id = r.id) AS mean_fold_lwlrap,
       r.seed, r.device, r.job_id, d.name AS dataset,
       datetime(r.created_at, 'unixepoch') AS created
FROM runs r LEFT JOIN datasets d ON d.id = r.dataset_id;

CREATE VIEW IF NOT EXISTS oof_class_scores AS
SELECT run_id, class_idx, class_name, lrap, weight, n_pos
FROM class_scores WHERE fold = -1;

CREATE VIEW IF NOT EXISTS best_epochs AS
SELECT e.run_id, e.fold, e.epoch, e.val_lwlrap, e.val_loss, e.train_loss
FROM epochs e JOIN fold_scores f
  ON f.run_id = e.run_id AND f.fold = e.fold AND f.best_epoch = e.epoch;
"""



def _migrate_v1(c: sqlite3.Connection) -> None:
    """The first schema."""
    for stmt in _split_sql(_SCHEMA_V1):
        c.execute(stmt)


def _migrate_v2(c: sqlite3.Connection) -> None:
    """Leases travel with the claim: each running job and each worker keep their own lease.

    Rows written before this step get the lease every worker used then
    (30 s), so an old running job is judged as its worker would have.
    """
    c.execute(f"ALTER TABLE jobs ADD COLUMN lease_seconds REAL NOT NULL DEFAULT {DEFAULT_LEASE_SECONDS!r}")
    c.execute(f"ALTER TABLE workers ADD COLUMN lease_seconds REAL NOT NULL DEFAULT {DEFAULT_LEASE_SECONDS!r}")


def _migrate_v3(c: sqlite3.Connection) -> None:
    """run_summary gains parent_run_id, dataset_id and run_dir; runs are indexed by parent for child queries."""
    c.execute("DROP VIEW IF EXISTS run_summary")
    c.execute("""
CREATE VIEW run_summary AS
SELECT r.id AS run_id, r.kind, r.name, r.model, r.status, r.cv_lwlrap, r.test_lwlrap,
       (SELECT COUNT(*) FROM fold_scores f WHERE f.run_id = r.id) AS folds_done,
       (SELECT AVG(f.lwlrap) FROM fold_scores f WHERE f.run_id = r.id) AS mean_fold_lwlrap,
       r.seed, r.device, r.job_id, d.name AS dataset,
       datetime(r.created_at, 'unixepoch') AS created,
       r.parent_run_id, r.dataset_id, r.run_dir
FROM runs r LEFT JOIN datasets d ON d.id = r.dataset_id""")
    c.execute("CREATE INDEX IF NOT EXISTS runs_parent ON runs(parent_run_id)")


def _migrate_v5(c: sqlite3.Connection) -> None:
    """The curriculum: epochs carry their stage; the noisy-label audit, loss swaps, gain views."""
    # NULL for every epoch written before (train runs have no stages).
    c.execute("ALTER TABLE epochs ADD COLUMN stage TEXT")
    c.execute("""
        CREATE TABLE IF NOT EXISTS noisy_audit (
            run_id         TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            fold           INTEGER NOT NULL,   -- the student fold whose teacher predictions filtered
            class_idx      INTEGER NOT NULL,
            class_name     TEXT NOT NULL,
            n_labelled     INTEGER NOT NULL,   -- noisy clips whose weak label carries the class
            n_kept         INTEGER NOT NULL,
            n_dropped      INTEGER NOT NULL,
            n_added        INTEGER NOT NULL,   -- pseudo-labels the weak label lacked
            n_final        INTEGER NOT NULL,   -- kept + added (what the student trains on)
            mean_weight    REAL,               -- mean clip weight over the n_final clips
            n_true         INTEGER,            -- below: NULL unless the noisy truth is known
            n_wrong        INTEGER,            -- weak labels that are wrong
            wrong_dropped  INTEGER,
            right_lost     INTEGER,
            added_right    INTEGER,
            n_final_right  INTEGER,
            PRIMARY KEY (run_id, fold, class_idx)
        )""")
    c.execute("""
        CREATE TABLE IF NOT EXISTS curriculum_swaps (
            run_id          TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            fold            INTEGER NOT NULL,
            stage           TEXT NOT NULL,
            attempt         INTEGER NOT NULL,  -- 1 = the first re-run of the stage
            loss_from       TEXT NOT NULL,
            loss_to         TEXT NOT NULL,
            stage_lwlrap    REAL,              -- the stage's best validation LWLRAP with loss_from
            teacher_lwlrap  REAL NOT NULL,     -- the teacher's score on the fold
            tolerance       REAL NOT NULL,
            created_at      REAL NOT NULL,
            PRIMARY KEY (run_id, fold, stage, attempt)
        )""")
    c.execute("""
        CREATE VIEW IF NOT EXISTS curriculum_gain AS
        SELECT r.id AS run_id, r.parent_run_id AS teacher_run_id, s.fold,
               s.lwlrap AS student_lwlrap, t.lwlrap AS teacher_lwlrap, s.lwlrap - t.lwlrap AS gain
        FROM runs r
        JOIN fold_scores s ON s.run_id = r.id
        JOIN fold_scores t ON t.run_id = r.parent_run_id AND t.fold = s.fold
        WHERE r.kind = 'curriculum'
        UNION ALL
        SELECT r.id, r.parent_run_id, -1, r.cv_lwlrap, p.cv_lwlrap, r.cv_lwlrap - p.cv_lwlrap
        FROM runs r JOIN runs p ON p.id = r.parent_run_id
        WHERE r.kind = 'curriculum' AND r.cv_lwlrap IS NOT NULL""")
    c.execute("""
        CREATE VIEW IF NOT EXISTS curriculum_class_gain AS
        SELECT r.id AS run_id, r.parent_run_id AS teacher_run_id, s.class_idx, s.class_name, s.weight,
               s.lrap AS student_lrap, t.lrap AS teacher_lrap, s.lrap - t.lrap AS gain
        FROM runs r
        JOIN class_scores s ON s.run_id = r.id AND s.fold = -1
        JOIN class_scores t ON t.run_id = r.parent_run_id AND t.fold = -1 AND t.class_idx = s.class_idx
        WHERE r.kind = 'curriculum'""")
    # Per class over the run's folds: counts are means per fold (each fold filters every noisy
    # clip with its own teacher), precision and recall pool the folds.
    c.execute("""
        CREATE VIEW IF NOT EXISTS curriculum_audit AS
        SELECT run_id, class_idx, class_name, COUNT(*) AS folds,
               AVG(n_labelled) AS n_labelled, AVG(n_kept) AS n_kept, AVG(n_dropped) AS n_dropped,
               AVG(n_added) AS n_added, AVG(mean_weight) AS mean_weight,
               CASE WHEN SUM(n_labelled) > 0 THEN 1.0 * SUM(n_dropped) / SUM(n_labelled) END AS share_dropped,
               AVG(n_wrong) AS n_wrong, AVG(wrong_dropped) AS wrong_dropped, AVG(right_lost) AS right_lost,
               AVG(added_right) AS added_right,
               CASE WHEN SUM(n_final) > 0 THEN 1.0 * SUM(n_final_right) / SUM(n_final) END AS precision,
               CASE WHEN SUM(n_true) > 0 THEN 1.0 * SUM(n_final_right) / SUM(n_true) END AS recall,
               CASE WHEN SUM(n_labelled) > 0 AND SUM(n_wrong) IS NOT NULL
                    THEN 1.0 * (SUM(n_labelled) - SUM(n_wrong)) / SUM(n_labelled) END AS weak_precision
        FROM noisy_audit GROUP BY run_id, class_idx""")


#: Version 6: tags (their own table, one row per run and tag), a note and an
#: archived flag on runs; indexes behind the console's paging, sorting and
#: filters (``engine.filters``); ``run_summary`` gains the new columns and the
#: raw timestamps.
_SCHEMA_V6 = """
ALTER TABLE runs ADD COLUMN note TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS run_tags (
    run_id  TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    tag     TEXT NOT NULL COLLATE NOCASE,
    PRIMARY KEY (run_id, tag)
);
CREATE INDEX IF NOT EXISTS run_tags_tag ON run_tags(tag, run_id);
CREATE INDEX IF NOT EXISTS runs_created ON runs(archived, created_at);
CREATE INDEX IF NOT EXISTS runs_cv ON runs(cv_lwlrap);
CREATE INDEX IF NOT EXISTS runs_test ON runs(test_lwlrap);
CREATE INDEX IF NOT EXISTS runs_model ON runs(model COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS runs_kind ON runs(kind COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS runs_parent ON runs(parent_run_id);
CREATE INDEX IF NOT EXISTS runs_job ON runs(job_id);
CREATE INDEX IF NOT EXISTS jobs_status_id ON jobs(status COLLATE NOCASE, id);
CREATE INDEX IF NOT EXISTS jobs_kind ON jobs(kind COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS jobs_run ON jobs(run_id);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at);
DROP VIEW IF EXISTS run_summary;
CREATE VIEW run_summary AS
SELECT r.id AS run_id, r.kind, r.name, r.model, r.status, r.cv_lwlrap, r.test_lwlrap,
       (SELECT COUNT(*) FROM fold_scores f WHERE f.run_id = r.id) AS folds_done,
       (SELECT AVG(f.lwlrap) FROM fold_scores f WHERE f.run_id = r.id) AS mean_fold_lwlrap,
       r.seed, r.device, r.job_id, d.name AS dataset,
       datetime(r.created_at, 'unixepoch') AS created,
       (SELECT group_concat(t.tag, ' ') FROM (SELECT tag FROM run_tags WHERE run_id = r.id ORDER BY tag) t)
           AS tags,
       r.note, r.archived, r.parent_run_id, r.dataset_id, r.run_dir, r.created_at, r.finished_at, r.warning
FROM runs r LEFT JOIN datasets d ON d.id = r.dataset_id;
"""


def _migrate_v6(c: sqlite3.Connection) -> None:
    """Tags, notes, archived; paging and filter indexes; run_summary with them."""
    for stmt in _split_sql(_SCHEMA_V6):
        c.execute(stmt)


def _migrate_v7(c: sqlite3.Connection) -> None:
    """Executors: which executor a worker uses and its cluster, and where each fold of a job runs."""
    c.execute("ALTER TABLE workers ADD COLUMN executor TEXT NOT NULL DEFAULT 'local'")
    # JSON published by a worker that runs folds on a cluster: nodes, CPUs and GPUs total and free,
    # or the error that keeps it from reaching the cluster. NULL for the local executor.
    c.execute("ALTER TABLE workers ADD COLUMN cluster TEXT")
    c.execute("""CREATE TABLE IF NOT EXISTS fold_tasks (
        job_id        INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        attempt       INTEGER NOT NULL,             -- the job's attempt that submitted the fold
        fold          INTEGER NOT NULL,
        status        TEXT NOT NULL,                -- submitted | running | done | failed | cancelled
        node          TEXT NOT NULL DEFAULT '',     -- host (and address) of the node running it
        pid           INTEGER,
        task_attempt  INTEGER NOT NULL DEFAULT 0,   -- 1 = first try, 2 = first retry after its process died
        message       TEXT NOT NULL DEFAULT '',
        updated_at    REAL NOT NULL,
        PRIMARY KEY (job_id, attempt, fold)
    )""")


# -- schema 10: Kaggle submissions, leaderboard scores and run file hashes (engine.kaggle) -----------
# Versions 8 and 9 are kept for other steps; this one is self-contained (it creates only its own
# tables and view), so it applies on top of any of them.
_SCHEMA_V10 = """
CREATE TABLE IF NOT EXISTS run_files (
    run_id       TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    path         TEXT NOT NULL,             -- relative to the run folder, or '<dataset>' for the dataset's file list
    sha256       TEXT NOT NULL,
    bytes        INTEGER,                   -- the file's size (for '<dataset>': the number of files listed)
    recorded_at  REAL NOT NULL,
    PRIMARY KEY (run_id, path)
);
CREATE TABLE IF NOT EXISTS submissions (
    id                 INTEGER PRIMARY KEY,
    run_id             TEXT NOT NULL REFERENCES runs(id),
    pack_sha256        TEXT NOT NULL,       -- of the pack's manifest, which lists every packed file's sha256
    pack_dir           TEXT NOT NULL DEFAULT '',
    submission_sha256  TEXT,                -- of the submission.csv the rehearsed kernel wrote
    members            TEXT NOT NULL DEFAULT '[]',  -- JSON: run_id, weight, source_run_id, teacher_run_id
    teacher_run_id     TEXT,
    cv_lwlrap          REAL,                -- the packed run's out-of-fold LWLRAP
    projected_seconds  REAL,                -- the rehearsal's projection to the private test size
    created_at         REAL NOT NULL,
    UNIQUE (pack_sha256)
);
CREATE INDEX IF NOT EXISTS submissions_by_run ON submissions(run_id);
CREATE TABLE IF NOT EXISTS leaderboard_scores (
    id              INTEGER PRIMARY KEY,
    submission_id   INTEGER NOT NULL REFERENCES submissions(id) ON DELETE CASCADE,
    public_lwlrap   REAL,
    private_lwlrap  REAL,
    recorded_at     REAL NOT NULL
);
CREATE VIEW IF NOT EXISTS cv_vs_lb AS
SELECT s.id AS submission_id, s.run_id, s.cv_lwlrap, l.public_lwlrap, l.private_lwlrap,
       l.public_lwlrap - s.cv_lwlrap AS public_gap, l.private_lwlrap - s.cv_lwlrap AS private_gap,
       s.submission_sha256, s.pack_sha256, s.teacher_run_id, s.members, l.recorded_at
FROM submissions s
LEFT JOIN leaderboard_scores l ON l.id = (SELECT max(id) FROM leaderboard_scores WHERE submission_id = s.id);
"""


def _migrate_v10(c: sqlite3.Connection) -> None:
    """Kaggle lineage: run file hashes, submissions (pack -> submission -> run -> members), leaderboard scores."""
    for stmt in _split_sql(_SCHEMA_V10):
        c.execute(stmt)


#: Ordered schema migrations: ``(version, what it changes, function)``. A
#: database at version N gets every step above N, in order, inside one
#: ``BEGIN IMMEDIATE`` transaction, so a half-upgraded file is never left and
#: two processes opening an old file upgrade it once. Each step is written
#: against the schema the step before it left, never against today's tables;
#: add a step at the end, never edit a released one.
def _migrate_v4(c: sqlite3.Connection) -> None:
    """The rule that made a dataset's folds; an ensemble's scored methods and a run's warning."""
    c.execute("ALTER TABLE datasets ADD COLUMN fold_rule TEXT")
    # Before this step every stored fold came from iterative stratification without groups.
    c.execute("UPDATE datasets SET fold_rule = 'multilabel-stratified' WHERE n_folds IS NOT NULL")
    c.execute("ALTER TABLE runs ADD COLUMN warning TEXT")
    c.execute("""CREATE TABLE IF NOT EXISTS ensemble_candidates (
    run_id          TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    method          TEXT NOT NULL,
    oof_lwlrap      REAL,                    -- cross-fitted when the dataset has folds; NULL: could not apply
    raw_oof_lwlrap  REAL,                    -- rank methods: before the rank-to-probability map
    test_lwlrap     REAL,
    chosen          INTEGER NOT NULL DEFAULT 0,
    note            TEXT NOT NULL DEFAULT '',
    position        INTEGER NOT NULL,
    PRIMARY KEY (run_id, method)
)""")


MIGRATIONS: list[tuple[int, str, Callable[[sqlite3.Connection], None]]] = [
    (1, "first schema", _migrate_v1),
    (2, "per-job and per-worker lease (jobs.lease_seconds, workers.lease_seconds)", _migrate_v2),
    (3, "run_summary: parent_run_id, dataset_id, run_dir; runs indexed by parent", _migrate_v3),
    (4, "datasets.fold_rule, runs.warning, ensemble_candidates", _migrate_v4),
    (5, "curriculum: epoch stages, noisy-label audit, loss swaps, gain views", _migrate_v5),
    (6, "tags, notes and the archived flag on runs; indexes for paging and filters", _migrate_v6),
    (7, "executors: workers.executor and workers.cluster, fold_tasks", _migrate_v7),
    (10, "Kaggle lineage: run_files, submissions, leaderboard_scores, cv_vs_lb", _migrate_v10),
]

#: The schema version this code writes: the last migration's.
SCHEMA_VERSION = MIGRATIONS[-1][0]


class StoreError(FsatError):
    """A store operation that cannot be done (unknown job, wrong state, a database that cannot be used)."""


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


def _now() -> float:
    return time.time()


def default_db_path() -> Path:
    """The database the console and CLI use: ``$FSAT_DB`` or ``./experiments.db``."""
    return Path(os.environ.get("FSAT_DB", "experiments.db"))


def runs_root(db_path: Path | str) -> Path:
    """Where run artifacts live: ``$FSAT_RUNS`` or ``runs/`` beside the database."""
    env = os.environ.get("FSAT_RUNS")
    if env:
        return Path(env)
    return Path(db_path).resolve().parent / "runs"


def _rows(cur: sqlite3.Cursor) -> list[dict]:
    return [dict(r) for r in cur.fetchall()]


class Store:
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
    """

    def __init__(self, path: Path | str, *, readonly: bool = False, timeout: float = 30.0,
                 schema_version: int | None = None, lazy: bool = False, create: bool = True) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.timeout = timeout
        self._target = schema_version
        self._create = create
        self._writer: sqlite3.Connection | None = None
        if readonly or (lazy and self.path.exists()):
            # Reads and writes use separate connections, so a write waiting for
            # another process's lock never holds up a read.
            self._read_lock = threading.RLock()
            self._write_lock = threading.RLock()
            self.conn = self._open_reader()
        else:
            self._read_lock = self._write_lock = threading.RLock()
            self.conn = self._writer = self._open_writer()

    # -- plumbing -----------------------------------------------------------------

    def _open_reader(self) -> sqlite3.Connection:
        """A read-only connection: no schema write, no WAL switch, no migration."""
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such database; check the path (--db or $FSAT_DB), "
                             "or queue a job or start a worker there to create one")
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a folder, not a database file")
        resolved = quote(str(self.path.resolve()))
        # A WAL database in a folder nobody may write to can only be read as
        # immutable: there the -shm file cannot be made, and no writer can work either.
        flags = "mode=ro" if os.access(self.path.resolve().parent, os.W_OK) else "mode=ro&immutable=1"
        try:
            conn = sqlite3.connect(f"file:{resolved}?{flags}", uri=True, isolation_level=None,
                                   timeout=self.timeout, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA query_only = ON")
            version = self._check_version(conn)
        except sqlite3.Error as err:
            raise self._error(err) from None
        if version == 0:
            conn.close()
            raise StoreError(f"{self.path}: an SQLite file without the fsat-console schema; "
                             "check the path (--db or $FSAT_DB)")
        if version < SCHEMA_VERSION and self._target is None:
            # A file an older release wrote: the read queries need today's tables. Upgrade it once
            # (one short write transaction), then read as usual.
            conn.close()
            if not (os.access(self.path, os.W_OK) and os.access(self.path.resolve().parent, os.W_OK)):
                raise StoreError(f"{self.path}: schema version {version} is older than this fsat-console "
                                 f"({SCHEMA_VERSION}) and the database is read-only, so it cannot be "
                                 "upgraded; open it once where it can be written (e.g. start a worker on it)")
            self._open_writer().close()
            return self._open_reader()
        return conn

    def _open_writer(self) -> sqlite3.Connection:
        """The writing connection: creates the file, switches it to WAL and upgrades its schema."""
        if not self.path.exists() and not self._create:
            raise StoreError(f"{self.path}: no such database; check the path (--db or $FSAT_DB)")
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a folder, not a database file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"{self.path}: cannot create its folder: {err.strerror}") from None
        if self.path.exists() and not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)):
            what = "file" if not os.access(self.path, os.W_OK) else f"folder {self.path.parent}"
            raise StoreError(f"{self.path}: the database is read-only (its {what} cannot be written); "
                             "listings work, but nothing can be queued, cancelled or run on it")
        try:
            conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=self.timeout,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            version = self._check_version(conn)
            target = SCHEMA_VERSION if self._target is None else self._target
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                self._enable_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            if version < target:
                self._migrate(conn, target)
        except sqlite3.Error as err:
            raise self._error(err) from None
        return conn

    def _check_version(self, conn: sqlite3.Connection) -> int:
        """The file's schema version; refuses a file that is not a database or is newer than this code."""
        try:
            version = _read_schema_version(conn)
        except sqlite3.DatabaseError as err:
            if "not a database" in str(err) or "malformed" in str(err):
                raise StoreError(f"{self.path}: not an SQLite database ({err}); "
                                 "check the path (--db or $FSAT_DB)") from None
            raise
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this fsat-console "
                f"({SCHEMA_VERSION}); upgrade fsat-console")
        return version

    def _error(self, err: sqlite3.Error) -> FsatError:
        """One line naming the file for an SQLite error a user can cause or fix."""
        if isinstance(err, FsatError):
            return err
        message = str(err)
        if "readonly" in message or "read-only" in message:
            return StoreError(f"{self.path}: the database is read-only ({message}); listings work, but "
                              "nothing can be queued, cancelled or run on it; make the file and its folder "
                              "writable")
        if "locked" in message or "busy" in message:
            return StoreError(f"{self.path}: another process held the database's write lock for more than "
                              f"{self.timeout:g} s ({message}); try again")
        if "unable to open" in message:
            return StoreError(f"{self.path}: cannot open the database ({message}); check the path and "
                              "the folder's permissions")
        if "not a database" in message or "malformed" in message:
            return StoreError(f"{self.path}: not an SQLite database ({message})")
        if "disk I/O" in message or "full" in message:
            return StoreError(f"{self.path}: cannot write the database ({message})")
        return StoreError(f"{self.path}: {message}")

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL, retrying while other processes hold it.

        The switch needs a moment of exclusive access, and SQLite can answer
        "database is locked" at once instead of waiting on ``busy_timeout``
        when several processes open a fresh file together; so retry with a
        short backoff until the timeout.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
                return
            except sqlite3.OperationalError as err:
                message = str(err)
                if ("locked" not in message and "busy" not in message) or time.monotonic() >= deadline:
                    raise self._error(err) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def close(self) -> None:
        """Close the connections."""
        with self._write_lock:
            if self._writer is not None and self._writer is not self.conn:
                self._writer.close()
        with self._read_lock:
            self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _writer_conn(self) -> sqlite3.Connection:
        if self._writer is None:
            if self.readonly:
                raise StoreError(f"{self.path}: opened for reading only")
            self._writer = self._open_writer()
        return self._writer

    @contextmanager
    def write(self, *, on_wait: Callable[[], None] | None = None) -> Iterator[sqlite3.Connection]:
        """One short ``BEGIN IMMEDIATE`` transaction; commits on success, rolls back on error.

        ``on_wait`` is called once when another process holds the write lock,
        before waiting for it (up to the timeout), so an interface can say so.
        An SQLite error a user can fix (read-only file, a lock held too long)
        becomes a StoreError naming the file.
        """
        with self._write_lock:
            conn = self._writer_conn()
            try:
                self._begin(conn, on_wait)
            except sqlite3.Error as err:
                raise self._error(err) from None
            try:
                yield conn
            except sqlite3.OperationalError as err:
                conn.execute("ROLLBACK")
                raise self._error(err) from None
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as err:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise self._error(err) from None

    def _begin(self, conn: sqlite3.Connection, on_wait: Callable[[], None] | None) -> None:
        if on_wait is None:
            conn.execute("BEGIN IMMEDIATE")
            return
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) and "busy" not in str(err):
                raise
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        on_wait()
        conn.execute("BEGIN IMMEDIATE")

    def _query(self, sql: str, params: Sequence[Any] | dict = ()) -> list[dict]:
        with self._read_lock:
            try:
                return _rows(self.conn.execute(sql, params))
            except sqlite3.DatabaseError as err:
                raise self._error(err) from None

    def _migrate(self, conn: sqlite3.Connection, target: int) -> None:
        """Bring the schema to ``target`` through :data:`MIGRATIONS`, in one transaction.

        Several processes may start on a fresh or old file at once: the
        IMMEDIATE lock makes exactly one of them run the steps, the rest see
        them done. ``target`` below the current version exists for tests that
        build a database as an older release wrote it.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = self._check_version(conn)
            for step, _what, apply in MIGRATIONS:
                if version < step <= target:
                    apply(conn)
                    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', :v)",
                                 {"v": str(step)})
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        row = self._query("SELECT value FROM meta WHERE key='schema_version'")
        return int(row[0]["value"]) if row else 0

    def data_version(self) -> int:
        """``PRAGMA data_version``: changes whenever another connection commits."""
        with self._read_lock:
            return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    # -- datasets and folds -------------------------------------------------------

    def register_dataset(self, root: Path | str, *, name: str, classes: Sequence[str],
                         n_curated: int, n_noisy: int = 0, n_test: int = 0) -> int:
        """Insert or update the dataset at ``root`` (resolved path) and return its id."""
        root = str(Path(root).resolve())
        with self.write() as c:
            values = {"root": root, "name": name, "classes": json.dumps(list(classes)), "n_curated": n_curated,
                      "n_noisy": n_noisy, "n_test": n_test, "now": _now()}
            row = c.execute("SELECT id FROM datasets WHERE root = :root", values).fetchone()
            if row:
                c.execute("UPDATE datasets SET name=:name, classes=:classes, n_curated=:n_curated, "
                          "n_noisy=:n_noisy, n_test=:n_test WHERE id=:id", dict(values, id=row[0]))
                return int(row[0])
            cur = c.execute(
                "INSERT INTO datasets(root, name, classes, n_curated, n_noisy, n_test, created_at) "
                "VALUES (:root, :name, :classes, :n_curated, :n_noisy, :n_test, :now)", values)
            return int(cur.lastrowid)

    def get_dataset(self, dataset_id: int) -> dict | None:
        """The dataset row (classes decoded) or None."""
        rows = self._query("SELECT * FROM datasets WHERE id = :id", {"id": dataset_id})
        if not rows:
            return None
        d = rows[0]
        d["classes"] = json.loads(d["classes"])
        return d

    def list_datasets(self) -> list[dict]:
        """All registered datasets."""
        return self._query("SELECT id, name, root, n_curated, n_noisy, n_test, n_folds, fold_seed, fold_rule "
                           "FROM datasets ORDER BY id")

    def save_folds(self, dataset_id: int, fnames: Sequence[str], folds: Sequence[int], *,
                   seed: int, n_folds: int, rule: str = "multilabel-stratified") -> bool:
        """Store the dataset's folds and the rule that made them unless it has some; True when written.

        The first writer wins so that every run on a dataset uses the same folds,
        even when two jobs compute them at the same time. ``rule`` is
        ``engine.data.folds.fold_rule``'s text.
        """
        with self.write() as c:
            if c.execute("SELECT 1 FROM folds WHERE dataset_id = :id LIMIT 1", {"id": dataset_id}).fetchone():
                return False
            c.executemany("INSERT INTO folds(dataset_id, fname, fold) VALUES (:id, :fname, :fold)",
                          [{"id": dataset_id, "fname": f, "fold": int(k)} for f, k in zip(fnames, folds)])
            c.execute("UPDATE datasets SET fold_seed=:seed, n_folds=:n_folds, fold_rule=:rule WHERE id=:id",
                      {"seed": seed, "n_folds": n_folds, "rule": rule, "id": dataset_id})
            return True

    def get_folds(self, dataset_id: int) -> dict[str, int]:
        """fname -> fold for the dataset (empty when not computed yet)."""
        rows = self._query("SELECT fname, fold FROM folds WHERE dataset_id = :dataset_id",
                           {"dataset_id": dataset_id})
        return {r["fname"]: int(r["fold"]) for r in rows}

    # -- queue --------------------------------------------------------------------
    #
    # Every change a worker or job process makes to a running job is
    # conditional on owning the current attempt (worker id AND attempt
    # number, see _OWNED), so a worker that lost its job to a requeue can
    # never overwrite what the new owner records. Each update returns
    # whether it applied.

    def enqueue(self, kind: str, spec: dict, *, name: str = "", priority: int = 0,
                max_attempts: int = 3, max_queued: int = DEFAULT_MAX_QUEUED,
                on_wait: Callable[[], None] | None = None) -> int:
        """Add a job and return its id; raises QueueFull when ``max_queued`` jobs wait.

        ``on_wait`` is called when another process holds the write lock (see :meth:`write`).
        """
        if kind not in JOB_KINDS:
            raise StoreError(f"unknown job kind {kind!r}; expected one of {', '.join(JOB_KINDS)}")
        payload = json.dumps(spec, sort_keys=True)
        with self.write(on_wait=on_wait) as c:
            waiting = c.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
            if waiting >= max_queued:
                raise QueueFull(f"the queue already holds {waiting} queued jobs (limit {max_queued}); "
                                "wait for some to finish or cancel some")
            cur = c.execute(
                "INSERT INTO jobs(kind, name, spec, priority, max_attempts, created_at) "
                "VALUES (:kind, :name, :spec, :priority, :max_attempts, :now)",
                {"kind": kind, "name": name, "spec": payload, "priority": priority,
                 "max_attempts": max_attempts, "now": _now()})
            return int(cur.lastrowid)

    def claim(self, worker_id: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Job | None:
        """Atomically take the highest-priority queued job for ``worker_id``.

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
                "WHERE id = (SELECT id FROM jobs WHERE status='queued' "
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

    # -- runs and scores ------------------------------------------------------------

    def create_run(self, run_id: str, *, kind: str, job_id: int | None = None,
                   dataset_id: int | None = None, name: str = "", model: str = "",
                   config: dict | None = None, config_hash: str = "", seed: int | None = None,
                   device: str = "", versions: dict | None = None, git_commit: str = "",
                   run_dir: str = "", parent_run_id: str | None = None) -> bool:
        """Create a run, or mark an existing one running again (a resumed job).

        Returns True when the run is new.
        """
        with self.write() as c:
            values = {"id": run_id, "job_id": job_id, "dataset_id": dataset_id, "parent_run_id": parent_run_id,
                      "kind": kind, "name": name, "model": model,
                      "config": json.dumps(config or {}, sort_keys=True), "config_hash": config_hash,
                      "seed": seed, "device": device, "versions": json.dumps(versions or {}, sort_keys=True),
                      "git_commit": git_commit, "run_dir": run_dir, "now": _now()}
            row = c.execute("SELECT id FROM runs WHERE id=:id", values).fetchone()
            if row:
                c.execute("UPDATE runs SET status='running', device=:device, finished_at=NULL WHERE id=:id",
                          values)
                new = False
            else:
                c.execute(
                    "INSERT INTO runs(id, job_id, dataset_id, parent_run_id, kind, name, model, config, "
                    "config_hash, seed, device, versions, git_commit, run_dir, created_at) "
                    "VALUES (:id, :job_id, :dataset_id, :parent_run_id, :kind, :name, :model, :config, "
                    ":config_hash, :seed, :device, :versions, :git_commit, :run_dir, :now)", values)
                new = True
            if job_id is not None:
                c.execute("UPDATE jobs SET run_id=:id WHERE id=:job_id", values)
            return new

    def finish_run(self, run_id: str, *, status: str = "done", cv_lwlrap: float | None = None,
                   test_lwlrap: float | None = None) -> None:
        """Close a run with its out-of-fold (CV) and, when scored, test LWLRAP."""
        with self.write() as c:
            c.execute("UPDATE runs SET status=:status, cv_lwlrap=COALESCE(:cv, cv_lwlrap), "
                      "test_lwlrap=COALESCE(:test, test_lwlrap), finished_at=:now WHERE id=:id",
                      {"status": status, "cv": cv_lwlrap, "test": test_lwlrap, "now": _now(), "id": run_id})

    def set_run_scores(self, run_id: str, *, cv_lwlrap: float | None = None,
                       test_lwlrap: float | None = None) -> None:
        """Update a run's headline scores without changing its status."""
        with self.write() as c:
            c.execute("UPDATE runs SET cv_lwlrap=COALESCE(:cv, cv_lwlrap), "
                      "test_lwlrap=COALESCE(:test, test_lwlrap) WHERE id=:id",
                      {"cv": cv_lwlrap, "test": test_lwlrap, "id": run_id})

    def record_epoch(self, run_id: str, fold: int, epoch: int, *, train_loss: float | None,
                     val_loss: float | None, val_lwlrap: float | None, lr: float | None,
                     seconds: float | None, clips_per_sec: float | None = None,
                     stage: str | None = None) -> None:
        """Record one epoch of one fold (replaces the row when an epoch is re-run after a resume).

        ``stage`` names the curriculum stage the epoch belongs to (None for train runs).
        """
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO epochs(run_id, fold, epoch, train_loss, val_loss, val_lwlrap, "
                      "lr, seconds, clips_per_sec, stage) VALUES (:run_id, :fold, :epoch, :train_loss, :val_loss, "
                      ":val_lwlrap, :lr, :seconds, :clips_per_sec, :stage)",
                      {"run_id": run_id, "fold": fold, "epoch": epoch, "train_loss": _f(train_loss),
                       "val_loss": _f(val_loss), "val_lwlrap": _f(val_lwlrap), "lr": _f(lr),
                       "seconds": _f(seconds), "clips_per_sec": _f(clips_per_sec), "stage": stage})

    def record_fold(self, run_id: str, fold: int, *, lwlrap: float, best_epoch: int | None,
                    n_val: int) -> None:
        """Record a finished fold's best validation LWLRAP."""
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO fold_scores(run_id, fold, lwlrap, best_epoch, n_val) "
                      "VALUES (:run_id, :fold, :lwlrap, :best_epoch, :n_val)",
                      {"run_id": run_id, "fold": fold, "lwlrap": float(lwlrap), "best_epoch": best_epoch,
                       "n_val": int(n_val)})

    def record_class_scores(self, run_id: str, fold: int, class_names: Sequence[str],
                            lrap: Sequence[float], weights: Sequence[float],
                            n_pos: Sequence[int]) -> None:
        """Record per-class LRAP for a fold, or out-of-fold with ``fold=OOF`` (-1)."""
        rows = []
        for i, name in enumerate(class_names):
            value = _f(lrap[i])
            rows.append({"run_id": run_id, "fold": fold, "class_idx": i, "class_name": name, "lrap": value,
                         "weight": float(weights[i]), "n_pos": int(n_pos[i])})
        with self.write() as c:
            c.execute("DELETE FROM class_scores WHERE run_id=:run_id AND fold=:fold",
                      {"run_id": run_id, "fold": fold})
            c.executemany("INSERT INTO class_scores(run_id, fold, class_idx, class_name, lrap, weight, n_pos) "
                          "VALUES (:run_id, :fold, :class_idx, :class_name, :lrap, :weight, :n_pos)", rows)

    def set_run_members(self, run_id: str, members: Sequence[tuple[str, float]]) -> None:
        """Record an ensemble's member runs and weights."""
        with self.write() as c:
            c.execute("DELETE FROM run_members WHERE run_id=:run_id", {"run_id": run_id})
            c.executemany("INSERT INTO run_members(run_id, member_run_id, weight) VALUES (:run_id, :member, :weight)",
                          [{"run_id": run_id, "member": m, "weight": float(w)} for m, w in members])

    def set_run_warning(self, run_id: str, warning: str | None) -> None:
        """Record (or clear, with None) the warning a run's result carries, e.g. a blend below its best member."""
        with self.write() as c:
            c.execute("UPDATE runs SET warning=? WHERE id=?", (warning, run_id))

    def record_ensemble_candidates(self, run_id: str, candidates: Sequence[dict]) -> None:
        """Record every method an ensemble scored: dicts with ``method``, ``oof_lwlrap``,
        ``raw_oof_lwlrap``, ``test_lwlrap``, ``chosen`` and ``note`` (scores may be None)."""
        rows = [(run_id, d["method"], _f(d.get("oof_lwlrap")), _f(d.get("raw_oof_lwlrap")),
                 _f(d.get("test_lwlrap")), int(bool(d.get("chosen"))), d.get("note") or "", i)
                for i, d in enumerate(candidates)]
        with self.write() as c:
            c.execute("DELETE FROM ensemble_candidates WHERE run_id=?", (run_id,))
            c.executemany("INSERT INTO ensemble_candidates(run_id, method, oof_lwlrap, raw_oof_lwlrap, "
                          "test_lwlrap, chosen, note, position) VALUES (?,?,?,?,?,?,?,?)", rows)

    def ensemble_candidates(self, run_id: str) -> list[dict]:
        """The methods an ensemble run scored, in the order it scored them."""
        return self._query("SELECT method, oof_lwlrap, raw_oof_lwlrap, test_lwlrap, chosen, note "
                           "FROM ensemble_candidates WHERE run_id=? ORDER BY position", (run_id,))

    # -- the curriculum ----------------------------------------------------------------

    _AUDIT_COLUMNS = ("class_idx", "class_name", "n_labelled", "n_kept", "n_dropped", "n_added", "n_final",
                      "mean_weight", "n_true", "n_wrong", "wrong_dropped", "right_lost", "added_right",
                      "n_final_right")

    def record_noisy_audit(self, run_id: str, fold: int, rows: Sequence[dict]) -> None:
        """Record a fold's per-class noisy-label audit (replaces the fold's rows)."""
        cols = self._AUDIT_COLUMNS
        values = [(run_id, fold, *[r.get(k) for k in cols]) for r in rows]
        with self.write() as c:
            c.execute("DELETE FROM noisy_audit WHERE run_id=? AND fold=?", (run_id, fold))
            c.executemany(f"INSERT INTO noisy_audit(run_id, fold, {', '.join(cols)}) "
                          f"VALUES ({', '.join('?' * (len(cols) + 2))})", values)

    def noisy_audit(self, run_id: str, fold: int | None = None) -> list[dict]:
        """The audit per class: pooled over folds (the ``curriculum_audit`` view), or one fold's rows."""
        if fold is None:
            return self._query("SELECT * FROM curriculum_audit WHERE run_id=? ORDER BY class_idx", (run_id,))
        return self._query("SELECT * FROM noisy_audit WHERE run_id=? AND fold=? ORDER BY class_idx",
                           (run_id, fold))

    def record_swap(self, run_id: str, fold: int, stage: str, attempt: int, *, loss_from: str, loss_to: str,
                    stage_lwlrap: float | None, teacher_lwlrap: float, tolerance: float) -> None:
        """Record that a stage fell too far below the teacher and is re-run with another loss."""
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO curriculum_swaps(run_id, fold, stage, attempt, loss_from, loss_to, "
                      "stage_lwlrap, teacher_lwlrap, tolerance, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (run_id, fold, stage, attempt, loss_from, loss_to, _f(stage_lwlrap), float(teacher_lwlrap),
                       float(tolerance), _now()))

    def swaps(self, run_id: str) -> list[dict]:
        """A curriculum run's loss swaps, by fold, stage and attempt."""
        return self._query("SELECT * FROM curriculum_swaps WHERE run_id=? ORDER BY fold, stage, attempt",
                           (run_id,))

    def curriculum_gain(self, run_id: str) -> list[dict]:
        """Student vs teacher LWLRAP per fold, and overall as fold -1 (the ``curriculum_gain`` view)."""
        return self._query("SELECT * FROM curriculum_gain WHERE run_id=? ORDER BY fold", (run_id,))

    def class_gain(self, run_id: str) -> list[dict]:
        """Student vs teacher out-of-fold LRAP per class (the ``curriculum_class_gain`` view)."""
        return self._query("SELECT * FROM curriculum_class_gain WHERE run_id=? ORDER BY class_idx", (run_id,))

    def list_runs(self, *, limit: int = 200) -> list[dict]:
        """Runs with their headline scores, newest first."""
        return self._query("SELECT * FROM run_summary ORDER BY created DESC, run_id DESC LIMIT :limit",
                           {"limit": limit})

    def child_runs(self, run_id: str, *, kind: str | None = None) -> list[dict]:
        """Runs made from ``run_id`` (``parent_run_id``), optionally of one kind: run_summary rows, newest first."""
        sql = "SELECT * FROM run_summary WHERE parent_run_id=:run_id"
        params: dict[str, Any] = {"run_id": run_id}
        if kind is not None:
            sql += " AND kind=:kind"
            params["kind"] = kind
        return self._query(sql + " ORDER BY created DESC, run_id DESC", params)

    def get_run(self, run_id: str) -> dict | None:
        """A run row with config and versions decoded, or None."""
        rows = self._query("SELECT * FROM runs WHERE id=:id", {"id": run_id})
        if not rows:
            return None
        d = rows[0]
        d["config"] = json.loads(d["config"])
        d["versions"] = json.loads(d["versions"])
        return d

    def epochs(self, run_id: str) -> list[dict]:
        """Every recorded epoch of a run, by fold then epoch."""
        return self._query("SELECT * FROM epochs WHERE run_id=:run_id ORDER BY fold, epoch", {"run_id": run_id})

    def fold_scores(self, run_id: str) -> list[dict]:
        """Per-fold best LWLRAP of a run."""
        return self._query("SELECT * FROM fold_scores WHERE run_id=:run_id ORDER BY fold", {"run_id": run_id})

    def class_scores(self, run_id: str, fold: int = OOF) -> list[dict]:
        """Per-class LRAP of a run for one fold, or out-of-fold (default)."""
        return self._query("SELECT * FROM class_scores WHERE run_id=:run_id AND fold=:fold ORDER BY class_idx",
                           {"run_id": run_id, "fold": fold})

    def run_members(self, run_id: str) -> list[dict]:
        """An ensemble's members and weights."""
        return self._query("SELECT member_run_id, weight FROM run_members WHERE run_id=:run_id "
                           "ORDER BY weight DESC", {"run_id": run_id})




    # -- paged, filtered and sorted listings (the console and ``fsat runs`` / ``fsat jobs``) ------------

    def page_runs(self, *, where: str = "1", params: dict | None = None, order: str = "created",
                  descending: bool = True, limit: int | None = 200, offset: int = 0,
                  archived: bool | None = False) -> list[dict]:
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
        return self._query(sql, bound)

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

    def run_rows(self, run_ids: Sequence[str]) -> list[dict]:
        """``run_summary`` rows of the given runs (in the order asked; unknown ids are left out)."""
        if not run_ids:
            return []
        bound = {f"_r{i}": str(r) for i, r in enumerate(run_ids)}
        rows = self._query(f"{_RUN_SELECT} WHERE r.id IN ({', '.join(':' + k for k in bound)})", bound)
        by_id = {r["run_id"]: r for r in rows}
        return [by_id[str(r)] for r in run_ids if str(r) in by_id]

    def infer_runs_of(self, run_id: str) -> list[dict]:
        """Inference runs made from ``run_id`` (``run_summary`` rows, newest first); one indexed lookup."""
        return self._query(f"{_RUN_SELECT} WHERE r.parent_run_id = :parent AND r.kind = 'infer' "
                           "ORDER BY r.created_at DESC, r.id DESC", {"parent": run_id})

    def blendable_runs(self) -> list[dict]:
        """Every finished run with a run folder (``run_summary`` columns plus ``run_dir``), newest first."""
        return self._query(f"SELECT s.*, r.run_dir FROM ({_RUN_SELECT} WHERE r.status = 'done' "
                           "AND r.run_dir != '') s JOIN runs r ON r.id = s.run_id "
                           "ORDER BY s.created_at DESC, s.run_id DESC")

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

    def jobs_ended_since(self, since: float) -> list[dict]:
        """Jobs that became done or failed after ``since`` (Unix seconds), oldest first."""
        return self._query(f"{_JOB_SELECT} WHERE j.finished_at > :since AND j.status IN ('done', 'failed') "
                           "ORDER BY j.finished_at", {"since": since})

    def last_ended_at(self) -> float | None:
        """When the most recent job ended."""
        return self._query("SELECT MAX(finished_at) AS t FROM jobs")[0]["t"]

    # -- tags, notes, archive, requeue --------------------------------------------------------------

    def set_run_tags(self, run_id: str, tags: Sequence[str]) -> list[str]:
        """Replace a run's tags (words without spaces; case is kept, matching ignores it); returns them."""
        clean: list[str] = []
        for tag in tags:
            tag = str(tag).strip()
            if not tag:
                continue
            if any(ch.isspace() for ch in tag) or any(ch in tag for ch in "():\"'"):
                raise StoreError(f"tag {tag!r}: a tag is one word without spaces, quotes, colons or parentheses")
            if tag.lower() not in {t.lower() for t in clean}:
                clean.append(tag)
        with self.write() as c:
            if c.execute("SELECT 1 FROM runs WHERE id = :id", {"id": run_id}).fetchone() is None:
                raise StoreError(f"no run {run_id!r}")
            c.execute("DELETE FROM run_tags WHERE run_id = :id", {"id": run_id})
            c.executemany("INSERT INTO run_tags(run_id, tag) VALUES (:id, :tag)",
                          [{"id": run_id, "tag": t} for t in clean])
        return sorted(clean, key=str.lower)

    def run_tags(self, run_id: str) -> list[str]:
        """A run's tags, sorted."""
        return [r["tag"] for r in self._query("SELECT tag FROM run_tags WHERE run_id = :id ORDER BY tag",
                                              {"id": run_id})]

    def set_run_note(self, run_id: str, note: str) -> None:
        """Replace a run's note (free text)."""
        with self.write() as c:
            if c.execute("UPDATE runs SET note = :note WHERE id = :id",
                         {"note": str(note or "").strip(), "id": run_id}).rowcount != 1:
                raise StoreError(f"no run {run_id!r}")

    def set_runs_archived(self, run_ids: Sequence[str], archived: bool = True) -> int:
        """Archive (hide by default, keep every row) or unarchive runs; returns how many changed."""
        with self.write() as c:
            return sum(c.execute("UPDATE runs SET archived = :a WHERE id = :id AND archived != :a",
                                 {"a": 1 if archived else 0, "id": str(r)}).rowcount for r in run_ids)

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

    # -- Kaggle lineage (schema 10): run file hashes, submissions, leaderboard scores --------------------
    # One block, with _migrate_v10, for engine.kaggle and engine.runs.lineage.

    def record_run_files(self, run_id: str, rows: Sequence[tuple[str, str, int | None]]) -> None:
        """Record ``(path, sha256, bytes)`` of a run's files, replacing the run's earlier rows."""
        with self.write() as c:
            c.execute("DELETE FROM run_files WHERE run_id=:run_id", {"run_id": run_id})
            c.executemany("INSERT INTO run_files(run_id, path, sha256, bytes, recorded_at) "
                          "VALUES (:run_id, :path, :sha256, :bytes, :now)",
                          [{"run_id": run_id, "path": p, "sha256": h, "bytes": n, "now": _now()}
                           for p, h, n in rows])

    def run_files(self, run_id: str) -> list[dict]:
        """A run's recorded file hashes (path, sha256, bytes, recorded_at), by path."""
        return self._query("SELECT path, sha256, bytes, recorded_at FROM run_files WHERE run_id=:run_id "
                           "ORDER BY path", {"run_id": run_id})

    def record_submission(self, *, run_id: str, pack_sha256: str, pack_dir: str, members: Sequence[dict],
                          teacher_run_id: str | None, cv_lwlrap: float | None) -> int:
        """Record a pack of ``run_id`` (or find the one with the same manifest hash); returns its id."""
        with self.write() as c:
            row = c.execute("SELECT id FROM submissions WHERE pack_sha256=:h", {"h": pack_sha256}).fetchone()
            values = {"run_id": run_id, "h": pack_sha256, "dir": pack_dir,
                      "members": json.dumps(list(members), sort_keys=True), "teacher": teacher_run_id,
                      "cv": _f(cv_lwlrap), "now": _now()}
            if row:
                c.execute("UPDATE submissions SET pack_dir=:dir WHERE pack_sha256=:h", values)
                return int(row[0])
            return int(c.execute("INSERT INTO submissions(run_id, pack_sha256, pack_dir, members, teacher_run_id, "
                                 "cv_lwlrap, created_at) VALUES (:run_id, :h, :dir, :members, :teacher, :cv, :now) "
                                 "RETURNING id", values).fetchone()[0])

    def set_submission_rehearsal(self, pack_sha256: str, *, submission_sha256: str,
                                 projected_seconds: float | None) -> int | None:
        """Record what the rehearsal of a pack wrote (its submission's hash) and its projected time."""
        with self.write() as c:
            row = c.execute("UPDATE submissions SET submission_sha256=:s, projected_seconds=:t "
                            "WHERE pack_sha256=:h RETURNING id",
                            {"s": submission_sha256, "t": _f(projected_seconds), "h": pack_sha256}).fetchone()
            return None if row is None else int(row[0])

    def find_submissions(self, key: str) -> list[dict]:
        """Submissions whose id, run id, pack or submission hash (or a prefix of 8+ hex digits) is ``key``."""
        params = {"key": key, "prefix": key + "%" if len(key) >= 8 else key}
        return self._query("SELECT * FROM submissions WHERE CAST(id AS TEXT)=:key OR run_id=:key "
                           "OR pack_sha256 LIKE :prefix OR submission_sha256 LIKE :prefix ORDER BY id", params)

    def record_leaderboard(self, submission_id: int, *, public_lwlrap: float | None,
                           private_lwlrap: float | None) -> int:
        """Record a submission's public (and private) leaderboard LWLRAP; the newest row is the one shown."""
        with self.write() as c:
            if c.execute("SELECT 1 FROM submissions WHERE id=:id", {"id": submission_id}).fetchone() is None:
                raise StoreError(f"no submission {submission_id}; see `fsat lb`")
            return int(c.execute("INSERT INTO leaderboard_scores(submission_id, public_lwlrap, private_lwlrap, "
                                 "recorded_at) VALUES (:id, :pub, :priv, :now) RETURNING id",
                                 {"id": submission_id, "pub": _f(public_lwlrap), "priv": _f(private_lwlrap),
                                  "now": _now()}).fetchone()[0])

    def cv_vs_lb(self) -> list[dict]:
        """Every submission with its CV and newest leaderboard scores and the gaps (the ``cv_vs_lb`` view)."""
        return self._query("SELECT * FROM cv_vs_lb ORDER BY submission_id")

    # -- end of the Kaggle lineage block ---------------------------------------------------------------


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


#: The condition every update of a running job by its worker or job process carries.
_OWNED = "id=:job_id AND status='running' AND worker_id=:worker_id AND attempts=:attempt"
#: A heartbeat older than the row's own lease (jobs and workers alike).
_STALE = "heartbeat_at < :now - lease_seconds"


def _owner(job_id: int, worker_id: str | None, attempt: int, **more: Any) -> dict:
    """The named parameters of :data:`_OWNED`, plus ``more``."""
    return {"job_id": job_id, "worker_id": worker_id, "attempt": attempt, **more}


def _read_schema_version(c: sqlite3.Connection) -> int:
    """The version recorded in ``meta`` (0 for a file with no schema yet)."""
    if not c.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone():
        return 0
    row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row else 0


def _split_sql(script: str) -> list[str]:
    """Split the schema script into statements (no semicolons inside our statements)."""
    out = []
    for part in script.split(";"):
        lines = [ln for ln in part.splitlines() if not ln.strip().startswith("--")]
        stmt = "\n".join(lines).strip()
        if stmt:
            out.append(stmt)
    return out


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0][:200] if (text or "").strip() else ""


def _f(x: Any) -> float | None:
    """Floats for SQLite; NaN stored as NULL."""
    if x is None:
        return None
    x = float(x)
    return None if x != x else x
