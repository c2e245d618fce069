"""Waveform augmentation, SpecAugment and mixup: ranges, reproducibility, invariants."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from engine.errors import ConfigError
from engine.features.augment import SpecAugment, WaveAugment, mixup

SR = 8000


def _tone(seconds: float = 1.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1250 * t)).astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)))


NONE = dict(gain_p=0.0, noise_p=0.0, shift_p=0.0, pitch_p=0.0, stretch_p=0.0)


def test_all_zero_probabilities_is_identity():
    wave = _tone()
    aug = WaveAugment(sample_rate=SR, **NONE)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    out = aug(wave, rng)
    assert aug.is_identity
    assert out is wave
    assert rng.bit_generator.state == state
    assert aug(wave.astype(np.float64), rng).dtype == np.float32


def test_full_chain_reproducible_and_length_preserved():
    wave = _tone()
    aug = WaveAugment(sample_rate=SR, gain_p=1.0, noise_p=1.0, shift_p=1.0, pitch_p=1.0, stretch_p=1.0)
    a = aug(wave, np.random.default_rng(123))
    b = aug(wave, np.random.default_rng(123))
    c = aug(wave, np.random.default_rng(124))
    assert a.dtype == np.float32 and a.shape == wave.shape
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # Successive calls on one generator differ (the generator advances).
    rng = np.random.default_rng(5)
    assert not np.allclose(aug(wave, rng), aug(wave, rng))


def test_global_random_state_is_left_alone():
    aug = WaveAugment(sample_rate=SR, gain_p=1.0, noise_p=1.0, shift_p=1.0)
    random.seed(99)
    np.random.seed(99)
    expected_py, expected_np = random.random(), np.random.random()
    random.seed(99)
    np.random.seed(99)
    aug(_tone(), np.random.default_rng(1))
    assert random.random() == expected_py
    assert np.random.random() == expected_np


def test_gain_range_in_db():
    wave = _tone(0.25)
    aug = WaveAugment(sample_rate=SR, gain_db=6.0, gain_p=1.0, **{k: v for k, v in NONE.items() if k != "gain_p"})
    rng = np.random.default_rng(0)
    gains = np.array([20 * np.log10(_rms(aug(wave, rng)) / _rms(wave)) for _ in range(60)])
    assert gains.min() >= -6.0 - 1e-4 and gains.max() <= 6.0 + 1e-4
    # Both directions occur and the draws spread over the range.
    assert gains.min() < -3.0 and gains.max() > 3.0
    # The gain is a pure scale: the waveform shape is unchanged.
    out = aug(wave, rng)
    ratio = out[np.abs(wave) > 0.05] / wave[np.abs(wave) > 0.05]
    assert np.ptp(ratio) < 1e-5


@pytest.mark.parametrize("colour", ["white", "pink"])
def test_noise_snr_within_range(colour):
    wave = _tone(1.0)
    aug = WaveAugment(sample_rate=SR, noise_p=1.0, noise_snr_db=(20.0, 30.0), noise_colors=(colour,),
                      **{k: v for k, v in NONE.items() if k != "noise_p"})
    rng = np.random.default_rng(3)
    snrs = []
    for _ in range(15):
        out = aug(wave, rng)
        noise = out - wave
        snrs.append(20 * np.log10(_rms(wave) / _rms(noise)))
    snrs = np.array(snrs)
    # White noise is unnormalised Gaussian: its RMS deviates by ~1/sqrt(2n); allow 0.2 dB.
    assert snrs.min() >= 20.0 - 0.2 and snrs.max() <= 30.0 + 0.2
    assert np.ptp(snrs) > 2.0


def test_pink_noise_has_falling_spectrum():
    wave = np.zeros(SR * 2, dtype=np.float32)
    wave[::97] = 1.0  # a click train: flat spectrum, nonzero RMS
    aug = WaveAugment(sample_rate=SR, noise_p=1.0, noise_colors=("pink",),
                      **{k: v for k, v in NONE.items() if k != "noise_p"})
    noise = aug(wave, np.random.default_rng(0)) - wave
    spectrum = np.abs(np.fft.rfft(noise)) ** 2
    freqs = np.fft.rfftfreq(noise.size, 1 / SR)
    low = spectrum[(freqs > 100) & (freqs < 200)].mean()
    high = spectrum[(freqs > 1600) & (freqs < 3200)].mean()
    # Pink: power per Hz falls as 1/f, so ~4 octaves apart is ~16x; demand at least 4x.
    assert low / high > 4.0


def test_shift_rolls_within_half_second():
    wave = np.zeros(SR * 2, dtype=np.float32)
    wave[SR] = 1.0  # one impulse in the middle
    aug = WaveAugment(sample_rate=SR, shift_s=0.5, shift_p=1.0, **{k: v for k, v in NONE.items() if k != "shift_p"})
    rng = np.random.default_rng(11)
    offsets = []
    for _ in range(20):
        out = aug(wave, rng)
        assert out.shape == wave.shape
        offsets.append(int(np.argmax(np.abs(out))) - SR)
    offsets = np.array(offsets)
    assert np.abs(offsets).max() <= SR // 2
    assert (offsets < 0).any() and (offsets > 0).any()


def test_shift_rolls_content_over():
    wave = np.zeros(SR, dtype=np.float32)
    # An event near the start (clear of the 5 ms seam fade) survives a backwards
    # shift by wrapping to the end instead of being cut off.
    wave[100] = 1.0
    aug = WaveAugment(sample_rate=SR, shift_s=0.5, shift_p=1.0, **{k: v for k, v in NONE.items() if k != "shift_p"})
    rng = np.random.default_rng(0)
    for _ in range(10):
        assert np.abs(aug(wave, rng)).max() > 0.5


def test_pitch_and_stretch_keep_length():
    wave = _tone(0.5)
    for kwargs in ({"pitch_p": 1.0}, {"stretch_p": 1.0}):
        params = {**NONE, **kwargs}
        out = WaveAugment(sample_rate=SR, **params)(wave, np.random.default_rng(0))
        assert out.shape == wave.shape and out.dtype == np.float32
        assert not np.allclose(out, wave)


def test_wave_augment_rejects_bad_config():
    with pytest.raises(ConfigError) as err:
        WaveAugment(noise_colors=("purple",))
    assert err.value.field == "augment.noise_colors"
    with pytest.raises(ConfigError):
        WaveAugment(gain_p=1.5)


# --- SpecAugment -----------------------------------------------------------


def _reference_masked(x: torch.Tensor, masks) -> torch.Tensor:
    out = x.clone()
    for b in range(x.shape[0]):
        for s, w in zip(masks.time_start[b].tolist(), masks.time_width[b].tolist()):
            out[b, :, s:s + w, :] = 0.0
        for s, w in zip(masks.freq_start[b].tolist(), masks.freq_width[b].tolist()):
            out[b, :, :, s:s + w] = 0.0
    return out


def test_specaugment_matches_loop_reference_and_widths():
    frames, mels, batch = 200, 64, 8
    x = torch.rand(batch, 1, frames, mels) + 1.0  # strictly positive, so zeros mark masks
    spec = SpecAugment(freq_masks=2, freq_width=20, time_masks=2, time_frac=0.10)
    masks = spec.sample_masks(batch, frames, mels, torch.Generator().manual_seed(0))
    out = spec(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, _reference_masked(x, masks), rtol=0, atol=0)
    assert masks.time_width.shape == (batch, 2) and masks.freq_width.shape == (batch, 2)
    assert int(masks.time_width.max()) <= 20 and int(masks.freq_width.max()) <= 20
    assert int((masks.time_start + masks.time_width).max()) <= frames
    assert int((masks.freq_start + masks.freq_width).max()) <= mels
    # Per-example independence: not every example gets the same masks.
    assert len({tuple(r) for r in masks.freq_start.tolist()}) > 1
    # Over many draws the widths use their whole range.
    many = spec.sample_masks(500, frames, mels, torch.Generator().manual_seed(1))
    assert int(many.freq_width.max()) == 20 and int(many.time_width.max()) == 20
    assert int(many.freq_width.min()) == 0


def test_specaugment_masked_counts():
    frames, mels = 100, 32
    x = torch.ones(4, 1, frames, mels)
    spec = SpecAugment(freq_masks=2, freq_width=8, time_masks=2, time_frac=0.10)
    g = torch.Generator().manual_seed(3)
    masks = spec.sample_masks(4, frames, mels, torch.Generator().manual_seed(3))
    out = spec(x, g)
    for b in range(4):
        zero_frames = int((out[b, 0] == 0).all(dim=1).sum())
        zero_bins = int((out[b, 0] == 0).all(dim=0).sum())
        # Union of two spans: at most the sum, at least the larger one.
        tw = masks.time_width[b].tolist()
        fw = masks.freq_width[b].tolist()
        assert max(tw) <= zero_frames <= sum(tw)
        assert max(fw) <= zero_bins <= sum(fw)


@pytest.mark.parametrize("frames,mels", [(8, 8), (8, 64), (3, 4), (1, 2)])
def test_specaugment_never_masks_everything(frames, mels):
    x = torch.rand(64, 1, frames, mels) + 1.0
    spec = SpecAugment(freq_masks=2, freq_width=20, time_masks=2, time_frac=0.9)
    out = spec(x, torch.Generator().manual_seed(0))
    alive = out[:, 0] != 0
    assert alive.any(dim=2).any(dim=1).all()  # some frame unmasked in every example
    assert alive.any(dim=1).any(dim=1).all()  # some mel bin unmasked in every example
    assert (alive.any(dim=2).sum(dim=1) >= max(1, int(np.ceil(0.25 * frames)))).all()


def test_specaugment_eval_identity_and_reproducibility():
    x = torch.rand(4, 1, 50, 16) + 1.0
    spec = SpecAugment()
    a = spec(x, torch.Generator().manual_seed(7))
    b = spec(x, torch.Generator().manual_seed(7))
    c = spec(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    spec.eval()
    assert spec(x, torch.Generator().manual_seed(7)) is x
    off = SpecAugment(p=0.0).train()
    assert torch.equal(off(x), x)


# --- mixup -----------------------------------------------------------------


def test_mixup_linear_combination():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 10, 4)
    y = (torch.rand(6, 5) < 0.3).float()
    w = torch.rand(6)
    xm, ym, wm, info = mixup(x, y, alpha=0.4, p=1.0, generator=g, sample_weights=w, return_info=True)
    assert info.applied
    assert sorted(info.perm.tolist()) == list(range(6))
    assert ((info.lam >= 0) & (info.lam <= 1)).all()
    for i in range(6):
        lam, j = float(info.lam[i]), int(info.perm[i])
        torch.testing.assert_close(ym[i], lam * y[i] + (1 - lam) * y[j])
        torch.testing.assert_close(xm[i], lam * x[i] + (1 - lam) * x[j])
        assert float(wm[i]) == pytest.approx(lam * float(w[i]) + (1 - lam) * float(w[j]), rel=1e-6)
    # A label in both clips stays exactly 1; a label in neither stays 0.
    both = (y == 1) & (y[info.perm] == 1)
    assert torch.all(ym[both] == 1.0)
    assert torch.all(ym[(y == 0) & (y[info.perm] == 0)] == 0.0)


def test_mixup_probability_reproducibility_and_lambda_distribution():
    x = torch.randn(4, 3)
    y = torch.eye(4)
    xa, ya, _ = mixup(x, y, p=1.0, generator=torch.Generator().manual_seed(5))
    xb, yb, _ = mixup(x, y, p=1.0, generator=torch.Generator().manual_seed(5))
    xc, _, _ = mixup(x, y, p=1.0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and not torch.equal(xa, xc)

    out = mixup(x, y, p=0.0, generator=torch.Generator().manual_seed(5), return_info=True)
    assert out[0] is x and out[1] is y and out[2] is None and not out[3].applied

    g = torch.Generator().manual_seed(1)
    applied = [mixup(x, y, p=0.5, generator=g, return_info=True)[3].applied for _ in range(400)]
    assert 0.4 < np.mean(applied) < 0.6

    # Beta(0.4, 0.4): mean 0.5, variance a^2 / ((2a)^2 (2a + 1)) = 1 / (4 * 1.8).
    lams = torch.cat([mixup(torch.zeros(64, 1), torch.zeros(64, 1), alpha=0.4, p=1.0, generator=g,
                            return_info=True)[3].lam for _ in range(40)]).numpy()
    assert lams.mean() == pytest.approx(0.5, abs=0.03)
    assert lams.var() == pytest.approx(1 / (4 * 1.8), abs=0.02)
