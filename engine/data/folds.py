"""Cross-validation folds stratified on the multi-label matrix, optionally keeping recordings together.

Iterative stratification (Sechidis et al., 2011) keeps each class's positives
spread evenly over the folds, which a plain KFold cannot do for 80 rare,
co-occurring labels. The folds are a function of the label matrix, the fold
count, the seed and (when given) the group of each clip only, so every run
on a dataset sees the same folds.

Groups. Clips cut from one source recording (FSD's ``freesound_id``) sound
alike; when they sit in different folds a model is validated on near copies
of its training clips and its out-of-fold scores are optimistic. With a group
per clip (``data.group_column`` of ``train_curated.csv``) ``make_group_folds``
runs the same iterative stratification over whole groups, so each group
lands in exactly one fold. ``stratification_report`` measures how evenly the
folds still hold each class, and ``clips_split_from_their_group`` how many
clips a grouping-blind split separates from their recording.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.errors import DataError
# The rule's names live with data.group_column, which chooses it: the queue checks them without numpy.
from engine.specs import fold_rule  # noqa: F401 (the registration code and tests import it from here)


def _check(Y: np.ndarray, n_splits: int) -> np.ndarray:
    Y = np.asarray(Y)
    if Y.ndim != 2:
        raise ValueError(f"Y must be a 2-D [clips, classes] matrix, got shape {Y.shape}")
    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2, got {n_splits}")
    if len(Y) < n_splits:
        raise DataError(f"{n_splits}-fold cross-validation needs at least {n_splits} labelled "
                        f"clips, the curated set has {len(Y)}; add clips or lower the fold count")
    return (Y > 0.5).astype(np.int64)


def make_folds(Y: np.ndarray, n_splits: int = 5, seed: int = 42) -> np.ndarray:
    """Return the fold index (0..n_splits-1) of every row of the multi-hot matrix ``Y``.

    Uses ``MultilabelStratifiedKFold(n_splits, shuffle=True, random_state=seed)``;
    validation fold k is the rows whose value is k. Deterministic for the same
    inputs. Fewer rows than folds is a DataError.
    """
    # Imported here: iterstrat pulls in sklearn, and the CLI checks fold rules at queue time without it.
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    labels = _check(Y, n_splits)
    splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = np.full(len(labels), -1, dtype=np.int64)
    for fold, (_, valid) in enumerate(splitter.split(np.zeros((len(labels), 1)), labels)):
        folds[valid] = fold
    return folds


def make_group_folds(Y: np.ndarray, groups: Sequence, n_splits: int = 5, seed: int = 42) -> np.ndarray:
    """Fold index of every row such that all rows of a group share one fold, stratified on ``Y``.

    Iterative stratification over groups: each fold wants ``1 / n_splits`` of
    every class's positives and of the clips. Repeatedly the class with the
    fewest positives among the unassigned groups is taken, and its groups
    (largest first) go one at a time to the fold that still wants most of that
    class, then most clips, then at random (seeded); every assignment updates
    what each fold still wants for every class the group holds. Groups without
    labels go last, to the folds that want most clips. Fewer groups than folds
    is a DataError.
    """
    labels = _check(Y, n_splits)
    group_ids = np.asarray(groups)
    if group_ids.shape != (len(labels),):
        raise ValueError(f"groups must give one group per row ({len(labels)}), got shape {group_ids.shape}")
    keys, inverse = np.unique(group_ids.astype(str), return_inverse=True)
    n_groups = len(keys)
    if n_groups < n_splits:
        raise DataError(f"{n_splits}-fold cross-validation by group needs at least {n_splits} groups, "
                        f"the curated set has {n_groups}; lower the fold count or leave data.group_column empty")
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_groups, labels.shape[1]), dtype=np.int64)
    np.add.at(counts, inverse, labels)
    sizes = np.bincount(inverse, minlength=n_groups)
    want_class = np.tile(labels.sum(axis=0) / n_splits, (n_splits, 1)).astype(np.float64)   # [F, C]
    want_size = np.full(n_splits, len(labels) / n_splits)
    group_fold = np.full(n_groups, -1, dtype=np.int64)
    # A random order first, so ties among equal groups fall differently per seed.
    order = rng.permutation(n_groups)
    remaining = counts[order].sum(axis=0)

    def place(g: int, fold: int) -> None:
        group_fold[g] = fold
        want_class[fold] -= counts[g]
        want_size[fold] -= sizes[g]

    def pick(scores: list[np.ndarray]) -> int:
        candidates = np.arange(n_splits)
        for s in scores:
            s = s[candidates]
            candidates = candidates[s >= s.max() - 1e-9]
            if candidates.size == 1:
                return int(candidates[0])
        return int(rng.choice(candidates))

    while (remaining > 0).any():
        c = int(np.flatnonzero(remaining > 0)[np.argmin(remaining[remaining > 0])])
        holders = [g for g in order if group_fold[g] < 0 and counts[g, c] > 0]
        holders.sort(key=lambda g: -sizes[g])          # stable: the random order breaks ties
        for g in holders:
            place(g, pick([want_class[:, c], want_size]))
            remaining -= counts[g]
    for g in order:
        if group_fold[g] < 0:
            place(g, pick([want_size]))
    return group_fold[inverse]


def read_groups(csv_path: Path | str, column: str, fnames: Sequence[str]) -> list[str]:
    """The value of ``column`` for each of ``fnames`` in the label CSV ``csv_path``.

    A missing column, a clip absent from the CSV and an empty value are
    DataErrors naming the file (and the 1-based row, header = row 1).
    """
    path = Path(csv_path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or column not in reader.fieldnames:
                raise DataError(f"no column {column!r} for data.group_column (columns: "
                                f"{', '.join(reader.fieldnames or [])}); name an existing column or leave it "
                                "empty", file=path)
            by_fname: dict[str, str] = {}
            for row_number, row in enumerate(reader, start=2):
                value = (row.get(column) or "").strip()
                if not value:
                    raise DataError(f"empty {column!r} (the group column); give every clip its source "
                                    "recording's id", file=path, row=row_number)
                by_fname[row.get("fname", "")] = value
    except OSError as err:
        raise DataError(f"cannot read the group column: {err.strerror or err}", file=path) from None
    missing = [f for f in fnames if f not in by_fname]
    if missing:
        raise DataError(f"{len(missing)} clips (first: {missing[0]}) have no {column!r} value", file=path)
    return [by_fname[f] for f in fnames]


def clips_split_from_their_group(groups: Sequence, folds: np.ndarray) -> int:
    """How many clips share their group with a clip in another fold (0 for group-aware folds)."""
    group_ids = np.asarray(groups).astype(str)
    folds = np.asarray(folds)
    keys, inverse = np.unique(group_ids, return_inverse=True)
    first = np.full(len(keys), -1)
    spread = np.zeros(len(keys), dtype=bool)
    for g, k in zip(inverse, folds):
        if first[g] < 0:
            first[g] = k
        elif first[g] != k:
            spread[g] = True
    return int(spread[inverse].sum())


def stratification_report(Y: np.ndarray, folds: np.ndarray, groups: Sequence | None = None) -> dict:
    """How evenly ``folds`` hold each class and the clips.

    - ``label_distribution``: Sechidis et al.'s LD, the mean over classes and
      folds of ``|p_fk / (n_f - p_fk) - P_k / (N - P_k)|`` (0 = every fold has
      each class's overall positive-to-negative ratio);
    - ``mean_abs_deviation``: mean over classes and folds of the positives a
      fold holds minus the positives its share of clips would hold, in clips;
    - ``empty_cells``: (class, fold) pairs with no positive although the class
      has positives in at least as many groups (clips, without ``groups``)
      as there are folds, so every fold could have held one;
    - ``fold_sizes``: clips per fold.
    """
    labels = (np.asarray(Y) > 0.5).astype(np.float64)
    folds = np.asarray(folds)
    fold_ids = np.unique(folds)
    n = len(labels)
    total = labels.sum(axis=0)
    sizes = np.array([(folds == k).sum() for k in fold_ids], dtype=np.float64)
    per_fold = np.stack([labels[folds == k].sum(axis=0) for k in fold_ids])          # [F, C]
    with np.errstate(divide="ignore", invalid="ignore"):
        overall = total / (n - total)
        ratio = per_fold / (sizes[:, None] - per_fold)
    finite = np.isfinite(overall)[None, :] & np.isfinite(ratio)
    ld = float(np.abs(ratio - overall[None, :])[finite].mean()) if finite.any() else 0.0
    expected = total[None, :] * sizes[:, None] / n
    if groups is None:
        spread = total
    else:
        _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        holders = np.zeros((inverse.max() + 1, labels.shape[1]))
        np.add.at(holders, inverse, labels)
        spread = (holders > 0).sum(axis=0)
    return {
        "label_distribution": ld,
        "mean_abs_deviation": float(np.abs(per_fold - expected).mean()),
        "empty_cells": int(((per_fold == 0) & (spread[None, :] >= len(fold_ids))).sum()),
        "fold_sizes": sizes.astype(int).tolist(),
    }
