"""Footers show only the keys that act where you are (real app under Pilot).

The ensemble screen offered in/out, weight, method, calibration, greedy and
save with no run to blend, and save with an empty blend: keys that only
answer with a warning.
"""

from __future__ import annotations

from pathlib import Path

from textual.widgets._footer import FooterKey

from fsat_console.app import FsatConsole
from tests.helpers.console import open_ensemble, select_row, settled
from tests.helpers.waiting import wait_until

SIZE = (160, 48)


def footer_keys(app) -> list[str]:
    """The descriptions the footer of the shown screen offers."""
    return [key.description for key in app.screen.query(FooterKey)]


async def test_the_ensemble_footer_offers_nothing_to_blend_when_no_run_has_oof_scores(tmp_path: Path) -> None:
    app = FsatConsole(tmp_path / "experiments.db", poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_ensemble(pilot, app)
        assert screen.table.row_count == 0
        await pilot.pause(0.3)
        shown = footer_keys(app)
        for key in ("In/out", "Weight", "Method", "Calibrate", "Greedy", "Save"):
            assert key not in shown, (key, shown)
        assert "Help" in shown


async def test_the_ensemble_footer_offers_save_once_the_blend_has_a_member(world) -> None:  # noqa: F811
    app = FsatConsole(world["db"], poll_interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_ensemble(pilot, app)
        await pilot.pause(0.3)
        shown = footer_keys(app)
        assert "In/out" in shown and "Greedy" in shown and "Save" not in shown
        await select_row(pilot, screen.table, "train-0001")
        await pilot.press("space")
        await settled(pilot, screen)
        await wait_until(pilot, lambda: "Save" in footer_keys(app), what="Save in the footer")
        await pilot.press("space")  # out again: nothing to save
        await settled(pilot, screen)
        await wait_until(pilot, lambda: "Save" not in footer_keys(app), what="Save gone from the footer")


async def test_at_80x24_the_ensemble_footer_shows_every_key_that_acts(world) -> None:  # noqa: F811
    app = FsatConsole(world["db"], poll_interval=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_ensemble(pilot, app)
        await select_row(pilot, screen.table, "train-0001")
        await pilot.press("space")
        await settled(pilot, screen)
        await wait_until(pilot, lambda: "Save" in footer_keys(app), what="Save in the footer")
        await pilot.pause(0.3)
        keys = list(app.screen.query(FooterKey))
        assert {"In/out", "Greedy", "Calibrate", "Save"} <= {k.description for k in keys}
        for key in keys:  # on screen, not scrolled off its right edge
            region = key.region
            assert region.width > 0 and region.right <= 80, (key.description, region)
