"""A yes/no question (cancel a job) answered with y / n, enter on the focused button, or escape."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ConfirmScreen(ModalScreen[bool]):
    """Dismisses with True for yes, False for no."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, *, yes: str = "Yes", no: str = "No", danger: bool = True) -> None:
        super().__init__()
        self.danger = danger
        self.question = question
        self.yes_label = yes
        self.no_label = no

    def compose(self) -> ComposeResult:
        """The question and two buttons."""
        with Vertical(classes="dialog small-dialog"):
            yield Static(Text(self.question), classes="dialog-body")  # plain: names may hold brackets
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.yes_label} [y]", variant="error" if self.danger else "primary", id="yes")
                yield Button(f"{self.no_label} [n]", id="no")

    def on_mount(self) -> None:
        """Focus "no": a stray enter keeps the job."""
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """A button press answers the question."""
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        """Answer from the keyboard."""
        self.dismiss(yes)
