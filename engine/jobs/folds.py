"""The fold seam: a job's per-fold work as functions of picklable inputs, run here or on a cluster.

:func:`dispatch_folds` runs a job's fold tasks on the worker's executor
(one after another in this process, or at once as Ray tasks) and hands each
outcome to the job as it arrives; the folds report through a
:class:`~engine.runs.recorder.FoldRecorder` and never touch the store, so
this process alone writes it. The train, infer and curriculum jobs all
dispatch through it.

:func:`train_fold_task` is one fold's training as a function of picklable
inputs (:class:`FoldTask`: the resolved spec as a dict, the fold, the run
folder, the dataset root, the device, the dataset's folds). The train job
calls it per fold; a curriculum stage is one call with
``initial_checkpoint`` (the weights to start from), ``extra`` (training
clips with their own labels and loss weights) and ``tag`` (the stage,
carried on every epoch record). :func:`train_fold_on_node` is the same call
in a process of its own, where the device is chosen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from engine.atomic import DamagedFile, save_npy
from engine.data.cache import build_cache, cache_dir_for, decode_workers
from engine.data.clips import ExtraClips, TrainingClips, require_noisy
from engine.errors import CheckpointError, ConfigError
from engine.executors import FoldCall, FoldResources
from engine.features.augment import WaveAugment
from engine.features.device_augment import BatchWaveAugment
from engine.jobs.context import JobContext
from engine.metrics import lwlrap
from engine.models.registry import tagger_from_spec
from engine.models.tagger import Tagger
from engine.runs.folder import RunFolder
from engine.runs.recorder import FoldRecorder, StoreRecorder, read_epoch_journal
from engine.specs import TrainSpec, from_dict
from engine.train.builders import loss_from_spec, make_loaders, resolve_loader, wave_augmenters
from engine.train.loop import FoldResult, predict, save_atomic, train_fold
from engine.train.runtime import configure_threads, pick_device, seed_everything
from engine.train.schedule import EarlyStopping


def dispatch_folds(ctx: JobContext, executor, tasks: list, local_fn, node_fn, record, *, resources: FoldResources,
                   n_folds: int, read: list[Path], write: list[Path], local_kwargs: dict | None = None,
                   start: float = 0.08, width: float = 0.9, recorder_cls: type = StoreRecorder,
                   stage: str = "") -> None:
    """Run per-fold ``tasks`` (each with a ``fold``) on ``executor``; ``record`` each outcome as it arrives.

    Locally ``local_fn(task, recorder, **local_kwargs)`` runs in this process;
    on a cluster ``node_fn(task, recorder)`` runs on a node, after a check
    that the nodes can read ``read`` and write in ``write`` (else the job
    fails naming the path). Either way the folds' epochs, progress and log
    lines reach the store through this process only; every fold's node and
    state is recorded for the job details. ``start`` and ``width`` are the
    part of the job's progress bar that the folds fill. ``recorder_cls``
    (a :class:`StoreRecorder`, or a subclass with more reports) receives
    every fold's reports here. ``stage`` names work that is not the fold's
    training (``teacher predictions``) in the job details' fold rows.
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
        if stage:
            where["message"] = f"{stage}: {where['message']}" if where.get("message") else stage
        ctx.store.record_fold_task(job.id, job.attempts, fold, status=status, **where)
        if status == "running" and where.get("message"):
            ctx.log(f"fold {fold}: {where['message']}")  # a retry, or a fold submitted again

    for _fold, outcome in executor.run_folds(calls, recorders.__getitem__, check=ctx.check, resources=resources,
                                             placement=placement):
        record(outcome)
        progress.finished(outcome.fold)


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


def prepare_fold_inputs(task: FoldTask, recorder: FoldRecorder, *, layout=None,
                        caches: dict | None = None) -> FoldInputs:
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
    n_decode = decode_workers(spec.train.decode_workers)
    if "curated" not in caches:
        caches["curated"] = build_cache(layout.curated, sample_rate=sr, cache_dir=cache_dir,
                                        progress=recorder.progress, workers=n_decode)
    Y = layout.curated.Y
    noisy_table = layout.noisy
    if task.extra is not None:
        if task.extra.split != "noisy" or noisy_table is None:
            raise ConfigError(f"extra training clips come from the noisy set; {task.data_root} has "
                              f"{'no noisy set' if noisy_table is None else 'no split ' + repr(task.extra.split)}",
                              field="extra")
        if "noisy" not in caches:
            caches["noisy"] = build_cache(noisy_table, sample_rate=sr, cache_dir=cache_dir,
                                          progress=recorder.progress, workers=n_decode)
        clips = TrainingClips.with_extra(caches["curated"], Y, caches["noisy"], noisy_table.fnames, task.extra)
    elif spec.loss.noisy_weight > 0:
        require_noisy(layout, task.data_root)
        if "noisy" not in caches:
            caches["noisy"] = build_cache(noisy_table, sample_rate=sr, cache_dir=cache_dir,
                                          progress=recorder.progress, workers=n_decode)
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
                      loss_fn=loss_from_spec(spec, Y.sum(axis=0), device), device_aug=device_aug)


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

    # Epochs an earlier attempt finished whose rows its head may never have written (it died first).
    recovered = getattr(recorder, "recovered", None)
    if recovered is not None:
        for earlier in read_epoch_journal(fold_dir):
            recovered(earlier)

    def on_step(step: int, total: int) -> None:
        recorder.progress(step / total, f"fold {fold}{f' [{task.tag}]' if task.tag else ''} step {step}/{total}")

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
                            seed=spec.train.seed + fold, on_epoch=recorder.epoch, on_step=on_step, log=recorder.log,
                            early_stopping=early_stopping, wave_augment=inputs.device_aug,
                            augment_key=(spec.train.seed, fold), fold=fold, tag=task.tag,
                            epoch_offset=task.epoch_offset, owner=folder.owner())
    return FoldOutcome(fold=fold, best_lwlrap=float(result.best_lwlrap), best_epoch=result.best_epoch,
                       val_idx=val_idx, val_pred=None if result.val_pred is None else np.asarray(result.val_pred),
                       epochs_run=result.epochs_run, tag=task.tag, stopped_early=result.stopped_early)


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


def _load_initial(model: torch.nn.Module, path: str) -> None:
    """Weights of an earlier stage's ``best.pt`` into ``model`` (CheckpointError names the file)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
    except Exception as err:  # noqa: BLE001 - any unreadable or unfitting file is reported the same way
        raise CheckpointError(f"{path}: cannot start the fold from this checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}); retrain the stage that wrote it") from None
