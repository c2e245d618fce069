"""A full training loop, end to end, against the loop a user would write first.

Usage::

    python benchmarks/bench_pipeline.py [--clips 32] [--batch 16] [--repeats 3] [--model small]

Writes N mono 16-bit WAVs at 44.1 kHz (2-20 s) with random multi-hot labels
(80 classes) to a temporary folder, then trains the same model, one epoch
over the N clips per measurement, alternating the sides in every repeat:

(a) reference: a ``Dataset`` whose ``__getitem__`` calls ``librosa.load(path,
    sr=32000)``, takes a random 10 s crop (zero-padded when shorter), applies
    an ``audiomentations.Compose`` of the ``cnn14`` preset's waveform
    augmentation (time stretch p 0.2, pitch shift p 0.2, shift p 0.5, gain
    p 0.5, white or pink noise p 0.3, same ranges), then
    ``librosa.feature.melspectrogram`` + ``power_to_db`` and standardisation;
    a ``DataLoader`` (``--ref-workers``) and a plain AdamW step;
(b) ours, ``augment.backend = "cpu"``: ``engine.train.loop.train_fold`` on the
    int16 waveform cache (``CropDataset``, ``MultiScaleBatchSampler``),
    audiomentations per clip in the loader, ``LogMelFrontend`` on the device,
    loader settings ``auto``;
(c) ours, ``augment.backend = "device"``: the same with ``BatchWaveAugment``
    on the batch in the training step;
(d) ours without waveform augmentation: the loop's own ceiling.

Every repeat runs the four sides in both thread settings of
``benchmarks/fair.py``: ``one`` (one thread for every side: torch and the BLAS
librosa's mel projection uses) and ``default`` (the libraries' defaults,
``OMP_WAIT_POLICY=PASSIVE`` as jobs run). Reports training clips per second
(each side's median over the repeats, and the median per-repeat ratio to (a))
in each setting, the one-off cache build, and the training loader alone (no
model), which is its ceiling per process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import fair  # noqa: E402

fair.job_environment()  # before torch loads OpenMP

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from benchmarks.bench_augment import cnn14_settings  # noqa: E402
from engine.data.cache import WaveformCache  # noqa: E402
from engine.data.dataset import CropDataset, MultiScaleBatchSampler, loader_settings  # noqa: E402
from engine.data.manifest import ClipTable, FolderSource  # noqa: E402
from engine.features.augment import WaveAugment  # noqa: E402
from engine.features.device_augment import BatchWaveAugment  # noqa: E402
from engine.features.frontend import LogMelFrontend  # noqa: E402
from engine.models.registry import build_model  # noqa: E402
from engine.train.loop import Tagger, train_fold  # noqa: E402
from engine.train.losses import BCEWithLogits  # noqa: E402

SOURCE_SR, SR, N_CLASSES = 44100, 32000, 80
MEL = dict(n_fft=1024, hop_length=320, win_length=1024, n_mels=64, fmin=50, fmax=16000)
MEAN, STD = -40.0, 15.0


def write_clips(folder: Path, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """n clips of tones and noise, 2-20 s, with 1-2 random labels each."""
    rng = np.random.default_rng(seed)
    names, Y = [], np.zeros((n, N_CLASSES), dtype=np.float32)
    for i in range(n):
        t = np.arange(int(rng.uniform(2.0, 20.0) * SOURCE_SR)) / SOURCE_SR
        wave = 0.05 * rng.standard_normal(t.size)
        for _ in range(3):
            wave += 0.1 * np.sin(2 * np.pi * rng.uniform(60, 15000) * t)
        names.append(f"clip_{i:04d}.wav")
        sf.write(folder / names[-1], np.clip(wave, -1, 1).astype(np.float32), SOURCE_SR, subtype="PCM_16")
        Y[i, rng.choice(N_CLASSES, size=rng.integers(1, 3), replace=False)] = 1
    return names, Y


class LibrosaDataset(torch.utils.data.Dataset):
    """The straightforward reference: decode, crop, augment and log-mel one clip per item."""

    def __init__(self, paths: list[Path], Y: np.ndarray, crop: int, seed: int) -> None:
        from audiomentations import AddColorNoise, Compose, Gain, OneOf, PitchShift, Shift, TimeStretch

        kw = cnn14_settings()
        self.paths, self.Y, self.crop, self.seed, self.epoch = paths, Y, crop, seed, 0
        pink = -10 * np.log10(2)
        self.augment = Compose([
            TimeStretch(min_rate=kw["stretch"][0], max_rate=kw["stretch"][1], leave_length_unchanged=True,
                        p=kw["stretch_p"]),
            PitchShift(min_semitones=-kw["pitch_semitones"], max_semitones=kw["pitch_semitones"], p=kw["pitch_p"]),
            Shift(min_shift=-kw["shift_s"], max_shift=kw["shift_s"], shift_unit="seconds", rollover=True,
                  p=kw["shift_p"]),
            Gain(min_gain_db=-kw["gain_db"], max_gain_db=kw["gain_db"], p=kw["gain_p"]),
            OneOf([AddColorNoise(min_snr_db=kw["noise_snr_db"][0], max_snr_db=kw["noise_snr_db"][1],
                                 min_f_decay=d, max_f_decay=d, p=1.0) for d in (0.0, pink)], p=kw["noise_p"]),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import librosa

        y, _ = librosa.load(self.paths[i], sr=SR)
        rng = np.random.default_rng((self.seed, self.epoch, i))
        if len(y) > self.crop:
            start = int(rng.integers(0, len(y) - self.crop + 1))
            y = y[start:start + self.crop]
        else:
            y = np.pad(y, (0, self.crop - len(y)))
        y = self.augment(samples=y, sample_rate=SR)
        mel = librosa.feature.melspectrogram(y=y, sr=SR, **MEL)
        x = (librosa.power_to_db(mel, ref=1.0, amin=1e-10).T - MEAN) / STD
        return torch.from_numpy(np.clip(x, -10, 10)[None].astype(np.float32)), torch.from_numpy(self.Y[i])


def reference_epoch(model: torch.nn.Module, loader, optimizer) -> float:
    """One epoch of the reference loop; returns training clips per second."""
    model.train()
    start, seen = time.perf_counter(), 0
    for x, y in loader:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(x)
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, write the clips, alternate the sides and print clips/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0, help="training crop in seconds")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="small", choices=("small", "cnn14"))
    parser.add_argument("--ref-workers", type=int, default=0, help="DataLoader workers of the reference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    crop = int(args.seconds * SR)
    kw = cnn14_settings()
    fair.header(f"bench_pipeline on {device}")
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        folder = Path(tmp) / "train_curated"
        folder.mkdir()
        names, Y = write_clips(folder, args.clips, args.seed)
        audio_s = sum(sf.info(folder / n).duration for n in names)
        print(f"{args.clips} clips, {audio_s:.0f} s of audio; model {args.model}, batch {args.batch}, "
              f"{args.seconds:g} s crops, one epoch per measurement")
        table = ClipTable(split="train_curated", fnames=names, Y=Y, source=FolderSource(folder), csv_path=None)
        start = time.perf_counter()
        cache = WaveformCache.build(table, sample_rate=SR, cache_dir=Path(tmp) / "cache")
        print(f"cache build (once per dataset): {time.perf_counter() - start:.1f} s, "
              f"{audio_s / (time.perf_counter() - start):.0f} s of audio per s")

        def model() -> torch.nn.Module:
            torch.manual_seed(0)
            return build_model(args.model, n_classes=N_CLASSES, n_mels=64, width=16, dropout=0.1)

        ref_ds = LibrosaDataset([folder / n for n in names], Y, crop, args.seed)
        ref_loader = torch.utils.data.DataLoader(ref_ds, batch_size=args.batch, shuffle=True,
                                                 num_workers=args.ref_workers, drop_last=True)
        settings = {"cpu": loader_settings(device_type=device.type, cpu_augment=True),
                    "device": loader_settings(device_type=device.type), "none": loader_settings(device_type=device.type)}
        print("our loader settings (auto): " + "; ".join(f"{k}: {v}" for k, v in settings.items()))

        def our_loaders(backend: str, epoch: int):
            wave_aug = WaveAugment(sample_rate=SR, **kw) if backend == "cpu" else None
            ds = CropDataset(cache, np.arange(args.clips), Y, crop_samples=crop, train=True, seed=args.seed + epoch,
                             wave_augment=wave_aug)
            sampler = MultiScaleBatchSampler(torch.utils.data.RandomSampler(ds), args.batch, base_crop=crop,
                                             extra_crops=[], prob=0.0, seed=args.seed, drop_last=True)
            train = torch.utils.data.DataLoader(ds, batch_sampler=sampler, **settings[backend].dataloader_kwargs())
            val_ds = CropDataset(cache, np.arange(min(4, args.clips)), Y, crop_samples=crop, train=False)
            return train, torch.utils.data.DataLoader(val_ds, batch_size=4)

        def ours_epoch(backend: str, rep: int) -> float:
            frontend = LogMelFrontend(**{k: v for k, v in MEL.items() if k != "win_length"})
            frontend.set_stats(np.full(64, MEAN, dtype=np.float32), np.full(64, STD, dtype=np.float32))
            train, val = our_loaders(backend, rep)
            got = []
            with tempfile.TemporaryDirectory(dir=tmp) as fold_dir:
                train_fold(Tagger(frontend, model()), train_loader=train, val_loader=val,
                           val_truth=Y[: min(4, args.clips)], loss_fn=BCEWithLogits(), device=device,
                           fold_dir=Path(fold_dir), epochs=1, patience=1, head_lr=1e-3, encoder_lr=1e-3,
                           weight_decay=1e-4, betas=(0.9, 0.999), warmup_epochs=0.0, warmup_steps=0,
                           min_lr_ratio=0.0, grad_clip=5.0, amp=True, cpu_bf16=False, mixup_p=0.0, mixup_alpha=0.4,
                           seed=args.seed, on_epoch=lambda r: got.append(r.clips_per_sec),
                           wave_augment=BatchWaveAugment(sample_rate=SR, **kw) if backend == "device" else None,
                           augment_key=(args.seed, rep))
            return got[0]

        # Warm-up of every side on a few items (librosa and FFT plan caches).
        ref_ds[0]
        rates = {mode: {"a": [], "b": [], "c": [], "d": []} for mode in fair.MODES}
        for rep in range(args.repeats):
            for mode in fair.MODES:
                with fair.threads(mode):
                    ref_ds.epoch = rep
                    m = model()
                    sides = {"a": lambda: reference_epoch(m, ref_loader, torch.optim.AdamW(m.parameters(), lr=1e-3)),
                             "b": lambda: ours_epoch("cpu", rep), "c": lambda: ours_epoch("device", rep),
                             "d": lambda: ours_epoch("none", rep)}
                    # The reference goes first in even repeats, last in odd ones.
                    for k in (sides if rep % 2 == 0 else reversed(list(sides))):
                        rates[mode][k].append(sides[k]())
                print(f"  repeat {rep}, {mode}: " + ", ".join(f"({k}) {v[-1]:.2f}" for k, v in rates[mode].items())
                      + f" clips/s, load average {fair.load_average():.1f}")
        labels = {"a": "reference: librosa + audiomentations per item",
                  "b": "ours, augment.backend = cpu (per clip)",
                  "c": "ours, augment.backend = device (batched)",
                  "d": "ours, no waveform augmentation"}
        for mode, text in fair.MODES.items():
            print(f"\n{mode}: {text}")
            for k, label in labels.items():
                ratio = statistics.median(r / a for r, a in zip(rates[mode][k], rates[mode]["a"]))
                print(f"({k}) {label:46s}: median {statistics.median(rates[mode][k]):6.2f} clips/s, {ratio:.2f}x (a)")
                if k != "a":
                    fair.figure(f"pipeline.{k}_{mode}", ratio)
        print()

        # The training loader alone: what one loading process can deliver.
        for backend in ("none", "cpu"):
            train, _ = our_loaders(backend, 0)
            start, cpu, n = time.perf_counter(), time.process_time(), 0
            for wave, _, _ in train:
                n += len(wave)
            print(f"loader alone, {'per-clip augmentation' if backend == 'cpu' else 'no CPU augmentation':22s}: "
                  f"{n / (time.perf_counter() - start):8.1f} items/s per process, "
                  f"{(time.process_time() - cpu) / n * 1e3:.2f} ms of CPU per item")
        ref_ds.epoch = 0
        start = time.perf_counter()
        for i in range(min(8, args.clips)):
            ref_ds[i]
        print(f"reference item alone (load + augment + mel)  : {min(8, args.clips) / (time.perf_counter() - start):8.1f} "
              "items/s per process")


if __name__ == "__main__":
    main()
