"""The project's real programs in subprocesses: the ``fsat`` command line, workers, other processes."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers.waiting import wait_for

PROJECT = Path(__file__).resolve().parents[2]

#: The ``ray`` command of this environment.
RAY_CLI = str(Path(sys.executable).with_name("ray"))

#: Libraries the console and the run layer must not load (they would slow its start; see the contracts).
HEAVY_LIBRARIES = ("torch", "librosa", "sklearn", "scipy")


def env_with_project(**extra: str) -> dict:
    """The environment for a subprocess that imports this project (it comes first on PYTHONPATH), plus ``extra``."""
    return dict(os.environ, **extra, PYTHONPATH=str(PROJECT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def worker_cmd(db: Path, *extra: str) -> list[str]:
    """The command line of a real worker process."""
    return [sys.executable, "-m", "engine.worker", "--db", str(db), "--poll", "0.2", *extra]


def cli_cmd(*args: str, db: Path | None = None) -> list[str]:
    """The command line of the real ``fsat`` program."""
    return [sys.executable, "-m", "engine.cli"] + (["--db", str(db)] if db else []) + list(args)


def run_cli(*args: str, db: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real ``fsat`` command line in a subprocess."""
    cmd = cli_cmd(*args, db=db)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env_with_project(), timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def drain(db: Path, timeout: float = 900) -> None:
    """Run a real worker in the foreground (``--drain``, in the database's folder) until the queue is empty.

    It must exit 0; when it does not, the end of its error output fails the test.
    """
    proc = subprocess.run(worker_cmd(db, "--drain"), cwd=db.parent, capture_output=True, text=True, timeout=timeout,
                          env=env_with_project())
    assert proc.returncode == 0, proc.stderr[-3000:]


def process_alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie has exited already)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def heavy_modules_loaded_by(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the :data:`HEAVY_LIBRARIES` it has loaded by its end, sorted."""
    script = f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY_LIBRARIES!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, env=env_with_project(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def stop_ray_start(proc: subprocess.Popen) -> None:
    """Stop a ``ray start --block`` process started in a session of its own.

    SIGTERM to ``ray start`` alone: it stops its raylet (and a head's GCS) in
    seconds. Sent to the whole group, those die first and ``ray start`` then
    waits about 30 s for them. The group is killed if it has not ended in 30 s.
    """
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


_READ_ONLY_MOUNT = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def run_read_only(target: Path, cmd: list[str]) -> subprocess.CompletedProcess:
    """Run ``cmd`` with ``target`` (a folder or a file) read-only for it, as the kernel enforces it.

    Root ignores file modes, so as root ``target`` is bind-mounted read-only
    in a mount namespace of the command's own (nothing outside it changes);
    otherwise its mode is made read-only for the duration of the command.
    """
    env = env_with_project()
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
