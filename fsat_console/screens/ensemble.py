"""The ensemble screen: pick runs and weights, see the blend's out-of-fold LWLRAP at once.

Every finished run of one dataset whose run folder holds an ``oof.npy``
(out-of-fold scores in curated order) is a candidate. Space puts the selected
run in the blend or takes it out, ``+``/``-`` change its weight, ``c`` goes
back to CV weights, ``m`` switches rank and mean averaging, ``k``
calibration, ``g`` runs greedy forward selection over all candidates. After
every change a thread worker blends the members' OOF scores with
``engine.ensemble.blend`` against the curated truth (``train_curated.csv`` of
the dataset) and the score replaces the old one; ``ctrl+s`` (or enter) queues
an ``ensemble`` job with exactly what is shown, whose worker writes the
submission and records the ensemble as a run.

Weights start as CV weights, the default of ``fsat ensemble`` and of the
ensemble job: proportional to each member's out-of-fold LWLRAP (computed from
its ``oof.npy``, as the job does). The live score blends with those weights
and the saved spec leaves ``weights`` empty, so the job computes the same
ones. The first ``+``/``-`` turns the CV weights into explicit numbers (those
shown, scaled to average 1) and changes one of them; from then on the spec
carries exactly the weights shown.

The blend logic is not here: candidates, member checks and their messages,
CV weights and the blend bench are ``engine.runs.members``, the code the
ensemble job runs too. This module is the interface only. Arrays are read once
per run (and again only when the file changes), so a change costs one blend (a few tenths of a second for five members of 5000
clips). numpy and ``engine.ensemble`` are imported only in the worker thread:
the console starts without numpy.
"""

from __future__ import annotations

import sqlite3

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Digits, Header, Static
from textual.worker import get_current_worker

from engine import specs
from engine.errors import ConfigError, FsatError
from engine.runs.members import (GREEDY_STEPS, BlendBench, BlendOutcome, BlendState, Candidate, cv_weights,
                                 ensemble_spec, find_candidates)
from fsat_console.access import console
from fsat_console.widgets.footer import KeyFooter
from fsat_console.formatting import fmt_score, shorten
from fsat_console.live import Overview, OverviewChanged
from fsat_console.screens.dialogs import try_enqueue
from fsat_console.report import REPORT_KEY, write_report
from fsat_console.widgets.live_table import Cell, ColumnSpec, LiveTable, num_cell
from fsat_console.widgets.status import WorkerStatus

#: How much ``+`` / ``-`` change a member's weight.
WEIGHT_STEP = 0.5
#: The ``m`` key's cycle: the ensemble spec's methods (``engine.ensemble.METHODS``).
METHODS = specs.ENSEMBLE_METHODS
METHOD_LABELS = {"auto": "auto (best by cross-fitted OOF)", "best": "best member alone",
                 "rank": "rank average → quantile map", "rank_minmax": "rank average → min-max + temperature",
                 "mean": "mean of probabilities", "logit_mean": "mean of logits", "geo_mean": "geometric mean"}

MEMBER_COLUMNS = (
    ColumnSpec("in", "in", descending_first=True),
    ColumnSpec("run", "run"),
    ColumnSpec("name", "name", shrink=True),
    ColumnSpec("kind", "kind"),
    ColumnSpec("model", "model"),
    ColumnSpec("cv", "CV LWLRAP", descending_first=True),
    ColumnSpec("oof", "OOF LWLRAP", descending_first=True),
    ColumnSpec("weight", "weight", descending_first=True),
    ColumnSpec("share", "share", descending_first=True),
    ColumnSpec("test", "test"),
    ColumnSpec("note", "note", sortable=False, shrink=True),
)


# --------------------------------------------------------------------------- messages


class CandidatesLoaded(Message):
    """The candidate runs and their datasets, or why they could not be listed."""

    def __init__(self, candidates: list[Candidate], datasets: dict[int, dict], problem: str | None = None) -> None:
        super().__init__()
        self.candidates = candidates
        self.datasets = datasets
        self.problem = problem


class BlendComputed(Message):
    """A blend worker finished."""

    def __init__(self, outcome: BlendOutcome) -> None:
        super().__init__()
        self.outcome = outcome


class GreedyDone(Message):
    """Greedy selection finished: member -> picks, score history, left-out runs, or an error."""

    def __init__(self, selection: dict[str, float], history: list[float], problems: dict[str, str],
                 error: str | None = None) -> None:
        super().__init__()
        self.selection = selection
        self.history = history
        self.problems = problems
        self.error = error


class EnsembleQueued(Message):
    """The ensemble job was queued (``job_id``) or not (``error``)."""

    def __init__(self, job_id: int | None, error: str | None = None) -> None:
        super().__init__()
        self.job_id = job_id
        self.error = error


# --------------------------------------------------------------------------- screen


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"


class MemberTable(LiveTable, inherit_bindings=False):
    """The runs table, without the table's own enter binding.

    Enter reaches the screen (which saves) the way space and + do, in the order
    the keys were pressed; a priority binding would run before keys still
    waiting in the table's queue.
    """

    BINDINGS = [b for b in DataTable.BINDINGS if not (isinstance(b, Binding) and b.key == "enter")]


#: The priority ``P`` queues a blend at: a blend takes seconds, so it need not wait behind a long training.
URGENT_PRIORITY = 10


class EnsembleScreen(Screen):
    """Blend runs' out-of-fold scores from the keyboard and queue the result as an ensemble job."""

    BINDINGS = [
        Binding("escape", "back", "Back", show=False, tooltip="Back to the previous screen (the blend is kept)"),
        Binding("space", "toggle_member", "In/out", tooltip="Put the selected run in the blend or take it out"),
        Binding("plus,equals_sign", "weight(1)", "Weight", key_display="+/-",
                tooltip=f"Raise the selected member's weight by {WEIGHT_STEP:g} (CV weights become explicit ones)"),
        Binding("minus", "weight(-1)", "Weight−", key_display="-", show=False,
                tooltip=f"Lower the selected member's weight by {WEIGHT_STEP:g} (not below 0)"),
        Binding("c", "cv_weights", "CV weights", show=False,
                tooltip="Weights proportional to each member's OOF LWLRAP again (the default of fsat ensemble)"),
        Binding("m", "toggle_method", "Method", tooltip="Next blend method: auto, best, rank, rank_minmax, "
                "mean, logit_mean, geo_mean"),
        Binding("k", "toggle_calibrate", "Calibrate",
                tooltip="Map the blend to probabilities with a per-class temperature and bias (on/off)"),
        Binding("g", "greedy", "Greedy",
                tooltip=f"Greedy forward selection over all runs listed (up to {GREEDY_STEPS} picks), scored with "
                "auto; runs without test.npy and a trained run beside its TTA run are left out"),
        Binding("ctrl+s,enter", "save", "Save",
                tooltip="Queue an ensemble job with these members, weights, method and calibration"),
        Binding("P", "toggle_priority", "Priority", show=False,
                tooltip=f"Queue the blend at priority {URGENT_PRIORITY} (ahead of jobs at 0) or at 0 again"),
        Binding("d", "next_dataset", "Dataset", tooltip="Show the runs of the next dataset (clears the blend)"),
        Binding("s", "cycle_sort", "Sort", show=False, tooltip="Sort the runs by their next column"),
        Binding("S", "reverse_sort", "Reverse", show=False, tooltip="Reverse the sort of the runs"),
        Binding(REPORT_KEY, "report", "Report", show=False, tooltip="Write the blend shown as an HTML report beside "
                "the database (scored as the ensemble job would; nothing is saved)"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.candidates: dict[str, Candidate] = {}
        self.datasets: dict[int, dict] = {}
        self.outcome: BlendOutcome | None = None
        #: Why a run was taken out of the blend (shown in its note column until it is put back).
        self.notes: dict[str, str] = {}
        self.loaded = False
        self.list_problem: str | None = None
        self.greedy_running = False
        #: The priority the blend is queued at (``P``).
        self.priority = 0
        self._runs_key: str | None = None
        self._row_cache: dict[str, dict] = {}
        self._pending_key: tuple | None = None
        #: Stored folds per dataset id (a dataset's folds never change once stored).
        self._folds: dict[int, dict[str, int]] = {}
        #: Each run's own OOF LWLRAP, from the blends so far (what CV weights are proportional to).
        self.member_scores: dict[str, float] = {}

    # -- set-up ------------------------------------------------------------------------

    @property
    def state(self) -> BlendState:
        """The blend chosen so far (lives on the app)."""
        return console(self).blend_state

    @property
    def bench(self) -> BlendBench:
        """The arrays loaded so far (live on the app)."""
        return console(self).blend_bench

    @property
    def table(self) -> LiveTable:
        """The runs table."""
        return self.query_one("#members", LiveTable)

    def compose(self) -> ComposeResult:
        """Header, status line, the blend's score, the runs, footer."""
        yield Header()
        yield WorkerStatus(id="status")
        with Horizontal(id="blend-panel"):
            yield Digits("", id="blend-score")
            yield Static("", id="blend-about")
        yield MemberTable(MEMBER_COLUMNS, sort_column="cv", reverse=True, id="members")
        yield KeyFooter(compact=True)

    def on_mount(self) -> None:
        """Title, focus the runs, list the candidates from what the app already loaded."""
        self.sub_title = "ensemble"
        self.query_one("#blend-panel").border_title = "Blend"
        self.table.border_title = "Runs with out-of-fold scores"
        self.table.focus()
        self._render_panel()
        self.show_overview(console(self).overview, force=True)

    def on_screen_resume(self) -> None:
        """Catch up with runs that finished while another screen was shown."""
        self.show_overview(console(self).overview)

    def on_overview_changed(self, message: OverviewChanged) -> None:
        """A poll brought new runs or jobs."""
        self.show_overview(message.overview)

    def show_overview(self, overview: Overview | None, force: bool = False) -> None:
        """New poll data: refresh the status line; list the candidates again when the runs changed."""
        console(self).refresh_status(self)
        if overview is None:
            return
        # Every finished run is a candidate, not only the main table's page: list them again whenever
        # any run was added, finished or rescored.
        key = repr(overview.run_stamp)
        if key == self._runs_key and not force:
            return
        self._runs_key = key
        self._load_candidates()

    @work(thread=True, exclusive=True, exit_on_error=False, group="ensemble-candidates")
    def _load_candidates(self) -> None:
        """List every finished run with a run folder, look up folders and datasets, off the UI thread."""
        try:
            app = console(self)
            runs = app.store.blendable_runs()
            found, datasets = find_candidates(app.store, runs, app.db_path,
                                              self._row_cache)
        except (sqlite3.Error, FsatError, OSError) as err:
            self.post_message(CandidatesLoaded([], {}, problem=f"could not list the runs: {err}"))
            return
        self.post_message(CandidatesLoaded(found, datasets))

    def on_candidates_loaded(self, message: CandidatesLoaded) -> None:
        """Show the candidates of the blend's dataset (choosing one if needed) and rescore if needed."""
        self.loaded = True
        self.list_problem = message.problem
        self.candidates = {c.run_id: c for c in message.candidates}
        self.datasets = message.datasets
        state = self.state
        with_runs = self._dataset_ids()
        if state.dataset_id not in with_runs:
            state.dataset_id = with_runs[0] if with_runs else None
        if message.problem is None:
            # A member that is no longer a finished run with oof.npy on this dataset leaves the blend.
            for run_id in state.members():
                if run_id not in self.candidates or self.candidates[run_id].dataset_id != state.dataset_id:
                    state.remove(run_id)
        self.refresh_bindings()
        self._refresh_table()
        self._request_blend()

    def _dataset_ids(self) -> list[int]:
        """Datasets that have candidates, the one with the newest candidate first."""
        seen: list[int] = []
        for c in self.candidates.values():
            if c.dataset_id is not None and c.dataset_id in self.datasets and c.dataset_id not in seen:
                seen.append(c.dataset_id)
        return seen

    @property
    def dataset(self) -> dict | None:
        """The dataset row of the blend."""
        return self.datasets.get(self.state.dataset_id) if self.state.dataset_id is not None else None

    def shown_candidates(self) -> list[Candidate]:
        """Candidates on the blend's dataset."""
        return [c for c in self.candidates.values() if c.dataset_id == self.state.dataset_id]

    # -- table and panel -----------------------------------------------------------------

    def shown_weights(self) -> dict[str, float]:
        """Each member's weight as the table shows it: explicit, or CV weights averaging 1.

        CV weights are missing while a member's OOF LWLRAP is still being computed.
        """
        state = self.state
        if state.weights is not None:
            return dict(state.weights)
        return cv_weights(state.members(), self.member_scores) or {}

    def _rows(self) -> list[tuple[str, list[Cell]]]:
        state = self.state
        weights = self.shown_weights()
        total = sum(weights.values())
        shares = {k: w / total for k, w in weights.items()} if total > 0 else {}
        weight_style = "bold cyan" if state.cv_weighted else "bold"
        member_lwlrap = self.member_scores
        rows = []
        for c in self.shown_candidates():
            selected = c.run_id in state.member_ids
            weight = weights.get(c.run_id)
            weight_text = "—" if not selected else ("cv" if weight is None else f"{weight:.2f}")
            note = self.notes.get(c.run_id, "")
            if not note and selected and not c.has_test:
                note = "no test.npy"
            style = "bold" if selected else ""
            rows.append((c.run_id, [
                Cell("●" if selected else "○", sort_key=int(selected), style="bold green" if selected else "dim"),
                Cell(c.run_id, sort_key=c.run_id, style=style),
                Cell(shorten(c.name, 24), sort_key=c.name.lower()),
                Cell(c.kind, sort_key=c.kind),
                Cell(c.model or "—", sort_key=c.model),
                num_cell(fmt_score(c.cv_lwlrap), c.cv_lwlrap),
                num_cell(fmt_score(member_lwlrap.get(c.run_id)), member_lwlrap.get(c.run_id)),
                num_cell(weight_text, weight, weight_style if weight else "dim"),
                num_cell("—" if c.run_id not in shares else f"{shares[c.run_id] * 100:.1f}%", shares.get(c.run_id)),
                Cell("✔" if c.has_test else "—", sort_key=int(c.has_test), style="" if c.has_test else "dim"),
                Cell(shorten(note, 36), style="red" if c.run_id in self.notes else "yellow"),
            ]))
        return rows

    def _refresh_table(self) -> None:
        table = self.table
        table.sync(self._rows())
        dataset = self.dataset
        where = f" · {dataset['name']}" if dataset else ""
        table.border_title = f"Runs with out-of-fold scores{where} ({table.row_count})"
        others = len(self._dataset_ids()) - 1
        no_dataset = sum(1 for c in self.candidates.values() if c.dataset_id not in self.datasets)
        parts = [f"sorted by {table.sort_description}"]
        if others > 0:
            parts.append(f"{others} more dataset{'s' if others > 1 else ''}: d")
        if no_dataset:
            parts.append(f"{no_dataset} run{'s' if no_dataset > 1 else ''} without a dataset not shown")
        table.border_subtitle = " · ".join(parts)

    def _render_panel(self) -> None:
        state = self.state
        digits = self.query_one("#blend-score", Digits)
        about = self.query_one("#blend-about", Static)
        outcome = self.outcome if self.outcome is not None and self.outcome.key == state.key() else None
        pending = self._pending_key == state.key() and outcome is None
        shown = self.outcome if pending else outcome  # keep the last score, dimmed, while computing
        digits.update(f"{shown.oof_lwlrap:.4f}" if shown and shown.oof_lwlrap is not None else "")
        digits.set_class(pending, "-stale")
        text = Text()
        text.append("Blend OOF LWLRAP", style="bold")
        text.append(f"  {METHOD_LABELS[state.method]}", style="cyan")
        if state.method == "auto" and outcome is not None and outcome.method:
            text.append(f" → {outcome.method}", style="bold cyan")
        text.append(f" · {'mapped to probabilities' if state.calibrate else 'ranks not mapped'}", style="cyan")
        if self.priority:
            text.append(f" · queued at priority {self.priority}", style="bold cyan")
        n = len(state.member_ids)
        if self.dataset:
            clips = f" ({outcome.n_clips} curated clips)" if outcome and outcome.n_clips else ""
            text.append(f" · {n} member{'s' if n != 1 else ''} on {self.dataset['name']}{clips}")
        if self.greedy_running:
            text.append("\ngreedy forward selection running…", style="bold yellow")
        elif pending:
            text.append("\ncomputing…", style="bold yellow")
        if not self.loaded:
            text.append("\nlisting runs…", style="dim")
        elif self.list_problem:
            text.append(f"\n{self.list_problem}", style="bold red")
        elif not self.candidates:
            text.append("\nNo finished run has out-of-fold scores (oof.npy in its run folder) yet: "
                        "train or infer a run first.", style="dim")
        elif n == 0:
            text.append("\nPress space on a run to put it in the blend, or g to pick members greedily.",
                        style="dim")
        if outcome is not None and outcome.error:
            text.append(f"\n{outcome.error}", style="bold red")
        elif outcome is not None and outcome.oof_lwlrap is not None:
            text.append("\n")
            if state.calibrate and outcome.method in ("rank", "rank_minmax"):
                text.append("raw (before the map) ", style="dim")
                text.append(fmt_score(outcome.raw_oof_lwlrap), style="bold")
                text.append(" · ", style="dim")
            best = max(outcome.member_lwlrap.items(), key=lambda kv: kv[1], default=None)
            if best is not None:
                text.append("best member ", style="dim")
                text.append(f"{best[1]:.4f} {best[0]}", style="bold")
                gain = outcome.oof_lwlrap - best[1]
                text.append(" · gain ", style="dim")
                text.append(_signed(gain), style="bold green" if gain > 0 else "bold red")
            if len(outcome.candidates) > 1:
                text.append("\n")
                text.append("  ".join(f"{m} {fmt_score(v)}" for m, v in outcome.candidates.items()), style="dim")
            if outcome.warning:
                text.append(f"\nwarning: {outcome.warning}", style="bold yellow")
            text.append("\nCV weights (∝ each member's OOF LWLRAP; +/- sets them) " if state.cv_weighted
                        else "\nexplicit weights (c: back to CV weights) ", style="dim")
            text.append("  ".join(f"{m} {w * 100:.0f}%" for m, w in zip(outcome.members, outcome.weights)))
            missing_test = [m for m in outcome.members if m in self.candidates and not self.candidates[m].has_test]
            if missing_test:
                text.append(f"\n{len(missing_test)} member(s) without test.npy: the saved ensemble will have "
                            "no submission", style="yellow")
        about.update(text)

    # -- blending ---------------------------------------------------------------------------

    def _request_blend(self) -> None:
        """Score the current blend unless that score is already shown or on its way."""
        key = self.state.key()
        if (self.outcome is not None and self.outcome.key == key) or self._pending_key == key:
            self._render_panel()
            return
        state = self.state
        members = [self.candidates[m] for m in state.members() if m in self.candidates]
        weights = None if state.weights is None else [state.weights[c.run_id] for c in members]
        if not members:
            self.outcome = BlendOutcome(key=key)
            self._pending_key = None
            self._render_panel()
            self._refresh_table()
            return
        self._pending_key = key
        self._render_panel()
        self._blend(self.dataset, members, weights, state.method, state.calibrate, key)

    @work(thread=True, exclusive=True, exit_on_error=False, group="ensemble-blend")
    def _blend(self, dataset: dict | None, members: list[Candidate], weights: list[float] | None, method: str,
               calibrate: bool, key: tuple) -> None:
        """Blend in a thread; a request overtaken by a newer one is dropped unstarted."""
        worker = get_current_worker()
        bench = self.bench
        with bench.lock:  # one blend at a time: quick key presses queue here, and only the last one runs
            if worker.is_cancelled:
                return
            try:
                folds = self._stored_folds(dataset["id"]) if dataset else None
                outcome = bench.evaluate(dataset, members, weights, method=method, calibrate=calibrate, key=key,
                                         folds=folds)
            except Exception as err:  # whatever happens becomes a message in the panel
                outcome = BlendOutcome(key=key, error=f"cannot blend: {type(err).__name__}: {err}")
        self.post_message(BlendComputed(outcome))

    def _stored_folds(self, dataset_id: int) -> dict[str, int]:
        """The dataset's stored folds, read once (none yet: read again next time)."""
        if dataset_id not in self._folds:
            folds = console(self).store.get_folds(dataset_id)
            if not folds:
                return folds
            self._folds[dataset_id] = folds
        return self._folds[dataset_id]

    def on_blend_computed(self, message: BlendComputed) -> None:
        """Show a blend's score; members that could not take part are taken out, with the reason."""
        outcome = message.outcome
        if self._pending_key == outcome.key:
            self._pending_key = None
        self.member_scores.update(outcome.member_lwlrap)
        if outcome.key != self.state.key():
            return  # the blend changed since this was asked for
        self.outcome = outcome
        if outcome.problems:
            for run_id in outcome.problems:
                self.notes[run_id] = outcome.short_problems.get(run_id, "left out")
                self.member_scores.pop(run_id, None)
                self.state.remove(run_id)
            self.notify("\n".join(f"{k}: {v}" for k, v in outcome.problems.items()),
                        title="Left out of the blend", severity="warning", timeout=10, markup=False)
            self._refresh_table()
            self._request_blend()
            return
        self._refresh_table()
        self._render_panel()

    def _changed(self) -> None:
        self._refresh_table()
        self._request_blend()
        self.refresh_bindings()  # Save appears with the first member and goes with the last

    # -- actions ------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Offer only the keys that act: blending keys while runs are listed, save once there is a member,
        ``d`` while runs of more than one dataset are listed."""
        if action == "next_dataset":
            return len(self._dataset_ids()) > 1
        if action in ("toggle_member", "weight", "cv_weights", "toggle_method", "toggle_calibrate", "greedy",
                      "cycle_sort", "reverse_sort"):
            return bool(self.shown_candidates())
        if action == "save":
            return bool(self.state.member_ids)
        return True

    def action_report(self) -> None:
        """Write the HTML report of the blend shown (members, weights, method, calibration) beside the database."""
        members = self.state.members()
        if not members:
            self.notify("Put runs in the blend first (space).", severity="warning")
            return
        weights = self.state.explicit_weights()
        arguments = [*members, "--blend", "--method", self.state.method,
                     *(["--weights", *map(repr, weights)] if weights else []),
                     *([] if self.state.calibrate else ["--no-calibrate"])]
        write_report(self, "blend-" + "-".join(members), arguments)

    def _busy(self) -> bool:
        if self.greedy_running:
            self.notify("Greedy selection is running; the blend changes when it is done.", severity="warning")
            return True
        return False

    def action_back(self) -> None:
        """Leave the screen; the blend is kept for next time."""
        self.app.pop_screen()

    def _selected(self) -> str | None:
        key = self.table.selected_key()
        if key is None:
            self.notify("No run selected.", severity="warning")
        return key

    def action_toggle_member(self) -> None:
        """Put the selected run in the blend or take it out.

        A new member gets its CV weight while the blend has CV weights, else an explicit weight of 1.
        """
        if self._busy():
            return
        key = self._selected()
        if key is None:
            return
        if key in self.state.member_ids:
            self.state.remove(key)
        else:
            self.notes.pop(key, None)
            self.state.add(key)
        self._changed()

    def action_weight(self, direction: int) -> None:
        """Change the selected member's weight by one step (``+`` on a run not in the blend adds it).

        The first change turns CV weights into explicit ones: the weights shown
        (rounded as shown), with the selected member's changed by one step.
        """
        if self._busy():
            return
        key = self._selected()
        if key is None:
            return
        state = self.state
        if key not in state.member_ids:
            if direction < 0:
                self.notify(f"{key} is not in the blend.", severity="warning", markup=False)
                return
            self.notes.pop(key, None)
            state.add(key)
            self._changed()
            return
        weights = state.weights
        if weights is None:
            shown = cv_weights(state.members(), self.member_scores)
            if shown is None:
                self.notify("The members' OOF LWLRAP is still being computed; press again in a moment.",
                            severity="warning")
                return
            weights = {m: round(w, 2) for m, w in shown.items()}
        # Rounding keeps float noise of repeated steps out of the saved weights.
        weights[key] = max(0.0, round(weights[key] + direction * WEIGHT_STEP, 10))
        state.set_weights(weights)
        self._changed()

    def action_cv_weights(self) -> None:
        """Go back to CV weights (proportional to each member's OOF LWLRAP; the saved spec gives none)."""
        if self._busy():
            return
        if self.state.cv_weighted:
            self.notify("The weights already follow each member's OOF LWLRAP.", timeout=3)
            return
        self.state.weights = None
        self._changed()

    def action_toggle_method(self) -> None:
        """The next blend method (auto, best, rank, rank_minmax, mean, logit_mean, geo_mean)."""
        if self._busy():
            return
        self.state.method = METHODS[(METHODS.index(self.state.method) + 1) % len(METHODS)]
        self._changed()

    def action_toggle_calibrate(self) -> None:
        """Switch calibration on or off."""
        if self._busy():
            return
        self.state.calibrate = not self.state.calibrate
        self._changed()

    def action_next_dataset(self) -> None:
        """Show the next dataset's runs; a blend cannot mix datasets, so it starts empty."""
        ids = self._dataset_ids()
        if len(ids) < 2 or self._busy():
            return
        index = ids.index(self.state.dataset_id) if self.state.dataset_id in ids else -1
        self.state.dataset_id = ids[(index + 1) % len(ids)]
        self.state.clear()
        self.notes.clear()
        self.notify(f"Dataset {self.dataset['name'] if self.dataset else self.state.dataset_id}", timeout=2,
                    markup=False)
        self._changed()

    def action_cycle_sort(self) -> None:
        """Sort the runs by their next column."""
        self.table.cycle_sort()
        self._refresh_table()

    def action_reverse_sort(self) -> None:
        """Reverse the sort of the runs."""
        self.table.reverse_sort()
        self._refresh_table()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """A click on the selected row toggles it (enter saves instead)."""
        event.stop()
        self.action_toggle_member()

    # -- greedy selection --------------------------------------------------------------------

    def action_greedy(self) -> None:
        """Pick members and weights by greedy forward selection over every run listed."""
        if self._busy():
            return
        candidates = self.shown_candidates()
        if not candidates or self.dataset is None:
            self.notify("No runs with out-of-fold scores to select from.", severity="warning")
            return
        self.greedy_running = True
        self._render_panel()
        self._greedy(self.dataset, sorted(candidates, key=lambda c: c.run_id))

    @work(thread=True, exclusive=True, exit_on_error=False, group="ensemble-greedy")
    def _greedy(self, dataset: dict, candidates: list[Candidate]) -> None:
        """Run greedy selection in a thread (one at a time; the screen takes no changes meanwhile)."""
        bench = self.bench
        with bench.lock:
            try:
                selection, history, problems = bench.greedy(dataset, candidates, calibrate=self.state.calibrate,
                                                            folds=self._stored_folds(dataset["id"]))
            except Exception as err:  # shown in the panel, never a traceback
                self.post_message(GreedyDone({}, [], {}, error=f"greedy selection failed: {err}"))
                return
        self.post_message(GreedyDone(selection, history, problems))

    def on_greedy_done(self, message: GreedyDone) -> None:
        """Take the greedy picks as the blend: members with their pick counts as weights."""
        self.greedy_running = False
        for run_id, why in message.problems.items():
            self.notes[run_id] = why
        if message.error or not message.selection:
            self.notify(message.error or "No run could take part in greedy selection.", severity="error",
                        markup=False)
            self._changed()
            return
        self.state.set_weights(message.selection)
        self.state.method = "auto"  # what the picks were scored with (BlendBench.greedy)
        picks = int(sum(message.selection.values()))
        self.notify(f"{picks} picks → {len(message.selection)} members; OOF LWLRAP of the picks' blend "
                    f"{message.history[-1]:.4f}", title="Greedy selection", markup=False)
        self._changed()

    # -- save -----------------------------------------------------------------------------------

    def action_toggle_priority(self) -> None:
        """Queue the blend ahead of jobs at priority 0, or at 0 again."""
        self.priority = 0 if self.priority else URGENT_PRIORITY
        self._render_panel()

    def action_save(self) -> None:
        """Queue an ensemble job with exactly this blend."""
        if self._busy():
            return
        state = self.state
        if not state.member_ids:
            self.notify("The blend has no members: press space on a run first.", severity="warning")
            return
        try:
            spec = ensemble_spec(state)
        except ConfigError as err:
            self.notify(str(err), title="Cannot save this blend", severity="error", markup=False)
            return
        self._enqueue(specs.to_dict(spec), "")  # listed under engine.intake's name rule for blends

    @work(thread=True, exclusive=True, exit_on_error=False, group="ensemble-save")
    def _enqueue(self, spec: dict, name: str) -> None:
        """Insert the job (a short write transaction) off the UI thread."""
        job_id, problem = try_enqueue(console(self).store, "ensemble", spec, name=name, priority=self.priority)
        if job_id is None:
            self.post_message(EnsembleQueued(None, error=f"Ensemble not queued. {problem}"))
            return
        self.post_message(EnsembleQueued(job_id))

    def on_ensemble_queued(self, message: EnsembleQueued) -> None:
        """Say which job will write the submission."""
        if message.error:
            self.notify(message.error, severity="error", markup=False)
            return
        self.notify(f"queued job {message.job_id}: it writes the blend's submission and records it as a run",
                    title="Ensemble", markup=False)
        console(self).request_refresh()
