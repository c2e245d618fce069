"""The ``train`` job: k-fold cross-validated training of one model configuration.

Records, as it goes: every epoch of every fold (train loss, val loss, val
LWLRAP, lr, seconds, clips/s), each fold's best LWLRAP and per-class LRAP,
then the out-of-fold LWLRAP over all curated clips and its per-class LRAP.
Artifacts under ``runs/<run_id>/``: ``config.json``, ``mel_stats.npz``,
``fold<k>/best.pt`` (the checkpoint used later), ``fold<k>/last.pt`` (resume),
``oof.npy`` (curated CSV order; NaN rows for folds not trained).
The recorded config is the resolved one: ``train.batch_size = "auto"`` is
replaced by the size the search chose (``config.json`` also keeps what was
asked for).
A requeued job resumes: finished folds are kept, an interrupted fold
continues from its last epoch with the batch size chosen at the start.
With ``loss.noisy_weight > 0`` the noisy set joins every fold's training set
(never validation) with that per-clip loss weight.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from engine.data.cache import decode_workers, host_cores
from engine.data.dataset import ConcatCache, CropDataset, LoaderSettings, MultiScaleBatchSampler, loader_settings
from engine.data.sampler import BalancedClassSampler
from engine.errors import CheckpointError, ConfigError
from engine.features.augment import SpecAugment, WaveAugment
from engine.features.device_augment import BatchWaveAugment
from engine.features.frontend import LogMelFrontend, compute_mel_stats
from engine.jobs.common import build_cache, cache_dir_for, configure_threads, pick_device, prepare_dataset, seed_everything
from engine.jobs.context import JobContext, environment_record, git_commit, write_json
from engine.metrics import lwlrap, per_class_lwlrap
from engine.models.registry import build_model
from engine.specs import TrainSpec, spec_from_json, spec_hash, to_dict
from engine.store import OOF
from engine.train.losses import build_loss, class_weights_from_counts
from engine.train.loop import FoldResult, Tagger, find_batch_size, predict, save_atomic, train_fold


def make_frontend(spec: TrainSpec) -> LogMelFrontend:
    """The log-mel frontend a spec describes (statistics still unset)."""
    f = spec.features
    frontend = LogMelFrontend(sample_rate=spec.audio.sample_rate, n_fft=f.n_fft, hop_length=f.hop_length,
                              win_length=f.win_length, n_mels=f.n_mels, fmin=f.fmin, fmax=f.fmax, clamp=f.clamp)
    frontend.standardise = f.standardise
    return frontend


def make_model(spec: TrainSpec, n_classes: int, log=print):
    """Build the model and load pretrained weights as the spec says."""
    m = spec.model
    model = _build(spec, n_classes)
    if m.arch == "small" or m.pretrained == "none":
        return model
    from engine.models.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(m.arch, m.checkpoint or None)
    if path is None or not path.exists():
        published = {"cnn14": "Cnn14_mAP=0.431.pth", "resnet38": "ResNet38_mAP=0.434.pth"}[m.arch]
        where = m.checkpoint or f"$FSAT_PANNS_DIR/{published}"
        if m.pretrained == "required":
            raise CheckpointError(
                f"model.checkpoint: no PANNs checkpoint at {where}. Put {published} there (or set "
                "FSAT_PANNS_DIR to its folder, or model.checkpoint to its path), or set "
                "model.pretrained = \"optional\" to train from scratch when it is absent")
        log(f"no PANNs checkpoint at {where}: training {m.arch} from scratch (model.pretrained = optional)")
        return model
    info = model.load_pretrained(path, init_head_from_audioset=m.init_head_from_audioset)
    log(f"loaded {info['loaded']} pretrained tensors from {path}" +
        "".join(f"; {note}" for note in info.get("notes", [])))
    return model


def _build(spec: TrainSpec, n_classes: int):
    """The spec's architecture, freshly initialised."""
    m = spec.model
    return build_model(m.arch, n_classes=n_classes, n_mels=spec.features.n_mels, dropout=m.dropout,
                       width=m.width, sample_rate=spec.audio.sample_rate, hop_length=spec.features.hop_length)


def _spec_augment(spec: TrainSpec) -> SpecAugment | None:
    a = spec.augment
    return SpecAugment(freq_masks=a.freq_masks, freq_width=a.freq_width, time_masks=a.time_masks,
                       time_frac=a.time_frac, p=a.specaug_p) if a.specaug_p > 0 else None


def resolve_batch_size(spec: TrainSpec, frontend: LogMelFrontend, n_classes: int, device: torch.device, *,
                       recorded: dict | None = None, log=print) -> int:
    """The batch size to train with.

    A number in the spec is used as is. For ``"auto"``: the size recorded in
    ``recorded`` (the config of this run when it started, so a resumed run
    keeps its steps per epoch), else the largest batch of the longest crop
    (multi-scale crops included) whose forward + backward fits on ``device``,
    tried on a freshly built model of the spec's architecture.
    """
    if spec.train.batch_size != "auto":
        return int(spec.train.batch_size)
    before = ((recorded or {}).get("train") or {}).get("batch_size")
    if isinstance(before, int) and not isinstance(before, bool) and before > 0:
        log(f"batch_size auto -> {before} (chosen when this run started)")
        return before
    longest = max([spec.audio.crop_seconds, *spec.audio.multiscale_crops])
    crop = int(round(longest * spec.audio.sample_rate))
    # Building the probe model draws initial weights; the folds' draws must not depend on it.
    with torch.random.fork_rng(devices=[]):
        tagger = Tagger(frontend, _build(spec, n_classes), _spec_augment(spec))
    size = find_batch_size(tagger, n_classes, crop, device)
    del tagger
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log(f"batch_size auto -> {size} (the largest batch of {longest:g} s crops that fits on {device})")
    return size


@dataclass
class TrainingClips:
    """The clips a fold may train on: the curated cache, then (optionally) the noisy one.

    Clip numbers ``0 .. n_curated - 1`` are the curated clips in CSV order (the
    ones folds split); the noisy clips follow. ``weights`` is the per-clip loss
    weight (curated 1, noisy ``loss.noisy_weight``), None without noisy clips.
    """

    cache: object
    Y: np.ndarray
    n_curated: int
    weights: np.ndarray | None = None

    @classmethod
    def build(cls, curated_cache, curated_Y: np.ndarray, noisy_cache=None, noisy_Y: np.ndarray | None = None,
              noisy_weight: float = 0.0) -> TrainingClips:
        """Curated clips alone, or curated followed by noisy clips weighted ``noisy_weight``."""
        n = len(curated_Y)
        if noisy_cache is None or noisy_weight <= 0:
            return cls(cache=curated_cache, Y=np.asarray(curated_Y, dtype=np.float32), n_curated=n)
        noisy_Y = np.asarray(noisy_Y, dtype=np.float32)
        weights = np.concatenate([np.ones(n, dtype=np.float32),
                                  np.full(len(noisy_Y), noisy_weight, dtype=np.float32)])
        return cls(cache=ConcatCache([curated_cache, noisy_cache]),
                   Y=np.concatenate([np.asarray(curated_Y, dtype=np.float32), noisy_Y]), n_curated=n,
                   weights=weights)

    @property
    def n_noisy(self) -> int:
        return len(self.Y) - self.n_curated

    def train_indices(self, curated_train_idx: np.ndarray) -> np.ndarray:
        """A fold's training clips: its curated training clips, then every noisy clip."""
        return np.concatenate([np.asarray(curated_train_idx, dtype=np.int64),
                               np.arange(self.n_curated, len(self.Y), dtype=np.int64)])


def run(ctx: JobContext) -> str:
    """Train every requested fold, record scores, write artifacts; returns a summary message."""
    spec: TrainSpec = spec_from_json("train", ctx.spec)
    store, run_id, run_dir = ctx.store, ctx.run_id, ctx.run_dir
    configure_threads()
    device = pick_device(spec.train.device)
    seed_everything(spec.train.seed)
    ctx.progress(0.0, "loading dataset")
    data = prepare_dataset(store, spec.data.root, n_folds=spec.train.n_folds, fold_seed=spec.train.fold_seed)
    classes, Y = data.classes, data.layout.curated.Y
    noisy_weight = spec.loss.noisy_weight
    if noisy_weight > 0 and data.layout.noisy is None:
        raise ConfigError(f"trains on the noisy set, but {spec.data.root} has no train_noisy.csv with its audio "
                          "(train_noisy/ or train_noisy.zip); add them or set loss.noisy_weight = 0",
                          field="loss.noisy_weight")
    frontend = make_frontend(spec)
    previous = store.get_run(run_id)
    if spec.train.batch_size == "auto":
        ctx.progress(0.0, "batch_size = auto: trying batch sizes")
    batch_size = resolve_batch_size(spec, frontend, len(classes), device,
                                    recorded=previous["config"] if previous else None, log=ctx.log)
    loader = resolve_loader(spec, device)
    # What is recorded is what runs: "auto" becomes the chosen size and loader settings.
    resolved = copy.deepcopy(spec)
    resolved.train.batch_size = batch_size
    requested = {f"train.{k}": "auto" for k in ("batch_size", *_AUTO_LOADER_FIELDS)
                 if getattr(spec.train, k) == "auto"}
    resolved.train.num_workers = loader.num_workers
    resolved.train.pin_memory = loader.pin_memory
    resolved.train.persistent_workers = loader.persistent_workers
    if loader.prefetch_factor is not None:
        resolved.train.prefetch_factor = loader.prefetch_factor
    resolved.train.decode_workers = decode_workers(spec.train.decode_workers)
    if spec.augment.backend == "auto":
        requested["augment.backend"] = "auto"
    resolved.augment.backend = augment_backend(spec, device)
    config = to_dict(resolved)
    new = store.create_run(run_id, kind="train", job_id=ctx.job.id, dataset_id=data.dataset_id,
                           name=spec.name or run_id, model=_model_label(spec), config=config,
                           config_hash=spec_hash(resolved), seed=spec.train.seed, device=str(device),
                           versions=environment_record(), git_commit=git_commit(), run_dir=str(run_dir))
    record = {"kind": "train", "run_id": run_id, "config_hash": spec_hash(resolved), "spec": config}
    if requested:
        record["requested"] = requested
    record["loader"] = {**dataclasses.asdict(loader), "host_cores": host_cores(), "device": device.type}
    write_json(run_dir / "config.json", record)
    ctx.log(f"{'new run' if new else 'resuming run'} {run_id} on {device}; {len(Y)} curated clips, "
            f"{len(classes)} classes")

    cache_dir = cache_dir_for(spec.data.root, spec.data.cache_dir)
    n_decode = resolved.train.decode_workers
    cache = build_cache(ctx, data.layout.curated, sample_rate=spec.audio.sample_rate, cache_dir=cache_dir,
                        workers=n_decode)
    noisy_cache = None
    if noisy_weight > 0:
        noisy_cache = build_cache(ctx, data.layout.noisy, sample_rate=spec.audio.sample_rate, cache_dir=cache_dir,
                                  start=0.05, span=0.02, workers=n_decode)
    clips = TrainingClips.build(cache, Y, noisy_cache, data.layout.noisy.Y if noisy_cache is not None else None,
                                noisy_weight)
    if clips.n_noisy:
        ctx.log(f"training on the {clips.n_noisy} noisy clips too (loss weight {noisy_weight:g}), "
                "never validating on them")
    stats_path = run_dir / "mel_stats.npz"
    if stats_path.exists():
        stats = np.load(stats_path)
        mean, std = stats["mean"], stats["std"]
    else:
        # Statistics over all curated clips: label-free, so no leakage across folds.
        ctx.progress(0.07, "computing log-mel statistics")
        mean, std = compute_mel_stats(frontend, (cache.get(i) for i in range(len(cache))), device=str(device))
        np.savez(stats_path, mean=mean, std=std)
    frontend.set_stats(mean, std)

    crop = int(round(spec.audio.crop_seconds * spec.audio.sample_rate))
    counts = Y.sum(axis=0)
    loss_fn = build_loss(spec.loss.name, label_smoothing=spec.loss.label_smoothing,
                         class_weights=(torch.as_tensor(class_weights_from_counts(counts), dtype=torch.float32,
                                                        device=device) if spec.loss.class_weights else None),
                         gce_q=spec.loss.gce_q, sce_alpha=spec.loss.sce_alpha, sce_beta=spec.loss.sce_beta,
                         focal_gamma=spec.loss.focal_gamma)
    a = spec.augment
    wave_aug, device_aug = wave_augmenters(spec, device)

    folds_to_run = spec.train.fold_list()
    n = len(Y)
    oof_path = run_dir / "oof.npy"
    oof = np.load(oof_path) if oof_path.exists() else np.full((n, len(classes)), np.nan, dtype=np.float32)
    done_folds = {r["fold"] for r in store.fold_scores(run_id)}
    t_run = time.perf_counter()

    for i, fold in enumerate(folds_to_run):
        fold_dir = run_dir / f"fold{fold}"
        val_idx = np.flatnonzero(data.folds == fold)
        train_idx = np.flatnonzero(data.folds != fold)
        if fold in done_folds and (fold_dir / "best.pt").exists() and not np.isnan(oof[val_idx]).any():
            ctx.log(f"fold {fold}: already finished, kept")
            continue
        seed_everything(spec.train.seed + fold)
        model = make_model(spec, len(classes), log=ctx.log)
        tagger = Tagger(frontend, model, _spec_augment(spec))
        train_loader, val_loader = make_loaders(spec, clips, train_idx, val_idx, crop, batch_size, wave_aug,
                                                device, fold, loader=loader)

        def on_step(step: int, total: int, _i: int = i, _fold: int = fold) -> None:
            frac = 0.08 + 0.9 * (_i + step / total) / len(folds_to_run)
            ctx.progress(frac, f"fold {_fold} step {step}/{total}")

        def on_epoch(r, _fold: int = fold) -> None:
            store.record_epoch(run_id, _fold, r.epoch, train_loss=r.train_loss, val_loss=r.val_loss,
                               val_lwlrap=r.val_lwlrap, lr=r.lr, seconds=r.seconds, clips_per_sec=r.clips_per_sec)
            ctx.log(f"fold {_fold} epoch {r.epoch}: train {r.train_loss:.4f} val {r.val_loss:.4f} "
                    f"lwlrap {r.val_lwlrap:.4f}{' *' if r.is_best else ''} ({r.clips_per_sec:.1f} clips/s)")

        o = spec.optim
        if spec.train.epochs == 0:
            result = score_untrained(tagger, val_loader, Y[val_idx], device, fold_dir)
        else:
            result = train_fold(tagger, train_loader=train_loader, val_loader=val_loader, val_truth=Y[val_idx],
                                loss_fn=loss_fn, device=device, fold_dir=fold_dir, epochs=spec.train.epochs,
                                patience=spec.train.patience, head_lr=o.head_lr, encoder_lr=o.encoder_lr,
                                weight_decay=o.weight_decay, betas=tuple(o.betas), warmup_epochs=o.warmup_epochs,
                                warmup_steps=o.warmup_steps, min_lr_ratio=o.min_lr_ratio, grad_clip=o.grad_clip,
                                amp=o.amp, cpu_bf16=o.cpu_bf16, mixup_p=a.mixup_p, mixup_alpha=a.mixup_alpha,
                                seed=spec.train.seed + fold, on_epoch=on_epoch, on_step=on_step,
                                wave_augment=device_aug, augment_key=(spec.train.seed, fold))
        oof[val_idx] = result.val_pred
        np.save(oof_path, oof)
        store.record_fold(run_id, fold, lwlrap=result.best_lwlrap, best_epoch=result.best_epoch,
                          n_val=len(val_idx))
        per_class, weights = per_class_lwlrap(Y[val_idx], result.val_pred)
        store.record_class_scores(run_id, fold, classes, per_class, weights, Y[val_idx].sum(axis=0))
        ctx.log(f"fold {fold}: best lwlrap {result.best_lwlrap:.4f} at epoch {result.best_epoch}")

    covered = ~np.isnan(oof).any(axis=1)
    cv = lwlrap(Y[covered], oof[covered])
    per_class, weights = per_class_lwlrap(Y[covered], oof[covered])
    store.record_class_scores(run_id, OOF, classes, per_class, weights, Y[covered].sum(axis=0))
    store.finish_run(run_id, status="done", cv_lwlrap=cv)
    ctx.log(f"out-of-fold lwlrap {cv:.4f} over {int(covered.sum())} clips "
            f"({time.perf_counter() - t_run:.0f}s)")
    return f"CV lwlrap {cv:.4f}"


def score_untrained(tagger: Tagger, val_loader: DataLoader, val_truth: np.ndarray, device: torch.device,
                    fold_dir) -> FoldResult:
    """``train.epochs = 0``: keep the initial (pretrained) model as the fold's checkpoint and score it.

    With a PANNs checkpoint and the head initialised from the AudioSet rows this
    is a zero-shot run, ready for inference without training.
    """
    fold_dir.mkdir(parents=True, exist_ok=True)
    tagger.to(device)
    val_pred, _ = predict(tagger, val_loader, device)
    save_atomic({"model": tagger.model.state_dict(), "epoch": -1, "val_lwlrap": lwlrap(val_truth, val_pred),
                 "mel_mean": tagger.frontend.mel_mean.cpu(), "mel_std": tagger.frontend.mel_std.cpu()},
                fold_dir / "best.pt")
    np.save(fold_dir / "val_pred.npy", val_pred)
    return FoldResult(best_lwlrap=lwlrap(val_truth, val_pred), best_epoch=None, val_pred=val_pred, epochs_run=0)


def _model_label(spec: TrainSpec) -> str:
    label = f"{spec.model.arch}-{spec.features.n_mels}mel"
    return label


_AUTO_LOADER_FIELDS = ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor", "decode_workers")


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
