"""A run's folder: where each artifact lives, and its atomic saves and checked loads.

``runs/<run_id>/`` beside the database holds ``config.json`` (the resolved
spec), ``mel_stats.npz``, ``fold<k>/best.pt`` (the checkpoint used later),
``fold<k>/last.pt`` and ``fold<k>/last.prev.pt`` (resume state: the newest and
the one before), ``fold<k>/val_pred.npy``, ``oof.npy`` (curated CSV order),
``test.npy`` (``sample_submission.csv`` order), ``test_logits_fold<k>.npy``,
``submission.csv`` and ``job.log``. Every write goes through
:mod:`engine.atomic`. numpy and stdlib only: the console reads run
folders through this class too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import load_json, load_npy, load_npz, save_json, save_npy, save_npz

__all__ = ["RunFolder"]


@dataclass(frozen=True)
class RunFolder:
    """The folder of one run. Paths only until something is saved; nothing is created on construction."""

    path: Path

    def __init__(self, path: Path | str) -> None:
        object.__setattr__(self, "path", Path(path))

    @classmethod
    def of(cls, run: dict, db_path: Path | str | None = None) -> "RunFolder":
        """The folder of a run row (``run_dir``); a relative one is taken relative to the database's folder."""
        folder = Path(str(run.get("run_dir") or ""))
        if db_path is not None and not folder.is_absolute():
            folder = Path(db_path).parent / folder
        return cls(folder)

    # -- paths ----------------------------------------------------------------------------

    def create(self) -> "RunFolder":
        """Make the folder (and its parents) if missing."""
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def mel_stats(self) -> Path:
        return self.path / "mel_stats.npz"

    @property
    def oof(self) -> Path:
        return self.path / "oof.npy"

    @property
    def test(self) -> Path:
        return self.path / "test.npy"

    @property
    def submission(self) -> Path:
        return self.path / "submission.csv"

    @property
    def log(self) -> Path:
        return self.path / "job.log"

    def fold_dir(self, fold: int) -> Path:
        """``fold<k>/``."""
        return self.path / f"fold{fold}"

    def best(self, fold: int) -> Path:
        """The fold's best checkpoint (the one inference uses)."""
        return self.fold_dir(fold) / "best.pt"

    def last(self, fold: int) -> Path:
        """The fold's newest resume state."""
        return self.fold_dir(fold) / "last.pt"

    def val_pred(self, fold: int) -> Path:
        """The best epoch's validation predictions of a fold."""
        return self.fold_dir(fold) / "val_pred.npy"

    def test_logits(self, fold: int) -> Path:
        """One fold model's mean TTA logits on the test set (infer runs)."""
        return self.path / f"test_logits_fold{fold}.npy"

    # -- saves and loads ------------------------------------------------------------------

    def save_array(self, path: Path, array: np.ndarray) -> Path:
        """An array written atomically."""
        return save_npy(path, array)

    def load_array(self, path: Path, *, remedy: str | None = None) -> np.ndarray:
        """An array saved by :meth:`save_array`; a damaged file raises DamagedFile naming it."""
        return load_npy(path, **({"remedy": remedy} if remedy else {}))

    def save_config(self, record: dict[str, Any]) -> Path:
        """``config.json``."""
        return save_json(self.config, record)

    def load_config(self) -> dict[str, Any]:
        """``config.json`` as written (DamagedFile when it is not JSON)."""
        return load_json(self.config)

    def save_json(self, name: str, record: Any) -> Path:
        """Another JSON record in the folder (``embeddings.json`` ...)."""
        return save_json(self.path / name, record)

    def save_mel_stats(self, mean: np.ndarray, std: np.ndarray) -> Path:
        """``mel_stats.npz`` (per-mel mean and std over the curated clips)."""
        return save_npz(self.mel_stats, mean=np.asarray(mean), std=np.asarray(std))

    def load_mel_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(mean, std)`` from ``mel_stats.npz``; None when absent. DamagedFile when torn."""
        if not self.mel_stats.exists():
            return None
        stats = load_npz(self.mel_stats, "mean", "std")
        return stats["mean"], stats["std"]

    def load_oof(self, shape: tuple[int, int], dtype: Any = np.float32) -> np.ndarray:
        """``oof.npy`` when present and of ``shape``, else an all-NaN array of ``shape`` (nothing scored yet).

        A file of another shape or a damaged one raises (DamagedFile names it).
        """
        if not self.oof.exists():
            return np.full(shape, np.nan, dtype=dtype)
        oof = self.load_array(self.oof)
        if oof.shape != tuple(shape):
            from engine.atomic import DamagedFile
            raise DamagedFile(self.oof, f"shape {oof.shape}, expected {tuple(shape)}",
                              "delete it and queue the job again to recompute it")
        return oof
