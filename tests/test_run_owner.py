"""A run folder belongs to exactly one run of one database.

Two databases in one folder share ``runs/``: the second's ``train-0001`` must
never resume from, nor write over, the first's. Every database has an id
(``meta.database_id``); every run folder has a marker (``owner.json``: database
id, run id, config hash); the run prologue checks it before any write or
resume, and a fold's checkpoints carry the same ids.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.runs.folder import OWNER_FILE, FolderNotOwned, RunFolder, RunOwner
from engine.store import Store
from tests.helpers.processes import cli_cmd, drain, env_with_project, run_cli, worker_cmd

#: One fold, two short epochs of the demo preset.
TINY = ["--preset", "demo", "--set", "train.epochs=2", "--set", "train.patience=2", "--set", "train.folds=[0]",
        "--set", "audio.crop_seconds=1", "--set", "optim.warmup_epochs=0", "--set", "train.steps_per_epoch=3"]


def test_every_database_has_its_own_id_kept_across_opens_and_upgrades(tmp_path: Path):
    a, b = Store(tmp_path / "a.db"), Store(tmp_path / "b.db")
    assert a.database_id() and a.database_id() != b.database_id()
    first = a.database_id()
    a.close()
    assert Store(tmp_path / "a.db").database_id() == first
    assert Store(tmp_path / "a.db", readonly=True).database_id() == first
    # A database written before ids existed gets one when it is upgraded.
    old = Store(tmp_path / "old.db", schema_version=7)
    old.close()
    con = sqlite3.connect(tmp_path / "old.db")
    assert con.execute("SELECT value FROM meta WHERE key='database_id'").fetchone() is None
    con.close()
    assert len(Store(tmp_path / "old.db").database_id()) == 32


def test_a_new_folder_is_claimed_and_only_its_own_run_may_use_it(tmp_path: Path):
    folder = RunFolder(tmp_path / "runs" / "train-0001")
    mine = RunOwner(database_id="a" * 32, run_id="train-0001", database=str(tmp_path / "experiments.db"))
    folder.claim(mine)
    assert json.loads((folder.path / OWNER_FILE).read_text())["database_id"] == "a" * 32
    folder.claim(mine)  # the same run again (a resume) is fine
    folder.claim(RunOwner(database_id="a" * 32, run_id="train-0001", config_hash="c1"))  # the hash is filled in
    assert folder.owner().config_hash == "c1"

    other_db = RunOwner(database_id="b" * 32, run_id="train-0001", database=str(tmp_path / "experiment.db"))
    with pytest.raises(FolderNotOwned) as err:
        folder.claim(other_db)
    text = str(err.value)
    assert str(folder.path) in text and "a" * 32 in text and "b" * 32 in text
    assert "experiments.db" in text and "experiment.db" in text

    with pytest.raises(FolderNotOwned, match="train-0002"):
        folder.claim(RunOwner(database_id="a" * 32, run_id="train-0002"))
    with pytest.raises(FolderNotOwned, match=r"config hash c2.*c1|c1.*c2"):
        folder.claim(RunOwner(database_id="a" * 32, run_id="train-0001", config_hash="c2"))


def test_a_folder_without_marker_is_adopted_only_when_the_database_knows_that_run_there(tmp_path: Path):
    path = tmp_path / "runs" / "train-0001"
    (path / "fold0").mkdir(parents=True)
    np.save(path / "oof.npy", np.zeros(3))
    (path / "config.json").write_text(json.dumps({"run_id": "train-0001", "config_hash": "c1"}))
    owner = RunOwner(database_id="a" * 32, run_id="train-0001", config_hash="c1")
    # Another database, or one with no such run: the files are not this run's.
    with pytest.raises(FolderNotOwned, match="no marker"):
        RunFolder(path).claim(owner, known_run=None)
    with pytest.raises(FolderNotOwned, match="no marker"):
        RunFolder(path).claim(owner, known_run={"run_id": "train-0001", "run_dir": str(path), "config_hash": "c9"})
    assert not (path / OWNER_FILE).exists()
    # This database's row for the run, in this folder, with the same config: adopted.
    RunFolder(path).claim(owner, known_run={"run_id": "train-0001", "run_dir": str(path), "config_hash": "c1"})
    assert RunFolder(path).owner() == RunOwner(database_id="a" * 32, run_id="train-0001", config_hash="c1")
    # A folder holding only the worker's log is empty: claimed.
    lone = tmp_path / "runs" / "train-0002"
    lone.mkdir()
    (lone / "job.log").write_text("=== job 2 attempt 1 ===\n")
    RunFolder(lone).claim(RunOwner(database_id="a" * 32, run_id="train-0002"))


def _queue_tiny(db: Path, data: Path, *overrides: str) -> int:
    """Queue the tiny training job (with ``--set`` overrides); its job id."""
    return int(run_cli("queue", "train", "--data", str(data), *TINY,
                       *[arg for item in overrides for arg in ("--set", item)], db=db).stdout)


def _trained(db: Path, data: Path) -> tuple[Store, int]:
    """A tiny training job queued and run to its end; the store and the job id."""
    job = _queue_tiny(db, data)
    drain(db)
    store = Store(db)
    assert store.get_job(job).status == "done", store.get_job(job).error
    return store, job


@pytest.mark.slow
def test_a_second_database_beside_the_first_never_touches_its_runs(tiny_demo: Path, tmp_path: Path):
    store, job = _trained(tmp_path / "experiments.db", tiny_demo)
    run_dir = tmp_path / "runs" / f"train-{job:04d}"
    kept = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "job.log"}
    log_before = (run_dir / "job.log").read_bytes()

    # The typo: experiment.db beside experiments.db, a job of another config, the same run id.
    second = tmp_path / "experiment.db"
    other = _queue_tiny(second, tiny_demo, "train.seed=7")
    assert other == job
    drain(second)
    failed = Store(second).get_job(other)
    assert failed.status == "failed"
    assert str(run_dir) in failed.error and store.database_id() in failed.error
    assert Store(second).database_id() in failed.error
    # Not a byte of the first run changed, its log included.
    now = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "job.log"}
    assert now == kept
    assert (run_dir / "job.log").read_bytes() == log_before


@pytest.mark.slow
def test_a_resume_refuses_a_checkpoint_of_another_run(tiny_demo: Path, tmp_path: Path):
    db = tmp_path / "experiments.db"
    store, a = _trained(db, tiny_demo)
    # A fold checkpoint of run a, copied into run b's folder before b starts.
    b = _queue_tiny(db, tiny_demo, "train.seed=7")
    b_dir = tmp_path / "runs" / f"train-{b:04d}"
    RunFolder(b_dir).claim(RunOwner(database_id=store.database_id(), run_id=f"train-{b:04d}"))
    (b_dir / "fold0").mkdir(parents=True)
    a_last = tmp_path / "runs" / f"train-{a:04d}" / "fold0" / "last.pt"
    (b_dir / "fold0" / "last.pt").write_bytes(a_last.read_bytes())
    drain(db)
    job = store.get_job(b)
    assert job.status == "failed"
    assert f"train-{a:04d}" in job.error and f"train-{b:04d}" in job.error and "last.pt" in job.error


@pytest.mark.parametrize("program", ["worker", "cli"])
def test_a_new_database_beside_an_existing_one_is_announced(tmp_path: Path, program: str):
    Store(tmp_path / "experiments.db").close()
    typo = tmp_path / "experiment.db"
    if program == "worker":
        cmd = worker_cmd(typo, "--drain")
    else:
        cmd = cli_cmd("queue", "probe", db=typo)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env_with_project(), timeout=120, cwd=tmp_path)
    said = out.stdout + out.stderr
    assert "new database" in said and str(typo) in said and "experiments.db" in said, said
    # An existing database opens silently, and so is a first database created in an empty folder.
    again = subprocess.run(cmd, capture_output=True, text=True, env=env_with_project(), timeout=120, cwd=tmp_path)
    assert "new database" not in again.stdout + again.stderr
    alone = tmp_path / "alone"
    alone.mkdir()
    first = subprocess.run(worker_cmd(alone / "experiments.db", "--drain") if program == "worker" else
                           cli_cmd("queue", "probe", db=alone / "experiments.db"), capture_output=True, text=True,
                           env=env_with_project(), timeout=120, cwd=alone)
    assert first.returncode == 0 and "new database" not in first.stdout + first.stderr
