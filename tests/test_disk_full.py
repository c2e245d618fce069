"""A full disk: a checkpoint or array save says "no space left on device" and names the file.

torch.save on a full filesystem raises ``RuntimeError: [enforce fail at
inline_container.cc:...] unexpected pos``, which names neither. The tests fill a
real, tiny tmpfs (mounting needs root, as in CI; without it they are skipped and
say why).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.atomic import DiskFull, save_npy
from engine.errors import FsatError
from engine.train.loop import save_atomic


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 256 KiB tmpfs mounted in the test's folder, unmounted at the end."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_checkpoint_save_on_a_full_disk_names_the_cause_and_the_file(small_disk: Path):
    target = small_disk / "fold0" / "last.pt"
    save_atomic({"model": torch.zeros(8)}, target)  # an older, small checkpoint that must survive
    before = target.read_bytes()
    with pytest.raises(DiskFull) as err:
        save_atomic({"model": torch.randn(256, 1024)}, target)  # 1 MiB on a 256 KiB disk
    message = str(err.value)
    assert isinstance(err.value, FsatError)
    assert "no space left on device" in message and str(target) in message
    assert "inline_container" not in message
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_an_array_save_on_a_full_disk_names_the_cause_and_the_file(small_disk: Path):
    target = small_disk / "oof.npy"
    with pytest.raises(DiskFull, match="no space left on device") as err:
        save_npy(target, np.zeros((512, 512), dtype=np.float32))
    assert str(target) in str(err.value)
    assert not list(small_disk.iterdir())
