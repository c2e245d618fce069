"""The dialog family: a modal that queues one job through ``engine.intake``, and what its dialogs share.

:class:`SpecDialog` is every queue dialog's base: the training queue dialog
(``QueueScreen``, ``n``), inference with TTA and the baseline from a run
(``InferScreen``, ``BaselineScreen``: ``i``, ``b``) and the curriculum
(``CurriculumDialog``, ``u``). A dialog lays its fields over a preset; the
checks are ``engine.intake.prepare``'s, the same as ``fsat queue``'s, so a
mistake is refused with the same words in both. A ConfigError lands under the
field it names, the field takes the focus, and the dialog stays open with
everything as typed. Enter queues from any field, escape closes. The insert
(``engine.intake.submit``) runs in a thread worker and says so while it waits
for another process's write, so a busy database never freezes the console.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Input, Label, Static

from engine import intake
from engine.intake import preset_about, split_overrides  # noqa: F401 (the dialogs' names for them)
from engine.errors import ConfigError, FsatError, QueueFull
from fsat_console.access import console
from fsat_console.formatting import fmt_score

#: Shown under a dialog while its job waits for another process's write to end.
WAITING = "Waiting for the database: another process is writing to it..."
#: The placeholder of a data root field.
DATA_ROOT_HINT = "folder with sample_submission.csv and train_curated.csv"


def override_keys(tokens: list[str]) -> list[str]:
    """The dotted keys of ``key=value`` tokens."""
    return [t.split("=", 1)[0].strip() for t in tokens if "=" in t]


def toml_value(value: object) -> str:
    """A value as TOML for an override (JSON strings, numbers, booleans and lists are valid TOML)."""
    return json.dumps(value)


def belongs_to(field: str, key: str) -> bool:
    """Whether the spec field ``field`` is ``key`` or inside it (``train.lr`` in ``train``, ``stages[1]`` in ``stages``)."""
    return field == key or field.startswith(key + ".") or field.startswith(key + "[")


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


def labelled(label: str, field: Widget, *more: Widget) -> list[Widget]:
    """A dialog's field: its label, the widget (its id names the error slot), ``more``, then its error line."""
    return [Label(label, classes="field-label"), field, *more, Static("", id=f"{field.id}-error", classes="field-error")]


def try_submit(store, prepared: intake.PreparedJob, *, name: str = "", priority: int = 0,
               on_wait=None) -> tuple[int | None, str]:
    """Queue a prepared job: ``(job_id, "")``, or ``(None, message)`` when the queue is full or the write fails.

    Call it from a thread worker: the write may wait for another process's
    lock; ``on_wait`` is called (in that thread) when it does.
    """
    try:
        return intake.submit(store, prepared, name=name, priority=priority, on_wait=on_wait), ""
    except QueueFull as err:
        return None, f"Queue full: {err}"
    except (sqlite3.Error, FsatError) as err:
        return None, f"Could not queue: {err}"


def try_enqueue(store, kind: str, spec: Any, *, name: str = "", priority: int = 0,
                on_wait=None) -> tuple[int | None, str]:
    """Check and queue a spec built elsewhere (the ensemble screen's blend), as :func:`try_submit` answers."""
    try:
        prepared = intake.prepare(store, kind, spec=spec)
    except (sqlite3.Error, FsatError) as err:
        return None, f"Not queued: {err}"
    return try_submit(store, prepared, name=name, priority=priority, on_wait=on_wait)


class SpecDialog(ModalScreen[int | None]):
    """A dialog that queues one job of kind :attr:`KIND`; dismisses with the new job id, or None when closed.

    A dialog lists its error slots in :attr:`FIELDS` (each ``#<slot>-error``,
    under the field ``#<slot>``), says what to queue in :meth:`request` (what
    ``engine.intake.prepare`` takes: preset, overrides, data root) and where
    a ConfigError's field goes in :attr:`FIELD_SLOTS`. A field the user typed
    under "overrides" sends its errors there.
    """

    BINDINGS = [
        Binding("escape", "close", "Close", tooltip="Close the dialog without queueing"),
        # Not priority bindings: those would run before keys still queued in the focused field.
        Binding("ctrl+s,enter", "submit", "Queue", tooltip="Queue the job (errors appear under the field at fault)"),
    ]

    #: The job kind (``engine.intake.KINDS``).
    KIND: ClassVar[str] = ""
    #: Error slots, in the order they appear.
    FIELDS: ClassVar[tuple[str, ...]] = ()
    #: ConfigError field (or the section it is in) -> error slot.
    FIELD_SLOTS: ClassVar[dict[str, str]] = {}
    #: The slot of an error naming no field of the dialog (its text says which file and setting).
    FALLBACK: ClassVar[str] = "queue"

    def __init__(self) -> None:
        super().__init__()
        self.queued_job: int | None = None
        self.priority = 0
        self._submitting = False

    def priority_row(self, name_placeholder: str, name_label: str = "Job name") -> ComposeResult:
        """The priority (higher runs first) beside the job name, with the priority's error line under them."""
        with Horizontal(classes="field-row"):
            with Vertical(classes="field-box narrow"):
                yield Label("Priority (higher first)", classes="field-label")
                yield Input("0", type="integer", id="priority")
            with Vertical(classes="field-box"):
                yield Label(name_label, classes="field-label")
                yield Input("", placeholder=name_placeholder, id="name")
        yield Static("", id="priority-error", classes="field-error")

    def check_priority(self) -> bool:
        """Read the priority field, when the dialog has one: a whole number (empty = 0)."""
        if "priority" not in self.FIELDS:
            return True
        text = self._value("priority") or "0"
        try:
            self.priority = int(text)
        except ValueError:
            self.set_error("priority", f"priority must be a whole number, got {text!r}")
            return False
        return True

    def _value(self, field: str) -> str:
        # A field in a nested row may be mounted a moment after the dialog itself.
        found = self.query(f"#{field}")
        return found.first(Input).value.strip() if found else ""

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

    def action_close(self) -> None:
        """Close without queueing."""
        self.dismiss(None)

    # -- to be provided by a dialog -----------------------------------------------------

    def check_fields(self) -> bool:
        """Checks of the fields themselves before anything is built (True when all pass)."""
        return True

    def request(self) -> dict:
        """What to queue: ``engine.intake.prepare``'s ``preset``, ``overrides``, ``data_root`` (may raise ConfigError)."""
        raise NotImplementedError

    def prepare(self) -> Any:
        """Every queue-time check of what to queue (``engine.intake.prepare``); raises ConfigError."""
        return intake.prepare(console(self).store, self.KIND, **self.request())

    def confirm(self, prepared: intake.PreparedJob) -> bool:
        """A last look at the checked job before it is queued (False: not now, a warning is shown)."""
        return True

    def job_name(self) -> str:
        """The name typed for the job (empty: the kind's default name)."""
        return self._value("name")

    # -- errors -----------------------------------------------------------------------

    def field_for(self, err: ConfigError) -> str:
        """The error slot of a ConfigError: the overrides that set it, a field of the dialog, else the fallback."""
        field = err.field or ""
        if "overrides" in self.FIELDS and (field == "--set" or self._override_key(field) is not None):
            return "overrides"
        for key, slot in self.FIELD_SLOTS.items():
            if belongs_to(field, key):
                return slot
        return self.FALLBACK

    def _override_key(self, field: str) -> str | None:
        """The key typed under "overrides" that set ``field``, or lies inside it (an unknown section), else None."""
        for key in reversed(override_keys(split_overrides(self._value("overrides")))):
            if belongs_to(field, key) or belongs_to(key, field):
                return key
        return None

    def show_config_error(self, err: ConfigError) -> None:
        """Put a ConfigError under its field and focus that field."""
        slot = self.field_for(err)
        if slot == self.FALLBACK:
            text = str(err)  # e.g. the preset file itself: name the file and the setting
        elif slot == "overrides" and err.field and err.field != "--set":
            # Name the key as typed: an unknown section (``trian`` of ``trian.epochs``) is only part of it.
            key = self._override_key(err.field)
            text = f"{key if key and not belongs_to(err.field, key) else err.field}: {err.reason}"
        else:
            text = err.reason
        self.set_error(slot, text)
        for widget in self.query(f"#{slot}"):
            if widget.focusable:
                widget.focus()

    # -- submit -----------------------------------------------------------------------

    def action_submit(self) -> None:
        """Check everything (``engine.intake.prepare``); queue when all is well, else show the problem."""
        if self._submitting or self.queued_job is not None:
            return
        self.clear_errors()
        fields_ok = self.check_fields()
        if not (self.check_priority() and fields_ok):
            return
        try:
            prepared = self.prepare()
        except ConfigError as err:
            self.show_config_error(err)
            return
        except (FsatError, sqlite3.Error) as err:
            self.set_error("queue", f"Could not queue: {err}")
            return
        if not self.confirm(prepared):
            return
        self._submitting = True
        self._submit(prepared, self.job_name(), self.priority)

    @work(thread=True, exclusive=True, exit_on_error=False, group="queue")
    def _submit(self, prepared: intake.PreparedJob, name: str, priority: int) -> None:
        """Insert the job (a short write transaction) off the UI thread."""
        app = self.app
        job_id, problem = try_submit(console(self).store, prepared, name=name, priority=priority,
                                     on_wait=lambda: app.call_from_thread(self.set_error, "queue", WAITING))
        if job_id is None:
            app.call_from_thread(self._submit_failed, problem)
            return
        self.queued_job = job_id
        app.call_from_thread(self.dismiss, job_id)

    def _submit_failed(self, text: str) -> None:
        self._submitting = False
        self.set_error("queue", text)
