"""A database with every kind of run a report covers, recorded through the engine's own code.

Three trained runs (5 folds, epochs streamed through the run layer's
recorder, fold and out-of-fold scores through ``engine.runs.scores``), an
inference run of the first, a curriculum run with it as teacher (epochs with
stages, the noisy-label audit of ``engine.curriculum``'s filter against a known
truth), and an ensemble saved by the ensemble job's own ``build_ensemble``.
The dataset folder holds ``train_curated.csv`` (the curated truth the
outranking view reads) and empty clip files. Scores are made here with numpy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.datasets import ENSEMBLE_CLASSES, multi_hot_truth, write_dataset
from tests.helpers.recording import finish_trained_run, record_run, record_trained_fold, tagger_scores

#: Curated clips of the world's dataset (every class has positives).
N_CLIPS = 240
N_FOLDS = 5


@dataclass
class ReportWorld:
    """The database and the run ids worth reporting on."""

    db: Path
    data: Path
    trains: list[str]
    infer: str
    curriculum: str
    ensemble: str


def _epochs(store, run_id: str, fold: int, val_lwlraps: list[float], *, loss: float, first: int = 1,
            stages: list[str] | None = None) -> list:
    """Epochs of one fold as a training fold reports them (``EpochRecord`` into the run layer's ``StoreRecorder``).

    Losses fall from ``loss`` as 1/epoch (validation a little above training); ``stages`` tags each epoch.
    """
    from engine.runs.recorder import EpochRecord, StoreRecorder

    recorder = StoreRecorder(store, run_id, log=lambda line: None)
    records, best = [], float("-inf")
    for i, value in enumerate(val_lwlraps):
        epoch = first + i
        record = EpochRecord(fold=fold, epoch=epoch, train_loss=loss / (i + 1), val_loss=1.15 * loss / (i + 1) + 0.02 * fold,
                             val_lwlrap=float(value), lr=1e-3 / (i + 1), seconds=8.0 + fold,
                             clips_per_sec=48.0 / (1 + 0.1 * fold), is_best=float(value) > best,
                             tag=stages[i] if stages else "")
        best = max(best, float(value))
        recorder.epoch(record)
        records.append(record)
    return records


def _train(store, runs_root: Path, ds: int, truth, folds, name: str, arch: str, seed: int, skill: float,
           epochs: int = 6) -> str:
    """A finished 5-fold train run: its job claimed and finished, epochs per fold, fold and out-of-fold scores."""
    job = store.enqueue("train", {"train": {"epochs": epochs, "seed": seed}, "model": {"arch": arch}}, name=name)
    claimed = store.claim("w-report")
    run_id = f"train-{claimed.id:04d}"
    record_run(store, runs_root, run_id, dataset_id=ds, job_id=job, name=name, status="running",
               overrides=(f'model.arch="{arch}"', f"train.epochs={epochs}", f"train.seed={seed}"))
    from engine.metrics import lwlrap

    oof = tagger_scores(truth, skill=skill, seed=seed, shared=0.5)
    for k in range(N_FOLDS):
        # Validation LWLRAP per epoch rising to what the fold's scores give.
        final = lwlrap(truth[folds == k], oof[folds == k])
        curve = [final - 0.3 / e + 0.3 / epochs - 0.01 * ((k + e * seed) % 3) for e in range(1, epochs + 1)]
        records = _epochs(store, run_id, k, curve, loss=0.5 + 2.0 / skill)
        record_trained_fold(store, runs_root, run_id, k, records, truth, oof, folds)
    cv = finish_trained_run(store, runs_root, run_id, truth)
    store.finish_job(job, worker_id="w-report", attempt=claimed.attempts, message=f"CV lwlrap {cv:.4f}")
    return run_id


def _curriculum(store, runs_root: Path, ds: int, truth, folds, teacher: str) -> str:
    """A curriculum run of ``teacher``: two stages per fold, scores, and the filter's audit on a noisy set."""
    from engine.curriculum import audit_per_class, clip_weights, filter_labels
    from engine.runs.folder import RunFolder
    from engine.runs.scores import record_fold_scores, record_oof_scores

    run_id = "curriculum-0100"
    record_run(store, runs_root, run_id, kind="curriculum", dataset_id=ds, parent=teacher, status="running",
               name="curriculum of " + teacher, overrides=("train.epochs=4", "train.seed=5"))
    oof = tagger_scores(truth, skill=4.2, seed=5, shared=0.5)
    RunFolder(runs_root / run_id).save_array(RunFolder(runs_root / run_id).oof, oof)
    classes = list(ENSEMBLE_CLASSES)
    for k in range(N_FOLDS):
        rows = np.asarray(folds) == k
        score = record_fold_scores(store, run_id, k, truth[rows], oof[rows], classes, best_epoch=3)  # the last epoch, the best
        _epochs(store, run_id, k, [score - below for below in (0.15, 0.08, 0.03, 0.0)], loss=0.9, first=0,
                stages=["A", "A", "B", "B"])
    cv, _ = record_oof_scores(store, run_id, truth, oof, classes)
    # The noisy set: weak labels with a third of them wrong, the teacher's probabilities, the true labels.
    rng = np.random.default_rng(11)
    noisy_truth = multi_hot_truth(400, len(classes), seed=12).astype(bool)
    weak = noisy_truth.copy()
    wrong = rng.random(len(weak)) < 0.33
    weak[wrong] = np.roll(weak[wrong], 7, axis=1)
    probs = tagger_scores(noisy_truth, skill=5.0, seed=13)
    for k in range(N_FOLDS):
        filt = filter_labels(weak, probs, keep_threshold=0.7, pseudo_threshold=0.97)
        audit = audit_per_class(filt, clip_weights(filt, probs), classes, noisy_truth)
        for c, row in enumerate(audit):
            final, true = filt.labels[:, c], noisy_truth[:, c]
            row.update(n_final=int(final.sum()), n_true=int(true.sum()), n_final_right=int((final & true).sum()))
        store.record_noisy_audit(run_id, k, audit)
    store.finish_run(run_id, status="done", cv_lwlrap=cv)
    return run_id


def build_report_world(root: Path) -> ReportWorld:
    """Write the dataset and record every run under ``root``."""
    from engine.jobs.ensemble import build_ensemble
    from engine.specs import EnsembleSpec, from_dict
    from engine.store import Store

    truth = multi_hot_truth(N_CLIPS, len(ENSEMBLE_CLASSES), seed=3)
    data = root / "data"
    write_dataset(data, truth)
    db = root / "experiments.db"
    runs_root = root / "runs"
    folds = np.arange(N_CLIPS) % N_FOLDS
    with Store(db) as store:
        ds = store.register_dataset(data, name="demo", classes=ENSEMBLE_CLASSES, n_curated=N_CLIPS)
        store.save_folds(ds, [f"clip{i:03d}.wav" for i in range(N_CLIPS)], folds.tolist(), seed=42, n_folds=N_FOLDS)
        trains = [_train(store, runs_root, ds, truth, folds, "cnn14 baseline", "cnn14", 1, 3.0),
                  _train(store, runs_root, ds, truth, folds, "cnn14 mixup", "cnn14", 2, 3.6),
                  _train(store, runs_root, ds, truth, folds, "resnet38", "resnet38", 3, 3.3)]
        infer = "infer-0100"
        record_run(store, runs_root, infer, kind="infer", dataset_id=ds, parent=trains[0], truth=truth, folds=folds,
                   oof=tagger_scores(truth, skill=3.4, seed=1, shared=0.5),
                   test=np.random.default_rng(4).random((3, len(ENSEMBLE_CLASSES))), name="tta of " + trains[0])
        curriculum = _curriculum(store, runs_root, ds, truth, folds, trains[0])
        spec = from_dict(EnsembleSpec, {"members": [infer, trains[1], trains[2]], "name": "blend of three"})
        ensemble = "ensemble-0100"
        build_ensemble(store, spec, run_id=ensemble, run_dir=runs_root / ensemble, log=lambda line: None)
    return ReportWorld(db=db, data=data, trains=trains, infer=infer, curriculum=curriculum, ensemble=ensemble)


def figure_names(page: str) -> list[str]:
    """The ``data-figure`` names of a report page, in page order."""
    import re

    return re.findall(r'<figure class="plot" id="fig-[^"]+" data-figure="([^"]+)"', page)


def page_tables(page: str) -> dict[str, list[list[str]]]:
    """Each table of a report page by its caption (or folded summary, without the row count): header, then rows."""
    import re
    from html.parser import HTMLParser

    class Tables(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tables: dict[str, list[list[str]]] = {}
            self.title = ""
            self.rows: list[list[str]] | None = None
            self.cell: list[str] | None = None
            self.heading: list[str] | None = None

        def handle_starttag(self, tag: str, attrs) -> None:
            if tag in ("caption", "summary"):
                self.heading = []
            elif tag == "table":
                self.rows = []
            elif tag == "tr" and self.rows is not None:
                self.rows.append([])
            elif tag in ("td", "th") and self.rows is not None:
                self.cell = []

        def handle_endtag(self, tag: str) -> None:
            if tag in ("caption", "summary") and self.heading is not None:
                self.title = re.sub(r" \(\d+ rows\)$", "", "".join(self.heading).strip())
                self.heading = None
            elif tag in ("td", "th") and self.cell is not None and self.rows:
                self.rows[-1].append("".join(self.cell).strip())
                self.cell = None
            elif tag == "table" and self.rows is not None:
                self.tables[self.title] = self.rows
                self.rows = None

        def handle_data(self, data: str) -> None:
            if self.heading is not None:
                self.heading.append(data)
            if self.cell is not None:
                self.cell.append(data)

    parser = Tables()
    parser.feed(page)
    return parser.tables


#: ``fsat sweep`` settings of the smallest real sweep: widths 8 and 16 × seeds 1, 2, one short epoch per fold,
#: screened on fold 0 keeping 1 point. The shared ``model.width=8`` makes point 0 the sweep's own settings (its
#: "preset point"), so the wider point 1 is set against it once both have trained every fold.
SWEEP_ARGS = ("--preset", "demo", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=4", "--set",
              "audio.crop_seconds=1", "--set", "optim.warmup_epochs=0", "--set", "model.width=8",
              "--grid", "model.width=[8,16]", "--seeds", "1,2", "--screen-fold", "0", "--keep", "1")


def run_demo_sweep(db: Path, data: Path, *, drain_queue: bool = True) -> int:
    """Queue the smallest real sweep with ``fsat sweep`` and, with ``drain_queue``, train it with a real worker;
    returns the sweep id."""
    from tests.helpers.processes import drain, run_cli

    sweep_id = int(run_cli("sweep", *SWEEP_ARGS, "--data", str(data), db=db).stdout)
    if drain_queue:
        drain(db)
    return sweep_id


def sweep_expectations(db: Path, sweep_id: int) -> dict[int, dict]:
    """Per point, straight from its runs' recorded scores: the mean and sample std over seeds of the out-of-fold
    LWLRAP of the runs that trained all 5 folds, the screening fold 0's mean LWLRAP, and the folds trained."""
    import statistics

    from engine.store import Store

    with Store(db, readonly=True) as store:
        runs = store.sweep_runs(sweep_id)
        folds = {r["run_id"]: {f["fold"]: f["lwlrap"] for f in store.fold_scores(r["run_id"])} for r in runs}
        cv = {r["run_id"]: (store.get_run(r["run_id"]) or {}).get("cv_lwlrap") for r in runs}
    out: dict[int, dict] = {}
    for point in sorted({r["point"] for r in runs}):
        ids = [r["run_id"] for r in runs if r["point"] == point]
        complete = [cv[i] for i in ids if len(folds[i]) == N_FOLDS]
        screen = [folds[i][0] for i in ids if 0 in folds[i]]
        out[point] = {"runs": ids, "cv_mean": statistics.mean(complete) if complete else None,
                      "cv_std": statistics.stdev(complete) if len(complete) > 1 else None,
                      "screen": statistics.mean(screen) if len(screen) == len(ids) else None,
                      "folds": sum(len(folds[i]) for i in ids)}
    return out


def require_chromium() -> str:
    """The Chromium to render reports with; skips without one, fails instead where a run requires it (CI)."""
    from engine.reporting.browser import chromium_path

    path = chromium_path()
    if path is None:
        reason = "no Chromium to render with (Debian: apt-get install chromium; or set FSAT_CHROMIUM)"
        if os.environ.get("FSAT_REQUIRE_BROWSER") or os.environ.get("CI"):
            pytest.fail(reason + "; this run requires it (FSAT_REQUIRE_BROWSER / CI)")
        pytest.skip(reason)
    return path
