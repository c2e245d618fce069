"""The layer contracts of pyproject.toml hold, and docs/design.md's diagram states the same contracts."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.helpers.processes import PROJECT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _contracts() -> list[dict]:
    return tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_the_import_contracts_are_kept():
    out = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=PROJECT, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(PROJECT), "PATH": str(LINT_IMPORTS.parent)})
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert f"{len(_contracts())} kept, 0 broken" in out.stdout


def test_the_console_and_the_run_layer_are_forbidden_the_heavy_libraries():
    heavy = next(c for c in _contracts() if c["type"] == "forbidden" and "fsat_console" in c["source_modules"])
    assert {"fsat_console", "engine.runs"} <= set(heavy["source_modules"])
    assert {"torch", "librosa", "sklearn", "soundfile"} <= set(heavy["forbidden_modules"])


def test_design_doc_layer_diagram_equals_the_contract():
    """docs/design.md lists the torch layers top to bottom and the forbidden imports, exactly as the contracts do."""
    text = (PROJECT / "docs" / "design.md").read_text()
    block = text.split("<!-- layers: import-linter -->", 1)[1].split("```", 2)[1]
    lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip()]
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    documented = [ln.split("#")[0].strip() for ln in lines if not ln.startswith(("▲", "│", "┃", "never"))]
    documented = [re.sub(r"\s+", " ", d) for d in documented if d]
    assert documented[:len(layers)] == [re.sub(r"\s+", " ", layer) for layer in layers]
    forbidden = [ln for ln in lines if ln.startswith("never")]
    expected = [f"never: {' '.join(c['source_modules'])} -> {' '.join(c['forbidden_modules'])}"
                for c in _contracts() if c["type"] == "forbidden"]
    assert forbidden == expected
