"""Filters ignore the case of every letter, not only ASCII ones (SQLite's NOCASE and LIKE fold A-Z alone)."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from engine.filters import compile_filter
from engine.store import Store
from tests.helpers.processes import run_cli
from tests.helpers.recording import record_run


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Runs with accented tags and names, one job with an accented name."""
    path = tmp_path / "experiments.db"
    with Store(path) as store:
        for run_id, name in (("train-0001", "Été mixup"), ("train-0002", "café au lait"), ("train-0003", "plain")):
            record_run(store, tmp_path / "runs", run_id, dataset_id=None, status="done", name=name, cv=0.5)
        store.set_run_tags("train-0001", ["été", "Straße"])
        store.set_run_tags("train-0002", ["ÉTÉ"])
        store.set_run_tags("train-0003", ["ete"])
        store.set_run_note("train-0003", "Ölwechsel nötig")
        store.enqueue("probe", {}, name="Überprüfung")
    return path


def ids(store: Store, query: str) -> list[str]:
    flt = compile_filter(query, "runs")
    return [r["run_id"] for r in store.page_runs(where=flt.sql, params=flt.params, order="run_id", descending=False)]


@pytest.mark.parametrize("readonly", [False, True], ids=["writer", "reader"])
def test_non_ascii_letters_match_ignoring_case(db: Path, readonly: bool) -> None:
    with Store(db, readonly=readonly) as store:
        assert ids(store, "tag:ÉTÉ") == ids(store, "tag:été") == ids(store, "tag:Été") == ["train-0001", "train-0002"]
        assert ids(store, "tag:ete") == ["train-0003"]  # an accent is not case: e and é stay apart
        assert ids(store, "-tag:ÉTÉ") == ["train-0003"]
        assert ids(store, "tag:STRAẞE") == ids(store, "tag:straße") == ["train-0001"]  # casefold: ẞ, ß and ss
        assert ids(store, "name:ÉTÉ") == ids(store, "name:été") == ["train-0001"]
        assert ids(store, "name:CAFÉ") == ["train-0002"]
        assert ids(store, "note:ÖLWECHSEL") == ["train-0003"]
        assert ids(store, "ÉTÉ") == ["train-0001"]  # a bare word: id or name
        assert ids(store, "tag:ÉT*") == ["train-0001", "train-0002"]
        # The same letter typed decomposed (e + a combining accent, as some keyboards send it) matches too.
        assert ids(store, unicodedata.normalize("NFD", "tag:ÉTÉ")) == ["train-0001", "train-0002"]
        flt = compile_filter("name:ÜBERPRÜFUNG", "jobs")
        assert [j["name"] for j in store.page_jobs(where=flt.sql, params=flt.params)] == ["Überprüfung"]


def test_ascii_values_keep_the_index(db: Path) -> None:
    with Store(db) as store:
        flt = compile_filter("tag:best", "runs")
        plan = " ".join(str(tuple(r)[3]) for r in store.conn.execute(
            f"EXPLAIN QUERY PLAN SELECT r.id FROM runs r WHERE {flt.sql}", flt.params))
        assert "INDEX run_tags_tag" in plan, plan


def test_fsat_runs_and_jobs_match_non_ascii_ignoring_case(db: Path) -> None:
    rows = json.loads(run_cli("runs", "tag:ÉTÉ", "--json", db=db).stdout)
    assert sorted(r["run_id"] for r in rows) == ["train-0001", "train-0002"]
    jobs = json.loads(run_cli("jobs", "name:überprüfung", "--json", db=db).stdout)
    assert [j["name"] for j in jobs] == ["Überprüfung"]


def test_the_database_stays_readable_without_the_function(db: Path) -> None:
    """Users query the file with sqlite3: nothing in the schema may need a function only fsat registers."""
    import sqlite3

    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO run_tags(run_id, tag) VALUES ('train-0003', 'x')")
    conn.commit()
    assert conn.execute("SELECT COUNT(*) FROM run_summary").fetchone()[0] == 3
    conn.close()


async def test_the_console_filter_matches_non_ascii_ignoring_case(env: dict) -> None:
    from textual.widgets import Input

    from fsat_console.app import FsatConsole
    from tests.helpers.console import table
    from tests.helpers.waiting import wait_until

    store = env["store"]
    for run_id in ("train-0001", "train-0002"):
        record_run(store, env["tmp"] / "runs", run_id, dataset_id=None, status="done", name=run_id, cv=0.5)
    store.set_run_tags("train-0001", ["été"])
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=(160, 48)) as pilot:
        runs = table(app, "runs")
        await wait_until(pilot, lambda: runs.row_count == 2, what="the runs")
        await pilot.press("slash")
        app.screen.query_one("#command-bar", Input).value = "tag:ÉTÉ"
        await pilot.press("enter")
        await wait_until(pilot, lambda: set(runs.rows) == {"train-0001"}, what="the run tagged été")
