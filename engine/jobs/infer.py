"""The ``infer`` job: a trained run's fold models with TTA on the curated out-of-fold clips and the test set.

Creates its own run (kind ``infer``, ``parent_run_id`` = the trained run).

- ``oof`` split: each fold model predicts its own validation fold with TTA;
  the rows together make ``oof.npy`` (curated CSV order). Recorded: LWLRAP
  and per-class LRAP of every fold and out-of-fold, and the run's
  ``cv_lwlrap`` = the out-of-fold LWLRAP with TTA. The same checkpoints
  without TTA (one centre crop) are what the trained run recorded, so the TTA
  gain is this run's scores minus its parent's (``fsat tta RUN_ID``).
- ``test`` split: every fold model predicts every test clip with TTA; the
  fold models are averaged in logit space (mean of the per-fold mean TTA
  logits, then the sigmoid), the same rule as for the crops, so one clip's
  test score is the sigmoid of the mean logit over all folds and crops with
  each fold weighted equally. ``test.npy`` is in ``sample_submission.csv``
  order; ``test_logits_fold<k>.npy`` keeps each fold's mean logits. With
  ``write_submission`` the run writes ``submission.csv``; when the dataset has
  ``test_ground_truth.csv`` the submission is scored and the run gets its
  ``test_lwlrap``.

Probabilities are saved as float64 so that confident scores near 1 stay
distinct (LWLRAP depends only on their order). A requeued job keeps the folds
it finished.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.atomic import DamagedFile, load_json
from engine.data.cache import build_cache, cache_dir_for
from engine.errors import CheckpointError, ConfigError, FsatError
from engine.executors import FoldResources, executor_from_env
from engine.infer import DEFAULT_SHORT_CLIPS, fold_average, predict_tta_logits, sigmoid
from engine.intake import FOLD_CHECKPOINT_KINDS
from engine.jobs.context import JobContext
from engine.jobs.folds import dispatch_folds
from engine.models.registry import tagger_from_spec
from engine.models.tagger import Tagger
from engine.runs.folder import RunFolder
from engine.runs.scores import record_fold_scores, record_oof_scores, score_test
from engine.specs import InferSpec, TrainSpec, from_dict, spec_hash, to_dict
from engine.store import Store
from engine.train.runtime import configure_threads, pick_device

#: Run kinds whose run directory holds fold checkpoints (kept under this name for callers).
TRAINED_KINDS = FOLD_CHECKPOINT_KINDS
#: How clips shorter than the crop are varied at inference (see engine.infer).
SHORT_CLIPS = DEFAULT_SHORT_CLIPS


@dataclass
class TrainedRun:
    """A finished training run: its row, its training spec, its folds and where its checkpoints are."""

    run: dict
    spec: TrainSpec
    folds: list[int]
    run_dir: Path

    @property
    def run_id(self) -> str:
        return self.run["run_id"]

    def checkpoint(self, fold: int) -> Path:
        """The best checkpoint of a fold."""
        return RunFolder(self.run_dir).best(fold)


def load_trained_run(store: Store, run_id: str, *, field: str = "run_id") -> TrainedRun:
    """Look up a finished training run and check that every fold checkpoint is on disk.

    Errors name the run id and say what to do; ``field`` is the spec field
    that named the run.
    """
    run = store.get_run(run_id)
    if run is None:
        raise ConfigError(f"no run {run_id!r}; name a finished train run (see `fsat runs`)", field=field)
    if run["kind"] not in TRAINED_KINDS:
        raise ConfigError(f"run {run_id!r} is a {run['kind']} run; inference needs a train run with "
                          "fold checkpoints", field=field)
    if run["status"] != "done":
        raise ConfigError(f"run {run_id!r} is {run['status']}, not finished; infer once it is done "
                          "(see `fsat runs`)", field=field)
    spec = _training_spec(run)
    run_dir = Path(run["run_dir"])
    folds = spec.train.fold_list()
    trained = TrainedRun(run=run, spec=spec, folds=folds, run_dir=run_dir)
    missing = [str(trained.checkpoint(k)) for k in folds if not trained.checkpoint(k).is_file()]
    if missing:
        raise CheckpointError(f"run {run_id!r}: fold checkpoint {missing[0]} is missing"
                              f"{f' ({len(missing) - 1} more)' if len(missing) > 1 else ''}; "
                              "the run directory was moved or cleaned — restore it or retrain the run")
    return trained


def _training_spec(run: dict) -> TrainSpec:
    """The TrainSpec a run was trained with: its stored config, else ``config.json``'s ``spec``."""
    candidates = [run.get("config") or {}]
    config_json = Path(run["run_dir"]) / "config.json"
    if config_json.is_file():
        try:
            candidates.append(load_json(config_json).get("spec") or {})
        except DamagedFile:
            pass  # the database's copy of the spec was tried first; a torn config.json adds nothing
    last: Exception | None = None
    for data in candidates:
        try:
            return from_dict(TrainSpec, data)
        except ConfigError as err:
            last = err
    raise ConfigError(f"run {run['run_id']!r} has no training spec this version can read ({last})", field="run_id")


def load_fold_tagger(trained: TrainedRun, fold: int, n_classes: int) -> Tagger:
    """The fold's best model with its frontend and saved log-mel statistics, in eval mode on the CPU."""
    path = trained.checkpoint(fold)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(err).__name__}: {err}); "
                              "retrain the fold") from None
    spec = trained.spec
    mean, std = state.get("mel_mean"), state.get("mel_std")
    if mean is None or std is None:
        stats = RunFolder(trained.run_dir).load_mel_stats()
        if stats is None:
            raise CheckpointError(f"{path}: the checkpoint holds no log-mel statistics and "
                                  f"{RunFolder(trained.run_dir).mel_stats} is missing; retrain the run")
        mean, std = stats
    # Built exactly as training built it (sample rate and hop included); the checkpoint replaces
    # every weight, so no PANNs file is needed here.
    tagger = tagger_from_spec(spec, n_classes, mean=mean, std=std, pretrained=False, augment=False)
    try:
        tagger.model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path}: the checkpoint does not fit a {spec.model.arch} model for {n_classes} "
                              f"classes ({str(err).splitlines()[0]})") from None
    return tagger.eval()


def _readable(folder: RunFolder, path: Path, shape: tuple[int, int], log) -> bool:
    """Whether a fold's saved test logits can be kept: present, readable and of ``shape`` (else redone)."""
    if not path.exists():
        return False
    try:
        ok = folder.load_array(path).shape == shape
    except DamagedFile as err:
        log(f"{err}; predicting that fold's test clips again")
        return False
    if not ok:
        log(f"{path}: not of shape {shape}; predicting that fold's test clips again")
    return ok


@dataclass
class InferFoldTask:
    """One fold's inference as picklable data: its model, which clips, where the test logits go.

    ``val_idx`` is the curated clips of the fold's out-of-fold rows (None:
    already predicted or not asked for); ``test_path`` where the fold's mean
    test logits are saved (None: likewise). ``infer`` is the spec's
    ``infer`` section as plain data.
    """

    trained: TrainedRun
    fold: int
    n_classes: int
    data_root: str
    infer: dict
    device: str
    val_idx: np.ndarray | None = None
    test_path: str | None = None


@dataclass
class InferFoldOutcome:
    """What a fold's inference returns to the head: its out-of-fold probabilities (None when not predicted)."""

    fold: int
    val_pred: np.ndarray | None
    test_saved: bool


def infer_fold_task(task: InferFoldTask, recorder, *, caches: dict | None = None, layout=None) -> InferFoldOutcome:
    """Predict one fold's out-of-fold clips and/or the test set with TTA; write the test logits file.

    Reports through ``recorder`` (progress, log lines) and never touches the
    store; ``caches`` and ``layout`` reuse what the job already loaded (a fold
    run elsewhere loads them from the dataset root).
    """
    from engine.data.manifest import load_layout

    tspec, inf, k = task.trained.spec, task.infer, task.fold
    device = torch.device(task.device)
    sr = tspec.audio.sample_rate
    crop = int(round(tspec.audio.crop_seconds * sr))
    long_samples = int(round(inf["long_seconds"] * sr))
    caches = dict(caches or {})
    cache_dir = cache_dir_for(task.data_root, tspec.data.cache_dir)
    n_val = 0 if task.val_idx is None else len(task.val_idx)
    layout = layout if layout is not None else load_layout(task.data_root)
    n_test = len(layout.test.fnames) if task.test_path else 0
    work, done_before = max(n_val + n_test, 1), 0

    def cache(split: str, table):
        if caches.get(split) is None:
            caches[split] = build_cache(table, sample_rate=sr, cache_dir=cache_dir, progress=recorder.progress)
        return caches[split]

    def predict(tagger: Tagger, clips, indices: np.ndarray, what: str) -> np.ndarray:
        def progress(done: int, total: int, rate: float) -> None:
            recorder.progress((done_before + done) / work, f"{what}: {done}/{total} clips ({rate:.1f} clips/s)")

        t0 = time.perf_counter()
        logits = predict_tta_logits(tagger, clips, indices, crop=crop, k=inf["tta_crops"], k_long=inf["tta_crops_long"],
                                    long_samples=long_samples, short_clips=SHORT_CLIPS,
                                    batch_size=inf["batch_size"], device=device, num_workers=inf["num_workers"],
                                    amp=tspec.optim.amp, cpu_bf16=tspec.optim.cpu_bf16, progress=progress)
        seconds = time.perf_counter() - t0
        recorder.log(f"{what}: {len(indices)} clips in {seconds:.1f}s "
                     f"({len(indices) / max(seconds, 1e-9):.1f} clips/s)")
        return logits

    tagger = load_fold_tagger(task.trained, k, task.n_classes)
    val_pred = None
    if task.val_idx is not None:
        val_pred = sigmoid(predict(tagger, cache("curated", layout.curated), task.val_idx, f"fold {k} out-of-fold"))
        done_before += n_val
    if task.test_path:
        logits = predict(tagger, cache("test", layout.test), np.arange(n_test), f"fold {k} test")
        RunFolder(Path(task.test_path).parent).save_array(Path(task.test_path), logits)
    recorder.progress(1.0, f"fold {k} inferred")
    return InferFoldOutcome(fold=k, val_pred=val_pred, test_saved=bool(task.test_path))


def infer_fold_on_node(task: InferFoldTask, recorder) -> InferFoldOutcome:
    """:func:`infer_fold_task` in a process of its own (a Ray task): the device is chosen where it runs."""
    configure_threads()
    device = pick_device(task.infer["device"], field="infer.device")
    return infer_fold_task(dataclasses.replace(task, device=str(device)), recorder)


def run(ctx: JobContext) -> str:
    """Infer with every fold model of the source run; record scores and write the artifacts."""
    spec: InferSpec = ctx.load_spec()
    store, run_id = ctx.store, ctx.run_id
    trained = load_trained_run(store, spec.run_id)
    tspec = trained.spec
    opened = ctx.open_run(device=spec.infer.device, device_field="infer.device", data_root=tspec.data.root,
                          n_folds=tspec.train.n_folds, fold_seed=tspec.train.fold_seed,
                          group_column=tspec.data.group_column)
    folder, device, data = opened.folder, opened.device, opened.data
    run_dir = folder.path
    source_dataset = trained.run.get("dataset_id")
    if source_dataset is not None and source_dataset != data.dataset_id:
        # Datasets are keyed by resolved path: a data root that is a link now pointing elsewhere is
        # another dataset, so both folders are named.
        trained_on = store.get_dataset(source_dataset)
        was = f" ({trained_on['root']})" if trained_on else ""
        raise FsatError(f"run {spec.run_id!r} was trained on dataset {source_dataset}{was} but its data root "
                        f"{tspec.data.root} is now dataset {data.dataset_id} ({Path(tspec.data.root).resolve()}); "
                        "the dataset changed since training, so its folds no longer apply — retrain on the "
                        "current dataset")
    classes, Y = data.classes, data.layout.curated.Y
    opened.record(name=spec.name or f"{trained.run['name']} tta", model=trained.run["model"], config=to_dict(spec),
                  config_hash=spec_hash(spec), seed=trained.run["seed"], parent_run_id=spec.run_id,
                  extra={"source_run_id": spec.run_id, "source_spec": to_dict(tspec), "short_clips": SHORT_CLIPS})
    inf = spec.infer
    sr = tspec.audio.sample_rate
    ctx.log(f"infer {run_id} from {spec.run_id} on {device}: splits {', '.join(spec.splits)}; "
            f"{inf.tta_crops} crops of {tspec.audio.crop_seconds:g} s ({inf.tta_crops_long} beyond "
            f"{inf.long_seconds:g} s), short clips: {SHORT_CLIPS}")

    do_oof, do_test = "oof" in spec.splits, "test" in spec.splits
    cache_dir = cache_dir_for(tspec.data.root, tspec.data.cache_dir)
    curated_cache = (build_cache(data.layout.curated, sample_rate=sr, cache_dir=cache_dir, progress=ctx.progress,
                                 start=0.0, span=0.03) if do_oof else None)
    test_cache = (build_cache(data.layout.test, sample_rate=sr, cache_dir=cache_dir, progress=ctx.progress,
                              start=0.03, span=0.03) if do_test else None)
    n_test = len(data.layout.test.fnames)

    oof_path = folder.oof
    try:
        oof = folder.load_oof((len(Y), len(classes)), dtype=np.float64)
    except DamagedFile as err:
        # Every fold's out-of-fold rows are recomputed from its checkpoint: nothing is lost but time.
        ctx.log(f"{err}; predicting every fold's out-of-fold clips again")
        oof = np.full((len(Y), len(classes)), np.nan, dtype=np.float64)
    done_folds = {r["fold"] for r in store.fold_scores(run_id)}
    val_sets = {k: np.flatnonzero(data.folds == k) for k in trained.folds}
    t_start = time.perf_counter()

    tasks = []
    for k in trained.folds:
        val_idx = val_sets[k]
        oof_done = not do_oof or (k in done_folds and np.isfinite(oof[val_idx]).all())
        test_path = folder.test_logits(k)
        test_done = not do_test or _readable(folder, test_path, (n_test, len(classes)), ctx.log)
        if oof_done and test_done:
            ctx.log(f"fold {k}: already inferred, kept")
            continue
        tasks.append(InferFoldTask(trained=trained, fold=k, n_classes=len(classes), data_root=str(tspec.data.root),
                                   infer=to_dict(inf), device=str(device),
                                   val_idx=None if oof_done else val_idx,
                                   test_path=None if test_done else str(test_path)))

    def record(outcome: InferFoldOutcome) -> None:
        if outcome.val_pred is not None:
            val_idx = val_sets[outcome.fold]
            oof[val_idx] = outcome.val_pred
            folder.save_array(oof_path, oof)
            score = record_fold_scores(store, run_id, outcome.fold, Y[val_idx], outcome.val_pred, classes)
            ctx.log(f"fold {outcome.fold}: lwlrap {score:.4f} with TTA")

    if tasks:
        executor = executor_from_env()
        try:
            dispatch_folds(ctx, executor, tasks, infer_fold_task, infer_fold_on_node, record,
                           resources=FoldResources.from_spec(spec.cluster), n_folds=len(trained.folds),
                           read=[Path(tspec.data.root), cache_dir, trained.run_dir], write=[run_dir],
                           local_kwargs={"caches": {"curated": curated_cache, "test": test_cache},
                                         "layout": data.layout}, start=0.06, width=0.92)
        finally:
            executor.close()

    parts = []
    cv = None
    if do_oof:
        cv, covered = record_oof_scores(store, run_id, Y, oof, classes)
        source_cv = trained.run.get("cv_lwlrap")
        if source_cv is not None:
            gain = cv - source_cv
            parts.append(f"OOF lwlrap {cv:.4f} with TTA ({source_cv:.4f} without, {gain:+.4f})")
        else:
            parts.append(f"OOF lwlrap {cv:.4f} with TTA")
        ctx.log(parts[-1] + f" over {covered} clips")
        store.set_run_scores(run_id, cv_lwlrap=cv)

    test_score = None
    if do_test:
        ctx.progress(0.98, "averaging folds")
        test = fold_average([folder.load_array(folder.test_logits(k)) for k in trained.folds])
        folder.save_array(folder.test, test)
        test_score, _ = score_test(data.layout, test, submission=folder.submission if spec.write_submission else None,
                                   log=ctx.log)
        if test_score is not None:
            parts.append(f"test lwlrap {test_score:.4f}")
            ctx.log(f"test lwlrap {test_score:.4f} ({len(trained.folds)} folds averaged)")
        else:
            parts.append(f"test predicted ({len(trained.folds)} folds averaged)")

    store.finish_run(run_id, status="done", cv_lwlrap=cv, test_lwlrap=test_score)
    ctx.log(f"infer done in {time.perf_counter() - t_start:.0f}s")
    return "; ".join(parts)
