"""Plans: a preset of steps queued as dependent jobs, refused whole when one step is bad, run by two workers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from engine import intake
from engine.errors import ConfigError
from engine.plan import load_plan, queue_plan
from engine.store import Store
from engine.submission import read_sample_submission, validate_submission
from tests.helpers.processes import env_with_project, run_cli, worker_cmd


def _write_plan(folder: Path, steps: str) -> Path:
    path = folder / "my_plan.toml"
    path.write_text('kind = "plan"\nname = "mine"\n' + steps)
    return path


def test_the_shipped_plans_load_with_the_seed_plan_shape():
    full = load_plan("plan")
    kinds = [s.kind for s in full.steps]
    assert kinds.count("train") == 6 and kinds.count("curriculum") == 1 and kinds.count("infer") == 6
    assert kinds[-1] == "ensemble" and len(full.steps[-1].uses["members"]) == 6
    demo = load_plan("plan_demo")
    assert [s.kind for s in demo.steps][:2] == ["train", "curriculum"] and demo.steps[-1].kind == "ensemble"


@pytest.mark.parametrize("steps, field, words", [
    ('[[steps]]\nname = "a"\nkind = "trian"\n', "steps[0].kind", "unknown job kind 'trian'"),
    ('[[steps]]\nname = "a"\nkind = "train"\n[[steps]]\nname = "b"\nkind = "infer"\nuses = { run_id = "c" }\n',
     "steps[1].uses.run_id", "no earlier step 'c'"),
    ('[[steps]]\nname = "a"\nkind = "train"\n[[steps]]\nname = "b"\nkind = "infer"\nuses = { members = "a" }\n',
     "steps[1].uses.members", "names runs in run_id, not 'members'"),
    ('[[steps]]\nname = "a"\nkind = "train"\n[[steps]]\nname = "a"\nkind = "train"\n', "steps[1].name",
     "two steps are named 'a'"),
])
def test_a_plan_file_with_a_bad_step_is_refused_naming_the_step_and_field(tmp_path: Path, steps, field, words):
    with pytest.raises(ConfigError) as caught:
        load_plan(_write_plan(tmp_path, steps))
    assert caught.value.field == field and words in str(caught.value)


def test_a_bad_step_setting_refuses_the_whole_plan_naming_step_and_field(tmp_path: Path, tiny_demo: Path):
    db = tmp_path / "experiments.db"
    out = run_cli("queue", "plan", "plan_demo", "--data", str(tiny_demo), "--set", 'focal:loss.name="nope"',
                  db=db, check=False)
    assert out.returncode == 2 and out.stdout == ""
    assert "step 'focal'" in out.stderr and "loss.name" in out.stderr and "'nope' is not one of" in out.stderr
    assert Store(db).count_jobs("queued") == 0  # nothing of the plan was queued
    out = run_cli("queue", "plan", "plan_demo", "--data", str(tiny_demo), "--set", "nostep:train.epochs=1",
                  db=db, check=False)
    assert out.returncode == 2 and "nostep:train.epochs=1" in out.stderr and "steps: teacher" in out.stderr


def test_queueing_a_plan_names_each_parent_run_by_its_reserved_id(tmp_path: Path, tiny_demo: Path):
    store = Store(tmp_path / "experiments.db")
    store.enqueue("probe", {})
    plan_id = queue_plan(store, "plan_demo", data_root=str(tiny_demo), overrides=["train:train.epochs=1"])
    steps = {s["step"]: s for s in store.plan_steps(plan_id)}
    specs = {k: store.get_job(s["job_id"]).spec for k, s in steps.items()}
    assert steps["teacher"]["job_id"] == 2
    assert specs["curriculum"]["teacher_run_id"] == "train-0002"
    assert specs["tta_seed2025"]["run_id"] == f"train-{steps['seed2025']['job_id']:04d}"
    assert specs["blend"]["members"] == [f"infer-{steps[k]['job_id']:04d}"
                                         for k in ("tta_curriculum", "tta_seed2025", "tta_focal")]
    assert specs["blend"]["method"] == "auto" and specs["teacher"]["train"]["epochs"] == 1
    assert steps["blend"]["parents"] == ["tta_curriculum", "tta_seed2025", "tta_focal"]
    assert steps["teacher"]["state"] == "queued" and steps["blend"]["state"] == "waiting"


def test_a_plan_takes_the_name_and_priority_given_on_the_command_line(tmp_path: Path, tiny_demo: Path):
    db = tmp_path / "experiments.db"
    other = int(run_cli("queue", "train", "--data", str(tiny_demo), "--preset", "demo", db=db).stdout)
    out = run_cli("queue", "plan", "plan_demo", "--data", str(tiny_demo), "--name", "night run", "--priority", "5",
                  "--json", db=db)
    plan = json.loads(out.stdout)
    store = Store(db)
    assert store.get_plan(plan["plan_id"])["name"] == "night run"
    assert {store.get_job(j).priority for j in plan["jobs"].values()} == {5}
    assert {step: store.get_job(j).name for step, j in plan["jobs"].items()}["tta_focal"] == "tta_focal · night run"
    assert store.claim("w").id == plan["jobs"]["teacher"]  # its priority puts its first step before the other job
    assert store.get_job(other).status == "queued"


def test_inferring_a_queued_run_waits_for_its_training_job(tmp_path: Path, tiny_demo: Path):
    db = tmp_path / "experiments.db"
    train = int(run_cli("queue", "train", "--data", str(tiny_demo), "--preset", "demo", db=db).stdout)
    infer = int(run_cli("queue", "infer", f"train-{train:04d}", "--preset", "tta", "--priority", "9", db=db).stdout)
    store = Store(db)
    assert store.job_parents(infer) == [train]
    assert store.claim("w").id == train  # the inference's priority does not let it start first
    assert store.claim("w2") is None
    # A finished run is no dependency.
    prepared = intake.prepare(store, "probe")
    assert intake.parent_jobs(store, prepared) == ()


@pytest.mark.slow
def test_plan_demo_runs_from_one_command_to_a_valid_submission_with_two_workers(tmp_path: Path, tiny_demo: Path):
    db = tmp_path / "experiments.db"
    stages = '[{name = "A", epochs = 1, noisy_weight = 0.5}, {name = "B", epochs = 1, noisy_weight = 1.0}]'
    out = run_cli("queue", "plan", "plan_demo", "--data", str(tiny_demo), "--json",
                  "--set", "train:train.epochs=2", "--set", "train:train.n_folds=2",
                  "--set", "train:train.steps_per_epoch=3", "--set", "train:audio.crop_seconds=2.0",
                  "--set", f"curriculum:stages={stages}", "--set", "curriculum:swap_tolerance=1.0",
                  "--set", "curriculum:filter.keep_threshold=0.5", "--set", "curriculum:filter.pseudo_threshold=0.99",
                  "--set", "infer:infer.tta_crops=2", "--set", "infer:infer.tta_crops_long=2", db=db)
    queued = json.loads(out.stdout)
    workers = [subprocess.Popen(worker_cmd(db, "--drain"), cwd=db.parent, env=env_with_project(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for w in workers:
        _out, err = w.communicate(timeout=1500)
        assert w.returncode == 0, err[-2000:]
    store = Store(db)
    steps = {s["step"]: s for s in store.plan_steps(queued["plan_id"])}
    assert {k: s["status"] for k, s in steps.items()} == {k: "done" for k in steps}, \
        {k: store.get_job(s["job_id"]).error for k, s in steps.items()}
    jobs = {k: store.get_job(s["job_id"]) for k, s in steps.items()}
    for child, step in steps.items():
        for parent in step["parents"]:
            assert jobs[child].started_at >= jobs[parent].finished_at, (child, parent)
    blend = store.get_run(jobs["blend"].run_id)
    submission = Path(blend["run_dir"] or db.parent / "runs" / blend["run_id"]) / "submission.csv"
    fnames, classes = read_sample_submission(tiny_demo / "sample_submission.csv")
    validate_submission(pd.read_csv(submission), fnames, classes, file=submission)
