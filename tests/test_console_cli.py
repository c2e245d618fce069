"""``fsat runs`` / ``jobs`` / ``compare`` listings: every row reachable, cut listings said so, plain full values."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from rich.console import Console

from engine import cli
from engine.store import OOF, Store
from tests.helpers.processes import run_cli
from tests.helpers.recording import record_run


def many_runs(db: Path, n: int) -> Store:
    """``n`` finished training runs recorded as the train job records them; CV LWLRAP rises with the run number."""
    store = Store(db)
    for i in range(1, n + 1):
        record_run(store, db.parent / "runs", f"train-{i:04d}", dataset_id=None, name=f"ensemble candidate {i}",
                   cv=i / (n + 1))
    return store


def test_runs_json_gives_every_run_and_a_table_says_when_it_is_cut(db_path: Path) -> None:
    many_runs(db_path, 1005).close()
    out = run_cli("runs", "--json", db=db_path)
    rows = json.loads(out.stdout)
    assert len(rows) == 1005
    assert out.stderr == ""
    out = run_cli("runs", db=db_path)  # piped: plain text, 100 rows, and a line on stderr saying so
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 + 100
    assert "showing 100 of 1005 runs" in out.stderr and "--all" in out.stderr
    assert len(run_cli("runs", "--all", db=db_path).stdout.strip().splitlines()) == 1 + 1005
    assert len(json.loads(run_cli("runs", "--json", "--limit", "7", db=db_path).stdout)) == 7
    # Sorted in SQL: the ten best of all 1005, not of the newest 100.
    best = json.loads(run_cli("runs", "--json", "--sort", "cv", "--limit", "10", db=db_path).stdout)
    assert [r["run_id"] for r in best] == [f"train-{i:04d}" for i in range(1005, 995, -1)]
    # A filter.
    rows = json.loads(run_cli("runs", "cv>0.99", "--json", db=db_path).stdout)
    assert {r["run_id"] for r in rows} == {f"train-{i:04d}" for i in range(996, 1006)}


def test_piped_listing_keeps_full_values_and_csv_parses(db_path: Path) -> None:
    store = many_runs(db_path, 3)
    record_run(store, db_path.parent / "runs", "ensemble-0042", kind="ensemble", dataset_id=None,
               name="rank blend of 3 with a long name", status="running",
               overrides=('members=["train-0001", "train-0002", "train-0003"]',))
    store.close()
    out = run_cli("runs", db=db_path)
    assert "ensemble-0042" in out.stdout and "rank blend of 3 with a long name" in out.stdout
    assert "…" not in out.stdout
    rows = list(csv.DictReader(io.StringIO(run_cli("runs", "--csv", db=db_path).stdout)))
    assert [r["run_id"] for r in rows][0] == "ensemble-0042"
    assert rows[-1]["cv_lwlrap"] == "0.2500" and rows[0]["cv_lwlrap"] == ""


def test_an_80_column_terminal_keeps_ids_kinds_and_states_whole() -> None:
    rows = [{"run_id": f"ensemble-{i:04d}", "kind": "ensemble", "name": "a rather long run name " * 3,
             "model": "blend", "status": "running", "folds_done": 5, "cv_lwlrap": 0.81234,
             "mean_fold_lwlrap": 0.8, "test_lwlrap": None, "tags": "best", "created": "2026-11-30 10:00:00"}
            for i in range(3)]
    console = Console(width=80, file=io.StringIO(), force_terminal=True, color_system=None)
    console.print(cli._table("runs", rows, ["run_id", "kind", "name", "status", "cv_lwlrap"], width=80))
    text = console.file.getvalue()
    for word in ("ensemble-0000", "ensemble-0002", "running", "0.8123"):
        assert word in text, text
    assert "ense…" not in text and "trai…" not in text


def test_jobs_listing_is_cut_visibly_and_filters(db_path: Path) -> None:
    store = Store(db_path)
    for i in range(120):
        store.enqueue("probe", {"seconds": 0.1}, name=f"probe {i}")
    store.request_cancel(3)
    store.close()
    out = run_cli("jobs", db=db_path)
    assert "showing 100 of 120 jobs" in out.stderr
    assert len(json.loads(run_cli("jobs", "--json", db=db_path).stdout)) == 120
    cancelled = json.loads(run_cli("jobs", "status:cancelled", "--json", db=db_path).stdout)
    assert [j["id"] for j in cancelled] == [3]
    bad = run_cli("jobs", "stauts:done", db=db_path, check=False)
    assert bad.returncode == 2 and "unknown field 'stauts'" in bad.stderr


def test_compare_markdown_and_csv(db_path: Path) -> None:
    from engine.data.labels import FSD2019_CLASSES
    from tests.helpers.datasets import multi_hot_truth
    from tests.helpers.recording import tagger_scores

    store = Store(db_path)
    truth = multi_hot_truth(160, len(FSD2019_CLASSES), seed=3)
    folds = np.arange(160) % 2
    ds = store.register_dataset(db_path.parent / "data", name="demo", classes=FSD2019_CLASSES, n_curated=160)
    first = tagger_scores(truth, 0.6, seed=1)
    first[folds == 1] = np.nan  # only fold 0 trained: classes without a positive in it have no LRAP
    for run_id, oof, epochs in (("train-0001", first, 10), ("train-0002", tagger_scores(truth, 0.8, seed=2), 20)):
        record_run(store, db_path.parent / "runs", run_id, dataset_id=ds, oof=oof, truth=truth, folds=folds,
                   overrides=(f"train.epochs={epochs}",))
    lrap = {r: {c["class_name"]: c["lrap"] for c in store.class_scores(r, OOF)} for r in ("train-0001", "train-0002")}
    fold_mean = {r: [f["lwlrap"] for f in store.fold_scores(r)] for r in ("train-0001", "train-0002")}
    # The weight column is the baseline's (the first run's) class weight.
    weight = {c["class_name"]: c["weight"] for c in store.class_scores("train-0001", OOF)}
    missing = sorted(c for c, v in lrap["train-0001"].items() if v is None)
    assert missing, "fold 0 should leave some class without a positive"
    store.close()
    md = run_cli("compare", "train-0001", "train-0002", "--markdown", db=db_path).stdout
    assert "| train.epochs | 10 | 20 |" in md
    assert "train.seed" not in md  # only what differs
    assert f"| {fold_mean['train-0001'][0]:.4f} | 1 |" in md  # one fold: no spread
    second = fold_mean["train-0002"]
    assert f"{np.mean(second):.4f} ± {np.std(second, ddof=1):.4f}" in md
    for k, name in enumerate(FSD2019_CLASSES[:3]):
        a, b = lrap["train-0001"][name], lrap["train-0002"][name]
        if a is not None:
            assert f"| {k} | {name} | {a:.4f} | {b:.4f} | {b - a:+.4f} | {weight[name]:.4f} |" in md, md
    rows = list(csv.DictReader(io.StringIO(run_cli("compare", "train-0001", "train-0002", "--csv",
                                                   "--baseline", "train-0002", db=db_path).stdout)))
    by_class = {r[list(r)[1]]: r for r in rows}  # the columns: index, class name, ...
    name = next(c for c in FSD2019_CLASSES if lrap["train-0001"][c] is not None)
    delta = lrap["train-0001"][name] - lrap["train-0002"][name]
    assert by_class[name]["Δ train-0001 vs train-0002"] == f"{delta:.4f}"  # CSV: no plus sign
    assert by_class[missing[0]]["LRAP train-0001"] == "" and by_class[missing[0]]["Δ train-0001 vs train-0002"] == ""
    bad = run_cli("compare", "train-0001", "nope", db=db_path, check=False)
    assert bad.returncode == 2 and "no run 'nope'" in bad.stderr


def test_tag_note_archive_and_requeue_commands(db_path: Path) -> None:
    store = many_runs(db_path, 2)
    job = store.enqueue("probe", {}, name="p")
    store.request_cancel(job)
    store.close()
    assert run_cli("tag", "train-0001", "best", "paper", db=db_path).stdout.strip() == "train-0001: best paper"
    run_cli("tag", "train-0001", "--remove", "paper", db=db_path)
    run_cli("note", "train-0001", "the", "reference", db=db_path)
    rows = json.loads(run_cli("runs", "tag:best", "--json", db=db_path).stdout)
    assert [(r["run_id"], r["tags"], r["note"]) for r in rows] == [("train-0001", "best", "the reference")]
    run_cli("archive", "train-0002", db=db_path)
    assert [r["run_id"] for r in json.loads(run_cli("runs", "--json", db=db_path).stdout)] == ["train-0001"]
    archived = json.loads(run_cli("runs", "--archived", "only", "--json", db=db_path).stdout)
    assert [r["run_id"] for r in archived] == ["train-0002"]
    run_cli("requeue", str(job), db=db_path)
    assert Store(db_path).get_job(job).status == "queued"
    bad = run_cli("requeue", str(job), db=db_path, check=False)
    assert bad.returncode == 2 and "only failed or cancelled" in bad.stderr
