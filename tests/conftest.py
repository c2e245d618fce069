"""Shared fixtures and pytest hooks: a real database file, real worker subprocesses, a tiny real demo dataset.

The helpers the tests call live in ``tests/helpers/`` (see its ``__init__``); this file keeps only
fixtures and hooks.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.store import Store
from tests.helpers.datasets import ENSEMBLE_CLASSES, ENSEMBLE_CLIPS, write_dataset
from tests.helpers.processes import LockHolder, env_with_project, worker_cmd
from tests.helpers.recording import add_run
from tests.helpers.worlds import console_world

#: Modules whose tests share the session's trained-and-inferred runs (``tests.helpers.worlds.inferred_runs``).
_INFERRED_RUNS_MODULES = {"test_infer", "test_ensemble_job", "test_kaggle"}

#: The longest groups (each a minute or more on two cores), longest first. They start first, so the
#: short modules fill the other test process meanwhile instead of one long group running alone at the end.
_LONG_GROUPS = ["inferred_runs", "test_plan", "test_ray_jobs", "test_sweeps", "test_report", "test_train_e2e",
                "test_baseline", "test_recipe", "test_resume", "test_curriculum_job", "test_report_browser"]


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


@pytest.fixture
def spawn_worker():
    """Start worker subprocesses; every one still alive is killed at the end of the test."""
    procs: list[subprocess.Popen] = []

    def spawn(db: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
        log = open(db.parent / f"worker-{len(procs)}.log", "ab")
        proc = subprocess.Popen(worker_cmd(db, *extra), stdout=log, stderr=subprocess.STDOUT,
                                env=env_with_project(**(env or {})), cwd=db.parent, start_new_session=True)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A small demo dataset in the Kaggle layout, written once per test session."""
    from engine.data.demo import write_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "demo_data"
    # Short clips keep the session fixture and the CPU training in the tests quick.
    write_demo_dataset(root, seed=1, clips_per_class=6, noisy_per_class=1, test_per_class=1, max_seconds=4.0)
    return root


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


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The console's world: a database with an open store, the ``tiny`` preset first in the search path, a data root."""
    db, data = console_world(tmp_path, monkeypatch)
    store = Store(db)
    yield {"db": db, "data": data, "store": store, "tmp": tmp_path}
    store.close()


@pytest.fixture
def world(tmp_path: Path) -> dict:
    """Two datasets; on the first a good, a weak, a wrong-shape and a half-scored run, plus a running one."""
    rng = np.random.default_rng(7)
    truth = np.zeros((ENSEMBLE_CLIPS, len(ENSEMBLE_CLASSES)), dtype=np.float32)
    truth[np.arange(ENSEMBLE_CLIPS), rng.integers(0, len(ENSEMBLE_CLASSES), ENSEMBLE_CLIPS)] = 1
    second = rng.random(ENSEMBLE_CLIPS) < 0.3
    truth[np.flatnonzero(second), rng.integers(0, len(ENSEMBLE_CLASSES), int(second.sum()))] = 1
    data = tmp_path / "data"
    write_dataset(data, truth)
    other = tmp_path / "other"
    write_dataset(other, truth[:30])
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
