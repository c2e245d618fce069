"""The schema and its ordered migrations: every table, index and view, version by version.

A database records the last step applied in ``meta.schema_version``;
opening it for writing applies every later step of :data:`MIGRATIONS`, in
order, inside one transaction (``engine.store.connection``). The job
states and the out-of-fold fold number are facts of the schema and live
here too.
"""

from __future__ import annotations

import sqlite3
import uuid
from typing import Callable

#: Every state a job can be in, in the order a job moves through them:
#: ``queued -> running -> done | failed | cancelled`` (a running job whose
#: worker died goes back to ``queued``). The jobs table's CHECK constraint
#: holds exactly these (tests/test_queue.py checks the two agree). A queued
#: job with parents (``job_deps``) is shown *waiting* until they are done and
#: *held* while one failed or was cancelled: both are derived from its
#: parents' states (``engine.store.plans``), never stored.
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
#: The states a job never leaves.
FINISHED_STATES = ("done", "failed", "cancelled")
#: ``class_scores.fold`` value for the out-of-fold scores of a run.
OOF = -1

#: The lease a claim takes when the worker names none (seconds without a heartbeat before a job is stale).
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


def _migrate_v8(c: sqlite3.Connection) -> None:
    """System figures per epoch: the device, peak GPU memory, GPU utilisation and the job's peak RSS."""
    # NULL for epochs recorded before this step, and where a figure does not apply (no GPU, no NVML).
    c.execute("ALTER TABLE epochs ADD COLUMN device TEXT")            # 'NVIDIA H100 80GB HBM3', 'cpu'
    c.execute("ALTER TABLE epochs ADD COLUMN peak_gpu_mib REAL")      # torch.cuda.max_memory_allocated, per epoch
    c.execute("ALTER TABLE epochs ADD COLUMN gpu_util REAL")          # NVML utilisation, mean over the epoch, %
    c.execute("ALTER TABLE epochs ADD COLUMN peak_rss_mib REAL")      # the job process's peak resident set


def _migrate_v9(c: sqlite3.Connection) -> None:
    """Sweeps: one row per sweep, per point (its settings and screening decision), per run (point x seed).

    ``sweep_jobs`` links each job a sweep queued to its run and names the folds that job trains
    (NULL: every fold of the spec), so a screening job and the job that completes it write the
    same run, and the run's config hash does not depend on which folds a job was asked for.
    """
    c.execute("""CREATE TABLE IF NOT EXISTS sweeps (
        id           INTEGER PRIMARY KEY,
        name         TEXT NOT NULL DEFAULT '',
        kind         TEXT NOT NULL DEFAULT 'train',
        preset       TEXT NOT NULL DEFAULT '',
        base         TEXT NOT NULL,                 -- JSON: the spec every point starts from
        axes         TEXT NOT NULL,                 -- JSON: the settings that vary and how
        seeds        TEXT NOT NULL,                 -- JSON list of train.seed values
        screen_fold  INTEGER,                       -- NULL: no screening, every run trains all folds
        keep         INTEGER,                       -- points that complete after screening
        stage        TEXT NOT NULL DEFAULT 'screening',  -- screening | completing | cancelled
        created_at   REAL NOT NULL
    )""")
    c.execute("""CREATE TABLE IF NOT EXISTS sweep_points (
        sweep_id       INTEGER NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
        point          INTEGER NOT NULL,
        settings       TEXT NOT NULL,               -- JSON {"train.lr": 0.001, ...}: this point's values
        decision       TEXT,                        -- NULL until screened: kept | screened out | completed by hand
        screen_lwlrap  REAL,                        -- mean over seeds of the screening fold's LWLRAP
        reason         TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (sweep_id, point)
    )""")
    c.execute("""CREATE TABLE IF NOT EXISTS sweep_runs (
        sweep_id  INTEGER NOT NULL,
        point     INTEGER NOT NULL,
        seed      INTEGER NOT NULL,
        run_id    TEXT NOT NULL UNIQUE,
        PRIMARY KEY (sweep_id, point, seed),
        FOREIGN KEY (sweep_id, point) REFERENCES sweep_points(sweep_id, point) ON DELETE CASCADE
    )""")
    c.execute("""CREATE TABLE IF NOT EXISTS sweep_jobs (
        job_id    INTEGER PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
        sweep_id  INTEGER NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
        run_id    TEXT NOT NULL,
        stage     TEXT NOT NULL,                    -- screen | complete | full
        folds     TEXT                              -- JSON list of the folds this job trains; NULL: all
    )""")
    c.execute("CREATE INDEX IF NOT EXISTS sweep_jobs_sweep ON sweep_jobs(sweep_id, stage)")


def _migrate_v10(c: sqlite3.Connection) -> None:
    """Plans and dependencies: a job waits for the jobs whose runs it needs (``engine.store.plans``)."""
    c.execute("""CREATE TABLE IF NOT EXISTS job_deps (
        job_id     INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        parent_id  INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        PRIMARY KEY (job_id, parent_id)
    )""")
    c.execute("CREATE INDEX IF NOT EXISTS job_deps_parent ON job_deps(parent_id)")
    c.execute("""CREATE TABLE IF NOT EXISTS plans (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL,
        preset      TEXT NOT NULL DEFAULT '',   -- the plan preset or file it was queued from
        created_at  REAL NOT NULL
    )""")
    c.execute("""CREATE TABLE IF NOT EXISTS plan_steps (
        plan_id   INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
        step      TEXT NOT NULL,                -- the step's name in the plan preset
        position  INTEGER NOT NULL,             -- the step's place in the preset
        job_id    INTEGER NOT NULL UNIQUE REFERENCES jobs(id) ON DELETE CASCADE,
        PRIMARY KEY (plan_id, step)
    )""")


# -- schema 11: Kaggle submissions, leaderboard scores and run file hashes (engine.kaggle) -----------
_SCHEMA_V11 = """
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


def _migrate_v11(c: sqlite3.Connection) -> None:
    """Kaggle lineage: run file hashes, submissions (pack -> submission -> run -> members), leaderboard scores."""
    for stmt in _split_sql(_SCHEMA_V11):
        c.execute(stmt)


def _migrate_v12(c: sqlite3.Connection) -> None:
    """The database's id: a random UUID in ``meta.database_id``, which every run folder's marker names."""
    c.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('database_id', :id)", {"id": uuid.uuid4().hex})


#: Ordered schema migrations: ``(version, what it changes, function)``. A
#: database at version N gets every step above N, in order, inside one
#: ``BEGIN IMMEDIATE`` transaction, so a half-upgraded file is never left and
#: two processes opening an old file upgrade it once. Each step is written
#: against the schema the step before it left, never against today's tables;
#: add a step at the end, never edit a released one.
MIGRATIONS: list[tuple[int, str, Callable[[sqlite3.Connection], None]]] = [
    (1, "first schema", _migrate_v1),
    (2, "per-job and per-worker lease (jobs.lease_seconds, workers.lease_seconds)", _migrate_v2),
    (3, "run_summary: parent_run_id, dataset_id, run_dir; runs indexed by parent", _migrate_v3),
    (4, "datasets.fold_rule, runs.warning, ensemble_candidates", _migrate_v4),
    (5, "curriculum: epoch stages, noisy-label audit, loss swaps, gain views", _migrate_v5),
    (6, "tags, notes and the archived flag on runs; indexes for paging and filters", _migrate_v6),
    (7, "executors: workers.executor and workers.cluster, fold_tasks", _migrate_v7),
    (8, "system figures per epoch: epochs.device, peak_gpu_mib, gpu_util, peak_rss_mib", _migrate_v8),
    (9, "sweeps: sweeps, sweep_points, sweep_runs, sweep_jobs (the folds a job trains)", _migrate_v9),
    (10, "plans: job_deps (a job waits for its parents), plans and plan_steps", _migrate_v10),
    (11, "Kaggle lineage: run_files, submissions, leaderboard_scores, cv_vs_lb", _migrate_v11),
    (12, "meta.database_id: the id every run folder's owner.json names", _migrate_v12),
]

#: The schema version this code writes: the last migration's.
SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(c: sqlite3.Connection, version: int, target: int) -> None:
    """Apply every step of :data:`MIGRATIONS` above ``version`` up to ``target``, in order.

    The caller holds the transaction (``BEGIN IMMEDIATE``), so the steps
    and the recorded version commit together or not at all.
    """
    for step, _what, apply in MIGRATIONS:
        if version < step <= target:
            apply(c)
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', :v)", {"v": str(step)})


def read_schema_version(c: sqlite3.Connection) -> int:
    """The version recorded in ``meta`` (0 for a file with no schema yet)."""
    if not c.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone():
        return 0
    row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row else 0


def _split_sql(script: str) -> list[str]:
    """Split a schema script into statements (no semicolons inside our statements)."""
    out = []
    for part in script.split(";"):
        lines = [ln for ln in part.splitlines() if not ln.strip().startswith("--")]
        stmt = "\n".join(lines).strip()
        if stmt:
            out.append(stmt)
    return out
