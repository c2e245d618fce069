"""Batched waveform augmentation on the device: per-clip ranges and probabilities, reproducibility, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.errors import ConfigError
from engine.features.device_augment import BatchWaveAugment, batch_generator
from tests.helpers.datasets import ArrayCache

SR = 16000
OFF = dict(gain_p=0.0, noise_p=0.0, shift_p=0.0, pitch_p=0.0, stretch_p=0.0)


def _only(**on) -> dict:
    """Every transform off except those given."""
    return {**OFF, **on}


def _tones(batch: int, seconds: float = 1.0, freq: float = 440.0) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    wave = 0.3 * torch.sin(2 * math.pi * freq * t) + 0.1 * torch.sin(2 * math.pi * 2.7 * freq * t)
    return wave.float().repeat(batch, 1)


def _peak_hz(wave: torch.Tensor) -> float:
    """Frequency of the strongest spectral line, to a fraction of a bin (parabolic interpolation)."""
    spec = torch.fft.rfft(wave.double() * torch.hann_window(len(wave), dtype=torch.float64)).abs().log()
    k = int(spec[1:-1].argmax()) + 1
    a, b, c = float(spec[k - 1]), float(spec[k]), float(spec[k + 1])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / len(wave)


def _db(x: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(x.double().square().mean(dim=-1))


def test_every_probability_zero_returns_the_batch_and_draws_nothing():
    aug = BatchWaveAugment(sample_rate=SR, **OFF)
    wave = _tones(3)
    gen = torch.Generator().manual_seed(1)
    state = gen.get_state()
    assert aug.is_identity
    assert aug(wave, gen) is wave
    assert torch.equal(gen.get_state(), state)


def test_probabilities_are_drawn_per_clip_with_the_spec_values():
    aug = BatchWaveAugment(sample_rate=SR, gain_p=0.5, noise_p=0.3, shift_p=0.5, pitch_p=0.2, stretch_p=0.2)
    draws = aug.draw(4000, batch_generator(42, 0, 0, 0))
    # A binomial share over 4000 clips has a standard deviation under 0.008: 0.035 is over 4 of them.
    for name, p in (("gain_on", 0.5), ("noise_on", 0.3), ("shift_on", 0.5), ("pitch_on", 0.2), ("stretch_on", 0.2)):
        assert float(getattr(draws, name).double().mean()) == pytest.approx(p, abs=0.035), name
    # The transforms fire independently of each other.
    both = float((draws.pitch_on & draws.stretch_on).double().mean())
    assert both == pytest.approx(0.04, abs=0.015)
    # Values span their ranges.
    assert -6 <= float(draws.gain_db.min()) < -5.5 and 5.5 < float(draws.gain_db.max()) <= 6
    assert 20 <= float(draws.noise_snr_db.min()) < 20.5 and 29.5 < float(draws.noise_snr_db.max()) <= 30
    assert abs(int(draws.shift_samples.abs().max()) - SR // 2) < 50 and int(draws.shift_samples.abs().max()) <= SR // 2
    assert 0.9 <= float(draws.stretch_rate.min()) < 0.91 and 1.09 < float(draws.stretch_rate.max()) <= 1.1
    assert -2 <= float(draws.pitch_semitones.min()) < -1.9 and 1.9 < float(draws.pitch_semitones.max()) <= 2
    assert set(draws.noise_color.tolist()) == {0, 1}


def test_one_probability_does_not_move_the_other_transforms_values():
    a = BatchWaveAugment(sample_rate=SR, gain_p=0.5, pitch_p=0.0).draw(64, batch_generator(1, 2, 3, 4))
    b = BatchWaveAugment(sample_rate=SR, gain_p=0.5, pitch_p=0.9).draw(64, batch_generator(1, 2, 3, 4))
    assert torch.equal(a.gain_on, b.gain_on) and torch.equal(a.gain_db, b.gain_db)
    assert not a.pitch_on.any() and b.pitch_on.any()


def test_gain_scales_each_clip_by_its_drawn_decibels():
    aug = BatchWaveAugment(sample_rate=SR, **_only(gain_p=1.0), gain_db=6.0)
    wave = _tones(16)
    gen = batch_generator(0, 0, 0, 0)
    draws = aug.draw(16, batch_generator(0, 0, 0, 0))
    out = aug(wave, gen)
    np.testing.assert_allclose((_db(out) - _db(wave)).numpy(), draws.gain_db.numpy(), atol=1e-4)


@pytest.mark.parametrize("colour,slope_db", [("white", 0.0), ("pink", -3.01)])
def test_noise_has_its_colour_and_the_drawn_snr(colour: str, slope_db: float):
    aug = BatchWaveAugment(sample_rate=SR, **_only(noise_p=1.0), noise_colors=(colour,), noise_snr_db=(20.0, 30.0))
    wave = _tones(8, seconds=2.0)
    draws = aug.draw(8, batch_generator(5, 0, 0, 0))
    out = aug(wave, batch_generator(5, 0, 0, 0))
    noise = out - wave
    snr = (_db(wave) - _db(noise)).numpy()
    np.testing.assert_allclose(snr, draws.noise_snr_db.numpy(), atol=1e-3)
    # Spectral slope of the noise: mean power per bin in octave bands from 125 Hz to 8 kHz.
    power = torch.fft.rfft(noise.double()).abs().square().mean(dim=0)
    freqs = torch.fft.rfftfreq(noise.shape[1], d=1.0 / SR)
    bands = [float(power[(freqs >= f) & (freqs < 2 * f)].mean()) for f in (125, 250, 500, 1000, 2000, 4000)]
    # Power per bin changes by the colour's slope from one octave to the next.
    density = np.diff(10 * np.log10(np.array(bands)))
    assert np.allclose(density, slope_db, atol=0.6), density


def test_shift_rolls_each_clip_by_its_drawn_amount_with_a_short_fade_at_the_seam():
    aug = BatchWaveAugment(sample_rate=SR, **_only(shift_p=1.0), shift_s=0.5)
    wave = torch.randn(6, SR, generator=torch.Generator().manual_seed(0))
    draws = aug.draw(6, batch_generator(9, 1, 0, 0))
    out = aug(wave, batch_generator(9, 1, 0, 0))
    fade = int(0.005 * SR)
    for row in range(6):
        shift = int(draws.shift_samples[row]) % SR
        rolled = torch.roll(wave[row], shift)
        away = torch.ones(SR, dtype=torch.bool)
        away[max(0, shift - fade):shift + fade] = False
        assert torch.equal(out[row][away], rolled[away])
        assert out[row][shift - fade:shift + fade].abs().sum() < rolled[shift - fade:shift + fade].abs().sum()
    assert (draws.shift_samples.abs() <= SR // 2).all()


def test_pitch_shift_moves_every_line_by_the_drawn_semitones_and_keeps_level_and_length():
    aug = BatchWaveAugment(sample_rate=SR, **_only(pitch_p=1.0), pitch_semitones=2.0)
    wave = _tones(6, seconds=2.0)
    draws = aug.draw(6, batch_generator(3, 0, 1, 2))
    out = aug(wave, batch_generator(3, 0, 1, 2))
    assert out.shape == wave.shape and out.dtype == wave.dtype
    for row in range(6):
        expected = 440.0 * 2 ** (float(draws.pitch_semitones[row]) / 12)
        assert _peak_hz(out[row, SR // 4:-SR // 4]) == pytest.approx(expected, rel=2e-3)
    # Level kept within 0.5 dB away from the clip edges (phase locking keeps sinusoids whole).
    inner = slice(SR // 4, -SR // 4)
    assert (_db(out[:, inner]) - _db(wave[:, inner])).abs().max() < 0.5


def test_time_stretch_changes_timing_not_pitch_and_keeps_the_length():
    aug = BatchWaveAugment(sample_rate=SR, **_only(stretch_p=1.0), stretch=(0.8, 1.25))
    # A tone that stops at 0.5 s in a 1 s clip: stretched, it stops at 0.5 / rate.
    wave = _tones(8, seconds=1.0)
    wave[:, SR // 2:] = 0
    draws = aug.draw(8, batch_generator(4, 0, 0, 0))
    out = aug(wave, batch_generator(4, 0, 0, 0))
    assert out.shape == wave.shape
    hop = SR // 100
    for row in range(8):
        rate = float(draws.stretch_rate[row])
        level = _db(out[row].unfold(0, hop, hop))
        last_loud = int(torch.nonzero(level > float(level.max()) - 20).max()) * hop
        assert last_loud / SR == pytest.approx(0.5 / rate, abs=0.04)
        assert _peak_hz(out[row, :int(0.4 * SR / rate)]) == pytest.approx(440.0, rel=2e-3)


def test_a_batch_is_a_pure_function_of_seed_fold_epoch_and_step():
    aug = BatchWaveAugment(sample_rate=SR, gain_p=0.5, noise_p=0.5, shift_p=0.5, pitch_p=0.3, stretch_p=0.3)
    wave = _tones(8)
    a = aug(wave, batch_generator(42, 1, 3, 7))
    b = aug(wave, batch_generator(42, 1, 3, 7))
    assert torch.equal(a, b)
    for key in ((42, 1, 3, 8), (42, 1, 4, 7), (42, 2, 3, 7), (43, 1, 3, 7)):
        assert not torch.equal(aug(wave, batch_generator(*key)), a), key
    # (seed, fold) pairs whose sum agrees are still different streams.
    assert not torch.equal(aug(wave, batch_generator(43, 0, 3, 7)), aug(wave, batch_generator(42, 1, 3, 7)))


def test_autocast_and_half_input_keep_float32_arithmetic():
    aug = BatchWaveAugment(sample_rate=SR, gain_p=1.0, noise_p=1.0, pitch_p=1.0)
    wave = _tones(4)
    ref = aug(wave, batch_generator(0, 0, 0, 0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = aug(wave, batch_generator(0, 0, 0, 0))
    assert under.dtype == torch.float32 and torch.equal(under, ref)
    half = aug(wave.to(torch.bfloat16), batch_generator(0, 0, 0, 0))
    assert half.dtype == torch.bfloat16 and torch.isfinite(half.float()).all()


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match="augment.pitch_p"):
        BatchWaveAugment(pitch_p=1.5)
    with pytest.raises(ConfigError, match="augment.noise_colors"):
        BatchWaveAugment(noise_colors=("brown",))
    with pytest.raises(ValueError, match="batch, samples"):
        BatchWaveAugment(gain_p=1.0)(torch.zeros(10), torch.Generator())


def _fold_loaders(n: int = 32, crop: int = 4000):
    from torch.utils.data import DataLoader, SequentialSampler

    from engine.data.dataset import CropDataset, MultiScaleBatchSampler

    rng = np.random.default_rng(0)
    Y = np.eye(4, dtype=np.float32)[np.arange(n) % 4]
    t = np.arange(6000) / SR
    clips = [(0.3 * np.sin(2 * np.pi * (200 + 300 * (i % 4)) * t) + 0.05 * rng.standard_normal(t.size))
             .astype(np.float32) for i in range(n)]
    cache = ArrayCache(clips)
    train = CropDataset(cache, np.arange(n), Y, crop_samples=crop, train=True, seed=3)
    val = CropDataset(cache, np.arange(8), Y, crop_samples=crop, train=False)
    sampler = MultiScaleBatchSampler(SequentialSampler(train), 8, base_crop=crop, extra_crops=[], prob=0.0, seed=3)
    return DataLoader(train, batch_sampler=sampler), DataLoader(val, batch_size=8), Y[:8]


class _Interrupted(Exception):
    pass


def _stop_in_second_epoch(step: int, total: int) -> None:
    # 4 steps per epoch: a kill after the first step of epoch 1, when last.pt holds epoch 0.
    if step == 5:
        raise _Interrupted


def _train(fold_dir, epochs: int, augment: BatchWaveAugment | None, on_step=None) -> dict:
    from engine.features.frontend import LogMelFrontend
    from engine.models.small import SmallTagger
    from engine.train.loop import Tagger, train_fold
    from engine.train.losses import BCEWithLogits

    train_loader, val_loader, truth = _fold_loaders()
    frontend = LogMelFrontend(sample_rate=SR, n_mels=32, fmax=8000.0)
    torch.manual_seed(0)
    tagger = Tagger(frontend, SmallTagger(n_classes=4, n_mels=32, width=4))
    train_fold(tagger, train_loader=train_loader, val_loader=val_loader, val_truth=truth, loss_fn=BCEWithLogits(),
               device=torch.device("cpu"), fold_dir=fold_dir, epochs=epochs, patience=5, head_lr=1e-2,
               encoder_lr=1e-2, weight_decay=0.0, betas=(0.9, 0.999), warmup_epochs=0.0, warmup_steps=0,
               min_lr_ratio=0.0, grad_clip=5.0, amp=False, cpu_bf16=False, mixup_p=0.0, mixup_alpha=0.4, seed=0,
               wave_augment=augment, augment_key=(7, 0), on_step=on_step)
    return {k: v.clone() for k, v in tagger.model.state_dict().items()}


def test_a_resumed_fold_draws_the_augmentation_an_uninterrupted_one_would(tmp_path):
    aug = BatchWaveAugment(sample_rate=SR, gain_p=0.5, noise_p=0.5, shift_p=0.5, pitch_p=0.5, stretch_p=0.5)
    straight = _train(tmp_path / "straight", 2, aug)
    with pytest.raises(_Interrupted):
        _train(tmp_path / "resumed", 2, aug, on_step=_stop_in_second_epoch)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["epoch"] == 0
    resumed = _train(tmp_path / "resumed", 2, aug)  # runs epoch 1 again from its start
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    # The augmentation is really in the step: without it the weights differ.
    plain = _train(tmp_path / "plain", 2, None)
    assert not all(torch.equal(straight[k], plain[k]) for k in straight)


def test_phase_locking_keeps_the_level_that_a_plain_phase_vocoder_loses():
    """Why the batched stretch locks phases: torchaudio's plain phase vocoder drops a slowed tone by ~4 dB."""
    import torchaudio.functional as AF

    aug = BatchWaveAugment(sample_rate=32000)
    t = torch.arange(64000) / 32000
    tone = (0.3 * torch.sin(2 * math.pi * 440.0 * t))[None]
    window = torch.hann_window(aug.n_fft)
    spec = torch.stft(tone, aug.n_fft, aug.hop, window=window, return_complex=True)
    advance = torch.linspace(0, math.pi * aug.hop, aug.n_fft // 2 + 1)[:, None]
    plain = torch.istft(AF.phase_vocoder(spec, 0.89, advance), aug.n_fft, aug.hop, window=window)
    ours = aug.stretch_and_pitch(tone, torch.tensor([0.89], dtype=torch.float64),
                                 torch.tensor([1.0], dtype=torch.float64))
    inner = slice(8000, -8000)
    assert float(_db(tone[:, inner]) - _db(plain[:, inner])) > 3.0
    assert abs(float(_db(tone[:, inner]) - _db(ours[:, inner]))) < 0.5
