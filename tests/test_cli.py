"""The ``fsat`` command line as a user runs it: real subprocesses on a real database."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import soundfile as sf

from engine.data.labels import FSD2019_CLASSES
from engine.store import Store
from tests.helpers.processes import run_cli
from tests.helpers.waiting import wait_for


def test_demo_data_writes_the_layout_and_reports_it(tmp_path: Path):
    root = tmp_path / "demo"
    out = run_cli("demo-data", str(root), "--seed", "3", "--clips-per-class", "1", "--json")
    summary = json.loads(out.stdout)
    curated = pd.read_csv(root / "train_curated.csv")
    assert summary["curated_clips"] == len(curated) >= 80
    sample = pd.read_csv(root / "sample_submission.csv")
    assert list(sample.columns[1:]) == list(FSD2019_CLASSES)
    info = sf.info(root / "train_curated" / curated.fname.iloc[0])
    assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16")
    # The same seed writes the same labels again.
    again = tmp_path / "again"
    run_cli("demo-data", str(again), "--seed", "3", "--clips-per-class", "1")
    pd.testing.assert_frame_equal(curated, pd.read_csv(again / "train_curated.csv"))


def test_demo_data_refuses_a_bad_size_with_a_clear_message(tmp_path: Path):
    out = run_cli("demo-data", str(tmp_path / "demo"), "--clips-per-class", "0", check=False)
    assert out.returncode != 0
    assert "clips_per_class" in out.stderr or "clips-per-class" in out.stderr
    assert "Traceback" not in out.stderr


def test_jobs_lists_queued_probes_and_cancel_stops_queued_and_running_ones(db_path: Path, spawn_worker):
    first = int(run_cli("queue", "probe", "--set", "seconds=60", "--name", "long", db=db_path).stdout)
    second = int(run_cli("queue", "probe", "--name", "later", db=db_path).stdout)
    listed = json.loads(run_cli("jobs", "--json", db=db_path).stdout)
    assert {(j["id"], j["name"], j["status"]) for j in listed} == {(first, "long", "queued"),
                                                                  (second, "later", "queued")}

    # A queued job is cancelled at once.
    out = run_cli("cancel", str(second), db=db_path)
    assert f"job {second}: cancelled" in out.stdout
    assert Store(db_path).get_job(second).status == "cancelled"

    # A running job is flagged, and its worker stops it within seconds.
    spawn_worker(db_path)
    store = Store(db_path)
    wait_for(lambda: store.get_job(first).progress > 0, timeout=60, what="the probe to report progress")
    out = run_cli("cancel", str(first), db=db_path)
    assert "cancel requested" in out.stdout
    # The worker stops it within seconds; the bound is generous because on a busy machine the job's process
    # may take long to end and its worker to record it.
    wait_for(lambda: store.get_job(first).status == "cancelled", timeout=180, what="the running probe to stop")
    running = json.loads(run_cli("jobs", "--status", "running", "--json", db=db_path).stdout)
    assert running == []


def test_cancel_of_an_unknown_job_names_it(db_path: Path):
    Store(db_path).close()
    out = run_cli("cancel", "99", db=db_path, check=False)
    assert out.returncode == 2
    assert "no job with id 99" in out.stderr and "Traceback" not in out.stderr


def test_infer_jobs_are_listed_under_the_run_they_infer(db_path: Path):
    with Store(db_path) as store:
        for run_id in ("train-0007", "train-0009"):
            store.create_run(run_id, kind="train")
            store.finish_run(run_id, status="done")
    run_cli("queue", "infer", "train-0007", "--preset", "tta", db=db_path)
    run_cli("queue", "infer", "train-0009", "--set", "infer.tta_crops=3", db=db_path)
    run_cli("queue", "infer", "train-0009", "--name", "mine", db=db_path)
    names = [j["name"] for j in json.loads(run_cli("jobs", "--json", db=db_path).stdout)]
    # The run, then the crops per clip (engine.intake's rule, the console's too).
    assert sorted(names) == ["mine", "train-0007 tta5", "train-0009 tta3"]


def test_db_may_follow_the_command_as_well_as_precede_it(tmp_path: Path):
    first, second = tmp_path / "a" / "experiments.db", tmp_path / "b" / "experiments.db"
    first.parent.mkdir()
    second.parent.mkdir()
    job = int(run_cli("queue", "probe", "--db", str(first)).stdout)
    assert [j["id"] for j in json.loads(run_cli("jobs", "--json", "--db", str(first)).stdout)] == [job]
    for _ in range(2):
        run_cli("queue", "probe", "--db", str(second))
    # After the command it wins over one before it; before it alone still works.
    assert len(json.loads(run_cli("--db", str(first), "jobs", "--json", "--db", str(second)).stdout)) == 2
    assert [j["id"] for j in json.loads(run_cli("jobs", "--json", db=first).stdout)] == [job]
    assert not (tmp_path / "experiments.db").exists()
