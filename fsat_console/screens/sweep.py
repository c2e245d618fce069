"""Sweeps in the console: the sweep dialog (``g``) and the sweep view (``G``), one row per point, live.

The dialog takes what ``fsat sweep`` takes (a preset, a data root, grid and
random axes, a count, seeds, a screening fold and how many points to keep,
shared overrides) and queues through ``engine.sweeps.queue_sweep``, so every
point is checked by the intake before anything is queued and a refusal names
the point and the field, in the same words as the CLI.

The view shows ``engine.sweeps.sweep_table`` (the table ``fsat sweep show``
prints): the settings that vary, mean ± std over seeds, folds done, state,
decision and rank, and under it the best point's per-class LRAP against the
preset's own point; it reloads while the sweep runs (a thread worker, then the
next poll is scheduled, so polls never overlap). ``c`` completes a
screened-out point (the decision overridden), ``X`` cancels what has not
started, ``H`` writes the sweep's HTML report beside the database
(``fsat report ID --sweep``, ``fsat_console.report``), ``escape`` goes back.
"""

from __future__ import annotations

from rich.text import Text
import asyncio

from textual import work
from textual.command import Hit, Hits, Provider
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Header, Input, Label, Static

from engine import sweeps
from engine.compare import pm_text
from engine.errors import FsatError
from fsat_console.access import console
from fsat_console.formatting import fmt_score
from fsat_console.report import REPORT_KEY, write_report
from fsat_console.screens.dialogs import split_overrides
from fsat_console.widgets.footer import KeyFooter

#: Seconds between two reloads of the sweep view.
POLL_SECONDS = 1.0

#: The dialog's fields: (id, label, placeholder).
SWEEP_FIELDS = (
    ("preset", "Preset", "demo"),
    ("data-root", "Data root", "demo_data"),
    ("grid", "Grid", "model.width=[8,16] optim.head_lr=[1e-3,3e-4]"),
    ("random", "Random", "optim.head_lr=loguniform(1e-4,1e-2)"),
    ("count", "Count", "random points (with Random)"),
    ("seeds", "Seeds", "1,2"),
    ("screen-fold", "Screen fold", "0 (empty: no screening)"),
    ("keep", "Keep", "1"),
    ("overrides", "Overrides", "train.epochs=3"),
)


def _int_or_none(text: str, field: str) -> int | None:
    if not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        raise FsatError(f"{field}: expected a whole number, got {text!r}") from None


class SweepDialog(ModalScreen[int | None]):
    """Queue a sweep; dismisses with the sweep id, or None when closed."""

    BINDINGS = [
        Binding("escape", "close", "Close", tooltip="Close the dialog without queueing"),
        Binding("ctrl+s", "submit", "Queue", tooltip="Queue the sweep (every point is checked first)"),
    ]

    def __init__(self, *, preset: str = "", data_root: str = "") -> None:
        super().__init__()
        self.initial = {"preset": preset, "data-root": data_root}

    def compose(self) -> ComposeResult:
        """One labelled field per setting and one error line under them all."""
        with Vertical(id="sweep-dialog", classes="dialog"):
            yield Label("New sweep: one run per point and seed, screened on one fold", classes="dialog-title")
            for field, label, placeholder in SWEEP_FIELDS:
                yield Label(label)
                yield Input(value=self.initial.get(field, ""), placeholder=placeholder, id=field)
            yield Static("", id="sweep-error")
        yield KeyFooter()

    def _value(self, field: str) -> str:
        return self.query_one(f"#{field}", Input).value.strip()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in any field queues."""
        event.stop()
        self.action_submit()

    def action_close(self) -> None:
        """Close without queueing."""
        self.dismiss(None)

    def action_submit(self) -> None:
        """Read the fields and queue in a thread (the checks read the database)."""
        try:
            request = {
                "preset": self._value("preset") or None, "data_root": self._value("data-root") or None,
                "grid": split_overrides(self._value("grid")),
                "random_axes": split_overrides(self._value("random")),
                "count": _int_or_none(self._value("count"), "count") or 0,
                "seeds": sweeps.parse_seeds(self._value("seeds")),
                "screen_fold": _int_or_none(self._value("screen-fold"), "screen fold"),
                "keep": _int_or_none(self._value("keep"), "keep"),
                "overrides": split_overrides(self._value("overrides")),
            }
        except FsatError as err:
            self.show_error(str(err))
            return
        if request["screen_fold"] is None:
            request["keep"] = None
        self.show_error("checking every point...")
        self._queue(request)

    def show_error(self, text: str) -> None:
        """One line under the fields (plain text: messages hold brackets)."""
        self.query_one("#sweep-error", Static).update(Text(text))

    @work(thread=True, exclusive=True, exit_on_error=False, group="sweep")
    def _queue(self, request: dict) -> None:
        try:
            sweep_id = sweeps.queue_sweep(console(self).store, **request)
        except FsatError as err:
            self.app.call_from_thread(self.show_error, str(err))
            return
        self.app.call_from_thread(self.dismiss, sweep_id)


#: The view's columns after the varying settings: (row key, header).
VIEW_COLUMNS = (("point", "point"), ("rank", "rank"), ("state", "state"), ("decision", "decision"),
                ("screen", "screen"), ("cv", "OOF mean ± std"), ("folds", "fold mean ± std"),
                ("folds_done", "folds"), ("runs", "runs"))


def view_cells(table: sweeps.SweepTable, row: dict) -> list[str]:
    """One point's cells, in the order of the view's columns."""
    values = {"point": str(row["point"]), "rank": "-" if row["rank"] is None else str(row["rank"]),
              "state": row["state"], "decision": row["decision"] or "-", "screen": fmt_score(row["screen"]),
              "cv": pm_text(row["cv_mean"], row["cv_std"]), "folds": pm_text(row["fold_mean"], row["fold_std"]),
              "folds_done": row["folds_done"], "runs": row["runs"]}
    return [sweeps.format_value(row[k]) if row[k] is not None else "-" for k in table.keys] + \
        [values[k] for k, _ in VIEW_COLUMNS]


class SweepScreen(Screen):
    """One sweep's points, reloaded while it runs."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", tooltip="Back to the runs and jobs"),
        Binding("c", "complete", "Complete point", tooltip="Complete the selected screened-out point (every fold)"),
        Binding("X", "cancel_sweep", "Cancel sweep", tooltip="Cancel the sweep's jobs that have not started"),
        Binding(REPORT_KEY, "report", "Report", show=False,
                tooltip="Write the sweep's HTML report (one point per configuration with seed error bars) beside "
                        "the database"),
    ]

    def __init__(self, sweep_id: int) -> None:
        super().__init__()
        self.sweep_id = sweep_id
        self.table: sweeps.SweepTable | None = None

    def compose(self) -> ComposeResult:
        """Header, a line about the sweep, the points, a message line, footer."""
        yield Header()
        yield Static("", id="sweep-about")
        yield DataTable(id="sweep-points", cursor_type="row", zebra_stripes=True)
        yield Static("", id="sweep-message")
        yield Static("", id="sweep-classes-title")
        yield DataTable(id="sweep-classes", cursor_type="row", zebra_stripes=True)
        yield KeyFooter()

    def on_mount(self) -> None:
        """Load at once; each load schedules the next."""
        self._load()

    @work(thread=True, exclusive=True, exit_on_error=False, group="sweep-view")
    def _load(self) -> None:
        try:
            table = sweeps.sweep_table(console(self).store, self.sweep_id)
        except FsatError as err:
            self.app.call_from_thread(self.say, str(err))
            return
        self.app.call_from_thread(self.show, table)

    def show(self, table: sweeps.SweepTable) -> None:
        """Put the table on screen (the cursor stays on its point) and schedule the next load."""
        self.table = table
        sweep = table.sweep
        screening = (f"screened on fold {sweep['screen_fold']}, keep {sweep['keep']}"
                     if sweep["screen_fold"] is not None else "no screening")
        best = f"; best point {table.best_point}" if table.best_point is not None else ""
        self.query_one("#sweep-about", Static).update(Text(
            f"sweep {sweep['id']} {sweep['name']} ({sweep['stage']}), {screening}, "
            f"seeds {', '.join(map(str, sweep['seeds']))}{best}"))
        grid = self.query_one("#sweep-points", DataTable)
        headers = [*table.keys, *[h for _, h in VIEW_COLUMNS]]
        if [str(c.label) for c in grid.columns.values()] != headers:
            grid.clear(columns=True)
            for header in headers:
                grid.add_column(header, key=header)
        cursor = grid.cursor_row
        grid.clear()
        for row in table.rows:
            grid.add_row(*view_cells(table, row), key=str(row["point"]))
        if table.rows:
            grid.move_cursor(row=min(cursor, len(table.rows) - 1), animate=False)
        self._show_classes(table)
        self.set_timer(POLL_SECONDS, self._load)

    def _show_classes(self, table: sweeps.SweepTable) -> None:
        """The best point's per-class LRAP against the preset's own point (the same rows as ``fsat sweep show``)."""
        title = self.query_one("#sweep-classes-title", Static)
        grid = self.query_one("#sweep-classes", DataTable)
        if not grid.columns:
            for header in ("class", "best", "default", "Δ"):
                grid.add_column(header, key=header)
        grid.clear()
        if not table.classes:
            title.update(Text("per-class LRAP: once a point has trained every fold"))
            return
        against = (f"point {table.default_point} (the preset's settings)" if table.default_point is not None
                   else "- (the sweep does not hold the preset's settings)")
        title.update(Text(f"per-class OOF LRAP of the best point {table.best_point} against {against}"))
        for row in table.classes:
            delta = "-" if row["delta"] is None else f"{row['delta']:+.4f}"
            grid.add_row(row["class_name"], fmt_score(row["best"]), fmt_score(row["default"]), delta,
                         key=str(row["class_idx"]))

    def say(self, text: str) -> None:
        """One line under the table."""
        self.query_one("#sweep-message", Static).update(Text(text))

    def _selected_point(self) -> int | None:
        grid = self.query_one("#sweep-points", DataTable)
        if self.table is None or not self.table.rows:
            return None
        return self.table.rows[min(grid.cursor_row, len(self.table.rows) - 1)]["point"]

    def action_complete(self) -> None:
        """Complete the selected point when it was screened out."""
        point = self._selected_point()
        if point is not None:
            self._write("complete", point)

    def action_report(self) -> None:
        """Write the sweep's HTML report (``fsat report ID --sweep``) to ``report-sweep-<id>.html``."""
        write_report(self, f"sweep-{self.sweep_id}", [str(self.sweep_id), "--sweep"])

    def action_cancel_sweep(self) -> None:
        """Cancel what has not started."""
        self._write("cancel", None)

    @work(thread=True, exclusive=True, exit_on_error=False, group="sweep-write")
    def _write(self, what: str, point: int | None) -> None:
        store = console(self).store
        try:
            if what == "complete":
                queued = sweeps.complete_point(store, self.sweep_id, point)
                text = f"point {point}: queued jobs {' '.join(map(str, queued))} to complete it"
            else:
                text = f"sweep cancelled: {sweeps.cancel_sweep(store, self.sweep_id)} queued jobs cancelled"
        except FsatError as err:
            text = str(err)
        self.app.call_from_thread(self.say, text)


def open_sweep_dialog(app) -> None:
    """Open the sweep dialog (the demo preset, the console's data root); a queued sweep opens its view."""
    app.push_screen(SweepDialog(preset="demo", data_root=str(app.default_data_root())),
                    lambda sweep_id: sweep_id is not None and app.push_screen(SweepScreen(sweep_id)))


class SweepCommands(Provider):
    """Every sweep in the command palette (``Sweep 3 demo sweep``): opens its view; and "New sweep"."""

    async def search(self, query: str) -> Hits:
        """Sweeps whose title holds the typed characters (the palette's matcher ranks them)."""
        app = console(self)
        matcher = self.matcher(query)
        new = "New sweep"
        if matcher.match(new) > 0:
            yield Hit(matcher.match(new), matcher.highlight(new), lambda: open_sweep_dialog(app), text=new,
                      help="a grid or random search times seeds, screened on one fold")
        rows = await asyncio.to_thread(app.store.list_sweeps)
        for sweep in rows:
            title = f"Sweep {sweep['id']} {sweep['name']}"
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title),
                          lambda sweep_id=sweep["id"]: app.push_screen(SweepScreen(sweep_id)), text=title,
                          help=f"{sweep['points']} points · {sweep['runs']} runs · {sweep['stage']}")
