"""LWLRAP and ROC AUC checked against sklearn and a textbook per-clip loop."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score, roc_auc_score

from engine.metrics import (
    lwlrap,
    per_class_lwlrap,
    roc_auc_macro,
    roc_auc_micro,
    roc_auc_per_class,
)

# (seed, n_clips, n_classes, decimals): decimals=None keeps continuous scores,
# small values force many ties.
CASES = [
    (0, 40, 5, None),
    (1, 120, 80, None),
    (2, 60, 12, 1),
    (3, 200, 80, 2),
    (4, 30, 3, 0),
    (5, 1, 80, None),
]


def random_case(seed: int, n: int, c: int, decimals: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A sparse multi-label truth matrix (some rows empty) and scores, optionally rounded to create ties."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, c)) < 2.5 / c).astype(np.int64)
    truth[0, rng.integers(c)] = 1  # at least one positive overall
    scores = rng.random((n, c)) + 0.5 * truth * rng.random((n, c))
    if decimals is not None:
        scores = np.round(scores, decimals)
    return truth, scores


def loop_lwlrap(truth: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Textbook LWLRAP: for each clip and each positive class, the precision at that class's rank."""
    n, c = truth.shape
    precision_sum = np.zeros(c)
    for i in range(n):
        for j in range(c):
            if not truth[i, j]:
                continue
            at_or_above = [k for k in range(c) if scores[i, k] >= scores[i, j]]
            hits = sum(1 for k in at_or_above if truth[i, k])
            precision_sum[j] += hits / len(at_or_above)
    positives = truth.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(positives > 0, precision_sum / positives, np.nan)
    weights = positives / positives.sum()
    return precision_sum.sum() / positives.sum(), per_class, weights


@pytest.mark.parametrize("seed,n,c,decimals", CASES)
def test_lwlrap_equals_sklearn_weighted_lrap(seed, n, c, decimals):
    truth, scores = random_case(seed, n, c, decimals)
    labelled = truth.sum(axis=1) > 0
    expected = label_ranking_average_precision_score(
        truth[labelled], scores[labelled], sample_weight=truth[labelled].sum(axis=1))
    assert lwlrap(truth, scores) == pytest.approx(expected, abs=1e-12)
    # bool truth gives the same answer as 0/1 integers
    assert lwlrap(truth.astype(bool), scores) == pytest.approx(expected, abs=1e-12)


def test_cases_include_unlabelled_rows_and_ties():
    truth, scores = random_case(3, 200, 80, 2)
    assert (truth.sum(axis=1) == 0).any()
    assert any(len(np.unique(row)) < len(row) for row in scores)


@pytest.mark.parametrize("seed,n,c,decimals", CASES[:5])
def test_lwlrap_and_per_class_match_loop(seed, n, c, decimals):
    truth, scores = random_case(seed, n, c, decimals)
    expected, expected_per_class, expected_weights = loop_lwlrap(truth, scores)
    per_class, weights = per_class_lwlrap(truth, scores)
    np.testing.assert_allclose(per_class, expected_per_class, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.isnan(per_class), np.isnan(expected_per_class))
    np.testing.assert_allclose(weights, expected_weights, rtol=0, atol=1e-15)
    assert lwlrap(truth, scores) == pytest.approx(expected, abs=1e-12)
    assert np.nansum(per_class * weights) == pytest.approx(lwlrap(truth, scores), abs=1e-12)


def test_class_without_positives_is_nan_with_zero_weight():
    truth = np.array([[1, 0, 0], [1, 1, 0]])
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]])
    per_class, weights = per_class_lwlrap(truth, scores)
    assert np.isnan(per_class[2]) and weights[2] == 0.0
    # class 0: clip 0 rank 1 -> 1/1; clip 1 ranked third with two positives above-or-at -> 2/3
    assert per_class[0] == pytest.approx((1.0 + 2.0 / 3.0) / 2)
    assert per_class[1] == pytest.approx(1.0)
    np.testing.assert_allclose(weights, [2 / 3, 1 / 3, 0.0])


def test_perfect_scores_give_one():
    rng = np.random.default_rng(7)
    truth = (rng.random((50, 80)) < 0.05).astype(int)
    truth[np.arange(50), rng.integers(80, size=50)] = 1
    scores = truth + 0.1 * rng.random(truth.shape)
    assert lwlrap(truth, scores) == 1.0
    per_class, _ = per_class_lwlrap(truth, scores)
    assert np.all(per_class[~np.isnan(per_class)] == 1.0)
    assert roc_auc_macro(truth, scores) == 1.0
    assert roc_auc_micro(truth, scores) == 1.0


def test_tie_between_positive_and_negative_costs_the_positive():
    truth = np.array([[1, 0, 0]])
    # tied with one negative: rank 2 with one positive -> precision 1/2
    assert lwlrap(truth, np.array([[0.5, 0.5, 0.1]])) == pytest.approx(0.5)
    # all tied: rank 3 -> 1/3
    assert lwlrap(truth, np.array([[0.5, 0.5, 0.5]])) == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed,n,c,decimals", CASES[:5])
def test_auc_matches_sklearn(seed, n, c, decimals):
    truth, scores = random_case(seed, n, c, decimals)
    per_class = roc_auc_per_class(truth, scores)
    defined = (truth.sum(axis=0) > 0) & (truth.sum(axis=0) < n)
    assert np.array_equal(~np.isnan(per_class), defined)
    expected = [roc_auc_score(truth[:, j], scores[:, j]) for j in np.flatnonzero(defined)]
    np.testing.assert_allclose(per_class[defined], expected, rtol=0, atol=1e-12)
    assert roc_auc_macro(truth, scores) == pytest.approx(np.mean(expected), abs=1e-12)
    assert roc_auc_micro(truth, scores) == pytest.approx(
        roc_auc_score(truth, scores, average="micro"), abs=1e-12)


def test_auc_macro_equals_sklearn_when_every_class_is_defined():
    truth, scores = random_case(11, 300, 6, 1)
    assert (truth.sum(axis=0) > 0).all() and (truth.sum(axis=0) < 300).all()
    assert roc_auc_macro(truth, scores) == pytest.approx(
        roc_auc_score(truth, scores, average="macro"), abs=1e-12)


def test_auc_undefined_cases_are_nan():
    truth = np.ones((4, 2), dtype=int)
    scores = np.random.default_rng(0).random((4, 2))
    assert np.isnan(roc_auc_per_class(truth, scores)).all()
    assert np.isnan(roc_auc_macro(truth, scores))
    assert np.isnan(roc_auc_micro(truth, scores))


@pytest.mark.parametrize("fn", [lwlrap, per_class_lwlrap, roc_auc_macro, roc_auc_micro, roc_auc_per_class])
def test_bad_inputs_are_rejected_with_a_reason(fn):
    truth = np.array([[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="does not match"):
        fn(truth, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2-D"):
        fn(truth[0], np.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        fn(truth, np.array([[0.1, np.nan], [0.2, 0.3]]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        fn(np.array([[2, 0], [0, 1]]), np.zeros((2, 2)))


def test_lwlrap_without_positives_is_an_error():
    with pytest.raises(ValueError, match="no positive labels"):
        lwlrap(np.zeros((3, 4)), np.zeros((3, 4)))


def test_metrics_module_stays_numpy_only():
    import ast
    import engine.metrics as metrics

    tree = ast.parse(open(metrics.__file__, encoding="utf-8").read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "numpy"}, imported
