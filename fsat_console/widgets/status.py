"""The status line under the header: worker state, what it runs, the queue, problems."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from fsat_console.formatting import bar, shorten
from fsat_console.live import Overview


def status_line(overview: Overview | None, *, spawned_pid: int | None = None,
                spawn_problem: str | None = None, live_problem: str | None = None) -> Text:
    """Build the one-line summary: worker(s), current job, queue counts, and any problem."""
    text = Text()
    if overview is None:
        text.append("… loading", style="dim")
        return text
    workers = overview.workers
    if workers:
        busy = [w for w in workers if w.get("status") == "busy"]
        text.append("● ", style="bold green")
        if len(workers) == 1:
            w = workers[0]
            text.append(f"worker pid {w['pid']} ", style="bold")
        else:
            text.append(f"{len(workers)} workers ", style="bold")
        if busy:
            job = overview.job(busy[0].get("job_id"))
            if job is not None:
                text.append("running ", style="yellow")
                text.append(f"job {job['id']} {job['kind']} {job['name']!r} ")
                text.append(bar(job["progress"], 8), style="yellow")
                text.append(f" {job['progress'] * 100:3.0f}% ")
                if job.get("message"):
                    text.append(shorten(job["message"], 36), style="dim")
            else:
                text.append(f"running job {busy[0].get('job_id')}", style="yellow")
            if len(busy) > 1:
                text.append(f" (+{len(busy) - 1} more)", style="yellow")
        else:
            text.append("idle", style="green")
    elif spawned_pid is not None and not spawn_problem:
        text.append("◌ ", style="bold yellow")
        text.append(f"starting worker pid {spawned_pid}…", style="yellow")
    else:
        text.append("○ ", style="bold red")
        text.append("no worker alive", style="bold red")
        text.append(" — press w to start one", style="dim")
    counts = overview.counts()
    text.append("   │   ", style="dim")
    text.append(f"{counts.get('queued', 0)} queued", style="cyan" if counts.get("queued") else "dim")
    text.append(" · ", style="dim")
    text.append(f"{counts.get('running', 0)} running", style="yellow" if counts.get("running") else "dim")
    text.append(" · ", style="dim")
    text.append(f"{overview.total_runs:,} runs", style="dim")
    archived = overview.run_totals.get("archived", 0)
    if archived:
        text.append(f" (+{archived:,} archived)", style="dim")
    failed = counts.get("failed", 0)
    if failed:
        text.append(" · ", style="dim")
        text.append(f"{failed} failed", style="red")
    for problem in (spawn_problem, live_problem):
        if problem:
            text.append("   │   ", style="dim")
            text.append(f"⚠ {shorten(problem, 70)}", style="bold red")
    return text


class WorkerStatus(Static):
    """A one-line status bar; the app pushes new state into it with ``show``."""

    def show(self, overview: Overview | None, **problems: object) -> None:
        """Re-render from the latest overview and problems (see ``status_line``)."""
        self.update(status_line(overview, **problems))  # type: ignore[arg-type]
