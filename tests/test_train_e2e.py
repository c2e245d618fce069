"""End to end: demo data -> queue (CLI) -> real worker -> scores in SQLite and artifacts on disk."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from engine.metrics import lwlrap
from engine.store import OOF, Store, runs_root
from tests.helpers.datasets import copy_dataset
from tests.helpers.processes import run_cli

pytestmark = pytest.mark.slow


def _chance_lwlrap(truth: np.ndarray, seeds: int = 20) -> float:
    rng = np.random.default_rng(0)
    return float(np.mean([lwlrap(truth, rng.random(truth.shape)) for _ in range(seeds)]))


def test_five_fold_training_end_to_end(tiny_demo: Path, tmp_path: Path, spawn_worker):
    db = tmp_path / "experiments.db"
    # 1 s crops and 5 epochs: five folds in about a minute, still well above chance.
    out = run_cli("queue", "train", "--data", str(tiny_demo), "--preset", "demo", "--set", "audio.crop_seconds=1.0",
                  "--set", "train.epochs=5", "--set", "train.patience=5", db=db)
    job_id = int(out.stdout.strip())
    worker = spawn_worker(db, "--drain")
    assert worker.wait(timeout=900) == 0
    store = Store(db)
    job = store.get_job(job_id)
    assert job.status == "done", job.error
    run_id = job.run_id
    run = store.get_run(run_id)
    assert run["status"] == "done" and run["config_hash"] and run["versions"]["torch"]

    folds = store.fold_scores(run_id)
    assert [f["fold"] for f in folds] == [0, 1, 2, 3, 4]
    assert sum(f["n_val"] for f in folds) == 480
    con = sqlite3.connect(db)
    counts = dict(con.execute("SELECT fold, COUNT(*) FROM class_scores WHERE run_id=? GROUP BY fold", (run_id,)))
    assert counts == {OOF: 80, 0: 80, 1: 80, 2: 80, 3: 80, 4: 80}
    n_epochs = con.execute("SELECT COUNT(*) FROM epochs WHERE run_id=?", (run_id,)).fetchone()[0]
    assert n_epochs == 5 * 5

    # The recorded out-of-fold score is the metric of the saved oof.npy, and far above chance.
    run_dir = Path(run["run_dir"])
    oof = np.load(run_dir / "oof.npy")
    from engine.data.manifest import load_layout

    truth = load_layout(tiny_demo).curated.Y
    assert oof.shape == truth.shape and not np.isnan(oof).any()
    assert run["cv_lwlrap"] == pytest.approx(lwlrap(truth, oof), abs=1e-9)
    chance = _chance_lwlrap(truth)
    assert run["cv_lwlrap"] > 2.5 * chance, (run["cv_lwlrap"], chance)
    oof_weights = con.execute("SELECT SUM(weight) FROM class_scores WHERE run_id=? AND fold=-1", (run_id,)).fetchone()
    assert oof_weights[0] == pytest.approx(1.0)

    # Artifacts: config, best checkpoint per fold, statistics, the job log.
    assert json.loads((run_dir / "config.json").read_text())["spec"]["train"]["epochs"] == 5
    for k in range(5):
        assert (run_dir / f"fold{k}" / "best.pt").exists()
    assert (run_dir / "mel_stats.npz").exists() and "out-of-fold lwlrap" in (run_dir / "job.log").read_text()
    # Each fold's line says where it stopped: patience 5 over 5 epochs runs them all.
    for f in folds:
        assert (f"fold {f['fold']}: best lwlrap {f['lwlrap']:.4f} at epoch {f['best_epoch']}; ran all 5 epochs"
                in (run_dir / "job.log").read_text())

    # The CLI reports what the database holds.
    shown = json.loads(run_cli("show", run_id, "--json", db=db).stdout)
    assert len(shown["folds"]) == 5 and len(shown["classes"]) == 80
    listed = json.loads(run_cli("runs", "--json", db=db).stdout)
    assert listed[0]["run_id"] == run_id and listed[0]["folds_done"] == 5


def _queue_and_drain(root: Path, db: Path, spawn_worker) -> tuple[Store, int, int]:
    """Queue a training job on ``root`` and a probe after it; run a worker until the queue is empty."""
    out = run_cli("queue", "train", "--data", str(root), "--preset", "demo", "--set", "train.epochs=1",
                  "--set", "train.folds=[0]", db=db)
    bad = int(out.stdout)
    probe = int(run_cli("queue", "probe", db=db).stdout)
    assert spawn_worker(db, "--drain").wait(timeout=300) == 0
    return Store(db), bad, probe


def _write_bad_wav(path: Path) -> None:
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 7)


@pytest.mark.parametrize("damage, expect", [
    ("unknown_label", ["train_curated.csv", "row 3", "Not_a_class"]),
    ("missing_wav", ["train_curated.csv", "row 4", "does not exist"]),
    ("corrupt_wav", ["train_curated.csv", "row 5"]),
    ("empty_csv", ["train_curated.csv"]),
])
def test_bad_input_fails_the_job_with_a_clear_error(tiny_demo: Path, tmp_path: Path, spawn_worker,
                                                     damage: str, expect: list[str]):
    root = copy_dataset(tiny_demo, tmp_path / "data")
    csv = root / "train_curated.csv"
    lines = csv.read_text().splitlines()
    if damage == "unknown_label":
        fname = lines[2].split(",")[0]
        lines[2] = f'{fname},"Bark,Not_a_class"'
        csv.write_text("\n".join(lines) + "\n")
    elif damage == "missing_wav":
        fname = lines[3].split(",")[0]
        (root / "train_curated" / fname).unlink()
    elif damage == "corrupt_wav":
        fname = lines[4].split(",")[0]
        _write_bad_wav(root / "train_curated" / fname)
        expect = expect + [fname]
    elif damage == "empty_csv":
        csv.write_text("")
    before = {p.name: p.stat().st_size for p in (root / "train_curated").iterdir()}

    store, bad, probe = _queue_and_drain(root, tmp_path / "experiments.db", spawn_worker)
    job = store.get_job(bad)
    assert job.status == "failed"
    for word in expect:
        assert word in job.error, (word, job.error)
    assert "Traceback" in job.traceback
    # Nothing else lost: the next job ran, and the dataset's files are as they were.
    assert store.get_job(probe).status == "done"
    assert {p.name: p.stat().st_size for p in (root / "train_curated").iterdir()} == before


def test_interrupted_training_resumes_from_its_checkpoint(tiny_demo: Path, tmp_path: Path, spawn_worker):
    """A worker killed mid-fold: the requeued job keeps finished folds and continues the fold it was in."""
    import os
    import signal

    from tests.helpers.waiting import wait_for

    db = tmp_path / "experiments.db"
    job_id = int(run_cli("queue", "train", "--data", str(tiny_demo), "--preset", "demo",
                         "--set", "train.epochs=4", "--set", "train.patience=4", "--set", "train.folds=[0, 1]",
                         "--set", "audio.crop_seconds=1.0", "--set", "train.steps_per_epoch=8", db=db).stdout)
    store = Store(db)
    first = spawn_worker(db, "--lease", "3")
    # Kill the worker once fold 0 is finished and fold 1 has a saved epoch: its row is recorded and
    # its resume checkpoint written (a kill between the two is tests/test_resume.py's case).
    resume_file = runs_root(db) / f"train-{job_id:04d}" / "fold1" / "last.pt"
    wait_for(lambda: any(r["fold"] == 1 for r in store.epochs(f"train-{job_id:04d}")) and resume_file.exists(),
             timeout=600, what="fold 1 to record and checkpoint an epoch")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    run_id = f"train-{job_id:04d}"
    epochs_before = {(r["fold"], r["epoch"]) for r in store.epochs(run_id)}
    fold0_best = store.fold_scores(run_id)[0]["lwlrap"]
    assert spawn_worker(db, "--lease", "3", "--drain").wait(timeout=600) == 0
    job = store.get_job(job_id)
    assert job.status == "done" and job.attempts == 2, job.error
    log = (Path(store.get_run(run_id)["run_dir"]) / "job.log").read_text()
    assert "fold 0: already finished, kept" in log and "resuming run" in log
    # Fold 0 was not trained again; fold 1 did not start over at epoch 0.
    assert store.fold_scores(run_id)[0]["lwlrap"] == fold0_best
    assert log.count("fold 0 epoch 0:") == 1
    assert log.count("fold 1 epoch 0:") == 1
    assert {(r["fold"], r["epoch"]) for r in store.epochs(run_id)} >= epochs_before


def test_the_fold_line_says_where_early_stopping_ended_the_fold(tiny_demo: Path, tmp_path: Path, spawn_worker):
    db = tmp_path / "experiments.db"
    job_id = int(run_cli("queue", "train", "--data", str(tiny_demo), "--preset", "demo", "--set",
                         "audio.crop_seconds=1.0", "--set", "train.epochs=12", "--set", "train.patience=1",
                         "--set", "train.folds=[0]", db=db).stdout)
    assert spawn_worker(db, "--drain").wait(timeout=600) == 0
    store = Store(db)
    job = store.get_job(job_id)
    assert job.status == "done", job.error
    epochs = [e["epoch"] for e in store.epochs(job.run_id)]
    (fold,) = store.fold_scores(job.run_id)
    log = (Path(store.get_run(job.run_id)["run_dir"]) / "job.log").read_text()
    head = f"fold 0: best lwlrap {fold['lwlrap']:.4f} at epoch {fold['best_epoch']}; "
    # The line names the last epoch that ran, whichever way this fold went.
    if len(epochs) < 12:
        assert epochs[-1] == fold["best_epoch"] + 1
        assert head + f"stopped early after epoch {epochs[-1]} of 12 (no better lwlrap for 1 epochs)" in log
    else:
        assert head + "ran all 12 epochs" in log
