"""What a report is made of: sections with text, tables and figures, each figure's numbers in a dataclass.

A :class:`Report` is a title and an ordered list of :class:`Section` s, each
with lines of text, :class:`Table` s and :class:`Figure` s. A figure holds the
numbers of one plot in a dataclass per kind of plot (:class:`LearningCurves`,
:class:`ScoreSpreads`, :class:`ClassBars`, :class:`OutrankingBars`,
:class:`MethodScores`, :class:`MemberScores`, :class:`AuditBars`, :class:`SweepPoints`):
``engine.reporting.data`` fills them, ``engine.reporting.figures`` draws them
and ``engine.reporting.html`` lays out the page. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.compare import mean_std

__all__ = ["AuditBars", "ClassBars", "Curve", "CurvePanel", "Figure", "LearningCurves", "MemberScores",
           "MethodScores", "OutrankingBars", "Report", "ScoreSpreads", "Section", "Spread", "SweepPoint",
           "SweepPoints", "Table"]


@dataclass
class Table:
    """Rows of cells under named columns; ``folded`` tables (80 classes, a whole config) start closed."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""
    folded: bool = False


@dataclass
class Curve:
    """One line of a learning-curve panel: a fold, the mean over folds, or one run of a comparison."""

    label: str
    points: list[tuple[int, float]]
    role: str = "fold"   # "fold" | "mean" | "run"


@dataclass
class CurvePanel:
    """One metric per epoch: its curves, each fold's best epoch, the planned epochs and stage starts."""

    metric: str
    curves: list[Curve]
    best: list[tuple[int, float]] = field(default_factory=list)
    x_max: int | None = None
    stages: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class LearningCurves:
    """Panels side by side."""

    panels: list[CurvePanel]


@dataclass
class Spread:
    """One run: its fold scores, out-of-fold and test LWLRAP."""

    label: str
    folds: list[float]
    oof: float | None = None
    test: float | None = None
    baseline: bool = False

    @property
    def mean_std(self) -> tuple[float | None, float | None]:
        """Mean and sample standard deviation of the fold scores."""
        return mean_std(self.folds)


@dataclass
class ScoreSpreads:
    """Fold scores with mean ± std, out-of-fold and test LWLRAP, one row per run."""

    rows: list[Spread]


@dataclass
class ClassBars:
    """One bar per class and series, sorted by series ``sort_by`` (biggest first); ``signed``: deltas.

    ``colors`` gives each series its run's place in the report's palette (default: the series' order).
    """

    classes: list[str]
    series: list[tuple[str, list[float | None]]]
    xlabel: str
    signed: bool = False
    sort_by: int = 0
    colors: list[int] | None = None


@dataclass
class OutrankingBars:
    """The most frequent (true label, class scored above it) pairs of one run."""

    run_id: str
    pairs: list[tuple[str, str, int, float]]
    clips: int
    labels: int


@dataclass
class MethodScores:
    """Every blend method's out-of-fold LWLRAP (cross-fitted when folds are stored) and the best member's."""

    rows: list[tuple[str, float | None, bool]]
    best_member: tuple[str, float] | None = None


@dataclass
class MemberScores:
    """Each member's out-of-fold LWLRAP and weight, against the blend's."""

    rows: list[tuple[str, float, float | None]]
    blend: float | None


@dataclass
class AuditBars:
    """The noisy-label filter per class (means per fold), in the order given; precision/recall when known."""

    classes: list[str]
    kept: list[float]
    dropped: list[float]
    added: list[float]
    precision: list[float | None] | None = None
    recall: list[float | None] | None = None
    weak_precision: list[float | None] | None = None


@dataclass
class SweepPoint:
    """One configuration of a sweep: the mean ± std over seeds of its runs' out-of-fold LWLRAP, or, until one of
    its runs has trained every fold, its screening score (the screening fold's LWLRAP, mean over seeds)."""

    label: str
    mean: float | None
    std: float | None = None
    screen: float | None = None
    screened_out: bool = False
    best: bool = False
    preset: bool = False


@dataclass
class SweepPoints:
    """One point per configuration of a sweep, in point order; ``screen_fold``: the fold points were screened on."""

    points: list[SweepPoint]
    screen_fold: int | None = None


FigureData = (LearningCurves | ScoreSpreads | ClassBars | OutrankingBars | MethodScores | MemberScores | AuditBars
              | SweepPoints)


@dataclass
class Figure:
    """A plot: ``name`` is unique in the report (its PNG file's stem)."""

    name: str
    title: str
    data: FigureData
    caption: str = ""


@dataclass
class Section:
    """A heading with its text, figures and tables."""

    key: str
    title: str
    lines: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.lines or self.figures or self.tables)


@dataclass
class Report:
    """What ``fsat report`` writes: the target, its sections and what it lacks."""

    kind: str                     # "run" | "compare" | "blend" | "sweep"
    title: str
    subtitle: str
    sections: list[Section]
    absent: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def figures(self) -> list[Figure]:
        """Every figure, in page order."""
        return [f for s in self.sections for f in s.figures]

    def add(self, section: Section | None) -> None:
        """Append a section that has something in it."""
        if section:
            self.sections.append(section)
