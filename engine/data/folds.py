"""Cross-validation folds stratified on the multi-label matrix.

Iterative stratification (Sechidis et al., 2011) keeps each class's positives
spread evenly over the folds, which a plain KFold cannot do for 80 rare,
co-occurring labels. The folds are a function of the label matrix, the fold
count and the seed only, so every run on a dataset sees the same folds.
"""

from __future__ import annotations

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from engine.errors import DataError


def make_folds(Y: np.ndarray, n_splits: int = 5, seed: int = 42) -> np.ndarray:
    """Return the fold index (0..n_splits-1) of every row of the multi-hot matrix ``Y``.

    Uses ``MultilabelStratifiedKFold(n_splits, shuffle=True, random_state=seed)``;
    validation fold k is the rows whose value is k. Deterministic for the same
    inputs. Fewer rows than folds is a DataError.
    """
    Y = np.asarray(Y)
    if Y.ndim != 2:
        raise ValueError(f"Y must be a 2-D [clips, classes] matrix, got shape {Y.shape}")
    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2, got {n_splits}")
    if len(Y) < n_splits:
        raise DataError(f"{n_splits}-fold cross-validation needs at least {n_splits} labelled "
                        f"clips, the curated set has {len(Y)}; add clips or lower the fold count")
    splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = np.full(len(Y), -1, dtype=np.int64)
    for fold, (_, valid) in enumerate(splitter.split(np.zeros((len(Y), 1)), (Y > 0.5).astype(int))):
        folds[valid] = fold
    return folds
