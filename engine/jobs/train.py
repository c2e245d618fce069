"""The ``train`` job: k-fold cross-validated training of one model configuration.

Records, as it goes: every epoch of every fold (train loss, val loss, val
LWLRAP, lr, seconds, clips/s), each fold's best LWLRAP and per-class LRAP,
then the out-of-fold LWLRAP over all curated clips and its per-class LRAP.
Artifacts under ``runs/<run_id>/`` (see ``engine.runs.folder``): ``config.json``,
``mel_stats.npz``, ``fold<k>/best.pt`` (the checkpoint used later),
``fold<k>/last.pt`` and ``last.prev.pt`` (resume), ``fold<k>/val_pred.npy``,
``oof.npy`` (curated CSV order; NaN rows for folds not trained).
The recorded config is the resolved one: ``train.batch_size = "auto"`` is
replaced by the size the search chose, the loader settings and decode
threads by what was chosen for this device and host, ``augment.backend`` by
where the augmentation runs (``config.json`` also keeps what was asked for,
and a ``loader`` record with the host's cores).
A requeued job resumes: finished folds are kept (their out-of-fold rows come
back from ``fold<k>/val_pred.npy``), an interrupted fold continues from its
last epoch with the batch size chosen at the start and every random state
restored, so it ends as an uninterrupted fold would.
With ``loss.noisy_weight > 0`` the noisy set joins every fold's training set
(never validation) with that per-clip loss weight.

The fold seam
    :func:`train_fold_task` is one fold's work as a function of picklable
    inputs (:class:`FoldTask`: the resolved spec as a dict, the fold, the run
    folder, the dataset root, the device, the dataset's folds) that reports
    through a :class:`~engine.runs.recorder.FoldRecorder` and never touches
    the store. :func:`run` calls it per fold with a store recorder; another
    process (a Ray task) can call it with a ``ListRecorder`` and hand the
    records back. A curriculum stage passes ``initial_checkpoint`` (the
    weights to start from), ``extra`` (training clips with their own labels
    and loss weights) and ``tag`` (the stage, carried on every epoch record).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from engine.data.cache import decode_workers, host_cores
from engine.data.dataset import ConcatCache, CropDataset, LoaderSettings, MultiScaleBatchSampler, loader_settings
from engine.data.sampler import BalancedClassSampler
from engine.errors import CheckpointError, ConfigError
from engine.executors import FoldCall, FoldResources, executor_from_env
from engine.features.augment import WaveAugment
from engine.features.device_augment import BatchWaveAugment
from engine.features.frontend import LogMelFrontend
from engine.features.melstats import cache_mel_stats
from engine.jobs.common import build_cache, cache_dir_for, configure_threads, pick_device, prepare_dataset, seed_everything
from engine.jobs.context import JobContext, environment_record, git_commit
from engine.metrics import lwlrap
from engine.models.registry import frontend_from_spec, model_from_spec, spec_augment_from_spec, tagger_from_spec
from engine.models.tagger import Tagger
from engine.runs.atomic import DamagedFile, save_npy
from engine.runs import kinds
from engine.runs.folder import RunFolder
from engine.runs.recorder import EpochRecord, FoldRecorder, StoreRecorder
from engine.runs.scores import record_fold_scores, record_oof_scores
from engine.specs import LOADER_FIELDS, TrainSpec, from_dict, spec_from_json, spec_hash, to_dict
from engine.train.losses import build_loss, class_weights_from_counts
from engine.train.loop import FoldResult, find_batch_size, predict, save_atomic, train_fold
from engine.train.schedule import EarlyStopping

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
        tagger = Tagger(frontend, model_from_spec(spec, n_classes, pretrained=False), spec_augment_from_spec(spec))
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
    #: Which of the clips after the curated ones train (clip numbers); None: all of them.
    extra_rows: np.ndarray | None = None

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

    @classmethod
    def with_extra(cls, curated_cache, curated_Y: np.ndarray, split_cache, split_fnames: list[str],
                   extra: "ExtraClips") -> TrainingClips:
        """Curated clips followed by the chosen clips of another split, with the labels and weights given.

        Raises ConfigError naming the first fname the split does not hold, or
        labels and weights that do not fit.
        """
        n, n_classes = len(curated_Y), np.asarray(curated_Y).shape[1]
        row_of = {f: i for i, f in enumerate(split_fnames)}
        unknown = [f for f in extra.fnames if f not in row_of]
        if unknown:
            raise ConfigError(f"extra clip {unknown[0]!r} is not in the {extra.split} set "
                              f"({len(unknown)} unknown)", field="extra.fnames")
        labels = np.asarray(extra.labels, dtype=np.float32)
        weights = np.asarray(extra.weights, dtype=np.float32)
        if labels.shape != (len(extra.fnames), n_classes) or weights.shape != (len(extra.fnames),):
            raise ConfigError(f"extra clips: labels {labels.shape} and weights {weights.shape} do not fit "
                              f"{len(extra.fnames)} clips of {n_classes} classes", field="extra")
        rows = np.array([row_of[f] for f in extra.fnames], dtype=np.int64)
        Y_split = np.zeros((len(split_fnames), n_classes), dtype=np.float32)
        w_split = np.zeros(len(split_fnames), dtype=np.float32)
        Y_split[rows], w_split[rows] = labels, weights
        return cls(cache=ConcatCache([curated_cache, split_cache]),
                   Y=np.concatenate([np.asarray(curated_Y, dtype=np.float32), Y_split]), n_curated=n,
                   weights=np.concatenate([np.ones(n, dtype=np.float32), w_split]), extra_rows=n + rows)

    @property
    def n_noisy(self) -> int:
        """Clips after the curated ones that train (noisy or other extra clips)."""
        return len(self.Y) - self.n_curated if self.extra_rows is None else len(self.extra_rows)

    def train_indices(self, curated_train_idx: np.ndarray) -> np.ndarray:
        """A fold's training clips: its curated training clips, then every extra (noisy) clip."""
        extra = (np.arange(self.n_curated, len(self.Y), dtype=np.int64) if self.extra_rows is None
                 else np.asarray(self.extra_rows, dtype=np.int64))
        return np.concatenate([np.asarray(curated_train_idx, dtype=np.int64), extra])


@dataclass
class ExtraClips:
    """Clips of another split added to every fold's training set with their own labels and loss weights.

    ``split`` is ``"noisy"`` (the dataset's ``train_noisy.csv``); ``fnames``
    picks its clips, ``labels`` ``[n, classes]`` and ``weights`` ``[n]`` replace
    their CSV labels and weight them in the loss. Never validated on.
    """

    split: str
    fnames: list[str]
    labels: np.ndarray
    weights: np.ndarray


@dataclass
class FoldTask:
    """One fold's work as picklable data: everything :func:`train_fold_task` needs, no store.

    ``spec`` is the resolved training spec as a dict (``train.batch_size`` a
    number); ``folds`` the dataset's stored fold of every curated clip (CSV
    order). ``initial_checkpoint`` starts the fold from those weights (a
    ``best.pt``) instead of the spec's pretrained ones; ``extra`` adds
    training clips (in place of the noisy set ``loss.noisy_weight`` would add);
    ``tag`` marks every epoch record (a curriculum stage).
    ``mel_stats`` is ``(mean, std)``; None reads the run folder's ``mel_stats.npz``.
    A curriculum stage also sets ``fold_dir`` (its own folder for ``best.pt``,
    ``last.pt`` and ``val_pred.npy``; default ``fold<k>/`` of the run folder),
    ``epoch_offset`` (epochs are numbered on from the fold's earlier stages),
    ``seed`` (the fold's random seed; default ``train.seed + fold``) and
    ``trainable_blocks`` (-1: every layer trains; n: the head and the
    encoder's last n blocks).
    """

    spec: dict
    fold: int
    run_dir: str
    data_root: str
    device: str
    folds: list[int]
    initial_checkpoint: str | None = None
    extra: ExtraClips | None = None
    tag: str = ""
    mel_stats: tuple[np.ndarray, np.ndarray] | None = None
    fold_dir: str | None = None
    epoch_offset: int = 0
    seed: int | None = None
    trainable_blocks: int = -1

    @property
    def train_spec(self) -> TrainSpec:
        """The spec, typed."""
        return from_dict(TrainSpec, self.spec)


@dataclass
class FoldOutcome:
    """What a fold produced (picklable): best score and epoch, validation rows and their predictions.

    ``val_pred`` is None only for a call that continued an earlier stage's
    early stopping and saw no better epoch (see ``train_fold``).
    """

    fold: int
    best_lwlrap: float
    best_epoch: int | None
    val_idx: np.ndarray
    val_pred: np.ndarray | None
    epochs_run: int
    tag: str = ""
    stopped_early: bool = False


@dataclass
class FoldInputs:
    """What every fold of a run shares, built once per process: clips, labels, statistics, loss, augmentation."""

    classes: list[str]
    curated_Y: np.ndarray
    clips: "TrainingClips"
    mean: np.ndarray
    std: np.ndarray
    folds: np.ndarray
    wave_aug: WaveAugment | None = None
    loss_fn: torch.nn.Module | None = None
    #: The batched waveform augmentation of the training step (``augment.backend`` device), or None.
    device_aug: BatchWaveAugment | None = None


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


def _loss(spec: TrainSpec, counts: np.ndarray, device: torch.device) -> torch.nn.Module:
    weights = (torch.as_tensor(class_weights_from_counts(counts), dtype=torch.float32, device=device)
               if spec.loss.class_weights else None)
    return build_loss(spec.loss.name, label_smoothing=spec.loss.label_smoothing, class_weights=weights,
                      gce_q=spec.loss.gce_q, sce_alpha=spec.loss.sce_alpha, sce_beta=spec.loss.sce_beta,
                      focal_gamma=spec.loss.focal_gamma, lsoft_beta=spec.loss.lsoft_beta)


class RecorderProgress:
    """Adapts a fold's recorder to ``build_cache``'s ``ctx.progress`` (decoding fills the fold's first 5%)."""

    def __init__(self, recorder: FoldRecorder) -> None:
        self.recorder = recorder

    def progress(self, fraction: float, message: str = "") -> None:
        self.recorder.progress(fraction, message)


def prepare_fold_inputs(task: FoldTask, recorder: FoldRecorder, *, layout=None, caches: dict | None = None) -> FoldInputs:
    """Load the dataset (and its waveform caches), the statistics, the loss and augmentation for a task.

    ``layout`` and ``caches`` (split -> WaveformCache) reuse what the caller
    already built; the caches built here are added to ``caches``, so a
    caller that prepares several tasks (curriculum stages) builds each once.
    A fold run in another process builds them from the dataset root (the
    cache folder is shared, so nothing is decoded twice).
    """
    from engine.data.manifest import load_layout

    spec = task.train_spec
    layout = layout if layout is not None else load_layout(task.data_root)
    caches = caches if caches is not None else {}
    device = torch.device(task.device)
    cache_dir = cache_dir_for(task.data_root, spec.data.cache_dir)
    sr = spec.audio.sample_rate
    progress = RecorderProgress(recorder)
    n_decode = decode_workers(spec.train.decode_workers)
    if "curated" not in caches:
        caches["curated"] = build_cache(progress, layout.curated, sample_rate=sr, cache_dir=cache_dir,
                                        workers=n_decode)
    Y = layout.curated.Y
    noisy_table = layout.noisy
    if task.extra is not None:
        if task.extra.split != "noisy" or noisy_table is None:
            raise ConfigError(f"extra training clips come from the noisy set; {task.data_root} has "
                              f"{'no noisy set' if noisy_table is None else 'no split ' + repr(task.extra.split)}",
                              field="extra")
        if "noisy" not in caches:
            caches["noisy"] = build_cache(progress, noisy_table, sample_rate=sr, cache_dir=cache_dir,
                                          workers=n_decode)
        clips = TrainingClips.with_extra(caches["curated"], Y, caches["noisy"], noisy_table.fnames, task.extra)
    elif spec.loss.noisy_weight > 0:
        _require_noisy(layout, task.data_root)
        if "noisy" not in caches:
            caches["noisy"] = build_cache(progress, noisy_table, sample_rate=sr, cache_dir=cache_dir,
                                          workers=n_decode)
        clips = TrainingClips.build(caches["curated"], Y, caches["noisy"], noisy_table.Y, spec.loss.noisy_weight)
    else:
        clips = TrainingClips.build(caches["curated"], Y)
    if task.mel_stats is not None:
        mean, std = task.mel_stats
    else:
        stats = RunFolder(task.run_dir).load_mel_stats()
        if stats is None:
            raise DamagedFile(RunFolder(task.run_dir).mel_stats, "missing",
                              "the train job computes it before the folds; queue the job again")
        mean, std = stats
    wave_aug, device_aug = wave_augmenters(spec, device)
    return FoldInputs(classes=list(layout.classes), curated_Y=Y, clips=clips, mean=mean, std=std,
                      folds=np.asarray(task.folds, dtype=np.int64), wave_aug=wave_aug,
                      loss_fn=_loss(spec, Y.sum(axis=0), device), device_aug=device_aug)


def _require_noisy(layout, root) -> None:
    """ConfigError unless the dataset has a noisy set (``loss.noisy_weight > 0`` trains on it)."""
    if layout.noisy is None:
        raise ConfigError(f"trains on the noisy set, but {root} has no train_noisy.csv with its audio "
                          "(train_noisy/ or train_noisy.zip); add them or set loss.noisy_weight = 0",
                          field="loss.noisy_weight")


def _load_initial(model: torch.nn.Module, path: str) -> None:
    """Weights of an earlier stage's ``best.pt`` into ``model`` (CheckpointError names the file)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
    except Exception as err:  # noqa: BLE001 - any unreadable or unfitting file is reported the same way
        raise CheckpointError(f"{path}: cannot start the fold from this checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}); retrain the stage that wrote it") from None


def train_fold_task(task: FoldTask, recorder: FoldRecorder, *, inputs: FoldInputs | None = None,
                    early_stopping: EarlyStopping | None = None) -> FoldOutcome:
    """Train (or resume) one fold and write its files in the run folder; report through ``recorder``.

    Writes ``fold<k>/best.pt``, ``last.pt``, ``val_pred.npy`` (or the same in
    ``task.fold_dir``); returns the fold's outcome for the caller to record
    (the store is never touched here). ``inputs`` reuses what earlier folds
    of the same process built. ``early_stopping`` continues a stopper of an
    earlier call (a curriculum's stages share one) and is updated in place.
    """
    spec = task.train_spec
    fold = task.fold
    device = torch.device(task.device)
    inputs = inputs if inputs is not None else prepare_fold_inputs(task, recorder)
    folder = RunFolder(task.run_dir)
    fold_dir = Path(task.fold_dir) if task.fold_dir else folder.fold_dir(fold)
    val_idx = np.flatnonzero(inputs.folds == fold)
    train_idx = np.flatnonzero(inputs.folds != fold)
    Y = inputs.curated_Y
    seed_everything(spec.train.seed + fold if task.seed is None else task.seed)
    tagger = tagger_from_spec(spec, len(inputs.classes), mean=inputs.mean, std=inputs.std,
                              pretrained=task.initial_checkpoint is None, log=recorder.log)
    if task.initial_checkpoint is not None:
        _load_initial(tagger.model, task.initial_checkpoint)
    if task.trainable_blocks >= 0:
        recorder.log(f"fold {fold}{f' [{task.tag}]' if task.tag else ''}: "
                     f"{set_trainable_blocks(tagger.model, task.trainable_blocks)}")
    crop = int(round(spec.audio.crop_seconds * spec.audio.sample_rate))
    train_loader, val_loader = make_loaders(spec, inputs.clips, train_idx, val_idx, crop,
                                            int(spec.train.batch_size), inputs.wave_aug, device, fold,
                                            loader=resolve_loader(spec, device))

    def on_step(step: int, total: int) -> None:
        recorder.progress(step / total, f"fold {fold}{f' [{task.tag}]' if task.tag else ''} step {step}/{total}")

    def on_epoch(r) -> None:
        recorder.epoch(EpochRecord(fold=fold, epoch=task.epoch_offset + r.epoch, train_loss=r.train_loss,
                                   val_loss=r.val_loss, val_lwlrap=r.val_lwlrap, lr=r.lr, seconds=r.seconds,
                                   clips_per_sec=r.clips_per_sec, is_best=r.is_best, tag=task.tag))

    o, a = spec.optim, spec.augment
    if spec.train.epochs == 0:
        result = score_untrained(tagger, val_loader, Y[val_idx], device, fold_dir)
    else:
        result = train_fold(tagger, train_loader=train_loader, val_loader=val_loader, val_truth=Y[val_idx],
                            loss_fn=inputs.loss_fn, device=device, fold_dir=fold_dir, epochs=spec.train.epochs,
                            patience=spec.train.patience, head_lr=o.head_lr, encoder_lr=o.encoder_lr,
                            weight_decay=o.weight_decay, betas=tuple(o.betas), warmup_epochs=o.warmup_epochs,
                            warmup_steps=o.warmup_steps, min_lr_ratio=o.min_lr_ratio, grad_clip=o.grad_clip,
                            amp=o.amp, cpu_bf16=o.cpu_bf16, mixup_p=a.mixup_p, mixup_alpha=a.mixup_alpha,
                            seed=spec.train.seed + fold, on_epoch=on_epoch, on_step=on_step, log=recorder.log,
                            early_stopping=early_stopping, wave_augment=inputs.device_aug,
                            augment_key=(spec.train.seed, fold))
    return FoldOutcome(fold=fold, best_lwlrap=float(result.best_lwlrap), best_epoch=result.best_epoch,
                       val_idx=val_idx, val_pred=None if result.val_pred is None else np.asarray(result.val_pred),
                       epochs_run=result.epochs_run, tag=task.tag, stopped_early=result.stopped_early)


def set_trainable_blocks(model: torch.nn.Module, n_blocks: int) -> str:
    """Freeze the encoder except its last ``n_blocks`` blocks (-1: everything trains). Returns a description."""
    for p in model.parameters():
        p.requires_grad_(True)
    if n_blocks < 0:
        return "every layer trains"
    encoder = model.encoder
    blocks = list(encoder.blocks) if hasattr(encoder, "blocks") else \
        [m for name, m in encoder.named_children() if name.startswith(("conv_block", "resnet", "layer"))]
    for p in encoder.parameters():
        p.requires_grad_(False)
    for block in blocks[len(blocks) - n_blocks:] if n_blocks else []:
        for p in block.parameters():
            p.requires_grad_(True)
    return f"the head and the last {min(n_blocks, len(blocks))} of {len(blocks)} encoder blocks train"


def _finished_fold_rows(folder: RunFolder, fold: int, log) -> np.ndarray | None:
    """A finished fold's saved validation predictions, or None (then the fold is trained again)."""
    path = folder.val_pred(fold)
    if not (folder.best(fold).exists() and path.exists()):
        return None
    try:
        return folder.load_array(path, remedy=f"training fold {fold} again")
    except DamagedFile as err:
        log(str(err))
        return None


def fold_summary(fold: int, result: "FoldOutcome | FoldResult", *, epochs: int, patience: int) -> str:
    """The log line of a finished fold: its best score and epoch, and where and why training stopped."""
    line = f"fold {fold}: best lwlrap {result.best_lwlrap:.4f}"
    if result.best_epoch is None:
        return line + " (not trained)"
    line += f" at epoch {result.best_epoch}"
    if result.stopped_early:
        return line + (f"; stopped early after epoch {result.epochs_run - 1} of {epochs} "
                       f"(no better lwlrap for {patience} epochs)")
    return line + f"; ran all {epochs} epochs"


def train_fold_on_node(task: FoldTask, recorder: FoldRecorder) -> FoldOutcome:
    """:func:`train_fold_task` in a process of its own (a Ray task): the device is chosen where it runs.

    ``train.device = "auto"`` takes the GPU the cluster gave the task (Ray
    sets ``CUDA_VISIBLE_DEVICES``), else the CPU; the head's device says
    nothing about the node's.
    """
    spec = task.train_spec
    configure_threads()
    task = dataclasses.replace(task, device=str(pick_device(spec.train.device)))
    return train_fold_task(task, recorder)


class FoldProgress:
    """The job's progress bar filled by folds that may run at the same time.

    Each running fold reports its own fraction; the job shows the mean over
    all the run's folds (finished ones count as 1) and the latest message of
    each fold still running, so parallel folds advance together as one job.
    """

    def __init__(self, ctx: JobContext, n_folds: int, n_done: int, *, start: float = 0.08, width: float = 0.9):
        self.ctx, self.n_folds, self.n_done = ctx, max(n_folds, 1), n_done
        self.start, self.width = start, width
        self.fractions: dict[int, float] = {}
        self.messages: dict[int, str] = {}

    def for_fold(self, fold: int):
        """The ``progress(fraction, message)`` callable of one fold."""
        def progress(fraction: float, message: str = "") -> None:
            self.fractions[fold] = min(max(float(fraction), 0.0), 1.0)
            self.messages[fold] = message
            self.report()
        return progress

    def finished(self, fold: int) -> None:
        """The fold's result is recorded: it counts as done and leaves the message."""
        self.fractions[fold] = 1.0
        self.messages.pop(fold, None)
        self.report()

    def report(self) -> None:
        """Send the combined fraction and messages to the job."""
        overall = self.start + self.width * (self.n_done + sum(self.fractions.values())) / self.n_folds
        self.ctx.progress(min(overall, self.start + self.width), " · ".join(m for m in self.messages.values() if m))


def run_fold_tasks(ctx: JobContext, tasks: list[FoldTask], spec: TrainSpec, record, *, n_folds: int,
                   layout=None, caches: dict | None = None, cache_dir: Path | None = None) -> None:
    """Train ``tasks`` with the worker's executor and ``record`` each outcome here, as it arrives.

    The local executor trains them one after another in this process, with
    the dataset and caches already loaded; the Ray executor trains them at
    once on the cluster.
    """
    if not tasks:
        return
    executor = executor_from_env()
    try:
        local_kwargs = {}
        if executor.name == "local":
            # Everything the folds share is built once, with the caches this job already loaded.
            progress_only = StoreRecorder(ctx.store, ctx.run_id, log=ctx.log)
            local_kwargs = {"inputs": prepare_fold_inputs(tasks[0], progress_only, layout=layout, caches=caches)}
        read = [Path(spec.data.root)] + ([layout.curated.csv_path] if layout is not None else [])
        read += [Path(cache_dir)] if cache_dir is not None else []
        dispatch_folds(ctx, executor, tasks, train_fold_task, train_fold_on_node, record,
                       resources=FoldResources.from_spec(spec.cluster), n_folds=n_folds, read=read,
                       write=[Path(tasks[0].run_dir)], local_kwargs=local_kwargs)
    finally:
        executor.close()


def dispatch_folds(ctx: JobContext, executor, tasks: list, local_fn, node_fn, record, *, resources: FoldResources,
                   n_folds: int, read: list[Path], write: list[Path], local_kwargs: dict | None = None,
                   start: float = 0.08, width: float = 0.9, recorder_cls: type = StoreRecorder) -> None:
    """Run per-fold ``tasks`` (each with a ``fold``) on ``executor``; ``record`` each outcome as it arrives.

    Locally ``local_fn(task, recorder, **local_kwargs)`` runs in this process;
    on a cluster ``node_fn(task, recorder)`` runs on a node, after a check
    that the nodes can read ``read`` and write in ``write`` (else the job
    fails naming the path). Either way the folds' epochs, progress and log
    lines reach the store through this process only; every fold's node and
    state is recorded for the job details. ``start`` and ``width`` are the
    part of the job's progress bar that the folds fill. ``recorder_cls``
    (a :class:`StoreRecorder`, or a subclass with more reports) receives
    every fold's reports here.
    """
    local = executor.name == "local"
    if not local:
        ctx.progress(start, f"checking that the {executor.name} cluster sees the data and the run folder")
        executor.check_storage(read=read, write=write, resources=resources)
        ctx.log(f"folds {[t.fold for t in tasks]} go to the {executor.name} cluster "
                f"(cluster.max_retries = {resources.max_retries})")
    progress = FoldProgress(ctx, n_folds, n_folds - len(tasks), start=start, width=width)
    recorders = {t.fold: recorder_cls(ctx.store, ctx.run_id, progress=progress.for_fold(t.fold), log=ctx.log)
                 for t in tasks}
    calls = [FoldCall(t.fold, local_fn if local else node_fn, (t,), local_kwargs=dict(local_kwargs or {}) if local
                      else {}) for t in tasks]
    job = ctx.job

    def placement(fold: int, status: str, **where) -> None:
        ctx.store.record_fold_task(job.id, job.attempts, fold, status=status, **where)

    for _fold, outcome in executor.run_folds(calls, recorders.__getitem__, check=ctx.check, resources=resources,
                                             placement=placement):
        record(outcome)
        progress.finished(outcome.fold)


def run(ctx: JobContext) -> str:
    """Train every requested fold, record scores, write artifacts; returns a summary message."""
    spec: TrainSpec = spec_from_json("train", ctx.spec)
    store, run_id = ctx.store, ctx.run_id
    folder = RunFolder(ctx.run_dir).create()
    configure_threads()
    device = pick_device(spec.train.device)
    seed_everything(spec.train.seed)
    ctx.progress(0.0, "loading dataset")
    data = prepare_dataset(store, spec.data.root, n_folds=spec.train.n_folds, fold_seed=spec.train.fold_seed,
                           group_column=spec.data.group_column)
    classes, Y = data.classes, data.layout.curated.Y
    noisy_weight = spec.loss.noisy_weight
    if noisy_weight > 0:
        _require_noisy(data.layout, spec.data.root)
    frontend = frontend_from_spec(spec)
    previous = store.get_run(run_id)
    if spec.train.batch_size == "auto":
        ctx.progress(0.0, "batch_size = auto: trying batch sizes")
    batch_size = resolve_batch_size(spec, frontend, len(classes), device,
                                    recorded=previous["config"] if previous else None, log=ctx.log)
    loader = resolve_loader(spec, device)
    # What is recorded is what runs: "auto" becomes the chosen size, loader settings and backend.
    resolved = copy.deepcopy(spec)
    resolved.train.batch_size = batch_size
    requested = {f"train.{k}": "auto" for k in ("batch_size", *LOADER_FIELDS)
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
                           name=spec.name or run_id, model=model_label(spec), config=config,
                           config_hash=spec_hash(resolved), seed=spec.train.seed, device=str(device),
                           versions=environment_record(), git_commit=git_commit(), run_dir=str(folder.path))
    record = {"kind": "train", "run_id": run_id, "config_hash": spec_hash(resolved), "spec": config}
    if requested:
        record["requested"] = requested
    record["loader"] = {**dataclasses.asdict(loader), "host_cores": host_cores(), "device": device.type}
    folder.save_config(record)
    ctx.log(f"{'new run' if new else 'resuming run'} {run_id} on {device}; {len(Y)} curated clips, "
            f"{len(classes)} classes")

    cache_dir = cache_dir_for(spec.data.root, spec.data.cache_dir)
    n_decode = resolved.train.decode_workers
    caches = {"curated": build_cache(ctx, data.layout.curated, sample_rate=spec.audio.sample_rate,
                                     cache_dir=cache_dir, workers=n_decode)}
    if noisy_weight > 0:
        caches["noisy"] = build_cache(ctx, data.layout.noisy, sample_rate=spec.audio.sample_rate,
                                      cache_dir=cache_dir, start=0.05, span=0.02, workers=n_decode)
        ctx.log(f"training on the {len(data.layout.noisy.fnames)} noisy clips too (loss weight {noisy_weight:g}), "
                "never validating on them")
    stats = None
    try:
        stats = folder.load_mel_stats()
    except DamagedFile as err:
        # Label-free and deterministic: recomputing gives the same statistics.
        ctx.log(f"{err.path}: damaged; computing the log-mel statistics again")
    if stats is None:
        # Statistics over all curated clips: label-free, so no leakage across folds.
        ctx.progress(0.07, "computing log-mel statistics")
        cache = caches["curated"]
        stats = cache_mel_stats(frontend, cache, device=str(device))
        folder.save_mel_stats(*stats)

    folds_to_run = spec.train.fold_list()
    oof = np.full((len(Y), len(classes)), np.nan, dtype=np.float32)
    done_folds = {r["fold"] for r in store.fold_scores(run_id)}
    t_run = time.perf_counter()

    tasks = []
    for fold in folds_to_run:
        val_idx = np.flatnonzero(data.folds == fold)
        if fold in done_folds:
            rows = _finished_fold_rows(folder, fold, ctx.log)
            if rows is not None and rows.shape == (len(val_idx), len(classes)) and np.isfinite(rows).all():
                oof[val_idx] = rows
                ctx.log(f"fold {fold}: already finished, kept")
                continue
        tasks.append(FoldTask(spec=config, fold=fold, run_dir=str(folder.path), data_root=str(spec.data.root),
                              device=str(device), folds=data.folds.tolist(), mel_stats=stats))

    def record(outcome: FoldOutcome) -> None:
        val_idx = outcome.val_idx
        oof[val_idx] = outcome.val_pred
        folder.save_array(folder.oof, oof)
        record_fold_scores(store, run_id, outcome.fold, Y[val_idx], outcome.val_pred, classes,
                           best_epoch=outcome.best_epoch, lwlrap_value=outcome.best_lwlrap)
        ctx.log(fold_summary(outcome.fold, outcome, epochs=spec.train.epochs, patience=spec.train.patience))

    run_fold_tasks(ctx, tasks, spec, record, n_folds=len(folds_to_run), layout=data.layout, caches=caches,
                   cache_dir=cache_dir)

    folder.save_array(folder.oof, oof)
    cv, covered = record_oof_scores(store, run_id, Y, oof, classes)
    store.finish_run(run_id, status="done", cv_lwlrap=cv)
    ctx.log(f"out-of-fold lwlrap {cv:.4f} over {covered} clips ({time.perf_counter() - t_run:.0f}s)")
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
    save_npy(fold_dir / "val_pred.npy", val_pred)
    return FoldResult(best_lwlrap=lwlrap(val_truth, val_pred), best_epoch=None, val_pred=val_pred, epochs_run=0)


def model_label(spec: TrainSpec) -> str:
    """The run's ``model`` column (``engine.runs.kinds.model_label``), e.g. ``cnn14-64mel``."""
    return kinds.model_label(spec.model.arch, spec.features.n_mels)


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
