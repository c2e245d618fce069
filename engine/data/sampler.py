"""Class-balanced clip sampling for training batches.

The curated set is long-tailed; drawing clips with probability inversely
proportional to their classes' frequency puts rare classes into batches more
often. The oversampling of any single clip is capped (5x by default) so that a
handful of rare clips are not memorised.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from engine.errors import ConfigError, DataError

__all__ = ["BalancedClassSampler", "capped_probabilities"]


def capped_probabilities(weights: np.ndarray, cap: float) -> np.ndarray:
    """Normalise ``weights`` to probabilities with no entry above ``cap``.

    Entries that would exceed ``cap`` are fixed at ``cap`` and the remaining mass
    is shared among the others in proportion to their weights; this repeats,
    because the renormalisation can push further entries over the cap. The
    result is the unique capped distribution that keeps uncapped entries
    proportional to ``weights``. Requires ``cap * len(weights) >= 1``.
    """
    w = np.asarray(weights, dtype=np.float64)
    n = w.size
    if n * cap < 1.0 - 1e-12:
        raise ValueError(f"cap {cap} is infeasible for {n} entries")
    capped = np.zeros(n, dtype=bool)
    prob = w / w.sum()
    for _ in range(n):
        free_mass = 1.0 - cap * capped.sum()
        free_weight = w[~capped].sum()
        prob = np.where(capped, cap, w * (free_mass / free_weight) if free_weight > 0 else 0.0)
        over = (prob > cap * (1 + 1e-12)) & ~capped
        if not over.any():
            break
        capped |= over
    return prob / prob.sum()


class BalancedClassSampler(torch.utils.data.Sampler[int]):
    """Draw clip indices with replacement, favouring clips of rare classes.

    A clip's raw weight is the largest ``1 / count_c`` over its labels ``c``
    (``count_c`` = clips carrying class ``c``): a clip that carries one rare class
    is drawn at that class's rate, however common its other labels are, so each
    class receives roughly the same share of draws. A clip without labels gets
    the weight of the most frequent class. The resulting probabilities are capped
    so that no clip's expected draw count exceeds ``max_oversample`` times what
    uniform sampling would give it (``num_samples / n``), see
    :func:`capped_probabilities`.

    ``len(sampler) == num_samples`` (default: the number of clips). The draw of an
    epoch is a pure function of ``(seed, epoch)``; call ``set_epoch`` before each
    epoch (as with ``DistributedSampler``).
    """

    def __init__(self, Y: np.ndarray, *, num_samples: int | None = None, max_oversample: float = 5.0,
                 seed: int = 0) -> None:
        Y = np.asarray(Y)
        if Y.ndim != 2 or Y.shape[0] == 0 or Y.shape[1] == 0:
            raise DataError(f"balanced sampling needs a non-empty [clips, classes] label matrix, "
                            f"got shape {Y.shape}")
        if max_oversample < 1.0:
            raise ConfigError(f"max oversampling must be >= 1 (1 means uniform), got {max_oversample}",
                              field="sampler.max_oversample")
        n = Y.shape[0]
        if num_samples is None:
            num_samples = n
        if num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {num_samples}", field="sampler.num_samples")
        positive = Y > 0
        counts = positive.sum(axis=0).astype(np.float64)
        inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), 0.0)
        raw = (positive * inverse[None, :]).max(axis=1)
        unlabelled = ~positive.any(axis=1)
        raw[unlabelled] = 1.0 / counts.max() if counts.max() > 0 else 1.0

        self.num_clips = n
        self.num_samples = int(num_samples)
        self.max_oversample = float(max_oversample)
        self.seed = int(seed)
        self.epoch = 0
        self.class_counts = counts.astype(np.int64)
        self.probabilities = capped_probabilities(raw, self.max_oversample / n)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw ``__iter__`` returns next."""
        self.epoch = int(epoch)

    def expected_draws(self) -> np.ndarray:
        """Expected number of times each clip is drawn in one epoch, ``[n]`` (sums to ``len``)."""
        return self.probabilities * self.num_samples

    def indices(self) -> np.ndarray:
        """This epoch's draw as an int64 array."""
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.choice(self.num_clips, size=self.num_samples, replace=True, p=self.probabilities)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples
