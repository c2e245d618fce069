"""Resume and run files under faults: real workers, real SIGKILL, real damaged files.

A fold killed mid-way and resumed must train exactly as an uninterrupted one
(every epoch's validation LWLRAP equal); every completed epoch is recorded
exactly once, even when the kill lands between the epoch's row and its resume
file; a damaged ``last.pt`` falls back on the one before (or restarts the
fold) and the log names the file; a damaged file that cannot be recovered
fails the job with a message naming it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.store import Store
from tests.helpers.processes import drain, env_with_project, run_cli
from tests.helpers.recording import record_run
from tests.helpers.waiting import wait_for

#: One fold of the demo preset, short: 4 epochs of 10 steps of 1 s crops, no early stop, no warmup.
OVERRIDES = ["train.epochs=4", "train.patience=4", "train.folds=[0]", "audio.crop_seconds=1", "optim.warmup_epochs=0",
             "train.steps_per_epoch=10"]
FOLD_SETTINGS = ["--preset", "demo", *[arg for item in OVERRIDES for arg in ("--set", item)]]


def _val_lwlrap(store: Store, run_id: str) -> list[tuple[int, int, float]]:
    return [(r["fold"], r["epoch"], r["val_lwlrap"]) for r in store.epochs(run_id)]


@pytest.fixture(scope="module")
def uninterrupted(tiny_demo: Path, tmp_path_factory) -> list[tuple[int, int, float]]:
    """Each epoch's val LWLRAP of the fold trained in one go (same spec, seed and device)."""
    db = tmp_path_factory.mktemp("reference") / "experiments.db"
    job = int(run_cli("queue", "train", "--data", str(tiny_demo), *FOLD_SETTINGS, db=db).stdout)
    drain(db)
    store = Store(db)
    assert store.get_job(job).status == "done", store.get_job(job).error
    rows = _val_lwlrap(store, f"train-{job:04d}")
    assert [e for _, e, _ in rows] == [0, 1, 2, 3]
    return rows


def _kill_mid_fold(tiny_demo: Path, db: Path, spawn_worker) -> tuple[Store, int, str]:
    """Queue the fold, SIGKILL its worker (and the job child) once two epochs have their resume files."""
    job = int(run_cli("queue", "train", "--data", str(tiny_demo), *FOLD_SETTINGS, db=db).stdout)
    run_id = f"train-{job:04d}"
    store = Store(db)
    first = spawn_worker(db, "--lease", "3")
    # last.prev.pt appears when epoch 1's resume file replaces epoch 0's; last.pt is back once epoch 1's is saved.
    fold_dir = db.parent / "runs" / run_id / "fold0"
    wait_for(lambda: (fold_dir / "last.prev.pt").exists() and (fold_dir / "last.pt").exists(), timeout=600,
             what="two epochs of fold 0 saved")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert len(store.epochs(run_id)) < 4, "the fold finished before the kill"
    return store, job, run_id


@pytest.mark.slow
def test_a_fold_killed_mid_way_resumes_exactly_as_an_uninterrupted_one(tiny_demo: Path, tmp_path: Path,
                                                                       spawn_worker, uninterrupted):
    store, job, run_id = _kill_mid_fold(tiny_demo, tmp_path / "experiments.db", spawn_worker)
    assert spawn_worker(tmp_path / "experiments.db", "--lease", "3", "--drain").wait(timeout=600) == 0
    assert store.get_job(job).status == "done", store.get_job(job).error
    log = (Path(store.get_run(run_id)["run_dir"]) / "job.log").read_text()
    assert "resuming at epoch" in log
    # Same sampler order, same augmentation draws, same dropout: the same scores, epoch by epoch.
    assert _val_lwlrap(store, run_id) == uninterrupted


@pytest.mark.slow
def test_damaged_resume_files_fall_back_and_say_which_file(tiny_demo: Path, tmp_path: Path, spawn_worker,
                                                           uninterrupted):
    store, job, run_id = _kill_mid_fold(tiny_demo, tmp_path / "experiments.db", spawn_worker)
    run_dir = Path(store.get_run(run_id)["run_dir"])
    last, previous = run_dir / "fold0" / "last.pt", run_dir / "fold0" / "last.prev.pt"
    assert last.exists() and previous.exists()
    last.write_bytes(last.read_bytes()[:100])           # truncated
    (run_dir / "mel_stats.npz").write_bytes(b"")         # empty
    (run_dir / "oof.npy").write_bytes(b"not an array")   # garbage
    assert spawn_worker(tmp_path / "experiments.db", "--lease", "3", "--drain").wait(timeout=600) == 0
    assert store.get_job(job).status == "done", store.get_job(job).error
    log = (run_dir / "job.log").read_text()
    assert f"{last}: damaged resume file" in log and f"resuming from {previous}" in log
    assert f"{run_dir / 'mel_stats.npz'}: damaged" in log
    # One epoch older, then the same path as the uninterrupted fold.
    assert _val_lwlrap(store, run_id) == uninterrupted
    oof = np.load(run_dir / "oof.npy")
    assert np.isfinite(oof).all(axis=1).sum() == store.fold_scores(run_id)[0]["n_val"]


@pytest.mark.slow
def test_both_resume_files_damaged_restarts_the_fold(tiny_demo: Path, tmp_path: Path, spawn_worker,
                                                     uninterrupted):
    store, job, run_id = _kill_mid_fold(tiny_demo, tmp_path / "experiments.db", spawn_worker)
    fold_dir = Path(store.get_run(run_id)["run_dir"]) / "fold0"
    for name in ("last.pt", "last.prev.pt"):
        (fold_dir / name).write_bytes(b"\x00" * 64)
    assert spawn_worker(tmp_path / "experiments.db", "--lease", "3", "--drain").wait(timeout=600) == 0
    assert store.get_job(job).status == "done", store.get_job(job).error
    log = (fold_dir.parent / "job.log").read_text()
    assert f"{fold_dir / 'last.prev.pt'}: damaged resume file" in log
    assert "restarting the fold from its first epoch" in log
    assert _val_lwlrap(store, run_id) == uninterrupted


#: Runs one fold through the fold seam in its own process; the recorder SIGKILLs the process at the
#: worst moment: epoch 1 is finished and about to be recorded, its resume file not yet saved.
_SEAM_SCRIPT = """
import os, signal, sys
from pathlib import Path
from engine.data.prepare import prepare_dataset
from engine.train.runtime import configure_threads
from engine.jobs.folds import FoldTask, train_fold_task
from engine.models.registry import frontend_from_spec
from engine.features.frontend import compute_mel_stats
from engine.data.cache import WaveformCache
from engine.runs.folder import RunFolder
from engine.runs.recorder import StoreRecorder
from engine.specs import to_dict
from engine.presets import resolve_spec
from engine.store import Store

db, root, run_id, marker = sys.argv[1:5]
configure_threads()  # as the job child does, so the scores match a worker's run bit for bit
store = Store(db)
spec = resolve_spec("train", preset="demo", data_root=root, overrides=sys.argv[5:])
data = prepare_dataset(store, root)
folder = RunFolder(Path(db).parent / "runs" / run_id).create()
store.create_run(run_id, kind="train", dataset_id=data.dataset_id, config=to_dict(spec), run_dir=str(folder.path))
if folder.load_mel_stats() is None:
    cache = WaveformCache.build(data.layout.curated, sample_rate=spec.audio.sample_rate,
                                cache_dir=Path(root) / ".fsat-cache")
    folder.save_mel_stats(*compute_mel_stats(frontend_from_spec(spec), (cache.get(i) for i in range(len(cache)))))


class KillBeforeRecording(StoreRecorder):
    def epoch(self, record):
        if record.epoch == 1 and marker != "-" and not os.path.exists(marker):
            Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        super().epoch(record)


task = FoldTask(spec=to_dict(spec), fold=0, run_dir=str(folder.path), data_root=root, device="cpu",
                folds=data.folds.tolist())
train_fold_task(task, KillBeforeRecording(store, run_id, log=lambda line: print(line, flush=True)))
"""


@pytest.mark.slow
def test_a_kill_between_an_epoch_and_its_row_loses_no_epoch(tiny_demo: Path, tmp_path: Path, uninterrupted):
    """Through the fold seam in a real process: killed as epoch 1 is about to be recorded, then resumed."""
    db = tmp_path / "experiments.db"
    env = env_with_project()

    def fold(run_id: str, marker: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _SEAM_SCRIPT, str(db), str(tiny_demo), run_id, marker,
                               *OVERRIDES],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)

    killed = fold("train-kill", str(tmp_path / "killed-once"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    store = Store(db)
    assert [r["epoch"] for r in store.epochs("train-kill")] == [0]
    resumed = fold("train-kill", str(tmp_path / "killed-once"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # Every epoch exactly once, with the values of the fold trained in one go by a worker.
    assert [r["epoch"] for r in store.epochs("train-kill")] == [0, 1, 2, 3]
    assert _val_lwlrap(store, "train-kill") == uninterrupted
    assert resumed.stdout.count("fold 0 epoch 1:") == 1 and "resuming at epoch 1" in resumed.stdout


@pytest.mark.slow
def test_an_unrecoverable_damaged_member_file_fails_the_blend_naming_it(tiny_demo: Path, tmp_path: Path,
                                                                        spawn_worker):
    from engine.data.prepare import prepare_dataset

    db = tmp_path / "experiments.db"
    store = Store(db)
    data = prepare_dataset(store, tiny_demo)
    truth = data.layout.curated.Y
    rng = np.random.default_rng(0)
    n_test = len(data.layout.test.fnames)
    for run_id in ("infer-a", "infer-b"):
        record_run(store, tmp_path / "runs", run_id, kind="infer", dataset_id=data.dataset_id,
                   oof=truth + rng.random(truth.shape), test=rng.random((n_test, truth.shape[1])), truth=truth,
                   folds=data.folds)
    damaged = tmp_path / "runs" / "infer-b" / "oof.npy"
    damaged.write_bytes(damaged.read_bytes()[:200])  # torn
    job = int(run_cli("ensemble", "infer-a", "infer-b", db=db).stdout)
    assert spawn_worker(db, "--drain").wait(timeout=300) == 0
    failed = store.get_job(job)
    assert failed.status == "failed" and failed.attempts == 1
    text = " ".join(failed.error.split())
    assert "infer-b" in text and str(damaged) in text and "damaged or unreadable" in text
    assert "run that member again" in text and "Traceback" not in failed.error
    out = run_cli("ensemble", "infer-a", "infer-b", "--now", db=db, check=False)
    assert out.returncode == 2 and str(damaged) in " ".join(out.stderr.split()) and "Traceback" not in out.stderr
