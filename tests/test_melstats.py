"""The mel-statistics baseline variant and group-aware folds, through the real CLI and worker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.data.demo import SOURCE_COLUMN, write_demo_dataset
from engine.data.folds import clips_split_from_their_group, fold_rule, read_groups
from engine.data.manifest import load_layout
from engine.data.cache import WaveformCache
from engine.features.frontend import LogMelFrontend, compute_mel_stats
from engine.features.melstats import cache_mel_stats, mel_statistics
from engine.metrics import lwlrap
from engine.store import Store
from engine.submission import validate_submission
from tests.helpers.datasets import CURATED_ROWS, SR, write_layout, write_wav
from tests.helpers.processes import run_cli


def test_mel_statistics_equal_each_clip_alone():
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (1600, 32000, 700, 12345, 40)]
    frontend = LogMelFrontend(sample_rate=16000, n_fft=512, hop_length=160, win_length=512, n_mels=32,
                              fmin=50, fmax=8000)
    stats = mel_statistics(frontend, waves)
    assert stats.shape == (5, 96) and stats.dtype == np.float64
    for i, wave in enumerate(waves):
        db = frontend.log_mel(torch.from_numpy(wave)[None])[0, 0].double().numpy()
        expected = np.concatenate([db.mean(0), db.std(0), db.max(0)])
        np.testing.assert_allclose(stats[i], expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("top_db", [None, 80.0])
def test_cache_mel_stats_equal_the_statistics_in_cache_order(tmp_path: Path, top_db):
    """The training job's statistics, batched by clip length, against the pass over the cache in its own order."""
    root = write_layout(tmp_path / "data")
    rng = np.random.default_rng(3)
    # Lengths out of order, so sorted batches of two differ from the cache order's batches.
    for (fname, _), seconds in zip(CURATED_ROWS, (3.0, 0.4, 7.5, 1.2)):
        t = np.arange(int(seconds * SR)) / SR
        wave = 0.05 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * rng.uniform(100, 8000) * t)
        write_wav(root / "train_curated" / fname, wave.astype(np.float32))
    cache = WaveformCache.build(load_layout(root).curated, sample_rate=32000, cache_dir=tmp_path / "cache")
    frontend = LogMelFrontend(top_db=top_db)
    assert len(set(cache.lengths.tolist())) == 4

    # About two of these clips a batch: sorted batches differ from the cache order's batches of two.
    mean, std = cache_mel_stats(frontend, cache, batch_frames=2 * frontend.num_frames(32000 * 3))
    ref_mean, ref_std = compute_mel_stats(frontend, (cache.get(i) for i in range(len(cache))), batch_size=2)
    assert mean.dtype == std.dtype == np.float32 and mean.shape == std.shape == (64,)
    # Float64 sums in another order, rounded to float32: equal to a few float32 ulps of values near -50 dB.
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(std, ref_std, rtol=1e-6, atol=1e-5)
    # And both are the statistics of every clip's frames, each counted once.
    frames = np.concatenate([frontend.log_mel(torch.from_numpy(cache.get(i))[None])[0, 0].double().numpy()
                             for i in range(len(cache))])
    np.testing.assert_allclose(mean, frames.mean(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(std, np.maximum(frames.std(0), 1e-3), rtol=1e-5, atol=1e-4)


def test_cache_mel_stats_are_computed_once_per_cache_and_setting(tmp_path: Path, monkeypatch):
    import engine.features.melstats as melstats

    root = write_layout(tmp_path / "data")
    cache = WaveformCache.build(load_layout(root).curated, sample_rate=32000, cache_dir=tmp_path / "cache")
    frontend = LogMelFrontend()
    first = cache_mel_stats(frontend, cache)
    kept = melstats.sums_file(frontend, cache)
    assert kept.parent == cache.path and kept.is_file()

    def no_pass(*args, **kwargs):
        raise AssertionError("the per-clip sums were computed again")

    with monkeypatch.context() as m:
        m.setattr(melstats, "clip_mel_sums", no_pass)
        again = cache_mel_stats(LogMelFrontend(), WaveformCache.build(load_layout(root).curated, sample_rate=32000,
                                                                      cache_dir=tmp_path / "cache"))
        np.testing.assert_array_equal(again[0], first[0])
        np.testing.assert_array_equal(again[1], first[1])
        # Another setting is another file, computed (here: refused).
        other = LogMelFrontend(n_mels=32)
        assert melstats.sums_file(other, cache) != kept
        with pytest.raises(AssertionError, match="computed again"):
            cache_mel_stats(other, cache)
    kept.write_bytes(b"damaged")
    mean, std = cache_mel_stats(frontend, cache)  # a damaged file is computed again and replaced
    np.testing.assert_array_equal(mean, first[0])
    assert np.load(kept).shape == (len(cache), 1 + 2 * 64)


@pytest.fixture(scope="module")
def grouped_demo(tmp_path_factory) -> Path:
    """A small demo set whose curated clips come in pairs cut from one recording (two recordings a class)."""
    root = tmp_path_factory.mktemp("grouped") / "demo_data"
    write_demo_dataset(root, seed=2, clips_per_class=4, noisy_per_class=1, test_per_class=1, max_seconds=1.5,
                       clips_per_source=2)
    return root


@pytest.mark.slow
def test_mel_stats_baseline_on_group_aware_folds(grouped_demo: Path, tmp_path: Path, spawn_worker):
    db = tmp_path / "experiments.db"

    def enqueue(*sets: str) -> int:
        args = [a for s in ("n_folds=3", *sets) for a in ("--set", s)]
        return int(run_cli("queue", "baseline", "--data", str(grouped_demo), "--preset", "baseline_melstats",
                           *args, db=db).stdout)

    grouped = enqueue(f'data.group_column="{SOURCE_COLUMN}"')
    blind = enqueue()        # the same dataset without the group column: its folds are already made
    worker = spawn_worker(db, "--drain")
    assert worker.wait(timeout=600) == 0
    store = Store(db)
    job = store.get_job(grouped)
    assert job.status == "done", job.error
    run = store.get_run(job.run_id)
    assert (run["kind"], run["model"]) == ("baseline", "mel-stats+logreg")
    dataset = store.list_datasets()[0]
    assert dataset["fold_rule"] == fold_rule(SOURCE_COLUMN) and dataset["n_folds"] == 3

    layout = load_layout(grouped_demo)
    truth = layout.curated.Y
    stored = store.get_folds(dataset["id"])
    folds = np.array([stored[f] for f in layout.curated.fnames])
    groups = read_groups(layout.curated.csv_path, SOURCE_COLUMN, layout.curated.fnames)
    assert clips_split_from_their_group(groups, folds) == 0

    run_dir = Path(run["run_dir"])
    oof, test = np.load(run_dir / "oof.npy"), np.load(run_dir / "test.npy")
    assert oof.shape == truth.shape and test.shape == (len(layout.test), 80)
    assert run["cv_lwlrap"] == lwlrap(truth, oof)
    # Learnt something: well above the same scores given to the wrong clips.
    assert run["cv_lwlrap"] > 2 * lwlrap(truth, oof[np.random.default_rng(0).permutation(len(oof))])
    assert [f["fold"] for f in store.fold_scores(job.run_id)] == [0, 1, 2]
    features = json.loads((run_dir / "features.json").read_text())
    assert features["dim"] == 3 * 64 and features["train_curated"]["clips"] == len(truth)
    import pandas as pd
    submission = pd.read_csv(run_dir / "submission.csv")
    validate_submission(submission, layout.test.fnames, layout.classes, file=run_dir / "submission.csv")
    np.testing.assert_allclose(submission[layout.classes].to_numpy(), test, rtol=1e-15)

    failed = store.get_job(blind)
    assert failed.status == "failed" and "data.group_column" in failed.error
    assert "group-multilabel-stratified:freesound_id" in failed.error
