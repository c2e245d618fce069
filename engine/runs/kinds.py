"""Run kinds, by what their run folder holds."""

from __future__ import annotations

#: Run kinds whose run folder holds fold checkpoints ``fold<k>/best.pt`` and a training spec: they can
#: be inferred, embed a baseline, start a curriculum stage. One definition for the jobs, CLI and console.
FOLD_CHECKPOINT_KINDS: tuple[str, ...] = ("train", "curriculum")

#: Run kinds that write ``test.npy`` (``sample_submission.csv`` order) beside their ``oof.npy``.
TEST_SCORE_KINDS: tuple[str, ...] = ("infer", "baseline", "ensemble")


def has_fold_checkpoints(kind: str | None) -> bool:
    """Whether a run of this kind has fold checkpoints (see :data:`FOLD_CHECKPOINT_KINDS`)."""
    return kind in FOLD_CHECKPOINT_KINDS


def run_arch(run: dict | None) -> str | None:
    """The architecture a run trained (``config.model.arch``: ``small``, ``cnn14``, ``resnet38``), or None.

    The run's ``model`` column is a label (``cnn14-64mel``), not the
    architecture: code that needs the architecture reads it here.
    """
    if not run:
        return None
    arch = ((run.get("config") or {}).get("model") or {}).get("arch")
    return str(arch) if arch else None


def can_embed_baseline(run: dict | None) -> bool:
    """Whether a run's fold-0 encoder can embed the baseline: a run with fold checkpoints of a cnn14."""
    return bool(run) and has_fold_checkpoints(run.get("kind")) and run_arch(run) == "cnn14"


def model_label(arch: str, n_mels: int) -> str:
    """The ``model`` column a trained run records: architecture and mel count, e.g. ``cnn14-64mel``."""
    return f"{arch}-{int(n_mels)}mel"
