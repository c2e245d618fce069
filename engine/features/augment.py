"""Training augmentations: waveform (audiomentations), SpecAugment and mixup.

- :class:`WaveAugment` runs on one mono clip in the data loader
  (``augment.backend = "cpu"``, the default when training on a CPU): random
  gain, white/pink noise at a random SNR, time shift, and optionally pitch
  shift and time stretch. The same settings run batched on the training
  device in :mod:`engine.features.device_augment` (the default on CUDA).
- :class:`SpecAugment` masks frequency bands and time spans of a standardised
  log-mel batch ``[B, 1, frames, mels]`` on the training device.
- :func:`mixup` mixes a batch with a permutation of itself (inputs, labels and
  sample weights alike).

All three are reproducible: their randomness comes from an explicit
``numpy.random.Generator`` or ``torch.Generator``.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from engine.errors import ConfigError

__all__ = [
    "NOISE_DECAY_DB_PER_OCTAVE",
    "MixupInfo",
    "SpecAugment",
    "SpecMasks",
    "WaveAugment",
    "check_wave_settings",
    "mixup",
]

# audiomentations draws from the process-wide `random` and `numpy.random` state;
# the lock keeps two threads from interleaving their seeded sections.
_GLOBAL_RNG_LOCK = threading.Lock()

# Spectral slope of each noise colour in dB per octave (pink: power halves per octave).
NOISE_DECAY_DB_PER_OCTAVE = {"white": 0.0, "pink": -10.0 * np.log10(2.0)}


def _check_p(value: float, field: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"probability must be in [0, 1], got {value}", field=field)
    return float(value)


def check_wave_settings(*, sample_rate: int, gain_db: float, gain_p: float, noise_snr_db: tuple[float, float],
                        noise_p: float, noise_colors: tuple[str, ...], shift_s: float, shift_p: float,
                        pitch_semitones: float, pitch_p: float, stretch: tuple[float, float],
                        stretch_p: float) -> dict:
    """Check the waveform augmentation settings (ConfigError names the field); return them normalised.

    Shared by the per-clip :class:`WaveAugment` and the batched
    :class:`engine.features.device_augment.BatchWaveAugment`, which take the same spec fields.
    """
    out = {"sample_rate": int(sample_rate)}
    for name, value in (("gain_p", gain_p), ("noise_p", noise_p), ("shift_p", shift_p), ("pitch_p", pitch_p),
                        ("stretch_p", stretch_p)):
        out[name] = _check_p(value, f"augment.{name}")
    if gain_db < 0:
        raise ConfigError(f"gain range must be >= 0 dB, got {gain_db}", field="augment.gain_db")
    lo_snr, hi_snr = (float(v) for v in noise_snr_db)
    if lo_snr > hi_snr:
        raise ConfigError(f"noise SNR range {noise_snr_db} is reversed", field="augment.noise_snr_db")
    unknown = [c for c in noise_colors if c not in NOISE_DECAY_DB_PER_OCTAVE]
    if unknown or not noise_colors:
        raise ConfigError(f"noise colours must be chosen from {sorted(NOISE_DECAY_DB_PER_OCTAVE)}, "
                          f"got {list(noise_colors)}", field="augment.noise_colors")
    if shift_s < 0:
        raise ConfigError(f"shift must be >= 0 s, got {shift_s}", field="augment.shift_s")
    if not 0 <= pitch_semitones <= 24:
        raise ConfigError(f"pitch shift must be in [0, 24] semitones, got {pitch_semitones}",
                          field="augment.pitch_semitones")
    lo_rate, hi_rate = (float(v) for v in stretch)
    if not 0.1 <= lo_rate <= hi_rate <= 10:
        raise ConfigError(f"stretch range must satisfy 0.1 <= low <= high <= 10, got {stretch}",
                          field="augment.stretch")
    out.update(gain_db=float(gain_db), noise_snr_db=(lo_snr, hi_snr), noise_colors=tuple(noise_colors),
               shift_s=float(shift_s), pitch_semitones=float(pitch_semitones), stretch=(lo_rate, hi_rate))
    return out


class WaveAugment:
    """Random waveform augmentation of one mono clip (float32, length preserved).

    Applied in this order, each with its own probability: time stretch
    (``stretch`` rate range, length kept: a faster clip is zero-padded at the
    end, a slower one cropped), pitch shift (``±pitch_semitones``), time shift
    (``±shift_s`` seconds), gain (``±gain_db`` dB, uniform in dB), and last one
    noise colour from ``noise_colors`` at an SNR drawn uniformly from
    ``noise_snr_db`` (measured against the clip as it is after the other steps).

    The shift rolls the clip over (what leaves one end comes back at the other,
    with a 5 ms fade at the seam) rather than zero-filling: a weakly labelled clip
    can hold its only labelled event near an edge, and a zero-filled shift could
    push that event out of the crop while keeping the label.

    Measured cost per 10 s clip at 32 kHz on one core of a shared 2-core CPU
    (audiomentations 0.43, signalsmith-stretch backend), median of 15 calls:
    pitch shift 45-90 ms, time stretch 40-80 ms (the spread is machine load),
    pink noise ~25 ms, white noise ~5-8 ms, gain and shift under 1 ms; all five
    at p=1 ~0.2 s. The CPU defaults (gain 0.5, noise 0.3, shift 0.5) average a
    few ms. On a GPU machine the recipe's full set runs batched on the device
    instead (:class:`engine.features.device_augment.BatchWaveAugment`), so it
    does not need many loader workers.

    ``__call__(wave, rng)`` is a pure function of ``wave`` and the state of
    ``rng``: one 64-bit seed is drawn from ``rng`` and used to seed the global
    generators that audiomentations reads, whose previous state is restored
    afterwards so the rest of the process is not disturbed. With every
    probability 0 the call returns the input (as float32) without touching
    ``rng``.
    """

    def __init__(self, *, sample_rate: int = 32000, gain_db: float = 6.0, gain_p: float = 0.5,
                 noise_snr_db: tuple[float, float] = (20.0, 30.0), noise_p: float = 0.3,
                 noise_colors: tuple[str, ...] = ("white", "pink"), shift_s: float = 0.5,
                 shift_p: float = 0.5, pitch_semitones: float = 2.0, pitch_p: float = 0.0,
                 stretch: tuple[float, float] = (0.9, 1.1), stretch_p: float = 0.0) -> None:
        from audiomentations import (AddColorNoise, Gain, OneOf, PitchShift, Shift,
                                     TimeStretch)

        settings = check_wave_settings(sample_rate=sample_rate, gain_db=gain_db, gain_p=gain_p,
                                       noise_snr_db=noise_snr_db, noise_p=noise_p, noise_colors=noise_colors,
                                       shift_s=shift_s, shift_p=shift_p, pitch_semitones=pitch_semitones,
                                       pitch_p=pitch_p, stretch=stretch, stretch_p=stretch_p)
        self.__dict__.update(settings)
        lo_snr, hi_snr = self.noise_snr_db
        lo_rate, hi_rate = self.stretch

        # Each transform is kept only when its probability is positive, so a
        # disabled step costs nothing and draws no random numbers.
        steps = []
        if self.stretch_p > 0:
            steps.append(TimeStretch(min_rate=lo_rate, max_rate=hi_rate, leave_length_unchanged=True,
                                     p=self.stretch_p))
        if self.pitch_p > 0 and self.pitch_semitones > 0:
            steps.append(PitchShift(min_semitones=-self.pitch_semitones, max_semitones=self.pitch_semitones,
                                    p=self.pitch_p))
        if self.shift_p > 0 and self.shift_s > 0:
            steps.append(Shift(min_shift=-self.shift_s, max_shift=self.shift_s, shift_unit="seconds",
                               rollover=True, p=self.shift_p))
        if self.gain_p > 0 and self.gain_db > 0:
            steps.append(Gain(min_gain_db=-self.gain_db, max_gain_db=self.gain_db, p=self.gain_p))
        if self.noise_p > 0:
            colours = [AddColorNoise(min_snr_db=lo_snr, max_snr_db=hi_snr,
                                     min_f_decay=NOISE_DECAY_DB_PER_OCTAVE[c],
                                     max_f_decay=NOISE_DECAY_DB_PER_OCTAVE[c], p=1.0)
                       for c in self.noise_colors]
            steps.append(OneOf(colours, p=self.noise_p))
        self._steps = steps

    @property
    def is_identity(self) -> bool:
        """True when no step can fire (every probability 0)."""
        return not self._steps

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment one mono clip; returns float32 of the same length."""
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"WaveAugment expects a mono 1-D clip, got shape {wave.shape}")
        if not self._steps or wave.size == 0:
            return wave
        seed = int(rng.integers(0, 2**32, dtype=np.uint64))
        with _GLOBAL_RNG_LOCK:
            py_state = random.getstate()
            np_state = np.random.get_state()
            try:
                random.seed(seed)
                np.random.seed(seed)
                out = wave
                for step in self._steps:
                    out = step(out, self.sample_rate)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
        out = np.asarray(out, dtype=np.float32)
        if out.shape[0] != wave.shape[0]:
            # The stretch backends can be off by a few samples; the clip length is a contract.
            out = np.pad(out, (0, max(0, wave.shape[0] - out.shape[0])))[: wave.shape[0]]
        return out

    def __repr__(self) -> str:
        return (f"WaveAugment(sample_rate={self.sample_rate}, gain_db={self.gain_db}, gain_p={self.gain_p}, "
                f"noise_snr_db={self.noise_snr_db}, noise_p={self.noise_p}, noise_colors={self.noise_colors}, "
                f"shift_s={self.shift_s}, shift_p={self.shift_p}, pitch_semitones={self.pitch_semitones}, "
                f"pitch_p={self.pitch_p}, stretch={self.stretch}, stretch_p={self.stretch_p})")


@dataclass(frozen=True)
class SpecMasks:
    """Mask spans drawn by :meth:`SpecAugment.sample_masks`, each ``[B, n_masks]`` (int64).

    A mask covers ``[start, start + width)``; width 0 masks nothing.
    """

    time_start: Tensor
    time_width: Tensor
    freq_start: Tensor
    freq_width: Tensor


def _max_width(size: int, n_masks: int, width: int, min_keep_frac: float) -> int:
    """Largest width per mask so that ``n_masks`` masks leave enough of ``size`` unmasked."""
    if n_masks == 0 or size == 0:
        return 0
    keep = max(1, int(np.ceil(min_keep_frac * size)))
    return max(0, min(width, (size - keep) // n_masks))


def _draw_spans(batch: int, n_masks: int, size: int, max_width: int, apply: Tensor,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    # Width uniform in {0..max_width}, start uniform over the positions where the
    # whole mask fits, independently for every example and mask.
    u_width = torch.rand(batch, n_masks, generator=generator, dtype=torch.float64)
    u_start = torch.rand(batch, n_masks, generator=generator, dtype=torch.float64)
    width = torch.floor(u_width * (max_width + 1)).long().clamp(max=max_width)
    start = torch.floor(u_start * (size - width + 1).double()).long()
    start = torch.minimum(start, size - width)
    width = width * apply[:, None].long()
    return start, width


def _span_mask(start: Tensor, width: Tensor, size: int) -> Tensor:
    """Boolean ``[B, size]``: True where any of the ``[B, n]`` spans covers a position."""
    pos = torch.arange(size, device=start.device)
    inside = (pos[None, None, :] >= start[..., None]) & (pos[None, None, :] < (start + width)[..., None])
    return inside.any(dim=1)


class SpecAugment(nn.Module):
    """SpecAugment frequency and time masking on a log-mel batch ``[B, 1, frames, mels]``.

    Each example (independently, with probability ``p``) gets ``freq_masks``
    bands of up to ``freq_width`` mel bins and ``time_masks`` spans of up to
    ``time_frac`` of its frames, widths uniform from 0. Masked cells are set to 0,
    the mean of the standardised features. The clip is never masked away: widths
    are capped so that all masks together leave at least ``min_keep_frac`` of
    the frames and of the mel bins (and at least one of each) unmasked, which
    matters only for very short inputs (8 frames: the time masks then vanish).

    Active only in training mode; in eval mode the input is returned unchanged.
    Pass a ``torch.Generator`` (on the CPU) to make the masks reproducible.
    """

    def __init__(self, *, freq_masks: int = 2, freq_width: int = 20, time_masks: int = 2,
                 time_frac: float = 0.10, p: float = 1.0, min_keep_frac: float = 0.25,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if freq_masks < 0 or time_masks < 0:
            raise ConfigError("mask counts must be >= 0", field="augment.spec_masks")
        if freq_width < 0:
            raise ConfigError(f"freq mask width must be >= 0, got {freq_width}", field="augment.freq_width")
        if not 0.0 <= time_frac <= 1.0:
            raise ConfigError(f"time mask fraction must be in [0, 1], got {time_frac}", field="augment.time_frac")
        if not 0.0 < min_keep_frac <= 1.0:
            raise ConfigError(f"min_keep_frac must be in (0, 1], got {min_keep_frac}",
                              field="augment.min_keep_frac")
        self.freq_masks = int(freq_masks)
        self.freq_width = int(freq_width)
        self.time_masks = int(time_masks)
        self.time_frac = float(time_frac)
        self.p = _check_p(p, "augment.spec_p")
        self.min_keep_frac = float(min_keep_frac)
        self.generator = generator

    def max_widths(self, frames: int, mels: int) -> tuple[int, int]:
        """Largest (time, freq) width a single mask can take for this input size."""
        time_w = _max_width(frames, self.time_masks, int(self.time_frac * frames), self.min_keep_frac)
        freq_w = _max_width(mels, self.freq_masks, self.freq_width, self.min_keep_frac)
        return time_w, freq_w

    def sample_masks(self, batch: int, frames: int, mels: int,
                     generator: torch.Generator | None = None) -> SpecMasks:
        """Draw the mask spans for a batch (on the CPU)."""
        generator = self.generator if generator is None else generator
        apply = torch.rand(batch, generator=generator) < self.p
        time_w, freq_w = self.max_widths(frames, mels)
        t_start, t_width = _draw_spans(batch, self.time_masks, frames, time_w, apply, generator)
        f_start, f_width = _draw_spans(batch, self.freq_masks, mels, freq_w, apply, generator)
        return SpecMasks(t_start, t_width, f_start, f_width)

    def apply_masks(self, x: Tensor, masks: SpecMasks) -> Tensor:
        """Set the masked time frames and mel bins of ``x`` to 0."""
        _, _, frames, mels = x.shape
        time_mask = _span_mask(masks.time_start.to(x.device), masks.time_width.to(x.device), frames)
        freq_mask = _span_mask(masks.freq_start.to(x.device), masks.freq_width.to(x.device), mels)
        cells = time_mask[:, None, :, None] | freq_mask[:, None, None, :]
        return x.masked_fill(cells, 0.0)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Masked copy of ``x`` in training mode, ``x`` itself in eval mode."""
        if not self.training or self.p == 0.0 or (self.freq_masks == 0 and self.time_masks == 0):
            return x
        if x.ndim != 4:
            raise ValueError(f"SpecAugment expects [batch, 1, frames, mels], got {tuple(x.shape)}")
        batch, _, frames, mels = x.shape
        return self.apply_masks(x, self.sample_masks(batch, frames, mels, generator))

    def extra_repr(self) -> str:
        return (f"freq_masks={self.freq_masks}, freq_width={self.freq_width}, time_masks={self.time_masks}, "
                f"time_frac={self.time_frac}, p={self.p}, min_keep_frac={self.min_keep_frac}")


@dataclass(frozen=True)
class MixupInfo:
    """What :func:`mixup` did: ``applied``, per-example ``lam`` ``[B]`` and ``perm`` ``[B]``.

    ``x_out[i] = lam[i] * x[i] + (1 - lam[i]) * x[perm[i]]`` (the same for labels
    and sample weights). When not applied, ``lam`` is all ones and ``perm`` the
    identity.
    """

    applied: bool
    lam: Tensor
    perm: Tensor


def mixup(x: Tensor, y: Tensor, *, alpha: float = 0.4, p: float = 0.5,
          generator: torch.Generator | None = None, sample_weights: Tensor | None = None,
          return_info: bool = False):
    """Mixup of a batch with a permutation of itself.

    With probability ``p`` (one decision per batch) every example ``i`` is mixed
    with example ``perm[i]`` using its own ``lam[i] ~ Beta(alpha, alpha)``. A
    per-example lambda gives every batch a spread of mixing ratios instead of one
    shared ratio, which lowers the variance of the batch gradient. Inputs, labels
    and sample weights are mixed with the same ``lam`` (labels linearly, so a
    class present in both clips keeps target 1). ``x`` may be any ``[B, ...]``
    tensor (waveforms, log-mels or embeddings).

    Returns ``(x, y, sample_weights)``, plus a :class:`MixupInfo` when
    ``return_info``. When not applied the inputs are returned unchanged. All
    draws come from ``generator`` (a CPU ``torch.Generator``) or, without one,
    from torch's default generator.
    """
    if alpha <= 0:
        raise ConfigError(f"mixup alpha must be > 0, got {alpha}", field="augment.mixup_alpha")
    _check_p(p, "augment.mixup_p")
    batch = x.shape[0]
    if y.shape[0] != batch:
        raise ValueError(f"mixup: {batch} inputs but {y.shape[0]} label rows")
    apply = bool(torch.rand(1, generator=generator).item() < p) and batch > 1
    if not apply:
        if not return_info:
            return x, y, sample_weights
        info = MixupInfo(False, torch.ones(batch, dtype=torch.float32), torch.arange(batch))
        return x, y, sample_weights, info
    perm = torch.randperm(batch, generator=generator)
    # torch's Beta sampler takes no generator; a seed drawn from the generator
    # makes the numpy draw an equally pure function of its state.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=batch).astype(np.float32))

    def mix(t: Tensor) -> Tensor:
        lam_t = lam.to(device=t.device, dtype=t.dtype if t.is_floating_point() else torch.float32)
        lam_t = lam_t.reshape((batch,) + (1,) * (t.ndim - 1))
        idx = perm.to(t.device)
        return lam_t * t + (1.0 - lam_t) * t[idx]

    x_mixed, y_mixed = mix(x), mix(y.float() if not y.is_floating_point() else y)
    w_mixed = None if sample_weights is None else mix(sample_weights)
    if not return_info:
        return x_mixed, y_mixed, w_mixed
    return x_mixed, y_mixed, w_mixed, MixupInfo(True, lam, perm)
