"""The noisy-label curriculum's decisions, as pure numpy functions.

A teacher's probabilities on the noisy clips decide which weak labels a student
trains on (:func:`filter_labels`), how much each kept clip weighs
(:func:`clip_weights`), and what that did per class (:func:`audit_per_class`,
with the filter's precision and recall when the noisy set's true labels are
known). The job (``engine.jobs.curriculum``) calls these; the console and the
CLI only read what it recorded. numpy and stdlib only.

Defaults and why:

- ``keep_threshold = 0.8``, ``pseudo_threshold = 0.95``: the plan's values.
  A weak label survives when the teacher gives its class at least 0.8; a
  class the weak label lacks is added when the teacher gives it at least
  0.95 (adding is riskier than keeping, so its bar is higher).
- ``threshold_mode = "global"``: one threshold for every class. Teacher
  probabilities on the noisy clips are not calibrated the way they are on
  curated ones (other recording sources), so a class the teacher is shy on
  in the noisy domain may keep nothing. ``"per_class"`` scales the keep
  threshold by the highest probability the teacher gives that class on any
  noisy clip (label-free, so it leaks nothing across folds): a class whose
  best noisy clip scores 0.6 keeps weak labels at 0.48 and above with
  ``keep_threshold = 0.8``. The pseudo threshold stays absolute: scaled, it
  would add every class to its top-scoring clip (measured on the demo: 95
  pseudo-labels per fold, most of them wrong), and adding a label the weak
  label lacks should need real confidence.
- ``max_per_class = 0`` (no cap): a cap keeps the N most confident clips of
  each class, which bounds what a badly calibrated, over-confident class can
  bring in; it is off by default because the thresholds already bound it
  and the demo's classes are balanced.
- Weights: the largest teacher probability among a clip's final positives,
  clipped to ``[0.5, 1.0]`` (the plan's values): a clip the teacher is sure
  of counts fully, a borderline one half. The class weight of
  ``loss.class_weights`` is applied by the loss to every column of every
  clip, curated and noisy alike, so it is not multiplied in here a second
  time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["THRESHOLD_MODES", "WEIGHT_RANGE", "NoisyFilter", "audit_per_class", "clip_weights", "filter_labels",
           "noisy_label_rows", "overall_precision_recall"]

THRESHOLD_MODES = ("global", "per_class")
#: Per-clip weights are clipped to this range.
WEIGHT_RANGE = (0.5, 1.0)


@dataclass
class NoisyFilter:
    """What the filter decided for every noisy clip and class.

    ``kept``: weak labels that survived; ``added``: pseudo-labels the weak
    label lacked; ``labels``: the final training labels (``kept | added``,
    after the per-class cap); ``clip_kept``: clips with at least one final
    positive (the others are dropped); ``keep_thresholds`` and
    ``pseudo_thresholds``: the per-class thresholds used.
    """

    weak: np.ndarray
    kept: np.ndarray
    added: np.ndarray
    labels: np.ndarray
    clip_kept: np.ndarray
    keep_thresholds: np.ndarray
    pseudo_thresholds: np.ndarray

    @property
    def dropped(self) -> np.ndarray:
        """Weak labels the filter removed (below threshold, capped, or on a dropped clip)."""
        return self.weak & ~self.labels

    def class_counts_text(self, classes: list[str], limit: int = 8) -> str:
        """Per-class ``labelled -> kept`` counts of the most labelled classes, for messages."""
        n_weak = self.weak.sum(axis=0)
        n_final = self.labels.sum(axis=0)
        order = np.argsort(-n_weak, kind="stable")[:limit]
        return ", ".join(f"{classes[c]} {int(n_weak[c])}->{int(n_final[c])}" for c in order if n_weak[c])


def filter_labels(weak: np.ndarray, probs: np.ndarray, *, keep_threshold: float = 0.8,
                  pseudo_threshold: float = 0.95, max_per_class: int = 0,
                  threshold_mode: str = "global") -> NoisyFilter:
    """Filter weak noisy labels with teacher probabilities; add confident pseudo-labels.

    ``weak`` is the noisy set's label matrix ``[N, C]`` (0/1), ``probs`` the
    teacher's probabilities ``[N, C]``. A weak label is kept when its
    probability is at least the class's keep threshold; a missing label is
    added when its probability is at least the pseudo threshold. With
    ``max_per_class > 0`` each class keeps only its ``max_per_class`` most
    confident clips (ties: lower clip number first). Clips with no positive
    left are dropped (``clip_kept`` False, no labels).
    """
    weak = np.asarray(weak) > 0.5
    probs = np.asarray(probs, dtype=np.float64)
    if weak.shape != probs.shape or weak.ndim != 2:
        raise ValueError(f"weak labels {weak.shape} and teacher probabilities {probs.shape} must both be "
                         "[clips, classes]")
    if not np.all(np.isfinite(probs)):
        raise ValueError("teacher probabilities contain NaN or inf")
    if threshold_mode not in THRESHOLD_MODES:
        raise ValueError(f"threshold_mode {threshold_mode!r} is not one of {', '.join(THRESHOLD_MODES)}")
    n, c = probs.shape
    if threshold_mode == "per_class":
        # Scaled by how confident the teacher ever gets on each class in the noisy domain.
        scale = probs.max(axis=0) if n else np.ones(c)
    else:
        scale = np.ones(c)
    keep_thr = keep_threshold * scale
    pseudo_thr = np.full(c, float(pseudo_threshold))
    kept = weak & (probs >= keep_thr[None, :])
    added = ~weak & (probs >= pseudo_thr[None, :])
    labels = kept | added
    if max_per_class > 0:
        for k in range(c):
            rows = np.flatnonzero(labels[:, k])
            if len(rows) > max_per_class:
                # Most confident first; a stable sort keeps lower clip numbers first on ties.
                order = rows[np.argsort(-probs[rows, k], kind="stable")]
                labels[order[max_per_class:], k] = False
        kept &= labels
        added &= labels
    clip_kept = labels.any(axis=1)
    return NoisyFilter(weak=weak, kept=kept, added=added, labels=labels, clip_kept=clip_kept,
                       keep_thresholds=keep_thr, pseudo_thresholds=pseudo_thr)


def clip_weights(filt: NoisyFilter, probs: np.ndarray, *, weight_range: tuple[float, float] = WEIGHT_RANGE
                 ) -> np.ndarray:
    """Per-clip loss weight: the largest teacher probability among its final positives, clipped.

    Dropped clips get 0. Returns float32 ``[N]``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    low, high = weight_range
    best = np.where(filt.labels, probs, -np.inf).max(axis=1) if probs.size else np.zeros(len(probs))
    weights = np.clip(best, low, high)
    weights[~filt.clip_kept] = 0.0
    return weights.astype(np.float32)


def _ratio(num: int, den: int) -> float | None:
    return float(num) / den if den else None


def audit_per_class(filt: NoisyFilter, weights: np.ndarray, classes: list[str],
                    truth: np.ndarray | None = None) -> list[dict]:
    """Per class: noisy clips carrying the label, kept, dropped, added, mean weight.

    ``mean_weight`` is over the kept clips whose final labels include the class
    (None when there are none). With ``truth`` (the noisy set's true labels,
    ``[N, C]``) each row also holds: ``n_wrong`` (weak labels that are wrong),
    ``wrong_dropped``, ``right_lost`` (right weak labels the filter removed),
    ``added_right``, ``weak_precision`` (share of weak labels that are right),
    ``precision`` (share of final labels that are right) and ``recall`` (share
    of the class's true labels on noisy clips that are in the final labels).
    """
    weights = np.asarray(weights, dtype=np.float64)
    if truth is not None:
        truth = np.asarray(truth) > 0.5
        if truth.shape != filt.weak.shape:
            raise ValueError(f"true labels {truth.shape} do not match the noisy labels {filt.weak.shape}")
    rows = []
    for k, name in enumerate(classes):
        final = filt.labels[:, k]
        row = {
            "class_idx": k, "class_name": name,
            "n_labelled": int(filt.weak[:, k].sum()),
            "n_kept": int(filt.kept[:, k].sum()),
            "n_dropped": int(filt.dropped[:, k].sum()),
            "n_added": int(filt.added[:, k].sum()),
            "mean_weight": float(weights[final].mean()) if final.any() else None,
        }
        if truth is not None:
            t = truth[:, k]
            w = filt.weak[:, k]
            row.update({
                "n_wrong": int((w & ~t).sum()),
                "wrong_dropped": int((w & ~t & ~final).sum()),
                "right_lost": int((w & t & ~final).sum()),
                "added_right": int((filt.added[:, k] & t).sum()),
                "weak_precision": _ratio(int((w & t).sum()), int(w.sum())),
                "precision": _ratio(int((final & t).sum()), int(final.sum())),
                "recall": _ratio(int((final & t).sum()), int(t.sum())),
            })
        rows.append(row)
    return rows


def overall_precision_recall(filt: NoisyFilter, truth: np.ndarray) -> dict:
    """Micro precision and recall of the weak labels and of the filtered labels against the truth."""
    truth = np.asarray(truth) > 0.5
    weak, final = filt.weak, filt.labels
    return {
        "weak_precision": _ratio(int((weak & truth).sum()), int(weak.sum())),
        "weak_recall": _ratio(int((weak & truth).sum()), int(truth.sum())),
        "precision": _ratio(int((final & truth).sum()), int(final.sum())),
        "recall": _ratio(int((final & truth).sum()), int(truth.sum())),
        "clips_kept": int(filt.clip_kept.sum()),
        "clips": int(len(weak)),
    }


def _names(mask_row: np.ndarray, classes: list[str]) -> str:
    return ",".join(classes[k] for k in np.flatnonzero(mask_row))


def noisy_label_rows(fnames: list[str], classes: list[str], filt: NoisyFilter, weights: np.ndarray,
                     fold: int | None = None) -> list[dict]:
    """One row per noisy clip: fname, original, kept and added labels, weight (0 = dropped)."""
    rows = []
    for i, fname in enumerate(fnames):
        row = {} if fold is None else {"fold": fold}
        row.update({"fname": fname, "labels": _names(filt.weak[i], classes),
                    "kept": _names(filt.kept[i], classes), "added": _names(filt.added[i], classes),
                    "weight": round(float(weights[i]), 6)})
        rows.append(row)
    return rows


# --- queue-time checks of a curriculum spec (stdlib + the store's read calls) -----------------------

#: The run kinds a curriculum takes as its teacher.
TEACHER_KINDS = ("train",)


@dataclass
class TeacherCheck:
    """What the checks found: the teacher's run row, its dataset row, the student folds and checkpoints."""

    run: dict
    dataset: dict
    folds: list[int]
    fold_scores: dict[int, float]

    def checkpoint(self, fold: int):
        """The teacher fold's ``best.pt``."""
        from pathlib import Path

        return Path(self.run["run_dir"]) / f"fold{fold}" / "best.pt"


def check_teacher(store, spec) -> TeacherCheck:
    """Everything about a curriculum's teacher that can be known before it runs; ConfigError names the field.

    Refuses a missing, unfinished or non-train teacher, a teacher whose dataset
    has no noisy set or is not ``data_root``, student folds the teacher did not
    train, and a missing teacher fold checkpoint. ``store`` is an
    ``engine.store.Store`` (read calls only).
    """
    from pathlib import Path

    from engine.errors import ConfigError

    run_id = spec.teacher_run_id
    run = store.get_run(run_id)
    if run is None:
        raise ConfigError(f"no run {run_id!r}; name a finished train run (see `fsat runs`)", field="teacher_run_id")
    if run["kind"] not in TEACHER_KINDS:
        raise ConfigError(f"run {run_id!r} is a {run['kind']} run; a curriculum's teacher is a finished train run "
                          "with fold checkpoints", field="teacher_run_id")
    if run["status"] != "done":
        raise ConfigError(f"run {run_id!r} is {run['status']}, not finished; queue the curriculum once it is done",
                          field="teacher_run_id")
    dataset = store.get_dataset(run["dataset_id"]) if run.get("dataset_id") is not None else None
    if dataset is None:
        raise ConfigError(f"run {run_id!r} is linked to no dataset", field="teacher_run_id")
    root = Path(dataset["root"])
    if spec.data_root and Path(spec.data_root).resolve() != root.resolve():
        raise ConfigError(f"the teacher {run_id!r} trained on {root}, not on {spec.data_root}; name the teacher's "
                          "dataset or leave data_root empty", field="data_root")
    has_audio = (root / "train_noisy").is_dir() or (root / "train_noisy.zip").is_file()
    if not dataset.get("n_noisy") or not (root / "train_noisy.csv").is_file() or not has_audio:
        raise ConfigError(f"the teacher's dataset {root} has no noisy set (train_noisy.csv with train_noisy/ or "
                          "train_noisy.zip); a curriculum filters the noisy clips", field="teacher_run_id")
    scores = {int(r["fold"]): float(r["lwlrap"]) for r in store.fold_scores(run_id)}
    folds = list(spec.folds) if spec.folds else sorted(scores)
    for i, k in enumerate(spec.folds):
        if k not in scores:
            raise ConfigError(f"the teacher {run_id!r} has no fold {k} (it trained folds "
                              f"{', '.join(map(str, sorted(scores))) or 'none'})", field=f"folds[{i}]")
    if not folds:
        raise ConfigError(f"the teacher {run_id!r} recorded no finished fold", field="teacher_run_id")
    check = TeacherCheck(run=run, dataset=dataset, folds=folds, fold_scores=scores)
    for k in folds:
        if not check.checkpoint(k).is_file():
            raise ConfigError(f"the teacher's fold checkpoint {check.checkpoint(k)} is missing; restore the run "
                              "folder or retrain the teacher", field="teacher_run_id")
    return check


def audit_report(store, run_id: str) -> dict:
    """What a curriculum run did, for the CLI (``fsat audit``) and the console, from the store alone.

    ``gain``: student vs teacher LWLRAP per fold and overall (fold -1);
    ``classes``: out-of-fold LRAP per class, student vs teacher, with the gain;
    ``audit``: the per-class noisy-label audit pooled over folds, sorted by the
    share of weak labels dropped (precision and recall None without the truth);
    ``swaps``: every stage re-run with a fallback loss; ``truth_known``.
    """
    from engine.errors import FsatError

    run = store.get_run(run_id)
    if run is None:
        raise FsatError(f"no run {run_id!r} (see `fsat runs`)")
    if run["kind"] != "curriculum":
        raise FsatError(f"run {run_id!r} is a {run['kind']} run; the audit is for curriculum runs")
    audit = store.noisy_audit(run_id)
    audit.sort(key=lambda r: (-(r["share_dropped"] if r["share_dropped"] is not None else -1.0), r["class_idx"]))
    return {
        "run_id": run_id, "teacher_run_id": run["parent_run_id"], "status": run["status"],
        "gain": store.curriculum_gain(run_id),
        "classes": store.class_gain(run_id),
        "audit": audit,
        "swaps": store.swaps(run_id),
        "truth_known": any(r["recall"] is not None for r in audit),
    }
