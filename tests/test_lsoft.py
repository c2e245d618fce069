"""Lsoft against a straightforward per-entry loop, its gradient, and its place in the fallback order."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.errors import ConfigError
from engine.train.losses import NOISY_FALLBACK_LOSSES, LsoftLoss, build_loss


def _reference_lsoft(x: np.ndarray, t: np.ndarray, beta: float, w_class=None, w_clip=None) -> float:
    """The argus-freesound formula written out entry by entry: blend the target with p, then BCE."""
    total, n = 0.0, 0
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            p = 1.0 / (1.0 + math.exp(-x[i, c]))
            target = beta * t[i, c] + (1.0 - beta) * p
            term = -(target * math.log(p) + (1.0 - target) * math.log(1.0 - p))
            if w_class is not None:
                term *= w_class[c]
            if w_clip is not None:
                term *= w_clip[i]
            total += term
            n += 1
    return total / n


@pytest.mark.parametrize("beta", [0.7, 0.3, 1.0])
def test_lsoft_matches_reference_loop(beta):
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2.5, size=(5, 7))
    t = (rng.random((5, 7)) < 0.3).astype(np.float64)
    ours = LsoftLoss(beta=beta)(torch.tensor(x, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)).item()
    assert ours == pytest.approx(_reference_lsoft(x, t, beta), rel=1e-5)


def test_lsoft_with_class_and_clip_weights_matches_reference():
    rng = np.random.default_rng(4)
    x = rng.normal(0, 2.0, size=(4, 3))
    t = (rng.random((4, 3)) < 0.5).astype(np.float64)
    wc = np.array([0.5, 1.0, 1.5])
    wr = np.array([1.0, 0.5, 0.0, 2.0])
    loss = build_loss("lsoft", class_weights=wc, lsoft_beta=0.7)
    ours = loss(torch.tensor(x, dtype=torch.float32), torch.tensor(t, dtype=torch.float32),
                sample_weights=torch.tensor(wr, dtype=torch.float32)).item()
    assert ours == pytest.approx(_reference_lsoft(x, t, 0.7, wc, wr), rel=1e-5)


def test_lsoft_beta_one_is_bce():
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.normal(0, 2, size=(3, 4)), dtype=torch.float32)
    t = torch.tensor((rng.random((3, 4)) < 0.5).astype(np.float32))
    assert LsoftLoss(beta=1.0)(x, t).item() == pytest.approx(build_loss("bce")(x, t).item(), rel=1e-6)


def test_lsoft_target_carries_no_gradient():
    """The gradient is BCE's against a fixed blended target: (p - t') per entry, over the entry count."""
    x = torch.tensor([[2.0, -1.0]], requires_grad=True)
    t = torch.tensor([[0.0, 1.0]])
    LsoftLoss(beta=0.7)(x, t).backward()
    p = torch.sigmoid(x.detach())
    blended = 0.7 * t + 0.3 * p
    assert torch.allclose(x.grad, (p - blended) / 2, atol=1e-6)


def test_wrong_confident_label_pulls_less_than_bce():
    x = torch.tensor([[-3.0]])  # the model says no
    t = torch.tensor([[1.0]])   # the weak label says yes
    assert LsoftLoss(beta=0.7)(x, t).item() < build_loss("bce")(x, t).item()


def test_fallback_order_and_bad_beta():
    assert NOISY_FALLBACK_LOSSES == ("lsoft", "gce")
    with pytest.raises(ConfigError) as err:
        LsoftLoss(beta=1.5)
    assert err.value.field == "loss.lsoft_beta"
    # SCE stays available next to the fallbacks.
    assert build_loss("sce").__class__.__name__ == "SymmetricCrossEntropy"
