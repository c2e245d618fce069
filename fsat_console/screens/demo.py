"""Writing the built-in demo dataset, with a progress bar and an ETA.

The generator (``engine.data.demo``, numpy + soundfile) is imported only
here and only when needed, and runs in a thread worker; the progress callback
hops back to the UI thread with ``call_from_thread``.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import ProgressBar, Static

from engine.errors import FsatError
from engine.intake import missing_root_files


def demo_state(root: Path) -> str:
    """``ready`` (a dataset root, by the queue's rule), ``missing`` (nothing there) or ``partial`` (an interrupted write)."""
    if not missing_root_files(root):
        return "ready"
    if not root.exists() or not any(root.iterdir()):
        return "missing"
    return "partial"


class DemoScreen(ModalScreen[bool]):
    """Writes the demo dataset into ``root``; dismisses True when it is ready."""

    BINDINGS = [Binding("escape", "close", "Close")]

    def __init__(self, root: Path, *, overwrite: bool = False, seed: int = 0,
                 options: dict | None = None) -> None:
        super().__init__()
        self.root = root
        self.overwrite = overwrite
        self.seed = seed
        self.options = dict(options or {})
        self.finished = False

    def compose(self) -> ComposeResult:
        """Title, what is being written, the bar, and a status line."""
        with Vertical(classes="dialog"):
            yield Static("Creating the demo dataset", classes="dialog-title")
            yield Static(Text.assemble("80 classes of synthetic sounds in the FSDKaggle2019 layout, written to\n",
                                       (str(self.root), "bold")), classes="dialog-body")
            yield ProgressBar(total=None, show_eta=True, id="demo-progress")
            yield Static("starting…", id="demo-status", classes="dialog-keys")

    def on_mount(self) -> None:
        """Start writing."""
        self._write()

    @work(thread=True, exclusive=True, exit_on_error=False, group="demo")
    def _write(self) -> None:
        try:
            from engine.data.demo import write_demo_dataset

            summary = write_demo_dataset(self.root, seed=self.seed, overwrite=self.overwrite,
                                         progress=self._progress_from_thread, **self.options)
        except FsatError as err:
            self.app.call_from_thread(self._failed, str(err))
            return
        except Exception as err:  # any failure is shown in the dialog, never as a traceback
            self.app.call_from_thread(self._failed, f"{type(err).__name__}: {err}")
            return
        self.app.call_from_thread(self._done, summary)

    def _progress_from_thread(self, done: int, total: int) -> None:
        self.app.call_from_thread(self._progress, done, total)

    def _progress(self, done: int, total: int) -> None:
        self.query_one("#demo-progress", ProgressBar).update(total=total, progress=done)
        self.query_one("#demo-status", Static).update(f"{done} of {total} clips written")

    def _done(self, summary: dict) -> None:
        self.finished = True
        self.notify(f"Demo dataset ready: {summary.get('curated_clips', '?')} curated, "
                    f"{summary.get('noisy_clips', '?')} noisy, {summary.get('test_clips', '?')} test clips "
                    f"in {self.root}", title="Demo data", markup=False)
        self.dismiss(True)

    def _failed(self, text: str) -> None:
        self.query_one("#demo-status", Static).update(Text.assemble(
            ("Could not write the demo dataset: ", "bold red"), text, "\n", ("esc", "bold"), " close"))

    def action_close(self) -> None:
        """Close; the thread finishes on its own if still writing (the files stay consistent)."""
        self.dismiss(self.finished)
