"""The demo dataset: written in the Kaggle layout, loadable (folders and zips), deterministic,
with the stated label noise and sounds that carry their class."""

from __future__ import annotations

import csv
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import label_ranking_average_precision_score

from engine.data.demo import DEMO_SR, class_signatures, plan_demo_dataset, write_demo_dataset
from engine.data.labels import FSD2019_CLASSES
from engine.data.manifest import ZipSource, load_layout
from engine.errors import DataError

TINY = dict(seed=3, clips_per_class=1, noisy_per_class=2, test_per_class=1, max_seconds=1.0)
LAYOUT = ["README.txt", "sample_submission.csv", "test", "test_ground_truth.csv", "train_curated",
          "train_curated.csv", "train_noisy", "train_noisy.csv", "train_noisy_truth.csv"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny demo dataset (short clips, few per class), written once for this module."""
    root = tmp_path_factory.mktemp("demo") / "data"
    calls = []
    summary = write_demo_dataset(root, progress=lambda done, total: calls.append((done, total)), **TINY)
    summary["progress_calls"] = calls
    return root, summary


def read_label_csv(path: Path) -> dict[str, set[str]]:
    """fname -> label set, read with the csv module as an independent reader."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {row["fname"]: set(row["labels"].split(",")) for row in rows}


def test_demo_writes_the_kaggle_layout_and_loads(tiny):
    root, summary = tiny
    assert sorted(p.name for p in root.iterdir()) == LAYOUT
    layout = load_layout(root, require_noisy=True)
    assert layout.classes == list(FSD2019_CLASSES)
    assert (len(layout.curated), len(layout.noisy), len(layout.test)) == (80, 160, 80)
    assert (summary["curated_clips"], summary["noisy_clips"], summary["test_clips"]) == (80, 160, 80)
    assert layout.test_truth.fnames == layout.test.fnames
    # Every class is the label of at least one curated and one test clip.
    assert (layout.curated.Y.sum(0) >= 1).all() and (layout.test_truth.Y.sum(0) >= 1).all()
    assert set(layout.curated.fnames).isdisjoint(layout.noisy.fnames)
    assert set(layout.curated.fnames).isdisjoint(layout.test.fnames)
    assert layout.curated.fnames == sorted(layout.curated.fnames)
    # The sample submission holds zeros for every class.
    with (root / "sample_submission.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["fname", *FSD2019_CLASSES]
    assert all(set(r[1:]) == {"0"} and len(r) == 81 for r in rows[1:])
    # 44.1 kHz, 16-bit PCM, mono WAVs of the planned lengths.
    files = list((root / "train_noisy").iterdir()) + list((root / "train_curated").iterdir())
    lengths = []
    for path in files[:40]:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (DEMO_SR, 1, "PCM_16", "WAV")
        lengths.append(info.duration)
    assert 0.5 <= min(lengths) and max(lengths) <= 1.0 and max(lengths) - min(lengths) > 0.1
    on_disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert summary["bytes"] == on_disk
    assert summary["progress_calls"][-1] == (320, 320)
    assert "80 clips" in (root / "README.txt").read_text()
    # The noisy clips' true labels: same clips in the same order, and the listed ones wrong at the planned rate.
    from engine.data.labels import parse_label_csv

    truth_fnames, truth = parse_label_csv(root / "train_noisy_truth.csv", layout.classes)
    assert truth_fnames == layout.noisy.fnames
    wrong = sum(not (a == b).all() for a, b in zip(truth > 0.5, layout.noisy.Y > 0.5))
    assert wrong / len(truth_fnames) == pytest.approx(summary["noisy_error_rate"])
    assert 0 < wrong < len(truth_fnames)


def test_demo_loads_identically_from_zips(tiny, tmp_path):
    root, _ = tiny
    zipped = tmp_path / "zipped"
    shutil.copytree(root, zipped)
    for split, top_folder in (("train_curated", True), ("train_noisy", False), ("test", True)):
        with zipfile.ZipFile(zipped / f"{split}.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in sorted((zipped / split).iterdir()):
                zf.write(path, f"{split}/{path.name}" if top_folder else path.name)
        shutil.rmtree(zipped / split)
    from_folder, from_zip = load_layout(root), load_layout(zipped)
    for name in ("curated", "noisy", "test_truth"):
        a, b = getattr(from_folder, name), getattr(from_zip, name)
        assert isinstance(b.source, ZipSource)
        assert a.fnames == b.fnames
        np.testing.assert_array_equal(a.Y, b.Y)
    assert from_zip.test.fnames == from_folder.test.fnames
    for fname in from_folder.noisy.fnames[:10]:
        assert from_zip.noisy.source.read_bytes(fname) == (root / "train_noisy" / fname).read_bytes()


def test_demo_is_deterministic_for_a_seed(tiny, tmp_path):
    root, summary = tiny
    again = write_demo_dataset(tmp_path / "again", **TINY)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        twin = tmp_path / "again" / path.relative_to(root)
        assert twin.read_bytes() == path.read_bytes(), path
    assert again["bytes"] == summary["bytes"]
    other = plan_demo_dataset(**{**TINY, "seed": 4})
    assert [c.fname for c in other] != [c.fname for c in plan_demo_dataset(**TINY)]


def test_noisy_labels_are_wrong_at_the_stated_rate(tiny):
    root, summary = tiny
    truth = {c.fname: {FSD2019_CLASSES[i] for i in c.labels} for c in plan_demo_dataset(**TINY)}
    noisy = read_label_csv(root / "train_noisy.csv")
    wrong = [f for f, labels in noisy.items() if labels != truth[f]]
    assert len(wrong) / len(noisy) == pytest.approx(summary["noisy_error_rate"])
    assert abs(summary["noisy_error_rate"] - 0.3) <= 1 / len(noisy)
    # Wrong means a swapped class or a dropped second label, never an empty set.
    for f in wrong:
        assert noisy[f] and (len(noisy[f]) == len(truth[f]) or noisy[f] < truth[f])
    # The curated labels and the test ground truth are clean.
    assert all(labels == truth[f] for f, labels in read_label_csv(root / "train_curated.csv").items())
    assert all(labels == truth[f] for f, labels in read_label_csv(root / "test_ground_truth.csv").items())


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_noisy_rate_follows_the_request(rate):
    plan = [c for c in plan_demo_dataset(seed=1, noisy_error_rate=rate) if c.split == "train_noisy"]
    achieved = np.mean([set(c.listed) != set(c.labels) for c in plan])
    assert achieved == pytest.approx(round(rate * len(plan)) / len(plan))


def test_default_plan_is_short_skewed_multi_label_and_small():
    plan = plan_demo_dataset(seed=0)
    curated = [c for c in plan if c.split == "train_curated"]
    seconds = np.array([c.seconds for c in plan])
    assert 0.5 <= seconds.min() and seconds.max() <= 15.0
    assert np.median(seconds) < seconds.mean() and seconds.max() > 8  # long tail, mostly short
    labels_per_clip = np.mean([len(c.labels) for c in curated])
    assert 1.1 <= labels_per_clip <= 1.3
    # 16-bit mono at 44.1 kHz: the audio of the default dataset stays under 150 MB.
    assert np.round(seconds * DEMO_SR).sum() * 2 < 150e6


def test_existing_dataset_needs_overwrite(tiny, tmp_path):
    root, _ = tiny
    target = tmp_path / "copy"
    shutil.copytree(root, target)
    (target / "train_curated" / "stale.wav").write_bytes(b"x")
    with pytest.raises(DataError) as err:
        write_demo_dataset(target, **TINY)
    assert str(target) in str(err.value)
    write_demo_dataset(target, overwrite=True, **{**TINY, "seed": 9})
    assert not (target / "train_curated" / "stale.wav").exists()
    assert load_layout(target).curated.fnames != load_layout(root).curated.fnames


def band_features(path: Path) -> np.ndarray:
    """Log energy in 48 log-spaced bands of the whole clip (an independent, simple feature)."""
    wave, sr = sf.read(path, dtype="float64")
    frames = np.lib.stride_tricks.sliding_window_view(wave, 1024)[::512] * np.hanning(1024)
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(0)
    freqs = np.fft.rfftfreq(1024, 1 / sr)
    edges = np.geomspace(60, 16000, 49)
    bands = np.array([power[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])])
    feats = np.log(bands + 1e-10)
    return (feats - feats.mean()) / (feats.std() + 1e-9)


def test_demo_sounds_carry_their_class(tiny):
    """A nearest-neighbour on band energies ranks the true class far above chance."""
    root, _ = tiny
    layout = load_layout(root)
    train = np.stack([band_features(root / "train_curated" / f) for f in layout.curated.fnames])
    test = np.stack([band_features(root / "test" / f) for f in layout.test.fnames])
    similarity = test @ train.T / train.shape[1]
    # Score of a class = best similarity to a curated clip carrying it.
    Y = layout.curated.Y
    scores = np.where(Y[None, :, :] > 0, similarity[:, :, None], -np.inf).max(1)
    truth = layout.test_truth.Y
    lrap = label_ranking_average_precision_score(truth, scores)
    assert lrap > 0.4  # chance is about 0.07 for 80 classes
    # Clips of a family resemble each other more than clips of different families.
    family = np.array([s.family for s in class_signatures()])
    single = truth.sum(1) == 1
    test_family = family[truth[single].argmax(1)]
    train_single = Y.sum(1) == 1
    train_family = family[Y[train_single].argmax(1)]
    sims = similarity[single][:, train_single]
    same = sims[test_family[:, None] == train_family[None, :]].mean()
    other = sims[test_family[:, None] != train_family[None, :]].mean()
    assert same > other


def test_shared_source_clips_are_cuts_of_one_recording_and_leave_the_default_plan_alone(tmp_path):
    from engine.data.demo import SOURCE_COLUMN, DemoClip, render_clip
    from engine.data.folds import read_groups

    plain = plan_demo_dataset(seed=5, clips_per_class=4, max_seconds=2.0)
    shared = plan_demo_dataset(seed=5, clips_per_class=4, max_seconds=2.0, clips_per_source=3)
    # Every clip keeps its name and length; noisy and test clips are planned exactly as before.
    assert [(c.split, c.fname, c.seconds) for c in plain] == [(c.split, c.fname, c.seconds) for c in shared]
    assert [c for c in plain if c.split != "train_curated"] == [c for c in shared if c.split != "train_curated"]
    assert all(c.source == -1 for c in plain)
    curated = [c for c in shared if c.split == "train_curated"]
    by_source: dict[int, list] = {}
    for c in curated:
        by_source.setdefault(c.source, []).append(c)
    # 4 clips per class in runs of 3: one recording of 3 and one of 1 per class.
    assert sorted(len(v) for v in by_source.values()) == [1] * 80 + [3] * 80
    for clips in by_source.values():
        assert len({c.labels for c in clips}) == 1 and clips[0].labels == clips[0].listed
        clips.sort(key=lambda c: c.source_offset)
        offsets = np.cumsum([0.0] + [c.seconds for c in clips[:-1]])
        np.testing.assert_allclose([c.source_offset for c in clips], offsets, atol=2e-3)
    # The cuts are consecutive pieces of one rendered recording.
    clips = sorted(next(v for v in by_source.values() if len(v) == 3), key=lambda c: c.source_offset)
    whole = DemoClip(split=clips[0].split, fname="whole.wav", index=0, labels=clips[0].labels,
                     listed=clips[0].labels, seconds=clips[0].source_seconds, source=clips[0].source,
                     source_offset=0.0, source_seconds=clips[0].source_seconds)
    recording = render_clip(whole, 5)
    for c in clips:
        start = int(round(c.source_offset * DEMO_SR))
        np.testing.assert_array_equal(render_clip(c, 5), recording[start:start + len(render_clip(c, 5))])

    root = tmp_path / "shared"
    summary = write_demo_dataset(root, seed=5, clips_per_class=2, noisy_per_class=1, test_per_class=1,
                                 max_seconds=1.0, clips_per_source=2)
    assert summary["curated_sources"] == 80
    layout = load_layout(root)
    groups = read_groups(layout.curated.csv_path, SOURCE_COLUMN, layout.curated.fnames)
    assert len(set(groups)) == 80
    for g in set(groups):
        rows = [i for i, x in enumerate(groups) if x == g]
        assert len(rows) == 2 and (layout.curated.Y[rows[0]] == layout.curated.Y[rows[1]]).all()
    with pytest.raises(Exception, match="clips_per_source"):
        plan_demo_dataset(clips_per_source=0)
