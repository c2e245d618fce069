"""The curriculum job end to end: a real teacher, real workers, the CLI, kills and bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.store import OOF, Store
from tests.helpers.processes import drain, run_cli
from tests.helpers.waiting import wait_for, wait_until

pytestmark = pytest.mark.slow

#: Stages small enough for the tests: one epoch each.
TINY_STAGES = '[{name = "A", epochs = 1, noisy_weight = 0.5}, {name = "B", epochs = 1, noisy_weight = 1.0}]'
#: The tiny teacher is weak (two epochs, probabilities far below 0.8): thresholds relative to its per-class maximum.
LOW_THRESHOLDS = ("--set", "filter.keep_threshold=0.5", "--set", "filter.pseudo_threshold=0.99",
                  "--set", "filter.threshold_mode=\"per_class\"")


@pytest.fixture(scope="module")
def teacher(tiny_demo: Path, tmp_path_factory) -> tuple[Path, str]:
    """A finished two-fold train run on the tiny demo data: (database, run id)."""
    db = tmp_path_factory.mktemp("curriculum") / "experiments.db"
    job = int(run_cli("queue", "train", "--data", str(tiny_demo), "--preset", "demo", "--set", "audio.crop_seconds=2.0",
                      "--set", "train.epochs=2", "--set", "train.folds=[0, 1]",
                      # Short epochs keep the module quick; the students inherit them from the teacher's spec.
                      "--set", "train.steps_per_epoch=3", db=db).stdout)
    drain(db)
    with Store(db) as store:
        j = store.get_job(job)
        assert j.status == "done", j.error
        return db, j.run_id


def _queue_curriculum(db: Path, teacher_id: str, *sets: str) -> int:
    # No loss swaps here (a test of their own has them): the weak tiny teacher's folds are easily missed.
    out = run_cli("queue", "curriculum", teacher_id, "--preset", "demo_curriculum", "--set", f"stages={TINY_STAGES}",
                  "--set", "swap_tolerance=1.0", *LOW_THRESHOLDS, *sets, db=db)
    return int(out.stdout)


def test_student_run_records_stages_scores_gain_and_audit(teacher, tiny_demo: Path):
    db, teacher_id = teacher
    job_id = _queue_curriculum(db, teacher_id)
    drain(db)
    store = Store(db)
    job = store.get_job(job_id)
    assert job.status == "done", job.error
    run = store.get_run(job.run_id)
    assert run["kind"] == "curriculum" and run["parent_run_id"] == teacher_id and run["status"] == "done"
    run_dir = Path(run["run_dir"])

    # Epochs carry their stage, numbered on across stages within a fold.
    epochs = store.epochs(job.run_id)
    assert [(e["fold"], e["epoch"], e["stage"]) for e in epochs] == [(0, 0, "A"), (0, 1, "B"), (1, 0, "A"), (1, 1, "B")]
    folds = store.fold_scores(job.run_id)
    assert [f["fold"] for f in folds] == [0, 1]
    for f in folds:
        # The fold's score is its best epoch's, whichever stage it came from.
        assert f["lwlrap"] == pytest.approx(max(e["val_lwlrap"] for e in epochs if e["fold"] == f["fold"]))
        assert (run_dir / f"fold{f['fold']}" / "best.pt").is_file()
    assert len(store.class_scores(job.run_id, OOF)) == 80

    # Gain over the teacher: per fold and overall, from the views.
    teacher_folds = {f["fold"]: f["lwlrap"] for f in store.fold_scores(teacher_id)}
    gain = {g["fold"]: g for g in store.curriculum_gain(job.run_id)}
    for f in folds:
        assert gain[f["fold"]]["gain"] == pytest.approx(f["lwlrap"] - teacher_folds[f["fold"]])
    assert gain[-1]["gain"] == pytest.approx(run["cv_lwlrap"] - store.get_run(teacher_id)["cv_lwlrap"])
    assert len(store.class_gain(job.run_id)) == 80

    # The audit: per fold and class in the store, per clip in noisy_labels.csv, checked against each other.
    with open(run_dir / "noisy_labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 80 and set(rows[0]) == {"fold", "fname", "labels", "kept", "added", "weight"}
    for fold in (0, 1):
        fold_rows = [r for r in rows if r["fold"] == str(fold)]
        kept_labels = sum(len(r["kept"].split(",")) for r in fold_rows if r["kept"])
        audit = store.noisy_audit(job.run_id, fold)
        assert sum(a["n_kept"] for a in audit) == kept_labels
        assert sum(a["n_labelled"] for a in audit) == sum(len(r["labels"].split(",")) for r in fold_rows)
        # Dropped clips weigh 0 and carry no label; kept ones weigh within [0.5, 1].
        for r in fold_rows:
            w = float(r["weight"])
            assert (w == 0) == (not r["kept"] and not r["added"])
            assert w == 0 or 0.5 <= w <= 1.0
    report = json.loads(run_cli("audit", job.run_id, "--json", db=db).stdout)
    assert report["truth_known"] and report["teacher_run_id"] == teacher_id
    shares = [a["share_dropped"] for a in report["audit"] if a["share_dropped"] is not None]
    assert shares == sorted(shares, reverse=True)
    # Precision/recall against the demo's truth, recomputed from the CSV.
    from engine.data.labels import parse_label_csv
    from engine.data.manifest import load_layout

    classes = load_layout(tiny_demo).classes
    fnames, truth = parse_label_csv(tiny_demo / "train_noisy_truth.csv", classes)
    truth_of = {f: {classes[k] for k in np.flatnonzero(truth[i])} for i, f in enumerate(fnames)}
    final = [(r["fname"], c) for r in rows for c in (r["kept"] + "," + r["added"]).split(",") if c]
    right = sum(c in truth_of[f] for f, c in final)
    pooled_precision = right / len(final)
    n_final = sum(r["n_final"] for k in (0, 1) for r in store.noisy_audit(job.run_id, k))
    n_final_right = sum(r["n_final_right"] for k in (0, 1) for r in store.noisy_audit(job.run_id, k))
    assert n_final == len(final) and n_final_right / n_final == pytest.approx(pooled_precision)
    text = run_cli("audit", job.run_id, db=db).stdout
    assert "student vs teacher" in text and "noisy-label audit" in text

    # Teacher predictions are cached in the teacher's folder, one file per fold...
    teacher_dir = Path(store.get_run(teacher_id)["run_dir"])
    assert sorted(p.name for p in (teacher_dir / "noisy_pred").iterdir()) == ["fold0_crops1.npz", "fold1_crops1.npz"]
    log = (run_dir / "job.log").read_text()
    assert "teacher fold 0 predicting" in log

    # ...so a second curriculum does not predict again; fold_mean says its CV is optimistic.
    second = _queue_curriculum(db, teacher_id, "--set", 'teacher.predictions="fold_mean"', "--set", "folds=[0]")
    drain(db)
    job2 = store.get_job(second)
    assert job2.status == "done", job2.error
    log2 = (Path(store.get_run(job2.run_id)["run_dir"]) / "job.log").read_text()
    assert "predicting" not in log2 and "noisy predictions read from" in log2
    assert "CV is optimistic" in log2

    # The student is inferable like a train run.
    infer = int(run_cli("queue", "infer", job.run_id, "--set", "infer.tta_crops=1", "--set", "infer.tta_crops_long=1",
                        db=db).stdout)
    drain(db)
    assert store.get_job(infer).status == "done", store.get_job(infer).error
    store.close()


async def test_console_queues_a_curriculum_and_shows_the_student(teacher):
    from textual.widgets import Input, Static

    from fsat_console.app import FsatConsole
    from fsat_console.screens.curriculum import CurriculumDialog, CurriculumView, StageChart
    from fsat_console.screens.run import RunScreen

    db, teacher_id = teacher
    store = Store(db)
    student_id = [r for r in store.list_runs() if r["kind"] == "curriculum"][-1]["run_id"]  # the first one
    n_jobs = len(store.list_jobs())
    app = FsatConsole(db, data_root=db.parent, poll_interval=0.1)
    async with app.run_test(size=(150, 50)) as pilot:
        await app.push_screen(RunScreen(teacher_id))
        await wait_until(pilot, lambda: app.screen.detail is not None, what="the teacher's screen")
        await pilot.press("u")
        await wait_until(pilot, lambda: isinstance(app.screen, CurriculumDialog), what="the curriculum dialog")
        dialog = app.screen
        assert dialog.query_one("#preset", Input).value == "demo_curriculum"  # a small-model teacher

        def error(field: str) -> str:
            return str(dialog.query_one(f"#{field}-error", Static).render())

        async def submit(**fields: str) -> None:
            for field, value in fields.items():
                dialog.query_one(f"#{field}", Input).value = value
            await pilot.pause(0.05)
            dialog.action_submit()
            await pilot.pause(0.1)

        await submit(keep="1.5")
        assert "[0, 1]" in error("keep") and not error("pseudo")
        await submit(keep="0.9", pseudo="0.5")
        assert "keep_threshold" in error("pseudo") and not error("keep")
        await submit(pseudo="0.99", stages="[]")
        assert "stage list is empty" in error("stages")
        await submit(stages='[{name = "A", epochs = 1, noisy_weight = 0.5}]')
        await wait_until(pilot, lambda: len(store.list_jobs()) == n_jobs + 1, what="the job to be queued")
        job = store.list_jobs()[0]
        assert job["kind"] == "curriculum" and job["status"] == "queued"
        queued = store.get_job(job["id"]).spec
        assert queued["teacher_run_id"] == teacher_id and queued["filter"]["keep_threshold"] == 0.9
        assert [s["epochs"] for s in queued["stages"]] == [1]
        store.request_cancel(job["id"])  # the later tests drain the queue

        # The student's screen: u opens its curriculum view.
        app.pop_screen()
        await app.push_screen(RunScreen(student_id))
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.detail is not None,
                         what="the student's screen")
        await pilot.press("u")
        await wait_until(pilot, lambda: isinstance(app.screen, CurriculumView) and app.screen.report is not None,
                         what="the curriculum view")
        view = app.screen
        gain = view.query_one("#class-gain")
        audit = view.query_one("#audit")
        await wait_until(pilot, lambda: gain.row_count == 80 and audit.row_count == 80, what="the tables")
        gains = {str(c["class_idx"]): c["gain"] for c in store.class_gain(student_id)}
        order = [k for k in gain.keys_in_order() if gains[k] is not None]
        assert [gains[k] for k in order] == sorted(gains[k] for k in order)[::-1]
        shares = {str(a["class_idx"]): a["share_dropped"] for a in store.noisy_audit(student_id)}
        ordered = [shares[k] for k in audit.keys_in_order() if shares[k] is not None]
        assert ordered == sorted(ordered, reverse=True)
        assert "precision/recall against the noisy truth" in str(audit.border_subtitle)
        summary = str(view.query_one("#curriculum-summary", Static).render())
        assert f"teacher {teacher_id}" in summary and "OOF" in summary
        # The chart: stage A starts at epoch 0, B at 1; the teacher's fold-0 score is the reference.
        from fsat_console.screens.curriculum import stage_starts

        fold0 = [e for e in view.epochs if e["fold"] == 0]
        assert stage_starts(fold0) == [(0, "A"), (1, "B")]
        assert view.teacher_folds[0] == pytest.approx(store.fold_scores(teacher_id)[0]["lwlrap"])
        assert isinstance(view.query_one(StageChart), StageChart)
    store.close()


def test_a_stage_far_below_the_teacher_is_rerun_with_the_fallback_loss(teacher):
    db, teacher_id = teacher
    # A learning rate this large wrecks the teacher's weights in one epoch, with any loss.
    wreck = '[{name = "A", epochs = 1, noisy_weight = 0.5, head_lr = 50.0, encoder_lr = 50.0}]'
    job_id = int(run_cli("queue", "curriculum", teacher_id, "--preset", "demo_curriculum", *LOW_THRESHOLDS,
                         "--set", f"stages={wreck}", "--set", "folds=[0]", "--set", "swap_tolerance=0.0", db=db).stdout)
    drain(db)
    store = Store(db)
    job = store.get_job(job_id)
    assert job.status == "done", job.error
    swaps = store.swaps(job.run_id)
    teacher_fold0 = store.fold_scores(teacher_id)[0]["lwlrap"]
    assert [(s["fold"], s["stage"], s["attempt"], s["loss_from"], s["loss_to"]) for s in swaps] == \
        [(0, "A", 1, "bce", "lsoft"), (0, "A", 2, "lsoft", "gce")]
    for s in swaps:
        assert s["teacher_lwlrap"] == pytest.approx(teacher_fold0) and s["stage_lwlrap"] < teacher_fold0
    assert [e["stage"] for e in store.epochs(job.run_id)] == ["A", "A/lsoft", "A/gce"]
    store.close()


def test_a_killed_curriculum_resumes_at_its_fold_stage_and_epoch(teacher, spawn_worker):
    db, teacher_id = teacher
    stages = '[{name = "A", epochs = 1, noisy_weight = 0.5}, {name = "B", epochs = 2, noisy_weight = 1.0}]'
    job_id = int(run_cli("queue", "curriculum", teacher_id, "--preset", "demo_curriculum", *LOW_THRESHOLDS,
                         "--set", f"stages={stages}", "--set", "patience=9", "--set", "swap_tolerance=1.0",
                         db=db).stdout)
    store = Store(db)
    first = spawn_worker(db, "--lease", "3")

    def stage_b_saved() -> bool:
        # An epoch is recorded, then its resume file saved: killed in between, the epoch runs again (and
        # replaces its row with the same values). Killed once stage B's first epoch has its resume file, the
        # resumed fold goes on after it. On a busy machine the save takes long enough to be hit, so wait for it.
        run_id = store.get_job(job_id).run_id
        if not run_id or not any(e["fold"] == 1 and e["stage"] == "B" for e in store.epochs(run_id)):
            return False
        return (Path(store.get_run(run_id)["run_dir"]) / "fold1" / "stage1-0" / "last.pt").exists()

    wait_for(stage_b_saved, timeout=600, what="fold 1 stage B to record an epoch and save its resume file")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    run_id = store.get_job(job_id).run_id
    before = {(e["fold"], e["epoch"], e["stage"]) for e in store.epochs(run_id)}
    fold0 = store.fold_scores(run_id)[0]["lwlrap"]
    assert spawn_worker(db, "--lease", "3", "--drain").wait(timeout=600) == 0
    job = store.get_job(job_id)
    assert job.status == "done" and job.attempts == 2, job.error
    log = (Path(store.get_run(run_id)["run_dir"]) / "job.log").read_text()
    assert "fold 0: already finished, kept" in log and "fold 1: resuming at stage 1" in log
    assert store.fold_scores(run_id)[0]["lwlrap"] == fold0
    # Fold 1's stage A ran once; its stage B did not start over.
    assert log.count("fold 1 [A] epoch 0:") == 1 and log.count("fold 1 [B] epoch 1:") == 1
    after = [(e["fold"], e["epoch"], e["stage"]) for e in store.epochs(run_id)]
    assert set(after) >= before
    assert after == [(0, 0, "A"), (0, 1, "B"), (0, 2, "B"), (1, 0, "A"), (1, 1, "B"), (1, 2, "B")]
    store.close()


def _refused(db: Path, *args: str) -> str:
    out = run_cli("queue", "curriculum", *args, db=db, check=False)
    assert out.returncode == 2, out.stdout
    return out.stderr


def test_bad_teachers_and_settings_are_refused_at_queue_time(teacher, tiny_demo: Path, tmp_path: Path):
    db, teacher_id = teacher
    store = Store(db)
    n_jobs = len(store.list_jobs())
    assert "teacher_run_id: no run 'train-9999'" in _refused(db, "train-9999", "--preset", "demo_curriculum")
    # An unfinished train run, and a run that is not a train run.
    store.create_run("train-0777", kind="train", dataset_id=store.get_run(teacher_id)["dataset_id"])
    assert "is running, not finished" in _refused(db, "train-0777", "--preset", "demo_curriculum")
    store.create_run("infer-0999", kind="infer", parent_run_id=teacher_id,
                     dataset_id=store.get_run(teacher_id)["dataset_id"])
    store.finish_run("infer-0999", cv_lwlrap=0.5)
    assert "is a infer run" in _refused(db, "infer-0999", "--preset", "demo_curriculum")
    # The dataset named is not the teacher's.
    other = tmp_path / "elsewhere"
    other.mkdir()
    for name in ("sample_submission.csv", "train_curated.csv"):  # a dataset root, but not the teacher's
        shutil.copyfile(tiny_demo / name, other / name)
    err = _refused(db, teacher_id, "--preset", "demo_curriculum", "--data", str(other))
    assert "data_root" in err and "trained on" in err
    # Spec fields.
    err = _refused(db, teacher_id, "--preset", "demo_curriculum", "--set", "filter.keep_threshold=1.2")
    assert "filter.keep_threshold" in err and "[0, 1]" in err
    err = _refused(db, teacher_id, "--preset", "demo_curriculum", "--set", "filter.pseudo_threshold=0.2")
    assert "filter.pseudo_threshold" in err and "keep_threshold" in err
    assert "stages: the stage list is empty" in _refused(db, teacher_id, "--preset", "demo_curriculum",
                                                        "--set", "stages=[]")
    assert "folds[0]" in _refused(db, teacher_id, "--preset", "demo_curriculum", "--set", "folds=[4]")
    # A missing teacher fold checkpoint.
    best = Path(store.get_run(teacher_id)["run_dir"]) / "fold1" / "best.pt"
    best.rename(best.with_suffix(".moved"))
    try:
        err = _refused(db, teacher_id, "--preset", "demo_curriculum")
        assert "fold checkpoint" in err and "fold1/best.pt is missing" in err
    finally:
        best.with_suffix(".moved").rename(best)
    # Nothing was queued by any of these.
    assert len(store.list_jobs()) == n_jobs
    store.close()


def test_teacher_without_a_noisy_set_is_refused(teacher, tiny_demo: Path, tmp_path: Path):
    from engine.curriculum import check_teacher
    from engine.specs import CurriculumSpec

    db, teacher_id = teacher
    root = tmp_path / "curated_only"
    shutil.copytree(tiny_demo, root, ignore=shutil.ignore_patterns(".fsat-cache", "train_noisy*"))
    store = Store(db)
    ds = store.register_dataset(root, name="curated_only", classes=["a"], n_curated=1)
    store.create_run("train-0888", kind="train", dataset_id=ds)
    store.finish_run("train-0888")
    with pytest.raises(ConfigError, match="has no noisy set") as err:
        check_teacher(store, CurriculumSpec(teacher_run_id="train-0888"))
    assert err.value.field == "teacher_run_id"
    store.close()


def test_every_clip_filtered_out_fails_with_per_class_counts_and_keeps_the_audit(teacher):
    db, teacher_id = teacher
    job_id = int(run_cli("queue", "curriculum", teacher_id, "--preset", "demo_curriculum", "--set",
                         "filter.keep_threshold=1.0", "--set", "filter.pseudo_threshold=1.0", "--set", "folds=[0]",
                         "--set", 'filter.threshold_mode="global"',
                         db=db).stdout)
    drain(db)
    store = Store(db)
    job = store.get_job(job_id)
    assert job.status == "failed"
    assert "filter.keep_threshold" in job.error and "every noisy clip was filtered out for fold 0" in job.error
    assert "->0" in job.error  # per-class "labelled->kept" counts
    # What was recorded before the failure stays: the audit and the per-clip file.
    assert sum(r["n_labelled"] for r in store.noisy_audit(job.run_id, 0)) > 0
    assert (Path(store.get_run(job.run_id)["run_dir"]) / "noisy_labels.csv").is_file()
    store.close()
