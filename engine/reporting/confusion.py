"""The multi-label confusion view: which classes outrank a clip's true labels, and how often.

In single-label tagging a confusion matrix counts "true A, predicted B". With
several true labels per clip and a ranking as the output (what LWLRAP
scores), the counterpart is: for each true label ``t`` of a clip, every
class ``c`` the clip does not carry whose score is above ``t``'s. Each such
pair pushes ``t`` down the ranking and costs LRAP, so the pairs counted most
often are the confusions worth looking at. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Outranking", "outranking_counts", "top_pairs"]

#: Clips scored at once: a chunk's comparison cube is chunk x classes x classes booleans.
_CHUNK = 256


def outranking_counts(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``counts[t, c]``: how many (clip, true label ``t``) pairs have the absent class ``c`` scored above ``t``.

    ``truth`` is the label matrix ``[clips, classes]`` (0/1), ``scores`` the
    scores in the same order. Ties do not count (a tie is not outranking).
    Rows of ``scores`` that are not finite (folds never scored) are left out.
    """
    truth = np.asarray(truth) > 0.5
    scores = np.asarray(scores, dtype=np.float64)
    if truth.shape != scores.shape or truth.ndim != 2:
        raise ValueError(f"truth {truth.shape} and scores {scores.shape} must both be [clips, classes]")
    keep = np.isfinite(scores).all(axis=1)
    truth, scores = truth[keep], scores[keep]
    n_classes = truth.shape[1]
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    for start in range(0, len(truth), _CHUNK):
        t = truth[start:start + _CHUNK]
        s = scores[start:start + _CHUNK]
        # above[i, a, b]: in clip i, class b is scored above class a.
        above = s[:, None, :] > s[:, :, None]
        counts += (above & t[:, :, None] & ~t[:, None, :]).sum(axis=0)
    return counts


@dataclass
class Outranking:
    """The most frequent (true label, class scored above it) pairs of one run."""

    #: ``(true class, outranking class, times, share of the true class's labels)``, most frequent first.
    pairs: list[tuple[str, str, int, float]]
    #: ``(class, times it outranked any true label)``, most frequent first.
    impostors: list[tuple[str, int]]
    #: Clips counted (those with scores) and their true labels.
    clips: int
    labels: int


def top_pairs(truth: np.ndarray, scores: np.ndarray, classes: list[str], *, limit: int = 20) -> Outranking:
    """The ``limit`` most frequent outranking pairs and outranking classes of ``scores`` against ``truth``."""
    counts = outranking_counts(truth, scores)
    keep = np.isfinite(np.asarray(scores, dtype=np.float64)).all(axis=1)
    positives = (np.asarray(truth)[keep] > 0.5).sum(axis=0)
    flat = np.argsort(-counts, axis=None, kind="stable")[:limit]
    pairs = []
    for index in flat:
        t, c = divmod(int(index), counts.shape[1])
        if counts[t, c] == 0:
            break
        pairs.append((classes[t], classes[c], int(counts[t, c]), float(counts[t, c]) / max(1, int(positives[t]))))
    by_class = counts.sum(axis=0)
    order = np.argsort(-by_class, kind="stable")[:limit]
    impostors = [(classes[int(c)], int(by_class[c])) for c in order if by_class[c] > 0]
    return Outranking(pairs=pairs, impostors=impostors, clips=int(keep.sum()), labels=int(positives.sum()))
