"""Per-epoch curves of a run, one line per fold (plotext via textual-plotext)."""

from __future__ import annotations

from textual_plotext import PlotextPlot

#: Metrics the chart can show: (epochs column, label, higher is better).
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("val_lwlrap", "val LWLRAP", True),
    ("val_loss", "val loss", False),
    ("train_loss", "train loss", False),
    ("lr", "learning rate", False),
)

#: Fixed colour per fold so a fold keeps its colour while other folds appear.
FOLD_COLORS = ("cyan", "orange", "green", "magenta", "blue", "red", "yellow", "white")


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


class EpochChart(PlotextPlot):
    """A line per fold of one per-epoch metric; ``show`` replaces the data."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.series: dict[int, list[tuple[int, float]]] = {}
        self.metric_label = METRICS[0][1]

    def show(self, series: dict[int, list[tuple[int, float]]], metric_label: str) -> None:
        """Plot ``series`` (fold -> [(epoch, value)]) and repaint."""
        self.series = series
        self.metric_label = metric_label
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(f"{metric_label} per epoch")
        plt.xlabel("epoch")
        if not series:
            plt.text("no epochs recorded yet", x=0.5, y=0.5, alignment="center")
            plt.xlim(0, 1)
            plt.ylim(0, 1)
        else:
            for fold in sorted(series):
                xs = [e for e, _ in series[fold]]
                ys = [v for _, v in series[fold]]
                color = FOLD_COLORS[fold % len(FOLD_COLORS)]
                if len(xs) == 1:
                    plt.scatter(xs, ys, label=f"fold {fold}", color=color, marker="●")
                else:
                    plt.plot(xs, ys, label=f"fold {fold}", color=color, marker="braille")
            longest = max(max(e for e, _ in pts) for pts in series.values())
            plt.xticks(_epoch_ticks(longest))
        self.refresh()


def _epoch_ticks(last_epoch: int) -> list[int]:
    """Whole-number epoch ticks, at most about eight of them."""
    step = max(1, -(-last_epoch // 8))
    return list(range(0, last_epoch + 1, step))
