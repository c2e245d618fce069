"""What a job sees while it runs: its spec, store, run directory, progress and cancel checks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.runs.folder import RunFolder
from engine.store import Job, Store

if TYPE_CHECKING:
    import torch

    from engine.data.prepare import PreparedData


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

    def load_spec(self) -> Any:
        """The job's spec, typed and validated for its kind (``engine.specs.spec_from_json``)."""
        from engine.specs import spec_from_json

        return spec_from_json(self.job.kind, self.job.spec)

    def open_run(self, *, device: str | None = None, device_field: str = "device", seed: int | None = None,
                 data_root: str | Path | None = None, n_folds: int = 5, fold_seed: int = 42,
                 folds_field: str = "train.n_folds", group_column: str = "") -> OpenRun:
        """The prologue every job that runs torch shares, in this order.

        The run folder is made and claimed for this run of this database
        (:meth:`RunFolder.claim_for`; a folder that is another's is refused
        before anything is written there); with ``device`` (a spec's ``"auto"``,
        ``"cpu"`` or ``"cuda"``, named ``device_field`` in errors) torch's
        threads are set and the device chosen, and with ``seed`` everything
        is seeded; with ``data_root`` the job's progress says "loading
        dataset" and the dataset is registered with its stored folds
        (``engine.data.prepare.prepare_dataset``: ``n_folds``, ``fold_seed``,
        ``folds_field``, ``group_column``). The run's row and ``config.json``
        come after, from :meth:`OpenRun.record`, once the job knows what it
        records.
        """
        # Before anything is written or resumed: the folder must be this run's, of this database.
        folder = RunFolder(self.run_dir).claim_for(self.store, self.run_id)
        chosen = None
        if device is not None:
            from engine.train.runtime import configure_threads, pick_device, seed_everything

            configure_threads()
            chosen = pick_device(device, field=device_field)
            if seed is not None:
                seed_everything(seed)
        data = None
        if data_root is not None:
            from engine.data.prepare import prepare_dataset

            self.progress(0.0, "loading dataset")
            data = prepare_dataset(self.store, data_root, n_folds=n_folds, fold_seed=fold_seed,
                                   folds_field=folds_field, group_column=group_column)
        return OpenRun(ctx=self, folder=folder, device=chosen, data=data)


@dataclass
class OpenRun:
    """What :meth:`JobContext.open_run` opened: the run folder, the device and the dataset with its folds."""

    ctx: JobContext
    folder: RunFolder
    device: torch.device | None = None
    data: PreparedData | None = None

    def record(self, *, name: str, model: str, config: dict, config_hash: str, seed: int | None = None,
               parent_run_id: str | None = None, extra: dict | None = None) -> bool:
        """Create the run's row (a resumed run's is marked running again) and write its ``config.json``.

        The row is of the job's kind, on the opened device and dataset; see
        :func:`record_run`. True when the run is new.
        """
        ctx = self.ctx
        return record_run(ctx.store, ctx.run_id, self.folder, kind=ctx.job.kind, job_id=ctx.job.id,
                          dataset_id=self.data.dataset_id if self.data is not None else None,
                          device=str(self.device) if self.device is not None else "", name=name, model=model,
                          config=config, config_hash=config_hash, seed=seed, parent_run_id=parent_run_id,
                          extra=extra)


def record_run(store: Store, run_id: str, folder: RunFolder, *, kind: str, job_id: int | None,
               dataset_id: int | None, device: str, name: str, model: str, config: dict, config_hash: str,
               seed: int | None = None, parent_run_id: str | None = None, extra: dict | None = None) -> bool:
    """Create a run's row with what every run records, and write its ``config.json``; True when new.

    The folder is claimed first (:meth:`RunFolder.claim_for`: a folder of
    another database, run or config hash is refused before anything is
    written). The row carries the job, dataset, device, the package versions
    (:func:`environment_record`), the git commit and the run folder; a run
    that exists already (a resumed job) is marked running again.
    ``config.json`` holds ``kind``, ``run_id``, ``config_hash``, ``spec``
    (``config``, the row's config) and the job's ``extra`` keys.
    """
    folder.claim_for(store, run_id, config_hash)
    new = store.create_run(run_id, kind=kind, job_id=job_id, dataset_id=dataset_id, parent_run_id=parent_run_id,
                           name=name, model=model, config=config, config_hash=config_hash, seed=seed,
                           device=device, versions=environment_record(), git_commit=git_commit(),
                           run_dir=str(folder.path))
    folder.save_config({"kind": kind, "run_id": run_id, "config_hash": config_hash, "spec": config,
                        **(extra or {})})
    return new


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
    """Write JSON atomically: the engine's one atomic writer (temp file, fsync, rename)."""
    from engine.atomic import save_json

    save_json(path, data)
