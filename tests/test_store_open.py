"""Opening the database: reads never wait on writers; a bad database gets one line and exit status 2.

Everything runs as a user would run it: real ``fsat``, worker and console
processes on real files, another real process holding the write lock.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from engine.store import SCHEMA_VERSION, Store
from fsat_console.app import FsatConsole
from fsat_console.screens.dialogs import WAITING
from fsat_console.screens.main import MainScreen
from fsat_console.screens.queue import QueueScreen
from tests.helpers.console import open_queue_dialog, screen_text
from tests.helpers.processes import cli_cmd, env_with_project, run_cli, run_read_only, worker_cmd
from tests.helpers.waiting import wait_until
from tests.helpers.worlds import console_world


def _console(db: Path) -> list[str]:
    return [sys.executable, "-m", "fsat_console.app", "--db", str(db), "--no-worker"]


def _one_line_error(out, *needles: str) -> None:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _console_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job_name: str) -> tuple[Path, Path]:
    """The console's world (``console_world``) with one queued job in its database."""
    db, data = console_world(tmp_path, monkeypatch)
    with Store(db) as store:
        store.enqueue("probe", {}, name=job_name)
    return db, data


# -- reads never wait on writers ---------------------------------------------------------------


def test_listings_answer_while_another_process_holds_the_write_lock(db_path: Path, hold_write_lock):
    with Store(db_path) as store:
        store.enqueue("probe", {}, name="waiting")
    holder = hold_write_lock(db_path, seconds=20)
    jobs = json.loads(run_cli("jobs", "--json", db=db_path).stdout)
    runs = json.loads(run_cli("runs", "--json", db=db_path).stdout)
    workers = json.loads(run_cli("workers", "--json", db=db_path).stdout)
    assert holder.holding, "the listings waited for the other process's write to end"
    assert [j["name"] for j in jobs] == ["waiting"] and runs == [] and workers == []


async def test_console_starts_and_queues_without_freezing_while_the_lock_is_held(
        tmp_path: Path, hold_write_lock, monkeypatch: pytest.MonkeyPatch):
    db, data = _console_world(tmp_path, monkeypatch, "waiting")
    holder = hold_write_lock(db, seconds=20)
    app = FsatConsole(db, data_root=data, poll_interval=0.1)
    async with app.run_test(size=(140, 45)) as pilot:
        await wait_until(pilot, lambda: app.overview is not None
                         and [j["name"] for j in app.overview.jobs] == ["waiting"], timeout=15,
                         what="the console to show the queued job")
        assert holder.holding, "the console waited for the other process's write to end"
        # Queue a job: the write waits in a thread and the dialog says so; the interface keeps running.
        await open_queue_dialog(pilot, app, timeout=10.0)
        await pilot.press("home", "enter")
        await wait_until(pilot, lambda: WAITING in screen_text(app), timeout=10, what="the waiting message")
        assert holder.holding and isinstance(app.screen, QueueScreen)
        holder.release()
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), timeout=10, what="the dialog to close")
    with Store(db, readonly=True) as store:
        assert sorted(j["name"] for j in store.list_jobs()) == ["tiny", "waiting"]


# -- bad databases -------------------------------------------------------------------------------


@pytest.mark.parametrize("make", ["text file", "newer schema"])
def test_a_bad_database_gets_one_line_and_status_2_from_every_program(db_path: Path, make: str):
    if make == "text file":
        db_path.write_text("these are my notes, not a database\n")
        needles = [str(db_path), "not an SQLite database"]
    else:
        Store(db_path).close()
        con = sqlite3.connect(db_path)
        con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
        con.commit()
        con.close()
        needles = [str(db_path), f"schema version {SCHEMA_VERSION + 1} is newer"]
    before = db_path.read_bytes()
    for cmd in (cli_cmd("jobs", db=db_path), cli_cmd("queue", "probe", db=db_path), worker_cmd(db_path, "--drain"),
                _console(db_path)):
        _one_line_error(run_cli_raw(cmd), *needles)
    assert db_path.read_bytes() == before, "a bad database must be left as it was"


def run_cli_raw(cmd: list[str]):
    """Run one of the programs as is (this user)."""
    import subprocess

    return subprocess.run(cmd, capture_output=True, text=True, env=env_with_project(), timeout=120,
                          stdin=subprocess.DEVNULL)


def test_a_mistyped_path_is_reported_and_no_database_is_created(tmp_path: Path):
    typo = tmp_path / "experimnets.db"
    for args in (["jobs"], ["runs"], ["workers"], ["datasets"], ["show", "train-0001"], ["wait", "1"],
                 ["cancel", "1"]):
        _one_line_error(run_cli_raw(cli_cmd(*args, db=typo)), str(typo), "no such database")
    assert not typo.exists()


@pytest.mark.parametrize("what", ["folder", "file"])
def test_a_read_only_database_lists_but_refuses_writes(db_path: Path, what: str):
    with Store(db_path) as store:
        store.enqueue("probe", {}, name="kept")
    assert not db_path.with_name(db_path.name + "-wal").exists()  # closed cleanly, as a copied file would be
    target = db_path.parent if what == "folder" else db_path
    listed = run_read_only(target, cli_cmd("jobs", "--json", db=db_path))
    assert listed.returncode == 0, listed.stderr
    assert [j["name"] for j in json.loads(listed.stdout)] == ["kept"]
    for cmd in (cli_cmd("queue", "probe", db=db_path), cli_cmd("cancel", "1", db=db_path),
                worker_cmd(db_path, "--drain")):
        _one_line_error(run_read_only(target, cmd), str(db_path), "read-only")
    with Store(db_path, readonly=True) as store:
        assert [(j["name"], j["status"]) for j in store.list_jobs()] == [("kept", "queued")]


_CONSOLE_ON_READ_ONLY = """
import asyncio, sys
from pathlib import Path
from textual.widgets import Static
from fsat_console.app import FsatConsole
from tests.helpers.console import open_queue_dialog
from tests.helpers.waiting import wait_until

async def main(db, data):
    app = FsatConsole(Path(db), data_root=Path(data), poll_interval=0.1)
    async with app.run_test(size=(140, 45)) as pilot:
        await wait_until(pilot, lambda: app.overview is not None
                         and [j["name"] for j in app.overview.jobs] == ["kept"], timeout=30, what="the jobs")
        await open_queue_dialog(pilot, app, timeout=10.0)
        await pilot.press("home", "enter")
        error = lambda: str(app.screen.query_one("#queue-error", Static).render())
        await wait_until(pilot, lambda: "read-only" in error(), timeout=30, what="the refusal")
        print("REFUSED", error())

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_the_console_on_a_read_only_database_lists_and_refuses_to_queue(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    db, data = _console_world(tmp_path, monkeypatch, "kept")
    # The real app through run_test, in a process for which the file is read-only.
    out = run_read_only(db, [sys.executable, "-c", _CONSOLE_ON_READ_ONLY, str(db), str(data)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "REFUSED Could not queue" in out.stdout and str(db) in out.stdout
    with Store(db, readonly=True) as store:
        assert [j["name"] for j in store.list_jobs()] == ["kept"]
