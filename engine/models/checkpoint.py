"""Find, read, check and write PANNs checkpoints.

PANNs saves ``{'model': state_dict, ...}`` (its training script adds the
iteration and the sampler state, which holds numpy arrays). The published
AudioSet checkpoints are ``Cnn14_mAP=0.431.pth`` and ``ResNet38_mAP=0.434.pth``
(Kong et al. 2020, zenodo record 3987831). Nothing is downloaded here: the
user puts the files in place, either at an explicit path or in the folder
named by ``$FSAT_PANNS_DIR``.

Loading is strict by default: every key of the model must be in the
checkpoint with the same shape and the checkpoint must hold nothing else,
otherwise ``CheckpointError`` lists what is missing, unexpected and wrongly
shaped, and names the architecture when the file is another PANNs model.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engine.atomic import atomic_write
from engine.errors import CheckpointError, ConfigError

__all__ = [
    "PANNS_DIR_ENV", "PUBLISHED_CHECKPOINTS", "detect_architecture", "load_panns_checkpoint",
    "read_state_dict", "resolve_checkpoint", "save_panns_style",
]

PANNS_DIR_ENV = "FSAT_PANNS_DIR"

#: Published AudioSet checkpoint file name per architecture (lower-case arch name).
PUBLISHED_CHECKPOINTS: dict[str, str] = {
    "cnn14": "Cnn14_mAP=0.431.pth",
    "resnet38": "ResNet38_mAP=0.434.pth",
}

# Class names of the PANNs models, keyed by our lower-case arch names.
_ARCH_DISPLAY = {"cnn14": "Cnn14", "resnet38": "ResNet38"}

_LIST_LIMIT = 8


def _arch_key(arch: str) -> str:
    key = str(arch).strip().lower()
    if key not in PUBLISHED_CHECKPOINTS:
        raise ConfigError(f"unknown PANNs architecture {arch!r} (known: {', '.join(PUBLISHED_CHECKPOINTS)})",
                          field="model.arch")
    return key


def resolve_checkpoint(arch: str, path: str | os.PathLike | None) -> Path | None:
    """Where the pretrained checkpoint for ``arch`` is: the explicit path, else ``$FSAT_PANNS_DIR``.

    An explicit ``path`` always wins and is returned as given (a folder is
    searched for the published file name; a missing file is reported when it is
    loaded). Without one, ``$FSAT_PANNS_DIR/<published name>`` is returned if
    that file exists; otherwise ``None`` (train from scratch, or ask the user).
    """
    key = _arch_key(arch)
    if path is not None and str(path) != "":
        explicit = Path(path).expanduser()
        if explicit.is_dir():
            return explicit / PUBLISHED_CHECKPOINTS[key]
        return explicit
    folder = os.environ.get(PANNS_DIR_ENV)
    if folder:
        candidate = Path(folder).expanduser() / PUBLISHED_CHECKPOINTS[key]
        if candidate.is_file():
            return candidate
    return None


def _numpy_safe_globals() -> list[Any]:
    """numpy types PANNs' training checkpoints pickle (sampler state), allowed for ``weights_only``.

    Each entry is ``(object, pickled name)``: checkpoints written with numpy 1
    name ``numpy.core.multiarray``, numpy 2 writes ``numpy._core.multiarray``.
    """
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray

    allowed: list[Any] = []
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed.append((multiarray._reconstruct, f"{module}._reconstruct"))
        allowed.append((multiarray.scalar, f"{module}.scalar"))
    allowed += [np.ndarray, np.dtype]
    for code in "?bBhHiIlLqQefdgFDGUSOMm":
        dtype_class = type(np.dtype(code))
        allowed.append((dtype_class, f"numpy.dtypes.{dtype_class.__name__}"))
    return allowed


def _refused_globals(exc: pickle.UnpicklingError) -> bool:
    """Whether ``weights_only`` refused a Python global (as opposed to unreadable bytes)."""
    text = str(exc)
    return "Unsupported global" in text or "Unsupported class" in text


def _torch_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only`` (no arbitrary code), allowing numpy arrays.

    Zip-format files (every ``torch.save`` since PyTorch 1.6) are memory-mapped:
    the tensors are read once, straight into the model, when they are copied.
    """
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if not _refused_globals(exc):
            raise
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if not _refused_globals(exc):
            raise
        detail = next((line.strip() for line in str(exc).splitlines() if "Unsupported" in line), "")
        raise CheckpointError(
            f"{path}: the checkpoint holds Python objects other than tensors and numpy arrays, so it is "
            f"not loaded (loading them could run code). Re-save it as {{'model': model.state_dict()}} "
            f"from a trusted session. ({detail[:300]})") from exc


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The ``'model'`` state dict of a PANNs-style checkpoint file (a bare state dict is accepted too).

    A ``module.`` prefix left by ``DataParallel`` is removed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"{path}: checkpoint file not found. Put the published PANNs checkpoint "
            f"({PUBLISHED_CHECKPOINTS['cnn14']} for cnn14, {PUBLISHED_CHECKPOINTS['resnet38']} for "
            f"resnet38) at this path, or put it in a folder and set {PANNS_DIR_ENV} to that folder.")
    try:
        raw = _torch_load(path)
    except CheckpointError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc}); the file may be truncated "
                              "or of another format; download it again") from exc
    if isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping):
        state = raw["model"]
    elif isinstance(raw, Mapping) and raw and all(torch.is_tensor(v) for v in raw.values()):
        state = raw
    else:
        found = sorted(map(str, raw.keys()))[:_LIST_LIMIT] if isinstance(raw, Mapping) else type(raw).__name__
        raise CheckpointError(f"{path}: expected a PANNs checkpoint {{'model': state_dict}}, found {found}")
    state = {str(k): v for k, v in state.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    not_tensors = [k for k, v in state.items() if not torch.is_tensor(v)]
    if not_tensors:
        raise CheckpointError(f"{path}: state dict entries that are not tensors: {_listing(not_tensors)}")
    return state


def detect_architecture(state_dict: Mapping[str, Any]) -> str | None:
    """Name of the PANNs model a state dict comes from (``'Cnn14'``, ``'ResNet38'``, ...), or None.

    Decided from the layer names that tell PANNs' models apart: the ResNets
    by their residual stages (blocks per stage: ResNet22 2-2-2-2, ResNet38
    3-4-6-3 basic blocks, ResNet54 3-4-6-3 bottlenecks), the plain CNNs by
    their deepest conv block and whether blocks have one or two convolutions.
    """
    keys = set(state_dict)

    def has(name: str) -> bool:
        return name in keys

    if any(k.startswith("pre_conv0.") for k in keys):
        return "Wavegram_Logmel_Cnn14" if has("conv_block1.conv1.weight") else "Wavegram_Cnn14"
    if has("resnet.layer1.0.conv1.weight") and any(k.startswith("resnet.layer1.0.") for k in keys):
        if any(k.startswith("resnet.layer7.") for k in keys):
            return "Res1dNet"
        if has("resnet.layer1.0.conv3.weight"):
            return "ResNet54"
        if has("resnet.layer3.5.conv1.weight") and not has("resnet.layer3.6.conv1.weight"):
            return "ResNet38"
        if has("resnet.layer1.1.conv1.weight") and not has("resnet.layer1.2.conv1.weight"):
            return "ResNet22"
        return None
    if has("features.0.0.weight"):
        return "MobileNet"
    if has("conv_block6.conv1.weight"):
        return "Cnn14"
    if has("conv_block5.conv1.weight") and not has("conv_block6.conv1.weight"):
        return "Cnn12" if has("conv_block5.conv2.weight") else None
    if has("conv_block4.conv1.weight") and not has("conv_block5.conv1.weight"):
        return "Cnn10" if has("conv_block4.conv2.weight") else "Cnn6"
    return None


def _model_arch(model: nn.Module) -> str:
    return str(getattr(model, "panns_arch", type(model).__name__))


def _listing(items: list[str], limit: int = _LIST_LIMIT) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _skipped(key: str, skip: Iterable[str]) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in skip)


def _published_hint(arch: str) -> str:
    key = arch.lower()
    if key in PUBLISHED_CHECKPOINTS:
        return f"use the published {PUBLISHED_CHECKPOINTS[key]} or a checkpoint saved from a {arch}"
    return f"use a checkpoint saved from a {arch}"


def load_panns_checkpoint(model: nn.Module, path: str | os.PathLike, *, strict_encoder: bool = True,
                          skip: Iterable[str] = ()) -> dict[str, Any]:
    """Load a PANNs checkpoint into ``model`` after checking that it fits; return what was done.

    ``skip`` names keys (or prefixes ending in ``.``) that are neither loaded
    nor required, e.g. ``('bn0.', 'logmel_extractor.melW')`` for a model built
    for another mel count. With ``strict_encoder=True`` (the default) any
    missing, unexpected or wrongly shaped key raises ``CheckpointError`` that
    lists them; with ``False`` the keys that fit are loaded and the others
    reported. A checkpoint of another PANNs architecture is refused either way.
    BatchNorm ``num_batches_tracked`` counters are never required (older
    PyTorch did not save them).

    Returns a dict: ``path``, ``arch`` (of the model), ``checkpoint_arch``
    (detected), ``loaded`` (number of tensors), ``skipped``, ``missing``,
    ``unexpected``, ``mismatched`` (``(key, expected shape, found shape)``)
    and ``notes`` (sentences for the job log).
    """
    path = Path(path).expanduser()
    arch = _model_arch(model)
    state = read_state_dict(path)
    detected = detect_architecture(state)
    if detected is not None and detected.lower() != arch.lower():
        our_name = next((k for k, v in _ARCH_DISPLAY.items() if v.lower() == detected.lower()), None)
        choose = f"build the model with arch '{our_name}' or " if our_name else ""
        raise CheckpointError(
            f"{path}: wrong architecture: this is a {detected} checkpoint but the model is a {arch}; "
            f"{choose}{_published_hint(arch)}.")

    skip = tuple(skip)
    expected = {k: v for k, v in model.state_dict().items() if not _skipped(k, skip)}
    skipped = sorted(k for k in model.state_dict() if _skipped(k, skip))
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected and not _skipped(k, skip)]
    mismatched = [(k, _shape(expected[k]), _shape(state[k]))
                  for k in expected if k in state and _shape(expected[k]) != _shape(state[k])]

    if strict_encoder and (missing or unexpected or mismatched):
        lines = [f"{path}: checkpoint does not fit the {arch} ({len(missing)} missing, "
                 f"{len(unexpected)} unexpected, {len(mismatched)} wrongly shaped keys)"]
        if missing:
            lines.append(f"  missing from the checkpoint ({len(missing)}): {_listing(missing)}")
        if unexpected:
            lines.append(f"  unexpected in the checkpoint ({len(unexpected)}): {_listing(unexpected)}")
        if mismatched:
            shown = [f"{k} expected {list(e)} found {list(f)}" for k, e, f in mismatched]
            lines.append(f"  wrong shape ({len(mismatched)}): {_listing(shown, 5)}")
        lines.append(f"  {_published_hint(arch)[0].upper()}{_published_hint(arch)[1:]}"
                     f"{'' if detected else ' (the file is not recognised as a PANNs model)'}.")
        raise CheckpointError("\n".join(lines))

    bad_shape = {k for k, _, _ in mismatched}
    to_load = {k: state[k] for k in expected if k in state and k not in bad_shape}
    model.load_state_dict(to_load, strict=False)

    notes = [f"loaded {len(to_load)} tensors from {path.name}"]
    if skipped:
        notes.append(f"not loaded (rebuilt for this model): {_listing(skipped)}")
    if missing:
        notes.append(f"missing from the checkpoint, left as initialised: {_listing(missing)}")
    if mismatched:
        notes.append(f"wrong shape, left as initialised: {_listing([k for k, _, _ in mismatched])}")
    if unexpected:
        notes.append(f"ignored checkpoint keys: {_listing(unexpected)}")
    return {
        "path": str(path), "arch": arch, "checkpoint_arch": detected, "loaded": len(to_load),
        "skipped": skipped, "missing": missing, "unexpected": unexpected, "mismatched": mismatched,
        "notes": notes,
    }


def save_panns_style(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``{'model': state_dict}`` the way PANNs does (tensors moved to the CPU), atomically."""
    path = Path(path).expanduser()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # The engine's atomic writer: never a torn file, and a full disk is named as such.
    return atomic_write(path, lambda fh: torch.save({"model": state}, fh))
