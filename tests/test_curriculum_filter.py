"""The curriculum's label filter, weights and audit against straightforward loops."""

from __future__ import annotations

import numpy as np
import pytest

from engine.curriculum import (audit_per_class, clip_weights, filter_labels, noisy_label_rows,
                               overall_precision_recall)


def _reference_filter(weak, probs, keep, pseudo):
    """The plan's rule, one clip and one class at a time."""
    n, c = weak.shape
    labels = np.zeros((n, c), dtype=bool)
    for i in range(n):
        for k in range(c):
            if weak[i, k] and probs[i, k] >= keep:
                labels[i, k] = True
            elif not weak[i, k] and probs[i, k] >= pseudo:
                labels[i, k] = True
    return labels


@pytest.fixture
def noisy():
    rng = np.random.default_rng(11)
    n, c = 40, 6
    truth = np.zeros((n, c), dtype=bool)
    truth[np.arange(n), rng.integers(0, c, n)] = True
    weak = truth.copy()
    flip = rng.random(n) < 0.35
    for i in np.flatnonzero(flip):
        weak[i] = False
        weak[i, (np.flatnonzero(truth[i])[0] + 1 + rng.integers(0, c - 1)) % c] = True
    # A teacher that mostly knows the truth.
    probs = np.clip(np.where(truth, rng.uniform(0.6, 1.0, (n, c)), rng.uniform(0.0, 0.5, (n, c))), 0, 1)
    probs[0, :] = 0.01  # a clip the teacher recognises as nothing
    weak[0, 0] = True
    return weak, probs, truth


def test_filter_matches_reference_and_drops_empty_clips(noisy):
    weak, probs, _ = noisy
    f = filter_labels(weak, probs, keep_threshold=0.8, pseudo_threshold=0.95)
    expected = _reference_filter(weak, probs, 0.8, 0.95)
    assert np.array_equal(f.labels, expected)
    assert np.array_equal(f.clip_kept, expected.any(axis=1))
    assert not f.clip_kept[0]
    assert np.array_equal(f.kept | f.added, f.labels)
    assert not (f.kept & ~weak).any() and not (f.added & weak).any()
    assert np.array_equal(f.dropped, weak & ~expected)


def test_max_per_class_keeps_the_most_confident(noisy):
    weak, probs, _ = noisy
    full = filter_labels(weak, probs, keep_threshold=0.5, pseudo_threshold=0.9)
    capped = filter_labels(weak, probs, keep_threshold=0.5, pseudo_threshold=0.9, max_per_class=3)
    for k in range(weak.shape[1]):
        rows = np.flatnonzero(full.labels[:, k])
        top = sorted(rows, key=lambda i: (-probs[i, k], i))[:3]
        assert sorted(np.flatnonzero(capped.labels[:, k]).tolist()) == sorted(int(i) for i in top)


def test_per_class_mode_scales_by_the_class_maximum():
    weak = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=bool)
    # Class 1's teacher never exceeds 0.5 on the noisy clips: globally nothing of it survives.
    probs = np.array([[0.95, 0.1], [0.70, 0.1], [0.1, 0.50], [0.1, 0.30]])
    g = filter_labels(weak, probs, keep_threshold=0.8, pseudo_threshold=0.95)
    assert not g.labels[:, 1].any()
    p = filter_labels(weak, probs, keep_threshold=0.8, pseudo_threshold=0.95, threshold_mode="per_class")
    assert p.keep_thresholds.tolist() == pytest.approx([0.76, 0.40])
    assert p.labels[:, 1].tolist() == [False, False, True, False]
    assert p.labels[:, 0].tolist() == [True, False, False, False]
    # The pseudo threshold stays absolute: class 1's top clip is not added to clips that lack it.
    assert p.pseudo_thresholds.tolist() == pytest.approx([0.95, 0.95])
    assert not p.added.any()


def test_weights_are_max_kept_probability_clipped(noisy):
    weak, probs, _ = noisy
    f = filter_labels(weak, probs, keep_threshold=0.6, pseudo_threshold=0.9)
    w = clip_weights(f, probs)
    for i in range(len(w)):
        if not f.clip_kept[i]:
            assert w[i] == 0
        else:
            m = max(probs[i, k] for k in range(probs.shape[1]) if f.labels[i, k])
            assert w[i] == pytest.approx(min(1.0, max(0.5, m)))
    low = filter_labels(np.array([[1]]), np.array([[0.3]]), keep_threshold=0.2, pseudo_threshold=0.9)
    assert clip_weights(low, np.array([[0.3]]))[0] == pytest.approx(0.5)


def test_audit_counts_and_precision_recall(noisy):
    weak, probs, truth = noisy
    classes = [f"c{k}" for k in range(weak.shape[1])]
    f = filter_labels(weak, probs, keep_threshold=0.8, pseudo_threshold=0.95)
    w = clip_weights(f, probs)
    rows = audit_per_class(f, w, classes, truth)
    for k, row in enumerate(rows):
        final = f.labels[:, k]
        assert row["n_labelled"] == weak[:, k].sum()
        assert row["n_kept"] + row["n_dropped"] == row["n_labelled"]
        assert row["n_added"] == (final & ~weak[:, k]).sum()
        assert row["n_wrong"] == (weak[:, k] & ~truth[:, k]).sum()
        assert row["wrong_dropped"] + row["right_lost"] == row["n_dropped"]
        if final.any():
            assert row["mean_weight"] == pytest.approx(w[final].mean())
            assert row["precision"] == pytest.approx((final & truth[:, k]).sum() / final.sum())
        assert row["recall"] == pytest.approx((final & truth[:, k]).sum() / truth[:, k].sum())
    overall = overall_precision_recall(f, truth)
    # The teacher knows the truth better than the weak labels do, so filtering raises precision.
    assert overall["precision"] > overall["weak_precision"]


def test_rows_name_the_labels():
    f = filter_labels(np.array([[1, 1, 0]]), np.array([[0.9, 0.2, 0.97]]))
    rows = noisy_label_rows(["a.wav"], ["x", "y", "z"], f, clip_weights(f, np.array([[0.9, 0.2, 0.97]])), fold=2)
    assert rows == [{"fold": 2, "fname": "a.wav", "labels": "x,y", "kept": "x", "added": "z", "weight": 0.97}]


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="must both be"):
        filter_labels(np.zeros((2, 3)), np.zeros((2, 4)))
