"""Folds: stratified without groups, group-aware with groups, and the measures of both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.data.folds import (
    clips_split_from_their_group,
    fold_rule,
    make_folds,
    make_group_folds,
    read_groups,
    stratification_report,
)
from engine.errors import DataError


def grouped_labels(seed: int, n_groups: int = 150, n_classes: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Groups of 1-4 clips that share their primary class, like clips cut from one recording."""
    rng = np.random.default_rng(seed)
    rows, groups = [], []
    for g in range(n_groups):
        primary = int(rng.integers(n_classes)) if g >= n_classes else g
        for _ in range(int(rng.integers(1, 5))):
            y = np.zeros(n_classes, dtype=int)
            y[primary] = 1
            if rng.random() < 0.2:
                y[rng.integers(n_classes)] = 1
            rows.append(y)
            groups.append(f"rec{g}")
    return np.array(rows), np.array(groups)


def loop_report(Y: np.ndarray, folds: np.ndarray, groups=None) -> dict:
    """stratification_report's measures written out cell by cell."""
    n, c = Y.shape
    groups = np.arange(n) if groups is None else np.asarray(groups)
    ks = sorted(set(folds.tolist()))
    ld_terms, dev_terms, empty = [], [], 0
    for j in range(c):
        total = Y[:, j].sum()
        for k in ks:
            rows = folds == k
            p, size = Y[rows, j].sum(), rows.sum()
            if n - total > 0 and size - p > 0:
                ld_terms.append(abs(p / (size - p) - total / (n - total)))
            dev_terms.append(abs(p - total * size / n))
            holders = len(set(groups[Y[:, j] > 0].tolist()))
            empty += int(p == 0 and holders >= len(ks))
    return {"label_distribution": float(np.mean(ld_terms)), "mean_abs_deviation": float(np.mean(dev_terms)),
            "empty_cells": empty, "fold_sizes": [int((folds == k).sum()) for k in ks]}


def test_group_folds_keep_every_group_in_one_fold_and_stay_stratified():
    Y, groups = grouped_labels(0)
    folds = make_group_folds(Y, groups, n_splits=5, seed=42)
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]
    for g in set(groups.tolist()):
        assert len(set(folds[groups == g].tolist())) == 1, g
    assert clips_split_from_their_group(groups, folds) == 0
    # A grouping-blind split separates many clips from their recording.
    blind = make_folds(Y, n_splits=5, seed=42)
    assert clips_split_from_their_group(groups, blind) > len(Y) // 4
    grouped, free = stratification_report(Y, folds), stratification_report(Y, blind)
    assert grouped == pytest.approx(loop_report(Y, folds))
    assert free == pytest.approx(loop_report(Y, blind))
    assert stratification_report(Y, folds, groups) == pytest.approx(loop_report(Y, folds, groups))
    # Whole groups cost some evenness but stay near the group-blind split and far from random groups.
    rng = np.random.default_rng(1)
    keys = sorted(set(groups.tolist()))
    random_fold = dict(zip(keys, rng.permutation(len(keys)) % 5))
    random_folds = np.array([random_fold[g] for g in groups])
    assert grouped["mean_abs_deviation"] < stratification_report(Y, random_folds)["mean_abs_deviation"]
    assert grouped["mean_abs_deviation"] < 2.5 * free["mean_abs_deviation"] + 0.2
    # Whole groups of up to 4 clips cannot always even out the sizes to one clip.
    assert max(grouped["fold_sizes"]) - min(grouped["fold_sizes"]) <= 2 * 4
    # Deterministic for a seed, different for another.
    np.testing.assert_array_equal(folds, make_group_folds(Y, groups, n_splits=5, seed=42))
    assert not np.array_equal(folds, make_group_folds(Y, groups, n_splits=5, seed=7))


def test_singleton_groups_stratify_as_well_as_iterative_stratification():
    Y, _ = grouped_labels(3)
    singletons = np.arange(len(Y)).astype(str)
    folds = make_group_folds(Y, singletons, n_splits=5, seed=42)
    ours, theirs = stratification_report(Y, folds), stratification_report(Y, make_folds(Y, 5, 42))
    assert ours["empty_cells"] <= theirs["empty_cells"]
    assert ours["mean_abs_deviation"] <= theirs["mean_abs_deviation"] * 1.25 + 0.05


def test_group_folds_refuse_too_few_groups_and_mismatched_lengths():
    Y = np.eye(4, dtype=int)[[0, 1, 2, 3, 0, 1]]
    with pytest.raises(DataError, match="needs at least 5 groups"):
        make_group_folds(Y, ["a", "a", "b", "b", "c", "d"], n_splits=5)
    with pytest.raises(ValueError, match="one group per row"):
        make_group_folds(Y, ["a"], n_splits=2)
    assert fold_rule() == "multilabel-stratified"
    assert fold_rule("freesound_id") == "group-multilabel-stratified:freesound_id"


def test_read_groups_errors_name_file_row_and_column(tmp_path: Path):
    path = tmp_path / "train_curated.csv"
    path.write_text('fname,labels,freesound_id\na.wav,Bark,11\nb.wav,"Bark,Purr",11\nc.wav,Purr,12\n')
    assert read_groups(path, "freesound_id", ["c.wav", "a.wav"]) == ["12", "11"]
    with pytest.raises(DataError, match=r"train_curated.csv: no column 'source'.*fname, labels, freesound_id"):
        read_groups(path, "source", ["a.wav"])
    with pytest.raises(DataError, match=r"2 clips \(first: x.wav\) have no 'freesound_id'"):
        read_groups(path, "freesound_id", ["x.wav", "y.wav"])
    path.write_text("fname,labels,freesound_id\na.wav,Bark,11\nb.wav,Purr,\n")
    with pytest.raises(DataError, match=r"train_curated.csv: row 3: empty 'freesound_id'"):
        read_groups(path, "freesound_id", ["a.wav", "b.wav"])


def test_queueing_a_run_with_another_fold_rule_is_refused_before_it_is_queued(tmp_path: Path):
    from engine.data.demo import write_demo_dataset
    from engine.store import Store
    from tests.helpers.processes import run_cli

    root = tmp_path / "demo"
    write_demo_dataset(root, seed=4, clips_per_class=2, noisy_per_class=1, test_per_class=1, max_seconds=0.6,
                       clips_per_source=2)
    db = tmp_path / "experiments.db"
    shown = run_cli("register", str(root), "--group-column", "freesound_id", "--json", db=db).stdout
    assert '"fold_rule": "group-multilabel-stratified:freesound_id"' in shown
    out = run_cli("queue", "baseline", "--data", str(root), "--preset", "baseline_melstats", db=db, check=False)
    assert out.returncode == 2 and "data.group_column" in out.stderr and "multilabel-stratified" in out.stderr
    assert Store(db).list_jobs() == []
    ok = run_cli("queue", "baseline", "--data", str(root), "--preset", "baseline_melstats",
                 "--set", 'data.group_column="freesound_id"', db=db)
    assert int(ok.stdout) >= 1
