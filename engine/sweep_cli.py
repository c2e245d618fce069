"""``fsat sweep``: queue a sweep, show its table, complete a screened-out point, cancel it, list sweeps.

- ``fsat sweep --preset demo --data DIR --grid train.epochs=[2,3] --seeds 1,2 --screen-fold 0 --keep 1``
  queues one run per point and seed (``engine.sweeps.queue_sweep``) and prints the sweep id;
- ``fsat sweep show ID [--json|--csv|--markdown]`` prints the sweep's table (``engine.sweeps.sweep_table``);
- ``fsat sweep complete ID POINT`` completes a screened-out point (the decision overridden);
- ``fsat sweep cancel ID`` cancels what has not started; ``fsat sweep list`` lists sweeps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine import sweeps
from engine.errors import FsatError
from engine.compare import pm_text

_HELP = ("queue a grid or random search over spec fields times seeds as one sweep, screened on one fold "
         "(--screen-fold 0 --keep N); or show ID, complete ID POINT, cancel ID, list")
_ACTIONS = ("show", "complete", "cancel", "list")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sweep`` on ``fsat``'s subcommands."""
    p = subparsers.add_parser("sweep", help=_HELP, description=_HELP)
    p.set_defaults(func=run)
    p.add_argument("--db", type=Path, default=argparse.SUPPRESS,
                   help="database (default $FSAT_DB or ./experiments.db)")
    p.add_argument("action", nargs="*", metavar="ACTION",
                   help="none: queue a sweep; show ID | complete ID POINT | cancel ID | list")
    p.add_argument("--preset", help="preset name under configs/ (see `fsat presets`)")
    p.add_argument("--config", type=Path, help="a TOML config file")
    p.add_argument("--data", help="dataset root (Kaggle layout)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting every point shares, e.g. train.epochs=3")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=[V1,V2]",
                   help="a setting that varies over a TOML list, e.g. optim.head_lr=[1e-3,3e-4] (product of all)")
    p.add_argument("--random", action="append", default=[], metavar="KEY=DIST(ARGS)",
                   help="a setting drawn at random: uniform(a,b), loguniform(a,b), randint(a,b), choice([...])")
    p.add_argument("--count", type=int, default=0, help="random points to draw")
    p.add_argument("--random-seed", type=int, default=0, help="seed of the random draws (reproducible points)")
    p.add_argument("--seeds", help="train.seed values, each point runs once per seed, e.g. 1,2 "
                                   "(default: the preset's seed)")
    p.add_argument("--screen-fold", type=int, default=None,
                   help="train this fold first; only the best --keep points complete the other folds")
    p.add_argument("--keep", type=int, default=None, help="points that complete after screening (default 1)")
    p.add_argument("--name", default="", help="the sweep's name")
    p.add_argument("--priority", type=int, default=0, help="higher runs first")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--csv", action="store_true", help="show: print CSV")
    p.add_argument("--markdown", action="store_true", help="show: print a Markdown table")
    return p


def _store(args: argparse.Namespace):
    from engine.store import Store, default_db_path

    return Store(args.db or default_db_path())


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise FsatError(f"{what} must be a whole number, got {text!r}") from None


def display_rows(table: sweeps.SweepTable) -> list[dict]:
    """The table's rows with mean ± std in one cell each (terminal and Markdown)."""
    return [{**r, "cv mean ± std": pm_text(r["cv_mean"], r["cv_std"]),
             "fold mean ± std": pm_text(r["fold_mean"], r["fold_std"])} for r in table.rows]


#: The columns a person reads (``--json`` and ``--csv`` have every number in its own column).
def display_columns(table: sweeps.SweepTable) -> list[str]:
    """The varying settings, then rank, state, decision, screening score, the two mean ± std, folds, runs."""
    return [*table.keys, "point", "rank", "state", "decision", "screen", "cv mean ± std", "fold mean ± std",
            "folds_done", "runs"]


def run(args: argparse.Namespace) -> int:
    """Run ``fsat sweep``."""
    from engine.cli import _emit, console

    action, rest = (args.action[0], args.action[1:]) if args.action else ("", [])
    if action and action not in _ACTIONS:
        raise FsatError(f"unknown sweep action {action!r} (known: {', '.join(_ACTIONS)}; none queues a sweep)")
    with _store(args) as store:
        if not action:
            sweep_id = sweeps.queue_sweep(
                store, preset=args.preset, config=args.config, overrides=args.set, data_root=args.data,
                grid=args.grid, random_axes=args.random, count=args.count, random_seed=args.random_seed,
                seeds=sweeps.parse_seeds(args.seeds), screen_fold=args.screen_fold, keep=args.keep,
                name=args.name, priority=args.priority)
            runs = store.sweep_runs(sweep_id)
            if args.json:
                print(json.dumps({"sweep_id": sweep_id, "runs": [r["run_id"] for r in runs]}))
            else:
                print(sweep_id)
            return 0
        if action == "list":
            rows = store.list_sweeps()
            _emit(args, rows, "sweeps", ["id", "name", "preset", "stage", "points", "runs", "screen_fold", "keep",
                                         "created"])
            return 0
        if not rest:
            raise FsatError(f"fsat sweep {action} needs the sweep id (see `fsat sweep list`)")
        sweep_id = _int(rest[0], "the sweep id")
        if action == "cancel":
            n = sweeps.cancel_sweep(store, sweep_id)
            print(f"sweep {sweep_id}: {n} queued jobs cancelled; running jobs finish")
            return 0
        if action == "complete":
            if len(rest) != 2:
                raise FsatError("fsat sweep complete takes the sweep id and the point number")
            queued = sweeps.complete_point(store, sweep_id, _int(rest[1], "the point"))
            print(" ".join(str(j) for j in queued))
            return 0
        # show: a screening that ended while no worker ran (its last job cancelled in the queue) is decided here.
        store.advance_sweep(sweep_id, sweeps.decide)
        table = sweeps.sweep_table(store, sweep_id)
    if args.json:
        print(json.dumps(table.as_json(), indent=2, default=str))
        return 0
    if args.csv:
        from engine.compare import table_csv

        sys.stdout.write(table_csv(table.rows, table.columns))
        return 0
    sweep = table.sweep
    if not args.markdown:
        screening = (f"screened on fold {sweep['screen_fold']}, keep {sweep['keep']}"
                     if sweep["screen_fold"] is not None else "no screening")
        console.print(f"sweep {sweep['id']} {sweep['name']} ({sweep['stage']}) {screening}; "
                      f"seeds {', '.join(map(str, sweep['seeds']))}", highlight=False, markup=False)
    _emit(args, display_rows(table), f"sweep {sweep['id']}", display_columns(table))
    if table.classes:
        against = (f"point {table.default_point} (the preset's settings)" if table.default_point is not None
                   else "nothing: the sweep does not hold the preset's own settings")
        _emit(args, table.classes, f"per-class OOF LRAP of the best point {table.best_point} against {against}",
              ["class_idx", "class_name", "best", "default", "delta"])
    return 0
