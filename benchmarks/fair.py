"""The thread settings every benchmark gives both sides, its header line and its figure lines.

A comparison is fair only when both sides run with the thread settings a user
would give them. Every benchmark that compares against a reference measures it
in two settings, in one process, alternating, and says which figure is which:

- ``one``: the same for both sides, one thread everywhere: torch's intra-op
  pool, the BLAS library numpy uses (OpenBLAS here) and OpenMP, through
  threadpoolctl. Nothing can spin while another thread works, so this is the
  figure a ratio is judged by.
- ``default``: each library's own default, one thread per core (torch and
  OpenBLAS), with ``OMP_WAIT_POLICY=PASSIVE`` as the worker sets it for every
  job. OpenBLAS's pthreads ignore that variable and spin while they wait, which
  on a loaded machine slows a numpy side (librosa's mel projection) several
  times: reported, never the headline.

``figure(name, value)`` prints ``@figure name value load`` lines, which
``benchmarks/run_all.py`` collects and checks against ``benchmarks/figures.toml``.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from pathlib import Path

MODES = {
    "one": "one thread for both sides (torch, OpenBLAS and OpenMP at 1)",
    "default": "library defaults for both sides (torch and OpenBLAS one thread per core, OMP_WAIT_POLICY=PASSIVE)",
}


def job_environment() -> None:
    """``OMP_WAIT_POLICY=PASSIVE``, as the worker starts every job; call before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def load_average() -> float:
    """The one-minute load average (``os.getloadavg``), nan where there is none."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_threads() -> str:
    """Torch's threads, every thread pool threadpoolctl sees (with the BLAS kernel) and the variables that steer them."""
    import torch
    from threadpoolctl import threadpool_info

    pools = ", ".join(f"{p['internal_api']} {p['num_threads']}"
                      + (f" ({p['architecture']} kernel)" if p.get("architecture") else "")
                      for p in threadpool_info())
    env = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                     "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ)
    return f"torch {torch.get_num_threads()} threads; pools: {pools}; {env or 'no thread variables set'}"


def header(what: str) -> None:
    """Print the machine, the load and the thread settings a run starts with."""
    print(f"{what}: {cpu_name()}, {os.cpu_count()} CPUs, load average {load_average():.1f}, python "
          f"{platform.python_version()}")
    print(f"threads: {describe_threads()}")


@contextlib.contextmanager
def threads(mode: str) -> Iterator[None]:
    """Run the block with the thread settings ``mode`` names (:data:`MODES`), restoring torch's count after."""
    import torch
    from threadpoolctl import threadpool_limits

    if mode not in MODES:
        raise ValueError(f"unknown thread mode {mode!r}: one of {', '.join(MODES)}")
    before = torch.get_num_threads()
    if mode == "one":
        torch.set_num_threads(1)
        try:
            with threadpool_limits(limits=1):
                yield
        finally:
            torch.set_num_threads(before)
    else:
        torch.set_num_threads(os.cpu_count() or 1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def figure(name: str, value: float, note: str = "") -> None:
    """Print one figure for ``run_all.py``: ``@figure NAME VALUE LOAD [note]``."""
    print(f"@figure {name} {value:.6g} {load_average():.2f} {note}".rstrip(), flush=True)
