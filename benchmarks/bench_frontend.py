"""Log-mel feature extraction throughput: librosa per clip versus soxr + batched LogMelFrontend.

Usage::

    python benchmarks/bench_frontend.py [--clips N] [--batch-size B] [--threads T] [--torch-defaults]

By default it measures with the settings a training job runs with: the
worker starts every job with ``OMP_WAIT_POLICY=PASSIVE`` and torch keeps its
default of one intra-op thread per core. ``--torch-defaults`` leaves
``OMP_WAIT_POLICY`` unset (what a script run outside the worker gets);
an ``OMP_WAIT_POLICY`` already in the environment is kept either way.

Writes N mono 16-bit WAVs at 44.1 kHz (2-12 s, like the FSDKaggle2019 curated
clips) to a temporary directory, then times in one run:

(a) reference: per clip ``librosa.load(path, sr=32000)`` + ``melspectrogram``
    + ``power_to_db`` (the notebook way);
(b) ours: ``engine.data.audio.decode`` (soundfile + soxr HQ) per clip, then
    ``LogMelFrontend.log_mel_clips`` on batches of B clips, on the CPU;

and reports clips/s for both, their ratio and how far the two feature sets
differ. It also times resampling 44.1 -> 32 kHz alone (soxr HQ versus
``torchaudio.functional.resample``) and the frontend alone on fixed 10 s
crops, as training feeds it. (a) and (b) alternate in every repeat and
report medians and the median per-repeat ratio; the other timings are the
best of ``--repeats`` passes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Before torch loads OpenMP: the job's setting (engine/worker.py sets it for every job).
if "--torch-defaults" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import soxr  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.features.frontend import LogMelFrontend  # noqa: E402

try:
    from engine.data.audio import decode  # noqa: E402
except ImportError:  # the audio module is optional for this benchmark
    def decode(data: bytes | Path, *, name: str, target_sr: int = 32000) -> np.ndarray:
        """soundfile + soxr fallback with the same contract as engine.data.audio.decode."""
        wave, sr = sf.read(str(data), dtype="float32", always_2d=True)
        mono = wave.mean(axis=1, dtype=np.float32)
        return soxr.resample(mono, sr, target_sr, quality="HQ").astype(np.float32)

SOURCE_SR = 44100
TARGET_SR = 32000
MEL_KW = dict(n_fft=1024, hop_length=320, win_length=1024, window="hann", center=True,
              pad_mode="reflect", power=2.0, n_mels=64, fmin=50, fmax=16000)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_clips(folder: Path, n: int, seed: int) -> list[Path]:
    """Write n synthetic clips: a few tones and a chirp over noise, random lengths 2-12 s."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        seconds = rng.uniform(2.0, 12.0)
        t = np.arange(int(seconds * SOURCE_SR)) / SOURCE_SR
        wave = 0.02 * rng.standard_normal(t.size)
        for _ in range(3):
            wave += 0.1 * np.sin(2 * np.pi * rng.uniform(60, 15000) * t + rng.uniform(0, 2 * np.pi))
        f0, f1 = rng.uniform(100, 2000), rng.uniform(2000, 14000)
        wave += 0.2 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)))
        path = folder / f"clip_{i:04d}.wav"
        sf.write(path, np.clip(wave, -1, 1).astype(np.float32), SOURCE_SR, subtype="PCM_16")
        paths.append(path)
    return paths


def best_of(repeats: int, fn):
    """Run fn repeats times; return (best seconds, last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def reference_features(paths: list[Path]) -> list[np.ndarray]:
    """librosa, one clip at a time: load + resample, mel power, dB; [frames, n_mels]."""
    import librosa

    out = []
    for path in paths:
        y, _ = librosa.load(path, sr=TARGET_SR)
        mel = librosa.feature.melspectrogram(y=y, sr=TARGET_SR, **MEL_KW)
        out.append(librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None).T)
    return out


def our_features(paths: list[Path], frontend: LogMelFrontend, batch_size: int) -> list[np.ndarray]:
    """decode (soundfile + soxr) per clip, then the frontend on batches of clips."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            waves = [decode(p, name=p.name, target_sr=TARGET_SR) for p in paths[start:start + batch_size]]
            out.extend(c.numpy() for c in frontend.log_mel_clips(waves))
    return out


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, write the clips, run every measurement and print a report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64, help="number of WAV clips to write (default 64)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per frontend batch (default 16)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--repeats", type=int, default=2, help="passes per timing; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-defaults", action="store_true",
                        help="leave OMP_WAIT_POLICY unset instead of the jobs' PASSIVE")
    args = parser.parse_args(argv)
    if args.clips < 1 or args.batch_size < 1 or args.repeats < 1:
        parser.error("--clips, --batch-size and --repeats must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    import librosa  # imported here so its import time stays out of the timings
    import torchaudio.functional as AF

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, load average {load:.1f}, "
          f"{torch.get_num_threads()} torch threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, librosa {librosa.__version__}, "
          f"soxr {soxr.__version__}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench_frontend_") as tmp:
        paths = write_clips(Path(tmp), args.clips, args.seed)
        audio_seconds = sum(sf.info(p).duration for p in paths)
        print(f"{args.clips} clips, {audio_seconds:.0f} s of 44.1 kHz 16-bit mono audio, batch size {args.batch_size}")

        frontend = LogMelFrontend().eval()
        reference_features(paths[:2])  # warm-up: librosa's first call builds caches
        our_features(paths[:2], frontend, args.batch_size)

        # The two sides alternate in every repeat, so a change in machine load hits both.
        t_refs, t_ourss = [], []
        for _ in range(args.repeats):
            t, ref = best_of(1, lambda: reference_features(paths))
            t_refs.append(t)
            t, ours = best_of(1, lambda: our_features(paths, frontend, args.batch_size))
            t_ourss.append(t)
        t_ref, t_ours = statistics.median(t_refs), statistics.median(t_ourss)
        ratios = [r / o for r, o in zip(t_refs, t_ourss)]
        print(f"(a) librosa per clip       : {args.clips / t_ref:8.1f} clips/s  (median of {args.repeats}: "
              f"{', '.join(f'{args.clips / t:.1f}' for t in t_refs)})")
        print(f"(b) soxr + LogMelFrontend  : {args.clips / t_ours:8.1f} clips/s  (median of {args.repeats}: "
              f"{', '.join(f'{args.clips / t:.1f}' for t in t_ourss)})")
        print(f"    speed-up (b)/(a)       : {statistics.median(ratios):8.2f}x (median of per-repeat ratios, "
              f"range {min(ratios):.2f}-{max(ratios):.2f})")

        # librosa.load fixes the resampled length to ceil(n * 32000 / 44100),
        # soxr rounds, so some clips differ by one final sample; the frames
        # whose window reaches the clip end then see different reflections and
        # are left out of the comparison.
        lengths = [(len(librosa.load(p, sr=TARGET_SR)[0]), len(decode(p, name=p.name))) for p in paths]
        diffs, near_peak = [], []
        for (n_ref, n_ours), r, o in zip(lengths, ref, ours):
            keep = min(len(r), len(o))
            if n_ref != n_ours:
                keep = min(keep, (min(n_ref, n_ours) - 1 - 512) // 320 + 1)
            diffs.append(np.abs(r[:keep] - o[:keep]).ravel())
            near_peak.append((r[:keep] > r[:keep].max(axis=1, keepdims=True) - 60.0).ravel())
        diff, near = np.concatenate(diffs), np.concatenate(near_peak)
        n_unequal = sum(a != b for a, b in lengths)
        print(f"    feature agreement      : max |diff| {diff.max():.2e} dB overall, "
              f"{diff[near].max():.2e} dB within 60 dB of each frame's peak, mean {diff.mean():.1e} dB "
              f"({n_unequal}/{len(paths)} clips differ by one resampled sample: their last frames are not compared)")

        # Resampling alone, per clip as a loader does it.
        raw = [sf.read(p, dtype="float32")[0] for p in paths]
        t_soxr, by_soxr = best_of(args.repeats, lambda: [soxr.resample(w, SOURCE_SR, TARGET_SR, quality="HQ")
                                                         for w in raw])
        raw_t = [torch.from_numpy(w) for w in raw]
        AF.resample(raw_t[0], SOURCE_SR, TARGET_SR)  # warm-up: kernel construction
        with torch.inference_mode():
            t_ta, by_ta = best_of(args.repeats, lambda: [AF.resample(w, SOURCE_SR, TARGET_SR) for w in raw_t])
        lengths_equal = all(len(a) == len(b) for a, b in zip(by_soxr, by_ta))
        print(f"resample 44.1->32 kHz soxr HQ     : {audio_seconds / t_soxr:8.0f} s of audio per s")
        print(f"resample 44.1->32 kHz torchaudio  : {audio_seconds / t_ta:8.0f} s of audio per s")
        print(f"    soxr speed-up          : {t_ta / t_soxr:8.2f}x (same output lengths: {lengths_equal})")

        # The frontend alone on fixed 10 s crops, as a training batch sees it.
        crops = torch.randn(args.batch_size, 10 * TARGET_SR) * 0.1
        frontend.set_stats(np.full(64, -40.0), np.full(64, 15.0))
        with torch.inference_mode():
            frontend(crops)
            t_fe, _ = best_of(max(args.repeats, 3), lambda: frontend(crops))
        print(f"frontend only, [{args.batch_size}, 320000] batch: {args.batch_size / t_fe:8.1f} clips/s "
              f"({t_fe * 1000:.0f} ms per batch)")


if __name__ == "__main__":
    main()
