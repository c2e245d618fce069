"""CurriculumSpec: the plan's defaults, the presets, and errors that name the field."""

from __future__ import annotations

import pytest

from engine.errors import ConfigError
from engine.specs import CurriculumSpec, from_dict, spec_from_json, to_dict
from engine.presets import list_presets, resolve_spec

TEACHER = ["teacher_run_id=train-0001"]


def test_defaults_are_the_plan():
    spec = from_dict(CurriculumSpec, {"teacher_run_id": "train-0001"})
    assert spec.teacher.predictions == "per_fold" and spec.teacher.tta_crops == 1
    assert (spec.filter.keep_threshold, spec.filter.pseudo_threshold) == (0.8, 0.95)
    assert [(s.name, s.epochs, s.noisy_weight) for s in spec.stages] == [("A", 4, 0.5), ("B", 8, 1.0)]
    assert spec.fallback_losses == ["lsoft", "gce"]
    # Stored as JSON in the jobs table and rebuilt exactly.
    assert to_dict(spec_from_json("curriculum", to_dict(spec))) == to_dict(spec)


def test_presets():
    assert {"curriculum", "demo_curriculum"} <= set(list_presets("curriculum"))
    plan = resolve_spec("curriculum", preset="curriculum", overrides=TEACHER)
    assert [(s.epochs, s.noisy_weight) for s in plan.stages] == [(4, 0.5), (8, 1.0)]
    assert plan.filter.keep_threshold == 0.8 and plan.filter.threshold_mode == "global"
    demo = resolve_spec("curriculum", preset="demo_curriculum", overrides=TEACHER)
    assert sum(s.epochs for s in demo.stages) < sum(s.epochs for s in plan.stages)
    assert "curriculum" not in list_presets("train")


@pytest.mark.parametrize("override, field, words", [
    ("filter.keep_threshold=1.5", "filter.keep_threshold", "[0, 1]"),
    ("filter.keep_threshold=-0.1", "filter.keep_threshold", "[0, 1]"),
    ("filter.pseudo_threshold=1.01", "filter.pseudo_threshold", "[0, 1]"),
    ("filter.pseudo_threshold=0.5", "filter.pseudo_threshold", "at least keep_threshold"),
    ("filter.threshold_mode=\"adaptive\"", "filter.threshold_mode", "not one of"),
    ("stages=[]", "stages", "stage list is empty"),
    ("stages=[{epochs = 0}]", "stages[0].epochs", "positive"),
    ("stages=[{loss = \"mse\"}]", "stages[0].loss", "not one of"),
    ("stages=[{trainable_blocks = -2}]", "stages[0].trainable_blocks", "-1"),
    ("teacher.predictions=\"all\"", "teacher.predictions", "per_fold"),
    ("fallback_losses=[\"huber\"]", "fallback_losses[0]", "not one of"),
    ("teacher_run_id=\"\"", "teacher_run_id", "required"),
])
def test_bad_fields_are_named(override, field, words):
    with pytest.raises(ConfigError) as err:
        resolve_spec("curriculum", preset="curriculum", overrides=TEACHER + [override])
    assert err.value.field == field and words in str(err.value)


def test_lsoft_is_a_stage_loss_and_a_train_loss():
    spec = resolve_spec("curriculum", preset="curriculum", overrides=TEACHER + ['stages=[{loss = "lsoft"}]'])
    assert spec.stages[0].loss == "lsoft"
    assert resolve_spec("train", preset="demo", data_root="/d", overrides=["loss.name=lsoft"]).loss.lsoft_beta == 0.7
