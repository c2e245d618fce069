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
   starts from the best checkpoint so far.
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

import dataclasses

import copy
import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from engine.curriculum import (NoisyFilter, audit_per_class, check_teacher, clip_weights, filter_labels,
                               noisy_label_rows, overall_precision_recall)
from engine.data.dataset import ConcatCache
from engine.data.demo import NOISY_TRUTH_CSV
from engine.data.labels import parse_label_csv
from engine.errors import ConfigError, DataError
from engine.infer import predict_tta_logits, sigmoid
from engine.jobs.common import build_cache, cache_dir_for, configure_threads, pick_device, prepare_dataset, seed_everything
from engine.jobs.context import JobContext, environment_record, git_commit, write_json
from engine.jobs.infer import load_trained_run, load_fold_tagger
from engine.jobs.train import TrainingClips, make_loaders, model_label, wave_augmenters
from engine.models.registry import spec_augment_from_spec
from engine.runs.atomic import atomic_write, load_npy, save_npy, save_npz
from engine.runs.scores import record_fold_scores, record_oof_scores
from engine.metrics import lwlrap
from engine.specs import CurriculumSpec, StageSection, TrainSpec, spec_from_json, spec_hash, to_dict
from engine.train.losses import build_loss, class_weights_from_counts
from engine.train.loop import train_fold
from engine.train.schedule import EarlyStopping

FOLD_MEAN_WARNING = ("teacher.predictions = \"fold_mean\": every student fold is filtered by the mean of all "
                     "teacher fold models, four of which trained on that fold's validation clips; their knowledge "
                     "reaches the student through the pseudo-labels, so this run's CV is optimistic. "
                     "Use \"per_fold\" for a leak-free CV.")


# --- teacher predictions -------------------------------------------------------------------------

def teacher_noisy_logits(ctx: JobContext, trained, fold: int, noisy_cache, fnames: list[str], n_classes: int, *,
                         crop: int, tta_crops: int, batch_size: int, device: torch.device) -> np.ndarray:
    """Teacher fold ``fold``'s mean logits on every noisy clip, cached in the teacher's run folder."""
    cache_dir = trained.run_dir / "noisy_pred"
    path = cache_dir / f"fold{fold}_crops{tta_crops}.npz"
    if path.is_file():
        try:
            with np.load(path) as saved:
                if list(saved["fnames"]) == list(fnames) and saved["logits"].shape == (len(fnames), n_classes):
                    ctx.log(f"teacher fold {fold}: noisy predictions read from {path}")
                    return saved["logits"].astype(np.float32)
            ctx.log(f"{path} is for another noisy list; predicting again")
        except (OSError, ValueError, KeyError) as err:
            ctx.log(f"{path} is unreadable ({err}); predicting again")
    tagger = load_fold_tagger(trained, fold, n_classes)
    ctx.log(f"teacher fold {fold} predicting {len(fnames)} noisy clips ({tta_crops} crop(s) each)")
    ctx.progress(0.05, f"teacher fold {fold} predicting {len(fnames)} noisy clips")
    logits = predict_tta_logits(tagger, noisy_cache, np.arange(len(fnames)), crop=crop, k=tta_crops,
                                batch_size=batch_size, device=device, amp=trained.spec.optim.amp)
    save_npz(path, logits=logits.astype(np.float32), fnames=np.asarray(fnames))
    del tagger
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


# --- the student's training clips ------------------------------------------------------------------

def student_clips(curated_cache, curated_Y: np.ndarray, noisy_cache, filt: NoisyFilter, weights: np.ndarray,
                  noisy_weight: float) -> TrainingClips:
    """Training clips of a stage: curated (weight 1), then the kept noisy clips (clip weight x stage weight).

    Dropped clips (and every noisy clip at noisy weight 0) never enter training.
    """
    n = len(curated_Y)
    noisy_w = weights.astype(np.float32) * float(noisy_weight)
    kept = np.flatnonzero(filt.clip_kept & (noisy_w > 0))
    return TrainingClips(cache=ConcatCache([curated_cache, noisy_cache]),
                         Y=np.concatenate([np.asarray(curated_Y, np.float32), filt.labels.astype(np.float32)]),
                         n_curated=n, weights=np.concatenate([np.ones(n, np.float32), noisy_w]),
                         extra_rows=n + kept)


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


# --- fold state for resume -------------------------------------------------------------------------

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


def run(ctx: JobContext) -> str:
    """Filter the noisy labels with the teacher, train every student fold through the stages, record it all."""
    spec: CurriculumSpec = spec_from_json("curriculum", ctx.spec)
    store, run_id, run_dir = ctx.store, ctx.run_id, ctx.run_dir
    configure_threads()
    check = check_teacher(store, spec)
    trained = load_trained_run(store, spec.teacher_run_id, field="teacher_run_id")
    tspec: TrainSpec = trained.spec
    device = pick_device(spec.device, field="device")
    ctx.progress(0.0, "loading dataset")
    data = prepare_dataset(store, check.dataset["root"], n_folds=tspec.train.n_folds,
                           fold_seed=tspec.train.fold_seed)
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
    store.create_run(run_id, kind="curriculum", job_id=ctx.job.id, dataset_id=data.dataset_id, name=student.name,
                     model=trained.run["model"] or model_label(tspec), config=config,
                     config_hash=spec_hash(spec), seed=tspec.train.seed, device=str(device),
                     versions=environment_record(), git_commit=git_commit(), run_dir=str(run_dir),
                     parent_run_id=spec.teacher_run_id)
    write_json(run_dir / "config.json", {"kind": "curriculum", "run_id": run_id, "config_hash": spec_hash(spec),
                                         "spec": config, "curriculum": to_dict(spec),
                                         "teacher_run_id": spec.teacher_run_id})
    if (trained.run_dir / "mel_stats.npz").is_file():
        shutil.copyfile(trained.run_dir / "mel_stats.npz", run_dir / "mel_stats.npz")
    ctx.log(f"curriculum {run_id} from teacher {spec.teacher_run_id} on {device}: folds {folds}, "
            f"stages {', '.join(f'{s.name or i}:{s.epochs}ep@{s.noisy_weight:g}' for i, s in enumerate(spec.stages))}")
    if spec.teacher.predictions == "fold_mean":
        ctx.log(FOLD_MEAN_WARNING)

    sr = tspec.audio.sample_rate
    crop = int(round(tspec.audio.crop_seconds * sr))
    cache_dir = cache_dir_for(check.dataset["root"], tspec.data.cache_dir)
    curated_cache = build_cache(ctx, data.layout.curated, sample_rate=sr, cache_dir=cache_dir, start=0.0, span=0.02)
    noisy_cache = build_cache(ctx, noisy_table, sample_rate=sr, cache_dir=cache_dir, start=0.02, span=0.02)
    noisy_fnames = list(noisy_table.fnames)
    weak = noisy_table.Y > 0.5
    truth = load_noisy_truth(check.dataset["root"], noisy_fnames, classes)

    # 1. Teacher predictions, 2. filters and weights: all before any training, so an empty filter fails early.
    teacher_folds = folds if spec.teacher.predictions == "per_fold" else sorted(check.fold_scores)
    probs = {k: sigmoid(teacher_noisy_logits(ctx, trained, k, noisy_cache, noisy_fnames, len(classes), crop=crop,
                                             tta_crops=spec.teacher.tta_crops, batch_size=spec.teacher.batch_size,
                                             device=device))
             for k in teacher_folds}
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

    # 3. Stages per fold.
    counts = Y.sum(axis=0)
    class_w = (torch.as_tensor(class_weights_from_counts(counts), dtype=torch.float32, device=device)
               if tspec.loss.class_weights else None)
    # The curriculum's stages run the waveform augmentation per clip in the loader, whatever the backend.
    as_cpu = dataclasses.replace(tspec, augment=dataclasses.replace(tspec.augment, backend="cpu"))
    wave_aug = wave_augmenters(as_cpu, torch.device("cpu"))[0]
    batch_size = int(student.train.batch_size)
    n = len(Y)
    oof_path = run_dir / "oof.npy"
    oof = load_npy(oof_path) if oof_path.exists() else np.full((n, len(classes)), np.nan, dtype=np.float32)
    done_folds = {r["fold"] for r in store.fold_scores(run_id)}
    t_run = time.perf_counter()

    for i, fold in enumerate(folds):
        fold_dir = run_dir / f"fold{fold}"
        val_idx = np.flatnonzero(data.folds == fold)
        train_idx = np.flatnonzero(data.folds != fold)
        if fold in done_folds and (fold_dir / "best.pt").exists() and not np.isnan(oof[val_idx]).any():
            ctx.log(f"fold {fold}: already finished, kept")
            continue
        fold_dir.mkdir(parents=True, exist_ok=True)
        teacher_score = check.fold_scores[fold]
        filt, weights = filters[fold]
        state_path = fold_dir / "curriculum_state.json"
        state = _read_state(state_path) or {
            "stage": 0, "attempt": 0, "epoch_offset": 0, "start": str(trained.checkpoint(fold)),
            "stopper": EarlyStopping(patience=spec.patience, mode="max").state_dict(),
            "best_epoch": None, "best_lwlrap": None, "best_dir": None}
        if state["stage"] > 0 or state["attempt"] > 0 or state["epoch_offset"] > 0:
            ctx.log(f"fold {fold}: resuming at stage {state['stage']} attempt {state['attempt']}")

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
                ctx.log(f"fold {fold}: early stopping across stages, stage {label} and later skipped")
                break
            seed_everything(tspec.train.seed + 1000 * (fold + 1) + 10 * s_idx + attempt)
            tagger = load_fold_tagger(trained, fold, len(classes))
            tagger.spec_augment = spec_augment_from_spec(tspec)
            start = torch.load(state["start"], map_location="cpu", weights_only=True)
            tagger.model.load_state_dict(start["model"])
            frozen = set_trainable_blocks(tagger.model, stage.trainable_blocks)
            clips = student_clips(curated_cache, Y, noisy_cache, filt, weights, stage.noisy_weight)
            train_loader, val_loader = make_loaders(student, clips, train_idx, val_idx, crop, batch_size, wave_aug,
                                                    device, fold)
            loss_fn = build_loss(loss_name, label_smoothing=tspec.loss.label_smoothing, class_weights=class_w,
                                 gce_q=tspec.loss.gce_q, sce_alpha=tspec.loss.sce_alpha, sce_beta=tspec.loss.sce_beta,
                                 focal_gamma=tspec.loss.focal_gamma, lsoft_beta=tspec.loss.lsoft_beta)
            if not (stage_dir / "last.pt").exists():
                ctx.log(f"fold {fold} stage {label}: {stage.epochs} epochs, {clips.n_noisy} noisy clips "
                        f"at weight {stage.noisy_weight:g} x clip weight, loss {loss_name}; {frozen}")
            offset = state["epoch_offset"]
            stage_scores: list[float] = []
            best_in_stage: list[int] = []

            def on_step(step: int, total: int, _i: int = i, _s: int = s_idx, _label: str = label) -> None:
                frac = 0.1 + 0.88 * (_i + (_s + step / max(total, 1)) / len(spec.stages)) / len(folds)
                ctx.progress(min(frac, 0.98), f"fold {fold} stage {_label} step {step}/{total}")

            def on_epoch(r, _fold: int = fold, _label: str = label, _offset: int = offset) -> None:
                store.record_epoch(run_id, _fold, _offset + r.epoch, train_loss=r.train_loss, val_loss=r.val_loss,
                                   val_lwlrap=r.val_lwlrap, lr=r.lr, seconds=r.seconds,
                                   clips_per_sec=r.clips_per_sec, stage=_label)
                stage_scores.append(r.val_lwlrap)
                if r.is_best:
                    best_in_stage.append(_offset + r.epoch)
                ctx.log(f"fold {_fold} stage {_label} epoch {_offset + r.epoch}: train {r.train_loss:.4f} "
                        f"val {r.val_loss:.4f} lwlrap {r.val_lwlrap:.4f}{' *' if r.is_best else ''} "
                        f"(teacher {teacher_score:.4f})")

            o = tspec.optim
            result = train_fold(tagger, train_loader=train_loader, val_loader=val_loader, val_truth=Y[val_idx],
                                loss_fn=loss_fn, device=device, fold_dir=stage_dir, epochs=stage.epochs,
                                patience=spec.patience, head_lr=stage.head_lr or o.head_lr,
                                encoder_lr=stage.encoder_lr or o.encoder_lr, weight_decay=o.weight_decay,
                                betas=tuple(o.betas), warmup_epochs=o.warmup_epochs, warmup_steps=o.warmup_steps,
                                min_lr_ratio=o.min_lr_ratio, grad_clip=o.grad_clip, amp=o.amp, cpu_bf16=o.cpu_bf16,
                                mixup_p=tspec.augment.mixup_p, mixup_alpha=tspec.augment.mixup_alpha,
                                seed=tspec.train.seed + fold, on_epoch=on_epoch, on_step=on_step,
                                early_stopping=stopper)
            # The stage's epochs as recorded (a resumed stage re-reads the ones run before the kill).
            rows = [e for e in store.epochs(run_id) if e["fold"] == fold and e["stage"] == label]
            stage_best = max((e["val_lwlrap"] for e in rows if e["val_lwlrap"] is not None), default=None)
            if (stage_best is None or stage_best < teacher_score - spec.swap_tolerance) and attempt + 1 < len(losses):
                nxt = losses[attempt + 1]
                store.record_swap(run_id, fold, stage.name or chr(ord("A") + s_idx), attempt + 1, loss_from=loss_name,
                                  loss_to=nxt, stage_lwlrap=stage_best, teacher_lwlrap=teacher_score,
                                  tolerance=spec.swap_tolerance)
                ctx.log(f"fold {fold} stage {label}: best lwlrap {_fmt(stage_best)} is more than "
                        f"{spec.swap_tolerance:g} below the teacher's {teacher_score:.4f}; running the stage again "
                        f"from its start with loss {nxt}")
                state.update(attempt=attempt + 1, epoch_offset=offset + result.epochs_run)
                write_json(state_path, state)
                continue
            if stage_best is not None and stage_best < teacher_score - spec.swap_tolerance:
                ctx.log(f"fold {fold} stage {label}: still below the teacher with every fallback loss; kept")
            improved = (stage_dir / "best.pt").exists()
            if improved:
                best = torch.load(stage_dir / "best.pt", map_location="cpu", weights_only=True)
                state.update(best_dir=str(stage_dir), best_lwlrap=float(best["val_lwlrap"]),
                             best_epoch=offset + int(best["epoch"]), start=str(stage_dir / "best.pt"))
            state.update(stage=s_idx + 1, attempt=0, epoch_offset=offset + result.epochs_run,
                         stopper=stopper.state_dict())
            write_json(state_path, state)

        if state["best_dir"] is None:
            raise RuntimeError(f"fold {fold}: no stage recorded a validation score")
        best_dir = Path(state["best_dir"])
        with open(best_dir / "best.pt", "rb") as src:
            atomic_write(fold_dir / "best.pt", lambda dst: shutil.copyfileobj(src, dst))
        val_pred = load_npy(best_dir / "val_pred.npy")
        save_npy(fold_dir / "val_pred.npy", val_pred)
        oof[val_idx] = val_pred
        save_npy(oof_path, oof)
        record_fold_scores(store, run_id, fold, Y[val_idx], val_pred, classes, best_epoch=state["best_epoch"],
                           lwlrap_value=state["best_lwlrap"])
        ctx.log(f"fold {fold}: best lwlrap {state['best_lwlrap']:.4f} at epoch {state['best_epoch']} "
                f"(teacher {teacher_score:.4f}, gain {state['best_lwlrap'] - teacher_score:+.4f})")

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
