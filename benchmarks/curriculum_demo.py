"""Does the noisy-label curriculum help on the demo data? Teacher vs student vs weak noisy labels.

Runs, through the real CLI and worker on one fresh database, with the same
folds and seed:

1. ``teacher``: ``fsat queue train --preset demo`` (curated clips only);
2. ``noisy-weak``: the same train spec with ``loss.noisy_weight = 1.0`` (every
   noisy clip with its weak labels, weight 1);
3. ``student``: ``fsat queue curriculum TEACHER --preset demo_curriculum``;
4. ``continue-curated``: the same curriculum with every stage's noisy weight 0,
   i.e. the teacher trained for the same extra epochs on curated clips only
   (separates "more epochs" from "the filtered noisy clips").

Prints the out-of-fold and per-fold LWLRAP of each run, the filter's label
precision and recall against the demo's ``train_noisy_truth.csv``, and the
wall time of each job; ``--json`` writes them to a file as well.

    .venv/bin/python benchmarks/curriculum_demo.py --work /tmp/curriculum-bench --teacher-epochs 12
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def cli(db: Path, *args: str) -> str:
    """Run ``fsat`` and return its stdout."""
    env = dict(os.environ, PYTHONPATH=str(PROJECT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "engine.cli", "--db", str(db), *args], capture_output=True,
                         text=True, env=env, cwd=PROJECT)
    if out.returncode != 0:
        raise SystemExit(f"fsat {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def toml_inline(items: list[dict]) -> str:
    """A list of flat tables as a TOML inline array (what ``--set stages=...`` reads)."""
    return "[" + ", ".join("{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + "}" for d in items) + "]"


def drain(db: Path) -> None:
    """Run a worker until the queue is empty."""
    env = dict(os.environ, PYTHONPATH=str(PROJECT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-m", "engine.worker", "--db", str(db), "--drain"], check=True, env=env,
                   cwd=PROJECT, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the demo data, database and runs")
    ap.add_argument("--seed", type=int, default=0, help="demo data seed")
    ap.add_argument("--teacher-epochs", type=int, default=12)
    ap.add_argument("--set", action="append", default=[], help="extra override for both train runs")
    ap.add_argument("--curriculum-set", action="append", default=[], help="extra override for the curriculum")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    sys.path.insert(0, str(PROJECT))
    from engine.store import Store

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    root = work / "demo_data"
    if not (root / "sample_submission.csv").exists():
        cli(work / "unused.db", "demo-data", str(root), "--seed", str(args.seed))
    db = work / "experiments.db"
    os.environ["FSAT_RUNS"] = str(work / "runs")
    train_sets = ["--set", f"train.epochs={args.teacher_epochs}"] + [x for s in args.set for x in ("--set", s)]
    jobs = {"teacher": int(cli(db, "queue", "train", "--data", str(root), "--preset", "demo", "--name", "teacher",
                               *train_sets)),
            "noisy-weak": int(cli(db, "queue", "train", "--data", str(root), "--preset", "demo", "--name",
                                  "noisy-weak", *train_sets, "--set", "loss.noisy_weight=1.0"))}
    drain(db)
    store = Store(db)
    teacher = store.get_job(jobs["teacher"])
    if teacher.status != "done":
        raise SystemExit(f"teacher job failed: {teacher.error}")
    cur_sets = [x for s in args.curriculum_set for x in ("--set", s)]
    jobs["student"] = int(cli(db, "queue", "curriculum", teacher.run_id, "--preset", "demo_curriculum",
                              "--name", "student", *cur_sets))
    spec = json.loads(json.dumps(store.get_job(jobs["student"]).spec))
    zero = [{**s, "noisy_weight": 0.0} for s in spec["stages"]]
    jobs["continue-curated"] = int(cli(db, "queue", "curriculum", teacher.run_id, "--preset", "demo_curriculum",
                                       "--name", "continue-curated", *cur_sets,
                                       "--set", "stages=" + toml_inline(zero)))
    drain(db)

    results = {}
    for name, job_id in jobs.items():
        job = store.get_job(job_id)
        if job.status != "done":
            raise SystemExit(f"{name} job failed: {job.error}")
        run = store.get_run(job.run_id)
        results[name] = {"run_id": job.run_id, "cv_lwlrap": run["cv_lwlrap"],
                         "folds": {f["fold"]: f["lwlrap"] for f in store.fold_scores(job.run_id)},
                         "seconds": round(job.finished_at - job.started_at, 1)}
    audit = store.noisy_audit(results["student"]["run_id"])
    sums = {k: sum((r[k] or 0) * r["folds"] for r in audit) for k in ("n_labelled", "n_wrong", "n_kept", "n_added")}
    con = store.conn
    pooled = con.execute("SELECT SUM(n_final_right), SUM(n_final), SUM(n_true), SUM(n_labelled), SUM(n_wrong), "
                         "SUM(wrong_dropped), SUM(right_lost) FROM noisy_audit WHERE run_id=?",
                         (results["student"]["run_id"],)).fetchone()
    right, final, true, labelled, wrong, wrong_dropped, right_lost = pooled
    filt = {"weak_precision": (labelled - wrong) / labelled, "precision": right / final if final else None,
            "weak_recall": (labelled - wrong) / true, "recall": right / true,
            "wrong_dropped_share": wrong_dropped / wrong if wrong else None,
            "right_lost_share": right_lost / (labelled - wrong), "pooled_over_folds": True, **sums}
    swaps = store.swaps(results["student"]["run_id"])
    report = {"settings": {"demo_seed": args.seed, "teacher_epochs": args.teacher_epochs, "train_set": args.set,
                           "curriculum_set": args.curriculum_set, "threads": os.environ.get("OMP_NUM_THREADS", "all")},
              "runs": results, "filter": filt, "swaps": swaps}
    print(json.dumps(report, indent=2, default=str))
    print()
    print("| run | OOF lwlrap | " + " | ".join(f"fold {k}" for k in sorted(results["teacher"]["folds"])) + " | seconds |")
    print("|---|---|" + "---|" * len(results["teacher"]["folds"]) + "---|")
    for name, r in results.items():
        print(f"| {name} | {r['cv_lwlrap']:.4f} | " + " | ".join(f"{r['folds'][k]:.4f}" for k in sorted(r["folds"]))
              + f" | {r['seconds']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
