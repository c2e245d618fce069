"""Kaggle kernel script written by ``fsat kaggle pack``: predicts the test clips with a packed run.

It finds the pack's dataset under /kaggle/input (or ``--pack``), puts the
pack's embedded sources (``src/``) first on ``sys.path`` and runs
``engine.kaggle.kernel``. Off Kaggle (the rehearsal): ``python kernel.py
--pack DATASET_DIR --data TEST_ROOT --out OUT_DIR``.
"""

import sys
from pathlib import Path

#: Filled in by the pack: the dataset slug, the competition slug and the packed run.
PACK_DATASET = ""
COMPETITION = "freesound-audio-tagging-2019"
PACKED_RUN = ""


def _option(argv, name):
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def _find_pack(argv):
    given = _option(argv, "--pack")
    if given:
        return Path(given)
    inputs = Path("/kaggle/input")
    if PACK_DATASET and (inputs / PACK_DATASET / "pack.json").is_file():
        return inputs / PACK_DATASET
    for manifest in sorted(inputs.glob("*/pack.json")):
        return manifest.parent
    sys.exit(f"error: no pack.json under {inputs}; attach the dataset {PACK_DATASET!r} to the kernel")


if __name__ == "__main__":
    argv = sys.argv[1:]
    pack = _find_pack(argv)
    sys.path.insert(0, str(pack / "src"))
    from engine.kaggle.kernel import main

    defaults = [("--pack", str(pack)), ("--data", f"/kaggle/input/{COMPETITION}"), ("--out", "/kaggle/working")]
    for name, value in defaults:
        if name not in argv:
            argv += [name, value]
    sys.exit(main(argv))
