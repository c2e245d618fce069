"""engine.intake: the table of job kinds, prepare (every queue-time check) and submit, on a real database."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from engine import intake, specs
from engine.errors import ConfigError
from engine.store import Store


@pytest.fixture
def store(db_path: Path):
    with Store(db_path) as s:
        yield s


def dataset_root(root: Path, *, columns: str = "fname,labels") -> Path:
    """The two files a dataset root holds before any job reads it (no audio: nothing here reads it)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sample_submission.csv").write_text("fname,Bark\n")
    (root / "train_curated.csv").write_text(f"{columns}\n")
    return root


def test_every_kind_has_a_spec_class_and_a_job_module_and_the_lists_of_kinds_read_the_table():
    from engine.filters import JOB_FIELDS, RUN_FIELDS

    assert list(intake.KINDS) == ["train", "curriculum", "infer", "baseline", "ensemble", "probe"]
    for name, kind in intake.KINDS.items():
        assert specs.spec_class(name) is kind.spec and kind.spec.KIND == name
        # Found on disk without importing it (a job module imports torch).
        assert importlib.util.find_spec(kind.module) is not None, kind.module
    assert intake.FOLD_CHECKPOINT_KINDS == ("train", "curriculum")
    assert intake.TEST_SCORE_KINDS == ("infer", "baseline", "ensemble")
    assert "probe" not in intake.RUN_KINDS and "probe" in JOB_FIELDS["kind"].about
    assert RUN_FIELDS["kind"].about == ", ".join(intake.RUN_KINDS)
    assert [k.name for k in intake.KINDS.values() if k.takes_data_root] == ["train", "curriculum", "baseline"]


def test_an_unknown_kind_is_refused_naming_the_known_ones(store: Store):
    with pytest.raises(ConfigError, match="unknown job kind 'bogus' \\(known: train, curriculum") as err:
        intake.prepare(store, "bogus")
    assert err.value.field == "kind"
    assert store.list_jobs() == []


def test_default_names_follow_one_rule_and_a_given_name_is_the_job_and_the_run_name(store: Store, tmp_path: Path):
    root = dataset_root(tmp_path / "data")
    store.create_run("train-0003", kind="train")
    store.finish_run("train-0003", status="done")
    cases = [
        (intake.prepare(store, "train", overrides=['model.arch="small"'], data_root=root), "train"),
        (intake.prepare(store, "train", preset="demo", data_root=root), "demo"),  # the preset's own name
        (intake.prepare(store, "infer", overrides=['run_id="train-0003"', "infer.tta_crops=3"]), "train-0003 tta3"),
        (intake.prepare(store, "ensemble", spec={"members": ["train-0003"], "method": "rank"}), "rank blend of 1"),
        (intake.prepare(store, "probe"), "probe"),
    ]
    for prepared, name in cases:
        job = store.get_job(intake.submit(store, prepared))
        assert job.name == name and job.kind == prepared.kind.name
        # Without a given name the spec keeps its own: the job decides its run's name.
        assert job.spec.get("name", "") == getattr(prepared.spec, "name", "")
    named = store.get_job(intake.submit(store, cases[2][0], name="  mine ", priority=4))
    assert (named.name, named.spec["name"], named.priority) == ("mine", "mine", 4)
    probe = store.get_job(intake.submit(store, cases[4][0], name="smoke"))
    assert probe.name == "smoke" and "name" not in probe.spec


def test_the_data_root_is_one_rule(store: Store, tmp_path: Path):
    with pytest.raises(ConfigError, match="no such folder") as err:
        intake.prepare(store, "train", data_root=tmp_path / "nowhere")
    assert err.value.field == "data.root"
    half = tmp_path / "half"
    half.mkdir()
    (half / "train_curated.csv").write_text("fname,labels\n")
    with pytest.raises(ConfigError, match="is not a dataset root: it has no sample_submission.csv"):
        intake.prepare(store, "baseline", data_root=half)
    assert intake.missing_root_files(half) == ["sample_submission.csv"]
    with pytest.raises(ConfigError, match="the dataset root is required") as err:
        intake.prepare(store, "train", data_root="")
    assert err.value.field == "data.root"
    # A root a preset or an override names is checked as well as one given as the data root.
    with pytest.raises(ConfigError, match="no such folder"):
        intake.prepare(store, "train", overrides=[f"data.root={json.dumps(str(tmp_path / 'gone'))}"])
    with pytest.raises(ConfigError, match="take no dataset root"):
        intake.prepare(store, "infer", overrides=['run_id="x"'], data_root=half)
    root = dataset_root(tmp_path / "ok")
    assert intake.check_data_root(str(root)) == root.resolve()
    assert store.list_jobs() == []


def test_the_group_column_must_be_in_the_csv_and_agree_with_the_stored_folds(store: Store, tmp_path: Path):
    root = dataset_root(tmp_path / "data", columns="fname,labels,freesound_id")
    with pytest.raises(ConfigError, match="no column 'source' \\(columns: fname, labels, freesound_id\\)") as err:
        intake.prepare(store, "train", data_root=root, overrides=['data.group_column="source"'])
    assert err.value.field == "data.group_column" and "train_curated.csv" in str(err.value)
    intake.prepare(store, "train", data_root=root, overrides=['data.group_column="freesound_id"'])
    # Once the dataset holds folds made by one rule, a run asking for another is refused.
    dataset_id = store.register_dataset(root.resolve(), name="data", classes=["Bark"], n_curated=0)
    store.save_folds(dataset_id, [], [], seed=42, n_folds=5, rule=specs.fold_rule("freesound_id"))
    with pytest.raises(ConfigError, match="stored folds were made by 'group-multilabel-stratified:freesound_id'"):
        intake.prepare(store, "baseline", data_root=root)
    intake.prepare(store, "baseline", data_root=root, overrides=['data.group_column="freesound_id"'])


def test_named_runs_must_exist_or_be_queued_and_an_infer_needs_fold_checkpoints(store: Store):
    with pytest.raises(ConfigError, match="no run 'train-0042' to infer with") as err:
        intake.prepare(store, "infer", overrides=['run_id="train-0042"'])
    assert err.value.field == "run_id"
    with pytest.raises(ConfigError, match="no run 'a', 'b' in the database") as err:
        intake.prepare(store, "ensemble", overrides=['members=["a", "b"]'])
    assert err.value.field == "members"
    # A run a queued job will write counts; an infer of an infer run does not.
    train = intake.submit(store, intake.prepare(store, "probe"))
    store.create_run("infer-0009", kind="infer")
    prepared = intake.prepare(store, "ensemble", overrides=[f'members=["probe-{train:04d}", "infer-0009"]'])
    assert prepared.spec.members == [f"probe-{train:04d}", "infer-0009"]
    for run_id in ("infer-0009", f"probe-{train:04d}"):
        with pytest.raises(ConfigError, match="run; inference needs a train or a curriculum run with fold ch"):
            intake.prepare(store, "infer", overrides=[f'run_id="{run_id}"'])


def test_a_curriculum_teacher_is_checked_when_queued(store: Store):
    with pytest.raises(ConfigError, match="no run 'train-0001'") as err:
        intake.prepare(store, "curriculum", preset="demo_curriculum", overrides=['teacher_run_id="train-0001"'])
    assert err.value.field == "teacher_run_id"
    store.create_run("train-0001", kind="train")
    with pytest.raises(ConfigError, match="is running, not finished"):
        intake.prepare(store, "curriculum", preset="demo_curriculum", overrides=['teacher_run_id="train-0001"'])


def test_a_spec_is_prepared_as_is_and_probe_settings_are_the_spec_classs(store: Store):
    spec = specs.EnsembleSpec(members=["x"])
    with pytest.raises(ConfigError, match="members"):
        intake.prepare(store, "ensemble", spec=spec)
    with pytest.raises(ConfigError, match="unknown setting \\(known here: exit_code, fail, marker, seconds\\)") as e:
        intake.prepare(store, "probe", overrides=["secnds=2"])
    assert e.value.file == "--set secnds=2"
    assert intake.prepare(store, "probe", overrides=["seconds=2"]).spec.seconds == 2.0


def test_the_worker_and_the_queue_agree_on_a_jobs_run_id(store: Store):
    from engine.worker import run_id_for

    job_id = intake.submit(store, intake.prepare(store, "probe"))
    assert run_id_for(store.get_job(job_id)) == intake.default_run_id("probe", job_id) == f"probe-{job_id:04d}"
    assert intake.pending_runs(store) == {f"probe-{job_id:04d}": "probe"}
