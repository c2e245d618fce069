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
