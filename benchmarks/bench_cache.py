"""Waveform cache build rate: decode threads against one thread, and what the real sets take.

Usage::

    python benchmarks/bench_cache.py [--clips 48] [--repeats 3] [--workers 1 2]

Writes N mono 16-bit WAVs at 44.1 kHz (2-20 s, like FSDKaggle2019 clips) to a
temporary folder, then builds the int16 32 kHz waveform cache
(``WaveformCache.build``: soundfile decode, downmix, soxr HQ resampling,
written in order) with each ``--workers`` count, alternating the counts in
every repeat, a fresh cache folder each time. Reports seconds of audio
decoded per second (median of repeats), the speed-up of each count over the
first, the cache size per hour of audio, and the projected build time and
disk of the curated (10.5 h) and noisy (80 h) sets at the measured rates.

After each one-thread build it measures, in one torch thread and in CPU
seconds of the process (the work, which the load does not change), the
training job's log-mel statistics pass over the new cache
(``--demo``: the curated clips of the demo dataset, 0.5-15 s, instead of the
synthetic ones), alternating the way the job runs it (``cache_mel_stats``:
clips batched by length) with the former pass (``compute_mel_stats`` over the
clips in cache order), and reports both against the build's CPU time, and the pass of a
later run on the same cache, which reads the per-clip sums the first one kept.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import fair  # noqa: E402

fair.job_environment()  # before torch loads OpenMP

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from engine.data.cache import WaveformCache, host_cores  # noqa: E402
from engine.data.manifest import ClipTable, FolderSource  # noqa: E402
from engine.features.frontend import LogMelFrontend, compute_mel_stats  # noqa: E402
from engine.features.melstats import cache_mel_stats  # noqa: E402

SOURCE_SR, TARGET_SR = 44100, 32000
# FSDKaggle2019: 4,970 curated clips (about 10.5 h) and 19,815 noisy clips (about 80 h).
SETS = {"curated": 10.5, "noisy": 80.0, "curated + noisy": 90.5}


def write_clips(folder: Path, n: int, seed: int) -> list[str]:
    """Write n clips of tones over noise, 2-20 s long; return their file names."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        t = np.arange(int(rng.uniform(2.0, 20.0) * SOURCE_SR)) / SOURCE_SR
        wave = 0.05 * rng.standard_normal(t.size)
        for _ in range(3):
            wave += 0.1 * np.sin(2 * np.pi * rng.uniform(60, 15000) * t)
        name = f"clip_{i:04d}.wav"
        sf.write(folder / name, np.clip(wave, -1, 1).astype(np.float32), SOURCE_SR, subtype="PCM_16")
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, build the caches alternately and print rates and projections."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="decode thread counts to compare (default: 1 and the host's cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demo", action="store_true",
                        help="the demo dataset's curated clips (fsat demo-data, seed 0) instead of synthetic ones")
    args = parser.parse_args(argv)
    counts = args.workers or sorted({1, host_cores()})
    fair.header("bench_cache")
    print(f"{host_cores()} cores usable; decode threads compared: {counts}")
    frontend = LogMelFrontend()
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        if args.demo:
            from engine.data.demo import write_demo_dataset
            from engine.data.manifest import load_layout

            write_demo_dataset(Path(tmp) / "demo", seed=args.seed, noisy_per_class=1, test_per_class=1)
            table = load_layout(Path(tmp) / "demo").curated
            src, names = Path(tmp) / "demo" / "train_curated", table.fnames
            args.clips = len(names)
        else:
            src = Path(tmp) / "train_noisy"
            src.mkdir()
            names = write_clips(src, args.clips, args.seed)
            table = ClipTable(split="train_noisy", fnames=names, Y=None, source=FolderSource(src), csv_path=None)
        seconds = sum(sf.info(src / n).duration for n in names)
        print(f"{args.clips} {'demo ' if args.demo else ''}clips, {seconds:.0f} s of 44.1 kHz 16-bit audio "
              f"({seconds / args.clips:.1f} s each)")
        WaveformCache.build(table, sample_rate=TARGET_SR, cache_dir=Path(tmp) / "warm", workers=1)
        rates: dict[int, list[float]] = {c: [] for c in counts}
        busy: dict[int, list[float]] = {c: [] for c in counts}
        cpu_cost: list[float] = []
        stats_new: list[float] = []
        stats_old: list[float] = []
        stats_reused: list[float] = []
        builds: list[float] = []
        size = 0
        for rep in range(args.repeats):
            for c in counts:
                out = Path(tmp) / f"cache-{rep}-{c}"
                start, cpu = time.perf_counter(), time.process_time()
                cache = WaveformCache.build(table, sample_rate=TARGET_SR, cache_dir=out, workers=c)
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                rates[c].append(seconds / wall)
                # CPU seconds per wall second: above 1 means the threads really decoded at once.
                busy[c].append(cpu / wall)
                cpu_cost.append(cpu / seconds)
                size = sum(f.stat().st_size for f in cache.path.iterdir())
                if c == 1:
                    # The statistics pass against the one-thread build, in one torch thread, in CPU seconds
                    # of this process: the work itself, which the machine's load does not change (wall times
                    # on a loaded machine are mostly the wait for a core).
                    builds.append(cpu)
                    passes = [("new", lambda: cache_mel_stats(frontend, cache)),
                              ("old", lambda: compute_mel_stats(frontend, (cache.get(i) for i in range(len(cache)))))]
                    with fair.threads("one"):
                        for name, fn in (passes if rep % 2 == 0 else passes[::-1]):
                            start = time.process_time()
                            fn()
                            (stats_new if name == "new" else stats_old).append(time.process_time() - start)
                        # A later run on the same cache and settings reads the sums kept beside the cache.
                        start = time.process_time()
                        cache_mel_stats(frontend, cache)
                        stats_reused.append(time.process_time() - start)
                shutil.rmtree(out)
        base = counts[0]
        for c in counts:
            ratio = statistics.median(r / b for r, b in zip(rates[c], rates[base]))
            print(f"  {c} decode thread(s): median {statistics.median(rates[c]):6.0f} s of audio per s "
                  f"(repeats: {', '.join(f'{r:.0f}' for r in rates[c])}); {ratio:.2f}x of {base}; "
                  f"{statistics.median(busy[c]):.2f} CPU-s per s")
        if not args.demo:  # the build's figures are those of the synthetic clips
            fair.figure("cache.threads_ratio", statistics.median(r / b for r, b in zip(rates[counts[-1]], rates[base])))
        per_core = 1.0 / statistics.median(cpu_cost)
        print(f"decode cost: {statistics.median(cpu_cost) * 1e3:.2f} ms of CPU per s of audio, i.e. "
              f"{per_core:.0f} s of audio per s per free core")
        if not args.demo:
            fair.figure("cache.cpu_ms_per_audio_s", statistics.median(cpu_cost) * 1e3)
        n = args.clips
        print("log-mel statistics pass (one torch thread), CPU time per clip: "
              f"{statistics.median(stats_new) / n * 1e3:.2f} ms batched by length (as the job runs it), "
              f"{statistics.median(stats_old) / n * 1e3:.2f} ms in cache order (before); "
              f"the cache build (one decode thread) {statistics.median(builds) / n * 1e3:.2f} ms; a later run on the same cache "
              f"{statistics.median(stats_reused) / n * 1e3:.3f} ms (the sums kept beside the cache)")
        which = "melstats_demo" if args.demo else "melstats"
        fair.figure(f"{which}.speedup", statistics.median(o / w for o, w in zip(stats_old, stats_new)))
        fair.figure(f"{which}.per_build", statistics.median(w / b for w, b in zip(stats_new, builds)))
        fair.figure(f"{which}.before_per_build", statistics.median(o / b for o, b in zip(stats_old, builds)))
        fair.figure(f"{which}.ms_per_clip", statistics.median(stats_new) / n * 1e3)
        fair.figure(f"{which}.reused_per_build", statistics.median(r / b for r, b in zip(stats_reused, builds)))
        gb_per_hour = size / seconds * 3600 / 1e9
        print(f"cache size: {gb_per_hour:.3f} GB per hour of audio (int16 at {TARGET_SR} Hz)")
        best = max(counts, key=lambda c: statistics.median(rates[c]))
        rate = statistics.median(rates[best])
        # The source WAVs are 44.1 kHz 16-bit mono: they are read once, the cache written once.
        source_gb_per_hour = SOURCE_SR * 2 * 3600 / 1e9
        for name, hours in SETS.items():
            print(f"  {name:16s} {hours:5.1f} h: reads {hours * source_gb_per_hour:5.1f} GB of WAV, writes "
                  f"{hours * gb_per_hour:5.1f} GB; decode {hours * 3600 / rate / 60:5.1f} min here at {rate:.0f} s/s "
                  f"({best} threads), {hours * 3600 / per_core / 60:5.1f} min of CPU in all "
                  f"({hours * 3600 / per_core / 60 / 8:4.1f} min on 8 free cores)")


if __name__ == "__main__":
    main()
