"""The ensemble job: blends of real infer runs through a worker and in-process, and its errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.data.manifest import load_layout
from engine.ensemble import Member, blend
from engine.metrics import lwlrap
from engine.store import JOB_STATES, OOF, Store
from engine.submission import read_sample_submission, validate_submission
from tests.helpers.datasets import copy_dataset, file_digests
from tests.helpers.processes import drain, run_cli
from tests.helpers.worlds import InferredRuns, copy_db, inferred_runs

pytestmark = pytest.mark.slow


@dataclass
class Blends:
    """A private copy of the inferred runs' database with queued ensemble jobs run by a worker."""

    db: Path
    runs: InferredRuns
    good_job: int
    no_oof_job: int
    no_oof_run: str


def _fake_run(store: Store, run_id: str, run_dir: Path, dataset_id: int, *, oof: np.ndarray | None = None,
              test: np.ndarray | None = None, kind: str = "baseline") -> str:
    """A finished run with the given score files (written here, as a baseline job would)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if oof is not None:
        np.save(run_dir / "oof.npy", oof)
    if test is not None:
        np.save(run_dir / "test.npy", test)
    store.create_run(run_id, kind=kind, dataset_id=dataset_id, run_dir=str(run_dir))
    store.finish_run(run_id, status="done")
    return run_id


@pytest.fixture(scope="module")
def blends(tiny_demo: Path, tmp_path_factory) -> Blends:
    runs = inferred_runs(tiny_demo, tmp_path_factory)
    root = tmp_path_factory.mktemp("blends")
    db = copy_db(runs.db, root / "experiments.db")
    with Store(db) as store:
        dataset_id = store.get_run(runs.infer_ids[0])["dataset_id"]
        no_oof = _fake_run(store, "baseline-empty", root / "baseline-empty", dataset_id)
    i1, i2 = runs.infer_ids
    good = int(run_cli("ensemble", i1, i2, "--name", "two seeds", db=db).stdout)
    no_oof_job = int(run_cli("ensemble", i1, no_oof, db=db).stdout)
    drain(db, timeout=300)
    return Blends(db=db, runs=runs, good_job=good, no_oof_job=no_oof_job, no_oof_run=no_oof)


@pytest.fixture(scope="module")
def layout(tiny_demo: Path):
    return load_layout(tiny_demo)


def _test_rows(layout) -> list[int]:
    row = {f: i for i, f in enumerate(layout.test.fnames)}
    return [row[f] for f in layout.test_truth.fnames]


def test_queued_ensemble_blends_two_infer_runs_and_scores_its_submission(blends: Blends, layout):
    store = Store(blends.db)
    job = store.get_job(blends.good_job)
    assert job.status == "done", job.error
    run = store.get_run(job.run_id)
    assert run["kind"] == "ensemble" and run["status"] == "done" and run["name"] == "two seeds"
    run_dir = Path(run["run_dir"])
    truth = layout.curated.Y

    # Weights proportional to the members' out-of-fold LWLRAP.
    member_oof = {m: np.load(Path(store.get_run(m)["run_dir"]) / "oof.npy") for m in blends.runs.infer_ids}
    cv = {m: lwlrap(truth, o) for m, o in member_oof.items()}
    weights = {r["member_run_id"]: r["weight"] for r in store.run_members(run["run_id"])}
    assert set(weights) == set(blends.runs.infer_ids)
    for m in weights:
        assert weights[m] == pytest.approx(cv[m] / sum(cv.values()), abs=1e-12)

    # Recorded scores are those of the saved blend.
    oof = np.load(run_dir / "oof.npy")
    assert oof.shape == truth.shape and ((oof >= 0) & (oof <= 1)).all()
    assert run["cv_lwlrap"] == pytest.approx(lwlrap(truth, oof), abs=1e-12)
    assert len(store.class_scores(run["run_id"], OOF)) == 80
    fold_of = store.get_folds(run["dataset_id"])
    folds = np.array([fold_of[f] for f in layout.curated.fnames])
    recorded = store.fold_scores(run["run_id"])
    assert [r["fold"] for r in recorded] == [0, 1, 2, 3, 4]
    for r in recorded:
        assert r["lwlrap"] == pytest.approx(lwlrap(truth[folds == r["fold"]], oof[folds == r["fold"]]), abs=1e-12)

    # method = "auto": the recorded OOF blend is engine.ensemble.blend's choice, every fitted map
    # cross-fitted over the stored folds; every candidate's scores are recorded with the choice.
    members = [Member(m, member_oof[m], cv_lwlrap=cv[m]) for m in blends.runs.infer_ids]
    expected = blend(members, truth, folds=folds)
    np.testing.assert_allclose(oof, expected.oof, rtol=0, atol=1e-12)
    candidates = store.ensemble_candidates(run["run_id"])
    assert [c["method"] for c in candidates] == [c.method for c in expected.candidates]
    for c, e in zip(candidates, expected.candidates):
        assert c["oof_lwlrap"] == pytest.approx(e.oof_lwlrap, abs=1e-12)
        assert c["chosen"] == (e.method == expected.method)
        assert c["test_lwlrap"] is not None
    assert run["cv_lwlrap"] == pytest.approx(max(c["oof_lwlrap"] for c in candidates), abs=1e-12)
    assert run["cv_lwlrap"] >= max(cv.values()) and run["warning"] is None
    config = json.loads((run_dir / "config.json").read_text())
    assert config["method"] == expected.method and config["best_member_oof_lwlrap"] == pytest.approx(max(cv.values()))
    assert f"auto chose {expected.method}" in (run_dir / "job.log").read_text()

    # A valid submission, scored on the test truth, above the weaker member.
    test = np.load(run_dir / "test.npy")
    sample_fnames, classes = read_sample_submission(layout.sample_submission)
    df = pd.read_csv(run_dir / "submission.csv", dtype={"fname": str})
    validate_submission(df, sample_fnames, classes)
    np.testing.assert_array_equal(df[classes].to_numpy(), test)
    assert run["test_lwlrap"] == pytest.approx(lwlrap(layout.test_truth.Y, test[_test_rows(layout)]), abs=1e-12)
    member_tests = [store.get_run(m)["test_lwlrap"] for m in blends.runs.infer_ids]
    assert run["test_lwlrap"] > min(member_tests), (run["test_lwlrap"], member_tests)
    assert "test lwlrap" in job.message


def test_dry_run_prints_every_method_and_saves_nothing(blends: Blends, layout):
    store = Store(blends.db)
    i1, i2 = blends.runs.infer_ids
    runs_before, jobs_before = store.list_runs(limit=10000), len(store.list_jobs(limit=1000))
    files_before = sorted((blends.db.parent / "runs").rglob("*"))
    out = json.loads(run_cli("ensemble", i1, i2, "--dry-run", "--json", db=blends.db).stdout)
    text = " ".join(run_cli("ensemble", i1, i2, "--dry-run", db=blends.db).stdout.split())
    # Nothing saved: no run, no job, no file.
    assert store.list_runs(limit=10000) == runs_before and len(store.list_jobs(limit=1000)) == jobs_before
    assert sorted((blends.db.parent / "runs").rglob("*")) == files_before
    assert out["saved"] is False and out["cross_fitted"] is True
    # The same numbers as the saved blend of the same members.
    queued = store.get_run(store.get_job(blends.good_job).run_id)
    recorded = {c["method"]: c for c in store.ensemble_candidates(queued["run_id"])}
    assert [c["method"] for c in out["candidates"]] == list(recorded)
    for c in out["candidates"]:
        assert c["oof_lwlrap"] == pytest.approx(recorded[c["method"]]["oof_lwlrap"], abs=1e-12)
        assert c["test_lwlrap"] == pytest.approx(recorded[c["method"]]["test_lwlrap"], abs=1e-12)
        assert c["method"] in text
    assert out["oof_lwlrap"] == pytest.approx(queued["cv_lwlrap"], abs=1e-12)
    assert "nothing saved" in text and f"best member {out['best_member']}" in text
    # --dry-run and --now do not go together.
    both = run_cli("ensemble", i1, i2, "--dry-run", "--now", db=blends.db, check=False)
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_a_blend_below_its_best_member_carries_a_warning_and_auto_falls_back(blends: Blends, tmp_path: Path,
                                                                             layout):
    store = Store(blends.db)
    i1 = blends.runs.infer_ids[0]
    dataset_id = store.get_run(i1)["dataset_id"]
    rng = np.random.default_rng(5)
    junk = _fake_run(store, "baseline-junk", tmp_path / "junk", dataset_id,
                     oof=rng.random((len(layout.curated.fnames), 80)), test=rng.random((len(layout.test.fnames), 80)))
    best = store.get_run(i1)["cv_lwlrap"]
    proc = run_cli("ensemble", i1, junk, "--method", "mean", "--weights", "1", "9", "--now", db=blends.db)
    # The last line is "<run id>: <message>", after the blend's log.
    run_id = [line for line in proc.stdout.splitlines() if line.startswith("ensemble-now-")][-1].split(":")[0]
    run = store.get_run(run_id)
    assert run["cv_lwlrap"] < best
    assert run["warning"].startswith(f"the mean blend's cross-fitted OOF lwlrap {run['cv_lwlrap']:.4f} is below "
                                     f"its best member {i1} ({best:.4f})")
    printed = " ".join(proc.stdout.split())
    assert "warning:" in printed and "below its best member" in printed
    shown = " ".join(run_cli("show", run_id, db=blends.db).stdout.split())
    assert "warning:" in shown and "below its best member" in shown and "mean *" in shown
    # auto with the same weights keeps the better of blend and member: never below the best member.
    out = json.loads(run_cli("ensemble", i1, junk, "--weights", "1", "9", "--now", "--json", db=blends.db).stdout)
    assert out["cv_lwlrap"] >= best and store.get_run(out["run_id"])["warning"] is None


def test_now_records_the_same_blend_as_the_queued_job(blends: Blends):
    store = Store(blends.db)
    queued = store.get_run(store.get_job(blends.good_job).run_id)
    out = json.loads(run_cli("ensemble", *blends.runs.infer_ids, "--now", "--json", db=blends.db).stdout)
    now = store.get_run(out["run_id"])
    assert now["kind"] == "ensemble" and now["status"] == "done" and now["job_id"] is None
    assert now["cv_lwlrap"] == pytest.approx(queued["cv_lwlrap"], abs=1e-12)
    assert now["test_lwlrap"] == pytest.approx(queued["test_lwlrap"], abs=1e-12)
    assert out["cv_lwlrap"] == now["cv_lwlrap"] and out["submission"].endswith("submission.csv")
    assert store.run_members(now["run_id"]) == store.run_members(queued["run_id"])
    np.testing.assert_array_equal(np.load(Path(now["run_dir"]) / "test.npy"),
                                  np.load(Path(queued["run_dir"]) / "test.npy"))
    assert Path(now["run_dir"]).parent == blends.db.parent / "runs"
    assert len(store.class_scores(now["run_id"], OOF)) == 80 and len(store.fold_scores(now["run_id"])) == 5


def test_mean_blend_without_calibration_is_the_weighted_average(blends: Blends):
    store = Store(blends.db)
    i1, i2 = blends.runs.infer_ids
    out = json.loads(run_cli("ensemble", i1, i2, "--method", "mean", "--no-calibrate", "--weights", "1", "3",
                             "--now", "--json", db=blends.db).stdout)
    run_dir = Path(out["run_dir"])
    dirs = [Path(store.get_run(m)["run_dir"]) for m in (i1, i2)]
    for name in ("oof.npy", "test.npy"):
        a, b = (np.load(d / name) for d in dirs)
        np.testing.assert_allclose(np.load(run_dir / name), (a + 3 * b) / 4, rtol=1e-12)
    assert {r["member_run_id"]: r["weight"] for r in store.run_members(out["run_id"])} == {i1: 0.25, i2: 0.75}
    assert out["cv_lwlrap"] == pytest.approx(out["raw_cv_lwlrap"], abs=1e-12)
    assert [c["method"] for c in store.ensemble_candidates(out["run_id"])] == ["mean"]


def test_a_train_run_member_makes_an_oof_only_blend_without_submission(blends: Blends):
    store = Store(blends.db)
    train_id, infer_id = blends.runs.train_ids[0], blends.runs.infer_ids[1]
    out = json.loads(run_cli("ensemble", train_id, infer_id, "--now", "--json", db=blends.db).stdout)
    run = store.get_run(out["run_id"])
    assert run["status"] == "done" and run["cv_lwlrap"] is not None and run["test_lwlrap"] is None
    assert out["submission"] is None and "no submission" in out["message"] and train_id in out["message"]
    assert not (Path(out["run_dir"]) / "test.npy").exists()
    assert not (Path(out["run_dir"]) / "submission.csv").exists()


def test_greedy_selection_records_pick_weights(blends: Blends):
    store = Store(blends.db)
    members = [*blends.runs.infer_ids, blends.runs.train_ids[1]]
    proc = run_cli("ensemble", *members, "--greedy", "--greedy-steps", "4", "--now", "--json", db=blends.db)
    out = json.loads(proc.stdout)
    weights = {r["member_run_id"]: r["weight"] for r in store.run_members(out["run_id"])}
    assert set(weights) == set(members) and sum(weights.values()) == pytest.approx(1.0)
    # Each weight is the member's share of at most 4 picks.
    assert any(all(abs(w * n - round(w * n)) < 1e-9 for w in weights.values()) for n in range(1, 5)), weights
    assert "greedy selection" in proc.stderr


def test_queued_jobs_with_bad_members_fail_naming_the_member(blends: Blends):
    store = Store(blends.db)
    # A member that is not in the database is refused when queued, and nothing is queued.
    before = store.count_jobs(*JOB_STATES)
    out = run_cli("ensemble", blends.runs.infer_ids[0], "infer-9999", db=blends.db, check=False)
    assert out.returncode == 2 and "infer-9999" in out.stderr and "members" in out.stderr
    out = run_cli("queue", "ensemble", blends.runs.infer_ids[0], "infer-9999", db=blends.db, check=False)
    assert out.returncode == 2 and "infer-9999" in out.stderr and "members" in out.stderr
    assert store.count_jobs(*JOB_STATES) == before
    job = store.get_job(blends.no_oof_job)
    assert job.status == "failed" and blends.no_oof_run in job.error and "oof.npy" in job.error
    # Nothing was recorded for them: members are checked before the run is created.
    assert store.get_run(f"ensemble-{blends.no_oof_job:04d}") is None


def test_now_errors_name_the_member_and_leave_no_run(blends: Blends, tmp_path: Path, layout):
    store = Store(blends.db)
    dataset_id = store.get_run(blends.runs.infer_ids[0])["dataset_id"]
    n_curated, n_test = len(layout.curated.fnames), len(layout.test.fnames)
    rng = np.random.default_rng(0)
    short_oof = _fake_run(store, "baseline-short", tmp_path / "short", dataset_id,
                          oof=rng.random((n_curated - 1, 80)), test=rng.random((n_test, 80)))
    bad_test = _fake_run(store, "baseline-badtest", tmp_path / "badtest", dataset_id,
                         oof=rng.random((n_curated, 80)), test=rng.random((n_test, 79)))
    holes = rng.random((n_curated, 80))
    holes[7] = np.nan
    partial = _fake_run(store, "baseline-partial", tmp_path / "partial", dataset_id, oof=holes)
    before = len(store.list_runs())
    member = blends.runs.infer_ids[0]
    cases = [
        (["infer-9999"], ["infer-9999", "no run"]),
        ([blends.no_oof_run], [blends.no_oof_run, "oof.npy", "does not exist"]),
        ([short_oof], [short_oof, f"({n_curated - 1}, 80)", f"{n_curated} curated clips"]),
        ([bad_test], [bad_test, "test.npy", f"({n_test}, 79)"]),
        ([partial], [partial, "row 7"]),
        ([member], [member, "twice"]),
    ]
    for extra, words in cases:
        out = run_cli("ensemble", member, *extra, "--now", db=blends.db, check=False)
        assert out.returncode == 2, (extra, out.stdout, out.stderr)
        text = " ".join(out.stderr.split())
        for word in words:
            assert word in text, (word, text)
    assert len(store.list_runs()) == before
    out = run_cli("ensemble", member, "--weights", "1", "2", "--now", db=blends.db, check=False)
    assert out.returncode == 2 and "weights" in out.stderr


def test_submission_command_writes_a_valid_file_from_a_runs_test_scores(blends: Blends, tmp_path: Path, layout):
    store = Store(blends.db)
    run = store.get_run(store.get_job(blends.good_job).run_id)
    out = json.loads(run_cli("submission", run["run_id"], "--out", str(tmp_path / "sub.csv"), "--json",
                             db=blends.db).stdout)
    df = pd.read_csv(tmp_path / "sub.csv", dtype={"fname": str})
    sample_fnames, classes = read_sample_submission(layout.sample_submission)
    validate_submission(df, sample_fnames, classes)
    np.testing.assert_array_equal(df[classes].to_numpy(), np.load(Path(run["run_dir"]) / "test.npy"))
    assert out["test_lwlrap"] == pytest.approx(run["test_lwlrap"], abs=1e-12) and out["rows"] == len(sample_fnames)
    train_id = blends.runs.train_ids[0]
    bad = run_cli("submission", train_id, "--out", str(tmp_path / "x.csv"), db=blends.db, check=False)
    assert bad.returncode == 2 and train_id in bad.stderr and "infer it first" in bad.stderr
    assert not (tmp_path / "x.csv").exists()


def test_queue_ensemble_takes_members_as_arguments(blends: Blends):
    i1, i2 = blends.runs.infer_ids
    job_id = int(run_cli("queue", "ensemble", i1, i2, "--set", 'method="mean"', db=blends.db).stdout)
    store = Store(blends.db)
    job = store.get_job(job_id)
    assert job.kind == "ensemble" and job.spec["members"] == [i1, i2] and job.spec["method"] == "mean"
    store.request_cancel(job_id)
    out = run_cli("queue", "ensemble", i1, "--data", str(blends.runs.dataset), db=blends.db, check=False)
    assert out.returncode == 2 and "--data" in out.stderr


def test_blends_of_unusable_members_fail_naming_member_and_file_and_change_nothing(
        blends: Blends, tmp_path: Path, layout, spawn_worker):
    db = copy_db(blends.runs.db, tmp_path / "experiments.db")
    store = Store(db)
    i1, i2 = blends.runs.infer_ids
    dataset_id = store.get_run(i1)["dataset_id"]
    source_dirs = [Path(store.get_run(m)["run_dir"]) for m in (i1, i2)]

    def copied_member(run_id: str, *, dataset: int = dataset_id, status: str = "done") -> Path:
        """A run holding a copy of the second infer run's scores (the originals stay intact)."""
        run_dir = tmp_path / run_id
        shutil.copytree(source_dirs[1], run_dir)
        store.create_run(run_id, kind="infer", dataset_id=dataset, run_dir=str(run_dir))
        if status != "running":
            store.finish_run(run_id, status=status)
        return run_dir

    # The same scores, but recorded against another folder of the same clips: another dataset.
    other_root = copy_dataset(blends.runs.dataset, tmp_path / "other_demo")
    other_id = store.register_dataset(other_root, name="other_demo", classes=layout.classes,
                                      n_curated=len(layout.curated.fnames), n_test=len(layout.test.fnames))
    assert other_id != dataset_id
    copied_member("infer-other", dataset=other_id)
    # Test scores with a hole in them.
    nan_dir = copied_member("infer-nan")
    test = np.load(nan_dir / "test.npy")
    test[3, 5] = np.nan
    np.save(nan_dir / "test.npy", test)
    # A member still being inferred.
    copied_member("infer-running", status="running")

    dataset_root = store.get_dataset(dataset_id)["root"]
    cases = {
        "other dataset": ([i1, "infer-other"], [],
                          ["infer-other", i1, str(other_root.resolve()), dataset_root, "one dataset"]),
        "nan": ([i1, "infer-nan"], [], ["infer-nan", str(nan_dir / "test.npy"), "NaN", "infer it again"]),
        "unfinished": ([i1, "infer-running"], [], ["infer-running", "running", "not finished"]),
    }
    before = file_digests(*source_dirs, tmp_path / "infer-other", nan_dir, tmp_path / "infer-running")
    runs_before = {r["run_id"] for r in store.list_runs()}

    jobs = {name: int(run_cli("ensemble", *members, *extra, db=db).stdout)
            for name, (members, extra, _) in cases.items()}
    assert spawn_worker(db, "--drain").wait(timeout=300) == 0
    for name, (members, extra, words) in cases.items():
        job = store.get_job(jobs[name])
        assert job.status == "failed", (name, job.status, job.message)
        text = " ".join(job.error.split())
        for word in words:
            assert word in text, (name, word, text)
        assert "Traceback" not in job.error, (name, job.error)
        # Made in process, the same blend fails the same way and says so without a traceback.
        out = run_cli("ensemble", *members, *extra, "--now", db=db, check=False)
        assert out.returncode == 2, (name, out.stdout, out.stderr)
        text = " ".join(out.stderr.split())
        for word in words:
            assert word in text, (name, word, text)
        assert "Traceback" not in out.stderr, (name, out.stderr)

    # Greedy selection with explicit weights is refused before anything is queued or blended.
    jobs_before = len(store.list_jobs(limit=1000))
    for extra in ([], ["--now"]):
        out = run_cli("ensemble", i1, i2, "--greedy", "--weights", "1", "2", *extra, db=db, check=False)
        assert out.returncode == 2, (extra, out.stdout, out.stderr)
        text = " ".join(out.stderr.split())
        assert "greedy" in text and "weights" in text and "not both" in text and "Traceback" not in text
    assert len(store.list_jobs(limit=1000)) == jobs_before

    # Members are checked before anything is recorded: no run was made, no member's files changed.
    assert {r["run_id"] for r in store.list_runs()} == runs_before
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("oof.npy"))
    assert file_digests(*source_dirs, tmp_path / "infer-other", nan_dir, tmp_path / "infer-running") == before
    assert store.get_run("infer-running")["status"] == "running"
