"""``fsat`` tables written to a file show every value in full; in a narrow terminal ids, kinds, states and numbers
stay whole, free text wraps, and a column that does not fit is left out and named.

Before, ``fsat runs`` at 80 columns gave ``kind`` no width and cut everything
after ``mean_fold_l``; ``fsat show``/``tta``/``audit`` written to a file
shortened class names to ``C…`` and dropped the precision and recall columns.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest

from engine.data.labels import FSD2019_CLASSES
from engine.store import Store
from tests.helpers.datasets import multi_hot_truth
from tests.helpers.processes import PROJECT, run_cli
from tests.helpers.recording import record_run, tagger_scores

LONGEST = max(FSD2019_CLASSES, key=len)


def run_in_terminal(argv: list[str], db: Path, columns: int = 80) -> tuple[str, str]:
    """Run ``fsat`` with its stdout a real terminal of ``columns`` columns; returns (terminal text, stderr)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = dict(os.environ, PYTHONPATH=str(PROJECT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TERM="xterm", NO_COLOR="1")
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "--db", str(db), *argv], stdout=follower,
                            stderr=subprocess.PIPE, env=env)
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.wait(timeout=60) == 0, err
    text = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode())  # styles are not text
    return text.replace("\r\n", "\n"), err


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Runs with long names, a trained run with per-class scores and its TTA run, and a curriculum run's audit."""
    path = tmp_path / "experiments.db"
    truth = multi_hot_truth(160, 80, seed=2)
    folds = np.arange(160) % 2
    with Store(path) as store:
        ds = store.register_dataset(tmp_path / "data", name="data", classes=FSD2019_CLASSES, n_curated=160)
        record_run(store, tmp_path / "runs", "train-0001", dataset_id=ds, oof=tagger_scores(truth, 1, seed=1),
                   truth=truth, folds=folds, name="a run name long enough to need wrapping " * 2)
        record_run(store, tmp_path / "runs", "infer-0002", kind="infer", parent="train-0001", dataset_id=ds,
                   oof=tagger_scores(truth, 1.2, seed=1), truth=truth, folds=folds, name="tta of the first")
        record_run(store, tmp_path / "runs", "curriculum-0003", kind="curriculum", dataset_id=ds,
                   parent="train-0001", name="curriculum of the first", status="done", cv=0.6)
        store.record_noisy_audit("curriculum-0003", 0, [
            {"class_idx": i, "class_name": c, "n_labelled": 10, "n_kept": 7, "n_dropped": 3, "n_added": 1,
             "n_final": 8, "mean_weight": 0.9, "n_true": 8, "n_wrong": 2, "wrong_dropped": 2, "right_lost": 1,
             "added_right": 1, "n_final_right": 7} for i, c in enumerate(FSD2019_CLASSES)])
        store.set_run_tags("train-0001", ["best", "paper"])
    return path


@pytest.mark.parametrize("argv, header, values", [
    (["show", "train-0001"], ["class_name", "lrap", "weight", "n_pos"], [LONGEST]),
    (["tta", "infer-0002"], ["class_name", "with_tta", "without_tta", "gain", "n_pos"], [LONGEST]),
    (["audit", "curriculum-0003"], ["class_name", "precision", "recall", "weak_precision"], [LONGEST]),
    (["runs"], ["run_id", "kind", "name", "model", "status", "mean_fold_lwlrap", "test_lwlrap", "tags", "created"],
     ["curriculum-0003", "a run name long enough to need wrapping " * 2]),
])
def test_a_table_written_to_a_file_holds_every_column_and_value_in_full(db: Path, argv, header, values) -> None:
    out = run_cli(*argv, db=db).stdout
    lines = out.splitlines()
    for column in header:
        assert any(column in line.split() for line in lines), (column, out[:2000])
    for value in values:
        assert value.strip() in out, value
    assert "…" not in out


def test_a_listing_in_an_80_column_terminal_keeps_ids_kinds_states_and_numbers_whole(db: Path) -> None:
    text, err = run_in_terminal(["runs"], db, columns=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    for word in ("curriculum-0003", "curriculum", "infer-0002", "infer", "train-0001", "train", "done"):
        assert word in text.split() or f"│ {word} " in text or word in text, word
    with Store(db, readonly=True) as store:
        cv = store.get_run("train-0001")["cv_lwlrap"]
    assert f"{cv:.4f}" in text
    assert "curr…" not in text and "trai…" not in text and "infe…" not in text
    header = next(line for line in text.splitlines() if "run_id" in line)
    assert "kind" in header and "status" in header
    # What did not fit is named, not cut.
    shown = set(header.replace("│", " ").replace("┃", " ").split())
    left_out = [c for c in ("folds_done", "cv_lwlrap", "mean_fold_lwlrap", "test_lwlrap", "tags", "created")
                if c not in shown]
    if left_out:
        caption = " ".join(text.split())
        assert "left out for width" in caption and all(c in caption for c in left_out), text
    for column in shown & {"cv_lwlrap", "mean_fold_lwlrap", "test_lwlrap", "created"}:
        assert column in header  # a header shown is shown whole


def test_show_in_an_80_column_terminal_keeps_class_names_readable(db: Path) -> None:
    text, _ = run_in_terminal(["show", "train-0001"], db, columns=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    # A class name may wrap in its column, but every letter of it is there.
    assert "C…" not in text
    joined = "".join(text.split())
    assert LONGEST.replace(" ", "") in joined.replace("│", "") or LONGEST in text
