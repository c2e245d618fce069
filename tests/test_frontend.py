"""LogMelFrontend against librosa on real WAV files, and the mel statistics against numpy."""

from __future__ import annotations

from contextlib import nullcontext

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from engine.features.frontend import LogMelFrontend, compute_mel_stats, slaney_mel_filterbank

SR = 32000
AMIN_DB = 10 * np.log10(1e-10)


def chirp_and_noise(seconds: float, seed: int, f0: float = 80.0, f1: float = 12000.0) -> np.ndarray:
    """A linear chirp from f0 to f1 plus white noise, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds))
    return (0.5 * np.sin(phase) + 0.03 * rng.standard_normal(t.size)).astype(np.float32)


def wav_roundtrip(tmp_path, name: str, wave: np.ndarray) -> np.ndarray:
    """Write a 16-bit WAV at 32 kHz and read it back as float32."""
    path = tmp_path / name
    sf.write(path, wave, SR, subtype="PCM_16")
    data, sr = sf.read(path, dtype="float32")
    assert sr == SR
    return data


def librosa_log_mel(y: np.ndarray, n_mels: int = 64, win_length: int = 1024,
                    top_db: float | None = None) -> np.ndarray:
    """The reference: librosa's melspectrogram + power_to_db, as [frames, n_mels]."""
    mel = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=1024, hop_length=320, win_length=win_length, window="hann", center=True,
        pad_mode="reflect", power=2.0, n_mels=n_mels, fmin=50, fmax=16000)
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=top_db).T


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> np.ndarray:
    return wav_roundtrip(tmp_path_factory.mktemp("wav"), "chirp.wav", chirp_and_noise(2.5, seed=0))


def test_filterbank_equals_librosa():
    # librosa warns about the empty low bands at 256 mels; that warning is part of the check.
    for n_mels in (64, 128, 256):
        ours = slaney_mel_filterbank(SR, 1024, n_mels, 50.0, 16000.0)
        with pytest.warns(UserWarning) if n_mels == 256 else nullcontext():
            ref = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=n_mels, fmin=50, fmax=16000, dtype=np.float64)
        np.testing.assert_allclose(ours, ref.T, rtol=0, atol=1e-15)


@pytest.mark.parametrize("n_mels,win_length", [(64, 1024), (128, 1024), (256, 1024), (64, 800)])
def test_log_mel_matches_librosa(clip, n_mels, win_length):
    frontend = LogMelFrontend(n_mels=n_mels, win_length=win_length)
    ours = frontend.log_mel(torch.from_numpy(clip)[None])[0, 0].numpy()
    with pytest.warns(UserWarning) if n_mels == 256 else nullcontext():
        ref = librosa_log_mel(clip, n_mels=n_mels, win_length=win_length)
    assert ours.shape == ref.shape == (1 + len(clip) // 320, n_mels)
    diff = np.abs(ours - ref)
    # float32 FFT rounding is relative to the loudest bin of a frame, so bins
    # far below it are compared more loosely. Measured within 60 dB of the
    # frame peak: 8e-5 dB (64 mels), 2e-4 (128), 3e-4 (256); everywhere: at
    # most 2e-3 dB, in 256-mel bins about 80 dB below the peak.
    within_60db = ref > ref.max(axis=1, keepdims=True) - 60.0
    assert within_60db.mean() > 0.9
    assert diff[within_60db].max() < 1e-3
    assert diff.max() < 1e-2
    # Empty bands (only at 256 mels) sit at 10*log10(amin) in both.
    empty = np.isclose(ref, AMIN_DB, atol=1e-3).all(axis=0)
    assert frontend.empty_mel_bins == int(empty.sum())
    assert (frontend.empty_mel_bins > 0) == (n_mels == 256)
    np.testing.assert_allclose(ours[:, empty], AMIN_DB, atol=1e-3)


def test_top_db_matches_librosa(clip):
    quiet_end = clip.copy()
    quiet_end[len(clip) // 2:] *= 1e-5  # 100 dB down, so the 60 dB floor bites
    ours = LogMelFrontend(top_db=60.0).log_mel(torch.from_numpy(quiet_end)[None])[0, 0].numpy()
    ref = librosa_log_mel(quiet_end, top_db=60.0)
    assert (ref == ref.max() - 60.0).mean() > 0.2
    assert np.abs(ours - ref).max() < 1e-3


def test_batch_equals_per_clip():
    # 3.5 s clips: 351 frames each, so on a CPU the batch runs in chunks of two clips.
    waves = [chirp_and_noise(3.5, seed=s, f0=100 * (s + 1)) for s in range(3)]
    frontend = LogMelFrontend()
    frontend.set_stats(np.linspace(-40, -20, 64), np.linspace(5, 15, 64))
    batched = frontend(torch.from_numpy(np.stack(waves)))
    assert batched.shape == (3, 1, 351, 64)
    for i, wave in enumerate(waves):
        single = frontend(torch.from_numpy(wave)[None])
        torch.testing.assert_close(batched[i:i + 1], single, rtol=0, atol=1e-4)


@pytest.mark.parametrize("n_mels", [128, 256])
def test_mel_variants_shapes(n_mels):
    frontend = LogMelFrontend(n_mels=n_mels)
    out = frontend(torch.zeros(2, 16000) + 0.01 * torch.randn(2, 16000))
    assert out.shape == (2, 1, 51, n_mels) and out.dtype == torch.float32
    assert frontend.num_frames(16000) == 51
    assert frontend.mel_fb.shape == (513, n_mels)


def test_stats_standardise_and_clamp(tmp_path):
    waves = [wav_roundtrip(tmp_path, f"c{i}.wav", chirp_and_noise(sec, seed=i, f0=60 + 40 * i))
             for i, sec in enumerate([0.7, 1.3, 0.4, 2.0, 1.1])]
    frontend = LogMelFrontend()
    before = [frontend(torch.from_numpy(w)[None]) for w in waves]
    # Identity until statistics are set.
    for w, b in zip(waves, before):
        torch.testing.assert_close(b, frontend.log_mel(torch.from_numpy(w)[None]))
    mean, std = compute_mel_stats(frontend, waves, batch_size=2)
    frontend.set_stats(mean, std)
    got_mean, got_std = frontend.stats()
    np.testing.assert_array_equal(got_mean, mean)
    np.testing.assert_array_equal(got_std, std)

    frames = np.concatenate([frontend(torch.from_numpy(w)[None])[0, 0].numpy() for w in waves])
    assert np.abs(frames).max() < 10.0  # the clamp does not bite on the stats data itself
    np.testing.assert_allclose(frames.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(frames.std(axis=0), 1.0, atol=1e-4)

    frontend.standardise = False
    torch.testing.assert_close(frontend(torch.from_numpy(waves[0])[None]), before[0])

    # A tiny std pushes values far out: the clamp bounds must hold and be reached.
    frontend.standardise = True
    frontend.set_stats(mean, np.full(64, 1e-2, dtype=np.float32))
    out = frontend(torch.from_numpy(waves[3])[None])
    assert out.min().item() == -10.0 and out.max().item() == 10.0
    frontend.clamp = 3.0
    out = frontend(torch.from_numpy(waves[3])[None])
    assert out.min().item() == -3.0 and out.max().item() == 3.0


def test_compute_mel_stats_equals_numpy_over_concatenated_frames(tmp_path):
    lengths = [0.35, 1.7, 0.9, 1.234567, 0.5]
    waves = [wav_roundtrip(tmp_path, f"s{i}.wav", chirp_and_noise(sec, seed=10 + i, f0=50 + 90 * i))
             for i, sec in enumerate(lengths)]
    frames = np.concatenate([librosa_log_mel(w) for w in waves])
    assert len(frames) == sum(1 + len(w) // 320 for w in waves)
    for batch_size in (1, 2, 16):
        mean, std = compute_mel_stats(LogMelFrontend(), iter(waves), batch_size=batch_size)
        np.testing.assert_allclose(mean, frames.mean(axis=0), rtol=0, atol=2e-4)
        np.testing.assert_allclose(std, frames.std(axis=0), rtol=0, atol=2e-4)


def test_compute_mel_stats_floors_constant_bins():
    # Pure silence: every bin sits at the amin floor, std 0 -> floored.
    mean, std = compute_mel_stats(LogMelFrontend(), [np.zeros(8000, dtype=np.float32)], min_std=1e-3)
    np.testing.assert_allclose(mean, AMIN_DB, rtol=1e-6)
    np.testing.assert_array_equal(std, np.float32(1e-3))


def test_state_dict_carries_stats():
    frontend = LogMelFrontend()
    frontend.set_stats(np.full(64, -30.0), np.full(64, 12.0))
    restored = LogMelFrontend()
    restored.load_state_dict(frontend.state_dict())
    wave = torch.from_numpy(chirp_and_noise(0.5, seed=3))[None]
    torch.testing.assert_close(restored(wave), frontend(wave))
    assert not torch.equal(restored(wave), restored.log_mel(wave))


def test_autocast_keeps_float32():
    frontend = LogMelFrontend()
    wave = torch.from_numpy(chirp_and_noise(0.5, seed=4))[None]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = frontend(wave)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, frontend(wave))


def test_very_short_clip_still_gives_frames():
    frontend = LogMelFrontend()
    out = frontend.log_mel(torch.full((1, 100), 0.1))
    assert out.shape == (1, 1, frontend.num_frames(100), 64)
    mean, _ = compute_mel_stats(frontend, [np.full(100, 0.1, dtype=np.float32)])
    np.testing.assert_allclose(mean, out[0, 0].numpy().mean(axis=0), atol=1e-4)


def test_bad_inputs():
    frontend = LogMelFrontend()
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        frontend(torch.zeros(16000))
    with pytest.raises(ValueError, match="shape \\(64,\\)"):
        frontend.set_stats(np.zeros(63), np.ones(63))
    with pytest.raises(ValueError, match="positive"):
        frontend.set_stats(np.zeros(64), np.zeros(64))
    with pytest.raises(ValueError, match="at least one clip"):
        compute_mel_stats(frontend, [])
    with pytest.raises(ValueError, match="wave 1"):
        compute_mel_stats(frontend, [np.zeros(1000), np.zeros((2, 1000))])
    with pytest.raises(ValueError, match="fmax"):
        LogMelFrontend(fmax=20000.0)


def test_log_mel_clips_equals_each_clip_alone():
    waves = [chirp_and_noise(sec, seed=20 + i) for i, sec in enumerate([0.3, 1.01, 0.66])]
    frontend = LogMelFrontend(top_db=50.0)
    clips = frontend.log_mel_clips(waves)
    assert [c.shape for c in clips] == [(1 + len(w) // 320, 64) for w in waves]
    for wave, clip_db in zip(waves, clips):
        alone = frontend.log_mel(torch.from_numpy(wave)[None])[0, 0]
        torch.testing.assert_close(clip_db, alone, rtol=0, atol=1e-4)
        ref = librosa_log_mel(wave, top_db=50.0)
        assert np.abs(clip_db.numpy() - ref).max() < 1e-3
