"""From a demo ensemble to a Kaggle pack, its offline rehearsal, lineage hashes, leaderboard scores and the push."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.kaggle.rehearse import build_env, probe_env, project_stages, trim_members, _bench_score
from engine.runs.lineage import DATASET_ENTRY, dataset_list_hash
from engine.store import Store
from tests.helpers.datasets import copy_dataset
from tests.helpers.processes import run_cli
from tests.helpers.worlds import inferred_runs

# The module's first test also builds the trained and inferred runs and a rehearsal: minutes on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@dataclass
class Demo:
    """A private copy of the inferred runs' database with an ensemble of the two TTA infer runs."""

    db: Path
    dataset: Path
    train_ids: list[str]
    infer_ids: list[str]
    single_crop_id: str
    ensemble_id: str
    pack: Path
    pack_report: dict
    rehearsal: dict


@pytest.fixture(scope="module")
def demo(tiny_demo: Path, tmp_path_factory) -> Demo:
    runs = inferred_runs(tiny_demo, tmp_path_factory)
    root = tmp_path_factory.mktemp("kaggle")
    db = root / "experiments.db"
    with sqlite3.connect(runs.db) as source, sqlite3.connect(db) as copy:
        source.backup(copy)
    # A rank blend: the kernel must rebuild its rank maps (ranks against each member's OOF, the quantile map).
    out = run_cli("ensemble", *runs.infer_ids, "--method", "rank", "--now", "--json", db=db).stdout
    ensemble_id = json.loads(out)["run_id"]
    pack = root / "pack"
    report = json.loads(run_cli("kaggle", "pack", ensemble_id, str(pack), "--owner", "tester", "--json", db=db).stdout)
    rehearsal = json.loads(run_cli("kaggle", "rehearse", str(pack), "--test", str(tiny_demo), "--json", db=db).stdout)
    return Demo(db=db, dataset=tiny_demo, train_ids=runs.train_ids, infer_ids=runs.infer_ids,
                single_crop_id=runs.single_crop_id, ensemble_id=ensemble_id, pack=pack, pack_report=report,
                rehearsal=rehearsal)


def test_the_pack_holds_a_kernel_and_a_dataset_for_the_kaggle_cli(demo: Demo):
    report, pack = demo.pack_report, demo.pack
    assert sorted(report["members"]) == sorted(demo.infer_ids)
    kernel_meta = json.loads((pack / "kernel" / "kernel-metadata.json").read_text())
    assert kernel_meta["enable_internet"] is False and kernel_meta["enable_gpu"] is True
    assert kernel_meta["competition_sources"] == ["freesound-audio-tagging-2019"]
    dataset_meta = json.loads((pack / "dataset" / "dataset-metadata.json").read_text())
    assert kernel_meta["dataset_sources"] == [dataset_meta["id"]] and dataset_meta["id"].startswith("tester/")
    assert "-r zip" in (pack / "README.md").read_text()
    manifest = json.loads((pack / "dataset" / "pack.json").read_text())
    # Five folds per member as weights-only state dicts; the sources are this checkout's files, byte for byte.
    for member in manifest["members"]:
        assert len(member["checkpoints"]) == 5
        state = torch.load(pack / "dataset" / member["checkpoints"][0], weights_only=True)
        assert any(k.startswith("model.") for k in state) and "frontend.mel_mean" in state
    project = Path(__file__).resolve().parent.parent
    for rel in ("engine/kaggle/kernel.py", "engine/infer.py", "engine/ensemble.py", "engine/models/registry.py"):
        assert (pack / "dataset" / "src" / rel).read_bytes() == (project / rel).read_bytes()
    assert not (pack / "dataset" / "src" / "engine" / "store.py").exists()
    pins = (pack / "dataset" / "requirements.txt").read_text().splitlines()
    assert f"torch=={torch.__version__.split('+')[0]}" in pins
    sizes = report["parts"]
    on_disk = sum(p.stat().st_size for p in pack.rglob("*") if p.is_file() and "rehearsal" not in p.parts)
    assert report["total_bytes"] == on_disk and sum(sizes.values()) == on_disk
    for rel, info in manifest["files"].items():
        assert hashlib.sha256((pack / "dataset" / rel).read_bytes()).hexdigest() == info["sha256"]


def test_the_rehearsed_submission_equals_the_test_npy_submission(demo: Demo):
    r = demo.rehearsal
    assert r["valid"] and r["matches"] is True and r["max_abs_diff"] <= 1e-5
    assert r["compared_with"].endswith(f"{demo.ensemble_id}/test.npy")
    # Checked here too, independently of the rehearsal's own comparison.
    import pandas as pd

    with Store(demo.db, readonly=True) as store:
        test = np.load(Path(store.get_run(demo.ensemble_id)["run_dir"]) / "test.npy")
    kernel = pd.read_csv(demo.pack / "rehearsal" / "submission.csv")
    assert kernel["fname"].tolist() == pd.read_csv(demo.dataset / "sample_submission.csv")["fname"].tolist()
    assert np.abs(kernel.iloc[:, 1:].to_numpy() - test).max() <= 1e-5
    names = [s["name"] for s in r["stages"]]
    assert names[0] == "setup" and names[-1] == "write" and "blend" in names
    assert {f"predict {m}" for m in demo.infer_ids} <= set(names)
    p = r["projection"]
    assert p["n_target"] == 3361 and p["budget"] == pytest.approx(3600 * 0.8)
    scale = 3361 / r["n_clips"]
    for s in p["stages"]:
        factor = {"fixed": 1.0, "clips": scale, "model": scale}[s["scales"]]
        assert s["projected"] == pytest.approx(s["seconds"] * factor)
    assert p["total"] == pytest.approx(sum(s["projected"] for s in p["stages"]))
    assert r["env"]["engine_importable"] is None and r["env"]["network"].startswith("refused")
    with Store(demo.db, readonly=True) as store:
        rows = store.find_submissions(demo.ensemble_id)
    assert rows[-1]["submission_sha256"] == r["submission_sha256"]
    assert r["submission_sha256"] == hashlib.sha256((demo.pack / "rehearsal" / "submission.csv").read_bytes()).hexdigest()


def test_a_projection_that_does_not_fit_proposes_the_best_member_subset_that_does(demo: Demo):
    r = demo.rehearsal
    manifest = json.loads((demo.pack / "dataset" / "pack.json").read_text())
    full = project_stages(r["stages"], r["n_clips"], speed_ratio=2.0)
    member_s = {s["member"]: s["projected"] for s in full["stages"] if s.get("member")}
    base = full["total"] - sum(member_s.values())
    # A limit where either member alone fits but not both.
    budget = base + max(member_s.values()) + 0.5 * min(member_s.values())
    tight = project_stages(r["stages"], r["n_clips"], speed_ratio=2.0, limit=budget / 0.8)
    assert not tight["fits"]
    with Store(demo.db, readonly=True) as store:
        score = _bench_score(store, manifest)
        trim = trim_members(tight, manifest["members"], score)
        singles = {m: score([m]) for m in demo.infer_ids}
    assert [f["members"] for f in trim["fitting"]] and all(len(f["members"]) == 1 for f in trim["fitting"])
    assert trim["best"]["members"] == [max(singles, key=singles.get)]
    assert trim["best"]["oof_lwlrap"] == pytest.approx(max(singles.values()))


def test_the_rehearsal_environment_has_no_project_and_no_network(tmp_path: Path):
    python = build_env(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run([str(python), "-c", "import engine"], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert out.returncode != 0 and "No module named 'engine'" in out.stderr
    out = subprocess.run([str(python), "-c", "import numpy, torch; print(numpy.__version__)"], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == np.__version__
    info = probe_env(python, {"numpy": np.__version__, "torch": "0.0.1"})
    assert info["engine_importable"] is None
    assert info["network"].startswith("refused") and info["network_raw"].startswith("refused")
    assert info["version_differences"] == {"torch": {"packed": "0.0.1", "here": info["versions"]["torch"]}}


def test_a_test_folder_with_missing_extra_or_unreadable_clips_gets_one_line(demo: Demo, tmp_path: Path):
    data = copy_dataset(demo.dataset, tmp_path / "data")
    clips = sorted((data / "test").iterdir())
    clips[0].unlink()
    shutil.copyfile(clips[1], data / "test" / "stray.wav")
    out = run_cli("kaggle", "rehearse", str(demo.pack), "--test", str(data), db=demo.db, check=False)
    assert out.returncode == 2
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in out.stderr
    assert f"1 missing ({clips[0].name})" in line and "1 extra (stray.wav)" in line

    data2 = copy_dataset(demo.dataset, tmp_path / "data2")
    bad = sorted((data2 / "test").iterdir())[2]
    bad.write_bytes(b"not audio at all")
    out = run_cli("kaggle", "rehearse", str(demo.pack), "--test", str(data2), db=demo.db, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and f"1 unreadable ({bad.name}" in out.stderr


def test_runs_that_cannot_be_packed_are_refused_with_one_line(demo: Demo, tmp_path: Path):
    # A blend with a member that has no test predictions (the one-crop inference ran on oof only).
    out = json.loads(run_cli("ensemble", demo.infer_ids[0], demo.single_crop_id, "--now", "--json",
                             db=demo.db).stdout)
    refused = run_cli("kaggle", "pack", out["run_id"], str(tmp_path / "p1"), db=demo.db, check=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert demo.single_crop_id in refused.stderr and "test.npy" in refused.stderr
    assert not (tmp_path / "p1").exists()
    # A trained run whose fold checkpoint does not load.
    with Store(demo.db) as store:
        source = store.get_run(demo.train_ids[0])
        copy = tmp_path / "runs" / "train-copy"
        shutil.copytree(source["run_dir"], copy)
        (copy / "fold2" / "best.pt").write_bytes(b"damaged")
        store.create_run("train-copy", kind="train", dataset_id=source["dataset_id"], config=source["config"],
                         run_dir=str(copy), model=source["model"])
        store.finish_run("train-copy", status="done")
    refused = run_cli("kaggle", "pack", "train-copy", str(tmp_path / "p2"), db=demo.db, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "train-copy" in refused.stderr and str(copy / "fold2" / "best.pt") in refused.stderr
    assert not (tmp_path / "p2").exists()


def test_every_run_records_the_hashes_of_its_files_and_dataset(demo: Demo):
    with Store(demo.db, readonly=True) as store:
        for run_id in demo.train_ids + demo.infer_ids:
            run = store.get_run(run_id)
            rows = {r["path"]: r for r in store.run_files(run_id)}
            for path, row in rows.items():
                if path != DATASET_ENTRY:
                    data = (Path(run["run_dir"]) / path).read_bytes()
                    assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["bytes"] == len(data)
            assert rows[DATASET_ENTRY]["sha256"] == dataset_list_hash(demo.dataset)[0]
            expected = {f"fold{k}/best.pt" for k in range(5)} if run["kind"] == "train" else {"oof.npy", "test.npy"}
            assert expected <= set(rows)
        sub = store.find_submissions(demo.ensemble_id)[-1]
    members = json.loads(sub["members"])
    assert {m["run_id"] for m in members} == set(demo.infer_ids)
    assert {m["source_run_id"] for m in members} == set(demo.train_ids)


def test_leaderboard_scores_are_recorded_and_shown_against_cv(demo: Demo):
    run_cli("lb", str(demo.pack), "--public", "0.61", "--private", "0.6", db=demo.db)
    rows = json.loads(run_cli("lb", "--json", db=demo.db).stdout)
    row = next(r for r in rows if r["run_id"] == demo.ensemble_id)
    with Store(demo.db, readonly=True) as store:
        cv = store.get_run(demo.ensemble_id)["cv_lwlrap"]
    assert row["public_lwlrap"] == 0.61 and row["public_gap"] == pytest.approx(0.61 - cv)
    assert row["private_gap"] == pytest.approx(0.6 - cv)
    text = run_cli("lb", db=demo.db).stdout
    assert demo.ensemble_id in text and f"{0.61 - cv:+.4f}" in text
    bad = run_cli("lb", str(row["submission_id"]), "--public", "high", db=demo.db, check=False)
    assert bad.returncode == 2 and "--public 'high'" in bad.stderr


def _stand_in_kaggle(folder: Path) -> Path:
    folder.mkdir()
    script = folder / "kaggle"
    script.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                      "with open(os.environ['KAGGLE_ARGS_LOG'], 'a') as fh:\n"
                      "    fh.write(json.dumps(sys.argv[1:]) + '\\n')\n")
    script.chmod(0o755)
    return folder


def test_push_runs_the_kaggle_cli_and_says_what_to_install_without_it(demo: Demo, tmp_path: Path):
    bin_dir = _stand_in_kaggle(tmp_path / "bin")
    log = tmp_path / "args.jsonl"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", KAGGLE_ARGS_LOG=str(log))
    cmd = [sys.executable, "-m", "engine.cli", "--db", str(demo.db), "kaggle", "push", str(demo.pack)]
    project = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = project + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [["datasets", "create", "-p", str(demo.pack / "dataset"), "-r", "zip"],
                     ["kernels", "push", "-p", str(demo.pack / "kernel")]]
    env["PATH"] = str(tmp_path / "empty")
    missing = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert missing.returncode == 2 and "pip install kaggle" in missing.stderr


async def test_the_run_screen_packs_and_rehearses_a_run_and_shows_cv_against_the_leaderboard(demo: Demo):
    from fsat_console.app import FsatConsole
    from fsat_console.screens.run import RunScreen
    from tests.helpers.waiting import wait_until

    # The one-crop inference: the cheapest packable run (one crop per clip and fold).
    run_id = demo.single_crop_id
    app = FsatConsole(demo.db, data_root=demo.dataset, poll_interval=0.2)

    def messages() -> list[str]:
        return [n.message for n in app._notifications]

    async with app.run_test(size=(120, 40)) as pilot:
        await app.push_screen(RunScreen(run_id))
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.detail is not None,
                         what="the run screen")
        await pilot.press("L")
        await wait_until(pilot, lambda: any("has no submission yet" in m for m in messages()), what="no submission")
        await pilot.press("K")
        await wait_until(pilot, lambda: any(m.startswith("Packed ") for m in messages()), timeout=900,
                         what="the pack and its rehearsal")
        summary = next(m for m in messages() if m.startswith("Packed "))
        assert f"Packed {run_id} into {demo.db.parent / 'kaggle'}" in summary and "MiB" in summary
        assert "for 3361 clips" in summary and ("fits" in summary or "does NOT fit" in summary)
        await pilot.press("L")
        await wait_until(pilot, lambda: any(m.startswith("Submission ") for m in messages()), what="CV vs LB")
    with Store(demo.db, readonly=True) as store:
        sub = store.find_submissions(run_id)[-1]
    assert sub["submission_sha256"] and sub["projected_seconds"] > 0


def test_fp16_packs_halve_the_weights_and_report_the_score_change(demo: Demo, tmp_path: Path):
    report = json.loads(run_cli("kaggle", "pack", demo.infer_ids[0], str(tmp_path / "p"), "--fp16", "--json",
                                db=demo.db).stdout)
    manifest = json.loads((tmp_path / "p" / "dataset" / "pack.json").read_text())
    state = torch.load(tmp_path / "p" / "dataset" / manifest["members"][0]["checkpoints"][0], weights_only=True)
    model = [v for k, v in state.items() if k.startswith("model.") and v.is_floating_point()]
    assert model and all(v.dtype == torch.float16 for v in model)
    assert state["frontend.mel_mean"].dtype == torch.float32
    [check] = report["fp16_check"]
    assert check["member"] == demo.infer_ids[0] and 0 < check["oof_lwlrap_fp32"] <= 1
    assert check["change"] == pytest.approx(check["oof_lwlrap_fp16"] - check["oof_lwlrap_fp32"])
    assert abs(check["change"]) < 0.01
    assert report["parts"]["checkpoints"] < demo.pack_report["parts"]["checkpoints"] / 2 * 0.6
    # Packed without --owner: push refuses before calling anything.
    refused = run_cli("kaggle", "push", str(tmp_path / "p"), db=demo.db, check=False)
    assert refused.returncode == 2 and "your-kaggle-username" in refused.stderr


def test_schema_11_adds_the_lineage_tables_to_an_older_database(tmp_path: Path):
    path = tmp_path / "old.db"
    Store(path, schema_version=10).close()
    with sqlite3.connect(path) as con:
        assert not con.execute("SELECT 1 FROM sqlite_master WHERE name='submissions'").fetchone()
    with Store(path) as store:
        assert store.schema_version() >= 11
        store.create_run("r1", kind="train")
        store.record_run_files("r1", [("oof.npy", "ab" * 32, 10)])
        sid = store.record_submission(run_id="r1", pack_sha256="cd" * 32, pack_dir="/p", members=[],
                                      teacher_run_id=None, cv_lwlrap=0.5)
        assert store.record_submission(run_id="r1", pack_sha256="cd" * 32, pack_dir="/q", members=[],
                                       teacher_run_id=None, cv_lwlrap=0.5) == sid
        store.record_leaderboard(sid, public_lwlrap=0.55, private_lwlrap=None)
        [row] = store.cv_vs_lb()
    assert row["public_gap"] == pytest.approx(0.05) and row["private_gap"] is None
    assert [r["path"] for r in Store(path, readonly=True).run_files("r1")] == ["oof.npy"]
