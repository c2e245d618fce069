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
import os
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
_SOURCE_CODE = 7        # keys a shared-source recording's generator apart from any clip's
#: Header of the curated CSV's source-recording column when clips share sources (FSD's metadata name).
SOURCE_COLUMN = "freesound_id"


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
    #: Shared-source clips: the recording this clip is cut from (-1: its own), where it starts, its length.
    source: int = -1
    source_offset: float = 0.0
    source_seconds: float = 0.0


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
    """Synthesise one clip as int16 samples at 44.1 kHz (deterministic per seed and clip).

    A shared-source clip (``clip.source >= 0``) is cut from its recording,
    rendered whole (its events span all of it, so every cut holds every label)
    from a generator keyed by the recording: the clips of one recording share
    pitch jitter, background, SNR and level, like cuts of one Freesound upload.
    """
    if clip.source >= 0:
        rng = np.random.default_rng((seed, _SPLIT_CODES[clip.split], _SOURCE_CODE, clip.source))
        # A few spare samples: a cut's rounded start plus its rounded length may pass the rounded total.
        recording = _render_mix(clip.labels, int(round(clip.source_seconds * DEMO_SR)) + 8, rng, cover=True)
        start = int(round(clip.source_offset * DEMO_SR))
        return recording[start:start + int(round(clip.seconds * DEMO_SR))]
    rng = np.random.default_rng((seed, _SPLIT_CODES[clip.split], clip.index))
    return _render_mix(clip.labels, int(round(clip.seconds * DEMO_SR)), rng, cover=False)


def _render_mix(labels: Sequence[int], n: int, rng: np.random.Generator, *, cover: bool) -> np.ndarray:
    """``n`` int16 samples holding every class of ``labels`` over background noise.

    Events last 60-100 % of a clip longer than a second, at a random onset;
    with ``cover`` they span all ``n`` samples.
    """
    signatures = class_signatures()
    mix = np.zeros(n)
    active = np.zeros(n, dtype=bool)
    for order, c in enumerate(labels):
        sig = signatures[c]
        length = (max(int(0.25 * DEMO_SR), int(n * rng.uniform(0.6, 1.0)))
                  if n > DEMO_SR and not cover else n)
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
                      noisy_error_rate: float = 0.3, max_seconds: float = _MAX_SECONDS,
                      clips_per_source: int = 1) -> list[DemoClip]:
    """Return every clip of a demo dataset with its true and listed labels, without audio.

    Each class is the first label of ``clips_per_class`` curated clips (and of
    ``noisy_per_class`` noisy and ``test_per_class`` test clips); about one clip
    in five has a second label. Exactly ``round(noisy_error_rate * n_noisy)``
    noisy clips list wrong or incomplete labels. Clips of each split are in
    fname order, as in the competition CSVs.

    With ``clips_per_source`` above 1, the curated clips of each primary class
    are taken in runs of that many and each run is cut from one recording
    (``DemoClip.source``): its clips share the first clip's labels and follow
    one another in the recording. The plan of every other clip, and the whole
    plan with the default 1, is unchanged.
    """
    noisy_per_class = clips_per_class if noisy_per_class is None else noisy_per_class
    test_per_class = max(1, clips_per_class // 4) if test_per_class is None else test_per_class
    for field, value in (("clips_per_class", clips_per_class), ("noisy_per_class", noisy_per_class),
                         ("test_per_class", test_per_class)):
        if value < 1:
            raise ConfigError(f"must be at least 1, got {value}", field=field)
    if not 0.0 <= noisy_error_rate <= 1.0:
        raise ConfigError(f"must be in [0, 1], got {noisy_error_rate}", field="noisy_error_rate")
    if clips_per_source < 1:
        raise ConfigError(f"must be at least 1, got {clips_per_source}", field="clips_per_source")
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
        lengths = [round(float(seconds[i]), 3) for i in range(n)]
        sources = [(-1, 0.0, 0.0)] * n
        if split == "train_curated" and clips_per_source > 1:
            sources, labels = _shared_sources(labels, lengths, clips_per_source, n_classes)
            listed = list(labels)
        clips = [DemoClip(split=split, fname=fnames[i], index=i, labels=labels[i],
                          listed=listed[i], seconds=lengths[i], source=sources[i][0],
                          source_offset=sources[i][1], source_seconds=sources[i][2]) for i in range(n)]
        plan.extend(sorted(clips, key=lambda clip: clip.fname))
    return plan


# --------------------------------------------------------------------------- full size

# FSDKaggle2019's published dimensions (Fonseca et al., "Audio tagging with noisy labels and minimal
# supervision", DCASE 2019 Task 2, arXiv:1906.02975, section 3; the test count is the Kaggle test set):
#: Clips per split of the real dataset.
FULL_SIZE_CLIPS = {"train_curated": 4970, "train_noisy": 19815, "test": 3361}
# Curated: 5,752 labels on 4,970 clips (1.16 per clip), 10.5 h, clips of 0.3-30 s, most short (mean 7.6 s).
# Noisy: about 24,000 labels on 19,815 clips (1.21 per clip), 80 h, clips of 1-15 s, most 15 s (mean 14.5 s).
#: Mean labels per clip of each split (the test set taken as the curated one, its labelling).
FULL_SIZE_LABELS_PER_CLIP = {"train_curated": 5752 / 4970, "train_noisy": 24000 / 19815,
                             "test": 5752 / 4970}
#: Share of noisy clips whose listed labels are wrong or incomplete (the task paper's rough estimate).
FULL_SIZE_NOISY_ERROR_RATE = 0.6
# Curated and test lengths: log-normal (median 4.9 s, sigma 1.0) clipped to [0.3, 30] s: mean 7.6 s.
_CURATED_SECONDS = (4.9, 1.0, 0.3, 30.0)
# Noisy lengths: 94 % exactly 15 s (the cap the YFCC clips were cut to), the rest log-uniform in [1, 15) s.
_NOISY_FULL_SHARE = 0.94
_NOISY_SECONDS = (1.0, 15.0)


def parse_size(text: str) -> float:
    """``full`` -> 1.0, else a fraction in (0, 1] of FSDKaggle2019's size; a ConfigError otherwise."""
    if text.strip().lower() == "full":
        return 1.0
    try:
        size = float(text)
    except ValueError:
        raise ConfigError(f"expected 'full' or a fraction in (0, 1], got {text!r}", field="size") from None
    if not 0.0 < size <= 1.0:
        raise ConfigError(f"expected 'full' or a fraction in (0, 1], got {text!r}", field="size")
    return size


def _extra_label_prob(mean_listed: float, drop_rate: float = 0.0) -> float:
    """q giving ``mean_listed`` labels per clip as listed, a clip holding a second label with probability q
    and a third with q**2 (1 + q + q**2 true labels), of which a share ``drop_rate`` of the multi-label
    clips (probability q) list one fewer: solves q**2 + (1 - drop_rate) q = mean_listed - 1."""
    b = 1.0 - drop_rate
    return float((np.sqrt(b * b + 4.0 * (mean_listed - 1.0)) - b) / 2.0)


def _multi_labels(primaries: np.ndarray, q: float, rng: np.random.Generator, n_classes: int
                  ) -> list[tuple[int, ...]]:
    """Each clip's primary class plus a second label with probability q and a third with q**2 (vectorised)."""
    n = len(primaries)
    extra = (rng.random(n) < q).astype(int)
    extra += (extra == 1) & (rng.random(n) < q)
    # Distinct others: offsets 1..n_classes-1 from the primary, the second offset differing from the first.
    first = rng.integers(1, n_classes, n)
    second = rng.integers(1, n_classes - 1, n)
    second += second >= first
    others = np.stack([(primaries + first) % n_classes, (primaries + second) % n_classes], axis=1)
    return [(int(p),) + tuple(int(o) for o in others[i, :k]) for i, (p, k) in enumerate(zip(primaries, extra))]


def _corrupt_many(label_sets: Sequence[tuple[int, ...]], rng: np.random.Generator, n_classes: int
                  ) -> list[tuple[int, ...]]:
    """``_corrupt`` for many clips at once: a multi-label clip loses one label half the time, else one
    of its labels is swapped for a class it does not hold (random draws made as arrays)."""
    n = len(label_sets)
    drop = rng.random(n) < 0.5
    pick = rng.random(n)
    offsets = rng.integers(1, n_classes, (n, 4))
    out = []
    for i, labels in enumerate(label_sets):
        k = int(pick[i] * len(labels))
        if len(labels) > 1 and drop[i]:
            out.append(labels[:k] + labels[k + 1:])
            continue
        # The first offset from the swapped label that lands outside the set (4 tries cover 3 labels).
        new = next((labels[k] + int(o)) % n_classes for o in offsets[i]
                   if (labels[k] + int(o)) % n_classes not in labels)
        out.append(labels[:k] + (new,) + labels[k + 1:])
    return out


def _full_size_seconds(split: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if split == "train_noisy":
        low, high = _NOISY_SECONDS
        short = np.exp(rng.uniform(np.log(low), np.log(high), n))
        seconds = np.where(rng.random(n) < _NOISY_FULL_SHARE, high, short)
    else:
        median, sigma, low, high = _CURATED_SECONDS
        seconds = np.clip(median * rng.lognormal(0.0, sigma, n), low, high)
    return np.round(seconds, 3)


def plan_full_size_dataset(size: float = 1.0, *, seed: int = 0,
                           noisy_error_rate: float = FULL_SIZE_NOISY_ERROR_RATE) -> list[DemoClip]:
    """The clips of a synthetic dataset with FSDKaggle2019's dimensions scaled by ``size`` (1.0: full).

    Counts are ``round(size * FULL_SIZE_CLIPS[split])`` (at least one per split);
    primary classes are dealt evenly over the 80 classes; labels per clip,
    lengths and the noisy label error rate follow the published figures above.
    The plan is drawn with vectorised numpy from ``seed``; clips render as the
    default demo's do (same sounds, same per-clip generators).
    """
    if not 0.0 < size <= 1.0:
        raise ConfigError(f"must be in (0, 1], got {size}", field="size")
    if not 0.0 <= noisy_error_rate <= 1.0:
        raise ConfigError(f"must be in [0, 1], got {noisy_error_rate}", field="noisy_error_rate")
    n_classes = len(FSD2019_CLASSES)
    rng = np.random.default_rng((seed, 21))
    counts = {split: max(1, int(round(size * full))) for split, full in FULL_SIZE_CLIPS.items()}
    total = sum(counts.values())
    ids = np.unique(rng.integers(0, 2 ** 32, 2 * total + 64, dtype=np.uint64))
    ids = rng.permutation(ids)[:total]
    plan: list[DemoClip] = []
    cursor = 0
    for split, n in counts.items():
        primaries = rng.permutation(np.resize(rng.permutation(n_classes), n))
        # A corrupted multi-label noisy clip loses a label half the time: the published mean is of listed labels.
        drop_rate = 0.5 * noisy_error_rate if split == "train_noisy" else 0.0
        q = _extra_label_prob(FULL_SIZE_LABELS_PER_CLIP[split], drop_rate)
        labels = _multi_labels(primaries, q, rng, n_classes)
        listed = list(labels)
        if split == "train_noisy":
            wrong = np.sort(rng.permutation(n)[:int(round(noisy_error_rate * n))])
            for i, corrupted in zip(wrong, _corrupt_many([labels[i] for i in wrong], rng, n_classes)):
                listed[i] = corrupted
        seconds = _full_size_seconds(split, n, rng)
        clips = [DemoClip(split=split, fname=f"{int(ids[cursor + i]):08x}.wav", index=i, labels=labels[i],
                          listed=listed[i], seconds=float(seconds[i])) for i in range(n)]
        cursor += n
        plan.extend(sorted(clips, key=lambda clip: clip.fname))
    return plan


def _shared_sources(labels: list[tuple[int, ...]], lengths: list[float], clips_per_source: int, n_classes: int
                    ) -> tuple[list[tuple[int, float, float]], list[tuple[int, ...]]]:
    """Group clips of each primary class in runs of ``clips_per_source``, one recording per run.

    Returns per clip (source id, offset in the recording, recording length)
    and the labels, each run taking its first clip's.
    """
    sources: list[tuple[int, float, float]] = [(-1, 0.0, 0.0)] * len(labels)
    labels = list(labels)
    next_source = 0
    for c in range(n_classes):
        members = [i for i, lab in enumerate(labels) if lab[0] == c]
        for start in range(0, len(members), clips_per_source):
            run = members[start:start + clips_per_source]
            total = round(sum(lengths[i] for i in run), 3)
            offset = 0.0
            for i in run:
                labels[i] = labels[run[0]]
                sources[i] = (next_source, round(offset, 3), total)
                offset += lengths[i]
            next_source += 1
    return sources, labels


def source_id(clip: DemoClip) -> str:
    """The clip's value in the ``freesound_id`` column: its recording's id (a clip on its own gets its own)."""
    return str(100000 + clip.source) if clip.source >= 0 else f"solo-{clip.fname[:-4]}"


# --------------------------------------------------------------------------- writing

#: The noisy clips' true labels (fname,labels), written beside train_noisy.csv.
NOISY_TRUTH_CSV = "train_noisy_truth.csv"

def _label_text(labels: Sequence[int]) -> str:
    return ",".join(FSD2019_CLASSES[c] for c in labels)


def _write_label_csv(path: Path, clips: Sequence[DemoClip], *, listed: bool, sources: bool = False) -> None:
    # Minimal quoting, as in the competition files: only multi-label fields are quoted.
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["fname", "labels"] + ([SOURCE_COLUMN] if sources else []))
        for clip in clips:
            writer.writerow([clip.fname, _label_text(clip.listed if listed else clip.labels)]
                            + ([source_id(clip)] if sources else []))


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
        "  train_noisy_truth.csv                true labels of the noisy clips (fname,labels)",
        "",
        f"Audio: mono 16-bit PCM WAV at 44.1 kHz, {summary['min_seconds']:g} to "
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
             TEST_TRUTH_CSV, NOISY_TRUTH_CSV, "README.txt", "train_curated.zip", "train_noisy.zip", "test.zip")
    return [root / name for name in names if (root / name).exists()]


def write_demo_dataset(root: Path | str, *, seed: int = 0,
                       clips_per_class: int = DEFAULT_CLIPS_PER_CLASS,
                       noisy_per_class: int | None = None, test_per_class: int | None = None,
                       noisy_error_rate: float | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       max_seconds: float = _MAX_SECONDS, overwrite: bool = False,
                       workers: int | None = None, clips_per_source: int = 1,
                       size: float | None = None) -> dict:
    """Write a synthetic demo dataset in the FSDKaggle2019 layout into ``root``; return a summary.

    Writes ``train_curated.csv``, ``train_curated/``, ``train_noisy.csv``,
    ``train_noisy/``, ``test/``, ``sample_submission.csv`` (zeros),
    ``test_ground_truth.csv``, ``train_noisy_truth.csv`` (the noisy clips' true labels) and
    ``README.txt``. ``noisy_per_class`` defaults
    to ``clips_per_class`` and ``test_per_class`` to a quarter of it (at least
    1). The defaults write 720 clips (about 130 MB). ``max_seconds`` caps clip
    length (tests use short clips). ``clips_per_source`` above 1 cuts the
    curated clips of each class in runs of that many from one recording and
    adds a ``freesound_id`` column (the recording) to ``train_curated.csv``
    (``plan_demo_dataset``). An existing dataset in ``root`` is a
    DataError unless ``overwrite`` is set, which replaces it.
    ``size`` (a fraction in (0, 1], 1.0 for the full size) writes instead the
    clips of ``plan_full_size_dataset``: FSDKaggle2019's counts, lengths,
    labels per clip and noisy error rate (``noisy_error_rate`` defaults to
    0.6 there, 0.3 for the default demo). ``workers`` threads render the
    clips (default: the host's cores, at most 8).
    The summary holds the clip counts, the achieved noisy error rate, the
    bytes written and the seconds taken.
    """
    started = time.perf_counter()
    root = Path(root).expanduser()
    if size is not None:
        plan = plan_full_size_dataset(size, seed=seed, noisy_error_rate=(
            FULL_SIZE_NOISY_ERROR_RATE if noisy_error_rate is None else noisy_error_rate))
    else:
        plan = plan_demo_dataset(seed=seed, clips_per_class=clips_per_class,
                                 noisy_per_class=noisy_per_class, test_per_class=test_per_class,
                                 noisy_error_rate=0.3 if noisy_error_rate is None else noisy_error_rate,
                                 max_seconds=max_seconds, clips_per_source=clips_per_source)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
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
    _write_label_csv(root / CURATED_CSV, curated, listed=True, sources=clips_per_source > 1)
    _write_label_csv(root / NOISY_CSV, noisy, listed=True)
    _write_label_csv(root / TEST_TRUTH_CSV, test, listed=False)
    # The noisy set's true labels: what lets a curriculum's audit score its label filter.
    _write_label_csv(root / NOISY_TRUTH_CSV, noisy, listed=False)
    zeros = ",".join(["0"] * len(FSD2019_CLASSES))
    # Written last among the CSVs: without it a half-written folder does not load.
    (root / SAMPLE_SUBMISSION).write_text(
        "\n".join(["fname," + ",".join(FSD2019_CLASSES)] + [f"{c.fname},{zeros}" for c in test])
        + "\n", encoding="utf-8")

    wrong = sum(set(c.listed) != set(c.labels) for c in noisy)
    plan_error_rate = (noisy_error_rate if noisy_error_rate is not None
                       else FULL_SIZE_NOISY_ERROR_RATE if size is not None else 0.3)
    summary = {
        "root": str(root),
        "seed": seed,
        "classes": len(FSD2019_CLASSES),
        "curated_clips": len(curated),
        "noisy_clips": len(noisy),
        "test_clips": len(test),
        "curated_labels_per_clip": float(np.mean([len(c.labels) for c in curated])),
        "noisy_labels_per_clip": float(np.mean([len(c.listed) for c in noisy])),
        "noisy_error_rate": wrong / len(noisy),
        "noisy_error_rate_requested": plan_error_rate,
        "audio_seconds": float(sum(c.seconds for c in plan)),
        "min_seconds": float(min(c.seconds for c in plan)),
        "max_seconds": float(max(c.seconds for c in plan)),
        "size": size,
        "sample_rate": DEMO_SR,
        "clips_per_source": clips_per_source,
        "curated_sources": len({source_id(c) for c in curated}),
    }
    readme = _readme(summary)
    (root / "README.txt").write_text(readme, encoding="utf-8")
    csv_bytes = sum((root / name).stat().st_size for name in
                    (CURATED_CSV, NOISY_CSV, NOISY_TRUTH_CSV, TEST_TRUTH_CSV, SAMPLE_SUBMISSION, "README.txt"))
    summary["bytes"] = audio_bytes + csv_bytes
    summary["seconds"] = time.perf_counter() - started
    return summary
