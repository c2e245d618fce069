"""``fsat report``: write the self-contained HTML report of a run, a comparison, a blend or a sweep.

    fsat [--db PATH] report RUN_ID --out FILE.html [--png DIR]
    fsat [--db PATH] report RUN_ID RUN_ID ... [--baseline RUN_ID] --out FILE.html [--png DIR]
    fsat [--db PATH] report RUN_ID RUN_ID ... --blend [--weights W ...] [--method M] [--no-calibrate] --out FILE.html
    fsat [--db PATH] report SWEEP_ID --sweep --out FILE.html [--png DIR]

One run id: that run's report (a curriculum run gets its curriculum section,
an ensemble run its blend section). Several: their comparison, with deltas
against ``--baseline`` (default the first). ``--blend``: the blend of those
runs as the ensemble job would make it, without saving it (the console's
ensemble screen). ``--sweep``: the target is a sweep id (the number ``fsat
sweep list`` shows), reported as one point per configuration with seed error
bars. A sweep is named by the flag rather than guessed from the id: ``3``
is sweep 3 only when asked, so a report never silently changes kind, and a
bare number given without the flag, which no run id is, gets an error that
says to add ``--sweep``. ``python -m engine.reporting`` takes the same arguments.

Only :func:`run` imports the report's modules (and matplotlib with them), so
``fsat`` starts as fast as before for every other command. A missing run, a
folder that does not exist or a file that cannot be written is one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sqlite3
import sys
import time
from pathlib import Path
from typing import Callable

__all__ = ["add_parser", "build_parser", "main", "run"]

_HELP = ("write a self-contained HTML report (figures inline, nothing fetched) of a run, a comparison, a blend "
         "or a sweep (--sweep)")


def _arguments(p: argparse.ArgumentParser) -> None:
    from engine.specs import ENSEMBLE_METHODS

    p.add_argument("targets", nargs="+", metavar="RUN_ID",
                   help="one run, or several to compare (or to blend with --blend); with --sweep, one sweep id")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.html", help="where to write the report")
    p.add_argument("--baseline", metavar="RUN_ID", help="comparison: the run deltas are taken against "
                   "(default: the first)")
    p.add_argument("--png", type=Path, metavar="DIR", help="also write each figure as a PNG file in DIR")
    p.add_argument("--blend", action="store_true", help="report the blend of the runs, scored as the ensemble job "
                   "would, without saving it")
    p.add_argument("--weights", nargs="+", type=float, metavar="W", help="--blend: one weight per run "
                   "(default: CV weights)")
    p.add_argument("--method", choices=list(ENSEMBLE_METHODS), default="auto", help="--blend: the blend method")
    p.add_argument("--no-calibrate", action="store_true", help="--blend: keep blended ranks")
    p.add_argument("--sweep", action="store_true", help="the target is a sweep id (see `fsat sweep list`): one point "
                   "per configuration with seed error bars")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``report`` on ``fsat``'s subcommands (its ``func`` is :func:`run`)."""
    p = subparsers.add_parser("report", help=_HELP, description=_HELP)
    p.set_defaults(func=run)
    # Also after the command (`fsat report --db X ...`); not given there, the one before it stands.
    p.add_argument("--db", type=Path, default=argparse.SUPPRESS,
                   help="database (default $FSAT_DB or ./experiments.db)")
    _arguments(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m engine.reporting`` (the arguments of ``fsat report``)."""
    p = argparse.ArgumentParser(prog="python -m engine.reporting", description=_HELP)
    p.add_argument("--db", type=Path, default=None, help="database (default $FSAT_DB or ./experiments.db)")
    _arguments(p)
    return p


def _command(args: argparse.Namespace) -> str:
    """The command line that writes this report, for its footer."""
    words = ["fsat", "report", *args.targets]
    if args.baseline:
        words += ["--baseline", args.baseline]
    if args.sweep:
        words.append("--sweep")
    if args.blend:
        words.append("--blend")
        if args.weights:
            words += ["--weights", *[f"{w:g}" for w in args.weights]]
        if args.method != "auto":
            words += ["--method", args.method]
        if args.no_calibrate:
            words.append("--no-calibrate")
    words += ["--out", str(args.out)]
    return shlex.join(words)


def _check_args(args: argparse.Namespace) -> None:
    from engine.errors import FsatError

    if args.sweep:
        if args.blend or args.baseline:
            raise FsatError("--sweep reports one sweep: it takes no --blend or --baseline")
        if len(args.targets) != 1 or not args.targets[0].isdigit():
            raise FsatError(f"--sweep takes one sweep id, a whole number (see `fsat sweep list`), got "
                            f"{' '.join(args.targets)!r}")
    if args.baseline and (args.blend or len(args.targets) < 2):
        raise FsatError("--baseline applies to a comparison of two or more runs")
    if not args.blend and (args.weights or args.method != "auto" or args.no_calibrate):
        raise FsatError("--weights, --method and --no-calibrate describe a blend: add --blend")
    if args.weights and len(args.weights) != len(args.targets):
        raise FsatError(f"--weights: {len(args.weights)} weights for {len(args.targets)} runs")
    out = Path(args.out)
    if out.is_dir():
        raise FsatError(f"{out}: is a folder; --out names the HTML file to write")
    if not out.parent.is_dir():
        raise FsatError(f"{out}: cannot write the report: the folder {out.parent} does not exist")
    if args.png is not None and Path(args.png).exists() and not Path(args.png).is_dir():
        raise FsatError(f"{args.png}: is a file; --png names a folder for the PNG figures")


def gather(store, args: argparse.Namespace, db: Path):
    """The report's numbers for the target the arguments name."""
    from engine.reporting.data import gather_blend, gather_comparison, gather_run, gather_sweep

    if args.sweep:
        return gather_sweep(store, int(args.targets[0]), db)
    if args.blend:
        return gather_blend(store, args.targets, weights=args.weights, method=args.method,
                            calibrate=not args.no_calibrate)
    if len(args.targets) == 1:
        return gather_run(store, args.targets[0], db)
    return gather_comparison(store, args.targets, args.baseline, db)


def run(args: argparse.Namespace) -> int:
    """Write the report (and the PNGs); print where. Raises FsatError with one line for what the user can fix."""
    from engine.errors import FsatError
    from engine.atomic import save_text
    from engine.store import Store, default_db_path

    _check_args(args)
    db = Path(args.db or default_db_path())
    with Store(db, readonly=True) as store:
        report = gather(store, args, db)

    from engine.reporting import figures
    from engine.reporting.html import page

    def writing(path: Path, write: Callable[..., object], *what: object) -> None:
        # The file named is the one asked for, not the atomic writer's temporary file.
        try:
            write(*what)
        except OSError as err:
            raise FsatError(f"{path}: cannot write the report: {err.strerror or err}") from None

    svgs: dict[str, str] = {}
    pngs: list[str] = []
    png_dir = Path(args.png) if args.png is not None else None
    if png_dir is not None:
        writing(png_dir, lambda: png_dir.mkdir(parents=True, exist_ok=True))
    for n, figure in enumerate(report.figures, 1):
        fig = figures.draw(figure)
        svgs[figure.name] = figures.svg_text(fig, prefix=f"f{n}-")
        if png_dir is not None:
            png = png_dir / f"{n:02d}-{figure.name}.png"
            writing(png, figures.save_png, fig, png)
            pngs.append(str(png))
    text = page(report, svgs, command=_command(args), database=str(db),
                generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    writing(Path(args.out), save_text, args.out, text)
    if args.json:
        print(json.dumps({"path": str(args.out), "kind": report.kind, "figures": [f.name for f in report.figures],
                          "pngs": pngs, "absent": report.absent}, indent=2))
    else:
        print(f"wrote {args.out}: {report.kind} report, {len(report.figures)} figures"
              + (f", PNGs in {png_dir}" if png_dir is not None else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.reporting``: errors a user can cause are one line on stderr, exit status 2."""
    from engine.errors import FsatError

    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except FsatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except sqlite3.Error as err:
        print(f"error: {args.db}: {err}", file=sys.stderr)
        return 2
