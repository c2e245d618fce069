"""CNN14 embedding extraction throughput: our batched extractor versus one clip per forward call.

Usage::

    python benchmarks/bench_embed.py [--clips N] [--crop S] [--batch-size B] [--repeats R] [--threads T]

Writes N mono 16-bit WAVs at 44.1 kHz (2-12 s, like the FSDKaggle2019 curated
clips) and a randomly initialised CNN14 saved in PANNs' checkpoint format to
a temporary directory, then times, alternating the paths in every repeat:

(a) ours: ``engine.embeddings.embed_table`` with batches of B clips (decoding
    by soundfile + soxr HQ in two threads, ahead of the forward passes),
    no cache;
(b) ours with batches of 1 (what batching alone buys);
(c) per clip: ``librosa.load(path, sr=32000)``, the same centre crop /
    loop-padding, and one ``panns_inference.AudioTagging.inference`` call per
    clip (PANNs' reference package, its own model and log-mel).

Every path embeds the same clips to the same crop length, in both thread
settings of ``benchmarks/fair.py`` (``one``: one torch and BLAS thread for every
path, though (a) and (b) still decode in two threads of their own; ``default``:
torch's threads, ``OMP_WAIT_POLICY=PASSIVE`` as jobs run), the paths and the
settings alternating in every repeat. Reported: clips/s (median of R passes),
the median per-repeat ratios, and how far the embeddings of (a) and (c)
differ, both end to end and with (c)'s network fed our decoded crops (the
network parity alone). panns_inference reads ``~/panns_data/class_labels_indices.csv``
at import, so HOME points at a temporary folder holding a 527-row file; it
would download a checkpoint smaller than 3e8 bytes, which a CNN14 is not,
and downloads are blocked here anyway.
"""

from __future__ import annotations

import argparse
import csv
import os
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
import torch  # noqa: E402

from engine.data.manifest import ClipTable, FolderSource  # noqa: E402
from engine.embeddings import embed_table, panns_embedder  # noqa: E402
from engine.models.checkpoint import save_panns_style  # noqa: E402
from engine.models.panns import Cnn14  # noqa: E402

SOURCE_SR = 44100
TARGET_SR = 32000


def write_clips(folder: Path, n: int, seed: int) -> list[str]:
    """N mono 16-bit WAVs at 44.1 kHz, 2-12 s: two tones with a slow swing over noise."""
    rng = np.random.default_rng(seed)
    fnames = []
    for i in range(n):
        seconds = rng.uniform(2.0, 12.0)
        t = np.arange(int(seconds * SOURCE_SR)) / SOURCE_SR
        f1, f2 = rng.uniform(100, 6000, size=2)
        swing = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.3, 3) * t)
        wave = 0.3 * swing * np.sin(2 * np.pi * f1 * t) + 0.1 * np.sin(2 * np.pi * f2 * t)
        wave += 0.02 * rng.standard_normal(t.size)
        fnames.append(f"clip{i:03d}.wav")
        sf.write(folder / fnames[-1], wave.astype(np.float32), SOURCE_SR, subtype="PCM_16")
    return fnames


def reference_crop(wave: np.ndarray, n: int) -> np.ndarray:
    """Centre n samples, or the clip tiled from its start to n samples (written out independently)."""
    if len(wave) >= n:
        start = (len(wave) - n) // 2
        return wave[start:start + n]
    return np.tile(wave, -(-n // len(wave)))[:n]


def prepare_panns_inference(home: Path):
    """Import panns_inference with HOME at a folder holding the labels CSV it reads; block downloads."""
    (home / "panns_data").mkdir(parents=True, exist_ok=True)
    with open(home / "panns_data" / "class_labels_indices.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows([i, f"/m/bench{i}", f"class {i}"] for i in range(527))
    os.environ["HOME"] = str(home)

    def no_downloads(command: str) -> int:
        raise RuntimeError(f"download attempted: {command}")

    os.system = no_downloads  # panns_inference fetches files with os.system('wget ...')
    import librosa
    from panns_inference import AudioTagging

    return librosa, AudioTagging


def main() -> None:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--crop", type=float, default=10.0, help="crop length in seconds")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    crop_samples = int(round(args.crop * TARGET_SR))

    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp_name:
        tmp = Path(tmp_name)
        audio = tmp / "audio"
        audio.mkdir()
        fnames = write_clips(audio, args.clips, args.seed)
        total_seconds = sum(sf.info(audio / f).duration for f in fnames)
        torch.manual_seed(args.seed)
        checkpoint = save_panns_style(Cnn14().eval(), tmp / "Cnn14_mAP=0.431.pth")
        assert checkpoint.stat().st_size >= 3e8, "panns_inference would try to re-download a smaller file"

        librosa, AudioTagging = prepare_panns_inference(tmp / "home")
        t = time.perf_counter()
        embedder = panns_embedder(checkpoint, device="cpu")
        load_ours = time.perf_counter() - t
        t = time.perf_counter()
        tagger = AudioTagging(checkpoint_path=str(checkpoint), device="cpu")
        load_ref = time.perf_counter() - t
        table = ClipTable(split="bench", fnames=fnames, Y=None, source=FolderSource(audio), csv_path=None)

        def ours(batch_size: int) -> np.ndarray:
            return embed_table(table, embedder, crop_seconds=args.crop, batch_size=batch_size,
                               cache_dir=None).embeddings

        def per_clip() -> np.ndarray:
            rows = []
            for fname in fnames:
                wave, _ = librosa.load(str(audio / fname), sr=TARGET_SR, mono=True)
                _, embedding = tagger.inference(reference_crop(wave, crop_samples)[None, :])
                rows.append(embedding[0])
            return np.stack(rows)

        # One untimed clip through each model: first calls allocate and pick kernels.
        with torch.inference_mode():
            embedder(torch.zeros(1, crop_samples))
        tagger.inference(np.zeros((1, crop_samples), dtype=np.float32))

        paths = {"(a) ours, batch %d" % args.batch_size: lambda: ours(args.batch_size),
                 "(b) ours, batch 1": lambda: ours(1),
                 "(c) per clip, panns_inference": per_clip}
        seconds = {(mode, name): [] for mode in fair.MODES for name in paths}
        outputs: dict[str, np.ndarray] = {}
        for rep in range(args.repeats):
            for mode in fair.MODES:
                with fair.threads(mode):
                    for name in (list(paths) if rep % 2 == 0 else list(paths)[::-1]):
                        t = time.perf_counter()
                        outputs[name] = paths[name]()
                        seconds[mode, name].append(time.perf_counter() - t)
            print(f"  repeat {rep} done, load average {fair.load_average():.1f}")

        # Network parity: the reference model on exactly the crops our extractor embedded.
        from engine.data.audio import decode
        from engine.embeddings import crop_clip

        ours_crops = [crop_clip(decode(audio / f, name=f, target_sr=TARGET_SR), crop_samples) for f in fnames]
        same_input = np.stack([tagger.inference(c[None, :])[1][0] for c in ours_crops])

    a, b, c = (outputs[name] for name in paths)
    fair.header("bench_embed")
    print(f"torch {torch.__version__}; {args.clips} clips, {total_seconds:.1f} s of 44.1 kHz audio, crop {args.crop:g} s; "
          f"median of {args.repeats}; model load: ours {load_ours:.1f} s, panns_inference {load_ref:.1f} s")
    names = list(paths)
    for mode, text in fair.MODES.items():
        print(f"{mode}: {text}")
        for name in paths:
            median = statistics.median(seconds[mode, name])
            print(f"  {name:32s} {args.clips / median:7.2f} clips/s  ({median:.1f} s)")
        per_clip = statistics.median(c / a for a, c in zip(seconds[mode, names[0]], seconds[mode, names[2]]))
        batch1 = statistics.median(b / a for a, b in zip(seconds[mode, names[0]], seconds[mode, names[1]]))
        print(f"  ratio (a)/(c): {per_clip:.2f}x   (a)/(b): {batch1:.2f}x")
        fair.figure(f"embed.batch_vs_per_clip_{mode}", per_clip)
        fair.figure(f"embed.batch_vs_batch1_{mode}", batch1)
    scale = np.abs(c).max()
    print(f"agreement (a) vs (c), end to end: max |diff| {np.abs(a - c).max():.2e} "
          f"(largest value {scale:.2e}); min cosine {min_cosine(a, c):.6f}")
    print(f"agreement (a) vs panns_inference on our crops: max |diff| {np.abs(a - same_input).max():.2e}; "
          f"(a) vs (b): max |diff| {np.abs(a - b).max():.2e}")


def min_cosine(x: np.ndarray, y: np.ndarray) -> float:
    """The smallest row-wise cosine similarity of two embedding matrices."""
    num = (x * y).sum(axis=1)
    den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    return float((num / np.maximum(den, 1e-12)).min())


if __name__ == "__main__":
    main()
