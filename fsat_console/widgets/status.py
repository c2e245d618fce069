"""The status line under the header: worker state, what it runs, the queue, problems."""

from __future__ import annotations

import json

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
                figures = system_text(overview.system.get(job.get("run_id") or ""))
                if figures is not None:
                    text.append(" · ", style="dim")
                    text.append_text(figures)
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
    for w in workers:
        cluster = cluster_text(w)
        if cluster is not None:
            text.append("   │   ", style="dim")
            text.append_text(cluster)
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


def mib_text(mib: float | None) -> str:
    """``812 MiB`` or ``12.3 GiB``; ``-`` when unknown."""
    if mib is None:
        return "-"
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def system_text(figures: dict | None) -> Text | None:
    """``NVIDIA H100 · GPU 12.3 GiB · 87% · RSS 2.1 GiB`` from a run's latest epoch; ``cpu · RSS 812 MiB`` on a CPU.

    Only what applies is shown (no GPU figures on a CPU, no utilisation
    without NVML); None before the run's first epoch is recorded.
    """
    if not figures or not figures.get("device"):
        return None
    text = Text()
    text.append(shorten(str(figures["device"]), 24), style="magenta")
    if figures.get("peak_gpu_mib") is not None:
        text.append(f" · GPU {mib_text(figures['peak_gpu_mib'])}")
    if figures.get("gpu_util") is not None:
        text.append(f" · {figures['gpu_util']:.0f}%")
    if figures.get("peak_rss_mib") is not None:
        text.append(f" · RSS {mib_text(figures['peak_rss_mib'])}")
    return text


def epochs_system(epochs: list[dict]) -> dict | None:
    """A run's system figures over its recorded epochs: the latest device, the largest peaks, the mean utilisation."""
    rows = [e for e in epochs if e.get("device")]
    if not rows:
        return None

    def peak(key: str) -> float | None:
        values = [float(e[key]) for e in rows if e.get(key) is not None]
        return max(values) if values else None

    util = [float(e["gpu_util"]) for e in rows if e.get("gpu_util") is not None]
    return {"device": rows[-1]["device"], "peak_gpu_mib": peak("peak_gpu_mib"),
            "gpu_util": sum(util) / len(util) if util else None, "peak_rss_mib": peak("peak_rss_mib")}


def cluster_text(worker: dict) -> Text | None:
    """``ray 2 nodes · GPU 1/2 free · CPU 3/8 free`` for a worker that runs folds on a cluster, else None.

    The worker publishes its cluster as JSON on its row (``workers.cluster``);
    an error there (cluster unreachable) is shown instead of the counts.
    """
    if worker.get("executor") != "ray":
        return None
    try:
        cluster = json.loads(worker.get("cluster") or "{}")
    except ValueError:
        cluster = {}
    text = Text()
    if cluster.get("error"):
        text.append(f"⚠ ray: {shorten(cluster['error'], 70)}", style="bold red")
        return text
    if "nodes" not in cluster:
        text.append("ray: connecting…", style="yellow")
        return text
    nodes = int(cluster["nodes"])
    text.append("ray ", style="bold magenta")
    text.append(f"{nodes} node{'s' if nodes != 1 else ''}")
    for name in ("gpus", "cpus"):
        total, free = float(cluster.get(name, 0)), float(cluster.get(f"{name}_free", 0))
        if name == "gpus" and total == 0:
            continue
        text.append(" · ", style="dim")
        text.append(f"{name[:-1].upper()} {total - free:g} busy/{free:g} free",
                    style="yellow" if free < total else "green")
    return text


class WorkerStatus(Static):
    """A one-line status bar; the app pushes new state into it with ``show``."""

    def show(self, overview: Overview | None, *, spawned_pid: int | None = None, spawn_problem: str | None = None,
             live_problem: str | None = None) -> None:
        """Re-render from the latest overview and problems (see ``status_line``)."""
        self.update(status_line(overview, spawned_pid=spawned_pid, spawn_problem=spawn_problem,
                                live_problem=live_problem))
