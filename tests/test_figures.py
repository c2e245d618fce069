"""The performance figures the docs cite and benchmarks/figures.toml, which run_all.py checks, say the same.

No speed is measured here: these tests read the docs and the figures file, and
check run_all.py's table logic on figures given to it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "benchmarks"))

import run_all  # noqa: E402

DOCS = ("README.md", "benchmarks/README.md")
MARKER = re.compile(r"<!-- fig:([\w.]+)(:quiet)? -->")


def shown(fig: run_all.Figure, value: float | None = None) -> str:
    """How a doc writes the figure's value (or ``value`` in its unit): ``1.05x``, ``0.6 ms``, ``0``."""
    unit = "x" if fig.unit == "x" else f" {fig.unit}" if fig.unit else ""
    return f"{fig.value if value is None else value:g}{unit}"


@pytest.fixture(scope="module")
def figures() -> dict[str, run_all.Figure]:
    return run_all.load_figures()[1]


def test_every_figure_names_a_benchmark_script_that_exists():
    benches, figures = run_all.load_figures()
    assert figures, "figures.toml lists no figure"
    for bench in benches.values():
        assert (PROJECT / "benchmarks" / bench.script).is_file(), bench
    used = {f.bench for f in figures.values()}
    assert used == set(benches), f"benchmarks without figures: {set(benches) - used}"


@pytest.mark.parametrize("doc", DOCS)
def test_each_doc_shows_its_figures_with_value_and_load_beside_the_marker(doc: str, figures):
    text = (PROJECT / doc).read_text()
    lines = text.splitlines()
    marked, quiet = {}, {}
    for line in lines:
        for match in MARKER.finditer(line):
            (quiet if match.group(2) else marked).setdefault(match.group(1), []).append(line[:match.start()][-200:])
    unknown = sorted((set(marked) | set(quiet)) - set(figures))
    assert not unknown, f"{doc}: markers naming no figure in benchmarks/figures.toml: {unknown}"
    for name, fig in figures.items():
        if doc not in fig.docs:
            assert name not in marked, f"{doc} shows {name}, but figures.toml does not list {doc} for it"
            continue
        assert name in marked, f"{doc}: no <!-- fig:{name} --> marker for a figure figures.toml says it cites"
        for before in marked[name]:
            assert shown(fig) in before, f"{doc}: {name} should read {shown(fig)!r} before its marker: {before!r}"
            assert f"load {fig.load:g}" in before, f"{doc}: {name} should say 'load {fig.load:g}': {before!r}"
        # A figure with a quiet-machine value is cited with it wherever it is cited.
        if fig.quiet is None:
            assert name not in quiet, f"{doc} shows a quiet value of {name}, which figures.toml lacks"
            continue
        assert name in quiet, f"{doc}: no <!-- fig:{name}:quiet --> marker for the figure's quiet value"
        for before in quiet[name]:
            want = shown(fig, fig.quiet.value)
            assert want in before, f"{doc}: {name}'s quiet value should read {want!r} before its marker: {before!r}"
            assert f"load {fig.quiet.load:g}" in before, f"{doc}: {name}:quiet should say 'load {fig.quiet.load:g}'"


def test_a_figure_outside_its_spread_fails_the_run():
    fig = run_all.Figure(name="x.ratio", bench="x", what="", value=1.0, low=0.8, high=1.3, unit="x", load=2.0,
                         docs=())
    figures = {"x.ratio": fig}
    out = run_all.parse_figures("noise\n@figure x.ratio 1.12 3.50\n@figure other 5 1\n")
    assert out["x.ratio"] == (1.12, 3.5)
    rows, ok = run_all.evaluate(figures, out, set(), set())
    assert ok and rows[0][1] == "1.12x" and rows[0][3] == "1.12" and rows[0][-1] == "ok"
    rows, ok = run_all.evaluate(figures, {"x.ratio": (1.31, 3.0)}, set(), set())
    assert not ok and rows[0][-1] == "OFF"
    rows, ok = run_all.evaluate(figures, {}, set(), set())
    assert not ok and rows[0][-1] == "MISSING"
    rows, ok = run_all.evaluate(figures, {}, {"x"}, set())
    assert not ok and rows[0][-1] == "FAILED"
    rows, ok = run_all.evaluate(figures, {}, set(), {"x"})
    assert ok and rows[0][-1] == "not run (--quick)"


def test_a_figure_measured_on_a_quiet_machine_is_checked_against_its_quiet_value():
    fig = run_all.Figure(name="x.ratio", bench="x", what="", value=4.7, low=2.0, high=6.3, unit="x", load=19.0,
                         docs=(), quiet=run_all.Band(1.2, 0.9, 1.5, 0.6))
    figures = {"x.ratio": fig}
    rows, ok = run_all.evaluate(figures, {"x.ratio": (1.16, 0.8)}, set(), set(), quiet_load=4.0)
    assert ok and "quiet" in rows[0][2] and rows[0][3] == "0.97"
    rows, ok = run_all.evaluate(figures, {"x.ratio": (1.16, 12.0)}, set(), set(), quiet_load=4.0)
    assert not ok and rows[0][-1] == "OFF" and "quiet" not in rows[0][2]  # busy: the main value stands
    rows, ok = run_all.evaluate(figures, {"x.ratio": (4.1, 0.8)}, set(), set(), quiet_load=4.0)
    assert not ok and rows[0][-1] == "OFF"  # quiet, yet the busy figure


@pytest.mark.parametrize("quiet, words", [
    ("{ value = 3.0, low = 0.5, high = 1.5, load = 1 }", "quiet value 3.0 outside its own spread"),
    ("{ value = 1.0, low = 0.5, high = 1.5, load = 9 }", "measured at load 9, not under quiet_below = 4"),
])
def test_a_quiet_value_outside_its_spread_or_measured_under_load_is_refused(tmp_path: Path, quiet: str, words: str):
    bad = tmp_path / "figures.toml"
    bad.write_text('quiet_below = 4.0\n[bench.x]\nscript = "bench_x.py"\nfull = []\nquick = []\n'
                   '[figure."x.ratio"]\nbench = "x"\nwhat = ""\nvalue = 1.0\nlow = 0.5\nhigh = 1.5\nload = 1\n'
                   f'quiet = {quiet}\n')
    with pytest.raises(ValueError, match=re.escape(words)):
        run_all.load_figures(bad)


def test_a_value_outside_its_own_spread_is_refused(tmp_path: Path):
    bad = tmp_path / "figures.toml"
    bad.write_text('[bench.x]\nscript = "bench_x.py"\nfull = []\nquick = []\n'
                   '[figure."x.ratio"]\nbench = "x"\nwhat = ""\nvalue = 2.0\nlow = 0.5\nhigh = 1.5\nload = 1\n')
    with pytest.raises(ValueError, match=r"x\.ratio.*outside its own spread"):
        run_all.load_figures(bad)
