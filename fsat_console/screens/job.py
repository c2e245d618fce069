"""Details of one job: settings, timings, and for a failure its error and traceback."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from fsat_console.formatting import status_text


def _when(ts: float | None) -> str:
    return "—" if ts is None else _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def job_summary(job: dict) -> Table:
    """Key facts of a job as a two-column grid."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", justify="right")
    grid.add_column()
    grid.add_row("job", Text(f"{job['id']}  {job['kind']}  {job.get('name') or ''}", style="bold"))
    grid.add_row("status", status_text(job["status"]))
    grid.add_row("progress", f"{float(job.get('progress') or 0) * 100:.0f}%  {job.get('message') or ''}")
    grid.add_row("run", job.get("run_id") or "— (not started)")
    grid.add_row("priority", str(job.get("priority", 0)))
    grid.add_row("attempts", f"{job.get('attempts', 0)} of {job.get('max_attempts', 0)}")
    grid.add_row("worker", job.get("worker_id") or "—")
    grid.add_row("created", _when(job.get("created_at")))
    grid.add_row("started", _when(job.get("started_at")))
    grid.add_row("finished", _when(job.get("finished_at")))
    if job.get("error"):
        grid.add_row("error", Text(job["error"], style="bold red"))
    return grid


def spec_lines(spec: dict[str, Any]) -> str:
    """A spec as one line per section: ``[train] epochs=8 batch_size=32 …`` (plain values first)."""
    plain = [f"{k} = {json.dumps(v)}" for k, v in sorted(spec.items()) if not isinstance(v, dict)]
    sections = [f"[{k}] " + "  ".join(f"{sk}={json.dumps(sv)}" for sk, sv in sorted(v.items()))
                for k, v in sorted(spec.items()) if isinstance(v, dict)]
    return "\n".join(plain + sections)


class JobScreen(ModalScreen[str | None]):
    """Dismisses with the job's run id when the user asks to open it (``o``)."""

    BINDINGS = [
        Binding("escape,q", "close", "Close"),
        Binding("o", "open_run", "Open run"),
    ]

    def __init__(self, job: dict) -> None:
        super().__init__()
        self.job = job

    def compose(self) -> ComposeResult:
        """Summary, then the traceback (if any) and the resolved spec, scrollable."""
        with Vertical(classes="dialog wide-dialog tall-dialog"):
            yield Static(f"Job {self.job['id']}", classes="dialog-title")
            with VerticalScroll(classes="dialog-scroll"):
                yield Static(job_summary(self.job))
                if self.job.get("traceback"):
                    yield Static("traceback (last lines of the job log)", classes="field-label")
                    yield Static(self.job["traceback"], markup=False, classes="traceback")
                yield Static("spec", classes="field-label")
                yield Static(spec_lines(self.job.get("spec") or {}), markup=False, classes="spec")
            keys = "[b]esc[/b] close"
            if self.job.get("run_id"):
                keys = "[b]o[/b] open run   " + keys
            yield Static(keys, classes="dialog-keys")

    def on_mount(self) -> None:
        """Arrow keys scroll the details."""
        self.query_one(VerticalScroll).focus()

    def action_close(self) -> None:
        """Close."""
        self.dismiss(None)

    def action_open_run(self) -> None:
        """Close and open the job's run."""
        if self.job.get("run_id"):
            self.dismiss(str(self.job["run_id"]))
        else:
            self.notify("This job has no run yet.", severity="warning")
