"""Typed job specifications: dataclasses, validation, conversion and the config hash.

A spec is plain data. It is loaded from a TOML preset under ``configs/`` and
patched with ``key=value`` overrides (``engine.presets``), validated here with
messages that name the bad field, and stored as JSON in the jobs table so the
worker rebuilds exactly what the user asked for.

This module imports only the standard library: the console uses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from engine.errors import ConfigError
from engine.typed import from_dict

# --- sections --------------------------------------------------------------------


#: What a spec without its dataset root is told.
DATA_ROOT_REQUIRED = "the dataset root is required: a folder in the FSDKaggle2019 layout (on the command line, --data DIR)"


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
            raise ConfigError(DATA_ROOT_REQUIRED, field=f"{path}.root")


#: The dataset row's ``fold_rule`` for folds made without groups (``engine.data.folds.make_folds``).
RULE_STRATIFIED = "multilabel-stratified"
#: Prefix of the ``fold_rule`` for group-aware folds: ``group-multilabel-stratified:<column>``.
RULE_GROUPED = "group-multilabel-stratified"


def fold_rule(group_column: str = "") -> str:
    """The rule that makes a dataset's folds, as recorded in its row (``datasets.fold_rule``)."""
    return f"{RULE_GROUPED}:{group_column}" if group_column else RULE_STRATIFIED


def stored_folds_mismatch(dataset: dict | None, *, group_column: str, n_folds: int | None = None,
                          fold_seed: int | None = None, folds_field: str = "train.n_folds") -> ConfigError | None:
    """Why a run with these fold settings may not use ``dataset``'s stored folds (its row), or None.

    Every run on a dataset uses the same folds: the rule (``data.group_column``),
    the count and the seed recorded when they were made. Checked when a job is
    queued (``engine.intake``) and again when it prepares its data. ``n_folds``
    None: the count and seed are not checked.
    """
    if not dataset:
        return None
    if dataset.get("fold_rule") and dataset["fold_rule"] != fold_rule(group_column):
        return ConfigError(f"the dataset's stored folds were made by {dataset['fold_rule']!r}, not "
                           f"{fold_rule(group_column)!r}; every run on a dataset uses the same folds (register the "
                           "folder as a new dataset to change them)", field="data.group_column")
    if n_folds is not None and dataset.get("n_folds") and (dataset["n_folds"], dataset["fold_seed"]) != (n_folds, fold_seed):
        seed_field = folds_field.rsplit(".", 1)[0] + ".fold_seed" if "." in folds_field else "fold_seed"
        return ConfigError(f"the dataset's stored folds are {dataset['n_folds']}-fold with seed {dataset['fold_seed']}, "
                           f"not {n_folds}-fold with seed {fold_seed}; every run on a dataset uses the same folds",
                           field=folds_field if dataset["n_folds"] != n_folds else seed_field)
    return None


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

#: Kind -> spec class, filled by :func:`job_spec` as the classes below are defined. Which kinds can be
#: queued, and how, is the table in ``engine.intake``; this only lets a kind's name find its class.
_JOB_SPECS: dict[str, type] = {}


def job_spec(cls: type) -> type:
    """Class decorator: make a job's spec class known under its ``KIND`` (see :func:`spec_class`)."""
    kind = getattr(cls, "KIND", "")
    if not kind or _JOB_SPECS.get(kind, cls) is not cls:
        raise TypeError(f"{cls.__name__}: a job spec needs a KIND of its own, got {kind!r}")
    _JOB_SPECS[kind] = cls
    return cls


def spec_class(kind: str) -> type:
    """The spec class of a job kind; ConfigError (field ``kind``) for a kind with none."""
    if kind not in _JOB_SPECS:
        raise ConfigError(f"unknown job kind {kind!r} (known: {', '.join(_JOB_SPECS)})", field="kind")
    return _JOB_SPECS[kind]


@job_spec
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


@job_spec
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


#: How an ensemble blends its members: ``auto`` and ``best``, then the blends that combine members
#: (``engine.ensemble`` implements them and reads this list: METHODS, AUTO, BEST, BLEND_METHODS).
ENSEMBLE_METHODS = ("auto", "best", "rank", "rank_minmax", "mean", "logit_mean", "geo_mean")


@job_spec
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


@job_spec
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


@job_spec
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


@job_spec
@dataclass
class ProbeSpec:
    """A diagnostic that checks a worker setup without training (``engine.jobs.probe``)."""

    KIND: typing.ClassVar[str] = "probe"
    #: Seconds to run, reporting progress.
    seconds: float = 0.0
    #: A file to which one line ``<job id> <attempt>`` is appended.
    marker: str = ""
    #: Raise an error with this message (empty = succeed).
    fail: str = ""
    #: Exit the process abruptly with this code, as a crash would (none = exit normally).
    exit_code: Optional[int] = None

    def validate(self, path: str) -> None:
        _nonneg(self.seconds, "seconds")


# --- conversion, validation ---------------------------------------------------------


def to_dict(spec: Any) -> dict:
    """A spec as plain JSON-able data."""
    return dataclasses.asdict(spec)


#: Train settings that say how clips are loaded, not what is trained: each may be "auto" (resolved from
#: the host when the job runs), and they are left out of :func:`spec_hash`.
LOADER_FIELDS = ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor", "decode_workers")


def spec_hash(spec: Any) -> str:
    """A short hash of everything that changes results (the name is left out)."""
    return config_hash(to_dict(spec))


def seed_group_key(config: Any) -> str:
    """The key of a run's seed group: the hash of its config (a spec, or a run's recorded config) without the seed.

    Runs with the same key differ only in ``train.seed``: their spread is seed noise
    (``engine.stats``, the sweep view, the runs table's group columns).
    """
    return config_hash(config if isinstance(config, dict) else to_dict(config), without_seed=True)


def config_hash(config: dict, *, without_seed: bool = False) -> str:
    """:func:`spec_hash` of a spec's dict (a run's recorded config); ``without_seed`` drops ``train.seed`` too."""
    d = json.loads(json.dumps(config))
    d.pop("name", None)
    if without_seed and isinstance(d.get("train"), dict):
        d["train"].pop("seed", None)
    # Where the folds run changes no result, nor how the clips are loaded: each item's random draws come
    # from (seed, epoch, clip), whichever process decodes it.
    d.pop("cluster", None)
    if isinstance(d.get("train"), dict):
        for key in LOADER_FIELDS:
            d["train"].pop(key, None)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


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


def spec_from_json(kind: str, data: dict) -> Any:
    """Rebuild a spec stored in the jobs table."""
    return from_dict(spec_class(kind), data)
