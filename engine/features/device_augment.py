"""Waveform augmentation of a whole batch on the training device.

:class:`BatchWaveAugment` takes the ``[B, T]`` waveform batch that the loader
delivered (already on the GPU, or on the CPU) and applies, clip by clip with
each transform's own probability and range, the recipe's waveform
augmentations in the order of the per-item path (:class:`WaveAugment`):

1. time stretch (rate in ``stretch``; length kept: a faster clip is zero-padded
   at the end, a slower one cropped) and pitch shift (``±pitch_semitones``),
   done together by one batched phase vocoder with a rate per clip, then a
   per-clip linear-interpolation resampling for the pitch;
2. time shift (``±shift_s``), rolled over with a 5 ms fade at the seam;
3. gain (``±gain_db``, uniform in dB);
4. one noise colour from ``noise_colors`` at an SNR uniform in
   ``noise_snr_db``, measured against the clip after steps 1-3.

Every random number of a batch comes from one ``torch.Generator`` that
:func:`batch_generator` derives from ``(seed, fold, epoch, step)``: the clip
parameters are drawn on the CPU (identical on every device), the noise
samples on the training device from a seed drawn from that generator. A
batch's augmentation therefore depends only on its position in training, not
on what ran before it, so a resumed epoch draws what an uninterrupted one
would, whatever the number of loader workers.

No maintained library covers this set batched with per-clip ranges:
torch-audiomentations has no time stretch, draws from torch's global
generator and pitch-shifts one clip at a time; torchaudio's ``pitch_shift``
and ``phase_vocoder`` take one rate per call. The phase vocoder here is
torchaudio's algorithm with a rate per clip. ``benchmarks/bench_augment.py``
has the measured comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.features.augment import NOISE_DECAY_DB_PER_OCTAVE, check_wave_settings

__all__ = ["AugmentDraws", "BatchWaveAugment", "batch_generator"]

# Separates this stream from any other use of the same (seed, fold, epoch, step).
_STREAM_TAG = 0x57415645  # "WAVE"


# Phase vocoder frame: 32 ms at 32 kHz with 75 % overlap, what phase vocoders
# commonly use for general sound; the hop scales with the sample rate.
_PV_SECONDS = 0.032
_SHIFT_FADE_SECONDS = 0.005


def batch_generator(seed: int, fold: int, epoch: int, step: int) -> torch.Generator:
    """A CPU generator that is a pure function of the batch's place in training."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(fold), int(epoch), int(step), _STREAM_TAG])
    return torch.Generator().manual_seed(int(state.generate_state(1, np.uint64)[0]) & (2**63 - 1))


@dataclass(frozen=True)
class AugmentDraws:
    """What one batch's augmentation draws, per clip (CPU tensors of length ``B``).

    ``*_on`` says whether a transform fires for the clip; the values are
    drawn for every clip whatever the probabilities, so changing one
    probability does not change another transform's values. ``noise_seed``
    seeds the device generator of the noise samples.
    """

    stretch_on: Tensor
    stretch_rate: Tensor
    pitch_on: Tensor
    pitch_semitones: Tensor
    shift_on: Tensor
    shift_samples: Tensor
    gain_on: Tensor
    gain_db: Tensor
    noise_on: Tensor
    noise_color: Tensor
    noise_snr_db: Tensor
    noise_seed: int


def _lock_phases(phase: Tensor, input_phase: Tensor, magnitude: Tensor) -> Tensor:
    """Phase locking (after Laroche and Dolson, 1999) of phase-vocoder phases ``[R, frames, F]``.

    Each bin takes the accumulated phase of the strongest bin near it (the
    strongest within two bins, then that one's strongest within two: a
    sinusoid's Hann main lobe is four bins wide) plus the phase difference the
    two had in the input frame. Without it a sinusoid lying between two bins
    loses about 4 dB when slowed down (its bins drift out of phase and cancel
    in the overlap-add); with it the level is kept.
    """
    rows, n_frames, n_freq = magnitude.shape
    _, nearest = F.max_pool1d(magnitude.reshape(rows * n_frames, 1, n_freq), kernel_size=5, stride=1,
                              padding=2, return_indices=True)
    nearest = nearest.reshape(rows * n_frames, n_freq)
    peak = torch.gather(nearest, 1, nearest).reshape(rows, n_frames, n_freq)
    return torch.gather(phase, 2, peak) + input_phase - torch.gather(input_phase, 2, peak)


class BatchWaveAugment:
    """Random waveform augmentation of a ``[B, T]`` batch on its own device; shape and dtype kept.

    The settings are those of :class:`engine.features.augment.WaveAugment`
    (the same spec fields, the same checks). Call it as
    ``aug(wave, generator)``; the result is a pure function of ``wave`` and
    the generator's state. With every probability 0 the input is returned
    as is and the generator is not touched.
    """

    def __init__(self, *, sample_rate: int = 32000, gain_db: float = 6.0, gain_p: float = 0.5,
                 noise_snr_db: tuple[float, float] = (20.0, 30.0), noise_p: float = 0.3,
                 noise_colors: tuple[str, ...] = ("white", "pink"), shift_s: float = 0.5,
                 shift_p: float = 0.5, pitch_semitones: float = 2.0, pitch_p: float = 0.0,
                 stretch: tuple[float, float] = (0.9, 1.1), stretch_p: float = 0.0) -> None:
        self.__dict__.update(check_wave_settings(
            sample_rate=sample_rate, gain_db=gain_db, gain_p=gain_p, noise_snr_db=noise_snr_db, noise_p=noise_p,
            noise_colors=noise_colors, shift_s=shift_s, shift_p=shift_p, pitch_semitones=pitch_semitones,
            pitch_p=pitch_p, stretch=stretch, stretch_p=stretch_p))
        self.n_fft = 1 << max(6, round(math.log2(_PV_SECONDS * self.sample_rate)))
        self.hop = self.n_fft // 4

    @property
    def is_identity(self) -> bool:
        """True when no transform can fire."""
        return not (self.stretch_p > 0 or (self.pitch_p > 0 and self.pitch_semitones > 0)
                    or (self.shift_p > 0 and self.shift_s > 0) or (self.gain_p > 0 and self.gain_db > 0)
                    or self.noise_p > 0)

    def draw(self, batch: int, generator: torch.Generator) -> AugmentDraws:
        """Draw every clip's parameters for a batch of ``batch`` clips (on the CPU)."""
        def uniform(lo: float, hi: float) -> Tensor:
            return lo + (hi - lo) * torch.rand(batch, generator=generator, dtype=torch.float64)

        def fires(p: float) -> Tensor:
            return torch.rand(batch, generator=generator, dtype=torch.float64) < p

        stretch_on, stretch_rate = fires(self.stretch_p), uniform(*self.stretch)
        pitch_on = fires(self.pitch_p) & (self.pitch_semitones > 0)
        pitch = uniform(-self.pitch_semitones, self.pitch_semitones)
        max_shift = int(round(self.shift_s * self.sample_rate))
        shift_on = fires(self.shift_p) & (max_shift > 0)
        shift = torch.randint(-max_shift, max_shift + 1, (batch,), generator=generator)
        gain_on, gain = fires(self.gain_p) & (self.gain_db > 0), uniform(-self.gain_db, self.gain_db)
        noise_on = fires(self.noise_p)
        colour = torch.randint(0, len(self.noise_colors), (batch,), generator=generator)
        snr = uniform(*self.noise_snr_db)
        noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return AugmentDraws(stretch_on, stretch_rate, pitch_on, pitch, shift_on, shift, gain_on, gain,
                            noise_on, colour, snr, noise_seed)

    def __call__(self, wave: Tensor, generator: torch.Generator) -> Tensor:
        """Augment a ``[B, T]`` batch; the result has its shape, dtype and device."""
        if wave.ndim != 2:
            raise ValueError(f"BatchWaveAugment expects a [batch, samples] tensor, got {tuple(wave.shape)}")
        if self.is_identity or wave.numel() == 0:
            return wave
        return self.apply(wave, self.draw(wave.shape[0], generator))

    @torch.no_grad()
    def apply(self, wave: Tensor, draws: AugmentDraws) -> Tensor:
        """Apply drawn parameters to a batch (float32 arithmetic on the batch's device)."""
        dtype = wave.dtype
        # Autocast would run the FFTs and the noise power in half precision.
        with torch.autocast(device_type=wave.device.type, enabled=False):
            out = wave.float().clone()
            self._stretch_and_pitch(out, draws)
            self._shift(out, draws)
            self._gain(out, draws)
            self._noise(out, draws)
        return out.to(dtype)

    # --- the transforms, each in place on the rows that fire -----------------

    def _stretch_and_pitch(self, out: Tensor, d: AugmentDraws) -> None:
        rows = torch.nonzero(d.stretch_on | d.pitch_on).flatten()
        if rows.numel() == 0:
            return
        rate = torch.where(d.stretch_on, d.stretch_rate, torch.ones_like(d.stretch_rate))[rows]
        factor = torch.where(d.pitch_on, 2.0 ** (d.pitch_semitones / 12.0), torch.ones_like(d.pitch_semitones))[rows]
        idx = rows.to(out.device)
        out[idx] = self.stretch_and_pitch(out[idx], rate, factor)

    def stretch_and_pitch(self, wave: Tensor, rate: Tensor, factor: Tensor) -> Tensor:
        """Time-stretch rows of ``wave`` by ``rate`` and multiply their pitch by ``factor``, length kept.

        ``rate`` > 1 is faster (content ends early, zero-padded), ``factor`` > 1
        higher. One phase vocoder stretches each row by ``rate / factor``
        (duration ``T * factor / rate``); reading that back every ``factor``
        samples (linear interpolation) restores the duration ``T / rate``
        and multiplies every frequency by ``factor``.
        """
        rows, length = wave.shape
        device = wave.device
        # Output samples needed so that reading T samples at step `factor` stays inside
        # (from the CPU draws: no device sync).
        out_len = int(math.ceil(float(factor.max()) * length)) + 2
        rate_pv = (rate / factor).to(device=device, dtype=torch.float64)
        factor = factor.to(device=device, dtype=torch.float64)
        window = torch.hann_window(self.n_fft, device=device)
        # Time-major [rows, frames, freq]: picking whole frames is a contiguous copy.
        spec = torch.stft(wave, self.n_fft, self.hop, window=window, center=True,
                          return_complex=True).transpose(1, 2)
        n_frames, n_freq = spec.shape[1], spec.shape[2]
        n_out = out_len // self.hop + 1
        steps = torch.arange(n_out, device=device, dtype=torch.float64)[None, :] * rate_pv[:, None]
        floor = steps.floor()
        # Two zero frames past the end: frames read beyond the clip are silence.
        i0 = floor.long().clamp(max=n_frames)
        alpha = torch.where(floor < n_frames, steps - floor, torch.zeros_like(steps)).float()[:, :, None]
        # Magnitudes and phases once per input frame, then frame picks.
        mag = F.pad(spec.abs(), (0, 0, 0, 2))
        ang = F.pad(spec.angle(), (0, 0, 0, 2))
        first_phase = ang[:, :1]
        del spec
        row = torch.arange(rows, device=device)[:, None]
        mag0, mag1 = mag[row, i0], mag[row, i0 + 1]
        ang0, ang1 = ang[row, i0], ang[row, i0 + 1]
        del mag, ang
        # torchaudio.functional.phase_vocoder, with a time grid per row.
        phase_advance = torch.linspace(0, math.pi * self.hop, n_freq, device=device)[None, None, :]
        phase = ang1.sub_(ang0).sub_(phase_advance)
        phase = phase.sub_(torch.round(phase / (2 * math.pi)).mul_(2 * math.pi)).add_(phase_advance)
        phase = torch.cat([first_phase, phase[:, :-1]], dim=1)
        magnitude = mag1.sub_(mag0).mul_(alpha).add_(mag0)
        del mag1, mag0
        locked = _lock_phases(torch.cumsum(phase, dim=1), ang0, magnitude)
        stretched = torch.polar(magnitude, locked).transpose(1, 2)
        del ang0, phase, magnitude, locked
        long_wave = torch.istft(stretched, self.n_fft, self.hop, window=window, center=True, length=out_len)
        # Read every `factor` samples: linear interpolation, a row at a time position grid.
        pos = torch.arange(length, device=device, dtype=torch.float64)[None, :] * factor[:, None]
        j0 = pos.floor().long().clamp(max=out_len - 2)
        frac = (pos - j0).float()
        x0 = torch.gather(long_wave, 1, j0)
        x1 = torch.gather(long_wave, 1, j0 + 1)
        return x0 + frac * (x1 - x0)

    def _shift(self, out: Tensor, d: AugmentDraws) -> None:
        length = out.shape[1]
        fade = max(1, int(round(_SHIFT_FADE_SECONDS * self.sample_rate)))
        ramp = torch.linspace(0.0, 1.0, fade + 2, device=out.device)[1:-1]
        for row in torch.nonzero(d.shift_on).flatten().tolist():
            shift = int(d.shift_samples[row]) % length
            if shift == 0:
                continue
            out[row] = torch.roll(out[row], shift)
            # The old end meets the old start at `shift`: fade out before it, in after it.
            n = min(fade, shift, length - shift)
            if n > 0:
                out[row, shift - n:shift] *= ramp[:n].flip(0)
                out[row, shift:shift + n] *= ramp[:n]

    def _gain(self, out: Tensor, d: AugmentDraws) -> None:
        scale = torch.where(d.gain_on, 10.0 ** (d.gain_db / 20.0), torch.ones_like(d.gain_db))
        if d.gain_on.any():
            out.mul_(scale.to(device=out.device, dtype=out.dtype)[:, None])

    def noise(self, rows: int, length: int, colours: Tensor, device: torch.device, seed: int) -> Tensor:
        """Unit-RMS noise ``[rows, length]`` of the given colour indices, from ``seed``, on ``device``."""
        gen = torch.Generator(device=device).manual_seed(seed)
        decays = torch.tensor([NOISE_DECAY_DB_PER_OCTAVE[self.noise_colors[int(c)]] for c in colours],
                              device=device, dtype=torch.float32)
        if bool((decays == 0).all()):
            noise = torch.randn(rows, length, generator=gen, device=device)
        else:
            # Drawn in the frequency domain (complex Gaussian bins are white noise) and
            # shaped there: one inverse FFT instead of a forward and an inverse one.
            n_bins = length // 2 + 1
            spectrum = torch.randn(rows, n_bins, 2, generator=gen, device=device)
            freqs = torch.fft.rfftfreq(length, d=1.0 / self.sample_rate, device=device)
            # Power changes by `decay` dB per octave: amplitude exponent decay / (20 log10 2).
            exponent = decays / (20.0 * math.log10(2.0))
            shape = torch.where(freqs[None, :] > 0, freqs.clamp(min=1.0)[None, :] ** exponent[:, None],
                                torch.zeros(1, device=device))
            noise = torch.fft.irfft(torch.view_as_complex(spectrum) * shape, n=length)
        rms = noise.square().mean(dim=1, keepdim=True).sqrt().clamp(min=1e-12)
        return noise / rms

    def _noise(self, out: Tensor, d: AugmentDraws) -> None:
        rows = torch.nonzero(d.noise_on).flatten()
        if rows.numel() == 0:
            return
        idx = rows.to(out.device)
        noise = self.noise(len(rows), out.shape[1], d.noise_color[rows], out.device, d.noise_seed)
        signal_rms = out[idx].square().mean(dim=1, keepdim=True).sqrt()
        snr = d.noise_snr_db[rows].to(device=out.device, dtype=torch.float32)[:, None]
        out[idx] = out[idx] + noise * (signal_rms / 10.0 ** (snr / 20.0))

    def __repr__(self) -> str:
        return (f"BatchWaveAugment(sample_rate={self.sample_rate}, gain_db={self.gain_db}, gain_p={self.gain_p}, "
                f"noise_snr_db={self.noise_snr_db}, noise_p={self.noise_p}, noise_colors={self.noise_colors}, "
                f"shift_s={self.shift_s}, shift_p={self.shift_p}, pitch_semitones={self.pitch_semitones}, "
                f"pitch_p={self.pitch_p}, stretch={self.stretch}, stretch_p={self.stretch_p})")
