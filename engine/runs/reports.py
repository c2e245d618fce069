"""Reports read from the store: the gain of test-time augmentation (TTA) over a trained run.

An infer run (``kind = 'infer'``, ``parent_run_id`` = the trained run)
scores the same best checkpoints with several crops; the trained run scored
them on one centre crop. So ``with TTA - without`` measures TTA alone, overall,
per fold and per class. The CLI (``fsat tta``) and the console's run screen
both build their view from :class:`TtaComparison`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.errors import FsatError
from engine.store import OOF

__all__ = ["TtaComparison", "gain", "infer_runs_of", "tta_comparison", "tta_gain_report"]


def gain(with_tta: float | None, without: float | None) -> float | None:
    """``with_tta - without``; None when either is unknown."""
    if with_tta is None or without is None:
        return None
    return float(with_tta) - float(without)


@dataclass
class TtaComparison:
    """A trained run and an inference run of it: scores without and with TTA.

    ``base`` is the trained run (its scores are the ones without TTA), ``tta``
    the inference run. The class lists hold the per-class rows of one fold
    (out-of-fold by default) of each run; the fold lists their ``fold_scores``.
    """

    base: dict
    tta: dict
    base_classes: list[dict]
    tta_classes: list[dict]
    #: How many inference runs the trained run has (the newest scored one is compared).
    n_infer_runs: int = 1
    base_folds: list[dict] = field(default_factory=list)
    tta_folds: list[dict] = field(default_factory=list)

    @property
    def gain(self) -> float | None:
        """CV LWLRAP with TTA minus without; None until both are known."""
        return gain(self.tta.get("cv_lwlrap"), self.base.get("cv_lwlrap"))

    def class_gains(self) -> dict[int, float | None]:
        """class_idx -> LRAP with TTA minus without (None where either run has no score)."""
        base = {int(c["class_idx"]): c.get("lrap") for c in self.base_classes}
        gains: dict[int, float | None] = {}
        for c in self.tta_classes:
            idx = int(c["class_idx"])
            gains[idx] = gain(c.get("lrap"), base.get(idx))
        for idx in base:
            gains.setdefault(idx, None)
        return gains

    def fold_rows(self) -> list[dict]:
        """Per fold of the inference run: ``fold``, ``with_tta``, ``without_tta``, ``gain``."""
        base = {r["fold"]: r["lwlrap"] for r in self.base_folds}
        return [{"fold": r["fold"], "with_tta": r["lwlrap"], "without_tta": base.get(r["fold"]),
                 "gain": gain(r["lwlrap"], base.get(r["fold"]))} for r in self.tta_folds]

    def class_rows(self) -> list[dict]:
        """Per class of the inference run: names, LRAP with and without TTA, gain, weight and positives."""
        base = {r["class_idx"]: r for r in self.base_classes}
        rows = []
        for r in self.tta_classes:
            b = base.get(r["class_idx"], {})
            rows.append({"class_idx": r["class_idx"], "class_name": r["class_name"], "with_tta": r["lrap"],
                         "without_tta": b.get("lrap"), "gain": gain(r["lrap"], b.get("lrap")),
                         "weight": r["weight"], "n_pos": r["n_pos"]})
        return rows

    @property
    def tta_crops(self) -> Any:
        """``infer.tta_crops`` of the inference run (None when its config has none)."""
        return ((self.tta.get("config") or {}).get("infer") or {}).get("tta_crops")

    @property
    def settings(self) -> str:
        """The TTA settings of the inference run, e.g. ``5 crops, 10 beyond 30 s``."""
        infer = (self.tta.get("config") or {}).get("infer") or {}
        if not infer:
            return ""
        crops, long_crops, long_s = infer.get("tta_crops"), infer.get("tta_crops_long"), infer.get("long_seconds")
        text = f"{crops} crops"
        if long_crops is not None and long_s is not None:
            text += f", {long_crops} beyond {float(long_s):g} s"
        return text


def infer_runs_of(store: Any, run_id: str) -> list[dict]:
    """Inference runs made from ``run_id`` (run_summary rows, newest first): one indexed query."""
    return store.child_runs(run_id, kind="infer")


def tta_comparison(store: Any, run: dict | None, class_fold: int = OOF, *,
                   classes: list[dict] | None = None) -> TtaComparison | None:
    """The TTA comparison of a trained run (with its newest scored inference run) or of an inference run.

    ``classes`` are ``run``'s per-class rows of ``class_fold`` when the caller
    already has them. None when the run has no counterpart.
    """
    if run is None:
        return None
    own = classes if classes is not None else store.class_scores(str(run["run_id"]), class_fold)
    if run.get("kind") == "infer":
        parent_id = run.get("parent_run_id")
        parent = store.get_run(parent_id) if parent_id else None
        if parent is None:
            return None
        siblings = infer_runs_of(store, str(parent_id))
        return TtaComparison(base=parent, tta=run, base_classes=store.class_scores(str(parent_id), class_fold),
                             tta_classes=own, n_infer_runs=max(1, len(siblings)),
                             base_folds=store.fold_scores(str(parent_id)), tta_folds=store.fold_scores(str(run["run_id"])))
    children = infer_runs_of(store, str(run["run_id"]))
    if not children:
        return None
    # The newest inference run that has a score; while none has, the newest (still running).
    chosen = next((c for c in children if c.get("cv_lwlrap") is not None), children[0])
    tta = store.get_run(str(chosen["run_id"]))
    if tta is None:
        return None
    return TtaComparison(base=run, tta=tta, base_classes=own,
                         tta_classes=store.class_scores(str(tta["run_id"]), class_fold), n_infer_runs=len(children),
                         base_folds=store.fold_scores(str(run["run_id"])), tta_folds=store.fold_scores(str(tta["run_id"])))


def tta_gain_report(store: Any, run_id: str) -> dict:
    """The TTA gain of an infer run over its trained run as plain data: overall, per fold and per class.

    Raises FsatError naming the run when it is not an infer run or its parent is gone.
    """
    run = store.get_run(run_id)
    if run is None:
        raise FsatError(f"no run {run_id!r} (see `fsat runs`)")
    if run["kind"] != "infer" or not run["parent_run_id"]:
        raise FsatError(f"run {run_id!r} is a {run['kind']} run; the TTA gain is shown for infer runs")
    parent_id = run["parent_run_id"]
    if store.get_run(parent_id) is None:
        raise FsatError(f"run {run_id!r} was inferred from {parent_id!r}, which is no longer in the database")
    cmp = tta_comparison(store, run, OOF)
    assert cmp is not None  # the parent exists, checked above
    return {"run_id": run_id, "source_run_id": parent_id, "tta_crops": cmp.tta_crops,
            "with_tta": run["cv_lwlrap"], "without_tta": cmp.base["cv_lwlrap"], "gain": cmp.gain,
            "folds": cmp.fold_rows(), "classes": cmp.class_rows()}
