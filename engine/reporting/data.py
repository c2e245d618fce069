"""A report's numbers: gathered from the store and the run folders into ``engine.reporting.model``, nothing drawn.

Every number is read through the code the CLI and the console already use:
``engine.compare`` (comparisons, config differences, mean ± std, learning
curves), ``engine.runs.reports`` (the TTA gain), ``engine.runs.members`` (the
curated truth), ``engine.curriculum.audit_report`` and
``engine.jobs.ensemble.evaluate_ensemble`` (a blend not saved yet, scored as
the ensemble job would). A part the target lacks (an ensemble has no epochs,
a run no test scores) is left out and named in ``Report.absent``.

Targets: :func:`gather_run`, :func:`gather_comparison`, :func:`gather_blend`,
:func:`gather_sweep` (the table of ``engine.sweeps.sweep_table``, what ``fsat
sweep show`` prints, drawn as one :class:`~engine.reporting.model.SweepPoint`
per configuration). A new target is one more ``gather_*`` function returning a
:class:`~engine.reporting.model.Report`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from engine.compare import METRICS, Comparison, best_points, compare_runs, fold_series, flatten, mean_series, mean_std
from engine.errors import FsatError
from engine.reporting.model import (AuditBars, ClassBars, Curve, CurvePanel, Figure, LearningCurves, MemberScores,
                                    MethodScores, OutrankingBars, Report, ScoreSpreads, Section, Spread, SweepPoint,
                                    SweepPoints, Table)
from engine.runs.reports import tta_comparison
from engine.store import OOF

__all__ = ["BlendFacts", "gather_blend", "gather_comparison", "gather_run", "gather_sweep"]

#: The learning-curve panels of a report: val LWLRAP, val loss, train loss (METRICS order).
CURVE_METRICS = METRICS[:3]
#: Pairs and classes shown in the outranking view.
OUTRANKING_LIMIT = 20


# -- small helpers --------------------------------------------------------------------------------


def when(timestamp: float | None) -> str:
    """A stored Unix time as ``2026-11-30 12:00 UTC`` ('' when missing)."""
    if timestamp is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(timestamp)))


def _value(value: Any) -> Any:
    """A config value as a table shows it (lists and dicts as JSON)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _planned_epochs(run: dict) -> int | None:
    epochs = ((run.get("config") or {}).get("train") or {}).get("epochs")
    return int(epochs) if isinstance(epochs, (int, float)) else None


def _stage_starts(epochs: list[dict]) -> list[tuple[int, str]]:
    """The first epoch of each curriculum stage (of the first fold that has stages)."""
    staged = [e for e in epochs if e.get("stage")]
    if not staged:
        return []
    fold = min(int(e["fold"]) for e in staged)
    starts: list[tuple[int, str]] = []
    for e in sorted((e for e in staged if int(e["fold"]) == fold), key=lambda e: int(e["epoch"])):
        if not starts or starts[-1][1] != e["stage"]:
            starts.append((int(e["epoch"]), str(e["stage"])))
    return starts


def _relation(run: dict) -> str:
    """What a run's parent is to it."""
    return {"curriculum": "teacher", "infer": "trained run"}.get(str(run.get("kind")), "parent")


# -- sections shared by the targets -------------------------------------------------------------------


def learning_section(run: dict, epochs: list[dict], folds: list[dict]) -> Section:
    """Per-fold learning curves with each fold's best epoch and the mean over folds; the fold table."""
    section = Section("learning", "Learning")
    if not epochs:
        return section
    best = {int(f["fold"]): int(f["best_epoch"]) for f in folds if f.get("best_epoch") is not None}
    stages = _stage_starts(epochs)
    panels = []
    for metric, label, _ in CURVE_METRICS:
        series = fold_series(epochs, metric)
        if not series:
            continue
        curves = [Curve(f"fold {k}", points) for k, points in sorted(series.items())]
        mean = mean_series(series)
        if mean:
            curves.append(Curve("mean", mean, "mean"))
        panels.append(CurvePanel(label, curves, best_points(series, best) if metric == "val_lwlrap" else [],
                                 _planned_epochs(run), stages))
    if panels:
        caption = "One line per fold, the mean over folds (black) and each finished fold's best epoch (star)."
        if stages:
            caption += " Dotted lines: curriculum stage starts (" + ", ".join(s for _, s in stages) + ")."
        section.figures.append(Figure("learning-curves", "Learning curves", LearningCurves(panels), caption))
    by_fold: dict[int, list[dict]] = {}
    for e in epochs:
        by_fold.setdefault(int(e["fold"]), []).append(e)
    scores = {int(f["fold"]): f for f in folds}
    rows = []
    for k in sorted(set(by_fold) | set(scores)):
        rec = by_fold.get(k, [])
        score = scores.get(k, {})
        seconds = [float(e["seconds"]) for e in rec if e.get("seconds") is not None]
        rate = [float(e["clips_per_sec"]) for e in rec if e.get("clips_per_sec") is not None]
        rows.append([k, score.get("lwlrap"), score.get("best_epoch"), score.get("n_val"), len(rec),
                     sum(seconds) if seconds else None, sum(rate) / len(rate) if rate else None])
    section.tables.append(Table("Folds", ["fold", "LWLRAP", "best epoch", "n_val", "epochs", "seconds",
                                          "clips/s"], rows))
    return section


def _spread(run: dict, folds: list[dict], label: str | None = None, baseline: bool = False) -> Spread:
    return Spread(label or str(run['run_id']), [float(f["lwlrap"]) for f in folds], run.get("cv_lwlrap"),
                  run.get("test_lwlrap"), baseline)


def scores_section(spreads: list[Spread], lines: Sequence[str] = ()) -> Section:
    """Fold scores with mean ± std next to out-of-fold and test LWLRAP: a figure and a table."""
    section = Section("scores", "Scores", list(lines))
    if not any(s.folds or s.oof is not None for s in spreads):
        return section
    section.figures.append(Figure(
        "scores", "Fold, out-of-fold and test LWLRAP", ScoreSpreads(spreads),
        "Dots: each fold's LWLRAP; bar: fold mean ± std; diamond: out-of-fold LWLRAP; cross: test LWLRAP."))
    rows = []
    for s in spreads:
        mean, std = s.mean_std
        rows.append([s.label + (" (baseline)" if s.baseline else ""), s.oof, mean, std, len(s.folds), s.test])
    section.tables.append(Table("LWLRAP", ["run", "out-of-fold", "fold mean", "fold std", "folds", "test"], rows))
    return section


def class_lrap_section(classes: list[dict], title: str = "Classes") -> Section:
    """The 80 classes' out-of-fold LRAP as sorted bars, and the table."""
    section = Section("classes", title)
    if not classes:
        return section
    names = [c["class_name"] for c in classes]
    section.figures.append(Figure("class-lrap", "Out-of-fold LRAP per class",
                                  ClassBars(names, [("LRAP", [c.get("lrap") for c in classes])], "LRAP"),
                                  "Sorted, best first; a class without positives has no bar."))
    ranked = sorted(classes, key=lambda c: (c.get("lrap") is None, -(c.get("lrap") or 0.0)))
    section.tables.append(Table("Per-class LRAP (out-of-fold)", ["class", "LRAP", "weight", "positives"],
                                [[c["class_name"], c.get("lrap"), c.get("weight"), c.get("n_pos")] for c in ranked],
                                folded=True))
    return section


def class_lrap_figures(names: list[str], lrap: list[tuple[str, list[float | None]]], baseline: int,
                       deltas: Sequence[tuple[str, list[float | None]]] = (),
                       delta_colors: list[int] | None = None) -> list[Figure]:
    """Per-class out-of-fold LRAP of each series sorted by the baseline series', and each delta series against it.

    A comparison's runs against its baseline; a sweep's best point against the preset's own point.
    """
    base = lrap[baseline][0]
    figures = [Figure("class-lrap", "Out-of-fold LRAP per class",
                      ClassBars(names, list(lrap), "LRAP", sort_by=baseline),
                      f"Sorted by the baseline ({base}), best first.")]
    if deltas:
        figures.append(Figure("class-delta", f"LRAP against the baseline {base}",
                              ClassBars(names, list(deltas), f"LRAP − LRAP of {base}", signed=True,
                                        colors=delta_colors),
                              f"Sorted by {deltas[0][0]}'s delta, biggest gain first."))
    return figures


def outranking_figure(run_id: str, truth: Any, scores: Any, classes: list[str], name: str) -> Figure:
    """The outranking view of one run's scores against the truth."""
    from engine.reporting.confusion import top_pairs

    out = top_pairs(truth, scores, classes, limit=OUTRANKING_LIMIT)
    return Figure(name, f"Classes that outrank a true label: {run_id}",
                  OutrankingBars(run_id, out.pairs, out.clips, out.labels),
                  f"Over {out.clips} clips with scores ({out.labels} true labels): how often an absent class was "
                  "scored above a true one (the share is of that true class's labels). Each such pair lowers LRAP.")


class _Truths:
    """The curated label matrix of each dataset, read once (``engine.runs.members.BlendBench``)."""

    def __init__(self, store: Any) -> None:
        from engine.runs.members import BlendBench

        self.store = store
        self.bench = BlendBench()

    def of(self, dataset_id: int | None) -> tuple[Any, list[str]]:
        """``(truth, classes)``; FsatError says why there is none."""
        if dataset_id is None:
            raise FsatError("the run has no dataset recorded")
        dataset = self.store.get_dataset(int(dataset_id))
        if dataset is None:
            raise FsatError(f"its dataset (id {dataset_id}) is no longer in the database")
        return self.bench.truth(dataset), list(dataset["classes"])


def _oof_of(run: dict, db_path: Path) -> Any:
    """A run's ``oof.npy``; FsatError says why it cannot be read."""
    from engine.atomic import load_npy
    from engine.runs.folder import RunFolder

    folder = RunFolder.of(run, db_path)
    if not folder.oof.is_file():
        raise FsatError(f"{folder.oof} does not exist")
    return load_npy(folder.oof, remedy="run it again to rewrite it")


def outranking_for(run: dict, db_path: Path, truths: _Truths, name: str) -> tuple[Figure | None, str | None]:
    """The outranking figure of a run, or why there is none."""
    import numpy as np

    try:
        oof = _oof_of(run, db_path)
        truth, classes = truths.of(run.get("dataset_id"))
    except FsatError as err:
        return None, f"the outranking view of {str(run['run_id'])}: {err}"
    if oof.shape != truth.shape:
        return None, (f"the outranking view of {str(run['run_id'])}: oof.npy has shape {tuple(oof.shape)}, the dataset "
                      f"{truth.shape[0]} curated clips × {truth.shape[1]} classes")
    if not np.isfinite(oof).all(axis=1).any():
        return None, f"the outranking view of {str(run['run_id'])}: no fold scored yet"
    return outranking_figure(str(run['run_id']), truth, oof, classes, name), None


def tta_section(store: Any, run: dict) -> Section:
    """The TTA gain of a trained run (with its newest inference run) or of an inference run, per class."""
    section = Section("tta", "Test-time augmentation")
    cmp = tta_comparison(store, run, OOF)
    if cmp is None:
        return section
    gain = cmp.gain
    section.lines.append(
        f"Out-of-fold LWLRAP without TTA ({str(cmp.base['run_id'])}, centre crop): {_score(cmp.base.get('cv_lwlrap'))}; "
        f"with TTA ({str(cmp.tta['run_id'])}{', ' + cmp.settings if cmp.settings else ''}): {_score(cmp.tta.get('cv_lwlrap'))}; "
        f"gain {_signed(gain)}.")
    rows = cmp.class_rows()
    if any(r["gain"] is not None for r in rows):
        section.figures.append(Figure("tta-gain", "TTA gain per class",
                                      ClassBars([r["class_name"] for r in rows], [("gain", [r["gain"] for r in rows])],
                                                "LRAP with TTA − without", signed=True),
                                      "Out-of-fold LRAP with TTA minus without, sorted by gain."))
    folds = cmp.fold_rows()
    if folds:
        section.tables.append(Table("Per fold", ["fold", "with TTA", "without TTA", "gain"],
                                    [[r["fold"], r["with_tta"], r["without_tta"], r["gain"]] for r in folds]))
    section.tables.append(Table("Per class", ["class", "with TTA", "without TTA", "gain", "positives"],
                                [[r["class_name"], r["with_tta"], r["without_tta"], r["gain"], r["n_pos"]]
                                 for r in sorted(rows, key=lambda r: (r["gain"] is None, -(r["gain"] or 0.0)))],
                                folded=True))
    return section


@dataclass
class BlendFacts:
    """A blend, saved or not: members and weights, the method, every candidate method's scores."""

    members: list[tuple[str, float, float | None]]    # run id, weight (share), member's OOF LWLRAP
    blend_oof: float | None
    method: str
    requested: str
    candidates: list[dict]
    best_member: tuple[str, float] | None
    cross_fitted: bool | None
    warning: str | None = None
    member_test: dict[str, float | None] = field(default_factory=dict)
    blend_test: float | None = None


def blend_section(facts: BlendFacts) -> Section:
    """Members and weights, every candidate method's cross-fitted score, and the blend against each member."""
    section = Section("blend", "Blend")
    fitted = {True: "cross-fitted over the dataset's stored folds", False: "in-sample (the dataset has no stored "
              "folds)", None: ""}[facts.cross_fitted]
    section.lines.append(f"Method {facts.method}" + (f" (chosen by {facts.requested})" if facts.requested == "auto"
                                                     else "") + f"; out-of-fold LWLRAP {_score(facts.blend_oof)}"
                         + (f", {fitted}" if fitted else "") + ".")
    if facts.warning:
        section.lines.append(f"Warning: {facts.warning}")
    if facts.members:
        section.figures.append(Figure("blend-members", "The blend against each member",
                                      MemberScores(facts.members, facts.blend_oof),
                                      "Each member's out-of-fold LWLRAP (its weight in the label); the line is the "
                                      "blend's."))
        section.tables.append(Table("Members", ["run", "weight", "out-of-fold", "blend − member", "test"],
                                    [[m, w, s, None if s is None or facts.blend_oof is None else facts.blend_oof - s,
                                      facts.member_test.get(m)] for m, w, s in facts.members]))
    if facts.candidates:
        section.figures.append(Figure(
            "blend-methods", "Every candidate method",
            MethodScores([(c["method"], c.get("oof_lwlrap"), bool(c.get("chosen"))) for c in facts.candidates],
                         facts.best_member),
            "Out-of-fold LWLRAP of each method on these members and weights; the chosen one is filled, the "
            "dashed line is the best member alone."))
        section.tables.append(Table("Candidate methods", ["method", "out-of-fold", "before the map", "test",
                                                          "chosen", "note"],
                                    [[c["method"], c.get("oof_lwlrap"), c.get("raw_oof_lwlrap"), c.get("test_lwlrap"),
                                      "yes" if c.get("chosen") else "", c.get("note") or ""]
                                     for c in facts.candidates]))
    return section


def curriculum_section(store: Any, run_id: str) -> Section:
    """Gain over the teacher, the classes it helped, kept/dropped/added labels and the filter's precision/recall."""
    from engine.curriculum import audit_report

    report = audit_report(store, run_id)
    section = Section("curriculum", "Curriculum")
    overall = next((g for g in report["gain"] if g["fold"] == OOF), None)
    section.lines.append(f"Student {run_id}, teacher {report['teacher_run_id']}"
                         + (f": out-of-fold LWLRAP {_score(overall['student_lwlrap'])} against "
                            f"{_score(overall['teacher_lwlrap'])}, gain {_signed(overall['gain'])}." if overall else "."))
    classes = report["classes"]
    if classes:
        section.figures.append(Figure("curriculum-gain", "Gain over the teacher per class",
                                      ClassBars([c["class_name"] for c in classes],
                                                [("gain", [c["gain"] for c in classes])],
                                                "student LRAP − teacher LRAP", signed=True),
                                      "Out-of-fold LRAP of the student minus the teacher's, sorted by gain."))
    audit = report["audit"]   # sorted by the share of weak labels dropped
    if audit:
        truth = report["truth_known"]
        section.figures.append(Figure(
            "curriculum-audit", "Noisy labels kept, dropped and added per class",
            AuditBars([a["class_name"] for a in audit], [a["n_kept"] or 0.0 for a in audit],
                      [a["n_dropped"] or 0.0 for a in audit], [a["n_added"] or 0.0 for a in audit],
                      [a["precision"] for a in audit] if truth else None,
                      [a["recall"] for a in audit] if truth else None,
                      [a["weak_precision"] for a in audit] if truth else None),
            "Means per fold, sorted by the share of weak labels dropped"
            + ("; right: the final labels' precision and recall against the noisy set's truth, and the weak "
               "labels' precision." if truth else "; the noisy set's truth is not known, so no precision/recall.")))
        columns = ["class", "labelled", "kept", "dropped", "share dropped", "added", "mean weight"]
        keys = ["class_name", "n_labelled", "n_kept", "n_dropped", "share_dropped", "n_added", "mean_weight"]
        if truth:
            columns += ["weak precision", "precision", "recall"]
            keys += ["weak_precision", "precision", "recall"]
        section.tables.append(Table("Noisy-label audit per class (means per fold)", columns,
                                    [[a[k] for k in keys] for a in audit], folded=True))
    gains = [g for g in report["gain"] if g["fold"] != OOF]
    if gains:
        section.tables.append(Table("Student against teacher per fold", ["fold", "student", "teacher", "gain"],
                                    [[g["fold"], g["student_lwlrap"], g["teacher_lwlrap"], g["gain"]] for g in gains]))
    if report["swaps"]:
        section.tables.append(Table("Loss swaps", ["fold", "stage", "attempt", "from", "to", "stage LWLRAP",
                                                   "teacher", "tolerance"],
                                    [[s["fold"], s["stage"], s["attempt"], s["loss_from"], s["loss_to"],
                                      s["stage_lwlrap"], s["teacher_lwlrap"], s["tolerance"]] for s in report["swaps"]]))
    return section


def _lineage(store: Any, run: dict) -> list[list[Any]]:
    """The run's ancestors (parent, its parent ...), its members and the runs made from it."""
    rows: list[list[Any]] = []
    seen = {str(run['run_id'])}
    child = run
    while child.get("parent_run_id") and str(child["parent_run_id"]) not in seen:
        parent_id = str(child["parent_run_id"])
        seen.add(parent_id)
        parent = store.get_run(parent_id)
        rows.append([_relation(child) + (f" of {str(child['run_id'])}" if child is not run else ""), parent_id,
                     parent.get("kind") if parent else "not in the database", parent.get("cv_lwlrap") if parent else None])
        if parent is None:
            break
        child = parent
    for m in store.run_members(str(run['run_id'])):
        member = store.get_run(str(m["member_run_id"]))
        rows.append(["member", m["member_run_id"], member.get("kind") if member else "not in the database",
                     member.get("cv_lwlrap") if member else None])
    for c in store.child_runs(str(run['run_id'])):
        rows.append([f"{c['kind']} run made from it", c["run_id"], c["kind"], c.get("cv_lwlrap")])
    return rows


def _device_rows(store: Any, run: dict, db_path: Path) -> list[list[Any]]:
    """Device figures as recorded: the device, the loader record of config.json, time and throughput, Ray nodes."""
    from engine.runs.folder import RunFolder

    rows: list[list[Any]] = [["device", run.get("device") or ""]]
    folder = RunFolder.of(run, db_path)
    try:
        record = folder.load_config() if folder.config.is_file() else {}
    except FsatError:
        record = {}
    for key, value in sorted((record.get("loader") or {}).items()):
        rows.append([f"loader.{key}", _value(value)])
    for key, value in sorted((record.get("requested") or {}).items()):
        rows.append([f"requested {key}", _value(value)])
    epochs = store.epochs(str(run['run_id']))
    seconds = [float(e["seconds"]) for e in epochs if e.get("seconds") is not None]
    if seconds:
        rows.append(["epochs recorded", len(epochs)])
        rows.append(["training seconds (all folds)", round(sum(seconds), 1)])
        rows.append(["seconds per epoch (mean)", round(sum(seconds) / len(seconds), 2)])
    rate = [float(e["clips_per_sec"]) for e in epochs if e.get("clips_per_sec") is not None]
    if rate:
        rows.append(["clips per second (mean over epochs)", round(sum(rate) / len(rate), 1)])
    if run.get("job_id") is not None:
        for task in store.fold_tasks(int(run["job_id"])):
            if task.get("node"):
                rows.append([f"fold {task['fold']} node (try {task['task_attempt']})", task["node"]])
    return rows


def provenance_section(store: Any, run: dict, db_path: Path) -> Section:
    """The configuration, the environment, the lineage and the device figures of one run."""
    section = Section("provenance", "Provenance")
    env = [["run", str(run['run_id'])], ["created", when(run.get("created_at"))], ["finished", when(run.get("finished_at"))],
           ["config hash", run.get("config_hash") or ""], ["git commit", run.get("git_commit") or ""],
           ["seed", run.get("seed")], ["run folder", run.get("run_dir") or ""]]
    env += [[name, version] for name, version in sorted((run.get("versions") or {}).items())]
    section.tables.append(Table("Environment", ["", "value"], env))
    lineage = _lineage(store, run)
    if lineage:
        section.tables.append(Table("Lineage", ["relation", "run", "kind", "out-of-fold"], lineage))
    section.tables.append(Table("Device", ["", "value"], _device_rows(store, run, db_path)))
    config = flatten(run.get("config") or {})
    if config:
        section.tables.append(Table("Configuration", ["setting", "value"],
                                    [[k, _value(v)] for k, v in sorted(config.items())], folded=True))
    return section


def _score(value: float | None) -> str:
    return "—" if value is None else f"{float(value):.4f}"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{float(value):+.4f}"


# -- targets ------------------------------------------------------------------------------------


def _run_or_fail(store: Any, run_id: str) -> dict:
    run = store.get_run(run_id)
    if run is None:
        # Sweep ids are whole numbers, run ids never are: say how to report the sweep.
        hint = f"; the report of sweep {run_id} is `fsat report {run_id} --sweep`" if run_id.isdigit() else ""
        raise FsatError(f"no run {run_id!r} (see `fsat runs`{hint})")
    return run


def _header(run: dict, store: Any) -> str:
    dataset = store.get_dataset(int(run["dataset_id"])) if run.get("dataset_id") is not None else None
    parts = [f"{run['kind']} run", run.get("model") or "", f"status {run.get('status')}",
             f"dataset {dataset['name']}" if dataset else "", f"created {when(run.get('created_at'))}"]
    return " · ".join(p for p in parts if p)


def _blend_facts_of_run(store: Any, run: dict) -> BlendFacts | None:
    """The blend of a saved ensemble run, from what the ensemble job recorded."""
    members = store.run_members(str(run['run_id']))
    candidates = store.ensemble_candidates(str(run['run_id']))
    if not members and not candidates:
        return None
    rows = []
    member_test: dict[str, float | None] = {}
    for m in members:
        member = store.get_run(str(m["member_run_id"])) or {}
        rows.append((str(m["member_run_id"]), float(m["weight"]), member.get("cv_lwlrap")))
        member_test[str(m["member_run_id"])] = member.get("test_lwlrap")
    scored = [(m, s) for m, _, s in rows if s is not None]
    best = max(scored, key=lambda r: r[1]) if scored else None
    chosen = next((c["method"] for c in candidates if c.get("chosen")), None)
    requested = str((run.get("config") or {}).get("method") or chosen or "")
    cross_fitted = None
    if run.get("dataset_id") is not None and candidates:
        dataset = store.get_dataset(int(run["dataset_id"]))
        if dataset is not None:
            cross_fitted = len(store.get_folds(int(dataset["id"]))) >= int(dataset.get("n_curated") or 0) > 0
    return BlendFacts(members=rows, blend_oof=run.get("cv_lwlrap"), method=chosen or requested, requested=requested,
                      candidates=candidates, best_member=best, cross_fitted=cross_fitted, warning=run.get("warning"),
                      member_test=member_test, blend_test=run.get("test_lwlrap"))


def gather_run(store: Any, run_id: str, db_path: Path | str) -> Report:
    """The report of one run: whatever of learning, scores, classes, TTA, blend and curriculum it has."""
    db_path = Path(db_path)
    run = _run_or_fail(store, run_id)
    title = f"{str(run['run_id'])}" + (f" — {run['name']}" if run.get("name") and run["name"] != str(run['run_id']) else "")
    report = Report("run", title, _header(run, store), [])
    if run.get("warning"):
        report.warnings.append(str(run["warning"]))
    folds = store.fold_scores(run_id)
    epochs = store.epochs(run_id)
    truths = _Truths(store)

    spreads = [_spread(run, folds)]
    parent = store.get_run(str(run["parent_run_id"])) if run.get("parent_run_id") else None
    if parent is not None:
        spreads.append(_spread(parent, store.fold_scores(str(parent['run_id'])),
                               f"{str(parent['run_id'])} ({_relation(run)})"))
    for m in store.run_members(run_id):
        member = store.get_run(str(m["member_run_id"]))
        if member is not None:
            spreads.append(_spread(member, store.fold_scores(str(member['run_id'])), f"{str(member['run_id'])} (member)"))
    lines = []
    mean, std = mean_std([f["lwlrap"] for f in folds])
    if folds or run.get("cv_lwlrap") is not None:
        lines.append(f"Out-of-fold LWLRAP {_score(run.get('cv_lwlrap'))}; fold mean "
                     f"{_score(mean)}{' ± ' + format(std, '.4f') if std is not None else ''} over {len(folds)} "
                     f"fold{'s' if len(folds) != 1 else ''}; test LWLRAP {_score(run.get('test_lwlrap'))}.")
    report.add(scores_section(spreads, lines))
    facts = _blend_facts_of_run(store, run)
    if facts is not None:
        report.add(blend_section(facts))
    if run.get("test_lwlrap") is None:
        report.absent.append("test LWLRAP: the run has no scored test predictions (no test ground truth, or no "
                             "test scores)")

    learning = learning_section(run, epochs, folds)
    report.add(learning)
    if not learning:
        article = "an" if str(run["kind"])[:1] in "aeiou" else "a"
        report.absent.append(f"learning curves: {article} {run['kind']} run records no epochs" if run["kind"] not in
                             ("train", "curriculum") else "learning curves: no epoch recorded yet")

    oof_classes = store.class_scores(run_id, OOF)
    classes = class_lrap_section(oof_classes)
    figure, why = outranking_for(run, db_path, truths, "outranking")
    if figure is not None:
        classes.figures.append(figure)
        classes.tables.append(_outranking_table(figure.data))
    else:
        report.absent.append(str(why))
    report.add(classes)
    if not oof_classes:
        report.absent.append("per-class LRAP: no out-of-fold scores recorded")

    tta = tta_section(store, run)
    report.add(tta)
    if not tta and run["kind"] in ("train", "curriculum", "infer"):
        report.absent.append("TTA gain: no inference run of this run" if run["kind"] != "infer"
                             else "TTA gain: its trained run is no longer in the database")

    if run["kind"] == "curriculum":
        report.add(curriculum_section(store, run_id))
    report.add(provenance_section(store, run, db_path))
    return report


def _outranking_table(data: OutrankingBars) -> Table:
    return Table(f"Outranking pairs: {data.run_id}", ["true label", "scored above it", "times", "share of its labels"],
                 [[t, c, n, share] for t, c, n, share in data.pairs], folded=True)


def gather_comparison(store: Any, run_ids: Sequence[str], baseline: str | None, db_path: Path | str) -> Report:
    """The report of two or more runs against a baseline: the numbers of ``fsat compare``, drawn."""
    db_path = Path(db_path)
    comp = compare_runs(store, run_ids, baseline)
    report = Report("compare", f"Comparison of {len(comp.run_ids)} runs", f"{', '.join(comp.run_ids)} · deltas "
                    f"against {comp.baseline}", [])
    summary = comp.summary_rows()
    spreads = [Spread(s.run_id, [float(f["lwlrap"]) for f in s.folds], s.run.get("cv_lwlrap"),
                      s.run.get("test_lwlrap"), s.run_id == comp.baseline) for s in comp.sides]
    section = scores_section(spreads)
    section.tables[-1:] = [Table("Runs", ["run", "kind", "model", "out-of-fold", "fold mean", "fold std", "folds",
                                          "test", "Δ out-of-fold"],
                                 [[r["run_id"] + (" (baseline)" if r["baseline"] else ""), r["kind"], r["model"],
                                   r["cv_lwlrap"], r["fold_mean"], r["fold_std"], r["folds"], r["test_lwlrap"],
                                   "baseline" if r["baseline"] else r["delta_cv"]] for r in summary])]
    report.add(section)
    report.add(_comparison_learning(comp))
    report.add(_comparison_classes(comp, db_path, store, report))
    tta_rows = []
    for side in comp.sides:
        cmp = tta_comparison(store, side.run, OOF)
        if cmp is not None:
            tta_rows.append([side.run_id, str(cmp.tta['run_id']), cmp.base.get("cv_lwlrap"), cmp.tta.get("cv_lwlrap"), cmp.gain])
    if tta_rows:
        report.add(Section("tta", "Test-time augmentation", tables=[Table(
            "TTA gain of each run that has an inference run", ["run", "inference run", "without TTA", "with TTA",
                                                               "gain"], tta_rows)]))
    report.add(_comparison_provenance(store, comp))
    return report


def _comparison_learning(comp: Comparison) -> Section:
    section = Section("learning", "Learning")
    panels = []
    for metric, label, _ in CURVE_METRICS[:2]:
        curves = []
        for side in comp.sides:
            series = fold_series(side.epochs, metric)
            points = mean_series(series) or next(iter(series.values()), [])
            if points:
                curves.append(Curve(side.run_id, points, "run"))
        if curves:
            planned = [p for p in (_planned_epochs(s.run) for s in comp.sides) if p]
            panels.append(CurvePanel(label, curves, x_max=max(planned) if planned else None))
    if panels:
        section.figures.append(Figure("learning-curves", "Learning curves, mean over folds", LearningCurves(panels),
                                      "One line per run: the mean over its folds at each epoch."))
    return section


def _comparison_classes(comp: Comparison, db_path: Path, store: Any, report: Report) -> Section:
    section = Section("classes", "Classes")
    rows = comp.class_rows()
    if rows:
        names = [r["class_name"] for r in rows]
        base = comp.baseline
        runs = comp.run_ids
        others = [r for r in runs if r != base]
        section.figures += class_lrap_figures(names, [(r, [row[f"lrap:{r}"] for row in rows]) for r in runs],
                                              runs.index(base),
                                              [(r, [row[f"delta:{r}"] for row in rows]) for r in others],
                                              [runs.index(r) for r in others])
        section.tables.append(Table("Per-class LRAP and deltas", ["class"] + [c for c in comp.class_columns()[2:]],
                                    [[r["class_name"]] + [r[c] for c in comp.class_columns()[2:]] for r in rows],
                                    note="delta:<run> is that run's LRAP minus the baseline's.", folded=True))
    truths = _Truths(store)
    for i, side in enumerate(comp.sides):
        figure, why = outranking_for(side.run, db_path, truths, f"outranking-{i + 1}")
        if figure is not None:
            section.figures.append(figure)
            section.tables.append(_outranking_table(figure.data))
        else:
            report.absent.append(str(why))
    return section


def _comparison_provenance(store: Any, comp: Comparison) -> Section:
    section = Section("provenance", "Provenance")
    diff = comp.config_diff()
    section.tables.append(Table("Configuration: only what differs", ["setting", *comp.run_ids],
                                [[k, *[_value(v) for v in values]] for k, values in diff])
                          if diff else Table("Configuration", ["setting"], [], note="The configurations are the same."))
    keys = ["created", "device", "seed", "config hash", "git commit"]
    env = [[k] for k in keys]
    versions = sorted(set().union(*[(s.run.get("versions") or {}).keys() for s in comp.sides]))
    env += [[v] for v in versions]
    for side in comp.sides:
        run = side.run
        values = [when(run.get("created_at")), run.get("device") or "", run.get("seed"), run.get("config_hash") or "",
                  run.get("git_commit") or ""] + [(run.get("versions") or {}).get(v) for v in versions]
        for row, value in zip(env, values):
            row.append(value)
    section.tables.append(Table("Environment", ["", *comp.run_ids], env))
    lineage = []
    for side in comp.sides:
        for row in _lineage(store, side.run):
            lineage.append([side.run_id, *row])
    if lineage:
        section.tables.append(Table("Lineage", ["run", "relation", "related run", "kind", "out-of-fold"], lineage))
    return section


def gather_blend(store: Any, members: Sequence[str], *, weights: Sequence[float] | None = None,
                 method: str = "auto", calibrate: bool = True) -> Report:
    """The report of a blend not saved (the console's ensemble screen): scored as the ensemble job would.

    Runs ``engine.jobs.ensemble.evaluate_ensemble`` (nothing is recorded).
    """
    from engine.jobs.ensemble import evaluate_ensemble
    from engine.specs import EnsembleSpec, from_dict

    data: dict = {"members": list(members), "method": method, "calibrate": calibrate}
    if weights:
        data["weights"] = list(weights)
    spec = from_dict(EnsembleSpec, data)
    ev = evaluate_ensemble(store, spec, log=lambda line: None)
    result = ev.result
    member_oof = {m.name: m.cv_lwlrap for m in ev.loaded.members}
    facts = BlendFacts(members=[(m, w, member_oof.get(m)) for m, w in ev.weights.items()],
                       blend_oof=result.oof_lwlrap, method=result.method, requested=result.requested,
                       candidates=ev.candidates, best_member=(result.best_member, result.best_member_lwlrap),
                       cross_fitted=ev.cross_fitted, warning=result.warning, member_test=ev.member_test_lwlrap,
                       blend_test=ev.test_lwlrap)
    report = Report("blend", f"Blend of {len(ev.weights)} runs (not saved)",
                    f"{', '.join(ev.weights)} · dataset {ev.loaded.dataset['name']} · method {result.method}", [])
    if result.warning:
        report.warnings.append(str(result.warning))
    spreads = [Spread("blend", [], result.oof_lwlrap, ev.test_lwlrap)]
    for m in ev.weights:
        run = store.get_run(m)
        if run is not None:
            spreads.append(_spread(run, store.fold_scores(m), f"{m} (member)"))
    report.add(scores_section(spreads))
    report.add(blend_section(facts))
    classes = list(ev.loaded.dataset["classes"])
    per_class = [{"class_name": name, "lrap": None if v != v else float(v), "weight": float(w), "n_pos": int(n)}
                 for name, v, w, n in zip(classes, result.per_class, result.class_weights, ev.loaded.truth.sum(axis=0))]
    section = class_lrap_section(per_class)
    figure = outranking_figure("blend", ev.loaded.truth, result.oof, classes, "outranking")
    section.figures.append(figure)
    section.tables.append(_outranking_table(figure.data))
    report.add(section)
    report.absent.append("learning curves: a blend records no epochs")
    report.add(Section("provenance", "Provenance", tables=[
        Table("Blend settings", ["setting", "value"], [[k, _value(v)] for k, v in sorted(data.items())]),
        Table("Lineage", ["relation", "run", "kind", "out-of-fold"],
              [["member", m, (store.get_run(m) or {}).get("kind"), member_oof.get(m)] for m in ev.weights])]))
    return report


# -- sweeps -------------------------------------------------------------------------------------------


def _sweep_header(sweep: dict) -> str:
    """Preset, grid or random settings, seeds, screening: the line under a sweep report's title."""
    from engine.sweeps import format_value

    axes = sweep.get("axes") or {}
    parts = [f"preset {sweep['preset']}" if sweep.get("preset") else "a config file"]
    parts += [f"grid {k}=[{', '.join(format_value(v) for v in values)}]"
              for k, values in (axes.get("grid") or {}).items()]
    randoms = axes.get("random") or {}
    parts += [f"random {k}={dist}({', '.join(format_value(a) for a in args)})" for k, (dist, args) in randoms.items()]
    if randoms:
        parts.append(f"{axes.get('count')} points drawn with random seed {axes.get('random_seed')}")
    parts.append(f"seed{'s' if len(sweep['seeds']) != 1 else ''} {', '.join(map(str, sweep['seeds']))}")
    parts.append(f"screened on fold {sweep['screen_fold']}, keep {sweep['keep']}"
                 if sweep.get("screen_fold") is not None else "no screening")
    parts += [f"stage {sweep['stage']}", f"created {when(sweep.get('created_at'))}"]
    return " · ".join(parts)


def _point_label(keys: list[str], row: dict) -> str:
    from engine.sweeps import format_value

    return "\n".join([f"point {row['point']}", *(f"{k}={format_value(row[k])}" for k in keys if row[k] is not None)])


def _sweep_points_section(table: Any) -> Section:
    """One point per configuration with seed error bars, and the sweep's table (``fsat sweep show``'s)."""
    from engine.sweeps import describe, format_value

    sweep, rows = table.sweep, table.rows
    section = Section("points", "Points")
    section.lines.append(f"{len(rows)} point{'s' if len(rows) != 1 else ''} × {len(sweep['seeds'])} "
                         f"seed{'s' if len(sweep['seeds']) != 1 else ''}: one run per point and seed.")
    if sweep.get("screen_fold") is not None:
        section.lines.append(f"Every point trained fold {sweep['screen_fold']} first; the {sweep['keep']} best by that "
                             "fold's LWLRAP (mean over seeds) went on to train every fold, the others stopped there "
                             "(`fsat sweep complete` overrides a decision).")
    best = next((r for r in rows if r["point"] == table.best_point), None)
    if best is not None:
        settings = {k: best[k] for k in table.keys if best[k] is not None}
        section.lines.append(f"Best point {best['point']} ({describe(settings)}): out-of-fold LWLRAP "
                             f"{_score(best['cv_mean'])}" + (f" ± {best['cv_std']:.4f}" if best["cv_std"] is not None
                                                             else "") + f" over its seeds.")
    if any(r["cv_mean"] is not None or r["screen"] is not None for r in rows):
        points = [SweepPoint(_point_label(table.keys, r), r["cv_mean"], r["cv_std"], r["screen"],
                             screened_out=r["decision"] == "screened out",
                             best=r["point"] == table.best_point, preset=r["point"] == table.default_point)
                  for r in rows]
        section.figures.append(Figure(
            "sweep-points", "One point per configuration", SweepPoints(points, sweep.get("screen_fold")),
            "Filled: the mean over seeds of the out-of-fold LWLRAP of the point's runs that trained every fold, the "
            "bar ± their standard deviation (the star is the best point). Hollow: a point screened out, at its "
            "screening score (the screening fold's LWLRAP, mean over seeds), which is not an out-of-fold score."))
    section.tables.append(Table(
        f"Sweep {sweep['id']}", [*table.keys, "point", "rank", "state", "decision", "screen", "OOF mean", "OOF std",
                                 "fold mean", "fold std", "seeds", "folds done", "reason", "runs"],
        [[*(None if r[k] is None else format_value(r[k]) for k in table.keys), r["point"], r["rank"], r["state"],
          r["decision"], r["screen"], r["cv_mean"], r["cv_std"], r["fold_mean"], r["fold_std"], r["seeds"],
          r["folds_done"], r["reason"] or "", r["runs"]] for r in rows],
        note="OOF mean and std: over the seeds whose run trained every fold. Fold mean and std: over the seeds, of "
             "each run's mean fold LWLRAP (the folds it trained). Screen: the screening fold's LWLRAP, mean over "
             "seeds. The same numbers as `fsat sweep show`."))
    return section


def _sweep_classes_section(store: Any, table: Any, runs: list[dict]) -> Section:
    """The best point's per-class LRAP (mean over its seeds) against the preset's own point, when both trained."""
    best, default, classes = table.best_point, table.default_point, table.classes
    names = [c["class_name"] for c in classes]
    if default is not None and default != best and any(c["default"] is not None for c in classes):
        section = Section("classes", "Classes: the best point against the preset's")
        section.lines.append(f"Out-of-fold LRAP per class, mean over seeds, of the best point {best} and of point "
                             f"{default}, the preset's own settings.")
        best_label, preset_label = f"best point {best}", f"preset point {default}"
        section.figures += class_lrap_figures(names, [(best_label, [c["best"] for c in classes]),
                                                      (preset_label, [c["default"] for c in classes])], 1,
                                              [(best_label, [c["delta"] for c in classes])], [0])
        section.tables.append(Table("Per-class LRAP: the best point against the preset's",
                                    ["class", best_label, preset_label, "Δ best − preset"],
                                    [[c["class_name"], c["best"], c["default"], c["delta"]] for c in classes],
                                    folded=True))
        return section
    # The best point alone, with each class's weight and positives as its runs recorded them.
    recorded = next((store.class_scores(str(r["run_id"])) for r in runs if r["point"] == best), [])
    facts = {c["class_idx"]: c for c in recorded}
    section = class_lrap_section([{"class_name": c["class_name"], "lrap": c["best"],
                                   "weight": facts.get(c["class_idx"], {}).get("weight"),
                                   "n_pos": facts.get(c["class_idx"], {}).get("n_pos")} for c in classes],
                                 title="Classes: the best point")
    why = ("the best point is the preset's own settings" if default == best else
           "the sweep does not hold the preset's own settings" if default is None else
           f"the preset's point {default} has not trained every fold")
    section.lines.append(f"Out-of-fold LRAP per class of the best point {best}, mean over its seeds; alone: {why}.")
    return section


def _sweep_provenance(store: Any, table: Any, runs: list[dict], db_path: Path, report: Report) -> Section:
    """The sweep's settings, its runs, and the environment and device of one run (the best point's first)."""
    sweep = table.sweep
    axes = sweep.get("axes") or {}
    settings = [["sweep", sweep["id"]], ["name", sweep.get("name") or ""], ["preset", sweep.get("preset") or ""]]
    settings += [[f"grid {k}", _value(v)] for k, v in (axes.get("grid") or {}).items()]
    settings += [[f"random {k}", _value(v)] for k, v in (axes.get("random") or {}).items()]
    if axes.get("random"):
        settings += [["count", axes.get("count")], ["random seed", axes.get("random_seed")]]
    settings += [["seeds", ", ".join(map(str, sweep["seeds"]))], ["screening fold", sweep.get("screen_fold")],
                 ["keep", sweep.get("keep")], ["stage", sweep.get("stage")], ["created", when(sweep.get("created_at"))]]
    tables = [Table("Sweep settings", ["setting", "value"], settings),
              Table("Runs", ["run", "point", "seed", "job", "run status", "out-of-fold", "folds done", "config hash"],
                    [[r["run_id"], r["point"], r["seed"], r["job_status"] or "", r["run_status"] or "not started",
                      r["cv_lwlrap"], r["folds_done"], r["config_hash"] or ""] for r in runs],
                    note="A screened-out run's out-of-fold score covers its screening fold only.")]
    started = [r for r in runs if r["run_status"] is not None]
    chosen = next((r for r in started if r["point"] == table.best_point), started[0] if started else None)
    base = flatten(sweep.get("base") or {})
    config = Table("Configuration every point starts from (the preset with the sweep's shared settings)",
                   ["setting", "value"], [[k, _value(v)] for k, v in sorted(base.items())], folded=True)
    if chosen is None:
        section = Section("provenance", "Provenance", tables=[*tables, config])
        report.absent.append("environment and device: no run of the sweep has started yet")
        return section
    run = store.get_run(str(chosen["run_id"]))
    section = provenance_section(store, run, db_path)
    section.lines.append(f"Environment, lineage and device of {chosen['run_id']}"
                         + (" (the best point's first seed)" if chosen["point"] == table.best_point else
                            " (the first run started)") + "; every run of the sweep is in the Runs table.")
    section.tables = [*tables, *(t for t in section.tables if t.title != "Configuration"), config]
    return section


def gather_sweep(store: Any, sweep_id: int, db_path: Path | str) -> Report:
    """The report of a sweep: its points with seed error bars, its table, the best point's classes, provenance.

    The numbers are ``engine.sweeps.sweep_table``'s (``fsat sweep show``), read as recorded: a screening
    that ended with no worker to decide it shows its points undecided until ``fsat sweep show`` decides it.
    """
    from engine.sweeps import sweep_table

    db_path = Path(db_path)
    table = sweep_table(store, sweep_id)
    sweep = table.sweep
    runs = store.sweep_runs(sweep_id)
    report = Report("sweep", f"Sweep {sweep['id']}" + (f" — {sweep['name']}" if sweep.get("name") else ""),
                    _sweep_header(sweep), [])
    points = _sweep_points_section(table)
    report.add(points)
    if not points.figures:
        report.absent.append("the points figure: no point has a score yet")
    if table.best_point is None:
        report.absent.append("per-class LRAP: no point has trained every fold yet")
    elif not table.classes:
        report.absent.append(f"per-class LRAP: the best point {table.best_point}'s runs recorded none")
    else:
        report.add(_sweep_classes_section(store, table, runs))
    report.add(_sweep_provenance(store, table, runs, db_path, report))
    return report
