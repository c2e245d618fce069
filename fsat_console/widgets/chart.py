"""Per-epoch curves (plotext via textual-plotext): one line per fold, their mean, and each fold's best epoch.

Folds are told apart by a marker character as well as a colour (colour-blind
readers, monochrome terminals); the legend is the chart's border subtitle, so
it never covers data. The x-axis spans the planned epochs, so a run that has
done 3 of 20 shows how far it has to go. ``★`` marks each finished fold's best
epoch (the checkpoint that is kept). The compare screen uses the same widget
for one mean curve per run.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual_plotext import PlotextPlot

# The curves' data (metrics, per-fold series, their mean, best epochs) are the engine's, shared with the reports.
from engine.compare import METRICS, best_points, fold_series, mean_series  # noqa: F401  (the screens import them here)

#: Fixed colour per fold so a fold keeps its colour while other folds appear.
FOLD_COLORS = ("cyan", "orange", "green", "magenta", "blue", "red", "yellow", "white")
#: Fixed marker per fold (or per run on the compare screen): shapes, not only colours.
FOLD_MARKERS = ("●", "▲", "■", "◆", "✚", "✖", "○", "△")
BEST_MARKER = "★"


@dataclass
class Line:
    """One curve: a label for the legend, its points, marker and colour."""

    label: str
    points: list[tuple[int, float]]
    marker: str
    color: str


class EpochChart(PlotextPlot):
    """Lines of one per-epoch metric; ``show`` (folds) or ``plot_lines`` (any curves) replaces the data."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.series: dict[int, list[tuple[int, float]]] = {}
        self.lines: list[Line] = []
        self.best: list[tuple[int, float]] = []
        self.metric_label = METRICS[0][1]
        self.x_max: int | None = None
        self.empty_text = "no epochs recorded yet"
        #: What was last plotted, and the text plotext built for it at which size and theme: plotext
        #: rebuilds the whole figure on every render (tens of ms), and a screen renders a widget on
        #: every layout pass (mount, resize, each table that fills), not only when its data changes.
        self._plotted: tuple | None = None
        self._version = 0
        self._render_key: tuple | None = None
        self._rendered: Text | None = None

    def render(self) -> Text:
        """The plot, rebuilt only when the data, the size or the theme changed."""
        key = (self._version, self.size, self.app.theme, self.theme)
        if key != self._render_key or self._rendered is None:
            self._rendered = super().render()
            self._render_key = key
        return self._rendered.copy()

    def show(self, series: dict[int, list[tuple[int, float]]], metric_label: str, *,
             planned_epochs: int | None = None, best_epochs: dict[int, int] | None = None) -> None:
        """Plot one line per fold, their mean and the best epochs; the x-axis spans ``planned_epochs``."""
        self.series = series
        lines = [Line(f"f{fold}", pts, FOLD_MARKERS[fold % len(FOLD_MARKERS)], FOLD_COLORS[fold % len(FOLD_COLORS)])
                 for fold, pts in sorted(series.items())]
        mean = mean_series(series)
        if mean:
            lines.append(Line("mean", mean, "•", "white"))
        self.plot_lines(lines, metric_label, x_max=planned_epochs,
                        best=best_points(series, best_epochs or {}))

    def plot_lines(self, lines: list[Line], metric_label: str, *, x_max: int | None = None,
                   best: list[tuple[int, float]] | None = None, title: str | None = None) -> None:
        """Plot any curves (the compare screen: one per run) with the legend in the border."""
        plotted = (lines, metric_label, x_max, best, title)
        if plotted == self._plotted:
            return  # a poll that changed something else on the screen: same figure
        self._plotted = plotted
        self._version += 1
        self.lines = lines
        self.best = list(best or [])
        self.metric_label = metric_label
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        # Title and axis name go in the border: every row inside is for the curves.
        self.border_title = title or f"{metric_label} per epoch"
        drawn = [line for line in lines if line.points]
        longest = max((e for line in drawn for e, _ in line.points), default=0)
        self.x_max = max(x_max or 0, longest) or None
        if not drawn:
            plt.text(self.empty_text, x=0.5, y=0.5, alignment="center")
            plt.xlim(0, 1)
            plt.ylim(0, 1)
            self.border_subtitle = ""
        else:
            for line in drawn:
                xs = [e for e, _ in line.points]
                ys = [v for _, v in line.points]
                if len(xs) == 1:
                    plt.scatter(xs, ys, color=line.color, marker=line.marker)
                else:
                    plt.plot(xs, ys, color=line.color, marker=line.marker)
            if self.best:
                plt.scatter([e for e, _ in self.best], [v for _, v in self.best], color="yellow",
                            marker=BEST_MARKER)
            first = min(e for line in drawn for e, _ in line.points)
            plt.xlim(min(first, 1), self.x_max)
            plt.xticks(_epoch_ticks(self.x_max or longest))
            legend = " ".join(f"{line.marker}{line.label}" for line in drawn)
            if self.best:
                legend += f" {BEST_MARKER}best"
            self.border_subtitle = legend
        self.refresh()


def _epoch_ticks(last_epoch: int) -> list[int]:
    """Whole-number epoch ticks, at most about eight of them."""
    step = max(1, -(-last_epoch // 8))
    return list(range(0, last_epoch + 1, step))
