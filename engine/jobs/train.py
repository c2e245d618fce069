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

Each fold is one :func:`engine.jobs.folds.train_fold_task` (the fold seam):
:func:`run` dispatches them on the worker's executor and records each
outcome as it arrives.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from engine.atomic import DamagedFile
from engine.data.cache import build_cache, cache_dir_for, decode_workers, host_cores
from engine.data.clips import require_noisy
from engine.executors import FoldResources, executor_from_env
from engine.features.frontend import LogMelFrontend
from engine.features.melstats import cache_mel_stats
from engine.jobs.context import JobContext
from engine.jobs.folds import (FoldOutcome, FoldTask, dispatch_folds, prepare_fold_inputs, train_fold_on_node,
                               train_fold_task)
from engine.models.registry import frontend_from_spec, model_from_spec, spec_augment_from_spec
from engine.models.tagger import Tagger
from engine.runs import kinds
from engine.runs.folder import RunFolder
from engine.runs.recorder import StoreRecorder
from engine.runs.scores import record_fold_scores, record_oof_scores
from engine.specs import LOADER_FIELDS, TrainSpec, spec_hash, to_dict
from engine.train.builders import augment_backend, resolve_loader
from engine.train.loop import FoldResult, find_batch_size


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


def run(ctx: JobContext) -> str:
    """Train every requested fold, record scores, write artifacts; returns a summary message."""
    spec: TrainSpec = ctx.load_spec()
    store, run_id = ctx.store, ctx.run_id
    opened = ctx.open_run(device=spec.train.device, device_field="train.device", seed=spec.train.seed,
                          data_root=spec.data.root, n_folds=spec.train.n_folds, fold_seed=spec.train.fold_seed,
                          group_column=spec.data.group_column)
    folder, device, data = opened.folder, opened.device, opened.data
    classes, Y = data.classes, data.layout.curated.Y
    noisy_weight = spec.loss.noisy_weight
    if noisy_weight > 0:
        require_noisy(data.layout, spec.data.root)
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
    extra = {"requested": requested} if requested else {}
    extra["loader"] = {**dataclasses.asdict(loader), "host_cores": host_cores(), "device": device.type}
    new = opened.record(name=spec.name or run_id, model=kinds.model_label(spec.model.arch, spec.features.n_mels),
                        config=config, config_hash=spec_hash(resolved), seed=spec.train.seed, extra=extra)
    ctx.log(f"{'new run' if new else 'resuming run'} {run_id} on {device}; {len(Y)} curated clips, "
            f"{len(classes)} classes")

    cache_dir = cache_dir_for(spec.data.root, spec.data.cache_dir)
    n_decode = resolved.train.decode_workers
    caches = {"curated": build_cache(data.layout.curated, sample_rate=spec.audio.sample_rate, cache_dir=cache_dir,
                                     progress=ctx.progress, workers=n_decode)}
    if noisy_weight > 0:
        caches["noisy"] = build_cache(data.layout.noisy, sample_rate=spec.audio.sample_rate, cache_dir=cache_dir,
                                      progress=ctx.progress, start=0.05, span=0.02, workers=n_decode)
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

    # A sweep's screening job trains its screening fold only; the same run completes later (engine.sweeps).
    folds_to_run = store.job_folds(ctx.job.id) or spec.train.fold_list()
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
