"""What the console shows of a curriculum: its teacher's predictions are not student folds, its epochs count
against its stages.

Before, a curriculum's job details showed every student fold ``done`` once
only the teacher's predictions for them were, and the run screen showed
``epoch 6/4``: the student's stored config is the teacher's train spec, whose
``train.epochs`` is not the curriculum's.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from engine.executors.base import FoldResources, LocalExecutor
from engine.jobs.context import JobContext
from engine.jobs.folds import dispatch_folds
from engine.presets import resolve_spec
from engine.specs import to_dict
from engine.store import Store
from fsat_console.app import FsatConsole
from tests.helpers.console import screen_text, table
from tests.helpers.recording import record_run, stream_epochs
from tests.helpers.waiting import wait_until


def predicted(task, recorder):
    """A fold task that ends at once (the teacher's predictions of one fold, for the record)."""
    return SimpleNamespace(fold=task.fold)


def curriculum_spec(teacher: str) -> dict:
    return to_dict(resolve_spec("curriculum", overrides=[f'teacher_run_id="{teacher}"']))


async def test_teacher_predictions_are_not_shown_as_student_folds_done(tmp_path: Path) -> None:
    db = tmp_path / "experiments.db"
    store = Store(db)
    job_id = store.enqueue("curriculum", curriculum_spec("train-0001"), name="curriculum")
    job = store.claim("w", lease_seconds=60)
    assert job is not None and job.id == job_id
    ctx = JobContext(store=store, job=job, worker_id="w", run_id=f"curriculum-{job_id:04d}", run_dir=tmp_path)
    tasks = [SimpleNamespace(fold=k) for k in (0, 1)]
    dispatch_folds(ctx, LocalExecutor(), tasks, predicted, predicted, lambda outcome: None,
                   resources=FoldResources(), n_folds=2, read=[], write=[], stage="teacher predictions")
    rows = store.fold_tasks(job_id)
    assert [(r["fold"], r["status"], r["message"]) for r in rows] == [(0, "done", "teacher predictions"),
                                                                      (1, "done", "teacher predictions")]
    store.close()
    app = FsatConsole(db, poll_interval=0.1)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_until(pilot, lambda: app.overview is not None, what="the main screen")
        app.open_job(job_id)
        await wait_until(pilot, lambda: "teacher predictions" in screen_text(app), what="the fold rows")
        lines = [line for line in screen_text(app).splitlines() if "done" in line and "teacher" in line]
        assert len(lines) == 2


async def test_a_curriculum_run_counts_its_epochs_against_its_stages(tmp_path: Path) -> None:
    db = tmp_path / "experiments.db"
    store = Store(db)
    spec = curriculum_spec("train-0001")
    stages = sum(s["epochs"] for s in spec["stages"])
    job_id = store.enqueue("curriculum", spec, name="curriculum")
    run_id = f"curriculum-{job_id:04d}"
    # The student's stored config is a train spec (4 epochs): the curriculum runs its stages' epochs.
    record_run(store, tmp_path / "runs", run_id, kind="curriculum", dataset_id=None, status="running",
               overrides=("train.epochs=4", "train.n_folds=2"), job_id=job_id)
    assert store.get_run(run_id)["config"]["train"]["epochs"] == 4 < stages
    stream_epochs(store, run_id, 0, [0.5 + 0.01 * e for e in range(6)])
    store.close()
    app = FsatConsole(db, poll_interval=0.1)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_until(pilot, lambda: app.overview is not None, what="the main screen")
        app.open_run(run_id)
        await wait_until(pilot, lambda: getattr(app.screen, "detail", None) is not None
                         and table(app, "folds").row_count > 0, what="the run's folds")
        folds = table(app, "folds")
        assert folds.get_cell("0", "epochs").plain == f"6/{stages}"
        assert "6/4" not in screen_text(app)
