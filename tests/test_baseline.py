"""The embedding baseline: CNN14 embeddings (batched, cached) and the per-fold logistic regression job.

The CNN14 checkpoints are randomly initialised models saved in PANNs' format
by the tests, so scores are low; the tests check structure and equalities
against independent computations (PANNs' own forward, sklearn's pipeline,
the metric of the saved arrays). Crops are 1 s to keep CNN14 cheap on a CPU.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from engine.data.manifest import ClipTable, FolderSource, load_layout
from engine.embeddings import (EMBEDDING_DIM, EmbeddingCache, cache_settings, crop_clip, embed_table,
                               embed_waves, load_embedder, panns_embedder)
from engine.errors import CheckpointError, ConfigError
from engine.jobs.baseline import fit_one_vs_rest
from engine.metrics import lwlrap
from engine.models.checkpoint import save_panns_style
from engine.models.panns import Cnn14, PannsTagger, repeat_pad_frames
from engine.specs import TrainSpec, to_dict
from engine.store import OOF, Store
from engine.submission import score_submission, validate_submission
from tests.helpers.datasets import copy_dataset
from tests.helpers.processes import run_cli

SR = 32000
PUBLISHED = "Cnn14_mAP=0.431.pth"


@pytest.fixture(scope="module")
def panns_dir(tmp_path_factory) -> Path:
    """A folder holding a random CNN14 saved PANNs-style under the published file name."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("panns")
    save_panns_style(Cnn14().eval(), folder / PUBLISHED)
    return folder


@pytest.fixture(scope="module")
def embedder(panns_dir: Path):
    """The random CNN14 checkpoint loaded as an embedder (CPU, float32)."""
    return panns_embedder(panns_dir / PUBLISHED)


def _tones(seconds: list[float], seed: int) -> list[np.ndarray]:
    """Clips of the given lengths: a tone with a slow swing plus noise, float32 at 32 kHz."""
    rng = np.random.default_rng(seed)
    out = []
    for s in seconds:
        t = np.arange(int(s * SR)) / SR
        swing = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)
        clip = 0.3 * swing * np.sin(2 * np.pi * rng.uniform(200, 4000) * t) + 0.02 * rng.standard_normal(t.size)
        out.append(clip.astype(np.float32))
    return out


def assert_close(actual: np.ndarray, expected: np.ndarray, rel: float = 1e-4) -> None:
    """Equal within ``rel`` of the largest expected magnitude (random-weight embeddings are small)."""
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * scale)


def _wav_table(folder: Path, waves: list[np.ndarray]) -> ClipTable:
    """Write float WAVs at 32 kHz (decoded back bit-exactly) and index them as a split."""
    folder.mkdir(parents=True, exist_ok=True)
    fnames = []
    for i, wave in enumerate(waves):
        fnames.append(f"clip{i}.wav")
        sf.write(folder / fnames[-1], wave, SR, subtype="FLOAT")
    return ClipTable(split="train_curated", fnames=fnames, Y=None, source=FolderSource(folder), csv_path=None)


# --------------------------------------------------------------------------- the job, through a real worker

def test_baseline_job_records_folds_classes_oof_test_and_reuses_cached_embeddings(
        tiny_demo: Path, tmp_path: Path, panns_dir: Path, embedder, spawn_worker):
    root = copy_dataset(tiny_demo, tmp_path / "demo")
    db = tmp_path / "experiments.db"
    store = Store(db)

    def enqueue(*overrides: str) -> int:
        sets = [arg for o in ("audio.crop_seconds=1.0", *overrides) for arg in ("--set", o)]
        return int(run_cli("queue", "baseline", "--data", str(root), *sets, db=db).stdout)

    first, second = enqueue(), enqueue()
    missing = enqueue(f"checkpoint={json.dumps(str(tmp_path / 'nowhere' / PUBLISHED))}")
    worker = spawn_worker(db, "--drain", env={"FSAT_PANNS_DIR": str(panns_dir)})
    assert worker.wait(timeout=600) == 0

    layout = load_layout(root)
    truth, classes = layout.curated.Y, layout.classes
    job = store.get_job(first)
    assert job.status == "done", job.error
    run = store.get_run(job.run_id)
    run_dir = Path(run["run_dir"])
    assert (run["kind"], run["model"], run["status"]) == ("baseline", "cnn14-emb+logreg", "done")

    # Out-of-fold predictions in curated order; the recorded CV score is their metric.
    oof = np.load(run_dir / "oof.npy")
    # float64, as the infer job saves: float32 would merge confident scores near 1 into ties.
    assert oof.shape == truth.shape == (480, 80) and oof.dtype == np.float64 and not np.isnan(oof).any()
    assert run["cv_lwlrap"] == lwlrap(truth, oof)
    assert 0 < run["cv_lwlrap"] <= 1

    # Five folds (no epochs), each scored on its own clips of oof.npy; 80 classes per fold and out-of-fold.
    stored = store.get_folds(store.list_datasets()[0]["id"])
    fold_of = np.array([stored[f] for f in layout.curated.fnames])
    folds = store.fold_scores(job.run_id)
    assert [f["fold"] for f in folds] == [0, 1, 2, 3, 4]
    assert all(f["best_epoch"] is None for f in folds) and sum(f["n_val"] for f in folds) == 480
    for f in folds:
        val = fold_of == f["fold"]
        assert f["lwlrap"] == pytest.approx(lwlrap(truth[val], oof[val]), abs=1e-12)
    con = sqlite3.connect(db)
    counts = dict(con.execute("SELECT fold, COUNT(*) FROM class_scores WHERE run_id=? GROUP BY fold",
                              (job.run_id,)))
    assert counts == {OOF: 80, 0: 80, 1: 80, 2: 80, 3: 80, 4: 80}

    # Fold 0 again with sklearn's own pipeline on the cached embeddings gives the same out-of-fold scores.
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    summary = json.loads((run_dir / "embeddings.json").read_text())
    with np.load(summary["curated"]["cache_file"]) as cached:
        row_of = {str(k).rsplit("@", 1)[0]: i for i, k in enumerate(cached["keys"])}
        X = cached["embeddings"][[row_of[f"train_curated/{f}"] for f in layout.curated.fnames]].astype(np.float64)
    val = fold_of == 0
    from threadpoolctl import threadpool_limits

    reference = OneVsRestClassifier(make_pipeline(StandardScaler(), LogisticRegression(C=2.0, max_iter=1000)))
    with threadpool_limits(limits=1, user_api="blas"):  # multi-threaded BLAS is far slower at this size
        reference.fit(X[~val], truth[~val])
        # To float64 precision: a float32 copy would be off by up to 6e-8 near 1.
        np.testing.assert_allclose(oof[val], reference.predict_proba(X[val]), rtol=0, atol=1e-12)

    # The cached rows are the embeddings of the right clips: PANNs' forward on the decoded crop.
    from engine.data.audio import decode

    model = embedder.encoder

    for fname in layout.curated.fnames[:2]:
        wave = crop_clip(decode(layout.curated.source.path(fname), name=fname, target_sr=SR), SR)
        with torch.no_grad():
            expected = model(torch.from_numpy(wave)[None])["embedding"][0].numpy()
        assert_close(X[layout.curated.fnames.index(fname)], expected)

    # Test predictions in sample_submission order, their submission, and the test score.
    test_pred = np.load(run_dir / "test.npy")
    assert test_pred.shape == (len(layout.test.fnames), 80) and test_pred.dtype == np.float64
    rows = [layout.test.fnames.index(f) for f in layout.test_truth.fnames]
    assert run["test_lwlrap"] == pytest.approx(lwlrap(layout.test_truth.Y, test_pred[rows]), abs=1e-12)
    submission = pd.read_csv(run_dir / "submission.csv")
    validate_submission(submission, layout.test.fnames, classes)
    # Written with round-trip precision, so the file holds the saved scores exactly.
    np.testing.assert_array_equal(submission[classes].to_numpy(), test_pred)
    assert score_submission(run_dir / "submission.csv", root / "test_ground_truth.csv", classes) == \
        pytest.approx(run["test_lwlrap"], abs=1e-9)

    # The first run embedded every clip; the second embedded none and got the same results.
    assert summary["curated"]["computed"] == 480 and summary["test"]["computed"] == len(layout.test.fnames)
    job2 = store.get_job(second)
    assert job2.status == "done", job2.error
    run2_dir = Path(store.get_run(job2.run_id)["run_dir"])
    summary2 = json.loads((run2_dir / "embeddings.json").read_text())
    assert (summary2["curated"]["computed"], summary2["curated"]["reused"]) == (0, 480)
    assert (summary2["test"]["computed"], summary2["test"]["reused"]) == (0, len(layout.test.fnames))
    assert "train_curated: 0 clips embedded, 480 reused" in (run2_dir / "job.log").read_text()
    assert np.array_equal(np.load(run2_dir / "oof.npy"), oof)
    assert np.array_equal(np.load(run2_dir / "test.npy"), test_pred)
    index = json.loads(Path(summary2["curated"]["cache_file"]).with_suffix(".json").read_text())
    assert index["computed_total"] == index["rows"] == 480 + len(layout.test.fnames)

    # The command line shows the run from the database.
    shown = json.loads(run_cli("show", job.run_id, "--json", db=db).stdout)
    assert len(shown["folds"]) == 5 and len(shown["classes"]) == 80

    # A named checkpoint that does not exist fails the job with a message saying what to put where.
    job3 = store.get_job(missing)
    assert job3.status == "failed"
    assert "nowhere" in job3.error and PUBLISHED in job3.error and "does not exist" in job3.error


# --------------------------------------------------------------------------- batching and the cache

def test_batched_embeddings_equal_one_clip_at_a_time_and_panns_forward(embedder):
    waves = _tones([0.2, 0.7, 1.0, 1.6, 3.3], seed=1)
    batched = embed_waves(embedder, waves, crop_samples=SR, batch_size=5)
    single = embed_waves(embedder, waves, crop_samples=SR, batch_size=1)
    assert batched.shape == (5, EMBEDDING_DIM) and np.count_nonzero(batched) > 1000
    assert_close(batched, single)

    # PANNs' reference path: the model's forward on the cropped (or loop-padded) waveform.
    model = embedder.encoder
    for wave, got in zip(waves, batched):
        crop = crop_clip(wave, SR)
        with torch.no_grad():
            expected = model(torch.from_numpy(crop)[None])["embedding"][0].numpy()
        assert_close(got, expected)
    # A short clip is repeated, not zero-padded: its 1 s crop holds the clip 5 times over.
    assert np.array_equal(crop_clip(waves[0], SR)[:len(waves[0])], waves[0])
    assert np.array_equal(crop_clip(waves[0], SR)[len(waves[0]):2 * len(waves[0])], waves[0])
    # A centre crop of a long clip.
    start = (len(waves[4]) - SR) // 2
    assert np.array_equal(crop_clip(waves[4], SR), waves[4][start:start + SR])

    # A crop of 0.2 s has 21 log-mel frames, fewer than the 32 the conv stack needs: the frames repeat.
    short_batch = embed_waves(embedder, waves, crop_samples=SR // 5, batch_size=5)
    short_single = embed_waves(embedder, waves, crop_samples=SR // 5, batch_size=1)
    assert_close(short_batch, short_single)
    with torch.no_grad():
        logmel = model.logmel(torch.from_numpy(crop_clip(waves[2], SR // 5))[None])
        assert logmel.shape[2] == 21
        expected = model.embed(repeat_pad_frames(logmel, 32))[0].numpy()
    assert_close(short_batch[2], expected)


def test_cache_reuses_rows_and_is_invalidated_by_crop_audio_and_checkpoint(panns_dir: Path, tmp_path: Path):
    checkpoint = tmp_path / "weights" / PUBLISHED
    checkpoint.parent.mkdir()
    shutil.copyfile(panns_dir / PUBLISHED, checkpoint)
    waves = _tones([0.6, 1.4, 2.5, 0.9], seed=2)
    table = _wav_table(tmp_path / "audio", waves)
    cache_dir = tmp_path / "cache"
    embedder = panns_embedder(checkpoint)  # its own copy: this test rewrites the file
    seen = []

    first = embed_table(table, embedder, crop_seconds=1.0, batch_size=3, cache_dir=cache_dir,
                        progress=lambda done, total, rate: seen.append((done, total)))
    assert (first.computed, first.reused) == (4, 0) and seen[-1] == (4, 4)
    assert_close(first.embeddings, embed_waves(embedder, waves, crop_samples=SR))
    cache_file = first.cache_file
    stamp = cache_file.stat().st_mtime_ns

    again = embed_table(table, embedder, crop_seconds=1.0, batch_size=3, cache_dir=cache_dir)
    assert (again.computed, again.reused) == (0, 4)
    assert np.array_equal(again.embeddings, first.embeddings)
    assert cache_file.stat().st_mtime_ns == stamp
    assert json.loads(cache_file.with_suffix(".json").read_text())["computed_total"] == 4

    # Another crop length is another group: everything is embedded again, the first group is untouched.
    other_crop = embed_table(table, embedder, crop_seconds=0.5, batch_size=3, cache_dir=cache_dir)
    assert (other_crop.computed, other_crop.reused) == (4, 0) and other_crop.cache_file != cache_file
    assert cache_file.stat().st_mtime_ns == stamp

    # A rewritten audio file is embedded again; its old row is dropped.
    changed = _tones([1.2], seed=3)[0]
    sf.write(tmp_path / "audio" / "clip1.wav", changed, SR, subtype="FLOAT")
    after_edit = embed_table(table, embedder, crop_seconds=1.0, batch_size=3, cache_dir=cache_dir)
    assert (after_edit.computed, after_edit.reused) == (1, 3)
    assert_close(after_edit.embeddings[1], embed_waves(embedder, [changed], crop_samples=SR)[0])
    assert np.array_equal(after_edit.embeddings[[0, 2, 3]], first.embeddings[[0, 2, 3]])
    index = json.loads(cache_file.with_suffix(".json").read_text())
    assert (index["rows"], index["computed_total"]) == (4, 5)

    # New weights in the same checkpoint file: a new group, new embeddings.
    torch.manual_seed(5)
    save_panns_style(Cnn14().eval(), checkpoint)
    retrained = panns_embedder(checkpoint)
    assert cache_settings(retrained, SR) != cache_settings(embedder, SR)
    new_weights = embed_table(table, retrained, crop_seconds=1.0, batch_size=3, cache_dir=cache_dir)
    assert (new_weights.computed, new_weights.reused) == (4, 0)
    assert np.abs(new_weights.embeddings - after_edit.embeddings).max() > 0.1 * np.abs(after_edit.embeddings).max()

    # No cache folder: computed every time, nothing written.
    uncached = embed_table(table, embedder, crop_seconds=1.0, batch_size=4, cache_dir=None)
    assert uncached.computed == 4 and uncached.cache_file is None
    assert_close(uncached.embeddings, after_edit.embeddings)


def test_a_corrupt_clip_names_its_file_and_keeps_the_rows_embedded_before_it(embedder, tmp_path: Path):
    from engine.errors import DataError

    table = _wav_table(tmp_path / "audio", _tones([0.5, 0.8, 0.6, 0.7], seed=6))
    (tmp_path / "audio" / "clip3.wav").write_bytes(b"RIFF-not-really-a-wav")
    with pytest.raises(DataError, match="clip3.wav"):
        embed_table(table, embedder, crop_seconds=0.5, batch_size=1, cache_dir=tmp_path / "cache")
    again = embed_table(ClipTable(split=table.split, fnames=table.fnames[:3], Y=None, source=table.source,
                                  csv_path=None), embedder, crop_seconds=0.5, cache_dir=tmp_path / "cache")
    assert (again.computed, again.reused) == (0, 3)


def test_cache_merges_rows_written_by_another_process(tmp_path: Path):
    settings = {"format": 1, "embedder": {"kind": "test"}}
    mine, theirs = EmbeddingCache(tmp_path, settings), EmbeddingCache(tmp_path, settings)
    rows = np.random.default_rng(0).standard_normal((3, EMBEDDING_DIM)).astype(np.float32)
    mine.add(["test/a.wav@1", "test/b.wav@1"], rows[:2])
    theirs.add(["test/c.wav@1"], rows[2:])
    mine.flush()
    theirs.flush()
    fresh = EmbeddingCache(tmp_path, settings)
    found = fresh.lookup(["test/a.wav@1", "test/b.wav@1", "test/c.wav@1", "test/d.wav@1"])
    assert sorted(found) == ["test/a.wav@1", "test/b.wav@1", "test/c.wav@1"]
    assert np.array_equal(found["test/c.wav@1"], rows[2]) and np.array_equal(found["test/a.wav@1"], rows[0])
    assert fresh.read_index()["computed_total"] == 3


# --------------------------------------------------------------------------- where the encoder comes from

def test_missing_checkpoint_says_where_to_put_it(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("FSAT_PANNS_DIR", raising=False)
    with pytest.raises(CheckpointError) as err:
        load_embedder("", "")
    text = str(err.value)
    assert "FSAT_PANNS_DIR is not set" in text and PUBLISHED in text and "encoder_run_id" in text

    monkeypatch.setenv("FSAT_PANNS_DIR", str(tmp_path))
    with pytest.raises(CheckpointError, match=f"{tmp_path} but holds no {PUBLISHED}"):
        load_embedder("", "")


def test_a_trained_cnn14_run_embeds_with_its_fold0_encoder_on_our_frontend(tmp_path: Path, monkeypatch):
    from engine.features.frontend import LogMelFrontend

    monkeypatch.delenv("FSAT_PANNS_DIR", raising=False)
    store = Store(tmp_path / "experiments.db")
    spec = TrainSpec()
    spec.model.arch = "cnn14"
    spec.data.root = str(tmp_path)  # the train job records its resolved spec, data root included
    run_dir = tmp_path / "runs" / "train-0001"
    (run_dir / "fold0").mkdir(parents=True)
    store.create_run("train-0001", kind="train", config=to_dict(spec), run_dir=str(run_dir))
    torch.manual_seed(3)
    tagger = PannsTagger("cnn14", n_classes=80).eval()
    mel_mean, mel_std = np.linspace(-60, -20, 64).astype(np.float32), np.linspace(8, 15, 64).astype(np.float32)
    torch.save({"model": tagger.state_dict(), "epoch": 3, "mel_mean": torch.from_numpy(mel_mean),
                "mel_std": torch.from_numpy(mel_std)}, run_dir / "fold0" / "best.pt")

    embedder = load_embedder("", "train-0001", store=store)
    assert embedder.identity["kind"] == "run-encoder" and embedder.identity["run_id"] == "train-0001"
    waves = _tones([0.5, 1.3], seed=4)
    got = embed_waves(embedder, waves, crop_samples=SR, batch_size=2)

    frontend = LogMelFrontend()
    frontend.set_stats(mel_mean, mel_std)
    crops = torch.from_numpy(np.stack([crop_clip(w, SR) for w in waves]))
    with torch.no_grad():
        expected = tagger.encoder.embed(frontend(crops)).numpy()
    assert_close(got, expected)

    small = TrainSpec()
    small.data.root = str(tmp_path)
    store.create_run("train-0002", kind="train", config=to_dict(small), run_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="needs a trained cnn14 encoder"):
        load_embedder("", "train-0002", store=store)
    with pytest.raises(ConfigError, match="no run 'train-0404'"):
        load_embedder("", "train-0404", store=store)


def test_a_zero_shot_encoder_run_is_fed_unstandardised_log_mel(tmp_path: Path, monkeypatch):
    """features.standardise = false (the zero-shot preset): the baseline embeds what the encoder was scored on."""
    from engine.features.frontend import LogMelFrontend
    from engine.runs.kinds import model_label
    from engine.presets import resolve_spec

    monkeypatch.delenv("FSAT_PANNS_DIR", raising=False)
    store = Store(tmp_path / "experiments.db")
    # The zero-shot preset's settings, as the train job records them (resolved spec, model label).
    spec = resolve_spec("train", preset="cnn14_zeroshot", data_root=str(tmp_path),
                        overrides=['model.pretrained="none"'])
    assert spec.features.standardise is False
    run_dir = tmp_path / "runs" / "train-0001"
    (run_dir / "fold0").mkdir(parents=True)
    store.create_run("train-0001", kind="train", config=to_dict(spec), run_dir=str(run_dir),
                     model=model_label(spec.model.arch, spec.features.n_mels))
    store.finish_run("train-0001", status="done")
    torch.manual_seed(5)
    tagger = PannsTagger("cnn14", n_classes=80).eval()
    mel_mean, mel_std = np.linspace(-60, -20, 64).astype(np.float32), np.linspace(8, 15, 64).astype(np.float32)
    torch.save({"model": tagger.state_dict(), "epoch": -1, "mel_mean": torch.from_numpy(mel_mean),
                "mel_std": torch.from_numpy(mel_std)}, run_dir / "fold0" / "best.pt")

    embedder = load_embedder("", "train-0001", store=store)
    waves = _tones([0.5, 1.3], seed=6)
    got = embed_waves(embedder, waves, crop_samples=SR, batch_size=2)

    f = spec.features
    frontend = LogMelFrontend(sample_rate=spec.audio.sample_rate, n_fft=f.n_fft, hop_length=f.hop_length,
                              win_length=f.win_length, n_mels=f.n_mels, fmin=f.fmin, fmax=f.fmax, clamp=f.clamp)
    crops = torch.from_numpy(np.stack([crop_clip(w, SR) for w in waves]))
    with torch.no_grad():
        unstandardised = tagger.encoder.embed(frontend(crops)).numpy()
        frontend.set_stats(mel_mean, mel_std)
        standardised = tagger.encoder.embed(frontend(crops)).numpy()
    assert not np.allclose(standardised, unstandardised, atol=1e-3)  # the two inputs do differ
    assert_close(got, unstandardised)
    # Cached embeddings of the two frontends never mix: the standardisation keys the cache group.
    assert embedder.identity["standardise"] is False


# --------------------------------------------------------------------------- the classifier

def test_one_vs_rest_matches_sklearn_pipeline_and_constant_classes():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.standard_normal((70, 12)) * rng.uniform(0.1, 10, size=12) + rng.uniform(-5, 5, size=12)
    Y = (X[:, :4] + rng.standard_normal((70, 4)) > 1.0).astype(np.float32)
    Y = np.concatenate([Y, np.zeros((70, 1), np.float32)], axis=1)   # a class without positives
    train, held = slice(0, 50), slice(50, 70)
    (pred,), model = fit_one_vs_rest(X[train], Y[train], [X[held]], C=2.0)
    assert pred.shape == (20, 5)
    scaler = StandardScaler().fit(X[train])
    for k in range(4):
        ref = LogisticRegression(C=2.0, max_iter=1000).fit(scaler.transform(X[train]), Y[train, k])
        np.testing.assert_allclose(pred[:, k], ref.predict_proba(scaler.transform(X[held]))[:, 1], atol=1e-6)
    assert np.all(pred[:, 4] == 0.0) and model.constant[4] == 0.0 and np.isnan(model.constant[:4]).all()
    np.testing.assert_allclose(model.mean, X[train].mean(axis=0), rtol=1e-5)
