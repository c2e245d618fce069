"""The process's torch setup for a job or a fold task: the device, the seeds, the intra-op threads."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def pick_device(name: str = "auto", field: str = "train.device") -> torch.device:
    """``auto`` takes CUDA when present, else the CPU; ``field`` names the setting in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from engine.errors import ConfigError
        raise ConfigError("CUDA was asked for but no GPU is visible; use device = \"auto\" or \"cpu\"",
                          field=field)
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def configure_threads() -> None:
    """Use the machine's cores for intra-op work unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
