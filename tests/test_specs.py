"""Job specs: presets, overrides, validation messages that name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.specs import TrainSpec, spec_from_json, spec_hash, to_dict
from engine.presets import apply_overrides, list_presets, parse_override, preset_kind, resolve_spec


def test_every_shipped_preset_resolves():
    presets = list_presets()
    assert {"demo", "cnn14", "cnn14_seed2025", "cnn14_128mel", "resnet38", "cnn14_focal",
            "cnn14_multiscale", "baseline", "tta"} <= set(presets)
    for name, path in presets.items():
        kind = preset_kind(path)
        if kind == "infer":
            spec = resolve_spec(kind, preset=name, overrides=["run_id=train-0001"])
            assert spec.infer.tta_crops == 5
        elif kind == "curriculum":
            spec = resolve_spec(kind, preset=name, overrides=["teacher_run_id=train-0001"])
            assert spec.teacher_run_id == "train-0001" and spec.stages
        elif kind == "plan":
            # A plan preset is a list of steps, each a job preset of its own (engine.plan).
            from engine.plan import load_plan

            assert load_plan(name).steps
        else:
            spec = resolve_spec(kind, preset=name, data_root="/data/fsd")
            assert spec.data.root == str(Path("/data/fsd").resolve())
    assert set(list_presets("train")) >= {"demo", "cnn14", "resnet38"}
    assert "baseline" not in list_presets("train")


def test_ensemble_member_presets_follow_the_plan():
    def train(name: str):
        return resolve_spec("train", preset=name, data_root="/d")

    base = train("cnn14")
    assert (base.model.arch, base.features.n_mels, base.audio.crop_seconds, base.train.seed) == ("cnn14", 64, 10.0, 42)
    assert base.loss.label_smoothing == 0.05 and base.augment.mixup_p == 0.5 and base.train.balanced_sampler
    assert train("cnn14_seed2025").train.seed == 2025
    assert train("cnn14_128mel").features.n_mels == 128
    assert train("resnet38").model.arch == "resnet38"
    focal = train("cnn14_focal")
    assert (focal.loss.name, focal.loss.focal_gamma) == ("focal", 1.5)
    assert train("cnn14_multiscale").audio.multiscale_crops == [5.0, 12.0]
    # Members differ from the base only where the plan says.
    assert spec_hash(train("cnn14_seed2025")) != spec_hash(base)


def test_extends_loop_is_refused(tmp_path: Path, monkeypatch):
    (tmp_path / "a.toml").write_text('extends = "b"\n')
    (tmp_path / "b.toml").write_text('extends = "a"\n')
    monkeypatch.setenv("FSAT_CONFIGS", str(tmp_path))
    with pytest.raises(ConfigError, match="loop"):
        resolve_spec("train", preset="a", data_root="/d")


def test_overrides_parse_as_toml_values():
    assert parse_override("train.epochs=3") == (["train", "epochs"], 3)
    assert parse_override("train.folds=[0, 2]") == (["train", "folds"], [0, 2])
    assert parse_override("model.arch=cnn14") == (["model", "arch"], "cnn14")
    assert parse_override("optim.amp=false") == (["optim", "amp"], False)
    spec = resolve_spec("train", preset="demo", data_root="/d",
                        overrides=["train.epochs=3", "train.folds=[0]", "optim.head_lr=1e-3"])
    assert spec.train.epochs == 3 and spec.train.fold_list() == [0] and spec.optim.head_lr == 1e-3


@pytest.mark.parametrize("override, field, words", [
    ("train.epochs=abc", "train.epochs", "whole number"),
    ("train.epochs=-1", "train.epochs", "must not be negative"),
    ("model.arch=vgg", "model.arch", "not one of"),
    ("augment.mixup_p=1.5", "augment.mixup_p", "probability"),
    ("train.folds=[7]", "train.folds[0]", "outside"),
    ("train.batch_size=large", "train.batch_size", "auto"),
    ("optim.betas=[0.9]", "optim.betas", "two values"),
    ("nosuch.key=1", "nosuch", "unknown setting"),
    ("train.nosuch=1", "train.nosuch", "unknown setting"),
    ("train.patience=0", "train.patience", "at least 1"),
    ("train.patience=-2", "train.patience", "at least 1"),
    ("loss.noisy_weight=-0.5", "loss.noisy_weight", ">= 0"),
    ("loss.noisy_weight=inf", "loss.noisy_weight", "finite"),
])
def test_bad_fields_are_named(override: str, field: str, words: str):
    with pytest.raises(ConfigError) as info:
        resolve_spec("train", preset="demo", data_root="/d", overrides=[override])
    assert info.value.field == field
    assert words in str(info.value) and field in str(info.value)


def test_bad_config_file_names_file(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochs = = 3\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        resolve_spec("train", config=bad, data_root="/d")
    typo = tmp_path / "typo.toml"
    typo.write_text("[train]\nepoch = 3\n")
    with pytest.raises(ConfigError) as info:
        resolve_spec("train", config=typo, data_root="/d")
    assert "typo.toml" in str(info.value) and info.value.field == "train.epoch"
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        resolve_spec("train", preset="nope", data_root="/d")


def test_missing_data_root_is_named():
    with pytest.raises(ConfigError) as info:
        resolve_spec("train", preset="demo")
    assert info.value.field == "data.root"


def test_json_roundtrip_and_hash():
    spec = resolve_spec("train", preset="demo", data_root="/d", overrides=["train.seed=7"])
    again = spec_from_json("train", json.loads(json.dumps(to_dict(spec))))
    assert again == spec
    assert spec_hash(again) == spec_hash(spec)
    renamed = spec_from_json("train", {**to_dict(spec), "name": "other"})
    assert spec_hash(renamed) == spec_hash(spec), "the name does not change results"
    reseeded = resolve_spec("train", preset="demo", data_root="/d", overrides=["train.seed=8"])
    assert spec_hash(reseeded) != spec_hash(spec)
    # How clips are loaded changes no result (each item's draws come from seed, epoch and clip).
    loaded = resolve_spec("train", preset="demo", data_root="/d", overrides=[
        "train.seed=7", "train.num_workers=3", "train.pin_memory=true", "train.persistent_workers=false",
        "train.prefetch_factor=4", "train.decode_workers=2"])
    assert spec_hash(loaded) == spec_hash(spec)
    rebatched = resolve_spec("train", preset="demo", data_root="/d", overrides=["train.seed=7", "train.batch_size=3"])
    assert spec_hash(rebatched) != spec_hash(spec)


def test_apply_overrides_does_not_mutate_and_rejects_value_as_section():
    base = {"train": {"epochs": 2}}
    out = apply_overrides(base, ["train.epochs=5"])
    assert base["train"]["epochs"] == 2 and out["train"]["epochs"] == 5
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_defaults_follow_the_recipe():
    spec = TrainSpec()
    assert (spec.audio.sample_rate, spec.audio.crop_seconds) == (32000, 10.0)
    assert (spec.features.n_fft, spec.features.hop_length, spec.features.n_mels) == (1024, 320, 64)
    assert (spec.features.fmin, spec.features.fmax) == (50.0, 16000.0)
    assert (spec.optim.head_lr, spec.optim.encoder_lr, spec.optim.weight_decay) == (2e-4, 1e-4, 1e-4)
    assert (spec.train.n_folds, spec.train.fold_seed, spec.train.patience) == (5, 42, 3)
    assert spec.optim.grad_clip == 5.0
    assert spec.loss.noisy_weight == 0.0, "the noisy set is left out unless a preset asks for it"


def test_patience_of_one_and_a_noisy_weight_are_accepted():
    spec = resolve_spec("train", preset="demo", data_root="/d",
                        overrides=["train.patience=1", "loss.noisy_weight=0.5"])
    assert spec.train.patience == 1 and spec.loss.noisy_weight == 0.5


def test_auto_is_the_default_ensemble_method_and_others_are_refused():
    from engine.specs import EnsembleSpec

    spec = resolve_spec("ensemble", overrides=['members=["a", "b"]'])
    assert spec.method == "auto" and EnsembleSpec().method == "auto"
    with pytest.raises(ConfigError, match=r"method: 'median' is not one of auto, best, rank"):
        resolve_spec("ensemble", overrides=['members=["a"]', 'method="median"'])
    with pytest.raises(ConfigError, match=r"method: greedy selection blends members"):
        resolve_spec("ensemble", overrides=['members=["a"]', 'method="best"', "greedy=true"])


def test_baseline_variant_and_group_column_are_checked_and_the_mel_stats_preset_resolves():
    spec = resolve_spec("baseline", preset="baseline_melstats", data_root="/data/fsd",
                        overrides=['data.group_column="freesound_id"'])
    assert spec.variant == "mel_stats" and spec.data.group_column == "freesound_id"
    assert resolve_spec("baseline", preset="baseline", data_root="/data/fsd").variant == "embedding"
    with pytest.raises(ConfigError, match=r"variant: 'mfcc' is not one of embedding, mel_stats"):
        resolve_spec("baseline", data_root="/data/fsd", overrides=['variant="mfcc"'])


def test_the_seed_is_in_the_config_hash_and_out_of_the_seed_group_key():
    from engine.specs import TrainSpec, seed_group_key, spec_hash, to_dict

    one, two, other = TrainSpec(), TrainSpec(), TrainSpec()
    two.train.seed = 7
    other.optim.head_lr = 1e-4
    assert spec_hash(one) != spec_hash(two)
    assert seed_group_key(one) == seed_group_key(two) == seed_group_key(to_dict(two))
    assert seed_group_key(one) != seed_group_key(other)
    # Loader settings and the name stay out of both.
    two.train.num_workers, two.name = 3, "renamed"
    assert seed_group_key(one) == seed_group_key(two)
