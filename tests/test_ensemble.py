"""Rank averaging, OOF-referenced test ranks, rank calibration, blends and greedy selection."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

import engine.ensemble as ensemble
from engine.ensemble import (
    Member,
    QuantileMapper,
    RankCalibrator,
    blend,
    cross_fitted_calibration,
    cross_fitted_quantile_map,
    greedy_forward_selection,
    rank_against,
    rank_average,
    rank_normalise,
    weights_from_cv,
)
from engine.metrics import lwlrap
from tests.helpers.processes import heavy_modules_loaded_by

# 4 clips x 2 classes; class 0 has a tie (0.4, 0.4).
A = np.array([[0.1, 0.8],
              [0.4, 0.2],
              [0.4, 0.5],
              [0.9, 0.1]])
B = np.array([[4.0, 1.0],
              [3.0, 2.0],
              [2.0, 3.0],
              [1.0, 4.0]])


def make_case(seed: int, n: int = 120, c: int = 6, strengths=(2.0, 0.4)) -> tuple[np.ndarray, list[np.ndarray]]:
    """Truth with at least one label per clip, and one score matrix per strength (higher = better)."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, c)) < 0.2).astype(int)
    truth[np.arange(n), rng.integers(c, size=n)] = 1
    scores = [1.0 / (1.0 + np.exp(-(s * (2 * truth - 1) + rng.normal(size=(n, c))))) for s in strengths]
    return truth, scores


def loop_rank_against(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Straightforward per-value version of rank_against's definition."""
    m = reference.shape[0]
    out = np.empty(scores.shape)
    for c in range(scores.shape[1]):
        ref = reference[:, c]
        lo_end, hi_end = ref.min(), ref.max()
        scale = hi_end - lo_end if hi_end > lo_end else max(abs(lo_end), 1.0)

        def level(v: float) -> float:
            return (np.sum(ref < v) + 0.5 * np.sum(ref == v)) / m

        for i, v in enumerate(scores[:, c]):
            if v < lo_end:
                out[i, c] = level(lo_end) / (1.0 + (lo_end - v) / scale)
            elif v > hi_end:
                out[i, c] = 1.0 - (1.0 - level(hi_end)) / (1.0 + (v - hi_end) / scale)
            elif np.any(ref == v):
                out[i, c] = level(v)
            else:
                below, above = ref[ref < v].max(), ref[ref > v].min()
                t = (v - below) / (above - below)
                out[i, c] = level(below) + t * (level(above) - level(below))
    return out


def assert_same_order(before: np.ndarray, after: np.ndarray) -> None:
    """Per column: equal inputs give equal outputs and a larger input a strictly larger output.

    Inputs closer than 1e-12 (a few float64 ulps, e.g. two sums of ranks that
    differ only by rounding) need only keep their order, not stay distinct:
    no float64 map can keep every one-ulp gap.
    """
    for c in range(before.shape[1]):
        order = np.argsort(before[:, c], kind="stable")
        x, y = before[order, c], after[order, c]
        gap, step = np.diff(x), np.diff(y)
        assert np.all(step[gap == 0] == 0), f"class {c}: a tie was broken"
        assert np.all(step >= 0), f"class {c}: order lost"
        assert np.all(step[gap > 1e-12] > 0), f"class {c}: distinct values collided"


# ------------------------------------------------------------------ rank_normalise / rank_average


def test_rank_normalise_hand_example():
    # class 0: 0.1 -> rank 0, the two 0.4 share (1 + 2) / 2, 0.9 -> 3; divided by n - 1 = 3
    expected = np.array([[0.0, 1.0],
                         [0.5, 1 / 3],
                         [0.5, 2 / 3],
                         [1.0, 0.0]])
    np.testing.assert_allclose(rank_normalise(A), expected, atol=1e-15)


def test_rank_normalise_matches_scipy_average_ranks():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((50, 7)), 1)  # many ties
    expected = (rankdata(scores, method="average", axis=0) - 1) / 49
    np.testing.assert_allclose(rank_normalise(scores), expected, atol=1e-14)


def test_rank_average_hand_example_and_weight_normalisation():
    # rank_normalise(B): class 0 -> [1, 2/3, 1/3, 0], class 1 -> [0, 1/3, 2/3, 1]
    expected = np.array([[0.75 * 0.0 + 0.25 * 1.0, 0.75 * 1.0 + 0.25 * 0.0],
                         [0.75 * 0.5 + 0.25 * 2 / 3, 0.75 / 3 + 0.25 / 3],
                         [0.75 * 0.5 + 0.25 / 3, 0.75 * 2 / 3 + 0.25 * 2 / 3],
                         [0.75 * 1.0 + 0.25 * 0.0, 0.75 * 0.0 + 0.25 * 1.0]])
    np.testing.assert_allclose(rank_average([A, B], [3.0, 1.0]), expected, atol=1e-15)
    np.testing.assert_allclose(rank_average([A, B], [0.75, 0.25]), expected, atol=1e-15)
    np.testing.assert_allclose(rank_average([A, B]), 0.5 * rank_normalise(A) + 0.5 * rank_normalise(B),
                               atol=1e-15)


def test_weights_from_cv_are_proportional_and_sum_to_one():
    np.testing.assert_allclose(weights_from_cv([0.8, 0.6, 0.6]), [0.4, 0.3, 0.3])
    with pytest.raises(ValueError, match="zero"):
        weights_from_cv([0.0, 0.0])


def test_rank_average_rejects_bad_members_and_weights():
    with pytest.raises(ValueError, match="member 2 has shape"):
        rank_average([A, B, A[:3]])
    with pytest.raises(ValueError, match="member 1 is negative"):
        rank_average([A, B], [1.0, -0.5])
    with pytest.raises(ValueError, match="all weights are zero"):
        rank_average([A, B], [0.0, 0.0])
    with pytest.raises(ValueError, match="2 weights for 3 members"):
        rank_average([A, B, A], [1.0, 1.0])
    with pytest.raises(ValueError, match="member 0 holds NaN"):
        rank_average([np.where(A > 0.8, np.nan, A)])


@pytest.mark.parametrize("weights", [None, [0.2, 0.8], [1.0, 0.0], [5.0, 5.0], [1e-3, 7.0]])
def test_ensemble_of_a_model_with_itself_keeps_its_ranking(weights):
    truth, (scores, _) = make_case(1)
    for combined in (rank_average([scores, scores], weights), rank_normalise(scores)):
        assert np.array_equal(np.argsort(combined, axis=0, kind="stable"),
                              np.argsort(scores, axis=0, kind="stable"))
    single = Member("m", scores, scores[:30], 0.9)
    twice = [Member("m", scores, scores[:30], 0.9), Member("m copy", scores, scores[:30], 0.9)]
    for method in ("rank", "mean"):
        for calibrate in (False, True):
            one = blend([single], truth, method=method, calibrate=calibrate)
            two = blend(twice, truth, weights=weights, method=method, calibrate=calibrate)
            assert np.array_equal(np.argsort(two.oof, axis=0, kind="stable"),
                                  np.argsort(scores, axis=0, kind="stable"))
            assert two.oof_lwlrap == one.oof_lwlrap
            np.testing.assert_allclose(two.test, one.test, atol=1e-12)


# ------------------------------------------------------------------ rank_against


def test_rank_against_hand_example():
    reference = np.array([[1.0], [2.0], [2.0], [4.0]])
    # mid-rank levels: 1 -> 0.5/4, 2 -> (1 + 2/2)/4, 4 -> (3 + 0.5)/4; range 3 sets the tail scale
    scores = np.array([[0.0], [1.0], [1.5], [2.0], [3.0], [4.0], [5.0]])
    expected = [0.125 / (1 + 1 / 3), 0.125, 0.3125, 0.5, 0.6875, 0.875,
                1 - 0.125 / (1 + 1 / 3)]
    np.testing.assert_allclose(rank_against(reference, scores)[:, 0], expected, atol=1e-15)


def test_rank_against_matches_loop_with_ties_and_values_beyond_the_ends():
    rng = np.random.default_rng(2)
    reference = np.round(rng.random((40, 5)), 1)
    reference[:, 4] = 0.3  # a constant class
    scores = np.round(rng.normal(0.5, 0.5, size=(30, 5)), 2)
    scores[:5] = reference[:5]  # exact hits on reference values
    np.testing.assert_allclose(rank_against(reference, scores), loop_rank_against(reference, scores),
                               atol=1e-14)


def test_rank_against_itself_is_an_affine_map_of_rank_normalise():
    rng = np.random.default_rng(3)
    oof = np.round(rng.random((25, 4)), 1)
    np.testing.assert_allclose(rank_against(oof, oof), (rank_normalise(oof) * 24 + 0.5) / 25,
                               atol=1e-14)


def test_rank_against_keeps_ties_adds_none_and_stays_inside_unit_interval():
    rng = np.random.default_rng(4)
    reference = rng.random((60, 3))
    scores = np.concatenate([rng.random((20, 3)), reference[:5],
                             [[-1e6] * 3, [-3.0] * 3, [-2.9] * 3, [5.0] * 3, [5.001] * 3, [40.0] * 3, [1e6] * 3]])
    scores = np.concatenate([scores, scores[:4]])  # duplicated rows must stay equal
    ranks = rank_against(reference, scores)
    assert_same_order(scores, ranks)
    assert np.all((ranks > 0) & (ranks < 1))


def test_test_rows_are_ranked_on_the_oof_scale():
    truth, (strong, weak) = make_case(5)
    members = [Member("strong", strong, strong[10:25], 0.9), Member("weak", weak, weak[10:25], 0.7)]
    for calibrate in (False, True):
        result = blend(members, truth, method="rank_minmax", calibrate=calibrate)
        # A test clip scored like an OOF clip gets that clip's blended value.
        np.testing.assert_allclose(result.test, result.oof[10:25], atol=1e-15)


# ------------------------------------------------------------------ RankCalibrator


def test_calibrator_is_strictly_monotone_and_bounded_beyond_the_oof_range():
    truth, (strong, weak) = make_case(6)
    oof_avg = rank_average([strong, weak])
    lo, hi = oof_avg.min(0), oof_avg.max(0)
    fitted = RankCalibrator().fit(oof_avg, truth)
    edge = np.log((1 - fitted.eps) / fitted.eps)
    steepest = 1.0 / fitted.tau_min
    extremes = []
    # the steepest map the fit can choose, pushed as high and as low as it may go
    for k in (fitted.W_HIGH_IN - steepest * edge, -fitted.W_LOW_IN + steepest * edge):
        calibrator = RankCalibrator().fit(oof_avg, truth)
        calibrator.taus_ = np.full(truth.shape[1], fitted.tau_min)
        calibrator.biases_ = np.full(truth.shape[1], -k / steepest)
        extremes.append(calibrator)
    for calibrator in (fitted, *extremes):
        # test rows up to a full OOF range past either end, plus repeated rows
        beyond = lo + np.array([[-1.0], [-0.5], [-0.01], [-1e-6], [1 + 1e-6], [1.01], [1.5], [2.0]]) * (hi - lo)
        values = np.concatenate([oof_avg, beyond, oof_avg[:3]])
        probs = calibrator.transform(values)
        assert np.all((probs > 0) & (probs < 1))
        assert_same_order(values, probs)
        np.testing.assert_array_equal(calibrator.transform(oof_avg), probs[:len(oof_avg)])
        # absurdly far values still give probabilities, never NaN or values outside [0, 1]
        extreme = calibrator.transform(np.array([[-1e9], [1e9]]) * np.ones((1, truth.shape[1])))
        assert np.all((extreme >= 0) & (extreme <= 1)) and np.all(extreme[0] < extreme[1])


def direct_bce(oof_avg: np.ndarray, truth: np.ndarray, tau: float, bias: float,
               eps: float = 1e-3) -> np.ndarray:
    """BCE per class of sigmoid((logit(q) - bias) / tau), q the min-max rank squeezed into [eps, 1 - eps]."""
    r = (oof_avg - oof_avg.min(0)) / (oof_avg.max(0) - oof_avg.min(0))
    q = eps + (1 - 2 * eps) * r
    p = 1 / (1 + np.exp(-(np.log(q / (1 - q)) - bias) / tau))
    return -np.mean(truth * np.log(p) + (1 - truth) * np.log(1 - p), axis=0)


def test_fitted_temperature_and_bias_lower_bce_and_reach_the_minimum():
    rng = np.random.default_rng(7)
    n = 400
    oof_avg = rng.random((n, 4))
    truth = np.zeros((n, 4), dtype=int)
    truth[:, 0] = (oof_avg[:, 0] + 0.3 * rng.normal(size=n)) > 0.8  # follows the rank, rare-ish
    truth[:, 1] = rng.random(n) < 0.5            # unrelated to the rank: wants a flat map near 0.5
    truth[:, 2] = rng.random(n) < 0.05           # rare and unrelated: wants a flat map near 0.05
    truth[:, 3] = 0                              # no positives: takes the shared map
    calibrator = RankCalibrator(prior_rows=0).fit(oof_avg, truth)  # no shrinkage: each class's own optimum

    np.testing.assert_allclose(calibrator.bce_before_, direct_bce(oof_avg, truth, 1.0, 0.0), rtol=1e-12)
    assert np.all(calibrator.bce_after_ <= calibrator.bce_before_)
    for c in (0, 1, 2):
        assert calibrator.bce_after_[c] < calibrator.bce_before_[c] - 0.01
        np.testing.assert_allclose(
            calibrator.bce_after_[c],
            direct_bce(oof_avg, truth, calibrator.taus_[c], calibrator.biases_[c])[c], rtol=1e-10)
    assert calibrator.taus_[0] < calibrator.taus_[1] and calibrator.taus_[0] < calibrator.taus_[2]
    assert (calibrator.taus_[3], calibrator.biases_[3]) == (calibrator.shared_tau_, calibrator.shared_bias_)

    # At an interior minimum the bias makes the mean probability equal the base rate.
    probs = calibrator.transform(oof_avg)
    np.testing.assert_allclose(probs[:, :3].mean(0), truth[:, :3].mean(0), atol=1e-6)
    assert probs[:, 2].max() < 0.2                # the rare unrelated class never looks likely

    # No (tau, bias) on a grid around the fit does better.
    for c in (0, 1, 2):
        tau, bias = calibrator.taus_[c], calibrator.biases_[c]
        for t in tau * np.exp(np.linspace(-0.5, 0.5, 21)):
            for b in bias + np.linspace(-1.0, 1.0, 21):
                assert calibrator.bce_after_[c] <= direct_bce(oof_avg, truth, t, b)[c] + 1e-12


def test_class_maps_are_shrunk_towards_the_shared_map():
    rng = np.random.default_rng(11)
    n = 300
    oof_avg = rng.random((n, 5))
    truth = (oof_avg + 0.4 * rng.normal(size=(n, 5)) > np.array([0.9, 0.95, 0.8, 1.0, 1.1])).astype(int)
    eps = 1e-3
    r = (oof_avg - oof_avg.min(0)) / (oof_avg.max(0) - oof_avg.min(0))
    q = eps + (1 - 2 * eps) * r
    z = np.log(q / (1 - q))

    free = RankCalibrator(prior_rows=0).fit(oof_avg, truth)
    shrunk = RankCalibrator(prior_rows=30).fit(oof_avg, truth)
    pooled = RankCalibrator(prior_rows=1e12).fit(oof_avg, truth)
    assert shrunk.shared_tau_ == free.shared_tau_ and shrunk.shared_bias_ == free.shared_bias_
    a0, k0 = 1 / shrunk.shared_tau_, -shrunk.shared_bias_ / shrunk.shared_tau_

    # The shared map minimises the BCE of all classes' rows pooled.
    pooled_bce = lambda t, b: float(np.mean(direct_bce(oof_avg, truth, t, b)))  # noqa: E731
    best = pooled_bce(shrunk.shared_tau_, shrunk.shared_bias_)
    for t in shrunk.shared_tau_ * np.exp(np.linspace(-0.3, 0.3, 13)):
        for b in shrunk.shared_bias_ + np.linspace(-0.5, 0.5, 13):
            assert best <= pooled_bce(t, b) + 1e-12
    # An overwhelming prior gives every class the shared map.
    np.testing.assert_allclose(pooled.taus_, shrunk.shared_tau_, rtol=1e-6)
    np.testing.assert_allclose(pooled.biases_, shrunk.shared_bias_, rtol=1e-6, atol=1e-6)

    # Each shrunk class map is the penalised optimum: the BCE gradient balances the pull.
    lam = 30 / n
    a, k = 1 / shrunk.taus_, -shrunk.biases_ / shrunk.taus_
    p = 1 / (1 + np.exp(-(z * a + k)))
    np.testing.assert_allclose(np.mean(p - truth, axis=0), -lam * (k - k0), atol=1e-7)
    np.testing.assert_allclose(np.mean((p - truth) * z, axis=0), -lam * (a - a0), atol=1e-7)
    # ... and lies between the class's own map and the shared one.
    k_free = -free.biases_ / free.taus_
    assert np.all(np.abs(k - k0) < np.abs(k_free - k0))


def test_calibration_puts_rare_and_common_classes_on_one_probability_scale():
    # Two classes ranked equally well, one common and one rare: per-class ranks
    # put their top clips level, calibrated probabilities know the rare class's
    # top clips are less often positive, which is what LWLRAP compares within a clip.
    rng = np.random.default_rng(3)
    n = 4000
    truth = np.zeros((n, 2), dtype=int)
    truth[:, 0] = rng.random(n) < 0.5
    truth[:, 1] = rng.random(n) < 0.03
    truth[truth.sum(1) == 0, 0] = 1
    scores = truth * 1.5 + rng.normal(size=(n, 2))
    member = Member("m", scores)
    raw = blend([member], truth, method="rank_minmax", calibrate=False)
    calibrated = blend([member], truth, method="rank_minmax", calibrate=True)
    assert calibrated.oof_lwlrap > raw.oof_lwlrap + 0.01
    assert calibrated.raw_oof_lwlrap == pytest.approx(raw.oof_lwlrap, abs=1e-12)
    # Near the base rates (exactly at them without the shrinkage towards the shared map),
    # where the ranks sit around 0.5 for both classes.
    np.testing.assert_allclose(calibrated.oof.mean(0), truth.mean(0), atol=0.02)
    assert np.all(np.abs(raw.oof.mean(0) - 0.5) < 0.05)


def test_cross_fitted_calibration_maps_each_fold_with_the_other_folds_fit():
    truth, (strong, weak) = make_case(12, n=200)
    oof_avg = rank_average([strong, weak])
    folds = np.arange(len(truth)) % 4
    crossed = cross_fitted_calibration(oof_avg, truth, folds)
    for k in range(4):
        held = folds == k
        direct = RankCalibrator().fit(oof_avg[~held], truth[~held]).transform(oof_avg[held])
        np.testing.assert_array_equal(crossed[held], direct)
    assert np.all((crossed > 0) & (crossed < 1))
    # In-sample differs: each row's own label took part in that fit.
    assert not np.allclose(crossed, RankCalibrator().fit_transform(oof_avg, truth))

    members = [Member("strong", strong, strong[:30], 0.9), Member("weak", weak, weak[:30], 0.7)]
    result = blend(members, truth, method="rank_minmax", folds=folds)
    in_sample = blend(members, truth, method="rank_minmax")
    raw = blend(members, truth, method="rank", calibrate=False).oof
    np.testing.assert_array_equal(result.oof, cross_fitted_calibration(raw, truth, folds))
    # Test rows use the calibrator fitted on every OOF row either way.
    np.testing.assert_array_equal(result.test, in_sample.test)
    assert result.raw_oof_lwlrap == in_sample.raw_oof_lwlrap
    assert result.oof_lwlrap == pytest.approx(lwlrap(truth, result.oof), abs=1e-12)
    # Without calibration the folds change nothing.
    np.testing.assert_array_equal(blend(members, truth, method="rank", folds=folds, calibrate=False).oof, raw)

    with pytest.raises(ValueError, match="one fold per OOF row"):
        cross_fitted_calibration(oof_avg, truth, folds[:-1])
    with pytest.raises(ValueError, match="at least two folds"):
        cross_fitted_calibration(oof_avg, truth, np.zeros(len(truth), dtype=int))


def test_calibrator_checks_its_inputs():
    with pytest.raises(ValueError, match="before fit"):
        RankCalibrator().transform(A)
    with pytest.raises(ValueError, match="only 0 and 1"):
        RankCalibrator().fit(A, np.full(A.shape, 2))
    with pytest.raises(ValueError, match="does not match"):
        RankCalibrator().fit(A, np.ones((3, 2)))


# ------------------------------------------------------------------ blend / greedy selection


@pytest.mark.parametrize("method", ["rank", "rank_minmax", "mean", "logit_mean", "geo_mean"])
@pytest.mark.parametrize("calibrate", [False, True])
def test_blend_of_strong_and_weak_beats_the_weak_member(method, calibrate):
    truth, (strong, weak) = make_case(8)
    members = [Member("strong", strong, None, lwlrap(truth, strong)),
               Member("weak", weak, None, lwlrap(truth, weak))]
    result = blend(members, truth, method=method, calibrate=calibrate)
    assert result.oof_lwlrap >= lwlrap(truth, weak)
    assert result.oof_lwlrap == pytest.approx(lwlrap(truth, result.oof), abs=1e-12)
    assert result.method == method and result.test is None
    # Only a rank blend has a map to probabilities; the other methods average probabilities.
    assert (result.calibrator is not None) == (calibrate and method in ("rank", "rank_minmax"))
    assert np.all((result.oof >= 0) & (result.oof <= 1))
    np.testing.assert_allclose(np.nansum(result.per_class * result.class_weights), result.oof_lwlrap,
                               atol=1e-12)


def test_blend_weights_default_to_cv_lwlrap_then_equal():
    truth, (strong, weak) = make_case(9)
    with_cv = [Member("a", strong, None, 0.9), Member("b", weak, None, 0.6)]
    np.testing.assert_allclose(blend(with_cv, truth, method="rank", calibrate=False).weights, [0.6, 0.4])
    partial = [Member("a", strong, None, 0.9), Member("b", weak, None, None)]
    np.testing.assert_allclose(blend(partial, truth, method="rank", calibrate=False).weights, [0.5, 0.5])
    explicit = blend(with_cv, truth, weights=[1, 3], method="rank", calibrate=False)
    np.testing.assert_allclose(explicit.weights, [0.25, 0.75])
    ranked = 0.25 * rank_against(strong, strong) + 0.75 * rank_against(weak, weak)
    np.testing.assert_allclose(explicit.oof, ranked, atol=1e-15)
    mean = blend(with_cv, truth, weights=[1, 3], method="mean", calibrate=False)
    np.testing.assert_allclose(mean.oof, 0.25 * strong + 0.75 * weak, atol=1e-15)


def test_blend_rejects_mismatched_members():
    truth, (strong, weak) = make_case(10)
    with pytest.raises(ValueError, match=r"member 1 \(short\) OOF has shape"):
        blend([Member("a", strong), Member("short", weak[:-1])], truth)
    with pytest.raises(ValueError, match=r"member 1 \(b\) test scores have shape"):
        blend([Member("a", strong, strong[:5]), Member("b", weak, weak[:6])], truth)
    with pytest.raises(ValueError, match="method must be one of"):
        blend([Member("a", strong)], truth, method="median")
    with pytest.raises(ValueError, match="at least one member"):
        blend([], truth)


def test_greedy_selection_picks_the_strongest_first_and_never_gets_worse():
    truth, scores = make_case(11, strengths=(0.3, 1.6, 0.8, 1.2))
    members = [Member(f"m{k}", s) for k, s in enumerate(scores)]
    singles = [lwlrap(truth, rank_against(s, s)) for s in scores]
    picks, weights, history = greedy_forward_selection(members, truth, max_steps=8, method="rank",
                                                       calibrate=False)
    assert picks[0] == int(np.argmax(singles)) == 1
    assert history[0] == pytest.approx(max(singles), abs=1e-12)
    assert len(history) == len(picks) >= 1
    assert all(b > a for a, b in zip(history, history[1:]))
    counts = np.bincount(picks, minlength=len(members))
    np.testing.assert_allclose(weights, counts / counts.sum())
    assert blend(members, truth, weights=weights, method="rank", calibrate=False).oof_lwlrap == pytest.approx(
        history[-1], abs=1e-12)

    picks, weights, history = greedy_forward_selection(members, truth, with_replacement=False, method="rank",
                                                       calibrate=False)
    assert len(set(picks)) == len(picks) and picks[0] == 1
    assert all(b > a for a, b in zip(history, history[1:]))


def test_ensemble_module_does_not_pull_in_torch_sklearn_scipy_or_librosa():
    # The console imports engine.ensemble and must start fast; check in a fresh interpreter.
    assert heavy_modules_loaded_by("import engine.ensemble") == []


# ------------------------------------------------------------------ quantile mapping, methods, auto


def loop_quantile_map(ranks: np.ndarray, target: np.ndarray, queries: np.ndarray, tie_break: float) -> np.ndarray:
    """Quantile mapping written out per value: position among the fitted ranks, then the target's quantile."""
    n = ranks.shape[0]
    u = loop_rank_against(ranks, queries)
    out = np.empty(queries.shape)
    for c in range(queries.shape[1]):
        levels = [sorted(target[:, c])[i] * (1 - tie_break) + tie_break * (i + 1) / (n + 1) for i in range(n)]
        knots = [(i + 0.5) / n for i in range(n)]
        for j, uj in enumerate(u[:, c]):
            if uj < knots[0]:
                out[j, c] = levels[0] * uj / knots[0]
            elif uj > knots[-1]:
                out[j, c] = 1 - (1 - levels[-1]) * (1 - uj) / (1 - knots[-1])
            else:
                i = max(i for i in range(n) if knots[i] <= uj)
                if i == n - 1:
                    out[j, c] = levels[i]
                else:
                    t = (uj - knots[i]) / (knots[i + 1] - knots[i])
                    out[j, c] = levels[i] + t * (levels[i + 1] - levels[i])
    return out


def test_quantile_map_matches_a_loop_with_ties_and_values_beyond_the_ends():
    rng = np.random.default_rng(20)
    ranks = np.round(rng.random((40, 3)), 2)            # ties among the fitted ranks
    target = rng.random((40, 3)) ** 3
    target[:, 2] = 0.25                                  # a constant target class
    queries = np.vstack([ranks[:7], rng.uniform(-0.5, 1.5, size=(30, 3))])
    mapper = QuantileMapper(tie_break=1e-6).fit(ranks, target)
    np.testing.assert_allclose(mapper.transform(queries), loop_quantile_map(ranks, target, queries, 1e-6),
                               rtol=0, atol=1e-12)
    mapped = mapper.transform(queries)
    assert np.all((mapped > 0) & (mapped < 1))
    # Strictly increasing even onto the constant class: no new ties, none broken.
    assert_same_order(queries, mapped)
    with pytest.raises(ValueError, match="before fit"):
        QuantileMapper().transform(ranks)
    with pytest.raises(ValueError, match="probabilities in"):
        QuantileMapper().fit(ranks, target + 1.0)


def test_rank_blend_of_one_member_gives_back_its_probabilities_and_score():
    truth, (strong, _weak) = make_case(21, n=300)
    member = Member("one", strong, strong[:40], 0.9)
    folds = np.arange(len(truth)) % 5
    in_sample = blend([member], truth, method="rank")
    # In sample the map returns the member's own values (up to the 1e-9 nudge).
    np.testing.assert_allclose(in_sample.oof, strong, atol=2e-9)
    np.testing.assert_allclose(in_sample.test, strong[:40], atol=2e-9)
    crossed = blend([member], truth, method="rank", folds=folds)
    # Cross-fitted, each class keeps its own scale: the score stays with the member's.
    assert crossed.oof_lwlrap == pytest.approx(lwlrap(truth, strong), abs=0.01)
    assert crossed.warning is None or "below its best member one" in crossed.warning
    np.testing.assert_array_equal(crossed.oof, cross_fitted_quantile_map(rank_against(strong, strong), strong,
                                                                          folds))


def test_mean_logit_and_geometric_blends_match_their_formulas():
    truth, (strong, weak) = make_case(22)
    members = [Member("a", strong, strong[:9]), Member("b", weak, weak[:9])]
    w = np.array([0.25, 0.75])

    def logit(p):
        return np.log(p / (1 - p))

    for method, expected in (
            ("mean", lambda x, y: w[0] * x + w[1] * y),
            ("logit_mean", lambda x, y: 1 / (1 + np.exp(-(w[0] * logit(x) + w[1] * logit(y))))),
            ("geo_mean", lambda x, y: x ** w[0] * y ** w[1])):
        result = blend(members, truth, weights=[1, 3], method=method, folds=np.arange(len(truth)) % 3)
        np.testing.assert_allclose(result.oof, expected(strong, weak), rtol=1e-12)
        np.testing.assert_allclose(result.test, expected(strong[:9], weak[:9]), rtol=1e-12)
        assert result.oof_lwlrap == pytest.approx(lwlrap(truth, expected(strong, weak)), abs=1e-12)
        assert [c.method for c in result.candidates] == [method]
    with pytest.raises(ValueError, match=r"member b's OOF scores lie outside \[0, 1\]"):
        blend([members[0], Member("b", weak * 3)], truth, method="logit_mean")


def test_auto_scores_every_candidate_and_never_ends_below_the_best_member():
    truth, (strong, weak) = make_case(23, n=200, strengths=(1.6, 0.3))
    folds = np.arange(len(truth)) % 4
    members = [Member("strong", strong, strong[:11]), Member("weak", weak, weak[:11])]
    result = blend(members, truth, folds=folds)
    names = [c.method for c in result.candidates]
    assert names == [ensemble.BEST, *ensemble.BLEND_METHODS]
    scores = {c.method: c.oof_lwlrap for c in result.candidates}
    # Each candidate's score is that method's own blend, cross-fitted.
    for method in ensemble.BLEND_METHODS:
        assert scores[method] == pytest.approx(blend(members, truth, method=method, folds=folds).oof_lwlrap,
                                               abs=1e-12)
    assert scores[ensemble.BEST] == pytest.approx(lwlrap(truth, strong), abs=1e-12)
    assert result.method == max(scores, key=scores.get) and result.requested == "auto"
    assert result.oof_lwlrap == max(scores.values()) >= lwlrap(truth, strong)
    assert result.best_member == "strong" and result.warning is None
    assert set(result.candidate_tests) == set(names)
    # A weak member dragging the blend down: an explicit method says so, auto falls back.
    worse = blend(members, truth, weights=[1, 9], method="mean", folds=folds)
    assert worse.oof_lwlrap < lwlrap(truth, strong)
    assert "below its best member strong" in worse.warning
    fallback = blend(members, truth, weights=[1, 9], folds=folds)
    assert fallback.oof_lwlrap >= lwlrap(truth, strong) and fallback.warning is None
    # Under auto a method that cannot apply is a candidate without a score, with the reason.
    odd = blend([members[0], Member("ranks", weak * 4, weak[:11] * 4)], truth, folds=folds)
    unscored = {c.method: c.note for c in odd.candidates if c.oof_lwlrap is None}
    assert set(unscored) == {"logit_mean", "geo_mean", "rank"} and "outside [0, 1]" in unscored["geo_mean"]


def test_greedy_scores_with_the_cross_fitted_blend():
    truth, scores = make_case(24, n=160, strengths=(0.3, 1.6, 0.8, 1.2))
    members = [Member(f"m{k}", s) for k, s in enumerate(scores)]
    folds = np.arange(len(truth)) % 4
    for method in ("rank", "auto"):
        picks, weights, history = greedy_forward_selection(members, truth, max_steps=4, method=method,
                                                           folds=folds)
        assert all(b > a for a, b in zip(history, history[1:]))
        again = blend(members, truth, weights=weights, method=method, folds=folds,
                      candidates=None)
        best_blend = max(c.oof_lwlrap for c in again.candidates if c.method != ensemble.BEST)
        expected = again.oof_lwlrap if method == "rank" else best_blend
        assert expected == pytest.approx(history[-1], abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_auto_is_never_below_the_best_member_not_even_by_rounding(seed):
    truth, scores = make_case(30 + seed, n=90, c=12, strengths=(1.2, 0.3, 0.6)[: 1 + seed % 3])
    members = [Member(f"m{k}", s, cv_lwlrap=lwlrap(truth, s)) for k, s in enumerate(scores)]
    result = blend(members, truth, folds=np.arange(len(truth)) % 3)
    assert result.oof_lwlrap >= max(lwlrap(truth, s) for s in scores)
    assert result.warning is None
