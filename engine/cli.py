"""``fsat``: the headless command line for everything the console does.

    fsat demo-data DIR [--seed N] [--clips-per-class N]
    fsat [--db PATH] register DIR
    fsat [--db PATH] queue train --data DIR [--preset NAME | --config FILE] [--set key=value ...]
    fsat [--db PATH] jobs | runs | workers | presets | datasets   [--json]
    fsat [--db PATH] show RUN_ID [--fold K] [--json]
    fsat [--db PATH] cancel JOB_ID

Errors a user can cause print one clear line (naming the file, row or
field) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from engine.errors import FsatError
from engine.store import OOF, Store, default_db_path

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


def _open(args: argparse.Namespace) -> Store:
    return Store(args.db or default_db_path())


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


def cmd_queue(args: argparse.Namespace) -> int:
    from engine.specs import resolve_spec, spec_hash, to_dict

    if args.kind == "probe":
        from engine.specs import apply_overrides

        spec_dict = apply_overrides({}, args.set or [])
        name = args.name or "probe"
    else:
        if args.data:
            root = Path(args.data)
            if not (root / "sample_submission.csv").exists():
                raise FsatError(f"{root}: not a dataset root (no sample_submission.csv); "
                                "expected the FSDKaggle2019 layout, or run `fsat demo-data DIR`")
        spec = resolve_spec(args.kind, preset=args.preset, config=args.config, overrides=args.set or [],
                            data_root=args.data)
        if args.name:
            spec.name = args.name
        spec_dict = to_dict(spec)
        name = spec.name or (args.preset or args.kind)
    with _open(args) as store:
        job_id = store.enqueue(args.kind, spec_dict, name=name, priority=args.priority)
    if args.json:
        print(json.dumps({"job_id": job_id, "kind": args.kind, "name": name}))
    else:
        print(job_id)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    with _open(args) as store:
        rows = store.list_jobs(status=args.status, limit=args.limit)
    for r in rows:
        r["progress"] = round(r["progress"], 4)
    _emit(args, rows, "jobs", ["id", "kind", "name", "status", "progress", "message", "attempts", "run_id"])
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    with _open(args) as store:
        rows = store.list_runs(limit=args.limit)
    _emit(args, rows, "runs", ["run_id", "kind", "name", "model", "status", "folds_done", "cv_lwlrap",
                               "mean_fold_lwlrap", "test_lwlrap", "created"])
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    with _open(args) as store:
        rows = store.live_workers(max_age=args.max_age)
    _emit(args, rows, "live workers", ["id", "pid", "host", "status", "job_id"])
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    with _open(args) as store:
        rows = store.list_datasets()
    _emit(args, rows, "datasets", ["id", "name", "root", "n_curated", "n_noisy", "n_test", "n_folds"])
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from engine.specs import list_presets

    rows = [{"name": k, "path": str(v)} for k, v in sorted(list_presets().items())]
    _emit(args, rows, "presets", ["name", "path"])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _open(args) as store:
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
    with _open(args) as store:
        status = store.request_cancel(args.job_id)
    if status == "running":
        print(f"job {args.job_id}: cancel requested; its worker stops it within seconds")
    else:
        print(f"job {args.job_id}: {status}")
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    """Wait until a job ends; exit 0 when done, 1 otherwise."""
    with _open(args) as store:
        deadline = time.monotonic() + args.timeout if args.timeout else None
        while True:
            job = store.get_job(args.job_id)
            if job.status in ("done", "failed", "cancelled"):
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
    p.add_argument("kind", choices=["train", "probe"])
    p.add_argument("--data", help="dataset root (Kaggle layout)")
    p.add_argument("--preset", help="preset name under configs/ (see `fsat presets`)")
    p.add_argument("--config", type=Path, help="a TOML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. train.epochs=3")
    p.add_argument("--name", help="run name")
    p.add_argument("--priority", type=int, default=0, help="higher runs first")

    p = add("jobs", cmd_jobs, "list jobs", listing=True)
    p.add_argument("--status", choices=["queued", "running", "done", "failed", "cancelled"])
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
        err_console.print(f"[bold red]error:[/] {err}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
