"""Plans in the console: a dialog that queues a plan preset, and a plan's steps as a live tree.

The dialog is a :class:`~fsat_console.screens.dialogs.SpecDialog` whose
check is ``engine.plan``'s: every step through ``engine.intake.prepare``
before anything is queued, a mistake shown with the plan, the step and the
field, then all steps queued in one transaction. The tree
(:class:`PlanScreen`) puts each step under the first step whose run it uses,
with its state (``waiting`` and ``held`` derived from its parents, see
``engine.store.plans``), its progress and its message, read again every
second; ``c`` cancels what has not started.
"""

from __future__ import annotations

import sqlite3

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Input, OptionList, Static, Tree
from textual.widgets.option_list import Option

from engine.errors import ConfigError, FsatError
from engine.plan import load_plan, plan_presets, prepare_plan, queue_plan
from fsat_console.access import console
from fsat_console.formatting import STATUS_STYLES, bar
from fsat_console.screens.dialogs import DATA_ROOT_HINT, SpecDialog, labelled, preset_about, split_overrides
from fsat_console.widgets.footer import KeyFooter

#: Styles of the derived states (the stored ones use :data:`STATUS_STYLES`).
STATE_STYLES = {**STATUS_STYLES, "waiting": "cyan dim", "held": "bold dark_orange"}


class PlanDialog(SpecDialog):
    """Queue a plan preset; dismisses with the plan's id, or None when closed."""

    FIELDS = ("plan", "data-root", "overrides", "priority", "queue")
    FIELD_SLOTS = {"data.root": "data-root", "data_root": "data-root"}
    FALLBACK = "plan"

    def __init__(self, *, data_root: str = "") -> None:
        super().__init__()
        self.presets = plan_presets()
        self.initial_data_root = data_root

    def compose(self) -> ComposeResult:
        """The plan presets, the data root, the overrides, the priority and name, with an error line under each."""
        with Vertical(id="plan-dialog", classes="dialog"):
            yield Static("Queue a plan", classes="dialog-title")
            yield from labelled("Plan", OptionList(*[Option(name, id=name) for name in self.presets], id="plan"),
                                Static("", id="plan-about"))
            yield from labelled("Data root", Input(self.initial_data_root, placeholder=DATA_ROOT_HINT, id="data-root"))
            yield from labelled("Overrides", Input("", id="overrides", placeholder="STEP:key=value or KIND:key=value …  "
                                                   "e.g. train:train.epochs=3"))
            yield from self.priority_row("default: the preset's name", name_label="Plan name")
            yield Static("", id="queue-error", classes="field-error")
            yield Static("[b]enter[/b] queue   [b]tab[/b] next field   [b]↑↓[/b] plan   [b]esc[/b] close",
                         classes="dialog-keys")

    def on_mount(self) -> None:
        """Highlight the demo plan (or the first) and focus the list."""
        names = list(self.presets)
        options = self.query_one("#plan", OptionList)
        if not names:
            self.set_error("plan", "no plan presets found (a configs/*.toml with kind = \"plan\")")
        else:
            index = names.index("plan_demo") if "plan_demo" in names else 0
            options.highlighted = index
            self.call_after_refresh(setattr, options, "highlighted", index)
        options.focus()

    @property
    def preset(self) -> str | None:
        """The highlighted plan preset."""
        option = self.query_one("#plan", OptionList).highlighted_option
        return option.id if option is not None else None

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        """Show what the highlighted plan is for."""
        self.set_error("plan", "")
        path = self.presets.get(self.preset or "")
        self.query_one("#plan-about", Static).update(Text(preset_about(path) if path else "", style="italic"))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        """Enter on the list queues."""
        event.stop()
        self.action_submit()

    def request(self) -> dict:
        """``engine.plan.queue_plan``'s data root and overrides."""
        return {"data_root": self._value("data-root") or None, "overrides": split_overrides(self._value("overrides"))}

    def field_for(self, err: ConfigError) -> str:
        """An override's error goes under the overrides, the data root's under it, the rest under the plan."""
        if err.field == "--set" or "--set" in (err.file or ""):
            return "overrides"
        return super().field_for(err)

    def show_config_error(self, err: ConfigError) -> None:
        """The whole message: it names the plan's step as well as the field."""
        super().show_config_error(err)
        self.set_error(self.field_for(err), str(err))

    def prepare(self) -> dict:
        """Every step of the plan through ``engine.intake.prepare`` (ConfigError names the step); what to queue."""
        store = console(self).store
        if self.preset is None:
            raise ConfigError("choose a plan", field="plan")
        prepare_plan(store, load_plan(self.preset), first_id=store.next_job_id(), **self.request())
        return {"preset": self.preset, **self.request()}

    @work(thread=True, exclusive=True, exit_on_error=False, group="queue")
    def _submit(self, prepared: dict, name: str, priority: int) -> None:
        """Queue the plan (one write transaction) off the UI thread; dismiss with its id."""
        app = self.app
        try:
            plan_id = queue_plan(console(self).store, **prepared, name=name or None, priority=priority)
        except (FsatError, sqlite3.Error) as err:
            app.call_from_thread(self._submit_failed, f"Could not queue: {err}")
            return
        self.queued_job = plan_id
        app.call_from_thread(self.dismiss, plan_id)


def step_label(step: dict) -> Text:
    """One step of the tree: name, kind, state, progress, and the reason it waits or its message."""
    state = step["state"]
    text = Text.assemble((step["step"], "bold"), (f"  {step['kind']} · job {step['job_id']}  ", "dim"),
                         (state, STATE_STYLES.get(state, "")))
    if state == "running":
        text.append(f"  {bar(step['progress'])} {step['progress']:.0%}")
    detail = step["reason"] or step["error"] or step["message"]
    if detail:
        text.append(f"  {detail.splitlines()[0][:120]}", style="dim" if not step["error"] else "red")
    if step.get("run_id"):
        text.append(f"  → {step['run_id']}", style="dim")
    extra = step["parents"][1:]
    if extra:
        text.append(f"  (also after {', '.join(extra)})", style="dim")
    return text


class PlanScreen(Screen):
    """A plan's steps as a tree, live; ``c`` cancels the steps that have not started."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("c", "cancel_plan", "Cancel plan", tooltip="Cancel the plan's steps that have not started "
                                                          "(running ones are asked to stop)"),
    ]

    def __init__(self, plan_id: int) -> None:
        super().__init__()
        self.plan_id = plan_id
        self._shown: list[tuple] = []

    def compose(self) -> ComposeResult:
        """Title line and the tree."""
        yield Static("", id="plan-title")
        yield Tree("plan", id="plan-tree")
        yield KeyFooter()

    def on_mount(self) -> None:
        """Fill the tree and read the plan again every second."""
        self.refresh_plan()
        self.set_interval(1.0, self.refresh_plan)

    def refresh_plan(self) -> None:
        """Rebuild the tree when a step's state, progress or message changed."""
        store = console(self).store
        try:
            plan = store.get_plan(self.plan_id)
            steps = store.plan_steps(self.plan_id)
        except (FsatError, sqlite3.Error) as err:
            self.query_one("#plan-title", Static).update(Text(f"plan {self.plan_id}: {err}", style="red"))
            return
        shown = [(s["state"], round(s["progress"], 3), s["reason"], s["message"], s["run_id"]) for s in steps]
        if shown == self._shown:
            return
        self._shown = shown
        done = sum(s["status"] == "done" for s in steps)
        self.query_one("#plan-title", Static).update(Text.assemble(
            (f"plan {plan['id']} ", "bold"), plan["name"], (f"  ({plan['preset']})  ", "dim"),
            f"{done}/{len(steps)} steps done"))
        tree = self.query_one("#plan-tree", Tree)
        tree.root.set_label(Text(plan["name"], style="bold"))
        tree.clear()
        nodes = {}
        for step in steps:
            parent = nodes.get(step["parents"][0]) if step["parents"] else None
            node = (parent or tree.root).add(step_label(step), data=step["job_id"], expand=True)
            nodes[step["step"]] = node
        tree.root.expand()

    def action_cancel_plan(self) -> None:
        """Cancel what has not started; running steps are asked to stop."""
        result = console(self).store.cancel_plan(self.plan_id)
        self.notify(f"plan {self.plan_id}: {result['cancelled']} step(s) cancelled, "
                    f"{result['stopping']} running step(s) stopping", title="Plan")
        self.refresh_plan()
