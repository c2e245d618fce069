"""Log-mel features: librosa against soxr + LogMelFrontend, per clip and per batch, at equal thread settings.

Usage::

    python benchmarks/bench_frontend.py [--clips N] [--batch-size B] [--repeats R]

Writes N mono 16-bit WAVs at 44.1 kHz (2-12 s, like the FSDKaggle2019 curated
clips) to a temporary directory, then times, alternating the two sides in every
repeat and in both thread settings of ``benchmarks/fair.py`` (``one``: one
thread for both; ``default``: the libraries' defaults, ``OMP_WAIT_POLICY=PASSIVE``
as jobs run):

- **end to end**, per clip from the file: (a) ``librosa.load(path, sr=32000)``
  + ``melspectrogram`` + ``power_to_db``; (b) ``engine.data.audio.decode``
  (soundfile + soxr HQ) + ``LogMelFrontend.log_mel_clips`` on batches of B;
- **features per clip**, from the decoded waves: (a) librosa's
  ``melspectrogram`` + ``power_to_db`` of one clip; (b) ``LogMelFrontend.log_mel``
  of one clip;
- **features per batch**: the same clips, (b) ``log_mel_clips`` on batches of B
  clips of different lengths against (a) librosa clip by clip;
- **a training batch**: ``[B, 320000]`` (B ten-second crops), (a) librosa's
  ``melspectrogram`` on the 2-D array (it frames every row), (b) the frontend's
  ``log_mel``;
- resampling 44.1 -> 32 kHz alone: soxr HQ against ``torchaudio.functional.resample``.

Each figure is the median of the per-repeat ratios (b)/(a) (speed of (b) over
speed of (a)); it also compares the two feature sets frame by frame.
"""

from __future__ import annotations

import argparse
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
import soxr  # noqa: E402
import torch  # noqa: E402

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


def timed(fn):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def librosa_mel(y: np.ndarray) -> np.ndarray:
    """librosa's log-mel of a clip ``[frames, n_mels]`` (or of rows, ``[..., frames, n_mels]``)."""
    import librosa

    mel = librosa.feature.melspectrogram(y=y, sr=TARGET_SR, **MEL_KW)
    return np.swapaxes(librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None), -1, -2)


def reference_features(paths: list[Path]) -> list[np.ndarray]:
    """librosa, one clip at a time: load + resample, mel power, dB; [frames, n_mels]."""
    import librosa

    return [librosa_mel(librosa.load(path, sr=TARGET_SR)[0]) for path in paths]


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
    parser.add_argument("--repeats", type=int, default=3, help="alternated repeats per setting; medians count")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.clips < 1 or args.batch_size < 1 or args.repeats < 1:
        parser.error("--clips, --batch-size and --repeats must be at least 1")

    import librosa  # imported here so its import time stays out of the timings
    import torchaudio.functional as AF

    fair.header("bench_frontend")
    print(f"torch {torch.__version__}, librosa {librosa.__version__}, soxr {soxr.__version__}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench_frontend_") as tmp:
        paths = write_clips(Path(tmp), args.clips, args.seed)
        audio_seconds = sum(sf.info(p).duration for p in paths)
        print(f"{args.clips} clips, {audio_seconds:.0f} s of 44.1 kHz 16-bit mono audio, batch size {args.batch_size}")

        frontend = LogMelFrontend().eval()
        waves = [decode(p, name=p.name, target_sr=TARGET_SR) for p in paths]
        crops = np.random.default_rng(args.seed).standard_normal((args.batch_size, 10 * TARGET_SR)).astype(np.float32)
        crops *= 0.1
        raw = [sf.read(p, dtype="float32")[0] for p in paths]
        raw_t = [torch.from_numpy(w) for w in raw]

        def ours_per_clip():
            return [frontend.log_mel(torch.from_numpy(w)[None])[0, 0].numpy() for w in waves]

        def ours_per_batch():
            out = []
            for start in range(0, len(waves), args.batch_size):
                out.extend(c.numpy() for c in frontend.log_mel_clips(waves[start:start + args.batch_size]))
            return out

        # (name, reference, ours, units per call, unit)
        pairs = [
            ("e2e", lambda: reference_features(paths), lambda: our_features(paths, frontend, args.batch_size),
             args.clips, "clips"),
            ("clip", lambda: [librosa_mel(w) for w in waves], ours_per_clip, args.clips, "clips"),
            ("batch", lambda: [librosa_mel(w) for w in waves], ours_per_batch, args.clips, "clips"),
            ("crops", lambda: librosa_mel(crops), lambda: frontend.log_mel(torch.from_numpy(crops)),
             args.batch_size, "10 s crops"),
            ("resample", lambda: [soxr.resample(w, SOURCE_SR, TARGET_SR, quality="HQ") for w in raw],
             lambda: [AF.resample(w, SOURCE_SR, TARGET_SR) for w in raw_t], audio_seconds, "s of audio"),
        ]
        labels = {"e2e": "end to end: file -> log-mel, (b) decode + batched frontend",
                  "clip": "features per clip: (b) LogMelFrontend.log_mel of one clip",
                  "batch": f"features per batch: (b) log_mel_clips on {args.batch_size} clips",
                  "crops": f"a [{args.batch_size}, 320000] training batch",
                  "resample": "resample 44.1 -> 32 kHz: soxr HQ (a) against torchaudio (b)"}
        with torch.inference_mode():
            for mode in fair.MODES:  # warm-up: librosa's caches, FFT plans, resampling kernels
                with fair.threads(mode):
                    for _, ref_fn, ours_fn, _, _ in pairs:
                        ref_fn(), ours_fn()
            times = {(mode, name): ([], []) for mode in fair.MODES for name, *_ in pairs}
            for rep in range(args.repeats):
                for mode in fair.MODES:
                    with fair.threads(mode):
                        for name, ref_fn, ours_fn, _, _ in pairs:
                            # Alternate which side goes first, so a change in load hits both alike.
                            first, second = (ref_fn, ours_fn) if rep % 2 == 0 else (ours_fn, ref_fn)
                            t1, _ = timed(first)
                            t2, _ = timed(second)
                            t_ref, t_ours = (t1, t2) if rep % 2 == 0 else (t2, t1)
                            times[mode, name][0].append(t_ref)
                            times[mode, name][1].append(t_ours)
                print(f"  repeat {rep} done, load average {fair.load_average():.1f}")
            for mode, text in fair.MODES.items():
                print(f"\n{mode}: {text}")
                for name, _, _, units, unit in pairs:
                    t_ref, t_ours = times[mode, name]
                    ratios = [r / o for r, o in zip(t_ref, t_ours)]
                    if name == "resample":  # soxr is the side we use: its speed over torchaudio's
                        ratios = [o / r for r, o in zip(t_ref, t_ours)]
                    ratio = statistics.median(ratios)
                    print(f"  {labels[name]:58s}: (a) {units / statistics.median(t_ref):8.1f} {unit}/s, "
                          f"(b) {units / statistics.median(t_ours):8.1f} {unit}/s, ratio {ratio:5.2f}x "
                          f"({min(ratios):.2f}-{max(ratios):.2f})")
                    fair.figure(f"frontend.{name}_{mode}", ratio)

        # librosa.load fixes the resampled length to ceil(n * 32000 / 44100),
        # soxr rounds, so some clips differ by one final sample; the frames
        # whose window reaches the clip end then see different reflections and
        # are left out of the comparison.
        ref = reference_features(paths)
        ours = our_features(paths, frontend, args.batch_size)
        lengths = [(len(librosa.load(p, sr=TARGET_SR)[0]), len(w)) for p, w in zip(paths, waves)]
        diffs, near_peak = [], []
        for (n_ref, n_ours), r, o in zip(lengths, ref, ours):
            keep = min(len(r), len(o))
            if n_ref != n_ours:
                keep = min(keep, (min(n_ref, n_ours) - 1 - 512) // 320 + 1)
            diffs.append(np.abs(r[:keep] - o[:keep]).ravel())
            near_peak.append((r[:keep] > r[:keep].max(axis=1, keepdims=True) - 60.0).ravel())
        diff, near = np.concatenate(diffs), np.concatenate(near_peak)
        n_unequal = sum(a != b for a, b in lengths)
        print(f"\nfeature agreement: max |diff| {diff.max():.2e} dB overall, "
              f"{diff[near].max():.2e} dB within 60 dB of each frame's peak, mean {diff.mean():.1e} dB "
              f"({n_unequal}/{len(paths)} clips differ by one resampled sample: their last frames are not compared)")
        fair.figure("frontend.agreement_db", float(diff.max()))


if __name__ == "__main__":
    main()
