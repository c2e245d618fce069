"""What a fold reports while it trains: epoch records, progress and log lines, through a small interface.

The per-fold work (``engine.jobs.folds.train_fold_task``) never writes the
store itself: it calls a :class:`FoldRecorder`. Locally the train job passes
:class:`StoreRecorder`, which writes each epoch row through the store and
maps the fold's progress onto the job's. A fold run in another process or on
another machine (a Ray task, say) gets a :class:`ListRecorder` and returns
its records to the head node, which replays them into a ``StoreRecorder``;
SQLite keeps a single writer.

What the head has not written yet must survive the head: the training loop
appends each finished epoch to the fold's ``epochs.jsonl`` (beside the
``last.pt`` it describes, before ``last.pt`` is replaced), and a resumed fold
sends that journal to :meth:`FoldRecorder.recovered`, which writes only the
epochs the store lacks (``StoreRecorder.recovered``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from engine.atomic import save_text

__all__ = ["EPOCH_JOURNAL", "EpochRecord", "FoldRecorder", "ListRecorder", "StoreRecorder", "journal_epoch",
           "read_epoch_journal"]

#: A fold folder's journal of finished epochs (one JSON record a line), written before ``last.pt``.
EPOCH_JOURNAL = "epochs.jsonl"


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch of one fold: what the ``epochs`` table holds, plus whether it was the best so far.

    The training loop (``engine.train.loop.train_fold``) makes one per epoch;
    a recorder stores it, or carries it back from another process.

    ``tag`` names the stage the epoch belongs to (a curriculum stage; empty
    for plain training), so the stages of one fold can be told apart.
    """

    fold: int
    epoch: int
    train_loss: float
    val_loss: float
    val_lwlrap: float
    lr: float
    seconds: float
    clips_per_sec: float
    is_best: bool = False
    tag: str = ""
    #: System figures: the device's name, its peak memory (MiB) and utilisation (%), the job's peak RSS (MiB).
    device: str = ""
    peak_gpu_mib: float | None = None
    gpu_util: float | None = None
    peak_rss_mib: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (pickles and serialises as JSON)."""
        return asdict(self)

    def log_line(self) -> str:
        """The job-log line of this epoch."""
        stage = f" [{self.tag}]" if self.tag else ""
        rate = "" if math.isnan(self.clips_per_sec) else f" ({self.clips_per_sec:.1f} clips/s)"
        return (f"fold {self.fold}{stage} epoch {self.epoch}: train {self.train_loss:.4f} val {self.val_loss:.4f} "
                f"lwlrap {self.val_lwlrap:.4f}{' *' if self.is_best else ''}{rate}")


@runtime_checkable
class FoldRecorder(Protocol):
    """Where a fold's reports go. Implementations must not raise for a report they cannot deliver late."""

    def epoch(self, record: EpochRecord) -> None:
        """A finished epoch (called before the resume state of that epoch is saved)."""

    def progress(self, fraction: float, message: str) -> None:
        """Progress within the fold, in [0, 1]."""

    def log(self, line: str) -> None:
        """A line for the job log."""

    def recovered(self, record: EpochRecord) -> None:
        """An epoch finished by an earlier attempt (from the fold's journal); stored if the store lacks it."""


def journal_epoch(fold_dir: Path | str, record: EpochRecord) -> Path:
    """Add ``record`` to the fold's ``epochs.jsonl`` (replacing an earlier line of the same epoch), atomically."""
    path = Path(fold_dir) / EPOCH_JOURNAL
    kept = [r for r in read_epoch_journal(fold_dir) if r.epoch != record.epoch]
    text = "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in [*kept, record])
    return save_text(path, text)


def read_epoch_journal(fold_dir: Path | str) -> list[EpochRecord]:
    """The epochs in a fold's ``epochs.jsonl``, in order; [] when there is none (a line it cannot read is skipped)."""
    path = Path(fold_dir) / EPOCH_JOURNAL
    if not path.exists():
        return []
    names = {f.name for f in fields(EpochRecord)}
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
            records.append(EpochRecord(**{k: v for k, v in data.items() if k in names}))
        except (ValueError, TypeError):
            continue
    return records


@dataclass
class ListRecorder:
    """Keeps every report in memory, in order: for a fold run away from the store."""

    epochs: list[EpochRecord] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    last_progress: tuple[float, str] | None = None

    def epoch(self, record: EpochRecord) -> None:
        self.epochs.append(record)

    def recovered(self, record: EpochRecord) -> None:
        self.epochs.append(record)

    def progress(self, fraction: float, message: str) -> None:
        self.last_progress = (float(fraction), message)

    def log(self, line: str) -> None:
        self.lines.append(line)

    def replay(self, into: FoldRecorder) -> None:
        """Send the kept epochs and log lines to another recorder (the head node's store recorder)."""
        for line in self.lines:
            into.log(line)
        for record in self.epochs:
            into.epoch(record)


class StoreRecorder:
    """Writes a fold's epochs to the store (one row per epoch, replaced when a resumed epoch is re-run).

    A record's ``tag`` (a curriculum stage) goes to the row's ``stage``
    column and to the job log line; an empty tag stores NULL.

    ``progress`` and ``log`` are the job's (``JobContext.progress`` and
    ``.log``); ``span`` is the ``(start, width)`` of the job's progress bar
    that this fold fills.
    """

    def __init__(self, store: Any, run_id: str, *, progress: Callable[[float, str], None] | None = None,
                 log: Callable[[str], None] = print, span: tuple[float, float] = (0.0, 1.0)) -> None:
        self.store = store
        self.run_id = run_id
        self._progress = progress
        self._log = log
        self.span = span

    def epoch(self, record: EpochRecord) -> None:
        self.store.record_epoch(self.run_id, record.fold, record.epoch, train_loss=record.train_loss,
                                val_loss=record.val_loss, val_lwlrap=record.val_lwlrap, lr=record.lr,
                                seconds=record.seconds, clips_per_sec=record.clips_per_sec,
                                stage=record.tag or None, device=record.device or None,
                                peak_gpu_mib=record.peak_gpu_mib, gpu_util=record.gpu_util,
                                peak_rss_mib=record.peak_rss_mib)
        self._log(record.log_line())

    def recovered(self, record: EpochRecord) -> None:
        """Store an epoch of an earlier attempt that never reached the store (its head died first)."""
        if any(r["fold"] == record.fold and r["epoch"] == record.epoch for r in self.store.epochs(self.run_id)):
            return
        self.epoch(record)
        self._log(f"fold {record.fold} epoch {record.epoch}: recorded from {EPOCH_JOURNAL} (the attempt "
                  "that trained it ended before its row was written)")

    def progress(self, fraction: float, message: str) -> None:
        if self._progress is not None:
            start, width = self.span
            self._progress(start + width * min(max(float(fraction), 0.0), 1.0), message)

    def log(self, line: str) -> None:
        self._log(line)
