"""Optimiser, learning-rate schedule, early stopping, clipping and mixed precision.

The recipe: AdamW with a faster head than encoder (2e-4 vs 1e-4), weight decay
1e-4, linear warmup then cosine decay stepped per optimisation step, gradient
clipping at 5.0, early stopping on validation LWLRAP with patience 3, fp16 AMP on
CUDA (optionally bf16 autocast on CPU).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any, ContextManager

import torch
from torch import nn

from engine.errors import ConfigError

__all__ = [
    "EarlyStopping",
    "autocast_context",
    "build_optimizer",
    "clip_gradients",
    "make_grad_scaler",
    "warmup_cosine",
]


def _split_decay(params: Iterable[tuple[str, nn.Parameter]]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    decay, no_decay = [], []
    for _, p in params:
        # 1-D tensors are biases and the scales/shifts of BatchNorm/LayerNorm:
        # shrinking them towards 0 only fights the normalisation, so they are
        # left out of weight decay.
        (no_decay if p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def build_optimizer(model: nn.Module, *, head_lr: float = 2e-4, encoder_lr: float = 1e-4,
                    weight_decay: float = 1e-4,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW with parameter groups: ``model.head`` at ``head_lr``, the rest at ``encoder_lr``.

    Groups are named ``'head'``, ``'encoder'`` (parameters of ``model.encoder``)
    and ``'other'`` (any parameter outside both, e.g. a learnable frontend), each
    with a ``'<name>.no_decay'`` twin holding its 1-D parameters (biases, norm
    scales and shifts) at weight decay 0. Empty groups are left out. Frozen
    parameters (``requires_grad=False``) are included: AdamW skips parameters
    without a gradient, and a curriculum stage that unfreezes encoder layers then
    does not need a new optimiser. A parameter shared between head and encoder
    belongs to the head.
    """
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        raise ValueError(f"{type(model).__name__} has no .head module; every model must expose one")
    for field, value in (("train.head_lr", head_lr), ("train.encoder_lr", encoder_lr)):
        if not value > 0:
            raise ConfigError(f"learning rate must be > 0, got {value}", field=field)
    if weight_decay < 0:
        raise ConfigError(f"weight decay must be >= 0, got {weight_decay}", field="train.weight_decay")

    seen: set[int] = set()

    def take(named: Iterable[tuple[str, nn.Parameter]]) -> list[tuple[str, nn.Parameter]]:
        out = []
        for n, p in named:
            if id(p) not in seen:
                seen.add(id(p))
                out.append((n, p))
        return out

    head_params = take(head.named_parameters())
    encoder = getattr(model, "encoder", None)
    encoder_params = take(encoder.named_parameters()) if isinstance(encoder, nn.Module) else []
    other_params = take(model.named_parameters())

    groups: list[dict[str, Any]] = []
    for name, named, lr in (("head", head_params, head_lr), ("encoder", encoder_params, encoder_lr),
                            ("other", other_params, encoder_lr)):
        decay, no_decay = _split_decay(named)
        if decay:
            groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": weight_decay})
        if no_decay:
            groups.append({"name": f"{name}.no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    if not groups:
        raise ValueError(f"{type(model).__name__} has no parameters to optimise")
    return torch.optim.AdamW(groups, lr=encoder_lr, betas=betas, weight_decay=weight_decay)


def warmup_cosine(optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then cosine decay, as a multiplier of each group's base lr.

    Call ``scheduler.step()`` once per optimisation step. At step ``s``:
    during warmup (``s < warmup_steps``) the factor is ``(s + 1) / warmup_steps``,
    so the first step already moves (``1 / warmup_steps``) and step
    ``warmup_steps - 1`` reaches the base lr; afterwards
    ``min + (1 - min) * (1 + cos(pi * progress)) / 2`` with
    ``progress = (s - warmup_steps) / (total_steps - warmup_steps)``, reaching
    ``min_lr_ratio * base`` at ``s = total_steps`` and staying there.
    """
    if total_steps < 1:
        raise ConfigError(f"total steps must be >= 1, got {total_steps}", field="schedule.total_steps")
    if not 0 <= warmup_steps <= total_steps:
        raise ConfigError(f"warmup steps must be in [0, total_steps={total_steps}], got {warmup_steps}",
                          field="schedule.warmup_steps")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"min lr ratio must be in [0, 1], got {min_lr_ratio}", field="schedule.min_lr_ratio")
    decay_steps = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class EarlyStopping:
    """Stop a fold when the monitored score has not improved for ``patience`` epochs.

    ``step(value)`` is called once per epoch and returns True when ``value`` is a
    new best (the caller saves the checkpoint then). An improvement must beat
    the best by more than ``min_delta``; NaN never improves. ``best_epoch`` is the
    0-based index of the best call. ``state_dict()`` goes into the checkpoint so a
    resumed fold continues counting.
    """

    def __init__(self, patience: int = 3, mode: str = "max", min_delta: float = 0.0) -> None:
        if mode not in ("max", "min"):
            raise ConfigError(f"early-stopping mode must be 'max' or 'min', got {mode!r}",
                              field="early_stopping.mode")
        if patience < 1:
            raise ConfigError(f"patience must be >= 1, got {patience}", field="early_stopping.patience")
        if min_delta < 0:
            raise ConfigError(f"min_delta must be >= 0, got {min_delta}", field="early_stopping.min_delta")
        self.patience = int(patience)
        self.mode = mode
        self.min_delta = float(min_delta)
        self.best: float | None = None
        self.best_epoch: int = -1
        self.bad_epochs: int = 0
        self.epochs_seen: int = 0

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` epochs in a row brought no improvement."""
        return self.bad_epochs >= self.patience

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def step(self, value: float) -> bool:
        """Record one epoch's score; True if it is a new best."""
        value = float(value)
        epoch = self.epochs_seen
        self.epochs_seen += 1
        if self._improves(value):
            self.best = value
            self.best_epoch = epoch
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        """Counters and settings, JSON- and checkpoint-friendly."""
        return {"patience": self.patience, "mode": self.mode, "min_delta": self.min_delta,
                "best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "epochs_seen": self.epochs_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters saved by :meth:`state_dict`."""
        self.patience = int(state.get("patience", self.patience))
        self.mode = state.get("mode", self.mode)
        self.min_delta = float(state.get("min_delta", self.min_delta))
        best = state.get("best")
        self.best = None if best is None else float(best)
        self.best_epoch = int(state.get("best_epoch", -1))
        self.bad_epochs = int(state.get("bad_epochs", 0))
        self.epochs_seen = int(state.get("epochs_seen", 0))


def clip_gradients(model: nn.Module | Iterable[torch.Tensor], max_norm: float = 5.0) -> float:
    """Clip the global L2 norm of the gradients to ``max_norm``; return the norm before clipping.

    With AMP the gradients are scaled: call ``scaler.unscale_(optimizer)`` first,
    then this, then ``scaler.step(optimizer)``. A non-finite norm (an fp16
    overflow) is returned as is; the GradScaler skips that step on its own.
    ``max_norm <= 0`` only measures the norm.
    """
    params = model.parameters() if isinstance(model, nn.Module) else model
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm is None or max_norm <= 0:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.detach()) for p in grads]))
        return float(norm)
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm, error_if_nonfinite=False))


def autocast_context(device: torch.device | str, *, amp: bool, cpu_bf16: bool) -> ContextManager:
    """Mixed-precision context for the forward pass.

    fp16 autocast on CUDA when ``amp``; bf16 autocast on CPU when ``cpu_bf16``
    (bf16 needs no loss scaling); otherwise a null context (float32).
    """
    device = torch.device(device)
    if device.type == "cuda" and amp:
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    if device.type == "cpu" and cpu_bf16:
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_grad_scaler(device: torch.device | str, amp: bool) -> torch.amp.GradScaler:
    """Loss scaler for fp16 AMP; enabled only on CUDA with ``amp`` (a pass-through otherwise)."""
    device = torch.device(device)
    enabled = device.type == "cuda" and bool(amp)
    return torch.amp.GradScaler(device.type if enabled else "cpu", enabled=enabled)
