"""Shared fixtures: a real database file, real worker subprocesses, a tiny real demo dataset."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

PROJECT = Path(__file__).resolve().parents[1]

#: Modules whose tests share the session's trained-and-inferred runs (:func:`inferred_runs`).
_INFERRED_RUNS_MODULES = {"test_infer", "test_ensemble_job"}

#: The longest groups (each a minute or more on two cores), longest first. They start first, so the
#: short modules fill the other test process meanwhile instead of one long group running alone at the end.
_LONG_GROUPS = ["test_ray_jobs", "inferred_runs", "test_train_e2e", "test_baseline", "test_recipe", "test_resume",
                "test_curriculum_job"]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One xdist group per module, so a module's fixtures (a Ray head, a CNN14 checkpoint) are built once.

    The modules that share the trained runs form one group, so those runs are trained once. The long
    groups are put first (a stable sort: tests keep their order within a module).
    """
    groups = {}
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        groups[item] = "inferred_runs" if module in _INFERRED_RUNS_MODULES else module
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    rank = {name: i for i, name in enumerate(_LONG_GROUPS)}
    items.sort(key=lambda item: rank.get(groups[item], len(rank)))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh database path in the test's folder (runs/ goes beside it)."""
    return tmp_path / "experiments.db"


def worker_cmd(db: Path, *extra: str) -> list[str]:
    """The command line of a real worker process."""
    return [sys.executable, "-m", "engine.worker", "--db", str(db), "--poll", "0.2", *extra]


@pytest.fixture
def spawn_worker():
    """Start worker subprocesses; every one still alive is killed at the end of the test."""
    procs: list[subprocess.Popen] = []

    def spawn(db: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
        full_env = dict(os.environ, **(env or {}))
        full_env["PYTHONPATH"] = str(PROJECT) + os.pathsep + full_env.get("PYTHONPATH", "")
        log = open(db.parent / f"worker-{len(procs)}.log", "ab")
        proc = subprocess.Popen(worker_cmd(db, *extra), stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                cwd=db.parent, start_new_session=True)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


#: How long a wait for a condition lasts unless a test says otherwise. Generous on purpose: a condition that
#: holds ends the wait at once, and the suite must pass with two busy processes per core beside it.
WAIT_SECONDS = 60.0


def wait_for(predicate, timeout: float = WAIT_SECONDS, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A small demo dataset in the Kaggle layout, written once per test session."""
    from engine.data.demo import write_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "demo_data"
    # Short clips keep the session fixture and the CPU training in the tests quick.
    write_demo_dataset(root, seed=1, clips_per_class=6, noisy_per_class=1, test_per_class=1, max_seconds=4.0)
    return root


# -- a small Kaggle-layout dataset written file by file (the data and pipeline tests) --------------

#: Sample rate of the WAVs the data tests write.
SR = 44100

#: The curated clips of :func:`write_layout` and their labels, as ``train_curated.csv`` holds them.
CURATED_ROWS = [
    ("c0.wav", "Bark"),
    ("c1.wav", "Bark,Walk_and_footsteps"),
    ("c2.wav", "Zipper_(clothing)"),
    ("c3.wav", "Accordion,Hi-hat,Yell"),
]
#: The test clips of :func:`write_layout`.
TEST_FNAMES = ["t0.wav", "t1.wav"]


def sine(freq: float, seconds: float, sr: int = SR, amp: float = 0.5):
    """A float32 sine tone."""
    import numpy as np

    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, wave, sr: int = SR) -> Path:
    """Write a 16-bit PCM WAV."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sr, subtype="PCM_16")
    return path


def write_text(path: Path, text: str) -> Path:
    """Write a UTF-8 text file; returns its path."""
    path.write_text(text, encoding="utf-8")
    return path


def write_layout(root: Path) -> Path:
    """A small dataset root in the Kaggle layout with real WAVs in folders."""
    from engine.data.labels import FSD2019_CLASSES

    root.mkdir(parents=True, exist_ok=True)
    lines = ["fname,labels"] + [f'{f},"{labels}"' if "," in labels else f"{f},{labels}"
                                for f, labels in CURATED_ROWS]
    write_text(root / "train_curated.csv", "\n".join(lines) + "\n")
    zeros = ",".join("0" for _ in FSD2019_CLASSES)
    write_text(root / "sample_submission.csv",
               "\n".join(["fname," + ",".join(FSD2019_CLASSES)] + [f"{f},{zeros}" for f in TEST_FNAMES]) + "\n")
    for i, (fname, _) in enumerate(CURATED_ROWS):
        write_wav(root / "train_curated" / fname, sine(300 + 100 * i, 0.2 + 0.05 * i))
    for i, fname in enumerate(TEST_FNAMES):
        write_wav(root / "test" / fname, sine(1000 + 50 * i, 0.3))
    return root


class ArrayCache:
    """Clips held in memory, read like a ``WaveformCache``."""

    def __init__(self, clips: list) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def get(self, i: int):
        """A copy of clip ``i`` (the caller may change it)."""
        return self.clips[i].copy()

    def length(self, i: int) -> int:
        """Samples in clip ``i``."""
        return len(self.clips[i])


def copy_dataset(src: Path, dst: Path) -> Path:
    """A private copy of a dataset root (without its waveform cache) that a test may damage."""
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".fsat-cache"))
    return dst


def run_cli(*args: str, db: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real ``fsat`` command line in a subprocess."""
    cmd = [sys.executable, "-m", "engine.cli"] + (["--db", str(db)] if db else []) + list(args)
    env = dict(os.environ, PYTHONPATH=str(PROJECT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


#: The moment fixed console data is written at (2026-11-30 12:00:00 UTC), so screens show no wall clock.
FIXED_NOW = 1_796_040_000.0


def fixed_console_db(db: Path, monkeypatch) -> dict:
    """A database a person would have after a few days: trained, stopped, blended, failed and queued work.

    Runs are recorded the way the jobs record them (``record_run``,
    ``stream_epochs``, ``record_trained_fold``, ``finish_trained_run``: the
    engine's own recorder and scoring code, on label and score arrays made
    here with numpy), jobs through the store's queue calls, at fixed times
    (``engine.store._now`` is pinned; the console's clock too), with the 80
    real class names, so snapshot tests of the screens are deterministic.
    Returns the ids worth opening.
    """
    import json

    import numpy as np

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


_HOLDER = """
import sqlite3, sys, time, pathlib
db, flag, release, seconds = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]), float(sys.argv[4])
con = sqlite3.connect(db, isolation_level=None)
con.execute("BEGIN IMMEDIATE")
con.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
flag.write_text("holding")
end = time.monotonic() + seconds
while time.monotonic() < end and not release.exists():
    time.sleep(0.05)
con.execute("ROLLBACK")
"""


class LockHolder:
    """Another process holding the database's write lock (``BEGIN IMMEDIATE``) until released."""

    def __init__(self, db: Path, seconds: float) -> None:
        self.flag = db.with_name(db.name + ".holding")
        self.release_file = db.with_name(db.name + ".release")
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db), str(self.flag),
                                      str(self.release_file), str(seconds)])
        wait_for(self.flag.exists, timeout=30, what="the other process to take the write lock")

    @property
    def holding(self) -> bool:
        """True while the other process still holds the lock."""
        return self.proc.poll() is None

    def release(self) -> None:
        """Let go of the lock and wait for the process to end."""
        self.release_file.write_text("go")
        self.proc.wait(timeout=30)


@pytest.fixture
def hold_write_lock():
    """``hold_write_lock(db, seconds)`` -> LockHolder; released at the end of the test."""
    holders: list[LockHolder] = []

    def hold(db: Path, seconds: float = 20.0) -> LockHolder:
        holder = LockHolder(db, seconds)
        holders.append(holder)
        return holder

    yield hold
    for holder in holders:
        if holder.holding:
            holder.release()


_READ_ONLY_MOUNT = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def run_read_only(target: Path, cmd: list[str]) -> subprocess.CompletedProcess:
    """Run ``cmd`` with ``target`` (a folder or a file) read-only for it, as the kernel enforces it.

    Root ignores file modes, so as root ``target`` is bind-mounted read-only
    in a mount namespace of the command's own (nothing outside it changes);
    otherwise its mode is made read-only for the duration of the command.
    """
    env = dict(os.environ, PYTHONPATH=str(PROJECT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if os.geteuid() == 0:
        full = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _READ_ONLY_MOUNT, "sh",
                str(target), *cmd]
        return subprocess.run(full, capture_output=True, text=True, env=env, timeout=120,
                              stdin=subprocess.DEVNULL)
    mode = target.stat().st_mode
    target.chmod(0o555 if target.is_dir() else 0o444)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    finally:
        target.chmod(mode)


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
    import numpy as np

    from engine.runs.folder import RunFolder
    from engine.runs.kinds import FOLD_CHECKPOINT_KINDS, model_label
    from engine.runs.scores import covered_rows, record_fold_scores, record_oof_scores
    from engine.specs import resolve_spec, spec_hash, to_dict

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


def multi_hot_truth(n_clips: int, n_classes: int, *, seed: int = 0, second: float = 0.3):
    """A curated label matrix: clip i has class ``i % n_classes`` (every class has a positive when
    ``n_clips >= n_classes``) and, with probability ``second``, one more random class."""
    import numpy as np

    rng = np.random.default_rng(seed)
    truth = np.zeros((n_clips, n_classes), dtype=np.float32)
    truth[np.arange(n_clips), np.arange(n_clips) % n_classes] = 1
    more = np.flatnonzero(rng.random(n_clips) < second)
    truth[more, rng.integers(0, n_classes, len(more))] = 1
    return truth


def tagger_scores(truth, skill: float, *, seed: int = 0, shared: float = 0.0):
    """Probabilities a tagger of the given ``skill`` might output for ``truth`` (higher skill, higher LWLRAP).

    A fraction ``shared`` of the noise's variance is the same for every seed:
    taggers trained on the same clips make some of the same mistakes.
    """
    import numpy as np

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
    import numpy as np

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
    proc = subprocess.run(worker_cmd(db, "--drain"), cwd=root, capture_output=True, text=True, timeout=900,
                          env=env_with_project())
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = InferredRuns(db=db, dataset=tiny_demo, train_ids=train_ids, infer_ids=infer_ids,
                         single_crop_id=single, seconds=time.perf_counter() - t0)
    with Store(db) as store:
        for job in store.list_jobs():
            assert job["status"] == "done", (job["id"], job["kind"], job["error"])
    _BUILT[key] = built
    return built


def env_with_project() -> dict:
    """The environment for a subprocess that imports this project (it comes first on PYTHONPATH)."""
    return dict(os.environ, PYTHONPATH=str(PROJECT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


# -- the console under Pilot ------------------------------------------------------------------------


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
    return tmp_path / "experiments.db", data


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The console's world: a database with an open store, the ``tiny`` preset first in the search path, a data root."""
    from engine.store import Store

    db, data = console_world(tmp_path, monkeypatch)
    store = Store(db)
    yield {"db": db, "data": data, "store": store, "tmp": tmp_path}
    store.close()


def table(app, table_id: str):
    """A ``LiveTable`` of the current screen, by id."""
    from fsat_console.widgets.live_table import LiveTable

    return app.screen.query_one(f"#{table_id}", LiveTable)


def cell_text(t, row_key: str, column: str) -> str:
    """Plain text of one cell of a ``LiveTable``."""
    return t.get_cell(row_key, column).plain


async def open_queue_dialog(pilot, app, *, press: bool = True, timeout: float = 5.0):
    """Press n (unless the app opens the dialog itself) and wait until the preset list has focus."""
    from textual.widgets import OptionList

    from fsat_console.screens.queue import QueueScreen

    if press:
        await pilot.press("n")

    def preset_list_focused() -> bool:
        # The dialog may be the screen before its widgets are mounted.
        if not isinstance(app.screen, QueueScreen):
            return False
        presets = app.screen.query("#preset")
        return bool(presets) and app.focused is presets.first(OptionList)

    await wait_until(pilot, preset_list_focused, timeout=timeout, what="queue dialog")
    return app.screen


async def open_job_details(pilot, app, job_id: int):
    """Select the job in the jobs table and press enter; returns the job details screen."""
    from fsat_console.screens.job import JobScreen

    jobs = table(app, "jobs")
    await wait_until(pilot, lambda: str(job_id) in jobs.rows, what="job row")
    await pilot.press("tab")
    assert app.focused is jobs
    jobs.move_cursor(row=jobs.get_row_index(str(job_id)))
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(app.screen, JobScreen), what="job details")
    return app.screen


async def wait_until(pilot, predicate, timeout: float = WAIT_SECONDS, what: str = "condition") -> None:
    """Let the app run until ``predicate()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def settle_workers(pilot, app) -> None:
    """Before a negative check: let the key presses land, then wait for every worker the app started to finish."""
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


def screen_text(app) -> str:
    """The current screen rendered to plain text, line by line."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


# -- the ensemble screen's world: a dataset folder and runs with out-of-fold scores -------------------

#: Curated clips of the ensemble screen's dataset.
ENSEMBLE_CLIPS = 40


def _fsd_classes() -> list[str]:
    from engine.data.labels import FSD2019_CLASSES

    return list(FSD2019_CLASSES)


ENSEMBLE_CLASSES = _fsd_classes()



def write_dataset(root: Path, truth: np.ndarray) -> None:
    """train_curated.csv (labels quoted, comma-separated), sample_submission.csv and the clip files.

    The clip files are empty: the ensemble job checks that every listed clip
    exists but reads no audio.
    """
    root.mkdir(parents=True)
    (root / "train_curated").mkdir()
    (root / "test").mkdir()
    for i in range(len(truth)):
        (root / "train_curated" / f"clip{i:03d}.wav").touch()
    for i in range(3):
        (root / "test" / f"test{i}.wav").touch()
    with open(root / "train_curated.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["fname", "labels"])
        for i, row in enumerate(truth):
            writer.writerow([f"clip{i:03d}.wav", ",".join(ENSEMBLE_CLASSES[j] for j in np.flatnonzero(row))])
    with open(root / "sample_submission.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["fname", *ENSEMBLE_CLASSES])
        for i in range(3):
            writer.writerow([f"test{i}.wav", *["0"] * len(ENSEMBLE_CLASSES)])


def add_run(store, tmp: Path, run_id: str, oof: np.ndarray, *, dataset_id: int | None,
            status: str = "done", cv: float | None = None, kind: str = "train", name: str = "",
            parent: str | None = None, test: bool = True, truth: np.ndarray | None = None,
            overrides: tuple[str, ...] = ('model.arch="cnn14"',)) -> Path:
    """A run recorded through the engine's own recording code (``record_run``): a cnn14 train run by default."""
    return record_run(store, tmp / "runs", run_id, kind=kind, dataset_id=dataset_id, oof=oof,
                      test=np.random.default_rng(1).random((3, oof.shape[1])) if test else None,
                      truth=truth, parent=parent, status=status, name=name, cv=cv,
                      overrides=overrides if kind != "infer" else ())


@pytest.fixture
def world(tmp_path: Path) -> dict:
    """Two datasets; on the first a good, a weak, a wrong-shape and a half-scored run, plus a running one."""
    import numpy as np

    rng = np.random.default_rng(7)
    truth = np.zeros((ENSEMBLE_CLIPS, len(ENSEMBLE_CLASSES)), dtype=np.float32)
    truth[np.arange(ENSEMBLE_CLIPS), rng.integers(0, len(ENSEMBLE_CLASSES), ENSEMBLE_CLIPS)] = 1
    second = rng.random(ENSEMBLE_CLIPS) < 0.3
    truth[np.flatnonzero(second), rng.integers(0, len(ENSEMBLE_CLASSES), int(second.sum()))] = 1
    data = tmp_path / "data"
    write_dataset(data, truth)
    other = tmp_path / "other"
    write_dataset(other, truth[:30])

    from engine.store import Store

    db = tmp_path / "experiments.db"
    store = Store(db)
    ds = store.register_dataset(data, name="tiny", classes=ENSEMBLE_CLASSES, n_curated=ENSEMBLE_CLIPS)
    ds_other = store.register_dataset(other, name="other", classes=ENSEMBLE_CLASSES, n_curated=30)
    # Stored folds: the calibrated blend score is cross-fitted over them, as the ensemble job does.
    folds = np.arange(ENSEMBLE_CLIPS) % 5
    store.save_folds(ds, [f"clip{i:03d}.wav" for i in range(ENSEMBLE_CLIPS)], folds.tolist(), seed=42, n_folds=5)

    # Probabilities, as every run's oof.npy holds.
    good = 1.0 / (1.0 + np.exp(-(truth * 1.5 + rng.normal(size=truth.shape))))
    weak = 1.0 / (1.0 + np.exp(-(truth * 0.6 + rng.normal(size=truth.shape))))
    oofs = {"train-0001": good, "train-0002": weak}
    # The oldest run is on the other dataset: the screen opens on the dataset of the newest runs.
    add_run(store, tmp_path, "train-0000", truth[:30] + rng.normal(size=(30, len(ENSEMBLE_CLASSES))), dataset_id=ds_other,
            cv=0.5, name="elsewhere")
    add_run(store, tmp_path, "train-0001", good, dataset_id=ds, truth=truth, name="good")
    add_run(store, tmp_path, "train-0002", weak, dataset_id=ds, truth=truth, name="weak")
    add_run(store, tmp_path, "train-0003", rng.normal(size=(ENSEMBLE_CLIPS - 1, len(ENSEMBLE_CLASSES))), dataset_id=ds,
            cv=0.30, name="wrong shape")
    half = good.copy()
    half[:10] = np.nan  # folds that were never trained
    add_run(store, tmp_path, "train-0004", half, dataset_id=ds, cv=0.20, name="half scored")
    add_run(store, tmp_path, "train-0005", good, dataset_id=ds, status="running", name="still training")
    yield {"db": db, "store": store, "truth": truth, "oofs": oofs, "data": data, "ds": ds, "tmp": tmp_path,
           "folds": folds}
    store.close()


# -- helpers -----------------------------------------------------------------------------------


async def open_ensemble(pilot, app):
    """Press e and wait until the candidates are listed."""
    from fsat_console.screens.ensemble import EnsembleScreen
    from fsat_console.screens.main import MainScreen

    await wait_until(pilot, lambda: isinstance(app.screen, MainScreen) and app.overview is not None,
                     what="main screen")
    await pilot.press("e")
    await wait_until(pilot, lambda: isinstance(app.screen, EnsembleScreen) and app.screen.loaded,
                     what="ensemble screen with its runs")
    return app.screen


async def select_row(pilot, table, key: str) -> None:
    """Move the cursor to the row ``key`` with the arrow keys."""
    await pilot.press(*["up"] * table.row_count)
    for _ in range(table.row_count):
        if table.selected_key() == key:
            return
        await pilot.press("down")
    assert table.selected_key() == key, f"row {key} not reachable"


async def settled(pilot, screen) -> None:
    """Wait until the blend shown is the blend chosen."""
    await wait_until(pilot, lambda: screen.outcome is not None and screen.outcome.key == screen.state.key()
                     and screen._pending_key is None and not screen.greedy_running, what="blend score")
