"""The training queue dialog: a preset, a data root, ``key=value`` overrides, a priority and a name.

Keyboard only: arrows pick the preset, tab moves between fields, enter queues
from anywhere, escape closes. It is a :class:`~fsat_console.screens.dialogs.SpecDialog`:
``engine.intake.prepare`` checks it as ``fsat queue train`` is checked, and a
ConfigError lands under the field it names while the dialog stays open with
everything as typed. A line under the fields sums up the spec as it is typed.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from engine import presets, specs
from engine.errors import FsatError
from fsat_console.screens.dialogs import DATA_ROOT_HINT, SpecDialog, labelled, preset_about, split_overrides


def train_presets() -> dict[str, Path]:
    """Presets for training jobs: those whose TOML says ``kind = "train"`` or names no kind.

    A preset that cannot be read stays in the list, so choosing it shows why.
    """
    out: dict[str, Path] = {}
    for name, path in presets.list_presets().items():
        try:
            kind = presets.read_toml(path).get("kind", "train")
        except FsatError:
            kind = "train"
        if kind == "train":
            out[name] = path
    return out


def spec_summary(spec: object) -> str:
    """One line with the settings people check before queueing (missing settings are left out)."""
    d = specs.to_dict(spec)
    model, train, loss, optim = (d.get(k) or {} for k in ("model", "train", "loss", "optim"))
    parts = []
    if model.get("arch"):
        parts.append(str(model["arch"]))
    if train:
        folds = train.get("folds") or list(range(int(train.get("n_folds") or 5)))
        parts.append(f"{train.get('epochs', '?')} epochs × folds {','.join(str(k) for k in folds)}")
        if "batch_size" in train:
            parts.append(f"batch {train['batch_size']}")
    if loss.get("name"):
        parts.append(f"{loss['name']} loss")
    if optim.get("head_lr") is not None:
        parts.append(f"head lr {optim['head_lr']:g}")
    return " · ".join(parts) or "default settings"


class QueueScreen(SpecDialog):
    """Queue a training job; dismisses with the new job id, or None when closed."""

    KIND = "train"
    FIELDS = ("preset", "data-root", "overrides", "priority", "queue")
    FIELD_SLOTS = {"data.root": "data-root"}
    #: An error the fields cannot show is the preset file's: under the preset, naming file and setting.
    FALLBACK = "preset"

    def __init__(self, *, preset: str | None = None, data_root: str = "", overrides: str = "",
                 priority: int = 0) -> None:
        super().__init__()
        self.presets = train_presets()
        self.initial_preset = preset
        self.initial_data_root = data_root
        self.initial_overrides = overrides
        self.initial_priority = priority

    def compose(self) -> ComposeResult:
        """Dialog with one labelled field per setting and an error line under each."""
        with Vertical(id="queue-dialog", classes="dialog"):
            yield Static("Queue a training job", classes="dialog-title")
            yield Label("Preset", classes="field-label")
            yield OptionList(*[Option(name, id=name) for name in self.presets], id="preset")
            yield Static("", id="preset-about")
            yield Static("", id="preset-error", classes="field-error")
            yield from labelled("Data root", Input(self.initial_data_root, placeholder=DATA_ROOT_HINT, id="data-root"))
            yield from labelled("Overrides", Input(self.initial_overrides, id="overrides",
                                                   placeholder="key=value …  e.g. train.epochs=3 train.folds=[0]"))
            with Horizontal(id="queue-row"):
                with Vertical(id="priority-box"):
                    yield Label("Priority", classes="field-label")
                    yield Input(str(self.initial_priority), type="integer", id="priority")
                with Vertical(id="name-box"):
                    yield Label("Job name", classes="field-label")
                    yield Input("", placeholder="default: the preset name", id="name")
            yield Static("", id="priority-error", classes="field-error")
            yield Static("", id="spec-summary")
            yield Static("", id="queue-error", classes="field-error")
            yield Static("[b]enter[/b] queue   [b]tab[/b] next field   [b]↑↓[/b] preset   [b]esc[/b] close",
                         classes="dialog-keys")

    def on_mount(self) -> None:
        """Highlight the requested (or the demo, or the first) preset and focus the list."""
        option_list = self.query_one("#preset", OptionList)
        names = list(self.presets)
        if not names:
            where = ", ".join(str(d) for d in presets.configs_dirs())
            self.set_error("preset", f"no presets found (looked in {where}); add a TOML file there")
        else:
            wanted = self.initial_preset if self.initial_preset in names else (
                "demo" if "demo" in names else names[0])
            if self.initial_preset and self.initial_preset not in names:
                self.set_error("preset", f"no preset named {self.initial_preset!r}; pick one from the list")
            # Highlight now and again after the first layout: before it, a long
            # list may clamp the index or reset it on focus.
            option_list.highlighted = names.index(wanted)
            self.call_after_refresh(self._highlight, names.index(wanted))
        option_list.focus()
        self._update_summary()

    def _highlight(self, index: int) -> None:
        self.query_one("#preset", OptionList).highlighted = index
        self._update_summary()

    # -- fields ---------------------------------------------------------------------

    @property
    def preset(self) -> str | None:
        """The highlighted preset name."""
        option = self.query_one("#preset", OptionList).highlighted_option
        return option.id if option is not None else None

    def on_input_changed(self, event: Input.Changed) -> None:
        """Editing a field clears its error (the name's is the queue line) and refreshes the summary."""
        if event.input.id:
            self.set_error(event.input.id if event.input.id != "name" else "queue", "")
        self._update_summary()

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        """A new preset clears the preset error and shows what the preset is for."""
        self.set_error("preset", "")
        path = self.presets.get(self.preset or "")
        about = preset_about(path) if path else ""
        self.query_one("#preset-about", Static).update(Text(about, style="italic"))
        self._update_summary()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        """Enter on the preset list queues."""
        event.stop()
        self.action_submit()

    def _update_summary(self) -> None:
        summary = self.query_one("#spec-summary", Static)
        try:
            text = spec_summary(presets.resolve_spec(self.KIND, **self.request()))
        except (FsatError, ValueError):
            summary.update(Text("spec: fix the fields above and press enter to see what is wrong", style="dim"))
            return
        summary.update(Text.assemble(("spec: ", "dim"), text))

    # -- what to queue ----------------------------------------------------------------

    def check_fields(self) -> bool:
        """A preset is chosen (the priority is read by ``SpecDialog.check_priority``)."""
        if self.preset is None:
            self.set_error("preset", "choose a preset")
            return False
        return True

    def request(self) -> dict:
        """The highlighted preset, the overrides as typed, the data root."""
        return {"preset": self.preset, "overrides": split_overrides(self._value("overrides")),
                "data_root": self._value("data-root")}
