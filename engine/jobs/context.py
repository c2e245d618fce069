"""What a job sees while it runs: its spec, store, run directory, progress and cancel checks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.store import Job, Store


class JobAborted(Exception):
    """The job was cancelled, lost its lease, or its worker died: stop without recording."""


#: At most this many progress writes to the database per second (the last one always lands).
PROGRESS_WRITES_PER_SECOND = 4.0
#: Seconds between progress lines in ``job.log``; epoch and other ``log`` lines are never held back.
PROGRESS_LOG_EVERY = 15.0


def progress_stage(message: str) -> str:
    """The stage a progress message names: its text before the first digit ("decoding train_curated")."""
    return re.split(r"\d", message, maxsplit=1)[0].strip()


@dataclass
class JobContext:
    """Handed to every job's ``run(ctx)``.

    ``progress`` may be called on every optimiser step or decoded clip: it
    writes the database at most :data:`PROGRESS_WRITES_PER_SECOND` times a
    second and a line to ``job.log`` at most every :data:`PROGRESS_LOG_EVERY`
    seconds. The latest value held back is written by ``flush``, which runs
    at fraction 1, before every ``log`` line and when the job ends. A message
    naming a new stage (:func:`progress_stage`) is always written and logged.
    """

    store: Store
    job: Job
    worker_id: str
    run_id: str
    run_dir: Path
    attempt: int | None = None
    parent_pid: int = field(default_factory=os.getppid)
    write_interval: float = 1.0 / PROGRESS_WRITES_PER_SECOND
    log_interval: float = PROGRESS_LOG_EVERY
    _last_check: float = 0.0
    _last_write: float = float("-inf")
    _last_line: float = float("-inf")
    _pending: tuple[float, str] | None = None
    _stage: str | None = None

    def __post_init__(self) -> None:
        if self.attempt is None:
            self.attempt = self.job.attempts

    @property
    def spec(self) -> dict:
        """The job's spec as stored (plain data)."""
        return self.job.spec

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress in [0, 1]; also checks that the job should go on."""
        self.check()
        now = time.monotonic()
        stage = progress_stage(message)
        # A new stage is always written: the throttle would otherwise keep the last stage's count
        # on screen for as long as the new one runs without calling again.
        final = fraction >= 1.0 or stage != self._stage
        self._stage = stage
        if final or now - self._last_line >= self.log_interval:
            self._last_line = now
            print(f"{time.strftime('%H:%M:%S')} {fraction * 100:5.1f}% {message}", flush=True)
        self._pending = (fraction, message)
        if final or now - self._last_write >= self.write_interval:
            self.flush()

    def flush(self) -> None:
        """Write the progress held back, if any."""
        if self._pending is None:
            return
        fraction, message = self._pending
        self._pending = None
        self._last_write = time.monotonic()
        self.store.set_progress(self.job.id, fraction, message, worker_id=self.worker_id,
                                attempt=int(self.attempt))

    def check(self, every: float = 1.0) -> None:
        """Raise JobAborted when the worker died, the job was cancelled or taken back.

        Reads the database at most every ``every`` seconds.
        """
        if os.getppid() != self.parent_pid:
            raise JobAborted("the worker process is gone")
        now = time.monotonic()
        if now - self._last_check < every:
            return
        self._last_check = now
        job = self.store.get_job(self.job.id)
        if job.cancel_requested:
            raise JobAborted("cancel requested")
        if job.status != "running" or job.worker_id != self.worker_id or job.attempts != self.attempt:
            raise JobAborted("the job is no longer this worker's")

    def log(self, text: str) -> None:
        """A line in the job log (first writing the progress held back, so the two agree)."""
        self.flush()
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def environment_record() -> dict:
    """Python's version and those of the installed packages that shape results, recorded with every run.

    Versions come from the installed distributions' metadata, so nothing here
    imports torch or the audio libraries; a package that is not installed is
    left out.
    """
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for pkg in ("torch", "torchaudio", "numpy", "librosa", "soundfile", "scikit-learn",
                "iterative-stratification", "audiomentations", "torchlibrosa", "panns-inference",
                "fsat-console"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return versions


def git_commit() -> str:
    """The project's git commit (with ``-dirty`` when the tree has changes), or ''."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if not sha:
            return ""
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically: the run layer's one writer (temp file, fsync, rename)."""
    from engine.runs.atomic import save_json

    save_json(path, data)
