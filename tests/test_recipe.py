"""The training recipe as a job: pretrained PANNs loading, the full augmentation path, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import CheckpointError
from engine.models.checkpoint import save_panns_style
from engine.models.panns import Cnn14
from engine.presets import resolve_spec
from engine.store import Store
from tests.helpers.processes import PROJECT, run_cli

pytestmark = pytest.mark.slow

# CNN14 is heavy on a CPU: one fold, two optimisation steps of 1 s crops.
CNN14_QUICK = ["train.folds=[0]", "train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=4",
               "audio.crop_seconds=1.0", "train.num_workers=0", "train.pin_memory=false",
               "augment.backend=\"device\""]


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
    # The full waveform augmentation ran batched in the training step (the path CUDA runs by default).
    assert run["config"]["augment"]["backend"] == "device" and run["config"]["augment"]["stretch_p"] == 0.2
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
    from engine.models.registry import model_from_spec as make_model

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
    # Short: 1 s crops, 8 steps per epoch (every random draw is still made: sampler, augmentation, MixUp).
    sets = _sets(["train.folds=[1]", "train.epochs=2", "train.patience=2", "audio.crop_seconds=1.0",
                  "train.steps_per_epoch=8", "augment.gain_p=0.5",
                  "augment.noise_p=0.5", "augment.shift_p=0.5", "augment.specaug_p=1.0", "augment.mixup_p=0.5",
                  "train.balanced_sampler=true"])
    # The second reads its clips another way (loader processes, decode threads): that changes no result.
    loaders = [[], ["--set", "train.num_workers=2", "--set", "train.decode_workers=1",
                    "--set", "train.persistent_workers=false"]]
    ids = [int(run_cli("queue", "train", "--data", str(tiny_demo), "--preset", "demo", *sets, *loader,
                       db=db).stdout) for loader in loaders]
    other = int(run_cli("queue", "train", "--data", str(tiny_demo), "--preset", "demo", *sets,
                        "--set", "train.seed=7", db=db).stdout)
    assert spawn_worker(db, "--drain").wait(timeout=600) == 0
    store = Store(db)
    runs = [store.get_job(i).run_id for i in (*ids, other)]
    oofs = [np.load(Path(store.get_run(r)["run_dir"]) / "oof.npy") for r in runs]
    epochs = [[(e["train_loss"], e["val_lwlrap"]) for e in store.epochs(r)] for r in runs]
    assert epochs[0] == epochs[1]
    np.testing.assert_array_equal(oofs[0], oofs[1])
    # So both runs have one config hash, and the loader settings they ran with are still recorded.
    hashes = [store.get_run(r)["config_hash"] for r in runs]
    assert hashes[0] == hashes[1] != hashes[2]
    assert store.get_run(runs[1])["config"]["train"]["num_workers"] == 2
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


def test_auto_batch_size_search_leaves_model_and_rng_as_they_were():
    from engine.features.augment import SpecAugment
    from engine.features.frontend import LogMelFrontend
    from engine.models.small import SmallTagger
    from engine.train.loop import Tagger, _largest_batch, find_batch_size

    torch.manual_seed(3)
    tagger = Tagger(LogMelFrontend(), SmallTagger(width=4, dropout=0.5), SpecAugment(p=1.0)).eval()
    # A gradient already present must survive too.
    tagger(torch.randn(2, 8000)).sum().backward()
    state = {k: v.clone() for k, v in tagger.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in tagger.named_parameters() if p.grad is not None}
    rng = torch.get_rng_state()
    assert grads and any("running_mean" in k for k in state)

    assert find_batch_size(tagger, 80, 8000, torch.device("cpu"), start=2, limit=8) == 8

    after = tagger.state_dict()
    assert after.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(after[key], value), key
    assert torch.equal(torch.get_rng_state(), rng)
    assert {n: p.grad for n, p in tagger.named_parameters() if p.grad is not None}.keys() == grads.keys()
    for name, p in tagger.named_parameters():
        assert torch.equal(p.grad, grads[name]), name
    assert not any(m.training for m in tagger.modules())

    # The same trial steps without the save and restore move BatchNorm statistics and the generator:
    # the checks above would catch a search that leaves traces.
    _largest_batch(tagger, 80, 8000, torch.device("cpu"), start=2, limit=8)
    moved = tagger.state_dict()
    assert any(not torch.equal(moved[k], v) for k, v in state.items() if "running_" in k)
    assert not torch.equal(torch.get_rng_state(), rng)


def test_resolve_batch_size_keeps_a_number_reuses_a_recorded_choice_and_searches_otherwise():
    from engine.jobs.train import resolve_batch_size
    from engine.models.registry import frontend_from_spec as make_frontend

    cpu = torch.device("cpu")
    fixed = resolve_spec("train", preset="demo", data_root="/d", overrides=["train.batch_size=12"])
    assert resolve_batch_size(fixed, make_frontend(fixed), 80, cpu) == 12

    auto = resolve_spec("train", preset="demo", data_root="/d",
                        overrides=["train.batch_size=\"auto\"", "audio.crop_seconds=0.5", "model.width=4"])
    said: list[str] = []
    assert resolve_batch_size(auto, make_frontend(auto), 80, cpu, recorded={"train": {"batch_size": 24}},
                              log=said.append) == 24
    assert "chosen when this run started" in said[-1]
    rng = torch.get_rng_state()
    assert resolve_batch_size(auto, make_frontend(auto), 80, cpu, recorded={"train": {"batch_size": "auto"}},
                              log=said.append) == 64  # the CPU ceiling: this tiny model fits every size tried
    assert "auto -> 64" in said[-1]
    assert torch.equal(torch.get_rng_state(), rng), "building and trying the probe model must not shift the seed"


def test_noisy_clips_join_training_only_and_carry_their_loss_weight(tiny_demo: Path, tmp_path: Path):
    from engine.data.cache import WaveformCache
    from engine.data.dataset import ConcatCache
    from engine.data.manifest import load_layout
    from engine.features.frontend import LogMelFrontend
    from engine.data.clips import TrainingClips
    from engine.train.builders import make_loaders
    from engine.models.small import SmallTagger
    from engine.train.loop import Tagger, train_fold
    from engine.train.losses import BCEWithLogits

    layout = load_layout(tiny_demo)
    curated = WaveformCache.build(layout.curated, sample_rate=32000, cache_dir=tmp_path / "cache")
    noisy = WaveformCache.build(layout.noisy, sample_rate=32000, cache_dir=tmp_path / "cache")
    n_cur, n_noisy = len(curated), len(noisy)
    clips = TrainingClips.build(curated, layout.curated.Y, noisy, layout.noisy.Y, noisy_weight=0.25)
    assert (clips.n_curated, clips.n_noisy) == (n_cur, n_noisy) == (480, 80)
    assert isinstance(clips.cache, ConcatCache)
    np.testing.assert_array_equal(clips.cache.get(n_cur + 3), noisy.get(3))
    np.testing.assert_array_equal(clips.cache.get(5), curated.get(5))
    with pytest.raises(IndexError):
        clips.cache.get(n_cur + n_noisy)
    # Without a noisy weight the noisy set stays out.
    assert TrainingClips.build(curated, layout.curated.Y, noisy, layout.noisy.Y, noisy_weight=0.0).n_noisy == 0

    folds = np.arange(n_cur) % 5
    train_idx, val_idx = np.flatnonzero(folds != 0), np.flatnonzero(folds == 0)
    spec = resolve_spec("train", preset="demo", data_root=str(tiny_demo),
                        overrides=["loss.noisy_weight=0.25", "audio.crop_seconds=0.25", "train.batch_size=16"])
    crop = 8000
    train_loader, val_loader = make_loaders(spec, clips, train_idx, val_idx, crop, 16, None,
                                            torch.device("cpu"), fold=0)
    labels, weights = [], []
    for wave, y, w in train_loader:
        assert wave.shape == (16, crop)
        labels.append(y.numpy())
        weights.append(w.numpy())
    labels, weights = np.concatenate(labels), np.concatenate(weights)
    # 384 curated training clips + 80 noisy clips = 29 full batches: every clip once.
    assert len(weights) == len(train_idx) + n_noisy == 464
    assert set(np.unique(weights)) == {0.25, 1.0}

    def rows(a: np.ndarray) -> list[tuple]:
        return sorted(map(tuple, a.astype(int)))

    assert rows(labels[weights == 0.25]) == rows(layout.noisy.Y)
    assert rows(labels[weights == 1.0]) == rows(layout.curated.Y[train_idx])
    val = [(y.numpy(), w.numpy()) for _, y, w in val_loader]
    np.testing.assert_array_equal(np.concatenate([y for y, _ in val]), layout.curated.Y[val_idx])
    assert all((w == 1.0).all() for _, w in val)

    class RecordingBCE(BCEWithLogits):
        """The real loss, noting the sample weights each training step hands it."""

        seen: list[np.ndarray] = []

        def forward(self, logits, targets, sample_weights=None):
            if sample_weights is not None:
                self.seen.append(sample_weights.detach().cpu().numpy())
            return super().forward(logits, targets, sample_weights)

    frontend = LogMelFrontend()
    frontend.set_stats(np.full(64, -40.0, dtype=np.float32), np.full(64, 15.0, dtype=np.float32))
    torch.manual_seed(0)
    train_fold(Tagger(frontend, SmallTagger(width=4)), train_loader=train_loader, val_loader=val_loader,
               val_truth=layout.curated.Y[val_idx], loss_fn=RecordingBCE(), device=torch.device("cpu"),
               fold_dir=tmp_path / "fold0", epochs=1, patience=1, head_lr=1e-3, encoder_lr=1e-3, weight_decay=0.0,
               betas=(0.9, 0.999), warmup_epochs=0.0, warmup_steps=0, min_lr_ratio=0.0, grad_clip=5.0, amp=False,
               cpu_bf16=False, mixup_p=0.0, mixup_alpha=0.4, seed=0)
    seen = np.concatenate(RecordingBCE.seen)
    assert len(RecordingBCE.seen) == 29
    assert (seen == 0.25).sum() == n_noisy and (seen == 1.0).sum() == len(train_idx)


def test_environment_record_names_the_audio_packages_without_importing_torch():
    import json
    import subprocess
    import sys
    from importlib import metadata

    code = ("import json, sys; from engine.jobs.context import environment_record; "
            "print(json.dumps({'versions': environment_record(), 'torch': 'torch' in sys.modules}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    cwd=PROJECT).stdout)
    assert out["torch"] is False
    for pkg in ("torch", "audiomentations", "torchlibrosa", "panns-inference"):
        try:
            installed = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            assert pkg not in out["versions"]
        else:
            assert out["versions"][pkg] == installed


def test_auto_batch_size_and_noisy_clips_are_recorded_with_the_run(tiny_demo: Path, tmp_path: Path, spawn_worker):
    import json

    db = tmp_path / "experiments.db"
    job_id = int(run_cli("queue", "train", "--data", str(tiny_demo), "--preset", "demo",
                         *_sets(["train.batch_size=\"auto\"", "loss.noisy_weight=0.5", "train.folds=[0]",
                                 "train.epochs=1", "audio.crop_seconds=1.0"]), db=db).stdout)
    assert spawn_worker(db, "--drain").wait(timeout=600) == 0
    store = Store(db)
    job = store.get_job(job_id)
    assert job.status == "done", job.error
    assert job.spec["train"]["batch_size"] == "auto"
    run = store.get_run(job.run_id)
    assert run["config"]["train"]["batch_size"] == 64 and run["config"]["loss"]["noisy_weight"] == 0.5
    run_dir = Path(run["run_dir"])
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["spec"]["train"]["batch_size"] == 64
    assert recorded["requested"] == {"augment.backend": "auto", **{f"train.{k}": "auto" for k in (
        "batch_size", "num_workers", "pin_memory", "persistent_workers", "prefetch_factor", "decode_workers")}}
    assert run["config"]["augment"]["backend"] == "cpu"  # auto on a CPU device
    # The loader settings chosen for this CPU host are what the run records and ran with.
    from engine.data.cache import host_cores

    train = run["config"]["train"]
    assert (train["num_workers"], train["pin_memory"], train["persistent_workers"]) == (0, False, False)
    assert train["prefetch_factor"] == "auto"  # no workers: nothing to prefetch
    assert train["decode_workers"] == host_cores()
    assert recorded["loader"] == {"num_workers": 0, "pin_memory": False, "persistent_workers": False,
                                  "prefetch_factor": None, "host_cores": host_cores(), "device": "cpu"}
    assert recorded["config_hash"] == run["config_hash"]
    log = (run_dir / "job.log").read_text()
    assert "batch_size auto -> 64" in log
    assert "training on the 80 noisy clips too (loss weight 0.5)" in log
    assert {"torchlibrosa", "audiomentations"} <= set(run["versions"])
    # Validation stays curated-only: fold 0 is scored on its curated clips, and only their
    # out-of-fold rows are filled.
    in_fold0 = sum(k == 0 for k in store.get_folds(run["dataset_id"]).values())
    (fold,) = store.fold_scores(job.run_id)
    assert fold["n_val"] == in_fold0 and 80 < in_fold0 < 120
    oof = np.load(run_dir / "oof.npy")
    assert oof.shape == (480, 80) and (~np.isnan(oof).any(axis=1)).sum() == in_fold0
