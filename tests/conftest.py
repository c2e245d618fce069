"""Shared fixtures: a real database file, real worker subprocesses, a tiny real demo dataset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


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


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
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
    """A database a person would have after a few days: trained, inferred, blended, failed and queued work.

    Everything is written through the store's own calls, at fixed times
    (``engine.store._now`` is pinned; the console's clock too), with the 80
    real class names, so snapshot tests of the screens are deterministic.
    Returns the ids worth opening.
    """
    import engine.store as store_module
    import fsat_console.formatting as formatting
    from engine.data.labels import FSD2019_CLASSES
    from engine.store import OOF, Store

    clock = [FIXED_NOW - 3 * 86400]

    def now() -> float:
        clock[0] += 37.0
        return clock[0]

    monkeypatch.setattr(store_module, "_now", now)
    monkeypatch.setattr(formatting, "now", lambda: FIXED_NOW)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    store = Store(db)
    ds = store.register_dataset(db.parent / "demo_data", name="demo", classes=FSD2019_CLASSES, n_curated=480)

    def train(name: str, model: str, seed: int, base: float, epochs: int = 8, folds: int = 5,
              stop_after: int | None = None) -> tuple[int, str]:
        job = store.enqueue("train", {"train": {"epochs": epochs, "n_folds": folds}, "model": {"arch": model}},
                            name=name)
        claimed = store.claim("w-fixed")
        run_id = f"train-{claimed.id:04d}"
        store.create_run(run_id, kind="train", job_id=job, dataset_id=ds, name=name, model=model, seed=seed,
                         device="cpu", config_hash=f"{seed:012x}",
                         config={"train": {"epochs": epochs, "n_folds": folds, "seed": seed},
                                 "model": {"arch": model}, "loss": {"name": "bce"}})
        for k in range(folds):
            last = epochs if stop_after is None or k < folds - 1 else stop_after
            best = 0.0
            for e in range(1, last + 1):
                val = base - 0.25 / e + 0.01 * ((k * 7 + e * 3) % 5)
                best = max(best, val)
                store.record_epoch(run_id, k, e, train_loss=1.2 / e, val_loss=1.0 / e + 0.05 * k, val_lwlrap=val,
                                   lr=1e-3 / e, seconds=12.0 + k)
            if stop_after is None or k < folds - 1:
                store.record_fold(run_id, k, lwlrap=best, best_epoch=last - 1, n_val=96)
        if stop_after is not None:
            store.request_cancel(job)
            store.mark_cancelled(job)
            return job, run_id
        lrap = [min(1.0, base - 0.3 + ((i * 37 + seed) % 80) / 160) for i in range(80)]
        weights = [(i % 5 + 1) / 240 for i in range(80)]
        store.record_class_scores(run_id, OOF, FSD2019_CLASSES, lrap, weights, [i % 5 + 1 for i in range(80)])
        store.finish_run(run_id, cv_lwlrap=base)
        store.finish_job(job, message=f"CV LWLRAP {base:.4f}")
        return job, run_id

    _, a = train("cnn14 baseline", "cnn14", 42, 0.81)
    _, b = train("cnn14 mixup", "cnn14", 7, 0.83)
    _, c = train("resnet38", "resnet38", 3, 0.79)
    stopped_job, stopped = train("cnn14 long", "cnn14", 11, 0.80, epochs=20, stop_after=17)
    store.set_run_tags(b, ["best", "mixup"])
    store.set_run_note(a, "the reference")
    job = store.enqueue("ensemble", {"members": [a, b, c]}, name="rank blend of 3")
    store.claim("w-fixed")
    ens = f"ensemble-{job:04d}"
    store.create_run(ens, kind="ensemble", job_id=job, dataset_id=ds, name="rank blend of 3", model="blend",
                     config={"members": [a, b, c], "method": "rank"})
    store.set_run_members(ens, [(b, 0.36), (a, 0.34), (c, 0.30)])
    store.record_class_scores(ens, OOF, FSD2019_CLASSES, [0.8] * 80, [1 / 80] * 80, [3] * 80)
    store.finish_run(ens, cv_lwlrap=0.845)
    store.finish_job(job, message="blend CV LWLRAP 0.8450")
    failed = store.enqueue("baseline", {"data": {"root": "demo_data"}}, name="baseline")
    store.claim("w-fixed")
    store.fail_job(failed, "no PANNs checkpoint configured: set embed.checkpoint to a Cnn14 .pth file "
                           "(see README, 'PANNs checkpoints'); nothing was computed",
                   "Traceback (most recent call last):\n  File \"engine/jobs/baseline.py\", line 40, in run\n"
                   "engine.errors.ConfigError: no PANNs checkpoint configured")
    queued = store.enqueue("train", {"train": {"epochs": 8}}, name="cnn14 seed 9")
    store.close()
    return {"runs": [a, b, c], "stopped": stopped, "stopped_job": stopped_job, "ensemble": ens,
            "failed_job": failed, "queued_job": queued}
