"""What the queue refuses at once, and errors that name what is at fault (real ``fsat`` processes)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.data.audio import decode
from engine.data.labels import parse_label_csv
from engine.data.manifest import FolderSource
from engine.errors import DataError
from engine.store import JOB_STATES, Store
from tests.helpers.processes import run_cli


def _refused(db: Path, *args: str) -> str:
    out = run_cli(*args, db=db, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, (out.returncode, out.stderr)
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    return out.stderr


def _queued(db: Path) -> int:
    with Store(db, readonly=True) as store:
        return store.count_jobs(*JOB_STATES)


def test_queue_refuses_unknown_probe_settings_and_missing_runs(db_path: Path):
    Store(db_path).close()
    err = _refused(db_path, "queue", "probe", "--set", "secnds=2")
    assert "--set secnds=2" in err and "unknown setting" in err and "seconds" in err
    err = _refused(db_path, "queue", "infer", "train-0042")
    assert "train-0042" in err and "run_id" in err and "fsat runs" in err
    err = _refused(db_path, "queue", "ensemble", "infer-0001", "infer-0002")
    assert "'infer-0001', 'infer-0002'" in err and "members" in err
    assert _queued(db_path) == 0
    # A known setting is still queued; and a run that a queued job will write may be named already.
    probe = int(run_cli("queue", "probe", "--set", "seconds=0.1", db=db_path).stdout)
    run_cli("queue", "ensemble", f"probe-{probe:04d}", db=db_path)
    assert _queued(db_path) == 2


def test_set_errors_name_the_override_not_the_preset_file(db_path: Path, tiny_demo: Path):
    err = _refused(db_path, "queue", "train", "--data", str(tiny_demo), "--preset", "demo",
                   "--set", "train.epochs=-1")
    assert "--set train.epochs=-1" in err and "train.epochs" in err and "demo.toml" not in err
    err = _refused(db_path, "queue", "train", "--data", str(tiny_demo), "--preset", "demo",
                   "--set", "train.epochz=3")
    assert "--set train.epochz=3" in err and "unknown setting" in err and "demo.toml" not in err


def test_an_unbalanced_quote_is_reported_on_the_line_that_holds_it(tmp_path: Path):
    path = tmp_path / "train_curated.csv"
    path.write_text('fname,labels\na.wav,Bark\nb.wav,"Meow\nc.wav,Bark\nd.wav,Bark\n')
    with pytest.raises(DataError) as err:
        parse_label_csv(path, ["Bark", "Meow"])
    assert err.value.row == 3 and str(path) in str(err.value) and "quote" in str(err.value)


def test_a_corrupt_wav_is_named_and_the_buffer_is_not(tmp_path: Path):
    folder = tmp_path / "train_curated"
    folder.mkdir()
    buf = io.BytesIO()
    sf.write(buf, np.zeros(4410, dtype=np.float32), 44100, format="WAV", subtype="PCM_16")
    (folder / "broken.wav").write_bytes(b"JUNK" + buf.getvalue()[4:200])
    source = FolderSource(folder)
    with pytest.raises(DataError) as err:
        decode(source.read_bytes("broken.wav"), name=source.describe("broken.wav"))
    message = str(err.value)
    assert "broken.wav" in message and "BytesIO" not in message and "0x" not in message, message
