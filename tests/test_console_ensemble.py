"""The ensemble screen, the TTA comparison and the infer/baseline dialogs, driven with Pilot.

Everything is real: a SQLite file in ``tmp_path``, a dataset folder with a
``train_curated.csv`` written by the test, runs whose ``oof.npy`` files the
test writes with numpy. The blend scores the console shows are compared with
``engine.ensemble.blend`` called here on the same arrays (and, for a saved
blend, with the ensemble job's own ``build_ensemble``); per-class TTA gains
with differences computed here from the scores the test wrote.
"""

from __future__ import annotations

import pytest
from textual.notifications import Notify
from textual.widgets import Checkbox, Digits, Input, Static

from engine.data.labels import FSD2019_CLASSES
from engine.ensemble import Member, blend, greedy_forward_selection, weights_from_cv
from engine.jobs.ensemble import build_ensemble
from engine.metrics import lwlrap
from engine.specs import spec_from_json
from engine.store import OOF
from fsat_console.app import FsatConsole
from fsat_console.screens.ensemble import BlendBench, EnsembleScreen, find_candidates
from fsat_console.screens.help import HelpScreen
from fsat_console.screens.infer import BaselineScreen, InferScreen
from fsat_console.screens.main import MainScreen
from fsat_console.screens.run import RunScreen
from fsat_console.widgets.live_table import LiveTable
from tests.helpers.console import open_ensemble, screen_text, select_row, settle_workers, settled
from tests.helpers.datasets import ENSEMBLE_CLIPS
from tests.helpers.processes import heavy_modules_loaded_by
from tests.helpers.recording import add_run, record_run
from tests.helpers.waiting import wait_until

SIZE = (140, 45)
N_CLIPS = ENSEMBLE_CLIPS
CLASSES = list(FSD2019_CLASSES)


def shown_score(screen: EnsembleScreen) -> str:
    """The big number."""
    return screen.query_one("#blend-score", Digits).value


def oof_lwlrap(world: dict, run_id: str) -> float:
    """A run's own out-of-fold LWLRAP, from the array the test wrote."""
    return lwlrap(world["truth"], world["oofs"][run_id])


def expected_blend(world: dict, members: list[str], weights: dict[str, float] | None = None, **kwargs) -> float:
    """``engine.ensemble.blend`` on the test's arrays, members in spec (sorted) order.

    ``weights=None`` is the default of ``fsat ensemble`` and the ensemble job:
    each member carries its OOF LWLRAP as ``cv_lwlrap`` and the blend weights
    them in proportion.
    """
    names = sorted(members)
    kwargs.setdefault("folds", world["folds"])
    return blend([Member(m, world["oofs"][m], cv_lwlrap=oof_lwlrap(world, m)) for m in names], world["truth"],
                 weights=None if weights is None else [weights[m] for m in names], **kwargs).oof_lwlrap


def shown_cv_weights(world: dict, members: list[str]) -> dict[str, float]:
    """CV weights as the table shows them: proportional to the OOF LWLRAP, averaging 1, two decimals."""
    scores = {m: oof_lwlrap(world, m) for m in members}
    return {m: round(len(members) * v / sum(scores.values()), 2) for m, v in scores.items()}


# -- the ensemble screen -------------------------------------------------------------------------


async def test_members_start_with_cv_weights_like_the_ensemble_job(world: dict) -> None:
    pair = ["train-0001", "train-0002"]
    cv_score = expected_blend(world, pair)
    # These arrays tell CV weights from equal ones (the old default of the screen).
    assert abs(cv_score - expected_blend(world, pair, {"train-0001": 1.0, "train-0002": 1.0})) > 1e-6
    app = FsatConsole(world["db"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_ensemble(pilot, app)
        table = screen.table
        # Finished runs of the dataset with oof.npy; not the running one, not the other dataset's.
        assert sorted(k.value for k in table.rows) == ["train-0001", "train-0002", "train-0003", "train-0004"]
        assert "tiny" in table.border_title

        await select_row(pilot, table, "train-0001")
        await pilot.press("space")
        await settled(pilot, screen)
        one = expected_blend(world, ["train-0001"])
        assert screen.outcome.oof_lwlrap == pytest.approx(one, abs=1e-12)
        assert shown_score(screen) == f"{one:.4f}"
        assert screen.outcome.member_lwlrap["train-0001"] == pytest.approx(oof_lwlrap(world, "train-0001"))
        assert table.get_cell("train-0001", "weight").plain == "1.00"

        await select_row(pilot, table, "train-0002")
        await pilot.press("space")
        await settled(pilot, screen)
        assert screen.state.cv_weighted and screen.state.members() == pair
        assert screen.outcome.oof_lwlrap == pytest.approx(cv_score, abs=1e-12)
        assert shown_score(screen) == f"{cv_score:.4f}"
        shares = weights_from_cv([oof_lwlrap(world, m) for m in pair])
        assert screen.outcome.weights == pytest.approx(shares.tolist(), abs=1e-12)
        shown = shown_cv_weights(world, pair)
        for m, share in zip(pair, shares):
            assert table.get_cell(m, "weight").plain == f"{shown[m]:.2f}"
            assert table.get_cell(m, "share").plain == f"{share * 100:.1f}%"
        assert "CV weights (∝ each member's OOF LWLRAP" in screen_text(app)

        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: world["store"].list_jobs(), what="ensemble job")
        await app.workers.wait_for_complete()
    (job,) = world["store"].list_jobs()
    spec = world["store"].get_job(job["id"]).spec
    assert job["kind"] == "ensemble"
    assert spec["members"] == pair
    assert spec["weights"] == []  # the job's default: CV weights
    assert (spec["method"], spec["calibrate"], spec["greedy"]) == ("auto", True, False)

    # The job blends what the console showed.
    done = build_ensemble(world["store"], spec_from_json("ensemble", spec), run_id="ensemble-0009",
                          run_dir=world["tmp"] / "runs" / "ensemble-0009", log=lambda line: None)
    assert done.cv_lwlrap == pytest.approx(screen.outcome.oof_lwlrap, abs=1e-12)
    assert [done.weights[m] for m in pair] == pytest.approx(screen.outcome.weights, abs=1e-12)


async def test_plus_turns_the_cv_weights_shown_into_explicit_weights(world: dict) -> None:
    pair = ["train-0001", "train-0002"]
    app = FsatConsole(world["db"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_ensemble(pilot, app)
        table = screen.table
        for m in pair:
            await select_row(pilot, table, m)
            await pilot.press("space")
        await settled(pilot, screen)
        cv_score = screen.outcome.oof_lwlrap
        assert cv_score == pytest.approx(expected_blend(world, pair), abs=1e-12)

        await pilot.press("plus")  # on train-0002: the weights shown become explicit, its own one step up
        await settled(pilot, screen)
        shown = shown_cv_weights(world, pair)
        explicit = {"train-0001": shown["train-0001"], "train-0002": shown["train-0002"] + 0.5}
        assert not screen.state.cv_weighted
        assert screen.state.weights == pytest.approx(explicit, abs=1e-9)
        heavier = expected_blend(world, pair, explicit)
        assert abs(heavier - cv_score) > 1e-6  # the weight matters for these arrays
        assert screen.outcome.oof_lwlrap == pytest.approx(heavier, abs=1e-12)
        assert shown_score(screen) == f"{heavier:.4f}"
        for m in pair:
            assert table.get_cell(m, "weight").plain == f"{explicit[m]:.2f}"
        total = sum(explicit.values())
        assert screen.outcome.weights == pytest.approx([explicit[m] / total for m in pair], abs=1e-12)

        for _ in range(4):  # auto -> best -> rank -> rank_minmax -> mean: the plain mean of the probabilities
            await pilot.press("m")
        await settled(pilot, screen)
        assert screen.state.method == "mean"
        mean = expected_blend(world, pair, explicit, method="mean")
        assert screen.outcome.oof_lwlrap == pytest.approx(mean, abs=1e-12)

        await pilot.press("k")  # no calibration: the score is the raw one
        await settled(pilot, screen)
        raw = expected_blend(world, pair, explicit, method="mean", calibrate=False)
        assert screen.outcome.oof_lwlrap == pytest.approx(raw, abs=1e-12)
        assert screen.outcome.raw_oof_lwlrap == pytest.approx(raw, abs=1e-12)
        assert "mean of probabilities · ranks not mapped" in screen_text(app)

        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: world["store"].list_jobs(), what="ensemble job")
        (job,) = world["store"].list_jobs()
        spec = world["store"].get_job(job["id"]).spec
        assert spec["members"] == pair
        assert spec["weights"] == [screen.state.weights[m] for m in pair]  # exactly the weights shown
        assert [f"{w:.2f}" for w in spec["weights"]] == [table.get_cell(m, "weight").plain for m in pair]
        assert (spec["method"], spec["calibrate"], spec["greedy"]) == ("mean", False, False)

        # c goes back to CV weights: the score of the job's default again.
        await pilot.press("c")
        await settled(pilot, screen)
        assert screen.state.cv_weighted
        assert screen.outcome.oof_lwlrap == pytest.approx(
            expected_blend(world, pair, method="mean", calibrate=False), abs=1e-12)


async def test_auto_shows_its_choice_and_a_method_below_the_best_member_warns(world: dict) -> None:
    pair = ["train-0001", "train-0002"]
    app = FsatConsole(world["db"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_ensemble(pilot, app)
        for m in pair:
            await select_row(pilot, screen.table, m)
            await pilot.press("space")
        await settled(pilot, screen)
        expected = blend([Member(m, world["oofs"][m], cv_lwlrap=oof_lwlrap(world, m)) for m in pair],
                         world["truth"], folds=world["folds"])
        best = oof_lwlrap(world, "train-0001")
        assert screen.state.method == "auto" and screen.outcome.method == expected.method
        assert screen.outcome.oof_lwlrap == pytest.approx(expected.oof_lwlrap, abs=1e-12) and expected.oof_lwlrap >= best
        # The outcome is in before the header is painted with it: on a busy machine, a frame later.
        await wait_until(pilot, lambda: f"auto (best by cross-fitted OOF) → {expected.method}"
                         in " ".join(screen_text(app).split()), what="the header with auto's choice")
        await wait_until(pilot, lambda: all(f"{c.method} {c.oof_lwlrap:.4f}" in " ".join(screen_text(app).split())
                                            for c in expected.candidates), what="every candidate's score")
        assert "warning" not in " ".join(screen_text(app).split())
        # The weak member three steps heavier, in a plain mean: below the best member, and said so.
        for _ in range(6):
            await pilot.press("plus")
        for _ in range(4):
            await pilot.press("m")
        await settled(pilot, screen)
        assert screen.state.method == "mean"
        assert screen.outcome.oof_lwlrap < best
        warning = f"warning: the mean blend's cross-fitted OOF lwlrap {screen.outcome.oof_lwlrap:.4f} is below"
        await wait_until(pilot, lambda: warning in " ".join(screen_text(app).split()), what="the warning")


async def test_unusable_members_are_left_out_with_a_reason(world: dict) -> None:
    app = FsatConsole(world["db"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_ensemble(pilot, app)
        table = screen.table
        await select_row(pilot, table, "train-0001")
        await pilot.press("space")
        await settled(pilot, screen)
        before = screen.outcome.oof_lwlrap

        await select_row(pilot, table, "train-0003")  # 39 rows for a 40-clip dataset
        await pilot.press("space")
        await settled(pilot, screen)
        assert "train-0003" not in screen.state.members()
        assert table.get_cell("train-0003", "note").plain == f"shape {N_CLIPS - 1}×80, expected {N_CLIPS}×80"
        assert screen.outcome.oof_lwlrap == pytest.approx(before, abs=1e-12)

        await select_row(pilot, table, "train-0004")  # NaN where folds were never trained
        await pilot.press("space")
        await settled(pilot, screen)
        assert "train-0004" not in screen.state.members()
        assert table.get_cell("train-0004", "note").plain == f"10 of {N_CLIPS} clips unscored"
        assert screen.outcome.oof_lwlrap == pytest.approx(before, abs=1e-12)
        assert app.is_running

        # Every weight at zero is a message, not a crash; saving then refuses.
        await select_row(pilot, table, "train-0001")
        await pilot.press("minus", "minus")
        await settled(pilot, screen)
        assert screen.state.members() == ["train-0001"] and screen.state.weights == {"train-0001": 0.0}
        assert screen.outcome.oof_lwlrap is None and "weight is zero" in screen.outcome.error
        await pilot.press("ctrl+s")
        await settle_workers(pilot, app)
        assert world["store"].list_jobs() == []

        # A run that finishes while the screen is open joins the list.
        add_run(world["store"], world["tmp"], "train-0008", world["oofs"]["train-0002"], dataset_id=world["ds"],
                cv=0.4, name="late")
        await wait_until(pilot, lambda: "train-0008" in [k.value for k in table.rows], what="new run listed")

        # d shows the other dataset's runs; the blend starts empty there.
        await pilot.press("d")
        await wait_until(pilot, lambda: [k.value for k in table.rows] == ["train-0000"], what="other dataset")
        assert screen.state.members() == [] and screen.state.cv_weighted


async def test_greedy_selection_matches_the_engine(world: dict) -> None:
    app = FsatConsole(world["db"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_ensemble(pilot, app)
        await pilot.press("g")
        await settled(pilot, screen)
        names = ["train-0001", "train-0002"]  # the usable candidates, in the order the screen passes them
        # The screen's default method (auto), scored cross-fitted over the stored folds as the job does.
        picks, _, _ = greedy_forward_selection([Member(m, world["oofs"][m]) for m in names], world["truth"],
                                               max_steps=20, method="auto", folds=world["folds"])
        counts = {names[k]: float(picks.count(k)) for k in set(picks)}
        assert screen.state.weights == counts
        assert screen.outcome.oof_lwlrap == pytest.approx(expected_blend(world, list(counts), counts), abs=1e-12)
        # The unusable runs were skipped with their reason.
        assert "unscored" in screen.table.get_cell("train-0004", "note").plain


def test_bench_refuses_a_member_of_another_dataset(world: dict) -> None:
    found, datasets = find_candidates(world["store"], world["store"].list_runs(), world["db"])
    by_id = {c.run_id: c for c in found}
    assert set(by_id) == {"train-0000", "train-0001", "train-0002", "train-0003", "train-0004"}
    stored_folds = world["store"].get_folds(world["ds"])
    bench = BlendBench()
    outcome = bench.evaluate(datasets[world["ds"]], [by_id["train-0001"], by_id["train-0000"]], [1.0, 1.0],
                             method="rank_minmax", calibrate=True, key=("k",), folds=stored_folds)
    assert "another dataset" in outcome.problems["train-0000"]
    assert outcome.members == ["train-0001"]
    assert outcome.oof_lwlrap == pytest.approx(expected_blend(world, ["train-0001"], {"train-0001": 1.0},
                                                              method="rank_minmax"), abs=1e-12)
    # Without stored folds the calibrated score is the in-sample one.
    in_sample = bench.evaluate(datasets[world["ds"]], [by_id["train-0001"]], [1.0], method="rank_minmax",
                               calibrate=True, key=("k",))
    assert in_sample.oof_lwlrap == pytest.approx(
        expected_blend(world, ["train-0001"], {"train-0001": 1.0}, method="rank_minmax", folds=None), abs=1e-12)
    assert in_sample.oof_lwlrap != pytest.approx(outcome.oof_lwlrap, abs=1e-6)


# -- a full queue: the save and the dialogs say so and queue nothing ----------------------------------


@pytest.fixture
def full_queue(world: dict) -> int:
    """As many waiting jobs as the store accepts (its default limit); returns that number."""
    from engine.store import DEFAULT_MAX_QUEUED

    for _ in range(DEFAULT_MAX_QUEUED):
        world["store"].enqueue("train", {}, name="filler")
    return DEFAULT_MAX_QUEUED


async def test_saving_a_blend_into_a_full_queue_says_so(world: dict, full_queue: int) -> None:
    notices: list[str] = []

    def hook(message) -> None:
        if isinstance(message, Notify):
            notices.append(str(message.notification.message))

    app = FsatConsole(world["db"], poll_interval=0.1)
    async with app.run_test(size=SIZE, message_hook=hook) as pilot:
        screen = await open_ensemble(pilot, app)
        await select_row(pilot, screen.table, "train-0001")
        await pilot.press("space")
        await settled(pilot, screen)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: any("not queued" in n for n in notices), what="the refusal")
        (notice,) = [n for n in notices if "not queued" in n]
        assert notice.startswith("Ensemble not queued. Queue full: the queue already holds "
                                 f"{full_queue} queued jobs")
        assert not any(n.startswith("queued job") for n in notices)
        assert app.screen is screen and screen.state.members() == ["train-0001"]  # the blend is kept
    jobs = world["store"].list_jobs(limit=2 * full_queue)
    assert len(jobs) == full_queue and {j["kind"] for j in jobs} == {"train"}


# -- run screen: i queues inference, b a baseline ---------------------------------------------------


async def open_run(pilot, app, run_id: str) -> RunScreen:
    await wait_until(pilot, lambda: app.overview is not None, what="first poll")
    app.open_run(run_id)
    await wait_until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.detail is not None
                     and app.screen.detail.run is not None, what=f"run screen of {run_id}")
    return app.screen


async def open_infer_dialog(pilot, app, run_id: str) -> InferScreen:
    """From the run screen of ``run_id``, press i and wait for the inference dialog."""
    await open_run(pilot, app, run_id)
    await pilot.press("i")
    await wait_until(pilot, lambda: isinstance(app.screen, InferScreen) and bool(app.screen.query("#tta-crops")),
                     what="infer dialog, its fields mounted")
    return app.screen


async def test_i_queues_inference_with_the_chosen_tta_settings(world: dict) -> None:
    app = FsatConsole(world["db"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        dialog = await open_infer_dialog(pilot, app, "train-0001")
        assert not dialog.query_one("#preset-error", Static).display
        # Prefilled from the tta preset.
        assert [dialog.query_one(f"#{f}", Input).value for f in ("tta-crops", "tta-crops-long", "long-seconds")] \
            == ["5", "10", "30"]
        assert dialog.query_one("#split-oof", Checkbox).value and dialog.query_one("#split-test", Checkbox).value

        await pilot.press("backspace", "0", "enter")  # K = 0: the engine's message under the field
        await settle_workers(pilot, app)
        error = dialog.query_one("#tta-crops-error", Static)
        assert app.screen is dialog and error.display
        assert "must be positive" in str(error.content)
        assert world["store"].list_jobs() == []

        await pilot.press("backspace", "7", "tab", "backspace", "backspace", "1", "2", "tab")
        await pilot.press("backspace", "backspace", "2", "0", "tab", "tab", "space")  # untick test
        assert dialog.query_one("#split-test", Checkbox).value is False
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="dialog to close")
        (job,) = world["store"].list_jobs()
        spec = world["store"].get_job(job["id"]).spec
        assert job["kind"] == "infer" and job["name"] == "train-0001 tta7"
        assert spec["run_id"] == "train-0001"
        assert spec["splits"] == ["oof"]
        assert (spec["infer"]["tta_crops"], spec["infer"]["tta_crops_long"], spec["infer"]["long_seconds"]) \
            == (7, 12, 20.0)
        assert spec["infer"]["batch_size"] == 32  # the rest from the preset


async def test_b_queues_a_baseline_on_the_runs_dataset(world: dict) -> None:
    app = FsatConsole(world["db"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await open_run(pilot, app, "train-0002")
        await pilot.press("b")
        await wait_until(pilot, lambda: isinstance(app.screen, BaselineScreen), what="baseline dialog")
        dialog = app.screen
        assert not dialog.query_one("#preset-error", Static).display
        assert dialog.query_one("#data-root", Input).value == str(world["data"].resolve())
        assert dialog.query_one("#encoder", Input).value == "train-0002"  # a cnn14 run: its encoder as fallback

        dialog.query_one("#c", Input).value = "0"
        await pilot.press("enter")
        await settle_workers(pilot, app)
        assert dialog.query_one("#c-error", Static).display
        assert "must be positive" in str(dialog.query_one("#c-error", Static).content)
        assert world["store"].list_jobs() == []

        dialog.query_one("#c", Input).value = "0.5"
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, RunScreen), what="dialog to close")
        (job,) = world["store"].list_jobs()
        spec = world["store"].get_job(job["id"]).spec
        assert job["kind"] == "baseline"
        assert spec["data"]["root"] == str(world["data"].resolve())
        assert spec["C"] == 0.5 and spec["encoder_run_id"] == "train-0002"


async def test_infer_dialog_reports_a_full_queue_under_its_fields(world: dict, full_queue: int) -> None:
    app = FsatConsole(world["db"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        dialog = await open_infer_dialog(pilot, app, "train-0001")
        error = dialog.query_one("#queue-error", Static)
        assert not error.display
        await pilot.press("enter")
        await wait_until(pilot, lambda: error.display, what="the queue error")
        assert str(error.content).startswith("Queue full: the queue already holds")
        assert app.screen is dialog  # open, with everything as typed
    jobs = world["store"].list_jobs(limit=2 * full_queue)
    assert len(jobs) == full_queue and {j["kind"] for j in jobs} == {"train"}


# -- TTA gain on the run screen ----------------------------------------------------------------------


async def test_tta_gain_appears_live_and_on_the_inference_run(world: dict) -> None:
    store, truth = world["store"], world["truth"]
    # The trained run's scores, recorded by the engine's scoring code from its oof.npy.
    record_run(store, world["tmp"] / "runs", "train-0010", kind="train", dataset_id=world["ds"],
               oof=world["oofs"]["train-0001"], truth=truth, folds=world["folds"], name="scored",
               overrides=('model.arch="cnn14"',))
    base = {c["class_idx"]: c["lrap"] for c in store.class_scores("train-0010", OOF)}
    app = FsatConsole(world["db"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_run(pilot, app, "train-0010")
        panel = screen.query_one("#tta-gain", Static)
        classes = screen.query_one("#classes", LiveTable)
        await wait_until(pilot, lambda: classes.row_count == len(CLASSES), what="class rows")
        assert not panel.display
        assert "gain" not in [c.key for c in classes.specs]

        # Another connection (the inference job) records a TTA run of train-0010: better scores.
        better = world["oofs"]["train-0001"] + truth
        record_run(store, world["tmp"] / "runs", "infer-0007", kind="infer", dataset_id=world["ds"],
                   oof=better, truth=truth, folds=world["folds"], parent="train-0010",
                   overrides=("infer.tta_crops=5", "infer.tta_crops_long=10", "infer.long_seconds=30.0"))
        with_tta = {c["class_idx"]: c["lrap"] for c in store.class_scores("infer-0007", OOF)}
        cv_base = store.get_run("train-0010")["cv_lwlrap"]
        cv_tta = store.get_run("infer-0007")["cv_lwlrap"]
        assert cv_tta > cv_base
        gain = f"{cv_tta - cv_base:+.4f}"
        scored = [i for i in range(len(CLASSES)) if base[i] is not None]
        absent = next(i for i in range(len(CLASSES)) if base[i] is None)  # a class without positives

        await wait_until(pilot, lambda: panel.display and gain in str(panel.content)
                         and classes.row_count == len(CLASSES) and "gain" in [c.key for c in classes.specs],
                         what="TTA comparison")
        text = str(panel.content)
        assert f"without TTA {cv_base:.4f} train-0010 (this run)" in text
        assert f"with TTA {cv_tta:.4f} infer-0007" in text
        assert "5 crops, 10 beyond 30 s" in text and text.startswith(f"gain {gain}")
        for i in scored[:5]:
            assert classes.get_cell(str(i), "gain").plain == f"{with_tta[i] - base[i]:+.4f}", CLASSES[i]
        assert classes.get_cell(str(absent), "gain").plain == "—"

        # The inference run's own screen: its parent and the same gain.
        await pilot.press("escape")
        infer_screen = await open_run(pilot, app, "infer-0007")
        panel = infer_screen.query_one("#tta-gain", Static)
        await wait_until(pilot, lambda: panel.display, what="TTA line on the inference run")
        assert f"without TTA {cv_base:.4f} train-0010 " in str(panel.content)
        assert f"with TTA {cv_tta:.4f} infer-0007 (this run)" in str(panel.content)
        assert str(panel.content).startswith(f"gain {gain}")
        classes = infer_screen.query_one("#classes", LiveTable)
        await wait_until(pilot, lambda: classes.row_count == len(CLASSES), what="class rows")
        i = scored[0]
        assert classes.get_cell(str(i), "lrap").plain == f"{with_tta[i]:.4f}"
        assert classes.get_cell(str(i), "gain").plain == f"{with_tta[i] - base[i]:+.4f}"

        # i on an inference run infers its trained run again.
        await pilot.press("i")
        await wait_until(pilot, lambda: isinstance(app.screen, InferScreen) and bool(app.screen.query("#tta-crops")),
                     what="infer dialog, its fields mounted")
        assert app.screen.run_id == "train-0010"


# -- help, palette, start-up --------------------------------------------------------------------------


async def test_help_and_palette_reach_the_ensemble_screen(world: dict) -> None:
    app = FsatConsole(world["db"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.overview is not None, what="first poll")
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        titles_and_rows = [(title, " ".join(f"{keys} {what}" for keys, what in rows))
                           for title, rows in app.screen.sections]
        ensemble = dict(titles_and_rows)["Ensemble"]
        for words in ("space Put the selected run in the blend", "g Greedy forward selection",
                      "^s / ⏎ Queue an ensemble job", "m Next blend method"):
            assert words in ensemble, words
        run = dict(titles_and_rows)["Run"]
        assert "i Queue inference of this run" in run and "b Queue the embeddings" in run
        assert "e Blend runs' out-of-fold scores" in dict(titles_and_rows)["Runs and jobs"]
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), what="main screen")
        entry = next(c for c in app.get_system_commands(app.screen) if c.title == "Ensemble")
        entry.callback()  # what choosing it in the palette does
        await wait_until(pilot, lambda: isinstance(app.screen, EnsembleScreen) and app.screen.loaded,
                         what="ensemble screen")


def test_new_screens_and_the_blend_path_load_no_heavy_library(world: dict) -> None:
    code = f"""
import sys
import fsat_console.app, fsat_console.screens.ensemble, fsat_console.screens.infer, fsat_console.screens.run
from engine.store import Store
from fsat_console.screens.ensemble import BlendBench, find_candidates
store = Store({str(world["db"])!r}, readonly=True)
found, datasets = find_candidates(store, store.list_runs(), {str(world["db"])!r})
good = [c for c in found if c.run_id == "train-0001"]
outcome = BlendBench().evaluate(datasets[good[0].dataset_id], good, method="rank", calibrate=True, key=())
assert outcome.oof_lwlrap is not None, outcome
"""
    assert heavy_modules_loaded_by(code) == []


def test_the_run_header_shows_a_saved_blends_warning(world: dict) -> None:
    from rich.console import Console

    from fsat_console.live import RunDetail
    from fsat_console.screens.run import run_header

    spec = spec_from_json("ensemble", {"members": ["train-0001", "train-0002"], "weights": [1.0, 9.0],
                                       "method": "mean"})
    done = build_ensemble(world["store"], spec, run_id="ensemble-0042", run_dir=world["tmp"] / "runs" / "e42",
                          log=lambda line: None)
    assert done.warning and done.cv_lwlrap < oof_lwlrap(world, "train-0001")
    for run_id, warned in (("ensemble-0042", True), ("train-0001", False)):
        detail = RunDetail(run_id=run_id, class_fold=-1, run=world["store"].get_run(run_id), job=None, epochs=[],
                           folds=[], classes=[])
        console = Console(width=200, record=True)
        console.print(run_header(detail, run_id))
        text = " ".join(console.export_text().split())
        assert ("warning: the mean blend's cross-fitted OOF lwlrap" in text) == warned, text
