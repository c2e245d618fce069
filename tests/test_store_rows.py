"""The store's rows: one key for a run id wherever a run row comes from, the parts sharing one clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_type_hints

import pytest

import engine.store
from engine.store import MIGRATIONS, RunRow, RunSummary, Store

from tests.helpers.processes import run_cli


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A database with a finished train run, an inference run made from it and a running curriculum."""
    s = Store(tmp_path / "experiments.db")
    ds = s.register_dataset(tmp_path / "data", name="demo", classes=["a", "b"], n_curated=4)
    job = s.enqueue("train", {"train": {"epochs": 1}}, name="base")
    s.create_run("train-0001", kind="train", job_id=job, dataset_id=ds, name="base", model="cnn14",
                 config={"train": {"epochs": 1}}, seed=7, run_dir=str(tmp_path / "runs" / "train-0001"))
    s.record_fold("train-0001", 0, lwlrap=0.7, best_epoch=1, n_val=2)
    s.finish_run("train-0001", cv_lwlrap=0.7)
    s.create_run("infer-0002", kind="infer", dataset_id=ds, parent_run_id="train-0001",
                 run_dir=str(tmp_path / "runs" / "infer-0002"))
    s.finish_run("infer-0002", cv_lwlrap=0.72)
    s.create_run("curriculum-0003", kind="curriculum", dataset_id=ds, parent_run_id="train-0001")
    s.set_run_tags("train-0001", ["best"])
    return s


def test_every_run_row_is_keyed_run_id_never_id(store: Store):
    rows = {
        "get_run": [store.get_run("train-0001")],
        "list_runs": store.list_runs(),
        "child_runs": store.child_runs("train-0001"),
        "page_runs": store.page_runs(archived=None),
        "run_rows": store.run_rows(["infer-0002", "train-0001"]),
        "infer_runs_of": store.infer_runs_of("train-0001"),
        "blendable_runs": store.blendable_runs(),
    }
    for source, found in rows.items():
        assert found, source
        for row in found:
            assert "id" not in row and isinstance(row["run_id"], str), (source, row)
    assert [r["run_id"] for r in rows["run_rows"]] == ["infer-0002", "train-0001"]
    assert {r["run_id"] for r in rows["child_runs"]} == {"infer-0002", "curriculum-0003"}
    assert [r["run_id"] for r in rows["blendable_runs"]] == ["infer-0002", "train-0001"]


def test_run_rows_hold_the_keys_their_types_name(store: Store):
    run = store.get_run("train-0001")
    assert run is not None
    assert set(run) == set(get_type_hints(RunRow))
    assert run["config"] == {"train": {"epochs": 1}} and isinstance(run["versions"], dict)
    assert (run["run_id"], run["kind"], run["model"], run["seed"], run["cv_lwlrap"]) == (
        "train-0001", "train", "cnn14", 7, pytest.approx(0.7))
    required = RunSummary.__required_keys__
    for row in store.page_runs(archived=None) + store.list_runs() + store.blendable_runs():
        assert required <= set(row) <= set(get_type_hints(RunSummary)), sorted(set(row) ^ required)
    (summary,) = store.run_rows(["train-0001"])
    assert (summary["folds_done"], summary["tags"], summary["dataset"]) == (1, "best", "demo")


def test_fsat_show_json_gives_the_run_keyed_run_id(store: Store):
    out = json.loads(run_cli("show", "train-0001", "--json", db=store.path).stdout)
    assert out["run"]["run_id"] == "train-0001" and "id" not in out["run"]


def test_a_pinned_clock_reaches_every_part_of_the_store(store: Store, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(engine.store, "_now", lambda: 1234.5)
    job = store.enqueue("probe", {}, priority=1)  # ahead of the fixture's queued train job
    claimed = store.claim("w1")
    store.register_worker("w2")
    store.create_run("probe-0004", kind="probe", job_id=job)
    store.finish_run("probe-0004")
    assert claimed is not None and claimed.id == job
    assert (claimed.created_at, claimed.started_at, claimed.heartbeat_at) == (1234.5, 1234.5, 1234.5)
    run = store.get_run("probe-0004")
    assert run is not None and (run["created_at"], run["finished_at"]) == (1234.5, 1234.5)
    assert [w["heartbeat_at"] for w in store.live_workers(max_age=1e12) if w["id"] == "w2"] == [1234.5]


def test_migrations_are_written_in_the_order_they_run():
    # One place, read top to bottom: step N's function comes before step N+1's.
    lines = [fn.__code__.co_firstlineno for _version, _what, fn in MIGRATIONS]
    assert lines == sorted(lines)
    assert {fn.__module__ for _version, _what, fn in MIGRATIONS} == {"engine.store.schema"}
