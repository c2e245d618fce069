"""The ``curriculum`` job: a student run from a finished train run and the noisy set.

1. Each teacher fold model predicts every noisy clip (``teacher.tta_crops``
   crops, logits averaged). The logits are cached in the teacher's run folder,
   ``noisy_pred/fold<k>_crops<K>.npz`` (one file per fold), so a second
   curriculum from the same teacher does not predict again.
2. Per student fold k, the teacher's probabilities filter the weak labels
   (:func:`engine.curriculum.filter_labels`) and weight the kept clips:
   ``per_fold`` uses teacher fold k only (leak-free); ``fold_mean`` the mean of
   every fold model (optimistic CV, said in the log). The audit per class is
   recorded (``noisy_audit``) and every clip's decision goes to
   ``runs/<id>/noisy_labels.csv`` (one row per fold and clip).
3. Student fold k starts from teacher fold k's ``best.pt`` and runs the stages
   in order on curated fold-k training clips plus the kept noisy clips (weight
   = clip weight x the stage's noisy weight), validating on curated fold k
   only. Early stopping and the best checkpoint run across stages; each stage
   starts from the best checkpoint so far. A student fold is one task of the
   fold seam (:class:`CurriculumFoldTask`, :func:`curriculum_fold_task`):
   each stage is one ``engine.jobs.folds.train_fold_task`` call, and the
   worker's executor runs the folds one after another here, or at once on a
   Ray cluster, while this process alone writes the store.
4. A stage whose best validation LWLRAP is more than ``swap_tolerance`` below
   the teacher's fold score is run again from its start with the next
   fallback loss (Lsoft, then GCE); the swap is recorded.
5. Fold, class and out-of-fold scores are recorded as for training, epochs
   with their stage; the gain over the teacher is what the
   ``curriculum_gain`` and ``curriculum_class_gain`` views compute.

The run is kind ``curriculum`` with the teacher as parent. Its stored config
is a train spec (the teacher's, with the student's folds), so inference and
blending treat it as a train run. A requeued job resumes at its fold, stage
and epoch: ``fold<k>/curriculum_state.json`` says where the fold is, each
stage attempt's ``last.pt`` where the stage is.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.atomic import atomic_write, load_npy, save_npy, save_npz
from engine.curriculum import (NoisyFilter, audit_per_class, check_teacher, clip_weights, filter_labels,
                               noisy_label_rows, overall_precision_recall)
from engine.data.cache import build_cache, cache_dir_for
from engine.data.clips import ExtraClips
from engine.data.demo import NOISY_TRUTH_CSV
from engine.data.labels import parse_label_csv
from engine.errors import ConfigError, DataError
from engine.executors import FoldResources, executor_from_env
from engine.infer import predict_tta_logits, sigmoid
from engine.jobs.context import JobContext, write_json
from engine.jobs.folds import FoldOutcome, FoldTask, dispatch_folds, prepare_fold_inputs, train_fold_task
from engine.jobs.infer import TrainedRun, load_fold_tagger, load_trained_run
from engine.metrics import lwlrap
from engine.runs import kinds
from engine.runs.folder import RunFolder
from engine.runs.recorder import StoreRecorder
from engine.runs.scores import record_fold_scores, record_oof_scores
from engine.specs import CurriculumSpec, StageSection, TrainSpec, from_dict, spec_hash, to_dict
from engine.train.runtime import configure_threads, pick_device
from engine.train.schedule import EarlyStopping

FOLD_MEAN_WARNING = ("teacher.predictions = \"fold_mean\": every student fold is filtered by the mean of all "
                     "teacher fold models, four of which trained on that fold's validation clips; their knowledge "
                     "reaches the student through the pseudo-labels, so this run's CV is optimistic. "
                     "Use \"per_fold\" for a leak-free CV.")


# --- teacher predictions -------------------------------------------------------------------------

def teacher_logits_path(trained: TrainedRun, fold: int, tta_crops: int) -> Path:
    """Where teacher fold ``fold``'s logits on the noisy clips are cached (in the teacher's run folder)."""
    return trained.run_dir / "noisy_pred" / f"fold{fold}_crops{tta_crops}.npz"


def cached_teacher_logits(path: Path, fnames: list[str], n_classes: int, log) -> np.ndarray | None:
    """The cached logits when ``path`` holds them for exactly these noisy clips, else None (said in the log)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as saved:
            if list(saved["fnames"]) == list(fnames) and saved["logits"].shape == (len(fnames), n_classes):
                return saved["logits"].astype(np.float32)
        log(f"{path} is for another noisy list; predicting again")
    except (OSError, ValueError, KeyError) as err:
        log(f"{path} is unreadable ({err}); predicting again")
    return None


@dataclass
class TeacherFoldTask:
    """One teacher fold's predictions on every noisy clip, as picklable data (a task of the fold seam)."""

    trained: TrainedRun
    fold: int
    n_classes: int
    data_root: str
    fnames: list[str]
    tta_crops: int
    batch_size: int
    device: str


@dataclass
class TeacherFoldOutcome:
    """Where a teacher fold's noisy logits were saved (the file, not the array, goes back to the head)."""

    fold: int
    path: str


def teacher_fold_task(task: TeacherFoldTask, recorder, *, layout=None, caches: dict | None = None
                      ) -> TeacherFoldOutcome:
    """Predict the noisy clips with teacher fold ``task.fold`` (``tta_crops`` crops, logits averaged).

    Saves the logits with their fnames at :func:`teacher_logits_path`;
    ``layout`` and ``caches`` reuse what the job loaded.
    """
    from engine.data.manifest import load_layout

    tspec = task.trained.spec
    sr = tspec.audio.sample_rate
    crop = int(round(tspec.audio.crop_seconds * sr))
    caches = caches if caches is not None else {}
    if caches.get("noisy") is None:
        layout = layout if layout is not None else load_layout(task.data_root)
        caches["noisy"] = build_cache(layout.noisy, sample_rate=sr,
                                      cache_dir=cache_dir_for(task.data_root, tspec.data.cache_dir),
                                      progress=recorder.progress)
    tagger = load_fold_tagger(task.trained, task.fold, task.n_classes)
    recorder.log(f"teacher fold {task.fold} predicting {len(task.fnames)} noisy clips ({task.tta_crops} crop(s) each)")

    def progress(done: int, total: int, rate: float) -> None:
        recorder.progress(done / max(total, 1), f"teacher fold {task.fold}: {done}/{total} noisy clips "
                                                f"({rate:.1f} clips/s)")

    logits = predict_tta_logits(tagger, caches["noisy"], np.arange(len(task.fnames)), crop=crop, k=task.tta_crops,
                                batch_size=task.batch_size, device=torch.device(task.device), amp=tspec.optim.amp,
                                progress=progress)
    path = teacher_logits_path(task.trained, task.fold, task.tta_crops)
    save_npz(path, logits=logits.astype(np.float32), fnames=np.asarray(task.fnames))
    return TeacherFoldOutcome(fold=task.fold, path=str(path))


def teacher_fold_on_node(task: TeacherFoldTask, recorder) -> TeacherFoldOutcome:
    """:func:`teacher_fold_task` in a process of its own (a Ray task): the device is chosen where it runs."""
    configure_threads()
    return teacher_fold_task(dataclasses.replace(task, device=str(pick_device(task.device, field="device"))),
                             recorder)


def teacher_noisy_logits(ctx: JobContext, executor, trained: TrainedRun, folds: list[int], noisy_cache, layout,
                         fnames: list[str], n_classes: int, *, tta_crops: int, batch_size: int, device: torch.device,
                         device_setting: str, resources: FoldResources, read: list[Path]) -> dict[int, np.ndarray]:
    """Each teacher fold's mean logits on every noisy clip: read from the cache, the rest predicted as fold tasks.

    The folds not cached yet go to the worker's executor (in this process,
    or at once on a Ray cluster); each writes its file in the teacher's run
    folder, read back here.
    """
    logits: dict[int, np.ndarray] = {}
    for k in folds:
        path = teacher_logits_path(trained, k, tta_crops)
        cached = cached_teacher_logits(path, fnames, n_classes, ctx.log)
        if cached is not None:
            ctx.log(f"teacher fold {k}: noisy predictions read from {path}")
            logits[k] = cached
    missing = [k for k in folds if k not in logits]
    if not missing:
        return logits
    local = executor.name == "local"
    tasks = [TeacherFoldTask(trained=trained, fold=k, n_classes=n_classes, data_root=str(layout.root), fnames=fnames,
                             tta_crops=tta_crops, batch_size=batch_size,
                             device=str(device) if local else device_setting) for k in missing]
    paths: dict[int, str] = {}

    def record(outcome: TeacherFoldOutcome) -> None:
        paths[outcome.fold] = outcome.path

    (trained.run_dir / "noisy_pred").mkdir(parents=True, exist_ok=True)
    dispatch_folds(ctx, executor, tasks, teacher_fold_task, teacher_fold_on_node, record, resources=resources,
                   n_folds=len(folds), read=read, write=[trained.run_dir / "noisy_pred"],
                   local_kwargs={"layout": layout, "caches": {"noisy": noisy_cache}}, start=0.04, width=0.05,
                   stage="teacher predictions")
    for k in missing:
        with np.load(paths[k]) as saved:
            logits[k] = saved["logits"].astype(np.float32)
    return logits


def load_noisy_truth(root: Path, fnames: list[str], classes: list[str]) -> np.ndarray | None:
    """The noisy clips' true labels from ``train_noisy_truth.csv`` (noisy CSV order), or None without it."""
    path = Path(root) / NOISY_TRUTH_CSV
    if not path.is_file():
        return None
    truth_fnames, Y = parse_label_csv(path, classes)
    index = {f: i for i, f in enumerate(truth_fnames)}
    missing = [f for f in fnames if f not in index]
    if missing:
        raise DataError(f"{len(missing)} noisy clips (first: {missing[0]}) have no true labels in it", file=path)
    return Y[[index[f] for f in fnames]] > 0.5


# --- one student fold, through the fold seam ---------------------------------------------------------

#: A fold's place in its stages, for resume (in ``fold<k>/``).
STATE_FILE = "curriculum_state.json"


@dataclass
class CurriculumFoldTask:
    """One student fold as picklable data: everything :func:`curriculum_fold_task` needs, no store.

    ``base`` is the fold's training task (the student's train spec, the run
    folder, the dataset root, the device, the dataset's folds and the
    teacher's log-mel statistics); ``curriculum`` the curriculum spec as a
    dict; ``noisy`` the fold's kept noisy clips with their filtered labels
    and clip weights (before a stage's ``noisy_weight``);
    ``teacher_checkpoint`` and ``teacher_lwlrap`` the teacher fold's
    ``best.pt`` and score.
    """

    base: FoldTask
    curriculum: dict
    noisy: ExtraClips
    teacher_checkpoint: str
    teacher_lwlrap: float

    @property
    def fold(self) -> int:
        """The student fold (the teacher fold it starts from)."""
        return self.base.fold


class CurriculumRecorder(StoreRecorder):
    """The head's recorder of a student fold: epochs with their stage, and the loss swaps."""

    def swap(self, *, fold: int, stage: str, attempt: int, loss_from: str, loss_to: str,
             stage_lwlrap: float | None, teacher_lwlrap: float, tolerance: float) -> None:
        """A stage fell too far below the teacher and runs again with ``loss_to`` (``curriculum_swaps``)."""
        self.store.record_swap(self.run_id, fold, stage, attempt, loss_from=loss_from, loss_to=loss_to,
                               stage_lwlrap=stage_lwlrap, teacher_lwlrap=teacher_lwlrap, tolerance=tolerance)


class _StageReports:
    """A stage's view of its fold's recorder: progress is the stage's share of the fold.

    Each epoch's score is also kept in the fold's state (``stage_scores``), so
    a stage resumed after a kill still knows its best score for the swap check.
    """

    def __init__(self, recorder, index: int, n_stages: int, state: dict, state_path: Path) -> None:
        self.recorder, self.index, self.n_stages = recorder, index, n_stages
        self.state, self.state_path = state, state_path

    def epoch(self, record) -> None:
        self.state["stage_scores"][str(record.epoch)] = record.val_lwlrap
        write_json(self.state_path, self.state)
        self.recorder.epoch(record)

    def progress(self, fraction: float, message: str) -> None:
        self.recorder.progress((self.index + min(max(fraction, 0.0), 1.0)) / self.n_stages, message)

    def log(self, line: str) -> None:
        self.recorder.log(line)


def _read_state(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _stage_label(stage: StageSection, index: int, loss: str, attempt: int) -> str:
    name = stage.name or chr(ord("A") + index)
    return name if attempt == 0 else f"{name}/{loss}"


def _stage_task(task: CurriculumFoldTask, spec: CurriculumSpec, s_idx: int, attempt: int, loss_name: str,
                label: str, stage_dir: Path, state: dict) -> FoldTask:
    """The training task of one stage attempt: the student's spec with the stage's epochs, loss and rates."""
    stage = spec.stages[s_idx]
    base = task.base
    d = copy.deepcopy(base.spec)
    d["train"]["epochs"] = stage.epochs
    d["train"]["patience"] = spec.patience
    d["loss"]["name"] = loss_name
    d["optim"]["head_lr"] = stage.head_lr or d["optim"]["head_lr"]
    d["optim"]["encoder_lr"] = stage.encoder_lr or d["optim"]["encoder_lr"]
    # Dropped clips (and every noisy clip at noisy weight 0) never enter training.
    weights = np.asarray(task.noisy.weights, np.float32) * np.float32(stage.noisy_weight)
    used = np.flatnonzero(weights > 0)
    extra = ExtraClips(split="noisy", fnames=[task.noisy.fnames[i] for i in used],
                       labels=np.asarray(task.noisy.labels, np.float32)[used], weights=weights[used])
    return dataclasses.replace(base, spec=d, initial_checkpoint=state["start"], extra=extra, tag=label,
                               fold_dir=str(stage_dir), epoch_offset=int(state["epoch_offset"]),
                               seed=base.train_spec.train.seed + 1000 * (base.fold + 1) + 10 * s_idx + attempt,
                               trainable_blocks=stage.trainable_blocks)


def curriculum_fold_task(task: CurriculumFoldTask, recorder, *, layout=None, caches: dict | None = None) -> FoldOutcome:
    """Train one student fold through the stages, resuming where it stopped; report through ``recorder``.

    Each stage attempt is one :func:`engine.jobs.folds.train_fold_task` call
    in ``fold<k>/stage<s>-<attempt>/``, started from the best checkpoint so
    far, with one early stopping carried across the stages. A stage whose
    best validation LWLRAP is more than ``swap_tolerance`` below the
    teacher's fold score runs again with the next fallback loss (reported as
    ``recorder.swap``). The fold's best checkpoint and validation
    predictions end in ``fold<k>/``; the returned outcome is what the head
    records. The store is never touched here, so the fold may run on
    another machine.
    """
    from engine.data.manifest import load_layout

    spec: CurriculumSpec = from_dict(CurriculumSpec, task.curriculum)
    base, fold = task.base, task.fold
    tspec = base.train_spec
    fold_dir = RunFolder(base.run_dir).fold_dir(fold)
    fold_dir.mkdir(parents=True, exist_ok=True)
    state_path = fold_dir / STATE_FILE
    state = _read_state(state_path) or {
        "stage": 0, "attempt": 0, "epoch_offset": 0, "start": task.teacher_checkpoint,
        "stopper": EarlyStopping(patience=spec.patience, mode="max").state_dict(),
        "best_epoch": None, "best_lwlrap": None, "best_dir": None}
    state.setdefault("stage_scores", {})
    if 0 < state["stage"] < len(spec.stages) or state["attempt"] > 0 or state["stage_scores"]:
        recorder.log(f"fold {fold}: resuming at stage {state['stage']} attempt {state['attempt']}")
    layout = layout if layout is not None else load_layout(base.data_root)
    caches = caches if caches is not None else {}
    teacher_score = task.teacher_lwlrap

    while state["stage"] < len(spec.stages):
        s_idx, attempt = state["stage"], state["attempt"]
        stage = spec.stages[s_idx]
        losses = [stage.loss or tspec.loss.name] + list(spec.fallback_losses)
        loss_name = losses[min(attempt, len(losses) - 1)]
        label = _stage_label(stage, s_idx, loss_name, attempt)
        stage_dir = fold_dir / f"stage{s_idx}-{attempt}"
        stopper = EarlyStopping(patience=spec.patience, mode="max")
        stopper.load_state_dict(state["stopper"])
        if stopper.should_stop:
            recorder.log(f"fold {fold}: early stopping across stages, stage {label} and later skipped")
            break
        stage_task = _stage_task(task, spec, s_idx, attempt, loss_name, label, stage_dir, state)
        reports = _StageReports(recorder, s_idx, len(spec.stages), state, state_path)
        inputs = prepare_fold_inputs(stage_task, reports, layout=layout, caches=caches)
        if not (stage_dir / "last.pt").exists():
            recorder.log(f"fold {fold} stage {label}: {stage.epochs} epochs, {len(stage_task.extra.fnames)} noisy "
                         f"clips at weight {stage.noisy_weight:g} x clip weight, loss {loss_name}")
        outcome = train_fold_task(stage_task, reports, inputs=inputs, early_stopping=stopper)
        offset = int(state["epoch_offset"])
        scores = [v for v in state["stage_scores"].values() if v is not None]
        stage_best = max(scores) if scores else None
        below = stage_best is None or stage_best < teacher_score - spec.swap_tolerance
        if below and attempt + 1 < len(losses):
            nxt = losses[attempt + 1]
            recorder.swap(fold=fold, stage=stage.name or chr(ord("A") + s_idx), attempt=attempt + 1,
                          loss_from=loss_name, loss_to=nxt, stage_lwlrap=stage_best, teacher_lwlrap=teacher_score,
                          tolerance=spec.swap_tolerance)
            recorder.log(f"fold {fold} stage {label}: best lwlrap {_fmt(stage_best)} is more than "
                         f"{spec.swap_tolerance:g} below the teacher's {teacher_score:.4f}; running the stage again "
                         f"from its start with loss {nxt}")
            state.update(attempt=attempt + 1, epoch_offset=offset + outcome.epochs_run, stage_scores={})
            write_json(state_path, state)
            continue
        if below:
            recorder.log(f"fold {fold} stage {label}: still below the teacher with every fallback loss; kept")
        if (stage_dir / "best.pt").exists():
            best = torch.load(stage_dir / "best.pt", map_location="cpu", weights_only=True)
            state.update(best_dir=str(stage_dir), best_lwlrap=float(best["val_lwlrap"]),
                         best_epoch=offset + int(best["epoch"]), start=str(stage_dir / "best.pt"))
        state.update(stage=s_idx + 1, attempt=0, epoch_offset=offset + outcome.epochs_run,
                     stopper=stopper.state_dict(), stage_scores={})
        write_json(state_path, state)

    if state["best_dir"] is None:
        raise RuntimeError(f"fold {fold}: no stage recorded a validation score")
    best_dir = Path(state["best_dir"])
    with open(best_dir / "best.pt", "rb") as src:
        atomic_write(fold_dir / "best.pt", lambda dst: shutil.copyfileobj(src, dst))
    val_pred = load_npy(best_dir / "val_pred.npy")
    save_npy(fold_dir / "val_pred.npy", val_pred)
    return FoldOutcome(fold=fold, best_lwlrap=float(state["best_lwlrap"]), best_epoch=state["best_epoch"],
                       val_idx=np.flatnonzero(np.asarray(base.folds) == fold), val_pred=val_pred,
                       epochs_run=int(state["epoch_offset"]))


def curriculum_fold_on_node(task: CurriculumFoldTask, recorder) -> FoldOutcome:
    """:func:`curriculum_fold_task` in a process of its own (a Ray task): the device is chosen where it runs."""
    configure_threads()
    device = str(pick_device(from_dict(CurriculumSpec, task.curriculum).device, field="device"))
    task = dataclasses.replace(task, base=dataclasses.replace(task.base, device=device))
    return curriculum_fold_task(task, recorder)


# --- the job ----------------------------------------------------------------------------------------

def run(ctx: JobContext) -> str:
    """Filter the noisy labels with the teacher, train every student fold through the stages, record it all.

    The teacher's predictions and the student folds are fold tasks on the
    worker's executor (this process, or a Ray cluster).
    """
    executor = executor_from_env()
    try:
        return _run(ctx, executor)
    finally:
        executor.close()


def _run(ctx: JobContext, executor) -> str:
    spec: CurriculumSpec = ctx.load_spec()
    store, run_id, run_dir = ctx.store, ctx.run_id, ctx.run_dir
    check = check_teacher(store, spec)
    trained = load_trained_run(store, spec.teacher_run_id, field="teacher_run_id")
    tspec: TrainSpec = trained.spec
    opened = ctx.open_run(device=spec.device, device_field="device", data_root=check.dataset["root"],
                          n_folds=tspec.train.n_folds, fold_seed=tspec.train.fold_seed)
    device, data = opened.device, opened.data
    classes, Y = data.classes, data.layout.curated.Y
    noisy_table = data.layout.noisy
    if noisy_table is None:
        raise ConfigError(f"{check.dataset['root']} has no noisy set (train_noisy.csv with its audio)",
                          field="teacher_run_id")
    folds = check.folds

    # The student's stored config is a train spec, so inference and blending read it like a train run's.
    student = copy.deepcopy(tspec)
    student.train.folds = list(folds)
    if spec.batch_size:
        student.train.batch_size = spec.batch_size
    student.name = spec.name or f"{tspec.name or spec.teacher_run_id} curriculum"
    config = to_dict(student)
    model = trained.run["model"] or kinds.model_label(tspec.model.arch, tspec.features.n_mels)
    opened.record(name=student.name, model=model, config=config, config_hash=spec_hash(spec), seed=tspec.train.seed,
                  parent_run_id=spec.teacher_run_id,
                  extra={"curriculum": to_dict(spec), "teacher_run_id": spec.teacher_run_id})
    if (trained.run_dir / "mel_stats.npz").is_file():
        shutil.copyfile(trained.run_dir / "mel_stats.npz", run_dir / "mel_stats.npz")
    ctx.log(f"curriculum {run_id} from teacher {spec.teacher_run_id} on {device}: folds {folds}, "
            f"stages {', '.join(f'{s.name or i}:{s.epochs}ep@{s.noisy_weight:g}' for i, s in enumerate(spec.stages))}")
    if spec.teacher.predictions == "fold_mean":
        ctx.log(FOLD_MEAN_WARNING)

    sr = tspec.audio.sample_rate
    cache_dir = cache_dir_for(check.dataset["root"], tspec.data.cache_dir)
    curated_cache = build_cache(data.layout.curated, sample_rate=sr, cache_dir=cache_dir, progress=ctx.progress,
                                start=0.0, span=0.02)
    noisy_cache = build_cache(noisy_table, sample_rate=sr, cache_dir=cache_dir, progress=ctx.progress, start=0.02,
                              span=0.02)
    noisy_fnames = list(noisy_table.fnames)
    weak = noisy_table.Y > 0.5
    truth = load_noisy_truth(check.dataset["root"], noisy_fnames, classes)

    # 1. Teacher predictions, 2. filters and weights: all before any training, so an empty filter fails early.
    teacher_folds = folds if spec.teacher.predictions == "per_fold" else sorted(check.fold_scores)
    resources = FoldResources.from_spec(spec.cluster)
    read = [Path(check.dataset["root"]), cache_dir, trained.run_dir]
    logits = teacher_noisy_logits(ctx, executor, trained, teacher_folds, noisy_cache, data.layout, noisy_fnames,
                                  len(classes), tta_crops=spec.teacher.tta_crops, batch_size=spec.teacher.batch_size,
                                  device=device, device_setting=spec.device, resources=resources, read=read)
    probs = {k: sigmoid(logits[k]) for k in teacher_folds}
    if spec.teacher.predictions == "fold_mean":
        mean = np.mean([probs[k] for k in teacher_folds], axis=0)
        probs = {k: mean for k in folds}
    f = spec.filter
    filters: dict[int, tuple[NoisyFilter, np.ndarray]] = {}
    csv_rows: list[dict] = []
    for k in folds:
        filt = filter_labels(weak, probs[k], keep_threshold=f.keep_threshold, pseudo_threshold=f.pseudo_threshold,
                             max_per_class=f.max_per_class, threshold_mode=f.threshold_mode)
        weights = clip_weights(filt, probs[k])
        audit = audit_per_class(filt, weights, classes, truth)
        for row, c in zip(audit, range(len(classes))):
            row["n_final"] = int(filt.labels[:, c].sum())
            if truth is not None:
                row["n_true"] = int(truth[:, c].sum())
                row["n_final_right"] = int((filt.labels[:, c] & truth[:, c]).sum())
        store.record_noisy_audit(run_id, k, audit)
        csv_rows.extend(noisy_label_rows(noisy_fnames, classes, filt, weights, fold=k))
        summary = (f"fold {k} filter: {int(filt.clip_kept.sum())}/{len(weak)} noisy clips kept, "
                   f"{int(filt.kept.sum())}/{int(weak.sum())} weak labels kept, {int(filt.added.sum())} added")
        if truth is not None:
            pr = overall_precision_recall(filt, truth)
            summary += (f"; label precision {_fmt(pr['weak_precision'])} -> {_fmt(pr['precision'])}, "
                        f"recall {_fmt(pr['weak_recall'])} -> {_fmt(pr['recall'])}")
        ctx.log(summary)
        if not filt.clip_kept.any():
            _write_noisy_labels(run_dir / "noisy_labels.csv", csv_rows)
            raise ConfigError(f"every noisy clip was filtered out for fold {k} (weak labels -> kept per class: "
                              f"{filt.class_counts_text(classes)}); lower filter.keep_threshold, use "
                              "filter.threshold_mode = \"per_class\", or train a stronger teacher",
                              field="filter.keep_threshold")
        filters[k] = (filt, weights)
    _write_noisy_labels(run_dir / "noisy_labels.csv", csv_rows)

    # 3. The stages of every unfinished fold, on the worker's executor (one after another here, at once on Ray).
    folder = RunFolder(run_dir)
    n = len(Y)
    oof = folder.load_array(folder.oof) if folder.oof.exists() else np.full((n, len(classes)), np.nan, np.float32)
    done_folds = {r["fold"] for r in store.fold_scores(run_id)}
    stats = RunFolder(trained.run_dir).load_mel_stats()
    curriculum = to_dict(spec)
    t_run = time.perf_counter()
    tasks = []
    for fold in folds:
        val_idx = np.flatnonzero(data.folds == fold)
        if fold in done_folds and folder.best(fold).exists() and not np.isnan(oof[val_idx]).any():
            ctx.log(f"fold {fold}: already finished, kept")
            continue
        filt, weights = filters[fold]
        kept = np.flatnonzero(filt.clip_kept)
        noisy = ExtraClips(split="noisy", fnames=[noisy_fnames[i] for i in kept],
                           labels=filt.labels[kept].astype(np.float32), weights=weights[kept].astype(np.float32))
        base = FoldTask(spec=config, fold=fold, run_dir=str(run_dir), data_root=str(check.dataset["root"]),
                        device=str(device), folds=data.folds.tolist(), mel_stats=stats)
        tasks.append(CurriculumFoldTask(base=base, curriculum=curriculum, noisy=noisy,
                                        teacher_checkpoint=str(trained.checkpoint(fold)),
                                        teacher_lwlrap=float(check.fold_scores[fold])))

    def record(outcome: FoldOutcome) -> None:
        val_idx = outcome.val_idx
        oof[val_idx] = outcome.val_pred
        folder.save_array(folder.oof, oof)
        record_fold_scores(store, run_id, outcome.fold, Y[val_idx], outcome.val_pred, classes,
                           best_epoch=outcome.best_epoch, lwlrap_value=outcome.best_lwlrap)
        teacher_score = check.fold_scores[outcome.fold]
        ctx.log(f"fold {outcome.fold}: best lwlrap {outcome.best_lwlrap:.4f} at epoch {outcome.best_epoch} "
                f"(teacher {teacher_score:.4f}, gain {outcome.best_lwlrap - teacher_score:+.4f})")

    if tasks:
        dispatch_folds(ctx, executor, tasks, curriculum_fold_task, curriculum_fold_on_node, record,
                       resources=resources, n_folds=len(folds), read=read, write=[run_dir],
                       local_kwargs={"layout": data.layout, "caches": {"curated": curated_cache, "noisy": noisy_cache}},
                       start=0.1, width=0.88, recorder_cls=CurriculumRecorder)

    covered = ~np.isnan(oof).any(axis=1)
    cv, _ = record_oof_scores(store, run_id, Y, oof, classes)
    store.finish_run(run_id, status="done", cv_lwlrap=cv)
    teacher_oof_path = trained.run_dir / "oof.npy"
    gain = ""
    if teacher_oof_path.is_file():
        t_oof = load_npy(teacher_oof_path)
        if not np.isnan(t_oof[covered]).any():
            t_cv = lwlrap(Y[covered], t_oof[covered])
            gain = f" (teacher {t_cv:.4f} on the same clips, gain {cv - t_cv:+.4f})"
    ctx.log(f"out-of-fold lwlrap {cv:.4f} over {int(covered.sum())} clips{gain} "
            f"({time.perf_counter() - t_run:.0f}s)")
    if spec.teacher.predictions == "fold_mean":
        ctx.log("this CV is optimistic: " + FOLD_MEAN_WARNING)
    return f"CV lwlrap {cv:.4f}{gain}"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _write_noisy_labels(path: Path, rows: list[dict]) -> None:
    """``noisy_labels.csv``: fold, fname, original labels, kept labels, added labels, weight (0 = dropped)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["fold", "fname", "labels", "kept", "added", "weight"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
