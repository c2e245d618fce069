"""Runs side by side: what differs in their configs, fold mean ± std next to out-of-fold LWLRAP,
learning curves, and the 80 classes with each run's per-class LRAP and its delta against a baseline.

The standard library at import (the console imports it); numpy and the run
folders only when the runs scored different clips must be checked, which the
console does in a worker thread. ``fsat compare A B`` and the
console's compare screen both build a :class:`Comparison` here, so they show
the same numbers; :func:`table_csv` and :func:`table_markdown` write any table
of rows (the console's export key and ``fsat runs --csv`` use them too).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from engine.errors import FsatError
from engine.store import OOF


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"train.epochs": 20, "model.arch": "cnn14", ...}``."""
    out: dict[str, Any] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict) and value:
                out.update(flatten(value, name))
            else:
                out[name] = value
    return out


def config_lines(config: dict) -> list[str]:
    """A run's whole config, one ``key = value`` line per setting, sorted: the ``--set`` form of each."""
    return [f"{key} = {json.dumps(value)}" for key, value in sorted(flatten(config or {}).items())]


def config_diff(configs: Sequence[dict]) -> list[tuple[str, list[Any]]]:
    """``(key, [value per run])`` for the settings that differ between runs (missing = None), sorted by key."""
    flat = [flatten(c or {}) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    rows = []
    for key in keys:
        values = [f.get(key) for f in flat]
        if any(json.dumps(v, sort_keys=True) != json.dumps(values[0], sort_keys=True) for v in values[1:]):
            rows.append((key, values))
    return rows


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None when undefined)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


#: A run's seed-group cells in a comparison's summary rows (``engine.seeds.group_columns``).
GROUP_KEYS = ("seeds", "group_cv", "group_folds")


@dataclass
class RunSide:
    """One run of a comparison.

    ``classes`` maps class name to its per-class row (``lrap``, ``weight``,
    ``n_pos``); ``oof_lwlrap`` is the run's OOF LWLRAP on the comparison's
    clips (its recorded CV LWLRAP unless the runs scored different clips).
    """

    run_id: str
    run: dict
    folds: list[dict]
    classes: dict[str, dict]
    epochs: list[dict]
    oof_lwlrap: float | None = None

    @property
    def fold_mean_std(self) -> tuple[float | None, float | None]:
        """Mean ± std of the per-fold LWLRAP."""
        return mean_std([f["lwlrap"] for f in self.folds])


@dataclass
class ClipBasis:
    """The curated clips a comparison's out-of-fold numbers are computed on.

    ``scored`` is how many clips each run scored (from its ``oof.npy``, or
    from its recorded folds when the file could not be read); ``common`` how
    many every run scored (None when that could not be checked, ``problem``
    says why). ``recomputed``: the runs scored different clips, so OOF
    LWLRAP, per-class LRAP, weights and fold statistics are recomputed on the
    common ones.
    """

    scored: dict[str, int | None]
    total: int | None = None
    common: int | None = None
    recomputed: bool = False
    problem: str = ""
    #: A few words of ``problem`` for a table's border.
    problem_short: str = ""

    def text(self) -> str:
        """One line saying which clips the numbers are on."""
        if self.problem:
            counts = {n for n in self.scored.values()}
            said = "; " + ", ".join(f"{r} scored {n}" for r, n in self.scored.items() if n is not None) \
                if len(counts) > 1 and None not in counts and self.common is None else ""
            what = f"clip sets not checked ({self.problem})" if self.common is None else self.problem
            return f"{what}: out-of-fold numbers are each run's own{said}"
        if not self.recomputed:
            return f"every run scored the same {self.common} curated clips"
        each = ", ".join(f"{r} scored {n}" for r, n in self.scored.items())
        return (f"compared on the {self.common} of {self.total} curated clips every run scored ({each}): "
                "OOF LWLRAP, per-class LRAP and fold statistics are recomputed on them")

    def short(self) -> str:
        """A few words for the compare screen's border."""
        if self.problem:
            what = f"clips not checked ({self.problem_short})" if self.common is None else self.problem_short
            return f"{what}: each run's own OOF"
        if not self.recomputed:
            return f"every run scored the same {self.common} curated clips"
        return f"OOF on the {self.common} of {self.total} curated clips every run scored"

    def as_dict(self) -> dict:
        """For ``fsat compare --json``."""
        return {"common": self.common, "total": self.total, "scored": dict(self.scored),
                "recomputed": self.recomputed, "problem": self.problem or None, "note": self.text()}


@dataclass
class Comparison:
    """Two or more runs and a baseline (one of them) to take deltas against.

    Classes are paired by name (``class_names``, in the baseline's dataset
    order), never by column index: two datasets may list them in another order.
    """

    sides: list[RunSide]
    baseline: str
    class_names: list[str] = field(default_factory=list)
    basis: ClipBasis = field(default_factory=lambda: ClipBasis(scored={}))
    #: run id -> its seed group's cells (``engine.seeds.group_columns``: seeds, group_cv, group_folds).
    groups: dict[str, dict] = field(default_factory=dict)

    @property
    def run_ids(self) -> list[str]:
        """The compared runs, in the order given."""
        return [s.run_id for s in self.sides]

    def side(self, run_id: str) -> RunSide:
        """The side of one run."""
        return next(s for s in self.sides if s.run_id == run_id)

    def config_diff(self) -> list[tuple[str, list[Any]]]:
        """Only the settings that differ."""
        return config_diff([s.run.get("config") or {} for s in self.sides])

    def summary_rows(self) -> list[dict]:
        """Per run: kind, model, OOF (CV) LWLRAP, fold mean ± std, folds, clips, test, delta CV vs the baseline."""
        base = self.side(self.baseline).oof_lwlrap
        rows = []
        for s in self.sides:
            mean, std = s.fold_mean_std
            cv = s.oof_lwlrap
            rows.append({"run_id": s.run_id, "kind": s.run.get("kind"), "model": s.run.get("model"),
                         "name": s.run.get("name"), "cv_lwlrap": cv, "fold_mean": mean, "fold_std": std,
                         "folds": len(s.folds), "clips": self.basis.scored.get(s.run_id),
                         "test_lwlrap": s.run.get("test_lwlrap"),
                         "delta_cv": None if cv is None or base is None else cv - base,
                         "baseline": s.run_id == self.baseline,
                         **{k: (self.groups.get(s.run_id) or {}).get(k) for k in GROUP_KEYS}})
        return rows

    def class_rows(self) -> list[dict]:
        """One row per class: ``lrap:<run>`` for each run and ``delta:<run>`` for each non-baseline run."""
        base = self.side(self.baseline).classes
        rows = []
        for idx, name in enumerate(self.class_names):
            row: dict[str, Any] = {"class_idx": idx, "class_name": name}
            weight = next((s.classes[name]["weight"] for s in [self.side(self.baseline), *self.sides]
                           if name in s.classes), None)
            row["weight"] = weight
            b = (base.get(name) or {}).get("lrap")
            for s in self.sides:
                value = (s.classes.get(name) or {}).get("lrap")
                row[f"lrap:{s.run_id}"] = value
                if s.run_id != self.baseline:
                    row[f"delta:{s.run_id}"] = None if value is None or b is None else value - b
            rows.append(row)
        return rows

    def class_columns(self) -> list[str]:
        """Column keys of :meth:`class_rows`, in display order."""
        cols = ["class_idx", "class_name"]
        for s in self.sides:
            cols.append(f"lrap:{s.run_id}")
            if s.run_id != self.baseline:
                cols.append(f"delta:{s.run_id}")
        return cols + ["weight"]


def compare_runs(store: Any, run_ids: Sequence[str], baseline: str | None = None) -> Comparison:
    """Load two or more runs for comparison; ``baseline`` defaults to the first.

    Classes are paired by name. When the runs scored different curated clips
    (a run of 2 of 5 folds beside a 5-fold run), the out-of-fold numbers are
    recomputed from their ``oof.npy`` on the clips every run scored;
    :attr:`Comparison.basis` says which. Raises FsatError naming an unknown
    run, a baseline that is not among the runs, runs whose datasets list other
    classes or label a clip differently.
    """
    run_ids = [str(r) for r in run_ids]
    if len(run_ids) < 2:
        raise FsatError(f"compare needs two or more runs, got {len(run_ids)}")
    if len(set(run_ids)) != len(run_ids):
        raise FsatError("compare: a run is named twice: " + " ".join(run_ids))
    baseline = baseline or run_ids[0]
    if baseline not in run_ids:
        raise FsatError(f"compare: the baseline {baseline!r} is not one of the compared runs")
    sides = []
    for run_id in run_ids:
        run = store.get_run(run_id)
        if run is None:
            raise FsatError(f"no run {run_id!r} (see `fsat runs`)")
        classes = {c["class_name"]: c for c in store.class_scores(run_id, OOF)}
        sides.append(RunSide(run_id, run, store.fold_scores(run_id), classes, store.epochs(run_id),
                             oof_lwlrap=run.get("cv_lwlrap")))
    datasets = {int(s.run["dataset_id"]): store.get_dataset(int(s.run["dataset_id"]))
                for s in sides if s.run.get("dataset_id") is not None}
    comp = Comparison(sides=sides, baseline=baseline, class_names=_class_order(sides, baseline, datasets))
    comp.basis = _clip_basis(store, comp, datasets)
    from engine.seeds import group_columns, seed_groups

    comp.groups = group_columns(seed_groups(store))
    return comp


def _class_list(side: RunSide, datasets: dict[int, dict | None]) -> list[str]:
    """A run's classes in its dataset's order (its recorded class rows' order without a dataset)."""
    dataset = datasets.get(int(side.run["dataset_id"])) if side.run.get("dataset_id") is not None else None
    if dataset is not None:
        return list(dataset["classes"])
    return [name for name, _ in sorted(side.classes.items(), key=lambda kv: kv[1]["class_idx"])]


def _class_order(sides: list[RunSide], baseline: str, datasets: dict[int, dict | None]) -> list[str]:
    """The classes in the baseline's order; FsatError when two runs were scored on other class lists."""
    lists = {s.run_id: _class_list(s, datasets) for s in sides}
    base = lists[baseline]
    for run_id, names in lists.items():
        if not names or not base or set(names) == set(base):
            continue
        only_base = [c for c in base if c not in set(names)]
        only_run = [c for c in names if c not in set(base)]
        example = "; ".join(part for part in (
            f"{only_base[0]!r} only in {baseline}'s" if only_base else "",
            f"{only_run[0]!r} only in {run_id}'s" if only_run else "") if part)
        raise FsatError(f"compare: {baseline} and {run_id} were scored on different class lists "
                        f"({len(only_base) + len(only_run)} classes differ: {example}); compare runs of "
                        "datasets with the same classes")
    order = list(base)
    for names in lists.values():
        order += [c for c in names if c not in set(order)]
    return order


def _curated_labels(dataset: dict) -> tuple[list[str], Any]:
    """A dataset's curated clip names and label matrix (columns in its class order)."""
    from engine.data.labels import parse_label_csv

    path = Path(dataset["root"]) / "train_curated.csv"
    if not path.is_file():
        raise FsatError(f"{path} is missing: the dataset folder moved or was deleted")
    fnames, truth = parse_label_csv(path, list(dataset["classes"]))
    return list(fnames), truth


def _recorded_clips(side: RunSide) -> int | None:
    """Clips a run scored by its recorded folds (None when it recorded none)."""
    return sum(int(f.get("n_val") or 0) for f in side.folds) or None


def _clip_basis(store: Any, comp: Comparison, datasets: dict[int, dict | None]) -> ClipBasis:
    """Which clips every run scored; recompute the OOF numbers on them when the runs scored different ones."""
    import numpy as np

    from engine.runs.folder import RunFolder
    from engine.runs.members import MemberProblem, read_scores
    from engine.runs.scores import covered_rows

    recorded = {s.run_id: _recorded_clips(s) for s in comp.sides}
    labels: dict[int, tuple[list[str], Any]] = {}
    loaded: dict[str, tuple[list[str], Any, Any, list[str]]] = {}
    for s in comp.sides:
        dataset = datasets.get(int(s.run["dataset_id"])) if s.run.get("dataset_id") is not None else None
        if dataset is None:
            return ClipBasis(recorded, problem=f"run {s.run_id} is linked to no dataset",
                             problem_short=f"{s.run_id}: no dataset")
        oof_path = RunFolder.of(s.run, getattr(store, "path", None)).oof
        try:
            if int(dataset["id"]) not in labels:
                labels[int(dataset["id"])] = _curated_labels(dataset)
            fnames, truth = labels[int(dataset["id"])]
            oof = read_scores(oof_path)
        except MemberProblem as err:
            return ClipBasis(recorded, problem=f"run {s.run_id}: {err}", problem_short=f"{s.run_id}: {err.short}")
        except FsatError as err:
            return ClipBasis(recorded, problem=f"run {s.run_id}'s dataset: {err}",
                             problem_short=f"{s.run_id}: labels unreadable")
        if oof.shape != truth.shape:
            return ClipBasis(recorded, problem=f"{oof_path} has shape {tuple(oof.shape)}, its dataset "
                                               f"{truth.shape[0]}×{truth.shape[1]}",
                             problem_short=f"{s.run_id}: oof.npy of another shape")
        loaded[s.run_id] = (fnames, truth, oof, list(dataset["classes"]))
    names = comp.class_names
    frames = {}
    for run_id, (fnames, truth, oof, classes) in loaded.items():
        cols = [classes.index(c) for c in names]
        covered = covered_rows(oof)
        frames[run_id] = ({f: i for i, f in enumerate(fnames)}, truth[:, cols], oof[:, cols],
                          {f for f, c in zip(fnames, covered) if c})
    base_index, base_truth, _, _ = frames[comp.baseline]
    base_fnames = list(loaded[comp.baseline][0])
    common = [f for f in base_fnames if all(f in frame[3] for frame in frames.values())]
    scored = {run_id: len(frame[3]) for run_id, frame in frames.items()}
    total = max(len(loaded[r][0]) for r in loaded)
    same_dataset = len({s.run.get("dataset_id") for s in comp.sides}) == 1
    truth_common = base_truth[[base_index[f] for f in common]]
    if not common or not truth_common.sum():
        # A run that has scored nothing yet (still training), or runs of disjoint folds: nothing to recompute on.
        return ClipBasis(scored, total=total, common=len(common),
                         problem="no labelled clip was scored by every run (" +
                                 ", ".join(f"{r} scored {n}" for r, n in scored.items()) + ")",
                         problem_short="no clip scored by every run")
    if not same_dataset:
        for run_id, (index, truth, _, _) in frames.items():
            differ = int((truth[[index[f] for f in common]] != truth_common).any(axis=1).sum())
            if differ:
                raise FsatError(f"compare: the datasets of {comp.baseline} and {run_id} label {differ} of the "
                                f"{len(common)} clips both scored differently; compare runs of one dataset")
    if all(len(frame[3]) == len(common) for frame in frames.values()):
        return ClipBasis(scored, total=total, common=len(common))
    from engine.metrics import lwlrap, per_class_lwlrap

    n_pos = truth_common.sum(axis=0)
    for s in comp.sides:
        index, _, oof, _ = frames[s.run_id]
        pred = oof[[index[f] for f in common]]
        s.oof_lwlrap = float(lwlrap(truth_common, pred))
        per_class, weights = per_class_lwlrap(truth_common, pred)
        s.classes = {name: {"class_idx": j, "class_name": name,
                            "lrap": None if np.isnan(per_class[j]) else float(per_class[j]),
                            "weight": float(weights[j]), "n_pos": int(n_pos[j])} for j, name in enumerate(names)}
    if same_dataset:
        # The same folds hold the same clips: fold statistics over the folds every run scored.
        shared = set.intersection(*({f["fold"] for f in s.folds} for s in comp.sides))
        for s in comp.sides:
            s.folds = [f for f in s.folds if f["fold"] in shared]
    return ClipBasis(scored, total=total, common=len(common), recomputed=True)


# -- learning curves -----------------------------------------------------------------------------

#: Per-epoch metrics a learning curve can show: (epochs column, label, higher is better).
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("val_lwlrap", "val LWLRAP", True),
    ("val_loss", "val loss", False),
    ("train_loss", "train loss", False),
    ("lr", "learning rate", False),
)


def fold_series(epochs: list[dict], metric: str) -> dict[int, list[tuple[int, float]]]:
    """fold -> [(epoch, value)] for one metric, skipping epochs where it is missing."""
    series: dict[int, list[tuple[int, float]]] = {}
    for row in epochs:
        value = row.get(metric)
        if value is None:
            continue
        series.setdefault(int(row["fold"]), []).append((int(row["epoch"]), float(value)))
    for points in series.values():
        points.sort()
    return series


def mean_series(series: dict[int, list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The mean over folds at each epoch that at least two folds reached."""
    by_epoch: dict[int, list[float]] = {}
    for points in series.values():
        for epoch, value in points:
            by_epoch.setdefault(epoch, []).append(value)
    return [(e, sum(v) / len(v)) for e, v in sorted(by_epoch.items()) if len(v) >= 2]


def best_points(series: dict[int, list[tuple[int, float]]], best_epochs: dict[int, int]) -> list[tuple[int, float]]:
    """(epoch, value) of each fold's best epoch, where the series has it."""
    out = []
    for fold, epoch in sorted(best_epochs.items()):
        value = dict(series.get(fold, [])).get(epoch)
        if value is not None:
            out.append((epoch, value))
    return out


# -- writing tables ------------------------------------------------------------------------------


def _plain(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def table_csv(rows: Sequence[dict], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    """Rows as CSV text (full values; floats with 4 decimals, missing values empty)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(list(headers or columns))
    for r in rows:
        writer.writerow([_plain(r.get(c)) for c in columns])
    return out.getvalue()


def table_markdown(rows: Sequence[dict], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    """Rows as a GitHub-flavoured Markdown table (``|`` in values escaped)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    heads = list(headers or columns)
    lines = ["| " + " | ".join(cell(h) for h in heads) + " |",
             "| " + " | ".join("---" for _ in heads) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(cell(_plain(r.get(c))) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def comparison_markdown(comp: Comparison) -> str:
    """The whole comparison as Markdown: summary, config differences, per-class LRAP and deltas."""
    parts = [f"# Comparison of {', '.join(comp.run_ids)} (baseline {comp.baseline})", "",
             comp.basis.text()[0].upper() + comp.basis.text()[1:] + ".", "", "## Runs", ""]
    summary = comp.summary_rows()
    for r in summary:
        r["fold_mean_std"] = _pm(r["fold_mean"], r["fold_std"])
        r["delta_cv"] = "baseline" if r["baseline"] else signed(r["delta_cv"])
    parts.append(table_markdown(summary, ["run_id", "kind", "model", "cv_lwlrap", "fold_mean_std", "folds",
                                          "clips", "test_lwlrap", "delta_cv"],
                                ["run", "kind", "model", "OOF LWLRAP", "fold mean ± std", "folds", "clips scored",
                                 "test", "Δ OOF vs baseline"]))
    parts += ["## Config differences", ""]
    diff = comp.config_diff()
    if diff:
        rows = [{"key": k, **{r: v for r, v in zip(comp.run_ids, values)}} for k, values in diff]
        parts.append(table_markdown(rows, ["key", *comp.run_ids], ["setting", *comp.run_ids]))
    else:
        parts.append("The configs are the same.\n")
    parts += ["## Per-class LRAP (out-of-fold)", ""]
    cols = comp.class_columns()
    classes = comp.class_rows()
    for r in classes:
        for key in r:
            if key.startswith("delta:"):
                r[key] = signed(r[key])
    parts.append(table_markdown(classes, cols, [_class_header(c, comp.baseline) for c in cols]))
    return "\n".join(parts)


def _class_header(column: str, baseline: str) -> str:
    if column.startswith("lrap:"):
        return f"LRAP {column[5:]}"
    if column.startswith("delta:"):
        return f"Δ {column[6:]} vs {baseline}"
    return {"class_idx": "#", "class_name": "class"}.get(column, column)


def class_headers(comp: Comparison) -> list[str]:
    """Readable headers for :meth:`Comparison.class_columns`."""
    return [_class_header(c, comp.baseline) for c in comp.class_columns()]


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def signed(value: float | None) -> str:
    """``+0.0123`` / ``-0.0040``, or empty when missing."""
    return "" if value is None else f"{value:+.4f}"


def pm_text(mean: float | None, std: float | None) -> str:
    """``0.8123 ± 0.0140`` (or ``—`` when there are no folds)."""
    return _pm(mean, std) or "—"
