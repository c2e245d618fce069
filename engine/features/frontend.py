"""Log-mel frontend matching PANNs' feature extraction, plus dataset standardisation.

The frontend turns a batch of 32 kHz mono waveforms into log-mel images laid
out as PANNs expects them, ``[batch, 1, frames, n_mels]`` (time, then mel):

1. STFT: periodic Hann window, ``center=True`` with reflect padding, so frame
   ``t`` is centred on sample ``t * hop_length`` and a clip of ``T`` samples
   gives ``1 + T // hop_length`` frames.
2. Power spectrogram ``|X|^2``.
3. Mel filterbank identical to librosa's default
   (``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)``: slaney mel scale,
   slaney area normalisation), the filterbank PANNs was trained with.
4. ``10 * log10(max(amin, S))`` with reference power 1.0 (librosa's
   ``power_to_db(ref=1.0)``); with ``top_db`` set, each clip is floored at its
   own maximum minus ``top_db``.
5. Per-mel-bin standardisation with statistics of the curated training set
   (``compute_mel_stats``), then clamping to ``[-clamp, clamp]``.

Steps 1-4 reproduce ``librosa.power_to_db(librosa.feature.melspectrogram(...))``
(transposed) to within about 2e-4 dB: the filterbank is the same to the last
bit, and what remains is float32 FFT rounding in quiet bins (librosa applies
its window in float64). Steps 1-4 always run in float32, outside autocast: a
power spectrogram overflows half precision.

With 256 mel bands and ``n_fft=1024`` a few of the lowest bands are narrower
than one FFT bin and receive no energy (librosa warns about the same
filterbank); their log-mel is constant at ``10*log10(amin)``, their standard
deviation is floored, so they standardise to 0. ``empty_mel_bins`` counts them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LogMelFrontend", "compute_mel_stats", "mel_stats_from_sums", "slaney_mel_filterbank"]

# Spectrogram frames computed at once on a CPU (about 2 MB of spectrum).
_CPU_CHUNK_FRAMES = 1024

# Slaney's mel scale: linear (200/3 Hz per mel) up to 1 kHz, logarithmic above
# with 27 mels per factor 6.4 in frequency.
_MEL_LINEAR_HZ = 200.0 / 3.0
_MEL_BREAK_HZ = 1000.0
_MEL_BREAK = _MEL_BREAK_HZ / _MEL_LINEAR_HZ
_MEL_LOG_STEP = math.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _MEL_BREAK + np.log(np.maximum(hz, _MEL_BREAK_HZ) / _MEL_BREAK_HZ) / _MEL_LOG_STEP
    return np.where(hz < _MEL_BREAK_HZ, hz / _MEL_LINEAR_HZ, log_part)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_part = _MEL_BREAK_HZ * np.exp(_MEL_LOG_STEP * (np.maximum(mel, _MEL_BREAK) - _MEL_BREAK))
    return np.where(mel < _MEL_BREAK, mel * _MEL_LINEAR_HZ, log_part)


def slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float,
                          fmax: float) -> np.ndarray:
    """Triangular mel filterbank ``[n_fft // 2 + 1, n_mels]`` on the Slaney mel scale, area-normalised.

    The same matrix (transposed) as ``librosa.filters.mel(sr=sample_rate,
    n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)``, computed in float64
    because float32 band edges cost up to 6e-4 relative error at the
    triangles' tails.
    """
    fft_hz = np.arange(n_fft // 2 + 1, dtype=np.float64) * sample_rate / n_fft
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    low, centre, high = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (fft_hz[None, :] - low) / (centre - low)
    falling = (high - fft_hz[None, :]) / (high - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    # Area normalisation: each band carries roughly the same energy whatever its width.
    return (triangles * (2.0 / (high - low))).T


class LogMelFrontend(torch.nn.Module):
    """Batched waveform -> standardised log-mel, ``[B, T] -> [B, 1, frames, n_mels]``.

    The window, the mel filterbank and the standardisation statistics are
    buffers: they follow the module across devices and are saved in its
    state dict, so a checkpoint carries the statistics it was trained with.
    Until ``set_stats`` is called (or a state dict with statistics is
    loaded) standardisation and clamping are skipped and ``forward`` returns
    the dB log-mel. Set ``standardise = False`` to always get the dB log-mel.
    """

    def __init__(self, sample_rate: int = 32000, n_fft: int = 1024, hop_length: int = 320,
                 win_length: int = 1024, n_mels: int = 64, fmin: float = 50.0,
                 fmax: float = 16000.0, amin: float = 1e-10, top_db: float | None = None,
                 clamp: float | None = 10.0) -> None:
        super().__init__()
        if win_length > n_fft:
            raise ValueError(f"win_length ({win_length}) must not exceed n_fft ({n_fft})")
        if not 0 <= fmin < fmax <= sample_rate / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={fmin}, fmax={fmax}, "
                             f"sample_rate={sample_rate}")
        if amin <= 0:
            raise ValueError(f"amin must be positive, got {amin}")
        if top_db is not None and top_db < 0:
            raise ValueError(f"top_db must be non-negative or None, got {top_db}")
        if clamp is not None and clamp <= 0:
            raise ValueError(f"clamp must be positive or None, got {clamp}")
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.n_mels = n_mels
        self.fmin = fmin
        self.fmax = fmax
        self.amin = amin
        self.top_db = top_db
        self.clamp = clamp
        self.standardise = True

        # A window shorter than n_fft sits centred in the frame with zeros
        # either side (librosa's convention); building it at n_fft length once
        # keeps the framing code free of that case.
        window = torch.hann_window(win_length, periodic=True)
        left = (n_fft - win_length) // 2
        window = F.pad(window, (left, n_fft - win_length - left))
        self.register_buffer("window", window, persistent=False)

        mel_fb = torch.from_numpy(slaney_mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax))
        self.empty_mel_bins = int((mel_fb.max(dim=0).values == 0).sum())
        self.register_buffer("mel_fb", mel_fb.float(), persistent=False)

        self.register_buffer("mel_mean", torch.zeros(n_mels))
        self.register_buffer("mel_std", torch.ones(n_mels))
        self.register_buffer("has_stats", torch.tensor(False))
        # A Python mirror of has_stats avoids a device sync on every forward.
        self._has_stats = False
        self.register_load_state_dict_post_hook(_sync_has_stats)

    def extra_repr(self) -> str:
        """The constructor settings, shown by ``repr(module)``."""
        return (f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
                f"win_length={self.win_length}, n_mels={self.n_mels}, fmin={self.fmin}, "
                f"fmax={self.fmax}, top_db={self.top_db}, clamp={self.clamp}")

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a clip of ``num_samples`` samples (``center=True``)."""
        return 1 + max(num_samples, self.n_fft // 2 + 1) // self.hop_length

    def set_stats(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor) -> None:
        """Set the per-mel-bin mean and standard deviation (dB) used to standardise."""
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32) if not torch.is_tensor(mean) else mean)
        std_t = torch.as_tensor(np.asarray(std, dtype=np.float32) if not torch.is_tensor(std) else std)
        for name, value in (("mean", mean_t), ("std", std_t)):
            if value.shape != (self.n_mels,):
                raise ValueError(f"mel {name} must have shape ({self.n_mels},), got {tuple(value.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"mel {name} contains NaN or infinite values")
        if (std_t <= 0).any():
            raise ValueError("mel std must be positive in every bin")
        with torch.no_grad():
            self.mel_mean.copy_(mean_t.to(self.mel_mean))
            self.mel_std.copy_(std_t.to(self.mel_std))
            self.has_stats.fill_(True)
        self._has_stats = True

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """The per-mel-bin ``(mean, std)`` as float32 numpy arrays (zeros/ones if never set)."""
        return (self.mel_mean.detach().cpu().numpy().copy(),
                self.mel_std.detach().cpu().numpy().copy())

    def _check_wave(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(f"expected a [batch, samples] waveform tensor, got shape {tuple(wave.shape)}")
        if wave.shape[1] == 0:
            raise ValueError("waveform has no samples")
        return wave.to(device=self.window.device, dtype=torch.float32)

    def _reflect_pad(self, wave: torch.Tensor) -> torch.Tensor:
        """Pad ``n_fft // 2`` samples each side by reflection, as ``center=True`` does."""
        half = self.n_fft // 2
        if wave.shape[-1] <= half:
            # Reflection needs more samples than the pad; such clips (a few
            # milliseconds) are zero-extended first.
            wave = F.pad(wave, (0, half + 1 - wave.shape[-1]))
        return F.pad(wave.unsqueeze(1), (half, half), mode="reflect").squeeze(1)

    def _log_mel_padded(self, padded: torch.Tensor) -> torch.Tensor:
        """dB log-mel ``[B, frames, n_mels]`` of already reflect-padded waves (no top_db)."""
        frames = 1 + (padded.shape[-1] - self.n_fft) // self.hop_length
        if padded.device.type == "cpu":
            # A whole batch of spectrograms overflows the CPU caches and runs
            # 2-4x slower per clip than a few clips at a time.
            per_chunk = max(1, _CPU_CHUNK_FRAMES // frames)
            if per_chunk < padded.shape[0]:
                return torch.cat([self._log_mel_frames(chunk) for chunk in padded.split(per_chunk)])
        return self._log_mel_frames(padded)

    def _log_mel_frames(self, padded: torch.Tensor) -> torch.Tensor:
        # Framing + rfft gives the same numbers as torch.stft(center=False) but
        # leaves the spectrum time-major, as the mel matmul wants it, and is
        # faster on CPU. Buffers are used as float32 even after module.half().
        frames = padded.unfold(-1, self.n_fft, self.hop_length) * self.window.float()
        spec = torch.fft.rfft(frames)                                   # [B, frames, freq]
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(power, self.mel_fb.float())                  # [B, frames, n_mels]
        return 10.0 * torch.log10(torch.clamp(mel, min=self.amin))

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """Unstandardised dB log-mel ``[B, 1, frames, n_mels]`` of a ``[B, T]`` waveform batch."""
        wave = self._check_wave(wave)
        with torch.autocast(device_type=wave.device.type, enabled=False):
            db = self._log_mel_padded(self._reflect_pad(wave))
            if self.top_db is not None:
                peak = db.amax(dim=(1, 2), keepdim=True)
                db = torch.maximum(db, peak - self.top_db)
        return db.unsqueeze(1)

    def log_mel_clips(self, waves: Sequence[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
        """Unstandardised dB log-mel of clips of different lengths, one ``[frames, n_mels]`` each.

        The clips run as one batch, yet each result equals ``log_mel`` of that
        clip alone: every clip is reflect-padded on its own, the padded clips
        are zero-extended to a common length, and each keeps only its own
        ``1 + len // hop_length`` frames, none of which reach the zeros.
        """
        if len(waves) == 0:
            return []
        padded = []
        for i, wave in enumerate(waves):
            wave_t = torch.as_tensor(wave).to(device=self.window.device, dtype=torch.float32)
            if wave_t.dim() != 1 or wave_t.numel() == 0:
                raise ValueError(f"clip {i} must be a non-empty 1-D waveform, got shape {tuple(wave_t.shape)}")
            padded.append(self._reflect_pad(wave_t.unsqueeze(0)).squeeze(0))
        width = max(p.shape[0] for p in padded)
        stacked = torch.stack([F.pad(p, (0, width - p.shape[0])) for p in padded])
        with torch.autocast(device_type=stacked.device.type, enabled=False):
            db = self._log_mel_padded(stacked)
        clips = []
        for p, clip_db in zip(padded, db):
            clip_db = clip_db[:1 + (p.shape[0] - self.n_fft) // self.hop_length]
            if self.top_db is not None:
                clip_db = torch.maximum(clip_db, clip_db.max() - self.top_db)
            clips.append(clip_db)
        return clips

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Log-mel ``[B, 1, frames, n_mels]``, standardised and clamped once statistics are set."""
        db = self.log_mel(wave)
        if not (self.standardise and self._has_stats):
            return db
        x = (db - self.mel_mean) / self.mel_std
        if self.clamp is not None:
            x = torch.clamp(x, -self.clamp, self.clamp)
        return x


def _sync_has_stats(module: torch.nn.Module, incompatible_keys: object) -> None:
    """Refresh the Python mirror of ``has_stats`` after ``load_state_dict``."""
    module._has_stats = bool(module.has_stats)


def compute_mel_stats(frontend: LogMelFrontend, waves: Iterable[np.ndarray], batch_size: int = 16,
                      device: str | torch.device = "cpu",
                      min_std: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Per-mel-bin mean and standard deviation (dB) over every frame of ``waves``.

    ``waves`` are 1-D float waveforms at the frontend's sample rate, typically
    the curated training clips, of any lengths. Each frame counts once, so a
    long clip weighs more than a short one, and no padding frame is counted
    (``LogMelFrontend.log_mel_clips`` gives each clip exactly its own
    frames). The values are those ``forward`` standardises: the dB log-mel,
    with ``top_db`` if the frontend sets it. The population standard
    deviation is floored at ``min_std`` dB so that a bin that is constant in
    every clip (silent, or an empty mel band) still standardises to finite
    values. The caller's frontend is not moved to ``device``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    local = copy.deepcopy(frontend).to(device).eval()
    total = torch.zeros(local.n_mels, dtype=torch.float64)
    total_sq = torch.zeros(local.n_mels, dtype=torch.float64)
    frames = 0

    def accumulate(batch: list[np.ndarray], first: int) -> None:
        nonlocal frames
        for offset, wave in enumerate(batch):
            if wave.ndim != 1 or wave.size == 0:
                raise ValueError(f"wave {first + offset} must be a non-empty 1-D array, "
                                 f"got shape {wave.shape}")
        # Sums in float64: tens of millions of frames of values near -50 dB.
        db = torch.cat(local.log_mel_clips(batch)).double()
        total.add_(db.sum(dim=0).cpu())
        total_sq.add_(db.square().sum(dim=0).cpu())
        frames += db.shape[0]

    with torch.inference_mode():
        batch: list[np.ndarray] = []
        first = 0
        for i, wave in enumerate(waves):
            batch.append(np.asarray(wave))
            if len(batch) == batch_size:
                accumulate(batch, first)
                batch, first = [], i + 1
        if batch:
            accumulate(batch, first)
    if frames == 0:
        raise ValueError("no waveforms given: mel statistics need at least one clip")
    return mel_stats_from_sums(total, total_sq, frames, min_std=min_std)


def mel_stats_from_sums(total: np.ndarray | torch.Tensor, total_sq: np.ndarray | torch.Tensor, frames: int,
                        min_std: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Per-mel-bin float32 ``(mean, std)`` from float64 sums of the dB log-mel and of its square over ``frames``."""
    total, total_sq = torch.as_tensor(total, dtype=torch.float64), torch.as_tensor(total_sq, dtype=torch.float64)
    mean = total / frames
    var = torch.clamp(total_sq / frames - mean.square(), min=0.0)
    std = torch.clamp(var.sqrt(), min=min_std)
    return mean.float().numpy(), std.float().numpy()
