"""Run one job in this process: ``python -m engine.jobs --db DB --job ID --worker W --attempt N``.

Started by the worker (``engine.worker``), one process per job, so a crash
or out-of-memory kill here never takes the worker down. The outcome is
recorded here when the job ends normally or with an error, and only while
this attempt (worker id and attempt number) still owns the job; the worker
records it when this process dies. SIGTERM and SIGINT (Ctrl-C in the
worker's terminal reaches this process too) stop the job without recording
anything: the worker puts it back in the queue.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import traceback
from pathlib import Path

from engine.errors import FsatError
from engine.intake import KINDS
from engine.jobs.context import JobAborted, JobContext
from engine.runs.lineage import record_run_lineage
from engine.store import Store


def _terminate(signum: int, _frame: object) -> None:
    raise JobAborted("interrupted" if signum == signal.SIGINT else "terminated")


def main(argv: list[str] | None = None) -> int:
    """Run the job; exit 0 done, 2 failed with a recorded error, 3 aborted."""
    ap = argparse.ArgumentParser(prog="python -m engine.jobs")
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--job", type=int, required=True)
    ap.add_argument("--worker", required=True)
    ap.add_argument("--attempt", type=int, required=True, help="the attempt number the worker claimed")
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--run-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    try:
        store = Store(args.db)
        job = store.get_job(args.job)
    except FsatError as err:
        print(f"engine.jobs: error: {err}", file=sys.stderr, flush=True)
        return 2
    owner = {"worker_id": args.worker, "attempt": args.attempt}
    ctx = JobContext(store=store, job=job, worker_id=args.worker, attempt=args.attempt, run_id=args.run_id,
                     run_dir=args.run_dir)
    try:
        ctx.check(every=0)
        if job.kind not in KINDS:
            raise FsatError(f"job kind {job.kind!r} is not supported by this worker")
        module = KINDS[job.kind].module  # the module with ``run(ctx) -> str | None``
        try:
            runner = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name == module:
                raise FsatError(f"job kind {job.kind!r} is not available in this version") from None
            raise
        message = runner.run(ctx) or "done"
        record_run_lineage(store, ctx.run_id)
        ctx.flush()
        if not store.finish_job(job.id, message=message, **owner):
            raise JobAborted("the job is no longer this attempt's; its outcome is not recorded")
        ctx.log(f"job {job.id} done: {message}")
        return 0
    except JobAborted as err:
        ctx.log(f"job {job.id} stopped: {err}")
        return 3
    except FsatError as err:
        # A user-caused error: the message names the file, row or field.
        ctx.flush()
        store.fail_job(job.id, str(err), traceback.format_exc(), **owner)
        ctx.log(f"job {job.id} failed: {err}")
        return 2
    except BaseException as err:  # noqa: BLE001 - every failure is recorded with its traceback
        ctx.flush()
        store.fail_job(job.id, f"{type(err).__name__}: {err}", traceback.format_exc(), **owner)
        ctx.log(f"job {job.id} failed:\n{traceback.format_exc()}")
        return 2
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
