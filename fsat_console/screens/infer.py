"""Queue dialogs opened from a run: inference with TTA (``i``) and a baseline on its dataset (``b``).

Both are of the :class:`~fsat_console.screens.dialogs.SpecDialog` family: the
fields are laid over a preset (``tta`` for inference, ``baseline`` for the
baseline) and ``engine.intake.prepare`` checks the result as ``fsat queue``
does (the run to infer exists and has fold checkpoints; the data root is a
dataset). A ConfigError lands under the field it names while the dialog stays
open with everything as typed. Enter queues from any field (also from the split check
boxes; space toggles those), escape closes. The insert runs in a thread worker.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Checkbox, Input, Label, Static

from engine import intake, presets, specs
from engine.errors import ConfigError
from fsat_console.screens.dialogs import SpecDialog, preset_about, run_line, split_overrides, toml_value

#: The presets these dialogs start from.
TTA_PRESET = "tta"
BASELINE_PRESET = "baseline"
#: The baseline that needs no pretrained encoder: mean, std and max of each log-mel bin.
MELSTATS_PRESET = "baseline_melstats"


class SplitBox(Checkbox, inherit_bindings=False):
    """A check box toggled with space only, so that enter queues from it like from any field."""

    BINDINGS = [Binding("space", "toggle_button", "Toggle", show=False)]


class InferScreen(SpecDialog):
    """Queue inference of a trained run with test-time augmentation, over the ``tta`` preset."""

    KIND = "infer"
    FIELDS = ("tta-crops", "tta-crops-long", "long-seconds", "splits", "priority", "name", "queue")
    FIELD_SLOTS = {"infer.tta_crops": "tta-crops", "infer.tta_crops_long": "tta-crops-long",
                   "infer.long_seconds": "long-seconds", "splits": "splits"}

    def __init__(self, run: dict) -> None:
        """``run`` is the trained run's row (``Store.get_run``)."""
        super().__init__()
        self.run = run
        self.run_id = str(run["run_id"])
        self.preset = TTA_PRESET if TTA_PRESET in presets.list_presets() else None
        self.defaults = specs.InferSpec(run_id=self.run_id)
        self.preset_problem = ""
        try:
            self.defaults = presets.resolve_spec("infer", preset=self.preset,
                                               overrides=[f"run_id={toml_value(self.run_id)}"])
        except ConfigError as err:
            self.preset_problem = str(err)
        if self.preset is None:
            where = ", ".join(str(d) for d in presets.configs_dirs())
            self.preset_problem = (f"no preset named {TTA_PRESET!r} (looked in {where}); "
                                   "the built-in TTA defaults are used")

    def compose(self) -> ComposeResult:
        """Title, the run, the three TTA numbers, the splits, a job name."""
        inf = self.defaults.infer
        with Vertical(id="infer-dialog", classes="dialog"):
            yield Static(f"Infer run {self.run_id} with test-time augmentation", classes="dialog-title")
            yield Static(run_line(self.run), classes="dialog-subtitle")
            about = preset_about(presets.list_presets()[self.preset]) if self.preset else ""
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
            yield from self.priority_row(f"default: {self.run_id} tta<K>")
            yield Static("", id="name-error", classes="field-error")
            yield Static("", id="queue-error", classes="field-error")
            yield Static("[b]enter[/b] queue   [b]tab[/b] next field   [b]space[/b] toggle a split   "
                         "[b]esc[/b] close", classes="dialog-keys")

    def on_mount(self) -> None:
        """Show a preset problem, focus K."""
        self.query_one("#preset-error", Static).display = bool(self.preset_problem)
        self.query_one("#tta-crops", Input).focus()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        """Toggling a split clears the splits error."""
        self.set_error("splits", "")

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

    def request(self) -> dict:
        """The ``tta`` preset, this run, the splits and the three numbers."""
        overrides = [f"run_id={toml_value(self.run_id)}", f"splits={toml_value(self.splits)}"]
        for field, key in (("tta-crops", "infer.tta_crops"), ("tta-crops-long", "infer.tta_crops_long"),
                           ("long-seconds", "infer.long_seconds")):
            if self._value(field):
                overrides.append(f"{key}={self._value(field)}")
        return {"preset": self.preset, "overrides": overrides}


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

    KIND = "baseline"
    FIELDS = ("data-root", "c", "encoder", "overrides", "priority", "queue")
    FIELD_SLOTS = {"data.root": "data-root", "C": "c", "encoder_run_id": "encoder"}

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
        self._read_preset(BASELINE_PRESET)

    def _read_preset(self, name: str) -> None:
        """Take the preset ``name`` (``baseline`` or ``baseline_melstats``) and its defaults."""
        self.preset = name if name in presets.list_presets() else None
        self.defaults = specs.BaselineSpec()
        self.preset_problem = ""
        try:
            # The root only has to be non-empty here: this reads the preset's defaults.
            self.defaults = presets.resolve_spec("baseline", preset=self.preset,
                                               overrides=[f"data.root={toml_value(self.initial_root or '-')}"])
        except ConfigError as err:
            self.preset_problem = str(err)
        if self.preset is None:
            where = ", ".join(str(d) for d in presets.configs_dirs())
            self.preset_problem = (f"no preset named {name!r} (looked in {where}); "
                                   "the built-in baseline defaults are used")

    @property
    def needs_encoder(self) -> bool:
        """Whether the chosen baseline embeds clips with a pretrained encoder (mel statistics do not)."""
        return getattr(self.defaults, "variant", "") != "mel_stats"

    def _encoder_warning(self) -> None:
        """Warn at once when the chosen baseline needs an encoder and none is configured."""
        missing = panns_checkpoint_problem(str(getattr(self.defaults, "checkpoint", "") or ""),
                                           self._value("encoder") if self.is_mounted else self.initial_encoder)
        self.set_error("encoder", missing.replace(" Enter again queues anyway.", "")
                       if missing and self.needs_encoder else "")

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        """The mel-statistics box switches between the two baseline presets (C follows the preset)."""
        if event.checkbox.id != "melstats":
            return
        self._read_preset(MELSTATS_PRESET if event.value else BASELINE_PRESET)
        self.query_one("#c", Input).value = f"{self.defaults.C:g}"
        about = self.query_one("#preset-about", Static)
        about.update(Text(preset_about(presets.list_presets()[self.preset]) if self.preset else "", style="italic"))
        problem = self.query_one("#preset-error", Static)
        problem.update(Text(self.preset_problem))
        problem.display = bool(self.preset_problem)
        self.checkpoint_warned = False
        self._encoder_warning()

    def compose(self) -> ComposeResult:
        """Title, the dataset root, C, the fallback encoder run, overrides."""
        title = "Queue a baseline" + (f" on {self.dataset_name}" if self.dataset_name else "")
        with Vertical(id="baseline-dialog", classes="dialog"):
            yield Static(title, classes="dialog-title")
            about = preset_about(presets.list_presets()[self.preset]) if self.preset else ""
            yield Static(Text(about, style="italic"), id="preset-about")
            yield Static(Text(self.preset_problem), id="preset-error", classes="field-error")
            yield SplitBox(f"mel statistics: no pretrained encoder needed ({MELSTATS_PRESET})", False,
                           id="melstats")
            yield Label("Data root", classes="field-label")
            yield Input(self.initial_root, placeholder="folder with sample_submission.csv and train_curated.csv",
                        id="data-root")
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
            yield from self.priority_row("optional")
            yield Static("", id="queue-error", classes="field-error")
            yield Static("[b]enter[/b] queue   [b]tab[/b] next field   [b]esc[/b] close", classes="dialog-keys")

    def confirm(self, prepared: intake.PreparedJob) -> bool:
        """Without any encoder (no PANNs checkpoint, no encoder run), warn once before queueing."""
        spec = prepared.spec
        needs_encoder = getattr(spec, "variant", "") != "mel_stats"  # the spec as queued: overrides count
        missing = panns_checkpoint_problem(spec.checkpoint, spec.encoder_run_id) if needs_encoder else None
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
        self._encoder_warning()
        self.query_one("#data-root", Input).focus()

    def request(self) -> dict:
        """The ``baseline`` preset, the data root, C, the encoder run, overrides."""
        overrides = []
        if self._value("c"):
            overrides.append(f"C={self._value('c')}")
        if self._value("encoder"):
            overrides.append(f"encoder_run_id={toml_value(self._value('encoder'))}")
        overrides += split_overrides(self._value("overrides"))
        return {"preset": self.preset, "overrides": overrides, "data_root": self._value("data-root")}
