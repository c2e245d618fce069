"""Every queue-time mistake is refused with the same words by ``fsat queue`` and by the console's dialog.

Both front ends queue through ``engine.intake``. Each case below makes one
mistake twice on the same database: once with the real CLI (``engine.cli.main``,
its stderr captured) and once in the real console app (``run_test``), whose
dialog must show, under the field at fault, words that the CLI's error line
holds verbatim. Neither may queue anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from textual.widgets import Static

from engine import specs
from engine.cli import main as fsat
from engine.store import Store
from fsat_console.app import FsatConsole
from fsat_console.screens.curriculum import CurriculumDialog, default_preset
from fsat_console.screens.infer import BaselineScreen, InferScreen
from fsat_console.screens.queue import QueueScreen
from tests.helpers.waiting import wait_until
from tests.helpers.worlds import console_world


@dataclass
class World:
    db: Path
    data: Path
    tmp: Path
    store: Store


@dataclass
class Mistake:
    #: Prepares the database or the files for the mistake; returns the name of a folder or run it involves.
    setup: Callable[[World], str]
    #: ``fsat`` arguments after ``queue`` (``{x}`` is what ``setup`` returned).
    cli: list[str]
    #: The console dialog that makes the same mistake.
    dialog: Callable[[World, str], object]
    #: The dialog's error slot that must show it, and words the message holds.
    slot: str
    words: str


def _nowhere(w: World) -> str:
    return str(w.tmp / "nowhere")


def _half_root(w: World) -> str:
    half = w.tmp / "half"
    half.mkdir()
    (half / "train_curated.csv").write_text("fname,labels\n")
    return str(half)


def _stored_group_folds(w: World) -> str:
    dataset = w.store.register_dataset(w.data, name="data", classes=["Bark"], n_curated=0)
    w.store.save_folds(dataset, [], [], seed=42, n_folds=5, rule=specs.fold_rule("freesound_id"))
    return str(w.data)


def _stored_five_folds(w: World) -> str:
    dataset = w.store.register_dataset(w.data, name="data", classes=["Bark"], n_curated=0)
    w.store.save_folds(dataset, [], [], seed=42, n_folds=5, rule=specs.fold_rule(""))
    return str(w.data)


def _run(kind: str, run_id: str, *, done: bool = True) -> Callable[[World], str]:
    def setup(w: World) -> str:
        w.store.create_run(run_id, kind=kind, model="small-64mel")
        if done:
            w.store.finish_run(run_id, status="done")
        return run_id
    return setup


def _queue_dialog(overrides: str = "") -> Callable[[World, str], object]:
    return lambda w, x: QueueScreen(preset="tiny", data_root=x or str(w.data), overrides=overrides)


def _infer_dialog(w: World, run_id: str) -> object:
    return InferScreen(w.store.get_run(run_id) or {"run_id": run_id})


def _curriculum_dialog(w: World, run_id: str) -> object:
    return CurriculumDialog(w.store.get_run(run_id))


MISTAKES = {
    "no such folder": Mistake(_nowhere, ["train", "--data", "{x}", "--preset", "tiny"], _queue_dialog(),
                              "data-root", "no such folder"),
    "not a dataset root": Mistake(_half_root, ["train", "--data", "{x}", "--preset", "tiny"], _queue_dialog(),
                                  "data-root", "is not a dataset root: it has no sample_submission.csv"),
    "a bad setting": Mistake(lambda w: "", ["train", "--data", "{data}", "--preset", "tiny", "--set",
                                            "train.epochs=-1"],
                             _queue_dialog("train.epochs=-1"), "overrides", "train.epochs: must not be negative"),
    "a group column the CSV lacks": Mistake(
        lambda w: "", ["train", "--data", "{data}", "--preset", "tiny", "--set", 'data.group_column="source"'],
        _queue_dialog('data.group_column="source"'), "overrides", "no column 'source' (columns: fname, labels)"),
    "other folds than the stored ones": Mistake(_stored_group_folds, ["train", "--data", "{x}", "--preset", "tiny"],
                                                _queue_dialog(), "preset", "the dataset's stored folds were made by"),
    "a fold count other than the stored one": Mistake(
        _stored_five_folds, ["train", "--data", "{x}", "--preset", "tiny", "--set", "train.n_folds=3"],
        _queue_dialog("train.n_folds=3"), "overrides",
        "train.n_folds: the dataset's stored folds are 5-fold with seed 42, not 3-fold with seed 42"),
    "a dataset root for the baseline": Mistake(
        _half_root, ["baseline", "--data", "{x}", "--preset", "baseline"],
        lambda w, x: BaselineScreen(data_root=x, encoder_run_id="train-0001"), "data-root", "is not a dataset root"),
    "a run that does not exist": Mistake(lambda w: "train-0042", ["infer", "{x}", "--preset", "tta"], _infer_dialog,
                                         "queue", "run_id: no run 'train-0042' to infer with"),
    "an infer of an infer run": Mistake(_run("infer", "infer-0009"), ["infer", "{x}", "--preset", "tta"],
                                        _infer_dialog, "queue", "'infer-0009' is an infer run; inference needs"),
    "an unfinished teacher": Mistake(_run("train", "train-0777", done=False),
                                     ["curriculum", "{x}", "--preset", "demo_curriculum"], _curriculum_dialog,
                                     "queue", "teacher_run_id: run 'train-0777' is running, not finished"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
async def test_a_mistake_is_refused_with_the_same_words_by_the_cli_and_the_console(
        mistake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    case = MISTAKES[mistake]
    db, data = console_world(tmp_path, monkeypatch)
    store = Store(db)
    world = World(db, data, tmp_path, store)
    target = case.setup(world)
    if "curriculum" in case.cli:
        assert default_preset(store.get_run(target)) == "demo_curriculum"  # the dialog's preset, as the CLI's
    capsys.readouterr()
    args = [a.replace("{x}", target).replace("{data}", str(data)) for a in case.cli]
    assert fsat(["--db", str(db), "queue", *args]) == 2
    said = capsys.readouterr().err.strip()
    assert len(said.splitlines()) == 1 and said.startswith("error: ") and case.words in said, said

    app = FsatConsole(db, data_root=data, poll_interval=0.1)
    async with app.run_test(size=(140, 45)) as pilot:
        dialog = case.dialog(world, target)
        await app.push_screen(dialog)
        await wait_until(pilot, lambda: app.screen is dialog and app.focused is not None, what="the dialog")
        await pilot.press("enter")
        error = dialog.query_one(f"#{case.slot}-error", Static)
        await wait_until(pilot, lambda: error.display, what=f"an error under {case.slot}")
        shown = str(error.content)
        assert app.screen is dialog
    assert case.words in shown and shown in said, (shown, said)
    assert store.list_jobs() == []
    store.close()
