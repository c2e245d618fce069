"""TTA crops and inference: placement rules, batched TTA against a per-crop loop, and the infer job end to end."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from engine.data.cache import WaveformCache
from engine.data.manifest import ClipTable, FolderSource, load_layout
from engine.features.frontend import LogMelFrontend
from engine.infer import (SHORT_CLIP_MODES, predict_tta, predict_tta_logits, take_crop, tta_crop_starts,
                          tta_placements)
from engine.metrics import lwlrap, per_class_lwlrap
from engine.models.registry import build_model
from engine.store import OOF, Job, Store
from engine.submission import read_sample_submission, validate_submission
from engine.train.loop import Tagger
from tests.helpers.datasets import copy_dataset, file_digests
from tests.helpers.processes import drain, run_cli
from tests.helpers.worlds import InferredRuns, copy_db, inferred_runs

# --------------------------------------------------------------------------- placements


def test_long_clip_crops_are_evenly_spaced_and_centred():
    length, crop = 1000, 200
    span = length - crop
    for k in (1, 2, 3, 5, 10):
        starts = tta_crop_starts(length, crop, k)
        assert len(starts) == k
        assert all(0 <= s <= span for s in starts)
        # Midpoints of k equal parts: equal gaps of span/k, and symmetric about the centre.
        assert np.allclose(np.diff(starts), span / k, atol=1)
        assert starts[0] + starts[-1] == pytest.approx(span, abs=1)
        assert abs(np.mean(starts) - span / 2) <= 1
    # One crop is the centre crop that training validated on.
    assert tta_crop_starts(1000, 200, 1) == [400]
    assert tta_crop_starts(1001, 200, 1) == [(1001 - 200) // 2]
    assert tta_crop_starts(200, 200, 5) == [0]


def test_long_clip_only_slightly_longer_than_the_crop_has_no_repeated_windows():
    starts = tta_crop_starts(202, 200, 5)
    assert starts == sorted(set(starts)) and len(starts) <= 3
    assert all(0 <= s <= 2 for s in starts)


def _crops(wave: np.ndarray, crop: int, placements: list[tuple[int, bool]]) -> list[np.ndarray]:
    return [take_crop(wave, s, crop, loop=loop) for s, loop in placements]


def test_short_clip_gets_varied_pad_and_loop_placements():
    rng = np.random.default_rng(0)
    wave = rng.standard_normal(10).astype(np.float32)
    crop, k = 30, 5
    pads = tta_crop_starts(10, crop, k)
    # Zero-pad positions from left-aligned (the validation placement) to right-aligned, evenly spaced.
    assert pads == [0, -5, -10, -15, -20]
    for start in pads:
        expected = np.pad(wave, (-start, crop - 10 + start))
        np.testing.assert_array_equal(take_crop(wave, start, crop), expected)
    loops = tta_crop_starts(10, crop, k, loop=True)
    assert loops == [0, 2, 4, 6, 8]
    for phase in loops:
        np.testing.assert_array_equal(take_crop(wave, phase, crop, loop=True), np.tile(wave, 5)[phase:phase + crop])
    assert tta_crop_starts(10, crop, 1) == [0]

    for mode in SHORT_CLIP_MODES:
        placements = tta_placements(10, crop, k, mode)
        crops = _crops(wave, crop, placements)
        assert len(crops) == k
        # k different crops, not k copies of one.
        assert len({c.tobytes() for c in crops}) == k, mode
    mixed = tta_placements(10, crop, k, "mixed")
    assert [loop for _, loop in mixed] == [False, False, False, True, True]
    assert [s for s, _ in mixed] == [0, -10, -20, 0, 5]


def test_placement_arguments_are_checked():
    with pytest.raises(ValueError):
        tta_crop_starts(0, 10, 3)
    with pytest.raises(ValueError):
        tta_crop_starts(10, 10, 0)
    with pytest.raises(ValueError):
        tta_placements(10, 20, 3, "sideways")


# --------------------------------------------------------------------------- batched TTA vs a loop

SR = 8000


def _tiny_tagger(n_classes: int = 5) -> Tagger:
    torch.manual_seed(0)
    frontend = LogMelFrontend(sample_rate=SR, n_fft=256, hop_length=64, win_length=256, n_mels=16, fmin=50.0,
                              fmax=4000.0)
    frontend.set_stats(np.linspace(-60, -40, 16), np.linspace(8, 12, 16))
    model = build_model("small", n_classes=n_classes, n_mels=16, width=4, dropout=0.0)
    # Non-trivial batch-norm statistics, so eval mode is really exercised.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return Tagger(frontend, model).eval()


def _write_clips(folder: Path) -> list[str]:
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True)
    silent_start = np.concatenate([np.zeros(6000), 0.3 * rng.standard_normal(2000)])
    waves = {
        "long.wav": 0.3 * rng.standard_normal(8000),            # longer than the crop
        "short.wav": 0.3 * rng.standard_normal(500),            # shorter: pad and loop placements
        "exact.wav": 0.3 * rng.standard_normal(2000),           # exactly one crop
        "very_long.wav": 0.3 * rng.standard_normal(30000),      # beyond long_samples: k_long crops
        "silent_start.wav": silent_start,                       # some crops are pure silence
        "silence.wav": np.zeros(1200),                          # every crop is silence
    }
    for name, w in waves.items():
        sf.write(folder / name, w.astype(np.float32), SR, subtype="PCM_16")
    return list(waves)


def _reference_logits(tagger: Tagger, cache: WaveformCache, crop: int, k: int, k_long: int,
                      long_samples: int, short_clips: str) -> np.ndarray:
    """One crop at a time: cut it by hand, run the model, average the logits of the audible crops."""
    out = []
    for i in range(len(cache)):
        wave = cache.get(i)
        n = len(wave)
        rows, audible = [], []
        for start, loop in tta_placements(n, crop, k_long if n > long_samples else k, short_clips):
            if n >= crop:
                x = wave[start:start + crop]
            elif loop:
                x = np.tile(wave, crop // n + 2)[start:start + crop]
            else:
                x = np.zeros(crop, np.float32)
                x[-start:-start + n] = wave
            with torch.no_grad():
                rows.append(tagger(torch.from_numpy(np.ascontiguousarray(x))[None]).double().numpy()[0])
            audible.append(bool(np.any(x)))
        rows, audible = np.array(rows), np.array(audible)
        out.append(rows[audible].mean(axis=0) if audible.any() else rows.mean(axis=0))
    return np.array(out)


@pytest.fixture(scope="module")
def clip_cache(tmp_path_factory) -> WaveformCache:
    root = tmp_path_factory.mktemp("tta_clips")
    fnames = _write_clips(root / "clips")
    table = ClipTable(split="clips", fnames=fnames, Y=None, source=FolderSource(root / "clips"), csv_path=None)
    return WaveformCache.build(table, sample_rate=SR, cache_dir=root / "cache")


@pytest.mark.parametrize("short_clips", SHORT_CLIP_MODES)
def test_batched_tta_equals_a_per_crop_loop(clip_cache: WaveformCache, short_clips: str):
    tagger = _tiny_tagger()
    crop, k, k_long, long_samples = 2000, 5, 9, 20000
    expected = _reference_logits(tagger, clip_cache, crop, k, k_long, long_samples, short_clips)
    indices = np.arange(len(clip_cache))
    seen = []
    logits = predict_tta_logits(tagger, clip_cache, indices, crop=crop, k=k, k_long=k_long,
                                long_samples=long_samples, short_clips=short_clips, batch_size=7,
                                progress=lambda done, total, rate: seen.append((done, total)))
    np.testing.assert_allclose(logits, expected, atol=2e-5)
    probs = predict_tta(tagger, clip_cache, indices, crop=crop, k=k, k_long=k_long, long_samples=long_samples,
                        short_clips=short_clips, batch_size=64)
    np.testing.assert_allclose(probs, 1.0 / (1.0 + np.exp(-expected)), atol=1e-5)
    assert seen[-1] == (len(indices), len(indices)) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_tta_with_loader_workers_and_a_subset_of_clips(clip_cache: WaveformCache):
    tagger = _tiny_tagger()
    subset = np.array([4, 1, 3])
    whole = predict_tta_logits(tagger, clip_cache, np.arange(len(clip_cache)), crop=2000, k=3, batch_size=4)
    part = predict_tta_logits(tagger, clip_cache, subset, crop=2000, k=3, batch_size=4, num_workers=1)
    np.testing.assert_allclose(part, whole[subset], atol=1e-6)


def test_a_silent_crop_does_not_dilute_the_audible_ones(clip_cache: WaveformCache):
    tagger = _tiny_tagger()
    i = clip_cache.fnames.index("silent_start.wav")
    wave = clip_cache.get(i)
    starts = tta_crop_starts(len(wave), 2000, 4)
    audible = [s for s in starts if wave[s:s + 2000].any()]
    assert 0 < len(audible) < len(starts)
    with torch.no_grad():
        only_audible = tagger(torch.from_numpy(np.stack([wave[s:s + 2000] for s in audible]))).double().mean(0)
    got = predict_tta_logits(tagger, clip_cache, [i], crop=2000, k=4)
    np.testing.assert_allclose(got[0], only_audible.numpy(), atol=2e-5)


# --------------------------------------------------------------------------- the infer job end to end

@pytest.fixture(scope="module")
def runs(tiny_demo: Path, tmp_path_factory) -> InferredRuns:
    return inferred_runs(tiny_demo, tmp_path_factory)


@pytest.fixture(scope="module")
def layout(tiny_demo: Path):
    return load_layout(tiny_demo)



@pytest.mark.slow
def test_infer_runs_record_fold_class_and_oof_scores(runs: InferredRuns, layout):
    store = Store(runs.db)
    truth = layout.curated.Y
    dataset_id = store.get_run(runs.train_ids[0])["dataset_id"]
    fold_of = store.get_folds(dataset_id)
    folds = np.array([fold_of[f] for f in layout.curated.fnames])
    for source, run_id in zip(runs.train_ids, runs.infer_ids):
        run = store.get_run(run_id)
        assert run["kind"] == "infer" and run["status"] == "done" and run["parent_run_id"] == source
        assert run["dataset_id"] == dataset_id and run["config"]["infer"]["tta_crops"] == 5
        run_dir = Path(run["run_dir"])
        oof = np.load(run_dir / "oof.npy")
        assert oof.shape == truth.shape and np.isfinite(oof).all() and ((oof > 0) & (oof < 1)).all()
        assert run["cv_lwlrap"] == pytest.approx(lwlrap(truth, oof), abs=1e-12)

        fold_rows = store.fold_scores(run_id)
        assert [r["fold"] for r in fold_rows] == [0, 1, 2, 3, 4]
        assert all(r["best_epoch"] is None for r in fold_rows)
        for r in fold_rows:
            rows = folds == r["fold"]
            assert r["n_val"] == rows.sum()
            assert r["lwlrap"] == pytest.approx(lwlrap(truth[rows], oof[rows]), abs=1e-12)

        con = sqlite3.connect(runs.db)
        counts = dict(con.execute("SELECT fold, COUNT(*) FROM class_scores WHERE run_id=? GROUP BY fold",
                                  (run_id,)))
        assert counts == {OOF: 80, 0: 80, 1: 80, 2: 80, 3: 80, 4: 80}
        per_class, weights = per_class_lwlrap(truth, oof)
        recorded = store.class_scores(run_id, OOF)
        assert [r["class_name"] for r in recorded] == layout.classes
        got = np.array([np.nan if r["lrap"] is None else r["lrap"] for r in recorded])
        np.testing.assert_allclose(got, per_class, atol=1e-12)
        np.testing.assert_allclose([r["weight"] for r in recorded], weights, atol=1e-12)
        log = (run_dir / "job.log").read_text()
        assert "with TTA" in log and "clips/s" in log


@pytest.mark.slow
def test_infer_writes_fold_averaged_test_scores_and_a_valid_scored_submission(runs: InferredRuns, layout):
    store = Store(runs.db)
    sample_fnames, classes = read_sample_submission(layout.sample_submission)
    for run_id in runs.infer_ids:
        run = store.get_run(run_id)
        run_dir = Path(run["run_dir"])
        test = np.load(run_dir / "test.npy")
        assert test.shape == (len(sample_fnames), 80)
        # Fold averaging in logit space: the sigmoid of the mean of the five folds' TTA logits.
        fold_logits = np.stack([np.load(run_dir / f"test_logits_fold{k}.npy") for k in range(5)])
        np.testing.assert_allclose(test, 1 / (1 + np.exp(-fold_logits.astype(np.float64).mean(axis=0))),
                                   rtol=1e-12)
        df = pd.read_csv(run_dir / "submission.csv", dtype={"fname": str})
        validate_submission(df, sample_fnames, classes, file=run_dir / "submission.csv")
        np.testing.assert_array_equal(df[classes].to_numpy(), test)
        truth = layout.test_truth
        row = {f: i for i, f in enumerate(sample_fnames)}
        assert run["test_lwlrap"] == pytest.approx(lwlrap(truth.Y, test[[row[f] for f in truth.fnames]]),
                                                   abs=1e-12)
        job = store.get_job(run["job_id"])
        assert "with TTA" in job.message and "without" in job.message and "test lwlrap" in job.message


@pytest.mark.slow
def test_one_crop_inference_reproduces_the_trained_runs_scores(runs: InferredRuns):
    """The 'without TTA' figures are the trained run's: one centre crop of the same checkpoints gives them back."""
    store = Store(runs.db)
    single = store.get_run(runs.single_crop_id)
    source = store.get_run(runs.train_ids[0])
    assert single["cv_lwlrap"] == pytest.approx(source["cv_lwlrap"], abs=1e-6)
    for a, b in zip(store.fold_scores(runs.single_crop_id), store.fold_scores(runs.train_ids[0])):
        assert a["fold"] == b["fold"] and a["lwlrap"] == pytest.approx(b["lwlrap"], abs=1e-6)
    np.testing.assert_allclose(np.load(Path(single["run_dir"]) / "oof.npy"),
                               np.load(Path(source["run_dir"]) / "oof.npy"), atol=1e-5)
    # Only the out-of-fold split was asked for: no test scores, no submission.
    assert not (Path(single["run_dir"]) / "test.npy").exists()
    assert single["test_lwlrap"] is None


@pytest.mark.slow
def test_tta_command_shows_the_gain_overall_per_fold_and_per_class(runs: InferredRuns):
    store = Store(runs.db)
    run_id, source_id = runs.infer_ids[0], runs.train_ids[0]
    report = json.loads(run_cli("tta", run_id, "--json", db=runs.db).stdout)
    run, source = store.get_run(run_id), store.get_run(source_id)
    assert report["source_run_id"] == source_id and report["tta_crops"] == 5
    assert report["with_tta"] == run["cv_lwlrap"] and report["without_tta"] == source["cv_lwlrap"]
    assert report["gain"] == pytest.approx(run["cv_lwlrap"] - source["cv_lwlrap"], abs=1e-12)
    assert len(report["folds"]) == 5 and len(report["classes"]) == 80
    base = {r["class_idx"]: r["lrap"] for r in store.class_scores(source_id, OOF)}
    for r in report["classes"]:
        if r["with_tta"] is not None:
            assert r["gain"] == pytest.approx(r["with_tta"] - base[r["class_idx"]], abs=1e-12)
    text = run_cli("tta", run_id, db=runs.db).stdout
    assert f"{report['gain']:+.4f}" in text and "per class" in text
    # The gain is reported for infer runs only.
    out = run_cli("tta", source_id, db=runs.db, check=False)
    assert out.returncode == 2 and source_id in out.stderr


@pytest.mark.slow
def test_infer_of_an_unknown_untrained_or_infer_run_fails_naming_it(runs: InferredRuns, tmp_path: Path, spawn_worker):
    import shutil

    db = copy_db(runs.db, tmp_path / "experiments.db")
    # A run that is not in the database is refused when queued.
    out = run_cli("queue", "infer", "train-9999", db=db, check=False)
    assert out.returncode == 2 and "train-9999" in out.stderr and "run_id" in out.stderr
    assert Store(db).count_jobs("queued") == 0
    # So is a run without fold checkpoints: an infer run, and a queued job that will make one.
    out = run_cli("queue", "infer", runs.infer_ids[0], db=db, check=False)
    assert out.returncode == 2 and runs.infer_ids[0] in out.stderr and "an infer run" in out.stderr, out.stderr
    pending = int(run_cli("queue", "infer", runs.train_ids[0], "--name", "again", db=db).stdout)
    out = run_cli("queue", "infer", f"infer-{pending:04d}", db=db, check=False)
    assert out.returncode == 2 and f"infer-{pending:04d}" in out.stderr and "an infer run" in out.stderr, out.stderr
    assert run_cli("cancel", str(pending), db=db).returncode == 0
    assert Store(db).count_jobs("queued") == 0
    # A trained run whose checkpoints were removed.
    copy = tmp_path / "moved"
    shutil.copytree(Path(Store(runs.db).get_run(runs.train_ids[1])["run_dir"]), copy)
    (copy / "fold3" / "best.pt").unlink()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE runs SET run_dir=? WHERE id=?", (str(copy), runs.train_ids[1]))
    no_ckpt = int(run_cli("queue", "infer", runs.train_ids[1], db=db).stdout)
    assert spawn_worker(db, "--drain").wait(timeout=300) == 0
    store = Store(db)
    for job_id, words in ((no_ckpt, [runs.train_ids[1], "fold3", "best.pt"]),):
        job = store.get_job(job_id)
        assert job.status == "failed"
        for word in words:
            assert word in job.error, (word, job.error)
    # Queueing checks the arguments it can check at once.
    out = run_cli("queue", "infer", "a", "b", db=db, check=False)
    assert out.returncode == 2 and "one trained run" in out.stderr
    out = run_cli("queue", "infer", db=db, check=False)
    assert out.returncode == 2 and "run_id" in out.stderr


# --------------------------------------------------------------------------- infer errors that lose nothing


def _private_db(runs: InferredRuns, tmp_path: Path) -> Path:
    """A copy of the inferred runs' database that a test may add jobs to (its new runs go to tmp_path/runs)."""
    return copy_db(runs.db, tmp_path / "experiments.db")


def _runs_folder(runs: InferredRuns) -> Path:
    """The folder holding the shared fixture's run directories."""
    return Path(Store(runs.db).get_run(runs.train_ids[0])["run_dir"]).parent


def _run_to_failure(db: Path, job_id: int, spawn_worker, env: dict | None = None) -> tuple[Store, Job, str]:
    """Drain the queue with a real worker; the job must have failed without a traceback.

    Returns the store, the job and its error with whitespace runs made single spaces.
    """
    assert spawn_worker(db, "--drain", env=env).wait(timeout=300) == 0
    store = Store(db)
    job = store.get_job(job_id)
    assert job.status == "failed", (job.status, job.message)
    assert "Traceback" not in job.error
    return store, job, " ".join(job.error.split())


@pytest.mark.slow
def test_infer_fails_when_the_data_root_now_leads_to_another_dataset(runs: InferredRuns, tmp_path: Path,
                                                                     spawn_worker):
    db = _private_db(runs, tmp_path)
    source = runs.train_ids[0]
    before = file_digests(_runs_folder(runs))
    # The run was trained through a link to its data; the link now points at another folder of clips,
    # which registers as a new dataset whose folds the checkpoints were not trained on.
    other = copy_dataset(runs.dataset, tmp_path / "other_demo")
    link = tmp_path / "data"
    link.symlink_to(other, target_is_directory=True)
    config = Store(db).get_run(source)["config"]
    config["data"]["root"] = str(link)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE runs SET config=? WHERE id=?", (json.dumps(config, sort_keys=True), source))
    job_id = int(run_cli("queue", "infer", source, db=db).stdout)
    store, job, text = _run_to_failure(db, job_id, spawn_worker)
    trained_on = store.get_dataset(store.get_run(source)["dataset_id"])["root"]
    for word in (source, str(link), str(other.resolve()), trained_on, "dataset changed since training",
                 "retrain"):
        assert word in text, (word, text)
    # Nothing was made for the job, and no run's files changed.
    assert store.get_run(f"infer-{job_id:04d}") is None
    assert store.get_run(source)["status"] == "done"
    assert file_digests(_runs_folder(runs)) == before


@pytest.mark.slow
def test_infer_with_an_unreadable_checkpoint_fails_naming_it_and_keeps_the_finished_folds(
        runs: InferredRuns, tmp_path: Path, spawn_worker):
    import shutil

    db = _private_db(runs, tmp_path)
    source = runs.train_ids[1]
    before = file_digests(_runs_folder(runs))
    # A copy of the trained run whose fold-1 checkpoint was cut short (a full disk, an interrupted copy).
    copy = tmp_path / "damaged"
    shutil.copytree(Path(Store(runs.db).get_run(source)["run_dir"]), copy)
    ckpt = copy / "fold1" / "best.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:4096])
    damaged = file_digests(copy)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE runs SET run_dir=? WHERE id=?", (str(copy), source))
    job_id = int(run_cli("queue", "infer", source, db=db).stdout)
    store, job, text = _run_to_failure(db, job_id, spawn_worker)
    for word in (str(ckpt), "cannot read the checkpoint", "retrain the fold"):
        assert word in text, (word, text)
    run = store.get_run(job.run_id)
    assert run["kind"] == "infer" and run["status"] == "failed" and run["parent_run_id"] == source
    # Fold 0, inferred before the damaged checkpoint was reached, is kept for a rerun.
    run_dir = Path(run["run_dir"])
    assert [r["fold"] for r in store.fold_scores(job.run_id)] == [0]
    assert (run_dir / "test_logits_fold0.npy").is_file() and not (run_dir / "test_logits_fold1.npy").exists()
    oof = np.load(run_dir / "oof.npy")
    fold_of = store.get_folds(run["dataset_id"])
    fold = np.array([fold_of[f] for f in load_layout(runs.dataset).curated.fnames])
    assert np.isfinite(oof[fold == 0]).all() and np.isnan(oof[fold != 0]).all()
    assert "cannot read the checkpoint" in (run_dir / "job.log").read_text()
    # The source files were only read.
    assert file_digests(copy) == damaged
    assert file_digests(_runs_folder(runs)) == before


@pytest.mark.slow
def test_infer_on_cuda_without_a_gpu_fails_naming_the_setting(runs: InferredRuns, tmp_path: Path, spawn_worker):
    db = _private_db(runs, tmp_path)
    source = runs.train_ids[0]
    before = file_digests(_runs_folder(runs))
    job_id = int(run_cli("queue", "infer", source, "--set", 'infer.device="cuda"', db=db).stdout)
    assert Store(db).get_job(job_id).spec["infer"]["device"] == "cuda"
    # No GPU is visible to the worker, whatever this machine has.
    store, job, _ = _run_to_failure(db, job_id, spawn_worker, env={"CUDA_VISIBLE_DEVICES": ""})
    for word in ("infer.device", "no GPU is visible", '"cpu"'):
        assert word in job.error, (word, job.error)
    assert store.get_run(f"infer-{job_id:04d}") is None
    assert not (tmp_path / "runs" / f"infer-{job_id:04d}" / "oof.npy").exists()
    assert file_digests(_runs_folder(runs)) == before


@pytest.mark.slow
def test_one_crop_inference_of_a_hop_160_cnn14_reproduces_its_short_clip_scores(tiny_demo: Path, tmp_path: Path):
    """Short clips at hop 160: inference builds the fold model as training did, so it repeats them the same way.

    A 0.5 s crop at hop 160 is 101 frames, below the 201 frames a CNN14 at
    32 kHz / hop 160 needs (at the default hop 320 it would need 101): the model
    repeats the log-mel only if it was built with the spec's hop.
    """
    db = tmp_path / "experiments.db"
    train = int(run_cli("queue", "train", "--data", str(tiny_demo), "--preset", "demo",
                        "--set", 'model.arch="cnn14"', "--set", 'model.pretrained="none"', "--set", "train.epochs=0",
                        "--set", "features.hop_length=160", "--set", "audio.crop_seconds=0.5",
                        "--set", "train.folds=[0]", db=db).stdout)
    train_id = f"train-{train:04d}"
    infer = int(run_cli("queue", "infer", train_id, "--set", "infer.tta_crops=1", "--set", 'splits=["oof"]',
                        db=db).stdout)
    drain(db)
    store = Store(db)
    for job in store.list_jobs():
        assert job["status"] == "done", (job["id"], job["kind"], job["error"])
    trained, inferred = store.get_run(train_id), store.get_run(f"infer-{infer:04d}")
    a = np.load(Path(trained["run_dir"]) / "oof.npy")
    b = np.load(Path(inferred["run_dir"]) / "oof.npy")
    rows = np.isfinite(a).all(axis=1)
    assert rows.any() and (np.isfinite(b).all(axis=1) == rows).all()
    np.testing.assert_allclose(b[rows], a[rows], atol=1e-5)
    # The trained run keeps float32 scores, the infer run float64: near-ties of an untrained model's
    # scores may rank differently, so the two LWLRAPs agree to rounding, not bit for bit.
    assert inferred["cv_lwlrap"] == pytest.approx(trained["cv_lwlrap"], abs=1e-4)
