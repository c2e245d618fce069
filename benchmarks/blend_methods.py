"""Blend methods, the mel-statistics baseline and group-aware folds, measured on the demo data.

Three steps, each re-runnable:

    python benchmarks/blend_methods.py prepare --workdir W   # demo data + member runs (CPU minutes)
    python benchmarks/blend_methods.py methods --workdir W   # the method table (seconds)
    python benchmarks/blend_methods.py groups  --workdir W   # group-aware folds (about a minute)

``prepare`` writes the default demo dataset (seed 0) into ``W/demo_data`` and
trains the members through the real CLI and worker into ``W/experiments.db``:
three ``demo`` preset CNN runs (seeds 42, 2025 and 7; ``train.epochs``,
``train.patience`` and ``audio.crop_seconds`` from the flags, shorter than
the preset so the members train in minutes on a shared CPU), each inferred
with ``infer.tta_crops`` crops, and two ``baseline_melstats`` baselines (64
and 128 mel bins). ``methods`` loads their ``oof.npy`` / ``test.npy`` and scores every
method of ``engine.ensemble.blend`` on blends of 1, 2 and 5 members
(cross-fitted over the dataset's stored folds; test LWLRAP against
``test_ground_truth.csv``). ``groups`` writes a demo set whose curated clips
are cut in pairs from one recording (``--clips-per-source 2``), computes the
mel statistics once and fits the one-vs-rest logistic regression
(``engine.jobs.baseline.fit_one_vs_rest``) on group-blind and group-aware
folds, and reports OOF LWLRAP and stratification for both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CNN_MEMBERS = [  # (label, --set overrides of the demo preset)
    ("cnn seed 42", ["train.seed=42"]),
    ("cnn seed 2025", ["train.seed=2025"]),
    ("cnn seed 7", ["train.seed=7"]),
]
BASELINE_MEMBERS = [  # (label, --set overrides of the baseline_melstats preset)
    ("mel stats", []),
    ("mel stats 128", ["features.n_mels=128"]),
]


def fsat(db: Path, *args: str) -> str:
    """Run the real ``fsat`` command line and return its stdout."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "engine.cli", "--db", str(db), *args], capture_output=True,
                         text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"fsat {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def drain(db: Path) -> None:
    """Run a worker until the queue is empty."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-m", "engine.worker", "--db", str(db), "--drain"], env=env, check=True,
                   cwd=db.parent)


def prepare(args: argparse.Namespace) -> None:
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data, db = work / "demo_data", work / "experiments.db"
    if not (data / "sample_submission.csv").exists():
        fsat(db, "demo-data", str(data), "--seed", "0")
    plan = {}
    for label, sets in CNN_MEMBERS:
        sets = sets + [f"train.epochs={args.epochs}", f"train.patience={args.patience}",
                       f"audio.crop_seconds={args.crop_seconds}"]
        job = int(fsat(db, "queue", "train", "--data", str(data), "--preset", "demo", "--name", label,
                       *[a for s in sets for a in ("--set", s)]))
        infer = int(fsat(db, "queue", "infer", f"train-{job:04d}", "--preset", "tta",
                         "--set", f"infer.tta_crops={args.tta_crops}", "--name", f"{label} infer"))
        plan[label] = {"train_job": job, "infer_job": infer}
    for label, sets in BASELINE_MEMBERS:
        job = int(fsat(db, "queue", "baseline", "--data", str(data), "--preset", "baseline_melstats",
                       "--name", label, *[a for s in sets for a in ("--set", s)]))
        plan[label] = {"baseline_job": job}
    (work / "members.json").write_text(json.dumps({"plan": plan, "epochs": args.epochs, "patience": args.patience,
                                                   "crop_seconds": args.crop_seconds, "tta_crops": args.tta_crops},
                                                  indent=2))
    drain(db)
    print(json.dumps(plan, indent=2))


def _test_rows(layout) -> tuple[np.ndarray, list[int]] | None:
    """The test truth and, per truth row, its row in ``test.npy`` (sample_submission order)."""
    if layout.test_truth is None:
        return None
    row = {f: i for i, f in enumerate(layout.test.fnames)}
    return layout.test_truth.Y, [row[f] for f in layout.test_truth.fnames]


def _fmt(x: float | None) -> str:
    return "  -   " if x is None else f"{x:.4f}"


def methods(args: argparse.Namespace) -> None:
    from engine.data.manifest import load_layout
    from engine.ensemble import (Member, blend, cross_fitted_quantile_map,
                                 rank_against)
    from engine.metrics import lwlrap
    from engine.store import Store

    work = Path(args.workdir)
    plan = json.loads((work / "members.json").read_text())["plan"]
    store = Store(work / "experiments.db")
    members: dict[str, Member] = {}
    for label, jobs in plan.items():
        job = store.get_job(jobs.get("infer_job", jobs.get("baseline_job")))
        if job.status != "done":
            raise SystemExit(f"{label}: job {job.id} is {job.status}; run `prepare` to the end first")
        run_dir = Path(store.get_run(job.run_id)["run_dir"])
        members[label] = Member(label, np.load(run_dir / "oof.npy"), np.load(run_dir / "test.npy"))
    dataset = store.list_datasets()[0]
    layout = load_layout(dataset["root"])
    truth = layout.curated.Y
    stored = store.get_folds(dataset["id"])
    folds = np.array([stored[f] for f in layout.curated.fnames])
    test_truth, test_rows = _test_rows(layout)
    for m in members.values():
        m.cv_lwlrap = lwlrap(truth, m.oof)

    def test_score(x: np.ndarray | None) -> float | None:
        return None if x is None else lwlrap(test_truth, x[test_rows])

    cnns = [k for k in members if k.startswith("cnn")]
    best_cnn = max(cnns, key=lambda k: members[k].cv_lwlrap)
    blends = {
        "1 member (best cnn)": [best_cnn],
        "2 members (cnn seeds 42, 2025)": ["cnn seed 42", "cnn seed 2025"],
        "5 members (3 cnn + 2 mel stats)": list(members),
        "mel stats alone": ["mel stats"],
        "mel stats + best cnn": [best_cnn, "mel stats"],
    }
    report = {"members": {k: {"oof": m.cv_lwlrap, "test": test_score(m.test)} for k, m in members.items()},
              "blends": {}}
    print("members (OOF / test LWLRAP):")
    for k, v in report["members"].items():
        print(f"  {k:16s} {_fmt(v['oof'])} / {_fmt(v['test'])}")
    for title, names in blends.items():
        chosen = [members[n] for n in names]
        rows = []
        auto = blend(chosen, truth, folds=folds)
        tests = auto.candidate_tests
        for c in auto.candidates:
            rows.append((c.method, c.oof_lwlrap, c.raw_oof_lwlrap if c.method.startswith("rank") else None,
                         test_score(tests.get(c.method))))
        unmapped = blend(chosen, truth, method="rank", calibrate=False, folds=folds)
        rows.append(("rank, no map", unmapped.oof_lwlrap, None, test_score(unmapped.test)))
        # Quantile mapping onto the best member's OOF distribution instead of the probability blend's.
        best = max(chosen, key=lambda m: m.cv_lwlrap)
        w = np.array([m.cv_lwlrap for m in chosen]) / sum(m.cv_lwlrap for m in chosen)
        ranks = sum(wk * rank_against(m.oof, m.oof) for wk, m in zip(w, chosen))
        test_ranks = sum(wk * rank_against(m.oof, m.test) for wk, m in zip(w, chosen))
        from engine.ensemble import QuantileMapper
        onto_best = cross_fitted_quantile_map(ranks, best.oof, folds)
        rows.append(("rank -> best member's distribution", lwlrap(truth, onto_best), None,
                     test_score(QuantileMapper().fit(ranks, best.oof).transform(test_ranks))))
        rows.append((f"auto (chose {auto.method})", auto.oof_lwlrap, None, test_score(auto.test)))
        best_member = max(names, key=lambda n: members[n].cv_lwlrap)
        print(f"\n{title}: best member {best_member} OOF {members[best_member].cv_lwlrap:.4f}, "
              f"test {_fmt(test_score(members[best_member].test))}")
        print(f"  {'method':36s} {'OOF':>7s} {'raw':>7s} {'test':>7s}")
        for method, oof, raw, test in rows:
            print(f"  {method:36s} {_fmt(oof):>7s} {_fmt(raw):>7s} {_fmt(test):>7s}")
        assert auto.oof_lwlrap >= members[best_member].cv_lwlrap, "auto fell below its best member"
        report["blends"][title] = {"best_member": best_member, "rows": rows, "auto": auto.method}
    (work / "methods.json").write_text(json.dumps(report, indent=2))


def groups(args: argparse.Namespace) -> None:
    from engine.data.demo import SOURCE_COLUMN, write_demo_dataset
    from engine.data.folds import (clips_split_from_their_group, make_folds, make_group_folds, read_groups,
                                   stratification_report)
    from engine.data.manifest import load_layout
    from engine.features.frontend import LogMelFrontend
    from engine.features.melstats import mel_statistics
    from engine.jobs.baseline import fit_one_vs_rest
    from engine.metrics import lwlrap
    from engine.data.audio import decode

    work = Path(args.workdir)
    frontend = LogMelFrontend(sample_rate=32000)
    result = {}
    for name, per_source in (("shared", args.clips_per_source), ("control", 1)):
        root = work / f"groups_{name}"
        if not (root / "sample_submission.csv").exists():
            write_demo_dataset(root, seed=args.seed, clips_per_class=args.clips_per_class, noisy_per_class=1,
                               test_per_class=1, clips_per_source=per_source, overwrite=True)
        layout = load_layout(root)
        truth = layout.curated.Y
        if per_source > 1:
            group_of = read_groups(layout.curated.csv_path, SOURCE_COLUMN, layout.curated.fnames)
        else:
            group_of = list(layout.curated.fnames)
        waves = [decode(layout.curated.source.read_bytes(f), name=f, target_sr=32000) for f in layout.curated.fnames]
        X = mel_statistics(frontend, waves)
        rules = {"stratified, group-blind": make_folds(truth, args.folds, 42),
                 "group-aware": make_group_folds(truth, group_of, args.folds, 42)}
        rng = np.random.default_rng(0)
        keys = sorted(set(group_of))
        random_fold = dict(zip(keys, rng.permutation(len(keys)) % args.folds))
        rules["groups at random"] = np.array([random_fold[g] for g in group_of])
        result[name] = {}
        print(f"\n{name}: {len(truth)} curated clips, {len(keys)} recordings, C = {args.C}")
        print(f"  {'folds':24s} {'OOF':>7s} {'split':>6s} {'LD':>7s} {'MAD':>6s} {'empty':>5s}  sizes")
        for rule, folds in rules.items():
            oof = np.zeros(truth.shape)
            for k in range(args.folds):
                val = folds == k
                (pred,), _ = fit_one_vs_rest(X[~val], truth[~val], [X[val]], C=args.C)
                oof[val] = pred
            rep = stratification_report(truth, folds, group_of)
            row = {"oof_lwlrap": lwlrap(truth, oof), "split_clips": clips_split_from_their_group(group_of, folds),
                   **rep}
            result[name][rule] = row
            print(f"  {rule:24s} {row['oof_lwlrap']:.4f} {row['split_clips']:6d} {rep['label_distribution']:.4f} "
                  f"{rep['mean_abs_deviation']:6.3f} {rep['empty_cells']:5d}  {rep['fold_sizes']}")
        if per_source == 1:
            # The preset's C: the regularisation of the logistic regression on these features.
            sweep = {}
            for C in args.sweep:
                oof = np.zeros(truth.shape)
                folds = rules["stratified, group-blind"]
                for k in range(args.folds):
                    val = folds == k
                    (pred,), _ = fit_one_vs_rest(X[~val], truth[~val], [X[val]], C=C)
                    oof[val] = pred
                sweep[C] = lwlrap(truth, oof)
            print("  C sweep (stratified folds): " + ", ".join(f"C={c:g} {v:.4f}" for c, v in sweep.items()))
            result[name]["C sweep"] = sweep
    (work / "groups.json").write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="write the demo data and train the member runs")
    p.add_argument("--workdir", required=True)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--crop-seconds", type=float, default=1.5)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--tta-crops", type=int, default=1)
    p.set_defaults(func=prepare)
    p = sub.add_parser("methods", help="score every blend method on blends of the member runs")
    p.add_argument("--workdir", required=True)
    p.set_defaults(func=methods)
    p = sub.add_parser("groups", help="OOF and stratification of group-blind and group-aware folds")
    p.add_argument("--workdir", required=True)
    p.add_argument("--clips-per-class", type=int, default=6)
    p.add_argument("--clips-per-source", type=int, default=2)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--C", type=float, default=0.3)
    p.add_argument("--sweep", type=float, nargs="*", default=[0.01, 0.03, 0.1, 0.3, 1.0, 2.0])
    p.set_defaults(func=groups)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
