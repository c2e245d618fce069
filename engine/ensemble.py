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
from engine.rank_maps import (QuantileMapper, RankCalibrator, as_score_matrix, as_truth, check_folds,
                              log_sigmoid, normalised_weights, cross_fitted_quantile_map, rank_against,
                              rank_average, rank_normalise, weights_from_cv)
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
    y = as_truth(truth, first.shape)
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
        return normalised_weights(weights, len(members))
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
        self.oof = [as_score_matrix(m.oof, f"member {i} ({m.name}) OOF") for i, m in enumerate(members)]
        self.test = [(as_score_matrix(m.test, f"member {i} ({m.name}) test") if self.has_test else None)
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
    return np.exp(log_sigmoid(w))


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
        check_folds(folds, y.shape[0])
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
    x = as_score_matrix(oof, "oof")
    y = as_truth(truth, x.shape)
    f, fold_ids = check_folds(folds, x.shape[0])
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
        check_folds(folds, prep.y.shape[0])
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
