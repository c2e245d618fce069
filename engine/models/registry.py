"""Build models by architecture name, and frontends, models and taggers from a training spec.

The ``*_from_spec`` builders are the one place a spec becomes torch modules:
the train job, inference, the embedding baseline and the curriculum job all
call them, so a fold model is built the same way (sample rate and hop
included) wherever it is trained or loaded.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from engine.errors import CheckpointError, ConfigError


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


def frontend_from_spec(spec: Any, *, mean: Any = None, std: Any = None) -> nn.Module:
    """The log-mel frontend a training spec describes, ``features.standardise`` honoured.

    With ``mean`` and ``std`` (per-mel statistics) the frontend standardises
    with them; otherwise its statistics are still unset.
    """
    from engine.features.frontend import LogMelFrontend

    f = spec.features
    frontend = LogMelFrontend(sample_rate=spec.audio.sample_rate, n_fft=f.n_fft, hop_length=f.hop_length,
                              win_length=f.win_length, n_mels=f.n_mels, fmin=f.fmin, fmax=f.fmax, clamp=f.clamp)
    frontend.standardise = f.standardise
    if mean is not None and std is not None:
        frontend.set_stats(mean, std)
    return frontend


def model_from_spec(spec: Any, n_classes: int, *, pretrained: bool = True,
                    log: Callable[[str], None] = print) -> nn.Module:
    """The spec's architecture for ``n_classes``, with the log-mel's sample rate and hop.

    With ``pretrained`` the PANNs weights are loaded as ``model.pretrained``
    says (``required`` raises CheckpointError naming where the file should
    be; ``optional`` trains from scratch and says so). ``pretrained=False``
    builds the architecture only, for a checkpoint that replaces every weight.
    """
    m = spec.model
    model = build_model(m.arch, n_classes=n_classes, n_mels=spec.features.n_mels, dropout=m.dropout,
                        width=m.width, sample_rate=spec.audio.sample_rate, hop_length=spec.features.hop_length)
    if not pretrained or m.arch == "small" or m.pretrained == "none":
        return model
    from engine.models.checkpoint import PUBLISHED_CHECKPOINTS, resolve_checkpoint

    path = resolve_checkpoint(m.arch, m.checkpoint or None)
    if path is None or not path.exists():
        published = PUBLISHED_CHECKPOINTS[m.arch]
        where = m.checkpoint or f"$FSAT_PANNS_DIR/{published}"
        if m.pretrained == "required":
            raise CheckpointError(
                f"model.checkpoint: no PANNs checkpoint at {where}. Put {published} there (or set "
                "FSAT_PANNS_DIR to its folder, or model.checkpoint to its path), or set "
                "model.pretrained = \"optional\" to train from scratch when it is absent")
        log(f"no PANNs checkpoint at {where}: training {m.arch} from scratch (model.pretrained = optional)")
        return model
    info = model.load_pretrained(path, init_head_from_audioset=m.init_head_from_audioset)
    log(f"loaded {info['loaded']} pretrained tensors from {path}" +
        "".join(f"; {note}" for note in info.get("notes", [])))
    return model


def spec_augment_from_spec(spec: Any) -> nn.Module | None:
    """SpecAugment as the spec's ``augment`` section sets it, or None when ``specaug_p`` is 0."""
    from engine.features.augment import SpecAugment

    a = spec.augment
    return SpecAugment(freq_masks=a.freq_masks, freq_width=a.freq_width, time_masks=a.time_masks,
                       time_frac=a.time_frac, p=a.specaug_p) if a.specaug_p > 0 else None


def tagger_from_spec(spec: Any, n_classes: int, *, mean: Any = None, std: Any = None, pretrained: bool = True,
                     augment: bool = True, log: Callable[[str], None] = print) -> nn.Module:
    """Frontend + SpecAugment (with ``augment``) + model, all from the spec: the module a fold trains."""
    from engine.models.tagger import Tagger

    return Tagger(frontend_from_spec(spec, mean=mean, std=std), model_from_spec(spec, n_classes, pretrained=pretrained,
                                                                             log=log),
                  spec_augment_from_spec(spec) if augment else None)
