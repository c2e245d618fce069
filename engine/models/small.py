"""A compact CNN for log-mel input, sized to train 5 folds in minutes on a CPU.

Same interface as the PANNs taggers: ``forward(logmel [B, 1, frames, mels])``
returns logits, and the parameters split into ``encoder`` and ``head`` so the
optimiser can give them different learning rates.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ConvBlock(nn.Module):
    """3x3 conv + batch-norm + ReLU, then average pooling (2x2 unless told otherwise)."""

    def __init__(self, in_channels: int, out_channels: int, pool: tuple[int, int] = (2, 2)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        # ceil_mode keeps at least one frame for very short inputs.
        return F.avg_pool2d(x, self.pool, ceil_mode=True)


class SmallEncoder(nn.Module):
    """Four single-conv blocks (w, 2w, 4w, 8w channels) with 2x2 pooling.

    The output keeps coarse frequency position: the last feature map's mel
    bands are stacked into the channel axis instead of averaged away, which
    lets a shallow network tell a 500 Hz tone from a 5 kHz one; frame
    features are [B, 8w * n_mels/16, frames/16]. One conv per block keeps a
    5-fold CPU run to minutes.
    """

    def __init__(self, width: int = 32, n_mels: int = 64) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            ConvBlock(1, width), ConvBlock(width, width * 2), ConvBlock(width * 2, width * 4),
            ConvBlock(width * 4, width * 8))
        self.bands = -(-n_mels // 16)
        self.out_channels = width * 8 * self.bands

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = self.blocks(logmel)                      # [B, C, frames', bands]
        b, c, t, m = x.shape
        return x.permute(0, 1, 3, 2).reshape(b, c * m, t)   # [B, C * bands, frames']


class MaxMeanHead(nn.Module):
    """Max + mean pooling over time, dropout, then a linear layer to class logits."""

    def __init__(self, in_channels: int, n_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, n_classes)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        pooled = frames.amax(dim=2) + frames.mean(dim=2)
        return self.fc(self.dropout(pooled))


class SmallTagger(nn.Module):
    """The compact CNN tagger used by the CPU ``demo`` preset."""

    def __init__(self, n_classes: int = 80, width: int = 32, dropout: float = 0.5, n_mels: int = 64) -> None:
        super().__init__()
        self.encoder = SmallEncoder(width, n_mels)
        self.head = MaxMeanHead(self.encoder.out_channels, n_classes, dropout)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        """Logits [B, n_classes] for log-mel input [B, 1, frames, mels]."""
        return self.head(self.encoder(logmel))
