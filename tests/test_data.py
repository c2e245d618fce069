"""The data layer on real files written here: label CSVs, folder and zip layouts, decoding,
crops, folds and the waveform cache."""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import engine.data.cache as cache_module
from engine.data.audio import decode, fit_length
from engine.data.cache import WaveformCache
from engine.data.folds import make_folds
from engine.data.labels import FSD2019_CLASSES, parse_label_csv, read_classes
from engine.data.manifest import FolderSource, ZipSource, load_layout
from engine.errors import DataError
from tests.helpers.datasets import CURATED_ROWS, SR, TEST_FNAMES, sine, write_layout, write_text, write_wav

CLASSES = list(FSD2019_CLASSES)


# --------------------------------------------------------------------------- helpers

def multi_hot(rows: list[list[str]]) -> np.ndarray:
    """The expected label matrix, built directly from class names."""
    Y = np.zeros((len(rows), len(CLASSES)), dtype=np.float32)
    for i, labels in enumerate(rows):
        for label in labels:
            Y[i, CLASSES.index(label)] = 1
    return Y


def zip_folder(folder: Path, archive: Path, *, top_folder: bool) -> None:
    """Zip the files of ``folder`` at the archive root or under one top folder."""
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        if top_folder:
            zf.writestr(f"{folder.name}/", "")
        for path in sorted(folder.iterdir()):
            zf.write(path, f"{folder.name}/{path.name}" if top_folder else path.name)


# --------------------------------------------------------------------------- labels

def test_class_list_is_the_sorted_competition_list():
    assert len(FSD2019_CLASSES) == 80
    # The competition's sample_submission.csv columns are in sorted order.
    assert list(FSD2019_CLASSES) == sorted(FSD2019_CLASSES)
    assert FSD2019_CLASSES[0] == "Accelerating_and_revving_and_vroom"
    assert FSD2019_CLASSES[41] == "Hi-hat"
    assert FSD2019_CLASSES[-1] == "Zipper_(clothing)"


def test_read_classes_returns_columns_after_fname(tmp_path):
    root = write_layout(tmp_path / "d")
    assert read_classes(root / "sample_submission.csv") == CLASSES


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("name,Bark,Meow\n", "first column must be 'fname'"),
    ("fname,Bark,Bark\n", "'Bark' appears twice"),
    ("fname,Bark,,Meow\n", "empty class name"),
    ("fname\n", "no class columns"),
])
def test_read_classes_errors_name_the_file(tmp_path, text, fragment):
    path = write_text(tmp_path / "sample_submission.csv", text)
    with pytest.raises(DataError) as err:
        read_classes(path)
    assert str(path) in str(err.value)
    assert fragment in str(err.value)


def test_read_classes_missing_file(tmp_path):
    with pytest.raises(DataError) as err:
        read_classes(tmp_path / "nope.csv")
    assert "nope.csv" in str(err.value)


def test_parse_label_csv_multi_hot_in_class_order(tmp_path):
    path = write_text(tmp_path / "labels.csv",
                      'fname,labels\na.wav,Bark\nb.wav,"Meow,Bark"\n\nc.wav," Yell , Accordion "\n')
    fnames, Y = parse_label_csv(path, CLASSES)
    assert fnames == ["a.wav", "b.wav", "c.wav"]
    assert Y.dtype == np.float32
    np.testing.assert_array_equal(Y, multi_hot([["Bark"], ["Meow", "Bark"], ["Yell", "Accordion"]]))


def test_parse_label_csv_ignores_extra_named_columns(tmp_path):
    path = write_text(tmp_path / "truth.csv", 'labels,fname,usage\n"Bark,Meow",a.wav,Public\n')
    fnames, Y = parse_label_csv(path, CLASSES)
    assert fnames == ["a.wav"]
    np.testing.assert_array_equal(Y, multi_hot([["Bark", "Meow"]]))


@pytest.mark.parametrize("text, row, fragments", [
    ('fname,labels\na.wav,Bark\nb.wav,"Bark,Barking"\n', 3,
     ["unknown label 'Barking'", "sample_submission.csv", "Did you mean 'Bark'"]),
    ("fname,labels\na.wav,Bark\nb.wav,\n", 3, ["no labels"]),
    ("fname,labels\na.wav,Bark\nb.wav,Meow\na.wav,Yell\n", 4, ["'a.wav' already listed on line 2"]),
    ("fname,labels\na.wav,Bark,Meow\n", 2, ["3 fields", "quoted"]),
    ("fname,labels\na.wav\n", 2, ["1 field"]),
    ("fname,tags\na.wav,Bark\n", 1, ["missing column(s) labels"]),
    ("", 1, ["empty"]),
    ("fname,labels\n", 1, ["no clips"]),
    ('fname,labels\na.wav,Bark\nb.wav,"Bark"x\n', 3, ["malformed CSV"]),
    ("fname,labels\na.wav,Bark,\n", 2, ["3 fields"]),
    ('fname,labels\na.wav,"Bark,"\n', 2, ["empty label"]),
])
def test_parse_label_csv_errors_name_file_and_row(tmp_path, text, row, fragments):
    path = write_text(tmp_path / "train_curated.csv", text)
    with pytest.raises(DataError) as err:
        parse_label_csv(path, CLASSES)
    message = str(err.value)
    assert str(path) in message
    assert f"row {row}" in message
    assert err.value.row == row
    for fragment in fragments:
        assert fragment in message


def test_parse_label_csv_binary_file_is_a_data_error(tmp_path):
    path = tmp_path / "train_curated.csv"
    path.write_bytes(b"fname,labels\na.wav,Bark\n\xff\xfe\x00garbage\n")
    with pytest.raises(DataError) as err:
        parse_label_csv(path, CLASSES)
    assert str(path) in str(err.value)
    assert err.value.row == 3


def test_parse_label_csv_row_of_a_multiline_record(tmp_path):
    # A quoted field spanning two lines: the next record starts on line 4.
    path = write_text(tmp_path / "labels.csv", 'fname,labels\na.wav,"Bark,\nMeow"\nb.wav,Nope\n')
    with pytest.raises(DataError) as err:
        parse_label_csv(path, CLASSES)
    assert err.value.row == 4


# --------------------------------------------------------------------------- layout

def test_load_layout_folder(tmp_path):
    root = write_layout(tmp_path / "d")
    layout = load_layout(root)
    assert layout.classes == CLASSES
    assert layout.curated.fnames == [f for f, _ in CURATED_ROWS]
    np.testing.assert_array_equal(layout.curated.Y, multi_hot([l.split(",") for _, l in CURATED_ROWS]))
    assert layout.curated.csv_path == root / "train_curated.csv"
    assert isinstance(layout.curated.source, FolderSource)
    assert layout.test.fnames == TEST_FNAMES and layout.test.Y is None
    assert layout.noisy is None and layout.test_truth is None
    assert layout.sample_submission == root / "sample_submission.csv"
    assert layout.curated.source.read_bytes("c1.wav") == (root / "train_curated" / "c1.wav").read_bytes()
    assert layout.curated.source.describe("c1.wav") == str(root / "train_curated" / "c1.wav")


@pytest.mark.parametrize("top_folder", [False, True])
def test_load_layout_zip_matches_folder(tmp_path, top_folder):
    folder_root = write_layout(tmp_path / "folder")
    zip_root = tmp_path / "zipped"
    shutil.copytree(folder_root, zip_root)
    for split in ("train_curated", "test"):
        zip_folder(zip_root / split, zip_root / f"{split}.zip", top_folder=top_folder)
        shutil.rmtree(zip_root / split)

    from_folder, from_zip = load_layout(folder_root), load_layout(zip_root)
    assert isinstance(from_zip.curated.source, ZipSource)
    assert from_zip.curated.fnames == from_folder.curated.fnames
    np.testing.assert_array_equal(from_zip.curated.Y, from_folder.curated.Y)
    assert from_zip.test.fnames == from_folder.test.fnames
    assert from_zip.curated.source.names() == {f for f, _ in CURATED_ROWS}
    for fname in from_folder.curated.fnames:
        assert from_zip.curated.source.read_bytes(fname) == from_folder.curated.source.read_bytes(fname)
    where = from_zip.curated.source.describe("c0.wav")
    assert where.startswith(str(zip_root / "train_curated.zip") + ":") and where.endswith("c0.wav")
    # Nothing was extracted.
    assert sorted(p.name for p in zip_root.iterdir()) == [
        "sample_submission.csv", "test.zip", "train_curated.csv", "train_curated.zip"]


def test_zip_source_survives_pickling(tmp_path):
    root = write_layout(tmp_path / "d")
    zip_folder(root / "test", root / "test.zip", top_folder=True)
    source = ZipSource(root / "test.zip")
    expected = source.read_bytes("t0.wav")
    clone = pickle.loads(pickle.dumps(source))
    assert clone.read_bytes("t0.wav") == expected == (root / "test" / "t0.wav").read_bytes()


def test_folder_wins_over_zip(tmp_path):
    root = write_layout(tmp_path / "d")
    with zipfile.ZipFile(root / "train_curated.zip", "w") as zf:
        zf.writestr("other.wav", b"")
    layout = load_layout(root)
    assert isinstance(layout.curated.source, FolderSource)


def test_missing_wav_names_csv_row_and_file(tmp_path):
    root = write_layout(tmp_path / "d")
    (root / "train_curated" / "c2.wav").unlink()
    with pytest.raises(DataError) as err:
        load_layout(root)
    message = str(err.value)
    assert str(root / "train_curated.csv") in message
    assert "row 4" in message  # c2.wav is the third clip: line 4 of the file
    assert "c2.wav" in message


def test_missing_test_wav_names_sample_submission_row(tmp_path):
    root = write_layout(tmp_path / "d")
    (root / "test" / "t1.wav").unlink()
    with pytest.raises(DataError) as err:
        load_layout(root)
    assert str(root / "sample_submission.csv") in str(err.value)
    assert "row 3" in str(err.value) and "t1.wav" in str(err.value)


def test_missing_audio_folder_says_what_to_put_where(tmp_path):
    root = write_layout(tmp_path / "d")
    shutil.rmtree(root / "train_curated")
    with pytest.raises(DataError) as err:
        load_layout(root)
    assert "train_curated/" in str(err.value) and "train_curated.zip" in str(err.value)


@pytest.mark.parametrize("name", ["sample_submission.csv", "train_curated.csv"])
def test_missing_csv_says_what_to_put_where(tmp_path, name):
    root = write_layout(tmp_path / "d")
    (root / name).unlink()
    with pytest.raises(DataError) as err:
        load_layout(root)
    assert name in str(err.value) and "dataset root" in str(err.value)


def test_missing_root(tmp_path):
    with pytest.raises(DataError) as err:
        load_layout(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)


def test_noisy_and_test_truth_are_loaded_when_present(tmp_path):
    root = write_layout(tmp_path / "d")
    with pytest.raises(DataError) as err:
        load_layout(root, require_noisy=True)
    assert "train_noisy.csv" in str(err.value)

    write_text(root / "train_noisy.csv", 'fname,labels\nn0.wav,"Bark,Meow"\n')
    write_wav(root / "train_noisy" / "n0.wav", sine(500, 0.2))
    write_text(root / "test_ground_truth.csv", "fname,labels\nt1.wav,Gong\nt0.wav,Purr\n")
    layout = load_layout(root, require_noisy=True)
    assert layout.noisy.fnames == ["n0.wav"]
    np.testing.assert_array_equal(layout.noisy.Y, multi_hot([["Bark", "Meow"]]))
    assert layout.test_truth.fnames == ["t1.wav", "t0.wav"]
    np.testing.assert_array_equal(layout.test_truth.Y, multi_hot([["Gong"], ["Purr"]]))

    write_text(root / "test_ground_truth.csv", "fname,labels\nt1.wav,Gong\nc0.wav,Purr\n")
    with pytest.raises(DataError) as err:
        load_layout(root)
    assert "test_ground_truth.csv" in str(err.value) and "row 3" in str(err.value)


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    root = write_layout(tmp_path / "d")
    source = FolderSource(root / "train_curated")
    names = ["c0.wav", "c1.wav"]
    before = source.fingerprint(names)
    assert source.fingerprint(names) == before
    assert source.fingerprint(["c0.wav"]) != before
    write_wav(root / "train_curated" / "c1.wav", sine(900, 0.4))
    assert source.fingerprint(names) != before

    zip_folder(root / "train_curated", root / "a.zip", top_folder=False)
    zipped = ZipSource(root / "a.zip")
    assert zipped.fingerprint(names) == ZipSource(root / "a.zip").fingerprint(names)
    assert zipped.fingerprint(names) != zipped.fingerprint(["c0.wav", "c2.wav"])


# --------------------------------------------------------------------------- audio

def fft_peak_hz(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spectrum)])


def test_decode_resamples_and_keeps_frequency(tmp_path):
    path = write_wav(tmp_path / "a.wav", sine(1234.0, 1.0))
    wave = decode(path.read_bytes(), name="a.wav", target_sr=32000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 32000) <= 1
    assert abs(fft_peak_hz(wave, 32000) - 1234.0) < 2.0
    # Amplitude is kept too (0.5 sine -> RMS 0.354), away from the edges.
    assert abs(np.sqrt(np.mean(wave[2000:-2000] ** 2)) - 0.5 / np.sqrt(2)) < 0.01
    from_path = decode(path, name="a.wav", target_sr=32000)
    np.testing.assert_array_equal(from_path, wave)


def test_decode_downmixes_by_mean(tmp_path):
    left, right = sine(440, 0.1), sine(660, 0.1, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="PCM_16")
    stored, _ = sf.read(path, dtype="float32")
    wave = decode(path.read_bytes(), name="stereo.wav", target_sr=SR)
    np.testing.assert_allclose(wave, (stored[:, 0] + stored[:, 1]) / 2, atol=1e-7)


def test_decode_corrupt_and_empty_audio_name_the_file(tmp_path):
    with pytest.raises(DataError) as err:
        decode(b"RIFF\x00\x00garbage that is not audio", name="/d/train_curated/bad.wav")
    assert "/d/train_curated/bad.wav" in str(err.value)
    with pytest.raises(DataError) as err:
        decode(b"", name="empty.wav")
    assert "empty.wav" in str(err.value)
    silent = tmp_path / "zero.wav"
    sf.write(silent, np.zeros(0, dtype=np.float32), SR, subtype="PCM_16")
    with pytest.raises(DataError) as err:
        decode(silent.read_bytes(), name="zero.wav")
    assert "zero.wav" in str(err.value) and "no samples" in str(err.value)


def test_fit_length_center_crop_and_left_pad():
    wave = np.arange(1, 11, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(wave, 4), wave[3:7])
    np.testing.assert_array_equal(fit_length(wave, 10), wave)
    padded = fit_length(wave, 14)
    np.testing.assert_array_equal(padded, np.r_[wave, np.zeros(4, dtype=np.float32)])
    assert fit_length(wave, 4).dtype == np.float32


def test_fit_length_random_crop_is_a_window_and_varies():
    wave = np.arange(1, 101, dtype=np.float32)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(30):
        out = fit_length(wave, 10, mode="random", rng=rng)
        start = int(out[0]) - 1
        np.testing.assert_array_equal(out, wave[start:start + 10])
        starts.add(start)
    assert len(starts) > 10
    again = [fit_length(wave, 10, mode="random", rng=np.random.default_rng(5)) for _ in range(2)]
    np.testing.assert_array_equal(again[0], again[1])


def test_fit_length_random_zero_pad_places_the_clip():
    wave = np.arange(1, 6, dtype=np.float32)
    rng = np.random.default_rng(1)
    offsets = set()
    for _ in range(30):
        out = fit_length(wave, 12, mode="random", rng=rng)
        offset = int(np.flatnonzero(out)[0])
        np.testing.assert_array_equal(out[offset:offset + 5], wave)
        assert out.sum() == wave.sum()
        offsets.add(offset)
    assert len(offsets) > 3


def test_fit_length_loop_pad():
    wave = np.arange(1, 5, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(wave, 10, loop_prob=1.0), np.tile(wave, 3)[:10])
    out = fit_length(wave, 10, mode="random", rng=np.random.default_rng(2), loop_prob=1.0)
    start = int(out[0]) - 1
    np.testing.assert_array_equal(out, np.tile(wave, 4)[start:start + 10])
    rng = np.random.default_rng(3)
    looped = [bool((fit_length(wave, 10, rng=rng, loop_prob=0.5)[4:] != 0).all()) for _ in range(200)]
    assert 60 < sum(looped) < 140


def test_fit_length_never_returns_silence_for_a_sound():
    wave = np.zeros(1000, dtype=np.float32)
    wave[20:30] = 1.0  # sound only at the start; the centre crop would be silent
    assert fit_length(wave, 100).any()
    rng = np.random.default_rng(4)
    for _ in range(50):
        assert fit_length(wave, 100, mode="random", rng=rng).any()
    np.testing.assert_array_equal(fit_length(np.zeros(50, np.float32), 10), np.zeros(10))


def test_fit_length_rejects_empty_and_bad_arguments():
    with pytest.raises(ValueError):
        fit_length(np.zeros(0, np.float32), 10)
    with pytest.raises(ValueError):
        fit_length(np.ones(5, np.float32), 10, mode="middle")
    with pytest.raises(ValueError):
        fit_length(np.ones(5, np.float32), 0)


# --------------------------------------------------------------------------- folds

def random_labels(n: int, c: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, c)) < 0.03).astype(np.float32)
    Y[np.arange(n), rng.integers(0, c, n)] = 1
    return Y


def test_folds_are_deterministic_and_stratified():
    Y = random_labels(400, 20, seed=0)
    folds = make_folds(Y)
    np.testing.assert_array_equal(folds, make_folds(Y.copy()))
    assert folds.dtype.kind == "i" and set(folds) == {0, 1, 2, 3, 4}
    assert np.bincount(folds).min() >= 70
    assert not np.array_equal(folds, make_folds(Y, seed=7))
    # Every class's positives are spread evenly over the five folds.
    per_fold = np.stack([Y[folds == k].sum(0) for k in range(5)])
    assert (per_fold.max(0) - per_fold.min(0) <= 2).all()
    # Far more even than an unstratified random assignment of the same sizes.
    shuffled = np.random.default_rng(1).permutation(folds)
    random_spread = np.stack([Y[shuffled == k].sum(0) for k in range(5)])
    assert (per_fold.max(0) - per_fold.min(0)).sum() < (random_spread.max(0) - random_spread.min(0)).sum()


def test_folds_need_enough_clips():
    with pytest.raises(DataError):
        make_folds(random_labels(3, 5, seed=0))
    folds = make_folds(random_labels(10, 5, seed=0), n_splits=2)
    assert set(folds) == {0, 1}


def test_folds_are_stored_once_per_dataset_and_other_splits_are_refused(tiny_demo, db_path):
    from engine.errors import ConfigError
    from engine.data.prepare import prepare_dataset
    from engine.store import Store

    store = Store(db_path)
    first = prepare_dataset(store, tiny_demo)
    expected = make_folds(first.layout.curated.Y, n_splits=5, seed=42)
    np.testing.assert_array_equal(first.folds, expected)
    again = prepare_dataset(Store(db_path), tiny_demo)
    assert again.dataset_id == first.dataset_id
    np.testing.assert_array_equal(again.folds, first.folds)
    with pytest.raises(ConfigError, match="5-fold with seed 42, not 4-fold") as err:
        prepare_dataset(store, tiny_demo, n_folds=4)
    assert err.value.field == "train.n_folds"
    with pytest.raises(ConfigError, match="not 5-fold with seed 7") as err:
        prepare_dataset(store, tiny_demo, fold_seed=7)
    assert err.value.field == "train.fold_seed"
    with pytest.raises(ConfigError) as err:
        prepare_dataset(store, tiny_demo, fold_seed=7, folds_field="n_folds")
    assert err.value.field == "fold_seed"


# --------------------------------------------------------------------------- cache

class CountingDecode:
    """Wraps the cache's decode to count calls (the real decode still runs)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return decode(*args, **kwargs)


def test_cache_build_matches_decode_and_is_reused(tmp_path, monkeypatch):
    root = write_layout(tmp_path / "d")
    table = load_layout(root).curated
    counter = CountingDecode()
    monkeypatch.setattr(cache_module, "decode", counter)
    seen = []
    cache = WaveformCache.build(table, sample_rate=32000, cache_dir=tmp_path / "cache",
                                progress=lambda done, total: seen.append((done, total)))
    assert counter.calls == len(table) and not cache.reused
    assert seen[-1] == (4, 4)
    assert len(cache) == 4 and cache.fnames == table.fnames
    for i, fname in enumerate(table.fnames):
        expected = decode((root / "train_curated" / fname).read_bytes(), name=fname, target_sr=32000)
        got = cache.get(i)
        assert got.dtype == np.float32 and cache.length(i) == len(expected)
        np.testing.assert_allclose(got, expected, atol=1.0 / 32768 + 1e-7)
        assert np.abs(got).max() <= 1.0

    waves_file = cache.path / cache_module.WAVES_FILE
    mtime = waves_file.stat().st_mtime_ns
    again = WaveformCache.build(table, sample_rate=32000, cache_dir=tmp_path / "cache")
    assert counter.calls == len(table)  # no clip decoded a second time
    assert again.reused and again.path == cache.path
    assert waves_file.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again.get(2), cache.get(2))
    # Another sample rate is another cache.
    other = WaveformCache.build(table, sample_rate=16000, cache_dir=tmp_path / "cache", workers=1)
    assert other.path != cache.path and abs(other.length(0) - cache.length(0) / 2) <= 1


def test_cache_reads_clips_without_mapping_them(tmp_path):
    """get() reads each clip's bytes (pread), equal to the file's, in threads, pickled copies and
    after a fork; the cache file is never mapped by get(); a cut-short file is a clear error."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    root = write_layout(tmp_path / "d")
    cache = WaveformCache.build(load_layout(root).curated, sample_rate=32000, cache_dir=tmp_path / "cache")
    waves_file = str(cache.path / cache_module.WAVES_FILE)
    samples = np.fromfile(waves_file, dtype=np.int16)
    mapped = [samples[cache.offsets[i]:cache.offsets[i + 1]].astype(np.float32) / 32768 for i in range(len(cache))]
    fresh = WaveformCache._open(cache.path, cache.fnames, 32000)
    for i in range(len(cache)):
        np.testing.assert_array_equal(fresh.get(i), mapped[i])
        np.testing.assert_array_equal(fresh.get(i - len(cache)), mapped[i])
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert waves_file not in maps.read_text()  # fresh has only read with get(): nothing mapped
    with ThreadPoolExecutor(4) as pool:
        for i, got in enumerate(pool.map(fresh.get, [i % len(cache) for i in range(40)])):
            np.testing.assert_array_equal(got, mapped[i % len(cache)])
    copy = pickle.loads(pickle.dumps(fresh))
    np.testing.assert_array_equal(copy.get(3), mapped[3])
    if hasattr(os, "fork"):
        pid = os.fork()
        if pid == 0:  # the child reads through the inherited file, as a forked loader worker does
            os._exit(0 if np.array_equal(fresh.get(2), mapped[2]) else 1)
        assert os.waitpid(pid, 0)[1] == 0

    with open(waves_file, "r+b") as fh:
        fh.truncate(int(cache.offsets[-2]) * 2 + 10)
    with pytest.raises(OSError, match=r"clip 3 is cut short .*delete the cache folder"):
        WaveformCache(cache.path, cache.fnames, cache.offsets, 32000, reused=True).get(3)


def test_cache_is_rebuilt_when_a_wav_changes(tmp_path):
    root = write_layout(tmp_path / "d")
    table = load_layout(root).curated
    first = WaveformCache.build(table, sample_rate=32000, cache_dir=tmp_path / "cache")
    write_wav(root / "train_curated" / "c1.wav", sine(2000, 0.5))
    second = WaveformCache.build(load_layout(root).curated, sample_rate=32000, cache_dir=tmp_path / "cache")
    assert not second.reused and second.path != first.path
    assert second.length(1) == 16000
    assert abs(fft_peak_hz(second.get(1), 32000) - 2000) < 4
    np.testing.assert_array_equal(second.get(0), first.get(0))


def test_cache_corrupt_wav_fails_and_leaves_nothing(tmp_path):
    root = write_layout(tmp_path / "d")
    (root / "train_curated" / "c3.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    table = load_layout(root).curated
    with pytest.raises(DataError) as err:
        WaveformCache.build(table, sample_rate=32000, cache_dir=tmp_path / "cache")
    assert str(root / "train_curated" / "c3.wav") in str(err.value)
    assert os.listdir(tmp_path / "cache") == []


def test_cache_ignores_a_half_written_build(tmp_path):
    root = write_layout(tmp_path / "d")
    table = load_layout(root).curated
    good = WaveformCache.build(table, sample_rate=32000, cache_dir=tmp_path / "cache")
    expected = good.get(3)
    # Simulate a build killed after the samples but before the index was complete.
    (good.path / cache_module.META_FILE).unlink()
    (good.path / cache_module.WAVES_FILE).write_bytes(b"\x00" * 10)
    rebuilt = WaveformCache.build(table, sample_rate=32000, cache_dir=tmp_path / "cache")
    assert not rebuilt.reused
    np.testing.assert_array_equal(rebuilt.get(3), expected)


def test_cache_from_zip_and_pickled(tmp_path):
    root = write_layout(tmp_path / "d")
    zip_folder(root / "test", root / "test.zip", top_folder=True)
    shutil.rmtree(root / "test")
    table = load_layout(root).test
    cache = WaveformCache.build(table, sample_rate=32000, cache_dir=tmp_path / "cache", workers=2)
    expected = decode(table.source.read_bytes("t1.wav"), name="t1.wav", target_sr=32000)
    np.testing.assert_allclose(cache.get(1), expected, atol=1.0 / 32768 + 1e-7)
    blob = pickle.dumps(cache)
    assert len(blob) < 2000  # the samples stay in the file, not in the pickle
    np.testing.assert_array_equal(pickle.loads(blob).get(1), cache.get(1))
