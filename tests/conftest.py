"""Shared fixtures: a real database file, real worker subprocesses, a tiny real demo dataset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh database path in the test's folder (runs/ goes beside it)."""
    return tmp_path / "experiments.db"


def worker_cmd(db: Path, *extra: str) -> list[str]:
    """The command line of a real worker process."""
    return [sys.executable, "-m", "engine.worker", "--db", str(db), "--poll", "0.2", *extra]


@pytest.fixture
def spawn_worker():
    """Start worker subprocesses; every one still alive is killed at the end of the test."""
    procs: list[subprocess.Popen] = []

    def spawn(db: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
        full_env = dict(os.environ, **(env or {}))
        full_env["PYTHONPATH"] = str(PROJECT) + os.pathsep + full_env.get("PYTHONPATH", "")
        log = open(db.parent / f"worker-{len(procs)}.log", "ab")
        proc = subprocess.Popen(worker_cmd(db, *extra), stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                cwd=db.parent, start_new_session=True)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A small demo dataset in the Kaggle layout, written once per test session."""
    from engine.data.demo import write_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "demo_data"
    # Short clips keep the session fixture and the CPU training in the tests quick.
    write_demo_dataset(root, seed=1, clips_per_class=6, noisy_per_class=1, test_per_class=1, max_seconds=4.0)
    return root


def copy_dataset(src: Path, dst: Path) -> Path:
    """A private copy of a dataset root (without its waveform cache) that a test may damage."""
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".fsat-cache"))
    return dst


def run_cli(*args: str, db: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real ``fsat`` command line in a subprocess."""
    cmd = [sys.executable, "-m", "engine.cli"] + (["--db", str(db)] if db else []) + list(args)
    env = dict(os.environ, PYTHONPATH=str(PROJECT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


_HOLDER = """
import sqlite3, sys, time, pathlib
db, flag, release, seconds = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]), float(sys.argv[4])
con = sqlite3.connect(db, isolation_level=None)
con.execute("BEGIN IMMEDIATE")
con.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
flag.write_text("holding")
end = time.monotonic() + seconds
while time.monotonic() < end and not release.exists():
    time.sleep(0.05)
con.execute("ROLLBACK")
"""


class LockHolder:
    """Another process holding the database's write lock (``BEGIN IMMEDIATE``) until released."""

    def __init__(self, db: Path, seconds: float) -> None:
        self.flag = db.with_name(db.name + ".holding")
        self.release_file = db.with_name(db.name + ".release")
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db), str(self.flag),
                                      str(self.release_file), str(seconds)])
        wait_for(self.flag.exists, timeout=30, what="the other process to take the write lock")

    @property
    def holding(self) -> bool:
        """True while the other process still holds the lock."""
        return self.proc.poll() is None

    def release(self) -> None:
        """Let go of the lock and wait for the process to end."""
        self.release_file.write_text("go")
        self.proc.wait(timeout=30)


@pytest.fixture
def hold_write_lock():
    """``hold_write_lock(db, seconds)`` -> LockHolder; released at the end of the test."""
    holders: list[LockHolder] = []

    def hold(db: Path, seconds: float = 20.0) -> LockHolder:
        holder = LockHolder(db, seconds)
        holders.append(holder)
        return holder

    yield hold
    for holder in holders:
        if holder.holding:
            holder.release()


_READ_ONLY_MOUNT = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def run_read_only(target: Path, cmd: list[str]) -> subprocess.CompletedProcess:
    """Run ``cmd`` with ``target`` (a folder or a file) read-only for it, as the kernel enforces it.

    Root ignores file modes, so as root ``target`` is bind-mounted read-only
    in a mount namespace of the command's own (nothing outside it changes);
    otherwise its mode is made read-only for the duration of the command.
    """
    env = dict(os.environ, PYTHONPATH=str(PROJECT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if os.geteuid() == 0:
        full = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _READ_ONLY_MOUNT, "sh",
                str(target), *cmd]
        return subprocess.run(full, capture_output=True, text=True, env=env, timeout=120,
                              stdin=subprocess.DEVNULL)
    mode = target.stat().st_mode
    target.chmod(0o555 if target.is_dir() else 0o444)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    finally:
        target.chmod(mode)
