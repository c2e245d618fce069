"""A synthetic demo dataset in the exact FSDKaggle2019 layout.

The demo lets the whole pipeline run without the real data: the 80 real class
names, a curated set with clean labels, a noisy set whose labels are wrong or
incomplete at a known rate, and a test set with its ground truth. The sounds
do not imitate the real classes. Each class gets a signature from one of six
parametrised families (harmonic tones, band-limited noise, pulse trains,
sweeps, clicks, AM/FM tones) at class-specific parameters; every clip varies
it (pitch jitter, level, onset, background noise at a random SNR), so a small
CNN on log-mels learns the classes in a few CPU minutes without reaching a
perfect score, and classes of the same family are the ones it confuses.

Everything is drawn from generators seeded by ``seed`` (per clip, so clips do
not depend on one another): the same seed writes byte-identical files.
"""

from __future__ import annotations

import csv
import shutil
import textwrap
import time
import wave
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from engine.data.labels import FSD2019_CLASSES
from engine.data.manifest import CURATED_CSV, NOISY_CSV, SAMPLE_SUBMISSION, TEST_TRUTH_CSV
from engine.errors import ConfigError, DataError

DEMO_SR = 44100
FAMILIES = ("harmonic", "noise_band", "pulse_train", "sweep", "clicks", "modulated")
DEFAULT_CLIPS_PER_CLASS = 4
# Clip lengths: log-normal, median 1.6 s, clipped to [0.5, 15] s, so most clips
# are short with a long tail, like the curated set of the competition.
_MEDIAN_SECONDS = 1.6
_SIGMA_LOG_SECONDS = 0.8
_MIN_SECONDS = 0.5
_MAX_SECONDS = 15.0
_SECOND_LABEL_PROB = 0.2
_SPLIT_CODES = {"train_curated": 1, "train_noisy": 2, "test": 3}


@dataclass(frozen=True)
class ClassSignature:
    """The sound of one demo class: its family and the family's parameters."""

    name: str
    family: str
    params: dict


@dataclass(frozen=True)
class DemoClip:
    """One planned clip: where it goes, its true labels and the labels its CSV lists."""

    split: str
    fname: str
    index: int
    labels: tuple[int, ...]
    listed: tuple[int, ...]
    seconds: float


def _geo(low: float, high: float, u: float) -> float:
    """Geometric interpolation: equal steps in log frequency or log rate."""
    return float(low * (high / low) ** u)


@lru_cache(maxsize=1)
def class_signatures() -> tuple[ClassSignature, ...]:
    """Return the sound signature of each of the 80 classes, in class order.

    Classes are dealt round-robin to the six families; within a family the
    primary parameter (pitch, band, rate) steps geometrically with the rank,
    and secondary parameters follow a scrambled rank so that neighbours in
    pitch still differ in texture.
    """
    signatures = []
    for c, name in enumerate(FSD2019_CLASSES):
        family = FAMILIES[c % len(FAMILIES)]
        rank = c // len(FAMILIES)
        size = len(range(c % len(FAMILIES), len(FSD2019_CLASSES), len(FAMILIES)))
        u = rank / (size - 1)
        s = ((rank * 5) % size) / (size - 1)
        v = ((rank * 3) % size) / (size - 1)
        if family == "harmonic":
            params = {"f0": _geo(110, 2400, u), "harmonics": 1 + (rank * 3) % 7,
                      "rolloff": 0.5 + 1.5 * s, "style": ("sustained", "plucked", "tremolo")[rank % 3],
                      "note_rate": 2.0 + 3.0 * v}
        elif family == "noise_band":
            params = {"center": _geo(200, 11000, u), "octaves": 0.3 + 0.9 * s,
                      "gusty": bool(rank % 2), "gust_rate": 1.0 + 3.0 * v}
        elif family == "pulse_train":
            params = {"rate": _geo(1.5, 10.0, u), "pitch": _geo(250, 3000, s),
                      "decay": 0.015 + 0.04 * v, "partial": 2.76 if rank % 2 else 2.0}
        elif family == "sweep":
            params = {"f_low": _geo(300, 5000, u), "octaves": 0.5 + 1.5 * s,
                      "up": rank % 2 == 0, "chirp": 0.08 + 0.5 * v}
        elif family == "clicks":
            params = {"density": _geo(4, 60, u), "resonance": _geo(800, 12000, s),
                      "decay": 0.0015 + 0.0045 * v}
        else:
            params = {"carrier": _geo(250, 5000, u), "fm_rate": 2.0 + 10.0 * s,
                      "fm_depth": 0.02 + 0.23 * v, "am_rate": (0.0, 8.0, 25.0)[rank % 3]}
        signatures.append(ClassSignature(name=name, family=family, params=params))
    return tuple(signatures)


# --------------------------------------------------------------------------- synthesis

def _fft_size(n: int) -> int:
    return 1 << max(1, int(n - 1).bit_length())


def _shaped_noise(n: int, rng: np.random.Generator, gain: Callable[[np.ndarray], np.ndarray]
                  ) -> np.ndarray:
    """Gaussian noise of length n whose spectrum magnitude follows ``gain(freqs_hz)``."""
    size = _fft_size(n)
    freqs = np.fft.rfftfreq(size, 1.0 / DEMO_SR)
    spectrum = rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))
    return np.fft.irfft(spectrum * gain(freqs), size)[:n]


def _convolve_events(positions: np.ndarray, amplitudes: np.ndarray, kernel: np.ndarray,
                     n: int) -> np.ndarray:
    """Place ``kernel`` at each position with its amplitude (FFT convolution)."""
    impulses = np.zeros(n)
    np.add.at(impulses, positions, amplitudes)
    size = _fft_size(n + len(kernel))
    return np.fft.irfft(np.fft.rfft(impulses, size) * np.fft.rfft(kernel, size), size)[:n]


def _smooth_envelope(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """A positive, slowly varying envelope with fluctuations around ``rate`` Hz."""
    points = max(4, int(n / DEMO_SR * rate) + 3)
    knots = rng.uniform(0.15, 1.0, points)
    return np.interp(np.linspace(0, points - 1, n), np.arange(points), knots)


def _semitones(rng: np.random.Generator, std: float) -> float:
    return float(2.0 ** (rng.normal(0.0, std) / 12.0))


def _render_harmonic(p: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / DEMO_SR
    f0 = p["f0"] * _semitones(rng, 0.6)
    k = np.arange(1, p["harmonics"] + 1)
    k = k[k * f0 < 15000]
    weights = k.astype(float) ** -p["rolloff"] * rng.uniform(0.7, 1.3, len(k))
    vibrato = 1.0 + rng.uniform(0.0, 0.006) * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
    phase = 2 * np.pi * f0 * np.cumsum(vibrato) / DEMO_SR
    wave = weights @ np.sin(np.outer(k, phase) + rng.uniform(0, 2 * np.pi, (len(k), 1)))
    if p["style"] == "plucked":
        period = DEMO_SR / (p["note_rate"] * rng.uniform(0.9, 1.1))
        wave *= np.exp(-(np.arange(n) % period) / (0.25 * period))
    elif p["style"] == "tremolo":
        wave *= 1.0 + 0.5 * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t)
    return wave


def _render_noise_band(p: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    center = p["center"] * 2.0 ** rng.normal(0.0, 0.1)
    half = p["octaves"] / 2

    def band(freqs: np.ndarray) -> np.ndarray:
        distance = np.abs(np.log2(np.maximum(freqs, 1.0) / center)) / half
        return np.exp(-0.5 * distance ** 4)

    wave = _shaped_noise(n, rng, band)
    if p["gusty"]:
        wave *= _smooth_envelope(n, p["gust_rate"], rng)
    return wave


def _render_pulse_train(p: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    rate = p["rate"] * rng.lognormal(0.0, 0.05)
    period = DEMO_SR / rate
    count = int(n / period) + 1
    positions = (np.arange(count) + rng.normal(0.0, 0.03, count)) * period + rng.uniform(0, period)
    positions = positions[(positions >= 0) & (positions < n)].astype(np.int64)
    if len(positions) == 0:
        positions = np.array([int(rng.integers(0, max(1, n // 2)))])
    pitch = p["pitch"] * _semitones(rng, 0.5)
    decay = p["decay"] * rng.uniform(0.8, 1.25)
    tk = np.arange(int(6 * decay * DEMO_SR)) / DEMO_SR
    kernel = np.exp(-tk / decay) * (np.sin(2 * np.pi * pitch * tk)
                                    + 0.4 * np.sin(2 * np.pi * pitch * p["partial"] * tk))
    return _convolve_events(positions, rng.uniform(0.6, 1.0, len(positions)), kernel, n)


def _render_sweep(p: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    chirp = p["chirp"] * rng.uniform(0.9, 1.1)
    period = chirp * rng.uniform(1.4, 1.9)
    f_low = p["f_low"] * _semitones(rng, 0.5)
    # Kept below 14 kHz: the log-mel frontend stops at 16 kHz (32 kHz audio).
    f_high = min(f_low * 2.0 ** p["octaves"], 14000.0)
    t = np.arange(n) / DEMO_SR
    tau = np.mod(t, period)
    on = tau < chirp
    x = np.clip(tau / chirp, 0.0, 1.0)
    if not p["up"]:
        x = 1.0 - x
    freq = f_low * (f_high / f_low) ** x
    phase = 2 * np.pi * np.cumsum(freq) / DEMO_SR
    window = np.where(on, np.sin(np.pi * x) ** 2, 0.0)
    return window * np.sin(phase)


def _render_clicks(p: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    density = p["density"] * rng.lognormal(0.0, 0.15)
    count = max(1, int(rng.poisson(density * n / DEMO_SR)))
    positions = rng.integers(0, n, count)
    resonance = p["resonance"] * 2.0 ** rng.normal(0.0, 0.1)
    decay = p["decay"]
    tk = np.arange(int(8 * decay * DEMO_SR)) / DEMO_SR
    kernel = np.exp(-tk / decay) * np.sin(2 * np.pi * resonance * tk)
    return _convolve_events(positions, rng.uniform(0.3, 1.0, count) * rng.choice([-1, 1], count),
                            kernel, n)


def _render_modulated(p: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / DEMO_SR
    carrier = p["carrier"] * _semitones(rng, 0.6)
    fm_rate = p["fm_rate"] * rng.uniform(0.9, 1.1)
    beta = p["fm_depth"] * carrier / fm_rate
    phase = 2 * np.pi * carrier * t + beta * np.sin(2 * np.pi * fm_rate * t + rng.uniform(0, 6.3))
    wave = np.sin(phase) + 0.3 * np.sin(2 * phase)
    if p["am_rate"]:
        wave *= 1.0 + 0.8 * np.sin(2 * np.pi * p["am_rate"] * rng.uniform(0.9, 1.1) * t)
    return wave


_RENDERERS = {"harmonic": _render_harmonic, "noise_band": _render_noise_band,
              "pulse_train": _render_pulse_train, "sweep": _render_sweep,
              "clicks": _render_clicks, "modulated": _render_modulated}


def _fade(n: int, fade: int) -> np.ndarray:
    envelope = np.ones(n)
    fade = min(fade, n // 2)
    if fade:
        ramp = np.sin(np.linspace(0.0, np.pi / 2, fade)) ** 2
        envelope[:fade] = ramp
        envelope[n - fade:] = ramp[::-1]
    return envelope


def write_pcm16_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """A mono 16-bit PCM WAV with the standard library's ``wave`` (byte for byte what libsndfile writes).

    The demo writes its clips without soundfile, so the console, which offers
    to generate the demo, never imports an audio library.
    """
    data = np.asarray(samples, dtype="<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(data.tobytes())


def render_clip(clip: DemoClip, seed: int) -> np.ndarray:
    """Synthesise one clip as int16 samples at 44.1 kHz (deterministic per seed and clip)."""
    rng = np.random.default_rng((seed, _SPLIT_CODES[clip.split], clip.index))
    signatures = class_signatures()
    n = int(round(clip.seconds * DEMO_SR))
    mix = np.zeros(n)
    active = np.zeros(n, dtype=bool)
    for order, c in enumerate(clip.labels):
        sig = signatures[c]
        length = max(int(0.25 * DEMO_SR), int(n * rng.uniform(0.6, 1.0))) if n > DEMO_SR else n
        length = min(length, n)
        onset = int(rng.integers(0, n - length + 1))
        event = _RENDERERS[sig.family](sig.params, length, rng)
        event /= np.sqrt(np.mean(event ** 2)) + 1e-12
        event *= _fade(length, int(0.01 * DEMO_SR))
        gain = 1.0 if order == 0 else 10.0 ** (rng.uniform(-6.0, 0.0) / 20.0)
        mix[onset:onset + length] += gain * event
        active[onset:onset + length] = True
    slope = rng.uniform(0.0, 2.0)

    def tilt(freqs: np.ndarray) -> np.ndarray:
        # From white (slope 0) to brown (slope 2) noise, nothing below 20 Hz.
        return np.where(freqs > 20.0, np.maximum(freqs, 1.0) ** (-slope / 2), 0.0)

    background = _shaped_noise(n, rng, tilt)
    background /= np.sqrt(np.mean(background ** 2)) + 1e-12
    event_rms = np.sqrt(np.mean(mix[active] ** 2))
    snr_db = rng.uniform(6.0, 30.0)
    mix += background * event_rms * 10.0 ** (-snr_db / 20.0)
    peak = 10.0 ** (rng.uniform(-20.0, -1.0) / 20.0)
    mix *= peak / (np.max(np.abs(mix)) + 1e-12)
    return np.rint(mix * 32767.0).astype(np.int16)


# --------------------------------------------------------------------------- planning

def _labels_for(primaries: np.ndarray, rng: np.random.Generator, n_classes: int
                ) -> list[tuple[int, ...]]:
    """Give each clip its primary class and, sometimes, a second different class."""
    labels = []
    for primary in primaries:
        if rng.random() < _SECOND_LABEL_PROB:
            other = int(rng.integers(n_classes - 1))
            other += other >= primary
            labels.append((int(primary), other))
        else:
            labels.append((int(primary),))
    return labels


def _corrupt(labels: tuple[int, ...], rng: np.random.Generator, n_classes: int) -> tuple[int, ...]:
    """Make a label set wrong or incomplete, the two failure modes of the noisy set."""
    if len(labels) > 1 and rng.random() < 0.5:
        drop = int(rng.integers(len(labels)))
        return tuple(c for i, c in enumerate(labels) if i != drop)
    swap = int(rng.integers(len(labels)))
    choices = np.setdiff1d(np.arange(n_classes), labels)
    out = list(labels)
    out[swap] = int(rng.choice(choices))
    return tuple(out)


def plan_demo_dataset(*, seed: int = 0, clips_per_class: int = DEFAULT_CLIPS_PER_CLASS,
                      noisy_per_class: int | None = None, test_per_class: int | None = None,
                      noisy_error_rate: float = 0.3, max_seconds: float = _MAX_SECONDS
                      ) -> list[DemoClip]:
    """Return every clip of a demo dataset with its true and listed labels, without audio.

    Each class is the first label of ``clips_per_class`` curated clips (and of
    ``noisy_per_class`` noisy and ``test_per_class`` test clips); about one clip
    in five has a second label. Exactly ``round(noisy_error_rate * n_noisy)``
    noisy clips list wrong or incomplete labels. Clips of each split are in
    fname order, as in the competition CSVs.
    """
    noisy_per_class = clips_per_class if noisy_per_class is None else noisy_per_class
    test_per_class = max(1, clips_per_class // 4) if test_per_class is None else test_per_class
    for field, value in (("clips_per_class", clips_per_class), ("noisy_per_class", noisy_per_class),
                         ("test_per_class", test_per_class)):
        if value < 1:
            raise ConfigError(f"must be at least 1, got {value}", field=field)
    if not 0.0 <= noisy_error_rate <= 1.0:
        raise ConfigError(f"must be in [0, 1], got {noisy_error_rate}", field="noisy_error_rate")
    if max_seconds < _MIN_SECONDS:
        raise ConfigError(f"must be at least {_MIN_SECONDS}, got {max_seconds}", field="max_seconds")

    n_classes = len(FSD2019_CLASSES)
    rng = np.random.default_rng((seed, 0))
    counts = {"train_curated": clips_per_class, "train_noisy": noisy_per_class,
              "test": test_per_class}
    total = sum(counts.values()) * n_classes
    ids: list[int] = []
    taken: set[int] = set()
    while len(ids) < total:
        for value in rng.integers(0, 2 ** 32, total - len(ids), dtype=np.uint64):
            if int(value) not in taken:
                taken.add(int(value))
                ids.append(int(value))

    plan: list[DemoClip] = []
    cursor = 0
    for split, per_class in counts.items():
        n = per_class * n_classes
        primaries = rng.permutation(np.repeat(np.arange(n_classes), per_class))
        labels = _labels_for(primaries, rng, n_classes)
        seconds = np.clip(_MEDIAN_SECONDS * rng.lognormal(0.0, _SIGMA_LOG_SECONDS, n),
                          _MIN_SECONDS, max_seconds)
        listed = list(labels)
        if split == "train_noisy":
            wrong = rng.permutation(n)[:int(round(noisy_error_rate * n))]
            for i in np.sort(wrong):
                listed[i] = _corrupt(labels[i], rng, n_classes)
        fnames = [f"{ids[cursor + i]:08x}.wav" for i in range(n)]
        cursor += n
        clips = [DemoClip(split=split, fname=fnames[i], index=i, labels=labels[i],
                          listed=listed[i], seconds=round(float(seconds[i]), 3)) for i in range(n)]
        plan.extend(sorted(clips, key=lambda clip: clip.fname))
    return plan


# --------------------------------------------------------------------------- writing

def _label_text(labels: Sequence[int]) -> str:
    return ",".join(FSD2019_CLASSES[c] for c in labels)


def _write_label_csv(path: Path, clips: Sequence[DemoClip], *, listed: bool) -> None:
    # Minimal quoting, as in the competition files: only multi-label fields are quoted.
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["fname", "labels"])
        for clip in clips:
            writer.writerow([clip.fname, _label_text(clip.listed if listed else clip.labels)])


def _readme(summary: dict) -> str:
    families: dict[str, list[str]] = {}
    for sig in class_signatures():
        families.setdefault(sig.family, []).append(sig.name)
    lines = [
        f"fsat-console demo dataset (synthetic audio, seed {summary['seed']})",
        "",
        "Same layout as FSDKaggle2019, with its 80 class names:",
        f"  train_curated.csv + train_curated/   {summary['curated_clips']} clips, clean labels",
        f"  train_noisy.csv   + train_noisy/     {summary['noisy_clips']} clips, "
        f"{summary['noisy_error_rate']:.1%} of them with wrong or incomplete labels",
        f"  test/ + sample_submission.csv        {summary['test_clips']} clips "
        "(the sample submission holds zeros)",
        "  test_ground_truth.csv                true labels of the test clips (fname,labels)",
        "",
        f"Audio: mono 16-bit PCM WAV at 44.1 kHz, {_MIN_SECONDS:g} to "
        f"{summary['max_seconds']:g} s per clip (mostly short), "
        f"{summary['audio_seconds'] / 60:.1f} minutes in all.",
        f"Labels: {summary['curated_labels_per_clip']:.2f} per curated clip on average "
        "(some clips mix two classes).",
        "",
        "The sounds do not imitate the real classes. Each class is one member of a",
        "family of synthetic sounds at its own parameters (pitch, band, rate), varied",
        "per clip (pitch jitter, level, onset, background noise at 6-30 dB SNR).",
        "Classes of the same family are the hard ones to tell apart:",
    ]
    for family, names in families.items():
        lines.extend(textwrap.wrap(", ".join(names), width=88, initial_indent=f"  {family}: ",
                                   subsequent_indent="    ", break_on_hyphens=False))
    return "\n".join(lines) + "\n"


def _layout_entries(root: Path) -> list[Path]:
    names = ("train_curated", "train_noisy", "test", CURATED_CSV, NOISY_CSV, SAMPLE_SUBMISSION,
             TEST_TRUTH_CSV, "README.txt", "train_curated.zip", "train_noisy.zip", "test.zip")
    return [root / name for name in names if (root / name).exists()]


def write_demo_dataset(root: Path | str, *, seed: int = 0,
                       clips_per_class: int = DEFAULT_CLIPS_PER_CLASS,
                       noisy_per_class: int | None = None, test_per_class: int | None = None,
                       noisy_error_rate: float = 0.3,
                       progress: Callable[[int, int], None] | None = None,
                       max_seconds: float = _MAX_SECONDS, overwrite: bool = False,
                       workers: int = 2) -> dict:
    """Write a synthetic demo dataset in the FSDKaggle2019 layout into ``root``; return a summary.

    Writes ``train_curated.csv``, ``train_curated/``, ``train_noisy.csv``,
    ``train_noisy/``, ``test/``, ``sample_submission.csv`` (zeros),
    ``test_ground_truth.csv`` and ``README.txt``. ``noisy_per_class`` defaults
    to ``clips_per_class`` and ``test_per_class`` to a quarter of it (at least
    1). The defaults write 720 clips (about 130 MB). ``max_seconds`` caps clip
    length (tests use short clips). An existing dataset in ``root`` is a
    DataError unless ``overwrite`` is set, which replaces it.
    The summary holds the clip counts, the achieved noisy error rate, the
    bytes written and the seconds taken.
    """
    started = time.perf_counter()
    root = Path(root).expanduser()
    plan = plan_demo_dataset(seed=seed, clips_per_class=clips_per_class,
                             noisy_per_class=noisy_per_class, test_per_class=test_per_class,
                             noisy_error_rate=noisy_error_rate, max_seconds=max_seconds)
    existing = _layout_entries(root)
    if existing and not overwrite:
        raise DataError("a dataset is already here; choose an empty folder or overwrite it "
                        "(its layout files and audio folders are replaced)",
                        file=root, value=[p.name for p in existing])
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    for split in _SPLIT_CODES:
        (root / split).mkdir(parents=True, exist_ok=True)

    total = len(plan)
    done = 0
    audio_bytes = 0

    def write(clip: DemoClip) -> int:
        path = root / clip.split / clip.fname
        write_pcm16_wav(path, render_clip(clip, seed), DEMO_SR)
        return path.stat().st_size

    if progress is not None:
        progress(0, total)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for size in pool.map(write, plan):
            audio_bytes += size
            done += 1
            if progress is not None:
                progress(done, total)

    by_split: dict[str, list[DemoClip]] = {split: [] for split in _SPLIT_CODES}
    for clip in plan:
        by_split[clip.split].append(clip)
    curated, noisy, test = by_split["train_curated"], by_split["train_noisy"], by_split["test"]
    _write_label_csv(root / CURATED_CSV, curated, listed=True)
    _write_label_csv(root / NOISY_CSV, noisy, listed=True)
    _write_label_csv(root / TEST_TRUTH_CSV, test, listed=False)
    zeros = ",".join(["0"] * len(FSD2019_CLASSES))
    # Written last among the CSVs: without it a half-written folder does not load.
    (root / SAMPLE_SUBMISSION).write_text(
        "\n".join(["fname," + ",".join(FSD2019_CLASSES)] + [f"{c.fname},{zeros}" for c in test])
        + "\n", encoding="utf-8")

    wrong = sum(set(c.listed) != set(c.labels) for c in noisy)
    summary = {
        "root": str(root),
        "seed": seed,
        "classes": len(FSD2019_CLASSES),
        "curated_clips": len(curated),
        "noisy_clips": len(noisy),
        "test_clips": len(test),
        "curated_labels_per_clip": float(np.mean([len(c.labels) for c in curated])),
        "noisy_error_rate": wrong / len(noisy),
        "noisy_error_rate_requested": noisy_error_rate,
        "audio_seconds": float(sum(c.seconds for c in plan)),
        "max_seconds": max_seconds,
        "sample_rate": DEMO_SR,
    }
    readme = _readme(summary)
    (root / "README.txt").write_text(readme, encoding="utf-8")
    csv_bytes = sum((root / name).stat().st_size for name in
                    (CURATED_CSV, NOISY_CSV, TEST_TRUTH_CSV, SAMPLE_SUBMISSION, "README.txt"))
    summary["bytes"] = audio_bytes + csv_bytes
    summary["seconds"] = time.perf_counter() - started
    return summary
