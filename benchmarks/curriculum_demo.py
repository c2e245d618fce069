"""Does the noisy-label curriculum help on the demo data? Teacher vs student vs weak noisy labels.

Runs, through the real CLI and worker on one fresh database, with the same
folds and seed:

1. ``teacher``: ``fsat queue train --preset demo`` (curated clips only);
2. ``noisy-weak``: the same train spec with ``loss.noisy_weight = 1.0`` (every
   noisy clip with its weak labels, weight 1);
3. ``student``: ``fsat queue curriculum TEACHER --preset demo_curriculum``;
4. ``continue-curated``: the same curriculum with every stage's noisy weight 0,
   i.e. the teacher trained for the same extra epochs on curated clips only
   (separates "more epochs" from "the filtered noisy clips");
5. ``noisy-weak/student`` and ``noisy-weak/continue-curated``: the same two
   with the ``noisy-weak`` run as the teacher.

Rerun on the same ``--work`` folder, finished jobs are reused by name.

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


def resolve_stages(overrides: list[str]) -> list[dict]:
    """The stages of ``demo_curriculum`` with the benchmark's overrides."""
    from engine.specs import to_dict
    from engine.presets import resolve_spec

    spec = resolve_spec("curriculum", preset="demo_curriculum", overrides=["teacher_run_id=x", *overrides])
    return [to_dict(s) for s in spec.stages]


def filter_summary(store, run_id: str) -> dict:
    """The filter's label precision and recall against the truth, pooled over the run's folds."""
    row = store.conn.execute(
        "SELECT SUM(n_final_right), SUM(n_final), SUM(n_true), SUM(n_labelled), SUM(n_wrong), SUM(wrong_dropped), "
        "SUM(right_lost), SUM(n_added), SUM(added_right), COUNT(DISTINCT fold) FROM noisy_audit WHERE run_id=?",
        (run_id,)).fetchone()
    right, final, true, labelled, wrong, wrong_dropped, right_lost, added, added_right, folds = row
    return {"weak_precision": (labelled - wrong) / labelled, "weak_recall": (labelled - wrong) / true,
            "precision": right / final if final else None, "recall": right / true,
            "wrong_dropped_share": wrong_dropped / wrong if wrong else None,
            "right_lost_share": right_lost / (labelled - wrong),
            "labels_per_fold": {"weak": labelled / folds, "final": final / folds, "added": added / folds,
                                "added_right": added_right / folds}}


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
    cur_sets = [x for s in args.curriculum_set for x in ("--set", s)]
    store = Store(db)

    def queue(name: str, *argv: str) -> int:
        """Queue a job named ``name``, or reuse a finished one of that name (rerunning on the same --work)."""
        for job in store.list_jobs():
            if job["name"] == name and job["status"] in ("done", "queued", "running"):
                return int(job["id"])
        return int(cli(db, "queue", *argv, "--name", name))

    def finished_run(job_id: int) -> str:
        job = store.get_job(job_id)
        if job.status != "done":
            raise SystemExit(f"job {job_id} ({job.name}) did not finish: {job.status} {job.error or ''}")
        return str(job.run_id)

    jobs = {"teacher": queue("teacher", "train", "--data", str(root), "--preset", "demo", *train_sets),
            "noisy-weak": queue("noisy-weak", "train", "--data", str(root), "--preset", "demo", *train_sets,
                                "--set", "loss.noisy_weight=1.0")}
    drain(db)
    stages = resolve_stages(args.curriculum_set)
    zero = toml_inline([{**s, "noisy_weight": 0.0} for s in stages])
    # Each teacher gets a student and a control: the same stages with no noisy clip (noisy weight 0),
    # i.e. the teacher trained for the same extra epochs on curated clips only.
    for teacher_name, prefix in (("teacher", ""), ("noisy-weak", "noisy-weak/")):
        teacher_run = finished_run(jobs[teacher_name])
        jobs[f"{prefix}student"] = queue(f"{prefix}student", "curriculum", teacher_run, "--preset",
                                         "demo_curriculum", *cur_sets)
        jobs[f"{prefix}continue-curated"] = queue(f"{prefix}continue-curated", "curriculum", teacher_run, "--preset",
                                                  "demo_curriculum", *cur_sets, "--set", f"stages={zero}")
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
    filters, swaps = {}, {}
    for name in ("student", "noisy-weak/student"):
        run_id = results[name]["run_id"]
        filters[name] = filter_summary(store, run_id)
        swaps[name] = store.swaps(run_id)
    report = {"settings": {"demo_seed": args.seed, "teacher_epochs": args.teacher_epochs, "train_set": args.set,
                           "curriculum_set": args.curriculum_set, "threads": os.environ.get("OMP_NUM_THREADS", "all")},
              "runs": results, "filter": filters, "swaps": swaps}
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
