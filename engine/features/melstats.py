"""Per-clip log-mel statistics: the mean, standard deviation and maximum of each mel bin over a clip.

The classic audio-tagging baseline's features. A whole clip (no crop) becomes
one ``3 * n_mels`` vector ``[mean | std | max]`` of its dB log-mel
(``LogMelFrontend.log_mel_clips``, unstandardised: the logistic regression
standardises per fold). They need no pretrained weights and take seconds for
the demo set on a CPU, and they see a clip differently from a CNN (no time
structure, the whole clip's level and spectrum), which is what a blend member
needs to add something.

It also holds :func:`cache_mel_stats`, the training job's standardisation
statistics over a whole waveform cache, computed once per cache and frontend
setting and kept beside the cache.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from engine.features.frontend import LogMelFrontend, mel_stats_from_sums

if TYPE_CHECKING:
    from engine.data.cache import WaveformCache

#: Clips per batch: the frontend pads a batch to its longest clip, so batches
#: are formed from clips sorted by length.
BATCH_CLIPS = 32


def mel_statistics(frontend: LogMelFrontend, waves: Sequence[np.ndarray],
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """``[n_clips, 3 * n_mels]`` float64: per mel bin the mean, the std (ddof 0) and the max over frames.

    Each row equals the statistics of ``frontend.log_mel`` of that clip alone
    (``log_mel_clips`` keeps every clip's own frames). ``progress(done, total)``
    is called after each batch.
    """
    n = len(waves)
    out = np.empty((n, 3 * frontend.n_mels), dtype=np.float64)
    order = np.argsort([len(w) for w in waves], kind="stable")
    with torch.no_grad():
        for start in range(0, n, BATCH_CLIPS):
            idx = order[start:start + BATCH_CLIPS]
            for i, db in zip(idx, frontend.log_mel_clips([np.asarray(waves[i], dtype=np.float32) for i in idx])):
                x = db.double().cpu().numpy()
                out[i] = np.concatenate([x.mean(axis=0), x.std(axis=0), x.max(axis=0)])
            if progress is not None:
                progress(min(start + BATCH_CLIPS, n), n)
    return out


#: Bumped when the per-clip sums file changes meaning.
SUMS_FORMAT = 1


def sums_file(frontend: LogMelFrontend, cache: WaveformCache) -> Path:
    """Where the per-clip log-mel sums of ``cache`` under ``frontend``'s settings are kept: in the cache's folder."""
    settings = {"format": SUMS_FORMAT, "sample_rate": cache.sample_rate, "n_fft": frontend.n_fft,
                "hop_length": frontend.hop_length, "win_length": frontend.win_length, "n_mels": frontend.n_mels,
                "fmin": frontend.fmin, "fmax": frontend.fmax, "amin": frontend.amin, "top_db": frontend.top_db}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache.path) / f"melsums-{key}.npy"


#: Padded frames per batch of the statistics pass (16 ten-second clips): batches of similar-length
#: clips up to this size, so short clips go many at a time and long ones a few.
BATCH_FRAMES = 16_384


def clip_mel_sums(frontend: LogMelFrontend, cache: WaveformCache, *, batch_frames: int = BATCH_FRAMES,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """``[n_clips, 1 + 2 * n_mels]`` float64: per clip its frame count, the sums of its dB log-mel and of its square.

    Clips run shortest first, in batches of at most ``batch_frames`` padded
    frames: the frontend pads a batch to its longest clip, so batches in cache
    order (0.3-30 s side by side) spend much of their FFTs on padding, and
    neighbours in length waste little. Each clip's frames are its own
    (``log_mel_clips``), as in :func:`~engine.features.frontend.compute_mel_stats`.
    """
    local = copy.deepcopy(frontend).to(device).eval()
    out = np.zeros((len(cache), 1 + 2 * local.n_mels), dtype=np.float64)
    order = np.argsort(cache.lengths, kind="stable")
    batches: list[list[int]] = [[]]
    for i in order:
        # Sorted ascending: this clip is the batch's longest, so the batch pads to its frames.
        if batches[-1] and (len(batches[-1]) + 1) * local.num_frames(cache.length(int(i))) > batch_frames:
            batches.append([])
        batches[-1].append(int(i))
    with torch.inference_mode():
        for idx in batches:
            if not idx:
                continue
            clips = local.log_mel_clips([cache.get(i) for i in idx])
            # One copy out of torch per batch, the per-clip sums in numpy: a torch op per clip
            # would wake torch's thread pool for every clip, which costs more than the sums.
            db = torch.cat(clips).double().cpu().numpy()
            frames = np.array([len(c) for c in clips])
            starts = np.concatenate([[0], np.cumsum(frames)[:-1]])
            out[idx, 0] = frames
            out[idx, 1:1 + local.n_mels] = np.add.reduceat(db, starts, axis=0)
            out[idx, 1 + local.n_mels:] = np.add.reduceat(np.square(db), starts, axis=0)
    return out


def cache_mel_stats(frontend: LogMelFrontend, cache: WaveformCache, *, batch_frames: int = BATCH_FRAMES,
                    device: str | torch.device = "cpu", min_std: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """The training job's standardisation statistics: per-mel-bin ``(mean, std)`` over every frame of ``cache``.

    The same statistics as :func:`~engine.features.frontend.compute_mel_stats`
    over the cache's clips (up to float64 summation order: tested), computed
    once per cache and frontend setting: the per-clip sums
    (:func:`clip_mel_sums`) are kept in the cache's folder (:func:`sums_file`),
    so every later run on the same data and settings reads them instead of
    computing the log-mel of every clip again. A cache folder that cannot be
    written only loses that reuse.
    """
    path = sums_file(frontend, cache)
    sums = None
    try:
        sums = np.load(path)
    except (OSError, ValueError):
        pass
    if sums is None or sums.shape != (len(cache), 1 + 2 * frontend.n_mels):
        sums = clip_mel_sums(frontend, cache, batch_frames=batch_frames, device=device)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as fh:
                np.save(fh, sums)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
    frames = int(sums[:, 0].sum())
    if frames == 0:
        raise ValueError(f"{cache.path}: no clips: mel statistics need at least one clip")
    n = frontend.n_mels
    return mel_stats_from_sums(sums[:, 1:1 + n].sum(axis=0), sums[:, 1 + n:].sum(axis=0), frames, min_std=min_std)
