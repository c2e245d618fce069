"""Content hashes of a run's files, so a leaderboard score can be traced back to the exact artifacts.

Every run records the sha256 of its fold checkpoints (``fold<k>/best.pt``),
``oof.npy`` and ``test.npy``, and a hash of its dataset's file list (every
file under the dataset root by relative path and size, the waveform cache and
other hidden entries left out: renaming, adding or removing a clip changes
it, re-reading the same files does not). The rows go to the store's
``run_files`` table (path ``<dataset>`` for the file list).

stdlib only: the worker records these once a job has ended; ``fsat kaggle
pack`` records them for the runs it packs when they are missing.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = ["DATASET_ENTRY", "dataset_list_hash", "record_run_lineage", "run_file_hashes", "sha256_file"]

#: The ``run_files`` path under which a run's dataset file-list hash is kept.
DATASET_ENTRY = "<dataset>"
_CHUNK = 1 << 20


def sha256_file(path: Path | str) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def run_file_hashes(run_dir: Path | str) -> list[tuple[str, str, int]]:
    """``(path relative to the run folder, sha256, bytes)`` of its fold checkpoints, oof.npy and test.npy."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    paths = sorted(run_dir.glob("fold*/best.pt")) + [run_dir / "oof.npy", run_dir / "test.npy"]
    return [(p.relative_to(run_dir).as_posix(), sha256_file(p), p.stat().st_size) for p in paths if p.is_file()]


def dataset_list_hash(root: Path | str) -> tuple[str, int]:
    """The sha256 of a dataset root's file list (``relative path<TAB>size`` lines, sorted) and its length.

    Hidden files and folders (the ``.fsat-cache`` waveform cache) are left out.
    """
    root = Path(root)
    lines = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            path = Path(folder) / name
            try:
                size = path.stat().st_size
            except OSError:
                continue
            lines.append(f"{path.relative_to(root).as_posix()}\t{size}")
    lines.sort()
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest(), len(lines)


def record_run_lineage(store: Any, run_id: str) -> list[tuple[str, str, int]]:
    """Hash a run's files and its dataset's file list and record them (``Store.record_run_files``).

    Returns the rows recorded. A run without a folder records nothing; a
    dataset root that is gone records no file-list hash.
    """
    run = store.get_run(run_id)
    if run is None or not run.get("run_dir"):
        return []
    rows = run_file_hashes(run["run_dir"])
    dataset = store.get_dataset(run["dataset_id"]) if run.get("dataset_id") is not None else None
    if dataset is not None and Path(dataset["root"]).is_dir():
        digest, n_files = dataset_list_hash(dataset["root"])
        rows.append((DATASET_ENTRY, digest, n_files))
    store.record_run_files(run_id, rows)
    return rows
