"""The engine worker process that the console starts, watches and stops.

Jobs run in a separate ``python -m engine.worker`` process. The console starts
one when the ``workers`` table shows none alive (a worker counts as alive while
its heartbeat is younger than ``WORKER_MAX_AGE``), in its own session so that
it keeps running after the console closes, and reports one that exits before
it ever showed up alive. On quit it stops the worker it started only when that
worker has nothing queued or running. A worker started elsewhere is never
touched.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from engine.store import Store
from fsat_console.live import WORKER_MAX_AGE


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


class WorkerProcess:
    """The worker this console started (if any), and what went wrong with it."""

    def __init__(self, db_path: Path, log_path: Path, *, keep: bool = False) -> None:
        """``keep``: quitting leaves an idle worker started here running (a busy one always keeps running)."""
        self.db_path = db_path
        self.log_path = log_path
        self.keep = keep
        #: The process started here, until it is seen to have exited.
        self.process: subprocess.Popen | None = None
        #: Why the last start failed or the worker started here died; cleared by the next start.
        self.problem: str | None = None

    @property
    def pid(self) -> int | None:
        """The pid of the worker started here, or None."""
        return self.process.pid if self.process is not None else None

    def start_unless_alive(self, store: Store) -> str | None:
        """Start a worker unless one is alive or the one started here is still coming up.

        Returns None when it started one, else what a user who asked for a
        worker should be told. Raises ``sqlite3.Error`` when the workers table
        cannot be read and ``OSError`` when the process cannot be started.
        Runs in a thread: it reads the database and starts a process.
        """
        alive = store.live_workers(WORKER_MAX_AGE)
        if alive:
            return f"A worker is already running (pid {alive[0]['pid']})."
        process = self.process
        if process is not None and process.poll() is None:
            return f"The worker (pid {process.pid}) is starting."
        self.process = spawn_worker(self.db_path, self.log_path)
        self.problem = None
        return None

    def check_exit(self, live_workers: list[dict]) -> str | None:
        """After a poll: why the worker started here exited before it ever showed up alive, or None.

        A worker that exited is forgotten (its pid may be reused); one that
        exited cleanly, or after it was seen in ``live_workers``, is no problem.
        """
        process = self.process
        if process is None or self.problem:
            return None
        code = process.poll()
        if code is None:
            return None
        if self.process is process:
            self.process = None
        seen = any(w.get("pid") == process.pid for w in live_workers)
        if code != 0 and not seen:
            return f"the worker exited with code {code}; see {self.log_path}"
        return None

    def stop_if_idle(self, store: Store) -> str:
        """On quit: SIGTERM the worker started here when it has nothing to do; what was done, in words.

        Returns "" when no worker started here is running.
        """
        process = self.process
        if process is None or process.poll() is not None:
            return ""
        if self.keep:
            return f"the worker (pid {process.pid}) keeps running; its log is {self.log_path}"
        try:
            busy = store.count_jobs("running", "queued")
        except sqlite3.Error:
            busy = 1  # cannot tell: leave it alone
        if busy:
            return (f"the worker (pid {process.pid}) keeps running {busy} queued or running job(s); "
                    f"its log is {self.log_path}")
        process.terminate()  # the worker stops cleanly on SIGTERM
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        return f"stopped the idle worker (pid {process.pid}) this console started"
