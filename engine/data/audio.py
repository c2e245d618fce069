"""Audio decoding and fixed-length windows.

Clips are decoded with libsndfile (``soundfile``), downmixed to mono by the
channel mean and resampled with soxr at "HQ" quality to the model sample rate
(32 kHz for PANNs). ``fit_length`` turns a variable-length clip into the fixed
crop a model sees: random crops and loop- or zero-padding for training,
centre crops for evaluation.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from engine.errors import DataError

FIT_MODES = ("center", "random")


def decode(data: bytes | Path, *, name: str, target_sr: int = 32000) -> np.ndarray:
    """Decode encoded audio (bytes or a file path) to float32 mono at ``target_sr``.

    ``name`` says where the audio came from and is used in error messages.
    Corrupt, unreadable, empty or non-finite audio is a DataError naming it.
    """
    if target_sr <= 0:
        raise ValueError(f"target_sr must be positive, got {target_sr}")
    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            if len(data) == 0:
                raise DataError("the audio file is empty (0 bytes); replace it", file=name)
            wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        else:
            wave, sr = sf.read(str(data), dtype="float32", always_2d=True)
    except DataError:
        raise
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError, OSError) as exc:
        raise DataError(f"cannot decode the audio ({_decode_reason(exc)}); the file is corrupt or not in a "
                        "supported format (WAV, FLAC, OGG); replace it", file=name) from None
    if wave.shape[0] == 0:
        raise DataError("the audio file holds no samples; replace it", file=name)
    mono = wave[:, 0] if wave.shape[1] == 1 else wave.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise DataError("the audio holds NaN or infinite samples; replace it", file=name)
    if sr != target_sr:
        mono = soxr.resample(mono, sr, target_sr, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _decode_reason(exc: Exception) -> str:
    """What the decoder said, without the in-memory buffer it was given (``name`` says which file)."""
    reason = getattr(exc, "error_string", None) or str(exc)
    reason = re.sub(r"^Error opening <[^>]*>: ?", "", reason)
    return re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>", "the audio data", reason).strip() or type(exc).__name__


def _nonzero_window(wave: np.ndarray, n: int, offset: int, rng: np.random.Generator | None) -> int:
    """Move a crop window of length ``n`` so that it covers at least one non-zero sample.

    A long clip whose event is short can have silent stretches longer than the
    crop; a crop of pure silence would teach the model a label for nothing.
    """
    nonzero = np.flatnonzero(wave)
    if rng is not None:
        j = int(nonzero[rng.integers(len(nonzero))])
        low, high = max(0, j - n + 1), min(j, len(wave) - n)
        return int(rng.integers(low, high + 1))
    # Deterministic: the smallest shift that reaches the nearest non-zero sample.
    after = nonzero[nonzero >= offset + n]
    before = nonzero[nonzero < offset]
    shifts = []
    if len(after):
        shifts.append(int(after[0]) - n + 1)
    if len(before):
        shifts.append(int(before[-1]))
    return min(shifts, key=lambda o: abs(o - offset))


def fit_length(wave: np.ndarray, n: int, *, mode: str = "center",
               rng: np.random.Generator | None = None, loop_prob: float = 0.0) -> np.ndarray:
    """Crop or pad a mono waveform to exactly ``n`` samples (float32, a new array).

    Longer clips are cropped: ``mode="random"`` takes a uniform random offset
    from ``rng``, ``mode="center"`` the centre. Shorter clips are loop-padded
    (tiled, then trimmed) with probability ``loop_prob`` (always when
    ``loop_prob >= 1``), else zero-padded: at a random position in ``"random"``
    mode, left-aligned in ``"center"`` mode. A crop never comes out all zero
    when the input has a non-zero sample. When a random choice is needed and
    ``rng`` is None, a freshly seeded generator is used.
    """
    if mode not in FIT_MODES:
        raise ValueError(f"mode must be one of {FIT_MODES}, got {mode!r}")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono 1-D waveform, got shape {wave.shape}")
    length = len(wave)
    if length == 0:
        raise ValueError("cannot fit an empty waveform to a length")
    if length == n:
        return wave.copy()

    if length > n:
        random = mode == "random"
        if random:
            rng = rng if rng is not None else np.random.default_rng()
            offset = int(rng.integers(0, length - n + 1))
        else:
            offset = (length - n) // 2
        out = wave[offset:offset + n]
        if not out.any() and wave.any():
            offset = _nonzero_window(wave, n, offset, rng if random else None)
            out = wave[offset:offset + n]
        return out.copy()

    if loop_prob >= 1.0:
        loop = True
    elif loop_prob <= 0.0:
        loop = False
    else:
        rng = rng if rng is not None else np.random.default_rng()
        loop = bool(rng.random() < loop_prob)
    if loop:
        start = 0
        if mode == "random":
            rng = rng if rng is not None else np.random.default_rng()
            start = int(rng.integers(0, length))
        # Tiling from a random phase keeps every loop-padded crop different.
        reps = -(-(n + start) // length)
        return np.tile(wave, reps)[start:start + n].copy()
    out = np.zeros(n, dtype=np.float32)
    offset = 0
    if mode == "random":
        rng = rng if rng is not None else np.random.default_rng()
        offset = int(rng.integers(0, n - length + 1))
    out[offset:offset + length] = wave
    return out
