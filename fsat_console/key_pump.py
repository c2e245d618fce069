"""Keys from the terminal, handed on one at a time.

Keys typed quickly (``n``, tab, tab, ``train.epochs=2``…) used to be
forwarded all at once to the widget focused when they arrived: the tabs and
characters meant for the queue dialog went to the runs table below it (``a``
archives there, ``t`` edits tags), or were lost when the dialog then focused
its preset list. The app gives every key from the terminal to a
:class:`KeyPump`, which hands it on only after the previous one has passed
through every node it bubbles to and, when it opened a screen, after that
screen is mounted and has set its focus.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Callable

from textual import events
from textual.app import App

#: The longest wait for one node to work through its queue, or for a new screen to draw.
SETTLE_TIMEOUT = 1.0


async def _after(schedule: Callable[[Callable[[], None]], object]) -> None:
    """Wait until ``schedule`` (``call_later``, ``call_after_refresh``) has run the callback it is given.

    At most ``SETTLE_TIMEOUT``: a key is never held up for good.
    """
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def set_done() -> None:
        if not done.done():
            done.set_result(None)

    schedule(set_done)
    try:
        await asyncio.wait_for(done, timeout=SETTLE_TIMEOUT)
    except asyncio.TimeoutError:
        pass


class KeyPump:
    """Holds the app's keys from the terminal and hands them on one at a time."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._queue: list[events.Key] = []
        self._busy = False
        #: Keys this pump handed on: the app lets them through.
        self._handed_on: weakref.WeakSet[events.Key] = weakref.WeakSet()

    def hold(self, event: events.Event) -> bool:
        """Take a key that came from the terminal (True: the app must not handle it now).

        Every other event, and the keys this pump hands on, are the app's to handle.
        """
        if not isinstance(event, events.Key) or event.is_forwarded or event in self._handed_on:
            return False
        self._queue.append(event)
        event.stop()
        event.prevent_default()
        if not self._busy:
            self._busy = True
            self.app.run_worker(self._pump(), group="keys", exit_on_error=False)
        return True

    async def _pump(self) -> None:
        app = self.app
        try:
            while self._queue:
                held = self._queue.pop(0)
                before = app.screen if app.screen_stack else None
                key = events.Key(held.key, held.character)
                self._handed_on.add(key)
                app.post_message(key)
                await _after(app.call_later)  # forwarded to the focused widget
                target = app.focused or (app.screen if app.screen_stack else None)
                for node in (list(target.ancestors_with_self) if target is not None else []):
                    await _after(node.call_later)  # handled there, and wherever it bubbled
                if app.screen_stack and app.screen is not before:
                    screen = app.screen
                    for _ in range(200):  # a new screen: wait until it is mounted and focused
                        if screen.is_mounted:
                            break
                        await asyncio.sleep(0.01)
                    await _after(screen.call_after_refresh)
        finally:
            self._busy = False
