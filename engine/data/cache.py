"""Decoded, resampled waveforms cached once per dataset split.

Decoding and resampling every clip at every epoch costs more CPU than a small
model's forward pass, so each split is decoded once into a single int16 file
(all clips concatenated) plus an offsets index. Clips are read back with
``pread`` rather than through a memory map, so what an epoch reads stays in the
page cache without adding to the process's resident set (a mapped cache's
pages count in RSS until the kernel reclaims them: benchmarks/README.md,
"Memory that grows with the data").
The cache directory is ``<cache_dir>/<split>-<sr>-<key>/`` where the key hashes
the file list, the files' sizes and versions (modification time or zip CRC)
and the sample rate: a changed file gives a new key, so a stale cache is never
read. A build writes into a temporary directory that is renamed into place
only when complete, so a killed build never leaves a cache that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from engine.data.audio import decode
from engine.errors import DataError
from engine.data.manifest import ClipTable

CACHE_FORMAT = 1
WAVES_FILE = "waves.int16"
OFFSETS_FILE = "offsets.npy"
META_FILE = "meta.json"
_TMP_PREFIX = ".building-"
# int16 full scale; decoding 16-bit PCM at its own rate round-trips exactly.
_SCALE = 32768.0


def _to_int16(wave: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(wave * _SCALE), -32768, 32767).astype(np.int16)


def cache_key(table: ClipTable, sample_rate: int) -> str:
    """Return the directory name of a split's cache: ``<split>-<sr>-<hash>``."""
    digest = hashlib.sha1()
    digest.update(f"{CACHE_FORMAT}\0{sample_rate}\0{len(table.fnames)}\0".encode())
    digest.update("\0".join(table.fnames).encode())
    digest.update(table.source.fingerprint(table.fnames).encode())
    return f"{table.split}-{sample_rate}-{digest.hexdigest()[:16]}"


def host_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def decode_workers(setting: int | str | None = "auto") -> int:
    """Decoding threads for a cache build: ``"auto"`` (or None) is one per host core.

    libsndfile and soxr release the GIL, so threads decode in parallel; the
    measured rate scales with cores (benchmarks/README.md, "Waveform cache").
    """
    if setting is None or setting == "auto":
        return host_cores()
    workers = int(setting)
    if workers < 1:
        raise ValueError(f"decode workers must be at least 1, got {setting!r}")
    return workers


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_builds(cache_dir: Path) -> None:
    """Delete temporary directories left by builds on this host whose process died."""
    host = socket.gethostname()
    for entry in cache_dir.glob(f"{_TMP_PREFIX}*"):
        parts = entry.name.rsplit("@", 3)
        if len(parts) != 4:
            continue
        _, owner_host, pid, _ = parts
        if owner_host == host and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


class WaveformCache:
    """Cached waveforms of one split at one sample rate, indexed like its ClipTable.

    Build (or reuse) with :meth:`build`; read with :meth:`get`. ``reused`` says
    whether the last build found a valid cache instead of decoding.
    """

    def __init__(self, path: Path, fnames: list[str], offsets: np.ndarray, sample_rate: int,
                 *, reused: bool) -> None:
        self.path = Path(path)
        self.fnames = list(fnames)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sample_rate = int(sample_rate)
        self.reused = reused
        self._waves: np.ndarray | None = None
        self._file = None

    def __repr__(self) -> str:
        return f"WaveformCache({str(self.path)!r}, clips={len(self)}, sr={self.sample_rate})"

    def __getstate__(self) -> dict:
        # Pickling a memmap copies its whole contents; workers reopen the file instead.
        state = self.__dict__.copy()
        state["_waves"] = None
        state["_file"] = None
        return state

    def __len__(self) -> int:
        return len(self.fnames)

    @property
    def waves(self) -> np.ndarray:
        """All clips concatenated, int16, memory-mapped read-only."""
        if self._waves is None:
            total = int(self.offsets[-1])
            self._waves = (np.memmap(self.path / WAVES_FILE, dtype=np.int16, mode="r", shape=(total,))
                           if total else np.zeros(0, dtype=np.int16))
        return self._waves

    @property
    def lengths(self) -> np.ndarray:
        """The length of every clip in samples."""
        return np.diff(self.offsets)

    def length(self, i: int) -> int:
        """Return the length of clip ``i`` in samples."""
        return int(self.offsets[i + 1] - self.offsets[i])

    def get(self, i: int) -> np.ndarray:
        """Return clip ``i`` as a new float32 array in [-1, 1]."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"clip index {i} out of range for {len(self)} clips")
        i %= len(self)
        start, end = int(self.offsets[i]) * 2, int(self.offsets[i + 1]) * 2
        if self._file is None:
            self._file = (self.path / WAVES_FILE).open("rb", buffering=0)
        # pread: no shared file offset (safe across threads and forked loader workers), and the
        # pages stay in the page cache instead of the process's resident set.
        data = os.pread(self._file.fileno(), end - start, start)
        if len(data) != end - start:
            raise OSError(f"{self.path / WAVES_FILE}: clip {i} is cut short ({len(data)} of {end - start} bytes); "
                          "delete the cache folder to rebuild it")
        return np.frombuffer(data, dtype=np.int16).astype(np.float32) / np.float32(_SCALE)

    @classmethod
    def _open(cls, path: Path, fnames: list[str], sample_rate: int) -> WaveformCache | None:
        """Open a finished cache directory, or return None if it is absent or inconsistent."""
        try:
            meta = json.loads((path / META_FILE).read_text())
            offsets = np.load(path / OFFSETS_FILE)
            size = (path / WAVES_FILE).stat().st_size
        except (OSError, ValueError):
            return None
        if (meta.get("format") != CACHE_FORMAT or meta.get("sample_rate") != sample_rate
                or meta.get("fnames") != fnames or len(offsets) != len(fnames) + 1
                or size != int(offsets[-1]) * 2):
            return None
        return cls(path, fnames, offsets, sample_rate, reused=True)

    @classmethod
    def build(cls, table: ClipTable, *, sample_rate: int, cache_dir: Path,
              progress: Callable[[int, int], None] | None = None,
              workers: int | str | None = "auto") -> WaveformCache:
        """Return the cache of ``table`` at ``sample_rate``, decoding the clips only if needed.

        ``progress(done, total)`` is called as clips are decoded. ``workers``
        decoding threads are used (libsndfile and soxr release the GIL);
        ``"auto"`` is one per host core (:func:`decode_workers`). A
        corrupt clip fails the build with the DataError from :func:`decode`,
        naming the file; nothing is left behind.
        """
        cache_dir = Path(cache_dir)
        fnames = list(table.fnames)
        final = cache_dir / cache_key(table, sample_rate)
        found = cls._open(final, fnames, sample_rate)
        if found is not None:
            if progress is not None:
                progress(len(fnames), len(fnames))
            return found

        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_dead_builds(cache_dir)
        if final.exists():
            # Inconsistent leftovers under the final name (e.g. a disk filled up
            # mid-copy by hand): they can only be rebuilt.
            shutil.rmtree(final, ignore_errors=True)
        tmp = cache_dir / (f"{_TMP_PREFIX}{final.name}@{socket.gethostname()}@{os.getpid()}"
                           f"@{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        workers = decode_workers(workers)
        try:
            offsets = cls._decode_into(table, tmp / WAVES_FILE, sample_rate, progress, workers)
            np.save(tmp / OFFSETS_FILE, offsets)
            meta = {"format": CACHE_FORMAT, "split": table.split, "sample_rate": sample_rate,
                    "clips": len(fnames), "samples": int(offsets[-1]), "fnames": fnames}
            # meta.json is written last: its presence marks a complete build.
            (tmp / META_FILE).write_text(json.dumps(meta))
            try:
                os.rename(tmp, final)
            except OSError:
                # Another process finished the same cache first; use theirs.
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        opened = cls._open(final, fnames, sample_rate)
        if opened is None:
            raise OSError(f"the waveform cache at {final} could not be read back after building")
        opened.reused = False
        return opened

    @staticmethod
    def _decode_into(table: ClipTable, target: Path, sample_rate: int,
                     progress: Callable[[int, int], None] | None, workers: int) -> np.ndarray:
        """Decode every clip in order, appending int16 samples to ``target``; return offsets."""
        source, fnames = table.source, table.fnames
        total = len(fnames)
        offsets = np.zeros(total + 1, dtype=np.int64)

        listed_at = {f: table.where(i) for i, f in enumerate(fnames)}

        def load(fname: str) -> np.ndarray:
            try:
                return _to_int16(decode(source.read_bytes(fname), name=source.describe(fname),
                                        target_sr=sample_rate))
            except DataError as err:
                # Say where the clip is listed too, so the user can fix or drop the row.
                raise DataError(f"{err} (listed in {listed_at[fname]})") from err

        with target.open("wb") as out:
            def write(i: int, wave: np.ndarray) -> None:
                out.write(wave.tobytes())
                offsets[i + 1] = offsets[i] + len(wave)
                if progress is not None:
                    progress(i + 1, total)

            if workers <= 1:
                for i, fname in enumerate(fnames):
                    write(i, load(fname))
                return offsets
            # A bounded window of futures keeps memory flat while writing in order.
            window = max(4, 4 * workers)
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
                pending: deque[Future[np.ndarray]] = deque()
                try:
                    for i, fname in enumerate(fnames):
                        pending.append(pool.submit(load, fname))
                        if len(pending) >= window:
                            write(i - len(pending) + 1, pending.popleft().result())
                    while pending:
                        write(total - len(pending), pending.popleft().result())
                finally:
                    for future in pending:
                        future.cancel()
        return offsets


def cache_dir_for(root: str | Path, cache_dir: str = "") -> Path:
    """The waveform cache folder: the spec's, or ``<dataset root>/.fsat-cache``."""
    return Path(cache_dir) if cache_dir else Path(root) / ".fsat-cache"


def build_cache(table: ClipTable, *, sample_rate: int, cache_dir: Path,
                progress: Callable[[float, str], None] | None = None, start: float = 0.0, span: float = 0.05,
                workers: int | str = "auto") -> WaveformCache:
    """Decode and resample a split once (or reuse the cache) in ``workers`` threads.

    ``progress(fraction, message)`` is a job's or a fold's progress: the
    decoded share of the split fills ``start .. start + span`` of its bar.
    """
    def decoded(done: int, total: int) -> None:
        progress(start + span * done / max(total, 1), f"decoding {table.split} {done}/{total}")

    return WaveformCache.build(table, sample_rate=sample_rate, cache_dir=cache_dir,
                               progress=decoded if progress is not None else None, workers=workers)
