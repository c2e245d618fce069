"""``fsat report``: the HTML report of a run, a comparison, a curriculum run, an ensemble and an unsaved blend.

Every report is written by the real CLI in a subprocess from a database whose
runs the engine's own code recorded (``tests/helpers/report_world.py``); its numbers
are checked against the store, the ensemble job's dry run and a straightforward
loop. That the pages render, show every figure and fetch nothing is
``tests/test_report_browser.py``.
"""

from __future__ import annotations

import html
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.reporting.confusion import outranking_counts, top_pairs
from engine.store import OOF, Store
from tests.helpers.processes import env_with_project, run_cli, run_read_only
from tests.helpers.report_world import ReportWorld, build_report_world, figure_names, page_tables


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> ReportWorld:
    return build_report_world(tmp_path_factory.mktemp("report"))


def _report(world: ReportWorld, *args: str, name: str, png: bool = True) -> tuple[str, dict]:
    out = world.db.parent / f"{name}.html"
    extra = ["--png", str(world.db.parent / f"{name}-png")] if png else []
    done = run_cli("report", *args, "--out", str(out), *extra, "--json", db=world.db)
    return out.read_text(encoding="utf-8"), json.loads(done.stdout)


@pytest.fixture(scope="module")
def reports(world: ReportWorld) -> dict[str, tuple[str, dict]]:
    """The four reports the issue names, and a blend not saved, each written once by the CLI."""
    a, b, c = world.trains
    return {
        "train": _report(world, a, name="train"),
        "compare": _report(world, a, b, c, "--baseline", b, name="compare"),
        "curriculum": _report(world, world.curriculum, name="curriculum"),
        "ensemble": _report(world, world.ensemble, name="ensemble"),
        "blend": _report(world, world.infer, b, c, "--blend", name="blend", png=False),
    }


def _self_contained(page: str) -> None:
    assert page.startswith("<!doctype html>")
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    lowered = page.lower()
    assert "<script" not in lowered and "<link" not in lowered and "@import" not in lowered
    for attribute in ("src=", "href="):
        for chunk in lowered.split(attribute)[1:]:
            target = chunk[1:].split(chunk[0], 1)[0] if chunk[:1] in "\"'" else chunk.split()[0]
            # Links inside the page and glyphs inside the SVGs only.
            assert target.startswith(("#", "data:")), f"{attribute}{target}"


def _pngs(written: dict, figures: list[str]) -> None:
    from PIL import Image

    assert [Path(p).stem.split("-", 1)[1] for p in written["pngs"]] == figures
    for path in written["pngs"]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 100
            pixels = np.asarray(image.convert("L"), dtype=np.float64)
            assert pixels.std() > 5, f"{path} is blank"


def test_a_train_run_report_has_its_curves_scores_classes_outranking_and_tta(world, reports):
    page, written = reports["train"]
    _self_contained(page)
    figures = figure_names(page)
    assert figures == ["scores", "learning-curves", "class-lrap", "outranking", "tta-gain"]
    assert written["figures"] == figures and written["kind"] == "run"
    _pngs(written, figures)
    run_id = world.trains[0]
    with Store(world.db, readonly=True) as store:
        run = store.get_run(run_id)
        folds = store.fold_scores(run_id)
        infer = store.get_run(world.infer)
        classes = store.class_scores(run_id, OOF)
    tables = page_tables(page)
    scores = tables["LWLRAP"]
    assert scores[1][:2] == [run_id, f"{run['cv_lwlrap']:.4f}"]
    mean = np.mean([f["lwlrap"] for f in folds])
    std = np.std([f["lwlrap"] for f in folds], ddof=1)
    assert scores[1][2:5] == [f"{mean:.4f}", f"{std:.4f}", "5"]
    fold_rows = tables["Folds"][1:]
    assert [(r[0], r[1], r[2]) for r in fold_rows] == [(str(f["fold"]), f"{f['lwlrap']:.4f}", str(f["best_epoch"]))
                                                         for f in folds]
    # The 80 classes, best first, as the store has them.
    per_class = tables["Per-class LRAP (out-of-fold)"][1:]
    assert len(per_class) == 80
    ranked = sorted(classes, key=lambda c: -c["lrap"])
    assert [float(r[1]) for r in per_class] == pytest.approx([c["lrap"] for c in ranked], abs=5e-5)
    # The TTA gain of its inference run, overall and per class.
    assert f"gain {infer['cv_lwlrap'] - run['cv_lwlrap']:+.4f}" in page
    assert len(tables["Per class"]) == 81
    # What it lacks is said, not left blank: the run has no test scores.
    assert "test LWLRAP: the run has no scored test predictions" in page
    assert written["absent"] == ["test LWLRAP: the run has no scored test predictions (no test ground truth, or no "
                                 "test scores)"]
    # Provenance: lineage names its inference run and the curriculum that used it as teacher.
    lineage = tables["Lineage"][1:]
    assert {r[1] for r in lineage} == {world.infer, world.curriculum}


def test_the_outranking_table_counts_what_the_scores_say(world, reports):
    page, _ = reports["train"]
    with Store(world.db, readonly=True) as store:
        run = store.get_run(world.trains[0])
        classes = store.get_dataset(run["dataset_id"])["classes"]
    from engine.data.labels import parse_label_csv

    _, truth = parse_label_csv(world.data / "train_curated.csv", classes)
    oof = np.load(Path(run["run_dir"]) / "oof.npy")
    expected = top_pairs(truth, oof, classes, limit=20)
    rows = page_tables(page)[f"Outranking pairs: {world.trains[0]}"][1:]
    assert [(r[0], r[1], int(r[2])) for r in rows] == [(t, c, n) for t, c, n, _ in expected.pairs]
    assert rows and int(rows[0][2]) >= int(rows[-1][2]) > 0


def test_outranking_counts_match_a_loop_over_clips_and_labels():
    rng = np.random.default_rng(0)
    truth = (rng.random((60, 7)) < 0.3).astype(np.float32)
    scores = np.round(rng.random((60, 7)), 1)  # ties on purpose: a tie is not outranking
    scores[5] = np.nan                         # an unscored clip counts for nothing
    expected = np.zeros((7, 7), dtype=np.int64)
    for i in range(60):
        if not np.isfinite(scores[i]).all():
            continue
        for t in np.flatnonzero(truth[i]):
            for c in np.flatnonzero(truth[i] == 0):
                expected[t, c] += scores[i, c] > scores[i, t]
    assert (outranking_counts(truth, scores) == expected).all()
    out = top_pairs(truth, scores, list("abcdefg"), limit=5)
    assert [n for _, _, n, _ in out.pairs] == sorted(expected.ravel().tolist(), reverse=True)[:5]
    assert out.clips == 59 and out.labels == int(truth[np.isfinite(scores).all(axis=1)].sum())


def test_a_comparison_of_three_runs_takes_deltas_against_the_pinned_baseline(world, reports):
    page, written = reports["compare"]
    _self_contained(page)
    a, b, c = world.trains
    figures = figure_names(page)
    assert figures == ["scores", "learning-curves", "class-lrap", "class-delta", "outranking-1", "outranking-2",
                       "outranking-3"]
    _pngs(written, figures)
    assert f"deltas against {b}" in page
    with Store(world.db, readonly=True) as store:
        cv = {r: store.get_run(r)["cv_lwlrap"] for r in world.trains}
    runs = {row[0]: row for row in page_tables(page)["Runs"][1:]}
    assert runs[f"{b} (baseline)"][-1] == "baseline"
    for r in (a, c):
        assert runs[r][3] == f"{cv[r]:.4f}" and runs[r][-1] == f"{cv[r] - cv[b]:+.4f}"
    # Only the settings that differ: the architecture, the seed, and what follows from them.
    diff = page_tables(page)["Configuration: only what differs"]
    assert diff[0] == ["setting", a, b, c]
    settings = {row[0]: row[1:] for row in diff[1:]}
    assert settings["model.arch"] == ["cnn14", "cnn14", "resnet38"] and settings["train.seed"] == ["1", "2", "3"]
    assert "train.epochs" not in settings
    classes = page_tables(page)["Per-class LRAP and deltas"]
    assert classes[0] == ["class", f"lrap:{a}", f"delta:{a}", f"lrap:{b}", f"lrap:{c}", f"delta:{c}", "weight"]
    for row in classes[1:]:
        assert float(row[2]) == pytest.approx(float(row[1]) - float(row[3]), abs=2e-4)


def test_a_curriculum_run_report_has_its_stages_gain_and_noisy_label_audit(world, reports):
    page, written = reports["curriculum"]
    _self_contained(page)
    figures = figure_names(page)
    assert figures == ["scores", "learning-curves", "class-lrap", "outranking", "curriculum-gain", "curriculum-audit"]
    _pngs(written, figures)
    assert "curriculum stage starts (A, B)" in page
    with Store(world.db, readonly=True) as store:
        audit = {r["class_name"]: r for r in store.noisy_audit(world.curriculum)}
        gain = {g["fold"]: g for g in store.curriculum_gain(world.curriculum)}
    assert f"gain {gain[OOF]['gain']:+.4f}" in page
    tables = page_tables(page)
    rows = tables["Noisy-label audit per class (means per fold)"]
    assert rows[0][-3:] == ["weak precision", "precision", "recall"]
    assert len(rows) == 81
    for row in rows[1:]:
        a = audit[row[0]]
        assert float(row[2]) == pytest.approx(a["n_kept"], abs=0.05)
        assert float(row[-2]) == pytest.approx(a["precision"], abs=5e-5)
        assert float(row[-1]) == pytest.approx(a["recall"], abs=5e-5)
    # Sorted by the share of weak labels dropped, most first.
    shares = [float(r[4]) for r in rows[1:] if r[4] != "—"]
    assert shares == sorted(shares, reverse=True)
    # The teacher is in the scores and the lineage.
    assert tables["LWLRAP"][2][0] == f"{world.trains[0]} (teacher)"
    assert tables["Lineage"][1][:2] == ["teacher", world.trains[0]]


def test_an_ensemble_report_has_members_weights_and_every_method_but_no_epochs(world, reports):
    page, written = reports["ensemble"]
    _self_contained(page)
    figures = figure_names(page)
    assert figures == ["scores", "blend-members", "blend-methods", "class-lrap", "outranking"]
    _pngs(written, figures)
    with Store(world.db, readonly=True) as store:
        members = store.run_members(world.ensemble)
        candidates = store.ensemble_candidates(world.ensemble)
        run = store.get_run(world.ensemble)
        member_cv = {m["member_run_id"]: store.get_run(m["member_run_id"])["cv_lwlrap"] for m in members}
    tables = page_tables(page)
    shown = tables["Members"][1:]
    assert [(r[0], r[1]) for r in shown] == [(m["member_run_id"], f"{m['weight']:.4f}") for m in members]
    for r in shown:
        assert r[3] == f"{run['cv_lwlrap'] - member_cv[r[0]]:+.4f}"
    methods = tables["Candidate methods"][1:]
    assert [r[0] for r in methods] == [c["method"] for c in candidates]
    assert [r[4] for r in methods] == ["yes" if c["chosen"] else "" for c in candidates]
    assert "cross-fitted over the dataset's stored folds" in html.unescape(page)
    assert "learning curves: an ensemble run records no epochs" in written["absent"]
    assert 'id="learning"' not in page


def test_an_unsaved_blend_is_scored_as_the_ensemble_job_scores_it(world, reports):
    page, written = reports["blend"]
    _self_contained(page)
    assert written["kind"] == "blend" and written["pngs"] == []
    members = [world.infer, world.trains[1], world.trains[2]]
    dry = json.loads(run_cli("ensemble", *members, "--dry-run", "--json", db=world.db).stdout)
    methods = page_tables(page)["Candidate methods"][1:]
    assert [(r[0], r[1]) for r in methods] == [(c["method"], "—" if c["oof_lwlrap"] is None
                                                 else f"{c['oof_lwlrap']:.4f}") for c in dry["candidates"]]
    weights = {r[0]: r[1] for r in page_tables(page)["Members"][1:]}
    assert weights == {m: f"{w:.4f}" for m, w in dry["weights"].items()}
    with Store(world.db, readonly=True) as store:
        assert not any(r["run_id"].startswith("ensemble-now") for r in store.list_runs())


def test_fsat_without_report_never_loads_matplotlib():
    code = ("import sys, engine.cli; engine.cli.build_parser().parse_args(['report', 'x', '--out', 'y']); "
            "print('matplotlib' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env_with_project(),
                         timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr


def _one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_a_missing_run_or_a_place_it_cannot_write_is_one_line(world, tmp_path):
    out = str(tmp_path / "r.html")
    _one_line_error(run_cli("report", "train-9999", "--out", out, db=world.db, check=False), "no run 'train-9999'")
    _one_line_error(run_cli("report", world.trains[0], "nope", "--out", out, db=world.db, check=False), "no run 'nope'")
    _one_line_error(run_cli("report", world.trains[0], "--out", str(tmp_path / "no" / "r.html"), db=world.db,
                            check=False), "does not exist")
    _one_line_error(run_cli("report", *world.trains[:2], "--baseline", world.trains[2], "--out", out, db=world.db,
                            check=False), "baseline")
    _one_line_error(run_cli("report", world.trains[0], "--out", out, db=tmp_path / "missing.db", check=False),
                    "no such database")
    assert not Path(out).exists()
    # A folder nobody may write to (read-only as the kernel enforces it, root included).
    locked = tmp_path / "locked"
    locked.mkdir()
    cmd = [sys.executable, "-m", "engine.reporting", "--db", str(world.db), world.trains[0], "--out",
           str(locked / "r.html")]
    _one_line_error(run_read_only(locked, cmd), "cannot write the report", str(locked / "r.html"))
    assert not list(locked.iterdir())
