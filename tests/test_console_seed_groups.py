"""The console's runs table shows each run's seed group: OOF mean ± std over seeds, live, next to its CV."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest

from engine.data.labels import FSD2019_CLASSES
from engine.store import Store
from fsat_console.app import FsatConsole
from tests.helpers.console import cell_text, settle_workers, table
from tests.helpers.datasets import multi_hot_truth
from tests.helpers.recording import record_run, tagger_scores
from tests.helpers.waiting import wait_until

N_CLIPS = 200


def _record(store: Store, root: Path, dataset: int, run_id: str, seed: int, *, width: int = 16) -> float:
    """A demo-preset train run of ``seed`` scored on every fold (the engine's own recording); its CV LWLRAP."""
    truth = multi_hot_truth(N_CLIPS, len(FSD2019_CLASSES), seed=3)
    oof = tagger_scores(truth, skill=2.0, seed=seed, shared=0.5)
    record_run(store, root / "runs", run_id, dataset_id=dataset, oof=oof, truth=truth,
               folds=np.arange(N_CLIPS) % 5, overrides=(f"train.seed={seed}", f"model.width={width}"))
    return store.get_run(run_id)["cv_lwlrap"]


def _expected(cvs: list[float]) -> str:
    return f"{statistics.mean(cvs):.4f} ± {statistics.stdev(cvs):.4f} ({len(cvs)})"


async def test_two_seeds_of_one_config_show_their_group_and_a_third_seed_updates_it_live(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSAT_PANNS_DIR", "")
    db = tmp_path / "experiments.db"
    with Store(db) as store:
        dataset = store.register_dataset(tmp_path / "data", name="demo", classes=FSD2019_CLASSES,
                                         n_curated=N_CLIPS)
        cvs = [_record(store, tmp_path, dataset, "train-0001", 1), _record(store, tmp_path, dataset, "train-0002", 2)]
        _record(store, tmp_path, dataset, "train-0003", 1, width=8)  # another config: a group of one seed
    assert cvs[0] != cvs[1]
    app = FsatConsole(db, poll_interval=0.1)
    async with app.run_test(size=(160, 40)) as pilot:
        runs = table(app, "runs")
        await wait_until(pilot, lambda: runs.row_count == 3, what="the three runs")
        # The first poll paints the runs; the groups come with the next one.
        await wait_until(pilot, lambda: cell_text(runs, "train-0001", "group") != "", what="the group's cell")
        await settle_workers(pilot, app)
        assert cell_text(runs, "train-0001", "group") == cell_text(runs, "train-0002", "group") == _expected(cvs)
        assert cell_text(runs, "train-0003", "group") == ""
        # Beside the run's own CV LWLRAP and its difference to the pinned run.
        keys = [str(c.key.value) for c in runs.ordered_columns]
        assert keys.index("group") == keys.index("delta") + 1 == keys.index("cv") + 2

        # A third seed finishes while the console is open: the group's cell follows.
        with Store(db) as store:
            cvs.append(_record(store, tmp_path, dataset, "train-0004", 3))
        await wait_until(pilot, lambda: cell_text(runs, "train-0001", "group") == _expected(cvs),
                         what="the group of three seeds")
        assert cell_text(runs, "train-0004", "group") == _expected(cvs)
        assert cell_text(runs, "train-0003", "group") == ""
