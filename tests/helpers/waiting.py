"""Waiting on conditions: tests poll for what they expect, with generous bounds, never a fixed sleep."""

from __future__ import annotations

import time


#: How long a wait for a condition lasts unless a test says otherwise. Generous on purpose: a condition that
#: holds ends the wait at once, and the suite must pass with two busy processes per core beside it.
WAIT_SECONDS = 60.0


def wait_for(predicate, timeout: float = WAIT_SECONDS, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def wait_until(pilot, predicate, timeout: float = WAIT_SECONDS, what: str = "condition") -> None:
    """Let the app under Pilot run until ``predicate()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
