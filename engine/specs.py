"""Typed job specifications: dataclasses, validation, TOML presets, ``--set`` overrides.

A spec is plain data. It is loaded from a TOML preset under ``configs/``,
patched with ``key=value`` overrides (dotted paths such as ``optim.head_lr``),
validated with messages that name the bad field, and stored as JSON in the
jobs table so the worker rebuilds exactly what the user asked for.

This module imports only the standard library: the console uses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from engine.errors import ConfigError

# --- sections --------------------------------------------------------------------


@dataclass
class DataSection:
    """Where the dataset is and which parts of it a job uses."""

    root: str = ""
    #: Folder for decoded-waveform caches; empty = ``<root>/.fsat-cache``.
    cache_dir: str = ""
    #: Column of ``train_curated.csv`` naming each clip's source recording (e.g. ``freesound_id``):
    #: folds then keep every recording in one fold. Empty = folds by label stratification alone.
    group_column: str = ""

    def validate(self, path: str) -> None:
        if not self.root:
            raise ConfigError("the dataset root is required (pass --data DIR or set data.root)",
                              field=f"{path}.root")


@dataclass
class AudioSection:
    """Decoding and cropping (PANNs-aligned: 32 kHz, 10 s crops)."""

    sample_rate: int = 32000
    crop_seconds: float = 10.0
    #: Probability that a clip shorter than the crop is loop-padded instead of zero-padded.
    loop_pad_prob: float = 0.1
    #: Extra crop lengths for multi-scale training (e.g. [5.0, 12.0]); each drawn with multiscale_prob.
    multiscale_crops: list[float] = field(default_factory=list)
    multiscale_prob: float = 0.2

    def validate(self, path: str) -> None:
        _positive(self.sample_rate, f"{path}.sample_rate")
        _positive(self.crop_seconds, f"{path}.crop_seconds")
        _prob(self.loop_pad_prob, f"{path}.loop_pad_prob")
        _prob(self.multiscale_prob, f"{path}.multiscale_prob")
        for i, s in enumerate(self.multiscale_crops):
            _positive(s, f"{path}.multiscale_crops[{i}]")
        if self.multiscale_prob * len(self.multiscale_crops) > 1.0:
            raise ConfigError("multiscale_prob times the number of extra crops must be at most 1",
                              field=f"{path}.multiscale_prob")


@dataclass
class FeaturesSection:
    """Log-mel frontend (PANNs defaults; 128 or 256 mels for diversity models)."""

    n_fft: int = 1024
    hop_length: int = 320
    win_length: int = 1024
    n_mels: int = 64
    fmin: float = 50.0
    fmax: float = 16000.0
    #: Standardised features are clamped to [-clamp, clamp].
    clamp: float = 10.0
    #: Per-mel-bin standardisation with curated statistics; false feeds raw dB log-mels
    #: (what PANNs was pretrained on: zero-shot runs need it).
    standardise: bool = True

    def validate(self, path: str) -> None:
        for name in ("n_fft", "hop_length", "win_length", "n_mels", "clamp"):
            _positive(getattr(self, name), f"{path}.{name}")
        if self.win_length > self.n_fft:
            raise ConfigError("must not exceed n_fft", field=f"{path}.win_length")
        if not 0 <= self.fmin < self.fmax:
            raise ConfigError(f"need 0 <= fmin < fmax, got fmin={self.fmin}, fmax={self.fmax}",
                              field=f"{path}.fmin")


MODEL_ARCHS = ("small", "cnn14", "resnet38")
PRETRAINED_MODES = ("required", "optional", "none")


@dataclass
class ModelSection:
    """Architecture and pretrained weights."""

    arch: str = "small"
    #: PANNs checkpoint path; empty = look in $FSAT_PANNS_DIR for the published file name.
    checkpoint: str = ""
    #: required: fail when the checkpoint is absent; optional: train from scratch then; none: never load.
    pretrained: str = "required"
    dropout: float = 0.5
    init_head_from_audioset: bool = False
    #: Base channel count of the compact ``small`` model.
    width: int = 32

    def validate(self, path: str) -> None:
        _choice(self.arch, MODEL_ARCHS, f"{path}.arch")
        _choice(self.pretrained, PRETRAINED_MODES, f"{path}.pretrained")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"must be in [0, 1), got {self.dropout}", field=f"{path}.dropout")
        _positive(self.width, f"{path}.width")


LOSS_NAMES = ("bce", "gce", "sce", "focal", "lsoft")


@dataclass
class LossSection:
    """Loss function and label handling."""

    name: str = "bce"
    #: Smoothing on positives only: y -> y(1-e) + 0.5e.
    label_smoothing: float = 0.0
    #: Inverse square root of curated class frequency, normalised to mean 1.
    class_weights: bool = False
    gce_q: float = 0.7
    sce_alpha: float = 1.0
    sce_beta: float = 0.5
    focal_gamma: float = 1.5
    #: Lsoft's weight of the given label against the model's own prediction (the competition winner's 0.7).
    lsoft_beta: float = 0.7
    #: Per-clip loss weight of the noisy set (curated clips weigh 1). Above 0, every train_noisy
    #: clip joins each fold's training set (never its validation set); 0 leaves the noisy set out.
    noisy_weight: float = 0.0

    def validate(self, path: str) -> None:
        _choice(self.name, LOSS_NAMES, f"{path}.name")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"must be in [0, 1), got {self.label_smoothing}", field=f"{path}.label_smoothing")
        if not 0 < self.gce_q <= 1:
            raise ConfigError(f"must be in (0, 1], got {self.gce_q}", field=f"{path}.gce_q")
        _nonneg(self.focal_gamma, f"{path}.focal_gamma")
        _prob(self.lsoft_beta, f"{path}.lsoft_beta")
        if not 0 <= self.noisy_weight < float("inf"):
            raise ConfigError(f"must be a finite number >= 0 (0 leaves the noisy set out), got {self.noisy_weight}",
                              field=f"{path}.noisy_weight")


@dataclass
class OptimSection:
    """AdamW with head/encoder parameter groups, warmup then cosine decay."""

    head_lr: float = 2e-4
    encoder_lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    #: Warmup length in epochs; ``warmup_steps`` > 0 overrides it.
    warmup_epochs: float = 1.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float = 5.0
    #: fp16 autocast with a grad scaler on CUDA.
    amp: bool = True
    #: bf16 autocast on CPU.
    cpu_bf16: bool = False

    def validate(self, path: str) -> None:
        _positive(self.head_lr, f"{path}.head_lr")
        _positive(self.encoder_lr, f"{path}.encoder_lr")
        _nonneg(self.weight_decay, f"{path}.weight_decay")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"need two values in [0, 1), got {self.betas}", field=f"{path}.betas")
        _nonneg(self.warmup_epochs, f"{path}.warmup_epochs")
        _nonneg(self.warmup_steps, f"{path}.warmup_steps")
        _prob(self.min_lr_ratio, f"{path}.min_lr_ratio")
        _nonneg(self.grad_clip, f"{path}.grad_clip")


DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainSection:
    """Epochs, batches, folds, early stopping, loader settings, seed and device."""

    #: 0 = no training: the initial (pretrained) model is each fold's checkpoint, scored as is (zero-shot).
    epochs: int = 20
    #: A number, or "auto" for the largest batch that fits (found by trying).
    batch_size: Union[int, str] = 32
    patience: int = 3
    n_folds: int = 5
    #: Which folds to train (default: all).
    folds: list[int] = field(default_factory=list)
    fold_seed: int = 42
    seed: int = 42
    #: Loader settings: a value, or "auto" to choose from the device and the host's cores
    #: (engine.data.dataset.loader_settings); the run's config records what was chosen.
    num_workers: Union[int, str] = "auto"
    pin_memory: Union[bool, str] = "auto"
    persistent_workers: Union[bool, str] = "auto"
    prefetch_factor: Union[int, str] = "auto"
    #: Threads decoding audio into the waveform cache: a number, or "auto" for the host's cores.
    decode_workers: Union[int, str] = "auto"
    device: str = "auto"
    #: Inverse-frequency class-balanced sampling of curated clips, capped at max_oversample.
    balanced_sampler: bool = False
    max_oversample: float = 5.0
    #: Training steps per epoch (0 = one pass over the training fold).
    steps_per_epoch: int = 0

    def validate(self, path: str) -> None:
        _nonneg(self.epochs, f"{path}.epochs")
        if isinstance(self.batch_size, str):
            if self.batch_size != "auto":
                raise ConfigError(f"must be a positive number or \"auto\", got {self.batch_size!r}",
                                  field=f"{path}.batch_size")
        else:
            _positive(self.batch_size, f"{path}.batch_size")
        if self.patience < 1:
            raise ConfigError(f"must be at least 1 (epochs without a better validation score before a fold "
                              f"stops), got {self.patience}", field=f"{path}.patience")
        if self.n_folds < 2:
            raise ConfigError(f"need at least 2 folds, got {self.n_folds}", field=f"{path}.n_folds")
        for i, k in enumerate(self.folds):
            if not 0 <= k < self.n_folds:
                raise ConfigError(f"fold {k} is outside 0..{self.n_folds - 1}", field=f"{path}.folds[{i}]")
        for name, check in (("num_workers", _nonneg), ("prefetch_factor", _positive), ("decode_workers", _positive)):
            value = getattr(self, name)
            if isinstance(value, str):
                _auto(value, f"{path}.{name}", "a whole number")
            else:
                check(value, f"{path}.{name}")
        for name in ("pin_memory", "persistent_workers"):
            value = getattr(self, name)
            if isinstance(value, str):
                _auto(value, f"{path}.{name}", "true, false")
        _choice(self.device, DEVICES, f"{path}.device")
        if self.max_oversample < 1:
            raise ConfigError(f"must be at least 1, got {self.max_oversample}", field=f"{path}.max_oversample")
        _nonneg(self.steps_per_epoch, f"{path}.steps_per_epoch")
        _seed(self.seed, f"{path}.seed")
        _seed(self.fold_seed, f"{path}.fold_seed")

    def fold_list(self) -> list[int]:
        """The folds to train, in order."""
        return list(self.folds) if self.folds else list(range(self.n_folds))


AUGMENT_BACKENDS = ("auto", "device", "cpu")


@dataclass
class AugmentSection:
    """Augmentations, each with its probability (0 = off) and range."""

    gain_db: float = 6.0
    gain_p: float = 0.0
    noise_snr_db: list[float] = field(default_factory=lambda: [20.0, 30.0])
    noise_p: float = 0.0
    noise_colors: list[str] = field(default_factory=lambda: ["white", "pink"])
    shift_s: float = 0.5
    shift_p: float = 0.0
    pitch_semitones: float = 2.0
    pitch_p: float = 0.0
    stretch: list[float] = field(default_factory=lambda: [0.9, 1.1])
    stretch_p: float = 0.0
    specaug_p: float = 0.0
    freq_masks: int = 2
    freq_width: int = 20
    time_masks: int = 2
    time_frac: float = 0.1
    mixup_p: float = 0.0
    mixup_alpha: float = 0.4
    #: Where the waveform augmentation runs: "device" (batched on the training device after the
    #: loader), "cpu" (per clip with audiomentations in the loader), or "auto": device on CUDA,
    #: cpu when training on a CPU, where the per-clip path measured faster (benchmarks/README.md).
    backend: str = "auto"

    def validate(self, path: str) -> None:
        _choice(self.backend, AUGMENT_BACKENDS, f"{path}.backend")
        for name in ("gain_p", "noise_p", "shift_p", "pitch_p", "stretch_p", "specaug_p", "mixup_p"):
            _prob(getattr(self, name), f"{path}.{name}")
        if len(self.noise_snr_db) != 2 or self.noise_snr_db[0] > self.noise_snr_db[1]:
            raise ConfigError(f"need [low, high], got {self.noise_snr_db}", field=f"{path}.noise_snr_db")
        if len(self.stretch) != 2 or not 0 < self.stretch[0] <= self.stretch[1]:
            raise ConfigError(f"need [low, high] with 0 < low <= high, got {self.stretch}",
                              field=f"{path}.stretch")
        for i, c in enumerate(self.noise_colors):
            _choice(c, ("white", "pink"), f"{path}.noise_colors[{i}]")
        _prob(self.time_frac, f"{path}.time_frac")
        _positive(self.mixup_alpha, f"{path}.mixup_alpha")

    def any_wave(self) -> bool:
        """True when some waveform augmentation is on."""
        return any(p > 0 for p in (self.gain_p, self.noise_p, self.shift_p, self.pitch_p, self.stretch_p))


@dataclass
class ClusterSection:
    """What each fold asks of a Ray cluster (``engine.worker --executor ray``); ignored by the local executor.

    None of it changes results, so it is left out of the spec's hash.
    """

    #: CPUs reserved per fold task.
    cpus_per_fold: float = 1.0
    #: GPUs per fold task: a number, or "auto" = 1 when the cluster has GPUs, else 0.
    gpus_per_fold: Union[float, str] = "auto"
    #: How often a fold whose process died (a crash, a lost node) is started again; set here so that
    #: Ray's own default (3) never applies unseen. An error raised by the fold is never retried.
    max_retries: int = 1
    #: Seconds with folds waiting and none running before the job fails saying what the cluster lacks.
    start_timeout: float = 300.0

    def validate(self, path: str) -> None:
        _positive(self.cpus_per_fold, f"{path}.cpus_per_fold")
        if isinstance(self.gpus_per_fold, str):
            if self.gpus_per_fold != "auto":
                raise ConfigError(f"must be a number of GPUs or \"auto\", got {self.gpus_per_fold!r}",
                                  field=f"{path}.gpus_per_fold")
        else:
            _nonneg(self.gpus_per_fold, f"{path}.gpus_per_fold")
        _nonneg(self.max_retries, f"{path}.max_retries")
        _positive(self.start_timeout, f"{path}.start_timeout")


# --- job specs -------------------------------------------------------------------


@dataclass
class TrainSpec:
    """A 5-fold cross-validated training run."""

    KIND: typing.ClassVar[str] = "train"
    name: str = ""
    data: DataSection = field(default_factory=DataSection)
    audio: AudioSection = field(default_factory=AudioSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    cluster: ClusterSection = field(default_factory=ClusterSection)


@dataclass
class InferSection:
    """Test-time augmentation and batching for inference."""

    #: K time crops per clip, each of the training crop length, spaced uniformly.
    tta_crops: int = 5
    #: Crops for clips longer than ``long_seconds``.
    tta_crops_long: int = 10
    long_seconds: float = 30.0
    batch_size: int = 32
    num_workers: int = 0
    device: str = "auto"

    def validate(self, path: str) -> None:
        _positive(self.tta_crops, f"{path}.tta_crops")
        _positive(self.tta_crops_long, f"{path}.tta_crops_long")
        _positive(self.long_seconds, f"{path}.long_seconds")
        _positive(self.batch_size, f"{path}.batch_size")
        _nonneg(self.num_workers, f"{path}.num_workers")
        _choice(self.device, DEVICES, f"{path}.device")


INFER_SPLITS = ("oof", "test")


@dataclass
class InferSpec:
    """Inference of a trained run with TTA and fold averaging, on curated out-of-fold clips and/or the test set."""

    KIND: typing.ClassVar[str] = "infer"
    name: str = ""
    #: The trained run whose fold checkpoints are used.
    run_id: str = ""
    splits: list[str] = field(default_factory=lambda: ["oof", "test"])
    write_submission: bool = True
    infer: InferSection = field(default_factory=InferSection)
    cluster: ClusterSection = field(default_factory=ClusterSection)

    def validate(self, path: str) -> None:
        if not self.run_id:
            raise ConfigError("the trained run to infer with is required (e.g. run_id=train-0003)", field="run_id")
        if not self.splits:
            raise ConfigError("name at least one of oof, test", field="splits")
        for i, split in enumerate(self.splits):
            _choice(split, INFER_SPLITS, f"splits[{i}]")


#: Kept equal to ``engine.ensemble.METHODS`` (this module stays stdlib-only; tests check the two agree).
ENSEMBLE_METHODS = ("auto", "best", "rank", "rank_minmax", "mean", "logit_mean", "geo_mean")


@dataclass
class EnsembleSpec:
    """A blend of runs that have out-of-fold (and test) predictions."""

    KIND: typing.ClassVar[str] = "ensemble"
    name: str = ""
    members: list[str] = field(default_factory=list)
    #: Member weights; empty = proportional to each member's CV LWLRAP.
    weights: list[float] = field(default_factory=list)
    #: auto = every method and the best single member, scored by cross-fitted OOF LWLRAP; the highest wins.
    #: rank = per-class rank average mapped onto the probability blend's OOF distribution (quantile mapping);
    #: rank_minmax = the plan's min-max and per-class temperature; mean, logit_mean, geo_mean; best.
    method: str = "auto"
    #: Rank methods: map averaged ranks back to probabilities (false: the blend is the averaged ranks).
    calibrate: bool = True
    #: Greedy forward selection (with replacement) of members by out-of-fold LWLRAP.
    greedy: bool = False
    greedy_steps: int = 20
    write_submission: bool = True

    def validate(self, path: str) -> None:
        if not self.members:
            raise ConfigError("name the member runs (e.g. members=[\"infer-0004\", \"infer-0006\"])",
                              field="members")
        if self.weights:
            if len(self.weights) != len(self.members):
                raise ConfigError(f"{len(self.weights)} weights for {len(self.members)} members", field="weights")
            for i, w in enumerate(self.weights):
                _nonneg(w, f"weights[{i}]")
            if not sum(self.weights) > 0:
                raise ConfigError("at least one weight must be positive", field="weights")
        _choice(self.method, ENSEMBLE_METHODS, "method")
        _positive(self.greedy_steps, "greedy_steps")
        if self.greedy and self.weights:
            raise ConfigError("give either weights or greedy selection, not both", field="greedy")
        if self.greedy and self.method == "best":
            raise ConfigError("greedy selection blends members; choose a blend method or auto", field="method")


BASELINE_VARIANTS = ("embedding", "mel_stats")


@dataclass
class BaselineSpec:
    """Per-clip features, then a one-vs-rest logistic regression per fold.

    ``variant = "embedding"``: CNN14 embeddings of a centre crop (needs the
    PANNs checkpoint or a trained run's encoder). ``"mel_stats"``: mean, std
    and max of each log-mel bin over the whole clip (``features`` section;
    no pretrained weights, seconds on a CPU).
    """

    KIND: typing.ClassVar[str] = "baseline"
    name: str = ""
    variant: str = "embedding"
    data: DataSection = field(default_factory=DataSection)
    audio: AudioSection = field(default_factory=AudioSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    #: PANNs CNN14 checkpoint; empty = $FSAT_PANNS_DIR/Cnn14_mAP=0.431.pth.
    checkpoint: str = ""
    #: When no checkpoint is found: a trained cnn14 run whose fold-0 encoder embeds the clips.
    encoder_run_id: str = ""
    #: Inverse regularisation strength of the logistic regression (on standardised embeddings).
    C: float = 2.0
    n_folds: int = 5
    fold_seed: int = 42
    batch_size: int = 16
    device: str = "auto"
    write_submission: bool = True

    def validate(self, path: str) -> None:
        _positive(self.C, "C")
        _choice(self.variant, BASELINE_VARIANTS, "variant")
        if self.n_folds < 2:
            raise ConfigError(f"need at least 2 folds, got {self.n_folds}", field="n_folds")
        _positive(self.batch_size, "batch_size")
        _choice(self.device, DEVICES, "device")
        _seed(self.fold_seed, "fold_seed")


TEACHER_PREDICTIONS = ("per_fold", "fold_mean")
THRESHOLD_MODES = ("global", "per_class")
#: The losses a curriculum stage may name: the training losses (empty = the teacher's loss).
STAGE_LOSSES = LOSS_NAMES


@dataclass
class TeacherSection:
    """How the teacher predicts the noisy set."""

    #: per_fold: student fold k uses teacher fold k only (leak-free). fold_mean: the mean of every
    #: teacher fold model (the plan's literal reading); its CV is optimistic, because four of the five
    #: models trained on fold k's validation clips and reach the student through the pseudo-labels.
    predictions: str = "per_fold"
    #: Time crops per noisy clip (1 = the centre crop); logits are averaged over crops.
    tta_crops: int = 1
    batch_size: int = 32

    def validate(self, path: str) -> None:
        _choice(self.predictions, TEACHER_PREDICTIONS, f"{path}.predictions")
        _positive(self.tta_crops, f"{path}.tta_crops")
        _positive(self.batch_size, f"{path}.batch_size")


@dataclass
class FilterSection:
    """Which weak noisy labels survive, which pseudo-labels are added (see engine.curriculum)."""

    #: Keep a weak label when the teacher gives its class at least this.
    keep_threshold: float = 0.8
    #: Add a label the weak label lacks when the teacher gives it at least this.
    pseudo_threshold: float = 0.95
    #: At most this many clips per class, the most confident first (0 = no cap).
    max_per_class: int = 0
    #: global: the thresholds as given; per_class: the keep threshold is scaled by the teacher's highest
    #: probability for the class on any noisy clip (noisy-domain probabilities are not calibrated).
    threshold_mode: str = "global"

    def validate(self, path: str) -> None:
        _prob(self.keep_threshold, f"{path}.keep_threshold")
        _prob(self.pseudo_threshold, f"{path}.pseudo_threshold")
        if self.pseudo_threshold < self.keep_threshold:
            raise ConfigError(f"must be at least keep_threshold ({self.keep_threshold}), got "
                              f"{self.pseudo_threshold}: adding a label the weak label lacks needs more "
                              "confidence than keeping one", field=f"{path}.pseudo_threshold")
        _nonneg(self.max_per_class, f"{path}.max_per_class")
        _choice(self.threshold_mode, THRESHOLD_MODES, f"{path}.threshold_mode")


@dataclass
class StageSection:
    """One curriculum stage: epochs on curated + filtered noisy clips at a noisy weight."""

    name: str = ""
    epochs: int = 4
    #: Multiplies every kept noisy clip's weight (curated clips weigh 1).
    noisy_weight: float = 0.5
    #: The stage's loss; empty = the teacher's.
    loss: str = ""
    #: Learning rates; 0 = the teacher's.
    head_lr: float = 0.0
    encoder_lr: float = 0.0
    #: How many of the encoder's last blocks train (-1 = all; 0 = the head only).
    trainable_blocks: int = -1

    def validate(self, path: str) -> None:
        _positive(self.epochs, f"{path}.epochs")
        if not 0 <= self.noisy_weight < float("inf"):
            raise ConfigError(f"must be a finite number >= 0, got {self.noisy_weight}", field=f"{path}.noisy_weight")
        if self.loss:
            _choice(self.loss, STAGE_LOSSES, f"{path}.loss")
        _nonneg(self.head_lr, f"{path}.head_lr")
        _nonneg(self.encoder_lr, f"{path}.encoder_lr")
        if self.trainable_blocks < -1:
            raise ConfigError(f"must be -1 (all) or a number of blocks >= 0, got {self.trainable_blocks}",
                              field=f"{path}.trainable_blocks")


def _plan_stages() -> list[StageSection]:
    return [StageSection(name="A", epochs=4, noisy_weight=0.5), StageSection(name="B", epochs=8, noisy_weight=1.0)]


@dataclass
class CurriculumSpec:
    """A student run from a finished train run: filtered noisy labels, staged fine-tuning per teacher fold."""

    KIND: typing.ClassVar[str] = "curriculum"
    name: str = ""
    #: The finished train run whose fold checkpoints teach and start each student fold.
    teacher_run_id: str = ""
    #: Optional: the dataset root the teacher must have trained on (empty = the teacher's).
    data_root: str = ""
    teacher: TeacherSection = field(default_factory=TeacherSection)
    filter: FilterSection = field(default_factory=FilterSection)
    stages: list[StageSection] = field(default_factory=_plan_stages)
    #: A stage whose best validation LWLRAP falls more than this below the teacher's fold score is
    #: run again from its start with the next fallback loss.
    swap_tolerance: float = 0.01
    fallback_losses: list[str] = field(default_factory=lambda: ["lsoft", "gce"])
    #: Epochs without a better validation LWLRAP before a fold stops, counted across stages.
    patience: int = 3
    #: Which of the teacher's folds to train (default: all of them).
    folds: list[int] = field(default_factory=list)
    #: 0 = the teacher's batch size.
    batch_size: int = 0
    device: str = "auto"
    #: What each student fold asks of a Ray cluster (the teacher's own section is not used).
    cluster: ClusterSection = field(default_factory=ClusterSection)

    def validate(self, path: str) -> None:
        if not self.teacher_run_id:
            raise ConfigError("the teacher run is required (a finished train run, e.g. teacher_run_id=train-0003)",
                              field="teacher_run_id")
        if not self.stages:
            raise ConfigError("the stage list is empty: give at least one stage (e.g. the plan's A and B)",
                              field="stages")
        for i, stage in enumerate(self.stages):
            stage.validate(f"stages[{i}]")
        _nonneg(self.swap_tolerance, "swap_tolerance")
        for i, name in enumerate(self.fallback_losses):
            _choice(name, LOSS_NAMES, f"fallback_losses[{i}]")
        if self.patience < 1:
            raise ConfigError(f"must be at least 1, got {self.patience}", field="patience")
        for i, k in enumerate(self.folds):
            _nonneg(k, f"folds[{i}]")
        _nonneg(self.batch_size, "batch_size")
        _choice(self.device, DEVICES, "device")


SPEC_TYPES: dict[str, type] = {"train": TrainSpec, "infer": InferSpec, "ensemble": EnsembleSpec,
                               "baseline": BaselineSpec, "curriculum": CurriculumSpec}


def register_spec(cls: type) -> type:
    """Make a spec class known under its ``KIND`` (used by job modules that add kinds)."""
    SPEC_TYPES[cls.KIND] = cls
    return cls


# --- conversion, validation ---------------------------------------------------------


def to_dict(spec: Any) -> dict:
    """A spec as plain JSON-able data."""
    return dataclasses.asdict(spec)


#: Train settings that say how clips are loaded, not what is trained: each may be "auto" (resolved from
#: the host when the job runs), and they are left out of :func:`spec_hash`.
LOADER_FIELDS = ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor", "decode_workers")


def spec_hash(spec: Any) -> str:
    """A short hash of everything that changes results (the name is left out)."""
    d = to_dict(spec)
    d.pop("name", None)
    # Where the folds run changes no result, nor how the clips are loaded: each item's random draws come
    # from (seed, epoch, clip), whichever process decodes it.
    d.pop("cluster", None)
    if isinstance(d.get("train"), dict):
        for key in LOADER_FIELDS:
            d["train"].pop(key, None)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def from_dict(cls: type, data: dict, *, path: str = "", source: object | None = None) -> Any:
    """Build a (nested) spec dataclass from plain data, checking names and types.

    Unknown keys and wrong types raise ConfigError naming the dotted field.
    Section ``validate`` methods run afterwards.
    """
    obj = _build(cls, data, path, source)
    validate(obj, source=source)
    return obj


def validate(spec: Any, *, source: object | None = None, path: str = "") -> None:
    """Run every section's range checks; ConfigError names the field."""
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        sub = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value):
            validate(value, source=source, path=sub)
    if hasattr(spec, "validate"):
        try:
            spec.validate(path or spec.__class__.__name__)
        except ConfigError as err:
            if source is not None and err.file is None:
                raise ConfigError(err.reason, field=err.field, file=source) from None
            raise


def _build(cls: type, data: Any, path: str, source: object | None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"expected a table of settings, got {type(data).__name__}",
                          field=path or None, file=source)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else key
        if key == "kind" and not path:
            kind = getattr(cls, "KIND", None)
            if value != kind:
                raise ConfigError(f"this preset is for {value!r} jobs, not {kind!r}", field="kind", file=source)
            continue
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown setting (known here: {known})", field=sub, file=source)
        kwargs[key] = _coerce(hints[key], value, sub, source)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str, source: object | None) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, source)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for option in get_args(tp):
            try:
                return _coerce(option, value, path, source)
            except ConfigError as err:
                errors.append(str(err))
        names = " or ".join(_type_name(a) for a in get_args(tp))
        raise ConfigError(f"expected {names}, got {value!r}", field=path, file=source)
    if origin is list:
        (item_type,) = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list of {_type_name(item_type)}, got {value!r}", field=path, file=source)
        return [_coerce(item_type, v, f"{path}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"expected true or false, got {value!r}", field=path, file=source)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"expected a whole number, got {value!r}", field=path, file=source)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"expected a number, got {value!r}", field=path, file=source)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"expected a string, got {value!r}", field=path, file=source)
    return value


def _type_name(tp: Any) -> str:
    return {int: "a whole number", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _positive(v: float, path: str) -> None:
    if not v > 0:
        raise ConfigError(f"must be positive, got {v}", field=path)


def _nonneg(v: float, path: str) -> None:
    if not v >= 0:
        raise ConfigError(f"must not be negative, got {v}", field=path)


#: numpy's and torch's seeds are 32-bit: a larger or negative seed fails in the job, so it is refused here.
SEED_MAX = 2**32 - 1


def _seed(v: int, path: str) -> None:
    if not 0 <= v <= SEED_MAX:
        raise ConfigError(f"a seed is a whole number in 0..{SEED_MAX}, got {v}", field=path)


def _prob(v: float, path: str) -> None:
    if not 0 <= v <= 1:
        raise ConfigError(f"must be a probability in [0, 1], got {v}", field=path)


def _auto(v: str, path: str, alternative: str) -> None:
    if v != "auto":
        raise ConfigError(f"must be {alternative} or \"auto\", got {v!r}", field=path)


def _choice(v: str, options: tuple[str, ...], path: str) -> None:
    if v not in options:
        raise ConfigError(f"{v!r} is not one of {', '.join(options)}", field=path)


# --- presets and overrides ------------------------------------------------------------


def configs_dirs() -> list[Path]:
    """Where presets are looked up: $FSAT_CONFIGS, ./configs, then the project's configs/."""
    dirs = []
    if os.environ.get("FSAT_CONFIGS"):
        dirs.append(Path(os.environ["FSAT_CONFIGS"]))
    dirs.append(Path.cwd() / "configs")
    dirs.append(Path(__file__).resolve().parent.parent / "configs")
    seen, out = set(), []
    for d in dirs:
        key = d.resolve() if d.exists() else d
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def list_presets(kind: str | None = None) -> dict[str, Path]:
    """Preset name -> file, first directory wins; only presets of ``kind`` when given."""
    found: dict[str, Path] = {}
    for d in configs_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.toml")):
                found.setdefault(p.stem, p)
    if kind is not None:
        found = {name: p for name, p in found.items() if preset_kind(p) == kind}
    return found


def preset_kind(path: Path | str) -> str:
    """The job kind a preset file is for: its ``kind`` key, following ``extends``; default ``train``."""
    try:
        return str(load_preset_file(path).get("kind", "train"))
    except ConfigError:
        return "train"


def read_toml(path: Path | str) -> dict:
    """Read a TOML file; a syntax error names the file and line."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("no such config file", file=path) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"not valid TOML: {err}", file=path) from None


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_preset_file(path: Path | str, _seen: tuple[str, ...] = ()) -> dict:
    """Read a preset; ``extends = "NAME"`` first loads preset NAME and lays this file over it."""
    path = Path(path)
    data = read_toml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"expected a preset name, got {parent!r}", field="extends", file=path)
    if parent in _seen:
        raise ConfigError(f"presets extend each other in a loop: {' -> '.join(_seen + (parent,))}",
                          field="extends", file=path)
    return _deep_merge(load_preset_file(preset_path(parent), _seen + (parent,)), data)


def preset_path(name: str) -> Path:
    """The file of a named preset; ConfigError lists the known names."""
    presets = list_presets()
    if name not in presets:
        known = ", ".join(sorted(presets)) or "none found"
        raise ConfigError(f"unknown preset {name!r} (known: {known})", field="preset")
    return presets[name]


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value``; the value is read as TOML (numbers, booleans, lists) or else a string."""
    if "=" not in text:
        raise ConfigError(f"expected key=value, got {text!r}", field="--set")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"bad key in {text!r}", field="--set")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of ``data`` with ``key=value`` overrides applied at their dotted paths."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{part!r} is a value, not a section", field=".".join(parts))
            node = nxt
        node[parts[-1]] = value
    return out


def resolve_spec(kind: str, *, preset: str | None = None, config: Path | str | None = None,
                 overrides: list[str] | None = None, data_root: str | None = None) -> Any:
    """Build a validated spec of ``kind`` from a preset or config file plus overrides."""
    if kind not in SPEC_TYPES:
        raise ConfigError(f"unknown job kind {kind!r} (known: {', '.join(SPEC_TYPES)})", field="kind")
    cls = SPEC_TYPES[kind]
    source: Path | None = None
    data: dict = {}
    if preset and config:
        raise ConfigError("give either a preset or a config file, not both", field="preset")
    if preset:
        source = preset_path(preset)
    elif config:
        source = Path(config)
    if source is not None:
        data = load_preset_file(source)
    if data_root:
        data = apply_overrides(data, [f"data.root={json.dumps(str(Path(data_root).resolve()))}"])
    data = apply_overrides(data, overrides or [])
    try:
        return from_dict(cls, data, source=source)
    except ConfigError as err:
        blamed = override_for(err.field, overrides or [])
        if blamed is None:
            raise
        # The value came from the command line, not from the preset file.
        raise ConfigError(err.reason, field=err.field, file=f"--set {blamed}") from None


def override_for(field: str | None, overrides: list[str]) -> str | None:
    """The last ``key=value`` override that set ``field`` (or a section holding it), else None."""
    if not field:
        return None
    field = re.sub(r"\[\d+\]", "", field)
    for text in reversed(overrides):
        key = text.split("=", 1)[0].strip()
        if field == key or field.startswith(key + ".") or key.startswith(field + "."):
            return text
    return None


def spec_from_json(kind: str, data: dict) -> Any:
    """Rebuild a spec stored in the jobs table."""
    if kind not in SPEC_TYPES:
        raise ConfigError(f"unknown job kind {kind!r}", field="kind")
    return from_dict(SPEC_TYPES[kind], data)
