"""Rerun every performance figure the README and benchmarks/README.md cite, and check it against the docs.

Usage::

    python benchmarks/run_all.py [--quick] [--only BENCH ...] [--log-dir DIR] [--list]

The figures, their documented values and spreads, and the command of each
benchmark live in ``benchmarks/figures.toml``, the one place the docs are
checked against (``tests/test_figures.py``). Each benchmark runs as its own
process, alternating its sides inside; their ``@figure`` lines are collected
into one table: the figure, this run's value, the documented value, their
ratio, the documented spread, and the load average (``os.getloadavg``) at the
time of each. Exits 1 when a figure falls outside its documented spread or a
benchmark fails, 0 otherwise.

A figure that depends on the machine's load (a reference whose idle threads
spin, an absolute time) has a second documented value, ``quiet``: measured
with the one-minute load average under ``quiet_below`` (figures.toml), and
checked instead of the main value when this run's load at that figure is
under it too. The docs cite both. ``--quick`` runs the smaller commands and skips
the benchmarks marked ``quick = false`` (their figures show as not run); a
figure whose ``needs`` module is not installed shows as not run too
(torch-audiomentations is no dependency: put it on ``PYTHONPATH`` to measure it).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIGURES = HERE / "figures.toml"


@dataclass(frozen=True)
class Band:
    """A documented value, the spread it may move within, and the load average it was measured at."""

    value: float
    low: float
    high: float
    load: float


@dataclass(frozen=True)
class Figure:
    """One documented figure: its value, the spread it may move within, and where it is cited."""

    name: str
    bench: str
    what: str
    value: float
    low: float
    high: float
    unit: str
    load: float
    docs: tuple[str, ...]
    needs: str = ""          # a module the benchmark needs for this figure; without it the figure is not run
    quiet: Band | None = None  # the value on a quiet machine (load under quiet_below), where it differs

    def band(self, load: float, quiet_below: float) -> tuple[Band, str]:
        """The documented band a figure measured at ``load`` is checked against, and its label."""
        if self.quiet is not None and load < quiet_below:
            return self.quiet, "quiet"
        return Band(self.value, self.low, self.high, self.load), ""


@dataclass(frozen=True)
class Bench:
    """One benchmark script and its full and quick arguments."""

    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...] | None   # None: not run with --quick


#: The default of figures.toml's ``quiet_below``: a one-minute load average under it is a quiet machine.
QUIET_BELOW = 4.0


def quiet_below(path: Path = FIGURES) -> float:
    """figures.toml's ``quiet_below``: under this load a figure's ``quiet`` value is the one checked."""
    return float(tomllib.loads(path.read_text()).get("quiet_below", QUIET_BELOW))


def load_figures(path: Path = FIGURES) -> tuple[dict[str, Bench], dict[str, Figure]]:
    """The benchmarks and figures of ``figures.toml``, checked for consistency (ValueError naming the entry)."""
    data = tomllib.loads(path.read_text())
    below = float(data.get("quiet_below", QUIET_BELOW))
    benches = {}
    for name, b in data.get("bench", {}).items():
        quick = b.get("quick", [])
        benches[name] = Bench(name, b["script"], tuple(b.get("full", [])), None if quick is False else tuple(quick))
    figures = {}
    for name, f in data.get("figure", {}).items():
        q = f.get("quiet")
        quiet = Band(float(q["value"]), float(q["low"]), float(q["high"]), float(q["load"])) if q else None
        fig = Figure(name=name, bench=f["bench"], what=f["what"], value=float(f["value"]), low=float(f["low"]),
                     high=float(f["high"]), unit=f.get("unit", ""), load=float(f["load"]),
                     docs=tuple(f.get("docs", [])), needs=f.get("needs", ""), quiet=quiet)
        if fig.bench not in benches:
            raise ValueError(f"{path}: figure {name!r} names unknown bench {fig.bench!r}")
        if not fig.low <= fig.value <= fig.high:
            raise ValueError(f"{path}: figure {name!r}: value {fig.value} outside its own spread {fig.low}-{fig.high}")
        if quiet is not None and not quiet.low <= quiet.value <= quiet.high:
            raise ValueError(f"{path}: figure {name!r}: quiet value {quiet.value} outside its own spread "
                             f"{quiet.low}-{quiet.high}")
        if quiet is not None and quiet.load >= below:
            raise ValueError(f"{path}: figure {name!r}: its quiet value was measured at load {quiet.load:g}, "
                             f"not under quiet_below = {below:g}")
        figures[name] = fig
    return benches, figures


def parse_figures(output: str) -> dict[str, tuple[float, float]]:
    """``{name: (value, load)}`` from a benchmark's ``@figure NAME VALUE LOAD`` lines (the last one wins)."""
    found = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "@figure":
            found[parts[1]] = (float(parts[2]), float(parts[3]))
    return found


def evaluate(figures: dict[str, Figure], measured: dict[str, tuple[float, float]],
             failed_benches: set[str], skipped_benches: set[str],
             quiet_load: float = QUIET_BELOW) -> tuple[list[list[str]], bool]:
    """The table rows and whether every figure that ran is within its documented spread.

    A figure measured at a load under ``quiet_load`` is checked against its
    ``quiet`` value where it has one (the row says "quiet"), else against its value.
    """
    rows, ok = [], True
    for name, fig in figures.items():
        band, label = fig.band(measured[name][1] if name in measured else math.inf, quiet_load)
        documented = f"{band.value:g}{fig.unit} ({band.low:g}-{band.high:g}, load {band.load:g}{', quiet' if label else ''})"
        if name in measured:
            value, load = measured[name]
            ratio = value / band.value if band.value else math.inf if value else 1.0
            within = band.low <= value <= band.high
            ok &= within
            rows.append([name, f"{value:.3g}{fig.unit}", documented, f"{ratio:.2f}", f"{load:.1f}",
                         "ok" if within else "OFF"])
        else:
            status = ("not run (--quick)" if fig.bench in skipped_benches
                      else "FAILED" if fig.bench in failed_benches
                      else f"not run ({fig.needs} not installed)" if fig.needs and not _importable(fig.needs)
                      else "MISSING")
            ok &= status.startswith("not run")
            rows.append([name, "-", documented, "-", "-", status])
    return rows, ok


def _importable(module: str) -> bool:
    """Whether the benchmarks' interpreter, with this environment's PYTHONPATH, can import ``module``."""
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, env=_env()).returncode == 0


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def print_table(rows: list[list[str]]) -> None:
    """A plain-text table with a header row."""
    header = ["figure", "this run", "documented (spread, load)", "ratio", "load", "status"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, print the table, return the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the smaller commands (about 2.5 minutes on 2 idle cores)")
    ap.add_argument("--only", nargs="+", metavar="BENCH", help="run only these benchmarks")
    ap.add_argument("--log-dir", type=Path, default=None, help="keep each benchmark's output here")
    ap.add_argument("--list", action="store_true", help="print the benchmarks and figures, run nothing")
    args = ap.parse_args(argv)
    benches, figures = load_figures()
    if args.only:
        unknown = sorted(set(args.only) - set(benches))
        if unknown:
            ap.error(f"unknown benchmark(s) {', '.join(unknown)}: one of {', '.join(benches)}")
        figures = {n: f for n, f in figures.items() if f.bench in args.only}
    if args.list:
        for b in benches.values():
            cmd = b.quick if args.quick else b.full
            print(f"{b.name}: {b.script} {' '.join(cmd) if cmd is not None else '(not run with --quick)'}")
        for f in figures.values():
            quiet = f"; quiet: {f.quiet.value:g}{f.unit} ({f.quiet.low:g}-{f.quiet.high:g})" if f.quiet else ""
            print(f"  {f.name}: {f.what}: {f.value:g}{f.unit} ({f.low:g}-{f.high:g}){quiet}")
        return 0

    wanted = [b for b in benches.values() if any(f.bench == b.name for f in figures.values())]
    env = _env()
    measured: dict[str, tuple[float, float]] = {}
    failed, skipped = set(), set()
    started = time.perf_counter()
    for bench in wanted:
        cmd = bench.quick if args.quick else bench.full
        if cmd is None:
            skipped.add(bench.name)
            print(f"== {bench.name}: not run with --quick", flush=True)
            continue
        line = [sys.executable, str(HERE / bench.script), *cmd]
        print(f"== {bench.name}: {' '.join(line[1:])} (load average {os.getloadavg()[0]:.1f})", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(line, cwd=ROOT, env=env, capture_output=True, text=True)
        output = proc.stdout + proc.stderr
        if args.log_dir:
            args.log_dir.mkdir(parents=True, exist_ok=True)
            (args.log_dir / f"{bench.name}.log").write_text(output)
        found = parse_figures(proc.stdout)
        measured.update(found)
        print(f"   {time.perf_counter() - t0:.0f} s, exit {proc.returncode}, {len(found)} figures", flush=True)
        if proc.returncode != 0:
            failed.add(bench.name)
            print("   " + "\n   ".join(output.strip().splitlines()[-8:]), flush=True)
    print(f"\nall benchmarks: {time.perf_counter() - started:.0f} s; load average now "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    rows, ok = evaluate(figures, measured, failed, skipped, quiet_below())
    print_table(rows)
    return 0 if ok and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
