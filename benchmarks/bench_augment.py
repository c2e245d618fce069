"""Waveform augmentation throughput: per-clip audiomentations versus the batched device path.

Usage::

    python benchmarks/bench_augment.py [--batch 32] [--seconds 10] [--repeats 5] [--device cpu]

Times, in one run and alternating the sides in every repeat (so a change in
machine load lands on all of them alike), items per second of the ``cnn14``
preset's waveform augmentation (gain p 0.5, noise p 0.3, shift p 0.5, pitch
p 0.2, stretch p 0.2, with the preset's ranges) on a batch of 10 s clips at
32 kHz:

(a) per clip: ``WaveAugment`` (audiomentations), one clip after another, as
    one DataLoader worker runs it (``augment.backend = "cpu"``);
(b) batched: ``BatchWaveAugment`` on the whole ``[B, T]`` batch on
    ``--device`` (``augment.backend = "device"``, the default);
(c) torch-audiomentations, when it is importable, on the transforms it has
    (gain, coloured noise, shift, pitch shift: it has no time stretch) at the
    same probabilities, against (b) without the stretch;

plus each transform alone at p = 1 for (a) and (b), which says where the
time goes. Reports medians over the repeats and the median of the per-repeat
ratios, for (a) against (b) in both thread settings of ``benchmarks/fair.py``
(``one``: one thread for both; ``default``: torch's threads and
``OMP_WAIT_POLICY=PASSIVE`` as jobs run; (a) runs in one thread either way).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tomllib
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import fair  # noqa: E402

fair.job_environment()  # before torch loads OpenMP

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.features.augment import WaveAugment  # noqa: E402
from engine.features.device_augment import BatchWaveAugment, batch_generator  # noqa: E402

SR = 32000
FIELDS = ("gain_db", "gain_p", "noise_snr_db", "noise_p", "noise_colors", "shift_s", "shift_p", "pitch_semitones",
          "pitch_p", "stretch", "stretch_p")
PROBS = ("gain_p", "noise_p", "shift_p", "pitch_p", "stretch_p")


def cnn14_settings() -> dict:
    """The waveform augmentation settings of configs/cnn14.toml (defaults filled from the spec)."""
    from engine.specs import AugmentSection

    preset = tomllib.loads((ROOT / "configs" / "cnn14.toml").read_text())["augment"]
    section = AugmentSection()
    kw = {name: preset.get(name, getattr(section, name)) for name in FIELDS}
    for name in ("noise_snr_db", "noise_colors", "stretch"):
        kw[name] = tuple(kw[name])
    return kw


def clips(batch: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Tones, a chirp and noise: broadband material like a real clip."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    out = np.empty((batch, t.size), dtype=np.float32)
    for i in range(batch):
        wave = 0.02 * rng.standard_normal(t.size)
        for _ in range(3):
            wave += 0.1 * np.sin(2 * np.pi * rng.uniform(60, 12000) * t + rng.uniform(0, 2 * np.pi))
        f0, f1 = rng.uniform(100, 2000), rng.uniform(2000, 12000)
        wave += 0.2 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)))
        out[i] = wave
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def per_clip(aug: WaveAugment, waves: np.ndarray, step: int) -> float:
    """Seconds to augment every clip with audiomentations, one after another."""
    start = time.perf_counter()
    for i, wave in enumerate(waves):
        aug(wave, np.random.default_rng((0, step, i)))
    return time.perf_counter() - start


def batched(aug: BatchWaveAugment, wave: torch.Tensor, step: int, device: torch.device) -> float:
    """Seconds to augment the batch on its device (the batch is already there, as after the loader)."""
    sync(device)
    start = time.perf_counter()
    aug(wave, batch_generator(0, 0, 0, step))
    sync(device)
    return time.perf_counter() - start


def torch_audiomentations_side(kw: dict):
    """The subset torch-audiomentations has, at the same probabilities, or None when not installed."""
    try:
        import torch_audiomentations as ta
    except ImportError:
        return None
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch_audiomentations")
    transforms = [
        ta.Shift(min_shift=-kw["shift_s"], max_shift=kw["shift_s"], shift_unit="seconds", rollover=True,
                 p=kw["shift_p"], sample_rate=SR, output_type="dict"),
        ta.Gain(min_gain_in_db=-kw["gain_db"], max_gain_in_db=kw["gain_db"], p=kw["gain_p"], output_type="dict"),
        ta.AddColoredNoise(min_snr_in_db=kw["noise_snr_db"][0], max_snr_in_db=kw["noise_snr_db"][1],
                           min_f_decay=-1.0, max_f_decay=0.0, p=kw["noise_p"], sample_rate=SR, output_type="dict"),
    ]
    if kw["pitch_p"] > 0:
        transforms.insert(0, ta.PitchShift(min_transpose_semitones=-kw["pitch_semitones"],
                                           max_transpose_semitones=kw["pitch_semitones"], p=kw["pitch_p"],
                                           sample_rate=SR, output_type="dict"))
    compose = ta.Compose(transforms, output_type="dict")
    return ta.__version__, compose


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the alternating measurements and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="clips per batch (default 32, the cnn14 preset's)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length in seconds (default 10)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats (default 5)")
    parser.add_argument("--device", default="cpu", help="device of the batched path (cpu or cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-single", action="store_true", help="skip the one-transform-at-a-time timings")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kw = cnn14_settings()
    import audiomentations

    fair.header("bench_augment")
    print(f"torch {torch.__version__}, audiomentations {audiomentations.__version__}, batched path on {device}")
    print(f"batch {args.batch} x {args.seconds:g} s at {SR} Hz; cnn14 settings: "
          + ", ".join(f"{k}={kw[k]}" for k in PROBS))
    waves = clips(args.batch, args.seconds)
    wave_t = torch.from_numpy(waves).to(device)
    item, batch = WaveAugment(sample_rate=SR, **kw), BatchWaveAugment(sample_rate=SR, **kw)
    ta_side = torch_audiomentations_side(kw)
    no_stretch = BatchWaveAugment(sample_rate=SR, **{**kw, "stretch_p": 0.0})
    # Warm-up: first calls build FFT plans, filter kernels and caches.
    per_clip(item, waves[:2], 10**6)
    batched(batch, wave_t, 10**6, device)
    if ta_side is not None:
        ta_side[1](wave_t[:2, None].cpu(), sample_rate=SR)

    times: dict[str, list[float]] = {"a": [], "b": [], "c": [], "b_nostretch": []}
    one: dict[str, list[float]] = {"a": [], "b": []}
    # CPU seconds of this process per item: the cost on a free core, whatever the machine's load.
    cpu: dict[str, list[float]] = {"a": [], "b": []}
    for rep in range(args.repeats):
        with fair.threads("one"):
            one["a"].append(per_clip(item, waves, rep))
            one["b"].append(batched(batch, wave_t, rep, device))
        with fair.threads("default"):
            start = time.process_time()
            times["a"].append(per_clip(item, waves, rep))
            cpu["a"].append((time.process_time() - start) / len(waves))
            start = time.process_time()
            times["b"].append(batched(batch, wave_t, rep, device))
            cpu["b"].append((time.process_time() - start) / len(waves))
            if ta_side is not None:
                torch.manual_seed(rep)  # torch-audiomentations draws from torch's global generator
                x = wave_t[:, None]
                sync(device)
                start = time.perf_counter()
                ta_side[1](x, sample_rate=SR)
                sync(device)
                times["c"].append(time.perf_counter() - start)
                times["b_nostretch"].append(batched(no_stretch, wave_t, rep, device))
    n = args.batch
    rate = {k: [n / t for t in v] for k, v in times.items() if v}
    print(f"default: {fair.MODES['default']}")
    print(f"(a) per clip, audiomentations     : median {statistics.median(rate['a']):7.1f} items/s  "
          f"(repeats: {', '.join(f'{r:.1f}' for r in rate['a'])})")
    print(f"(b) batched on {device.type:4s}               : median {statistics.median(rate['b']):7.1f} items/s  "
          f"(repeats: {', '.join(f'{r:.1f}' for r in rate['b'])})")
    print(f"    CPU time per item: (a) {statistics.median(cpu['a']) * 1e3:.1f} ms, "
          f"(b) {statistics.median(cpu['b']) * 1e3:.1f} ms (all threads); wall time per item: "
          f"(a) {statistics.median(times['a']) / n * 1e3:.1f} ms, (b) {statistics.median(times['b']) / n * 1e3:.1f} ms")
    ratios = [a / b for a, b in zip(times["a"], times["b"])]
    print(f"    (b)/(a), median of per-repeat ratios: {statistics.median(ratios):.2f}x "
          f"(range {min(ratios):.2f}-{max(ratios):.2f})")
    fair.figure("augment.batched_vs_per_clip_default", statistics.median(ratios))
    ratios_one = [a / b for a, b in zip(one["a"], one["b"])]
    print(f"one: {fair.MODES['one']}")
    print(f"    (a) {n / statistics.median(one['a']):.1f} items/s, (b) {n / statistics.median(one['b']):.1f} items/s; "
          f"(b)/(a) {statistics.median(ratios_one):.2f}x (range {min(ratios_one):.2f}-{max(ratios_one):.2f})")
    fair.figure("augment.batched_vs_per_clip_one", statistics.median(ratios_one))
    if ta_side is not None:
        print(f"(c) torch-audiomentations {ta_side[0]} (no stretch): median {statistics.median(rate['c']):7.1f} items/s")
        print(f"    (b) without stretch            : median {statistics.median(rate['b_nostretch']):7.1f} items/s")
        r = [c / b for c, b in zip(times["c"], times["b_nostretch"])]
        print(f"    (b)/(c), median of per-repeat ratios: {statistics.median(r):.2f}x")
        fair.figure("augment.ours_vs_torch_audiomentations", statistics.median(r))
    else:
        print("(c) torch-audiomentations is not installed: skipped")

    if args.no_single:
        return
    print("each transform alone at p = 1 (ms per clip, median of repeats; (a) on one core, (b) batched):")
    off = {k: 0.0 for k in PROBS}
    for name in PROBS:
        single = {**kw, **off, name: 1.0}
        a_aug, b_aug = WaveAugment(sample_rate=SR, **single), BatchWaveAugment(sample_rate=SR, **single)
        sub = waves[: min(8, n)]
        a_ms, b_ms = [], []
        for rep in range(max(2, args.repeats // 2)):
            a_ms.append(per_clip(a_aug, sub, rep) / len(sub) * 1e3)
            b_ms.append(batched(b_aug, wave_t, rep, device) / n * 1e3)
        print(f"    {name[:-2]:8s} (a) {statistics.median(a_ms):7.1f}   (b) {statistics.median(b_ms):7.1f}")


if __name__ == "__main__":
    main()
