"""The dataset layout on disk: label CSVs plus audio in folders or zip archives.

A dataset root holds the FSDKaggle2019 files::

    sample_submission.csv   fname + one column per class (defines the class order)
    train_curated.csv       fname,labels
    train_noisy.csv         fname,labels            (optional)
    test_ground_truth.csv   fname,labels            (optional, e.g. in the demo dataset)
    train_curated/ | train_curated.zip
    train_noisy/   | train_noisy.zip                (optional)
    test/          | test.zip

Each audio split is a folder or a zip archive read in place, never extracted
(the noisy archive of the real data is tens of gigabytes). When both exist the
folder wins, since it is what a user who unpacked the archive will have edited.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.data.labels import parse_label_rows, read_sample_submission
from engine.errors import DataError

SAMPLE_SUBMISSION = "sample_submission.csv"
CURATED_CSV = "train_curated.csv"
NOISY_CSV = "train_noisy.csv"
TEST_TRUTH_CSV = "test_ground_truth.csv"


class AudioSource(ABC):
    """A set of audio files addressed by fname: a folder or a zip archive."""

    location: Path

    @abstractmethod
    def names(self) -> set[str]:
        """Return the fnames this source holds."""

    @abstractmethod
    def read_bytes(self, fname: str) -> bytes:
        """Return the encoded bytes of one file; a missing fname is a DataError."""

    @abstractmethod
    def describe(self, fname: str) -> str:
        """Return where a file lives, for messages: ``/d/test/a.wav`` or ``/d/test.zip:a.wav``."""

    @abstractmethod
    def fingerprint(self, fnames: Sequence[str]) -> str:
        """Return a cheap hash of the listed files' names, sizes and versions, for cache keys."""


class FolderSource(AudioSource):
    """Audio files in a plain folder, e.g. ``train_curated/``."""

    def __init__(self, folder: Path | str) -> None:
        self.location = Path(folder)

    def __repr__(self) -> str:
        return f"FolderSource({str(self.location)!r})"

    def names(self) -> set[str]:
        """Return the names of the regular files directly inside the folder."""
        with os.scandir(self.location) as entries:
            return {e.name for e in entries if e.is_file() and not e.name.startswith(".")}

    def path(self, fname: str) -> Path:
        """Return the path of one file in the folder."""
        return self.location / fname

    def read_bytes(self, fname: str) -> bytes:
        """Return the bytes of ``fname``; a missing or unreadable file is a DataError."""
        try:
            return self.path(fname).read_bytes()
        except FileNotFoundError:
            raise DataError("audio file not found", file=self.describe(fname)) from None
        except OSError as exc:
            raise DataError(f"cannot read the audio file ({exc.strerror or exc})",
                            file=self.describe(fname)) from None

    def describe(self, fname: str) -> str:
        """Return the file's path as text."""
        return str(self.path(fname))

    def fingerprint(self, fnames: Sequence[str]) -> str:
        """Hash names, sizes and modification times (ns): rewriting a file changes it."""
        digest = hashlib.sha1(b"folder\0")
        for fname in fnames:
            try:
                st = os.stat(self.path(fname))
            except FileNotFoundError:
                raise DataError("audio file not found", file=self.describe(fname)) from None
            digest.update(f"{fname}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]


class ZipSource(AudioSource):
    """Audio files inside a zip archive, read in place.

    Members may sit at the archive root or under a single top folder
    (``train_curated/abc.wav``); either way they are addressed by the path
    below that folder. The archive handle is opened lazily per process, so a
    source can be pickled into data-loader workers and forked safely.
    """

    def __init__(self, archive: Path | str) -> None:
        self.location = Path(archive)
        self._members: dict[str, zipfile.ZipInfo] | None = None
        self._handle: zipfile.ZipFile | None = None
        self._handle_pid: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ZipSource({str(self.location)!r})"

    def __getstate__(self) -> dict:
        # The open archive and the lock cannot cross a process boundary; the
        # member index is cheap to rebuild but worth keeping.
        return {"location": self.location, "_members": self._members}

    def __setstate__(self, state: dict) -> None:
        self.location = state["location"]
        self._members = state["_members"]
        self._handle = None
        self._handle_pid = None
        self._lock = threading.Lock()

    def _zip(self) -> zipfile.ZipFile:
        # A forked child shares the parent's file offset; it needs its own handle.
        with self._lock:
            if self._handle is None or self._handle_pid != os.getpid():
                try:
                    self._handle = zipfile.ZipFile(self.location)
                except FileNotFoundError:
                    raise DataError("zip archive not found", file=self.location) from None
                except (zipfile.BadZipFile, OSError) as exc:
                    raise DataError(f"not a readable zip archive ({exc}); download it again",
                                    file=self.location) from None
                self._handle_pid = os.getpid()
            return self._handle

    def _index(self) -> dict[str, zipfile.ZipInfo]:
        if self._members is None:
            infos = [i for i in self._zip().infolist()
                     if not i.is_dir() and not i.filename.startswith("__MACOSX/")
                     and not i.filename.rsplit("/", 1)[-1].startswith(".")]
            tops = {i.filename.split("/", 1)[0] for i in infos if "/" in i.filename}
            nested_all = all("/" in i.filename for i in infos)
            strip = len(tops) == 1 and nested_all and bool(infos)
            members: dict[str, zipfile.ZipInfo] = {}
            for info in infos:
                name = info.filename.split("/", 1)[1] if strip else info.filename
                members[name] = info
            self._members = members
        return self._members

    def names(self) -> set[str]:
        """Return the fnames in the archive (below its top folder, if it has one)."""
        return set(self._index())

    def member(self, fname: str) -> zipfile.ZipInfo:
        """Return the archive entry of ``fname``; a missing fname is a DataError."""
        info = self._index().get(fname)
        if info is None:
            raise DataError("audio file not found in the archive", file=self.describe(fname))
        return info

    def read_bytes(self, fname: str) -> bytes:
        """Return the decompressed bytes of ``fname``; a damaged entry is a DataError."""
        info = self.member(fname)
        try:
            return self._zip().read(info)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
            raise DataError(f"cannot read the entry from the archive ({exc})",
                            file=self.describe(fname)) from None

    def describe(self, fname: str) -> str:
        """Return ``<archive>:<member path>``."""
        info = (self._members or {}).get(fname)
        return f"{self.location}:{info.filename if info is not None else fname}"

    def fingerprint(self, fnames: Sequence[str]) -> str:
        """Hash names, sizes and CRC-32s from the archive directory (no decompression)."""
        digest = hashlib.sha1(b"zip\0")
        for fname in fnames:
            info = self.member(fname)
            digest.update(f"{fname}\0{info.file_size}\0{info.CRC}\n".encode())
        return digest.hexdigest()[:16]


def open_source(root: Path, split: str) -> AudioSource | None:
    """Return the folder ``root/split`` or else the archive ``root/split.zip``, or None."""
    folder = root / split
    if folder.is_dir():
        return FolderSource(folder)
    archive = root / f"{split}.zip"
    if archive.is_file():
        return ZipSource(archive)
    return None


@dataclass
class ClipTable:
    """The clips of one split: fnames in CSV order, labels, and where the audio lives.

    ``Y`` is a float32 multi-hot matrix [n, C] in class order, or None for the
    unlabeled test set.
    """

    split: str
    fnames: list[str]
    Y: np.ndarray | None
    source: AudioSource
    csv_path: Path | None
    #: The CSV line of each clip (header = line 1), for error messages; None without a CSV.
    lines: list[int] | None = None

    def where(self, i: int) -> str:
        """``train_curated.csv row 12``: where clip ``i`` is listed, for error messages."""
        if self.csv_path is None or self.lines is None:
            return f"{self.split} clip {i}"
        return f"{self.csv_path} row {self.lines[i]}"

    def __len__(self) -> int:
        return len(self.fnames)


@dataclass
class DatasetLayout:
    """A dataset root in the FSDKaggle2019 layout, checked and indexed."""

    root: Path
    classes: list[str]
    curated: ClipTable
    noisy: ClipTable | None
    test: ClipTable
    test_truth: ClipTable | None
    sample_submission: Path


def _require_source(root: Path, split: str, what: str) -> AudioSource:
    source = open_source(root, split)
    if source is None:
        raise DataError(f"no audio for the {what}: put the clips in the folder {split}/ or the "
                        f"archive {split}.zip inside the dataset root", file=root)
    return source


def _check_present(table: ClipTable, lines: Iterable[int], csv_path: Path) -> None:
    """Raise a DataError naming the CSV row of the first listed clip with no audio file."""
    available = table.source.names()
    missing = [(fname, line) for fname, line in zip(table.fnames, lines) if fname not in available]
    if not missing:
        return
    fname, line = missing[0]
    more = f" ({len(missing) - 1} more listed clips are missing too)" if len(missing) > 1 else ""
    raise DataError(f"audio file {fname!r} is listed here but {table.source.describe(fname)} "
                    f"does not exist{more}; add the file or remove its row",
                    file=csv_path, row=line, value=fname)


def _labelled_table(root: Path, split: str, csv_name: str, classes: list[str], what: str,
                    source: AudioSource | None = None) -> tuple[ClipTable, list[int]]:
    """Parse a label CSV, pair it with its audio source and check every clip is present."""
    csv_path = root / csv_name
    source = source or _require_source(root, split, what)
    fnames, Y, lines = parse_label_rows(csv_path, classes)
    table = ClipTable(split=split, fnames=fnames, Y=Y, source=source, csv_path=csv_path, lines=lines)
    _check_present(table, lines, csv_path)
    return table, lines


def load_layout(root: Path | str, *, require_noisy: bool = False) -> DatasetLayout:
    """Load and check a dataset root in the FSDKaggle2019 layout.

    The class order is the column order of ``sample_submission.csv`` and the
    test clips are its fname column. The noisy set is loaded when both
    ``train_noisy.csv`` and its audio exist (required when ``require_noisy``).
    Every listed clip must exist in its audio source: a missing one is a
    DataError naming the CSV, the row and the file; a missing CSV, folder or
    archive is a DataError that says what to put where.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError("dataset folder not found; pass the folder that holds "
                        f"{SAMPLE_SUBMISSION}, {CURATED_CSV} and the audio folders or archives",
                        file=root)
    for name, what in ((SAMPLE_SUBMISSION, "the class columns and the test clip list"),
                       (CURATED_CSV, "the curated training labels")):
        if not (root / name).is_file():
            raise DataError(f"{name} not found: put the file with {what} in the dataset root "
                            "(or write the demo dataset there)", file=root / name)
    sample_submission = root / SAMPLE_SUBMISSION
    classes, test_fnames, test_lines = read_sample_submission(sample_submission)
    if not test_fnames:
        raise DataError("the CSV lists no test clips", file=sample_submission, row=1)

    curated, _ = _labelled_table(root, "train_curated", CURATED_CSV, classes,
                                 "curated training set")

    noisy = None
    noisy_csv = root / NOISY_CSV
    noisy_source = open_source(root, "train_noisy")
    if noisy_csv.is_file() and noisy_source is not None:
        noisy, _ = _labelled_table(root, "train_noisy", NOISY_CSV, classes,
                                   "noisy training set", noisy_source)
    elif require_noisy:
        if not noisy_csv.is_file():
            raise DataError(f"{NOISY_CSV} not found: put the noisy training labels in the "
                            "dataset root", file=noisy_csv)
        _require_source(root, "train_noisy", "noisy training set")

    test_source = _require_source(root, "test", "test set")
    test = ClipTable(split="test", fnames=test_fnames, Y=None, source=test_source,
                     csv_path=sample_submission, lines=test_lines)
    _check_present(test, test_lines, sample_submission)

    test_truth = None
    truth_csv = root / TEST_TRUTH_CSV
    if truth_csv.is_file():
        test_truth, truth_lines = _labelled_table(root, "test", TEST_TRUTH_CSV, classes,
                                                  "test set", test_source)
        listed = set(test_fnames)
        for fname, line in zip(test_truth.fnames, truth_lines):
            if fname not in listed:
                raise DataError(f"clip {fname!r} is not a test clip of {SAMPLE_SUBMISSION}",
                                file=truth_csv, row=line, value=fname)

    return DatasetLayout(root=root, classes=classes, curated=curated, noisy=noisy, test=test,
                         test_truth=test_truth, sample_submission=sample_submission)
