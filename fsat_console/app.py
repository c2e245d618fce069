"""fsat-console: queue 5-fold training runs and watch their LWLRAP arrive live.

``fsat-console [--db PATH] [--data DIR] [--demo] [--no-worker]``

The console only reads and queues: jobs run in a separate ``python -m
engine.worker`` process that the console starts when none is alive and that
keeps running after the console closes (``fsat_console.worker_process``). All
state is in the SQLite database; the console polls it on its own read-only
connection (``fsat_console.live``) and never imports torch, librosa, sklearn or
scipy, so it starts in well under a second.

This module holds the app: its keys, its screens and how they open, the poll
loop, and the state the screens share (the tables' views, the pinned and
marked runs), which screens reach typed through ``fsat_console.access.console``.
Each poll's news goes to the screen shown as a message (``OverviewChanged``,
``RunDetailChanged``); keys from the terminal go through
``fsat_console.key_pump``.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from textual import events, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.timer import Timer
from textual.worker import Worker, WorkerState

from engine.errors import FsatError
from engine.store import Store, StoreError, default_db_path, runs_root
from fsat_console.commands import JobCommands, RunCommands
from fsat_console.screens.sweep import SweepCommands
from fsat_console.key_pump import KeyPump
from fsat_console.live import (LiveError, LiveUpdate, Overview, OverviewChanged,
                               Poller, RunDetailChanged, TableView, describe_error)
from fsat_console.screens.confirm import ConfirmScreen
from fsat_console.screens.demo import DemoScreen, demo_state
from fsat_console.screens.ensemble import BlendBench, BlendState, EnsembleScreen
from fsat_console.screens.error import ErrorScreen
from fsat_console.screens.help import HelpScreen, binding_rows
from fsat_console.screens.infer import InferScreen
from fsat_console.screens.job import JobScreen
from fsat_console.screens.main import MainScreen
from fsat_console.screens.queue import QueueScreen
from fsat_console.widgets.status import WorkerStatus
from fsat_console.state import ConsoleState, load_state, state_path
from fsat_console.worker_process import WorkerProcess, worker_log_path

if TYPE_CHECKING:
    import subprocess


def cancel_question(job: dict) -> str:
    """The cancel confirmation: which job, what it is doing, how far it got, what cancelling does."""
    progress = float(job.get("progress") or 0)
    state = job["status"] + (f" at {progress * 100:.0f}%" if job["status"] == "running" else "")
    message = f" — {job['message']}" if job.get("message") and job["status"] == "running" else ""
    what = ("stop it; finished folds are kept and R resumes it later" if job["status"] == "running"
            else "remove it from the queue")
    run = f", run {job['run_id']}" if job.get("run_id") else ""
    return (f"Cancel job {job['id']}: {job['kind']} {job.get('name')!r}{run}?\n"
            f"It is {state}{message}.\nThis will {what}.")


#: Where ``--demo`` writes the demo dataset unless ``--data`` says otherwise.
DEFAULT_DEMO_ROOT = Path("demo_data")


class FsatConsole(App):
    """The experiment console: runs, jobs, live scores, queueing."""

    CSS_PATH = "console.tcss"
    TITLE = "fsat-console"
    #: Screens get ``-narrow`` below 120 columns and ``-short`` below 36 rows (console.tcss lays them out
    #: for 80x24 then).
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]
    #: The palette also searches every run and job in the database (in SQL, as the user types).
    COMMANDS = App.COMMANDS | {RunCommands, JobCommands, SweepCommands}

    BINDINGS = [
        Binding("q", "quit", "Quit", show=False, tooltip="Quit the console (a busy worker keeps its job going; an idle one this "
                "console started stops unless --keep-worker)"),
        Binding("n", "new_job", "New job", show=False, tooltip="Queue a training job from a preset"),
        Binding("r", "refresh", "Refresh", show=False, tooltip="Reload everything from the database now"),
        Binding("w", "start_worker", "Start worker", show=False, tooltip="Start a worker when none is alive"),
        Binding("question_mark", "help", "Help", key_display="?", tooltip="This help"),
    ]

    def __init__(self, db_path: Path | str, data_root: Path | str | None = None, start_worker: bool = False,
                 poll_interval: float = 0.5, *, demo: bool = False, worker_log: Path | str | None = None,
                 demo_options: dict | None = None, keep_worker: bool = False) -> None:
        """``demo_options`` go to ``write_demo_dataset`` (e.g. smaller clip counts).

        ``keep_worker`` keeps an idle worker that this console started running after quit
        (by default quitting stops it; a busy one always keeps running its job).
        """
        super().__init__()
        self.db_path = Path(db_path).expanduser().resolve()
        #: True when this console created the database file (it says where, once it is up).
        self.created_db = not self.db_path.exists()
        # The tables' views, the pinned and the marked runs: as the last console on this database left them.
        kept = load_state(state_path(self.db_path))
        self.run_view: TableView = kept.run_view
        self.job_view: TableView = kept.job_view
        #: The run deltas are taken against (``p`` pins it), and the runs marked for comparison.
        self.pinned_run: str | None = kept.pinned_run
        self.pinned_cv: float | None = kept.pinned_cv
        self.marked_runs: list[str] = kept.marked_runs
        #: A job just queued: the jobs table moves its cursor there once it shows it.
        self.select_job: int | None = None
        #: What quitting did to the worker this console started (printed after the console closes).
        self.exit_note: str = ""
        self.key_pump = KeyPump(self)
        self.data_root = Path(data_root).expanduser().resolve() if data_root else None
        self.start_worker_on_mount = start_worker
        self.poll_interval = poll_interval
        self.demo = demo
        self.demo_options = dict(demo_options or {})
        self.worker_log = Path(worker_log) if worker_log else worker_log_path(self.db_path)
        #: The worker process this console starts when none is alive.
        self.engine_worker = WorkerProcess(self.db_path, self.worker_log, keep=keep_worker)
        # Opened for reading: start-up and every read answer even while another
        # process holds the write lock. The writing connection opens on the first
        # write (enqueue, cancel), always in a thread; its shorter busy timeout
        # than the engine's makes a stuck lock show up as a message.
        self.store = Store(self.db_path, timeout=5.0, lazy=True)
        self.poller = Poller(self.db_path)
        self.overview: Overview | None = None
        self.live_problem: str | None = None
        self._watched: tuple[str, int] | None = None
        self._force = True
        #: The next poll reloads the watched run even if nothing changed (a run screen just opened).
        self._force_detail = False
        self._poll_in_flight = False
        self._poll_timer: Timer | None = None
        self._preloaded = False
        self._frozen = False
        self._unmounted = False
        # The ensemble screen's choices and loaded arrays outlive the screen.
        self.blend_state = BlendState()
        self.blend_bench = BlendBench()

    def get_default_screen(self) -> Screen:
        """The runs-and-jobs screen is the base of the stack."""
        return MainScreen()

    def on_mount(self) -> None:
        """Start polling; start a worker if asked and none is alive; prepare the demo if asked."""
        self.sub_title = str(self.db_path)
        if self.created_db:
            self.notify(f"No database was here, so a new one was created: {self.db_path}\n"
                        "Quit and start with --db PATH (or set FSAT_DB) to use another.",
                        title="New database", timeout=12, markup=False)
        self._start_poll()
        self.adopt_left_worker()
        if self.start_worker_on_mount:
            self.ensure_worker()
        if self.demo:
            self.prepare_demo()

    async def action_quit(self) -> None:
        """Quit; an idle worker this console started is stopped first (unless ``keep_worker``)."""
        self.exit_note = self.engine_worker.stop_if_idle(self.store)
        self.exit()

    @property
    def worker_process(self) -> subprocess.Popen | None:
        """The worker process this console started, until it is seen to have exited."""
        return self.engine_worker.process

    def on_unmount(self) -> None:
        """Close the connections; a busy worker the console started keeps running."""
        self._unmounted = True
        try:
            ConsoleState(self.pinned_run, self.pinned_cv, list(self.marked_runs), self.run_view,
                         self.job_view).save(state_path(self.db_path))
        except OSError:
            pass  # a read-only folder: the next console starts from the defaults
        if self._frozen:
            import gc

            # What start-up froze becomes collectable again (tests and benchmarks start many consoles).
            gc.unfreeze()
            self._frozen = False
        if self._poll_timer is not None:
            self._poll_timer.stop()
        self.poller.close()
        self.store.close()

    # -- live polling (one poll at a time; the next is scheduled when one is handled) --

    def _start_poll(self) -> None:
        if self._poll_in_flight:
            return
        self._poll_in_flight = True
        force, self._force = self._force, False
        force_detail, self._force_detail = self._force_detail, False
        self._poll(self._watched, force, force_detail, (self.run_view, self.job_view))

    @work(thread=True, exclusive=True, exit_on_error=False, group="live")
    def _poll(self, watch: tuple[str, int] | None, force: bool, force_detail: bool,
              views: tuple[TableView, TableView]) -> None:
        """Poll the database on the poller's own connection and post what changed."""
        try:
            overview, detail = self.poller.poll(watch, force=force, force_detail=force_detail, views=views)
        except Exception as err:  # every failure becomes a message, never a traceback
            self.post_message(LiveError(describe_error(err, self.db_path)))
            return
        self.post_message(LiveUpdate(overview, detail))

    def _poll_done(self) -> None:
        self._poll_in_flight = False
        if self._poll_timer is not None:
            self._poll_timer.stop()
        delay = 0.01 if self._force or self._force_detail else self.poll_interval
        self._poll_timer = self.set_timer(delay, self._start_poll, name="poll")

    def request_refresh(self) -> None:
        """Poll now (or right after the poll in flight), reloading everything."""
        self._force = True
        if not self._poll_in_flight:
            if self._poll_timer is not None:
                self._poll_timer.stop()
            self._start_poll()

    def on_live_update(self, message: LiveUpdate) -> None:
        """Keep the new overview and post what changed to the screen shown; other screens catch up when resumed."""
        if not self.screen_stack:  # a poll that finished while the console was closing
            return
        if self.live_problem is not None:
            self.live_problem = None
            self.notify("The database is reachable again.", title="Live updates")
        screen = self.screen
        if message.overview is not None:
            had_worker = bool(self.overview and self.overview.workers)
            self.overview = message.overview
            self._check_spawned_worker()
            if had_worker != bool(self.overview.workers):
                self.refresh_bindings()
            self._announce_ended(message.overview.ended)
            screen.post_message(OverviewChanged(message.overview))
            if not self._preloaded:
                self._preloaded = True
                self.call_after_refresh(self._after_first_paint)
        if message.detail is not None:
            screen.post_message(RunDetailChanged(message.detail))
        self._poll_done()

    def _after_first_paint(self) -> None:
        """Once the first page is on screen: import the run screen, then freeze what start-up made."""
        self._preload_run_screen()

    @work(thread=True, exclusive=True, exit_on_error=False, group="preload")
    def _preload_run_screen(self) -> None:
        """Import the run screen (and plotext, ~0.1 s) now rather than on the first enter.

        Then move every object start-up made (Textual, Rich, the CSS, the
        modules) out of the garbage collector's sight: a full collection walked
        them all, 0.1 s or more at a time, at whatever moment the user was
        opening a run (``gc.freeze``, after one collection so that no garbage
        is frozen; undone when the console closes).
        """
        import fsat_console.screens.run  # noqa: F401

        self.call_from_thread(self._freeze_startup)

    def _freeze_startup(self) -> None:
        import gc

        if self._unmounted:
            return  # closing already: nothing left to unfreeze it
        gc.collect()
        gc.freeze()
        self._frozen = True

    def _announce_ended(self, ended: list[dict]) -> None:
        """A notification for every job that finished or failed since the last poll."""
        for job in ended:
            what = f"Job {job['id']} {job['kind']} {job.get('name') or ''!r}"
            if job["status"] == "failed":
                self.notify(f"{what} failed: {(job.get('error') or job.get('message') or '').strip()[:300]}",
                            title="Job failed", severity="error", timeout=15, markup=False)
            else:
                run = f" → run {job['run_id']}" if job.get("run_id") else ""
                self.notify(f"{what} finished{run}: {job.get('message') or 'done'}", title="Job done",
                            timeout=8, markup=False)

    def set_views(self, *, runs: TableView | None = None, jobs: TableView | None = None) -> None:
        """Change what the tables ask of the database (filter, sort, page) and poll at once."""
        if runs is not None:
            self.run_view = runs
        if jobs is not None:
            self.job_view = jobs
        self.request_refresh()

    def pin_run(self, run_id: str | None, cv: float | None = None) -> None:
        """Pin a baseline run (deltas in the runs table and the compare screen), or unpin with None."""
        self.pinned_run = run_id
        self.pinned_cv = cv

    def on_live_error(self, message: LiveError) -> None:
        """Tell the user once per distinct problem, keep polling."""
        if not self.screen_stack:
            return
        if message.text != self.live_problem:
            self.live_problem = message.text
            self.notify(message.text, title="Database problem", severity="error", timeout=8, markup=False)
            self.refresh_status()
        self._poll_done()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A poll worker that died unexpectedly must not stop live updates."""
        if event.worker.group == "live" and event.state == WorkerState.ERROR:
            self.on_live_error(LiveError(describe_error(event.worker.error or RuntimeError("poll failed"),
                                                        self.db_path)))

    def refresh_status(self, screen: Screen | None = None) -> None:
        """Repaint the status line of ``screen`` (default: the screen shown)."""
        screen = screen or self.screen
        for status in screen.query(WorkerStatus):
            status.show(self.overview, spawned_pid=self.engine_worker.pid, spawn_problem=self.engine_worker.problem,
                        live_problem=self.live_problem)

    @property
    def watched_run(self) -> tuple[str, int] | None:
        """(run id, class fold) that every poll loads in full, or None."""
        return self._watched

    def follow_run(self, watch: tuple[str, int]) -> None:
        """Load this (run id, class fold) with every poll from now on, starting with a poll now.

        Only the run is reloaded in full: the overview (pages of runs and jobs)
        comes only if it changed, so opening a run does not wait for the
        tables' reload (tens of milliseconds at 10,000 runs).
        """
        self._watched = watch
        self._force_detail = True
        if not self._poll_in_flight:
            if self._poll_timer is not None:
                self._poll_timer.stop()
            self._start_poll()

    def unfollow_run(self, watch: tuple[str, int]) -> None:
        """Stop loading this (run id, class fold): its screen is no longer shown."""
        if self._watched == watch:
            self._watched = None

    # -- the worker process -------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="spawn")
    def ensure_worker(self, announce: bool = False) -> None:
        """Start a worker unless one is alive (or one started by us is still coming up).

        ``announce`` says so when nothing needed starting (the user pressed w).
        """
        try:
            not_started = self.engine_worker.start_unless_alive(self.store)
        except sqlite3.Error as err:
            self.post_message(LiveError(describe_error(err, self.db_path)))
            return
        except OSError as err:
            self.call_from_thread(self._worker_failed, f"could not start a worker: {err}")
            return
        if not_started is None:
            self.call_from_thread(self._worker_started)
        elif announce:
            self.call_from_thread(self.notify, not_started)

    @work(thread=True, exclusive=True, exit_on_error=False, group="adopt")
    def adopt_left_worker(self) -> None:
        """Take over a worker an earlier console left busy, and say so."""
        try:
            told = self.engine_worker.adopt_left(self.store)
        except sqlite3.Error:
            return  # the poller reports an unreadable database
        if told:
            self.call_from_thread(self.notify, told, title="Worker", timeout=10, markup=False)

    def _worker_started(self) -> None:
        self.notify(f"Started a worker (pid {self.engine_worker.pid}); its log is {self.worker_log}",
                    title="Worker", markup=False)
        self.refresh_status()

    def _worker_failed(self, text: str) -> None:
        self.engine_worker.problem = text
        self.notify(text, title="Worker", severity="error", timeout=10, markup=False)
        self.refresh_status()

    def _check_spawned_worker(self) -> None:
        """Report a worker we started that exited before it ever showed up alive."""
        problem = self.engine_worker.check_exit(self.overview.workers if self.overview else [])
        if problem is not None:
            self._worker_failed(problem)

    # -- actions ---------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Hide "start worker" from the footer while a worker is alive."""
        if action == "start_worker" and self.overview is not None and self.overview.workers:
            return False
        return True

    def action_refresh(self) -> None:
        """Reload everything from the database now."""
        self.request_refresh()
        self.notify("Refreshed.", timeout=1.5)

    def action_start_worker(self) -> None:
        """Start a worker process (if none is alive)."""
        self.engine_worker.problem = None
        self.ensure_worker(announce=True)

    def action_new_job(self) -> None:
        """Open the queue dialog."""
        self.open_queue()

    async def on_event(self, event: events.Event) -> None:
        """Keys from the terminal go through the key pump, to be handed on one at a time."""
        if not self.key_pump.hold(event):
            await super().on_event(event)

    def action_help(self) -> None:
        """Show every key and where the data lives."""
        from engine.filters import field_help
        from fsat_console.screens.compare import CompareScreen
        from fsat_console.screens.plan import PlanScreen
        from fsat_console.screens.run import RunScreen

        sections = [
            ("Everywhere", binding_rows(self, self.BINDINGS) + [("^p", "Command palette: every screen and run")]),
            ("Runs and jobs", binding_rows(self, MainScreen.BINDINGS)
             + [("↑ ↓ pgup pgdn", "Move in the focused table")]),
            ("Filter (/)", [(name, about) for name, about in field_help("runs")]
             + [("", "field:value  field>0.8  field!=x  word*  OR  NOT  -term  ( … ); a bare word matches the "
                     "id or name; time fields take 2026-11-30 or an age: created<2h")]),
            ("Run", binding_rows(self, RunScreen.BINDINGS)),
            ("Compare", binding_rows(self, CompareScreen.BINDINGS)),
            ("Plan (P)", binding_rows(self, PlanScreen.BINDINGS)
             + [("", "Each step under the first step whose run it uses: its state (waiting, held with the reason, "
                     "running with its progress), message and run")]),
            ("Ensemble", binding_rows(self, EnsembleScreen.BINDINGS)
             + [("↑ ↓", "Move between runs"), ("", "The score is the blend's out-of-fold LWLRAP against "
                                                   "the curated labels, recomputed after every change")]),
            ("Queue dialog", binding_rows(self, QueueScreen.BINDINGS)
             + [("↑ ↓", "Choose the preset"), ("tab", "Next field"),
                ("enter", "Queue the job (errors appear under the field at fault)")]),
            ("Inference and baseline dialogs", binding_rows(self, InferScreen.BINDINGS)
             + [("tab", "Next field"), ("space", "Tick or untick a split (out-of-fold, test)")]),
        ]
        where = [
            ("database", str(self.db_path)),
            ("worker log", str(self.worker_log)),
            ("data root", str(self.default_data_root())),
            ("run artifacts", str(runs_root(self.db_path))),
        ]
        self.push_screen(HelpScreen(sections, where))

    def default_data_root(self) -> Path:
        """--data, else the most recently registered dataset, else ./demo_data."""
        if self.data_root is not None:
            return self.data_root
        try:
            datasets = self.store.list_datasets()
        except sqlite3.Error:
            datasets = []
        if datasets:
            return Path(datasets[-1]["root"])
        return DEFAULT_DEMO_ROOT.resolve()

    def open_queue(self, *, preset: str | None = None, data_root: Path | None = None):
        """Open the queue dialog, prefilled; a queued job is announced and shown at once.

        Returns the mount awaitable of the dialog.
        """
        root = data_root or self.default_data_root()
        return self.push_screen(QueueScreen(preset=preset, data_root=str(root)), self._queued)

    def _queued(self, job_id: int | None) -> None:
        if job_id is None:
            return
        self.announce_queued(job_id)

    def announce_queued(self, job_id: int) -> None:
        """Say that a job was queued and show it at once, with the jobs cursor on it."""
        self.notify(f"queued job {job_id}", title="Queue")
        self.select_job = job_id
        self.request_refresh()

    def open_plan(self, plan_id: int | None = None) -> None:
        """Show a plan as a tree; without one, the plan dialog first (the queued plan is shown)."""
        from fsat_console.screens.plan import PlanDialog, PlanScreen

        if plan_id is not None:
            self.push_screen(PlanScreen(plan_id))
            return

        def queued(new_plan: int | None) -> None:
            if new_plan is not None:
                self.notify(f"queued plan {new_plan}", title="Queue")
                self.request_refresh()
                self.push_screen(PlanScreen(new_plan))

        self.push_screen(PlanDialog(data_root=str(self.default_data_root())), queued)

    def open_ensemble(self) -> None:
        """Show the ensemble screen (unless it is already shown)."""
        if not isinstance(self.screen, EnsembleScreen):
            self.push_screen(EnsembleScreen())

    def open_run(self, run_id: str) -> None:
        """Show one run (replacing a run screen that is already shown)."""
        from fsat_console.screens.run import RunScreen

        if isinstance(self.screen, RunScreen):
            self.pop_screen()
        screen = RunScreen(run_id)
        # Load the run while the screen is being built (it shows the answer once mounted).
        self.follow_run(screen.watch_key)
        self.push_screen(screen)

    def open_job(self, job_id: int) -> None:
        """Show a job's details (error, traceback, spec); ``o`` there opens its run."""
        try:
            job = dict(vars(self.store.get_job(job_id)))
        except (StoreError, sqlite3.Error) as err:
            self.notify(str(err), severity="error", markup=False)
            return

        def opened(run_id: str | None) -> None:
            if run_id:
                self.open_run(run_id)

        self.push_screen(JobScreen(job), opened)

    def show_error(self, title: str, message: str) -> None:
        """Explain a problem in a modal."""
        self.push_screen(ErrorScreen(title, message))

    def _job_row(self, job_id: int) -> dict | None:
        job = self.overview.job(job_id) if self.overview else None
        if job is None:
            try:
                job = dict(vars(self.store.get_job(job_id)))
            except (StoreError, sqlite3.Error) as err:
                self.notify(str(err), severity="error", markup=False)
                return None
        return job

    def confirm_cancel(self, job_id: int) -> None:
        """Ask, naming the job, its state and progress; then cancel (queued: at once; running: via its worker)."""
        job = self._job_row(job_id)
        if job is None:
            return
        if job["status"] not in ("queued", "running"):
            self.notify(f"Job {job_id} is {job['status']}; there is nothing to cancel.", severity="warning")
            return
        if job.get("cancel_requested"):
            self.notify(f"Job {job_id} is already being cancelled.", severity="warning")
            return
        self.push_screen(ConfirmScreen(cancel_question(job), yes="Cancel job", no="Keep it"),
                         lambda yes: self.cancel_job(job_id) if yes else None)

    def confirm_requeue(self, job_id: int, *, run_id: str | None = None) -> None:
        """Ask, then queue a failed or cancelled job again (its training run resumes from its checkpoints)."""
        job = self._job_row(job_id)
        if job is None:
            return
        if job["status"] not in ("failed", "cancelled"):
            self.notify(f"Job {job_id} is {job['status']}; only a failed or cancelled job can be queued again.",
                        severity="warning", markup=False)
            return
        run = job.get("run_id") or run_id
        what = (f"Run {run} resumes: finished folds are kept and the stopped fold continues from its last "
                "checkpoint." if run else "It starts from the beginning (it made no run yet).")
        question = (f"Queue job {job_id} again?\n{job['kind']} {job.get('name')!r}, {job['status']} at "
                    f"{float(job.get('progress') or 0) * 100:.0f}% ({job.get('message') or ''}).\n{what}")
        self.push_screen(ConfirmScreen(question, yes="Queue again", no="Leave it", danger=False),
                         lambda yes: self.requeue_job(job_id) if yes else None)

    @work(thread=True, exclusive=False, exit_on_error=False, group="requeue")
    def requeue_job(self, job_id: int) -> None:
        """Requeue off the UI thread and put the jobs cursor on it."""
        try:
            job = self.store.requeue_job(job_id)
        except (StoreError, sqlite3.Error) as err:
            self.call_from_thread(self.notify, f"Could not queue job {job_id} again: {err}", severity="error",
                                  markup=False)
            return
        self.call_from_thread(self.notify, f"Job {job_id} is queued again"
                              + (f"; run {job.run_id} resumes." if job.run_id else "."), title="Queue")
        self.select_job = job_id
        self.call_from_thread(self.request_refresh)

    def open_compare(self, run_ids: list[str]) -> None:
        """Compare runs; the pinned run is the baseline when it is among them."""
        from fsat_console.screens.compare import CompareScreen

        baseline = self.pinned_run if self.pinned_run in run_ids else run_ids[0]
        self.push_screen(CompareScreen(run_ids, baseline))

    @work(thread=True, exclusive=False, exit_on_error=False, group="cancel")
    def cancel_job(self, job_id: int) -> None:
        """Cancel off the UI thread (a short write transaction) and report."""
        try:
            status = self.store.request_cancel(job_id)
        except (StoreError, sqlite3.Error) as err:
            self.call_from_thread(self.notify, f"Could not cancel job {job_id}: {err}", severity="error",
                                  markup=False)
            return
        if status == "cancelled":
            text = f"Cancelled job {job_id}."
        elif status == "running":
            text = f"Asked the worker to stop job {job_id}."
        else:
            text = f"Job {job_id} is {status}; nothing to cancel."
        self.call_from_thread(self.notify, text, title="Cancel")
        self.call_from_thread(self.request_refresh)

    # -- demo -----------------------------------------------------------------------------

    def prepare_demo(self) -> None:
        """Make sure the demo dataset exists (writing it with a progress bar), then offer to queue it."""
        root = self.data_root or DEFAULT_DEMO_ROOT.resolve()
        self.data_root = root
        state = demo_state(root)

        def written(ok: bool | None) -> None:
            if ok:
                self.open_queue(preset="demo", data_root=root)

        if state == "ready":
            self.open_queue(preset="demo", data_root=root)
        elif state == "missing":
            self.push_screen(DemoScreen(root, options=self.demo_options), written)
        else:
            def replace(yes: bool | None) -> None:
                if yes:
                    self.push_screen(DemoScreen(root, overwrite=True, options=self.demo_options), written)

            self.push_screen(ConfirmScreen(
                f"{root} holds an incomplete dataset (an interrupted write?).\n"
                "Replace its dataset files with a fresh demo dataset? Other files stay.",
                yes="Replace", no="Leave it"), replace)

    # -- command palette --------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Palette entries for every screen, plus Textual's own (runs and jobs: ``fsat_console.commands``)."""
        yield SystemCommand("Runs and jobs", "The main screen: all runs and the job queue", self.go_home)
        yield SystemCommand("Queue a training job", "Pick a preset, a data root and overrides",
                            self.action_new_job)
        yield SystemCommand("Ensemble", "Blend runs' out-of-fold scores: members, weights, rank/mean, "
                            "calibration, greedy selection; save as a job", self.open_ensemble)
        yield SystemCommand("Help", "Every key, and where the database and logs are", self.action_help)
        yield SystemCommand("Refresh", "Reload everything from the database now", self.action_refresh)
        yield SystemCommand("Start a worker", "Start python -m engine.worker if none is alive",
                            self.action_start_worker)
        yield from super().get_system_commands(screen)

    def go_home(self) -> None:
        """Back to the runs-and-jobs screen."""
        while len(self.screen_stack) > 1:
            self.pop_screen()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fsat-console``."""
    ap = argparse.ArgumentParser(
        prog="fsat-console",
        description="Queue 5-fold training runs and watch per-epoch, per-fold and per-class LWLRAP live.")
    ap.add_argument("--db", type=Path, default=None,
                    help="experiments database (default: $FSAT_DB, else ./experiments.db)")
    ap.add_argument("--data", type=Path, default=None,
                    help="dataset root to prefill when queueing (with --demo: where the demo dataset goes)")
    ap.add_argument("--demo", action="store_true",
                    help="create the demo dataset (default ./demo_data) if missing, then offer the demo preset")
    ap.add_argument("--no-worker", action="store_true",
                    help="do not start a worker process when none is alive")
    ap.add_argument("--keep-worker", action="store_true",
                    help="leave an idle worker that this console started running after quitting")
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between database polls (default 0.5)")
    args = ap.parse_args(argv)
    db_path = args.db or default_db_path()
    try:
        app = FsatConsole(db_path, data_root=args.data, start_worker=not args.no_worker,
                          poll_interval=max(0.1, args.poll), demo=args.demo, keep_worker=args.keep_worker)
    except FsatError as err:
        # The store's message names the file: one line, no traceback.
        print(f"fsat-console: error: {err}", file=sys.stderr)
        return 2
    except (sqlite3.Error, OSError) as err:
        print(f"fsat-console: error: {db_path}: {err}", file=sys.stderr)
        return 2
    app.run()
    if app.exit_note:
        print(f"fsat-console: {app.exit_note}", file=sys.stderr)
    if app.created_db:
        print(f"fsat-console: the database is {app.db_path}", file=sys.stderr)
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
