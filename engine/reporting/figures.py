"""The report's plots, drawn with matplotlib (Agg backend): the only module of the project that imports it.

Each kind of figure data in ``engine.reporting.data`` has one drawing
function here; :func:`draw` picks it. Figures are ``matplotlib.figure.Figure``
objects made without pyplot (no global state), rendered to SVG for the page
(:func:`svg_text`: glyphs as paths, so the page looks the same on a machine
without the fonts; fixed ids and no date, so the same numbers give the same
file) and to PNG for ``--png`` (:func:`save_png`).

Colours are the Okabe-Ito palette (told apart with the common forms of
colour blindness), and folds and runs also differ by marker.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure as MplFigure  # noqa: E402  (after the backend is chosen)

from engine.reporting.model import (AuditBars, ClassBars, Figure, LearningCurves, MemberScores,  # noqa: E402
                                   MethodScores, OutrankingBars, ScoreSpreads, SweepPoints)

__all__ = ["draw", "save_png", "svg_text"]

#: Okabe-Ito: orange, sky blue, bluish green, yellow, blue, vermillion, reddish purple, grey.
COLORS = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#999999")
MARKERS = ("o", "^", "s", "D", "P", "X", "v", "*")
GAIN, LOSS = "#009E73", "#D55E00"
#: Width of every figure, in inches (the page is laid out for it).
WIDTH = 10.0
#: Height of one class's row in the per-class bar charts, in inches.
ROW = 0.16
#: Settings for every figure: the same look, and SVG files that do not change from run to run.
STYLE = {
    "font.size": 8.5,
    "axes.titlesize": 9.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "svg.fonttype": "path",
    "svg.hashsalt": "fsat-report",
    "figure.dpi": 100,
}


def _new(height: float, ncols: int = 1, **kwargs: Any) -> tuple[MplFigure, list[Any]]:
    fig = MplFigure(figsize=(WIDTH, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False, **kwargs)[0]
    return fig, list(axes)


def learning_curves(data: LearningCurves) -> MplFigure:
    """Panels side by side: one line per fold (or run), the mean in black, stars at the best epochs."""
    fig, axes = _new(3.4, len(data.panels))
    for ax, panel in zip(axes, data.panels):
        for i, curve in enumerate(c for c in panel.curves if c.role != "mean"):
            xs, ys = zip(*curve.points)
            ax.plot(xs, ys, color=COLORS[i % len(COLORS)], marker=MARKERS[i % len(MARKERS)], markersize=3.5,
                    linewidth=1.2, label=curve.label, alpha=0.9)
        for curve in (c for c in panel.curves if c.role == "mean"):
            xs, ys = zip(*curve.points)
            ax.plot(xs, ys, color="black", linewidth=2.2, label=curve.label)
        if panel.best:
            ax.scatter([e for e, _ in panel.best], [v for _, v in panel.best], marker="*", s=120, color="#F0E442",
                       edgecolors="black", linewidths=0.7, zorder=5, label="best epoch")
        for epoch, stage in panel.stages:
            ax.axvline(epoch - 0.5, color="#777777", linestyle=":", linewidth=1)
            ax.annotate(stage, (epoch - 0.5, 1.0), xycoords=("data", "axes fraction"), fontsize=7, color="#555555",
                        xytext=(2, -10), textcoords="offset points")
        last = max((x for c in panel.curves for x, _ in c.points), default=1)
        ax.set_xlim(left=min(0, min((x for c in panel.curves for x, _ in c.points), default=0)) - 0.3,
                    right=max(panel.x_max or 0, last) + 0.3)
        ax.set_title(panel.metric)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=7, loc="best")
    return fig


def score_spreads(data: ScoreSpreads) -> MplFigure:
    """One row per run: fold dots, fold mean ± std, out-of-fold diamond, test cross."""
    n = len(data.rows)
    fig, (ax,) = _new(1.0 + 0.45 * n)
    for y, row in enumerate(reversed(data.rows)):
        i = n - 1 - y
        color = COLORS[i % len(COLORS)]
        if row.folds:
            ax.scatter(row.folds, [y] * len(row.folds), color=color, s=16, alpha=0.8, zorder=3,
                       label="fold" if i == 0 else None)
            mean, std = row.mean_std
            ax.errorbar([mean], [y + 0.22], xerr=[std or 0.0], fmt="|", color="black", capsize=4, markersize=10,
                        label="fold mean ± std" if i == 0 else None)
        if row.oof is not None:
            ax.scatter([row.oof], [y], marker="D", s=46, color=color, edgecolors="black", zorder=4,
                       label="out-of-fold" if i == 0 else None)
        if row.test is not None:
            ax.scatter([row.test], [y - 0.22], marker="x", s=46, color="black", zorder=4,
                       label="test" if i == 0 else None)
    ax.set_yticks(range(n), [r.label + (" ★" if r.baseline else "") for r in reversed(data.rows)])
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel("LWLRAP")
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=4, frameon=False)
    return fig


def _sorted_rows(data: ClassBars) -> list[int]:
    first = data.series[data.sort_by][1]
    return sorted(range(len(data.classes)), key=lambda k: (first[k] is None, -(first[k] or 0.0)))


def class_bars(data: ClassBars) -> MplFigure:
    """Horizontal bars, one row per class (grouped when there are several series), sorted by the first series."""
    order = _sorted_rows(data)
    n_series = len(data.series)
    fig, (ax,) = _new(0.9 + ROW * len(order) * max(1.0, 0.55 * n_series))
    height = 0.8 / n_series
    for j, (name, values) in enumerate(data.series):
        ys = [len(order) - 1 - r + (n_series - 1 - 2 * j) * height / 2 for r in range(len(order))]
        vals = [values[k] for k in order]
        xs = [0.0 if v is None else float(v) for v in vals]
        if data.signed and n_series == 1:
            colors = [GAIN if x > 0 else LOSS for x in xs]
        else:
            # A run keeps the colour it has in the other figures of the report.
            index = data.colors[j] if data.colors else j
            colors = [COLORS[index % len(COLORS)]] * len(xs)
        ax.barh(ys, xs, height=height, color=colors, label=name if n_series > 1 else None)
    ax.set_yticks(range(len(order)), [data.classes[k] for k in reversed(order)], fontsize=7)
    ax.set_ylim(-0.7, len(order) - 0.3)
    ax.set_xlabel(data.xlabel)
    ax.grid(axis="y", visible=False)
    if data.signed:
        ax.axvline(0, color="black", linewidth=0.8)
    else:
        ax.set_xlim(0, 1.0)
    if n_series > 1:
        ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=min(4, n_series), frameon=False)
    return fig


def outranking_bars(data: OutrankingBars) -> MplFigure:
    """The most frequent pairs: ``true label ← class scored above it``, with the share of the true class's labels."""
    n = max(1, len(data.pairs))
    fig, (ax,) = _new(0.9 + 0.22 * n)
    if not data.pairs:
        ax.text(0.5, 0.5, "no true label was ever outranked", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    labels = [f"{t}  ←  {c}" for t, c, _, _ in data.pairs]
    counts = [n for _, _, n, _ in data.pairs]
    ys = list(range(len(counts)))[::-1]
    ax.barh(ys, counts, color=COLORS[4], height=0.7)
    for y, (_, _, count, share) in zip(ys, data.pairs):
        ax.annotate(f"{share:.0%}", (count, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(ys, labels, fontsize=7)
    ax.set_xlabel("times the class on the right was scored above the true label on the left")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(axis="y", visible=False)
    ax.margins(x=0.08)
    return fig


def _lwlrap_bars(labels: list[str], bars: list[tuple[float | None, dict]],
                 reference: tuple[str, float, str] | None) -> MplFigure:
    """Horizontal bars of out-of-fold LWLRAP, each with its value, and a vertical reference line."""
    fig, (ax,) = _new(1.0 + 0.3 * len(labels))
    ys = list(range(len(labels)))[::-1]
    for y, (score, style) in zip(ys, bars):
        if score is not None:
            ax.barh(y, score, height=0.65, **style)
        ax.annotate("could not apply" if score is None else f"{score:.4f}", (score or 0.0, y), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(ys, labels)
    scores = [s for s, _ in bars if s is not None]
    if reference is not None:
        text, value, linestyle = reference
        ax.axvline(value, color="black", linestyle=linestyle, linewidth=1.3)
        ax.annotate(f"{text} {value:.4f}", (value, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -10),
                    textcoords="offset points", fontsize=7)
        scores.append(value)
    _zoom(ax, scores)
    ax.set_xlabel("out-of-fold LWLRAP")
    ax.grid(axis="y", visible=False)
    return fig


def method_scores(data: MethodScores) -> MplFigure:
    """Bars of every method's out-of-fold LWLRAP, the chosen one filled, the best member as a dashed line."""
    bars = [(score, {"color": COLORS[2] if chosen else "white", "edgecolor": COLORS[2], "linewidth": 1.2})
            for _, score, chosen in data.rows]
    best = data.best_member
    return _lwlrap_bars([m + ("  (chosen)" if c else "") for m, _, c in data.rows], bars,
                        (f"best member {best[0]}:", best[1], "--") if best is not None else None)


def member_scores(data: MemberScores) -> MplFigure:
    """Each member's out-of-fold LWLRAP (weight in the label) and the blend's as a line."""
    return _lwlrap_bars([f"{run_id} (weight {weight:.2f})" for run_id, weight, _ in data.rows],
                        [(score, {"color": COLORS[4]}) for _, _, score in data.rows],
                        ("blend", data.blend, "-") if data.blend is not None else None)


def _zoom(ax: Any, scores: list[float]) -> None:
    """An x-range around the scores (differences between blends are small next to the 0..1 scale)."""
    if not scores:
        return
    low, high = min(scores), max(scores)
    pad = max(0.01, (high - low) * 0.6)
    ax.set_xlim(max(0.0, low - pad), min(1.0, high + pad))


def audit_bars(data: AuditBars) -> MplFigure:
    """Per class: kept, dropped and added labels stacked; beside it precision and recall when the truth is known."""
    n = len(data.classes)
    truth = data.precision is not None
    fig, axes = _new(0.9 + ROW * n, 2 if truth else 1, sharey=True, width_ratios=[3, 2] if truth else None)
    ax = axes[0]
    ys = list(range(n))[::-1]
    ax.barh(ys, data.kept, color=COLORS[2], height=0.75, label="kept")
    ax.barh(ys, data.dropped, left=data.kept, color=COLORS[5], height=0.75, label="dropped")
    left = [k + d for k, d in zip(data.kept, data.dropped)]
    ax.barh(ys, data.added, left=left, color=COLORS[1], height=0.75, label="added")
    ax.set_yticks(ys, data.classes, fontsize=7)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("noisy labels per fold")
    ax.grid(axis="y", visible=False)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=3, frameon=False)
    if truth:
        pr = axes[1]
        for values, label, marker, color in ((data.precision, "precision", "o", COLORS[4]),
                                             (data.recall, "recall", "s", COLORS[0]),
                                             (data.weak_precision, "weak labels' precision", "|", "black")):
            points = [(v, y) for v, y in zip(values or [], ys) if v is not None]
            if points:
                pr.scatter([v for v, _ in points], [y for _, y in points], marker=marker, s=14, color=color,
                           label=label, zorder=3)
        pr.set_xlim(-0.03, 1.03)
        pr.set_xlabel("against the noisy set's truth")
        pr.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=3, frameon=False)
    return fig


def sweep_points(data: SweepPoints) -> MplFigure:
    """One column per configuration: a filled dot at the mean out-of-fold LWLRAP over seeds with a ± std bar;
    a point without that (screened out, or still completing) as a hollow dot at its screening score, labelled;
    a point not scored yet, said so."""
    n = len(data.points)
    fig, (ax,) = _new(4.2 if n <= 8 else 5.2)
    xs = list(range(n))
    done = [(x, p) for x, p in zip(xs, data.points) if p.mean is not None]
    out = [(x, p) for x, p in zip(xs, data.points) if p.mean is None and p.screen is not None]
    for x, p in done:
        ax.errorbar([x], [p.mean], yerr=[p.std or 0.0], fmt="*" if p.best else "o", markersize=13 if p.best else 8,
                    color=COLORS[4], ecolor="black", elinewidth=1.2, capsize=6, zorder=4,
                    label=("out-of-fold LWLRAP, mean ± std over seeds" if x == done[0][0] else None))
        ax.annotate(f"{p.mean:.4f}" + (f" ± {p.std:.4f}" if p.std is not None else "") + ("\nbest" if p.best else ""),
                    (x, p.mean),
                    xytext=(9, 0), textcoords="offset points", va="center", fontsize=7)
    where = f"fold {data.screen_fold}" if data.screen_fold is not None else "the screening fold"
    for x, p in out:
        ax.scatter([x], [p.screen], marker="o", s=70, facecolors="white", edgecolors=COLORS[5], linewidths=1.6,
                   zorder=4, label=(f"screening score: {where}'s LWLRAP, mean over seeds" if x == out[0][0] else None))
        ax.annotate(("screened out" if p.screened_out else "screened, not complete yet") + f"\n{where}: {p.screen:.4f}",
                    (x, p.screen), xytext=(9, 0), textcoords="offset points", va="center", fontsize=7,
                    color=COLORS[5])
    for x, p in zip(xs, data.points):
        if p.mean is None and p.screen is None:
            ax.annotate("not scored yet", (x, 0.0), xycoords=("data", "axes fraction"), xytext=(0, 6),
                        textcoords="offset points", ha="center", fontsize=7, color="#777777")
    values = [v for _, p in done for v in (p.mean - (p.std or 0.0), p.mean + (p.std or 0.0))]
    values += [p.screen for _, p in out]
    if values:
        low, high = min(values), max(values)
        pad = max(0.01, (high - low) * 0.35)
        ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad))
    labels = [p.label + ("\n(the preset's)" if p.preset else "") for p in data.points]
    ax.set_xticks(xs, labels, fontsize=7, rotation=0 if n <= 8 else 60, ha="center" if n <= 8 else "right")
    ax.set_xlim(-0.6, n - 0.4 + (0.3 if n <= 8 else 0.0))
    ax.set_ylabel("LWLRAP")
    ax.grid(axis="x", visible=False)
    if done or out:
        ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2, frameon=False)
    return fig


_DRAW: dict[type, Callable[[Any], MplFigure]] = {
    LearningCurves: learning_curves,
    ScoreSpreads: score_spreads,
    ClassBars: class_bars,
    OutrankingBars: outranking_bars,
    MethodScores: method_scores,
    MemberScores: member_scores,
    AuditBars: audit_bars,
    SweepPoints: sweep_points,
}


def draw(figure: Figure) -> MplFigure:
    """The matplotlib figure of a report figure."""
    with matplotlib.rc_context(STYLE):
        return _DRAW[type(figure.data)](figure.data)


_ID = re.compile(r'\bid="([^"]+)"')


def svg_text(fig: MplFigure, prefix: str) -> str:
    """The figure as an ``<svg>`` element to inline in HTML, every id prefixed so that figures never share one."""
    buffer = io.StringIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    ids = set(_ID.findall(text))
    if ids:
        names = "|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True))
        text = re.sub(rf'\bid="({names})"', lambda m: f'id="{prefix}{m.group(1)}"', text)
        text = re.sub(rf'#({names})\b(?=[)"])', lambda m: f"#{prefix}{m.group(1)}", text)
    # Sizes in CSS pixels (matplotlib writes points); the page scales figures down to fit, never up.
    text = re.sub(r'<svg([^>]*?) width="([\d.]+)pt" height="([\d.]+)pt"',
                  lambda m: f'<svg{m.group(1)} width="{float(m.group(2)) * 4 / 3:.0f}" '
                            f'height="{float(m.group(3)) * 4 / 3:.0f}"', text, count=1)
    return text


def save_png(fig: MplFigure, path: Path, dpi: int = 120) -> Path:
    """The figure as a PNG file (written atomically)."""
    from engine.atomic import atomic_write

    with matplotlib.rc_context(STYLE):
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi, metadata={"Software": None}))
