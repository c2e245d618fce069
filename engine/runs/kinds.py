"""What a run's row says about its model: the architecture it trained and its ``model`` label.

Which run kinds hold fold checkpoints or test scores is the job kinds table's
(``engine.intake``: ``FOLD_CHECKPOINT_KINDS``, ``has_fold_checkpoints``).
"""

from __future__ import annotations


def run_arch(run: dict | None) -> str | None:
    """The architecture a run trained (``config.model.arch``: ``small``, ``cnn14``, ``resnet38``), or None.

    The run's ``model`` column is a label (``cnn14-64mel``), not the
    architecture: code that needs the architecture reads it here.
    """
    if not run:
        return None
    arch = ((run.get("config") or {}).get("model") or {}).get("arch")
    return str(arch) if arch else None


def model_label(arch: str, n_mels: int) -> str:
    """The ``model`` column a trained run records: architecture and mel count, e.g. ``cnn14-64mel``."""
    return f"{arch}-{int(n_mels)}mel"
