"""``fsat compare`` and the compare screen pair classes by name and compare runs on the clips both scored.

Each case was a wrong number shown as right: runs of two datasets whose
``sample_submission.csv`` lists the classes in another order got another
class's score, and a run of 2 of 5 folds was compared with a 5-fold run on
different clips.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from engine.compare import compare_runs
from engine.data.labels import FSD2019_CLASSES
from engine.errors import FsatError
from engine.metrics import lwlrap, per_class_lwlrap
from engine.store import OOF, Store
from tests.helpers.datasets import multi_hot_truth
from tests.helpers.processes import run_cli
from tests.helpers.recording import record_run, tagger_scores

CLASSES = list(FSD2019_CLASSES)
N_CLIPS = 200


def write_labels(root: Path, truth: np.ndarray, classes: list[str]) -> Path:
    """``train_curated.csv`` and ``sample_submission.csv`` (classes in the order given) of ``truth``.

    ``truth``'s columns follow :data:`CLASSES`, whatever order the files list them in.
    """
    root.mkdir(parents=True)
    with open(root / "train_curated.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["fname", "labels"])
        for i, row in enumerate(truth):
            writer.writerow([f"clip{i:03d}.wav", ",".join(CLASSES[j] for j in np.flatnonzero(row))])
    with open(root / "sample_submission.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["fname", *classes], ["t0.wav", *["0"] * len(classes)]])
    return root


@pytest.fixture
def truth() -> np.ndarray:
    return multi_hot_truth(N_CLIPS, len(CLASSES), seed=5)


def register(store: Store, root: Path, classes: list[str], folds: np.ndarray | None = None) -> int:
    ds = store.register_dataset(root, name=root.name, classes=classes, n_curated=N_CLIPS)
    if folds is not None:
        store.save_folds(ds, [f"clip{i:03d}.wav" for i in range(N_CLIPS)], folds.tolist(), seed=42,
                         n_folds=int(folds.max()) + 1)
    return ds


def test_classes_are_paired_by_name_across_datasets_that_order_them_differently(tmp_path: Path, truth) -> None:
    db = tmp_path / "experiments.db"
    reordered = CLASSES[::-1]
    column = [CLASSES.index(c) for c in reordered]  # column j of the reordered dataset is CLASSES[column[j]]
    scores = tagger_scores(truth, 1.2, seed=1)
    with Store(db) as store:
        first = register(store, write_labels(tmp_path / "a", truth, CLASSES), CLASSES)
        second = register(store, write_labels(tmp_path / "b", truth, reordered), reordered)
        # The same predictions, each written in its dataset's class order.
        record_run(store, tmp_path / "runs", "train-0001", dataset_id=first, oof=scores, truth=truth)
        record_run(store, tmp_path / "runs", "train-0002", dataset_id=second, oof=scores[:, column],
                   truth=truth[:, column])
        comp = compare_runs(store, ["train-0001", "train-0002"])
    rows = comp.class_rows()
    assert len(rows) == 80
    per_class, _ = per_class_lwlrap(truth, scores)
    for r in rows:
        k = CLASSES.index(r["class_name"])
        assert r["lrap:train-0001"] == pytest.approx(per_class[k])
        assert r["lrap:train-0002"] == pytest.approx(per_class[k])
        assert r["delta:train-0002"] == pytest.approx(0.0, abs=1e-9), r
    assert comp.summary_rows()[1]["delta_cv"] == pytest.approx(0.0, abs=1e-9)
    out = json.loads(run_cli("compare", "train-0001", "train-0002", "--json", db=db).stdout)
    assert all(abs(c["delta:train-0002"]) < 1e-9 for c in out["classes"])


def test_runs_of_datasets_with_other_classes_are_refused_with_the_reason(tmp_path: Path, truth) -> None:
    db = tmp_path / "experiments.db"
    renamed = CLASSES[:-1] + ["Something_else"]
    with Store(db) as store:
        first = register(store, write_labels(tmp_path / "a", truth, CLASSES), CLASSES)
        second = store.register_dataset(tmp_path / "b", name="b", classes=renamed, n_curated=N_CLIPS)
        record_run(store, tmp_path / "runs", "train-0001", dataset_id=first, oof=tagger_scores(truth, 1, seed=1),
                   truth=truth)
        record_run(store, tmp_path / "runs", "train-0002", dataset_id=second, oof=tagger_scores(truth, 1, seed=2),
                   truth=truth)
        with pytest.raises(FsatError, match="Zipper_\\(clothing\\).*Something_else|classes"):
            compare_runs(store, ["train-0001", "train-0002"])
    out = run_cli("compare", "train-0001", "train-0002", db=db, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Something_else" in out.stderr


@pytest.fixture
def five_and_two(tmp_path: Path, truth) -> dict:
    """A run of all 5 folds and a run of folds 0 and 1 only, on one dataset."""
    db = tmp_path / "experiments.db"
    folds = np.arange(N_CLIPS) % 5
    full = tagger_scores(truth, 1.0, seed=1)
    two = tagger_scores(truth, 1.4, seed=2)
    two[folds >= 2] = np.nan  # folds 2-4 were never trained
    with Store(db) as store:
        ds = register(store, write_labels(tmp_path / "data", truth, CLASSES), CLASSES, folds)
        record_run(store, tmp_path / "runs", "train-0001", dataset_id=ds, oof=full, truth=truth, folds=folds)
        record_run(store, tmp_path / "runs", "train-0002", dataset_id=ds, oof=two, truth=truth, folds=folds)
    common = folds < 2
    return {"db": db, "truth": truth, "full": full, "two": two, "common": common, "folds": folds,
            "tmp": tmp_path}


def test_runs_that_scored_other_clips_are_compared_on_the_clips_both_scored(five_and_two: dict) -> None:
    w = five_and_two
    common, truth = w["common"], w["truth"]
    with Store(w["db"]) as store:
        # Each run's own record: the 5-fold run over 200 clips, the other over 80.
        assert store.get_run("train-0001")["cv_lwlrap"] == pytest.approx(lwlrap(truth, w["full"]))
        comp = compare_runs(store, ["train-0001", "train-0002"])
        fold_scores = {r: {f["fold"]: f["lwlrap"] for f in store.fold_scores(r)} for r in comp.run_ids}
    assert comp.basis.common == int(common.sum()) == 80
    assert comp.basis.scored == {"train-0001": 200, "train-0002": 80}
    assert "80 of 200" in comp.basis.text() and "train-0001 scored 200" in comp.basis.text()
    cv = {"train-0001": lwlrap(truth[common], w["full"][common]), "train-0002": lwlrap(truth[common], w["two"][common])}
    summary = {r["run_id"]: r for r in comp.summary_rows()}
    assert summary["train-0001"]["cv_lwlrap"] == pytest.approx(cv["train-0001"])
    assert summary["train-0002"]["cv_lwlrap"] == pytest.approx(cv["train-0002"])
    assert summary["train-0002"]["delta_cv"] == pytest.approx(cv["train-0002"] - cv["train-0001"])
    # Fold mean ± std over the folds both runs trained.
    assert summary["train-0001"]["folds"] == summary["train-0002"]["folds"] == 2
    assert summary["train-0001"]["fold_mean"] == pytest.approx(np.mean([fold_scores["train-0001"][k] for k in (0, 1)]))
    base, _ = per_class_lwlrap(truth[common], w["full"][common])
    other, weights = per_class_lwlrap(truth[common], w["two"][common])
    for r in comp.class_rows():
        k = CLASSES.index(r["class_name"])
        if np.isnan(base[k]):
            assert r["lrap:train-0001"] is None and r["delta:train-0002"] is None
            continue
        assert r["lrap:train-0001"] == pytest.approx(base[k])
        assert r["delta:train-0002"] == pytest.approx(other[k] - base[k])
        assert r["weight"] == pytest.approx(weights[k])


def test_fsat_compare_says_which_clips_it_compared(five_and_two: dict) -> None:
    db = five_and_two["db"]
    text = run_cli("compare", "train-0001", "train-0002", db=db).stdout
    assert "compared on the 80 of 200 curated clips every run scored" in " ".join(text.split())
    out = json.loads(run_cli("compare", "train-0001", "train-0002", "--json", db=db).stdout)
    assert out["clips"]["common"] == 80 and out["clips"]["scored"] == {"train-0001": 200, "train-0002": 80}
    md = run_cli("compare", "train-0001", "train-0002", "--markdown", db=db).stdout
    assert "80 of 200 curated clips" in md


def test_runs_that_scored_the_same_clips_keep_their_recorded_numbers(tmp_path: Path, truth) -> None:
    folds = np.arange(N_CLIPS) % 5
    with Store(tmp_path / "experiments.db") as store:
        ds = register(store, write_labels(tmp_path / "data", truth, CLASSES), CLASSES, folds)
        for i, skill in enumerate((1.0, 1.3)):
            record_run(store, tmp_path / "runs", f"train-000{i + 1}", dataset_id=ds,
                       oof=tagger_scores(truth, skill, seed=i), truth=truth, folds=folds)
        comp = compare_runs(store, ["train-0001", "train-0002"])
        recorded = {c["class_name"]: c["lrap"] for c in store.class_scores("train-0002", OOF)}
        cv = store.get_run("train-0002")["cv_lwlrap"]
    assert comp.basis.common == N_CLIPS and not comp.basis.recomputed
    assert comp.basis.text() == f"every run scored the same {N_CLIPS} curated clips"
    assert {r["class_name"]: r["lrap:train-0002"] for r in comp.class_rows()} == recorded
    assert comp.summary_rows()[1]["cv_lwlrap"] == cv


def test_a_missing_oof_file_is_said_not_hidden(five_and_two: dict) -> None:
    (five_and_two["tmp"] / "runs" / "train-0002" / "oof.npy").unlink()
    with Store(five_and_two["db"]) as store:
        comp = compare_runs(store, ["train-0001", "train-0002"])
    assert comp.basis.common is None and "oof.npy" in comp.basis.problem
    # The recorded numbers say the runs scored 200 and 80 clips: said, not hidden.
    assert "200" in comp.basis.text() and "80" in comp.basis.text()
    out = run_cli("compare", "train-0001", "train-0002", db=five_and_two["db"]).stdout
    assert "not checked" in " ".join(out.split())


def test_a_run_that_has_scored_nothing_yet_is_compared_on_its_own_numbers(five_and_two: dict) -> None:
    w = five_and_two
    with Store(w["db"]) as store:
        ds = store.get_run("train-0001")["dataset_id"]
        record_run(store, w["tmp"] / "runs", "train-0003", dataset_id=ds, status="running",
                   oof=np.full_like(w["full"], np.nan))
        comp = compare_runs(store, ["train-0001", "train-0003"])
    assert comp.basis.common == 0 and not comp.basis.recomputed
    assert "no labelled clip was scored by every run" in comp.basis.text()
    assert comp.summary_rows()[1]["cv_lwlrap"] is None


async def test_the_compare_screen_compares_on_the_clips_both_scored(five_and_two: dict, monkeypatch) -> None:
    from fsat_console.app import FsatConsole
    from fsat_console.screens.compare import CompareScreen
    from fsat_console.widgets.live_table import LiveTable
    from tests.helpers.console import screen_text
    from tests.helpers.waiting import wait_until

    w = five_and_two
    common, truth = w["common"], w["truth"]
    base, _ = per_class_lwlrap(truth[common], w["full"][common])
    other, _ = per_class_lwlrap(truth[common], w["two"][common])
    expected = {f"{b - a:+.4f}" for a, b in zip(base, other) if not np.isnan(a)}
    app = FsatConsole(w["db"], poll_interval=0.1, start_worker=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_until(pilot, lambda: app.overview is not None, what="the main screen")
        app.push_screen(CompareScreen(["train-0001", "train-0002"], "train-0001"))
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.comp is not None,
                         what="the comparison")
        classes = app.screen.query_one("#compare-classes", LiveTable)
        await wait_until(pilot, lambda: classes.row_count == 80, what="80 classes")
        shown = {classes.get_cell(k, "delta:train-0002").plain for k in classes.rows} - {"—"}
        assert shown == expected
        assert "80 of 200 curated clips" in " ".join(screen_text(app).split())
