"""The data side of a training spec as objects: loaders, waveform augmentation, the loss.

The model side (frontend, model, SpecAugment, tagger) is built by
``engine.models.registry``; these are its counterparts for what feeds the
model and what it is scored by. They sit in ``engine.train``, the lowest
layer that may import all they build from (``engine.data``,
``engine.features`` and ``engine.train.losses``), so the fold task, the
benchmarks and the tests build a fold's inputs the same way.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from engine.data.clips import TrainingClips
from engine.data.dataset import CropDataset, LoaderSettings, MultiScaleBatchSampler, loader_settings
from engine.data.sampler import BalancedClassSampler
from engine.features.augment import WaveAugment
from engine.features.device_augment import BatchWaveAugment
from engine.specs import TrainSpec
from engine.train.losses import build_loss, class_weights_from_counts


def augment_backend(spec: TrainSpec, device: torch.device) -> str:
    """Where the waveform augmentation runs: ``augment.backend``, ``"auto"`` resolved for ``device``.

    Auto is the batched device path on CUDA and the per-clip audiomentations
    path on a CPU, where it measured faster (benchmarks/bench_augment.py).
    """
    backend = spec.augment.backend
    if backend == "auto":
        return "device" if device.type == "cuda" else "cpu"
    return backend


def resolve_loader(spec: TrainSpec, device: torch.device) -> LoaderSettings:
    """The spec's loader settings for ``device`` and this host, every ``"auto"`` resolved."""
    t, a = spec.train, spec.augment
    return loader_settings(num_workers=t.num_workers, pin_memory=t.pin_memory,
                           persistent_workers=t.persistent_workers, prefetch_factor=t.prefetch_factor,
                           device_type=device.type, cpu_augment=augment_backend(spec, device) == "cpu" and a.any_wave())


def wave_augmenters(spec: TrainSpec, device: torch.device) -> tuple[WaveAugment | None, BatchWaveAugment | None]:
    """``(per-clip, batched)`` waveform augmentation of a spec on ``device``: at most one is set."""
    a = spec.augment
    if not a.any_wave():
        return None, None
    kw = dict(sample_rate=spec.audio.sample_rate, gain_db=a.gain_db, gain_p=a.gain_p,
              noise_snr_db=tuple(a.noise_snr_db), noise_p=a.noise_p, noise_colors=tuple(a.noise_colors),
              shift_s=a.shift_s, shift_p=a.shift_p, pitch_semitones=a.pitch_semitones, pitch_p=a.pitch_p,
              stretch=tuple(a.stretch), stretch_p=a.stretch_p)
    if augment_backend(spec, device) == "cpu":
        return WaveAugment(**kw), None
    return None, BatchWaveAugment(**kw)


def loss_from_spec(spec: TrainSpec, counts: np.ndarray, device: torch.device) -> torch.nn.Module:
    """The spec's training loss on ``device``; with ``loss.class_weights``, weighted by the class ``counts``."""
    weights = (torch.as_tensor(class_weights_from_counts(counts), dtype=torch.float32, device=device)
               if spec.loss.class_weights else None)
    return build_loss(spec.loss.name, label_smoothing=spec.loss.label_smoothing, class_weights=weights,
                      gce_q=spec.loss.gce_q, sce_alpha=spec.loss.sce_alpha, sce_beta=spec.loss.sce_beta,
                      focal_gamma=spec.loss.focal_gamma, lsoft_beta=spec.loss.lsoft_beta)



def make_loaders(spec: TrainSpec, clips: TrainingClips, train_idx: np.ndarray, val_idx: np.ndarray, crop: int,
                 batch_size: int, wave_aug, device: torch.device, fold: int, *,
                 loader: LoaderSettings | None = None) -> tuple[DataLoader, DataLoader]:
    """A fold's training and validation loaders.

    ``train_idx`` and ``val_idx`` are curated clip numbers; the training
    loader adds every noisy clip of ``clips`` (with its loss weight), the
    validation loader never does. Batches are ``(wave, labels, weights)``.
    ``wave_aug`` is the per-clip (CPU) augmentation, or None; ``loader``
    the resolved loader settings (default: resolved from the spec).
    """
    t = spec.train
    seed = t.seed + fold
    train_clips = clips.train_indices(train_idx)
    train_ds = CropDataset(clips.cache, train_clips, clips.Y, crop_samples=crop, train=True,
                           loop_pad_prob=spec.audio.loop_pad_prob, seed=seed, wave_augment=wave_aug,
                           sample_weights=clips.weights)
    val_ds = CropDataset(clips.cache, val_idx, clips.Y, crop_samples=crop, train=False)
    n_draws = t.steps_per_epoch * batch_size if t.steps_per_epoch else len(train_clips)
    if t.balanced_sampler:
        sampler = BalancedClassSampler(clips.Y[train_clips], num_samples=n_draws, max_oversample=t.max_oversample,
                                       seed=seed)
    else:
        generator = torch.Generator().manual_seed(seed)
        sampler = RandomSampler(train_ds, replacement=bool(t.steps_per_epoch), num_samples=n_draws,
                                generator=generator)
    extra = [int(round(s * spec.audio.sample_rate)) for s in spec.audio.multiscale_crops]
    batch_sampler = MultiScaleBatchSampler(sampler, batch_size, base_crop=crop, extra_crops=extra,
                                           prob=spec.audio.multiscale_prob, seed=seed,
                                           drop_last=len(train_clips) > batch_size)
    loader_kw = (loader or resolve_loader(spec, device)).dataloader_kwargs()
    train_loader = DataLoader(train_ds, batch_sampler=batch_sampler, **loader_kw)
    val_loader = DataLoader(val_ds, batch_size=batch_size, shuffle=False, **loader_kw)
    return train_loader, val_loader
