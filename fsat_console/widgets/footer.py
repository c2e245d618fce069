"""The footer of every screen: Textual's, recomposed only when the keys it shows change.

Textual's ``Footer`` rebuilds all its key widgets whenever the screen publishes
a bindings update: on every focus change and every ``refresh_bindings``.
Each rebuild mounts and styles one widget per key (two CSS passes each with
``compact``), tens of milliseconds per rebuild; it was a large share of
opening a run and of the first paint. ``KeyFooter`` keeps what it composed and
skips a rebuild that would produce the same keys.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer


class KeyFooter(Footer):
    """A ``Footer`` that skips rebuilds which would show the same keys."""

    _composed: tuple | None = None

    def _keys(self) -> tuple:
        """What the footer shows: each shown binding's key, label, action, whether it acts, tooltip."""
        return tuple((b.key, b.key_display, b.description, b.action, enabled, tooltip)
                     for (_, b, enabled, tooltip) in self.screen.active_bindings.values() if b.show)

    def compose(self) -> ComposeResult:
        """Textual's keys, remembering which they were."""
        self._composed = self._keys() if self._bindings_ready else None
        yield from super().compose()

    def bindings_changed(self, screen: Screen) -> None:
        """Rebuild only when the keys to show differ from the ones shown."""
        if (self._composed is not None and self.is_attached and screen is self.screen
                and self._keys() == self._composed):
            return
        super().bindings_changed(screen)
