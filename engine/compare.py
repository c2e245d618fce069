"""Runs side by side: what differs in their configs, fold mean ± std next to out-of-fold LWLRAP,
learning curves, and the 80 classes with each run's per-class LRAP and its delta against a baseline.

Standard library only (the console imports it). ``fsat compare A B`` and the
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


@dataclass
class RunSide:
    """One run of a comparison."""

    run_id: str
    run: dict
    folds: list[dict]
    classes: dict[int, dict]
    epochs: list[dict]

    @property
    def fold_mean_std(self) -> tuple[float | None, float | None]:
        """Mean ± std of the per-fold LWLRAP."""
        return mean_std([f["lwlrap"] for f in self.folds])


@dataclass
class Comparison:
    """Two or more runs and a baseline (one of them) to take deltas against."""

    sides: list[RunSide]
    baseline: str
    class_names: dict[int, str] = field(default_factory=dict)

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
        """Per run: kind, model, OOF (CV) LWLRAP, fold mean ± std, folds, test, delta CV vs the baseline."""
        base = self.side(self.baseline).run.get("cv_lwlrap")
        rows = []
        for s in self.sides:
            mean, std = s.fold_mean_std
            cv = s.run.get("cv_lwlrap")
            rows.append({"run_id": s.run_id, "kind": s.run.get("kind"), "model": s.run.get("model"),
                         "name": s.run.get("name"), "cv_lwlrap": cv, "fold_mean": mean, "fold_std": std,
                         "folds": len(s.folds), "test_lwlrap": s.run.get("test_lwlrap"),
                         "delta_cv": None if cv is None or base is None else cv - base,
                         "baseline": s.run_id == self.baseline})
        return rows

    def class_rows(self) -> list[dict]:
        """One row per class: ``lrap:<run>`` for each run and ``delta:<run>`` for each non-baseline run."""
        base = self.side(self.baseline).classes
        rows = []
        for idx in sorted(self.class_names):
            row: dict[str, Any] = {"class_idx": idx, "class_name": self.class_names[idx]}
            weight = next((s.classes[idx]["weight"] for s in self.sides if idx in s.classes), None)
            row["weight"] = weight
            b = (base.get(idx) or {}).get("lrap")
            for s in self.sides:
                value = (s.classes.get(idx) or {}).get("lrap")
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


def compare_runs(store: Any, run_ids: Sequence[str], baseline: str | None = None, *,
                 class_fold: int = OOF) -> Comparison:
    """Load two or more runs for comparison; ``baseline`` defaults to the first.

    Raises FsatError naming an unknown run or a baseline that is not among the runs.
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
    names: dict[int, str] = {}
    for run_id in run_ids:
        run = store.get_run(run_id)
        if run is None:
            raise FsatError(f"no run {run_id!r} (see `fsat runs`)")
        classes = {int(c["class_idx"]): c for c in store.class_scores(run_id, class_fold)}
        for idx, c in classes.items():
            names.setdefault(idx, c["class_name"])
        sides.append(RunSide(run_id, run, store.fold_scores(run_id), classes, store.epochs(run_id)))
    return Comparison(sides=sides, baseline=baseline, class_names=names)


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
    parts = [f"# Comparison of {', '.join(comp.run_ids)} (baseline {comp.baseline})", "", "## Runs", ""]
    summary = comp.summary_rows()
    for r in summary:
        r["fold_mean_std"] = _pm(r["fold_mean"], r["fold_std"])
        r["delta_cv"] = "baseline" if r["baseline"] else signed(r["delta_cv"])
    parts.append(table_markdown(summary, ["run_id", "kind", "model", "cv_lwlrap", "fold_mean_std", "folds",
                                          "test_lwlrap", "delta_cv"],
                                ["run", "kind", "model", "OOF LWLRAP", "fold mean ± std", "folds", "test",
                                 "Δ OOF vs baseline"]))
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
