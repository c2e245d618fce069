"""engine.stats against straightforward references: a loop of LWLRAPs on resampled clips, the statistics module."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from engine import stats
from engine.metrics import lwlrap


def _labels_and_scores(seed: int, n: int = 80, c: int = 10):
    rng = np.random.default_rng(seed)
    truth = rng.random((n, c)) < 0.15
    truth[np.arange(n), rng.integers(0, c, n)] = True
    truth[:3] = False  # clips without a label count for nothing
    a = rng.random((n, c)) + 0.6 * truth
    b = rng.random((n, c)) + 0.4 * truth
    return truth, a, b


def _sklearn_lwlrap(truth, scores) -> float:
    keep = truth.sum(axis=1) > 0
    return label_ranking_average_precision_score(truth[keep], scores[keep], sample_weight=truth[keep].sum(axis=1))


def test_the_paired_bootstrap_equals_a_loop_of_lwlraps_on_the_same_resampled_clips():
    truth, a, b = _labels_and_scores(0)
    result = stats.paired_bootstrap(truth, a, b, resamples=300, seed=5)
    idx = np.concatenate(list(stats.bootstrap_indices(len(truth), 300, 5)))
    diffs = []
    for draw in idx:
        t = truth[draw]
        if t.sum() == 0:
            continue
        diffs.append(_sklearn_lwlrap(t, a[draw]) - _sklearn_lwlrap(t, b[draw]))
    diffs = np.array(diffs)
    assert result.diff == pytest.approx(lwlrap(truth, a) - lwlrap(truth, b), abs=1e-12)
    assert result.low == pytest.approx(np.quantile(diffs, 0.025), abs=1e-12)
    assert result.high == pytest.approx(np.quantile(diffs, 0.975), abs=1e-12)
    assert result.p_not_better == pytest.approx(np.mean(diffs <= 0))
    assert result.resamples == len(diffs) and result.n_clips == len(truth)


def test_a_run_against_itself_is_within_noise_and_a_much_better_run_is_not():
    truth, a, b = _labels_and_scores(1, n=200)
    same = stats.paired_bootstrap(truth, a, a, resamples=200)
    assert same.diff == 0 and not same.significant and "within clip noise" in same.verdict()
    perfect = truth + 0.01 * np.random.default_rng(2).random(truth.shape)
    better = stats.paired_bootstrap(truth, perfect, b, resamples=200)
    assert better.significant and better.low > 0 and "larger than clip noise" in better.verdict()


@pytest.mark.parametrize("a, b", [([0.80, 0.82, 0.81], [0.70, 0.71]), ([0.80, 0.81], [0.805, 0.79, 0.82]),
                                  ([0.8], [0.7, 0.75])])
def test_the_seed_spread_equals_the_textbook_standard_error(a, b):
    result = stats.seed_spread(a, b)
    assert result.diff == pytest.approx(statistics.mean(a) - statistics.mean(b))
    if len(a) < 2 or len(b) < 2:
        assert result.noise is None and result.significant is None and "single seed" in result.verdict()
        return
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    assert result.noise == pytest.approx(se)
    assert result.significant == (abs(result.diff) > 2 * se)


def test_plus_minus_writes_a_mean_and_its_spread():
    assert stats.plus_minus(0.81234, 0.004) == "0.8123 ± 0.0040"
    assert stats.plus_minus(0.8, None) == "0.8000" and stats.plus_minus(None, None) == "-"
