"""One run: its header, per-fold scores, per-epoch curves and the 80 classes by LRAP.

Everything here refreshes by itself while the run trains: the app's poller
loads this run's rows whenever the database changes and sends them here
(``RunDetailChanged``). ``f`` walks the per-class table from out-of-fold
through each fold, so a class that is weak everywhere stands apart from one
weak in a single fold.

Once a trained run has been inferred with test-time augmentation (an ``infer``
run whose parent is this run), a line under the header compares its CV LWLRAP
without TTA (this run) and with TTA (the newest inference run), and the class
table gains a column with each class's LRAP gain; an inference run's own
screen shows the same against its parent. ``i`` queues such an inference,
``b`` a baseline on the run's dataset.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Header, Static

from engine.compare import config_lines
from engine.intake import FOLD_CHECKPOINT_KINDS, can_embed_baseline
from engine.store import OOF, StoreError
from fsat_console.access import console
from fsat_console.widgets.footer import KeyFooter
from fsat_console.widgets.status import epochs_system, system_text
from fsat_console.formatting import bar, fmt_duration, fmt_score, status_text
from fsat_console.live import OverviewChanged, RunDetail, RunDetailChanged, TtaComparison
from fsat_console.screens.infer import BaselineScreen, InferScreen
from fsat_console.report import REPORT_KEY, write_report
from fsat_console.widgets.chart import METRICS, EpochChart, fold_series
from fsat_console.widgets.live_table import Cell, ColumnSpec, LiveTable, num_cell
from fsat_console.widgets.status import WorkerStatus

FOLD_COLUMNS = (
    ColumnSpec("fold", "fold"),
    ColumnSpec("lwlrap", "LWLRAP", descending_first=True),
    ColumnSpec("state", "state", width=15),
    # fmt_duration is at most 6 wide (12m05s, 23h59m): the folds table fits beside the classes at 160 columns.
    ColumnSpec("time", "time", descending_first=True, width=6),
    ColumnSpec("eta", "ETA", sortable=False, width=6),
    ColumnSpec("epochs", "epoch", descending_first=True),
    ColumnSpec("best_epoch", "best ep"),
    ColumnSpec("n_val", "n_val", descending_first=True),
)

CLASS_COLUMNS = (
    ColumnSpec("lrap", "LRAP", descending_first=True),
    ColumnSpec("class", "class", shrink=True),
    ColumnSpec("bar", "", sortable=False),
    ColumnSpec("weight", "weight", descending_first=True),
    ColumnSpec("n_pos", "n_pos", descending_first=True),
)

#: The class table while a TTA comparison is shown: the gain takes the place of the bar, beside LRAP.
GAIN_CLASS_COLUMNS = (CLASS_COLUMNS[0], ColumnSpec("gain", "TTA gain", descending_first=True), CLASS_COLUMNS[1],
                      *CLASS_COLUMNS[3:])

#: Run kinds that have fold checkpoints to infer with (the run layer's one definition).
TRAINED_KINDS = FOLD_CHECKPOINT_KINDS


def fold_rows(detail: RunDetail) -> list[tuple[str, list[Cell]]]:
    """One row per planned (or seen) fold: best LWLRAP and its epoch, n_val, epochs done, state."""
    planned = detail.planned_epochs
    scores = {int(f["fold"]): f for f in detail.folds}
    by_fold: dict[int, list[dict]] = {}
    for e in detail.epochs:
        by_fold.setdefault(int(e["fold"]), []).append(e)
    folds = sorted(set(detail.planned_folds) | set(scores) | set(by_fold))
    status = (detail.run or {}).get("status")
    running = status == "running"
    # A fold not started yet is waiting only while the run can still reach it.
    pending = status in ("running", "interrupted", None)
    rows = []
    for k in folds:
        score = scores.get(k)
        epochs = by_fold.get(k, [])
        if score is not None:
            state = Text("✔ done", style="green")
        elif epochs and running:
            state = Text("▶ training", style="bold yellow")
        elif epochs:
            state = Text(f"⏸ stopped {len(epochs)}/{planned}" if planned else "⏸ stopped", style="dark_orange")
        elif pending:
            state = Text("◌ waiting", style="dim")
        else:
            state = Text("— not run", style="dim")
        done = f"{len(epochs)}/{planned}" if planned else str(len(epochs))
        # Time spent in the fold's recorded epochs; while it trains, the ETA at its mean epoch time.
        seconds = [float(e["seconds"]) for e in epochs if e.get("seconds") is not None]
        spent = sum(seconds)
        eta = None
        if score is None and running and epochs and seconds and planned and planned > len(epochs):
            eta = spent / len(seconds) * (planned - len(epochs))
        rows.append((str(k), [
            num_cell(str(k), k),
            num_cell(fmt_score(score["lwlrap"]) if score else "—", score["lwlrap"] if score else None,
                     "bold" if score else ""),
            Cell(state.plain, style=str(state.style), sort_key=state.plain),
            num_cell(fmt_duration(spent) if epochs else "—", spent if epochs else None),
            num_cell(fmt_duration(eta) if eta is not None else "", eta, "dim"),
            num_cell(done, len(epochs)),
            num_cell(str(score["best_epoch"]) if score and score.get("best_epoch") is not None else "—",
                     score.get("best_epoch") if score else None),
            num_cell(str(score["n_val"]) if score else "—", score["n_val"] if score else None),
        ]))
    return rows


MEMBER_COLUMNS = (
    ColumnSpec("member", "member"),
    ColumnSpec("weight", "weight", descending_first=True),
    ColumnSpec("cv", "CV", descending_first=True),
    ColumnSpec("gain", "blend−CV", descending_first=True),
    ColumnSpec("what", "model"),
)


def member_rows(detail: RunDetail) -> list[tuple[str, list[Cell]]]:
    """An ensemble's members: weight, each member's CV LWLRAP and how far the blend is above it."""
    blend = (detail.run or {}).get("cv_lwlrap")
    rows = []
    for m in detail.members:
        cv = m.get("cv_lwlrap")
        gain = None if cv is None or blend is None else float(blend) - float(cv)
        rows.append((str(m["member_run_id"]), [
            Cell(str(m["member_run_id"]), sort_key=str(m["member_run_id"])),
            num_cell(f"{float(m['weight']):.3f}", float(m["weight"]), "bold"),
            num_cell(fmt_score(cv), cv),
            gain_cell(gain),
            Cell(f"{m.get('kind')} {m.get('model') or ''}".strip() if m.get("kind") else "not in the database",
                 style="" if m.get("kind") else "dim"),
        ]))
    return rows


def gain_cell(gain: float | None) -> Cell:
    """A signed LWLRAP/LRAP difference, green when TTA helps and red when it hurts."""
    if gain is None:
        return num_cell("—", None, "dim")
    style = "green" if gain > 0 else "red" if gain < 0 else "dim"
    return num_cell(f"{gain:+.4f}", gain, style)


def class_rows(classes: list[dict], gains: dict[int, float | None] | None = None) -> list[tuple[str, list[Cell]]]:
    """One row per class: LRAP with a bar, its LWLRAP weight (share of positives) and positives.

    With ``gains`` (class_idx -> LRAP with TTA minus without) the bar gives way to the
    class's TTA gain (the columns of ``GAIN_CLASS_COLUMNS``).
    """
    rows = []
    for c in classes:
        lrap = c.get("lrap")
        style = "" if lrap is None else "red" if lrap < 0.5 else "yellow" if lrap < 0.8 else "green"
        cells = [
            num_cell(fmt_score(lrap), lrap),
            Cell(c["class_name"], sort_key=c["class_name"].lower()),
            Cell(bar(lrap, 10), style=style),
            num_cell(f"{c['weight'] * 100:.2f}%", c["weight"]),
            num_cell(str(c["n_pos"]), c["n_pos"]),
        ]
        if gains is not None:  # the gain takes the bar's place, next to LRAP
            cells[1:3] = [gain_cell(gains.get(int(c["class_idx"]))), cells[1]]
        rows.append((str(c["class_idx"]), cells))
    return rows


def tta_line(tta: TtaComparison, run_id: str) -> Text:
    """``gain +0.0178   without TTA 0.8123 train-0003  →  with TTA 0.8301 infer-0004 (5 crops, …)``.

    The gain comes first so that a narrow terminal still shows it; the run
    this screen is about is marked "this run".
    """
    text = Text()
    gain = tta.gain
    text.append("gain ", style="dim")
    text.append("—" if gain is None else f"{gain:+.4f}",
                style="bold" if not gain else "bold green" if gain > 0 else "bold red")
    for label, run, sep in (("without TTA", tta.base, "   "), ("with TTA", tta.tta, "  →  ")):
        text.append(f"{sep}{label} ", style="dim")
        text.append(fmt_score(run.get("cv_lwlrap")), style="bold")
        text.append(f" {run['run_id']}" + (" (this run)" if str(run["run_id"]) == run_id else ""), style="dim")
    if tta.settings:
        text.append(f" · {tta.settings}", style="dim")
    status = tta.tta.get("status")
    if status and status != "done":
        text.append("  ")
        text.append_text(status_text(status))
    if tta.n_infer_runs > 1:
        text.append(f"   newest of {tta.n_infer_runs} inference runs" if str(tta.base["run_id"]) == run_id
                    else f"   {tta.n_infer_runs} inference runs of {tta.base['run_id']}", style="dim")
    return text


def fold_label(fold: int) -> str:
    """``out-of-fold`` or ``fold N``."""
    return "out-of-fold" if fold == OOF else f"fold {fold}"


def run_header(detail: RunDetail | None, run_id: str) -> Text:
    """Two lines, most telling first so a narrow terminal cuts only the tail: who the run is, then its scores.

    ``train-0002 cnn14 mixup · ✔ done · cnn14 · seed 7 · config 0123abcd`` and
    ``CV LWLRAP 0.8300 · mean fold 0.8309 ± 0.0052 · test — · cpu · job 2 ✔ done``.
    """
    run = detail.run if detail else None
    if run is None:
        return Text.assemble((f"run {run_id}", "bold"), "  ",
                             ("loading…" if detail is None else "not in the database (yet)", "dim"))
    sep = (" · ", "dim")

    def pair(label: str, value: str, style: str = "bold") -> Text:
        return Text.assemble((f"{label} ", "dim"), (value, style))

    from engine.compare import mean_std, pm_text

    mean, std = mean_std([f["lwlrap"] for f in detail.folds])
    first = Text.assemble((str(run["run_id"]), "bold"), ("  " + (run.get("name") or ""), "italic"), sep,
                          status_text(run.get("status")), sep, (run.get("model") or "—", "bold"), sep,
                          pair("seed", "—" if run.get("seed") is None else str(run["seed"])), sep,
                          pair("config", run.get("config_hash") or "—"))
    # A sweep's run that trained its screening fold only has that fold's score, not a CV figure.
    headline = pair("screening", run["screen_text"]) if run.get("screen_text") else \
        pair("CV LWLRAP", fmt_score(run.get("cv_lwlrap")), "bold green" if run.get("cv_lwlrap") else "bold")
    second = Text.assemble(
        headline, sep,
        pair("mean fold", pm_text(mean, std)), sep, pair("test", fmt_score(run.get("test_lwlrap"))), sep,
        (run.get("device") or "—", "dim"))
    job = detail.job
    if job is not None:
        second.append_text(Text.assemble(sep, ("job ", "dim"), (f"{job['id']} ", "bold")))
        if job["status"] == "running":
            second.append(bar(job.get("progress"), 10), style="yellow")
            second.append(f" {float(job.get('progress') or 0) * 100:3.0f}% ")
        else:
            second.append_text(status_text(job["status"]))
            second.append(" ")
        if (job.get("message") or "") != job["status"]:
            second.append(job.get("message") or "", style="dim")
    lines = [first, second]
    figures = system_text(epochs_system(detail.epochs))
    if figures is not None:
        # Peaks over the recorded epochs (the job's process; GPU figures only on a GPU).
        lines.append(Text.assemble(("system ", "dim"), figures))
    if run.get("warning"):
        # E.g. an ensemble whose cross-fitted OOF score is below its best member's.
        lines.append(Text.assemble(("warning: ", "bold yellow"), (str(run["warning"]), "yellow")))
    return Text("\n").join(lines)


class RunScreen(Screen):
    """Drill into one run; updates live while it trains."""

    BINDINGS = [
        Binding("escape", "back", "Back", show=False, tooltip="Back to runs and jobs"),
        Binding("f", "cycle_fold", "Class fold", tooltip="Per-class table: out-of-fold, then fold 0, 1, …"),
        Binding("m", "cycle_metric", "Chart metric",
                tooltip="Chart: val LWLRAP, val loss, train loss, learning rate"),
        Binding("s", "cycle_sort", "Sort", show=False, tooltip="Sort the focused table by its next column"),
        Binding("S", "reverse_sort", "Reverse", show=False, tooltip="Reverse the sort of the focused table"),
        Binding("c", "cancel_job", "Cancel job", tooltip="Cancel this run's job (asks first)"),
        Binding("R", "resume", "Resume", tooltip="Queue this cancelled or failed run's job again: finished folds are "
                                                  "kept, the stopped fold continues from its last checkpoint"),
        Binding("i", "infer", "Infer+TTA",
                tooltip="Queue inference of this run with test-time augmentation (crops, splits)"),
        Binding("b", "baseline", "Baseline", tooltip="Queue the embeddings + logistic-regression baseline "
                                                    "on this run's dataset"),
        Binding("tab", "switch_table", "Folds/Classes", show=False, tooltip="Move between the fold and the class table"),
        Binding("u", "curriculum", "Curriculum", tooltip="Train run: queue a noisy-label curriculum with it as "
                "teacher; curriculum run: its stages, gain over the teacher and noisy-label audit"),
        Binding("g", "toggle_config", "Config", show=False,
                tooltip="Show the run's whole config (runs/<id>/config.json) in place of the class table, or hide it"),
        Binding(REPORT_KEY, "report", "Report", show=False,
                tooltip="Write this run's HTML report (figures inline, readable offline) beside the database"),
        Binding("K", "kaggle_pack", "Kaggle pack", show=False,
                tooltip="Pack this run as an offline Kaggle kernel and rehearse it: size, time projection, trimming"),
        Binding("L", "kaggle_lb", "CV vs LB", show=False,
                tooltip="This run's Kaggle submissions: CV against the public and private leaderboard"),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.class_fold = OOF
        self.metric_index = 0
        self.detail: RunDetail | None = None
        self._suspended = False

    def compose(self) -> ComposeResult:
        """Header, run summary, folds + chart on the left, classes on the right."""
        yield Header()
        yield WorkerStatus(id="status")
        yield Static(run_header(None, self.run_id), id="run-header")
        yield Static("", id="tta-gain")
        with Horizontal(id="run-body"):
            with Vertical(id="run-left"):
                yield LiveTable(FOLD_COLUMNS, sort_column="fold", id="folds")
                yield LiveTable(MEMBER_COLUMNS, sort_column="weight", reverse=True, id="members")
                yield EpochChart(id="chart")
            yield LiveTable(CLASS_COLUMNS, sort_column="lrap", reverse=True, id="classes")
            with VerticalScroll(id="run-config"):
                yield Static("", id="run-config-text", markup=False)
        yield KeyFooter(compact=True)

    def on_mount(self) -> None:
        """Titles and an empty chart until the first poll lands."""
        self.sub_title = f"run {self.run_id}"
        self.query_one("#run-header", Static).border_title = "Run"
        tta = self.query_one("#tta-gain", Static)
        tta.border_title = "Test-time augmentation"
        tta.display = False
        self.query_one("#folds", LiveTable).border_title = "Folds"
        config = self.query_one("#run-config")
        config.border_title = "Config (runs/<id>/config.json)"
        config.display = False
        members = self.query_one("#members", LiveTable)
        members.border_title = "Ensemble members"
        members.display = False
        self.query_one("#classes", LiveTable).focus()
        self.query_one(EpochChart).show({}, METRICS[self.metric_index][1])
        self._class_title()
        # Opening a run reloads only the run: the status line starts from the overview already loaded.
        console(self).refresh_status(self)

    @property
    def watch_key(self) -> tuple[str, int]:
        """What the poller should load for this screen."""
        return (self.run_id, self.class_fold)

    def on_screen_resume(self) -> None:
        """Ask the poller for this run as soon as the screen is shown again.

        The first time, ``open_run`` has already asked (while the screen was
        built); asking again loaded and showed the whole run a second time.
        """
        if self._suspended or console(self).watched_run != self.watch_key:
            console(self).follow_run(self.watch_key)
        self._suspended = False

    def on_screen_suspend(self) -> None:
        """Stop loading this run while another screen covers it."""
        self._suspended = True
        console(self).unfollow_run(self.watch_key)

    def on_unmount(self) -> None:
        """Stop loading this run once the screen is closed."""
        console(self).unfollow_run(self.watch_key)

    def _class_title(self) -> None:
        table = self.query_one("#classes", LiveTable)
        table.border_title = f"Classes · {fold_label(self.class_fold)} LRAP"
        count = table.row_count
        table.border_subtitle = (f"{count} classes · sorted by {table.sort_description} · f: next fold · S: reverse"
                                 if count else f"no per-class scores for {fold_label(self.class_fold)} yet · f: next fold")

    def on_overview_changed(self, message: OverviewChanged) -> None:
        """Only the status line depends on the overview here."""
        console(self).refresh_status(self)

    def on_run_detail_changed(self, message: RunDetailChanged) -> None:
        """Refresh the header, fold table, chart and class table from a poll.

        The run is loaded while the screen is built; the message that brings it
        is handled once the screen is mounted, like every message posted before.
        """
        detail = message.detail
        if detail.run_id != self.run_id or detail.class_fold != self.class_fold:
            return  # an answer to an earlier request (before f was pressed)
        self.detail = detail
        self.query_one("#run-header", Static).update(run_header(detail, self.run_id))
        lines = config_lines((detail.run or {}).get("config") or {})
        self.query_one("#run-config-text", Static).update("\n".join(lines) or "no config recorded")
        self.query_one("#run-config").border_subtitle = f"{len(lines)} settings · g: back to the classes"
        folds = self.query_one("#folds", LiveTable)
        folds.sync(fold_rows(detail))
        done = len(detail.folds)
        folds.border_subtitle = f"{done}/{len(detail.planned_folds)} folds done"
        members = self.query_one("#members", LiveTable)
        members.display = bool(detail.members)
        if detail.members:
            members.sync(member_rows(detail))
            members.border_subtitle = (f"{len(detail.members)} members · blend CV LWLRAP "
                                       f"{fmt_score((detail.run or {}).get('cv_lwlrap'))}")
        # An ensemble (a run with members and no epochs) has no learning curve and no folds of its own.
        blend_only = bool(detail.members) and not detail.epochs and not detail.folds
        self.query_one(EpochChart).display = not blend_only
        folds.display = not blend_only
        self._plot()
        self._refresh_footer()
        self._show_tta(detail.tta)
        gains = detail.tta.class_gains() if detail.tta is not None else None
        self.query_one("#classes", LiveTable).sync(class_rows(detail.classes, gains))
        self._class_title()

    def _refresh_footer(self) -> None:
        """Recompose the footer only when the set of keys that act changed (a recompose is not cheap)."""
        state = tuple(bool(self.check_action(b.action, ())) for b in self.BINDINGS if b.show)
        if state != getattr(self, "_footer_state", None):
            self._footer_state = state
            self.refresh_bindings()

    def _show_tta(self, tta: TtaComparison | None) -> None:
        """The TTA line, and the class table's gain column only while there is a comparison."""
        panel = self.query_one("#tta-gain", Static)
        panel.display = tta is not None
        if tta is not None:
            panel.update(tta_line(tta, self.run_id))
        table = self.query_one("#classes", LiveTable)
        wanted = list(GAIN_CLASS_COLUMNS if tta is not None else CLASS_COLUMNS)
        if [c.key for c in table.specs] != [c.key for c in wanted]:
            # Rows of the old width cannot take the new column: rebuild the table, keep the sort.
            table.specs = wanted
            if table.sort_column not in {c.key for c in wanted}:
                table.sort_column, table.sort_reverse = "lrap", True
            table.clear(columns=True)

    def _plot(self) -> None:
        metric, label, _ = METRICS[self.metric_index]
        epochs = self.detail.epochs if self.detail else []
        best = {int(f["fold"]): int(f["best_epoch"]) for f in (self.detail.folds if self.detail else [])
                if f.get("best_epoch") is not None} if metric == "val_lwlrap" else {}
        self.query_one(EpochChart).show(fold_series(epochs, metric), label,
                                        planned_epochs=self.detail.planned_epochs if self.detail else None,
                                        best_epochs=best)

    # -- actions --------------------------------------------------------------------

    def action_back(self) -> None:
        """Return to the main screen."""
        self.app.pop_screen()

    def action_cycle_fold(self) -> None:
        """Show per-class LRAP of the next fold (out-of-fold → 0 → … → last → out-of-fold)."""
        n_folds = self.detail.n_folds if self.detail else 5
        self.class_fold = 0 if self.class_fold == OOF else self.class_fold + 1
        if self.class_fold >= n_folds:
            self.class_fold = OOF
        self.query_one("#classes", LiveTable).sync([])
        self._class_title()
        console(self).follow_run(self.watch_key)

    def action_toggle_config(self) -> None:
        """Show the whole config in place of the class table, or the class table again."""
        pane = self.query_one("#run-config")
        pane.display = not pane.display
        self.query_one("#classes", LiveTable).display = not pane.display
        (pane if pane.display else self.query_one("#classes", LiveTable)).focus()

    def action_cycle_metric(self) -> None:
        """Chart the next per-epoch metric."""
        self.metric_index = (self.metric_index + 1) % len(METRICS)
        self._plot()

    def _focused_table(self) -> LiveTable:
        focused = self.focused
        return focused if isinstance(focused, LiveTable) else self.query_one("#classes", LiveTable)

    def action_cycle_sort(self) -> None:
        """Sort the focused table by its next column."""
        self._focused_table().cycle_sort()
        self._class_title()

    def action_reverse_sort(self) -> None:
        """Reverse the focused table's sort."""
        self._focused_table().reverse_sort()
        self._class_title()

    def action_switch_table(self) -> None:
        """Focus the other table."""
        folds = self.query_one("#folds", LiveTable)
        classes = self.query_one("#classes", LiveTable)
        (classes if self.focused is folds else folds).focus()

    def action_infer(self) -> None:
        """Queue inference with TTA of this run (of its parent, on an inference run's screen)."""
        run = self.detail.run if self.detail else None
        if run is None:
            self.notify(f"Run {self.run_id} is not loaded yet.", severity="warning", markup=False)
            return
        target = run
        if run.get("kind") == "infer":
            parent = self.detail.tta.base if self.detail and self.detail.tta else None
            if parent is None:
                self.notify(f"Run {self.run_id} is an inference run whose trained run is unknown.",
                            severity="warning", markup=False)
                return
            target = parent
        elif run.get("kind") not in TRAINED_KINDS:
            self.notify(f"Run {self.run_id} is a {run.get('kind')} run: it has no fold checkpoints to infer with.",
                        severity="warning", markup=False)
            return
        self.app.push_screen(InferScreen(target), self._queued)

    def action_baseline(self) -> None:
        """Queue the baseline on the dataset this run was made on."""
        run = self.detail.run if self.detail else None
        if run is None:
            self.notify(f"Run {self.run_id} is not loaded yet.", severity="warning", markup=False)
            return
        dataset = None
        problem = ""
        if run.get("dataset_id") is not None:
            try:
                dataset = console(self).store.get_dataset(int(run["dataset_id"]))
            except (sqlite3.Error, StoreError) as err:
                problem = f"could not read the run's dataset: {err}"
        if dataset is None and not problem:
            problem = f"run {self.run_id} has no dataset recorded; check this data root"
        root = str(dataset["root"]) if dataset else str(console(self).default_data_root())
        encoder = str(run["run_id"]) if can_embed_baseline(run) else ""
        self.app.push_screen(BaselineScreen(data_root=root, dataset_name=dataset["name"] if dataset else "",
                                            encoder_run_id=encoder, root_problem=problem), self._queued)

    def action_curriculum(self) -> None:
        """Queue a curriculum from this train run, or open this curriculum run's view."""
        from fsat_console.screens.curriculum import CurriculumDialog, CurriculumView

        run = self.detail.run if self.detail else None
        if run is None:
            self.notify(f"Run {self.run_id} is not loaded yet.", severity="warning", markup=False)
        elif run.get("kind") == "curriculum":
            self.app.push_screen(CurriculumView(self.run_id))
        elif run.get("kind") == "train":
            self.app.push_screen(CurriculumDialog(run), self._queued)
        else:
            self.notify(f"Run {self.run_id} is a {run.get('kind')} run: a curriculum needs a train run as teacher.",
                        severity="warning", markup=False)

    def action_report(self) -> None:
        """Write this run's HTML report (``fsat report RUN_ID``) beside the database."""
        write_report(self, self.run_id, [self.run_id])

    def _queued(self, job_id: int | None) -> None:
        if job_id is not None:
            console(self).announce_queued(job_id)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Show only the keys that act on this run (no cancel on a finished run, no inference on a blend)."""
        detail = self.detail
        run = (detail.run or {}) if detail else {}
        job = (detail.job or {}) if detail else {}
        if action == "cancel_job":
            return job.get("status") in ("queued", "running") and not job.get("cancel_requested")
        if action == "resume":
            return job.get("status") in ("failed", "cancelled")
        if action == "infer":
            if run.get("kind") == "infer":
                return bool(detail and detail.tta)
            return run.get("kind") in TRAINED_KINDS and run.get("status") == "done"
        if action == "baseline":
            return run.get("dataset_id") is not None
        if action == "curriculum":
            return run.get("kind") == "curriculum" or (run.get("kind") == "train" and run.get("status") == "done")
        if action == "cycle_metric":
            return bool(detail and detail.epochs)
        if action == "cycle_fold":
            return bool(detail and (detail.folds or detail.classes))
        return True

    def action_kaggle_pack(self) -> None:
        """Pack this run for Kaggle and rehearse it in a subprocess; the result comes back as a notification."""
        from fsat_console.kaggle import PACKABLE_KINDS, pack_folder

        run = self.detail.run if self.detail else None
        if run is None or run.get("kind") not in PACKABLE_KINDS or run.get("status") != "done":
            self.notify(f"Run {self.run_id}: only a finished train, curriculum, infer or ensemble run can be packed.",
                        severity="warning", markup=False)
            return
        dataset = console(self).store.get_dataset(int(run["dataset_id"])) if run.get("dataset_id") is not None else None
        if dataset is None:
            self.notify(f"Run {self.run_id} has no dataset to rehearse on.", severity="warning", markup=False)
            return
        out = pack_folder(console(self).db_path, self.run_id)
        self.notify(f"Packing {self.run_id} into {out} and rehearsing it…", markup=False)
        self.run_worker(lambda: self._kaggle_pack(out, Path(dataset["root"])), thread=True, exclusive=True,
                        group="kaggle", exit_on_error=False)

    def _kaggle_pack(self, out: Path, test_root: Path) -> None:
        from fsat_console.kaggle import pack_and_rehearse, summary_text

        try:
            pack, rehearsal = pack_and_rehearse(console(self).db_path, self.run_id, out, test_root)
        except Exception as err:  # noqa: BLE001 - the command's own one-line message is shown
            self.app.call_from_thread(self.notify, f"Kaggle pack of {self.run_id}: {err}", severity="error",
                                      markup=False, timeout=20)
            return
        self.app.call_from_thread(self.notify, summary_text(pack, rehearsal), markup=False, timeout=60)

    def action_kaggle_lb(self) -> None:
        """This run's submissions with CV and leaderboard scores (``fsat lb``)."""
        from fsat_console.kaggle import cv_vs_lb_text

        self.notify(cv_vs_lb_text(console(self).store.cv_vs_lb(), self.run_id), markup=False, timeout=30)

    def action_resume(self) -> None:
        """Queue this run's job again (asks first)."""
        job_id = (self.detail.run or {}).get("job_id") if self.detail else None
        if job_id is not None:
            console(self).confirm_requeue(int(job_id), run_id=self.run_id)

    def action_cancel_job(self) -> None:
        """Cancel the job that produces this run."""
        job_id = (self.detail.run or {}).get("job_id") if self.detail else None
        if job_id is None:
            self.notify(f"Run {self.run_id} has no job to cancel.", severity="warning", markup=False)
            return
        console(self).confirm_cancel(int(job_id))
