"""Memory that grows with the data: what an epoch over the waveform cache leaves resident.

Usage::

    python benchmarks/bench_memory.py [--cache-mib 256 1024] [--crop 10]

A loader that reads clips from a memory-mapped int16 cache maps every page an
epoch touches into the process, where it counts in the resident set
(``RssFile``) until the kernel needs the memory back. For each cache size this
writes a cache of ten-second clips
(random int16, the cache's own format), then, in a fresh process per way of
reading, reads every clip once in a random order and takes a 10 s crop as
``CropDataset`` does, and reports the process's ``RssAnon`` and ``RssFile``
(``/proc/self/status``) and the time per item:

- ``mmap``: a slice of ``WaveformCache.waves`` (the memory map), as
  ``WaveformCache.get`` read before;
- ``mmap+madvise``: the same, then ``madvise(MADV_DONTNEED)`` over the clip's
  pages, which unmaps them from the process (they stay in the page cache);
- ``pread``: ``WaveformCache.get`` as it reads now, ``os.pread`` of the clip's
  bytes into a new buffer (page cache only, never mapped).

``--job N …`` also runs the real train job (``demo`` preset, fold 0, one
epoch, through the CLI and a worker) on the demo dataset with N curated clips
per class, samples the job process's memory every 0.1 s and reports its peak
``VmRSS``, ``RssAnon`` and ``RssFile``.

None of the three changes what the page cache holds: the kernel keeps the
file's pages cached and reclaims them under memory pressure, as it does for
the mapped ones, which are clean and need no write-back. A container limit
that counts the page cache counts them all the same.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import fair  # noqa: E402

SR = 32000
MODES = ("mmap", "mmap+madvise", "pread")


def status_mib() -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of this process in MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0]) / 1024
    return out


def write_cache(folder: Path, mib: int, seconds: float, seed: int) -> Path:
    """A waveform cache of ``mib`` MiB of random int16 clips, ``seconds`` long each, in the cache's format."""
    import numpy as np

    from engine.data.cache import CACHE_FORMAT, META_FILE, OFFSETS_FILE, WAVES_FILE

    path = folder / f"cache-{mib}"
    path.mkdir(parents=True)
    per_clip = int(seconds * SR)
    n = max(1, mib * 2**20 // (2 * per_clip))
    rng = np.random.default_rng(seed)
    with (path / WAVES_FILE).open("wb") as out:
        for _ in range(n):
            out.write(rng.integers(-3000, 3000, per_clip, dtype=np.int16).tobytes())
    np.save(path / OFFSETS_FILE, np.arange(n + 1, dtype=np.int64) * per_clip)
    fnames = [f"clip_{i:05d}.wav" for i in range(n)]
    (path / META_FILE).write_text(json.dumps({"format": CACHE_FORMAT, "split": "bench", "sample_rate": SR,
                                              "clips": n, "samples": n * per_clip, "fnames": fnames}))
    return path


def read_epoch(path: Path, mode: str, crop_seconds: float, seed: int) -> dict:
    """In this process: read every clip once in a random order, crop it, and report memory and time."""
    import numpy as np

    from engine.data.audio import fit_length
    from engine.data.cache import WAVES_FILE, WaveformCache

    meta = json.loads((path / "meta.json").read_text())
    cache = WaveformCache(path, meta["fnames"], np.load(path / "offsets.npy"), SR, reused=True)
    fd = os.open(path / WAVES_FILE, os.O_RDONLY)
    raw_map = mmap.mmap(fd, 0, prot=mmap.PROT_READ) if mode == "mmap+madvise" else None
    page = mmap.PAGESIZE

    def get(i: int) -> np.ndarray:
        start, end = int(cache.offsets[i]) * 2, int(cache.offsets[i + 1]) * 2
        if mode == "pread":
            return cache.get(i)
        if mode == "mmap+madvise":
            raw = np.frombuffer(raw_map, dtype=np.int16, count=(end - start) // 2, offset=start)
            wave = raw.astype(np.float32) / np.float32(32768.0)
            low = start // page * page
            raw_map.madvise(mmap.MADV_DONTNEED, low, end - low)
            return wave
        return cache.waves[cache.offsets[i]:cache.offsets[i + 1]].astype(np.float32) / np.float32(32768.0)

    before = status_mib()
    rng = np.random.default_rng(seed)
    crop = int(crop_seconds * SR)
    start = time.perf_counter()
    for i in rng.permutation(len(cache)):
        fit_length(get(int(i)), crop, mode="random", rng=rng)
    seconds = time.perf_counter() - start
    after = status_mib()
    size_mib = (path / WAVES_FILE).stat().st_size / 2**20
    return {"mode": mode, "clips": len(cache), "cache_mib": size_mib, "ms_per_item": seconds / len(cache) * 1e3,
            "rss_file_growth_mib": after["RssFile"] - before["RssFile"],
            "rss_anon_growth_mib": after["RssAnon"] - before["RssAnon"], **after}


def _job_processes(db: Path) -> list[int]:
    """Pids of the job processes working on ``db`` (``python -m engine.jobs --db DB …``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"engine.jobs" in cmd and str(db).encode() in cmd:
            pids.append(int(entry.name))
    return pids


def _process_mib(pid: int) -> dict[str, float]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) / 1024
    except (OSError, ValueError):
        return {}
    return out


def job_peak(folder: Path, per_class: int, env: dict) -> dict:
    """Write a demo set with ``per_class`` curated clips a class, run one train job on it, return its peak memory."""
    from engine.data.demo import write_demo_dataset

    # A folder of its own per job: its database, its data and its runs (each database owns its run folders).
    work = folder / f"job-{per_class}"
    work.mkdir()
    root, db = work / "demo", work / "experiments.db"
    write_demo_dataset(root, seed=0, clips_per_class=per_class, noisy_per_class=1, test_per_class=1)
    cli = [sys.executable, "-m", "engine.cli", "--db", str(db)]
    subprocess.run([*cli, "queue", "train", "--data", str(root), "--preset", "demo", "--set", "train.epochs=1",
                    "--set", "train.folds=[0]", "--name", f"memory-{per_class}"], env=env, check=True,
                   capture_output=True)
    worker = subprocess.Popen([sys.executable, "-m", "engine.worker", "--db", str(db), "--drain", "--poll", "0.2"],
                              env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    while worker.poll() is None:
        for pid in _job_processes(db):
            for key, value in _process_mib(pid).items():
                peak[key] = max(peak[key], value)
        time.sleep(0.1)
    if worker.returncode != 0:
        raise RuntimeError(f"the worker exited {worker.returncode}")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        status, error = conn.execute("SELECT status, error FROM jobs ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    if status != "done":  # a failed job measured nothing: say why instead of reporting its zeros
        raise RuntimeError(f"the train job on {per_class} clips a class ended {status}: {error}")
    cache = sum(f.stat().st_size for f in (root / ".fsat-cache").rglob("waves.int16")) / 2**20
    return {"clips": per_class * 80, "cache_mib": cache, **peak}


def main(argv: list[str] | None = None) -> None:
    """Write each cache, read it in a fresh process per way of reading, alternating, and report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-mib", type=int, nargs="*", default=[256, 1024], help="cache sizes to read (none: only --job)")
    ap.add_argument("--clip-seconds", type=float, default=10.0)
    ap.add_argument("--crop", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--job", type=int, nargs="*", default=[], metavar="N",
                    help="also run the train job on the demo set with N curated clips per class")
    ap.add_argument("--child", nargs=2, metavar=("CACHE", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(read_epoch(Path(args.child[0]), args.child[1], args.crop, args.seed)))
        return
    fair.header("bench_memory")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        for mib in args.cache_mib:
            path = write_cache(Path(tmp), mib, args.clip_seconds, args.seed)
            rows: dict[str, list[dict]] = {m: [] for m in MODES}
            for rep in range(args.repeats):
                for mode in (MODES if rep % 2 == 0 else MODES[::-1]):
                    out = subprocess.run([sys.executable, __file__, "--child", str(path), mode, "--crop", str(args.crop),
                                          "--seed", str(args.seed + rep)], capture_output=True, text=True, env=env,
                                         check=True)
                    rows[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"cache {rows['mmap'][0]['cache_mib']:.0f} MiB ({rows['mmap'][0]['clips']} clips of "
                  f"{args.clip_seconds:g} s), one epoch of {args.crop:g} s crops, median of {args.repeats}:")
            for mode in MODES:
                r = rows[mode]
                print(f"  {mode:13s} RssFile +{statistics.median(x['rss_file_growth_mib'] for x in r):7.1f} MiB, "
                      f"RssAnon +{statistics.median(x['rss_anon_growth_mib'] for x in r):5.1f} MiB, "
                      f"VmRSS {statistics.median(x['VmRSS'] for x in r):7.1f} MiB, "
                      f"{statistics.median(x['ms_per_item'] for x in r):.3f} ms per item")
            if mib == max(args.cache_mib):
                growth = statistics.median(x["rss_file_growth_mib"] / x["cache_mib"] for x in rows["mmap"])
                fair.figure("memory.mmap_resident_per_cache", growth)
                fair.figure("memory.pread_resident_per_cache",
                            statistics.median(x["rss_file_growth_mib"] / x["cache_mib"] for x in rows["pread"]))
                fair.figure("memory.pread_time_ratio", statistics.median(
                    p["ms_per_item"] / m["ms_per_item"] for p, m in zip(rows["pread"], rows["mmap"])))
            (path / "waves.int16").unlink()
        jobs = [job_peak(Path(tmp), n, env) for n in args.job]
        for r in jobs:
            print(f"train job, {r['clips']} curated clips (cache {r['cache_mib']:.0f} MiB): peak VmRSS "
                  f"{r['VmRSS']:.0f} MiB, RssAnon {r['RssAnon']:.0f} MiB, RssFile {r['RssFile']:.0f} MiB")
        if len(jobs) >= 2:
            first, last = jobs[0], jobs[-1]
            fair.figure("memory.job_rss_mib_small", first["VmRSS"])
            # The file-backed part is where a mapped cache showed up (1 MiB per MiB read); the peak of the
            # whole RSS moves by more than that with the phase the 0.1 s sampling catches.
            fair.figure("memory.job_file_growth_per_cache",
                        (last["RssFile"] - first["RssFile"]) / max(last["cache_mib"] - first["cache_mib"], 1e-9))


if __name__ == "__main__":
    main()
