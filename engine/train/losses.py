"""Multi-label losses on logits: BCE, generalized and symmetric cross entropy, focal, Lsoft.

Every loss here takes logits ``[B, C]`` and float targets ``[B, C]`` in ``[0, 1]``
and returns a scalar: the plain mean over all ``B * C`` entries of the per-entry
loss after it has been multiplied by the optional per-class weight (column) and
the optional per-clip sample weight (row). Class weights are normalised to mean 1
by :func:`class_weights_from_counts`, so weighting does not change the scale of
the loss. The per-entry terms are computed in float32 from ``logsigmoid`` so
that they stay finite under AMP and at extreme logits.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import ConfigError
# The spec validates the loss name against the same tuple (engine.specs sits below training).
from engine.specs import LOSS_NAMES

__all__ = [
    "LOSS_NAMES",
    "BCEWithLogits",
    "FocalLoss",
    "GeneralizedCrossEntropy",
    "LsoftLoss",
    "NOISY_FALLBACK_LOSSES",
    "MultiLabelLoss",
    "SCE_LOG_CLAMP",
    "SymmetricCrossEntropy",
    "build_loss",
    "class_weights_from_counts",
    "smooth_positive_labels",
]

#: The losses a curriculum stage falls back to, in order, when the noisy clips pull its
#: validation LWLRAP below the teacher's: Lsoft first (what the competition's winner used
#: on the noisy set), then GCE.
NOISY_FALLBACK_LOSSES = ("lsoft", "gce")

# Reverse cross entropy needs log(target); log(0) is replaced by this constant
# (the value used by the paper that introduced symmetric cross entropy).
SCE_LOG_CLAMP = -4.0


def smooth_positive_labels(y: Tensor, eps: float = 0.05) -> Tensor:
    """Label smoothing on positives only; negatives stay exactly 0.

    A hard positive becomes ``1 * (1 - eps) + 0.5 * eps = 1 - eps / 2`` and a hard
    negative stays 0. Soft targets (mixup mixes of hard labels) are scaled by the
    same factor, ``y -> y * (1 - eps / 2)``: this equals smoothing each source label
    first and mixing afterwards, so the order of mixup and smoothing does not
    matter and an entry that mixup made 0.01 does not jump to 0.035. For hard
    labels it is exactly ``y (1 - eps) + 0.5 eps`` on positives.
    """
    if eps == 0.0:
        return y
    if not 0.0 <= eps < 1.0:
        raise ConfigError(f"label smoothing must be in [0, 1), got {eps}", field="loss.label_smoothing")
    return y * (1.0 - 0.5 * eps)


def class_weights_from_counts(counts: np.ndarray) -> np.ndarray:
    """Per-class loss weights: inverse square root of the curated class frequency, mean 1.

    ``counts[c]`` is the number of curated clips carrying class ``c``. A class with
    no curated clip cannot be weighted by its frequency; it gets the largest weight
    of the observed classes (it is at least as rare as the rarest one). If no class
    has a count, every weight is 1. Returns float32 of shape ``[C]``.
    """
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    if counts.size == 0:
        raise ValueError("class counts are empty")
    if np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise ValueError("class counts must be finite and non-negative")
    seen = counts > 0
    if not seen.any():
        return np.ones(counts.size, dtype=np.float32)
    weights = np.empty_like(counts)
    weights[seen] = 1.0 / np.sqrt(counts[seen])
    weights[~seen] = weights[seen].max()
    return (weights / weights.mean()).astype(np.float32)


class MultiLabelLoss(nn.Module):
    """Common part of the losses: smoothing, class and sample weights, mean.

    Subclasses implement :meth:`elementwise`, the per-entry loss ``[B, C]``.
    ``forward(logits, targets, sample_weights=None)`` returns a scalar.
    """

    class_weights: Tensor | None

    def __init__(self, *, class_weights: np.ndarray | Tensor | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label smoothing must be in [0, 1), got {label_smoothing}",
                              field="loss.label_smoothing")
        self.label_smoothing = float(label_smoothing)
        if class_weights is None:
            self.register_buffer("class_weights", None)
        else:
            cw = torch.as_tensor(np.asarray(class_weights, dtype=np.float32)).reshape(-1)
            self.register_buffer("class_weights", cw)

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-entry loss ``[B, C]`` (float32) for smoothed targets."""
        raise NotImplementedError

    def forward(self, logits: Tensor, targets: Tensor, sample_weights: Tensor | None = None) -> Tensor:
        """Weighted mean loss over all entries of the batch."""
        if logits.shape != targets.shape or logits.ndim != 2:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} "
                             "must both be [batch, classes]")
        # The loss is always computed in float32: fp16 logits from autocast would
        # lose the small log-probabilities that carry the gradient.
        logits = logits.float()
        targets = smooth_positive_labels(targets.float(), self.label_smoothing)
        loss = self.elementwise(logits, targets)
        if self.class_weights is not None:
            if self.class_weights.numel() != loss.shape[1]:
                raise ValueError(f"{self.class_weights.numel()} class weights for {loss.shape[1]} classes")
            loss = loss * self.class_weights.to(loss.device)[None, :]
        if sample_weights is not None:
            sample_weights = sample_weights.to(device=loss.device, dtype=loss.dtype).reshape(-1)
            if sample_weights.numel() != loss.shape[0]:
                raise ValueError(f"{sample_weights.numel()} sample weights for a batch of {loss.shape[0]}")
            loss = loss * sample_weights[:, None]
        return loss.mean()


class BCEWithLogits(MultiLabelLoss):
    """Binary cross entropy per sigmoid output: ``-(t log p + (1 - t) log(1 - p))``."""

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-entry BCE from logsigmoid (stable for any logit)."""
        return -(targets * F.logsigmoid(logits) + (1.0 - targets) * F.logsigmoid(-logits))


class GeneralizedCrossEntropy(MultiLabelLoss):
    """Generalized cross entropy (Zhang & Sabuncu 2018) in its multi-label form.

    For each sigmoid output with probability ``p`` and target ``t``:
    ``t (1 - p^q) / q + (1 - t) (1 - (1 - p)^q) / q``. ``q -> 0`` recovers BCE,
    ``q = 1`` is the MAE-like loss that ignores confidently wrong labels; ``q = 0.7``
    is the usual compromise for noisy labels.
    """

    def __init__(self, q: float = 0.7, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 < q <= 1.0:
            raise ConfigError(f"GCE q must be in (0, 1], got {q}", field="loss.gce_q")
        self.q = float(q)

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-entry GCE; ``p^q`` is ``exp(q * logsigmoid(x))`` to stay finite."""
        q = self.q
        p_q = torch.exp(q * F.logsigmoid(logits))
        one_minus_p_q = torch.exp(q * F.logsigmoid(-logits))
        return (targets * (1.0 - p_q) + (1.0 - targets) * (1.0 - one_minus_p_q)) / q


class SymmetricCrossEntropy(MultiLabelLoss):
    """Symmetric cross entropy (Wang et al. 2019) per sigmoid output.

    ``alpha * BCE(t, p) + beta * RCE`` with the reverse term
    ``RCE = -(p log t + (1 - p) log(1 - t))``. A hard target has ``log 0``; it is
    clamped to ``A = -4`` (:data:`SCE_LOG_CLAMP`), so for a hard positive the
    reverse term is ``4 (1 - p)``, a bounded, MAE-like penalty that is robust to
    wrong labels.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        if alpha < 0 or beta < 0 or alpha + beta == 0:
            raise ConfigError(f"SCE alpha and beta must be >= 0 and not both 0, got {alpha}, {beta}",
                              field="loss.sce_alpha")
        self.alpha = float(alpha)
        self.beta = float(beta)

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-entry ``alpha * BCE + beta * RCE``."""
        log_p = F.logsigmoid(logits)
        log_not_p = F.logsigmoid(-logits)
        bce = -(targets * log_p + (1.0 - targets) * log_not_p)
        # Clamping the target before the log keeps 0 * log(0) from becoming NaN.
        floor = math.exp(SCE_LOG_CLAMP)
        log_t = torch.log(targets.clamp(min=floor))
        log_not_t = torch.log((1.0 - targets).clamp(min=floor))
        p = torch.sigmoid(logits)
        rce = -(p * log_t + (1.0 - p) * log_not_t)
        return self.alpha * bce + self.beta * rce


class FocalLoss(MultiLabelLoss):
    """Binary focal loss (Lin et al. 2017) per sigmoid output.

    ``-(a t (1 - p)^gamma log p + (1 - a) (1 - t) p^gamma log(1 - p))``; with
    ``alpha=None`` both terms have weight 1 (``a`` and ``1 - a`` dropped), which is
    the variant used for multi-label tagging where negatives are not background.
    Soft targets weight the two terms linearly.
    """

    def __init__(self, gamma: float = 1.5, alpha: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if gamma < 0:
            raise ConfigError(f"focal gamma must be >= 0, got {gamma}", field="loss.focal_gamma")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"focal alpha must be in [0, 1], got {alpha}", field="loss.focal_alpha")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-entry focal loss; the modulating factors come from logsigmoid."""
        log_p = F.logsigmoid(logits)
        log_not_p = F.logsigmoid(-logits)
        pos = targets * torch.exp(self.gamma * log_not_p) * log_p
        neg = (1.0 - targets) * torch.exp(self.gamma * log_p) * log_not_p
        if self.alpha is not None:
            pos = self.alpha * pos
            neg = (1.0 - self.alpha) * neg
        return -(pos + neg)


class LsoftLoss(MultiLabelLoss):
    """Lsoft, the soft-bootstrapping BCE used on the noisy set by the competition's winner.

    The target is blended with the model's own (detached) prediction before the
    binary cross entropy: ``t' = beta * t + (1 - beta) * p`` with ``p = sigmoid(x)``,
    then ``-(t' log p + (1 - t') log(1 - p))``. A weak label the model confidently
    disagrees with pulls less (at ``beta = 0.7`` a wrong positive with ``p = 0.05``
    becomes a target of 0.715 instead of 1). ``beta = 1`` is plain BCE.
    """

    def __init__(self, beta: float = 0.7, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= beta <= 1.0:
            raise ConfigError(f"Lsoft beta must be in [0, 1], got {beta}", field="loss.lsoft_beta")
        self.beta = float(beta)

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-entry BCE against the bootstrapped target (no gradient through the target)."""
        with torch.no_grad():
            blended = self.beta * targets + (1.0 - self.beta) * torch.sigmoid(logits)
        return -(blended * F.logsigmoid(logits) + (1.0 - blended) * F.logsigmoid(-logits))


def build_loss(name: str, *, label_smoothing: float = 0.0,
               class_weights: np.ndarray | Tensor | None = None,
               gce_q: float = 0.7, sce_alpha: float = 1.0, sce_beta: float = 0.5,
               focal_gamma: float = 1.5, lsoft_beta: float = 0.7) -> nn.Module:
    """The training loss named in a job spec: 'bce', 'gce', 'sce', 'focal' or 'lsoft'.

    The module's ``forward(logits, targets, sample_weights=None)`` smooths positive
    targets, weights columns by ``class_weights`` and rows by ``sample_weights`` and
    returns the mean.
    """
    common = {"label_smoothing": label_smoothing, "class_weights": class_weights}
    key = str(name).strip().lower()
    if key == "bce":
        return BCEWithLogits(**common)
    if key == "gce":
        return GeneralizedCrossEntropy(q=gce_q, **common)
    if key == "sce":
        return SymmetricCrossEntropy(alpha=sce_alpha, beta=sce_beta, **common)
    if key == "focal":
        return FocalLoss(gamma=focal_gamma, **common)
    if key == "lsoft":
        return LsoftLoss(beta=lsoft_beta, **common)
    raise ConfigError(f"unknown loss {name!r}; use one of {', '.join(LOSS_NAMES)}", field="loss.name")
