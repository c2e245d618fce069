"""Build a model by architecture name, and load its pretrained weights."""

from __future__ import annotations

from torch import nn

from engine.errors import ConfigError


def build_model(arch: str, *, n_classes: int = 80, n_mels: int = 64, dropout: float = 0.5,
                width: int = 32, sample_rate: int | None = None, hop_length: int | None = None) -> nn.Module:
    """A tagger taking log-mel [B, 1, frames, mels] and returning logits [B, n_classes].

    ``small`` is the compact CPU model; ``cnn14`` and ``resnet38`` are PANNs
    encoders with the attention head. ``sample_rate`` and ``hop_length`` of the
    log-mel tell the PANNs taggers how many frames make their minimum input
    length (default: PANNs' 32 kHz and 320).
    """
    if arch == "small":
        from engine.models.small import SmallTagger
        return SmallTagger(n_classes=n_classes, width=width, dropout=dropout, n_mels=n_mels)
    if arch in ("cnn14", "resnet38"):
        from engine.models.panns import PannsTagger
        return PannsTagger(arch=arch, n_classes=n_classes, n_mels=n_mels, dropout=dropout,
                           sample_rate=sample_rate, hop_length=hop_length)
    raise ConfigError(f"unknown architecture {arch!r} (known: small, cnn14, resnet38)", field="model.arch")
