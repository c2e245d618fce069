"""Optimiser groups, warmup-cosine values, early stopping, clipping and precision contexts."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from engine.errors import ConfigError
from engine.train.schedule import (
    EarlyStopping,
    autocast_context,
    build_optimizer,
    clip_gradients,
    make_grad_scaler,
    warmup_cosine,
)


class TinyTagger(nn.Module):
    """Encoder + head + one stray parameter, shaped like the project's models."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 3))
        self.temperature = nn.Parameter(torch.ones(1))
        self.frontend_gain = nn.Parameter(torch.ones(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x).mean(dim=(2, 3))
        return self.head(h) * self.temperature


def _group(opt, name):
    matches = [g for g in opt.param_groups if g["name"] == name]
    assert len(matches) == 1, name
    return matches[0]


def test_param_groups_membership_lr_and_no_decay():
    model = TinyTagger()
    opt = build_optimizer(model, head_lr=2e-4, encoder_lr=1e-4, weight_decay=1e-4)
    assert isinstance(opt, torch.optim.AdamW)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731

    head = _group(opt, "head")
    head_nd = _group(opt, "head.no_decay")
    assert ids(head["params"]) == {id(model.head[1].weight)}
    assert ids(head_nd["params"]) == {id(model.head[0].weight), id(model.head[0].bias), id(model.head[1].bias)}
    assert head["lr"] == head_nd["lr"] == 2e-4
    assert head["weight_decay"] == 1e-4 and head_nd["weight_decay"] == 0.0

    enc = _group(opt, "encoder")
    enc_nd = _group(opt, "encoder.no_decay")
    assert ids(enc["params"]) == {id(model.encoder[0].weight)}
    assert ids(enc_nd["params"]) == {id(model.encoder[0].bias), id(model.encoder[1].weight),
                                     id(model.encoder[1].bias)}
    assert enc["lr"] == enc_nd["lr"] == 1e-4
    assert enc_nd["weight_decay"] == 0.0

    other = _group(opt, "other")
    other_nd = _group(opt, "other.no_decay")
    assert ids(other["params"]) == {id(model.frontend_gain)}
    assert ids(other_nd["params"]) == {id(model.temperature)}
    assert other["lr"] == 1e-4

    # Every parameter is in exactly one group.
    all_ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())
    assert opt.defaults["betas"] == (0.9, 0.999)


def test_optimizer_without_head_is_rejected():
    with pytest.raises(ValueError, match="head"):
        build_optimizer(nn.Linear(2, 2))
    with pytest.raises(ConfigError) as err:
        build_optimizer(TinyTagger(), head_lr=0.0)
    assert err.value.field == "train.head_lr"


def _lrs(steps, warmup, total, min_ratio=0.0):
    model = TinyTagger()
    opt = build_optimizer(model, head_lr=2e-4, encoder_lr=1e-4)
    sched = warmup_cosine(opt, warmup_steps=warmup, total_steps=total, min_lr_ratio=min_ratio)
    out = {}
    for step in range(steps + 1):
        out[step] = {g["name"]: g["lr"] for g in opt.param_groups}
        opt.step()
        sched.step()
    return out


def test_warmup_cosine_values():
    warmup, total = 10, 110
    lrs = _lrs(total + 5, warmup, total, min_ratio=0.1)
    # Step 0: a small first step, 1/warmup of the base.
    assert lrs[0]["head"] == pytest.approx(2e-4 / warmup)
    assert lrs[0]["encoder"] == pytest.approx(1e-4 / warmup)
    # Linear ramp during warmup.
    assert lrs[4]["head"] == pytest.approx(2e-4 * 5 / warmup)
    # Base lr at the end of warmup.
    assert lrs[warmup - 1]["head"] == pytest.approx(2e-4)
    assert lrs[warmup]["head"] == pytest.approx(2e-4)
    # Midpoint of the cosine: halfway between base and floor.
    mid = warmup + (total - warmup) // 2
    assert lrs[mid]["encoder"] == pytest.approx(1e-4 * (0.1 + 0.9 * 0.5))
    # A quarter in: the cosine shape, not a straight line.
    quarter = warmup + (total - warmup) // 4
    assert lrs[quarter]["encoder"] == pytest.approx(1e-4 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))
    # End and beyond: the floor.
    assert lrs[total]["head"] == pytest.approx(2e-4 * 0.1)
    assert lrs[total + 5]["head"] == pytest.approx(2e-4 * 0.1)
    # Monotone decay after warmup.
    decay = [lrs[s]["head"] for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_warmup_cosine_without_warmup_and_errors():
    lrs = _lrs(20, 0, 20)
    assert lrs[0]["head"] == pytest.approx(2e-4)
    assert lrs[20]["head"] == pytest.approx(0.0, abs=1e-12)
    opt = build_optimizer(TinyTagger())
    with pytest.raises(ConfigError) as err:
        warmup_cosine(opt, warmup_steps=30, total_steps=20)
    assert err.value.field == "schedule.warmup_steps"


def test_early_stopping_sequence():
    stopper = EarlyStopping(patience=3, mode="max")
    scores = [0.50, 0.60, 0.58, 0.61, 0.61, 0.59, 0.60]
    flags = [stopper.step(s) for s in scores]
    assert flags == [True, True, False, True, False, False, False]
    assert stopper.best == pytest.approx(0.61)
    assert stopper.best_epoch == 3
    assert stopper.bad_epochs == 3
    assert stopper.should_stop


def test_early_stopping_min_mode_min_delta_and_nan():
    stopper = EarlyStopping(patience=2, mode="min", min_delta=0.01)
    assert stopper.step(1.0)
    assert not stopper.step(0.995)  # better, but not by more than min_delta
    assert not stopper.should_stop
    assert stopper.step(0.98)
    assert not stopper.step(float("nan"))
    assert not stopper.step(0.99)
    assert stopper.should_stop and stopper.best_epoch == 2
    with pytest.raises(ConfigError):
        EarlyStopping(mode="up")


def test_early_stopping_state_dict_roundtrip():
    stopper = EarlyStopping(patience=3)
    for s in (0.4, 0.5, 0.45):
        stopper.step(s)
    state = json.loads(json.dumps(stopper.state_dict()))
    resumed = EarlyStopping(patience=3)
    resumed.load_state_dict(state)
    assert (resumed.best, resumed.best_epoch, resumed.bad_epochs) == (0.5, 1, 1)
    # Continues counting where the interrupted fold stopped.
    assert not resumed.step(0.49)
    assert not resumed.should_stop
    assert not resumed.step(0.48)
    assert resumed.should_stop
    assert resumed.step(0.7) and resumed.best_epoch == 5


def test_clip_gradients_returns_norm_and_clips():
    model = TinyTagger()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    n = sum(p.numel() for p in model.parameters())
    expected = 3.0 * math.sqrt(n)
    norm = clip_gradients(model, max_norm=5.0)
    assert norm == pytest.approx(expected, rel=1e-5)
    after = math.sqrt(sum(float((p.grad**2).sum()) for p in model.parameters()))
    assert after == pytest.approx(5.0, rel=1e-4)
    # Below the threshold nothing changes.
    assert clip_gradients(model, max_norm=100.0) == pytest.approx(5.0, rel=1e-4)


def test_autocast_and_scaler_on_cpu():
    layer = nn.Linear(4, 2)
    x = torch.randn(3, 4)
    with autocast_context(torch.device("cpu"), amp=True, cpu_bf16=True):
        assert layer(x).dtype == torch.bfloat16
    with autocast_context("cpu", amp=True, cpu_bf16=False):
        assert layer(x).dtype == torch.float32
    scaler = make_grad_scaler(torch.device("cpu"), amp=True)
    assert not scaler.is_enabled()
    loss = layer(x).sum()
    assert torch.equal(scaler.scale(loss), loss)
