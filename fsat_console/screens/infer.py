"""Queue dialogs opened from a run: inference with TTA (``i``) and a baseline on its dataset (``b``).

Both work like the training queue dialog: the fields are laid over a preset
(``tta`` for inference, ``baseline`` for the baseline), the engine's own
``resolve_spec`` validates the result, and a ConfigError lands under the field
it names while the dialog stays open with everything as typed. Enter queues
from any field (also from the split check boxes; space toggles those), escape
closes. The insert runs in a thread worker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Checkbox, Input, Label, Static

from engine import specs
from engine.errors import ConfigError
from fsat_console.formatting import fmt_score
from fsat_console.screens.queue import (WAITING, belongs_to, check_data_root, preset_about, split_overrides,
                                        try_enqueue)

#: The presets these dialogs start from.
TTA_PRESET = "tta"
BASELINE_PRESET = "baseline"


def _toml(value: object) -> str:
    """A value as TOML for an override (JSON strings, numbers, booleans and lists are valid TOML)."""
    return json.dumps(value)


def run_line(run: dict) -> Text:
    """``train-0003 · cnn14 · done · CV LWLRAP 0.8123`` for a dialog's subtitle."""
    text = Text()
    text.append(str(run.get("run_id") or "?"), style="bold")
    for part in (run.get("name"), run.get("model"), run.get("status")):
        if part:
            text.append(f" · {part}", style="dim")
    if run.get("cv_lwlrap") is not None:
        text.append(" · CV LWLRAP ", style="dim")
        text.append(fmt_score(run["cv_lwlrap"]), style="bold")
    return text


class SplitBox(Checkbox, inherit_bindings=False):
    """A check box toggled with space only, so that enter queues from it like from any field."""

    BINDINGS = [Binding("space", "toggle_button", "Toggle", show=False)]


class SpecDialog(ModalScreen[int | None]):
    """Common parts of a dialog that queues one job: field errors and the insert.

    Subclasses list their error slots in ``FIELDS`` (each ``#<field>-error``),
    build the spec in ``resolve`` and say where a ConfigError goes in
    ``field_for``. Dismisses with the new job id, or None when closed.
    """

    BINDINGS = [
        Binding("escape", "close", "Close", tooltip="Close the dialog without queueing"),
        # Not priority bindings: those would run before keys still queued in the focused field.
        Binding("ctrl+s,enter", "submit", "Queue", tooltip="Queue the job (errors appear under the field at fault)"),
    ]

    FIELDS: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.queued_job: int | None = None
        self._submitting = False

    def _value(self, field: str) -> str:
        return self.query_one(f"#{field}", Input).value.strip()

    def set_error(self, field: str, text: str) -> None:
        """Show ``text`` under ``field`` (empty text hides it) and mark the field invalid."""
        error = self.query_one(f"#{field}-error", Static)
        error.update(Text(text))  # plain text: messages may hold brackets such as [0]
        error.display = bool(text)
        for widget in self.query(f"#{field}"):
            widget.set_class(bool(text), "-invalid")

    def clear_errors(self) -> None:
        """Hide every error line."""
        for field in self.FIELDS:
            self.set_error(field, "")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in a text field queues."""
        event.stop()
        self.action_submit()

    def on_input_changed(self, event: Input.Changed) -> None:
        """Editing a field clears its error."""
        if event.input.id and event.input.id in self.FIELDS:
            self.set_error(event.input.id, "")

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        """Toggling a split clears the splits error."""
        if "splits" in self.FIELDS:
            self.set_error("splits", "")

    def action_close(self) -> None:
        """Close without queueing."""
        self.dismiss(None)

    # -- to be provided by a dialog -----------------------------------------------------

    def check_fields(self) -> bool:
        """Checks before the spec is built (True when all pass); errors go under their fields."""
        return True

    def resolve(self) -> object:
        """The validated spec (raises ConfigError)."""
        raise NotImplementedError

    #: ConfigError field (or the section it is in) -> error slot; a field not named goes under "queue".
    _FIELD_SLOTS: dict[str, str] = {}

    def field_for(self, err: ConfigError) -> str:
        """The error slot for a ConfigError from ``resolve``: by :attr:`_FIELD_SLOTS`, else "queue"."""
        field = err.field or ""
        for key, slot in self._FIELD_SLOTS.items():
            if belongs_to(field, key):
                return slot
        return "queue"

    def job_name(self, spec: object) -> str:
        """The name the job is listed under."""
        return getattr(spec, "name", "") or ""

    # -- submit ---------------------------------------------------------------------------

    def action_submit(self) -> None:
        """Validate; queue when all is well, else show each problem under its field."""
        if self._submitting or self.queued_job is not None:
            return
        self.clear_errors()
        ok = self.check_fields()
        try:
            spec = self.resolve()
        except ConfigError as err:
            slot = self.field_for(err)
            if slot == "queue":
                text = str(err)  # e.g. the preset file itself: name the file and setting
            elif slot == "overrides" and err.field and err.field != "--set":
                text = f"{err.field}: {err.reason}"
            else:
                text = err.reason
            self.set_error(slot, text)
            return
        if not ok:
            return
        self._submitting = True
        self._enqueue(spec.KIND, specs.to_dict(spec), self.job_name(spec))  # type: ignore[attr-defined]

    @work(thread=True, exclusive=True, exit_on_error=False, group="queue")
    def _enqueue(self, kind: str, spec: dict, name: str) -> None:
        """Insert the job (a short write transaction) off the UI thread."""
        job_id, problem = try_enqueue(self.app.store, kind, spec, name=name,  # type: ignore[attr-defined]
                                      on_wait=lambda: self.app.call_from_thread(self.set_error, "queue", WAITING))
        if job_id is None:
            self.app.call_from_thread(self._enqueue_failed, problem)
            return
        self.queued_job = job_id
        self.app.call_from_thread(self.dismiss, job_id)

    def _enqueue_failed(self, text: str) -> None:
        self._submitting = False
        self.set_error("queue", text)


class InferScreen(SpecDialog):
    """Queue inference of a trained run with test-time augmentation, over the ``tta`` preset."""

    FIELDS = ("tta-crops", "tta-crops-long", "long-seconds", "splits", "name", "queue")

    #: ConfigError field -> error slot.
    _FIELD_SLOTS = {"infer.tta_crops": "tta-crops", "infer.tta_crops_long": "tta-crops-long",
                    "infer.long_seconds": "long-seconds", "splits": "splits", "name": "name"}

    def __init__(self, run: dict) -> None:
        """``run`` is the trained run's row (``Store.get_run``)."""
        super().__init__()
        self.run = run
        self.run_id = str(run["run_id"])
        self.preset = TTA_PRESET if TTA_PRESET in specs.list_presets() else None
        self.defaults = specs.InferSpec(run_id=self.run_id)
        self.preset_problem = ""
        try:
            self.defaults = specs.resolve_spec("infer", preset=self.preset,
                                               overrides=[f"run_id={_toml(self.run_id)}"])
        except ConfigError as err:
            self.preset_problem = str(err)
        if self.preset is None:
            where = ", ".join(str(d) for d in specs.configs_dirs())
            self.preset_problem = (f"no preset named {TTA_PRESET!r} (looked in {where}); "
                                   "the built-in TTA defaults are used")

    def compose(self) -> ComposeResult:
        """Title, the run, the three TTA numbers, the splits, a job name."""
        inf = self.defaults.infer
        with Vertical(id="infer-dialog", classes="dialog"):
            yield Static(f"Infer run {self.run_id} with test-time augmentation", classes="dialog-title")
            yield Static(run_line(self.run), classes="dialog-subtitle")
            about = preset_about(specs.list_presets()[self.preset]) if self.preset else ""
            yield Static(Text(about, style="italic"), id="preset-about")
            yield Static(Text(self.preset_problem), id="preset-error", classes="field-error")
            with Horizontal(classes="field-row"):
                with Vertical(classes="field-box"):
                    yield Label("TTA crops (K)", classes="field-label")
                    yield Input(str(inf.tta_crops), type="integer", id="tta-crops")
                    yield Static("", id="tta-crops-error", classes="field-error")
                with Vertical(classes="field-box"):
                    yield Label("K for long clips", classes="field-label")
                    yield Input(str(inf.tta_crops_long), type="integer", id="tta-crops-long")
                    yield Static("", id="tta-crops-long-error", classes="field-error")
                with Vertical(classes="field-box"):
                    yield Label("Long beyond (seconds)", classes="field-label")
                    yield Input(f"{inf.long_seconds:g}", type="number", id="long-seconds")
                    yield Static("", id="long-seconds-error", classes="field-error")
            yield Label("Splits", classes="field-label")
            with Horizontal(id="splits", classes="field-row"):
                yield SplitBox("out-of-fold (curated; scores the TTA gain)", "oof" in self.defaults.splits,
                               id="split-oof")
                yield SplitBox("test (submission)", "test" in self.defaults.splits, id="split-test")
            yield Static("", id="splits-error", classes="field-error")
            yield Label("Job name", classes="field-label")
            yield Input("", placeholder=f"default: {self.run_id} tta<K>", id="name")
            yield Static("", id="name-error", classes="field-error")
            yield Static("", id="queue-error", classes="field-error")
            yield Static("[b]enter[/b] queue   [b]tab[/b] next field   [b]space[/b] toggle a split   "
                         "[b]esc[/b] close", classes="dialog-keys")

    def on_mount(self) -> None:
        """Show a preset problem, focus K."""
        self.query_one("#preset-error", Static).display = bool(self.preset_problem)
        self.query_one("#tta-crops", Input).focus()

    @property
    def splits(self) -> list[str]:
        """The ticked splits, in the engine's order."""
        ticked = {"oof": self.query_one("#split-oof", Checkbox).value,
                  "test": self.query_one("#split-test", Checkbox).value}
        return [s for s in specs.INFER_SPLITS if ticked[s]]

    def check_fields(self) -> bool:
        """Every number is required (an empty field would silently fall back to the preset)."""
        ok = True
        for field, what in (("tta-crops", "the number of crops per clip"),
                            ("tta-crops-long", "the number of crops for long clips"),
                            ("long-seconds", "the clip length beyond which a clip counts as long")):
            if not self._value(field):
                self.set_error(field, f"enter {what}")
                ok = False
        return ok

    def resolve(self) -> object:
        """The infer spec: the preset, this run, the fields."""
        overrides = [f"run_id={_toml(self.run_id)}", f"splits={_toml(self.splits)}"]
        for field, key in (("tta-crops", "infer.tta_crops"), ("tta-crops-long", "infer.tta_crops_long"),
                           ("long-seconds", "infer.long_seconds")):
            if self._value(field):
                overrides.append(f"{key}={self._value(field)}")
        if self._value("name"):
            overrides.append(f"name={_toml(self._value('name'))}")
        return specs.resolve_spec("infer", preset=self.preset, overrides=overrides)

    def job_name(self, spec: object) -> str:
        """The typed name, else ``<run> tta<K>``."""
        return spec.name or f"{self.run_id} tta{spec.infer.tta_crops}"  # type: ignore[attr-defined]


#: Where the engine looks for the PANNs CNN14 checkpoint (``engine.models.checkpoint``: PANNS_DIR_ENV and
#: PUBLISHED_CHECKPOINTS["cnn14"]; that module imports torch, so the console names them here).
PANNS_DIR_ENV = "FSAT_PANNS_DIR"
CNN14_CHECKPOINT = "Cnn14_mAP=0.431.pth"


def panns_checkpoint_problem(checkpoint: str, encoder_run_id: str) -> str | None:
    """Why a baseline would fail for want of an encoder, or None when it has one (checkpoint or run).

    Mirrors the engine's lookup: an explicit ``checkpoint`` path (a folder
    holds the published file), else ``$FSAT_PANNS_DIR/Cnn14_mAP=0.431.pth``,
    else a trained cnn14 run's encoder.
    """
    if encoder_run_id.strip():
        return None
    if checkpoint.strip():
        path = Path(checkpoint).expanduser()
        path = path / CNN14_CHECKPOINT if path.is_dir() else path
        return None if path.is_file() else f"checkpoint {path} does not exist"
    folder = os.environ.get(PANNS_DIR_ENV)
    if folder and (Path(folder).expanduser() / CNN14_CHECKPOINT).is_file():
        return None
    where = f"${PANNS_DIR_ENV} ({folder}) holds no {CNN14_CHECKPOINT}" if folder else f"${PANNS_DIR_ENV} is not set"
    return (f"no PANNs checkpoint is configured: {where}, and no encoder run is given, so this job can only "
            f"fail. Set {PANNS_DIR_ENV} to the folder with {CNN14_CHECKPOINT} before starting the worker, add "
            "checkpoint=/path/to/it under overrides, or name a trained cnn14 run above. Enter again queues anyway.")


class BaselineScreen(SpecDialog):
    """Queue the embeddings + logistic-regression baseline on a dataset, over the ``baseline`` preset."""

    FIELDS = ("data-root", "c", "encoder", "overrides", "queue")

    def __init__(self, *, data_root: str, dataset_name: str = "", encoder_run_id: str = "",
                 root_problem: str = "") -> None:
        """``root_problem`` explains why ``data_root`` is a guess (the run has no dataset recorded)."""
        super().__init__()
        self.initial_root = data_root
        self.dataset_name = dataset_name
        self.initial_encoder = encoder_run_id
        self.root_problem = root_problem
        #: The missing-checkpoint warning was shown once; enter again queues anyway.
        self.checkpoint_warned = False
        self.preset = BASELINE_PRESET if BASELINE_PRESET in specs.list_presets() else None
        self.defaults = specs.BaselineSpec()
        self.preset_problem = ""
        try:
            # The root only has to be non-empty here: this reads the preset's defaults.
            self.defaults = specs.resolve_spec("baseline", preset=self.preset,
                                               overrides=[f"data.root={_toml(data_root or '-')}"])
        except ConfigError as err:
            self.preset_problem = str(err)
        if self.preset is None:
            where = ", ".join(str(d) for d in specs.configs_dirs())
            self.preset_problem = (f"no preset named {BASELINE_PRESET!r} (looked in {where}); "
                                   "the built-in baseline defaults are used")

    def compose(self) -> ComposeResult:
        """Title, the dataset root, C, the fallback encoder run, overrides."""
        title = "Queue a baseline" + (f" on {self.dataset_name}" if self.dataset_name else "")
        with Vertical(id="baseline-dialog", classes="dialog"):
            yield Static(title, classes="dialog-title")
            about = preset_about(specs.list_presets()[self.preset]) if self.preset else ""
            yield Static(Text(about, style="italic"), id="preset-about")
            yield Static(Text(self.preset_problem), id="preset-error", classes="field-error")
            yield Label("Data root", classes="field-label")
            yield Input(self.initial_root, placeholder="folder with train_curated.csv", id="data-root")
            yield Static("", id="data-root-error", classes="field-error")
            with Horizontal(classes="field-row"):
                with Vertical(classes="field-box narrow"):
                    yield Label("C (logistic regression)", classes="field-label")
                    yield Input(f"{self.defaults.C:g}", type="number", id="c")
                    yield Static("", id="c-error", classes="field-error")
                with Vertical(classes="field-box"):
                    yield Label("Encoder run (when no PANNs checkpoint)", classes="field-label")
                    yield Input(self.initial_encoder, placeholder="a trained cnn14 run, e.g. train-0003",
                                id="encoder")
                    yield Static("", id="encoder-error", classes="field-error")
            yield Label("Overrides", classes="field-label")
            yield Input("", placeholder="key=value …  e.g. batch_size=8 device=\"cpu\"", id="overrides")
            yield Static("", id="overrides-error", classes="field-error")
            yield Static("", id="queue-error", classes="field-error")
            yield Static("[b]enter[/b] queue   [b]tab[/b] next field   [b]esc[/b] close", classes="dialog-keys")

    def check_fields(self) -> bool:
        """The data root must be a dataset folder; without any encoder, warn once before queueing."""
        problem = check_data_root(self._value("data-root"))
        if problem:
            self.set_error("data-root", problem)
            return False
        checkpoint = next((t.split("=", 1)[1].strip().strip("\"'") for t in split_overrides(self._value("overrides"))
                           if t.split("=", 1)[0].strip() == "checkpoint" and "=" in t),
                          str(getattr(self.defaults, "checkpoint", "") or ""))
        missing = panns_checkpoint_problem(checkpoint, self._value("encoder"))
        if missing and not self.checkpoint_warned:
            self.checkpoint_warned = True
            self.set_error("encoder", missing)
            self.query_one("#encoder", Input).focus()
            return False
        return True

    def on_mount(self) -> None:
        """Show a preset or data-root problem, warn at once when there is no encoder, focus the data root."""
        self.query_one("#preset-error", Static).display = bool(self.preset_problem)
        if self.root_problem:
            self.set_error("data-root", self.root_problem)
        missing = panns_checkpoint_problem(str(getattr(self.defaults, "checkpoint", "") or ""), self.initial_encoder)
        if missing:
            self.set_error("encoder", missing.replace(" Enter again queues anyway.", ""))
        self.query_one("#data-root", Input).focus()

    def resolve(self) -> object:
        """The baseline spec: the preset, the data root, C, the encoder run, overrides."""
        overrides = []
        if self._value("c"):
            overrides.append(f"C={self._value('c')}")
        if self._value("encoder"):
            overrides.append(f"encoder_run_id={_toml(self._value('encoder'))}")
        overrides += split_overrides(self._value("overrides"))
        return specs.resolve_spec("baseline", preset=self.preset, overrides=overrides,
                                  data_root=self._value("data-root") or None)

    def field_for(self, err: ConfigError) -> str:
        """Map the engine's field names onto this dialog's fields."""
        field = err.field or ""
        keys = [t.split("=", 1)[0].strip() for t in split_overrides(self._value("overrides")) if "=" in t]
        if field == "--set" or any(belongs_to(field, k) for k in keys):
            return "overrides"
        if belongs_to(field, "data.root") or field == "data":
            return "data-root"
        if field == "C":
            return "c"
        if field == "encoder_run_id":
            return "encoder"
        return "queue"

    def job_name(self, spec: object) -> str:
        """The preset's name (``cnn14-emb-logreg``), else ``baseline``."""
        return spec.name or "baseline"  # type: ignore[attr-defined]
