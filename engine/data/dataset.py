"""Torch datasets over a decoded-waveform cache: crops, padding and waveform augmentation.

The log-mel frontend, SpecAugment and MixUp run later, batched on the
training device; this part runs in DataLoader workers on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from engine.data.audio import fit_length
from engine.data.cache import host_cores


class ConcatCache:
    """Several waveform caches read as one: the clips of the second follow those of the first.

    Used to train on curated and noisy clips together: clip ``len(curated) + j``
    is noisy clip ``j``. Pickles without the memory maps, like its parts.
    """

    def __init__(self, caches: Sequence) -> None:
        self.caches = list(caches)
        self.starts = np.cumsum([0] + [len(c) for c in self.caches])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, i: int) -> tuple[object, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"clip index {i} out of range for {len(self)} clips")
        part = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.caches[part], i - int(self.starts[part])

    def get(self, i: int) -> np.ndarray:
        """Return clip ``i`` as a new float32 array in [-1, 1]."""
        cache, j = self._locate(int(i))
        return cache.get(j)

    def length(self, i: int) -> int:
        """Return the length of clip ``i`` in samples."""
        cache, j = self._locate(int(i))
        return cache.length(j)


class CropDataset(Dataset):
    """Clips of a WaveformCache cut or padded to a crop length, with their labels.

    Training mode: a random crop (one of ``crop_choices`` lengths), loop-pad
    with probability ``loop_pad_prob`` else zero-pad, then ``wave_augment``.
    Evaluation mode: the centre crop, zero-padded. Every clip in a batch must
    have one length, so multi-scale crops are drawn per batch by
    :class:`MultiScaleBatchSampler`, not per clip.

    ``indices`` are the cache's clip numbers this dataset serves; ``Y`` and
    ``sample_weights`` (the per-clip loss weight, 1 when None) are indexed by
    clip number too. Items are ``(wave, labels, weight)``.
    """

    def __init__(self, cache, indices: Sequence[int], Y: np.ndarray | None, *, crop_samples: int,
                 train: bool, loop_pad_prob: float = 0.0, seed: int = 0,
                 wave_augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
                 sample_weights: np.ndarray | None = None) -> None:
        self.cache = cache
        self.indices = np.asarray(indices, dtype=np.int64)
        self.Y = None if Y is None else np.asarray(Y, dtype=np.float32)
        self.crop_samples = int(crop_samples)
        self.train = train
        self.loop_pad_prob = loop_pad_prob
        self.seed = seed
        self.epoch = 0
        self.wave_augment = wave_augment
        self.sample_weights = sample_weights

    def set_epoch(self, epoch: int) -> None:
        """Change the random crops reproducibly from one epoch to the next."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int | tuple[int, int]):
        crop, epoch = self.crop_samples, self.epoch
        if isinstance(item, tuple):
            # (position, crop length, epoch) from MultiScaleBatchSampler: the epoch
            # travels with the index because persistent loader workers hold their
            # own copy of this dataset, which set_epoch in the main process never reaches.
            item, crop, *rest = item
            epoch = rest[0] if rest else epoch
        clip = int(self.indices[item])
        wave = self.cache.get(clip)
        if self.train:
            # A per-(seed, epoch, clip) generator keeps crops reproducible whatever
            # the DataLoader worker count or order.
            rng = np.random.default_rng((self.seed, epoch, clip))
            wave = fit_length(wave, crop, mode="random", rng=rng, loop_prob=self.loop_pad_prob)
            if self.wave_augment is not None:
                wave = self.wave_augment(wave, rng)
        else:
            wave = fit_length(wave, crop, mode="center")
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        y = torch.from_numpy(self.Y[clip]) if self.Y is not None else torch.zeros(0)
        w = torch.tensor(1.0 if self.sample_weights is None else float(self.sample_weights[clip]))
        return x, y, w


class MultiScaleBatchSampler(torch.utils.data.Sampler):
    """Wraps a sampler into batches of (index, crop length, epoch): one length per batch.

    With probability ``prob`` each, a batch uses one of the extra crop lengths
    (multi-scale training, e.g. 5 s and 12 s besides 10 s).
    """

    def __init__(self, sampler, batch_size: int, *, base_crop: int, extra_crops: Sequence[int],
                 prob: float, seed: int = 0, drop_last: bool = False) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.base_crop = base_crop
        self.extra_crops = list(extra_crops)
        self.prob = prob
        self.seed = seed
        self.epoch = 0
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        """Change the crop draws (and the wrapped sampler's draws) reproducibly per epoch."""
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _crop(self, rng: np.random.Generator) -> int:
        u = rng.random()
        for i, crop in enumerate(self.extra_crops):
            if u < self.prob * (i + 1):
                return crop
        return self.base_crop

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch, 7))
        batch: list[int] = []
        for idx in self.sampler:
            batch.append(int(idx))
            if len(batch) == self.batch_size:
                crop = self._crop(rng)
                yield [(i, crop, self.epoch) for i in batch]
                batch = []
        if batch and not self.drop_last:
            crop = self._crop(rng)
            yield [(i, crop, self.epoch) for i in batch]

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


@dataclass(frozen=True)
class LoaderSettings:
    """DataLoader settings as they will run: every ``"auto"`` resolved."""

    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    prefetch_factor: int | None

    def dataloader_kwargs(self) -> dict:
        """Keyword arguments for ``torch.utils.data.DataLoader``."""
        kw: dict = {"num_workers": self.num_workers, "pin_memory": self.pin_memory}
        if self.num_workers > 0:
            kw.update(persistent_workers=self.persistent_workers, prefetch_factor=self.prefetch_factor)
        return kw


#: Batches in flight that "auto" aims for, whatever the worker count: enough to
#: ride out a slow disk read of one worker.
_BATCHES_IN_FLIGHT = 8


def loader_settings(*, num_workers: int | str = "auto", pin_memory: bool | str = "auto",
                    persistent_workers: bool | str = "auto", prefetch_factor: int | str = "auto",
                    device_type: str = "cpu", cores: int | None = None,
                    cpu_augment: bool = False) -> LoaderSettings:
    """Resolve the loader settings of a spec (each a value or ``"auto"``) for a device and host.

    ``"auto"`` means:

    - ``num_workers``: on a CPU device 0, because the training step's torch
      threads already use every core and a worker process would take them
      away (an item without CPU augmentation costs well under a millisecond,
      see benchmarks/README.md). On CUDA one core stays with the process
      that drives the GPU; the rest load, up to 4 when augmentation runs on
      the device (a crop from the memory-mapped cache is cheap: 4 workers
      deliver far more than a GPU trains) and up to 16 when it runs per clip
      on the CPU (``cpu_augment``), where the loader is the bottleneck.
    - ``pin_memory``: on CUDA only (page-locked batches copy asynchronously).
    - ``persistent_workers``: whenever there are workers, so they are not
      started again every epoch.
    - ``prefetch_factor``: enough batches per worker for about 8 in flight.

    Explicit values are kept, except where they cannot apply: pinning
    without CUDA, and persistence or prefetch without workers.
    """
    cores = host_cores() if cores is None else max(1, int(cores))
    cuda = device_type == "cuda"
    if num_workers == "auto":
        workers = min(16 if cpu_augment else 4, cores - 1) if cuda else 0
    else:
        workers = int(num_workers)
    pin = cuda if pin_memory == "auto" else bool(pin_memory) and cuda
    persistent = workers > 0 if persistent_workers == "auto" else bool(persistent_workers) and workers > 0
    if workers == 0:
        prefetch = None
    elif prefetch_factor == "auto":
        prefetch = max(2, math.ceil(_BATCHES_IN_FLIGHT / workers))
    else:
        prefetch = int(prefetch_factor)
    return LoaderSettings(num_workers=workers, pin_memory=pin, persistent_workers=persistent,
                          prefetch_factor=prefetch)
