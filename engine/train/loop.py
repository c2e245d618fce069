"""Training one fold: epochs, validation LWLRAP, early stopping, checkpoints, resume.

Per epoch: waveform crops from the DataLoader -> waveform augmentation on
the device (batched; its generator is derived from the step) -> log-mel
frontend on the device -> SpecAugment -> MixUp -> model -> loss (smoothing, class and sample
weights) -> AdamW step under autocast with gradient clipping -> warmup-cosine
schedule. Validation uses centre crops. The best epoch (by validation
LWLRAP) is saved as ``best.pt``; ``last.pt`` holds everything needed to
resume the fold after an interruption, and ``epochs.jsonl`` every finished
epoch's record (written before ``last.pt`` moves past it).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from engine.atomic import atomic_write, load_npy, save_npy
from engine.features.augment import mixup
from engine.features.device_augment import batch_generator
from engine.metrics import lwlrap
from engine.models.tagger import Tagger
from engine.runs.folder import FolderNotOwned, RunOwner
from engine.runs.recorder import EpochRecord, journal_epoch
from engine.train.schedule import (EarlyStopping, autocast_context, build_optimizer, clip_gradients,
                                   make_grad_scaler, warmup_cosine)
from engine.train.system import EpochSystem, system_fields


@dataclass
class FoldResult:
    """The outcome of a fold: best score and epoch, and validation predictions of the best model.

    ``val_pred`` is None only when an ``early_stopping`` carried in from an
    earlier curriculum stage saw no better epoch in this call (no ``best.pt``
    was written).
    """

    best_lwlrap: float
    best_epoch: int | None
    val_pred: np.ndarray | None
    epochs_run: int             # epochs trained in all (resumed ones included)
    stopped_early: bool = False   # early stopping ended the fold before its last epoch


def save_atomic(obj: object, path: Path) -> None:
    """``torch.save`` through the engine's one atomic writer (temp file, fsync, rename)."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


#: The resume file before the newest one, kept so a damaged ``last.pt`` costs one epoch, not the fold.
PREVIOUS_LAST = "last.prev.pt"


def _loader_generators(loader: DataLoader) -> list[torch.Generator]:
    """The torch generators that decide a loader's order: its own, its sampler's and its batch sampler's.

    A ``RandomSampler`` draws each epoch's permutation from its generator, so
    its state (not its seed) is what a resumed fold must continue from.
    """
    found: list[torch.Generator] = []
    seen: set[int] = set()
    stack = [loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)]
    while stack:
        obj = stack.pop(0)
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        gen = getattr(obj, "generator", None)
        if isinstance(gen, torch.Generator) and id(gen) not in {id(g) for g in found}:
            found.append(gen)
        inner = getattr(obj, "sampler", None)
        if inner is not None and inner is not obj:
            stack.append(inner)
    return found


def random_state(loader: DataLoader, generator: torch.Generator) -> dict:
    """Every random state that decides what the next epoch does: torch CPU (and CUDA), Python, numpy,
    the MixUp generator and the loader's sampler generators."""
    state = {"torch_rng": torch.get_rng_state(), "generator": generator.get_state(),
             "python_rng": random.getstate(), "numpy_rng": np.random.get_state(),
             "loader_generators": [g.get_state() for g in _loader_generators(loader)]}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict, loader: DataLoader, generator: torch.Generator) -> None:
    """Put back what :func:`random_state` saved (states missing from older files are left as they are)."""
    torch.set_rng_state(state["torch_rng"])
    generator.set_state(state["generator"])
    if "python_rng" in state:
        random.setstate(state["python_rng"])
    if "numpy_rng" in state:
        np.random.set_state(state["numpy_rng"])
    for gen, saved in zip(_loader_generators(loader), state.get("loader_generators", [])):
        gen.set_state(saved)
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def read_resume_state(fold_dir: Path, log: Callable[[str], None] = print,
                      owner: RunOwner | None = None) -> dict | None:
    """The newest readable resume state of a fold: ``last.pt``, else ``last.prev.pt``, else None (restart).

    A damaged file is named in the log with what is done instead. The files
    hold optimiser and random states (Python objects), so they are loaded with
    ``weights_only=False``; they are only ever written by this code, into the
    run's own folder. With ``owner`` (the run folder's marker), a state saved
    for another database, run or config hash is refused
    (:class:`~engine.runs.folder.FolderNotOwned` naming the file and both);
    one saved before checkpoints carried an owner is taken as the folder's.
    """
    for name in ("last.pt", PREVIOUS_LAST):
        path = fold_dir / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
                raise ValueError("not a resume state")
        except Exception as err:  # noqa: BLE001 - any unreadable resume file is handled the same way
            fallback = fold_dir / PREVIOUS_LAST
            then = (f"resuming from {fallback}" if name == "last.pt" and fallback.exists()
                    else "restarting the fold from its first epoch")
            log(f"{path}: damaged resume file ({type(err).__name__}: {str(err).splitlines()[0][:120]}); {then}")
            continue
        check_owner(state, owner, path)
        return state
    return None


def check_owner(state: dict, owner: RunOwner | None, path: Path) -> None:
    """Refuse a checkpoint whose ``owner`` (database, run, config hash) is not ``owner``, naming both."""
    if owner is None or not isinstance(state.get("owner"), dict):
        return
    found = RunOwner.from_dict(state["owner"])
    problem = found.mismatch(owner)
    if problem:
        raise FolderNotOwned(f"{path}: this checkpoint was saved by {found.describe()}"
                             f"{f', config hash {found.config_hash}' if found.config_hash else ''}, not by "
                             f"{owner.describe()}{f', config hash {owner.config_hash}' if owner.config_hash else ''}"
                             f" ({problem}); refusing to resume from it. Delete it to train the fold from its "
                             "first epoch, or queue a new job")


@torch.no_grad()
def predict(tagger: Tagger, loader: DataLoader, device: torch.device, loss_fn: nn.Module | None = None,
            *, amp: bool = False, cpu_bf16: bool = False) -> tuple[np.ndarray, float]:
    """Sigmoid probabilities for every clip of the loader and the mean loss (NaN without loss_fn)."""
    tagger.eval()
    preds, losses, n = [], 0.0, 0
    for wave, y, _w in loader:
        wave = wave.to(device, non_blocking=True)
        with autocast_context(device, amp=amp, cpu_bf16=cpu_bf16):
            logits = tagger(wave)
        logits = logits.float()
        if loss_fn is not None and y.numel():
            losses += float(loss_fn(logits, y.to(device))) * len(wave)
            n += len(wave)
        preds.append(torch.sigmoid(logits).cpu().numpy())
    return np.concatenate(preds), (losses / n if n else float("nan"))


def train_fold(tagger: Tagger, *, train_loader: DataLoader, val_loader: DataLoader, val_truth: np.ndarray,
               loss_fn: nn.Module, device: torch.device, fold_dir: Path, epochs: int, patience: int,
               head_lr: float, encoder_lr: float, weight_decay: float, betas: tuple[float, float],
               warmup_epochs: float, warmup_steps: int, min_lr_ratio: float, grad_clip: float,
               amp: bool, cpu_bf16: bool, mixup_p: float, mixup_alpha: float, seed: int,
               on_epoch: Callable[[EpochRecord], None] | None = None,
               on_step: Callable[[int, int], None] | None = None,
               log: Callable[[str], None] = print,
               early_stopping: EarlyStopping | None = None,
               wave_augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
               augment_key: tuple[int, int] = (0, 0), fold: int = 0, tag: str = "",
               epoch_offset: int = 0, owner: RunOwner | None = None) -> FoldResult:
    """Train one fold to early stopping, resuming from ``fold_dir/last.pt`` when present.

    Resuming restores every state that decides what comes next (model,
    optimiser, schedule, scaler, early stopping, and the torch, CUDA, Python,
    numpy, MixUp and sampler random states), so an interrupted fold trains
    exactly as an uninterrupted one on the same device. A damaged ``last.pt``
    falls back on ``last.prev.pt`` (one epoch older), then on a restart; the
    log names the file.

    ``early_stopping`` continues a stopper from an earlier call (a curriculum
    stage carries the fold's best score and patience into the next stage);
    by default a fresh one with ``patience`` is used. With a carried stopper a
    call may see no better epoch: then no ``best.pt`` is written and the
    result's ``val_pred`` is None.

    ``wave_augment(wave, generator)`` augments each training batch on the
    device; its generator comes from ``(*augment_key, epoch, step)``
    (``augment_key`` = (seed, fold)), so a resumed epoch draws what an
    uninterrupted one would without any state to save.

    ``on_epoch`` receives each finished epoch as the record the store keeps:
    ``fold`` and ``tag`` (a curriculum stage) label it, and its epoch is
    numbered on from ``epoch_offset`` (the fold's earlier stages).

    ``owner`` (the run folder's marker) is saved in ``last.pt`` and
    ``best.pt``; a resume state saved for another owner is refused.
    """
    fold_dir.mkdir(parents=True, exist_ok=True)
    tagger.to(device)
    optimizer = build_optimizer(tagger.model, head_lr=head_lr, encoder_lr=encoder_lr,
                                weight_decay=weight_decay, betas=tuple(betas))
    steps_per_epoch = len(train_loader)
    total = max(1, steps_per_epoch * epochs)
    warm = warmup_steps if warmup_steps > 0 else int(round(warmup_epochs * steps_per_epoch))
    scheduler = warmup_cosine(optimizer, warmup_steps=min(warm, total - 1), total_steps=total,
                              min_lr_ratio=min_lr_ratio)
    scaler = make_grad_scaler(device, amp)
    stopper = early_stopping if early_stopping is not None else EarlyStopping(patience=patience, mode="max")
    generator = torch.Generator().manual_seed(seed)
    start_epoch = 0

    last_path, best_path = fold_dir / "last.pt", fold_dir / "best.pt"
    state = read_resume_state(fold_dir, log=log, owner=owner)
    stamp = {"owner": owner.to_dict()} if owner is not None else {}
    if state is not None:
        tagger.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        stopper.load_state_dict(state["early_stopping"])
        restore_random_state(state, train_loader, generator)
        start_epoch = state["epoch"] + 1
        log(f"resuming at epoch {start_epoch} (best so far {stopper.best:.4f})")

    last_epoch = start_epoch - 1
    system = EpochSystem(device)
    for epoch in range(start_epoch, epochs):
        if stopper.should_stop:
            break
        last_epoch = epoch
        for obj in (train_loader.dataset, train_loader.sampler, getattr(train_loader, "batch_sampler", None)):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        tagger.train()
        system.start()
        t0 = time.perf_counter()
        running, seen = 0.0, 0
        for step, (wave, y, w) in enumerate(train_loader):
            wave, y, w = wave.to(device, non_blocking=True), y.to(device), w.to(device)
            if wave_augment is not None:
                wave = wave_augment(wave, batch_generator(*augment_key, epoch, step))
            with autocast_context(device, amp=amp, cpu_bf16=cpu_bf16):
                x = tagger.features(wave)
                x, y, w = mixup(x, y, alpha=mixup_alpha, p=mixup_p, generator=generator, sample_weights=w)
                logits = tagger.model(x)
            loss = loss_fn(logits.float(), y, sample_weights=w)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {float(loss)} at epoch {epoch} step {step}; "
                                         "lower the learning rate or disable AMP")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip > 0:
                scaler.unscale_(optimizer)
                clip_gradients(tagger.model, grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            system.tick()
            running += float(loss.detach()) * len(wave)
            seen += len(wave)
            if on_step is not None:
                on_step(epoch * steps_per_epoch + step + 1, total)
        train_seconds = time.perf_counter() - t0
        val_pred, val_loss = predict(tagger, val_loader, device, loss_fn, amp=amp, cpu_bf16=cpu_bf16)
        score = lwlrap(val_truth, val_pred)
        is_best = stopper.step(score)
        if is_best:
            save_atomic({"model": tagger.model.state_dict(), "epoch": epoch, "val_lwlrap": score,
                         "mel_mean": tagger.frontend.mel_mean.cpu(), "mel_std": tagger.frontend.mel_std.cpu(), **stamp},
                        best_path)
            save_npy(fold_dir / "val_pred.npy", val_pred)
        record = EpochRecord(fold=fold, epoch=epoch_offset + epoch, train_loss=running / max(seen, 1),
                             val_loss=val_loss, val_lwlrap=score, lr=optimizer.param_groups[0]["lr"],
                             seconds=time.perf_counter() - t0,
                             clips_per_sec=seen / train_seconds if train_seconds > 0 else math.nan,
                             is_best=is_best, tag=tag, **system_fields(system.finish()))
        # The epoch is recorded before its resume state is saved: a kill in between re-runs the
        # epoch, which (every random state being restored) recomputes and replaces the same row.
        if on_epoch is not None:
            on_epoch(record)
        # A record sent to a head that dies before writing it would be lost once last.pt moves past the
        # epoch: the fold's journal keeps it, and a resumed fold sends it again (recorder.recovered).
        journal_epoch(fold_dir, record)
        state = {"model": tagger.model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                 "early_stopping": stopper.state_dict(), "epoch": epoch,
                 **random_state(train_loader, generator), **stamp}
        if last_path.exists():
            os.replace(last_path, fold_dir / PREVIOUS_LAST)
        save_atomic(state, last_path)
    best_pred = fold_dir / "val_pred.npy"
    best = (load_npy(best_pred, remedy=f"delete {fold_dir} and queue the job again to retrain the fold")
            if best_pred.exists() else None)
    return FoldResult(best_lwlrap=float(stopper.best), best_epoch=int(stopper.best_epoch),
                      val_pred=best, epochs_run=last_epoch + 1, stopped_early=last_epoch + 1 < epochs)


def is_oom(err: BaseException) -> bool:
    """True for out-of-memory errors from CUDA or the CPU allocator."""
    if torch.cuda.is_available() and isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate" in text)


def find_batch_size(tagger: Tagger, n_classes: int, crop_samples: int, device: torch.device, *,
                    start: int = 4, limit: int | None = None) -> int:
    """The largest batch (doubling from ``start``) whose forward + backward fits, found by trying.

    On a CPU the search stops at 64 (``limit``): beyond that the kernel's
    out-of-memory killer, not an exception, would answer.

    The trial steps run in training mode, which would move BatchNorm running
    statistics and draw from the torch random generators (dropout,
    SpecAugment). The search leaves no trace: the state dict (BatchNorm
    buffers included), the gradients, the train/eval mode of every module and
    the CPU and CUDA random states are as they were before. Only the device
    changes: the tagger ends up on ``device``.
    """
    limit = limit or (1024 if device.type == "cuda" else 64)
    # Saved on the CPU so that, on a GPU, the copy does not shrink the memory being measured.
    saved_state = {k: v.detach().to("cpu", copy=True) for k, v in tagger.state_dict().items()}
    saved_grads = {name: p.grad.detach().to("cpu", copy=True)
                   for name, p in tagger.named_parameters() if p.grad is not None}
    saved_modes = {module: module.training for module in tagger.modules()}
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            return _largest_batch(tagger, n_classes, crop_samples, device, start=start, limit=limit)
    finally:
        tagger.load_state_dict(saved_state)
        for name, p in tagger.named_parameters():
            p.grad = saved_grads[name].to(p.device) if name in saved_grads else None
        for module, mode in saved_modes.items():
            module.training = mode


def _largest_batch(tagger: Tagger, n_classes: int, crop_samples: int, device: torch.device, *,
                   start: int, limit: int) -> int:
    """The doubling search of :func:`find_batch_size`; changes the tagger's state as it goes."""
    tagger.to(device).train()
    tagger.zero_grad(set_to_none=True)
    best, size = 0, start
    while size <= limit:
        try:
            wave = torch.randn(size, crop_samples, device=device) * 0.1
            logits = tagger(wave)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros(size, n_classes, device=device))
            loss.backward()
            best = size
        except Exception as err:  # noqa: BLE001 - only out-of-memory ends the search quietly
            if not is_oom(err):
                raise
            break
        finally:
            tagger.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        size *= 2
    if best == 0:
        raise RuntimeError(f"not even a batch of {start} fits on {device}; lower audio.crop_seconds")
    return best
