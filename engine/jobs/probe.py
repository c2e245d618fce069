"""The ``probe`` job: a diagnostic that checks a worker setup without training.

Spec fields (all optional): ``seconds`` to run (reporting progress),
``marker`` a file to which one line ``<job id> <attempt>`` is appended,
``fail`` to raise an error, ``exit_code`` to exit the process abruptly
(as a crash would).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from engine.jobs.context import JobContext
from engine.specs import spec_from_json


def check_spec(spec: dict) -> None:
    """Refuse settings the probe does not know or values of the wrong type (``engine.specs.ProbeSpec``)."""
    spec_from_json("probe", spec)


def run(ctx: JobContext) -> str:
    """Run the probe; returns the job's final message."""
    spec = ctx.spec
    check_spec(spec)
    seconds = float(spec.get("seconds", 0.0))
    if spec.get("marker"):
        with open(Path(spec["marker"]), "a") as fh:
            fh.write(f"{ctx.job.id} {ctx.job.attempts}\n")
            fh.flush()
            os.fsync(fh.fileno())
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        ctx.progress(elapsed / seconds, f"probe {elapsed:.1f}/{seconds:.1f}s")
        time.sleep(min(0.1, seconds))
    if spec.get("exit_code") is not None:
        os._exit(int(spec["exit_code"]))
    if spec.get("fail"):
        raise RuntimeError(str(spec["fail"]))
    return "probe ok"
