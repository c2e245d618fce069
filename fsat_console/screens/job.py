"""Details of one job: settings, timings, its log as it grows, and for a failure its error and traceback."""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Static

from engine.errors import FsatError
from fsat_console.access import console
from fsat_console.formatting import fmt_duration, job_times, status_text
from fsat_console.live import OverviewChanged
from fsat_console.widgets.log_tail import TAIL_LINES, LogTail

#: The file the worker sends a job's output to, in the run directory (engine.worker).
JOB_LOG = "job.log"


def _when(ts: float | None) -> str:
    return "—" if ts is None else _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def job_summary(job: dict, at: float | None = None) -> Table:
    """Key facts of a job as a two-column grid; a failure's error once, in full."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", justify="right")
    grid.add_column()
    grid.add_row("job", Text(f"{job['id']}  {job['kind']}  {job.get('name') or ''}", style="bold"))
    grid.add_row("status", status_text(job["status"]))
    if job.get("error"):  # first: it is what a failed job's details are opened for
        grid.add_row("error", Text(job["error"], style="bold red", overflow="fold"))
    progress = f"{float(job.get('progress') or 0) * 100:.0f}%"
    # A failed job's message is the first line of its error, which is shown in full below.
    if job.get("message") and job["status"] != "failed":
        progress += f"  {job['message']}"
    grid.add_row("progress", Text(progress))
    elapsed, eta = job_times(job)
    if elapsed is not None:
        label = "elapsed" if job["status"] == "running" else "took"
        grid.add_row(label, fmt_duration(elapsed) + (f"   ETA {fmt_duration(eta)}" if eta is not None else ""))
    grid.add_row("run", job.get("run_id") or ("— (not started)" if job["status"] in ("queued", "running")
                                             else "— (it made no run, so there is no log)"))
    grid.add_row("priority", str(job.get("priority", 0)))
    grid.add_row("attempts", f"{job.get('attempts', 0)} of {job.get('max_attempts', 0)}")
    grid.add_row("worker", job.get("worker_id") or "—")
    grid.add_row("created", _when(job.get("created_at")))
    grid.add_row("started", _when(job.get("started_at")))
    grid.add_row("finished", _when(job.get("finished_at")))
    return grid


def fold_placement(rows: list[dict]) -> Table | None:
    """Where each fold of the job's latest attempt runs: fold, status, node, pid and retry; None before any."""
    if not rows:
        return None
    attempt = max(r["attempt"] for r in rows)
    grid = Table(box=None, padding=(0, 2), show_edge=False)
    for name in ("fold", "status", "node", "pid", "try", ""):
        grid.add_column(name, style="dim" if name in ("pid", "try") else None)
    for r in sorted((r for r in rows if r["attempt"] == attempt), key=lambda r: r["fold"]):
        grid.add_row(str(r["fold"]), status_text(r["status"]) if r["status"] in _STATUS_STYLED else r["status"],
                     r.get("node") or "—", str(r["pid"]) if r.get("pid") else "—",
                     str(r.get("task_attempt") or "—"), r.get("message") or "")
    return grid


#: Fold statuses that share a job state's colour.
_STATUS_STYLED = ("running", "done", "failed", "cancelled")


def spec_lines(spec: dict[str, Any]) -> str:
    """A spec as one line per section: ``[train] epochs=8 batch_size=32 …`` (plain values first)."""
    plain = [f"{k} = {json.dumps(v)}" for k, v in sorted(spec.items()) if not isinstance(v, dict)]
    sections = [f"[{k}] " + "  ".join(f"{sk}={json.dumps(sv)}" for sk, sv in sorted(v.items()))
                for k, v in sorted(spec.items()) if isinstance(v, dict)]
    return "\n".join(plain + sections)


class LogLocated(Message, bubble=False):
    """Where a run's job log is (``path``), or why there is none (``problem``)."""

    def __init__(self, run_id: str, path: Path | None, problem: str = "") -> None:
        super().__init__()
        self.run_id = run_id
        self.path = path
        self.problem = problem


class FoldsLoaded(Message, bubble=False):
    """The job's fold placements (``engine.store.Store.fold_tasks``) as read off the UI thread."""

    def __init__(self, job_id: int, rows: list[dict]) -> None:
        super().__init__()
        self.job_id = job_id
        self.rows = rows


class JobRowLoaded(Message, bubble=False):
    """The job's row read from the database, for a job that is off the jobs table's page."""

    def __init__(self, row: dict) -> None:
        super().__init__()
        self.row = row


class JobScreen(ModalScreen[str | None]):
    """Dismisses with the job's run id when the user asks to open it (``o``).

    The job row follows the console's polls; once the job has a run, its
    ``job.log`` in the run directory is followed as the worker appends to it.
    """

    BINDINGS = [
        Binding("escape,q", "close", "Close"),
        Binding("o", "open_run", "Open run"),
        Binding("c", "cancel", "Cancel job", tooltip="Cancel this job (asks first, naming it, its state and progress)"),
        Binding("R", "requeue", "Retry", tooltip="Queue this failed or cancelled job again (its run resumes)"),
    ]

    def __init__(self, job: dict) -> None:
        super().__init__()
        self.job = job
        #: The run whose log is shown (or being looked up); None until the job has a run.
        self.log_run_id: str | None = None
        self._folds_seen = False

    def compose(self) -> ComposeResult:
        """Summary, the traceback (if any) and the resolved spec, scrollable; below them the job log."""
        with Vertical(classes="dialog wide-dialog tall-dialog"):
            yield Static(f"Job {self.job['id']}", classes="dialog-title")
            with VerticalScroll(id="job-details", classes="dialog-scroll"):
                yield Static(job_summary(self.job), id="job-summary")
                yield Static("folds (where each runs)", id="job-folds-label", classes="field-label")
                yield Static("", id="job-folds")
                if self.job.get("traceback"):
                    yield Static("traceback (last lines of the job log)", classes="field-label")
                    yield Static(self.job["traceback"], markup=False, classes="traceback")
                yield Static("spec", classes="field-label")
                yield Static(spec_lines(self.job.get("spec") or {}), markup=False, classes="spec")
            yield LogTail(id="job-log")
            yield Static(self._keys(), id="job-keys", classes="dialog-keys")

    def _keys(self) -> str:
        """Only the keys that act on this job in its current state."""
        keys = []
        if self.job.get("run_id"):
            keys.append("[b]o[/b] open run")
        if self.job["status"] in ("queued", "running") and not self.job.get("cancel_requested"):
            keys.append("[b]c[/b] cancel")
        if self.job["status"] in ("failed", "cancelled"):
            keys.append("[b]R[/b] retry")
        if self.job.get("run_id"):
            keys.append("[b]tab[/b] details / log")
        keys.append("[b]esc[/b] close")
        return "   ".join(keys)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """c and R act only in the states they apply to."""
        if action == "cancel":
            return self.job["status"] in ("queued", "running") and not self.job.get("cancel_requested")
        if action == "requeue":
            return self.job["status"] in ("failed", "cancelled")
        if action == "open_run":
            return bool(self.job.get("run_id"))
        return True

    def action_cancel(self) -> None:
        """Cancel this job (the app asks first)."""
        console(self).confirm_cancel(int(self.job["id"]))

    def action_requeue(self) -> None:
        """Queue this job again (the app asks first)."""
        console(self).confirm_requeue(int(self.job["id"]))

    @property
    def job_log(self) -> LogTail:
        """The job log widget."""
        return self.query_one("#job-log", LogTail)

    def on_mount(self) -> None:
        """Arrow keys scroll the details; the log starts following once the job's run is known."""
        self.query_one("#job-details", VerticalScroll).focus()
        self.job_log.border_title = f"job log (last {TAIL_LINES} lines, live)"
        self.query_one("#job-folds-label").display = False
        self.query_one("#job-folds").display = False
        self._locate_log()
        self._load_folds(int(self.job["id"]))

    def on_overview_changed(self, message: OverviewChanged) -> None:
        """A poll's job row: refresh the summary, and find the log once the job has a run.

        The status line of the screen behind stays live too (only the top screen hears of polls).
        A job off the jobs table's page (a filter, a requeue that moved it) is read on its own.
        """
        if not self.is_mounted:
            return
        if len(self.app.screen_stack) > 1:
            console(self).refresh_status(self.app.screen_stack[-2])
        row = message.overview.job(self.job["id"])
        if row is None:
            self._load_row(int(self.job["id"]))
            return
        self._show_row(row)

    @work(thread=True, exclusive=True, exit_on_error=False, group="job-row")
    def _load_row(self, job_id: int) -> None:
        """Read the job's row off the UI thread."""
        try:
            row = dict(vars(console(self).store.get_job(job_id)))
        except (FsatError, sqlite3.Error):
            return  # deleted, or a busy moment: the next poll tries again
        self.post_message(JobRowLoaded(row))

    def on_job_row_loaded(self, message: JobRowLoaded) -> None:
        """Show the row read on its own."""
        if self.is_mounted:
            self._show_row(message.row)

    def _show_row(self, row: dict) -> None:
        self.job.update(row)
        self.query_one("#job-summary", Static).update(job_summary(self.job))
        self.query_one("#job-keys", Static).update(self._keys())
        if self.job.get("status") == "running" or not self._folds_seen:
            self._load_folds(int(self.job["id"]))
        log = self.job_log
        if self.job.get("run_id") != self.log_run_id:
            self._locate_log()
        elif log.path is not None and log.observer is None:
            log.follow(log.path)  # its directory may exist by now

    @work(thread=True, exclusive=True, exit_on_error=False, group="job-folds")
    def _load_folds(self, job_id: int) -> None:
        """Read where the job's folds run, off the UI thread."""
        try:
            rows = console(self).store.fold_tasks(job_id)
        except sqlite3.Error:
            return  # an older database, or a busy moment: the next poll tries again
        self.post_message(FoldsLoaded(job_id, rows))

    def on_folds_loaded(self, message: FoldsLoaded) -> None:
        """Show the placement table once the job has submitted folds."""
        if message.job_id != self.job["id"] or not self.is_mounted:
            return
        table = fold_placement(message.rows)
        self._folds_seen = self._folds_seen or table is not None
        self.query_one("#job-folds-label").display = table is not None
        folds = self.query_one("#job-folds", Static)
        folds.display = table is not None
        if table is not None:
            folds.update(table)

    def _locate_log(self) -> None:
        run_id = self.job.get("run_id")
        self.log_run_id = str(run_id) if run_id else None
        # No run, no log: no empty box (the summary says why), and the details take its room.
        self.job_log.display = self.log_run_id is not None
        self.query_one("#job-details").set_class(self.log_run_id is None, "-full")
        if self.log_run_id is None:
            self.job_log.show_placeholder("no log yet: the job has not started a run")
            return
        self._find_log(self.log_run_id)

    @work(thread=True, exclusive=True, exit_on_error=False, group="job-log")
    def _find_log(self, run_id: str) -> None:
        """Look up the run directory off the UI thread."""
        try:
            run = console(self).store.get_run(run_id)
        except sqlite3.Error as err:
            self.post_message(LogLocated(run_id, None, f"could not look up run {run_id}: {err}"))
            return
        if run is None:
            self.post_message(LogLocated(run_id, None, f"no log yet: run {run_id} is not in the database"))
        elif not run.get("run_dir"):
            self.post_message(LogLocated(run_id, None, f"run {run_id} has no run directory, so no job log"))
        else:
            self.post_message(LogLocated(run_id, Path(run["run_dir"]) / JOB_LOG))

    def on_log_located(self, message: LogLocated) -> None:
        """Follow the log (unless the job moved on to another run meanwhile)."""
        if message.run_id != self.log_run_id:
            return
        if message.path is None:
            self.job_log.show_placeholder(message.problem)
        else:
            self.job_log.follow(message.path, missing="no log yet")

    def action_close(self) -> None:
        """Close."""
        self.dismiss(None)

    def action_open_run(self) -> None:
        """Close and open the job's run."""
        if self.job.get("run_id"):
            self.dismiss(str(self.job["run_id"]))
        else:
            self.notify("This job has no run yet.", severity="warning")
