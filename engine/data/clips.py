"""The clips a fold trains on: the curated clips, then noisy (or other extra) clips with their loss weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.data.dataset import ConcatCache
from engine.errors import ConfigError


@dataclass
class TrainingClips:
    """The clips a fold may train on: the curated cache, then (optionally) the noisy one.

    Clip numbers ``0 .. n_curated - 1`` are the curated clips in CSV order (the
    ones folds split); the noisy clips follow. ``weights`` is the per-clip loss
    weight (curated 1, noisy ``loss.noisy_weight``), None without noisy clips.
    """

    cache: object
    Y: np.ndarray
    n_curated: int
    weights: np.ndarray | None = None
    #: Which of the clips after the curated ones train (clip numbers); None: all of them.
    extra_rows: np.ndarray | None = None

    @classmethod
    def build(cls, curated_cache, curated_Y: np.ndarray, noisy_cache=None, noisy_Y: np.ndarray | None = None,
              noisy_weight: float = 0.0) -> TrainingClips:
        """Curated clips alone, or curated followed by noisy clips weighted ``noisy_weight``."""
        n = len(curated_Y)
        if noisy_cache is None or noisy_weight <= 0:
            return cls(cache=curated_cache, Y=np.asarray(curated_Y, dtype=np.float32), n_curated=n)
        noisy_Y = np.asarray(noisy_Y, dtype=np.float32)
        weights = np.concatenate([np.ones(n, dtype=np.float32),
                                  np.full(len(noisy_Y), noisy_weight, dtype=np.float32)])
        return cls(cache=ConcatCache([curated_cache, noisy_cache]),
                   Y=np.concatenate([np.asarray(curated_Y, dtype=np.float32), noisy_Y]), n_curated=n,
                   weights=weights)

    @classmethod
    def with_extra(cls, curated_cache, curated_Y: np.ndarray, split_cache, split_fnames: list[str],
                   extra: "ExtraClips") -> TrainingClips:
        """Curated clips followed by the chosen clips of another split, with the labels and weights given.

        Raises ConfigError naming the first fname the split does not hold, or
        labels and weights that do not fit.
        """
        n, n_classes = len(curated_Y), np.asarray(curated_Y).shape[1]
        row_of = {f: i for i, f in enumerate(split_fnames)}
        unknown = [f for f in extra.fnames if f not in row_of]
        if unknown:
            raise ConfigError(f"extra clip {unknown[0]!r} is not in the {extra.split} set "
                              f"({len(unknown)} unknown)", field="extra.fnames")
        labels = np.asarray(extra.labels, dtype=np.float32)
        weights = np.asarray(extra.weights, dtype=np.float32)
        if labels.shape != (len(extra.fnames), n_classes) or weights.shape != (len(extra.fnames),):
            raise ConfigError(f"extra clips: labels {labels.shape} and weights {weights.shape} do not fit "
                              f"{len(extra.fnames)} clips of {n_classes} classes", field="extra")
        rows = np.array([row_of[f] for f in extra.fnames], dtype=np.int64)
        Y_split = np.zeros((len(split_fnames), n_classes), dtype=np.float32)
        w_split = np.zeros(len(split_fnames), dtype=np.float32)
        Y_split[rows], w_split[rows] = labels, weights
        return cls(cache=ConcatCache([curated_cache, split_cache]),
                   Y=np.concatenate([np.asarray(curated_Y, dtype=np.float32), Y_split]), n_curated=n,
                   weights=np.concatenate([np.ones(n, dtype=np.float32), w_split]), extra_rows=n + rows)

    @property
    def n_noisy(self) -> int:
        """Clips after the curated ones that train (noisy or other extra clips)."""
        return len(self.Y) - self.n_curated if self.extra_rows is None else len(self.extra_rows)

    def train_indices(self, curated_train_idx: np.ndarray) -> np.ndarray:
        """A fold's training clips: its curated training clips, then every extra (noisy) clip."""
        extra = (np.arange(self.n_curated, len(self.Y), dtype=np.int64) if self.extra_rows is None
                 else np.asarray(self.extra_rows, dtype=np.int64))
        return np.concatenate([np.asarray(curated_train_idx, dtype=np.int64), extra])


@dataclass
class ExtraClips:
    """Clips of another split added to every fold's training set with their own labels and loss weights.

    ``split`` is ``"noisy"`` (the dataset's ``train_noisy.csv``); ``fnames``
    picks its clips, ``labels`` ``[n, classes]`` and ``weights`` ``[n]`` replace
    their CSV labels and weight them in the loss. Never validated on.
    """

    split: str
    fnames: list[str]
    labels: np.ndarray
    weights: np.ndarray


def require_noisy(layout, root) -> None:
    """ConfigError unless the dataset has a noisy set (``loss.noisy_weight > 0`` trains on it)."""
    if layout.noisy is None:
        raise ConfigError(f"trains on the noisy set, but {root} has no train_noisy.csv with its audio "
                          "(train_noisy/ or train_noisy.zip); add them or set loss.noisy_weight = 0",
                          field="loss.noisy_weight")
