"""Command palette providers that search every run and job in the database as the user types.

The palette's own fuzzy matcher ranks the hits; the candidates come from SQL
(``LIKE`` on the typed characters in order, newest first), so a run made a
thousand runs ago is found as quickly as the newest one, without loading every
run into the console.
"""

from __future__ import annotations

import asyncio
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from fsat_console.access import console

#: Most candidates fetched per keystroke (the matcher ranks them).
SEARCH_LIMIT = 100


def fuzzy_like(query: str) -> str:
    """``tr42`` -> ``%t%r%4%2%``: the typed characters in order, anything between (LIKE, ``\\`` escapes)."""
    chars = [c for c in query.strip() if not c.isspace()]
    escaped = ["\\" + c if c in "%_\\" else c for c in chars]
    return "%" + "%".join(escaped) + "%"


def _find_runs(store, query: str, limit: int) -> list[dict]:
    pattern = fuzzy_like(query)
    # Matched against the title the palette shows (a scan; a leading % can use no index anyway).
    return store.page_runs(where="('Run ' || r.id || ' ' || r.name) LIKE :q ESCAPE '\\'", params={"q": pattern},
                           order="created", descending=True, limit=limit, archived=None)


def _find_jobs(store, query: str, limit: int) -> list[dict]:
    pattern = fuzzy_like(query)
    return store.page_jobs(where="('Job ' || j.id || ' ' || j.name || ' ' || j.kind) LIKE :q ESCAPE '\\'",
                           params={"q": pattern},
                           order="id", descending=True, limit=limit)


def run_title(run: dict) -> str:
    """``Run train-0042 my name``."""
    return f"Run {run['run_id']} {run.get('name') or ''}".strip()


def run_help(run: dict) -> str:
    """Model, status and CV LWLRAP of a run, for the palette's second line."""
    cv = run.get("cv_lwlrap")
    score = f" · CV LWLRAP {cv:.4f}" if cv is not None else ""
    archived = " · archived" if run.get("archived") else ""
    return f"{run.get('kind') or ''} {run.get('model') or ''} · {run['status']}{score}{archived}"


class RunCommands(Provider):
    """Every run, archived ones included."""

    async def discover(self) -> Hits:
        """The newest runs, before anything is typed."""
        rows = await asyncio.to_thread(_find_runs, console(self).store, "", 20)
        for run in rows:
            yield DiscoveryHit(run_title(run), partial(console(self).open_run, str(run["run_id"])),
                               help=run_help(run))

    async def search(self, query: str) -> Hits:
        """Runs whose id or name holds the typed characters in order."""
        matcher = self.matcher(query)
        rows = await asyncio.to_thread(_find_runs, console(self).store, query, SEARCH_LIMIT)
        for run in rows:
            title = run_title(run)
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), partial(console(self).open_run, str(run["run_id"])),
                          text=title, help=run_help(run))


class JobCommands(Provider):
    """Every job: its details, error and traceback."""

    async def search(self, query: str) -> Hits:
        """Jobs whose id, name or kind holds the typed characters in order."""
        matcher = self.matcher(query)
        rows = await asyncio.to_thread(_find_jobs, console(self).store, query, SEARCH_LIMIT)
        for job in rows:
            title = f"Job {job['id']} {job.get('name') or ''}".strip()
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), partial(console(self).open_job, int(job["id"])),
                          text=title, help=f"{job['kind']} · {job['status']} · details, error and traceback")
