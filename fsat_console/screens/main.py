"""The main screen: every run with its headline scores, and the job queue.

Both tables show one page of rows that the database filtered, sorted and
paged (``Store.page_runs`` / ``page_jobs``), so every run and job is reachable
however many there are: ``/`` filters (the filter language of
``engine.filters``), ``s``/``S``, a header click or a digit key sort, ``[`` and
``]`` turn pages. Totals are true counts. Runs can be marked (space) and
compared (``x``), one pinned as the baseline (``p``) that the Δ column is
taken against, tagged (``t``), given a note (``N``) and archived (``a``,
hidden by default; ``A`` shows the archive). ``E`` exports the table in view.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Header, Input, Static

from engine.errors import FsatError
from engine.filters import compile_filter
from fsat_console.access import console
from fsat_console.widgets.footer import KeyFooter
from fsat_console.formatting import (STATUS_STYLES, bar, fmt_duration, fmt_score, job_times, local_stamp, now,
                                     shorten, status_text)
from fsat_console.live import Overview, OverviewChanged, TableView
from fsat_console.widgets.live_table import Cell, ColumnSpec, LiveTable, num_cell
from fsat_console.widgets.status import WorkerStatus

RUN_COLUMNS = (
    # At 160 columns everything up to the note is on screen; tags and the mean fold are a scroll away.
    ColumnSpec("mark", " ", sortable=False, width=2),
    ColumnSpec("run_id", "run"),
    ColumnSpec("name", "name", width=16, shrink=True),
    ColumnSpec("status", "status", width=13),
    ColumnSpec("cv", "CV LWLRAP", descending_first=True, width=9),
    ColumnSpec("delta", "Δ base", descending_first=True, width=7),
    # A seed group's OOF mean ± std (n seeds): beside the run's own CV, the noise its seeds show. After Δ base,
    # because a narrow table hides columns from the right: at 80 columns this one (19 cells) goes, Δ base stays.
    ColumnSpec("group", "seed group", sortable=False),
    ColumnSpec("test", "test", descending_first=True, width=6),
    ColumnSpec("folds", "folds", descending_first=True, width=5),
    ColumnSpec("model", "model"),
    ColumnSpec("created", "started", descending_first=True, width=11),
    ColumnSpec("duration", "time", descending_first=True, width=7),
    ColumnSpec("note", "note", sortable=False, width=20, shrink=True),
    ColumnSpec("tags", "tags", width=16, shrink=True),
    ColumnSpec("mean_fold", "mean fold", descending_first=True, width=9),
)

JOB_COLUMNS = (
    ColumnSpec("id", "job", descending_first=True),
    ColumnSpec("kind", "kind", width=10),
    ColumnSpec("name", "name", width=20, shrink=True),
    ColumnSpec("status", "status", width=13),
    ColumnSpec("progress", "progress", descending_first=True, width=16),
    ColumnSpec("duration", "time", descending_first=True, width=7),
    ColumnSpec("eta", "ETA", sortable=False, width=7),
    ColumnSpec("message", "message", sortable=False, width=40, shrink=True),
    ColumnSpec("attempts", "tries", descending_first=True, width=5),
    ColumnSpec("started", "started", descending_first=True, width=11),
)

#: Table column -> sort key of ``Store.page_runs`` / ``page_jobs`` (the Δ column sorts as CV LWLRAP does).
RUN_SORT = {"run_id": "run_id", "name": "name", "model": "model", "status": "status", "folds": "folds",
            "cv": "cv", "delta": "cv", "mean_fold": "mean_fold", "test": "test", "created": "created",
            "duration": "duration", "tags": "tags"}
JOB_SORT = {"id": "id", "kind": "kind", "name": "name", "status": "status", "progress": "progress",
            "duration": "duration", "attempts": "attempts", "started": "started"}

_STATUS_ORDER = {"running": 0, "queued": 1, "interrupted": 2, "failed": 3, "cancelled": 4, "done": 5,
                 "screening": 6, "kept": 6, "screened": 7}
#: Runs whose job can be queued again to resume or retry them.
RESUMABLE = ("cancelled", "failed", "interrupted")


def run_rows(runs: list[dict], *, pinned: str | None = None, pinned_cv: float | None = None,
             marked: tuple[str, ...] | list[str] = (), at: float | None = None,
             groups: dict[str, dict] | None = None) -> list[tuple[str, list[Cell]]]:
    """Runs table rows from ``Store.page_runs()`` rows; the best CV LWLRAP is bold.

    ``pinned``/``pinned_cv`` give the Δ column (CV LWLRAP minus the pinned
    run's); ``marked`` runs carry a tick (they go to the compare screen);
    ``groups`` (``engine.seeds.group_columns``) fill the seed-group column. A
    sweep's run that holds its screening fold only (``engine.sweeps.mark_screened``)
    shows that fold's score as ``f0 0.6120``, never as a CV figure.
    """
    groups = groups or {}
    scored = [r["cv_lwlrap"] for r in runs if r.get("cv_lwlrap") is not None]
    best = max(scored) if scored else None
    moment = now() if at is None else at
    rows = []
    for r in runs:
        run_id = str(r["run_id"])
        status = status_text(r["status"])
        cv = r.get("cv_lwlrap")
        cv_style = "bold green" if best is not None and cv == best else ""
        if run_id == pinned:
            delta_cell = Cell("base", style="bold cyan", sort_key=0.0, justify="right")
        elif pinned is not None and pinned_cv is not None and cv is not None:
            delta = cv - pinned_cv
            delta_cell = num_cell(f"{delta:+.4f}", delta, "green" if delta > 0 else "red" if delta < 0 else "dim")
        else:
            delta_cell = num_cell("—" if pinned else "", None, "dim")
        created = r.get("created_at")
        end = r.get("finished_at") if r["status"] != "running" else moment
        duration = None if created is None or end is None else float(end) - float(created)
        mark = ("◆" if run_id == pinned else "") + ("✓" if run_id in marked else "")
        rows.append((run_id, [
            Cell(mark, style="bold cyan"),
            Cell(run_id, sort_key=run_id),
            Cell(shorten(r.get("name"), 16), sort_key=(r.get("name") or "").lower()),
            Cell(status.plain, style=str(status.style), sort_key=_STATUS_ORDER.get(r["status"], 9)),
            (num_cell(r["screen_text"], r.get("screen_lwlrap"), "dim") if r.get("screen_text")
             else num_cell(fmt_score(cv), cv, cv_style)),
            delta_cell,
            num_cell((groups.get(run_id) or {}).get("group_oof") or "",
                     (groups.get(run_id) or {}).get("group_cv_mean")),
            num_cell(fmt_score(r.get("test_lwlrap")), r.get("test_lwlrap")),
            num_cell(str(r.get("folds_done") or 0), r.get("folds_done") or 0),
            Cell(r.get("model") or "—", sort_key=r.get("model") or ""),
            Cell(local_stamp(created), sort_key=created),
            num_cell(fmt_duration(duration), duration),
            Cell(shorten(r.get("note"), 20), style="italic"),
            Cell(shorten(r.get("tags"), 16), style="magenta", sort_key=r.get("tags")),
            num_cell(fmt_score(r.get("mean_fold_lwlrap")), r.get("mean_fold_lwlrap")),
        ]))
    return rows


def job_rows(jobs: list[dict], at: float | None = None) -> list[tuple[str, list[Cell]]]:
    """Jobs table rows from ``Store.page_jobs()`` rows; running jobs show elapsed time and an ETA."""
    moment = now() if at is None else at
    rows = []
    for j in jobs:
        status = status_text(j["status"])
        progress = float(j.get("progress") or 0.0)
        if j["status"] == "queued":
            progress_text = "waiting".ljust(16)
        else:
            progress_text = f"{bar(progress, 10)} {progress * 100:4.0f}%"
        message = j.get("error") if j["status"] == "failed" and j.get("error") else j.get("message")
        if j.get("wait"):
            progress_text, message = j["wait"]["state"].ljust(16), j["wait"]["reason"]
        if j.get("cancel_requested") and j["status"] == "running":
            message = "cancelling…"
        elapsed, eta = job_times(j, moment)
        rows.append((str(j["id"]), [
            num_cell(str(j["id"]), int(j["id"])),
            Cell(j["kind"], sort_key=j["kind"]),
            Cell(shorten(j.get("name"), 20), sort_key=(j.get("name") or "").lower()),
            Cell(status.plain, style=str(status.style), sort_key=_STATUS_ORDER.get(j["status"], 9)),
            Cell(progress_text, sort_key=progress,
                 style=STATUS_STYLES.get(j["status"], "") if j["status"] != "done" else "green"),
            num_cell(fmt_duration(elapsed), elapsed, "yellow" if j["status"] == "running" else ""),
            num_cell(fmt_duration(eta) if eta is not None else "", eta, "dim"),
            Cell(shorten(message, 40), style="red" if j["status"] == "failed" else "dim"),
            num_cell(f"{j.get('attempts', 0)}/{j.get('max_attempts', 0)}", j.get("attempts", 0)),
            Cell(local_stamp(j.get("started_at")), sort_key=j.get("started_at")),
        ]))
    return rows


def page_text(view: TableView, shown: int, matches: int | None, what: str) -> str:
    """``rows 201–400 of 1,005 · [ ] pages`` for a table's subtitle."""
    total = matches if matches is not None else shown
    if not shown:
        return f"no {what}" + (" match the filter" if view.filter else "")
    first, last = view.offset + 1, view.offset + shown
    text = f"{first:,}–{last:,} of {total:,}"
    if total > shown:
        text += " · [ ] pages"
    return text


class CommandBar(Input):
    """The one-line editor under the tables: the filter, a run's tags or note, an export path."""

    def __init__(self) -> None:
        super().__init__(id="command-bar")
        self.mode = ""
        self.target = ""


class MainScreen(Screen):
    """Runs above, jobs below; both refresh live and keep their cursor and sort."""

    BINDINGS = [
        Binding("n", "app.new_job", "New", tooltip="Queue a training job from a preset"),
        Binding("enter", "open", "Open",
                tooltip="Open the selected run; on a job: its details, error and traceback (o there opens its run)"),
        Binding("slash", "filter", "Filter", key_display="/",
                tooltip="Filter the focused table, e.g. model:cnn14 cv>0.8 status:done tag:best (OR, NOT, ( ))"),
        Binding("c", "cancel_job", "Cancel job", tooltip="Cancel the selected job (jobs table; asks first)"),
        Binding("R", "requeue", "Retry", tooltip="Queue the selected failed or cancelled job again; on a run: "
                                                 "resume it (training continues from its checkpoints)"),
        Binding("space", "mark", "Mark", tooltip="Mark or unmark the selected run for comparison"),
        Binding("x", "compare", "Compare", tooltip="Compare the marked runs (two or more)"),
        Binding("p", "pin", "Pin", tooltip="Pin the selected run as the baseline of the Δ column and compare"),
        Binding("t", "tags", "Tags", show=False, tooltip="Edit the selected run's tags (words separated by spaces)"),
        Binding("N", "note", "Note", show=False, tooltip="Edit the selected run's note"),
        Binding("a", "archive", "Archive", show=False, tooltip="Archive the selected run (hidden, kept), or unarchive it"),
        Binding("A", "show_archived", "Archived", show=False, tooltip="Show the archived runs instead of the others"),
        Binding("e", "ensemble", "Ensemble", tooltip="Blend runs' out-of-fold scores and save the blend as a job"),
        Binding("g", "new_sweep", "Sweep", show=False, tooltip="Queue a sweep: a grid or random search times seeds, "
                                                             "screened on one fold (engine.sweeps)"),
        Binding("G", "open_sweep", "Sweep view", show=False,
                tooltip="The sweep of the selected run (else the newest sweep): one row per point, live"),
        Binding("P", "plan", "Plan", show=False, tooltip="Queue a plan preset (teacher → … → submission); on a job "
                "of a plan (jobs table): show the plan as a tree"),
        Binding("E", "export", "Export", show=False, tooltip="Write the table in view (every matching row) as .csv or .md"),
        Binding("s", "cycle_sort", "Sort", show=False, tooltip="Sort the focused table by its next column"),
        Binding("S", "reverse_sort", "Reverse", show=False, tooltip="Reverse the sort of the focused table"),
        *[Binding(str(n), f"sort_column({n})", f"Sort by column {n}", show=False,
                  tooltip="Sort by the n-th sortable column (again: reverse); a header click does the same")
          for n in range(1, 10)],
        Binding("right_square_bracket", "page(1)", "Next page", key_display="]", show=False,
                tooltip="The next page of the focused table"),
        Binding("left_square_bracket", "page(-1)", "Previous page", key_display="[", show=False,
                tooltip="The previous page of the focused table"),
        Binding("tab", "switch_table", "Runs/Jobs", show=False, tooltip="Move between the runs and the jobs table"),
        Binding("escape", "close_bar", "Close bar", show=False, tooltip="Close the filter / tags / note bar"),
        Binding("w", "app.start_worker", "Worker", tooltip="Start a worker when none is alive"),
        Binding("q", "app.quit", "Quit", tooltip="Quit the console (a busy worker keeps its job going; an idle "
                                             "one this console started stops unless --keep-worker)"),
    ]

    _shown: tuple | None = None

    def compose(self) -> ComposeResult:
        """Header, status line, the two tables, the command bar, footer."""
        yield Header()
        yield WorkerStatus(id="status")
        with Vertical(id="tables"):
            yield LiveTable(RUN_COLUMNS, sort_column="created", reverse=True, id="runs", rank_column="run_id")
            yield LiveTable(JOB_COLUMNS, sort_column="id", reverse=True, id="jobs", rank_column="id")
        yield Static("", id="bar-error", classes="field-error")
        yield CommandBar()
        yield Static("Nothing here yet. Press [b]n[/b] to queue a training job "
                     "(or start the console with [b]--demo[/b] for a ready-made dataset).", id="empty-hint")
        yield KeyFooter(compact=True)

    def on_mount(self) -> None:
        """Title the tables and show whatever the app already loaded."""
        self.bar.display = False
        self.runs_table.border_title = "Runs"
        self.jobs_table.border_title = "Jobs"
        app = console(self)
        self.runs_table.sort_column, self.runs_table.sort_reverse = self._column_for(app.run_view, RUN_SORT,
                                                                                     "created")
        self.jobs_table.sort_column, self.jobs_table.sort_reverse = self._column_for(app.job_view, JOB_SORT, "id")
        self.runs_table.focus()
        # Forced: a poll may have filled the tables before this handler set their plain titles.
        self.show_overview(console(self).overview, force=True)

    @staticmethod
    def _column_for(view: TableView, mapping: dict[str, str], default: str) -> tuple[str, bool]:
        column = next((c for c, k in mapping.items() if k == view.order), default)
        return column, view.descending

    @property
    def runs_table(self) -> LiveTable:
        """The runs table."""
        return self.query_one("#runs", LiveTable)

    @property
    def jobs_table(self) -> LiveTable:
        """The jobs table."""
        return self.query_one("#jobs", LiveTable)

    @property
    def bar(self) -> CommandBar:
        """The command bar (filter, tags, note, export path)."""
        return self.query_one(CommandBar)

    def on_screen_resume(self) -> None:
        """Catch up with updates that arrived while another screen was shown."""
        self.show_overview(console(self).overview)

    def on_overview_changed(self, message: OverviewChanged) -> None:
        """A poll brought new runs or jobs."""
        self.show_overview(message.overview)

    def show_overview(self, overview: Overview | None, *, force: bool = False) -> None:
        """Refresh both tables and the status line from a poll (``force``: even if already shown)."""
        console(self).refresh_status(self)
        if overview is None:
            return
        app = console(self)
        # Mount, the first resume and the poll that loaded it all hand over the same overview.
        shown = (overview, app.pinned_run, app.pinned_cv, tuple(app.marked_runs))
        if not force and self._shown is not None and all(a is b or a == b for a, b in zip(shown, self._shown)):
            return
        self._shown = shown
        self.runs_table.sync(run_rows(overview.runs, pinned=app.pinned_run, pinned_cv=app.pinned_cv,
                                      marked=app.marked_runs, groups=overview.groups))
        self.jobs_table.sync(job_rows(overview.jobs))
        self._titles(overview)
        self.query_one("#empty-hint").display = (not overview.runs and not overview.jobs
                                                 and not overview.run_view.filter and not overview.job_view.filter
                                                 and not overview.run_view.archived)
        self._select_queued(overview)
        self._refresh_footer()

    def _refresh_footer(self) -> None:
        """Recompose the footer only when the set of keys that act changed (a recompose is not cheap)."""
        state = tuple(bool(self.check_action(b.action.split("(")[0], ())) for b in self.BINDINGS if b.show)
        if state != getattr(self, "_footer_state", None):
            self._footer_state = state
            self.refresh_bindings()

    def _select_queued(self, overview: Overview) -> None:
        """Put the jobs cursor on a job just queued (showing the newest jobs if it is not on the page)."""
        app = console(self)
        job_id = app.select_job
        if job_id is None:
            return
        key = str(job_id)
        if key in self.jobs_table.rows:
            app.select_job = None
            self.jobs_table.focus()
            self.jobs_table.move_cursor(row=self.jobs_table.get_row_index(key), animate=False)
        elif overview.job_view != TableView(order="id", descending=True):
            self.jobs_table.set_sort("id", True)
            app.set_views(jobs=TableView(order="id", descending=True))

    def _titles(self, overview: Overview | None = None) -> None:
        overview = overview or console(self).overview
        app = console(self)
        for table, what, view, matches in (
                (self.runs_table, "Runs", app.run_view, overview.run_matches if overview else None),
                (self.jobs_table, "Jobs", app.job_view, overview.job_matches if overview else None)):
            label = "Archived runs" if what == "Runs" and view.archived else what
            title = f"{label} ({matches if matches is not None else table.row_count:,})"
            if view.filter:
                title += f" · filter: {view.filter}"
            table.border_title = title
            extra = ""
            if what == "Runs" and app.marked_runs:
                extra = f" · {len(app.marked_runs)} marked (x compares)"
            table.border_subtitle = (f"{page_text(view, table.row_count, matches, what.lower())} · "
                                     f"sorted by {table.sort_description}{extra}")

    # -- keys that act here (the footer shows only those) ------------------------------------

    def _selected_run(self) -> dict | None:
        if self.focused is not self.runs_table:
            return None
        key = self.runs_table.selected_key()
        overview = console(self).overview
        return next((r for r in (overview.runs if overview else []) if str(r["run_id"]) == key), None)

    def _selected_job(self) -> dict | None:
        if self.focused is not self.jobs_table:
            return None
        key = self.jobs_table.selected_key()
        overview = console(self).overview
        return next((j for j in (overview.jobs if overview else []) if str(j["id"]) == key), None)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Hide run keys on the jobs table, job keys on the runs table, and keys with nothing to act on."""
        on_runs = self.focused is self.runs_table or (self.focused is not self.jobs_table)
        if action == "cancel_job":
            job = self._selected_job()
            return job is not None and job["status"] in ("queued", "running") and not job.get("cancel_requested")
        if action == "requeue":
            if on_runs:
                run = self._selected_run()
                return run is not None and run["status"] in RESUMABLE and run.get("job_id") is not None
            job = self._selected_job()
            return job is not None and job["status"] in ("failed", "cancelled")
        if action in ("mark", "pin", "tags", "note", "archive"):
            return on_runs and self.runs_table.row_count > 0
        if action == "show_archived":
            return on_runs
        if action == "compare":
            return len(console(self).marked_runs) >= 2
        if action == "open":
            return self._focused_table().row_count > 0
        if action == "close_bar":
            return bool(self.is_mounted and self.bar.display)
        return True

    def on_descendant_focus(self) -> None:
        """The footer follows the table that has focus."""
        self._refresh_footer()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """... and the row under the cursor."""
        self._refresh_footer()

    # -- actions ----------------------------------------------------------------------

    def _focused_table(self) -> LiveTable:
        focused = self.focused
        return focused if isinstance(focused, LiveTable) else self.runs_table

    def action_switch_table(self) -> None:
        """Focus the other table."""
        target = self.jobs_table if self.focused is self.runs_table else self.runs_table
        target.focus()

    def _sorted(self, table: LiveTable) -> None:
        """The table's sort changed: ask the database for the first page in that order."""
        app = console(self)
        if table is self.runs_table:
            app.set_views(runs=replace(app.run_view, order=RUN_SORT.get(table.sort_column, "created"),
                                       descending=table.sort_reverse, offset=0))
        else:
            app.set_views(jobs=replace(app.job_view, order=JOB_SORT.get(table.sort_column, "id"),
                                       descending=table.sort_reverse, offset=0))
        self._titles()

    def action_cycle_sort(self) -> None:
        """Sort the focused table by its next column."""
        table = self._focused_table()
        table.cycle_sort()
        self._sorted(table)

    def action_reverse_sort(self) -> None:
        """Reverse the focused table's sort."""
        table = self._focused_table()
        table.reverse_sort()
        self._sorted(table)

    def action_sort_column(self, n: int) -> None:
        """Sort by the n-th sortable column (1 = the first); again reverses."""
        table = self._focused_table()
        keys = table.sortable_keys()
        if 1 <= n <= len(keys):
            table.sort_by(keys[n - 1])
            self._sorted(table)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        """A click on a column header sorts by that column (again: reverse)."""
        event.stop()
        table = event.data_table
        if isinstance(table, LiveTable):
            table.sort_by(str(event.column_key.value))
            self._sorted(table)

    def action_page(self, step: int) -> None:
        """Show the next (1) or previous (-1) page of the focused table."""
        table = self._focused_table()
        app = console(self)
        overview = app.overview
        is_runs = table is self.runs_table
        view = app.run_view if is_runs else app.job_view
        matches = (overview.run_matches if is_runs else overview.job_matches) if overview else None
        offset = view.offset + step * view.limit
        if offset < 0 or (matches is not None and offset >= matches):
            self.notify("No more pages that way.", timeout=2)
            return
        new = replace(view, offset=offset)
        app.set_views(**({"runs": new} if is_runs else {"jobs": new}))

    def action_open(self) -> None:
        """Open the selected run, or the selected job's details."""
        table = self._focused_table()
        key = table.selected_key()
        if key is None:
            self.notify("Nothing selected.", severity="warning")
            return
        if table is self.runs_table:
            console(self).open_run(key)
        else:
            console(self).open_job(int(key))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """A click on the selected row opens it too."""
        event.stop()
        self.action_open()

    def action_ensemble(self) -> None:
        """Open the ensemble screen."""
        console(self).open_ensemble()

    def action_new_sweep(self) -> None:
        """Open the sweep dialog; a queued sweep opens its view."""
        from fsat_console.screens.sweep import open_sweep_dialog

        open_sweep_dialog(console(self))

    def action_open_sweep(self) -> None:
        """Open the sweep view of the selected run's sweep, else of the newest sweep."""
        from fsat_console.screens.sweep import SweepScreen

        store, run = console(self).store, self._selected_run()
        sweep_id = store.sweep_of_run(run["run_id"]) if run else None
        sweep_id = sweep_id or next((s["id"] for s in store.list_sweeps()), None)
        if sweep_id is None:
            self.notify("No sweep yet: g queues one.", severity="warning")
            return
        console(self).push_screen(SweepScreen(sweep_id))

    def action_plan(self) -> None:
        """Show the plan of the selected job, or open the plan dialog."""
        job = self._selected_job()
        plan_id = console(self).store.plan_of_job(int(job["id"])) if job else None
        console(self).open_plan(plan_id)

    def action_cancel_job(self) -> None:
        """Cancel the selected job of the jobs table (the confirmation names it, its state and progress)."""
        job = self._selected_job()
        if job is None:
            self.notify("Select a job in the jobs table (tab) to cancel it.", severity="warning")
            return
        console(self).confirm_cancel(int(job["id"]))

    def action_requeue(self) -> None:
        """Queue the selected failed/cancelled job again, or resume the selected run's job."""
        if self.focused is self.jobs_table:
            job = self._selected_job()
            if job is not None:
                console(self).confirm_requeue(int(job["id"]))
            return
        run = self._selected_run()
        if run is not None and run.get("job_id") is not None:
            console(self).confirm_requeue(int(run["job_id"]), run_id=str(run["run_id"]))

    # -- marking, pinning, comparing ---------------------------------------------------------

    def action_mark(self) -> None:
        """Mark the selected run for comparison (or unmark it) and move down."""
        key = self.runs_table.selected_key()
        if key is None:
            return
        marked: list[str] = console(self).marked_runs
        if key in marked:
            marked.remove(key)
        else:
            marked.append(key)
        self._resync()
        if self.runs_table.cursor_row < self.runs_table.row_count - 1:
            self.runs_table.move_cursor(row=self.runs_table.cursor_row + 1, animate=False)

    def action_pin(self) -> None:
        """Pin the selected run as the baseline (again: unpin)."""
        run = self._selected_run()
        if run is None:
            return
        app = console(self)
        if app.pinned_run == run["run_id"]:
            app.pin_run(None)
            self.notify(f"Unpinned {run['run_id']}.", timeout=3, markup=False)
        else:
            app.pin_run(str(run["run_id"]), run.get("cv_lwlrap"))
            self.notify(f"Baseline: {run['run_id']} (CV LWLRAP {fmt_score(run.get('cv_lwlrap'))}); "
                        "the Δ column and the compare screen take deltas against it.", timeout=4, markup=False)
        self._resync()

    def action_compare(self) -> None:
        """Compare the marked runs (the pinned one as baseline when it is among them)."""
        marked = list(console(self).marked_runs)
        if len(marked) < 2:
            self.notify("Mark two or more runs with space first.", severity="warning")
            return
        console(self).open_compare(marked)

    def _resync(self) -> None:
        self.show_overview(console(self).overview, force=True)

    # -- the command bar: filter, tags, note, export -------------------------------------------

    def _open_bar(self, mode: str, value: str, placeholder: str, target: str = "") -> None:
        bar = self.bar
        bar.mode, bar.target = mode, target
        bar.value = value
        bar.placeholder = placeholder
        bar.border_title = {"filter": "filter", "tags": f"tags of {target}", "note": f"note of {target}",
                            "export": "export to"}.get(mode, mode)
        bar.display = True
        self._bar_error("")
        bar.focus()
        bar.cursor_position = len(value)

    def _bar_error(self, text: str) -> None:
        error = self.query_one("#bar-error", Static)
        error.update(Text(text))
        error.display = bool(text)

    def action_filter(self) -> None:
        """Open the filter of the focused table (enter applies; an empty filter shows everything)."""
        is_runs = self._focused_table() is self.runs_table
        view = console(self).run_view if is_runs else console(self).job_view
        hint = ("model:cnn14 cv>0.8 status:done tag:best   (OR, NOT, parentheses; a bare word matches id/name)"
                if is_runs else "status:failed kind:train name:noisy   (OR, NOT, parentheses)")
        self._open_bar("filter", view.filter, hint, "runs" if is_runs else "jobs")

    def action_tags(self) -> None:
        """Edit the selected run's tags inline."""
        run = self._selected_run()
        if run is not None:
            self._open_bar("tags", run.get("tags") or "", "words separated by spaces, e.g. best paper",
                           str(run["run_id"]))

    def action_note(self) -> None:
        """Edit the selected run's note inline."""
        run = self._selected_run()
        if run is not None:
            self._open_bar("note", run.get("note") or "", "a note on this run", str(run["run_id"]))

    def action_export(self) -> None:
        """Ask where to write the table in view (.csv or .md)."""
        is_runs = self._focused_table() is self.runs_table
        name = "runs" if is_runs else "jobs"
        default = Path(console(self).db_path).parent / f"{name}.csv"
        self._open_bar("export", str(default), "a path ending in .csv or .md", name)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in the command bar applies it."""
        if event.input is not self.bar:
            return
        event.stop()
        bar = self.bar
        text = bar.value.strip()
        if bar.mode == "filter":
            try:
                compile_filter(text, bar.target)
            except FsatError as err:
                self._bar_error(str(err))
                return
            app = console(self)
            if bar.target == "runs":
                app.set_views(runs=replace(app.run_view, filter=text, offset=0))
            else:
                app.set_views(jobs=replace(app.job_view, filter=text, offset=0))
            self._close_bar()
        elif bar.mode in ("tags", "note"):
            self._save_run_field(bar.mode, bar.target, text)
        elif bar.mode == "export":
            self._export(bar.target, text)

    def _close_bar(self) -> None:
        self.bar.display = False
        self._bar_error("")
        (self.jobs_table if self.bar.target == "jobs" else self.runs_table).focus()

    def action_close_bar(self) -> None:
        """Escape closes the command bar (a filter already applied stays)."""
        if self.bar.display:
            self._close_bar()

    @work(thread=True, exclusive=True, exit_on_error=False, group="run-edit")
    def _save_run_field(self, mode: str, run_id: str, text: str) -> None:
        store = console(self).store
        try:
            if mode == "tags":
                store.set_run_tags(run_id, text.split())
            else:
                store.set_run_note(run_id, text)
        except (FsatError, sqlite3.Error) as err:
            self.app.call_from_thread(self._bar_error, str(err))
            return
        self.app.call_from_thread(self._saved, f"Saved the {mode} of {run_id}.")

    def _saved(self, text: str) -> None:
        self._close_bar()
        self.notify(text, timeout=3, markup=False)
        console(self).request_refresh()

    @work(thread=True, exclusive=True, exit_on_error=False, group="export")
    def _export(self, table: str, path_text: str) -> None:
        """Write every row that matches the table's filter, in its sort, as CSV or Markdown."""
        from engine.compare import table_csv, table_markdown

        app = console(self)
        path = Path(path_text).expanduser()
        if path.suffix.lower() not in (".csv", ".md", ".markdown"):
            app.call_from_thread(self._bar_error, f"{path}: the name must end in .csv or .md")
            return
        view = app.run_view if table == "runs" else app.job_view
        store = app.store
        try:
            flt = compile_filter(view.filter, table)
            if table == "runs":
                rows = store.page_runs(where=flt.sql, params=flt.params, order=view.order,
                                       descending=view.descending, limit=None, archived=view.archived)
                columns = ["run_id", "kind", "name", "model", "status", "folds_done", "cv_lwlrap",
                           "mean_fold_lwlrap", "test_lwlrap", "tags", "note", "created"]
                if app.pinned_run is not None and app.pinned_cv is not None:
                    for r in rows:
                        cv = r.get("cv_lwlrap")
                        r[f"delta_vs_{app.pinned_run}"] = None if cv is None else cv - app.pinned_cv
                    columns.append(f"delta_vs_{app.pinned_run}")
            else:
                rows = store.page_jobs(where=flt.sql, params=flt.params, order=view.order,
                                       descending=view.descending, limit=None)
                columns = ["id", "kind", "name", "status", "progress", "message", "attempts", "run_id"]
            text = table_csv(rows, columns) if path.suffix.lower() == ".csv" else table_markdown(rows, columns)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except (FsatError, sqlite3.Error, OSError) as err:
            app.call_from_thread(self._bar_error, f"{path}: {err}")
            return
        app.call_from_thread(self._saved_export, f"Wrote {len(rows)} {table} to {path}")

    def _saved_export(self, text: str) -> None:
        self._close_bar()
        self.notify(text, title="Export", timeout=6, markup=False)

    # -- archive --------------------------------------------------------------------------------

    def action_archive(self) -> None:
        """Archive the selected run (or unarchive it in the archived view)."""
        run = self._selected_run()
        if run is None:
            return
        self._set_archived(str(run["run_id"]), not bool(run.get("archived")))

    @work(thread=True, exclusive=False, exit_on_error=False, group="archive")
    def _set_archived(self, run_id: str, archived: bool) -> None:
        try:
            console(self).store.set_runs_archived([run_id], archived)
        except sqlite3.Error as err:
            self.app.call_from_thread(self.notify, f"Could not archive {run_id}: {err}", severity="error",
                                      markup=False)
            return
        text = (f"Archived {run_id}: hidden from the runs table, kept in the database (A shows the archive)."
                if archived else f"Unarchived {run_id}.")
        self.app.call_from_thread(self.notify, text, timeout=4, markup=False)
        self.app.call_from_thread(console(self).request_refresh)

    def action_show_archived(self) -> None:
        """Switch the runs table between the runs and the archived runs."""
        app = console(self)
        app.set_views(runs=replace(app.run_view, archived=not app.run_view.archived, offset=0))
