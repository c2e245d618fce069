"""Per-clip log-mel statistics: the mean, standard deviation and maximum of each mel bin over a clip.

The classic audio-tagging baseline's features. A whole clip (no crop) becomes
one ``3 * n_mels`` vector ``[mean | std | max]`` of its dB log-mel
(``LogMelFrontend.log_mel_clips``, unstandardised: the logistic regression
standardises per fold). They need no pretrained weights and take seconds for
the demo set on a CPU, and they see a clip differently from a CNN (no time
structure, the whole clip's level and spectrum), which is what a blend member
needs to add something.

It also holds :func:`cache_mel_stats`, the training job's standardisation
statistics over a whole waveform cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from engine.features.frontend import LogMelFrontend, compute_mel_stats

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


def cache_mel_stats(frontend: LogMelFrontend, cache: WaveformCache, *, batch_size: int = 16,
                    device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """:func:`~engine.features.frontend.compute_mel_stats` over every clip of ``cache``, shortest clips first.

    The frontend pads a batch to its longest clip, so batches of clips in
    cache order (0.3-30 s side by side) spend most of their FFTs on padding;
    batches of clips of similar length do not, which made the pass about 2.5x
    faster on the demo set (about as fast as building the cache:
    benchmarks/README.md, "Log-mel statistics"). Every frame still counts once,
    so the result is the cache-order result up to float64 summation order
    (tested against it).
    """
    order = np.argsort(cache.lengths, kind="stable")
    return compute_mel_stats(frontend, (cache.get(int(i)) for i in order), batch_size=batch_size, device=device)
