"""The queue dialog: a preset, a data root, ``key=value`` overrides and a priority.

Keyboard only: arrows pick the preset, tab moves between fields, enter queues
from anywhere, escape closes. Validation is the engine's own
(``engine.specs.resolve_spec``): a ConfigError lands under the field it names
and the dialog stays open with everything as typed. The insert runs in a
thread worker so a busy database never freezes the console.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from engine import specs
from engine.errors import ConfigError, FsatError, QueueFull


def split_overrides(text: str) -> list[str]:
    """Split ``a=1 b=[0, 1] name="my run"`` on spaces outside brackets and quotes."""
    tokens: list[str] = []
    current: list[str] = []
    depth = 0
    quote: str | None = None
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch.isspace() and depth == 0:
            if current:
                tokens.append("".join(current))
                current = []
            continue
        current.append(ch)
    if current:
        tokens.append("".join(current))
    return tokens


def train_presets() -> dict[str, Path]:
    """Presets for training jobs: those whose TOML says ``kind = "train"`` or names no kind.

    A preset that cannot be read stays in the list, so choosing it shows why.
    """
    out: dict[str, Path] = {}
    for name, path in specs.list_presets().items():
        try:
            kind = specs.read_toml(path).get("kind", "train")
        except FsatError:
            kind = "train"
        if kind == "train":
            out[name] = path
    return out


def preset_about(path: Path, limit: int = 240) -> str:
    """The preset's opening comment block (what it is for), joined into one line."""
    lines: list[str] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line.startswith("#"):
                    break
                lines.append(line.lstrip("#").strip())
    except OSError:
        return ""
    text = " ".join(x for x in lines if x)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _override_keys(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0].strip() for t in tokens if "=" in t]


def belongs_to(field: str, key: str) -> bool:
    """Whether the spec field ``field`` is ``key`` or inside it (``train.lr`` in ``train``, ``stages[1]`` in ``stages``)."""
    return field == key or field.startswith(key + ".") or field.startswith(key + "[")


def check_data_root(text: str) -> str | None:
    """Why ``text`` is not a usable dataset root, or None when it looks like one."""
    if not text.strip():
        return "the dataset root is required (a folder with train_curated.csv)"
    root = Path(text.strip()).expanduser()
    if not root.is_dir():
        return f"no such folder: {root}"
    if not (root / "train_curated.csv").is_file():
        return f"{root} has no train_curated.csv: not a dataset in the FSDKaggle2019 layout"
    return None


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


class QueueScreen(ModalScreen[int | None]):
    """Queue a training job; dismisses with the new job id, or None when closed."""

    BINDINGS = [
        Binding("escape", "close", "Close", tooltip="Close the dialog without queueing"),
        Binding("ctrl+s", "submit", "Queue", tooltip="Queue the job (enter does the same in any field)"),
    ]

    def __init__(self, *, preset: str | None = None, data_root: str = "", overrides: str = "",
                 priority: int = 0) -> None:
        super().__init__()
        self.presets = train_presets()
        self.initial_preset = preset
        self.initial_data_root = data_root
        self.initial_overrides = overrides
        self.initial_priority = priority
        self.queued_job: int | None = None
        self._submitting = False

    def compose(self) -> ComposeResult:
        """Dialog with one labelled field per setting and an error line under each."""
        with Vertical(id="queue-dialog", classes="dialog"):
            yield Static("Queue a training job", classes="dialog-title")
            yield Label("Preset", classes="field-label")
            yield OptionList(*[Option(name, id=name) for name in self.presets], id="preset")
            yield Static("", id="preset-about")
            yield Static("", id="preset-error", classes="field-error")
            yield Label("Data root", classes="field-label")
            yield Input(self.initial_data_root, placeholder="folder with train_curated.csv", id="data-root")
            yield Static("", id="data-root-error", classes="field-error")
            yield Label("Overrides", classes="field-label")
            yield Input(self.initial_overrides, placeholder="key=value …  e.g. train.epochs=3 train.folds=[0]",
                        id="overrides")
            yield Static("", id="overrides-error", classes="field-error")
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
            where = ", ".join(str(d) for d in specs.configs_dirs())
            self._set_error("preset", f"no presets found (looked in {where}); add a TOML file there")
        else:
            wanted = self.initial_preset if self.initial_preset in names else (
                "demo" if "demo" in names else names[0])
            if self.initial_preset and self.initial_preset not in names:
                self._set_error("preset", f"no preset named {self.initial_preset!r}; pick one from the list")
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

    def _value(self, field: str) -> str:
        # A field in a nested row may be mounted a moment after the dialog itself.
        found = self.query(f"#{field}")
        return found.first(Input).value if found else ""

    def _set_error(self, field: str, text: str) -> None:
        error = self.query_one(f"#{field}-error", Static)
        error.update(Text(text))  # plain text: messages may hold brackets such as [0]
        error.display = bool(text)
        # The field itself turns red as well.
        for widget in self.query(f"#{field}"):
            widget.set_class(bool(text), "-invalid")

    def _clear_errors(self) -> None:
        for field in ("preset", "data-root", "overrides", "priority", "queue"):
            self._set_error(field, "")

    def on_input_changed(self, event: Input.Changed) -> None:
        """Editing a field clears its error and refreshes the summary."""
        if event.input.id:
            self._set_error(event.input.id if event.input.id != "name" else "queue", "")
        self._update_summary()

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        """A new preset clears the preset error and shows what the preset is for."""
        self._set_error("preset", "")
        path = self.presets.get(self.preset or "")
        about = preset_about(path) if path else ""
        self.query_one("#preset-about", Static).update(Text(about, style="italic"))
        self._update_summary()

    def _update_summary(self) -> None:
        summary = self.query_one("#spec-summary", Static)
        try:
            text = spec_summary(self._resolve())
        except (FsatError, ValueError):
            summary.update(Text("spec: fix the fields above and press enter to see what is wrong", style="dim"))
            return
        summary.update(Text.assemble(("spec: ", "dim"), text))

    def _resolve(self) -> object:
        overrides = split_overrides(self._value("overrides"))
        name = self._value("name").strip()
        if name:
            overrides.append(f"name={_toml_string(name)}")
        return specs.resolve_spec("train", preset=self.preset, overrides=overrides,
                                  data_root=self._value("data-root").strip() or None)

    # -- submit -----------------------------------------------------------------------

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in any field queues."""
        event.stop()
        self.action_submit()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        """Enter on the preset list queues."""
        event.stop()
        self.action_submit()

    def action_close(self) -> None:
        """Close without queueing."""
        self.dismiss(None)

    def action_submit(self) -> None:
        """Validate every field; queue when all are good, else show each problem under its field."""
        if self._submitting or self.queued_job is not None:
            return
        self._clear_errors()
        ok = True
        if self.preset is None:
            self._set_error("preset", "choose a preset")
            ok = False
        data_problem = check_data_root(self._value("data-root"))
        if data_problem:
            self._set_error("data-root", data_problem)
            ok = False
        priority_text = self._value("priority").strip() or "0"
        try:
            priority = int(priority_text)
        except ValueError:
            self._set_error("priority", f"priority must be a whole number, got {priority_text!r}")
            ok = False
            priority = 0
        try:
            spec = self._resolve()
        except ConfigError as err:
            self._show_config_error(err)
            return
        if not ok:
            return
        name = spec.name or self.preset or ""
        if not spec.name and getattr(spec, "run_id", ""):
            # An infer job is listed under the run it infers, not only its preset.
            name = f"{name or 'tta'} {spec.run_id}"
        if not spec.name:
            spec.name = name
        self._submitting = True
        self._enqueue(spec.KIND, specs.to_dict(spec), name, priority)

    def _show_config_error(self, err: ConfigError) -> None:
        field = err.field or ""
        keys = _override_keys(split_overrides(self._value("overrides")))
        if field == "--set" or any(belongs_to(field, k) for k in keys):
            self._set_error("overrides", f"{field}: {err.reason}" if field and field != "--set" else err.reason)
            self.query_one("#overrides", Input).focus()
        elif belongs_to(field, "data.root") or field == "data":
            self._set_error("data-root", err.reason)
        elif field == "name":
            self._set_error("queue", f"job name: {err.reason}")
        else:
            # The preset file itself holds the bad value: say which file and setting.
            self._set_error("preset", str(err))

    @work(thread=True, exclusive=True, exit_on_error=False, group="queue")
    def _enqueue(self, kind: str, spec: dict, name: str, priority: int) -> None:
        """Insert the job (a short write transaction) off the UI thread."""
        job_id, problem = try_enqueue(self.app.store, kind, spec, name=name, priority=priority,  # type: ignore[attr-defined]
                                      on_wait=lambda: self.app.call_from_thread(self._set_error, "queue", WAITING))
        if job_id is None:
            self.app.call_from_thread(self._enqueue_failed, problem)
            return
        self.queued_job = job_id
        self.app.call_from_thread(self.dismiss, job_id)

    def _enqueue_failed(self, text: str) -> None:
        self._submitting = False
        self._set_error("queue", text)


#: Shown under a dialog while its job waits for another process's write to end.
WAITING = "Waiting for the database: another process is writing to it..."


def try_enqueue(store, kind: str, spec: dict, *, name: str, priority: int = 0,
                on_wait=None) -> tuple[int | None, str]:
    """Queue a job: ``(job_id, "")``, or ``(None, message)`` when the queue is full or the write fails.

    Call it from a thread worker: the write may wait for another process's
    lock; ``on_wait`` is called (in that thread) when it does.
    """
    try:
        return store.enqueue(kind, spec, name=name, priority=priority, on_wait=on_wait), ""
    except QueueFull as err:
        return None, f"Queue full: {err}"
    except (sqlite3.Error, FsatError) as err:
        return None, f"Could not queue: {err}"


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string, so overrides read it back verbatim."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
