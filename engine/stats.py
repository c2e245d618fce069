"""Is a difference larger than noise? A paired bootstrap over clips for two runs, the seed spread for groups.

Two runs scored on the same curated clips: :func:`paired_bootstrap` resamples
clips with replacement (the same draw for both runs) and reports how often the
difference of LWLRAP keeps its sign, with a 95 % interval. Two seed groups
(runs whose configs differ only in ``train.seed``, ``engine.specs.seed_group_key``):
:func:`seed_spread` compares the difference of their mean scores with the
spread the seeds themselves show. numpy and ``engine.metrics`` only (the
console may import it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from engine.compare import mean_std
from engine.metrics import clip_precisions

#: Bootstrap resamples unless told otherwise.
DEFAULT_RESAMPLES = 2000


@dataclass(frozen=True)
class Bootstrap:
    """A paired bootstrap of ``lwlrap(a) - lwlrap(b)`` over clips."""

    diff: float            # on the clips as they are
    low: float             # 2.5 % quantile of the resampled differences
    high: float            # 97.5 % quantile
    p_not_better: float    # share of resamples where a is not better than b (diff <= 0)
    n_clips: int
    resamples: int

    @property
    def significant(self) -> bool:
        """Whether the 95 % interval excludes 0: the difference is larger than the noise of the clips."""
        return self.low > 0 or self.high < 0

    def verdict(self) -> str:
        """One line for a person: the difference, its interval and what it means."""
        word = "larger than clip noise" if self.significant else "within clip noise"
        return (f"{self.diff:+.4f} lwlrap (95% bootstrap interval {self.low:+.4f} .. {self.high:+.4f} over "
                f"{self.n_clips} clips, {self.resamples} resamples): {word}")


def bootstrap_indices(n_clips: int, resamples: int, seed: int, *, chunk: int = 256) -> Iterator[np.ndarray]:
    """The resampled clip indices, ``[rows, n_clips]`` blocks of at most ``chunk`` resamples each.

    One draw is shared by both runs; blocks keep memory at ``chunk × n_clips`` whatever the count.
    """
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, chunk):
        yield rng.integers(0, n_clips, size=(min(chunk, resamples - start), n_clips))


def paired_bootstrap(truth: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, *,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Bootstrap:
    """Paired bootstrap over clips of ``lwlrap(truth, a) - lwlrap(truth, b)``.

    Each resample draws clips with replacement (:func:`bootstrap_indices`) and
    scores both runs on the same draw, so what the two share (hard clips, easy
    clips) cancels. Clips without a positive label count for nothing, as in LWLRAP.
    """
    sums_a, counts = clip_precisions(truth, scores_a)
    sums_b, _ = clip_precisions(truth, scores_b)
    delta = sums_a - sums_b
    blocks = []
    # LWLRAP of a multiset of clips = their summed precisions / their positives.
    for idx in bootstrap_indices(len(counts), resamples, seed):
        total = counts[idx].sum(axis=1)
        blocks.append(delta[idx].sum(axis=1) / np.where(total > 0, total, np.nan))
    diffs = np.concatenate(blocks)
    diffs = diffs[np.isfinite(diffs)]
    diff = float(delta.sum() / counts.sum())
    return Bootstrap(diff=diff, low=float(np.quantile(diffs, 0.025)), high=float(np.quantile(diffs, 0.975)),
                     p_not_better=float(np.mean(diffs <= 0)), n_clips=len(counts), resamples=len(diffs))


@dataclass(frozen=True)
class SeedSpread:
    """Two seed groups: the difference of their mean scores against the spread of their seeds."""

    diff: float                 # mean(a) - mean(b)
    noise: float | None         # standard error of that difference from the seeds' spread
    n_a: int
    n_b: int

    @property
    def significant(self) -> bool | None:
        """Whether the difference exceeds twice its standard error (None: a group has one seed)."""
        if self.noise is None:
            return None
        return abs(self.diff) > 2 * self.noise

    def verdict(self) -> str:
        """One line for a person."""
        if self.noise is None:
            return (f"{self.diff:+.4f} lwlrap; seed noise unknown (a group has a single seed: "
                    "queue more seeds, e.g. `fsat sweep --seeds 1,2,3`)")
        word = "larger than seed noise" if self.significant else "within seed noise"
        return (f"{self.diff:+.4f} lwlrap against a seed noise of ±{self.noise:.4f} "
                f"({self.n_a} and {self.n_b} seeds): {word}")


def seed_spread(scores_a: Sequence[float], scores_b: Sequence[float]) -> SeedSpread:
    """Compare two groups' scores (one per seed): difference of means, and its standard error
    ``sqrt(s_a² / n_a + s_b² / n_b)`` from each group's sample standard deviation over seeds."""
    mean_a, std_a = mean_std(scores_a)
    mean_b, std_b = mean_std(scores_b)
    if mean_a is None or mean_b is None:
        raise ValueError("each group needs at least one score")
    n_a = sum(1 for v in scores_a if v is not None)
    n_b = sum(1 for v in scores_b if v is not None)
    noise = None
    if std_a is not None and std_b is not None:
        noise = math.sqrt(std_a ** 2 / n_a + std_b ** 2 / n_b)
    return SeedSpread(diff=mean_a - mean_b, noise=noise, n_a=n_a, n_b=n_b)


def compare_noise(store: Any, run_ids: Sequence[str], baseline: str, *, resamples: int = DEFAULT_RESAMPLES,
                  seed: int = 0) -> list[dict]:
    """For each run but the baseline: is its difference to the baseline larger than noise?

    ``clips``: the paired bootstrap over the curated clips both runs scored
    out of fold (their ``oof.npy``); ``seeds``: the seed spread of the two
    runs' seed groups (``engine.seeds``). Each is a one-line verdict, or why it
    cannot be told. ``fsat compare`` prints these rows.
    """
    from engine.data.labels import parse_label_csv
    from engine.atomic import load_npy
    from engine.seeds import seed_groups
    from engine.specs import seed_group_key

    groups = seed_groups(store)
    runs = {r: store.get_run(r) for r in run_ids}
    base = runs[baseline]
    rows = []
    for run_id in run_ids:
        if run_id == baseline:
            continue
        run = runs[run_id]
        row = {"run_id": run_id, "vs": baseline}
        try:
            if run.get("dataset_id") != base.get("dataset_id") or base.get("dataset_id") is None:
                raise ValueError("the runs were not scored on the same dataset")
            dataset = store.get_dataset(base["dataset_id"])
            _, truth = parse_label_csv(Path(dataset["root"]) / "train_curated.csv", list(dataset["classes"]))
            a = load_npy(Path(run["run_dir"]) / "oof.npy")
            b = load_npy(Path(base["run_dir"]) / "oof.npy")
            if a.shape != truth.shape or b.shape != truth.shape:
                raise ValueError("an oof.npy does not hold one row per curated clip")
            both = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1) & truth.any(axis=1)
            if not both.any():
                raise ValueError("no clip was scored out of fold by both runs")
            row["clips"] = paired_bootstrap(truth[both], a[both], b[both], resamples=resamples, seed=seed).verdict()
        except Exception as err:  # noqa: BLE001 - any reason becomes the cell's text, never a traceback
            row["clips"] = f"cannot tell: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        key_a, key_b = seed_group_key(run.get("config") or {}), seed_group_key(base.get("config") or {})
        if key_a == key_b:
            row["seeds"] = "same configuration: the difference is seed noise"
        elif not groups.get(key_a) or not groups.get(key_b) or not groups[key_a].cv or not groups[key_b].cv:
            row["seeds"] = "cannot tell: a group has no run with every fold"
        else:
            row["seeds"] = seed_spread(groups[key_a].cv, groups[key_b].cv).verdict()
        rows.append(row)
    return rows
