"""A job's progress: a new stage's message is written at once, whatever the throttle holds back."""

from __future__ import annotations

from pathlib import Path

from engine.jobs.context import JobContext
from engine.store import Store


def _context(db_path: Path) -> tuple[Store, JobContext]:
    store = Store(db_path)
    job_id = store.enqueue("probe", {})
    job = store.claim("w", lease_seconds=30)
    assert job is not None and job.id == job_id
    # An hour between writes: only the first call and a stage change can write within this test.
    ctx = JobContext(store=store, job=job, worker_id="w", run_id="probe-x", run_dir=db_path.parent,
                     write_interval=3600.0, log_interval=3600.0)
    return store, ctx


def test_a_new_stage_is_written_at_once_while_counts_within_a_stage_are_held_back(db_path: Path, capsys):
    store, ctx = _context(db_path)
    ctx.progress(0.0, "decoding train_curated 1/320")
    ctx.progress(0.05, "decoding train_curated 320/320")
    # Within one stage the throttle holds the count back (the first call wrote).
    assert store.get_job(ctx.job.id).message == "decoding train_curated 1/320"
    ctx.progress(0.07, "computing log-mel statistics")
    # The statistics pass runs for seconds without another call: its message must already be there.
    job = store.get_job(ctx.job.id)
    assert (job.message, job.progress) == ("computing log-mel statistics", 0.07)
    ctx.progress(0.08, "fold 0 step 1/50")
    assert store.get_job(ctx.job.id).message == "fold 0 step 1/50"
    ctx.progress(0.09, "fold 0 step 2/50")
    ctx.progress(0.10, "fold 1 step 1/50")
    assert store.get_job(ctx.job.id).message == "fold 0 step 1/50"  # same stage: throttled
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "%" in ln]
    assert [ln.split("% ", 1)[1] for ln in lines] == [
        "decoding train_curated 1/320", "computing log-mel statistics", "fold 0 step 1/50"]


def test_the_stage_is_the_message_before_its_first_number():
    from engine.jobs.context import progress_stage

    assert progress_stage("decoding train_curated 5/320") == progress_stage("decoding train_curated 320/320")
    assert progress_stage("decoding train_curated 5/320") != progress_stage("decoding train_noisy 5/320")
    assert progress_stage("computing log-mel statistics") == "computing log-mel statistics"
    assert progress_stage("fold 0 step 3/10 · fold 1 step 4/10") == "fold"
    assert progress_stage("") == ""
