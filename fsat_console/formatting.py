"""Small text helpers shared by the console's tables and headers.

Everything here turns store rows into short, aligned cells: scores with four
decimals, status words in a colour that reads at a glance, block-character
bars for progress and per-class LRAP, local times.
"""

from __future__ import annotations

import datetime as _dt

from rich.text import Text

#: Eighths of a block, so a 10-cell bar resolves 80 steps.
_EIGHTHS = " ▏▎▍▌▋▊▉"

STATUS_STYLES = {
    "queued": "cyan",
    "running": "bold yellow",
    "done": "green",
    "failed": "bold red",
    "cancelled": "dim",
    "interrupted": "dark_orange",
    # A sweep's run that trained its screening fold only (``engine.sweeps.mark_screened``).
    "screened": "dim",
    "screening": "dark_cyan",
    "kept": "dark_cyan",
    "idle": "green",
    "busy": "bold yellow",
}

#: Marker in front of a status word; a shape as well as a colour, for colour-blind readers.
STATUS_ICONS = {
    "queued": "◌",
    "running": "▶",
    "done": "✔",
    "failed": "✖",
    "cancelled": "⊘",
    "interrupted": "⏸",
    "screened": "◔",
    "screening": "◔",
    "kept": "◔",
}


def fmt_score(value: float | None, digits: int = 4) -> str:
    """A LWLRAP/LRAP value with fixed decimals, or an em dash when absent."""
    if value is None:
        return "—"
    return f"{value:.{digits}f}"


def bar(fraction: float | None, width: int = 10) -> str:
    """A left-aligned block bar of ``width`` cells for a fraction in [0, 1]."""
    if fraction is None:
        return " " * width
    fraction = min(1.0, max(0.0, float(fraction)))
    eighths = round(fraction * width * 8)
    full, rest = divmod(eighths, 8)
    text = "█" * full
    if rest and full < width:
        text += _EIGHTHS[rest]
    return text.ljust(width)


def status_text(status: str | None) -> Text:
    """A status word with its icon and colour."""
    status = status or ""
    icon = STATUS_ICONS.get(status, "·")
    return Text(f"{icon} {status}", style=STATUS_STYLES.get(status, ""))


def local_time(utc_text: str | None) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in UTC (SQLite ``datetime()``) as local ``YYYY-MM-DD HH:MM``."""
    if not utc_text:
        return "—"
    try:
        moment = _dt.datetime.strptime(utc_text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        return utc_text
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def shorten(text: str | None, width: int) -> str:
    """The first line of ``text``, cut to ``width`` characters with an ellipsis."""
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def now() -> float:
    """The console's clock (one place, so elapsed times and ETAs can be tested at a fixed moment)."""
    import time

    return time.time()


def fmt_duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``1h02m``, ``2d03h``; an em dash when unknown."""
    if seconds is None or seconds < 0:
        return "—"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def job_times(job: dict, at: float | None = None) -> tuple[float | None, float | None]:
    """(elapsed or duration, ETA) of a job in seconds.

    A running job's elapsed time runs to ``at`` (now) and its ETA assumes the
    rest goes at the pace so far (none before 2 % progress, when the pace says
    little); an ended job has its duration and no ETA.
    """
    started = job.get("started_at")
    if started is None:
        return None, None
    if job.get("status") == "running":
        elapsed = max(0.0, (at if at is not None else now()) - float(started))
        progress = float(job.get("progress") or 0.0)
        eta = elapsed * (1 - progress) / progress if progress >= 0.02 else None
        return elapsed, eta
    finished = job.get("finished_at")
    return (None if finished is None else max(0.0, float(finished) - float(started))), None


def local_stamp(ts: float | None) -> str:
    """Unix seconds as local ``MM-DD HH:MM`` (an em dash when unknown)."""
    if ts is None:
        return "—"
    return _dt.datetime.fromtimestamp(float(ts)).strftime("%m-%d %H:%M")
