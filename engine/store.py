"""The SQLite store: schema, migrations, the job queue and every score.

This is the only module that writes SQL. Every process (the console, each
worker, each job child) opens its own connection: WAL mode so readers never
block the writer, ``busy_timeout`` so a briefly held lock waits instead of
failing, and every write is one short ``BEGIN IMMEDIATE`` transaction so two
writers never deadlock upgrading a read lock.

Job states: ``queued -> running -> done | failed | cancelled``. A running job
whose heartbeat went stale (its worker died) goes back to ``queued`` until it
has used ``max_attempts``, then it is failed with a message saying so.
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

from engine.errors import FsatError, QueueFull


#: Job kinds the worker knows how to run (``probe`` is a diagnostic that checks a worker setup).
JOB_KINDS = ("train", "curriculum", "infer", "baseline", "ensemble", "probe")
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
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


#: Ordered schema migrations: ``(version, what it changes, function)``. A
#: database at version N gets every step above N, in order, inside one
#: ``BEGIN IMMEDIATE`` transaction, so a half-upgraded file is never left and
#: two processes opening an old file upgrade it once. Each step is written
#: against the schema the step before it left, never against today's tables;
#: add a step at the end, never edit a released one.
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


MIGRATIONS: list[tuple[int, str, Callable[[sqlite3.Connection], None]]] = [
    (1, "first schema", _migrate_v1),
    (3, "run_summary: parent_run_id, dataset_id, run_dir; runs indexed by parent", _migrate_v3),
    (7, "executors: workers.executor and workers.cluster, fold_tasks", _migrate_v7),
]

#: The schema version this code writes: the last migration's.
SCHEMA_VERSION = MIGRATIONS[-1][0]


class StoreError(FsatError):
    """A store operation that cannot be done (unknown job, wrong state)."""


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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        """Build a Job from a ``SELECT * FROM jobs`` row."""
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

    One Store may be shared between threads (calls are serialised by a lock);
    separate processes each open their own Store. ``schema_version`` stops
    the upgrade at an older version: tests use it to write a database as an
    older release did, then open it with today's code.
    """

    def __init__(self, path: Path | str, *, readonly: bool = False, timeout: float = 30.0,
                 schema_version: int | None = None) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        if readonly:
            if not self.path.exists():
                raise FsatError(f"{self.path}: no such database (start a worker or the console to create it)")
            uri = f"file:{self.path.resolve()}?mode=ro"
            self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=timeout,
                                        check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=timeout,
                                        check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        if not readonly:
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._enable_wal(timeout)
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate(target=schema_version)

    # -- plumbing -----------------------------------------------------------------

    def _enable_wal(self, timeout: float) -> None:
        """Switch the file to WAL, retrying while other processes hold it.

        The switch needs a moment of exclusive access, and SQLite can answer
        "database is locked" at once instead of waiting on ``busy_timeout``
        when several processes open a fresh file together; so retry with a
        short backoff until ``timeout``.
        """
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode = WAL").fetchone()
                return
            except sqlite3.OperationalError as err:
                message = str(err)
                if ("locked" not in message and "busy" not in message) or time.monotonic() >= deadline:
                    raise StoreError(f"{self.path}: cannot switch the database to WAL mode: {message}") from err
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One short ``BEGIN IMMEDIATE`` transaction; commits on success, rolls back on error."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] | dict = ()) -> list[dict]:
        with self._lock:
            return _rows(self.conn.execute(sql, params))

    def _migrate(self, *, target: int | None = None) -> None:
        """Bring the schema to ``target`` (default: this code's version) through :data:`MIGRATIONS`.

        Several processes may start on a fresh or old file at once: the
        IMMEDIATE lock makes exactly one of them run the steps, the rest see
        them done. ``target`` below the current version exists for tests that
        build a database as an older release wrote it.
        """
        target = SCHEMA_VERSION if target is None else target
        with self.write() as c:
            version = _read_schema_version(c)
            if version > SCHEMA_VERSION:
                raise FsatError(
                    f"{self.path}: schema version {version} is newer than this fsat-console "
                    f"({SCHEMA_VERSION}); upgrade fsat-console")
            for step, _what, apply in MIGRATIONS:
                if version < step <= target:
                    apply(c)
                    c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                              (str(step),))

    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        row = self._query("SELECT value FROM meta WHERE key='schema_version'")
        return int(row[0]["value"]) if row else 0

    def data_version(self) -> int:
        """``PRAGMA data_version``: changes whenever another connection commits."""
        with self._lock:
            return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    # -- datasets and folds -------------------------------------------------------

    def register_dataset(self, root: Path | str, *, name: str, classes: Sequence[str],
                         n_curated: int, n_noisy: int = 0, n_test: int = 0) -> int:
        """Insert or update the dataset at ``root`` (resolved path) and return its id."""
        root = str(Path(root).resolve())
        with self.write() as c:
            row = c.execute("SELECT id FROM datasets WHERE root = ?", (root,)).fetchone()
            if row:
                c.execute("UPDATE datasets SET name=?, classes=?, n_curated=?, n_noisy=?, n_test=? "
                          "WHERE id=?", (name, json.dumps(list(classes)), n_curated, n_noisy,
                                         n_test, row[0]))
                return int(row[0])
            cur = c.execute(
                "INSERT INTO datasets(root, name, classes, n_curated, n_noisy, n_test, created_at) "
                "VALUES (?,?,?,?,?,?,?)",
                (root, name, json.dumps(list(classes)), n_curated, n_noisy, n_test, _now()))
            return int(cur.lastrowid)

    def get_dataset(self, dataset_id: int) -> dict | None:
        """The dataset row (classes decoded) or None."""
        rows = self._query("SELECT * FROM datasets WHERE id = ?", (dataset_id,))
        if not rows:
            return None
        d = rows[0]
        d["classes"] = json.loads(d["classes"])
        return d

    def list_datasets(self) -> list[dict]:
        """All registered datasets."""
        return self._query("SELECT id, name, root, n_curated, n_noisy, n_test, n_folds, fold_seed "
                           "FROM datasets ORDER BY id")

    def save_folds(self, dataset_id: int, fnames: Sequence[str], folds: Sequence[int], *,
                   seed: int, n_folds: int) -> bool:
        """Store the dataset's folds unless it already has some; True when written.

        The first writer wins so that every run on a dataset uses the same folds,
        even when two jobs compute them at the same time.
        """
        with self.write() as c:
            if c.execute("SELECT 1 FROM folds WHERE dataset_id = ? LIMIT 1", (dataset_id,)).fetchone():
                return False
            c.executemany("INSERT INTO folds(dataset_id, fname, fold) VALUES (?,?,?)",
                          [(dataset_id, f, int(k)) for f, k in zip(fnames, folds)])
            c.execute("UPDATE datasets SET fold_seed=?, n_folds=? WHERE id=?",
                      (seed, n_folds, dataset_id))
            return True

    def get_folds(self, dataset_id: int) -> dict[str, int]:
        """fname -> fold for the dataset (empty when not computed yet)."""
        with self._lock:
            cur = self.conn.execute("SELECT fname, fold FROM folds WHERE dataset_id = ?", (dataset_id,))
            return {r[0]: int(r[1]) for r in cur.fetchall()}

    # -- queue --------------------------------------------------------------------

    def enqueue(self, kind: str, spec: dict, *, name: str = "", priority: int = 0,
                max_attempts: int = 3, max_queued: int = DEFAULT_MAX_QUEUED) -> int:
        """Add a job and return its id; raises QueueFull when ``max_queued`` jobs wait."""
        if kind not in JOB_KINDS:
            raise StoreError(f"unknown job kind {kind!r}; expected one of {', '.join(JOB_KINDS)}")
        payload = json.dumps(spec, sort_keys=True)
        with self.write() as c:
            waiting = c.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
            if waiting >= max_queued:
                raise QueueFull(f"the queue already holds {waiting} queued jobs (limit {max_queued}); "
                                "wait for some to finish or cancel some")
            cur = c.execute(
                "INSERT INTO jobs(kind, name, spec, priority, max_attempts, created_at) "
                "VALUES (?,?,?,?,?,?)", (kind, name, payload, priority, max_attempts, _now()))
            return int(cur.lastrowid)

    def claim(self, worker_id: str) -> Job | None:
        """Atomically take the highest-priority queued job for ``worker_id``.

        One ``UPDATE ... RETURNING`` inside ``BEGIN IMMEDIATE``: two workers can
        never both get the same job.
        """
        now = _now()
        with self.write() as c:
            row = c.execute(
                "UPDATE jobs SET status='running', worker_id=?, started_at=COALESCE(started_at, ?), "
                "heartbeat_at=?, attempts=attempts+1, message='starting' "
                "WHERE id = (SELECT id FROM jobs WHERE status='queued' "
                "            ORDER BY priority DESC, id LIMIT 1) "
                "RETURNING *", (worker_id, now, now)).fetchone()
            if row is None:
                return None
            job = Job.from_row(row)
            c.execute("UPDATE workers SET status='busy', job_id=?, heartbeat_at=? WHERE id=?",
                      (job.id, now, worker_id))
            return job

    def get_job(self, job_id: int) -> Job:
        """The job with this id; StoreError when there is none."""
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise StoreError(f"no job with id {job_id}")
        d = rows[0]
        d["spec"] = json.loads(d["spec"])
        d["cancel_requested"] = bool(d["cancel_requested"])
        return Job(**d)

    def list_jobs(self, *, status: str | None = None, limit: int = 200) -> list[dict]:
        """Jobs, newest first, without spec/traceback (cheap for live tables)."""
        sql = ("SELECT id, kind, name, status, priority, run_id, progress, message, error, attempts, "
               "max_attempts, worker_id, created_at, started_at, finished_at, cancel_requested "
               "FROM jobs")
        params: list[Any] = []
        if status:
            sql += " WHERE status = ?"
            params.append(status)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return self._query(sql, params)

    def count_jobs(self, *statuses: str) -> int:
        """How many jobs are in any of the given states."""
        marks = ",".join("?" * len(statuses))
        return int(self._query(f"SELECT COUNT(*) AS n FROM jobs WHERE status IN ({marks})", statuses)[0]["n"])

    def heartbeat_job(self, job_id: int, worker_id: str) -> bool:
        """Refresh the job's lease; False when the job is no longer ours (requeued, cancelled)."""
        with self.write() as c:
            cur = c.execute("UPDATE jobs SET heartbeat_at=? WHERE id=? AND worker_id=? AND status='running'",
                            (_now(), job_id, worker_id))
            return cur.rowcount == 1

    def set_progress(self, job_id: int, fraction: float, message: str = "") -> None:
        """Record progress in [0, 1] and a short message for a running job."""
        fraction = min(1.0, max(0.0, float(fraction)))
        with self.write() as c:
            c.execute("UPDATE jobs SET progress=?, message=? WHERE id=? AND status='running'",
                      (fraction, message, job_id))

    def set_job_run(self, job_id: int, run_id: str) -> None:
        """Link a job to the run it produces."""
        with self.write() as c:
            c.execute("UPDATE jobs SET run_id=? WHERE id=?", (run_id, job_id))

    def finish_job(self, job_id: int, *, message: str = "done") -> None:
        """Mark a running job done."""
        with self.write() as c:
            c.execute("UPDATE jobs SET status='done', progress=1, message=?, finished_at=? "
                      "WHERE id=? AND status='running'", (message, _now(), job_id))
            self._release_worker(c, job_id)

    def fail_job(self, job_id: int, error: str, traceback: str | None = None) -> None:
        """Mark a job failed, keeping the error message and traceback."""
        with self.write() as c:
            c.execute("UPDATE jobs SET status='failed', error=?, traceback=?, message=?, finished_at=? "
                      "WHERE id=? AND status IN ('running','queued')",
                      (error, traceback, _first_line(error), _now(), job_id))
            c.execute("UPDATE runs SET status='failed', finished_at=? WHERE job_id=? AND status='running'",
                      (_now(), job_id))
            self._release_worker(c, job_id)

    def request_cancel(self, job_id: int) -> str:
        """Cancel a job: a queued one at once, a running one by flag (its worker stops it).

        Returns the job's status after the request.
        """
        with self.write() as c:
            row = c.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise StoreError(f"no job with id {job_id}")
            status = row[0]
            if status == "queued":
                c.execute("UPDATE jobs SET status='cancelled', message='cancelled before start', "
                          "finished_at=? WHERE id=?", (_now(), job_id))
                return "cancelled"
            if status == "running":
                c.execute("UPDATE jobs SET cancel_requested=1, message='cancelling' WHERE id=?", (job_id,))
            return status

    def mark_cancelled(self, job_id: int) -> None:
        """Record that a running job was stopped on request."""
        with self.write() as c:
            c.execute("UPDATE jobs SET status='cancelled', message='cancelled', finished_at=? "
                      "WHERE id=? AND status='running'", (_now(), job_id))
            c.execute("UPDATE runs SET status='cancelled', finished_at=? WHERE job_id=? AND status='running'",
                      (_now(), job_id))
            self._release_worker(c, job_id)

    def release_job(self, job_id: int, *, message: str = "requeued: worker stopped") -> None:
        """Put a running job back in the queue without counting the attempt (clean worker stop)."""
        with self.write() as c:
            c.execute("UPDATE jobs SET status='queued', worker_id=NULL, attempts=MAX(attempts-1, 0), "
                      "message=? WHERE id=? AND status='running'", (message, job_id))
            c.execute("UPDATE runs SET status='interrupted' WHERE job_id=? AND status='running'", (job_id,))
            self._release_worker(c, job_id)

    def requeue_stale(self, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> list[int]:
        """Requeue running jobs whose heartbeat is older than the lease.

        A job that has used all its attempts is failed instead. Returns the ids
        of the jobs put back in the queue.
        """
        cutoff = _now() - lease_seconds
        requeued: list[int] = []
        with self.write() as c:
            stale = c.execute("SELECT id, attempts, max_attempts, worker_id FROM jobs "
                              "WHERE status='running' AND heartbeat_at < ?", (cutoff,)).fetchall()
            for job_id, attempts, max_attempts, worker_id in stale:
                if attempts >= max_attempts:
                    msg = (f"worker {worker_id} stopped heartbeating; the job was tried {attempts} "
                           f"time(s), the limit is {max_attempts}")
                    c.execute("UPDATE jobs SET status='failed', error=?, message=?, finished_at=? WHERE id=?",
                              (msg, _first_line(msg), _now(), job_id))
                    c.execute("UPDATE runs SET status='failed', finished_at=? WHERE job_id=? "
                              "AND status IN ('running','interrupted')", (_now(), job_id))
                else:
                    c.execute("UPDATE jobs SET status='queued', worker_id=NULL, "
                              "message=? WHERE id=?",
                              (f"requeued: worker {worker_id} stopped heartbeating", job_id))
                    c.execute("UPDATE runs SET status='interrupted' WHERE job_id=? AND status='running'",
                              (job_id,))
                    requeued.append(int(job_id))
            c.execute("UPDATE workers SET status='stopped' WHERE status != 'stopped' AND heartbeat_at < ?",
                      (cutoff,))
        return requeued

    @staticmethod
    def _release_worker(c: sqlite3.Connection, job_id: int) -> None:
        c.execute("UPDATE workers SET status='idle', job_id=NULL WHERE job_id=?", (job_id,))

    # -- workers ------------------------------------------------------------------

    def register_worker(self, worker_id: str, pid: int | None = None) -> None:
        """Record a worker process as alive."""
        now = _now()
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO workers(id, pid, host, started_at, heartbeat_at, status) "
                      "VALUES (?,?,?,?,?, 'idle')",
                      (worker_id, pid or os.getpid(), socket.gethostname(), now, now))

    def worker_heartbeat(self, worker_id: str) -> None:
        """Refresh a worker's heartbeat."""
        with self.write() as c:
            c.execute("UPDATE workers SET heartbeat_at=? WHERE id=?", (_now(), worker_id))

    def worker_stopped(self, worker_id: str) -> None:
        """Record a clean worker exit."""
        with self.write() as c:
            c.execute("UPDATE workers SET status='stopped', job_id=NULL, heartbeat_at=? WHERE id=?",
                      (_now(), worker_id))

    def set_worker_cluster(self, worker_id: str, executor: str, cluster: dict | None) -> None:
        """Publish the executor a worker uses and, for a cluster, its nodes and free resources (or error)."""
        with self.write() as c:
            c.execute("UPDATE workers SET executor=?, cluster=? WHERE id=?",
                      (executor, None if cluster is None else json.dumps(cluster, sort_keys=True), worker_id))

    def live_workers(self, max_age: float = 10.0) -> list[dict]:
        """Workers that heartbeated within ``max_age`` seconds and did not stop."""
        return self._query("SELECT * FROM workers WHERE status != 'stopped' AND heartbeat_at >= ? "
                           "ORDER BY started_at", (_now() - max_age,))

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
            row = c.execute("SELECT id FROM runs WHERE id=?", (run_id,)).fetchone()
            if row:
                c.execute("UPDATE runs SET status='running', device=?, finished_at=NULL WHERE id=?",
                          (device, run_id))
                new = False
            else:
                c.execute(
                    "INSERT INTO runs(id, job_id, dataset_id, parent_run_id, kind, name, model, config, "
                    "config_hash, seed, device, versions, git_commit, run_dir, created_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (run_id, job_id, dataset_id, parent_run_id, kind, name, model,
                     json.dumps(config or {}, sort_keys=True), config_hash, seed, device,
                     json.dumps(versions or {}, sort_keys=True), git_commit, run_dir, _now()))
                new = True
            if job_id is not None:
                c.execute("UPDATE jobs SET run_id=? WHERE id=?", (run_id, job_id))
            return new

    def finish_run(self, run_id: str, *, status: str = "done", cv_lwlrap: float | None = None,
                   test_lwlrap: float | None = None) -> None:
        """Close a run with its out-of-fold (CV) and, when scored, test LWLRAP."""
        with self.write() as c:
            c.execute("UPDATE runs SET status=?, cv_lwlrap=COALESCE(?, cv_lwlrap), "
                      "test_lwlrap=COALESCE(?, test_lwlrap), finished_at=? WHERE id=?",
                      (status, cv_lwlrap, test_lwlrap, _now(), run_id))

    def set_run_scores(self, run_id: str, *, cv_lwlrap: float | None = None,
                       test_lwlrap: float | None = None) -> None:
        """Update a run's headline scores without changing its status."""
        with self.write() as c:
            c.execute("UPDATE runs SET cv_lwlrap=COALESCE(?, cv_lwlrap), "
                      "test_lwlrap=COALESCE(?, test_lwlrap) WHERE id=?", (cv_lwlrap, test_lwlrap, run_id))

    def record_epoch(self, run_id: str, fold: int, epoch: int, *, train_loss: float | None,
                     val_loss: float | None, val_lwlrap: float | None, lr: float | None,
                     seconds: float | None, clips_per_sec: float | None = None) -> None:
        """Record one epoch of one fold (replaces the row when an epoch is re-run after a resume)."""
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO epochs(run_id, fold, epoch, train_loss, val_loss, val_lwlrap, "
                      "lr, seconds, clips_per_sec) VALUES (?,?,?,?,?,?,?,?,?)",
                      (run_id, fold, epoch, _f(train_loss), _f(val_loss), _f(val_lwlrap), _f(lr),
                       _f(seconds), _f(clips_per_sec)))

    def record_fold(self, run_id: str, fold: int, *, lwlrap: float, best_epoch: int | None,
                    n_val: int) -> None:
        """Record a finished fold's best validation LWLRAP."""
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO fold_scores(run_id, fold, lwlrap, best_epoch, n_val) "
                      "VALUES (?,?,?,?,?)", (run_id, fold, float(lwlrap), best_epoch, int(n_val)))

    def record_class_scores(self, run_id: str, fold: int, class_names: Sequence[str],
                            lrap: Sequence[float], weights: Sequence[float],
                            n_pos: Sequence[int]) -> None:
        """Record per-class LRAP for a fold, or out-of-fold with ``fold=OOF`` (-1)."""
        rows = []
        for i, name in enumerate(class_names):
            value = _f(lrap[i])
            rows.append((run_id, fold, i, name, value, float(weights[i]), int(n_pos[i])))
        with self.write() as c:
            c.execute("DELETE FROM class_scores WHERE run_id=? AND fold=?", (run_id, fold))
            c.executemany("INSERT INTO class_scores(run_id, fold, class_idx, class_name, lrap, weight, n_pos) "
                          "VALUES (?,?,?,?,?,?,?)", rows)

    def set_run_members(self, run_id: str, members: Sequence[tuple[str, float]]) -> None:
        """Record an ensemble's member runs and weights."""
        with self.write() as c:
            c.execute("DELETE FROM run_members WHERE run_id=?", (run_id,))
            c.executemany("INSERT INTO run_members(run_id, member_run_id, weight) VALUES (?,?,?)",
                          [(run_id, m, float(w)) for m, w in members])

    def list_runs(self, *, limit: int = 200) -> list[dict]:
        """Runs with their headline scores, newest first."""
        return self._query("SELECT * FROM run_summary ORDER BY created DESC, run_id DESC LIMIT ?", (limit,))

    def child_runs(self, run_id: str, *, kind: str | None = None) -> list[dict]:
        """Runs made from ``run_id`` (``parent_run_id``), optionally of one kind: run_summary rows, newest first."""
        sql = "SELECT * FROM run_summary WHERE parent_run_id=?"
        params: list[Any] = [run_id]
        if kind is not None:
            sql += " AND kind=?"
            params.append(kind)
        return self._query(sql + " ORDER BY created DESC, run_id DESC", params)

    def get_run(self, run_id: str) -> dict | None:
        """A run row with config and versions decoded, or None."""
        rows = self._query("SELECT * FROM runs WHERE id=?", (run_id,))
        if not rows:
            return None
        d = rows[0]
        d["config"] = json.loads(d["config"])
        d["versions"] = json.loads(d["versions"])
        return d

    def epochs(self, run_id: str) -> list[dict]:
        """Every recorded epoch of a run, by fold then epoch."""
        return self._query("SELECT * FROM epochs WHERE run_id=? ORDER BY fold, epoch", (run_id,))

    def fold_scores(self, run_id: str) -> list[dict]:
        """Per-fold best LWLRAP of a run."""
        return self._query("SELECT * FROM fold_scores WHERE run_id=? ORDER BY fold", (run_id,))

    def class_scores(self, run_id: str, fold: int = OOF) -> list[dict]:
        """Per-class LRAP of a run for one fold, or out-of-fold (default)."""
        return self._query("SELECT * FROM class_scores WHERE run_id=? AND fold=? ORDER BY class_idx",
                           (run_id, fold))

    def run_members(self, run_id: str) -> list[dict]:
        """An ensemble's members and weights."""
        return self._query("SELECT member_run_id, weight FROM run_members WHERE run_id=? "
                           "ORDER BY weight DESC", (run_id,))


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
