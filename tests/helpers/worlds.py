"""Whole worlds a test starts from: the fixed console database, the shared trained-and-inferred runs,
the console's preset folder and data root."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.helpers.datasets import multi_hot_truth
from tests.helpers.processes import drain, run_cli
from tests.helpers.recording import finish_trained_run, record_run, record_trained_fold, stream_epochs, tagger_scores


#: The moment fixed console data is written at (2026-11-30 12:00:00 UTC), so screens show no wall clock.
FIXED_NOW = 1_796_040_000.0


def fixed_console_db(db: Path, monkeypatch) -> dict:
    """A database a person would have after a few days: trained, stopped, blended, failed and queued work.

    Runs are recorded the way the jobs record them (``record_run``,
    ``stream_epochs``, ``record_trained_fold``, ``finish_trained_run``: the
    engine's own recorder and scoring code, on label and score arrays made
    here with numpy), jobs through the store's queue calls, at fixed times
    (``engine.store._now`` is pinned; the console's clock too), with the 80
    real class names, so snapshot tests of the screens are deterministic; no
    PANNs checkpoint folder is configured. Returns the ids worth opening.
    """
    import json

    import engine.store as store_module
    import fsat_console.formatting as formatting
    from engine.data.labels import FSD2019_CLASSES
    from engine.ensemble import rank_average, weights_from_cv
    from engine.store import Store

    clock = [FIXED_NOW - 3 * 86400]

    def now() -> float:
        clock[0] += 37.0
        return clock[0]

    monkeypatch.setattr(store_module, "_now", now)
    monkeypatch.setattr(formatting, "now", lambda: FIXED_NOW)
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("FSAT_PANNS_DIR", "")
    time.tzset()
    store = Store(db)
    runs_root = db.parent / "runs"
    n_curated = 480
    truth = multi_hot_truth(n_curated, len(FSD2019_CLASSES), seed=5)
    folds = np.arange(n_curated) % 5
    # A fixed root (never read: the screens shown need no audio), so the recorded config hashes are fixed too.
    ds = store.register_dataset(Path("/data/fsdkaggle2019"), name="demo", classes=FSD2019_CLASSES,
                                n_curated=n_curated)
    oofs: dict[str, np.ndarray] = {}

    def train(name: str, arch: str, seed: int, base: float, epochs: int = 8, n_folds: int = 5,
              stop_after: int | None = None) -> tuple[int, str]:
        job = store.enqueue("train", {"train": {"epochs": epochs, "n_folds": n_folds, "seed": seed},
                                      "model": {"arch": arch}}, name=name)
        claimed = store.claim("w-fixed")
        run_id = f"train-{claimed.id:04d}"
        record_run(store, runs_root, run_id, dataset_id=ds, job_id=job, name=name, status="running",
                   overrides=(f'model.arch="{arch}"', f"train.epochs={epochs}", f"train.n_folds={n_folds}",
                              f"train.seed={seed}"))
        oof = tagger_scores(truth, skill=3 + 10 * (base - 0.80), seed=seed, shared=0.7)  # CV LWLRAP near base
        for k in range(n_folds):
            last = epochs if stop_after is None or k < n_folds - 1 else stop_after
            records = stream_epochs(store, run_id, k, [base - 0.25 / e + 0.01 * ((k * 7 + e * 3) % 5)
                                                       for e in range(1, last + 1)], seconds=12.0 + k)
            if last == epochs:
                record_trained_fold(store, runs_root, run_id, k, records, truth, oof, folds)
        if stop_after is not None:
            store.request_cancel(job)
            store.mark_cancelled(job, worker_id="w-fixed", attempt=claimed.attempts)
            return job, run_id
        cv = finish_trained_run(store, runs_root, run_id, truth)
        oofs[run_id] = oof
        store.finish_job(job, worker_id="w-fixed", attempt=claimed.attempts, message=f"CV lwlrap {cv:.4f}")
        return job, run_id

    _, a = train("cnn14 baseline", "cnn14", 42, 0.81)
    _, b = train("cnn14 mixup", "cnn14", 7, 0.83)
    _, c = train("resnet38", "resnet38", 3, 0.79)
    stopped_job, stopped = train("cnn14 long", "cnn14", 11, 0.80, epochs=20, stop_after=17)
    store.set_run_tags(b, ["best", "mixup"])
    store.set_run_note(a, "the reference")
    members = [b, a, c]
    job = store.enqueue("ensemble", {"members": members, "method": "rank"}, name="rank blend of 3")
    blend_claim = store.claim("w-fixed")
    ens = f"ensemble-{job:04d}"
    weights = weights_from_cv([store.get_run(m)["cv_lwlrap"] for m in members])
    record_run(store, runs_root, ens, kind="ensemble", dataset_id=ds, job_id=job, name="rank blend of 3",
               oof=rank_average([oofs[m] for m in members], weights), truth=truth, folds=folds,
               overrides=(f"members={json.dumps(members)}", 'method="rank"'))
    store.set_run_members(ens, list(zip(members, weights.tolist())))
    store.finish_job(job, worker_id="w-fixed", attempt=blend_claim.attempts,
                     message=f"rank: OOF lwlrap {store.get_run(ens)['cv_lwlrap']:.4f}")
    failed = store.enqueue("baseline", {"data": {"root": "demo_data"}}, name="baseline")
    failed_claim = store.claim("w-fixed")
    store.fail_job(failed, "no PANNs checkpoint configured: set embed.checkpoint to a Cnn14 .pth file "
                           "(see README, 'PANNs checkpoints'); nothing was computed",
                   "Traceback (most recent call last):\n  File \"engine/jobs/baseline.py\", line 40, in run\n"
                   "engine.errors.ConfigError: no PANNs checkpoint configured",
                   worker_id="w-fixed", attempt=failed_claim.attempts)
    queued = store.enqueue("train", {"train": {"epochs": 8}}, name="cnn14 seed 9")
    store_cv = {r: store.get_run(r)["cv_lwlrap"] for r in (a, b, c)}
    store.close()
    return {"runs": [a, b, c], "cv": {r: store_cv[r] for r in (a, b, c)}, "stopped": stopped, "stopped_job": stopped_job, "ensemble": ens,
            "failed_job": failed, "queued_job": queued}


# -- trained and inferred runs, built once per session (the infer and ensemble job tests share them) ----

#: Small, quick training runs: 1 s crops, a few epochs of 12 steps, no warmup.
TRAIN_SETTINGS = ["--preset", "demo", "--set", "train.epochs=4", "--set", "train.patience=4",
                  "--set", "train.steps_per_epoch=12", "--set", "audio.crop_seconds=1",
                  "--set", "optim.warmup_epochs=0"]


@dataclass
class InferredRuns:
    """Two trained runs (different seeds), each inferred with TTA on oof + test, and one 1-crop inference."""

    db: Path
    dataset: Path
    train_ids: list[str]
    infer_ids: list[str]
    single_crop_id: str
    seconds: float


_BUILT: dict[str, InferredRuns] = {}


def copy_db(src: Path, dst: Path) -> Path:
    """A private copy of a database (SQLite's backup) that a test may add jobs and runs to; returns ``dst``."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


def inferred_runs(tiny_demo: Path, tmp_path_factory) -> InferredRuns:
    """Train and infer once per test session (the ensemble tests blend the same runs)."""
    key = str(tiny_demo)
    if key in _BUILT:
        return _BUILT[key]
    from engine.store import Store

    t0 = time.perf_counter()
    root = tmp_path_factory.mktemp("inferred")
    db = root / "experiments.db"
    train_ids = []
    for seed in (1, 2):
        job = int(run_cli("queue", "train", "--data", str(tiny_demo), *TRAIN_SETTINGS, "--set",
                          f"train.seed={seed}", "--name", f"seed{seed}", db=db).stdout)
        train_ids.append(f"train-{job:04d}")
    # Jobs run in queue order, so each inference starts after its training finished.
    infer_ids = []
    for run_id in train_ids:
        job = int(run_cli("queue", "infer", run_id, "--set", "infer.batch_size=64", db=db).stdout)
        infer_ids.append(f"infer-{job:04d}")
    job = int(run_cli("queue", "infer", train_ids[0], "--set", "infer.tta_crops=1", "--set", 'splits=["oof"]',
                      "--name", "one crop", db=db).stdout)
    single = f"infer-{job:04d}"
    drain(db)
    built = InferredRuns(db=db, dataset=tiny_demo, train_ids=train_ids, infer_ids=infer_ids,
                         single_crop_id=single, seconds=time.perf_counter() - t0)
    with Store(db) as store:
        for job in store.list_jobs():
            assert job["status"] == "done", (job["id"], job["kind"], job["error"])
    _BUILT[key] = built
    return built


# -- the console's world: a preset folder and a data root ----------------------------------------------

#: A training preset small enough to run in seconds; named "tiny", so it sorts first in the queue dialog.
TINY_PRESET = """\
name = "tiny"

[model]
arch = "small"
width = 8

[train]
epochs = 1
batch_size = 4
"""


def console_world(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A preset folder first in the search path (holding ``tiny``) and a dataset root; returns ``(db, data)``."""
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "tiny.toml").write_text(TINY_PRESET)
    monkeypatch.setenv("FSAT_CONFIGS", str(configs))
    data = tmp_path / "data"
    data.mkdir()
    (data / "train_curated.csv").write_text("fname,labels\n")
    (data / "sample_submission.csv").write_text("fname\n")
    return tmp_path / "experiments.db", data
