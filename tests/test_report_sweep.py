"""``fsat report ID --sweep``: a sweep's report, one point per configuration with seed error bars.

A real sweep (2 widths × 2 seeds, screened on fold 0, keep 1) is queued with
``fsat sweep`` and trained by a real worker; its reports are written by the
real CLI (and by the console's ``H`` on the sweep view) after screening, after
the screened-out point is completed by hand, and for a sweep with nothing run
yet. The numbers on the page are checked against the runs' recorded scores;
the pages are rendered in headless Chromium when it is installed.
"""

from __future__ import annotations

import html
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from engine.reporting.browser import render_page
from engine.store import Store
from tests.helpers.processes import drain, run_cli
from tests.helpers.report_world import figure_names, page_tables, require_chromium, run_demo_sweep, sweep_expectations

#: Seconds the console's report may take on a busy machine.
REPORT_WAIT = 240.0


@dataclass
class SweepPages:
    db: Path
    sweep_id: int
    pending_id: int
    screened: tuple[str, dict, dict]    # page, --json output, expectations
    completed: tuple[str, dict, dict]
    pending: tuple[str, dict]
    paths: dict[str, Path]


def _report(db: Path, sweep_id: int, out: Path, *extra: str) -> tuple[str, dict]:
    done = run_cli("report", str(sweep_id), "--sweep", "--out", str(out), *extra, "--json", db=db)
    return out.read_text(encoding="utf-8"), json.loads(done.stdout)


@pytest.fixture(scope="module")
def pages(tmp_path_factory, tiny_demo) -> SweepPages:
    root = tmp_path_factory.mktemp("sweep-report")
    db = root / "experiments.db"
    sweep_id = run_demo_sweep(db, tiny_demo)
    paths = {name: root / f"{name}.html" for name in ("screened", "completed", "pending")}
    screened = (*_report(db, sweep_id, paths["screened"], "--png", str(root / "png")),
                sweep_expectations(db, sweep_id))
    # Override the screening: the screened-out point trains every fold too.
    with Store(db, readonly=True) as store:
        (out_point,) = [p["point"] for p in store.sweep_points(sweep_id) if p["decision"] == "screened out"]
    run_cli("sweep", "complete", str(sweep_id), str(out_point), db=db)
    drain(db)
    completed = (*_report(db, sweep_id, paths["completed"]), sweep_expectations(db, sweep_id))
    pending_id = run_demo_sweep(db, tiny_demo, drain_queue=False)
    pending = _report(db, pending_id, paths["pending"])
    return SweepPages(db, sweep_id, pending_id, screened, completed, pending, paths)


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _check_table(page: str, sweep_id: int, expected: dict[int, dict]) -> dict[int, dict[str, str]]:
    """The page's sweep table against the runs' recorded scores; returns its rows by point."""
    rows = page_tables(page)[f"Sweep {sweep_id}"]
    header = rows[0]
    assert header[:2] == ["model.width", "point"]
    by_point = {int(r[1]): dict(zip(header, r)) for r in rows[1:]}
    assert sorted(by_point) == sorted(expected) == [0, 1]
    for point, want in expected.items():
        row = by_point[point]
        assert row["model.width"] == ("8", "16")[point]
        assert (row["OOF mean"], row["OOF std"]) == (_cell(want["cv_mean"]), _cell(want["cv_std"]))
        assert row["screen"] == _cell(want["screen"])
        assert row["folds done"] == f"{want['folds']}/10"
        assert row["runs"] == " ".join(want["runs"])
    return by_point


def test_a_screened_sweep_shows_each_point_with_seed_error_bars_and_the_screened_out_point_by_its_score(pages):
    page, written, expected = pages.screened
    assert page.startswith("<!doctype html>") and "default-src 'none'" in page and "<script" not in page.lower()
    assert written["kind"] == "sweep"
    assert f"<h1>Sweep {pages.sweep_id} — demo sweep</h1>" in page
    text = html.unescape(page)
    assert "preset demo · grid model.width=[8, 16] · seeds 1, 2 · screened on fold 0, keep 1" in text
    rows = _check_table(page, pages.sweep_id, expected)
    kept = next(p for p, want in expected.items() if want["cv_mean"] is not None)
    out = 1 - kept
    assert expected[kept]["cv_std"] is not None and expected[out]["cv_mean"] is None
    assert expected[kept]["screen"] >= expected[out]["screen"]
    assert (rows[kept]["decision"], rows[kept]["rank"], rows[kept]["state"]) == ("kept", "1", "done")
    assert (rows[out]["decision"], rows[out]["rank"], rows[out]["state"]) == ("screened out", "2", "screened")
    # The figure: the kept point's mean ± std, the screened-out point's score named as such (text is drawn as
    # paths; matplotlib keeps each text as a comment beside them).
    figures = figure_names(page)
    assert figures[0] == "sweep-points" and written["figures"] == figures
    figure = page.split('data-figure="sweep-points"', 1)[1].split("</figure>", 1)[0]
    drawn = re.findall(r"<!-- (.*?) -->", figure)
    assert f"{expected[kept]['cv_mean']:.4f} ± {expected[kept]['cv_std']:.4f}" in drawn
    assert ["screened out", f"fold 0: {expected[out]['screen']:.4f}"] == drawn[drawn.index("screened out"):][:2]
    assert drawn[:5] == ["point 0", "model.width=8", "(the preset's)", "point 1", "model.width=16"]
    # The best point's classes: alone, since the sweep's own point (width 8, point 0) is it or was screened out.
    assert figures == ["sweep-points", "class-lrap"]
    assert ("alone: the best point is the preset's own settings" if kept == 0 else
            "alone: the preset's point 0 has not trained every fold") in text
    # Provenance: every run, and one run's environment and device.
    runs = page_tables(page)["Runs"]
    assert [r[0] for r in runs[1:]] == expected[0]["runs"] + expected[1]["runs"]
    assert "Device" in page_tables(page) and "Environment" in page_tables(page)
    # --png: each figure as a PNG with ink on it.
    from PIL import Image

    assert [Path(p).stem.split("-", 1)[1] for p in written["pngs"]] == figures
    for path in written["pngs"]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 600
            assert np.asarray(image.convert("L"), dtype=np.float64).std() > 5


def test_once_both_points_trained_every_fold_the_best_is_set_against_the_presets_point_per_class(pages):
    page, _, expected = pages.completed
    rows = _check_table(page, pages.sweep_id, expected)
    assert all(want["cv_mean"] is not None and want["folds"] == 10 for want in expected.values())
    best = max(expected, key=lambda p: expected[p]["cv_mean"])
    assert rows[best]["rank"] == "1"
    figures = figure_names(page)
    figure = page.split('data-figure="sweep-points"', 1)[1].split("</figure>", 1)[0]
    assert "screened out" not in re.findall(r"<!-- (.*?) -->", figure)
    with Store(pages.db, readonly=True) as store:
        lrap = {p: [{c["class_name"]: c["lrap"] for c in store.class_scores(r)} for r in want["runs"]]
                for p, want in expected.items()}
    names = list(lrap[best][0])

    def mean(point: int, name: str) -> float | None:
        values = [seed[name] for seed in lrap[point] if seed[name] is not None]
        return statistics.mean(values) if values else None

    if best == 0:
        # The best point is the sweep's own settings: its classes alone.
        assert figures == ["sweep-points", "class-lrap"]
        assert "alone: the best point is the preset's own settings" in html.unescape(page)
        shown = {r[0]: r[1] for r in page_tables(page)["Per-class LRAP (out-of-fold)"][1:]}
        assert shown == {n: _cell(mean(0, n)) for n in names}
    else:
        # The wider point against the sweep's own: both series sorted by the preset's, and the differences.
        assert figures == ["sweep-points", "class-lrap", "class-delta"]
        table = page_tables(page)["Per-class LRAP: the best point against the preset's"]
        assert table[0] == ["class", "best point 1", "preset point 0", "Δ best − preset"]
        assert len(table) == 1 + len(names)
        for name, b, d, delta in table[1:]:
            assert (b, d) == (_cell(mean(1, name)), _cell(mean(0, name)))
            if mean(0, name) is not None and mean(1, name) is not None:
                assert float(delta) == pytest.approx(mean(1, name) - mean(0, name), abs=2e-4)


def test_a_sweep_with_nothing_run_yet_gets_a_report_of_what_it_has(pages):
    page, written = pages.pending
    assert written["figures"] == []
    rows = page_tables(page)[f"Sweep {pages.pending_id}"]
    assert [r[rows[0].index("state")] for r in rows[1:]] == ["queued", "queued"]
    assert written["absent"] == ["the points figure: no point has a score yet",
                                 "per-class LRAP: no point has trained every fold yet",
                                 "environment and device: no run of the sweep has started yet"]
    assert "Sweep settings" in page_tables(page)


def _one_line(done, *words: str) -> None:
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert all(word in lines[0] for word in words), lines[0]


def test_a_missing_sweep_or_a_sweep_id_without_the_flag_is_one_line(pages, tmp_path):
    out = tmp_path / "r.html"
    _one_line(run_cli("report", "404", "--sweep", "--out", str(out), db=pages.db, check=False), "no sweep 404")
    _one_line(run_cli("report", str(pages.sweep_id), "--out", str(out), db=pages.db, check=False),
              f"no run '{pages.sweep_id}'", f"fsat report {pages.sweep_id} --sweep")
    _one_line(run_cli("report", "sweep-1", "--sweep", "--out", str(out), db=pages.db, check=False), "whole number")
    _one_line(run_cli("report", "1", "2", "--sweep", "--out", str(out), db=pages.db, check=False), "one sweep id")
    assert not out.exists()


def test_the_sweep_reports_render_in_a_real_browser_with_every_figure_and_fetch_nothing(pages):
    require_chromium()
    for name in ("screened", "completed"):
        path = pages.paths[name]
        render = render_page(path)
        assert render.requests == [path.resolve().as_uri()] and render.external_requests() == []
        assert render.text_length > 1000
        drawn = [(f["name"], f["tag"]) for f in render.figures]
        assert drawn == [(n, "svg") for n in figure_names(path.read_text(encoding="utf-8"))]
        for figure in render.figures:
            assert figure["shapes"] > 20 and figure["width"] >= 600 and figure["height"] >= 100, figure


async def test_h_on_the_sweep_view_writes_the_sweeps_report(pages):
    from fsat_console.app import FsatConsole
    from fsat_console.report import report_path
    from fsat_console.screens.main import MainScreen
    from fsat_console.screens.sweep import SweepScreen
    from tests.helpers.console import settle_workers
    from tests.helpers.waiting import wait_until

    out = report_path(pages.db, f"sweep-{pages.sweep_id}")
    app = FsatConsole(pages.db, poll_interval=0.1)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen) and app.overview is not None,
                         what="main screen")
        app.push_screen(SweepScreen(pages.sweep_id))
        await wait_until(pilot, lambda: isinstance(app.screen, SweepScreen) and app.screen.table is not None,
                         what="the sweep view")
        await pilot.press("H")
        messages = lambda: [n.message for n in app._notifications]  # noqa: E731
        await wait_until(pilot, lambda: f"Wrote {out}" in messages()
                         or any(n.severity == "error" for n in app._notifications),
                         timeout=REPORT_WAIT, what="the report")
        await settle_workers(pilot, app)
        assert f"Wrote {out}" in messages(), messages()
    page = out.read_text(encoding="utf-8")
    assert f"<h1>Sweep {pages.sweep_id}" in page and figure_names(page)[0] == "sweep-points"
    assert f"fsat report {pages.sweep_id} --sweep --out" in page
    _check_table(page, pages.sweep_id, pages.completed[2])
