"""What the console keeps between sessions: the pinned baseline, the marked runs, each table's sort and filter.

It lives in ``console-state.json`` beside the database, not in the database:
it is one user's view, not a fact about the experiments, so it needs no
migration, is written even when the database is read-only or locked by a
busy worker, and a console on an older engine reads the same database
unchanged. It is written when the console closes (the last console to close
wins) and read when one starts; a file that cannot be read, or a filter
that no longer compiles, is ignored (the defaults apply).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from engine.atomic import save_json
from engine.errors import FsatError
from engine.filters import compile_filter
from fsat_console.live import DEFAULT_JOB_VIEW, DEFAULT_RUN_VIEW, TableView

#: Keys of a table view kept between sessions (the page offset is not: the data moves on).
_VIEW_KEYS = ("filter", "order", "descending", "archived")


def state_path(db_path: Path) -> Path:
    """``console-state.json`` beside the database."""
    return db_path.with_name("console-state.json")


@dataclass
class ConsoleState:
    """The console's view of the database that outlives a session."""

    pinned_run: str | None = None
    pinned_cv: float | None = None
    marked_runs: list[str] = field(default_factory=list)
    run_view: TableView = DEFAULT_RUN_VIEW
    job_view: TableView = DEFAULT_JOB_VIEW

    def save(self, path: Path) -> None:
        """Write the state atomically (``engine.atomic``); OSError when it cannot."""
        data = {"pinned_run": self.pinned_run, "pinned_cv": self.pinned_cv, "marked_runs": list(self.marked_runs),
                "run_view": {k: v for k, v in asdict(self.run_view).items() if k in _VIEW_KEYS},
                "job_view": {k: v for k, v in asdict(self.job_view).items() if k in _VIEW_KEYS}}
        save_json(path, data)


def _view(data: object, default: TableView, target: str) -> TableView:
    if not isinstance(data, dict):
        return default
    kept = {k: data[k] for k in _VIEW_KEYS if k in data and isinstance(data[k], type(getattr(default, k)))}
    view = replace(default, **kept)
    try:
        compile_filter(view.filter, target)
    except FsatError:
        view = replace(view, filter="")
    return view


def load_state(path: Path) -> ConsoleState:
    """The state saved at ``path``; the defaults where it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ConsoleState()
    if not isinstance(data, dict):
        return ConsoleState()
    pinned = data.get("pinned_run")
    cv = data.get("pinned_cv")
    marked = data.get("marked_runs")
    return ConsoleState(
        pinned_run=pinned if isinstance(pinned, str) else None,
        pinned_cv=float(cv) if isinstance(cv, (int, float)) and isinstance(pinned, str) else None,
        marked_runs=[m for m in marked if isinstance(m, str)] if isinstance(marked, list) else [],
        run_view=_view(data.get("run_view"), DEFAULT_RUN_VIEW, "runs"),
        job_view=_view(data.get("job_view"), DEFAULT_JOB_VIEW, "jobs"))
