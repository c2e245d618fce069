"""Submission CSVs: reading the sample, validation, atomic writes and scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import engine.atomic as atomic
import engine.submission as submission
from engine.errors import DataError
from engine.metrics import lwlrap
from engine.submission import (
    read_sample_submission,
    score_submission,
    validate_submission,
    write_submission,
)
from tests.helpers.processes import heavy_modules_loaded_by

CLASSES = ["Bark", "Meow", "Purr", "Zipper_(clothing)"]


def write_sample(folder: Path, n: int = 6, classes=CLASSES) -> tuple[Path, list[str]]:
    """A sample_submission.csv with n test clips and zero placeholders."""
    fnames = [f"{i:08x}.wav" for i in range(n)]
    path = folder / "sample_submission.csv"
    lines = [",".join(["fname", *classes])] + [",".join([f] + ["0"] * len(classes)) for f in fnames]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, fnames


def probabilities(n: int, seed: int = 0) -> np.ndarray:
    """Probabilities with near-ties and values very close to 0 and 1, which loose formats would merge."""
    rng = np.random.default_rng(seed)
    probs = rng.random((n, len(CLASSES)))
    probs[0] = [0.5, 0.5 + 1e-12, 1e-15, 3e-300]
    probs[1] = [1.0 - 1e-13, 1.0, 0.0, 0.123456789012345]
    return probs


def read_back(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"fname": str}, **submission._exact_float_parsing(pd))


def frame(fnames, probs, classes=CLASSES) -> pd.DataFrame:
    df = pd.DataFrame(np.asarray(probs, dtype=float), columns=list(classes))
    df.insert(0, "fname", list(fnames))
    return df


# ------------------------------------------------------------------ reading the sample


def test_read_sample_submission_returns_fnames_then_classes(tmp_path):
    sample, fnames = write_sample(tmp_path)
    assert read_sample_submission(sample) == (fnames, CLASSES)


def test_read_sample_submission_rejects_missing_and_malformed_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_sample_submission(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("clip,Bark\na.wav,0\n", encoding="utf-8")
    with pytest.raises(DataError, match="first column must be 'fname'"):
        read_sample_submission(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("fname,Bark\n", encoding="utf-8")
    with pytest.raises(DataError, match="no test clips"):
        read_sample_submission(empty)


# ------------------------------------------------------------------ writing


def test_write_round_trips_exactly_in_sample_order_from_shuffled_predictions(tmp_path):
    sample, fnames = write_sample(tmp_path)
    probs = probabilities(len(fnames))
    shuffle = np.random.default_rng(1).permutation(len(fnames))
    out = write_submission(tmp_path / "sub" / "submission.csv", [fnames[i] for i in shuffle],
                           probs[shuffle], sample_submission=sample)
    assert out == tmp_path / "sub" / "submission.csv"
    back = read_back(out)
    assert list(back.columns) == ["fname", *CLASSES]
    assert back["fname"].tolist() == fnames
    # Bit-for-bit: no near-tie merged, nothing rounded.
    assert np.array_equal(back[CLASSES].to_numpy(), probs)
    assert sorted(p.name for p in out.parent.iterdir()) == ["submission.csv"]


def test_write_rejects_missing_and_extra_predictions_and_keeps_the_old_file(tmp_path):
    sample, fnames = write_sample(tmp_path, n=14)
    target = tmp_path / "submission.csv"
    probs = probabilities(14)
    write_submission(target, fnames, probs, sample_submission=sample)
    good = target.read_bytes()

    with pytest.raises(DataError) as missing:
        write_submission(target, fnames[:2], probs[:2], sample_submission=sample)
    message = str(missing.value)
    assert "12: " in message and repr(fnames[2]) in message and "and 2 more" in message
    assert repr(fnames[1]) not in message

    with pytest.raises(DataError, match=r"not in sample_submission.csv, 1: 'stray.wav'"):
        write_submission(target, [*fnames, "stray.wav"], np.vstack([probs, probs[:1]]),
                         sample_submission=sample)
    with pytest.raises(DataError, match="has two rows"):
        write_submission(target, [*fnames[:-1], fnames[0]], probs, sample_submission=sample)
    with pytest.raises(DataError, match=r"shape \(14, 3\)"):
        write_submission(target, fnames, probs[:, :3], sample_submission=sample)

    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample_submission.csv", "submission.csv"]


@pytest.mark.parametrize("bad_value,pattern", [
    (np.nan, r"NaN or inf score for class 'Purr' of clip '00000003.wav'"),
    (np.inf, r"NaN or inf score for class 'Purr' of clip '00000003.wav'"),
    (1.5, r"class 'Purr' of clip '00000003.wav' is outside \[0, 1\]"),
    (-0.1, r"class 'Purr' of clip '00000003.wav' is outside \[0, 1\]"),
])
def test_write_rejects_bad_values_without_touching_the_old_file(tmp_path, bad_value, pattern):
    sample, fnames = write_sample(tmp_path)
    target = tmp_path / "submission.csv"
    probs = probabilities(len(fnames))
    write_submission(target, fnames, probs, sample_submission=sample)
    good = target.read_bytes()
    probs[3, 2] = bad_value
    with pytest.raises(DataError, match=pattern) as caught:
        write_submission(target, fnames, probs, sample_submission=sample)
    assert caught.value.row == 5  # line 5: header, then clips 0..3
    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample_submission.csv", "submission.csv"]


def test_a_failed_replace_removes_the_temporary_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    sample, fnames = write_sample(tmp_path)
    target = tmp_path / "submission.csv"
    write_submission(target, fnames, probabilities(len(fnames)), sample_submission=sample)
    good = target.read_bytes()

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    # The submission goes through the run layer's one atomic writer.
    monkeypatch.setattr(atomic.os, "replace", disk_full)
    # A full disk is said as such, naming the file (engine.atomic.DiskFull), not as a bare OSError.
    with pytest.raises(atomic.DiskFull, match="no space left on device"):
        write_submission(target, fnames, probabilities(len(fnames), seed=5), sample_submission=sample)
    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample_submission.csv", "submission.csv"]


# ------------------------------------------------------------------ validation


def test_validate_accepts_a_good_frame():
    fnames = [f"{i}.wav" for i in range(3)]
    validate_submission(frame(fnames, np.full((3, 4), 0.5)), fnames, CLASSES)


def test_validate_names_missing_extra_and_reordered_clips():
    fnames = [f"{i:02d}.wav" for i in range(15)]
    probs = np.full((15, 4), 0.5)
    with pytest.raises(DataError) as caught:
        validate_submission(frame(fnames[:3], probs[:3]), fnames, CLASSES)
    message = str(caught.value)
    assert "missing, 12: '03.wav', '04.wav'" in message and "and 2 more" in message
    assert "'13.wav'" not in message  # only the first 10 are named
    with pytest.raises(DataError, match=r"not in sample_submission.csv, 1: 'x.wav'"):
        validate_submission(frame([*fnames, "x.wav"], np.full((16, 4), 0.5)), fnames, CLASSES)
    swapped = [fnames[1], fnames[0], *fnames[2:]]
    with pytest.raises(DataError, match="rows out of order: '01.wav' where sample_submission.csv has '00.wav'"):
        validate_submission(frame(swapped, probs), fnames, CLASSES)


def test_validate_names_bad_columns():
    fnames = ["a.wav", "b.wav"]
    probs = np.full((2, 4), 0.5)
    good = frame(fnames, probs)
    with pytest.raises(DataError, match="no 'fname' column"):
        validate_submission(good.rename(columns={"fname": "clip"}), fnames, CLASSES)
    with pytest.raises(DataError, match="'fname' must be the first column; it is column 2"):
        validate_submission(good[["Bark", "fname", "Meow", "Purr", "Zipper_(clothing)"]], fnames, CLASSES)
    with pytest.raises(DataError, match=r"class column\(s\) missing, 1: 'Purr'"):
        validate_submission(good.drop(columns=["Purr"]), fnames, CLASSES)
    with pytest.raises(DataError, match=r"not classes of sample_submission.csv, 1: 'Gong'"):
        validate_submission(good.assign(Gong=0.5), fnames, CLASSES)
    with pytest.raises(DataError, match="column 3 is 'Purr' where sample_submission.csv has 'Meow'"):
        validate_submission(good[["fname", "Bark", "Purr", "Meow", "Zipper_(clothing)"]], fnames, CLASSES)


def test_validate_names_the_first_bad_value():
    fnames = ["a.wav", "b.wav"]
    probs = np.full((2, 4), 0.5)
    probs[1, 3] = np.nan
    with pytest.raises(DataError, match="NaN or inf score for class 'Zipper_\\(clothing\\)' of clip 'b.wav'"):
        validate_submission(frame(fnames, probs), fnames, CLASSES, file="s.csv")
    probs[1, 3] = 1.0000001
    with pytest.raises(DataError, match=r"s.csv: row 3: .*'b.wav' is outside \[0, 1\]"):
        validate_submission(frame(fnames, probs), fnames, CLASSES, file="s.csv")
    text = frame(fnames, np.full((2, 4), 0.5)).astype({"Meow": object})
    text.loc[0, "Meow"] = "high"
    with pytest.raises(DataError, match="non-numeric score for class 'Meow' of clip 'a.wav'"):
        validate_submission(text, fnames, CLASSES)


# ------------------------------------------------------------------ scoring


def write_truth(folder: Path, rows: list[tuple[str, str]]) -> Path:
    path = folder / "test_ground_truth.csv"
    lines = ["fname,labels"] + [f'{f},"{labels}"' for f, labels in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_score_submission_equals_lwlrap_on_the_same_arrays(tmp_path):
    sample, fnames = write_sample(tmp_path, n=8)
    probs = np.random.default_rng(3).random((8, 4))
    path = write_submission(tmp_path / "submission.csv", fnames, probs, sample_submission=sample)
    labels = ["Bark", "Meow,Purr", "Zipper_(clothing)", "Bark,Zipper_(clothing)", "Purr", "Meow",
              "Bark,Meow,Purr", "Purr"]
    # the truth may list clips in another order
    truth_csv = write_truth(tmp_path, list(zip(fnames, labels))[::-1])
    truth = np.array([[c in row.split(",") for c in CLASSES] for row in labels], dtype=int)
    assert score_submission(path, truth_csv, CLASSES) == pytest.approx(lwlrap(truth, probs), abs=1e-15)

    # a truth covering part of the test set scores those clips only
    part = write_truth(tmp_path, list(zip(fnames, labels))[:5])
    assert score_submission(path, part, CLASSES) == pytest.approx(lwlrap(truth[:5], probs[:5]), abs=1e-15)


def test_score_submission_rejects_unknown_labels_and_missing_clips(tmp_path):
    sample, fnames = write_sample(tmp_path, n=4)
    path = write_submission(tmp_path / "submission.csv", fnames, np.full((4, 4), 0.5),
                            sample_submission=sample)
    truth_csv = write_truth(tmp_path, [(fnames[0], "Bark"), (fnames[1], "Woof")])
    with pytest.raises(DataError, match="unknown label 'Woof'") as caught:
        score_submission(path, truth_csv, CLASSES)
    assert caught.value.row == 3
    truth_csv = write_truth(tmp_path, [(fnames[0], "Bark"), ("other.wav", "Meow")])
    with pytest.raises(DataError, match=r"no row for clip\(s\) of test_ground_truth.csv, 1: 'other.wav'"):
        score_submission(path, truth_csv, CLASSES)
    with pytest.raises(DataError, match="submission file not found"):
        score_submission(tmp_path / "missing.csv", write_truth(tmp_path, [(fnames[0], "Bark")]), CLASSES)


def test_submission_module_does_not_pull_in_torch_sklearn_scipy_or_librosa():
    # The console imports engine.submission and must start fast; check in a fresh interpreter.
    assert heavy_modules_loaded_by("import engine.submission") == []
