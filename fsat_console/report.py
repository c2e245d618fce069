"""``H``: write the HTML report of what a screen shows (a run, a comparison, a blend, a sweep) beside the database.

The console never imports matplotlib or the report's modules (an import
contract says so): the report is written by ``python -m engine.reporting``,
the code behind ``fsat report``, in a child process that a thread worker
waits on, so the screen stays live. A notification names the file written,
or gives the command's one-line error.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from textual.screen import Screen

from fsat_console.access import console

__all__ = ["REPORT_KEY", "report_path", "write_report"]

#: The key, on the run, compare, ensemble and sweep screens.
REPORT_KEY = "H"
#: Seconds a report may take before the console gives up on it.
REPORT_TIMEOUT = 600


def report_path(db_path: Path, label: str) -> Path:
    """``report-<label>.html`` beside the database (characters a file name cannot hold become ``_``)."""
    return Path(db_path).parent / f"report-{re.sub(r'[^A-Za-z0-9._-]+', '_', label)}.html"


def write_report(screen: Screen, label: str, arguments: Sequence[str]) -> None:
    """Write ``fsat report ARGUMENTS`` to ``report-<label>.html`` in a thread worker; notify when done."""
    app = console(screen)
    out = report_path(app.db_path, label)
    command = [sys.executable, "-m", "engine.reporting", "--db", str(app.db_path), *arguments, "--out", str(out)]
    screen.notify(f"Writing the report of {label}…", title="Report", timeout=4, markup=False)
    screen.run_worker(lambda: _run(screen, command, out), thread=True, group="report", exit_on_error=False,
                      name=f"report {label}")


def _run(screen: Screen, command: list[str], out: Path) -> None:
    env = dict(os.environ)
    # The engine importable whatever the working directory (as for the worker the console starts).
    project = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = project + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=REPORT_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        screen.app.call_from_thread(screen.notify, f"The report was not written: {err}", title="Report",
                                    severity="error", timeout=12, markup=False)
        return
    if done.returncode == 0:
        screen.app.call_from_thread(screen.notify, f"Wrote {out}", title="Report", timeout=10, markup=False)
        return
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    why = lines[-1] if lines else f"exit status {done.returncode}"
    screen.app.call_from_thread(screen.notify, why.removeprefix("error: "), title="Report not written",
                                severity="error", timeout=12, markup=False)
