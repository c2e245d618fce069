"""Sweeps: points, queue-time refusals, one-transaction queueing, screening decisions, overrides, cancel; the demo sweep."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from engine import sweeps
from engine.errors import ConfigError, QueueFull
from engine.specs import seed_group_key, spec_hash, spec_from_json
from engine.store import Store

from tests.helpers.processes import drain, run_cli


def dataset_root(root: Path) -> Path:
    """The two files a dataset root holds before any job reads it (nothing here reads audio)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sample_submission.csv").write_text("fname,Bark\n")
    (root / "train_curated.csv").write_text("fname,labels\n")
    return root


@pytest.fixture
def store(db_path: Path):
    with Store(db_path) as s:
        yield s


def test_a_grid_is_the_product_of_its_axes_in_order():
    axes = sweeps.parse_grid(["optim.head_lr=[1e-3,3e-4]", "model.width=[16,32]"])
    assert axes == [("optim.head_lr", [1e-3, 3e-4]), ("model.width", [16, 32])]
    assert sweeps.sweep_points(axes) == [
        {"optim.head_lr": 1e-3, "model.width": 16}, {"optim.head_lr": 1e-3, "model.width": 32},
        {"optim.head_lr": 3e-4, "model.width": 16}, {"optim.head_lr": 3e-4, "model.width": 32}]


def test_random_points_are_drawn_in_range_and_again_the_same_from_the_same_seed():
    randoms = sweeps.parse_random(["optim.head_lr=loguniform(1e-4,1e-2)", "model.width=choice([8,16])",
                                   "train.epochs=randint(1,3)"])
    first = sweeps.sweep_points(randoms=randoms, count=20, random_seed=7)
    assert first == sweeps.sweep_points(randoms=randoms, count=20, random_seed=7)
    assert first != sweeps.sweep_points(randoms=randoms, count=20, random_seed=8)
    assert all(1e-4 <= p["optim.head_lr"] <= 1e-2 and p["model.width"] in (8, 16) and 1 <= p["train.epochs"] <= 3
               for p in first)
    assert len({p["optim.head_lr"] for p in first}) == 20


@pytest.mark.parametrize("texts, field", [
    (["train.epochs=3"], "--grid train.epochs"),
    (["train.epochs=[]"], "--grid train.epochs"),
    (["train.epochs=[1]", "train.epochs=[2]"], "--grid train.epochs"),
])
def test_a_bad_grid_names_the_option_and_key(texts, field):
    with pytest.raises(ConfigError) as err:
        sweeps.parse_grid(texts)
    assert err.value.field == field


@pytest.mark.parametrize("text", ["optim.head_lr=normal(0,1)", "optim.head_lr=loguniform(0,1)",
                                  "optim.head_lr=uniform(2,1)", "optim.head_lr=3", "model.width=randint(1.5,3)"])
def test_a_bad_random_axis_is_refused(text):
    with pytest.raises(ConfigError, match="random"):
        sweeps.parse_random([text])


def test_seeds_parse_and_a_repeated_seed_is_refused():
    assert sweeps.parse_seeds("1,2, 3") == [1, 2, 3]
    with pytest.raises(ConfigError, match="twice"):
        sweeps.parse_seeds("1,1")
    with pytest.raises(ConfigError) as err:
        sweeps.parse_seeds("1,x")
    assert err.value.field == "--seeds"


def test_a_sweep_with_a_bad_point_is_refused_naming_the_point_and_the_field_and_queues_nothing(store, tmp_path):
    root = dataset_root(tmp_path / "data")
    with pytest.raises(ConfigError) as err:
        sweeps.queue_sweep(store, preset="demo", data_root=root, grid=["model.width=[16,-1]"], seeds=[1, 2])
    assert err.value.field == "model.width"
    assert "sweep point 1 (model.width=-1, seed 1)" in str(err.value)
    assert store.list_jobs() == [] and store.list_sweeps() == []


def test_the_cli_refuses_a_bad_point_in_one_line(db_path, tmp_path):
    root = dataset_root(tmp_path / "data")
    out = run_cli("sweep", "--preset", "demo", "--data", str(root), "--grid", "model.widthx=[8,16]", db=db_path,
                  check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "model.widthx" in out.stderr and "sweep point 0" in out.stderr


def test_a_sweep_that_would_overfill_the_queue_queues_nothing(store, tmp_path):
    root = dataset_root(tmp_path / "data")
    plan = sweeps.plan_sweep(store, preset="demo", data_root=root, grid=["model.width=[8,16,32]"], seeds=[1, 2])
    with pytest.raises(QueueFull):
        store.create_sweep(name="s", kind="train", preset="demo", base=plan.base, axes=plan.axes, seeds=plan.seeds,
                           points=plan.points, screen_fold=0, keep=1, max_queued=5)
    assert store.list_jobs() == [] and store.list_sweeps() == []


def test_a_sweep_queues_one_run_per_point_and_seed_each_checked_and_differing_only_where_told(store, tmp_path):
    root = dataset_root(tmp_path / "data")
    sweep_id = sweeps.queue_sweep(store, preset="demo", data_root=root, overrides=["train.epochs=2"],
                                  grid=["model.width=[8,16]"], seeds=[1, 2], screen_fold=0, keep=1)
    runs = store.sweep_runs(sweep_id)
    assert [(r["point"], r["seed"]) for r in runs] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    jobs = {j["run_id"]: j for j in store.list_jobs()}
    assert set(jobs) == {r["run_id"] for r in runs}
    specs_ = {r["run_id"]: spec_from_json("train", store.get_job(jobs[r["run_id"]]["id"]).spec) for r in runs}
    for r in runs:
        spec = specs_[r["run_id"]]
        assert (spec.model.width, spec.train.seed, spec.train.epochs) == ((8, 16)[r["point"]], r["seed"], 2)
        # The screening fold is the job's, not the run's: the spec still names every fold.
        assert spec.train.folds == [] and store.job_folds(jobs[r["run_id"]]["id"]) == [0]
    # Seeds of one point share a seed group; the points do not; the config hash holds the seed.
    keys = {r["run_id"]: seed_group_key(specs_[r["run_id"]]) for r in runs}
    assert keys["sweep-%04d-p0-s1" % sweep_id] == keys["sweep-%04d-p0-s2" % sweep_id]
    assert keys["sweep-%04d-p0-s1" % sweep_id] != keys["sweep-%04d-p1-s1" % sweep_id]
    assert len({spec_hash(s) for s in specs_.values()}) == 4


def _run_screening_job(store: Store, job_id: int, *, score: float | None, fail: bool = False) -> None:
    """What a worker and a screening job record: the claim, the run, fold 0's score, the job's end."""
    job = store.claim("w1")
    assert job is not None and job.id == job_id
    store.create_run(job.run_id, kind="train", job_id=job.id)
    if score is not None:
        store.record_fold(job.run_id, 0, lwlrap=score, best_epoch=1, n_val=10)
    owner = {"worker_id": "w1", "attempt": job.attempts}
    if fail:
        store.finish_run(job.run_id, status="failed")
        store.fail_job(job.id, "out of memory", None, **owner)
    else:
        store.finish_run(job.run_id, status="done", cv_lwlrap=score)  # the OOF of the one fold trained
        store.finish_job(job.id, **owner)


def test_screening_keeps_the_best_points_once_every_screening_job_ended_and_completes_the_same_runs(store, tmp_path):
    root = dataset_root(tmp_path / "data")
    sweep_id = sweeps.queue_sweep(store, preset="demo", data_root=root, grid=["model.width=[8,16,32]"],
                                  seeds=[1, 2], screen_fold=0, keep=1)
    jobs = sorted(store.list_jobs(), key=lambda j: j["id"])
    # point 0: 0.5 and 0.6 (mean 0.55); point 1: 0.7 and 0.5 (mean 0.6); point 2: one run fails.
    outcomes = [(0.5, False), (0.6, False), (0.7, False), (0.5, False), (0.9, False), (None, True)]
    for job, (score, fail) in zip(jobs, outcomes):
        assert sweeps.advance(store, job["id"]) == []  # not every screening job has ended yet
        _run_screening_job(store, job["id"], score=score, fail=fail)
    states = {r["run_id"]: r["status"] for r in sweeps.mark_screened(store, store.page_runs())}
    assert states[jobs[0]["run_id"]] == "screening" and states[jobs[-1]["run_id"]] == "failed"  # not decided yet
    queued = sweeps.advance(store, jobs[-1]["id"])
    assert sweeps.advance(store, jobs[-1]["id"]) == []  # decided once
    listed = {r["run_id"]: r for r in sweeps.mark_screened(store, store.page_runs())}
    # Point 0 screened out, point 1 kept (its other folds queued), point 2 screened out by its failed run.
    assert [listed[j["run_id"]]["status"] for j in jobs] == ["screened", "screened", "kept", "kept", "screened",
                                                             "failed"]
    assert listed[jobs[1]["run_id"]]["screen_text"] == "f0 0.6000" and listed[jobs[1]["run_id"]]["cv_lwlrap"] is None
    points = {p["point"]: p for p in store.sweep_points(sweep_id)}
    assert points[1]["decision"] == "kept" and points[1]["screen_lwlrap"] == pytest.approx(0.6)
    assert points[0]["decision"] == "screened out" and points[0]["screen_lwlrap"] == pytest.approx(0.55)
    assert points[0]["reason"] == "rank 2 of 2 on fold 0"
    assert points[2]["decision"] == "screened out" and "failed: out of memory" in points[2]["reason"]
    completion = [store.get_job(j) for j in queued]
    assert [j.run_id for j in completion] == [f"sweep-{sweep_id:04d}-p1-s1", f"sweep-{sweep_id:04d}-p1-s2"]
    assert all(store.job_folds(j.id) is None and j.status == "queued" for j in completion)
    assert store.get_sweep(sweep_id)["stage"] == "completing"

    # The decision is overridable: complete a screened-out point, not a kept one.
    more = sweeps.complete_point(store, sweep_id, 0)
    assert [store.get_job(j).run_id for j in more] == [f"sweep-{sweep_id:04d}-p0-s1", f"sweep-{sweep_id:04d}-p0-s2"]
    assert store.sweep_points(sweep_id)[0]["decision"] == "completed by hand"
    assert sweeps.mark_screened(store, store.run_rows([jobs[0]["run_id"]]))[0]["status"] == "kept"
    with pytest.raises(Exception, match="only a screened-out point"):
        sweeps.complete_point(store, sweep_id, 1)

    table = sweeps.sweep_table(store, sweep_id)
    assert [r["decision"] for r in table.rows] == ["completed by hand", "kept", "screened out"]
    assert [r["rank"] for r in table.rows] == [2, 1, None]


def test_cancelling_a_sweep_cancels_what_has_not_started_and_queues_nothing_more(store, tmp_path):
    root = dataset_root(tmp_path / "data")
    sweep_id = sweeps.queue_sweep(store, preset="demo", data_root=root, grid=["model.width=[8,16]"], seeds=[1],
                                  screen_fold=0, keep=1)
    first, second = sorted(j["id"] for j in store.list_jobs())
    running = store.claim("w1")
    assert running.id == first
    assert sweeps.cancel_sweep(store, sweep_id) == 1
    assert store.get_job(second).status == "cancelled" and store.get_job(first).status == "running"
    store.create_run(running.run_id, kind="train", job_id=first)
    store.record_fold(running.run_id, 0, lwlrap=0.5, best_epoch=1, n_val=10)
    store.finish_job(first, worker_id="w1", attempt=running.attempts)
    assert sweeps.advance(store, first) == []
    assert store.get_sweep(sweep_id)["stage"] == "cancelled"


@pytest.fixture(scope="module")
def demo_sweep(tiny_demo, tmp_path_factory) -> tuple[Path, int]:
    """The demo sweep of 2 points × 2 seeds screened on fold 0, keep 1: queued by one command, drained once."""
    db = tmp_path_factory.mktemp("sweep") / "experiments.db"
    out = run_cli("sweep", "--preset", "demo", "--data", str(tiny_demo), "--set", "train.epochs=1",
                  "--set", "train.steps_per_epoch=4", "--set", "audio.crop_seconds=1", "--set",
                  "optim.warmup_epochs=0", "--grid", "model.width=[8,16]", "--seeds", "1,2", "--screen-fold", "0",
                  "--keep", "1", db=db)
    sweep_id = int(out.stdout)
    drain(db)
    return db, sweep_id


def _decided(db: Path, sweep_id: int) -> dict[str, dict]:
    """Each run of the sweep: its point's decision, its recorded run row and its fold scores."""
    with Store(db, readonly=True) as store:
        points = {p["point"]: p["decision"] for p in store.sweep_points(sweep_id)}
        return {r["run_id"]: {"decision": points[r["point"]], "run": store.get_run(r["run_id"]),
                              "folds": {f["fold"]: f["lwlrap"] for f in store.fold_scores(r["run_id"])}}
                for r in store.sweep_runs(sweep_id)}


@pytest.mark.slow
def test_a_demo_sweep_of_two_points_and_two_seeds_screened_on_fold_0_runs_from_one_command(demo_sweep):
    db, sweep_id = demo_sweep
    table = json.loads(run_cli("sweep", "show", str(sweep_id), "--json", db=db).stdout)
    rows = {r["point"]: r for r in table["rows"]}
    with Store(db, readonly=True) as store:
        points = {p["point"]: p for p in store.sweep_points(sweep_id)}
        runs = store.sweep_runs(sweep_id)
        fold0 = {r["run_id"]: {f["fold"]: f["lwlrap"] for f in store.fold_scores(r["run_id"])} for r in runs}
        recorded = {r["run_id"]: store.get_run(r["run_id"]) for r in runs}
    by_point = {p: [r["run_id"] for r in runs if r["point"] == p] for p in (0, 1)}
    screen = {p: statistics.mean(fold0[r][0] for r in ids) for p, ids in by_point.items()}
    best = max(screen, key=screen.get)
    other = 1 - best
    assert points[best]["decision"] == "kept" and points[other]["decision"] == "screened out"
    assert rows[best]["screen"] == pytest.approx(screen[best]) and rows[other]["screen"] == pytest.approx(screen[other])
    # The kept point's runs trained every fold (resumed: fold 0 is the screening fold's), the other fold 0 only.
    assert all(sorted(fold0[r]) == [0, 1, 2, 3, 4] for r in by_point[best])
    assert all(sorted(fold0[r]) == [0] for r in by_point[other])
    cvs = [recorded[r]["cv_lwlrap"] for r in by_point[best]]
    assert rows[best]["cv_mean"] == pytest.approx(statistics.mean(cvs))
    assert rows[best]["cv_std"] == pytest.approx(statistics.stdev(cvs))
    fold_means = [statistics.mean(fold0[r].values()) for r in by_point[best]]
    assert rows[best]["fold_mean"] == pytest.approx(statistics.mean(fold_means))
    assert rows[best]["fold_std"] == pytest.approx(statistics.stdev(fold_means))
    assert rows[other]["cv_mean"] is None and rows[other]["folds_done"] == "2/10"
    assert rows[best]["folds_done"] == "10/10" and rows[best]["state"] == "done" and rows[best]["rank"] == 1
    assert table["best_point"] == best
    # The preset's own width (16) is a point: the best point's classes are set against it.
    assert table["default_point"] == 1
    with Store(db, readonly=True) as store:
        lrap = {r: {c["class_idx"]: c["lrap"] for c in store.class_scores(r)} for r in by_point[best]}
    for row in table["classes"]:
        values = [lrap[r][row["class_idx"]] for r in by_point[best] if lrap[r][row["class_idx"]] is not None]
        assert row["best"] == pytest.approx(statistics.mean(values)) if values else row["best"] is None
    # A sweep's runs are ordinary runs: they blend.
    run_cli("ensemble", *by_point[best], "--dry-run", db=db)
    # Each run's config is what its point and seed say.
    for r in runs:
        config = recorded[r["run_id"]]["config"]
        assert (config["model"]["width"], config["train"]["seed"]) == ((8, 16)[r["point"]], r["seed"])


@pytest.mark.slow
def test_a_screened_out_run_is_listed_as_screened_with_its_fold_score_not_as_a_cv(demo_sweep):
    db, sweep_id = demo_sweep
    runs = _decided(db, sweep_id)
    out = [r for r, v in runs.items() if v["decision"] == "screened out"]
    kept = [r for r, v in runs.items() if v["decision"] == "kept"]
    assert len(out) == 2 and len(kept) == 2
    listed = {r["run_id"]: r for r in json.loads(run_cli("runs", "--json", db=db).stdout)}
    for r in out:
        assert listed[r]["status"] == "screened" and listed[r]["cv_lwlrap"] is None
        assert listed[r]["screen_fold"] == 0 and listed[r]["screen_lwlrap"] == pytest.approx(runs[r]["folds"][0])
    for r in kept:  # kept, then every fold: a run like any other
        assert listed[r]["status"] == "done" and listed[r]["folds_done"] == 5
        assert listed[r]["cv_lwlrap"] == pytest.approx(runs[r]["run"]["cv_lwlrap"]) and "screen_fold" not in listed[r]
    lines = {line.split()[0]: line for line in run_cli("runs", db=db).stdout.splitlines() if line.startswith("sweep-")}
    for r in out:
        assert " screened " in lines[r] and f"f0 {runs[r]['folds'][0]:.4f}" in lines[r]
        assert " done " not in lines[r]
    for r in kept:
        assert " done " in lines[r] and f"{runs[r]['run']['cv_lwlrap']:.4f}" in lines[r] and "f0 " not in lines[r]
    shown = run_cli("show", out[0], db=db).stdout.splitlines()[0]
    assert "[screened]" in shown and f"screening f0 {runs[out[0]]['folds'][0]:.4f}" in shown
    assert "CV lwlrap" not in shown
    assert "CV lwlrap" in run_cli("show", kept[0], db=db).stdout.splitlines()[0]


@pytest.mark.slow
async def test_the_console_shows_a_screened_out_run_as_screened_and_the_kept_points_seed_group(demo_sweep) -> None:
    from fsat_console.app import FsatConsole
    from tests.helpers.console import cell_text, screen_text, settle_workers, table
    from tests.helpers.waiting import wait_until

    db, sweep_id = demo_sweep
    runs = _decided(db, sweep_id)
    out = [r for r, v in runs.items() if v["decision"] == "screened out"]
    kept = [r for r, v in runs.items() if v["decision"] == "kept"]
    kept_cvs = [runs[r]["run"]["cv_lwlrap"] for r in kept]
    app = FsatConsole(db, poll_interval=0.1)
    async with app.run_test(size=(160, 40)) as pilot:
        t = table(app, "runs")
        await wait_until(pilot, lambda: t.row_count == 4 and cell_text(t, kept[0], "group") != "",
                         what="the sweep's four runs and the kept point's group")
        await settle_workers(pilot, app)
        for r in out:
            assert cell_text(t, r, "status").endswith(" screened")
            assert cell_text(t, r, "cv") == f"f0 {runs[r]['folds'][0]:.4f}"
            assert cell_text(t, r, "group") == ""  # no seed of this point trained every fold
        for r in kept:
            assert cell_text(t, r, "status").endswith("done")
            assert cell_text(t, r, "cv") == f"{runs[r]['run']['cv_lwlrap']:.4f}"
            assert cell_text(t, r, "group") == (f"{statistics.mean(kept_cvs):.4f} ± "
                                                f"{statistics.stdev(kept_cvs):.4f} (2)")
        app.open_run(out[0])
        await wait_until(pilot, lambda: f"screening f0 {runs[out[0]]['folds'][0]:.4f}" in screen_text(app),
                         what="the run screen's screening score")
        assert "CV LWLRAP" not in screen_text(app).split("mean fold")[0]


@pytest.mark.parametrize("options, field", [
    ({"screen_fold": 5}, "--screen-fold"),
    ({"keep": 1}, "--keep"),
    ({"screen_fold": 0, "keep": 3}, "--keep"),
    ({"random_axes": ["model.width=choice([8,16])"]}, "--count"),
])
def test_screening_and_random_options_are_checked_before_anything_is_queued(store, tmp_path, options, field):
    root = dataset_root(tmp_path / "data")
    grid = [] if "random_axes" in options else ["model.width=[8,16]"]
    with pytest.raises(ConfigError) as err:
        sweeps.queue_sweep(store, preset="demo", data_root=root, grid=grid, **options)
    assert err.value.field == field
    assert store.list_jobs() == []
