"""Balanced class sampler: rare-class boost, oversampling cap, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data.sampler import BalancedClassSampler, capped_probabilities
from engine.errors import ConfigError, DataError
from tests.helpers.datasets import ArrayCache


def _long_tail(n: int = 200, seed: int = 0) -> np.ndarray:
    """Class 0 on most clips, class 4 on the rest, class 1 on 20, class 2 on 4, class 3 on one clip."""
    rng = np.random.default_rng(seed)
    Y = np.zeros((n, 5), dtype=np.float32)
    Y[:, 0] = rng.random(n) < 0.7
    Y[:, 4] = 1 - Y[:, 0]
    Y[rng.choice(n, 20, replace=False), 1] = 1
    Y[rng.choice(n, 4, replace=False), 2] = 1
    Y[7, 3] = 1
    return Y


def test_rare_classes_drawn_more_often_than_uniform():
    Y = _long_tail()
    n = Y.shape[0]
    sampler = BalancedClassSampler(Y, num_samples=20 * n, seed=1)
    drawn = sampler.indices()
    per_class_drawn = Y[drawn].sum(axis=0) / len(drawn)
    per_class_uniform = Y.sum(axis=0) / n
    # Rare classes appear in a larger share of draws than their share of clips.
    for c in (1, 2, 3):
        assert per_class_drawn[c] > 1.5 * per_class_uniform[c], c
    # The most common class loses share.
    assert per_class_drawn[0] < per_class_uniform[0]


def test_empirical_frequencies_match_expected_draws():
    Y = _long_tail()
    sampler = BalancedClassSampler(Y, num_samples=40_000, seed=2)
    counts = np.bincount(sampler.indices(), minlength=Y.shape[0])
    expected = sampler.expected_draws()
    assert expected.sum() == pytest.approx(40_000)
    # Poisson-like noise: within 5 standard deviations everywhere.
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected) + 1)


def test_cap_holds():
    Y = _long_tail()
    n = Y.shape[0]
    for cap in (1.0, 2.0, 5.0):
        sampler = BalancedClassSampler(Y, max_oversample=cap)
        ratio = sampler.expected_draws() / (len(sampler) / n)
        assert ratio.max() <= cap + 1e-9
        assert sampler.expected_draws().sum() == pytest.approx(len(sampler))
    # The single clip of class 3 would get far more than 5x uncapped; it sits exactly at the cap.
    ratio = BalancedClassSampler(Y, max_oversample=5.0).expected_draws() / 1.0
    assert ratio[7] == pytest.approx(5.0)
    # Cap 1 is uniform sampling.
    np.testing.assert_allclose(BalancedClassSampler(Y, max_oversample=1.0).expected_draws(), np.ones(n))


def test_capping_iterates_and_keeps_uncapped_proportions():
    # After capping the first entry, renormalising pushes the second over the cap too.
    w = np.array([100.0, 30.0, 20.0, 10.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0])
    cap = 2.0 / w.size
    prob = capped_probabilities(w, cap)
    assert prob.sum() == pytest.approx(1.0)
    assert prob.max() <= cap * (1 + 1e-12)
    one_pass = np.minimum(w / w.sum(), cap)
    one_pass_renorm = one_pass / one_pass.sum()
    assert one_pass_renorm.max() > cap  # a single cap-and-renormalise is not enough here
    capped = np.isclose(prob, cap)
    assert capped[:3].all() and not capped[3:].any()
    # Uncapped entries share the rest in proportion to their weights (a straightforward reference).
    free = ~capped
    expected = w[free] / w[free].sum() * (1.0 - cap * capped.sum())
    np.testing.assert_allclose(prob[free], expected, rtol=1e-12)


def test_clip_weight_is_its_rarest_label():
    Y = np.array([[1, 0], [1, 0], [1, 0], [1, 1], [0, 0]], dtype=np.float32)
    sampler = BalancedClassSampler(Y, max_oversample=5.0)
    p = sampler.probabilities
    # Raw weights: 1/4, 1/4, 1/4, max(1/4, 1/1) = 1, unlabelled -> 1/4 (most frequent class).
    raw = np.array([0.25, 0.25, 0.25, 1.0, 0.25])
    np.testing.assert_allclose(p, raw / raw.sum())


def test_determinism_per_seed_and_epoch():
    Y = _long_tail()
    a = BalancedClassSampler(Y, seed=3)
    b = BalancedClassSampler(Y, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    first_epoch_one = list(a)
    assert first_epoch_one != list(b)
    b.set_epoch(1)
    assert list(b) == first_epoch_one
    assert list(BalancedClassSampler(Y, seed=4)) != list(BalancedClassSampler(Y, seed=3))
    a.set_epoch(0)
    assert list(a) == list(BalancedClassSampler(Y, seed=3))


def test_len_and_types():
    Y = _long_tail(50)
    sampler = BalancedClassSampler(Y)
    assert len(sampler) == 50
    draws = list(sampler)
    assert len(draws) == 50 and all(isinstance(i, int) and 0 <= i < 50 for i in draws)
    assert len(BalancedClassSampler(Y, num_samples=123)) == 123
    assert len(list(BalancedClassSampler(Y, num_samples=123))) == 123


def test_bad_inputs():
    with pytest.raises(DataError):
        BalancedClassSampler(np.zeros((0, 3)))
    with pytest.raises(ConfigError) as err:
        BalancedClassSampler(_long_tail(), max_oversample=0.5)
    assert err.value.field == "sampler.max_oversample"


# --------------------------------------------------------------------------- multi-scale batches

BASE, SHORT, LONG = 320_000, 160_000, 384_000  # 10 s, 5 s and 12 s at 32 kHz


def _multiscale(n: int = 20_000, batch: int = 10, seed: int = 0, prob: float = 0.2, sampler=None,
                drop_last: bool = False):
    from engine.data.dataset import MultiScaleBatchSampler

    return MultiScaleBatchSampler(range(n) if sampler is None else sampler, batch, base_crop=BASE,
                                  extra_crops=[SHORT, LONG], prob=prob, seed=seed, drop_last=drop_last)


def test_multiscale_batches_keep_one_crop_length_drawn_with_the_configured_probabilities():
    batches = list(_multiscale())
    assert len(batches) == 2000
    lengths = []
    for batch in batches:
        crops = {crop for _, crop, _epoch in batch}
        assert len(crops) == 1, crops
        lengths.append(crops.pop())
    lengths = np.array(lengths)
    assert set(lengths) == {BASE, SHORT, LONG}
    # Each extra length with probability 0.2, the base with 0.6; a binomial share over
    # 2000 batches has a standard deviation under 0.011, so 0.04 is a wide margin.
    assert np.mean(lengths == SHORT) == pytest.approx(0.2, abs=0.04)
    assert np.mean(lengths == LONG) == pytest.approx(0.2, abs=0.04)
    assert np.mean(lengths == BASE) == pytest.approx(0.6, abs=0.04)
    # Probability 0 switches the extra lengths off.
    assert {crop for b in _multiscale(2000, prob=0.0) for _, crop, _epoch in b} == {BASE}


def test_multiscale_batches_pass_every_index_through_once_in_order():
    batches = list(_multiscale(n=103, batch=10))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert [i for b in batches for i, *_ in b] == list(range(103))
    assert len(_multiscale(n=103, batch=10)) == 11
    dropped = list(_multiscale(n=103, batch=10, drop_last=True))
    assert [i for b in dropped for i, *_ in b] == list(range(100))
    assert len(_multiscale(n=103, batch=10, drop_last=True)) == 10


def test_multiscale_batches_are_reproducible_per_seed_and_epoch():
    def crops(sampler) -> list[int]:
        return [b[0][1] for b in sampler]

    a, b = _multiscale(n=2000, seed=5), _multiscale(n=2000, seed=5)
    assert list(a) == list(b)
    epoch0 = crops(a)
    assert crops(_multiscale(n=2000, seed=6)) != epoch0
    a.set_epoch(1)
    assert crops(a) != epoch0
    b.set_epoch(1)
    assert crops(a) == crops(b)
    a.set_epoch(0)
    assert crops(a) == epoch0


def test_multiscale_batches_follow_the_wrapped_sampler_and_its_epoch():
    Y = _long_tail(60)
    inner = BalancedClassSampler(Y, num_samples=60, seed=2)
    outer = _multiscale(sampler=inner, batch=8)
    outer.set_epoch(3)
    assert inner.epoch == 3
    expected = BalancedClassSampler(Y, num_samples=60, seed=2)
    expected.set_epoch(3)
    assert [i for b in outer for i, *_ in b] == expected.indices().tolist()


def test_multiscale_batches_through_a_dataloader_give_equal_length_crops():
    import torch
    from torch.utils.data import DataLoader

    from engine.data.dataset import CropDataset, MultiScaleBatchSampler

    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(int(n)).astype(np.float32) for n in rng.integers(50, 400, size=40)]
    Y = np.eye(4, dtype=np.float32)[np.arange(40) % 4]
    ds = CropDataset(ArrayCache(clips), np.arange(40), Y, crop_samples=200, train=True, seed=1)
    sampler = MultiScaleBatchSampler(torch.utils.data.SequentialSampler(ds), 8, base_crop=200,
                                     extra_crops=[100, 240], prob=0.3, seed=1)
    seen = []
    for wave, y, w in DataLoader(ds, batch_sampler=sampler):
        assert wave.shape[1] in (100, 200, 240) and wave.shape[0] == 8 == len(y) == len(w)
        seen.append(wave.shape[1])
    assert len(seen) == 5 and len(set(seen)) > 1
