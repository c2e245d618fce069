"""fsat-console: queue 5-fold training runs and watch their LWLRAP arrive live.

``fsat-console [--db PATH] [--data DIR] [--demo] [--no-worker]``

The console only reads and queues: jobs run in a separate ``python -m
engine.worker`` process that the console starts when none is alive and that
keeps running after the console closes. All state is in the SQLite database;
the console polls it on its own read-only connection (``fsat_console.live``)
and never imports torch, librosa, sklearn or scipy, so it starts in well under
a second.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Iterable

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.timer import Timer
from textual.worker import Worker, WorkerState

from engine.errors import FsatError
from engine.store import Store, StoreError, default_db_path, runs_root
from fsat_console.live import (WORKER_MAX_AGE, LiveError, LiveUpdate, Overview, Poller,
                               describe_error)
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

#: Where ``--demo`` writes the demo dataset unless ``--data`` says otherwise.
DEFAULT_DEMO_ROOT = Path("demo_data")


def worker_log_path(db_path: Path) -> Path:
    """The log of a worker started by the console: ``worker.log`` beside the database."""
    return db_path.with_name("worker.log")


def spawn_worker(db_path: Path, log_path: Path) -> subprocess.Popen:
    """Start ``python -m engine.worker --db PATH`` detached from the console.

    Its own session (no SIGINT/SIGHUP from the console's terminal), output
    appended to ``log_path``: closing the console leaves it running.
    """
    env = dict(os.environ)
    project = str(Path(__file__).resolve().parent.parent)
    # Keep ``engine`` importable whatever the working directory.
    env["PYTHONPATH"] = project + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "engine.worker", "--db", str(db_path)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)


class FsatConsole(App):
    """The experiment console: runs, jobs, live scores, queueing."""

    CSS_PATH = "console.tcss"
    TITLE = "fsat-console"

    BINDINGS = [
        Binding("q", "quit", "Quit", tooltip="Quit the console (a running worker and its job keep going)"),
        Binding("n", "new_job", "New job", tooltip="Queue a training job from a preset"),
        Binding("r", "refresh", "Refresh", tooltip="Reload everything from the database now"),
        Binding("w", "start_worker", "Start worker", tooltip="Start a worker when none is alive"),
        Binding("question_mark", "help", "Help", key_display="?", tooltip="This help"),
    ]

    def __init__(self, db_path: Path | str, data_root: Path | str | None = None, start_worker: bool = False,
                 poll_interval: float = 0.5, *, demo: bool = False, worker_log: Path | str | None = None,
                 demo_options: dict | None = None) -> None:
        """``demo_options`` go to ``write_demo_dataset`` (e.g. smaller clip counts)."""
        super().__init__()
        self.db_path = Path(db_path).expanduser().resolve()
        self.data_root = Path(data_root).expanduser().resolve() if data_root else None
        self.start_worker_on_mount = start_worker
        self.poll_interval = poll_interval
        self.demo = demo
        self.demo_options = dict(demo_options or {})
        self.worker_log = Path(worker_log) if worker_log else worker_log_path(self.db_path)
        # Opened for reading: start-up and every read answer even while another
        # process holds the write lock. The writing connection opens on the first
        # write (enqueue, cancel), always in a thread; its shorter busy timeout
        # than the engine's makes a stuck lock show up as a message.
        self.store = Store(self.db_path, timeout=5.0, lazy=True)
        self.poller = Poller(self.db_path)
        self.overview: Overview | None = None
        self.worker_process: subprocess.Popen | None = None
        self.spawn_problem: str | None = None
        self.live_problem: str | None = None
        self._watched: tuple[str, int] | None = None
        self._force = True
        self._poll_in_flight = False
        self._poll_timer: Timer | None = None
        # The ensemble screen's choices and loaded arrays outlive the screen.
        self.blend_state = BlendState()
        self.blend_bench = BlendBench()

    def get_default_screen(self) -> Screen:
        """The runs-and-jobs screen is the base of the stack."""
        return MainScreen()

    def on_mount(self) -> None:
        """Start polling; start a worker if asked and none is alive; prepare the demo if asked."""
        self.sub_title = str(self.db_path)
        self._start_poll()
        if self.start_worker_on_mount:
            self.ensure_worker()
        if self.demo:
            self.prepare_demo()

    def on_unmount(self) -> None:
        """Close the connections; a worker the console started keeps running."""
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
        self._poll(self._watched, force)

    @work(thread=True, exclusive=True, exit_on_error=False, group="live")
    def _poll(self, watch: tuple[str, int] | None, force: bool) -> None:
        """Poll the database on the poller's own connection and post what changed."""
        try:
            overview, detail = self.poller.poll(watch, force=force)
        except Exception as err:  # every failure becomes a message, never a traceback
            self.post_message(LiveError(describe_error(err, self.db_path)))
            return
        self.post_message(LiveUpdate(overview, detail))

    def _poll_done(self) -> None:
        self._poll_in_flight = False
        if self._poll_timer is not None:
            self._poll_timer.stop()
        delay = 0.01 if self._force else self.poll_interval
        self._poll_timer = self.set_timer(delay, self._start_poll, name="poll")

    def request_refresh(self) -> None:
        """Poll now (or right after the poll in flight), reloading everything."""
        self._force = True
        if not self._poll_in_flight:
            if self._poll_timer is not None:
                self._poll_timer.stop()
            self._start_poll()

    def on_live_update(self, message: LiveUpdate) -> None:
        """Hand new data to the screen that is shown; other screens catch up when resumed."""
        if not self.screen_stack:  # a poll that finished while the console was closing
            return
        if self.live_problem is not None:
            self.live_problem = None
            self.notify("The database is reachable again.", title="Live updates")
        if message.overview is not None:
            had_worker = bool(self.overview and self.overview.workers)
            self.overview = message.overview
            self._check_spawned_worker()
            if had_worker != bool(self.overview.workers):
                self.refresh_bindings()
        screen = self.screen
        if message.overview is not None and hasattr(screen, "show_overview"):
            screen.show_overview(self.overview)
        if message.detail is not None and hasattr(screen, "show_detail"):
            screen.show_detail(message.detail)
        self._poll_done()

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
            pid = self.worker_process.pid if self.worker_process is not None else None
            status.show(self.overview, spawned_pid=pid, spawn_problem=self.spawn_problem,
                        live_problem=self.live_problem)

    def follow_run(self, screen: Screen) -> None:
        """Load this run screen's run with every poll from now on."""
        self._watched = screen.watch_key  # type: ignore[attr-defined]
        self.request_refresh()

    def unfollow_run(self, screen: Screen) -> None:
        """Stop loading the run of a screen that is no longer shown."""
        if self._watched == getattr(screen, "watch_key", None):
            self._watched = None

    # -- the worker process -------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="spawn")
    def ensure_worker(self, announce: bool = False) -> None:
        """Start a worker unless one is alive (or one started by us is still coming up).

        ``announce`` says so when nothing needed starting (the user pressed w).
        """
        try:
            alive = self.store.live_workers(WORKER_MAX_AGE)
        except sqlite3.Error as err:
            self.post_message(LiveError(describe_error(err, self.db_path)))
            return
        if alive:
            if announce:
                self.call_from_thread(self.notify, f"A worker is already running (pid {alive[0]['pid']}).")
            return
        if self.worker_process is not None and self.worker_process.poll() is None:
            if announce:
                self.call_from_thread(self.notify, f"The worker (pid {self.worker_process.pid}) is starting.")
            return
        try:
            process = spawn_worker(self.db_path, self.worker_log)
        except OSError as err:
            self.call_from_thread(self._worker_failed, f"could not start a worker: {err}")
            return
        self.call_from_thread(self._worker_started, process)

    def _worker_started(self, process: subprocess.Popen) -> None:
        self.worker_process = process
        self.spawn_problem = None
        self.notify(f"Started a worker (pid {process.pid}); its log is {self.worker_log}", title="Worker",
                    markup=False)
        self.refresh_status()

    def _worker_failed(self, text: str) -> None:
        self.spawn_problem = text
        self.notify(text, title="Worker", severity="error", timeout=10, markup=False)
        self.refresh_status()

    def _check_spawned_worker(self) -> None:
        """Report a worker we started that exited before it ever showed up alive."""
        process = self.worker_process
        if process is None or self.spawn_problem:
            return
        code = process.poll()
        if code is None:
            return
        seen = any(w.get("pid") == process.pid for w in (self.overview.workers if self.overview else []))
        if code != 0 and not seen:
            self._worker_failed(f"the worker exited with code {code}; see {self.worker_log}")
        self.worker_process = None

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
        self.spawn_problem = None
        self.ensure_worker(announce=True)

    def action_new_job(self) -> None:
        """Open the queue dialog."""
        self.open_queue()

    def action_help(self) -> None:
        """Show every key and where the data lives."""
        from fsat_console.screens.run import RunScreen

        sections = [
            ("Everywhere", binding_rows(self, self.BINDINGS) + [("^p", "Command palette: every screen and run")]),
            ("Runs and jobs", binding_rows(self, MainScreen.BINDINGS)
             + [("↑ ↓ pgup pgdn", "Move in the focused table")]),
            ("Run", binding_rows(self, RunScreen.BINDINGS)),
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

    def open_queue(self, *, preset: str | None = None, data_root: Path | None = None) -> None:
        """Open the queue dialog, prefilled; a queued job is announced and shown at once."""
        root = data_root or self.default_data_root()
        self.push_screen(QueueScreen(preset=preset, data_root=str(root)), self._queued)

    def _queued(self, job_id: int | None) -> None:
        if job_id is None:
            return
        self.announce_queued(job_id)

    def announce_queued(self, job_id: int) -> None:
        """Say that a job was queued and show it at once."""
        self.notify(f"queued job {job_id}", title="Queue")
        self.request_refresh()

    def open_ensemble(self) -> None:
        """Show the ensemble screen (unless it is already shown)."""
        if not isinstance(self.screen, EnsembleScreen):
            self.push_screen(EnsembleScreen())

    def open_run(self, run_id: str) -> None:
        """Show one run (replacing a run screen that is already shown)."""
        from fsat_console.screens.run import RunScreen

        if isinstance(self.screen, RunScreen):
            self.pop_screen()
        self.push_screen(RunScreen(run_id))

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

    def confirm_cancel(self, job_id: int) -> None:
        """Ask, then cancel: a queued job at once, a running one via its worker."""
        job = self.overview.job(job_id) if self.overview else None
        if job is None:
            try:
                job = dict(vars(self.store.get_job(job_id)))
            except (StoreError, sqlite3.Error) as err:
                self.notify(str(err), severity="error", markup=False)
                return
        if job["status"] not in ("queued", "running"):
            self.notify(f"Job {job_id} is {job['status']}; there is nothing to cancel.", severity="warning")
            return
        if job.get("cancel_requested"):
            self.notify(f"Job {job_id} is already being cancelled.", severity="warning")
            return
        what = "stop it and keep its finished folds" if job["status"] == "running" else "remove it from the queue"
        question = (f"Cancel job {job_id} ({job['kind']} {job.get('name')!r}, {job['status']})?\n"
                    f"This will {what}.")

        def answered(yes: bool | None) -> None:
            if yes:
                self.cancel_job(job_id)

        self.push_screen(ConfirmScreen(question, yes="Cancel job", no="Keep it"), answered)

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
        """Palette entries for every screen and every run, plus Textual's own."""
        yield SystemCommand("Runs and jobs", "The main screen: all runs and the job queue", self.go_home)
        yield SystemCommand("Queue a training job", "Pick a preset, a data root and overrides",
                            self.action_new_job)
        yield SystemCommand("Ensemble", "Blend runs' out-of-fold scores: members, weights, rank/mean, "
                            "calibration, greedy selection; save as a job", self.open_ensemble)
        yield SystemCommand("Help", "Every key, and where the database and logs are", self.action_help)
        yield SystemCommand("Refresh", "Reload everything from the database now", self.action_refresh)
        yield SystemCommand("Start a worker", "Start python -m engine.worker if none is alive",
                            self.action_start_worker)
        for run in (self.overview.runs if self.overview else []):
            run_id = str(run["run_id"])
            cv = run.get("cv_lwlrap")
            score = f" · CV LWLRAP {cv:.4f}" if cv is not None else ""
            yield SystemCommand(f"Run {run_id} {run.get('name') or ''}".strip(),
                                f"{run.get('model') or ''} · {run['status']}{score}",
                                lambda run_id=run_id: self.open_run(run_id))
        for job in (self.overview.jobs[:50] if self.overview else []):
            job_id = int(job["id"])
            yield SystemCommand(f"Job {job_id} {job.get('name') or ''}".strip(),
                                f"{job['kind']} · {job['status']} · details, error and traceback",
                                lambda job_id=job_id: self.open_job(job_id))
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
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between database polls (default 0.5)")
    args = ap.parse_args(argv)
    db_path = args.db or default_db_path()
    try:
        app = FsatConsole(db_path, data_root=args.data, start_worker=not args.no_worker,
                          poll_interval=max(0.1, args.poll), demo=args.demo)
    except FsatError as err:
        # The store's message names the file: one line, no traceback.
        print(f"fsat-console: error: {err}", file=sys.stderr)
        return 2
    except (sqlite3.Error, OSError) as err:
        print(f"fsat-console: error: {db_path}: {err}", file=sys.stderr)
        return 2
    app.run()
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
