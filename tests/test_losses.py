"""Losses against direct numpy formulas, smoothing, weighting and extreme logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import ConfigError
from engine.train.losses import (
    SCE_LOG_CLAMP,
    BCEWithLogits,
    FocalLoss,
    GeneralizedCrossEntropy,
    SymmetricCrossEntropy,
    build_loss,
    class_weights_from_counts,
    smooth_positive_labels,
)

B, C = 6, 5


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _np_bce(x, t):
    p = _sigmoid(x)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def _np_gce(x, t, q):
    p = _sigmoid(x)
    return t * (1 - p**q) / q + (1 - t) * (1 - (1 - p) ** q) / q


def _np_sce(x, t, alpha, beta):
    p = _sigmoid(x)
    log_t = np.where(t > 0, np.log(np.where(t > 0, t, 1.0)), SCE_LOG_CLAMP)
    log_1mt = np.where(t < 1, np.log(np.where(t < 1, 1 - t, 1.0)), SCE_LOG_CLAMP)
    log_t = np.maximum(log_t, SCE_LOG_CLAMP)
    log_1mt = np.maximum(log_1mt, SCE_LOG_CLAMP)
    rce = -(p * log_t + (1 - p) * log_1mt)
    return alpha * _np_bce(x, t) + beta * rce


def _np_focal(x, t, gamma, alpha=None):
    p = _sigmoid(x)
    a_pos, a_neg = (1.0, 1.0) if alpha is None else (alpha, 1 - alpha)
    return -(a_pos * t * (1 - p) ** gamma * np.log(p) + a_neg * (1 - t) * p**gamma * np.log(1 - p))


@pytest.fixture
def batch():
    rng = np.random.default_rng(7)
    x = rng.normal(0, 3, size=(B, C))
    hard = (rng.random((B, C)) < 0.4).astype(np.float64)
    soft = hard * rng.uniform(0.2, 1.0, size=(B, C))
    return x, hard, soft


def _t(a):
    return torch.tensor(a, dtype=torch.float32)


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_bce_matches_numpy_and_torch(batch, kind):
    x, hard, soft = batch
    t = hard if kind == "hard" else soft
    ours = BCEWithLogits()(_t(x), _t(t)).item()
    assert ours == pytest.approx(_np_bce(x, t).mean(), rel=1e-5)
    reference = torch.nn.BCEWithLogitsLoss()(_t(x), _t(t)).item()
    assert ours == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize("q", [0.3, 0.7, 1.0])
def test_gce_matches_formula(batch, q):
    x, hard, soft = batch
    for t in (hard, soft):
        ours = GeneralizedCrossEntropy(q=q)(_t(x), _t(t)).item()
        assert ours == pytest.approx(_np_gce(x, t, q).mean(), rel=1e-5)


def test_gce_approaches_bce_for_small_q(batch):
    x, hard, _ = batch
    x = np.clip(x, -2, 2)
    small_q = GeneralizedCrossEntropy(q=1e-4)(_t(x), _t(hard)).item()
    assert small_q == pytest.approx(_np_bce(x, hard).mean(), rel=1e-3)


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.5), (0.1, 1.0)])
def test_sce_matches_formula_with_clamped_log(batch, alpha, beta):
    x, hard, soft = batch
    for t in (hard, soft):
        ours = SymmetricCrossEntropy(alpha=alpha, beta=beta)(_t(x), _t(t)).item()
        assert ours == pytest.approx(_np_sce(x, t, alpha, beta).mean(), rel=1e-5)
    # For a hard positive the reverse term is -A * (1 - p) = 4 (1 - p).
    logit = 0.3
    p = _sigmoid(logit)
    only_rce = SymmetricCrossEntropy(alpha=0.0, beta=1.0)(_t([[logit]]), _t([[1.0]])).item()
    assert only_rce == pytest.approx(-SCE_LOG_CLAMP * (1 - p), rel=1e-5)


@pytest.mark.parametrize("gamma,alpha", [(1.5, None), (2.0, 0.25), (0.0, None)])
def test_focal_matches_formula(batch, gamma, alpha):
    x, hard, soft = batch
    for t in (hard, soft):
        ours = FocalLoss(gamma=gamma, alpha=alpha)(_t(x), _t(t)).item()
        assert ours == pytest.approx(_np_focal(x, t, gamma, alpha).mean(), rel=1e-5)
    # gamma = 0 without alpha is plain BCE.
    if gamma == 0.0 and alpha is None:
        assert FocalLoss(gamma=0.0)(_t(x), _t(hard)).item() == pytest.approx(_np_bce(x, hard).mean(), rel=1e-5)


def test_smoothing_values():
    y = torch.tensor([[1.0, 0.0, 0.5, 0.25]])
    out = smooth_positive_labels(y, eps=0.05)
    # Hard positive: y (1 - eps) + 0.5 eps; negative stays 0.
    assert out[0, 0].item() == pytest.approx(1 * 0.95 + 0.025)
    assert out[0, 1].item() == 0.0
    # A mixup target equals mixing the smoothed hard labels: 0.5 * 0.975 + 0.5 * 0.
    assert out[0, 2].item() == pytest.approx(0.5 * 0.975)
    assert out[0, 3].item() == pytest.approx(0.25 * 0.975 + 0.75 * 0.0)
    assert torch.equal(smooth_positive_labels(y, eps=0.0), y)


def test_build_loss_applies_smoothing_and_weights(batch):
    x, hard, _ = batch
    rng = np.random.default_rng(3)
    class_w = rng.uniform(0.5, 2.0, size=C)
    sample_w = rng.uniform(0.5, 1.0, size=B)
    eps = 0.05
    t_smooth = np.where(hard > 0, hard * (1 - eps) + 0.5 * eps, 0.0)
    expected = (_np_bce(x, t_smooth) * class_w[None, :] * sample_w[:, None]).mean()
    loss = build_loss("bce", label_smoothing=eps, class_weights=class_w)
    got = loss(_t(x), _t(hard), sample_weights=_t(sample_w)).item()
    assert got == pytest.approx(expected, rel=1e-5)

    expected_gce = (_np_gce(x, t_smooth, 0.7) * class_w[None, :]).mean()
    got_gce = build_loss("gce", label_smoothing=eps, class_weights=class_w)(_t(x), _t(hard)).item()
    assert got_gce == pytest.approx(expected_gce, rel=1e-5)

    expected_focal = (_np_focal(x, hard, 1.5) * sample_w[:, None]).mean()
    got_focal = build_loss("FOCAL", focal_gamma=1.5)(_t(x), _t(hard), _t(sample_w)).item()
    assert got_focal == pytest.approx(expected_focal, rel=1e-5)

    expected_sce = _np_sce(x, hard, 1.0, 0.5).mean()
    assert build_loss("sce")(_t(x), _t(hard)).item() == pytest.approx(expected_sce, rel=1e-5)


def test_zero_sample_weight_removes_row(batch):
    x, hard, _ = batch
    w = np.ones(B)
    w[0] = 0.0
    with_zero = build_loss("bce")(_t(x), _t(hard), _t(w)).item()
    expected = _np_bce(x[1:], hard[1:]).sum() / (B * C)
    assert with_zero == pytest.approx(expected, rel=1e-5)


def test_unknown_loss_name_is_config_error():
    with pytest.raises(ConfigError) as err:
        build_loss("hinge")
    assert err.value.field == "loss.name"


@pytest.mark.parametrize("name", ["bce", "gce", "sce", "focal"])
def test_gradients_finite_at_extreme_logits(name):
    x = torch.tensor([[50.0, -50.0, 50.0, -50.0]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    loss = build_loss(name, label_smoothing=0.05)(x, t)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()
    # A confidently wrong logit must still push the right way.
    assert x.grad[0, 2] > 0
    assert x.grad[0, 3] < 0


def test_fp16_logits_computed_in_float32(batch):
    x, hard, _ = batch
    loss = build_loss("bce")(_t(x).half(), _t(hard))
    assert loss.dtype == torch.float32


def test_class_weights_from_counts():
    counts = np.array([100, 25, 4, 0])
    w = class_weights_from_counts(counts)
    raw = np.array([1 / 10, 1 / 5, 1 / 2, 1 / 2])
    np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-6)
    assert w.mean() == pytest.approx(1.0)
    assert w.dtype == np.float32
    np.testing.assert_array_equal(class_weights_from_counts(np.zeros(3)), np.ones(3))
