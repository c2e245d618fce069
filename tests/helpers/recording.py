"""Runs recorded the way the jobs record them, through the engine's own recording and scoring code, without training.

The console and CLI tests build their databases with these: arrays made with
numpy go through the run folder's atomic writer, scores through
``engine.runs.scores``, epochs through a ``StoreRecorder``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def record_run(store, runs_root: Path, run_id: str, *, kind: str = "train", dataset_id: int | None,
               oof=None, test=None, truth=None, folds=None, overrides: tuple[str, ...] = (),
               parent: str | None = None, status: str = "done", name: str = "", cv: float | None = None,
               job_id: int | None = None) -> Path:
    """A run recorded the way the jobs record one, without training: a fixture for console and CLI tests.

    The config is the resolved spec of ``kind`` (``overrides`` as ``key=value``),
    the ``model`` column the label the job writes (``cnn14-64mel`` for a train
    run, the parent's for an infer run), arrays go through the run folder's
    atomic writer and scores through ``engine.runs.scores``: per fold where
    ``folds`` (fold per curated clip) has finite rows, and out-of-fold. ``cv``
    replaces the computed CV LWLRAP (a run whose scores cannot be checked
    against ``truth``).
    """
    from engine.intake import FOLD_CHECKPOINT_KINDS
    from engine.runs.folder import RunFolder
    from engine.runs.kinds import model_label
    from engine.runs.scores import covered_rows, record_fold_scores, record_oof_scores
    from engine.specs import spec_hash, to_dict
    from engine.presets import resolve_spec

    folder = RunFolder(runs_root / run_id).create()
    dataset = store.get_dataset(dataset_id) if dataset_id is not None else None
    data_root = str(dataset["root"]) if dataset else str(runs_root)
    seed = None
    if kind in FOLD_CHECKPOINT_KINDS:
        spec = resolve_spec("train", overrides=list(overrides), data_root=data_root)
        model, seed = model_label(spec.model.arch, spec.features.n_mels), spec.train.seed
    elif kind == "infer":
        spec = resolve_spec("infer", overrides=[f'run_id="{parent}"', *overrides])
        trained = (store.get_run(parent) or {}) if parent else {}
        model, seed = trained.get("model", ""), trained.get("seed")
    else:
        # An ensemble's data are its members' (its spec has no data root).
        spec = resolve_spec(kind, overrides=list(overrides), **({} if kind == "ensemble" else {"data_root": data_root}))
        model = kind
    store.create_run(run_id, kind=kind, job_id=job_id, dataset_id=dataset_id, parent_run_id=parent,
                     name=name or run_id, model=model, config=to_dict(spec), config_hash=spec_hash(spec),
                     seed=seed, device="cpu", run_dir=str(folder.path))
    if oof is not None:
        folder.save_array(folder.oof, np.asarray(oof))
    if test is not None:
        folder.save_array(folder.test, np.asarray(test))
    scored = None
    if oof is not None and truth is not None and np.shape(oof) == np.shape(truth) and covered_rows(oof).any():
        classes = list((dataset or {}).get("classes") or [str(i) for i in range(np.shape(truth)[1])])
        if folds is not None:
            folds = np.asarray(folds)
            for k in sorted(set(folds.tolist())):
                rows = (folds == k) & covered_rows(oof)
                if rows.any() and rows.sum() == (folds == k).sum():
                    record_fold_scores(store, run_id, int(k), truth[rows], np.asarray(oof)[rows], classes)
        scored, _ = record_oof_scores(store, run_id, np.asarray(truth), np.asarray(oof), classes)
    if status != "running":
        store.finish_run(run_id, status=status, cv_lwlrap=cv if cv is not None else scored)
    return folder.path


def tagger_scores(truth, skill: float, *, seed: int = 0, shared: float = 0.0):
    """Probabilities a tagger of the given ``skill`` might output for ``truth`` (higher skill, higher LWLRAP).

    A fraction ``shared`` of the noise's variance is the same for every seed:
    taggers trained on the same clips make some of the same mistakes.
    """
    own = np.random.default_rng(seed).normal(size=np.shape(truth))
    common = np.random.default_rng(-1 % 2**32).normal(size=np.shape(truth))
    noise = np.sqrt(1.0 - shared) * own + np.sqrt(shared) * common
    return (1.0 / (1.0 + np.exp(-(np.asarray(truth) * skill + noise)))).astype(np.float32)


def stream_epochs(store, run_id: str, fold: int, val_lwlraps, *, first_epoch: int = 1, seconds: float = 1.0,
                  lines: list[str] | None = None) -> list:
    """Record epochs of one fold the way a training fold reports them: ``EpochRecord`` into a ``StoreRecorder``.

    Epoch ``first_epoch + i`` has validation LWLRAP ``val_lwlraps[i]`` and took
    ``seconds``; losses and the learning rate fall as 1/epoch. Returns the
    records; their log lines go to ``lines`` when given.
    """
    from engine.runs.recorder import EpochRecord, StoreRecorder

    recorder = StoreRecorder(store, run_id, log=(lines.append if lines is not None else (lambda line: None)))
    records, best = [], float("-inf")
    for i, val in enumerate(val_lwlraps):
        epoch = first_epoch + i
        record = EpochRecord(fold=fold, epoch=epoch, train_loss=1.2 / epoch, val_loss=1.0 / epoch + 0.05 * fold,
                             val_lwlrap=float(val), lr=1e-3 / epoch, seconds=float(seconds),
                             clips_per_sec=96.0 / float(seconds), is_best=float(val) > best)
        best = max(best, float(val))
        recorder.epoch(record)
        records.append(record)
    return records


def record_trained_fold(store, runs_root: Path, run_id: str, fold: int, records: list, truth, oof, folds) -> float:
    """A trained fold's end, as the train job records it: its rows of ``oof.npy`` (saved atomically), its
    LWLRAP (the best epoch's validation score, as early stopping saw it) and per-class scores. Returns the LWLRAP."""
    from engine.runs.folder import RunFolder
    from engine.runs.scores import record_fold_scores

    folder = RunFolder(runs_root / run_id)
    run = store.get_run(run_id)
    classes = list(store.get_dataset(run["dataset_id"])["classes"])
    rows = np.asarray(folds) == fold
    saved = folder.load_array(folder.oof) if folder.oof.exists() else np.full(np.shape(truth), np.nan, np.float32)
    saved[rows] = np.asarray(oof)[rows]
    folder.save_array(folder.oof, saved)
    best = max(records, key=lambda r: r.val_lwlrap)
    return record_fold_scores(store, run_id, fold, np.asarray(truth)[rows], np.asarray(oof)[rows], classes,
                              best_epoch=best.epoch, lwlrap_value=best.val_lwlrap)


def finish_trained_run(store, runs_root: Path, run_id: str, truth) -> float:
    """The train job's end: out-of-fold scores over the folds in ``oof.npy``, the run done with its CV LWLRAP."""
    from engine.runs.folder import RunFolder
    from engine.runs.scores import record_oof_scores

    folder = RunFolder(runs_root / run_id)
    run = store.get_run(run_id)
    classes = list(store.get_dataset(run["dataset_id"])["classes"])
    cv, _ = record_oof_scores(store, run_id, truth, folder.load_array(folder.oof), classes)
    store.finish_run(run_id, status="done", cv_lwlrap=cv)
    return cv


def add_run(store, tmp: Path, run_id: str, oof: np.ndarray, *, dataset_id: int | None,
            status: str = "done", cv: float | None = None, kind: str = "train", name: str = "",
            parent: str | None = None, test: bool = True, truth: np.ndarray | None = None,
            overrides: tuple[str, ...] = ('model.arch="cnn14"',)) -> Path:
    """A run recorded through the engine's own recording code (``record_run``): a cnn14 train run by default."""
    return record_run(store, tmp / "runs", run_id, kind=kind, dataset_id=dataset_id, oof=oof,
                      test=np.random.default_rng(1).random((3, oof.shape[1])) if test else None,
                      truth=truth, parent=parent, status=status, name=name, cv=cv,
                      overrides=overrides if kind != "infer" else ())
