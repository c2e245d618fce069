"""Run one job in this process: ``python -m engine.jobs --db DB --job ID --worker W``.

Started by the worker (``engine.worker``), one process per job, so a crash
or out-of-memory kill here never takes the worker down. The outcome is
recorded here when the job ends normally or with an error; the worker
records it when this process dies.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import traceback
from pathlib import Path

from engine.errors import FsatError
from engine.jobs.context import JobAborted, JobContext
from engine.store import Store

#: job kind -> module with ``run(ctx) -> str | None``
JOB_MODULES = {
    "train": "engine.jobs.train",
    "probe": "engine.jobs.probe",
    "infer": "engine.jobs.infer",
    "baseline": "engine.jobs.baseline",
    "ensemble": "engine.jobs.ensemble",
    "curriculum": "engine.jobs.curriculum",
}


def _terminate(*_: object) -> None:
    raise JobAborted("terminated")


def main(argv: list[str] | None = None) -> int:
    """Run the job; exit 0 done, 2 failed with a recorded error, 3 aborted."""
    ap = argparse.ArgumentParser(prog="python -m engine.jobs")
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--job", type=int, required=True)
    ap.add_argument("--worker", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--run-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    store = Store(args.db)
    job = store.get_job(args.job)
    ctx = JobContext(store=store, job=job, worker_id=args.worker, run_id=args.run_id, run_dir=args.run_dir)
    try:
        ctx.check(every=0)
        module = JOB_MODULES.get(job.kind)
        if module is None:
            raise FsatError(f"job kind {job.kind!r} is not supported by this worker")
        try:
            runner = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name == module:
                raise FsatError(f"job kind {job.kind!r} is not available in this version") from None
            raise
        message = runner.run(ctx) or "done"
        store.finish_job(job.id, message=message)
        ctx.log(f"job {job.id} done: {message}")
        return 0
    except JobAborted as err:
        ctx.log(f"job {job.id} stopped: {err}")
        return 3
    except FsatError as err:
        # A user-caused error: the message names the file, row or field.
        store.fail_job(job.id, str(err), traceback.format_exc())
        ctx.log(f"job {job.id} failed: {err}")
        return 2
    except BaseException as err:  # noqa: BLE001 - every failure is recorded with its traceback
        store.fail_job(job.id, f"{type(err).__name__}: {err}", traceback.format_exc())
        ctx.log(f"job {job.id} failed:\n{traceback.format_exc()}")
        return 2
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
