"""PANNs CNN14 and ResNet38 (Kong et al. 2020), and the fine-tuning wrappers built on them.

``Cnn14`` and ``ResNet38`` have the layers, constructor arguments and
state-dict key names of the models in PANNs' ``pytorch/models.py``, so the
published AudioSet checkpoints (``Cnn14_mAP=0.431.pth``,
``ResNet38_mAP=0.434.pth``) load strictly. Their ``forward(waveform)``
reproduces PANNs: torchlibrosa STFT and log-mel, ``bn0`` over mel bins,
SpecAugment and mixup in training mode, the conv stack, mean over frequency,
max + mean over time, ``fc1`` + ReLU, sigmoid AudioSet classifier.

For fine-tuning on our own log-mel the same model is split:

- ``forward_features(logmel [B, 1, frames, mels]) -> [B, 2048, frames // 32]``:
  ``bn0``, conv stack, mean over frequency (no SpecAugment here: the training
  pipeline has its own augmentation).
- ``embed(logmel) -> [B, 2048]``: PANNs' clip embedding (max + mean over time,
  ``fc1``, ReLU).

Both architectures halve the time axis five times with floor division, so an
input needs at least 32 frames (0.31 s at hop 320 / 32 kHz) to keep one
frame. That is the structural minimum, not a useful one: a clip of a few
frames gives the pretrained conv stack almost no context. ``PannsTagger``
therefore repeats inputs shorter than about one second (``MIN_SECONDS``; 101
frames at hop 320 / 32 kHz) along time up to that length.

``PannsTagger`` is the fine-tuning model (encoder + ``AttentionHead``), and
``ZeroShotTagger`` scores the 80 classes with the untouched AudioSet
classifier, which needs no training.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchlibrosa.augmentation import SpecAugmentation
from torchlibrosa.stft import LogmelFilterBank, Spectrogram

from engine.errors import ConfigError
from engine.models.checkpoint import (
    PANNS_DIR_ENV, PUBLISHED_CHECKPOINTS, load_panns_checkpoint, resolve_checkpoint,
)
from engine.models.heads import AUDIOSET_INDEX_80, AttentionHead, init_from_audioset

__all__ = [
    "MIN_SECONDS", "PANNS_MELS", "Cnn14", "ResNet38", "PannsTagger", "ZeroShotTagger", "build_panns",
    "repeat_pad_frames",
]

#: Mel bins the published checkpoints were trained with.
PANNS_MELS = 64
EMBEDDING_DIM = 2048
#: Shortest input the fine-tuning tagger passes to the encoder; shorter clips are repeated up to it.
MIN_SECONDS = 1.0


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    # Built without PyTorch's default init: PANNs' Xavier init replaces it
    # anyway, and initialising 80 M weights twice is what makes building slow.
    return torch.nn.utils.skip_init(nn.Conv2d, in_channels, out_channels, kernel_size=kernel_size,
                                    padding=kernel_size // 2, bias=False)


def _linear(in_features: int, out_features: int) -> nn.Linear:
    return torch.nn.utils.skip_init(nn.Linear, in_features, out_features, bias=True)


def _init_layer(layer: nn.Module) -> None:
    nn.init.xavier_uniform_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


def _init_bn(bn: nn.Module, weight: float = 1.0) -> None:
    nn.init.constant_(bn.weight, weight)
    nn.init.zeros_(bn.bias)


def _mixup_pairs(x: Tensor, mixup_lambda: Tensor) -> Tensor:
    """PANNs' mixup: clip ``2i`` and ``2i+1`` mixed with weights ``lambda[2i]``, ``lambda[2i+1]``.

    The batch halves; the caller mixes the targets with the same weights.
    """
    shape = (-1,) + (1,) * (x.dim() - 1)
    lam = mixup_lambda.to(x).view(shape)
    return x[0::2] * lam[0::2] + x[1::2] * lam[1::2]


def repeat_pad_frames(logmel: Tensor, min_frames: int) -> Tensor:
    """Tile ``[B, 1, frames, mels]`` along time (then trim) to at least ``min_frames`` frames.

    Repeating the clip keeps the statistics of a short sound, where zero or
    constant padding would add silence the model never saw in pretraining.
    """
    frames = logmel.shape[2]
    if frames >= min_frames:
        return logmel
    if frames == 0:
        raise ValueError("cannot pad a log-mel with zero frames; the clip is empty")
    repeats = math.ceil(min_frames / frames)
    return logmel.repeat(1, 1, repeats, 1)[:, :, :min_frames]


class ConvBlock(nn.Module):
    """Two 3x3 conv + BatchNorm + ReLU layers, then 2-D pooling (PANNs' ``ConvBlock``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 3)
        self.conv2 = _conv(out_channels, out_channels, 3)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        for conv in (self.conv1, self.conv2):
            _init_layer(conv)
        for bn in (self.bn1, self.bn2):
            _init_bn(bn)

    def forward(self, x: Tensor, pool_size: tuple[int, int] = (2, 2), pool_type: str = "avg") -> Tensor:
        """Convolve, then pool with ``pool_type`` in ``avg``, ``max`` or ``avg+max``."""
        x = F.relu_(self.bn1(self.conv1(x)))
        x = F.relu_(self.bn2(self.conv2(x)))
        if pool_size == (1, 1):
            return x
        if pool_type == "avg":
            return F.avg_pool2d(x, kernel_size=pool_size)
        if pool_type == "max":
            return F.max_pool2d(x, kernel_size=pool_size)
        if pool_type == "avg+max":
            return F.avg_pool2d(x, kernel_size=pool_size) + F.max_pool2d(x, kernel_size=pool_size)
        raise ValueError(f"unknown pool_type {pool_type!r} (avg, max, avg+max)")


class _PannsBase(nn.Module):
    """Shared front and back of PANNs' log-mel CNNs; subclasses define ``_conv_stack``."""

    panns_arch = "PANNs"
    #: Time (and frequency) halvings by floor division inside the conv stack.
    time_downsampling = 32

    def __init__(self, sample_rate: int, window_size: int, hop_size: int, mel_bins: int,
                 fmin: float, fmax: float, classes_num: int) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.window_size = window_size
        self.hop_size = hop_size
        self.mel_bins = mel_bins
        self.fmin = fmin
        self.fmax = fmax
        self.classes_num = classes_num
        # PANNs' extractor settings: Hann, centred reflect-padded frames,
        # power_to_db with ref 1.0, amin 1e-10 and no top_db; frozen weights.
        self.spectrogram_extractor = Spectrogram(
            n_fft=window_size, hop_length=hop_size, win_length=window_size, window="hann",
            center=True, pad_mode="reflect", freeze_parameters=True)
        self.logmel_extractor = LogmelFilterBank(
            sr=sample_rate, n_fft=window_size, n_mels=mel_bins, fmin=fmin, fmax=fmax,
            ref=1.0, amin=1e-10, top_db=None, freeze_parameters=True)
        self.spec_augmenter = SpecAugmentation(
            time_drop_width=64, time_stripes_num=2, freq_drop_width=8, freq_stripes_num=2)
        self.bn0 = nn.BatchNorm2d(mel_bins)

    def _init_head(self) -> None:
        _init_bn(self.bn0)
        _init_layer(self.fc1)
        _init_layer(self.fc_audioset)

    @property
    def min_frames(self) -> int:
        """Fewest log-mel frames that survive the conv stack as at least one frame."""
        return self.time_downsampling

    def logmel(self, waveform: Tensor) -> Tensor:
        """PANNs' own log-mel of ``[B, samples]`` waveforms: ``[B, 1, frames, mel_bins]``."""
        return self.logmel_extractor(self.spectrogram_extractor(waveform))

    def _bn0(self, x: Tensor) -> Tensor:
        # BatchNorm over mel bins: the mel axis is moved to the channel slot.
        return self.bn0(x.transpose(1, 3)).transpose(1, 3)

    def _conv_stack(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_features(self, logmel: Tensor) -> Tensor:
        """Frame-level features ``[B, 2048, frames // 32]`` from log-mel ``[B, 1, frames, mel_bins]``.

        ``bn0``, the conv stack and the mean over frequency; time is not pooled.
        """
        if logmel.dim() != 4 or logmel.shape[1] != 1 or logmel.shape[3] != self.mel_bins:
            raise ValueError(f"{self.panns_arch} expects log-mel [B, 1, frames, {self.mel_bins}], "
                             f"got {tuple(logmel.shape)}")
        return self._conv_stack(self._bn0(logmel))

    def pool_embedding(self, features: Tensor) -> Tensor:
        """PANNs' clip embedding from frame features: max + mean over time, dropout, ``fc1``, ReLU."""
        pooled = features.max(dim=2).values + features.mean(dim=2)
        pooled = F.dropout(pooled, p=0.5, training=self.training)
        return F.relu_(self.fc1(pooled))

    def embed(self, logmel: Tensor) -> Tensor:
        """The 2048-d clip embedding ``[B, 2048]`` of log-mel ``[B, 1, frames, mel_bins]``."""
        return self.pool_embedding(self.forward_features(logmel))

    def forward(self, input: Tensor, mixup_lambda: Tensor | None = None) -> dict[str, Tensor]:  # noqa: A002
        """PANNs' reference path on waveforms ``[B, samples]`` at ``sample_rate``.

        Returns ``{'clipwise_output': [B, classes_num] probabilities,
        'embedding': [B, 2048]}``. In training mode SpecAugment runs after
        ``bn0`` and, with ``mixup_lambda`` (one weight per clip), clips are
        mixed in pairs as PANNs does.
        """
        x = self._bn0(self.logmel(input))
        if self.training:
            x = self.spec_augmenter(x)
            if mixup_lambda is not None:
                x = _mixup_pairs(x, mixup_lambda)
        x = self.pool_embedding(self._conv_stack(x))
        embedding = F.dropout(x, p=0.5, training=self.training)
        clipwise_output = torch.sigmoid(self.fc_audioset(x))
        return {"clipwise_output": clipwise_output, "embedding": embedding}


class Cnn14(_PannsBase):
    """PANNs CNN14: six conv blocks (64 ... 2048 channels), 2x2 average pooling after the first five.

    Same constructor arguments and state-dict keys as PANNs' ``Cnn14``.
    """

    panns_arch = "Cnn14"
    time_downsampling = 2 ** 5

    def __init__(self, sample_rate: int = 32000, window_size: int = 1024, hop_size: int = 320,
                 mel_bins: int = 64, fmin: float = 50, fmax: float = 14000, classes_num: int = 527) -> None:
        super().__init__(sample_rate, window_size, hop_size, mel_bins, fmin, fmax, classes_num)
        self.conv_block1 = ConvBlock(1, 64)
        self.conv_block2 = ConvBlock(64, 128)
        self.conv_block3 = ConvBlock(128, 256)
        self.conv_block4 = ConvBlock(256, 512)
        self.conv_block5 = ConvBlock(512, 1024)
        self.conv_block6 = ConvBlock(1024, EMBEDDING_DIM)
        self.fc1 = _linear(EMBEDDING_DIM, EMBEDDING_DIM)
        self.fc_audioset = _linear(EMBEDDING_DIM, classes_num)
        self._init_head()

    def _conv_stack(self, x: Tensor) -> Tensor:
        for block in (self.conv_block1, self.conv_block2, self.conv_block3, self.conv_block4,
                      self.conv_block5):
            x = F.dropout(block(x, pool_size=(2, 2), pool_type="avg"), p=0.2, training=self.training)
        x = F.dropout(self.conv_block6(x, pool_size=(1, 1)), p=0.2, training=self.training)
        return x.mean(dim=3)


class BasicBlock(nn.Module):
    """PANNs' residual basic block: 2x2 average pooling (not a strided conv) when downsampling.

    The second BatchNorm starts at zero weight, so a fresh block is the identity.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = _conv(inplanes, planes, 3)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        _init_layer(self.conv1)
        _init_bn(self.bn1)
        _init_layer(self.conv2)
        _init_bn(self.bn2, weight=0.0)

    def forward(self, x: Tensor) -> Tensor:
        """Residual: (pool) conv-bn-relu-dropout-conv-bn, plus the (downsampled) input, then ReLU."""
        out = F.avg_pool2d(x, kernel_size=(2, 2)) if self.stride == 2 else x
        out = F.relu_(self.bn1(self.conv1(out)))
        out = F.dropout(out, p=0.1, training=self.training)
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return F.relu_(out + identity)


class ResNetStages(nn.Module):
    """Four stages of basic blocks (64, 128, 256, 512 channels); stages 2-4 halve both axes."""

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        inplanes = 64
        stages = []
        for planes, blocks, stride in zip((64, 128, 256, 512), layers, (1, 2, 2, 2)):
            downsample = None
            if stride != 1 or inplanes != planes:
                if stride == 1:
                    downsample = nn.Sequential(_conv(inplanes, planes, 1), nn.BatchNorm2d(planes))
                    _init_layer(downsample[0])
                    _init_bn(downsample[1])
                else:
                    downsample = nn.Sequential(nn.AvgPool2d(kernel_size=2),
                                               _conv(inplanes, planes, 1),
                                               nn.BatchNorm2d(planes))
                    _init_layer(downsample[1])
                    _init_bn(downsample[2])
            stage = [BasicBlock(inplanes, planes, stride, downsample)]
            stage += [BasicBlock(planes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

    def forward(self, x: Tensor) -> Tensor:
        """Run the four stages."""
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ResNet38(_PannsBase):
    """PANNs ResNet38: a conv block, 3-4-6-3 residual stages, 2x2 pooling, a 512->2048 conv block.

    Same constructor arguments and state-dict keys as PANNs' ``ResNet38``.
    """

    panns_arch = "ResNet38"
    # conv_block1 pool, three strided stages, the pool after the stages.
    time_downsampling = 2 ** 5

    def __init__(self, sample_rate: int = 32000, window_size: int = 1024, hop_size: int = 320,
                 mel_bins: int = 64, fmin: float = 50, fmax: float = 14000, classes_num: int = 527) -> None:
        super().__init__(sample_rate, window_size, hop_size, mel_bins, fmin, fmax, classes_num)
        self.conv_block1 = ConvBlock(1, 64)
        self.resnet = ResNetStages((3, 4, 6, 3))
        self.conv_block_after1 = ConvBlock(512, EMBEDDING_DIM)
        self.fc1 = _linear(EMBEDDING_DIM, EMBEDDING_DIM)
        self.fc_audioset = _linear(EMBEDDING_DIM, classes_num)
        self._init_head()

    def _conv_stack(self, x: Tensor) -> Tensor:
        x = F.dropout(self.conv_block1(x, pool_size=(2, 2), pool_type="avg"), p=0.2, training=self.training)
        x = F.avg_pool2d(self.resnet(x), kernel_size=(2, 2))
        x = F.dropout(x, p=0.2, training=self.training)
        x = F.dropout(self.conv_block_after1(x, pool_size=(1, 1)), p=0.2, training=self.training)
        return x.mean(dim=3)


_ARCHS: dict[str, type[_PannsBase]] = {"cnn14": Cnn14, "resnet38": ResNet38}


def build_panns(arch: str, **kwargs: Any) -> Cnn14 | ResNet38:
    """A PANNs model by name (``'cnn14'`` or ``'resnet38'``, any case) with PANNs' defaults."""
    key = str(arch).strip().lower()
    if key not in _ARCHS:
        raise ConfigError(f"unknown PANNs architecture {arch!r} (known: {', '.join(_ARCHS)})",
                          field="model.arch")
    return _ARCHS[key](**kwargs)


class PannsTagger(nn.Module):
    """Fine-tuning model: PANNs encoder + ``AttentionHead``; log-mel in, logits out.

    ``forward(logmel [B, 1, frames, n_mels]) -> logits [B, n_classes]``:

    1. clips shorter than ``min_frames`` (about one second, ``MIN_SECONDS``: 101
       frames at hop 320 / 32 kHz) are repeated along time;
    2. ``encoder.forward_features`` gives frame features ``[B, 2048, frames // 32]``;
    3. PANNs' ``fc1`` + ReLU is applied frame by frame (dropout 0.5 before it,
       as PANNs does before ``fc1``), so the head reads the 2048-d embedding
       space the AudioSet classifier was trained on;
    4. ``AttentionHead`` pools over time and returns logits.

    ``n_mels`` other than 64 (128 and 256 are the plan's variants) rebuilds
    ``bn0`` and the encoder's own mel filterbank for that count; the conv stack
    is mel-agnostic (convolutions, then a mean over the frequency axis) and
    loads unchanged. The encoder's ``fc_audioset`` is kept so checkpoints load
    strictly and the head can be initialised from it; it gets no gradient.

    ``sample_rate`` and ``hop_length`` describe the log-mel the tagger is fed
    (default: the encoder's 32 kHz and 320); they set how many frames make
    ``MIN_SECONDS``.
    """

    def __init__(self, arch: str = "cnn14", n_classes: int = 80, n_mels: int = 64, dropout: float = 0.5,
                 head: str = "attention", *, sample_rate: int | None = None,
                 hop_length: int | None = None) -> None:
        super().__init__()
        if head != "attention":
            raise ConfigError(f"unknown head {head!r} (known: attention)", field="model.head")
        if n_mels < 32:
            raise ConfigError(f"n_mels must be at least 32 (the encoder halves the mel axis five times), "
                              f"got {n_mels}", field="model.n_mels")
        self.arch = str(arch).strip().lower()
        self.n_classes = n_classes
        self.n_mels = n_mels
        with warnings.catch_warnings():
            # At 256 mels a few low bands are narrower than an FFT bin and librosa
            # warns; the tagger never uses the encoder's own filterbank (it is fed
            # our log-mel), so the warning would only be noise.
            warnings.filterwarnings("ignore", message="Empty filters detected", category=UserWarning)
            self.encoder = build_panns(self.arch, mel_bins=n_mels)
        self.head = AttentionHead(EMBEDDING_DIM, n_classes, dropout)
        self.sample_rate = int(self.encoder.sample_rate if sample_rate is None else sample_rate)
        self.hop_length = int(self.encoder.hop_size if hop_length is None else hop_length)
        if self.sample_rate <= 0 or self.hop_length <= 0:
            raise ValueError(f"sample rate and hop length must be positive, got {self.sample_rate} and "
                             f"{self.hop_length}")

    @property
    def min_frames(self) -> int:
        """Shortest input (frames) passed to the encoder; shorter clips are repeated up to it.

        The frames of ``MIN_SECONDS`` of audio (centred frames: ``1 + samples // hop``),
        and never fewer than the encoder's structural minimum of 32.
        """
        samples = int(round(MIN_SECONDS * self.sample_rate))
        return max(self.encoder.min_frames, 1 + samples // self.hop_length)

    def frame_embeddings(self, logmel: Tensor) -> Tensor:
        """Per-frame 2048-d embeddings ``[B, 2048, frames']`` (``relu(fc1(.))`` of the features)."""
        features = self.encoder.forward_features(repeat_pad_frames(logmel, self.min_frames))
        x = F.dropout(features.transpose(1, 2), p=0.5, training=self.training)
        return F.relu(self.encoder.fc1(x)).transpose(1, 2)

    def forward(self, logmel: Tensor) -> Tensor:
        """Logits ``[B, n_classes]`` for log-mel ``[B, 1, frames, n_mels]``."""
        return self.head(self.frame_embeddings(logmel))

    def load_pretrained(self, path: str | os.PathLike | None, *, init_head_from_audioset: bool = True,
                        strict_encoder: bool = True) -> dict[str, Any]:
        """Load PANNs AudioSet weights into the encoder; optionally initialise the head from them.

        ``path`` may be ``None`` to use ``$FSAT_PANNS_DIR`` (see
        ``resolve_checkpoint``). The encoder loads strictly, except ``bn0`` and
        the mel filterbank when ``n_mels`` differs from the checkpoint's 64
        (rebuilt, not loaded; the result says so). With
        ``init_head_from_audioset`` the head's classifier takes the
        ``fc_audioset`` rows of ``AUDIOSET_INDEX_80`` (needs ``n_classes=80``).
        Returns the ``load_panns_checkpoint`` result plus ``head_initialised``.
        """
        resolved = resolve_checkpoint(self.arch, path)
        if resolved is None:
            raise ConfigError(
                f"no pretrained checkpoint given and {PANNS_DIR_ENV} does not hold "
                f"{PUBLISHED_CHECKPOINTS[self.arch]}; set the checkpoint path or {PANNS_DIR_ENV}",
                field="model.pretrained")
        if init_head_from_audioset and self.n_classes != len(AUDIOSET_INDEX_80):
            raise ConfigError(
                f"the head has {self.n_classes} outputs; AudioSet initialisation maps the "
                f"{len(AUDIOSET_INDEX_80)} FSDKaggle2019 classes only. Switch it off for other class sets",
                field="model.init_head_from_audioset")
        skip: tuple[str, ...] = ()
        if self.n_mels != PANNS_MELS:
            skip = ("bn0.", "logmel_extractor.melW")
        result = load_panns_checkpoint(self.encoder, resolved, strict_encoder=strict_encoder, skip=skip)
        if skip:
            result["notes"].append(
                f"n_mels={self.n_mels} differs from the checkpoint's {PANNS_MELS}: bn0 was rebuilt for "
                f"{self.n_mels} mel bins and trains from its initial state; the conv stack loaded unchanged")
        result["head_initialised"] = False
        if init_head_from_audioset:
            init_from_audioset(self.head, self.encoder.fc_audioset.weight, self.encoder.fc_audioset.bias,
                               AUDIOSET_INDEX_80)
            result["head_initialised"] = True
            result["notes"].append("head classifier initialised from the AudioSet rows of the 80 classes")
        return result


class ZeroShotTagger(nn.Module):
    """The 80 FSDKaggle2019 class probabilities straight from a PANNs AudioSet model (no training).

    ``forward(waveform [B, samples] at 32 kHz) -> [B, 80]``: PANNs' own
    ``clipwise_output`` at the rows of ``AUDIOSET_INDEX_80``. The model is put
    in eval mode and its parameters frozen.
    """

    def __init__(self, model: Cnn14 | ResNet38, index: list[int] | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.register_buffer("index", torch.tensor(AUDIOSET_INDEX_80 if index is None else index,
                                                   dtype=torch.long), persistent=False)

    @classmethod
    def from_checkpoint(cls, arch: str = "cnn14", path: str | os.PathLike | None = None) -> ZeroShotTagger:
        """Build ``arch`` with PANNs' defaults and load its AudioSet checkpoint strictly."""
        model = build_panns(arch)
        resolved = resolve_checkpoint(arch, path)
        if resolved is None:
            raise ConfigError(
                f"no checkpoint given and {PANNS_DIR_ENV} does not hold "
                f"{PUBLISHED_CHECKPOINTS[str(arch).lower()]}; zero-shot tagging needs the pretrained "
                f"AudioSet model", field="model.pretrained")
        load_panns_checkpoint(model, resolved)
        return cls(model)

    def train(self, mode: bool = True) -> ZeroShotTagger:
        """Stays in eval mode: dropout and SpecAugment would only add noise to a fixed model."""
        super().train(False)
        return self

    def forward(self, waveform: Tensor) -> Tensor:
        """Probabilities ``[B, 80]`` for waveforms ``[B, samples]``."""
        return self.model(waveform)["clipwise_output"].index_select(1, self.index)
