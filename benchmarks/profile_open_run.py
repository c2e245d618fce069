"""Where the time goes when a run is opened on a database of 1,000 runs (pyinstrument profile).

Usage::

    python benchmarks/profile_open_run.py [--runs 1000] [--size 160x48]

Builds the database through the store's own calls (1,000 training runs, half
of them with an inference run, one run with 5 folds x 20 epochs and 80 class
scores), starts the console headless, waits for the first page, puts the
cursor on the scored run, then profiles from pressing enter until the run
screen is painted with its folds and classes (``bench_console.enter_until_shown``,
the moment ``bench_console.py`` times) and prints the pyinstrument tree
(wall time and CPU time of the UI thread). Needs ``pip install pyinstrument``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_console import enter_until_shown, select_run  # noqa: E402
from engine.data.labels import FSD2019_CLASSES  # noqa: E402
from engine.store import OOF, Store  # noqa: E402
from fsat_console.app import FsatConsole  # noqa: E402


def build(db: Path, n: int) -> None:
    """``n`` training runs, every second one with an inference run; train-0001 fully scored."""
    s = Store(db)
    for i in range(1, n + 1):
        rid = f"train-{i:04d}"
        s.create_run(rid, kind="train", model="cnn14", name=f"run {i}", config={"train": {"epochs": 20, "n_folds": 5}})
        if i % 2 == 0:
            s.create_run(f"infer-{i:04d}", kind="infer", model="cnn14", parent_run_id=rid)
    rid = "train-0001"
    for k in range(5):
        for e in range(1, 21):
            s.record_epoch(rid, k, e, train_loss=1 / e, val_loss=1 / e, val_lwlrap=0.5 + e / 50, lr=1e-3, seconds=1)
        s.record_fold(rid, k, lwlrap=0.9, best_epoch=18, n_val=100)
    s.record_class_scores(rid, OOF, FSD2019_CLASSES, [0.5] * 80, [1 / 80] * 80, [3] * 80)
    s.finish_run(rid, cv_lwlrap=0.9)
    s.close()


async def profile(db: Path, size: tuple[int, int], show_all: bool) -> None:
    """Open train-0001 from the runs table and print the profile of that moment."""
    from pyinstrument import Profiler

    app = FsatConsole(db, poll_interval=0.5)
    async with app.run_test(size=size) as pilot:
        while app.overview is None:
            await pilot.pause(0.02)
        await pilot.pause(1.0)
        # The oldest run is on the last page of the newest-first table: sort oldest first.
        app.screen.query_one("#runs").focus()
        await pilot.press("S")
        while "train-0001" not in app.screen.query_one("#runs").rows:
            await pilot.pause(0.02)
        await select_run(app, pilot, "train-0001")
        profiler = Profiler(interval=0.001)
        profiler.start()
        seconds = await enter_until_shown(app, pilot)
        profiler.stop()
        print(f"enter -> run screen painted with its folds and classes: {seconds:.3f} s")
        print(profiler.output_text(unicode=True, show_all=show_all))


def main() -> int:
    """Build, then profile."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--size", default="160x48")
    ap.add_argument("--all", action="store_true", help="show every frame (Textual's and Rich's too)")
    args = ap.parse_args()
    db = Path(tempfile.mkdtemp(prefix="profile-open-run-")) / "experiments.db"
    build(db, args.runs)
    asyncio.run(profile(db, tuple(int(x) for x in args.size.split("x")), args.all))
    return 0


if __name__ == "__main__":
    sys.exit(main())
