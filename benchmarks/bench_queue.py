"""The job queue on this machine: progress writes, and many jobs on several workers.

Two measurements, each in one run:

1. ``progress``: a job reporting progress on every step (as training does per
   optimiser step and decoding per clip), through the real ``JobContext`` on
   a real database file, with the throttle (today's ``JobContext``) and
   without it (``write_interval=0, log_interval=0``: one database write and
   one ``job.log`` line per call, as before). The two sides alternate,
   ``--rounds`` times each; each round runs ``--steps`` steps of
   ``--step-ms`` milliseconds of busy work. Database writes are counted with
   SQLite's statement trace, log lines from the captured output.
2. ``queue``: ``--jobs`` probe jobs (``seconds=0``, each appending one line
   to a marker file) drained by ``--workers`` real ``python -m
   engine.worker --drain`` processes while a reader lists the jobs in a
   loop, as the console does. It reports jobs per second, jobs run more than
   once (double runs), jobs never run or not ``done`` (lost), and
   "database is locked" errors in every process's output.

Usage::

    .venv/bin/python benchmarks/bench_queue.py progress --steps 2000 --step-ms 0 --rounds 3
    .venv/bin/python benchmarks/bench_queue.py progress --steps 400 --step-ms 10 --rounds 3
    .venv/bin/python benchmarks/bench_queue.py queue --jobs 1000 --workers 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from benchmarks.fair import figure  # noqa: E402
from engine.jobs.context import JobContext  # noqa: E402
from engine.store import JOB_STATES, Store  # noqa: E402


def _busy(ms: float) -> None:
    end = time.perf_counter() + ms / 1000.0
    while time.perf_counter() < end:
        pass


def _progress_round(db: Path, *, throttled: bool, steps: int, step_ms: float) -> dict:
    store = Store(db)
    job_id = store.enqueue("probe", {}, name="bench", max_queued=10**9)
    job = store.claim("bench-worker", lease_seconds=3600)
    ctx = JobContext(store=store, job=job, worker_id="bench-worker", run_id="bench", run_dir=db.parent)
    if not throttled:
        ctx.write_interval = 0.0
        ctx.log_interval = 0.0
    writes = 0

    def trace(sql: str) -> None:
        nonlocal writes
        if sql.startswith("UPDATE jobs SET progress"):
            writes += 1

    store.conn.set_trace_callback(trace)
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        for step in range(steps):
            _busy(step_ms)
            ctx.progress((step + 1) / steps, f"step {step + 1}/{steps}")
        ctx.flush()
    seconds = time.perf_counter() - start
    store.conn.set_trace_callback(None)
    final = store.get_job(job_id)
    assert final.progress == 1.0 and final.message == f"step {steps}/{steps}", "the last value must land"
    store.finish_job(job_id, worker_id="bench-worker", attempt=job.attempts)
    store.close()
    lines = sum(1 for ln in out.getvalue().splitlines() if "%" in ln)
    return {"seconds": seconds, "writes": writes, "lines": lines, "steps": steps}


def bench_progress(args: argparse.Namespace) -> None:
    """Throttled against unthrottled progress, alternating."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "experiments.db"
        results: dict[str, list[dict]] = {"unthrottled": [], "throttled": []}
        for _ in range(args.rounds):
            for name in ("unthrottled", "throttled"):
                results[name].append(_progress_round(db, throttled=name == "throttled", steps=args.steps,
                                                     step_ms=args.step_ms))
    print(f"progress: {args.steps} steps of {args.step_ms:g} ms, {args.rounds} rounds each, alternating")
    print("| side | steps/s | DB writes per round | per 1000 steps | writes/s | job.log lines per round "
          "| lines/min | overhead per step |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        secs = sum(r["seconds"] for r in rows)
        steps = sum(r["steps"] for r in rows)
        writes = sum(r["writes"] for r in rows)
        lines = sum(r["lines"] for r in rows)
        overhead = (secs / steps - args.step_ms / 1000.0) * 1e6
        print(f"| {name} | {steps / secs:.0f} | {writes / len(rows):.0f} | {writes / steps * 1000:.1f} | "
              f"{writes / secs:.1f} | {lines / len(rows):.0f} | {lines / secs * 60:.1f} | {overhead:.0f} us |")
        if name == "throttled" and args.step_ms > 0:
            figure("queue.throttled_writes_per_s", writes / secs)
    per_step = {name: sum(r["writes"] for r in rows) for name, rows in results.items()}
    if args.step_ms > 0:
        figure("queue.write_reduction", per_step["unthrottled"] / max(per_step["throttled"], 1))


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def bench_queue(args: argparse.Namespace) -> None:
    """Many probe jobs on several real workers, with a reader listing the queue meanwhile."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db = root / "experiments.db"
        marker = root / "marker.txt"
        with Store(db) as store:
            ids = [store.enqueue("probe", {"seconds": 0, "marker": str(marker)}, max_queued=args.jobs)
                   for _ in range(args.jobs)]
        stop = threading.Event()
        reads = Counter()

        def reader() -> None:
            with Store(db, readonly=True, timeout=30) as store:
                while not stop.is_set():
                    try:
                        store.list_jobs(limit=200)
                        store.count_jobs(*JOB_STATES)
                        reads["ok"] += 1
                    except Exception as err:  # noqa: BLE001 - counted and reported
                        reads["locked" if "locked" in str(err) else "error"] += 1
                    time.sleep(args.read_every)

        thread = threading.Thread(target=reader, daemon=True)
        logs = [root / f"worker-{i}.log" for i in range(args.workers)]
        start = time.perf_counter()
        thread.start()
        procs = []
        for log in logs:
            with open(log, "wb") as fh:
                procs.append(subprocess.Popen([sys.executable, "-m", "engine.worker", "--db", str(db), "--drain",
                                               "--poll", "0.2"], stdout=fh, stderr=subprocess.STDOUT,
                                              env=_env(), cwd=root))
        codes = [p.wait() for p in procs]
        seconds = time.perf_counter() - start
        stop.set()
        thread.join()
        ran = Counter(int(line.split()[0]) for line in marker.read_text().splitlines())
        with Store(db, readonly=True) as store:
            done = {j["id"] for j in store.list_jobs(status="done", limit=10**9)}
        texts = [log.read_text(errors="replace") for log in logs]
        texts += [p.read_text(errors="replace") for p in (root / "runs").rglob("job.log")]
        locked = sum(t.count("database is locked") for t in texts)
        double = sum(1 for n in ran.values() if n > 1)
        lost = sum(1 for i in ids if i not in ran or i not in done)
    print(f"queue: {args.jobs} probe jobs, {args.workers} workers, exit codes {codes}")
    print(f"  {seconds:.1f} s, {args.jobs / seconds:.2f} jobs/s; double runs {double}; lost jobs {lost}; "
          f"'database is locked' in worker/job output {locked}; reader: {reads['ok']} listings, "
          f"{reads['locked']} locked, {reads['error']} other errors")
    figure("queue.jobs_per_s", args.jobs / seconds)
    figure("queue.double_or_lost", double + lost)
    figure("queue.locked_errors", locked + reads["locked"])


def main() -> None:
    """Parse the command line and run one benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("progress", help="progress writes per second, throttled vs unthrottled")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--step-ms", type=float, default=0.0, help="busy work per step, milliseconds")
    p.add_argument("--rounds", type=int, default=3)
    p.set_defaults(func=bench_progress)
    p = sub.add_parser("queue", help="jobs per second, double runs, lost jobs, locked errors")
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--read-every", type=float, default=0.05, help="seconds between the reader's listings")
    p.set_defaults(func=bench_queue)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    args.func(args)


if __name__ == "__main__":
    main()
