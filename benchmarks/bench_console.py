"""The console at scale: first paint and new-run latency with 10,000 runs in the database.

Usage::

    python benchmarks/bench_console.py [--runs N] [--repeats R] [--size WxH]

Builds two databases through the engine's own store calls: a big one with N
finished training runs (each with two fold scores, so ``folds`` and ``mean
fold`` are real joins) and 200 jobs, and a reference with one run. Then, in
one process and alternating the two databases in every repeat, it starts the
real console (``FsatConsole`` under Textual's headless ``run_test``) and
measures:

- **first paint**: from creating the app to the runs table showing its first
  page (the first poll applied to the screen);
- **new run**: with the console open and polling every 0.5 s, another
  connection creates a run; the time until its row is in the runs table;
- **open a run**: with the cursor on the newest run (5 folds x 20 epochs
  recorded, 80 per-class scores), from pressing enter to its screen showing
  its folds and classes, painted (the first refresh after both tables hold
  their rows).

It also times the data layer alone: one overview load (``Poller.poll``) and
one run-detail load on the big database. Reported: the median and the worst
of R repeats and the ratio big / reference. The machine is shared, so read
the ratios more than the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fair import figure  # noqa: E402
from engine.data.labels import FSD2019_CLASSES  # noqa: E402
from engine.store import OOF, Store  # noqa: E402
from fsat_console.app import FsatConsole  # noqa: E402
from fsat_console.live import Poller  # noqa: E402


def build(db: Path, n_runs: int, n_jobs: int) -> None:
    """``n_runs`` finished training runs and ``n_jobs`` jobs, written by the store as a job would."""
    store = Store(db)
    for i in range(1, n_jobs + 1):
        store.enqueue("train", {"train": {"epochs": 20}}, name=f"job {i}")
    names = ["Accordion", "Bark", "Bass_drum"]
    for i in range(1, n_runs + 1):
        if i == n_runs:
            full_run(store, f"train-{i:05d}")
            continue
        run_id = f"train-{i:05d}"
        store.create_run(run_id, kind="train", name=f"cnn14 seed {i}", model="cnn14",
                         config={"train": {"epochs": 20, "seed": i}})
        store.record_fold(run_id, 0, lwlrap=0.7 + (i % 97) / 1000, best_epoch=12, n_val=1000)
        store.record_fold(run_id, 1, lwlrap=0.71 + (i % 89) / 1000, best_epoch=14, n_val=1000)
        if i == 1:
            store.record_class_scores(run_id, OOF, names, [0.5, 0.6, 0.7], [0.3, 0.3, 0.4], [3, 3, 4])
        store.finish_run(run_id, cv_lwlrap=0.7 + (i % 101) / 1000)
    store.close()


def full_run(store: Store, run_id: str) -> None:
    """A finished 5-fold run as a training job leaves it: 20 epochs per fold, fold scores, 80 class scores."""
    store.create_run(run_id, kind="train", name="opened", model="cnn14",
                     config={"train": {"epochs": 20, "n_folds": 5}})
    for k in range(5):
        for e in range(1, 21):
            store.record_epoch(run_id, k, e, train_loss=1 / e, val_loss=1 / e, val_lwlrap=0.5 + e / 50 - k / 100,
                               lr=1e-3, seconds=30.0)
        store.record_fold(run_id, k, lwlrap=0.88 + k / 100, best_epoch=18, n_val=1000)
    store.record_class_scores(run_id, OOF, FSD2019_CLASSES, [0.5 + i / 200 for i in range(80)], [1 / 80] * 80,
                              [12] * 80)
    store.finish_run(run_id, cv_lwlrap=0.9)


async def painted(node) -> None:
    """Wait for the next refresh of ``node``'s screen (what the terminal would show)."""
    done = asyncio.get_running_loop().create_future()
    node.call_after_refresh(lambda: done.done() or done.set_result(None))
    await done


async def select_run(app: FsatConsole, pilot, run_id: str) -> None:
    """Put the runs table's cursor on ``run_id`` and let the console settle."""
    table = app.screen.query_one("#runs")
    table.focus()
    table.move_cursor(row=table.get_row_index(run_id), animate=False)
    await pilot.pause(0.3)


async def enter_until_shown(app: FsatConsole, pilot) -> float:
    """Seconds from pressing enter to the run screen painted with its folds and classes."""
    from fsat_console.screens.run import RunScreen

    from textual import events

    key = events.Key("enter", "\r")
    key.set_sender(app)
    t0 = time.perf_counter()
    # As the terminal driver hands on a key (``pilot.press`` would add its own waits for idleness).
    app._driver.send_message(key)
    while True:
        screen = app.screen
        if isinstance(screen, RunScreen) and screen.is_mounted:
            folds, classes = screen.query_one("#folds"), screen.query_one("#classes")
            if folds.row_count and classes.row_count:
                break
        await pilot.pause(0.002)
    await painted(screen)
    return time.perf_counter() - t0


async def open_run(app: FsatConsole, pilot, run_id: str) -> float:
    """Seconds from enter on ``run_id``'s row to its screen painted with its folds and classes."""
    await select_run(app, pilot, run_id)
    seconds = await enter_until_shown(app, pilot)
    await pilot.press("escape")
    return seconds


async def first_paint_and_new_run(db: Path, size: tuple[int, int],
                                  opened_run: str) -> tuple[float, float, float]:
    """Seconds to the first page of runs on screen, from a new run's commit to its row, and to open a run."""
    t0 = time.perf_counter()
    app = FsatConsole(db, poll_interval=0.5)
    async with app.run_test(size=size) as pilot:
        table = app.screen.query_one("#runs")
        while table.row_count == 0:
            await pilot.pause(0.005)
        paint = time.perf_counter() - t0
        await pilot.pause(1.0)
        writer = Store(db)
        run_id = f"bench-{time.time_ns()}"
        t1 = time.perf_counter()
        writer.create_run(run_id, kind="train", name="new", model="cnn14")
        while run_id not in table.rows:
            await pilot.pause(0.005)
        latency = time.perf_counter() - t1
        writer.close()
        await pilot.pause(0.6)
        opened = await open_run(app, pilot, opened_run)
    return paint, latency, opened


def data_layer(db: Path, repeats: int, n_runs: int) -> tuple[float, float]:
    """Best seconds of one forced overview load and one run-detail load (no UI)."""
    over, detail = [], []
    for _ in range(repeats):
        poller = Poller(db)
        t = time.perf_counter()
        poller.poll(None, force=True)
        over.append(time.perf_counter() - t)
        t = time.perf_counter()
        poller.poll((f"train-{n_runs:05d}", OOF), force=True)
        detail.append(time.perf_counter() - t)
        poller.close()
    return min(over), min(detail)


def main() -> int:
    """Run the benchmark and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", default="160x48")
    args = ap.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-console-"))
    os.environ["FSAT_RUNS"] = str(tmp / "runs")
    big, ref = tmp / "big" / "experiments.db", tmp / "ref" / "experiments.db"
    t = time.perf_counter()
    build(big, args.runs, args.jobs)
    build(ref, 1, 1)
    print(f"built {args.runs} runs in {time.perf_counter() - t:.1f}s; {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    results: dict[str, list[tuple[float, float, float]]] = {"big": [], "ref": []}
    for r in range(args.repeats):
        for name, db in (("big", big), ("ref", ref)) if r % 2 == 0 else (("ref", ref), ("big", big)):
            results[name].append(asyncio.run(first_paint_and_new_run(
                db, size, f"train-{args.runs if name == 'big' else 1:05d}")))
    print(f"\n{'':24}{'median':>10}{'worst':>10}{'ref median':>12}{'ratio':>8}")
    for i, what in enumerate(("first paint (s)", "new run visible (s)", "open a run (s)")):
        b = [x[i] for x in results["big"]]
        f = [x[i] for x in results["ref"]]
        print(f"{what:24}{statistics.median(b):10.3f}{max(b):10.3f}{statistics.median(f):12.3f}"
              f"{statistics.median(b) / statistics.median(f):8.2f}")
        key = ("first_paint", "new_run_visible", "open_run")[i]
        figure(f"console.{key}_median_s", statistics.median(b))
        figure(f"console.{key}_worst_s", max(b))
        figure(f"console.{key}_ratio", statistics.median(b) / statistics.median(f))
    over, detail = data_layer(big, args.repeats, args.runs)
    print(f"\ndata layer on {args.runs} runs: overview load {over * 1000:.1f} ms, run detail {detail * 1000:.1f} ms")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
