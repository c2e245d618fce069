"""The main screen: every run with its headline scores, and the job queue."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from fsat_console.formatting import STATUS_STYLES, bar, fmt_score, local_time, shorten, status_text
from fsat_console.live import Overview
from fsat_console.widgets.live_table import Cell, ColumnSpec, LiveTable, num_cell
from fsat_console.widgets.status import WorkerStatus

RUN_COLUMNS = (
    ColumnSpec("run_id", "run"),
    ColumnSpec("name", "name"),
    ColumnSpec("model", "model"),
    ColumnSpec("status", "status"),
    ColumnSpec("folds", "folds", descending_first=True),
    ColumnSpec("cv", "CV LWLRAP", descending_first=True),
    ColumnSpec("mean_fold", "mean fold", descending_first=True),
    ColumnSpec("test", "test LWLRAP", descending_first=True),
    ColumnSpec("created", "created", descending_first=True),
)

JOB_COLUMNS = (
    ColumnSpec("id", "job", descending_first=True),
    ColumnSpec("kind", "kind"),
    ColumnSpec("name", "name"),
    ColumnSpec("status", "status"),
    ColumnSpec("progress", "progress", descending_first=True),
    ColumnSpec("message", "message", sortable=False),
    ColumnSpec("attempts", "tries", descending_first=True),
)

_STATUS_ORDER = {"running": 0, "queued": 1, "interrupted": 2, "failed": 3, "cancelled": 4, "done": 5}


def run_rows(runs: list[dict]) -> list[tuple[str, list[Cell]]]:
    """Runs table rows from ``Store.list_runs()`` rows; the best CV LWLRAP is bold."""
    scored = [r["cv_lwlrap"] for r in runs if r.get("cv_lwlrap") is not None]
    best = max(scored) if scored else None
    rows = []
    for r in runs:
        status = status_text(r["status"])
        cv_style = "bold green" if best is not None and r.get("cv_lwlrap") == best else ""
        rows.append((str(r["run_id"]), [
            Cell(str(r["run_id"]), sort_key=str(r["run_id"])),
            Cell(shorten(r.get("name"), 28), sort_key=(r.get("name") or "").lower()),
            Cell(r.get("model") or "—", sort_key=r.get("model") or ""),
            Cell(status.plain, style=str(status.style), sort_key=_STATUS_ORDER.get(r["status"], 9)),
            num_cell(str(r.get("folds_done") or 0), r.get("folds_done") or 0),
            num_cell(fmt_score(r.get("cv_lwlrap")), r.get("cv_lwlrap"), cv_style),
            num_cell(fmt_score(r.get("mean_fold_lwlrap")), r.get("mean_fold_lwlrap")),
            num_cell(fmt_score(r.get("test_lwlrap")), r.get("test_lwlrap")),
            Cell(local_time(r.get("created")), sort_key=r.get("created") or ""),
        ]))
    return rows


def job_rows(jobs: list[dict]) -> list[tuple[str, list[Cell]]]:
    """Jobs table rows from ``Store.list_jobs()`` rows."""
    rows = []
    for j in jobs:
        status = status_text(j["status"])
        progress = float(j.get("progress") or 0.0)
        if j["status"] == "queued":
            progress_text = "waiting".ljust(16)
        else:
            progress_text = f"{bar(progress, 10)} {progress * 100:4.0f}%"
        message = j.get("error") if j["status"] == "failed" and j.get("error") else j.get("message")
        if j.get("cancel_requested") and j["status"] == "running":
            message = "cancelling…"
        rows.append((str(j["id"]), [
            num_cell(str(j["id"]), int(j["id"])),
            Cell(j["kind"], sort_key=j["kind"]),
            Cell(shorten(j.get("name"), 24), sort_key=(j.get("name") or "").lower()),
            Cell(status.plain, style=str(status.style), sort_key=_STATUS_ORDER.get(j["status"], 9)),
            Cell(progress_text, sort_key=progress,
                 style=STATUS_STYLES.get(j["status"], "") if j["status"] != "done" else "green"),
            Cell(shorten(message, 56), style="red" if j["status"] == "failed" else "dim"),
            num_cell(f"{j.get('attempts', 0)}/{j.get('max_attempts', 0)}", j.get("attempts", 0)),
        ]))
    return rows


class MainScreen(Screen):
    """Runs above, jobs below; both refresh live and keep their cursor and sort."""

    BINDINGS = [
        Binding("enter", "open", "Open",
                tooltip="Open the selected run; on a job: its details, error and traceback (o there opens its run)"),
        Binding("c", "cancel_job", "Cancel job", tooltip="Cancel the selected job (asks first)"),
        Binding("e", "ensemble", "Ensemble", tooltip="Blend runs' out-of-fold scores and save the blend as a job"),
        Binding("s", "cycle_sort", "Sort", tooltip="Sort the focused table by its next column"),
        Binding("S", "reverse_sort", "Reverse", show=False, tooltip="Reverse the sort of the focused table"),
        Binding("tab", "switch_table", "Runs/Jobs", tooltip="Move between the runs and the jobs table"),
    ]

    def compose(self) -> ComposeResult:
        """Header, status line, the two tables, footer."""
        yield Header()
        yield WorkerStatus(id="status")
        with Vertical(id="tables"):
            yield LiveTable(RUN_COLUMNS, sort_column="created", reverse=True, id="runs")
            yield LiveTable(JOB_COLUMNS, sort_column="id", reverse=True, id="jobs")
        yield Static("Nothing here yet. Press [b]n[/b] to queue a training job "
                     "(or start the console with [b]--demo[/b] for a ready-made dataset).", id="empty-hint")
        yield Footer()

    def on_mount(self) -> None:
        """Title the tables and show whatever the app already loaded."""
        self.runs_table.border_title = "Runs"
        self.jobs_table.border_title = "Jobs"
        self.runs_table.focus()
        self.show_overview(getattr(self.app, "overview", None))

    @property
    def runs_table(self) -> LiveTable:
        """The runs table."""
        return self.query_one("#runs", LiveTable)

    @property
    def jobs_table(self) -> LiveTable:
        """The jobs table."""
        return self.query_one("#jobs", LiveTable)

    def on_screen_resume(self) -> None:
        """Catch up with updates that arrived while another screen was shown."""
        self.show_overview(getattr(self.app, "overview", None))

    def show_overview(self, overview: Overview | None) -> None:
        """Refresh both tables and the status line from a poll."""
        self.app.refresh_status(self)  # type: ignore[attr-defined]
        if overview is None:
            return
        self.runs_table.sync(run_rows(overview.runs))
        self.jobs_table.sync(job_rows(overview.jobs))
        self._titles()
        self.query_one("#empty-hint").display = not overview.runs and not overview.jobs

    def _titles(self) -> None:
        for table, what in ((self.runs_table, "Runs"), (self.jobs_table, "Jobs")):
            table.border_title = f"{what} ({table.row_count})"
            table.border_subtitle = f"sorted by {table.sort_description}"

    # -- actions ----------------------------------------------------------------------

    def _focused_table(self) -> LiveTable:
        focused = self.focused
        return focused if isinstance(focused, LiveTable) else self.runs_table

    def action_switch_table(self) -> None:
        """Focus the other table."""
        target = self.jobs_table if self.focused is self.runs_table else self.runs_table
        target.focus()

    def action_cycle_sort(self) -> None:
        """Sort the focused table by its next column."""
        self._focused_table().cycle_sort()
        self._titles()

    def action_reverse_sort(self) -> None:
        """Reverse the focused table's sort."""
        self._focused_table().reverse_sort()
        self._titles()

    def action_open(self) -> None:
        """Open the selected run, or the selected job's details."""
        table = self._focused_table()
        key = table.selected_key()
        if key is None:
            self.notify("Nothing selected.", severity="warning")
            return
        if table is self.runs_table:
            self.app.open_run(key)  # type: ignore[attr-defined]
        else:
            self.app.open_job(int(key))  # type: ignore[attr-defined]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """A click on the selected row opens it too."""
        event.stop()
        self.action_open()

    def action_ensemble(self) -> None:
        """Open the ensemble screen."""
        self.app.open_ensemble()  # type: ignore[attr-defined]

    def action_cancel_job(self) -> None:
        """Cancel the selected job (from the runs table: the selected run's job)."""
        table = self._focused_table()
        key = table.selected_key()
        if key is None:
            self.notify("No job selected.", severity="warning")
            return
        if table is self.jobs_table:
            self.app.confirm_cancel(int(key))  # type: ignore[attr-defined]
            return
        overview = getattr(self.app, "overview", None)
        run = next((r for r in (overview.runs if overview else []) if str(r["run_id"]) == key), None)
        if run is None or run.get("job_id") is None:
            self.notify(f"Run {key} has no job to cancel.", severity="warning", markup=False)
            return
        self.app.confirm_cancel(int(run["job_id"]))  # type: ignore[attr-defined]
