"""Input that once printed a traceback: each now ends in one clear line (or, for a closed pipe, quietly)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.filters import MAX_DEPTH, MAX_LENGTH, MAX_TERMS, FilterError, compile_filter
from engine.store import Store
from tests.helpers.processes import PROJECT, run_cli
from tests.helpers.recording import record_run

#: Filters a person would never type, but a script or a stuck key can.
DEEP_PARENS = "(" * 400 + "status:done" + ")" * 400
MANY_NOTS = "NOT " * 1000 + "status:done"
LONG_AND = " ".join(["x"] * 900)


@pytest.mark.parametrize("query", [DEEP_PARENS, MANY_NOTS, LONG_AND, "-" * 5000 + "x"],
                         ids=["parentheses", "nots", "terms", "length"])
@pytest.mark.parametrize("table", ["runs", "jobs"])
def test_a_filter_past_the_bounds_is_refused_in_one_line(query: str, table: str) -> None:
    with pytest.raises(FilterError) as err:
        compile_filter(query, table)
    message = str(err.value)
    assert "\n" not in message and message.startswith("filter: ")
    assert any(str(n) in message for n in (MAX_DEPTH, MAX_LENGTH, MAX_TERMS))


def test_a_filter_at_the_bounds_compiles_and_runs(tmp_path: Path) -> None:
    """The bounds keep SQLite's own limits out of reach: the costliest filters at them run.

    SQLite's parser stack (100 entries) is the tightest limit: nested groups
    that each hold an OR of a tag (a subquery) and an AND cost the most.
    """
    with Store(tmp_path / "experiments.db") as store:
        record_run(store, tmp_path / "runs", "train-0001", dataset_id=None, status="done", name="a", cv=0.8)
        costly = {"runs": "(tag:a OR model:b {})", "jobs": "(kind:a OR name:b {})"}
        for table, wrapper in costly.items():
            query = "-tag:c" if table == "runs" else "-kind:c"
            for _ in range(MAX_DEPTH - 1):
                query = wrapper.format(query)
            flt = compile_filter(query, table)
            if table == "runs":
                assert store.page_runs(where=flt.sql, params=flt.params) == []
            else:
                assert store.count_jobs_where(where=flt.sql, params=flt.params) == 0
        deep = "(" * (MAX_DEPTH - 1) + "status:done" + ")" * (MAX_DEPTH - 1)
        nots = "NOT " * (MAX_DEPTH - 1) + "-status:done"
        terms = " OR ".join(["model:x"] * (MAX_TERMS - 1) + ["status:done"])
        for query in (deep, nots, terms):
            assert len(query) <= MAX_LENGTH
            flt = compile_filter(query, "runs")
            expect = [] if query is nots and MAX_DEPTH % 2 else ["train-0001"]
            assert [r["run_id"] for r in store.page_runs(where=flt.sql, params=flt.params)] == expect
        wide = " ".join(["tag!=x"] * MAX_TERMS)
        flt = compile_filter(wide, "runs")
        assert store.count_runs(where=flt.sql, params=flt.params) == 1


@pytest.mark.parametrize("command", ["runs", "jobs"])
def test_fsat_listings_refuse_a_deep_filter_in_one_line(db_path: Path, command: str) -> None:
    Store(db_path).close()
    for query in (DEEP_PARENS, MANY_NOTS):
        out = run_cli(command, query, db=db_path, check=False)
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr and "RecursionError" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("error: filter:")


@pytest.mark.parametrize("argv", [["requeue", "1180591620717411303424"], ["cancel", "9223372036854775808"],
                                  ["wait", "99999999999999999999"], ["runs", "--limit", "1180591620717411303424"],
                                  ["queue", "probe", "--priority", "9223372036854775808"],
                                  ["show", "train-0001", "--fold", "1180591620717411303424"]],
                         ids=["requeue", "cancel", "wait", "limit", "priority", "fold"])
def test_an_integer_past_sqlite_range_is_refused_without_a_traceback(db_path: Path, argv: list[str]) -> None:
    Store(db_path).close()
    out = run_cli(*argv, db=db_path, check=False)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "OverflowError" not in out.stderr
    assert "9223372036854775807" in out.stderr  # the largest integer SQLite stores, named


def test_the_largest_sqlite_integer_is_still_an_ordinary_unknown_job(db_path: Path) -> None:
    Store(db_path).close()
    out = run_cli("requeue", "9223372036854775807", db=db_path, check=False)
    assert out.returncode == 2 and "no job with id 9223372036854775807" in out.stderr


def _closed_early(argv: list[str], db: Path, *, read_first: bool) -> subprocess.CompletedProcess:
    """Run ``fsat`` with its stdout a real pipe whose reader goes away, like ``fsat ... | head -1``.

    ``read_first``: the reader takes one line, then closes (the writer is
    mid-listing); otherwise the reader is gone before the command starts, so
    even a short output meets the closed pipe.
    """
    env = dict(os.environ, PYTHONPATH=str(PROJECT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "engine.cli", "--db", str(db), *argv]
    if read_first:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()
    else:
        read_end, write_end = os.pipe()
        os.close(read_end)
        proc = subprocess.Popen(cmd, stdout=write_end, stderr=subprocess.PIPE, env=env)
        os.close(write_end)
        first = b""
        assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    return subprocess.CompletedProcess(argv, proc.returncode, first.decode(), err)


@pytest.fixture
def many_runs(db_path: Path, tmp_path: Path) -> Path:
    """Two scored runs, and enough runs that a listing outgrows the pipe's buffer (64 KiB) after its first line."""
    import numpy as np

    rng = np.random.default_rng(0)
    truth = (rng.random((40, 80)) < 0.05).astype(np.float32)
    truth[np.arange(40), rng.integers(0, 80, 40)] = 1
    with Store(db_path) as store:
        for i in range(2):
            record_run(store, tmp_path / "runs", f"train-{i + 1:04d}", dataset_id=None, status="done",
                       name=f"run {i}", oof=rng.random((40, 80)), truth=truth, folds=np.arange(40) % 5)
        for i in range(2, 1200):
            store.create_run(f"train-{i + 1:04d}", kind="train", name="x" * 60)
    return db_path


@pytest.mark.parametrize("argv", [["runs", "--json", "--all"], ["runs", "--all"], ["runs", "--csv", "--all"]],
                         ids=["json", "table", "csv"])
def test_a_pipe_closed_mid_listing_ends_the_command_quietly(many_runs: Path, argv: list[str]) -> None:
    out = _closed_early(argv, many_runs, read_first=True)
    assert out.stdout  # it did print before the pipe closed
    assert out.stderr == "", out.stderr
    assert out.returncode in (0, 141)


@pytest.mark.parametrize("argv", [["compare", "train-0001", "train-0002"], ["show", "train-0001"],
                                  ["runs", "--markdown"], ["jobs"]], ids=["compare", "show", "markdown", "jobs"])
def test_a_pipe_closed_before_any_output_ends_the_command_quietly(many_runs: Path, argv: list[str]) -> None:
    out = _closed_early(argv, many_runs, read_first=False)
    assert out.stderr == "", out.stderr
    assert out.returncode in (0, 141)


async def test_the_console_refuses_a_deep_filter_under_the_bar_and_keeps_running(env: dict) -> None:
    from textual.widgets import Input, Static

    from fsat_console.app import FsatConsole
    from tests.helpers.console import table
    from tests.helpers.waiting import wait_until

    record_run(env["store"], env["tmp"] / "runs", "train-0001", dataset_id=None, status="done", name="a", cv=0.8)
    app = FsatConsole(env["db"], data_root=env["data"], poll_interval=0.1)
    async with app.run_test(size=(160, 48)) as pilot:
        runs = table(app, "runs")
        await wait_until(pilot, lambda: runs.row_count == 1, what="the run")
        await pilot.press("slash")
        bar = app.screen.query_one("#command-bar", Input)
        bar.value = DEEP_PARENS
        await pilot.press("enter")
        error = app.screen.query_one("#bar-error", Static)
        await wait_until(pilot, lambda: error.display, what="the error under the bar")
        assert "nested too deeply" in str(error.render())
        assert app.is_running and runs.row_count == 1


@pytest.mark.parametrize("seed", ["-1", "4294967296", "1180591620717411303424"])
def test_a_seed_numpy_cannot_take_is_refused_in_one_line(tmp_path: Path, tiny_demo: Path, seed: str) -> None:
    db = tmp_path / "experiments.db"
    for argv in (["register", str(tiny_demo), "--fold-seed", seed],
                 ["queue", "train", "--data", str(tiny_demo), "--preset", "demo", "--set", f"train.seed={seed}"],
                 ["queue", "train", "--data", str(tiny_demo), "--preset", "demo", "--set", f"train.fold_seed={seed}"],
                 ["demo-data", str(tmp_path / "demo"), "--seed", seed, "--clips-per-class", "1"]):
        out = run_cli(*argv, db=db, check=False)
        assert out.returncode == 2, (argv, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr and "4294967295" in out.stderr, out.stderr
    assert not (tmp_path / "demo").exists()
