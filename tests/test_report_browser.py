"""The reports in a real browser: headless Chromium renders each one whole; it is not blank, every figure is
drawn where the page says, and the page asks the network for nothing (a page that does is caught).

Chromium is Debian's ``chromium`` package: ``.ci/run`` installs it and sets
``FSAT_REQUIRE_BROWSER=1``, so in CI a missing browser fails this module; on a
machine without it the tests are skipped, saying why.

The README's screenshot is this test's: ``FSAT_REPORT_SCREENSHOT=docs python -m
pytest -n0 tests/test_report_browser.py -k compare`` writes ``docs/report-compare.png``
(the top of the rendered comparison, as the test checked it).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from engine.reporting.browser import PageRender, render_page
from tests.helpers.processes import run_cli
from tests.helpers.report_world import build_report_world, figure_names, require_chromium

#: Height of the README's screenshot (the top of the page), in CSS pixels.
SCREENSHOT_HEIGHT = 1450


@pytest.fixture(scope="module", autouse=True)
def browser() -> str:
    return require_chromium()


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """The four reports of the issue, written by the CLI."""
    root = tmp_path_factory.mktemp("report-pages")
    world = build_report_world(root)
    a, b, c = world.trains
    targets = {"train": [a], "compare": [a, b, c, "--baseline", b], "curriculum": [world.curriculum],
               "ensemble": [world.ensemble]}
    out = {}
    for name, args in targets.items():
        out[name] = root / f"report-{name}.html"
        run_cli("report", *args, "--out", str(out[name]), db=world.db)
    return out


def _pixels(render: PageRender) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(render.screenshot)) as image:
        return np.asarray(image.convert("L"), dtype=np.float64)


@pytest.mark.parametrize("name", ["train", "compare", "curriculum", "ensemble"])
def test_the_report_renders_every_figure_and_fetches_nothing(pages: dict[str, Path], name: str):
    page = pages[name]
    render = render_page(page)
    # Nothing but the page itself was asked for.
    assert render.requests == [page.resolve().as_uri()], render.requests
    assert render.external_requests() == []
    # Not blank: text and a screenshot of the whole page with ink on it.
    pixels = _pixels(render)
    assert pixels.shape == (render.height, render.width)
    assert render.text_length > 1000 and render.height > 2000
    assert (pixels < 128).mean() > 0.01 and pixels.std() > 20
    # Every figure the page holds is drawn, in order, at a real size, with marks on it.
    expected = figure_names(page.read_text(encoding="utf-8"))
    assert len(expected) >= 5
    assert [f["name"] for f in render.figures] == expected
    for figure in render.figures:
        assert figure["tag"] == "svg" and figure["shapes"] > 50, figure
        assert figure["width"] >= 600 and figure["height"] >= 100, figure
        x, y = int(figure["x"]), int(figure["y"])
        box = pixels[y:y + int(figure["height"]), x:x + int(figure["width"])]
        assert box.shape[0] > 90 and box.shape[1] > 590, figure
        inked = (box < 200).mean()
        assert inked > 0.01 and box.std() > 15, (figure["name"], inked, box.std())
    folder = os.environ.get("FSAT_REPORT_SCREENSHOT")
    if folder:
        from PIL import Image

        top = pixels.shape[0] if pixels.shape[0] < SCREENSHOT_HEIGHT else SCREENSHOT_HEIGHT
        with Image.open(io.BytesIO(render.screenshot)) as image:
            image.crop((0, 0, image.width, top)).convert("RGB").save(Path(folder) / f"report-{name}.png",
                                                                    optimize=True)


def test_a_page_that_asks_the_network_for_anything_is_caught(pages: dict[str, Path], tmp_path: Path):
    report = pages["train"].read_text(encoding="utf-8")
    # A real report with an external image: its own Content-Security-Policy blocks the fetch, but it was asked.
    asking = tmp_path / "asking.html"
    asking.write_text(report.replace("</main>", '<img src="https://example.com/pixel.png" alt=""></main>'),
                      encoding="utf-8")
    assert render_page(asking).external_requests() == ["https://example.com/pixel.png"]
    # A page without that policy, fetching a style sheet and a font the usual ways.
    bare = tmp_path / "bare.html"
    bare.write_text('<!doctype html><html><head><link rel="stylesheet" href="http://cdn.example.org/site.css">'
                    "<style>@font-face { font-family: x; src: url(https://fonts.example.net/x.woff2); }"
                    "body { font-family: x; }</style></head><body><p>text</p></body></html>", encoding="utf-8")
    assert set(render_page(bare).external_requests()) == {"http://cdn.example.org/site.css",
                                                          "https://fonts.example.net/x.woff2"}
