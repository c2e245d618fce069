"""The engine worker: a supervisor that runs queued jobs, one child process each.

``python -m engine.worker [--db PATH] [--drain] [--poll SECONDS] [--lease SECONDS]
[--executor local|ray] [--ray-address ADDRESS]``

- ``--db``: the database (default ``$FSAT_DB`` or ``./experiments.db``);
- ``--drain``: exit once no job is queued or running, held jobs aside (default: keep polling);
- ``--poll``: seconds between queue polls while idle (default 1);
- ``--lease``: seconds without a heartbeat after which a running job counts
  as abandoned and is requeued (default ``$FSAT_LEASE`` or the store's
  ``DEFAULT_LEASE_SECONDS``);
- ``--executor``: where a job's folds run, ``local`` (default: in the job
  process, one after another) or ``ray`` (tasks on a Ray cluster);
- ``--ray-address``: the cluster (``host:port``); default: a local Ray.

Loop: requeue jobs whose worker died, claim one job, run it in a child
process (``python -m engine.jobs``), watch it (heartbeat, cancel flag, exit
code), record the outcome, repeat. A crash or out-of-memory kill in a job
never takes the worker down. SIGTERM and SIGINT (Ctrl-C, which reaches the
job process too) stop the worker cleanly: the running job is stopped and put
back in the queue, to resume later.

The worker's ``--lease`` travels with each job it claims (stored on the job
row): it heartbeats within it, and other workers judge the job stale by it,
whatever their own lease. Every update it makes to a job is conditional on
still owning that attempt.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from engine.errors import FsatError
from engine.intake import default_run_id
from engine.runs.folder import RunFolder
from engine.sweeps import advance as advance_sweep
from engine.store import DEFAULT_LEASE_SECONDS, Job, Store, default_db_path, new_database_notice, runs_root


def run_id_for(job: Job) -> str:
    """The run id a job writes to (stable across retries, so a requeued job resumes)."""
    return job.run_id or default_run_id(job.kind, job.id)


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGKILL the child when the worker dies, so no orphan keeps training."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class Worker:
    """Claims and supervises jobs until stopped (or, with ``drain``, until the queue is empty)."""

    def __init__(self, db_path: Path | str, *, drain: bool = False, poll: float = 1.0,
                 lease: float = DEFAULT_LEASE_SECONDS, worker_id: str | None = None,
                 grace: float = 5.0, executor: str = "local", ray_address: str | None = None) -> None:
        self.db_path = Path(db_path)
        self.drain = drain
        self.poll = poll
        self.lease = lease
        self.grace = grace
        self.worker_id = worker_id or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        notice = new_database_notice(self.db_path)
        self.store = Store(self.db_path)
        if notice:
            self.log(notice)
        self.stopping = False
        self.child: subprocess.Popen | None = None
        #: Where job processes run their folds (engine.executors); a Ray worker holds a cluster link.
        self.executor = executor
        self.ray_address = ray_address
        self.cluster = None

    def request_stop(self, *_: object) -> None:
        """Signal handler: finish the current step, stop the child, exit."""
        self.stopping = True

    def log(self, text: str) -> None:
        """One line to stderr, prefixed with the time and worker id."""
        print(f"{time.strftime('%H:%M:%S')} [{self.worker_id}] {text}", file=sys.stderr, flush=True)

    def run(self) -> int:
        """The supervisor loop; returns the process exit code."""
        self.store.register_worker(self.worker_id, lease_seconds=self.lease)
        self.log(f"started on {self.db_path} (lease {self.lease:g} s)")
        if self.executor == "ray":
            from engine.executors.cluster import ClusterLink

            self.cluster = ClusterLink(self.store, self.worker_id, self.ray_address, log=self.log)
        try:
            while not self.stopping:
                self.store.worker_heartbeat(self.worker_id)
                for job_id in self.store.requeue_stale():
                    self.log(f"requeued job {job_id}: its worker stopped heartbeating")
                    advance_sweep(self.store, job_id)  # a job out of attempts has ended: its sweep may go on
                if self.cluster is not None and not self.cluster.ready():
                    # No cluster, no claim: jobs stay queued and the reason is on this worker's row.
                    self._sleep(self.poll)
                    continue
                job = self.store.claim(self.worker_id, lease_seconds=self.lease)
                if job is None:
                    # A running job may still come back (its worker may die), so
                    # --drain waits until nothing is queued or running (a job held by a
                    # failed parent does not count: only a requeue releases it).
                    if self.drain and not self.store.count_startable_jobs():
                        self.log("queue empty, exiting (--drain)")
                        break
                    # Heartbeat within our own lease even when told to poll slowly.
                    self._sleep(min(self.poll, self.lease / 2))
                    continue
                self.supervise(job)
                for queued in advance_sweep(self.store, job.id):
                    self.log(f"sweep: queued job {queued} (a point kept by screening)")
        finally:
            if self.cluster is not None:
                self.cluster.close()
            self.store.worker_stopped(self.worker_id)
            self.log("stopped")
            self.store.close()
        return 0

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.1, seconds))

    def supervise(self, job: Job) -> None:
        """Run one job in a child process and record how it ended."""
        run_id = run_id_for(job)
        run_dir = runs_root(self.db_path) / run_id
        try:
            # Not even the log goes into a folder that is another run's (another database's, say).
            RunFolder(run_dir).claim_for(self.store, run_id)
        except FsatError as err:
            if self.store.fail_job(job.id, str(err), None, worker_id=self.worker_id, attempt=job.attempts):
                self.log(f"job {job.id} failed: {err}")
            return
        log_path = run_dir / "job.log"
        self.log(f"job {job.id} ({job.kind} {job.name!r}) attempt {job.attempts} -> {run_dir}")
        cmd = [sys.executable, "-m", "engine.jobs", "--db", str(self.db_path), "--job", str(job.id),
               "--worker", self.worker_id, "--attempt", str(job.attempts), "--run-id", run_id,
               "--run-dir", str(run_dir)]
        env = dict(os.environ)
        # The job may be started from any directory; keep the project importable.
        project = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = project + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # Idle OpenMP threads that spin starve audio decoding on small CPUs
        # (measured in benchmarks/README.md); let them sleep unless told otherwise.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from engine.executors import ADDRESS_ENV, EXECUTOR_ENV

        env[EXECUTOR_ENV] = self.executor
        if self.cluster is not None and self.cluster.address:
            env[ADDRESS_ENV] = self.cluster.address
        with open(log_path, "ab") as log:
            log.write(f"\n=== job {job.id} attempt {job.attempts} worker {self.worker_id} "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
            log.flush()
            self.child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          preexec_fn=_set_parent_death_signal)
        outcome = self._watch(job)
        rc = self.child.returncode
        self.child = None
        owner = {"worker_id": self.worker_id, "attempt": job.attempts}
        if outcome == "finished" and self.stopping:
            # The stop signal reached the job process first (Ctrl-C goes to the
            # whole process group): the job stopped itself without recording.
            outcome = "stopping"
        if outcome == "cancelled":
            if self.store.mark_cancelled(job.id, **owner):
                self.log(f"job {job.id} cancelled")
            return
        if outcome == "stopping":
            if self.store.release_job(job.id, **owner):
                self.log(f"job {job.id} put back in the queue (worker stopping)")
            else:
                self.log(f"job {job.id} {self.store.get_job(job.id).status} (worker stopping)")
            return
        if outcome == "lost":
            self.log(f"job {job.id} is no longer ours (lease expired); child stopped")
            return
        # When our attempt is still running, the child died without recording
        # an outcome: a crash, a kill, out of memory.
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with code {rc}"
        if rc is not None and -rc == signal.SIGKILL:
            how += " (out of memory or killed)"
        if self.store.fail_job(job.id, f"job process {how}; see {log_path}", _tail(log_path, 40), **owner):
            self.log(f"job {job.id} failed: process {how}")
        else:
            final = self.store.get_job(job.id)
            mine = final.worker_id == self.worker_id and final.attempts == job.attempts
            self.log(f"job {job.id} {final.status}" if mine else
                     f"job {job.id} is no longer ours (now {final.status}, attempt {final.attempts})")

    def _watch(self, job: Job) -> str:
        """Wait for the child; returns finished | cancelled | stopping | lost."""
        assert self.child is not None
        beat_every = max(0.5, min(2.0, self.lease / 6))
        last_beat = 0.0
        while True:
            try:
                self.child.wait(timeout=0.25)
                return "finished"
            except subprocess.TimeoutExpired:
                pass
            if self.stopping:
                self._stop_child()
                return "stopping"
            now = time.monotonic()
            if now - last_beat >= beat_every:
                last_beat = now
                self.store.worker_heartbeat(self.worker_id, job.id)
                if self.cluster is not None:
                    self.cluster.publish()
                if not self.store.heartbeat_job(job.id, self.worker_id, job.attempts):
                    # Either the child just recorded the outcome (the job left
                    # 'running') or the lease was given to another worker.
                    if self.child.poll() is not None or self._recorded_by_child(job):
                        self.child.wait()
                        return "finished"
                    self._stop_child()
                    return "lost"
            if self.store.get_job(job.id).cancel_requested:
                self._stop_child()
                return "cancelled"

    def _recorded_by_child(self, job: Job) -> bool:
        now = self.store.get_job(job.id)
        return (now.status in ("done", "failed") and now.worker_id == self.worker_id
                and now.attempts == job.attempts)

    def _stop_child(self) -> None:
        """SIGTERM, then SIGKILL after the grace period."""
        assert self.child is not None
        if self.child.poll() is not None:
            return
        self.child.terminate()
        try:
            self.child.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m engine.worker``."""
    ap = argparse.ArgumentParser(prog="python -m engine.worker", description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, default=None, help="database (default $FSAT_DB or ./experiments.db)")
    ap.add_argument("--drain", action="store_true",
                    help="exit when no job is queued or running")
    ap.add_argument("--poll", type=float, default=1.0, help="seconds between queue polls when idle")
    ap.add_argument("--lease", type=float, default=float(os.environ.get("FSAT_LEASE", DEFAULT_LEASE_SECONDS)),
                    help="seconds without heartbeat after which a running job is requeued")
    ap.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="where a job's folds run: in the job process one after another (local), "
                         "or as parallel tasks on a Ray cluster (ray)")
    ap.add_argument("--ray-address", default=None,
                    help="the Ray cluster to use (host:port from `ray start --head`); "
                         "default: start a local Ray on this machine")
    args = ap.parse_args(argv)
    if not args.lease > 0:
        ap.error(f"--lease must be a positive number of seconds, got {args.lease:g}")
    if args.ray_address and args.executor != "ray":
        ap.error("--ray-address needs --executor ray")
    try:
        worker = Worker(args.db or default_db_path(), drain=args.drain, poll=args.poll, lease=args.lease,
                        executor=args.executor, ray_address=args.ray_address)
        signal.signal(signal.SIGTERM, worker.request_stop)
        signal.signal(signal.SIGINT, worker.request_stop)
        return worker.run()
    except FsatError as err:
        # A database that cannot be used: one line, no traceback.
        print(f"engine.worker: error: {err}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
