"""The one atomic writer for every file a later step reads back, and the checked readers.

Every artifact of a run (checkpoints, ``oof.npy``, ``val_pred.npy``,
``mel_stats.npz``, JSON, CSV) is written by :func:`atomic_write`: the bytes go
to a temporary file in the same folder, are flushed and fsynced, and the file
is renamed over the target (then the folder is fsynced so the rename itself
survives a power cut). A kill at any moment leaves either the old file or the
new one, never a torn one. Torch checkpoints use the same writer with a
``torch.save`` callback, so this module stays stdlib + numpy.

It sits at the bottom of the engine (it imports only ``engine.errors``): the
run layer, ``engine.submission``, the training loop, the embedding cache and
the jobs all write through it, and none of them has to import upward to do so.

The readers raise :class:`DamagedFile` (an ``FsatError``) naming the file and
saying what to do, instead of a raw numpy or JSON error.
"""

from __future__ import annotations

import errno
import json
import os
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from engine.errors import FsatError

__all__ = ["DamagedFile", "DiskFull", "atomic_write", "load_json", "load_npy", "load_npz", "save_json", "save_npy",
           "save_npz", "save_text"]


class DamagedFile(FsatError):
    """A run file that exists but cannot be read back (truncated, empty or not of its format)."""

    def __init__(self, path: Path | str, detail: str, remedy: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: damaged or unreadable ({detail}); {remedy}")


class DiskFull(FsatError):
    """A write that failed because the filesystem holding the file is full (or over its quota)."""

    def __init__(self, path: Path | str, detail: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: no space left on device ({detail}); free some space there and "
                         "queue the job again (it resumes from its last saved checkpoint)")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not open folders; the rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` through ``write(binary file)``: temp file, flush, fsync, rename, fsync the folder.

    The temporary name is unique per process and call, so two writers never
    share one. On any error the temporary file is removed and the target is
    left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, Exception) and _disk_full(err, path.parent):
            raise DiskFull(path, _free_space(path.parent)) from err
        raise
    _fsync_dir(path.parent)
    return path


#: Below this many free bytes, a failed write is taken for a full disk whatever the writer said
#: (torch.save reports ENOSPC as "RuntimeError: [enforce fail at inline_container.cc] unexpected pos").
_NEARLY_FULL = 1 << 20


def _disk_full(err: BaseException, folder: Path) -> bool:
    """Whether a failed write failed for want of space: ENOSPC/EDQUOT in its chain, or a nearly full disk."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    if isinstance(err, (OSError, RuntimeError)):
        try:
            stat = os.statvfs(folder)
        except OSError:
            return False
        return stat.f_bavail * stat.f_frsize < _NEARLY_FULL
    return False


def _free_space(folder: Path) -> str:
    """What is free on the filesystem holding ``folder``, for the message."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return "the write failed"
    return (f"{stat.f_bavail * stat.f_frsize / 2**20:.1f} MiB free of "
            f"{stat.f_blocks * stat.f_frsize / 2**20:.1f} MiB on the filesystem holding {folder}")


def save_npy(path: Path | str, array: np.ndarray) -> Path:
    """``np.save`` through the atomic writer (the exact name is kept: no ``.npy`` is appended)."""
    return atomic_write(path, lambda fh: np.save(fh, np.asarray(array), allow_pickle=False))


def save_npz(path: Path | str, **arrays: np.ndarray) -> Path:
    """``np.savez`` through the atomic writer."""
    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


def save_json(path: Path | str, data: object) -> Path:
    """Indented, key-sorted JSON through the atomic writer (values JSON cannot hold become strings)."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    return atomic_write(path, lambda fh: fh.write(text.encode()))


def save_text(path: Path | str, text: str) -> Path:
    """A text file (CSV, logs meant to be read back) through the atomic writer, UTF-8."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


_REMEDY = "delete it and queue the job again to recompute it"


def load_npy(path: Path | str, *, remedy: str = _REMEDY) -> np.ndarray:
    """An array saved by :func:`save_npy`; :class:`DamagedFile` names the file when it cannot be read."""
    path = Path(path)
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DamagedFile(path, f"{type(err).__name__}: {err}", remedy) from None


def load_npz(path: Path | str, *keys: str, remedy: str = _REMEDY) -> dict[str, np.ndarray]:
    """The named arrays of an ``.npz`` (all of them without ``keys``), read fully; DamagedFile when torn."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            names = keys or tuple(data.files)
            return {k: np.asarray(data[k]) for k in names}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise DamagedFile(path, f"{type(err).__name__}: {err}", remedy) from None


def load_json(path: Path | str, *, remedy: str = _REMEDY) -> Any:
    """JSON saved by :func:`save_json`; DamagedFile names the file when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise DamagedFile(path, f"{type(err).__name__}: {err}", remedy) from None
