"""``fsat wait [--follow]``: wait for a job to end, meanwhile printing its progress and new job.log lines."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from engine.cli_output import _read
from engine.store import FINISHED_STATES, runs_root


def cmd_wait(args: argparse.Namespace) -> int:
    """Wait until a job ends; exit 0 when done, 1 otherwise. ``--follow`` prints its progress and job.log meanwhile.

    Output that goes nowhere any more (``| head``) ends the command quietly, exit 1.
    """
    try:
        return _wait(args)
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit: point stdout at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _wait(args: argparse.Namespace) -> int:
    from engine.worker import run_id_for

    with _read(args) as store:
        deadline = time.monotonic() + args.timeout if args.timeout else None
        log = _LogFollower() if args.follow else None
        shown = None
        while True:
            job = store.get_job(args.job_id)
            if log is not None:
                # The worker writes job.log in the run folder it names after the job (engine.worker).
                log.path = runs_root(store.path) / run_id_for(job) / "job.log"
                for line in log.new_lines():
                    print(line, flush=True)
                progress = (job.status, round(job.progress * 100), job.message)
                if job.status not in FINISHED_STATES and progress != shown:
                    shown = progress
                    print(f"job {job.id}: {job.status} {progress[1]}% {job.message or ''}".rstrip(), flush=True)
            if job.status in FINISHED_STATES:
                print(f"job {job.id}: {job.status} {job.error or job.message}", flush=True)
                return 0 if job.status == "done" else 1
            if deadline and time.monotonic() > deadline:
                print(f"job {job.id}: still {job.status} after {args.timeout}s", flush=True)
                return 1
            time.sleep(0.5 if log is not None else 1.0)


class _LogFollower:
    """The complete lines appended to a file since the last look (the file may appear later)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.offset = 0
        self.partial = b""

    def new_lines(self) -> list[str]:
        """Lines written since the last call; a line without its newline yet waits for the next."""
        try:
            with open(self.path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size < self.offset:
                    self.offset, self.partial = 0, b""  # truncated: from its start again
                fh.seek(self.offset)
                data = fh.read()
        except (OSError, TypeError):
            return []
        self.offset += len(data)
        *complete, self.partial = (self.partial + data).split(b"\n")
        return [line.decode("utf-8", errors="replace").rstrip("\r").rsplit("\r", 1)[-1] for line in complete]
