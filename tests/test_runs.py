"""The run layer on its own: the atomic writer, checked reads, the run folder, scores, the fold seam's records."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from engine.metrics import lwlrap, per_class_lwlrap
from engine.atomic import DamagedFile, atomic_write, load_json, load_npy, load_npz, save_json, save_npy
from engine.runs.folder import RunFolder
from engine.runs.recorder import EpochRecord, ListRecorder, StoreRecorder
from engine.runs.scores import record_fold_scores, record_oof_scores
from engine.store import OOF, Store


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path):
    path = tmp_path / "oof.npy"
    save_npy(path, np.arange(4.0))

    def half_then_fail(fh):
        fh.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert np.array_equal(load_npy(path), np.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oof.npy"]


@pytest.mark.parametrize("damage", [b"", b"not an array", None])
def test_damaged_files_are_named_with_what_to_do(tmp_path: Path, damage: bytes | None):
    npy, npz, js = tmp_path / "oof.npy", tmp_path / "mel_stats.npz", tmp_path / "config.json"
    save_npy(npy, np.ones((3, 2)))
    RunFolder(tmp_path).save_mel_stats(np.zeros(4), np.ones(4))
    save_json(js, {"a": 1})
    for path in (npy, npz, js):
        path.write_bytes(path.read_bytes()[:5] if damage is None else damage)
    for path, read in ((npy, load_npy), (npz, load_npz), (js, load_json)):
        with pytest.raises(DamagedFile) as err:
            read(path)
        assert str(path) in str(err.value) and "queue the job again" in str(err.value)
        assert err.value.path == path


def test_the_run_folder_reads_back_what_it_saved(tmp_path: Path):
    folder = RunFolder(tmp_path / "runs" / "train-0001")
    assert not folder.path.exists()
    assert folder.load_mel_stats() is None
    oof = folder.load_oof((3, 2))
    assert oof.shape == (3, 2) and np.isnan(oof).all()
    folder.create().save_mel_stats(np.arange(2.0), np.ones(2))
    mean, std = folder.load_mel_stats()
    assert np.array_equal(mean, [0.0, 1.0]) and np.array_equal(std, [1.0, 1.0])
    folder.save_array(folder.oof, np.zeros((3, 2)))
    with pytest.raises(DamagedFile, match=r"shape \(3, 2\), expected \(4, 2\)"):
        folder.load_oof((4, 2))
    assert folder.best(2) == folder.path / "fold2" / "best.pt"
    assert RunFolder.of({"run_dir": "runs/x"}, tmp_path / "experiments.db").path == tmp_path / "runs" / "x"


def test_scores_are_recorded_the_one_way(tmp_path: Path):
    store = Store(tmp_path / "experiments.db")
    store.create_run("r", kind="train")
    rng = np.random.default_rng(0)
    truth = (rng.random((20, 4)) < 0.3).astype(np.float32)
    truth[np.arange(20), rng.integers(0, 4, 20)] = 1
    pred = rng.random((20, 4))
    oof = pred.copy()
    oof[:5] = np.nan  # a fold not run
    score = record_fold_scores(store, "r", 1, truth[5:], pred[5:], ["a", "b", "c", "d"], best_epoch=3)
    assert score == pytest.approx(lwlrap(truth[5:], pred[5:]))
    (row,) = store.fold_scores("r")
    assert (row["fold"], row["best_epoch"], row["n_val"]) == (1, 3, 15)
    cv, covered = record_oof_scores(store, "r", truth, oof, ["a", "b", "c", "d"])
    assert covered == 15 and cv == pytest.approx(lwlrap(truth[5:], pred[5:]))
    expected, _ = per_class_lwlrap(truth[5:], pred[5:])
    assert [c["lrap"] for c in store.class_scores("r", OOF)] == pytest.approx(list(expected))


def test_fold_records_travel_between_processes_and_replay_into_the_store(tmp_path: Path):
    from engine.data.clips import ExtraClips
    from engine.jobs.folds import FoldTask

    task = FoldTask(spec={"train": {"epochs": 2}}, fold=1, run_dir=str(tmp_path), data_root=str(tmp_path),
                    device="cpu", folds=[0, 1, 1], initial_checkpoint=str(tmp_path / "best.pt"),
                    extra=ExtraClips(split="noisy", fnames=["n1.wav"], labels=np.ones((1, 80), np.float32),
                                     weights=np.array([0.5], np.float32)), tag="stage A")
    again = pickle.loads(pickle.dumps(task))
    assert (again.fold, again.tag, again.extra.fnames, again.folds) == (1, "stage A", ["n1.wav"], [0, 1, 1])
    remote = ListRecorder()
    remote.log("hello from the fold")
    remote.epoch(EpochRecord(fold=1, epoch=0, train_loss=0.5, val_loss=0.4, val_lwlrap=0.3, lr=1e-3, seconds=1.0,
                             clips_per_sec=10.0, is_best=True, tag="stage A"))
    remote = pickle.loads(pickle.dumps(remote))
    store = Store(tmp_path / "experiments.db")
    store.create_run("r", kind="train")
    lines: list[str] = []
    remote.replay(StoreRecorder(store, "r", log=lines.append))
    assert [(e["fold"], e["epoch"], e["val_lwlrap"]) for e in store.epochs("r")] == [(1, 0, pytest.approx(0.3))]
    assert lines[0] == "hello from the fold" and lines[1].startswith("fold 1 [stage A] epoch 0:")
