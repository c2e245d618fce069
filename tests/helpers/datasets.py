"""Audio and dataset folders written by the test: WAVs, the Kaggle layout, label matrices, clips in memory."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np

# -- a small Kaggle-layout dataset written file by file (the data and pipeline tests) --------------

#: Sample rate of the WAVs the data tests write.
SR = 44100

#: The curated clips of :func:`write_layout` and their labels, as ``train_curated.csv`` holds them.
CURATED_ROWS = [
    ("c0.wav", "Bark"),
    ("c1.wav", "Bark,Walk_and_footsteps"),
    ("c2.wav", "Zipper_(clothing)"),
    ("c3.wav", "Accordion,Hi-hat,Yell"),
]
#: The test clips of :func:`write_layout`.
TEST_FNAMES = ["t0.wav", "t1.wav"]


def sine(freq: float, seconds: float, sr: int = SR, amp: float = 0.5):
    """A float32 sine tone."""
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, wave, sr: int = SR) -> Path:
    """Write a 16-bit PCM WAV."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sr, subtype="PCM_16")
    return path


def write_text(path: Path, text: str) -> Path:
    """Write a UTF-8 text file; returns its path."""
    path.write_text(text, encoding="utf-8")
    return path


def write_layout(root: Path) -> Path:
    """A small dataset root in the Kaggle layout with real WAVs in folders."""
    from engine.data.labels import FSD2019_CLASSES

    root.mkdir(parents=True, exist_ok=True)
    lines = ["fname,labels"] + [f'{f},"{labels}"' if "," in labels else f"{f},{labels}"
                                for f, labels in CURATED_ROWS]
    write_text(root / "train_curated.csv", "\n".join(lines) + "\n")
    zeros = ",".join("0" for _ in FSD2019_CLASSES)
    write_text(root / "sample_submission.csv",
               "\n".join(["fname," + ",".join(FSD2019_CLASSES)] + [f"{f},{zeros}" for f in TEST_FNAMES]) + "\n")
    for i, (fname, _) in enumerate(CURATED_ROWS):
        write_wav(root / "train_curated" / fname, sine(300 + 100 * i, 0.2 + 0.05 * i))
    for i, fname in enumerate(TEST_FNAMES):
        write_wav(root / "test" / fname, sine(1000 + 50 * i, 0.3))
    return root


def copy_dataset(src: Path, dst: Path) -> Path:
    """A private copy of a dataset root (without its waveform cache) that a test may damage."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".fsat-cache"))
    return dst


def file_digests(*folders: Path) -> dict[str, str]:
    """sha1 of every file under the folders, by path: what a job that fails must leave as it was."""
    return {str(p): hashlib.sha1(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


class ArrayCache:
    """Clips held in memory, read like a ``WaveformCache``."""

    def __init__(self, clips: list) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def get(self, i: int):
        """A copy of clip ``i`` (the caller may change it)."""
        return self.clips[i].copy()

    def length(self, i: int) -> int:
        """Samples in clip ``i``."""
        return len(self.clips[i])


def multi_hot_truth(n_clips: int, n_classes: int, *, seed: int = 0, second: float = 0.3):
    """A curated label matrix: clip i has class ``i % n_classes`` (every class has a positive when
    ``n_clips >= n_classes``) and, with probability ``second``, one more random class."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((n_clips, n_classes), dtype=np.float32)
    truth[np.arange(n_clips), np.arange(n_clips) % n_classes] = 1
    more = np.flatnonzero(rng.random(n_clips) < second)
    truth[more, rng.integers(0, n_classes, len(more))] = 1
    return truth


# -- the ensemble screen's dataset: CSVs with the 80 class names and empty clip files ------------------

#: Curated clips of the ensemble screen's dataset.
ENSEMBLE_CLIPS = 40


def _fsd_classes() -> list[str]:
    from engine.data.labels import FSD2019_CLASSES

    return list(FSD2019_CLASSES)


ENSEMBLE_CLASSES = _fsd_classes()


def write_dataset(root: Path, truth: np.ndarray) -> None:
    """train_curated.csv (labels quoted, comma-separated), sample_submission.csv and the clip files.

    The clip files are empty: the ensemble job checks that every listed clip
    exists but reads no audio.
    """
    root.mkdir(parents=True)
    (root / "train_curated").mkdir()
    (root / "test").mkdir()
    for i in range(len(truth)):
        (root / "train_curated" / f"clip{i:03d}.wav").touch()
    for i in range(3):
        (root / "test" / f"test{i}.wav").touch()
    with open(root / "train_curated.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["fname", "labels"])
        for i, row in enumerate(truth):
            writer.writerow([f"clip{i:03d}.wav", ",".join(ENSEMBLE_CLASSES[j] for j in np.flatnonzero(row))])
    with open(root / "sample_submission.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["fname", *ENSEMBLE_CLASSES])
        for i in range(3):
            writer.writerow([f"test{i}.wav", *["0"] * len(ENSEMBLE_CLASSES)])
