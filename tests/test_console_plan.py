"""The console's plan dialog and plan tree, driven with Pilot on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, Tree

from engine.store import Store
from fsat_console.app import FsatConsole
from fsat_console.screens.main import MainScreen
from fsat_console.screens.plan import PlanDialog, PlanScreen
from tests.helpers.console import cell_text, table
from tests.helpers.waiting import wait_until

SIZE = (160, 45)


def _tree_lines(screen: PlanScreen) -> dict[str, str]:
    """Step name -> its line in the tree, for every node under the root."""
    lines: dict[str, str] = {}

    def walk(node) -> None:
        for child in node.children:
            text = child.label.plain
            lines[text.split()[0]] = text
            walk(child)

    trees = screen.query("#plan-tree")  # none until the screen has composed
    if trees:
        walk(trees.first(Tree).root)
    return lines


async def test_a_plan_is_queued_from_the_dialog_and_shown_as_a_live_tree(tmp_path: Path, tiny_demo: Path) -> None:
    db = tmp_path / "experiments.db"
    app = FsatConsole(db, data_root=tiny_demo, poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("P")
        await wait_until(pilot, lambda: isinstance(app.screen, PlanDialog), what="the plan dialog")
        dialog = app.screen
        await wait_until(pilot, lambda: dialog.preset == "plan_demo", what="the demo plan highlighted")
        # A bad setting of one step: refused, the step and field named under the overrides, nothing queued.
        dialog.query_one("#overrides", Input).value = 'focal:loss.name="nope"'
        await pilot.press("ctrl+s")
        error = dialog.query_one("#overrides-error").render()
        assert "step 'focal'" in str(error) and "loss.name" in str(error)
        store = Store(db)
        assert store.count_jobs("queued") == 0
        dialog.query_one("#overrides", Input).value = "train:train.epochs=1"
        dialog.query_one("#priority", Input).value = "x"
        await pilot.press("ctrl+s")
        assert "whole number" in str(dialog.query_one("#priority-error").render())
        assert store.count_jobs("queued") == 0
        dialog.query_one("#priority", Input).value = "4"
        dialog.query_one("#name", Input).value = "night run"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, PlanScreen), timeout=20, what="the plan tree")
        screen = app.screen
        await wait_until(pilot, lambda: len(_tree_lines(screen)) == 8, what="eight steps")
        lines = _tree_lines(screen)
        assert "queued" in lines["teacher"] and "waiting for job" in lines["curriculum"]
        # The name and priority typed: the plan's name, every step's priority (as fsat queue plan --name --priority).
        assert store.get_plan(1)["name"] == "night run"
        assert {(j["priority"], j["name"].endswith(" · night run")) for j in store.list_jobs()} == {(4, True)}
        # The curriculum sits under its teacher, the blend under its first member's inference.
        root = screen.query_one("#plan-tree", Tree).root
        teacher = next(n for n in root.children if n.label.plain.startswith("teacher"))
        assert [c.label.plain.split()[0] for c in teacher.children] == ["curriculum"]
        # Another process fails the teacher: its descendants show held with the reason, live.
        job = store.claim("w")
        store.fail_job(job.id, "boom", worker_id="w", attempt=job.attempts)
        await wait_until(pilot, lambda: "held: job" in _tree_lines(screen)["curriculum"], timeout=10,
                         what="the curriculum held")
        assert "failed" in _tree_lines(screen)["teacher"] and "held" in _tree_lines(screen)["blend"]
        # The jobs table says so too, with the reason.
        await pilot.press("escape")
        curriculum = str(store.plan_steps(1)[1]["job_id"])
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen) and curriculum in table(app, "jobs").rows
                         and cell_text(table(app, "jobs"), curriculum, "progress").strip() == "held", timeout=10,
                         what="the curriculum held in the jobs table")
        assert cell_text(table(app, "jobs"), curriculum, "message").startswith("held: job")
        app.push_screen(PlanScreen(1))
        await wait_until(pilot, lambda: isinstance(app.screen, PlanScreen), what="the plan tree again")
        screen = app.screen
        await wait_until(pilot, lambda: len(_tree_lines(screen)) == 8, what="eight steps")
        await pilot.press("c")
        await wait_until(pilot, lambda: "cancelled" in _tree_lines(screen)["blend"], what="the plan cancelled")
        assert store.count_jobs("queued") == 0 and store.count_jobs("cancelled") == 7
