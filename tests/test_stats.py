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


def test_seed_groups_gather_runs_that_differ_only_in_the_seed_with_mean_and_std_over_seeds(db_path):
    from engine.seeds import group_columns, seed_groups
    from engine.specs import TrainSpec, to_dict
    from engine.store import Store

    def config(seed: int, lr: float) -> dict:
        spec = TrainSpec()
        spec.train.seed, spec.optim.head_lr, spec.train.n_folds = seed, lr, 2
        return to_dict(spec)

    scored = {"a1": (1, 1e-3, [0.6, 0.7], 0.66), "a2": (2, 1e-3, [0.5, 0.6], 0.56), "a3": (3, 1e-3, [0.8], None),
              "b1": (1, 3e-4, [0.4, 0.5], 0.45)}
    with Store(db_path) as store:
        for run_id, (seed, lr, folds, cv) in scored.items():
            store.create_run(run_id, kind="train", config=config(seed, lr), seed=seed)
            for fold, value in enumerate(folds):
                store.record_fold(run_id, fold, lwlrap=value, best_epoch=1, n_val=5)
            store.finish_run(run_id, cv_lwlrap=cv)
        groups = seed_groups(store)
    by_run = {r: g for g in groups.values() for r in g.run_ids}
    a = by_run["a1"]
    assert a is by_run["a2"] is by_run["a3"] and by_run["b1"] is not a and len(groups) == 2
    # a3 trained one of its two folds: it counts in the fold means, not in the out-of-fold statistics.
    assert a.cv_mean_std == pytest.approx((statistics.mean([0.66, 0.56]), statistics.stdev([0.66, 0.56])))
    assert a.fold_mean_std == pytest.approx((statistics.mean([0.65, 0.55, 0.8]),
                                             statistics.stdev([0.65, 0.55, 0.8])))
    cells = group_columns(groups)
    assert cells["a2"]["seeds"] == 3 and cells["a2"]["group_cv"] == "0.6100 ± 0.0707"
    assert cells["b1"]["group_cv"] == "0.4500"
