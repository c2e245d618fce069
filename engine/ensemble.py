"""Ensembling of out-of-fold and test scores: blend methods, rank-to-probability maps,
the choice of method by cross-fitted OOF LWLRAP, and greedy member selection.

numpy only (the console imports this module and must not pull in torch, sklearn
or scipy). Arrays are ``[n_clips, n_classes]``, one column per class in
``sample_submission.csv`` order.

Scale of test ranks. Each member's test scores are ranked against that
member's own out-of-fold (OOF) column (``rank_against``), not among the test
rows: a test clip's rank then means "the fraction of curated clips this model
scored lower", the same quantity as on the OOF rows, whatever the size or class
mix of the test set. The OOF rows go through the same function with themselves
as reference, so OOF and test ranks are on one scale by construction.

Methods (``BLEND_METHODS``). ``mean``, ``logit_mean`` and ``geo_mean``
average the members' probabilities, their logits or their logs (a geometric
mean). ``rank`` averages per-class ranks and maps them back to probabilities
per class by quantile mapping onto the members' probability blend
(``QuantileMapper``): ranks alone throw away each class's scale, and LWLRAP
compares the classes within a clip, so a rank blend without its scale can
score below its own members. ``rank_minmax`` is the plan's map
(``RankCalibrator``): min-max to [0, 1] over the OOF rows, then
``sigmoid((logit(r) - b_c) / tau_c)`` with a temperature and a bias per class
fitted by BCE on the OOF truth. Every map is strictly increasing, so ties are
kept and no new ties appear.

Choice by measurement. ``method = "auto"`` scores the best single member and
every method by OOF LWLRAP, each fitted map cross-fitted over the dataset's
folds, and keeps the highest, so it never lands below its best member out of
fold; an explicitly chosen method that does carries a ``warning``. Greedy
selection scores with the same function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from engine.metrics import lwlrap, per_class_lwlrap
from engine.specs import ENSEMBLE_METHODS

__all__ = [
    "AUTO",
    "BEST",
    "BLEND_METHODS",
    "METHODS",
    "BlendResult",
    "CandidateScore",
    "Member",
    "QuantileMapper",
    "RankCalibrator",
    "blend",
    "cross_fitted_calibration",
    "cross_fitted_quantile_map",
    "greedy_forward_selection",
    "rank_against",
    "rank_average",
    "rank_normalise",
    "weights_from_cv",
]



# --------------------------------------------------------------------------- checks


def _as_score_matrix(scores: np.ndarray, what: str) -> np.ndarray:
    """A finite float64 ``[n, C]`` view of ``scores`` or a ValueError naming ``what``."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2-D [clips, classes] array, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {array.shape})")
    if not np.isfinite(array).all():
        row, col = np.argwhere(~np.isfinite(array))[0]
        raise ValueError(f"{what} holds NaN or inf at row {row}, class {col}")
    return array


def _as_truth(truth: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 0/1 float truth matrix of ``shape`` or a ValueError saying what is wrong."""
    array = np.asarray(truth)
    if array.shape != shape:
        raise ValueError(f"truth has shape {array.shape}, which does not match the OOF scores {shape}")
    array = array.astype(np.float64)
    if not np.isin(array, (0.0, 1.0)).all():
        raise ValueError("truth must hold only 0 and 1")
    return array


def _normalised_weights(weights: Sequence[float], n_members: int) -> np.ndarray:
    """Weights checked (one per member, finite, non-negative, not all zero) and scaled to sum 1."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size != n_members:
        raise ValueError(f"got {w.size} weights for {n_members} members; give one weight per member")
    if not np.isfinite(w).all():
        raise ValueError(f"weights must be finite numbers, got {w.tolist()}")
    if (w < 0).any():
        bad = int(np.flatnonzero(w < 0)[0])
        raise ValueError(f"weight of member {bad} is negative ({w[bad]}); weights must be >= 0")
    total = w.sum()
    if total <= 0:
        raise ValueError("all weights are zero; give at least one member a positive weight")
    return w / total


# --------------------------------------------------------------------------- ranks


def rank_normalise(scores: np.ndarray) -> np.ndarray:
    """Per class (column), the rows' ranks scaled to [0, 1].

    Ties get their average rank, so equal scores stay equal and distinct scores
    stay distinct; the lowest score maps to 0 and the highest to 1. A single
    row maps to 0.5.
    """
    x = _as_score_matrix(scores, "scores")
    n = x.shape[0]
    if n == 1:
        return np.full_like(x, 0.5)
    order = np.argsort(x, axis=0, kind="stable")
    ordered = np.take_along_axis(x, order, axis=0)
    position = np.broadcast_to(np.arange(n)[:, None], x.shape)
    # A tie group spans [first, last] positions in sorted order; its members share
    # the mean of those positions.
    starts = np.ones(x.shape, dtype=bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    ends = np.ones(x.shape, dtype=bool)
    ends[:-1] = starts[1:]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=0)
    last = np.minimum.accumulate(np.where(ends, position, n - 1)[::-1], axis=0)[::-1]
    ranks = np.empty_like(x)
    np.put_along_axis(ranks, order, (first + last) / (2.0 * (n - 1)), axis=0)
    return ranks


def rank_average(members: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted per-class rank average of score matrices of one shape.

    Each member is rank-normalised per class (``rank_normalise``) and the ranks
    are averaged with ``weights`` scaled to sum 1 (equal weights when None).
    The result lies in [0, 1].
    """
    if len(members) == 0:
        raise ValueError("rank_average needs at least one member")
    matrices = [_as_score_matrix(m, f"member {i}") for i, m in enumerate(members)]
    shape = matrices[0].shape
    for i, m in enumerate(matrices[1:], start=1):
        if m.shape != shape:
            raise ValueError(f"member {i} has shape {m.shape}, which does not match member 0 {shape}")
    w = (np.full(len(matrices), 1.0 / len(matrices)) if weights is None
         else _normalised_weights(weights, len(matrices)))
    out = np.zeros(shape)
    for wk, m in zip(w, matrices):
        if wk > 0:
            out += wk * rank_normalise(m)
    return out


def weights_from_cv(cv_lwlraps: Sequence[float]) -> np.ndarray:
    """Member weights proportional to their CV LWLRAP, scaled to sum 1."""
    scores = np.asarray(cv_lwlraps, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise ValueError("weights_from_cv needs at least one CV LWLRAP")
    if not np.isfinite(scores).all() or (scores < 0).any():
        raise ValueError(f"CV LWLRAP values must be finite and >= 0, got {scores.tolist()}")
    if scores.sum() <= 0:
        raise ValueError("every CV LWLRAP is zero; weights cannot be proportional to them")
    return scores / scores.sum()


def rank_against(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per class, where each score falls in the reference column's distribution, in (0, 1).

    For a value equal to a reference value this is the fraction of reference
    values below it plus half the fraction equal to it (the mid-rank; so
    ``rank_against(r, r)`` is an affine map of ``rank_normalise(r)`` per class).
    Between neighbouring distinct reference values it interpolates linearly.
    Below the smallest and above the largest reference value it continues
    towards 0 and 1 on hyperbolic tails, ``level / (1 + distance / range)``
    (mirrored at the top), so the map is strictly increasing everywhere:
    distinct scores never collide (up to float64 resolution) and equal scores
    stay equal.

    ``reference`` is ``[m, C]`` (out-of-fold scores), ``scores`` is ``[n, C]``.
    """
    ref = _as_score_matrix(reference, "reference")
    x = _as_score_matrix(scores, "scores")
    if ref.shape[1] != x.shape[1]:
        raise ValueError(f"scores have {x.shape[1]} classes but the reference has {ref.shape[1]}")
    m = ref.shape[0]
    # Work class-major (contiguous rows per class) so the sorts and searches are cache friendly.
    knots = np.sort(np.ascontiguousarray(ref.T), axis=1)                      # [C, m]
    query_order = np.argsort(np.ascontiguousarray(x.T), axis=1)               # [C, n]
    queries = np.take_along_axis(x.T, query_order, axis=1)
    # Counts of reference values below / at-or-below each query: one C-level
    # binary search per class on sorted queries (the loop runs over classes).
    below = np.empty(queries.shape, dtype=np.int64)
    at_or_below = np.empty(queries.shape, dtype=np.int64)
    for c in range(knots.shape[0]):
        below[c] = np.searchsorted(knots[c], queries[c], side="left")
        at_or_below[c] = np.searchsorted(knots[c], queries[c], side="right")

    # Tie groups of the sorted reference: group_start[j] / group_stop[j] bound
    # the run of values equal to knots[j]; its mid-rank level is their mean / m.
    position = np.broadcast_to(np.arange(m), knots.shape)
    starts = np.ones(knots.shape, dtype=bool)
    starts[:, 1:] = knots[:, 1:] != knots[:, :-1]
    stops = np.ones(knots.shape, dtype=bool)
    stops[:, :-1] = starts[:, 1:]
    group_start = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    group_stop = np.minimum.accumulate(np.where(stops, position, m - 1)[:, ::-1], axis=1)[:, ::-1] + 1

    def take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.take_along_axis(a, np.clip(idx, 0, m - 1), axis=1)

    # Interior: linear between the mid-rank levels of the neighbouring distinct values.
    lo_value = take(knots, below - 1)
    hi_value = take(knots, below)
    lo_level = (take(group_start, below - 1) + below) / (2.0 * m)
    hi_level = (below + take(group_stop, below)) / (2.0 * m)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = (queries - lo_value) / (hi_value - lo_value)
    levels = lo_level + frac * (hi_level - lo_level)
    # Equal to a reference value: its mid-rank.
    levels = np.where(at_or_below > below, (below + at_or_below) / (2.0 * m), levels)

    # Tails: hyperbolic approach to 0 and 1, continuous at the extreme values.
    # An exponential tail would round to exactly 1.0 some 37 ranges past the
    # end; this one keeps distinct values apart out to ~1e12 ranges.
    first, last = knots[:, :1], knots[:, -1:]
    span = last - first
    scale = np.where(span > 0, span, np.maximum(np.abs(first), 1.0))
    first_level = group_stop[:, :1] / (2.0 * m)
    last_level = (group_start[:, -1:] + m) / (2.0 * m)
    under = first_level / (1.0 + np.maximum(first - queries, 0.0) / scale)
    over = 1.0 - (1.0 - last_level) / (1.0 + np.maximum(queries - last, 0.0) / scale)
    levels = np.where(queries < first, under, levels)
    levels = np.where(queries > last, over, levels)

    out = np.empty(queries.shape)
    np.put_along_axis(out, query_order, levels, axis=1)
    return np.ascontiguousarray(out.T)


# --------------------------------------------------------------------------- calibration


def _log_sigmoid(w: np.ndarray) -> np.ndarray:
    """log(sigmoid(w)) without overflow for any w."""
    return -np.logaddexp(0.0, -w)


class RankCalibrator:
    """Per-class map from averaged ranks to probabilities, fitted on OOF rows.

    Per class c: ``r = (x - min_c) / (max_c - min_c)`` over the OOF rows, an
    affine squeeze ``q = eps + (1 - 2 eps) r`` (a squeeze, not a clip, so no
    ties appear), ``z = logit(q)``, then ``p = sigmoid((z - b_c) / tau_c)``:
    a temperature ``tau_c`` and a bias ``b_c`` per class (Platt scaling on the
    rank logit), fitted by BCE on the OOF truth. The bias lets a rare class's
    median clip sit near the class's base rate instead of at 0.5; a
    temperature alone cannot move it and flattens the map instead, which
    costs LWLRAP (docs/decisions.md).

    With few positives per class two free parameters overfit, and because
    the maps differ per class the noise reorders classes within a clip. So
    the fit is shrunk: first one shared map (tau_0, b_0) is fitted on every
    class's rows together, then each class minimises its mean BCE plus
    ``lam / 2 * ((a - a_0)^2 + (k - k_0)^2)`` with ``lam = prior_rows /
    n_rows`` (a penalty worth about ``prior_rows`` rows of data). A
    class with many positives gets its own map, a class with few stays near
    the shared one; classes without positives take the shared map. Should a
    fitted map's BCE not beat the identity (``tau = 1``, ``b = 0``), the
    identity is kept, so ``bce_after_ <= bce_before_`` always holds.

    The fit works on ``w = a z + k`` (``a = 1 / tau``, ``k = -b / tau``),
    where the objective is convex: a safeguarded Newton iteration, all
    classes at once. ``a`` is kept in ``[1 / tau_max, 1 / tau_min]`` and the
    in-range logits in ``[-W_LOW_IN, W_HIGH_IN]`` so that the top OOF clips
    keep distinct probabilities below 1.0 in float64.

    Beyond the OOF range (test rows) ``w`` continues from its edge value with
    the same slope and bends towards ``W_HIGH`` or ``-W_LOW`` (a hyperbolic
    squash), so the map stays strictly increasing and continuous instead of
    clipping.

    Attributes after ``fit``: ``min_``, ``max_``, ``taus_``, ``biases_``,
    ``shared_tau_``, ``shared_bias_``, ``bce_before_`` (per class, identity
    map), ``bce_after_`` (per class, fitted map).
    """

    W_HIGH = 30.0      # 1 - sigmoid(30) ~ 9e-14, well clear of float64's resolution near 1
    W_LOW = 60.0       # sigmoid(-60) ~ 9e-27, float64 keeps full relative precision there
    W_HIGH_IN = 27.0   # in-range limits leave the tails room to bend
    W_LOW_IN = 54.0

    def __init__(self, eps: float = 1e-3, tau_min: float = 0.2, tau_max: float = 64.0,
                 max_iter: int = 100, prior_rows: float = 10.0) -> None:
        """``eps`` sets the squeeze; temperatures are kept in ``[tau_min, tau_max]``;
        ``prior_rows`` is the shrinkage towards the shared map, in rows' worth (0: none).

        The steepest map, ``tau_min``, must fit the whole squeezed logit range
        ``2 logit(1 - eps) / tau_min`` inside ``W_LOW_IN + W_HIGH_IN``; the
        defaults use 69 of 81.
        """
        if not 0.0 < eps < 0.5:
            raise ValueError(f"eps must lie in (0, 0.5), got {eps}")
        if not 0.0 < tau_min <= 1.0 <= tau_max:
            raise ValueError(f"need 0 < tau_min <= 1 <= tau_max, got {tau_min}, {tau_max}")
        if 2.0 * np.log((1.0 - eps) / eps) / tau_min >= self.W_HIGH_IN + self.W_LOW_IN:
            raise ValueError(f"eps={eps} with tau_min={tau_min} pushes probabilities to 1.0 in float64; "
                             "raise eps or tau_min")
        self.eps = eps
        self.tau_min = tau_min
        self.tau_max = tau_max
        self.max_iter = max_iter
        if not prior_rows >= 0:
            raise ValueError(f"prior_rows must be >= 0, got {prior_rows}")
        self.prior_rows = float(prior_rows)

    # ----------------------------------------------------------------- maps

    def _unit(self, x: np.ndarray) -> np.ndarray:
        """Rank averages min-max normalised per class with the OOF min/max (beyond [0, 1] off-range)."""
        return (x - self.min_) / (self.max_ - self.min_)

    def _logit_q(self, r: np.ndarray) -> np.ndarray:
        """logit of the squeezed rank for r in [0, 1]."""
        q = self.eps + (1.0 - 2.0 * self.eps) * r
        return np.log(q) - np.log1p(-q)

    @staticmethod
    def _bce(z: np.ndarray, y: np.ndarray, a: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Mean BCE per class of sigmoid(a_c z + k_c) against y."""
        w = z * a + k
        return np.mean(np.logaddexp(0.0, w) - y * w, axis=0)

    def _project(self, a: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Clamp (a, k) so that a lies in its range and a*z + k in [-W_LOW_IN, W_HIGH_IN] for |z| <= L."""
        edge = np.log((1.0 - self.eps) / self.eps)
        a = np.clip(a, 1.0 / self.tau_max, 1.0 / self.tau_min)
        k = np.clip(k, -self.W_LOW_IN + a * edge, self.W_HIGH_IN - a * edge)
        return a, k

    # ----------------------------------------------------------------- fit

    def _newton(self, z: np.ndarray, y: np.ndarray, a: np.ndarray, k: np.ndarray,
                a0: float, k0: float, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Minimise, per column, mean BCE of sigmoid(a z + k) + lam/2 ((a - a0)^2 + (k - k0)^2).

        A safeguarded Newton iteration over all columns at once: the 2x2
        Newton step, halved until the projected point lowers the objective.
        Returns ``(a, k, objective)``.
        """
        def objective(zc, yc, ac, kc):
            return self._bce(zc, yc, ac, kc) + 0.5 * lam * ((ac - a0) ** 2 + (kc - k0) ** 2)

        a, k = self._project(a.astype(np.float64), k.astype(np.float64))
        loss = objective(z, y, a, k)
        cols = np.arange(z.shape[1])
        for _ in range(self.max_iter):
            if cols.size == 0:
                break
            zc, yc, ac, kc = z[:, cols], y[:, cols], a[cols], k[cols]
            p = 1.0 / (1.0 + np.exp(-(zc * ac + kc)))
            s = p * (1.0 - p)
            r = p - yc
            ga = np.mean(r * zc, axis=0) + lam * (ac - a0)
            gk = np.mean(r, axis=0) + lam * (kc - k0)
            haa = np.mean(s * zc * zc, axis=0) + lam
            hak = np.mean(s * zc, axis=0)
            hkk = np.mean(s, axis=0) + lam
            # A small ridge for columns the map already separates (the Hessian vanishes there).
            ridge = 1e-9 + 1e-6 * (haa + hkk)
            haa, hkk = haa + ridge, hkk + ridge
            det = haa * hkk - hak * hak
            da = -(hkk * ga - hak * gk) / det
            dk = -(haa * gk - hak * ga) / det
            # With the temperature held at a bound, the bias alone gets a Newton step.
            pinned = ((ac <= 1.0 / self.tau_max) & (da < 0)) | ((ac >= 1.0 / self.tau_min) & (da > 0))
            da = np.where(pinned, 0.0, da)
            dk = np.where(pinned, -gk / hkk, dk)
            step = np.ones(cols.size)
            accepted = np.zeros(cols.size, dtype=bool)
            new_a, new_k, new_loss = ac.copy(), kc.copy(), loss[cols].copy()
            for _ in range(40):
                trying = ~accepted
                if not trying.any():
                    break
                ta, tk = self._project(ac + step * da, kc + step * dk)
                tl = objective(zc, yc, ta, tk)
                better = trying & (tl < new_loss)
                new_a = np.where(better, ta, new_a)
                new_k = np.where(better, tk, new_k)
                new_loss = np.where(better, tl, new_loss)
                accepted |= better
                step = np.where(accepted, step, step * 0.5)
            gain = loss[cols] - new_loss
            a[cols], k[cols], loss[cols] = new_a, new_k, new_loss
            # Columns whose objective no longer moves drop out of the remaining iterations.
            cols = cols[accepted & (gain > 1e-13 * np.maximum(np.abs(new_loss), 1e-300))]
        return a, k, loss

    def fit(self, oof_rank_avg: np.ndarray, truth: np.ndarray) -> "RankCalibrator":
        """Store the per-class OOF min/max, fit the shared map, then each class's map shrunk towards it."""
        x = _as_score_matrix(oof_rank_avg, "oof_rank_avg")
        y = _as_truth(truth, x.shape)
        lo = x.min(axis=0)
        hi = x.max(axis=0)
        flat = hi <= lo
        # A constant column has no range to normalise; centre it at r = 0.5.
        self.min_ = np.where(flat, lo - 0.5, lo)
        self.max_ = np.where(flat, hi + 0.5, hi)
        z = self._logit_q(self._unit(x))
        n_rows, n_classes = x.shape

        # The shared map: one temperature and bias fitted on every class's rows together.
        a0, k0, _ = self._newton(z.reshape(-1, 1), y.reshape(-1, 1), np.ones(1), np.zeros(1), 0.0, 0.0, 0.0)
        self.shared_tau_, self.shared_bias_ = float(1.0 / a0[0]), float(-k0[0] / a0[0])
        a = np.full(n_classes, a0[0])
        k = np.full(n_classes, k0[0])
        has_positive = y.sum(axis=0) > 0
        cols = np.flatnonzero(has_positive)
        if cols.size:
            lam = self.prior_rows / n_rows
            a[cols], k[cols], _ = self._newton(z[:, cols], y[:, cols], a[cols], k[cols], a0[0], k0[0], lam)

        identity_a, identity_k = np.ones(n_classes), np.zeros(n_classes)
        self.bce_before_ = self._bce(z, y, identity_a, identity_k)
        after = self._bce(z, y, a, k)
        keep_identity = ~(after <= self.bce_before_)
        a = np.where(keep_identity, 1.0, a)
        k = np.where(keep_identity, 0.0, k)
        self.taus_ = 1.0 / a
        self.biases_ = -k / a
        self.bce_after_ = np.where(keep_identity, self.bce_before_, after)
        return self

    def _slope_intercept(self) -> tuple[np.ndarray, np.ndarray]:
        a = 1.0 / self.taus_
        return a, -self.biases_ * a

    def transform(self, rank_avg: np.ndarray) -> np.ndarray:
        """Probabilities in [0, 1], strictly increasing in ``rank_avg`` per class."""
        if not hasattr(self, "taus_"):
            raise ValueError("RankCalibrator.transform called before fit")
        x = _as_score_matrix(rank_avg, "rank_avg")
        if x.shape[1] != self.taus_.size:
            raise ValueError(f"rank_avg has {x.shape[1]} classes but the calibrator was fitted "
                             f"on {self.taus_.size}")
        eps = self.eps
        a, k = self._slope_intercept()
        r = self._unit(x)
        w = self._logit_q(np.clip(r, 0.0, 1.0)) * a + k
        # Tails: w(edge + d) = w_edge + s d / (1 + s d / room), which leaves the
        # edge with slope s (the in-range slope there) and never passes the limit.
        edge = np.log((1.0 - eps) / eps)
        slope = (1.0 - 2.0 * eps) / (eps * (1.0 - eps)) * a
        w_top, w_bottom = a * edge + k, -a * edge + k
        room_high, room_low = self.W_HIGH - w_top, self.W_LOW + w_bottom
        d_high = slope * np.maximum(r - 1.0, 0.0)
        d_low = slope * np.maximum(-r, 0.0)
        w = np.where(r > 1.0, w_top + d_high / (1.0 + d_high / room_high), w)
        w = np.where(r < 0.0, w_bottom - d_low / (1.0 + d_low / room_low), w)
        return np.exp(_log_sigmoid(w))

    def fit_transform(self, oof_rank_avg: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """``fit`` then ``transform`` on the same OOF rows."""
        return self.fit(oof_rank_avg, truth).transform(oof_rank_avg)


# --------------------------------------------------------------------------- quantile mapping


class QuantileMapper:
    """Per class, averaged ranks mapped onto a target's out-of-fold probability distribution.

    Per class c the fitted rows' averaged ranks ``R_c`` and the target's OOF
    probabilities ``T_c`` (the members' probability blend, or the best
    member's) are kept. A rank is placed in ``R_c``'s distribution
    (``rank_against``: mid-ranks, linear between neighbours, tails beyond the
    ends) and read off ``T_c``'s quantile function at that position: the
    ``i``-th smallest fitted rank gets the ``i``-th smallest target
    probability. So each class keeps the target's scale and base rate (a rare
    class's clips stay low, a common class's high), which is what LWLRAP's
    comparison of classes within a clip needs; per-class ranks alone lose it.

    The quantile levels are nudged apart by ``tie_break`` (a convex mix with
    evenly spaced levels, at most 1e-9 by default) so the map is strictly
    increasing even where the target has ties (a constant class); below the
    lowest and above the highest knot it runs linearly to 0 and 1. A single
    member blended with itself maps back to its own probabilities (up to the
    nudge). Labels are not used, so the fit cannot flatter itself; the OOF
    rows are still mapped cross-fitted when folds are known, like the
    calibration (``cross_fitted_quantile_map``).
    """

    def __init__(self, tie_break: float = 1e-9) -> None:
        """``tie_break`` in [0, 1e-3]: how far the target's quantile levels are nudged apart."""
        if not 0.0 <= tie_break <= 1e-3:
            raise ValueError(f"tie_break must lie in [0, 1e-3], got {tie_break}")
        self.tie_break = tie_break

    def fit(self, ranks: np.ndarray, target: np.ndarray) -> "QuantileMapper":
        """Keep each class's fitted ranks and the target's sorted probabilities (the quantile knots)."""
        r = _as_score_matrix(ranks, "ranks")
        t = _as_score_matrix(target, "target")
        if t.shape != r.shape:
            raise ValueError(f"target has shape {t.shape}, which does not match the ranks {r.shape}")
        if (t < 0).any() or (t > 1).any():
            raise ValueError("target must hold probabilities in [0, 1]")
        n = r.shape[0]
        self.ranks_ = r.copy()
        spread = (np.arange(1, n + 1) / (n + 1))[:, None]
        self.levels_ = np.sort(t, axis=0) * (1.0 - self.tie_break) + self.tie_break * spread
        self.knots_ = (np.arange(n) + 0.5) / n
        return self

    def transform(self, ranks: np.ndarray) -> np.ndarray:
        """Probabilities in (0, 1), strictly increasing in ``ranks`` per class."""
        if not hasattr(self, "levels_"):
            raise ValueError("QuantileMapper.transform called before fit")
        x = _as_score_matrix(ranks, "ranks")
        if x.shape[1] != self.levels_.shape[1]:
            raise ValueError(f"ranks have {x.shape[1]} classes but the map was fitted on {self.levels_.shape[1]}")
        u = rank_against(self.ranks_, x)
        knots = self.knots_
        out = np.empty_like(u)
        for c in range(u.shape[1]):
            out[:, c] = np.interp(u[:, c], knots, self.levels_[:, c])
        low, high = self.levels_[0], self.levels_[-1]
        below = u < knots[0]
        above = u > knots[-1]
        out = np.where(below, low * u / knots[0], out)
        out = np.where(above, 1.0 - (1.0 - high) * (1.0 - u) / (1.0 - knots[-1]), out)
        return out

    def fit_transform(self, ranks: np.ndarray, target: np.ndarray) -> np.ndarray:
        """``fit`` then ``transform`` on the same rows."""
        return self.fit(ranks, target).transform(ranks)


def _check_folds(folds: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The fold array (one per row) and its distinct fold ids, or a ValueError."""
    f = np.asarray(folds)
    if f.shape != (n_rows,):
        raise ValueError(f"folds must give one fold per OOF row ({n_rows}), got shape {f.shape}")
    fold_ids = np.unique(f)
    if fold_ids.size < 2:
        raise ValueError("cross-fitting needs at least two folds")
    return f, fold_ids


def cross_fitted_quantile_map(ranks: np.ndarray, target: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """OOF probabilities where each fold's rows go through a ``QuantileMapper`` fitted on the other folds."""
    r = _as_score_matrix(ranks, "ranks")
    t = _as_score_matrix(target, "target")
    f, fold_ids = _check_folds(folds, r.shape[0])
    out = np.empty_like(r)
    for k in fold_ids:
        held = f == k
        out[held] = QuantileMapper().fit(r[~held], t[~held]).transform(r[held])
    return out


# --------------------------------------------------------------------------- blends

#: Every method, in the ensemble spec's order (``engine.specs.ENSEMBLE_METHODS``, the one list).
#: ``auto``: every method below and the best member, scored by cross-fitted OOF LWLRAP; the highest
#: wins. ``best``: the best single member (by OOF LWLRAP) on its own. Then the blends that combine
#: members: ``rank``: per-class rank average mapped onto the probability blend's OOF distribution
#: (``QuantileMapper``); ``rank_minmax``: the plan's rank average, min-max and a temperature (and
#: bias) per class (``RankCalibrator``); ``mean``: weighted mean of probabilities; ``logit_mean``:
#: weighted mean of logits, then a sigmoid; ``geo_mean``: weighted geometric mean of probabilities.
METHODS = ENSEMBLE_METHODS
AUTO, BEST = METHODS[:2]
BLEND_METHODS = METHODS[2:]
RANK_METHODS = ("rank", "rank_minmax")
#: Probabilities are clipped this far from 0 and 1 before a log or logit (exact 0 and 1 stay finite).
PROB_EPS = 1e-15


@dataclass
class Member:
    """One model (a run) in an ensemble: its OOF scores in curated order and its test scores."""

    name: str
    oof: np.ndarray
    test: np.ndarray | None = None
    cv_lwlrap: float | None = None


@dataclass
class CandidateScore:
    """One method's blend as scored for the choice: cross-fitted OOF LWLRAP (None when it cannot apply)."""

    method: str
    oof_lwlrap: float | None
    raw_oof_lwlrap: float | None = None     # rank methods: before the rank-to-probability map
    note: str = ""                          # why the method could not apply


@dataclass
class BlendResult:
    """A blend's outputs and scores.

    ``oof`` / ``test`` are probabilities, except an uncalibrated rank blend's
    averaged ranks. ``oof_lwlrap`` and ``per_class`` / ``class_weights``
    score ``oof`` (cross-fitted when folds were given); ``raw_oof_lwlrap``
    scores a rank blend before its map (the same as ``oof_lwlrap`` for the
    other methods). ``method`` is the method used (``auto`` resolved);
    ``requested`` what was asked; ``candidates`` every method scored (only
    the one used unless ``auto``); ``best_member`` / ``best_member_lwlrap``
    the strongest member with a positive weight; ``warning`` says when the
    blend scores below that member.
    """

    oof: np.ndarray
    test: np.ndarray | None
    weights: np.ndarray
    oof_lwlrap: float
    per_class: np.ndarray
    class_weights: np.ndarray
    method: str
    calibrator: RankCalibrator | QuantileMapper | None
    raw_oof_lwlrap: float = field(default=float("nan"))
    requested: str = ""
    candidates: list[CandidateScore] = field(default_factory=list)
    candidate_tests: dict[str, np.ndarray] = field(default_factory=dict)
    best_member: str = ""
    best_member_lwlrap: float = field(default=float("nan"))
    warning: str | None = None


def _check_members(members: Sequence[Member], truth: np.ndarray) -> tuple[np.ndarray, bool]:
    """Validate members against the truth; return the truth as floats and whether all have test scores."""
    if len(members) == 0:
        raise ValueError("an ensemble needs at least one member")
    first = np.asarray(members[0].oof)
    if first.ndim != 2:
        raise ValueError(f"member 0 ({members[0].name}) OOF must be 2-D, got shape {first.shape}")
    y = _as_truth(truth, first.shape)
    test_shape = None
    has_test = all(m.test is not None for m in members)
    for i, m in enumerate(members):
        oof = np.asarray(m.oof)
        if oof.shape != y.shape:
            raise ValueError(f"member {i} ({m.name}) OOF has shape {oof.shape}, which does not match "
                             f"the truth {y.shape}; OOF scores must be in curated order over every clip")
        if has_test:
            test = np.asarray(m.test)
            if test.ndim != 2 or test.shape[1] != y.shape[1]:
                raise ValueError(f"member {i} ({m.name}) test scores have shape {test.shape}; "
                                 f"expected [n_test, {y.shape[1]}]")
            if test_shape is None:
                test_shape = test.shape
            elif test.shape != test_shape:
                raise ValueError(f"member {i} ({m.name}) test scores have shape {test.shape}, which does "
                                 f"not match member 0 {test_shape}")
    return y, has_test


def _member_weights(members: Sequence[Member], weights: Sequence[float] | None) -> np.ndarray:
    """Explicit weights normalised; else proportional to CV LWLRAP when all are known; else equal."""
    if weights is not None:
        return _normalised_weights(weights, len(members))
    cvs = [m.cv_lwlrap for m in members]
    if all(cv is not None for cv in cvs):
        return weights_from_cv(cvs)
    return np.full(len(members), 1.0 / len(members))


def _check_method(method: str, allowed: Sequence[str] = METHODS) -> None:
    if method not in allowed:
        raise ValueError(f"method must be one of {', '.join(allowed)}; got {method!r}")


class _Prepared:
    """Members' scores checked once, with each scale a method averages computed on first use.

    ``scale(kind, i)`` gives member i's (OOF, test) on one scale: ``raw``,
    ``rank`` (OOF-referenced ranks), ``logit`` or ``log`` (of probabilities).
    Greedy selection and ``auto`` score many blends of the same members; the
    ranks are the costly part and are computed once here.
    """

    def __init__(self, members: Sequence[Member], truth: np.ndarray) -> None:
        self.members = list(members)
        self.y, self.has_test = _check_members(members, truth)
        self.oof = [_as_score_matrix(m.oof, f"member {i} ({m.name}) OOF") for i, m in enumerate(members)]
        self.test = [(_as_score_matrix(m.test, f"member {i} ({m.name}) test") if self.has_test else None)
                     for i, m in enumerate(members)]
        self._cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray | None]] = {}
        self._lwlrap: dict[int, float] = {}

    def member_lwlrap(self, i: int) -> float:
        """Member i's own OOF LWLRAP against the truth."""
        if i not in self._lwlrap:
            self._lwlrap[i] = lwlrap(self.y, self.oof[i])
        return self._lwlrap[i]

    def probability_problem(self, i: int) -> str | None:
        """Why member i's scores are not probabilities in [0, 1], or None."""
        for what, x in (("OOF", self.oof[i]), ("test", self.test[i])):
            if x is not None and ((x < 0).any() or (x > 1).any()):
                return (f"member {self.members[i].name}'s {what} scores lie outside [0, 1] "
                        f"(from {x.min():.3g} to {x.max():.3g}); this method needs probabilities")
        return None

    def scale(self, kind: str, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Member i's OOF and test scores on the scale ``kind`` averages."""
        key = (kind, i)
        if key not in self._cache:
            oof, test = self.oof[i], self.test[i]
            if kind == "raw":
                value = (oof, test)
            elif kind == "rank":
                value = (rank_against(oof, oof), rank_against(oof, test) if test is not None else None)
            elif kind in ("logit", "log"):
                def f(x: np.ndarray) -> np.ndarray:
                    p = np.clip(x, PROB_EPS, 1.0 - PROB_EPS)
                    return np.log(p) - np.log1p(-p) if kind == "logit" else np.log(p)
                value = (f(oof), f(test) if test is not None else None)
            else:
                raise ValueError(f"unknown scale {kind!r}")
            self._cache[key] = value
        return self._cache[key]

    def average(self, kind: str, w: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Weighted average of every member with a positive weight on scale ``kind``."""
        oof = np.zeros(self.y.shape)
        test = None
        for i, wk in enumerate(w):
            if wk == 0:
                continue
            oof_k, test_k = self.scale(kind, i)
            oof += wk * oof_k
            if test_k is not None:
                test = wk * test_k if test is None else test + wk * test_k
        return oof, test


@dataclass
class _Outcome:
    """One concrete method's blend before scoring."""

    oof: np.ndarray
    test: np.ndarray | None
    raw_oof: np.ndarray
    mapper: RankCalibrator | QuantileMapper | None


def _sigmoid(w: np.ndarray) -> np.ndarray:
    return np.exp(_log_sigmoid(w))


def _blend_one(prep: _Prepared, method: str, w: np.ndarray, *, calibrate: bool,
               folds: np.ndarray | None) -> _Outcome:
    """Blend with one concrete method (``BEST`` or one of ``BLEND_METHODS``); ValueError when it cannot apply."""
    used = np.flatnonzero(w > 0)
    needs_probabilities = method in ("logit_mean", "geo_mean") or (method == "rank" and calibrate)
    if needs_probabilities:
        for i in used:
            problem = prep.probability_problem(int(i))
            if problem:
                raise ValueError(problem)
    if method == BEST:
        best = max(used, key=prep.member_lwlrap)
        return _Outcome(prep.oof[best], prep.test[best], prep.oof[best], None)
    if method == "mean":
        oof, test = prep.average("raw", w)
        return _Outcome(oof, test, oof, None)
    if method == "logit_mean":
        oof, test = prep.average("logit", w)
        oof, test = _sigmoid(oof), (_sigmoid(test) if test is not None else None)
        return _Outcome(oof, test, oof, None)
    if method == "geo_mean":
        oof, test = prep.average("log", w)
        oof, test = np.exp(oof), (np.exp(test) if test is not None else None)
        return _Outcome(oof, test, oof, None)
    raw_oof, raw_test = prep.average("rank", w)
    if not calibrate:
        return _Outcome(raw_oof, raw_test, raw_oof, None)
    if method == "rank_minmax":
        mapper: RankCalibrator | QuantileMapper = RankCalibrator().fit(raw_oof, prep.y)
        oof = mapper.transform(raw_oof) if folds is None else cross_fitted_calibration(raw_oof, prep.y, folds)
    else:
        # The target distribution: the members' probability blend with the same weights.
        target, _ = prep.average("raw", w)
        mapper = QuantileMapper().fit(raw_oof, target)
        oof = mapper.transform(raw_oof) if folds is None else cross_fitted_quantile_map(raw_oof, target, folds)
    test = mapper.transform(raw_test) if raw_test is not None else None
    return _Outcome(oof, test, raw_oof, mapper)


def _score(prep: _Prepared, outcome: _Outcome) -> float:
    return lwlrap(prep.y, outcome.oof)


def blend(members: Sequence[Member], truth: np.ndarray, *, weights: Sequence[float] | None = None,
          method: str = AUTO, calibrate: bool = True, folds: np.ndarray | None = None,
          candidates: Sequence[str] | None = None) -> BlendResult:
    """Blend members' OOF (and test) scores and score the OOF blend by LWLRAP.

    ``method`` is one of ``METHODS``: a blend method (``BLEND_METHODS``),
    ``best`` (the strongest member alone) or ``auto`` (default), which
    scores ``best`` and every blend method (or those in ``candidates``) and
    keeps the highest OOF LWLRAP, so it never ends below the best member
    out of fold; ``best`` goes first, so a blend must beat it strictly.
    Weights default to CV LWLRAP proportions when every member has
    ``cv_lwlrap``, else equal. ``calibrate`` maps a rank blend's averaged
    ranks to probabilities (``rank``: quantile mapping, ``rank_minmax``:
    min-max and temperature); the other methods give probabilities as they
    are. Each member's test scores are ranked against its own OOF column.
    With ``folds`` (the fold of each OOF row) every fitted map scores its
    OOF rows cross-fitted, so the OOF LWLRAP is a held-out estimate; the
    test rows use the map fitted on every OOF row. ``test`` is None unless
    every member has test scores. A method that cannot apply (``logit_mean``
    on scores outside [0, 1]) is a ValueError, or under ``auto`` a
    candidate with no score and a note.
    """
    _check_method(method)
    prep = _Prepared(members, truth)
    y = prep.y
    if folds is not None:
        _check_folds(folds, y.shape[0])
    w = _member_weights(members, weights)
    used = np.flatnonzero(w > 0)
    best_index = int(max(used, key=prep.member_lwlrap))
    if method == AUTO:
        pool = [BEST] + list(BLEND_METHODS if candidates is None else candidates)
        for name in pool:
            _check_method(name, (BEST,) + BLEND_METHODS)
    else:
        pool = [method]
    scored: list[CandidateScore] = []
    outcomes: dict[str, _Outcome] = {}
    for name in dict.fromkeys(pool):
        try:
            outcome = _blend_one(prep, name, w, calibrate=calibrate, folds=folds)
        except ValueError as err:
            if method != AUTO:
                raise
            scored.append(CandidateScore(name, None, None, note=str(err)))
            continue
        outcomes[name] = outcome
        score = _score(prep, outcome)
        raw = lwlrap(y, outcome.raw_oof) if outcome.raw_oof is not outcome.oof else score
        scored.append(CandidateScore(name, score, raw))
    chosen = max((c for c in scored if c.oof_lwlrap is not None), key=lambda c: c.oof_lwlrap).method
    outcome = outcomes[chosen]
    per_class, class_weights = per_class_lwlrap(y, outcome.oof)
    # The score the choice was made on (equal to the per-class sum up to rounding), so that auto's
    # recorded score is exactly its winning candidate's and never a rounding below the best member's.
    oof_lwlrap = next(c.oof_lwlrap for c in scored if c.method == chosen)
    best_name, best_score = members[best_index].name, prep.member_lwlrap(best_index)
    warning = None
    if chosen != BEST and oof_lwlrap < best_score:
        warning = (f"the {chosen} blend's {'cross-fitted ' if folds is not None else ''}OOF lwlrap "
                   f"{oof_lwlrap:.4f} is below its best member {best_name} ({best_score:.4f}); "
                   "method \"auto\" keeps the better of the two")
    raw = next(c.raw_oof_lwlrap for c in scored if c.method == chosen)
    return BlendResult(
        oof=outcome.oof,
        test=outcome.test,
        weights=w,
        oof_lwlrap=oof_lwlrap,
        per_class=per_class,
        class_weights=class_weights,
        method=chosen,
        calibrator=outcome.mapper,
        raw_oof_lwlrap=float(raw),
        requested=method,
        candidates=scored,
        candidate_tests={k: o.test for k, o in outcomes.items() if o.test is not None},
        best_member=best_name,
        best_member_lwlrap=float(best_score),
        warning=warning,
    )


def cross_fitted_calibration(oof: np.ndarray, truth: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """OOF probabilities where each fold's rows are mapped by a ``RankCalibrator`` fitted on the other folds.

    A calibrator fitted on all OOF rows and scored on them is judged on the
    labels it was fitted to; this keeps each row's map blind to its own label,
    as the members' OOF scores are, so the blend's OOF LWLRAP stays a held-out
    estimate. ``folds`` is the fold index per row (every fold needs rows outside it).
    """
    x = _as_score_matrix(oof, "oof")
    y = _as_truth(truth, x.shape)
    f, fold_ids = _check_folds(folds, x.shape[0])
    out = np.empty_like(x)
    for k in fold_ids:
        held = f == k
        out[held] = RankCalibrator().fit(x[~held], y[~held]).transform(x[held])
    return out


def greedy_forward_selection(members: Sequence[Member], truth: np.ndarray, *, max_steps: int = 20,
                             with_replacement: bool = True, method: str = AUTO, calibrate: bool = True,
                             folds: np.ndarray | None = None) -> tuple[list[int], np.ndarray, list[float]]:
    """Caruana-style forward selection of members by the OOF LWLRAP of their blend.

    Starts from the best single member and at each step adds the member whose
    addition gives the highest OOF LWLRAP, stopping when no addition improves
    it strictly or after ``max_steps`` picks. With replacement a member may be
    picked again, which raises its weight. The scorer is ``blend``'s: the
    equal-weight blend of the picks with ``method``, ``calibrate`` and
    ``folds`` (cross-fitted), and under ``auto`` the best of the blend
    methods; so ``blend(..., weights=weights)`` with the same settings
    reproduces the last score. Returns the picked indices in order (with
    repeats), the implied weights (pick counts / total, one per member) and
    the score history (one entry per pick, increasing).
    """
    _check_method(method, (AUTO,) + BLEND_METHODS)
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    prep = _Prepared(members, truth)
    if folds is not None:
        _check_folds(folds, prep.y.shape[0])
    methods = BLEND_METHODS if method == AUTO else (method,)

    def score(counts: np.ndarray) -> float:
        w = counts / counts.sum()
        best = -np.inf
        for name in methods:
            try:
                best = max(best, _score(prep, _blend_one(prep, name, w, calibrate=calibrate, folds=folds)))
            except ValueError:
                if method != AUTO:
                    raise
        return best

    picks: list[int] = []
    history: list[float] = []
    counts = np.zeros(len(members))
    current = -np.inf
    for _ in range(max_steps):
        candidates = [k for k in range(len(members)) if with_replacement or k not in picks]
        if not candidates:
            break
        scores = []
        for k in candidates:
            trial = counts.copy()
            trial[k] += 1
            scores.append(score(trial))
        best = int(np.argmax(scores))
        if scores[best] <= current:
            break
        picks.append(candidates[best])
        counts[candidates[best]] += 1
        current = scores[best]
        history.append(float(current))
    return picks, counts / counts.sum(), history
