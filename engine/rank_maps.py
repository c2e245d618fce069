"""Per-class ranks and the maps from ranks back to probabilities, for the blends of ``engine.ensemble``.

``rank_normalise`` / ``rank_against`` put every member on one rank scale (test
rows ranked against the member's own out-of-fold column); ``RankCalibrator``
is the plan's min-max plus per-class temperature map, ``QuantileMapper`` the
per-class quantile map onto the members' probability blend, and
``cross_fitted_quantile_map`` fits it fold by fold so its out-of-fold score is
honest. numpy only (the console imports it through ``engine.ensemble``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


__all__ = ["QuantileMapper", "RankCalibrator", "cross_fitted_quantile_map", "rank_against", "rank_average",
           "rank_normalise", "weights_from_cv"]


# --------------------------------------------------------------------------- checks


def as_score_matrix(scores: np.ndarray, what: str) -> np.ndarray:
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


def as_truth(truth: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 0/1 float truth matrix of ``shape`` or a ValueError saying what is wrong."""
    array = np.asarray(truth)
    if array.shape != shape:
        raise ValueError(f"truth has shape {array.shape}, which does not match the OOF scores {shape}")
    array = array.astype(np.float64)
    if not np.isin(array, (0.0, 1.0)).all():
        raise ValueError("truth must hold only 0 and 1")
    return array


def normalised_weights(weights: Sequence[float], n_members: int) -> np.ndarray:
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
    x = as_score_matrix(scores, "scores")
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
    matrices = [as_score_matrix(m, f"member {i}") for i, m in enumerate(members)]
    shape = matrices[0].shape
    for i, m in enumerate(matrices[1:], start=1):
        if m.shape != shape:
            raise ValueError(f"member {i} has shape {m.shape}, which does not match member 0 {shape}")
    w = (np.full(len(matrices), 1.0 / len(matrices)) if weights is None
         else normalised_weights(weights, len(matrices)))
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
    ref = as_score_matrix(reference, "reference")
    x = as_score_matrix(scores, "scores")
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


def log_sigmoid(w: np.ndarray) -> np.ndarray:
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
        x = as_score_matrix(oof_rank_avg, "oof_rank_avg")
        y = as_truth(truth, x.shape)
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
        x = as_score_matrix(rank_avg, "rank_avg")
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
        return np.exp(log_sigmoid(w))

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
        r = as_score_matrix(ranks, "ranks")
        t = as_score_matrix(target, "target")
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
        x = as_score_matrix(ranks, "ranks")
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


def check_folds(folds: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
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
    r = as_score_matrix(ranks, "ranks")
    t = as_score_matrix(target, "target")
    f, fold_ids = check_folds(folds, r.shape[0])
    out = np.empty_like(r)
    for k in fold_ids:
        held = f == k
        out[held] = QuantileMapper().fit(r[~held], t[~held]).transform(r[held])
    return out
