"""The engine worker process that the console starts, watches and stops.

Jobs run in a separate ``python -m engine.worker`` process. The console starts
one when the ``workers`` table shows none alive (a worker counts as alive while
its heartbeat is younger than ``WORKER_MAX_AGE``), in its own session so that
it keeps running after the console closes, and reports one that exits before
it ever showed up alive. On quit it stops the worker it started only when that
worker has nothing queued or running. A worker started elsewhere is never
touched.

A worker left busy by quit is not left to idle forever: quit starts a small
detached watcher (``python -m fsat_console.worker_process --stop-when-idle``)
that stops it once nothing is queued or running, and notes both pids in
``worker.left.json`` beside the database. A console started meanwhile finds
that note, says so, stops the watcher and takes the worker over: its own quit
stops it when idle, or leaves it watched again when busy.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from engine.store import Store
from fsat_console.live import WORKER_MAX_AGE


def worker_log_path(db_path: Path) -> Path:
    """The log of a worker started by the console: ``worker.log`` beside the database."""
    return db_path.with_name("worker.log")


def left_worker_path(db_path: Path) -> Path:
    """The note on a worker a console left busy: ``worker.left.json`` beside the database."""
    return db_path.with_name("worker.left.json")


#: Seconds between the watcher's looks at the queue.
WATCH_POLL = 2.0


def _runs_module(pid: int, module: str) -> bool:
    """True when process ``pid`` exists and its command line names ``module`` (so a reused pid is not ours)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return module.encode() in fh.read()
    except OSError:
        return False


def _terminate(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM a process that is not our child; SIGKILL it when it is still there after ``timeout``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _runs_module(pid, "engine.worker") and not _runs_module(pid, "fsat_console.worker_process"):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def watch_until_idle(db_path: Path, pid: int, poll: float = WATCH_POLL) -> int:
    """The watcher: SIGTERM worker ``pid`` once it is idle and nothing is queued or running; returns 0.

    It ends without touching the worker when the worker is gone or no longer
    heartbeats (its pid may then belong to something else).
    """
    note = left_worker_path(db_path)
    store = Store(db_path)
    try:
        while _runs_module(pid, "engine.worker"):
            try:
                row = next((w for w in store.live_workers(WORKER_MAX_AGE) if w.get("pid") == pid), None)
                if row is None:
                    break
                if row.get("status") == "idle" and not store.count_jobs("running", "queued"):
                    _terminate(pid)
                    break
            except sqlite3.Error:
                pass  # a busy moment: look again
            time.sleep(poll)
    finally:
        store.close()
        try:
            if json.loads(note.read_text()).get("watcher") == os.getpid():
                note.unlink()
        except (OSError, ValueError):
            pass
    return 0


def spawn_detached(args: list[str], log_path: Path) -> subprocess.Popen:
    """Start ``python ARGS`` detached from the console.

    Its own session (no SIGINT/SIGHUP from the console's terminal), output
    appended to ``log_path``: closing the console leaves it running.
    """
    env = dict(os.environ)
    project = str(Path(__file__).resolve().parent.parent)
    # Keep ``engine`` importable whatever the working directory.
    env["PYTHONPATH"] = project + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, *args], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def spawn_worker(db_path: Path, log_path: Path) -> subprocess.Popen:
    """Start ``python -m engine.worker --db PATH`` detached from the console (``spawn_detached``)."""
    return spawn_detached(["-m", "engine.worker", "--db", str(db_path)], log_path)


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
        #: A worker an earlier console left busy, taken over by this one (``adopt_left``).
        self.adopted_pid: int | None = None

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

    def adopt_left(self, store: Store) -> str | None:
        """Take over a worker an earlier console left busy (stopping its watcher); what to tell, or None.

        Raises ``sqlite3.Error`` when the workers table cannot be read. Runs in a thread.
        """
        note = left_worker_path(self.db_path)
        try:
            left = json.loads(note.read_text())
            pid, watcher = int(left["pid"]), int(left.get("watcher") or 0)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        alive = any(w.get("pid") == pid for w in store.live_workers(WORKER_MAX_AGE))
        if watcher and _runs_module(watcher, "fsat_console.worker_process"):
            _terminate(watcher)
        note.unlink(missing_ok=True)
        if not alive or not _runs_module(pid, "engine.worker"):
            return None
        self.adopted_pid = pid
        return (f"A worker an earlier console started (pid {pid}) is still running; quitting stops it "
                f"once it is idle. Its log is {self.log_path}")

    def _running_pid(self) -> int | None:
        """The worker started or taken over here, while it runs."""
        if self.process is not None and self.process.poll() is None:
            return self.process.pid
        if self.adopted_pid is not None and _runs_module(self.adopted_pid, "engine.worker"):
            return self.adopted_pid
        return None

    def stop_if_idle(self, store: Store) -> str:
        """On quit: SIGTERM the worker started (or taken over) here when it has nothing to do; what was done.

        A busy one keeps running, watched by a detached watcher that stops it once the queue is empty.
        Returns "" when no such worker is running.
        """
        pid = self._running_pid()
        if pid is None:
            return ""
        if self.keep:
            return f"the worker (pid {pid}) keeps running; its log is {self.log_path}"
        try:
            busy = store.count_jobs("running", "queued")
        except sqlite3.Error:
            busy = 1  # cannot tell: leave it alone
        if busy:
            watched = self._leave_watched(pid)
            return (f"the worker (pid {pid}) keeps running {busy} queued or running job(s)"
                    + (" and stops once none is left" if watched else "") + f"; its log is {self.log_path}")
        if self.process is not None and self.process.pid == pid:
            self.process.terminate()  # the worker stops cleanly on SIGTERM
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        else:
            _terminate(pid)
        return f"stopped the idle worker (pid {pid}) this console started"

    def _leave_watched(self, pid: int) -> bool:
        """Start the detached watcher for worker ``pid`` and note both; False when it could not start."""
        try:
            watcher = spawn_detached(["-m", "fsat_console.worker_process", "--db", str(self.db_path),
                                      "--stop-when-idle", str(pid)], self.log_path)
            left_worker_path(self.db_path).write_text(json.dumps({"pid": pid, "watcher": watcher.pid}))
        except OSError:
            return False
        return True


def main(argv: list[str] | None = None) -> int:
    """``python -m fsat_console.worker_process --db PATH --stop-when-idle PID``: the watcher (``watch_until_idle``)."""
    ap = argparse.ArgumentParser(prog="fsat_console.worker_process", description=main.__doc__)
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--stop-when-idle", type=int, required=True, metavar="PID")
    args = ap.parse_args(argv)
    return watch_until_idle(args.db, args.stop_when_idle)


if __name__ == "__main__":
    sys.exit(main())
