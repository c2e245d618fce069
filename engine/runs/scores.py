"""One way to record a run's scores: per fold, out-of-fold, and on the test set.

Every job (train, infer, baseline, ensemble, curriculum) scores its
predictions through these functions, so a fold's LWLRAP, its per-class LRAP
and the out-of-fold rows are computed and stored the same way everywhere.
Scores are computed on the values that are saved, so the records match the
run's ``oof.npy`` exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.metrics import lwlrap, per_class_lwlrap
from engine.store import OOF

__all__ = ["OOF", "covered_rows", "record_fold_scores", "record_oof_scores", "score_test"]

def covered_rows(oof: np.ndarray) -> np.ndarray:
    """Rows of an out-of-fold array that hold scores (folds not run are NaN rows)."""
    return np.isfinite(np.asarray(oof, dtype=np.float64)).all(axis=1)


def record_fold_scores(store: Any, run_id: str, fold: int, truth: np.ndarray, pred: np.ndarray,
                       classes: Sequence[str], *, best_epoch: int | None = None,
                       lwlrap_value: float | None = None) -> float:
    """Record a fold's LWLRAP (``fold_scores``) and per-class LRAP (``class_scores``); returns the LWLRAP.

    ``lwlrap_value`` overrides the score recorded in ``fold_scores`` (a trained
    fold records the best epoch's validation score as early stopping saw it).
    """
    truth = np.asarray(truth)
    score = float(lwlrap(truth, pred)) if lwlrap_value is None else float(lwlrap_value)
    store.record_fold(run_id, int(fold), lwlrap=score, best_epoch=best_epoch, n_val=len(truth))
    per_class, weights = per_class_lwlrap(truth, pred)
    store.record_class_scores(run_id, int(fold), list(classes), per_class, weights, truth.sum(axis=0))
    return score


def record_oof_scores(store: Any, run_id: str, truth: np.ndarray, oof: np.ndarray,
                      classes: Sequence[str]) -> tuple[float, int]:
    """Record the out-of-fold per-class LRAP over the covered rows; returns ``(LWLRAP, clips covered)``."""
    truth = np.asarray(truth)
    rows = covered_rows(oof)
    cv = float(lwlrap(truth[rows], oof[rows]))
    per_class, weights = per_class_lwlrap(truth[rows], oof[rows])
    store.record_class_scores(run_id, OOF, list(classes), per_class, weights, truth[rows].sum(axis=0))
    return cv, int(rows.sum())


def score_test(layout: Any, test: np.ndarray, *, submission: Path | None = None,
               log: Callable[[str], None] | None = None) -> tuple[float | None, Path | None]:
    """Write ``submission.csv`` (when ``submission`` is a path) and score the test scores when the truth exists.

    ``layout`` is the dataset's ``DatasetLayout``; ``test`` is in its test
    order. With a submission the score is read back from the written file
    (what would be uploaded), otherwise from ``test``. Returns ``(test
    LWLRAP or None, the submission path or None)``.
    """
    from engine.submission import score_submission, write_submission

    written = None
    if submission is not None:
        written = write_submission(submission, layout.test.fnames, test, sample_submission=layout.sample_submission)
        if log is not None:
            log(f"wrote {written}")
    if layout.test_truth is None:
        return None, written
    if written is not None:
        return float(score_submission(written, layout.test_truth.csv_path, layout.classes)), written
    row = {f: i for i, f in enumerate(layout.test.fnames)}
    return float(lwlrap(layout.test_truth.Y, test[[row[f] for f in layout.test_truth.fnames]])), None
