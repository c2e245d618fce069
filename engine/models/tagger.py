"""The tagger: log-mel frontend + SpecAugment + model, waveform batch in, logits out."""

from __future__ import annotations

import torch
from torch import nn


class Tagger(nn.Module):
    """Frontend + augmentation + model: waveform batch in, logits out."""

    def __init__(self, frontend: nn.Module, model: nn.Module, spec_augment: nn.Module | None = None) -> None:
        super().__init__()
        self.frontend = frontend
        self.model = model
        self.spec_augment = spec_augment

    @property
    def head(self) -> nn.Module:
        """The model's classification head."""
        return self.model.head

    @property
    def encoder(self) -> nn.Module:
        """The model's encoder."""
        return self.model.encoder

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Standardised log-mel [B, 1, frames, mels], SpecAugment applied in train mode."""
        with torch.no_grad():
            x = self.frontend(wave)
        if self.spec_augment is not None and self.training:
            x = self.spec_augment(x)
        return x

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Logits [B, n_classes] of waveforms [B, samples]."""
        return self.model(self.features(wave))
