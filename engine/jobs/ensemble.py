"""The ``ensemble`` job: a blend of runs' out-of-fold and test scores, its method chosen by measurement.

Members are runs whose run directory holds ``oof.npy`` (curated order) and,
for a submission, ``test.npy`` (``sample_submission.csv`` order): infer,
baseline and ensemble runs. A train run has ``oof.npy`` but no ``test.npy``:
it may join an out-of-fold-only blend (to compare blends by CV), and then the
ensemble has no test scores and writes no submission; the result message
says which member lacked them.

With ``method = "auto"`` (the default) every blend method and the best single
member are scored by OOF LWLRAP, fitted maps cross-fitted over the dataset's
folds, and the highest is used; an explicit method that scores below the
best member gets a warning. ``evaluate_ensemble`` computes all of that and
records nothing (``fsat ensemble --dry-run``).

numpy only: ``fsat ensemble --now`` runs :func:`build_ensemble` in the
command's own process, the worker runs the same function through
:func:`run`, and both record the same things: a run of kind ``ensemble``
with its members and weights, the method used and every candidate's scores
(``ensemble_candidates``), the run's ``warning``, per-fold and out-of-fold
LWLRAP, per-class LRAP, ``oof.npy`` / ``test.npy`` (float64),
``submission.csv`` and the test LWLRAP when the dataset has
``test_ground_truth.csv``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from engine.data.manifest import DatasetLayout, load_layout
from engine.ensemble import AUTO, RANK_METHODS, BlendResult, Member, blend, greedy_forward_selection
from engine.errors import ConfigError, FsatError
from engine.intake import has_fold_checkpoints
from engine.jobs.context import JobContext, record_run
from engine.metrics import lwlrap
from engine.runs.folder import RunFolder
from engine.runs.members import (MemberProblem, calibration_folds, check_oof, check_test, fold_of_clips,
                                 read_scores)
from engine.runs.lineage import record_run_lineage
from engine.runs.scores import record_fold_scores, score_test
from engine.specs import EnsembleSpec, spec_hash, to_dict
from engine.store import OOF, Store


@dataclass
class LoadedMembers:
    """Member runs' scores with the dataset they share."""

    members: list[Member]            # in spec order
    dataset: dict                    # the datasets row (classes decoded)
    layout: DatasetLayout
    truth: np.ndarray                # curated label matrix, CSV order
    missing_test: list[str] = field(default_factory=list)   # "run_id (why)" for members without test scores


@dataclass
class EnsembleOutcome:
    """What :func:`build_ensemble` recorded."""

    run_id: str
    run_dir: Path
    weights: dict[str, float]
    cv_lwlrap: float
    raw_cv_lwlrap: float
    test_lwlrap: float | None
    submission: Path | None
    message: str
    method: str = ""
    warning: str | None = None


def load_members(store: Store, member_ids: list[str]) -> LoadedMembers:
    """Load each member's ``oof.npy`` (and ``test.npy`` when every member has one) and check them.

    Every member must be a finished run of the same dataset whose OOF scores
    cover every curated clip (``[n_curated, n_classes]``, finite) and whose
    test scores, when present, are ``[n_test, n_classes]``. Errors name the
    member and the file.
    """
    if not member_ids:
        raise ConfigError("name the member runs", field="members")
    seen: set[str] = set()
    for m in member_ids:
        if m in seen:
            raise ConfigError(f"member {m!r} is listed twice; give it a larger weight instead", field="members")
        seen.add(m)
    runs = []
    for m in member_ids:
        run = store.get_run(m)
        if run is None:
            raise ConfigError(f"no run {m!r}; members must be runs with out-of-fold scores (see `fsat runs`)",
                              field="members")
        if run["status"] != "done":
            raise FsatError(f"member {m!r} is {run['status']}, not finished; blend it once it is done")
        oof_path = Path(run["run_dir"]) / "oof.npy"
        if not oof_path.is_file():
            hint = (f"infer it first (`fsat queue infer {m}`)" if has_fold_checkpoints(run["kind"])
                    else "it produced no out-of-fold scores; run it again or leave it out")
            raise FsatError(f"member {m!r} ({run['kind']} run) has no out-of-fold scores: {oof_path} "
                            f"does not exist; {hint}")
        runs.append(run)

    dataset_ids = {r["dataset_id"] for r in runs if r["dataset_id"] is not None}
    if len(dataset_ids) > 1:
        first = next(r for r in runs if r["dataset_id"] is not None)

        def where(dataset_id: int) -> str:
            # Dataset ids alone do not tell a user which folder a run used.
            row = store.get_dataset(dataset_id)
            return f"dataset {dataset_id} ({row['root']})" if row else f"dataset {dataset_id}"

        for r in runs:
            if r["dataset_id"] is not None and r["dataset_id"] != first["dataset_id"]:
                raise FsatError(f"member {r['run_id']!r} is from {where(r['dataset_id'])} but member "
                                f"{first['run_id']!r} is from {where(first['dataset_id'])}; blend runs of one dataset")
    if not dataset_ids:
        raise FsatError(f"member {runs[0]['run_id']!r} is linked to no dataset; its scores cannot be checked "
                        "against labels")
    dataset = store.get_dataset(dataset_ids.pop())
    layout = load_layout(dataset["root"])
    truth = layout.curated.Y
    n_test = len(layout.test.fnames)

    members, missing_test = [], []
    for run in runs:
        run_dir = Path(run["run_dir"])
        oof_path = run_dir / "oof.npy"
        try:
            oof = read_scores(oof_path)
            check_oof(oof_path, oof, truth)
            test = None
            test_path = run_dir / "test.npy"
            if test_path.is_file():
                test = read_scores(test_path)
                check_test(test_path, test, n_test, truth.shape[1])
        except MemberProblem as problem:
            raise FsatError(f"member {run['run_id']!r}: {problem}") from None
        if test is None:
            why = "a train run: infer it for test scores" if has_fold_checkpoints(run["kind"]) else "no test.npy"
            missing_test.append(f"{run['run_id']} ({why})")
        members.append(Member(name=run["run_id"], oof=oof, test=test, cv_lwlrap=lwlrap(truth, oof)))
    if missing_test:
        # Test scores are blended only when every member has them.
        for m in members:
            m.test = None
    return LoadedMembers(members=members, dataset=dataset, layout=layout, truth=truth, missing_test=missing_test)


def unique_run_id(store: Store, prefix: str = "ensemble") -> str:
    """A new run id for a blend made outside the queue: ``<prefix>-now-YYYYmmdd-HHMMSS[-n]``."""
    base = f"{prefix}-now-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id, n = base, 1
    while store.get_run(run_id) is not None:
        n += 1
        run_id = f"{base}-{n}"
    return run_id


@dataclass
class EnsembleEvaluation:
    """A blend computed and scored, nothing recorded: what ``--dry-run`` prints and ``build_ensemble`` saves."""

    loaded: LoadedMembers
    result: BlendResult
    weights: dict[str, float]            # member -> share of the blend (sum 1)
    candidates: list[dict]               # per method scored: method, oof/raw/test lwlrap, chosen, note
    fold_of: np.ndarray                  # fold per curated clip (-1 without stored folds)
    cross_fitted: bool                   # fitted maps were scored out of fold
    test_lwlrap: float | None            # the chosen blend's, when the dataset has test ground truth
    member_test_lwlrap: dict[str, float | None] = field(default_factory=dict)


def _test_lwlrap(layout: DatasetLayout, scores: np.ndarray | None) -> float | None:
    """LWLRAP of test scores (sample_submission order) against ``test_ground_truth.csv``, when it exists."""
    if scores is None or layout.test_truth is None:
        return None
    row = {f: i for i, f in enumerate(layout.test.fnames)}
    return lwlrap(layout.test_truth.Y, scores[[row[f] for f in layout.test_truth.fnames]])


def evaluate_ensemble(store: Store, spec: EnsembleSpec, *, log: Callable[[str], None] = print,
                      progress: Callable[[float, str], None] | None = None) -> EnsembleEvaluation:
    """Load the spec's members, select (greedy) and blend them, and score every candidate method.

    The OOF scores of fitted maps are cross-fitted over the dataset's stored
    folds (in-sample, with a note, when it has none); each candidate's test
    LWLRAP is scored when the dataset has test ground truth. Nothing is
    written: ``fsat ensemble --dry-run`` prints this, ``build_ensemble``
    records it.
    """
    def step(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, message)

    step(0.05, "loading members")
    loaded = load_members(store, list(spec.members))
    members, truth = loaded.members, loaded.truth
    for m in members:
        log(f"member {m.name}: OOF lwlrap {m.cv_lwlrap:.4f}{'' if m.test is not None else ', no test scores'}")
    if loaded.missing_test:
        log("no test blend: " + "; ".join(loaded.missing_test))

    stored_folds = store.get_folds(loaded.dataset["id"])
    fold_of = fold_of_clips(loaded.layout.curated.fnames, stored_folds)
    # Fitted maps score the OOF rows cross-fitted over the dataset's folds (the one rule the console's
    # blend shares), so the recorded OOF score is a held-out one; without stored folds it is in-sample.
    folds = calibration_folds(loaded.layout.curated.fnames, stored_folds)
    if folds is None:
        log("note: the dataset has no stored folds for every curated clip; fitted maps are scored in-sample")

    step(0.3, "blending")
    weights = list(spec.weights) if spec.weights else None
    try:
        if spec.greedy:
            picks, greedy_weights, history = greedy_forward_selection(
                members, truth, max_steps=spec.greedy_steps, method=spec.method, calibrate=spec.calibrate,
                folds=folds)
            weights = greedy_weights.tolist()
            log("greedy selection: " + " -> ".join(f"{members[i].name} ({s:.4f})" for i, s in zip(picks, history)))
        result = blend(members, truth, weights=weights, method=spec.method, calibrate=spec.calibrate, folds=folds)
    except ValueError as err:
        raise FsatError(f"cannot blend {', '.join(spec.members)}: {err}") from None
    layout = loaded.layout
    candidates = [{"method": c.method, "oof_lwlrap": c.oof_lwlrap, "raw_oof_lwlrap": c.raw_oof_lwlrap,
                   "test_lwlrap": _test_lwlrap(layout, result.candidate_tests.get(c.method)),
                   "chosen": c.method == result.method, "note": c.note} for c in result.candidates]
    weight_of = {m.name: float(w) for m, w in zip(members, result.weights)}
    log(("auto chose " if result.requested == AUTO else "") + f"{result.method}; weights "
        + ", ".join(f"{k} {v:.3f}" for k, v in weight_of.items()))
    for c in candidates:
        log(f"  {c['method']:12s} OOF {_score_text(c['oof_lwlrap'])}"
            + (f" (raw {c['raw_oof_lwlrap']:.4f})" if c["method"] in RANK_METHODS and c["oof_lwlrap"] is not None
               and spec.calibrate else "")
            + (f"  test {c['test_lwlrap']:.4f}" if c["test_lwlrap"] is not None else "")
            + ("  <- chosen" if c["chosen"] else "") + (f"  ({c['note']})" if c["note"] else ""))
    if result.warning:
        log(f"warning: {result.warning}")
    return EnsembleEvaluation(loaded=loaded, result=result, weights=weight_of, candidates=candidates,
                              fold_of=fold_of, cross_fitted=folds is not None,
                              test_lwlrap=_test_lwlrap(layout, result.test),
                              member_test_lwlrap={m.name: _test_lwlrap(layout, m.test) for m in members})


def _score_text(x: float | None) -> str:
    return "  -   " if x is None else f"{x:.4f}"


def build_ensemble(store: Store, spec: EnsembleSpec, *, run_id: str, run_dir: Path | str,
                   job_id: int | None = None, log: Callable[[str], None] = print,
                   progress: Callable[[float, str], None] | None = None) -> EnsembleOutcome:
    """Blend the spec's members and record the ensemble run ``run_id`` (artifacts in ``run_dir``).

    Everything is checked and blended before the run is created, so a bad
    member leaves no half-made run behind. Records the chosen method and
    every candidate's scores (``ensemble_candidates``) and, when the blend
    scores below its best member out of fold, the run's ``warning``.
    """
    def step(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, message)

    run_dir = Path(run_dir)
    evaluation = evaluate_ensemble(store, spec, log=log, progress=progress)
    loaded, result, weight_of, fold_of = evaluation.loaded, evaluation.result, evaluation.weights, evaluation.fold_of
    members, truth = loaded.members, loaded.truth
    stored_folds = bool((fold_of >= 0).any())
    classes = loaded.layout.classes
    mapped = spec.calibrate and result.method in RANK_METHODS
    log(f"OOF lwlrap {result.oof_lwlrap:.4f}" + (f" {'cross-fitted' if evaluation.cross_fitted else 'in-sample'}"
                                                 f" ({result.raw_oof_lwlrap:.4f} before the map to probabilities)"
                                                 if mapped else ""))

    step(0.6, "recording")
    folder = RunFolder(run_dir).create()
    dataset_id = loaded.dataset["id"]
    try:
        record_run(store, run_id, folder, kind="ensemble", job_id=job_id, dataset_id=dataset_id, device="cpu",
                   name=spec.name or f"{result.method} blend of {len(members)}", model="ensemble",
                   config=to_dict(spec), config_hash=spec_hash(spec),
                   extra={"weights": weight_of, "method": result.method, "raw_oof_lwlrap": result.raw_oof_lwlrap,
                          "candidates": evaluation.candidates, "warning": result.warning,
                          "best_member": result.best_member, "best_member_oof_lwlrap": result.best_member_lwlrap})
        store.set_run_members(run_id, list(weight_of.items()))
        store.record_ensemble_candidates(run_id, evaluation.candidates)
        store.set_run_warning(run_id, result.warning)
        folder.save_array(folder.oof, result.oof)
        if stored_folds:
            for k in sorted(set(fold_of.tolist()) - {-1}):
                rows = fold_of == k
                record_fold_scores(store, run_id, int(k), truth[rows], result.oof[rows], classes)
        store.record_class_scores(run_id, OOF, classes, result.per_class, result.class_weights,
                                  truth.sum(axis=0))

        submission, test_score = None, None
        parts = [f"{result.method}: OOF lwlrap {result.oof_lwlrap:.4f}"
                 + (f" (uncalibrated {result.raw_oof_lwlrap:.4f})" if mapped else "")]
        if result.test is not None:
            step(0.8, "writing test scores")
            folder.save_array(folder.test, result.test)
            test_score, submission = score_test(loaded.layout, result.test,
                                                submission=folder.submission if spec.write_submission else None,
                                                log=log)
            if test_score is not None:
                parts.append(f"test lwlrap {test_score:.4f}")
                log(f"test lwlrap {test_score:.4f}")
        else:
            parts.append("no submission: " + "; ".join(loaded.missing_test))
        if result.warning:
            parts.append(f"warning: {result.warning}")
        store.finish_run(run_id, status="done", cv_lwlrap=result.oof_lwlrap, test_lwlrap=test_score)
    except Exception:
        # A queued job's failure is recorded by the worker; a blend made in-process records its own.
        if job_id is None:
            store.finish_run(run_id, status="failed")
        raise
    if job_id is None:
        record_run_lineage(store, run_id)   # a queued job's are recorded by engine.jobs.__main__
    step(1.0, "done")
    return EnsembleOutcome(run_id=run_id, run_dir=run_dir, weights=weight_of, cv_lwlrap=result.oof_lwlrap,
                           raw_cv_lwlrap=result.raw_oof_lwlrap, test_lwlrap=test_score, submission=submission,
                           message="; ".join(parts), method=result.method, warning=result.warning)


def run(ctx: JobContext) -> str:
    """The worker's entry point: build the ensemble the job's spec describes."""
    spec: EnsembleSpec = ctx.load_spec()
    outcome = build_ensemble(ctx.store, spec, run_id=ctx.run_id, run_dir=ctx.run_dir, job_id=ctx.job.id,
                             log=ctx.log, progress=ctx.progress)
    return outcome.message
