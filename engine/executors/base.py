"""The executor seam: how a job's folds are run, one after another here or in parallel on a cluster.

A job describes each unfinished fold as a :class:`FoldCall`: a module-level
function and its picklable inputs (for training,
``engine.jobs.folds.train_fold_task`` and its ``FoldTask``). The function reports what it does (epoch
records, progress, log lines) through the recorder it is given and returns a
small result (scores, paths), never a checkpoint. An executor runs the tasks
and yields ``(fold, result)`` in completion order; the job, on the head,
records each result as it arrives. Whatever the executor, the recorder the
job passes in is the only thing that writes the store, so results have one
form whichever executor ran them.
"""

from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

from engine.errors import FsatError


class ClusterError(FsatError):
    """The cluster cannot run the job: unreachable, too small for a fold, or nothing started in time."""


class StorageError(FsatError):
    """A node cannot read the dataset root or write the run folder."""


class FoldFailed(FsatError):
    """A fold task raised an error or its process died more often than ``max_retries`` allows.

    ``remote_traceback`` is the fold's own traceback (from the node that ran it).
    """

    def __init__(self, fold: int, message: str, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.fold = fold
        self.remote_traceback = remote_traceback


@dataclass(frozen=True)
class FoldCall:
    """One fold's work: ``fn(*args, recorder=recorder)``, a module-level function with picklable ``args``.

    ``local_kwargs`` are added only when the fold runs in the job process
    (things already built there, such as loaded caches); they never travel
    to a cluster.
    """

    fold: int
    fn: Callable[..., Any]
    args: tuple = ()
    local_kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FoldResources:
    """What each fold task asks the cluster for, and how its faults are handled.

    ``gpus_per_fold`` None means one GPU per fold when the cluster has GPUs,
    none otherwise. ``max_retries`` is how often a fold whose process died
    (a crash, a lost node) is started again; it is always passed to Ray, so
    Ray's own default never applies. An error raised by the fold is never
    retried. ``start_timeout`` is how long the job waits with folds pending
    and none running before it fails saying what the cluster lacks.
    """

    cpus_per_fold: float = 1.0
    gpus_per_fold: float | None = None
    max_retries: int = 1
    start_timeout: float = 300.0

    @classmethod
    def from_spec(cls, section: Any) -> "FoldResources":
        """From a spec's ``cluster`` section (``engine.specs.ClusterSection``)."""
        gpus = section.gpus_per_fold
        return cls(cpus_per_fold=float(section.cpus_per_fold),
                   gpus_per_fold=None if gpus == "auto" else float(gpus),
                   max_retries=int(section.max_retries), start_timeout=float(section.start_timeout))


class Placement(Protocol):
    """Called with where a fold runs and how it is doing (the job records it)."""

    def __call__(self, fold: int, status: str, *, node: str | None = None, pid: int | None = None,
                 task_attempt: int | None = None, message: str = "") -> None: ...


def _no_placement(fold: int, status: str, **_: object) -> None:
    return None


def this_node() -> str:
    """The name this process's machine is shown under in the job details."""
    return socket.gethostname()


class Executor(ABC):
    """Runs a job's fold tasks; the job records their results (see the module docstring)."""

    #: ``local`` or ``ray``: what the worker was started with.
    name: str = ""

    def check_storage(self, *, read: Sequence[Path], write: Sequence[Path]) -> None:
        """Fail with :class:`StorageError` naming the path when a node running folds cannot use it."""
        return None

    @abstractmethod
    def run_folds(self, tasks: Sequence[FoldCall], recorder_for: Callable[[int], Any], *,
                  check: Callable[[], None], resources: FoldResources | None = None,
                  placement: Placement = _no_placement) -> Iterator[tuple[int, Any]]:
        """Run ``tasks`` and yield ``(fold, result)`` as each finishes.

        ``recorder_for(fold)`` is the job's recorder for that fold: it
        receives, in this process, every call the fold function makes on its
        own. ``check`` is called regularly and raises to stop
        (cancel, lost lease); every task still running is then stopped.
        """

    def close(self) -> None:
        """Release what the executor holds (a cluster connection)."""
        return None


@dataclass
class LocalExecutor(Executor):
    """Today's behaviour and the default: each fold in this process, one after another.

    The fold function gets the job's own recorder, and its errors propagate
    unchanged, exactly as when the job called it directly.
    """

    name: str = field(default="local", init=False)

    def run_folds(self, tasks: Sequence[FoldCall], recorder_for: Callable[[int], Any], *,
                  check: Callable[[], None], resources: FoldResources | None = None,
                  placement: Placement = _no_placement) -> Iterator[tuple[int, Any]]:
        """Run each fold in turn in this process; yield its result when it returns."""
        node = this_node()
        for task in tasks:
            check()
            placement(task.fold, "running", node=node, pid=os.getpid(), task_attempt=1)
            try:
                result = task.fn(*task.args, recorder=recorder_for(task.fold), **task.local_kwargs)
            except BaseException as err:
                placement(task.fold, "failed", message=f"{type(err).__name__}: {err}"[:200])
                raise
            placement(task.fold, "done")
            yield task.fold, result
