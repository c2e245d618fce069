"""Multi-label ranking metrics: LWLRAP (overall and per class) and ROC AUC.

Pure numpy (numpy in, numpy out). The console imports this module to show
scores, so it must not pull in sklearn or torch.

Conventions shared by every function here:

- ``truth`` is a 0/1 (or bool) matrix of shape ``[n_clips, n_classes]``;
  ``scores`` is a float matrix of the same shape (probabilities, logits or
  ranks: only the order within a row or column matters).
- Scores may not be NaN; a ValueError names the offending argument.

LWLRAP tie convention: the rank of a label within a clip is the number of
labels scored greater than *or equal to* it, and the number of positives
ranked at or above it counts ties the same way. A tie between a positive and a
negative therefore costs the positive precision. This is the convention of
``sklearn.metrics.label_ranking_average_precision_score``, so ``lwlrap`` equals
that function with ``sample_weight = truth.sum(1)`` over clips with at least
one label, ties included.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "lwlrap",
    "per_class_lwlrap",
    "roc_auc_macro",
    "roc_auc_micro",
    "roc_auc_per_class",
]


def _check(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``truth``/``scores`` to bool and float64 matrices."""
    truth = np.asarray(truth)
    scores = np.asarray(scores)
    if truth.ndim != 2:
        raise ValueError(f"truth must be a 2-D [n_clips, n_classes] matrix, got shape {truth.shape}")
    if scores.shape != truth.shape:
        raise ValueError(f"scores shape {scores.shape} does not match truth shape {truth.shape}")
    if truth.shape[1] == 0:
        raise ValueError("truth has no class columns")
    if truth.dtype != np.bool_:
        if not np.issubdtype(truth.dtype, np.number):
            raise ValueError(f"truth must be numeric 0/1 or bool, got dtype {truth.dtype}")
        bad = (truth != 0) & (truth != 1)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValueError(f"truth must hold only 0 and 1; found {truth[i, j]!r} at row {i}, class {j}")
        truth = truth == 1
    if not (np.issubdtype(scores.dtype, np.number) or scores.dtype == np.bool_):
        raise ValueError(f"scores must be numeric, got dtype {scores.dtype}")
    scores = scores.astype(np.float64, copy=False)
    if np.isnan(scores).any():
        i, j = np.argwhere(np.isnan(scores))[0]
        raise ValueError(f"scores contain NaN (first at row {i}, class {j}); "
                         "check the model outputs before scoring")
    return truth, scores


def _positive_precisions(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Precision at each positive label's rank, laid out like ``truth`` (0 at negatives).

    For clip i and positive class j the value is
    ``#{positives k: s_ik >= s_ij} / #{labels k: s_ik >= s_ij}``.
    """
    n, c = truth.shape
    # Descending order per row; a stable sort keeps tie groups contiguous.
    order = np.argsort(-scores, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    sorted_truth = np.take_along_axis(truth, order, axis=1)

    # Everything tied with a label counts as ranked at or above it, so each
    # position takes the index of the last member of its tie group.
    positions = np.broadcast_to(np.arange(c), (n, c))
    is_group_end = np.ones((n, c), dtype=bool)
    is_group_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    group_end = np.where(is_group_end, positions, c - 1)
    group_end = np.minimum.accumulate(group_end[:, ::-1], axis=1)[:, ::-1]

    positives_at_or_above = np.cumsum(sorted_truth, axis=1)
    hits = np.take_along_axis(positives_at_or_above, group_end, axis=1)
    precision_sorted = np.where(sorted_truth, hits / (group_end + 1.0), 0.0)

    precision = np.empty_like(precision_sorted)
    np.put_along_axis(precision, order, precision_sorted, axis=1)
    return precision


def per_class_lwlrap(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class label-ranking average precision and the class weights of LWLRAP.

    Returns ``(per_class, weights)``, both of length ``n_classes``:
    ``per_class[j]`` is the mean, over the clips where class j is positive, of
    the precision at class j's rank in that clip (NaN if class j has no
    positives); ``weights[j]`` is class j's share of all positive labels (0 if
    none). ``np.nansum(per_class * weights) == lwlrap(truth, scores)``.
    """
    truth, scores = _check(truth, scores)
    precision = _positive_precisions(truth, scores)
    positives = truth.sum(axis=0)
    total = positives.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(positives > 0, precision.sum(axis=0) / positives, np.nan)
    weights = positives / total if total > 0 else np.zeros(truth.shape[1])
    return per_class, weights


def clip_precisions(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per clip: the summed precision of its positive labels and its number of positives.

    LWLRAP over any multiset of clips is ``sums[idx].sum() / counts[idx].sum()``,
    so a bootstrap over clips (``engine.stats``) resamples these two vectors.
    """
    truth, scores = _check(truth, scores)
    return _positive_precisions(truth, scores).sum(axis=1), truth.sum(axis=1).astype(np.float64)


def lwlrap(truth: np.ndarray, scores: np.ndarray) -> float:
    """Label-weighted label-ranking average precision (the FSDKaggle2019 metric).

    Every positive label of every clip counts once: the result is the mean,
    over all (clip, positive class) pairs, of the fraction of labels ranked at
    or above that class (in the clip's scores) which are positive. Clips with
    no positive label contribute nothing. Ties follow sklearn's convention (see
    the module docstring). Raises ValueError if ``truth`` has no positive label.
    """
    truth, scores = _check(truth, scores)
    total = truth.sum()
    if total == 0:
        raise ValueError("truth has no positive labels; lwlrap is undefined")
    return float(_positive_precisions(truth, scores).sum() / total)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of each column of ``x`` in ascending order, ties given their mean rank."""
    n = x.shape[0]
    order = np.argsort(x, axis=0, kind="stable")
    sorted_x = np.take_along_axis(x, order, axis=0)
    positions = np.broadcast_to(np.arange(n)[:, None], x.shape)

    is_start = np.ones(x.shape, dtype=bool)
    is_start[1:] = sorted_x[1:] != sorted_x[:-1]
    is_end = np.ones(x.shape, dtype=bool)
    is_end[:-1] = is_start[1:]
    group_start = np.maximum.accumulate(np.where(is_start, positions, 0), axis=0)
    group_end = np.minimum.accumulate(np.where(is_end, positions, n - 1)[::-1], axis=0)[::-1]

    ranks = np.empty(x.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (group_start + group_end) / 2.0 + 1.0, axis=0)
    return ranks


def _auc_columns(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mann–Whitney ROC AUC of each column; NaN where a column lacks positives or negatives."""
    ranks = _average_ranks(scores)
    n_pos = truth.sum(axis=0).astype(np.float64)
    n_neg = truth.shape[0] - n_pos
    rank_sum = np.where(truth, ranks, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def roc_auc_per_class(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each class column (ties count one half); NaN where the class has only one label value."""
    truth, scores = _check(truth, scores)
    return _auc_columns(truth, scores)


def roc_auc_macro(truth: np.ndarray, scores: np.ndarray) -> float:
    """Unweighted mean of the per-class ROC AUCs, skipping classes whose AUC is undefined.

    NaN if no class has both a positive and a negative clip.
    """
    per_class = roc_auc_per_class(truth, scores)
    if np.isnan(per_class).all():
        return float("nan")
    return float(np.nanmean(per_class))


def roc_auc_micro(truth: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of all (clip, class) pairs pooled together.

    NaN if the pooled labels are all positive or all negative.
    """
    truth, scores = _check(truth, scores)
    return float(_auc_columns(truth.reshape(-1, 1), scores.reshape(-1, 1))[0])
