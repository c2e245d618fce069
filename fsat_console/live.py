"""Live data: change detection and loading on the console's own read-only connection.

The worker and its jobs commit scores to ``experiments.db`` from other
processes. Every poll asks SQLite for ``PRAGMA data_version`` (it changes when
another connection commits) — one cheap statement. Only when it changed, when
the caller forces it, or when the last full load is a few seconds old (worker
liveness is a matter of heartbeat *age*, which changes without a commit) are
the jobs, runs and workers loaded. The loaded rows are then compared with the
previous ones, so a heartbeat-only commit does not repaint anything.

The run screen asks for one run's detail (epochs, folds, per-class scores of
one fold); it is loaded with the overview only while that screen is shown.
With it comes the run's TTA comparison when there is one
(``engine.runs.reports.tta_comparison``, the same report ``fsat tta`` prints):
a trained run next to the newest inference run of it (found by the store's
``child_runs`` query on ``parent_run_id``), or an inference run next to the
run it was made from, each with its per-class scores of the shown fold.

``Poller`` is used from one thread at a time (the console's poll worker), and
polls never overlap: the console schedules the next one when the previous one
has been handled. The poll worker posts ``LiveUpdate`` (or ``LiveError``) to
the app; the app keeps the overview and passes what changed on to the screen
shown as ``OverviewChanged`` and ``RunDetailChanged``, which the screens handle.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from textual.message import Message

from engine.errors import FsatError
from engine.filters import compile_filter
from engine.runs.reports import TtaComparison, infer_runs_of, tta_comparison
from engine.seeds import group_columns, seed_groups
from engine.sweeps import mark_screened
from engine.store import Store, StoreError

#: A worker whose heartbeat is older than this is not counted as alive.
WORKER_MAX_AGE = 10.0


#: Rows of a table page: the console shows one page of each table, paged and sorted in SQL.
PAGE_SIZE = 200


@dataclass(frozen=True)
class TableView:
    """What a table asks of the database: a filter, a sort, a page (and for runs: archived or not).

    ``order`` is a key of ``engine.store.RUN_ORDER`` / ``JOB_ORDER``; the
    filter is the text of the filter language (compiled in the poll).
    ``archived`` False hides archived runs, True shows only them.
    """

    filter: str = ""
    order: str = "created"
    descending: bool = True
    offset: int = 0
    limit: int = PAGE_SIZE
    archived: bool = False


DEFAULT_RUN_VIEW = TableView(order="created", descending=True)
DEFAULT_JOB_VIEW = TableView(order="id", descending=True)


@dataclass
class Overview:
    """Everything the main screen and the status line show.

    ``runs`` and ``jobs`` are the pages the tables show; the totals are true
    counts over the whole database: ``run_matches`` / ``job_matches`` rows
    match the tables' filters, ``run_totals`` counts every run (and the
    archived ones), ``job_counts`` every job per status. ``running`` holds
    every running job (whatever page is shown), ``ended`` the jobs that
    finished or failed since the previous overview.
    """

    jobs: list[dict]
    runs: list[dict]
    workers: list[dict]
    loaded_at: float = field(default_factory=time.time)
    run_matches: int | None = None
    job_matches: int | None = None
    run_totals: dict[str, int] = field(default_factory=dict)
    job_counts: dict[str, int] = field(default_factory=dict)
    running: list[dict] = field(default_factory=list)
    ended: list[dict] = field(default_factory=list)
    run_view: TableView = DEFAULT_RUN_VIEW
    job_view: TableView = DEFAULT_JOB_VIEW
    #: Changes whenever any run is added, finishes or is rescored (the ensemble screen's cue).
    run_stamp: tuple = ()
    #: Per run of a running job: its latest epoch's system figures (device, peak_gpu_mib, gpu_util, peak_rss_mib).
    system: dict[str, dict] = field(default_factory=dict)
    #: Per run on the page in a seed group: its group's cells (``engine.seeds.group_columns``); None until the
    #: poll after the first has computed them.
    groups: dict[str, dict] | None = None

    def job(self, job_id: int | None) -> dict | None:
        """The job row with this id, if it is running or on the shown page."""
        return next((j for j in self.running + self.jobs if j["id"] == job_id), None)

    def counts(self) -> dict[str, int]:
        """Number of jobs per status, over every job in the database."""
        if self.job_counts:
            return dict(self.job_counts)
        out: dict[str, int] = {}
        for job in self.jobs:
            out[job["status"]] = out.get(job["status"], 0) + 1
        return out

    @property
    def total_runs(self) -> int:
        """Every run that is not archived."""
        return self.run_totals.get("runs", len(self.runs))


@dataclass
class RunDetail:
    """One run as the run screen shows it."""

    run_id: str
    class_fold: int
    run: dict | None
    job: dict | None
    epochs: list[dict]
    folds: list[dict]
    classes: list[dict]
    tta: TtaComparison | None = None
    #: An ensemble's members: member_run_id, weight, and the member's run_summary columns.
    members: list[dict] = field(default_factory=list)

    @property
    def planned_epochs(self) -> int | None:
        """Epochs per fold from the run's (or else its job's) spec; a curriculum's, its stages' together."""
        # A curriculum stores its teacher's train spec as its config: its epochs are its stages'.
        stages = ((self.job or {}).get("spec") or {}).get("stages") if (self.run or {}).get("kind") == "curriculum" \
            else None
        if stages:
            return sum(int(stage.get("epochs") or 0) for stage in stages) or None
        for spec in (self.run or {}).get("config") or {}, (self.job or {}).get("spec") or {}:
            epochs = (spec.get("train") or {}).get("epochs")
            if epochs:
                return int(epochs)
        return None

    @property
    def planned_folds(self) -> list[int]:
        """The folds this run trains (from its spec), else the folds seen so far, else 0..4."""
        for spec in (self.run or {}).get("config") or {}, (self.job or {}).get("spec") or {}:
            train = spec.get("train") or {}
            if train:
                folds = train.get("folds") or list(range(int(train.get("n_folds") or 5)))
                return [int(k) for k in folds]
        seen = sorted({int(e["fold"]) for e in self.epochs} | {int(f["fold"]) for f in self.folds})
        return seen or list(range(5))

    @property
    def n_folds(self) -> int:
        """Folds in the split (for cycling the per-class view through them)."""
        for spec in (self.run or {}).get("config") or {}, (self.job or {}).get("spec") or {}:
            n = (spec.get("train") or {}).get("n_folds")
            if n:
                return int(n)
        return max(self.planned_folds, default=4) + 1


class LiveUpdate(Message):
    """From the poll worker to the app: an overview and/or a run detail (None = unchanged)."""

    def __init__(self, overview: Overview | None, detail: RunDetail | None) -> None:
        super().__init__()
        self.overview = overview
        self.detail = detail


class LiveError(Message):
    """A poll failed; ``text`` says why in the user's terms."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class OverviewChanged(Message, bubble=False):
    """To the screen shown: a poll brought a new overview (the app keeps it as ``overview``).

    A screen that shows runs or jobs handles it (``on_overview_changed``);
    a screen that was covered catches up from the app's overview when resumed.
    """

    def __init__(self, overview: Overview) -> None:
        super().__init__()
        self.overview = overview


class RunDetailChanged(Message, bubble=False):
    """To the screen shown: a poll brought new data of the watched run (``on_run_detail_changed``)."""

    def __init__(self, detail: RunDetail) -> None:
        super().__init__()
        self.detail = detail


def describe_error(err: BaseException, db_path: Path) -> str:
    """A one-line explanation of a poll failure, naming the database."""
    text = str(err)
    if isinstance(err, sqlite3.OperationalError) and "locked" in text:
        return f"{db_path}: the database is locked by another process; retrying"
    if isinstance(err, sqlite3.DatabaseError):
        return f"{db_path}: {text}"
    if isinstance(err, FsatError):
        return text
    return f"{db_path}: {type(err).__name__}: {text}"


def _strip(rows: list[dict], *drop: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


class Poller:
    """Detects changes to the database and loads what the console shows."""

    def __init__(self, db_path: Path | str, *, stale_after: float = 3.0,
                 worker_max_age: float = WORKER_MAX_AGE) -> None:
        self.db_path = Path(db_path)
        self.stale_after = stale_after
        self.worker_max_age = worker_max_age
        self._store: Store | None = None
        self._version: int | None = None
        self._overview_key: tuple | None = None
        self._detail_key: tuple | None = None
        self._loaded_at = 0.0
        self._ended_since: float | None = None
        #: Every run's seed-group cells, and the run stamp they were computed at (again only when runs change).
        self._groups: dict[str, dict] = {}
        self._groups_stamp: tuple | None = None
        self._group_keys: dict[str, tuple[str, int]] = {}
        #: The first load left the groups out; the next poll loads the overview again to bring them.
        self._groups_due = False

    def _open(self) -> Store:
        if self._store is None:
            self._store = Store(self.db_path, readonly=True, timeout=2.0)
            self._version = None
        return self._store

    def close(self) -> None:
        """Close the read-only connection (reopened on the next poll)."""
        if self._store is not None:
            try:
                self._store.close()
            finally:
                self._store = None

    def poll(self, watch: tuple[str, int] | None = None, *, force: bool = False, force_detail: bool = False,
             views: tuple[TableView, TableView] | None = None) -> tuple[Overview | None, RunDetail | None]:
        """One poll: returns (overview, detail), each None when nothing the UI shows changed.

        ``watch`` is ``(run_id, class_fold)`` while the run screen is shown.
        ``force`` returns fresh objects even when nothing changed;
        ``force_detail`` does so for the watched run only. ``views``
        is (runs view, jobs view): which page of each table to load. Raises
        sqlite3 errors or FsatError; the connection is then dropped and
        reopened next time.
        """
        if not self.db_path.exists():
            self.close()
            raise FsatError(f"{self.db_path}: the database file is gone (deleted or moved); "
                            "put it back or restart the console to create a new one")
        try:
            store = self._open()
            version = store.data_version()
            changed = version != self._version
            stale = time.time() - self._loaded_at >= self.stale_after
            overview = detail = None
            if changed or stale or force or self._groups_due:
                overview = self._load_overview(store, force, *(views or ()))
                self._loaded_at = time.time()
            if watch is not None and (changed or force or force_detail or self._detail_key is None
                                      or self._detail_key[:2] != tuple(watch)):
                detail = self._load_detail(store, watch, force or force_detail)
            elif watch is None:
                self._detail_key = None
            self._version = version
            return overview, detail
        except (sqlite3.Error, OSError):
            self.close()
            raise

    def _load_overview(self, store: Store, force: bool, run_view: TableView = DEFAULT_RUN_VIEW,
                       job_view: TableView = DEFAULT_JOB_VIEW) -> Overview | None:
        run_filter = compile_filter(run_view.filter, "runs")
        job_filter = compile_filter(job_view.filter, "jobs")
        runs = store.page_runs(where=run_filter.sql, params=run_filter.params, order=run_view.order,
                               descending=run_view.descending, limit=run_view.limit, offset=run_view.offset,
                               archived=run_view.archived)
        jobs = store.page_jobs(where=job_filter.sql, params=job_filter.params, order=job_view.order,
                               descending=job_view.descending, limit=job_view.limit, offset=job_view.offset)
        waits = store.job_waits([j["id"] for j in jobs if j["status"] == "queued"])
        for j in jobs:
            j["wait"] = waits.get(j["id"])  # waiting for its parents, or held by a failed one (engine.store.plans)
        running = store.page_jobs(where="j.status = 'running'", limit=None)
        workers = store.live_workers(self.worker_max_age)
        run_totals = store.run_totals()
        job_counts = store.job_status_counts()
        # A full page may hide more rows; count the matches only then (a count is a scan).
        run_matches = len(runs) + run_view.offset if len(runs) < run_view.limit else store.count_runs(
            where=run_filter.sql, params=run_filter.params, archived=run_view.archived)
        job_matches = len(jobs) + job_view.offset if len(jobs) < job_view.limit else store.count_jobs_where(
            where=job_filter.sql, params=job_filter.params)
        stamp = store.run_stamp()
        groups = self._page_groups(store, stamp, runs)
        mark_screened(store, runs)
        system = store.latest_epoch_system([j["run_id"] for j in running if j.get("run_id")])
        ended = self._ended_jobs(store)
        # Heartbeats alone must not repaint: compare without them.
        key = (repr(_strip(jobs, "heartbeat_at")), repr(runs), repr(_strip(workers, "heartbeat_at")),
               repr(_strip(running, "heartbeat_at")), run_matches, job_matches, repr(run_totals),
               repr(job_counts), run_view, job_view, stamp, repr(system), repr(groups))
        if key == self._overview_key and not force and not ended:
            return None
        self._overview_key = key
        return Overview(jobs=jobs, runs=runs, workers=workers, run_matches=run_matches, job_matches=job_matches,
                        run_totals=run_totals, job_counts=job_counts, running=running, ended=ended,
                        run_view=run_view, job_view=job_view, run_stamp=stamp, system=system, groups=groups)

    def _page_groups(self, store: Store, stamp: tuple, runs: list[dict]) -> dict[str, dict] | None:
        """The page's runs' seed-group cells: every group from one query, again only when the runs changed.

        A group's OOF statistics change only when a run is added, finishes or
        is rescored, which is what the run stamp follows. The first load
        returns None and leaves them to the next poll: keying every run's
        config the first time takes about a second at 10,000 runs, which the
        first paint should not wait for; later only new configs are keyed
        (``seed_groups``' cache).
        """
        if stamp != self._groups_stamp:
            if self._groups_stamp is None and not self._groups_due:
                self._groups_due = True
                return None
            self._groups = group_columns(seed_groups(store, keys=self._group_keys))
            self._groups_stamp = stamp
            self._groups_due = False
        return {r["run_id"]: self._groups[r["run_id"]] for r in runs if r["run_id"] in self._groups}

    def _ended_jobs(self, store: Store) -> list[dict]:
        """Jobs that finished or failed since the last look (none on the first look: old news)."""
        since = self._ended_since
        if since is None:
            latest = store.last_ended_at()
            self._ended_since = latest if latest is not None else 0.0
            return []
        rows = store.jobs_ended_since(since)
        if rows:
            self._ended_since = max(since, max(float(r["finished_at"]) for r in rows))
        return rows

    def _load_detail(self, store: Store, watch: tuple[str, int], force: bool) -> RunDetail | None:
        run_id, class_fold = watch
        run = store.get_run(run_id)
        if run is not None:
            mark_screened(store, [run])
        job = None
        if run and run.get("job_id") is not None:
            try:
                job = _job_dict(store.get_job(int(run["job_id"])))
            except StoreError:
                job = None
        epochs = store.epochs(run_id)
        folds = store.fold_scores(run_id)
        classes = store.class_scores(run_id, class_fold)
        tta = self._load_tta(store, run, class_fold, classes)
        members = self._load_members(store, run_id)
        key = (run_id, class_fold, repr(run), repr(_strip([job] if job else [], "heartbeat_at")),
               repr(epochs), repr(folds), repr(classes), repr(tta), repr(members))
        if key == self._detail_key and not force:
            return None
        self._detail_key = key
        return RunDetail(run_id=run_id, class_fold=class_fold, run=run, job=job, epochs=epochs,
                         folds=folds, classes=classes, tta=tta, members=members)

    @staticmethod
    def _load_members(store: Store, run_id: str) -> list[dict]:
        """An ensemble's members with their weights and scores (empty for other runs)."""
        members = store.run_members(run_id)
        if not members:
            return []
        rows = {r["run_id"]: r for r in store.run_rows([m["member_run_id"] for m in members])}
        return [dict(rows.get(m["member_run_id"], {}), **m) for m in members]

    def infer_runs_of(self, store: Store, run_id: str) -> list[dict]:
        """Inference runs made from ``run_id`` (run summary rows, newest first): one indexed query."""
        return infer_runs_of(store, run_id)

    def _load_tta(self, store: Store, run: dict | None, class_fold: int,
                  classes: list[dict]) -> TtaComparison | None:
        """The TTA comparison of a trained run or of an inference run, or None (the run layer's report)."""
        return tta_comparison(store, run, class_fold, classes=classes)


def _job_dict(job: object) -> dict:
    """A store Job as a plain dict (the spec stays decoded)."""
    return dict(vars(job))


__all__ = ["LiveError", "LiveUpdate", "Overview", "OverviewChanged", "PAGE_SIZE", "Poller", "RunDetail",
           "RunDetailChanged", "TableView", "TtaComparison", "describe_error", "WORKER_MAX_AGE"]
