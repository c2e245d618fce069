"""The noisy-label curriculum in the console: the queue dialog and a curriculum run's view.

``u`` on a train run's screen opens :class:`CurriculumDialog`: the preset, the
keep and pseudo thresholds, the stages (TOML, as ``--set stages=...`` reads
them), a job name. ``engine.intake.prepare`` checks it as ``fsat queue
curriculum`` is checked (the spec, then the teacher), and each ConfigError
lands under the field it names.

``u`` on a curriculum run's screen opens :class:`CurriculumView`: one fold's
validation LWLRAP per epoch with the stage boundaries marked and the
teacher's fold score as a reference line (``f`` walks the folds), teacher vs
student LRAP per class (sortable, by gain first), and the noisy-label audit
per class (by share dropped, with the filter's precision and recall when the
dataset ships the noisy truth).
"""

from __future__ import annotations

import json

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Header, Input, Label, Static
from textual_plotext import PlotextPlot

from engine import presets, specs
from engine.curriculum import audit_report
from engine.errors import ConfigError, FsatError
from fsat_console.access import console
from fsat_console.widgets.footer import KeyFooter
from fsat_console.formatting import fmt_score
from fsat_console.screens.dialogs import SpecDialog, preset_about, run_line, toml_value
from fsat_console.widgets.live_table import Cell, ColumnSpec, LiveTable, num_cell

#: The preset a dialog starts from: the demo's for the compact demo model, the plan's otherwise.
DEMO_PRESET, PLAN_PRESET = "demo_curriculum", "curriculum"


def default_preset(run: dict) -> str:
    """``demo_curriculum`` for a teacher of the compact demo model, ``curriculum`` for a PANNs one."""
    return DEMO_PRESET if str(run.get("model") or "").startswith("small") else PLAN_PRESET


def stages_text(stages: list) -> str:
    """Stages as a TOML inline array, one table per stage, only the fields that differ from the defaults."""
    default = specs.StageSection()
    parts = []
    for s in stages:
        d = specs.to_dict(s)
        keep = {k: v for k, v in d.items() if k in ("name", "epochs", "noisy_weight") or v != getattr(default, k)}
        parts.append("{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in keep.items()) + "}")
    return "[" + ", ".join(parts) + "]"


class CurriculumDialog(SpecDialog):
    """Queue a curriculum with a train run as its teacher."""

    KIND = "curriculum"
    FIELDS = ("preset", "keep", "pseudo", "stages", "name", "queue")
    FIELD_SLOTS = {"preset": "preset", "filter.keep_threshold": "keep", "filter.pseudo_threshold": "pseudo",
                   "stages": "stages"}

    def __init__(self, run: dict) -> None:
        """``run`` is the teacher's row (``Store.get_run``)."""
        super().__init__()
        self.run = run
        self.run_id = str(run["run_id"])
        self.initial_preset = default_preset(run)
        self.defaults = specs.CurriculumSpec(teacher_run_id=self.run_id)
        self.preset_problem = ""
        try:
            self.defaults = presets.resolve_spec("curriculum", preset=self.initial_preset,
                                               overrides=[f"teacher_run_id={toml_value(self.run_id)}"])
        except ConfigError as err:
            self.preset_problem = str(err)

    def compose(self) -> ComposeResult:
        """Title, the teacher, preset, thresholds, stages, a job name."""
        f = self.defaults.filter
        with Vertical(id="curriculum-dialog", classes="dialog"):
            yield Static(f"Curriculum with teacher {self.run_id}", classes="dialog-title")
            yield Static(run_line(self.run), classes="dialog-subtitle")
            known = presets.list_presets("curriculum")
            about = preset_about(known[self.initial_preset]) if self.initial_preset in known else ""
            yield Static(Text(about, style="italic"), id="preset-about")
            yield Static(Text(self.preset_problem), id="preset-error", classes="field-error")
            yield Label(f"Preset ({', '.join(sorted(known)) or 'none found'})", classes="field-label")
            yield Input(self.initial_preset, id="preset")
            yield Static("", id="preset-error-field", classes="field-error")
            with Horizontal(classes="field-row"):
                with Vertical(classes="field-box"):
                    yield Label("Keep threshold", classes="field-label")
                    yield Input(f"{f.keep_threshold:g}", type="number", id="keep")
                    yield Static("", id="keep-error", classes="field-error")
                with Vertical(classes="field-box"):
                    yield Label("Pseudo-label threshold", classes="field-label")
                    yield Input(f"{f.pseudo_threshold:g}", type="number", id="pseudo")
                    yield Static("", id="pseudo-error", classes="field-error")
            yield Label("Stages (TOML)", classes="field-label")
            yield Input(stages_text(self.defaults.stages), id="stages")
            yield Static("", id="stages-error", classes="field-error")
            yield Label("Job name", classes="field-label")
            yield Input("", placeholder=f"default: curriculum of {self.run_id}", id="name")
            yield Static("", id="name-error", classes="field-error")
            yield Static("", id="queue-error", classes="field-error")
            yield Static("[b]enter[/b] queue   [b]tab[/b] next field   [b]esc[/b] close", classes="dialog-keys")

    def on_mount(self) -> None:
        """Show a preset problem, focus the keep threshold."""
        self.query_one("#preset-error", Static).display = bool(self.preset_problem)
        self.query_one("#keep", Input).focus()

    def set_error(self, field: str, text: str) -> None:
        """The preset's error slot is ``#preset-error-field`` (``#preset-error`` is the preset file's)."""
        if field == "preset":
            error = self.query_one("#preset-error-field", Static)
            error.update(Text(text))
            error.display = bool(text)
            self.query_one("#preset", Input).set_class(bool(text), "-invalid")
            return
        super().set_error(field, text)

    def check_fields(self) -> bool:
        """Thresholds and stages are required (an empty field would silently fall back to the preset)."""
        ok = True
        for field, what in (("preset", "a curriculum preset"), ("keep", "the keep threshold"),
                            ("pseudo", "the pseudo-label threshold"), ("stages", "at least one stage")):
            if not self._value(field):
                self.set_error(field, f"enter {what}")
                ok = False
        return ok

    def request(self) -> dict:
        """The preset, this teacher, the thresholds and the stages."""
        preset = self._value("preset") or None
        if preset and preset not in presets.list_presets("curriculum"):
            raise ConfigError(f"no curriculum preset {preset!r} (known: "
                              f"{', '.join(sorted(presets.list_presets('curriculum')))})", field="preset")
        overrides = [f"teacher_run_id={toml_value(self.run_id)}"]
        for field, key in (("keep", "filter.keep_threshold"), ("pseudo", "filter.pseudo_threshold"),
                           ("stages", "stages")):
            if self._value(field):
                overrides.append(f"{key}={self._value(field)}")
        return {"preset": preset, "overrides": overrides}


# --- the curriculum run's view --------------------------------------------------------------------

GAIN_COLUMNS = (
    ColumnSpec("class", "class", shrink=True),
    ColumnSpec("gain", "gain", descending_first=True),
    ColumnSpec("student", "student", descending_first=True),
    ColumnSpec("teacher", "teacher", descending_first=True),
    ColumnSpec("weight", "weight", descending_first=True),
)

AUDIT_COLUMNS = (
    ColumnSpec("class", "class", shrink=True),
    ColumnSpec("share_dropped", "dropped %", descending_first=True),
    ColumnSpec("n_labelled", "labelled", descending_first=True),
    ColumnSpec("n_kept", "kept", descending_first=True),
    ColumnSpec("n_dropped", "dropped", descending_first=True),
    ColumnSpec("n_added", "added", descending_first=True),
    ColumnSpec("mean_weight", "weight", descending_first=True),
    ColumnSpec("precision", "precision", descending_first=True),
    ColumnSpec("recall", "recall", descending_first=True),
)


def _num(value: float | None, digits: int = 4, signed: bool = False) -> Cell:
    if value is None:
        return num_cell("—", None)
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    style = ("green" if value > 0 else "red" if value < 0 else "") if signed else ""
    return num_cell(text, value, style)


def gain_rows(classes: list[dict]) -> list[tuple[str, list[Cell]]]:
    """Teacher vs student out-of-fold LRAP per class."""
    rows = []
    for c in classes:
        rows.append((str(c["class_idx"]), [Cell(c["class_name"], sort_key=c["class_name"]),
                                           _num(c.get("gain"), signed=True), _num(c.get("student_lrap")),
                                           _num(c.get("teacher_lrap")), _num(c.get("weight"), 3)]))
    return rows


def audit_rows(audit: list[dict]) -> list[tuple[str, list[Cell]]]:
    """The per-class audit, pooled over folds (counts are means per fold)."""
    rows = []
    for a in audit:
        cells = [Cell(a["class_name"], sort_key=a["class_name"])]
        share = a.get("share_dropped")
        cells.append(num_cell(f"{100 * share:.0f}%" if share is not None else "—", share))
        for key in ("n_labelled", "n_kept", "n_dropped", "n_added"):
            value = a.get(key)
            cells.append(num_cell(f"{value:.3g}" if value is not None else "—", value))
        for key in ("mean_weight", "precision", "recall"):
            cells.append(_num(a.get(key), 3))
        rows.append((str(a["class_idx"]), cells))
    return rows


def stage_starts(epochs: list[dict]) -> list[tuple[int, str]]:
    """(epoch, stage) where a new stage (or a stage re-run) begins, in one fold's epochs."""
    starts, last = [], None
    for e in sorted(epochs, key=lambda r: r["epoch"]):
        if e.get("stage") != last:
            starts.append((int(e["epoch"]), str(e.get("stage") or "")))
            last = e.get("stage")
    return starts


class StageChart(PlotextPlot):
    """One fold's validation LWLRAP per epoch, stage boundaries as vertical lines, the teacher as a level."""

    def show(self, fold: int, epochs: list[dict], teacher_score: float | None) -> None:
        """Plot ``epochs`` (rows of one fold) and repaint."""
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(f"fold {fold}: val LWLRAP per epoch (| stage start, — teacher)")
        plt.xlabel("epoch")
        points = sorted((int(e["epoch"]), float(e["val_lwlrap"])) for e in epochs if e.get("val_lwlrap") is not None)
        if not points:
            plt.text("no epochs recorded yet", x=0.5, y=0.5, alignment="center")
            plt.xlim(0, 1)
            plt.ylim(0, 1)
        else:
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            plt.plot(xs, ys, label="student", color="cyan", marker="braille")
            for epoch, stage in stage_starts(epochs):
                plt.vline(epoch, color="orange")
                plt.text(stage, x=epoch, y=max(ys), color="orange")
            if teacher_score is not None:
                plt.hline(teacher_score, color="green")
        self.refresh()


class CurriculumView(Screen):
    """A curriculum run: curves with stages, teacher vs student per class, the noisy-label audit."""

    BINDINGS = [
        Binding("escape", "back", "Back", tooltip="Back to the run"),
        Binding("f", "next_fold", "Chart fold", tooltip="Chart the next fold"),
        Binding("s", "cycle_sort", "Sort", tooltip="Sort the focused table by its next column"),
        Binding("S", "reverse_sort", "Reverse", show=False),
        Binding("tab", "switch_table", "Gain/Audit", tooltip="Move between the class-gain and the audit table"),
        Binding("r", "reload", "Reload", tooltip="Read the run again"),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.fold_index = 0
        self.report: dict | None = None
        self.epochs: list[dict] = []
        self.teacher_folds: dict[int, float] = {}

    def compose(self) -> ComposeResult:
        """Summary line, the stage chart, the two tables."""
        yield Header()
        yield Static("", id="curriculum-summary")
        yield StageChart(id="stage-chart")
        with Horizontal(id="curriculum-tables"):
            yield LiveTable(GAIN_COLUMNS, sort_column="gain", reverse=True, id="class-gain")
            yield LiveTable(AUDIT_COLUMNS, sort_column="share_dropped", reverse=True, id="audit")
        yield KeyFooter()

    def on_mount(self) -> None:
        """Titles, then the first load; reload every few seconds while the screen is shown."""
        self.sub_title = f"curriculum {self.run_id}"
        self.query_one("#class-gain", LiveTable).border_title = "Teacher vs student · out-of-fold LRAP per class"
        self.query_one("#audit", LiveTable).border_title = "Noisy-label audit per class (mean per fold)"
        self.query_one("#class-gain", LiveTable).focus()
        self.action_reload()
        self.set_interval(3.0, self.action_reload)

    @work(thread=True, exclusive=True, exit_on_error=False, group="curriculum-view")
    def action_reload(self) -> None:
        """Read the run's report, epochs and the teacher's fold scores off the UI thread."""
        store = console(self).store
        try:
            report = audit_report(store, self.run_id)
            epochs = store.epochs(self.run_id)
            teacher = {int(f["fold"]): float(f["lwlrap"]) for f in store.fold_scores(report["teacher_run_id"])}
        except FsatError as err:
            self.app.call_from_thread(self._failed, str(err))
            return
        self.app.call_from_thread(self._show, report, epochs, teacher)

    def _failed(self, text: str) -> None:
        self.query_one("#curriculum-summary", Static).update(Text(text, style="bold red"))

    def _show(self, report: dict, epochs: list[dict], teacher: dict[int, float]) -> None:
        self.report, self.epochs, self.teacher_folds = report, epochs, teacher
        overall = next((g for g in report["gain"] if g["fold"] == -1), None)
        line = Text()
        line.append(f"{self.run_id}", style="bold")
        line.append(f" · teacher {report['teacher_run_id']} · {report['status']}", style="dim")
        if overall:
            line.append(f" · OOF {fmt_score(overall['student_lwlrap'])} vs {fmt_score(overall['teacher_lwlrap'])}")
            line.append(f" ({overall['gain']:+.4f})", style="green" if overall["gain"] > 0 else "red")
        for g in report["gain"]:
            if g["fold"] >= 0:
                line.append(f" · fold {g['fold']} {g['gain']:+.4f}", style="dim")
        if report["swaps"]:
            line.append(f" · {len(report['swaps'])} loss swap(s)", style="yellow")
        self.query_one("#curriculum-summary", Static).update(line)
        self.query_one("#class-gain", LiveTable).sync(gain_rows(report["classes"]))
        audit = self.query_one("#audit", LiveTable)
        audit.sync(audit_rows(report["audit"]))
        audit.border_subtitle = ("precision/recall against the noisy truth" if report["truth_known"]
                                 else "no noisy truth in this dataset: precision/recall unknown")
        self._plot()

    def _folds(self) -> list[int]:
        return sorted({int(e["fold"]) for e in self.epochs})

    def _plot(self) -> None:
        folds = self._folds()
        if not folds:
            self.query_one(StageChart).show(0, [], None)
            return
        fold = folds[self.fold_index % len(folds)]
        self.query_one(StageChart).show(fold, [e for e in self.epochs if int(e["fold"]) == fold],
                                        self.teacher_folds.get(fold))

    def action_next_fold(self) -> None:
        """Chart the next fold."""
        self.fold_index += 1
        self._plot()

    def _focused_table(self) -> LiveTable:
        focused = self.focused
        return focused if isinstance(focused, LiveTable) else self.query_one("#class-gain", LiveTable)

    def action_cycle_sort(self) -> None:
        """Sort the focused table by its next column."""
        self._focused_table().cycle_sort()

    def action_reverse_sort(self) -> None:
        """Reverse the focused table's sort."""
        self._focused_table().reverse_sort()

    def action_switch_table(self) -> None:
        """Focus the other table."""
        gain = self.query_one("#class-gain", LiveTable)
        audit = self.query_one("#audit", LiveTable)
        (audit if self.focused is gain else gain).focus()

    def action_back(self) -> None:
        """Return to the run screen."""
        self.app.pop_screen()
