"""The training recipe as a job: pretrained PANNs loading, the full augmentation path, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import CheckpointError
from engine.models.checkpoint import save_panns_style
from engine.models.panns import Cnn14
from engine.specs import resolve_spec
from engine.store import Store
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

# CNN14 is heavy on a CPU: one fold, two optimisation steps of 1 s crops.
CNN14_QUICK = ["train.folds=[0]", "train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=4",
               "audio.crop_seconds=1.0", "train.num_workers=0", "train.pin_memory=false",
               "augment.pitch_p=0", "augment.stretch_p=0"]


@pytest.fixture(scope="module")
def panns_dir(tmp_path_factory) -> Path:
    """A folder holding a randomly initialised CNN14 saved the way PANNs saves its checkpoints."""
    folder = tmp_path_factory.mktemp("panns")
    torch.manual_seed(0)
    save_panns_style(Cnn14(), folder / "Cnn14_mAP=0.431.pth")
    return folder


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_cnn14_recipe_trains_from_a_panns_checkpoint(tiny_demo: Path, tmp_path: Path, panns_dir: Path,
                                                      spawn_worker):
    db = tmp_path / "experiments.db"
    job_id = int(run_cli("queue", "train", "--data", str(tiny_demo), "--preset", "cnn14",
                         *_sets(CNN14_QUICK), db=db).stdout)
    assert spawn_worker(db, "--drain", env={"FSAT_PANNS_DIR": str(panns_dir)}).wait(timeout=600) == 0
    store = Store(db)
    job = store.get_job(job_id)
    assert job.status == "done", job.error
    run = store.get_run(job.run_id)
    assert run["model"] == "cnn14-64mel" and run["config"]["loss"]["label_smoothing"] == 0.05
    log = (Path(run["run_dir"]) / "job.log").read_text()
    assert "pretrained tensors from" in log and "head classifier initialised" in log
    (epoch,) = store.epochs(job.run_id)
    assert epoch["clips_per_sec"] > 0 and np.isfinite(epoch["train_loss"])
    assert [f["fold"] for f in store.fold_scores(job.run_id)] == [0]


def test_missing_checkpoint_fails_with_where_to_put_it(tiny_demo: Path, tmp_path: Path, spawn_worker):
    db = tmp_path / "experiments.db"
    job_id = int(run_cli("queue", "train", "--data", str(tiny_demo), "--preset", "cnn14",
                         *_sets(CNN14_QUICK), db=db).stdout)
    empty = tmp_path / "no-weights"
    empty.mkdir()
    assert spawn_worker(db, "--drain", env={"FSAT_PANNS_DIR": str(empty)}).wait(timeout=300) == 0
    job = Store(db).get_job(job_id)
    assert job.status == "failed"
    assert "Cnn14_mAP=0.431.pth" in job.error and "FSAT_PANNS_DIR" in job.error
    assert 'pretrained = "optional"' in job.error


def test_optional_pretrained_trains_from_scratch_when_absent(monkeypatch, tmp_path: Path):
    from engine.jobs.train import make_model

    monkeypatch.setenv("FSAT_PANNS_DIR", str(tmp_path))
    spec = resolve_spec("train", preset="cnn14", data_root="/d", overrides=["model.pretrained=optional"])
    said: list[str] = []
    model = make_model(spec, 80, log=said.append)
    assert model.encoder is not None and "from scratch" in said[0]
    strict = resolve_spec("train", preset="cnn14", data_root="/d")
    with pytest.raises(CheckpointError, match="Cnn14_mAP=0.431.pth"):
        make_model(strict, 80, log=said.append)


def test_same_config_and_seed_give_the_same_fold_scores(tiny_demo: Path, tmp_path: Path, spawn_worker):
    db = tmp_path / "experiments.db"
    sets = _sets(["train.folds=[1]", "train.epochs=2", "train.patience=2", "augment.gain_p=0.5",
                  "augment.noise_p=0.5", "augment.shift_p=0.5", "augment.specaug_p=1.0", "augment.mixup_p=0.5",
                  "train.balanced_sampler=true"])
    ids = [int(run_cli("queue", "train", "--data", str(tiny_demo), "--preset", "demo", *sets, db=db).stdout)
           for _ in range(2)]
    other = int(run_cli("queue", "train", "--data", str(tiny_demo), "--preset", "demo", *sets,
                        "--set", "train.seed=7", db=db).stdout)
    assert spawn_worker(db, "--drain").wait(timeout=600) == 0
    store = Store(db)
    runs = [store.get_job(i).run_id for i in (*ids, other)]
    oofs = [np.load(Path(store.get_run(r)["run_dir"]) / "oof.npy") for r in runs]
    epochs = [[(e["train_loss"], e["val_lwlrap"]) for e in store.epochs(r)] for r in runs]
    assert epochs[0] == epochs[1]
    np.testing.assert_array_equal(oofs[0], oofs[1])
    assert epochs[2] != epochs[0], "another seed should change the run"


def test_auto_batch_size_is_found_by_trying():
    from engine.features.frontend import LogMelFrontend
    from engine.models.small import SmallTagger
    from engine.train.loop import Tagger, find_batch_size

    tagger = Tagger(LogMelFrontend(), SmallTagger(width=4))
    assert find_batch_size(tagger, 80, 16000, torch.device("cpu"), start=2, limit=16) == 16

    class MemoryBound(torch.nn.Module):
        """A model that runs out of memory above 8 clips, as a GPU would."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = SmallTagger(width=4)
            self.head, self.encoder = self.inner.head, self.inner.encoder

        def forward(self, x):
            if x.shape[0] > 8:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.inner(x)

    bounded = Tagger(LogMelFrontend(), MemoryBound())
    assert find_batch_size(bounded, 80, 16000, torch.device("cpu"), start=2, limit=64) == 8


def test_zero_shot_run_needs_no_training(tiny_demo: Path, tmp_path: Path, panns_dir: Path, spawn_worker):
    from engine.models.heads import AUDIOSET_INDEX_80

    db = tmp_path / "experiments.db"
    job_id = int(run_cli("queue", "train", "--data", str(tiny_demo), "--preset", "cnn14_zeroshot",
                         *_sets(["audio.crop_seconds=1.0", "train.batch_size=16", "train.num_workers=0",
                                 "train.folds=[0, 1]"]),
                         db=db).stdout)
    assert spawn_worker(db, "--drain", env={"FSAT_PANNS_DIR": str(panns_dir)}).wait(timeout=600) == 0
    store = Store(db)
    job = store.get_job(job_id)
    assert job.status == "done", job.error
    assert store.epochs(job.run_id) == []
    folds = store.fold_scores(job.run_id)
    assert [f["fold"] for f in folds] == [0, 1] and all(f["best_epoch"] is None for f in folds)
    assert 0 < store.get_run(job.run_id)["cv_lwlrap"] <= 1
    pretrained = torch.load(panns_dir / "Cnn14_mAP=0.431.pth", weights_only=True)["model"]
    fold0 = torch.load(Path(store.get_run(job.run_id)["run_dir"]) / "fold0" / "best.pt", weights_only=True)["model"]
    torch.testing.assert_close(fold0["head.cla.weight"].squeeze(),
                               pretrained["fc_audioset.weight"][AUDIOSET_INDEX_80])
    torch.testing.assert_close(fold0["encoder.conv_block1.conv1.weight"], pretrained["conv_block1.conv1.weight"])
