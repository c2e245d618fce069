"""The demo at FSDKaggle2019's dimensions: counts, clip lengths, labels per clip and the noisy
label error rate of the real dataset, scaled by a fraction, written by ``fsat demo-data --size``."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from engine.data.demo import FULL_SIZE_CLIPS, FULL_SIZE_NOISY_ERROR_RATE, parse_size, plan_full_size_dataset
from engine.data.labels import parse_label_csv
from engine.data.manifest import load_layout
from engine.errors import ConfigError
from tests.helpers.processes import run_cli

SPLITS = ("train_curated", "train_noisy", "test")


def by_split(plan) -> dict[str, list]:
    out: dict[str, list] = {split: [] for split in SPLITS}
    for clip in plan:
        out[clip.split].append(clip)
    return out


def test_full_size_plan_has_the_published_dimensions():
    splits = by_split(plan_full_size_dataset(1.0, seed=0))
    assert {s: len(c) for s, c in splits.items()} == {"train_curated": 4970, "train_noisy": 19815, "test": 3361}
    curated = np.array([c.seconds for c in splits["train_curated"]])
    noisy = np.array([c.seconds for c in splits["train_noisy"]])
    test = np.array([c.seconds for c in splits["test"]])
    # Curated: 0.3-30 s, long-tailed (median well below the mean), about 10.5 hours.
    assert curated.min() >= 0.3 and curated.max() <= 30.0
    assert np.median(curated) < 0.75 * curated.mean()
    assert curated.sum() / 3600 == pytest.approx(10.5, abs=0.5)
    # Noisy: 1-15 s, mostly exactly 15 s, about 80 hours.
    assert noisy.min() >= 1.0 and noisy.max() <= 15.0
    assert 0.9 < np.mean(noisy == 15.0) < 0.98
    assert noisy.sum() / 3600 == pytest.approx(80.0, abs=2.0)
    # Test lengths drawn like the curated ones.
    assert test.min() >= 0.3 and test.max() <= 30.0 and test.mean() == pytest.approx(curated.mean(), rel=0.1)
    # Labels per clip as listed: 5,752 / 4,970 curated, 24,000 / 19,815 noisy.
    assert np.mean([len(c.listed) for c in splits["train_curated"]]) == pytest.approx(1.157, abs=0.02)
    assert np.mean([len(c.listed) for c in splits["train_noisy"]]) == pytest.approx(1.211, abs=0.02)
    wrong = sum(set(c.listed) != set(c.labels) for c in splits["train_noisy"])
    assert wrong == round(FULL_SIZE_NOISY_ERROR_RATE * 19815)
    for clip in splits["train_noisy"]:
        assert len(set(clip.listed)) == len(clip.listed) >= 1 and len(set(clip.labels)) == len(clip.labels)
    # Every class leads about as many clips as any other (counts differ by at most one).
    primaries = Counter(c.labels[0] for c in splits["train_curated"])
    assert len(primaries) == 80 and max(primaries.values()) - min(primaries.values()) <= 1
    fnames = [c.fname for c in splits["train_curated"] + splits["train_noisy"] + splits["test"]]
    assert len(set(fnames)) == len(fnames)


@pytest.mark.parametrize("size", [0.01, 0.25])
def test_a_fraction_scales_the_counts_and_keeps_the_distributions(size):
    splits = by_split(plan_full_size_dataset(size, seed=1))
    assert {s: len(c) for s, c in splits.items()} == {s: round(size * n) for s, n in FULL_SIZE_CLIPS.items()}
    noisy = np.array([c.seconds for c in splits["train_noisy"]])
    curated = np.array([c.seconds for c in splits["train_curated"]])
    assert noisy.min() >= 1.0 and noisy.max() <= 15.0 and np.mean(noisy == 15.0) > 0.85
    assert curated.min() >= 0.3 and curated.max() <= 30.0
    # Means per clip hold at a fraction, within sampling error.
    tolerance = 3.0 / np.sqrt(len(curated))
    assert np.mean([len(c.listed) for c in splits["train_curated"]]) == pytest.approx(1.157, abs=tolerance)
    assert curated.mean() == pytest.approx(7.6, rel=3 * tolerance)
    wrong = sum(set(c.listed) != set(c.labels) for c in splits["train_noisy"])
    assert wrong == round(FULL_SIZE_NOISY_ERROR_RATE * len(noisy))


def test_the_full_size_plan_is_deterministic_for_a_seed():
    first, again, other = (plan_full_size_dataset(0.02, seed=s) for s in (5, 5, 6))
    assert first == again
    assert [c.fname for c in first] != [c.fname for c in other]


def test_size_is_full_or_a_fraction():
    assert parse_size("full") == 1.0 and parse_size("0.25") == 0.25
    for bad in ("0", "1.5", "half", "-0.1"):
        with pytest.raises(ConfigError, match="size"):
            parse_size(bad)


def test_cli_writes_a_fraction_that_loads_with_the_planned_lengths(tmp_path):
    root = tmp_path / "data"
    run_cli("demo-data", str(root), "--size", "0.001", "--seed", "2")
    plan = by_split(plan_full_size_dataset(0.001, seed=2))
    layout = load_layout(root, require_noisy=True)
    assert (len(layout.curated), len(layout.noisy), len(layout.test)) == (5, 20, 3)
    for split in SPLITS:
        for clip in plan[split]:
            info = sf.info(root / split / clip.fname)
            assert info.frames == int(round(clip.seconds * info.samplerate))
    truth_fnames, truth = parse_label_csv(root / "train_noisy_truth.csv", layout.classes)
    assert truth_fnames == layout.noisy.fnames
    wrong = sum(not (a == b).all() for a, b in zip(truth > 0.5, layout.noisy.Y > 0.5))
    assert wrong == round(FULL_SIZE_NOISY_ERROR_RATE * 20)


def test_cli_refuses_a_bad_size_in_one_line(tmp_path):
    result = run_cli("demo-data", str(tmp_path / "d"), "--size", "2", check=False)
    assert result.returncode != 0
    assert "size" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()
