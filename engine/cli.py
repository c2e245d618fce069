"""``fsat``: the headless command line for everything the console does.

    fsat demo-data DIR [--seed N] [--clips-per-class N]
    fsat [--db PATH] register DIR [--n-folds 5] [--fold-seed 42]
    fsat [--db PATH] queue train|baseline|probe --data DIR [--preset NAME | --config FILE] [--set key=value ...]
                                               [--name NAME] [--priority N]
    fsat [--db PATH] queue infer RUN_ID [--preset tta] [--set infer.tta_crops=5 ...] [--name NAME] [--priority N]
    fsat [--db PATH] queue ensemble RUN_ID RUN_ID ... [--set method="mean" ...] [--name NAME] [--priority N]
    fsat [--db PATH] ensemble RUN_ID RUN_ID ... [--weights W ...] [--method rank|mean] [--no-calibrate]
                                               [--greedy] [--greedy-steps N] [--no-submission]
                                               [--name NAME] [--priority N] [--now]
    fsat [--db PATH] submission RUN_ID --out PATH [--json]
    fsat [--db PATH] tta RUN_ID [--json]
    fsat [--db PATH] jobs [--status queued|running|done|failed|cancelled] [--limit N] [--json]
    fsat [--db PATH] runs [--limit N] [--json]
    fsat [--db PATH] show RUN_ID [--fold K] [--json]
    fsat [--db PATH] workers [--max-age SECONDS] [--json]
    fsat [--db PATH] datasets | presets   [--json]
    fsat [--db PATH] cancel JOB_ID
    fsat [--db PATH] wait JOB_ID [--timeout SECONDS]

``--db`` defaults to ``$FSAT_DB`` or ``./experiments.db``; run folders go to
``runs/`` beside it (``$FSAT_RUNS`` overrides). Scores, run folders and the
TTA report are read through the run layer (``engine.runs``), the same code
the console uses.

Errors a user can cause print one clear line (naming the file, row or
field) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from engine.errors import FsatError
from engine.runs.kinds import has_fold_checkpoints
from engine.runs.reports import tta_gain_report
from engine.store import FINISHED_STATES, JOB_STATES, OOF, Store, default_db_path

console = Console()
err_console = Console(stderr=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _table(title: str, rows: Sequence[dict], columns: Sequence[str]) -> Table:
    table = Table(title=title, header_style="bold cyan")
    for c in columns:
        table.add_column(c, justify="right" if rows and isinstance(rows[0].get(c), (int, float)) else "left")
    for r in rows:
        table.add_row(*[_fmt(r.get(c)) for c in columns])
    return table


def _emit(args: argparse.Namespace, rows: Any, title: str, columns: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        console.print(_table(title, rows, columns))


def _open(args: argparse.Namespace, *, create: bool = True) -> Store:
    """Open the database for writing (creating it unless ``create`` is False)."""
    return Store(args.db or default_db_path(), create=create)


def _read(args: argparse.Namespace) -> Store:
    """Open the database for reading: never waits on a writer, never creates or upgrades the file."""
    return Store(args.db or default_db_path(), readonly=True)


# -- commands --------------------------------------------------------------------------


def cmd_demo_data(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from engine.data.demo import write_demo_dataset

    kwargs = {"seed": args.seed}
    if args.clips_per_class is not None:
        kwargs["clips_per_class"] = args.clips_per_class
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("writing demo clips", total=None)
        summary = write_demo_dataset(args.dir, progress=lambda d, t: progress.update(task, completed=d, total=t),
                                     **kwargs)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        console.print(f"demo dataset written to [bold]{args.dir}[/]: " +
                      ", ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from engine.jobs.common import prepare_dataset

    with _open(args) as store:
        data = prepare_dataset(store, args.dir, n_folds=args.n_folds, fold_seed=args.fold_seed)
        row = store.get_dataset(data.dataset_id)
    row.pop("classes", None)
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        console.print(f"dataset {row['id']} [bold]{row['name']}[/]: {row['n_curated']} curated, "
                      f"{row['n_noisy']} noisy, {row['n_test']} test clips; {row['n_folds']} folds "
                      f"(seed {row['fold_seed']})")
    return 0


#: Job kinds whose spec has a dataset section (``--data``).
_DATA_KINDS = ("train", "baseline")


def _queue_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides plus the positional run ids of ``queue infer`` / ``queue ensemble``."""
    overrides = list(args.set or [])
    targets = list(args.targets or [])
    if args.kind == "infer":
        if len(targets) > 1:
            raise FsatError(f"queue infer takes one trained run id, got {len(targets)}: {' '.join(targets)}")
        if targets:
            overrides.append(f"run_id={json.dumps(targets[0])}")
    elif args.kind == "ensemble":
        if targets:
            overrides.append(f"members={json.dumps(targets)}")
    elif targets:
        raise FsatError(f"queue {args.kind} takes no run ids (got {' '.join(targets)}); "
                        "run ids are for infer and ensemble jobs")
    if args.data and args.kind not in _DATA_KINDS:
        raise FsatError(f"--data does not apply to {args.kind} jobs: they use the dataset of the runs they name")
    return overrides


def cmd_queue(args: argparse.Namespace) -> int:
    from engine.specs import resolve_spec, to_dict

    if args.kind == "probe":
        from engine.errors import ConfigError
        from engine.jobs.probe import check_spec
        from engine.specs import apply_overrides, override_for

        spec_dict = apply_overrides({}, args.set or [])
        try:
            check_spec(spec_dict)
        except ConfigError as err:
            blamed = override_for(err.field, args.set or [])
            raise ConfigError(err.reason, field=err.field, file=f"--set {blamed}" if blamed else None) from None
        name = args.name or "probe"
    else:
        if args.data:
            root = Path(args.data)
            if not (root / "sample_submission.csv").exists():
                raise FsatError(f"{root}: not a dataset root (no sample_submission.csv); "
                                "expected the FSDKaggle2019 layout, or run `fsat demo-data DIR`")
        overrides = _queue_overrides(args)
        spec = resolve_spec(args.kind, preset=args.preset, config=args.config, overrides=overrides,
                            data_root=args.data if args.kind in _DATA_KINDS else None)
        if args.name:
            spec.name = args.name
        spec_dict = to_dict(spec)
        name = spec.name or (args.preset or _default_name(args.kind, spec_dict))
    with _open(args) as store:
        _check_runs_exist(store, args.kind, spec_dict)
        job_id = store.enqueue(args.kind, spec_dict, name=name, priority=args.priority)
    if args.json:
        print(json.dumps({"job_id": job_id, "kind": args.kind, "name": name}))
    else:
        print(job_id)
    return 0


def _check_runs_exist(store: Store, kind: str, spec: dict) -> None:
    """Refuse at queue time an infer of a run, or an ensemble of members, that will never exist.

    A run counts when it is in the database or a queued or running job will
    write it (jobs run in queue order, so a job may name the run of a job
    queued before it).
    """
    if kind not in ("infer", "ensemble"):
        return
    from engine.worker import default_run_id

    wanted = [spec["run_id"]] if kind == "infer" else list(spec.get("members", []))
    pending = {r["run_id"] or default_run_id(r["kind"], r["id"])
               for status in ("queued", "running") for r in store.list_jobs(status=status, limit=10**9)}
    missing = [r for r in wanted if r not in pending and store.get_run(r) is None]
    if not missing:
        return
    names = ", ".join(repr(m) for m in missing)
    if kind == "infer":
        raise FsatError(f"run_id: no run {names} to infer with, and no queued job makes it (see `fsat runs`)")
    raise FsatError(f"members: no run {names} in the database, and no queued job makes it (see `fsat runs`)")


def _default_name(kind: str, spec: dict) -> str:
    if kind == "infer":
        return f"tta {spec.get('run_id', '')}".strip()
    if kind == "ensemble":
        return f"{spec.get('method', 'rank')} blend of {len(spec.get('members', []))}"
    return kind


def cmd_ensemble(args: argparse.Namespace) -> int:
    """Queue an ensemble job, or with ``--now`` blend in this process and record the run."""
    from engine.specs import EnsembleSpec, from_dict, to_dict

    data: dict = {"members": list(args.members), "method": args.method, "calibrate": not args.no_calibrate,
                  "greedy": args.greedy, "write_submission": not args.no_submission}
    if args.weights:
        data["weights"] = list(args.weights)
    if args.greedy_steps is not None:
        data["greedy_steps"] = args.greedy_steps
    if args.name:
        data["name"] = args.name
    spec = from_dict(EnsembleSpec, data)
    if not args.now:
        with _open(args) as store:
            _check_runs_exist(store, "ensemble", data)
            job_id = store.enqueue("ensemble", to_dict(spec), name=spec.name or _default_name("ensemble", data),
                                   priority=args.priority)
        if args.json:
            print(json.dumps({"job_id": job_id, "kind": "ensemble"}))
        else:
            print(job_id)
        return 0

    from engine.jobs.ensemble import build_ensemble, unique_run_id
    from engine.store import runs_root

    db = args.db or default_db_path()
    log = (lambda text: err_console.print(text, highlight=False)) if args.json else \
        (lambda text: console.print(text, highlight=False))
    with _open(args) as store:
        run_id = unique_run_id(store)
        outcome = build_ensemble(store, spec, run_id=run_id, run_dir=runs_root(db) / run_id, log=log)
    if args.json:
        print(json.dumps({"run_id": outcome.run_id, "run_dir": str(outcome.run_dir), "weights": outcome.weights,
                          "cv_lwlrap": outcome.cv_lwlrap, "raw_cv_lwlrap": outcome.raw_cv_lwlrap,
                          "test_lwlrap": outcome.test_lwlrap,
                          "submission": str(outcome.submission) if outcome.submission else None,
                          "message": outcome.message}, indent=2))
    else:
        console.print(f"[bold]{outcome.run_id}[/]: {outcome.message}", highlight=False)
    return 0


def cmd_submission(args: argparse.Namespace) -> int:
    """Write (and so validate) a submission CSV from a run's test scores."""
    from engine.data.manifest import load_layout
    from engine.runs.atomic import load_npy
    from engine.submission import score_submission, write_submission

    with _read(args) as store:
        run = store.get_run(args.run_id)
        if run is None:
            raise FsatError(f"no run {args.run_id!r} (see `fsat runs`)")
        dataset = store.get_dataset(run["dataset_id"]) if run["dataset_id"] is not None else None
    test_path = Path(run["run_dir"]) / "test.npy"
    if not test_path.is_file():
        hint = (f"infer it first (`fsat queue infer {args.run_id}`)" if has_fold_checkpoints(run["kind"])
                else "its blend or inference had no test scores")
        raise FsatError(f"run {args.run_id!r} ({run['kind']}) has no test scores: {test_path} does not exist; {hint}")
    if dataset is None:
        raise FsatError(f"run {args.run_id!r} is linked to no dataset, so there is no sample submission to follow")
    layout = load_layout(dataset["root"])
    test = load_npy(test_path, remedy=f"run {args.run_id} again to rewrite its test scores")
    path = write_submission(args.out, layout.test.fnames, test,
                            sample_submission=layout.sample_submission)
    score = (score_submission(path, layout.test_truth.csv_path, layout.classes)
             if layout.test_truth is not None else None)
    if args.json:
        print(json.dumps({"run_id": args.run_id, "path": str(path), "rows": len(layout.test.fnames),
                          "test_lwlrap": score}, indent=2))
    else:
        console.print(f"wrote {path}: {len(layout.test.fnames)} clips x {len(layout.classes)} classes"
                      + (f", test lwlrap {score:.4f}" if score is not None else ""), highlight=False)
    return 0


def cmd_tta(args: argparse.Namespace) -> int:
    with _read(args) as store:
        report = tta_gain_report(store, args.run_id)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    console.print(f"[bold]{report['run_id']}[/] ({report['tta_crops']} crops) vs [bold]{report['source_run_id']}[/] "
                  f"(centre crop): OOF lwlrap {_fmt(report['with_tta'])} with TTA, {_fmt(report['without_tta'])} "
                  f"without, gain [bold]{_signed(report['gain'])}[/]", highlight=False)
    folds = [dict(r, gain=_signed(r["gain"])) for r in report["folds"]]
    console.print(_table("per fold", folds, ["fold", "with_tta", "without_tta", "gain"]))
    ranked = sorted(report["classes"], key=lambda r: (r["gain"] is None, -(r["gain"] or 0)))
    ranked = [dict(r, gain=_signed(r["gain"])) for r in ranked]
    console.print(_table("per class (out-of-fold LRAP, by gain)", ranked,
                         ["class_idx", "class_name", "with_tta", "without_tta", "gain", "n_pos"]))
    return 0


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def cmd_jobs(args: argparse.Namespace) -> int:
    with _read(args) as store:
        rows = store.list_jobs(status=args.status, limit=args.limit)
    for r in rows:
        r["progress"] = round(r["progress"], 4)
    _emit(args, rows, "jobs", ["id", "kind", "name", "status", "progress", "message", "attempts", "run_id"])
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    with _read(args) as store:
        rows = store.list_runs(limit=args.limit)
    _emit(args, rows, "runs", ["run_id", "kind", "name", "model", "status", "folds_done", "cv_lwlrap",
                               "mean_fold_lwlrap", "test_lwlrap", "created"])
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    with _read(args) as store:
        rows = store.live_workers(max_age=args.max_age)
    _emit(args, rows, "live workers", ["id", "pid", "host", "status", "job_id"])
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    with _read(args) as store:
        rows = store.list_datasets()
    _emit(args, rows, "datasets", ["id", "name", "root", "n_curated", "n_noisy", "n_test", "n_folds"])
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from engine.specs import list_presets

    rows = [{"name": k, "path": str(v)} for k, v in sorted(list_presets().items())]
    _emit(args, rows, "presets", ["name", "path"])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _read(args) as store:
        run = store.get_run(args.run_id)
        if run is None:
            raise FsatError(f"no run {args.run_id!r} (see `fsat runs`)")
        folds = store.fold_scores(args.run_id)
        fold = OOF if args.fold is None else args.fold
        classes = store.class_scores(args.run_id, fold)
        epochs = store.epochs(args.run_id)
        members = store.run_members(args.run_id)
    if args.json:
        print(json.dumps({"run": run, "folds": folds, "classes": classes, "epochs": epochs,
                          "members": members}, indent=2, default=str))
        return 0
    console.print(f"[bold]{run['id']}[/] {run['kind']} {run['model']} [{run['status']}]  "
                  f"CV lwlrap [bold]{_fmt(run['cv_lwlrap'])}[/]  test {_fmt(run['test_lwlrap'])}  "
                  f"seed {run['seed']}  device {run['device']}  config {run['config_hash']}")
    for f in folds:
        f["epochs"] = sum(1 for e in epochs if e["fold"] == f["fold"])
    console.print(_table("folds", folds, ["fold", "lwlrap", "best_epoch", "n_val", "epochs"]))
    if members:
        console.print(_table("members", members, ["member_run_id", "weight"]))
    scope = "out-of-fold" if fold == OOF else f"fold {fold}"
    ranked = sorted(classes, key=lambda r: (r["lrap"] is None, -(r["lrap"] or 0)))
    console.print(_table(f"classes ({scope}, by LRAP)", ranked, ["class_idx", "class_name", "lrap", "weight",
                                                                 "n_pos"]))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _open(args, create=False) as store:
        status = store.request_cancel(args.job_id)
    if status == "running":
        print(f"job {args.job_id}: cancel requested; its worker stops it within seconds")
    else:
        print(f"job {args.job_id}: {status}")
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    """Wait until a job ends; exit 0 when done, 1 otherwise."""
    with _read(args) as store:
        deadline = time.monotonic() + args.timeout if args.timeout else None
        while True:
            job = store.get_job(args.job_id)
            if job.status in FINISHED_STATES:
                print(f"job {job.id}: {job.status} {job.error or job.message}")
                return 0 if job.status == "done" else 1
            if deadline and time.monotonic() > deadline:
                print(f"job {job.id}: still {job.status} after {args.timeout}s")
                return 1
            time.sleep(1.0)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fsat``."""
    ap = argparse.ArgumentParser(prog="fsat", description="Headless fsat-console: datasets, jobs, runs, scores.")
    ap.add_argument("--db", type=Path, default=None, help="database (default $FSAT_DB or ./experiments.db)")
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_: str, listing: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        p.add_argument("--json", action="store_true", help="print JSON" if listing else argparse.SUPPRESS)
        return p

    p = add("demo-data", cmd_demo_data, "write the synthetic demo dataset in the FSDKaggle2019 layout")
    p.add_argument("dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clips-per-class", type=int, default=None, help="curated clips per class (small for tests)")

    p = add("register", cmd_register, "register a dataset root and compute its folds")
    p.add_argument("dir", type=Path)
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--fold-seed", type=int, default=42)

    p = add("queue", cmd_queue, "queue a job from a preset or config file with overrides; prints the job id")
    p.add_argument("kind", choices=["train", "infer", "ensemble", "baseline", "probe"])
    p.add_argument("targets", nargs="*", metavar="RUN_ID",
                   help="infer: the trained run; ensemble: the member runs")
    p.add_argument("--data", help="dataset root (Kaggle layout; train and baseline jobs)")
    p.add_argument("--preset", help="preset name under configs/ (see `fsat presets`)")
    p.add_argument("--config", type=Path, help="a TOML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. train.epochs=3")
    p.add_argument("--name", help="run name")
    p.add_argument("--priority", type=int, default=0, help="higher runs first")

    p = add("ensemble", cmd_ensemble, "blend runs' out-of-fold and test scores: queue the job (prints its id) "
            "or, with --now, blend here", listing=True)
    p.add_argument("members", nargs="+", metavar="RUN_ID", help="runs with oof.npy (infer, baseline, ensemble)")
    p.add_argument("--weights", nargs="+", type=float, metavar="W",
                   help="one weight per member (default: proportional to CV lwlrap)")
    p.add_argument("--method", choices=["rank", "mean"], default="rank")
    p.add_argument("--no-calibrate", action="store_true", help="keep blended ranks, no rank-to-probability map")
    p.add_argument("--greedy", action="store_true", help="greedy forward selection of members by OOF lwlrap")
    p.add_argument("--greedy-steps", type=int, default=None)
    p.add_argument("--no-submission", action="store_true", help="do not write submission.csv")
    p.add_argument("--name", help="run name")
    p.add_argument("--priority", type=int, default=0, help="higher runs first (queued job)")
    p.add_argument("--now", action="store_true", help="blend in this process instead of queueing a job")

    p = add("submission", cmd_submission, "write a validated submission CSV from a run's test scores",
            listing=True)
    p.add_argument("run_id")
    p.add_argument("--out", type=Path, required=True, help="where to write the CSV")

    p = add("tta", cmd_tta, "the TTA gain of an infer run over its trained run: overall, per fold, per class",
            listing=True)
    p.add_argument("run_id")

    p = add("jobs", cmd_jobs, "list jobs", listing=True)
    p.add_argument("--status", choices=JOB_STATES)
    p.add_argument("--limit", type=int, default=100)

    p = add("runs", cmd_runs, "list runs with their scores", listing=True)
    p.add_argument("--limit", type=int, default=100)

    p = add("show", cmd_show, "show a run: folds, per-class LRAP (out-of-fold or one fold)", listing=True)
    p.add_argument("run_id")
    p.add_argument("--fold", type=int, default=None, help="per-class scores of this fold instead of out-of-fold")

    p = add("cancel", cmd_cancel, "cancel a queued or running job")
    p.add_argument("job_id", type=int)

    p = add("wait", cmd_wait, "wait for a job to end (exit 0 when done)")
    p.add_argument("job_id", type=int)
    p.add_argument("--timeout", type=float, default=0)

    p = add("workers", cmd_workers, "list live workers", listing=True)
    p.add_argument("--max-age", type=float, default=10.0)
    add("datasets", cmd_datasets, "list registered datasets", listing=True)
    add("presets", cmd_presets, "list presets", listing=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fsat``."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FsatError as err:
        err_console.print(Text.assemble(("error:", "bold red"), f" {err}"), highlight=False, soft_wrap=True)
        return 2
    except sqlite3.Error as err:
        # An SQLite error the store did not foresee: still one line, naming the database.
        err_console.print(f"error: {args.db or default_db_path()}: {err}", highlight=False, soft_wrap=True,
                          markup=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
