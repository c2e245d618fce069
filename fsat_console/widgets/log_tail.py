"""The last lines of a log file, following what another process appends (watchdog)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

from textual.message import Message
from textual.widgets import Log
from watchdog.events import (FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEvent,
                             FileSystemEventHandler)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

#: Lines kept on screen.
TAIL_LINES = 200
#: Most bytes read at once: when more than this arrives between two reads, only its end is shown.
TAIL_BYTES = 256 * 1024


class _LogFileEvents(FileSystemEventHandler):
    """Runs on the observer's thread: tells the widget that its file changed."""

    def __init__(self, name: str, changed: Callable[[], None]) -> None:
        super().__init__()
        self.name = name
        self.changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = (event.src_path, getattr(event, "dest_path", "") or "")
        if any(os.path.basename(os.fsdecode(p)) == self.name for p in paths):
            self.changed()


class LogTail(Log):
    """Shows the last ``TAIL_LINES`` lines of a file and appends what is written to it.

    A watchdog observer watches the file's directory (so a file that does not
    exist yet is picked up when it is created) and posts ``LogTail.Changed``
    to the widget; the widget then reads only the bytes past its offset. A
    file that shrinks or is replaced is read again from its start. The
    observer is stopped and joined when the widget is unmounted.
    """

    class Changed(Message, bubble=False):
        """The followed file was created, written or moved into place."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(max_lines=TAIL_LINES, id=id, classes=classes)
        self.path: Path | None = None
        self.observer: BaseObserver | None = None
        self._offset = 0
        self._identity: tuple[int, int] | None = None
        self._partial = b""
        self._placeholder = False
        # Set while a Changed message is on its way, so a fast writer does not flood the queue.
        self._change_queued = threading.Event()

    # -- what is shown --------------------------------------------------------------------------

    def show_placeholder(self, text: str) -> None:
        """Show ``text`` instead of the file's lines until the file has content."""
        self.clear()
        self.write_line(text)
        self._placeholder = True

    @property
    def following(self) -> bool:
        """True while an observer watches the file's directory."""
        return self.observer is not None and self.observer.is_alive()

    # -- following --------------------------------------------------------------------------------

    def follow(self, path: Path | str, *, missing: str = "no log yet") -> None:
        """Show ``path`` and follow it; ``missing`` is shown while it does not exist.

        When the file's directory does not exist either, nothing can be
        watched: ``follow`` may be called again later.
        """
        self.stop()
        self.path = Path(path)
        self._offset, self._identity, self._partial = 0, None, b""
        self.border_subtitle = str(self.path)
        self.show_placeholder(missing)
        if not self.path.parent.is_dir():
            self.show_placeholder(f"{missing} ({self.path.parent} does not exist)")
            return
        observer = Observer()
        observer.daemon = True
        # The observer starts before the first read, so nothing written in between is missed.
        try:
            observer.schedule(_LogFileEvents(self.path.name, self._file_changed), str(self.path.parent),
                              recursive=False, event_filter=[FileCreatedEvent, FileModifiedEvent, FileMovedEvent])
            observer.start()
        except OSError as err:
            self.show_placeholder(f"{missing} ({self.path.parent}: {err.strerror or err})")
            return
        self.observer = observer
        self.read_new()

    def stop(self) -> None:
        """Stop and join the observer (no-op when there is none)."""
        observer, self.observer = self.observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)

    def on_unmount(self) -> None:
        """No observer thread outlives the widget."""
        self.stop()

    def _file_changed(self) -> None:
        # The observer's thread. post_message is thread-safe and does not wait
        # for the UI (call_from_thread would, and could deadlock with stop()).
        if self._change_queued.is_set():
            return
        self._change_queued.set()
        try:
            posted = self.post_message(self.Changed())
        except Exception:  # the widget is being removed; stop() follows
            posted = False
        if not posted:
            self._change_queued.clear()

    def on_log_tail_changed(self, message: Changed) -> None:
        """Read what was appended."""
        message.stop()
        self._change_queued.clear()
        self.read_new()

    def read_new(self) -> int:
        """Append the file's new complete lines; returns how many were added.

        Reads from the saved offset to the end; when more than ``TAIL_BYTES``
        arrived, only the file's last ``TAIL_BYTES`` are shown. A line without
        its newline yet waits for the next read.
        """
        if self.path is None:
            return 0
        try:
            with open(self.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                identity = (st.st_dev, st.st_ino)
                if identity != self._identity or st.st_size < self._offset:
                    # A new file, or this one truncated: start again from its beginning.
                    self._identity, self._offset, self._partial = identity, 0, b""
                    if not self._placeholder:
                        self.clear()
                if st.st_size == self._offset:
                    return 0
                start, skipped = self._offset, False
                if st.st_size - start > TAIL_BYTES:
                    start, skipped = st.st_size - TAIL_BYTES, True
                    self._partial = b""
                    if not self._placeholder:
                        self.clear()  # what is shown stays one unbroken stretch of the file
                fh.seek(start)
                data = fh.read(st.st_size - start)
        except FileNotFoundError:
            return 0
        except OSError as err:
            self.show_placeholder(f"cannot read {self.path}: {err.strerror or err}")
            return 0
        self._offset = start + len(data)
        if skipped:
            # Start at a line boundary: drop the line the cut went through.
            data = data.split(b"\n", 1)[1] if b"\n" in data else b""
        *complete, self._partial = (self._partial + data).split(b"\n")
        lines = [_display(raw) for raw in complete][-TAIL_LINES:]
        if not lines:
            return 0
        if self._placeholder:
            self.clear()
            self._placeholder = False
        self.write_lines(lines)
        # Log repaints only the rows of the new lines; once old lines are dropped
        # (max_lines) every visible row moves up, so repaint the whole view.
        self.refresh()
        return len(lines)


def _display(raw: bytes) -> str:
    """One log line as a terminal would show it: a carriage return (progress bars) overwrites."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    return text.rsplit("\r", 1)[-1]
