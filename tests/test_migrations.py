"""Schema migrations: ordered steps, tested on a database that the schema-1 release wrote."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from engine.errors import FsatError
from engine.store import DEFAULT_LEASE_SECONDS, MIGRATIONS, SCHEMA_VERSION, Store

from tests.helpers.processes import run_cli, run_read_only

V1_DUMP = Path(__file__).parent / "fixtures" / "experiments_v1.sql"


@pytest.fixture
def v1_db(tmp_path: Path) -> Path:
    """``experiments.db`` at schema 1, restored from the dump the schema-1 release's store wrote."""
    path = tmp_path / "experiments.db"
    con = sqlite3.connect(path)
    con.executescript(V1_DUMP.read_text())
    con.close()
    return path


def test_migration_versions_are_strictly_increasing():
    versions = [v for v, _what, _fn in MIGRATIONS]
    assert versions == sorted(set(versions))
    assert versions[0] == 1 and SCHEMA_VERSION == versions[-1]


def test_a_schema_1_database_upgrades_and_keeps_its_rows(v1_db: Path):
    con = sqlite3.connect(v1_db)
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "1"
    con.close()
    store = Store(v1_db)
    assert store.schema_version() == SCHEMA_VERSION
    jobs = {j["name"]: j for j in store.list_jobs()}
    assert jobs["demo"]["status"] == "done" and jobs["still queued"]["status"] == "queued"
    run = store.get_run("train-0001")
    assert run["cv_lwlrap"] == pytest.approx(0.7) and run["config"] == {"train": {"seed": 42}}
    assert [e["val_lwlrap"] for e in store.epochs("train-0001")] == [pytest.approx(0.6), pytest.approx(0.7)]
    assert [c["lrap"] for c in store.class_scores("train-0001")] == [pytest.approx(0.5), pytest.approx(1.0)]
    assert store.get_folds(1) == {"c0.wav": 0, "c1.wav": 0, "c2.wav": 1, "c3.wav": 1}
    # Step 4: folds stored before it were made by iterative stratification without groups.
    assert store.get_dataset(1)["fold_rule"] == "multilabel-stratified"
    assert [d["fold_rule"] for d in store.list_datasets()] == ["multilabel-stratified"]
    # Old runs carry no warning; an ensemble's scored methods can be recorded for them.
    assert store.get_run("train-0001")["warning"] is None
    store.set_run_warning("train-0001", "below its best member")
    assert store.get_run("train-0001")["warning"] == "below its best member"
    store.record_ensemble_candidates("train-0001", [
        {"method": "best", "oof_lwlrap": 0.7, "chosen": True},
        {"method": "geo_mean", "oof_lwlrap": None, "note": "needs probabilities"}])
    assert store.ensemble_candidates("train-0001") == [
        {"method": "best", "oof_lwlrap": pytest.approx(0.7), "raw_oof_lwlrap": None, "test_lwlrap": None,
         "chosen": 1, "note": ""},
        {"method": "geo_mean", "oof_lwlrap": None, "raw_oof_lwlrap": None, "test_lwlrap": None, "chosen": 0,
         "note": "needs probabilities"}]
    # Step 2: old jobs and workers get the lease every worker used before it was stored.
    assert {store.get_job(j["id"]).lease_seconds for j in jobs.values()} == {DEFAULT_LEASE_SECONDS}
    assert sqlite3.connect(v1_db).execute("SELECT id, lease_seconds FROM workers").fetchall() == \
        [("w1", DEFAULT_LEASE_SECONDS)]
    # The upgraded file still works as a queue, and a claim stores the claimer's lease.
    job = store.claim("w2", lease_seconds=7.5)
    assert job is not None and job.name == "still queued" and job.lease_seconds == 7.5
    store.close()
    # A second open finds nothing left to do.
    assert Store(v1_db).schema_version() == SCHEMA_VERSION


def test_step_3_gives_old_runs_their_parent_dataset_and_folder_in_run_summary(v1_db: Path):
    store = Store(v1_db)
    (row,) = [r for r in store.list_runs() if r["run_id"] == "train-0001"]
    assert row["parent_run_id"] is None and row["dataset_id"] == 1 and row["run_dir"] == "/runs/train-0001"
    assert row["cv_lwlrap"] == pytest.approx(0.7) and row["dataset"] is not None
    # A run made from the old one after the upgrade is found by the children query, not by a scan.
    store.create_run("infer-0002", kind="infer", dataset_id=1, parent_run_id="train-0001", run_dir="/runs/infer-0002")
    store.create_run("ensemble-0003", kind="ensemble", dataset_id=1, parent_run_id="train-0001")
    assert [r["run_id"] for r in store.child_runs("train-0001", kind="infer")] == ["infer-0002"]
    assert {r["run_id"] for r in store.child_runs("train-0001")} == {"infer-0002", "ensemble-0003"}
    assert store.child_runs("infer-0002") == []
    plan = " ".join(str(tuple(r)) for r in store.conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM runs WHERE parent_run_id=?", ("train-0001",)).fetchall())
    assert "runs_parent" in plan


def test_stopping_at_an_older_version_writes_that_version(tmp_path: Path):
    path = tmp_path / "experiments.db"
    store = Store(path, schema_version=1)
    assert store.schema_version() == 1
    store.close()
    assert Store(path).schema_version() == SCHEMA_VERSION


def test_a_newer_schema_is_refused_with_the_file_named(tmp_path: Path):
    path = tmp_path / "experiments.db"
    Store(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(FsatError, match=rf"schema version {SCHEMA_VERSION + 1} is newer"):
        Store(path)


def test_step_5_gives_old_epochs_no_stage_and_adds_the_curriculum_records(v1_db: Path):
    store = Store(v1_db)
    epochs = store.epochs("train-0001")
    assert epochs and all(e["stage"] is None for e in epochs)
    # The schema-1 train run is no curriculum: the gain and audit views are empty for it, not broken.
    assert store.curriculum_gain("train-0001") == [] and store.class_gain("train-0001") == []
    assert store.noisy_audit("train-0001") == []
    # A curriculum student of the old run records staged epochs, an audit and a swap.
    store.create_run("cur-1", kind="curriculum", parent_run_id="train-0001", dataset_id=1)
    store.record_epoch("cur-1", 0, 0, train_loss=1.0, val_loss=1.0, val_lwlrap=0.5, lr=1e-3, seconds=1.0, stage="A")
    store.record_fold("cur-1", 0, lwlrap=0.75, best_epoch=0, n_val=2)
    store.finish_run("cur-1", cv_lwlrap=0.8)
    store.record_noisy_audit("cur-1", 0, [{"class_idx": 0, "class_name": "a", "n_labelled": 4, "n_kept": 3,
                                           "n_dropped": 1, "n_added": 1, "n_final": 4, "mean_weight": 0.9}])
    store.record_swap("cur-1", 0, "A", 1, loss_from="bce", loss_to="lsoft", stage_lwlrap=0.5,
                      teacher_lwlrap=0.6, tolerance=0.01)
    assert [e["stage"] for e in store.epochs("cur-1")] == ["A"]
    teacher_fold0 = [f["lwlrap"] for f in store.fold_scores("train-0001") if f["fold"] == 0]
    gains = {g["fold"]: g["gain"] for g in store.curriculum_gain("cur-1")}
    assert gains[-1] == pytest.approx(0.8 - 0.7)
    if teacher_fold0:
        assert gains[0] == pytest.approx(0.75 - teacher_fold0[0])
    audit = store.noisy_audit("cur-1")
    assert audit[0]["share_dropped"] == pytest.approx(0.25) and audit[0]["precision"] is None
    assert store.swaps("cur-1")[0]["loss_to"] == "lsoft"


def test_step_6_gives_old_runs_no_tags_an_empty_note_and_not_archived(v1_db: Path):
    store = Store(v1_db)
    (row,) = store.run_rows(["train-0001"])
    assert (row["tags"], row["note"], row["archived"]) == (None, "", 0)
    # The old run is listed (not archived), and its new fields can be written and filtered on.
    assert "train-0001" in [r["run_id"] for r in store.page_runs(limit=None)]
    store.set_run_tags("train-0001", ["best"])
    store.set_run_note("train-0001", "first release")
    from engine.filters import compile_filter
    c = compile_filter("tag:best note:release")
    assert [r["run_id"] for r in store.page_runs(where=c.sql, params=c.params)] == ["train-0001"]
    # run_summary keeps its old columns and gains the new ones.
    summary = store._query("SELECT * FROM run_summary WHERE run_id = 'train-0001'")[0]
    assert summary["cv_lwlrap"] == pytest.approx(0.7) and summary["tags"] == "best"
    indexes = {r["name"] for r in store._query("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"runs_cv", "runs_model", "runs_status", "run_tags_tag", "runs_parent"} <= indexes


def test_step_7_gives_old_workers_the_local_executor_and_adds_fold_placements(v1_db: Path):
    store = Store(v1_db)
    (worker,) = store._query("SELECT id, executor, cluster FROM workers")
    assert (worker["id"], worker["executor"], worker["cluster"]) == ("w1", "local", None)
    store.set_worker_cluster("w1", "ray", {"nodes": 2, "gpus": 4.0, "gpus_free": 1.0})
    assert store._query("SELECT executor FROM workers")[0]["executor"] == "ray"
    job = store.claim("w1")
    job_id = job.id
    store.record_fold_task(job_id, job.attempts, 0, status="running", node="10.0.0.2 (gpu-a)", pid=42,
                           task_attempt=1)
    store.record_fold_task(job_id, job.attempts, 0, status="done")
    (row,) = store.fold_tasks(job_id)
    assert (row["fold"], row["status"], row["node"], row["pid"], row["task_attempt"]) == \
        (0, "done", "10.0.0.2 (gpu-a)", 42, 1)
    store.close()


def test_step_9_adds_sweeps_and_old_jobs_train_every_fold(tmp_path: Path):
    path = tmp_path / "experiments.db"
    old = Store(path, schema_version=8)
    job_id = old.enqueue("train", {"name": "before"})
    assert old.schema_version() == 8
    old.close()
    store = Store(path)
    assert store.schema_version() >= 9
    assert store.job_folds(job_id) is None and store.sweep_of_job(job_id) is None and store.list_sweeps() == []
    sweep_id = store.create_sweep(name="s", kind="train", preset="demo", base={}, axes={"grid": {}}, seeds=[1],
                                  points=[({"model.width": 8}, [(1, {"name": ""})])], screen_fold=0, keep=1)
    (run,) = store.sweep_runs(sweep_id)
    assert run["run_id"] == f"sweep-{sweep_id:04d}-p0-s1" and run["job_status"] == "queued"
    store.close()


def test_a_listing_of_a_schema_1_database_upgrades_it_first(v1_db: Path):
    out = run_cli("runs", "--json", db=v1_db)
    assert [r["run_id"] for r in json.loads(out.stdout)] == ["train-0001"]
    assert Store(v1_db, readonly=True).schema_version() == SCHEMA_VERSION


def test_a_read_only_schema_1_database_is_named_with_what_to_do(v1_db: Path):
    cmd = [sys.executable, "-m", "engine.cli", "--db", str(v1_db), "runs"]
    out = run_read_only(v1_db.parent, cmd)
    assert out.returncode == 2, out.stderr
    assert "schema version 1 is older" in out.stderr and "cannot be upgraded" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_step_8_adds_system_figures_to_epochs_of_a_schema_7_database(tmp_path: Path):
    # A database as schema 7 wrote it: an epoch recorded with the columns of that version.
    path = tmp_path / "experiments.db"
    old = Store(path, schema_version=7)
    old.create_run("train-0001", kind="train", name="old", model="small")
    with old.write() as c:
        c.execute("INSERT INTO epochs(run_id, fold, epoch, train_loss, val_loss, val_lwlrap, lr, seconds, "
                  "clips_per_sec, stage) VALUES ('train-0001', 0, 0, 1.0, 1.0, 0.5, 0.001, 3.0, 12.0, NULL)")
    assert "device" not in {r["name"] for r in old._query("PRAGMA table_info(epochs)")}
    old.close()
    store = Store(path)
    assert store.schema_version() == SCHEMA_VERSION >= 8
    (before,) = store.epochs("train-0001")
    assert (before["val_lwlrap"], before["clips_per_sec"]) == (0.5, 12.0)
    assert (before["device"], before["peak_gpu_mib"], before["gpu_util"], before["peak_rss_mib"]) == \
        (None, None, None, None)
    # An old run has no figures to show; a new epoch records them.
    assert store.latest_epoch_system(["train-0001"]) == {}
    store.record_epoch("train-0001", 0, 1, train_loss=0.9, val_loss=0.9, val_lwlrap=0.6, lr=1e-3, seconds=3.0,
                       device="NVIDIA A100-SXM4-40GB", peak_gpu_mib=9000.5, gpu_util=91.0, peak_rss_mib=3100.0)
    assert store.latest_epoch_system(["train-0001"]) == {"train-0001": {
        "device": "NVIDIA A100-SXM4-40GB", "peak_gpu_mib": 9000.5, "gpu_util": 91.0, "peak_rss_mib": 3100.0}}


def test_step_10_adds_job_dependencies_and_plans_to_a_database_of_the_version_before(tmp_path: Path):
    path = tmp_path / "experiments.db"
    before = max(v for v, _what, _fn in MIGRATIONS if v < 10)
    old = Store(path, schema_version=before)
    queued = old.enqueue("probe", {"seconds": 1})
    old.close()
    con = sqlite3.connect(path)
    assert not con.execute("SELECT 1 FROM sqlite_master WHERE name IN ('job_deps', 'plans', 'plan_steps')").fetchall()
    con.close()
    store = Store(path)
    assert store.schema_version() >= 10
    # A job queued before the step has no parents: it is claimed as before, and can be a parent.
    assert store.job_parents(queued) == [] and store.job_waits() == {}
    child = store.enqueue("probe", {}, after=(queued,))
    assert store.job_waits()[child]["state"] == "waiting"
    assert store.claim("w").id == queued and store.claim("w2") is None
    assert store.list_plans() == []
    store.close()
