"""Two folds of a train job: the local executor (one after another) against Ray (both at once).

Writes a small demo dataset, starts a local Ray head (``ray start --head
--block`` with ``--cpus`` CPUs), then runs the same train job (demo preset,
two folds) through a real worker, alternating the two sides ``--rounds``
times so that a change in machine load affects both alike:

- **local**: ``python -m engine.worker --drain`` — the folds train one after
  another in the job process, with every core (today's default);
- **ray**: ``python -m engine.worker --executor ray --ray-address …`` — each
  fold is a Ray task with ``cluster.cpus_per_fold`` CPUs, both at once.

The time of a side is the job's wall time in the queue (claimed to done), so
it includes what a user waits for: Ray connecting, its worker processes
starting and importing torch, the storage check. It also prints each side's
time from the log-mel statistics, just before the folds, to the out-of-fold score.

Usage::

    .venv/bin/python benchmarks/bench_ray.py --rounds 2 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from benchmarks.fair import figure  # noqa: E402


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(PROJECT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _cli(db: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "engine.cli", "--db", str(db), *args], capture_output=True,
                         text=True, env=_env(), check=True)
    return out.stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_side(side: str, work: Path, data: Path, address: str, args: argparse.Namespace, n: int) -> dict:
    """Queue the job in a fresh database, drain it with a worker of ``side``; the job's timings."""
    from engine.store import Store

    db = work / f"{side}-{n}" / "experiments.db"
    db.parent.mkdir(parents=True)
    job_id = int(_cli(db, "queue", "train", "--data", str(data), "--preset", "demo",
                      "--set", f"train.epochs={args.epochs}", "--set", f"train.patience={args.epochs}",
                      "--set", "train.folds=[0,1]", "--set", f"audio.crop_seconds={args.crop}",
                      "--set", f"cluster.cpus_per_fold={args.cpus // 2}", "--set", "cluster.gpus_per_fold=0"))
    cmd = [sys.executable, "-m", "engine.worker", "--db", str(db), "--drain", "--poll", "0.2"]
    if side == "ray":
        cmd += ["--executor", "ray", "--ray-address", address]
    with open(db.parent / "worker.log", "wb") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env()).returncode
    store = Store(db)
    job = store.get_job(job_id)
    if rc != 0 or job.status != "done":
        raise SystemExit(f"{side}: job {job_id} {job.status}: {job.error} (see {db.parent})")
    run = store.get_run(job.run_id)
    folds = {r["fold"]: r["lwlrap"] for r in store.fold_scores(job.run_id)}
    log_text = (Path(run["run_dir"]) / "job.log").read_text()
    store.close()
    return {"job_s": job.finished_at - job.started_at, "folds_s": _fold_seconds(log_text), "folds": folds}


def _fold_seconds(log: str) -> float:
    """Seconds from the log-mel statistics (just before the folds) to the out-of-fold line, by the job log's clock."""
    stamps = [(m.group(1), m.group(2)) for m in re.finditer(r"^(\d\d:\d\d:\d\d) (.*)$", log, re.M)]

    def seconds(hms: str) -> int:
        h, m, s = map(int, hms.split(":"))
        return h * 3600 + m * 60 + s

    start = next(seconds(t) for t, text in stamps if "computing log-mel statistics" in text)
    end = next(seconds(t) for t, text in stamps if text.startswith("out-of-fold lwlrap"))
    return float(end - start)


def main() -> int:
    """Run the comparison and print one line per run and the ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--crop", type=float, default=2.0)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray head (cluster.cpus_per_fold = half)")
    ap.add_argument("--clips-per-class", type=int, default=6)
    ap.add_argument("--niceness", type=int, default=0, help="RAY_worker_niceness of the node (Ray's default: 15)")
    args = ap.parse_args()

    from engine.data.demo import write_demo_dataset

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    data = work / "demo_data"
    write_demo_dataset(data, seed=1, clips_per_class=args.clips_per_class, noisy_per_class=1, test_per_class=1,
                       max_seconds=4.0)
    port = _free_port()
    # Ray runs its workers at nice 15 by default; on this machine, shared with other work, that
    # would measure the niceness, not the executor, so the node is started at the job's priority.
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}",
                             f"--num-cpus={args.cpus}", "--num-gpus=0", "--include-dashboard=false",
                             "--disable-usage-stats", "--block"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(_env(), RAY_worker_niceness=str(args.niceness)),
                            start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        time.sleep(8)
        # One untimed local job decodes the dataset into its waveform cache, which both sides reuse.
        run_side("local", work, data, address, argparse.Namespace(**{**vars(args), "epochs": 1}), -1)
        results: dict[str, list[dict]] = {"local": [], "ray": []}
        for n in range(args.rounds):
            for side in ("local", "ray") if n % 2 == 0 else ("ray", "local"):
                r = run_side(side, work, data, address, args, n)
                results[side].append(r)
                folds = ", ".join(f"{k}: {v:.4f}" for k, v in sorted(r["folds"].items()))
                print(f"round {n} {side:5s} job {r['job_s']:6.1f} s  folds {r['folds_s']:5.0f} s  lwlrap {folds}",
                      flush=True)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
    mean = {side: sum(r["job_s"] for r in rs) / len(rs) for side, rs in results.items()}
    fold_mean = {side: sum(r["folds_s"] for r in rs) / len(rs) for side, rs in results.items()}
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"job time   local {mean['local']:.1f} s, ray {mean['ray']:.1f} s: "
          f"speed-up x{mean['local'] / mean['ray']:.2f}")
    figure("ray.speed_vs_local", mean["local"] / mean["ray"])
    print(f"fold time  local {fold_mean['local']:.1f} s, ray {fold_mean['ray']:.1f} s: "
          f"speed-up x{fold_mean['local'] / max(fold_mean['ray'], 1e-9):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
