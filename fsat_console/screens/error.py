"""A modal that explains a problem in plain words (never a traceback on screen)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class ErrorScreen(ModalScreen[None]):
    """Title, message, and how to close it."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close")]

    def __init__(self, title: str, message: str) -> None:
        super().__init__()
        self.title_text = title
        self.message = message

    def compose(self) -> ComposeResult:
        """Title, scrollable message, key hint."""
        with Vertical(classes="dialog error-dialog"):
            yield Static(self.title_text, classes="dialog-title")
            with VerticalScroll(classes="dialog-scroll"):
                yield Static(self.message, markup=False, classes="dialog-body")
            yield Static("[b]enter[/b]/[b]esc[/b] close", classes="dialog-keys")

    def on_mount(self) -> None:
        """Arrow keys scroll a long message."""
        self.query_one(VerticalScroll).focus()

    def action_close(self) -> None:
        """Close the modal."""
        self.dismiss(None)
