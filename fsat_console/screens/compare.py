"""Compare two or more runs: the 80 classes with each run's LRAP and its delta against a baseline.

``x`` on the main screen opens it for the marked runs. At the top, each run's
out-of-fold LWLRAP next to its fold mean ± std and its delta against the
baseline; beside the classes, only the config settings that differ and the
learning curves overlaid (mean over folds, one marker per run). The class
table sorts by any column (``s``, digits, a header click) — by default the
first run's delta, biggest gain first. ``p`` makes the run under the cursor
of the runs table the baseline; ``E`` writes the whole comparison as
Markdown. The numbers are those of ``fsat compare`` (``engine.compare``).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Header

from engine.compare import Comparison, compare_runs, comparison_markdown, pm_text
from engine.errors import FsatError
from fsat_console.access import console
from fsat_console.widgets.footer import KeyFooter
from fsat_console.formatting import fmt_score, shorten
from fsat_console.live import OverviewChanged
from fsat_console.widgets.chart import FOLD_COLORS, FOLD_MARKERS, METRICS, EpochChart, Line, fold_series, mean_series
from fsat_console.widgets.live_table import Cell, ColumnSpec, LiveTable, num_cell
from fsat_console.widgets.status import WorkerStatus
from fsat_console.report import REPORT_KEY, write_report

SUMMARY_COLUMNS = (
    ColumnSpec("marker", " ", sortable=False, width=2),
    ColumnSpec("run", "run"),
    ColumnSpec("model", "model"),
    ColumnSpec("oof", "OOF LWLRAP", descending_first=True),
    ColumnSpec("folds", "fold mean ± std", descending_first=True),
    ColumnSpec("delta", "Δ OOF", descending_first=True),
    ColumnSpec("test", "test", descending_first=True),
)


def signed_cell(value: float | None) -> Cell:
    """A delta, green when better than the baseline, red when worse."""
    if value is None:
        return num_cell("—", None, "dim")
    return num_cell(f"{value:+.4f}", value, "green" if value > 0 else "red" if value < 0 else "dim")


def class_columns(comp: Comparison) -> list[ColumnSpec]:
    """class, then per run its LRAP and (not for the baseline) its delta, then the class weight."""
    # Runs are named by their marker (the runs table above is the legend), so 80 columns hold 3 runs.
    # The deltas against the baseline come first: they are what the table is for.
    cols = [ColumnSpec("class", "class", width=22, shrink=True)]
    markers = {run_id: FOLD_MARKERS[i % len(FOLD_MARKERS)] for i, run_id in enumerate(comp.run_ids)}
    cols += [ColumnSpec(f"delta:{r}", f"{markers[r]} Δ", descending_first=True)
             for r in comp.run_ids if r != comp.baseline]
    cols += [ColumnSpec(f"lrap:{r}", f"{markers[r]} LRAP", descending_first=True) for r in comp.run_ids]
    cols.append(ColumnSpec("weight", "weight", descending_first=True))
    return cols


def class_table_rows(comp: Comparison) -> list[tuple[str, list[Cell]]]:
    """The 80 classes with per-run LRAP and deltas (cells in ``class_columns`` order)."""
    rows = []
    for r in comp.class_rows():
        cells = [Cell(shorten(r["class_name"], 22), sort_key=r["class_name"].lower())]
        cells += [signed_cell(r[f"delta:{run_id}"]) for run_id in comp.run_ids if run_id != comp.baseline]
        cells += [num_cell(fmt_score(r[f"lrap:{run_id}"]), r[f"lrap:{run_id}"]) for run_id in comp.run_ids]
        weight = r.get("weight")
        cells.append(num_cell("—" if weight is None else f"{weight * 100:.2f}%", weight))
        rows.append((str(r["class_idx"]), cells))
    return rows


#: Shown when a compared run has a seed group of two or more seeds: the group's OOF mean ± std over seeds.
GROUP_COLUMN = ColumnSpec("group", "seeds: OOF mean ± std", descending_first=True)


def summary_columns(comp: Comparison) -> tuple[ColumnSpec, ...]:
    """The summary's columns: with the seed-group column when a compared run has two or more seeds."""
    grouped = any((r.get("seeds") or 0) > 1 for r in comp.summary_rows())
    return (*SUMMARY_COLUMNS, GROUP_COLUMN) if grouped else SUMMARY_COLUMNS


def summary_rows(comp: Comparison) -> list[tuple[str, list[Cell]]]:
    """One row per run: marker, OOF LWLRAP, fold mean ± std, delta against the baseline, test (and its seed group)."""
    rows = []
    grouped = GROUP_COLUMN in summary_columns(comp)
    for i, r in enumerate(comp.summary_rows()):
        marker = FOLD_MARKERS[i % len(FOLD_MARKERS)]
        delta = (Cell("baseline", style="bold cyan", justify="right", sort_key=0.0) if r["baseline"]
                 else signed_cell(r["delta_cv"]))
        rows.append((r["run_id"], [
            Cell(marker, style=FOLD_COLORS[i % len(FOLD_COLORS)]),
            Cell(r["run_id"], style="bold" if r["baseline"] else "", sort_key=r["run_id"]),
            Cell(r.get("model") or "—", sort_key=r.get("model") or ""),
            num_cell(fmt_score(r["cv_lwlrap"]), r["cv_lwlrap"], "bold"),
            num_cell(pm_text(r["fold_mean"], r["fold_std"]) + f" ({r['folds']})", r["fold_mean"]),
            delta,
            num_cell(fmt_score(r["test_lwlrap"]), r["test_lwlrap"]),
            *([Cell(f"{r['seeds'] or 1}: {r['group_cv'] or '—'}", justify="right", sort_key=r["group_cv"] or "")]
              if grouped else []),
        ]))
    return rows


def diff_rows(comp: Comparison) -> list[tuple[str, list[Cell]]]:
    """Only the settings that differ: one row per setting, one cell per run."""
    rows = []
    for key, values in comp.config_diff():
        cells = [Cell(key, sort_key=key)]
        for v in values:
            text = "—" if v is None else v if isinstance(v, str) else json.dumps(v)
            cells.append(Cell(shorten(text, 12), sort_key=text))
        rows.append((key, cells))
    return rows


class ComparisonLoaded(Message, bubble=False):
    """A comparison (or why there is none)."""

    def __init__(self, comp: Comparison | None, problem: str = "") -> None:
        super().__init__()
        self.comp = comp
        self.problem = problem


class CompareScreen(Screen):
    """Runs side by side, per class against a pinned baseline."""

    BINDINGS = [
        Binding("escape", "back", "Back", tooltip="Back to runs and jobs"),
        Binding("p", "pin", "Baseline", tooltip="Make the run under the cursor (runs table) the baseline"),
        Binding("s", "cycle_sort", "Sort", tooltip="Sort the focused table by its next column"),
        Binding("S", "reverse_sort", "Reverse", show=False, tooltip="Reverse the sort of the focused table"),
        *[Binding(str(n), f"sort_column({n})", f"Sort by column {n}", show=False,
                  tooltip="Sort by the n-th sortable column (again: reverse)") for n in range(1, 10)],
        Binding("m", "cycle_metric", "Metric", tooltip="Chart: val LWLRAP, val loss, train loss, learning rate"),
        Binding("E", "export", "Export .md", tooltip="Write the whole comparison as Markdown beside the database"),
        Binding(REPORT_KEY, "report", "Report", show=False,
                tooltip="Write the comparison as an HTML report with figures beside the database"),
        Binding("tab", "app.focus_next", "Next table", show=False),
        Binding("n", "noise", "Noise", show=False,
                tooltip="Is each run's difference to the baseline larger than noise? A paired bootstrap over "
                        "clips, and the seed spread of the runs' seed groups (as fsat compare says)"),
    ]

    def __init__(self, run_ids: list[str], baseline: str) -> None:
        super().__init__()
        self.run_ids = list(run_ids)
        self.baseline = baseline
        self.comp: Comparison | None = None
        self.metric_index = 0
        self._stamp: tuple | None = None

    def compose(self) -> ComposeResult:
        """Runs on top; classes on the left; config differences and curves on the right."""
        yield Header()
        yield WorkerStatus(id="status")
        yield LiveTable(SUMMARY_COLUMNS, sort_column="oof", reverse=True, id="compare-runs")
        with Horizontal(id="compare-body"):
            yield LiveTable([ColumnSpec("class", "class")], sort_column="class", id="compare-classes")
            with Vertical(id="compare-side"):
                yield LiveTable([ColumnSpec("setting", "setting")], sort_column="setting", id="compare-diff")
                yield EpochChart(id="compare-chart")
        yield KeyFooter(compact=True)

    def action_noise(self) -> None:
        """Tell, against the baseline, whether each difference is larger than clip noise and seed noise."""
        self.notify("bootstrapping over clips...", title="Noise")
        self._noise()

    @work(thread=True, exclusive=True, exit_on_error=False, group="compare-noise")
    def _noise(self) -> None:
        from engine.stats import compare_noise

        try:
            rows = compare_noise(console(self).store, self.run_ids, self.baseline)
        except (FsatError, sqlite3.Error) as err:
            self.app.call_from_thread(self.notify, str(err), severity="error", markup=False)
            return
        text = "\n".join(f"{r['run_id']}: clips {r['clips']}; seeds {r['seeds']}" for r in rows)
        self.app.call_from_thread(self.notify, text, title=f"Noise (against {self.baseline})", markup=False,
                                  timeout=30)

    @property
    def classes_table(self) -> LiveTable:
        """The per-class table."""
        return self.query_one("#compare-classes", LiveTable)

    def on_mount(self) -> None:
        """Titles, then load the runs."""
        self.sub_title = "compare " + " ".join(self.run_ids)
        runs = self.query_one("#compare-runs", LiveTable)
        runs.border_title = "Runs"
        self.query_one("#compare-diff", LiveTable).border_title = "Config: only what differs"
        self.classes_table.border_title = "Classes · out-of-fold LRAP"
        self.query_one(EpochChart).empty_text = "no epochs recorded"
        self.classes_table.focus()
        self._load()

    def on_screen_resume(self) -> None:
        """Show the status line at once."""
        console(self).refresh_status(self)

    def on_overview_changed(self, message: OverviewChanged) -> None:
        """Reload when any run changed (a compared run may still be training)."""
        console(self).refresh_status(self)
        if message.overview.run_stamp != self._stamp:
            self._stamp = message.overview.run_stamp
            self._load()

    @work(thread=True, exclusive=True, exit_on_error=False, group="compare")
    def _load(self) -> None:
        try:
            comp = compare_runs(console(self).store, self.run_ids, self.baseline)
        except (FsatError, sqlite3.Error) as err:
            self.post_message(ComparisonLoaded(None, str(err)))
            return
        self.post_message(ComparisonLoaded(comp))

    def on_comparison_loaded(self, message: ComparisonLoaded) -> None:
        """Fill the tables and the chart."""
        if message.comp is None:
            self.notify(message.problem, severity="error", markup=False)
            return
        comp = self.comp = message.comp
        runs = self.query_one("#compare-runs", LiveTable)
        if [c.key for c in runs.specs] != [c.key for c in summary_columns(comp)]:
            runs.specs = list(summary_columns(comp))
            runs.clear(columns=True)
        runs.sync(summary_rows(comp))
        # Which clips the OOF and per-class numbers are on: all the same, or recomputed on the common ones.
        runs.border_subtitle = comp.basis.short()
        table = self.classes_table
        wanted = class_columns(comp)
        if [c.key for c in table.specs] != [c.key for c in wanted]:
            table.specs = wanted
            first_delta = next((c.key for c in wanted if c.key.startswith("delta:")), "class")
            if table.sort_column not in {c.key for c in wanted} or table.sort_column == "class":
                table.sort_column, table.sort_reverse = first_delta, first_delta != "class"
            table.clear(columns=True)
        table.sync(class_table_rows(comp))
        table.border_subtitle = f"{table.row_count} classes · Δ vs {comp.baseline} · sorted by {table.sort_description}"
        diff = self.query_one("#compare-diff", LiveTable)
        diff_specs = [ColumnSpec("setting", "setting", shrink=True)] + [ColumnSpec(f"v{i}", FOLD_MARKERS[i % len(FOLD_MARKERS)],
                                                                      sortable=False)
                                                           for i in range(len(comp.run_ids))]
        if [c.key for c in diff.specs] != [c.key for c in diff_specs]:
            diff.specs = diff_specs
            diff.clear(columns=True)
        rows = diff_rows(comp)
        diff.sync(rows)
        diff.border_subtitle = f"{len(rows)} settings differ" if rows else "the configs are the same"
        self._plot()

    def _plot(self) -> None:
        if self.comp is None:
            return
        metric, label, _ = METRICS[self.metric_index]
        lines = []
        planned = 0
        for i, side in enumerate(self.comp.sides):
            series = fold_series(side.epochs, metric)
            # One curve per run: the mean over folds (a single fold's curve when only one was trained).
            points = mean_series(series) or next(iter(series.values()), [])
            lines.append(Line(side.run_id, points, FOLD_MARKERS[i % len(FOLD_MARKERS)],
                              FOLD_COLORS[i % len(FOLD_COLORS)]))
            epochs = ((side.run.get("config") or {}).get("train") or {}).get("epochs")
            planned = max(planned, int(epochs or 0))
        self.query_one(EpochChart).plot_lines(lines, label, x_max=planned or None,
                                              title=f"{label}, mean over folds")

    # -- actions ----------------------------------------------------------------------------------

    def action_back(self) -> None:
        """Back to the runs."""
        self.app.pop_screen()

    def _focused_table(self) -> LiveTable:
        return self.focused if isinstance(self.focused, LiveTable) else self.classes_table

    def _retitle(self) -> None:
        table = self.classes_table
        if self.comp is not None:
            table.border_subtitle = (f"{table.row_count} classes · Δ vs {self.comp.baseline} · "
                                     f"sorted by {table.sort_description}")

    def action_cycle_sort(self) -> None:
        """Sort the focused table by its next column."""
        self._focused_table().cycle_sort()
        self._retitle()

    def action_reverse_sort(self) -> None:
        """Reverse the focused table's sort."""
        self._focused_table().reverse_sort()
        self._retitle()

    def action_sort_column(self, n: int) -> None:
        """Sort by the n-th sortable column."""
        table = self._focused_table()
        keys = table.sortable_keys()
        if 1 <= n <= len(keys):
            table.sort_by(keys[n - 1])
            self._retitle()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        """A header click sorts by that column."""
        event.stop()
        if isinstance(event.data_table, LiveTable):
            event.data_table.sort_by(str(event.column_key.value))
            self._retitle()

    def action_cycle_metric(self) -> None:
        """Next chart metric."""
        self.metric_index = (self.metric_index + 1) % len(METRICS)
        self._plot()

    def action_pin(self) -> None:
        """The run under the cursor of the runs table becomes the baseline (here and in the main table)."""
        runs = self.query_one("#compare-runs", LiveTable)
        key = runs.selected_key() if self.focused is runs else None
        if key is None:
            self.notify("Move to a run in the runs table (tab) and press p.", severity="warning")
            return
        self.baseline = key
        cv = self.comp.side(key).run.get("cv_lwlrap") if self.comp else None
        console(self).pin_run(key, cv)
        self.notify(f"Baseline: {key}", timeout=3, markup=False)
        self._load()

    def action_export(self) -> None:
        """Write the comparison as Markdown beside the database."""
        if self.comp is None:
            return
        path = Path(console(self).db_path).parent / ("compare-" + "-".join(self.run_ids) + ".md")
        try:
            path.write_text(comparison_markdown(self.comp), encoding="utf-8")
        except OSError as err:
            self.notify(f"{path}: {err}", severity="error", markup=False)
            return
        self.notify(f"Wrote {path}", title="Export", timeout=6, markup=False)

    def action_report(self) -> None:
        """Write the comparison's HTML report, deltas against the baseline shown, beside the database."""
        write_report(self, "compare-" + "-".join(self.run_ids), [*self.run_ids, "--baseline", self.baseline])
