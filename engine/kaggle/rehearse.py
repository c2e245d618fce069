"""``fsat kaggle rehearse PACK --test DIR``: run a pack's kernel as Kaggle would, and check what it wrote.

The environment. A fresh virtual environment (``python -m venv
--without-pip``) whose ``site-packages`` links every installed distribution
of the current environment except this project (its package folders, its
``.dist-info`` and its editable-install finder and ``.pth``), so the
kernel sees the same library versions it was packed with and cannot import
the project: only the pack's embedded ``src/`` is there. Linking rather than
``pip install --no-index`` from cached wheels: the wheels of torch and its
CUDA libraries are not kept after installation (no cache to install from),
and a link costs no disk and no minutes. A ``sitecustomize.py`` in the
environment refuses every socket connection and name lookup except local
(AF_UNIX) sockets, as a kernel without internet does. Before the kernel runs,
a probe in the environment checks that ``import engine`` fails, that a
connection to a listening local port is refused, and which pinned versions
differ.

The checks. The kernel's ``submission.csv`` must pass the sample-submission
validation and equal the submission made from the run's own ``test.npy``
(max absolute difference at most 1e-5) when the test folder is the run's
test set. Each stage's time is projected to the private test size (3,361
clips, or ``--n-clips``): stages that scale with the clips are multiplied by
the clip ratio, model stages also divided by the target device's speed ratio
(how many times faster it predicts than the device the rehearsal ran on;
measured by rehearsing on that device, or given). The projection is held
against the one-hour limit less a margin (20 %). When it does not fit, every
subset of the members is scored by cross-fitted OOF LWLRAP with the blend
bench of ``engine.runs.members`` and the best one whose projection fits is
proposed.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import FsatError
from engine.kaggle.kernel import PACK_MANIFEST, SUBMISSION_FILE, TIMINGS_FILE
from engine.runs.lineage import sha256_file

__all__ = ["KAGGLE_LIMIT_SECONDS", "PRIVATE_TEST_CLIPS", "RehearsalError", "RehearsalReport", "build_env",
           "project_stages", "rehearse", "trim_members"]

#: Clips in the private test set of Freesound Audio Tagging 2019.
PRIVATE_TEST_CLIPS = 3361
#: The kernel's run-time limit with a GPU.
KAGGLE_LIMIT_SECONDS = 3600.0
DEFAULT_MARGIN = 0.2
TOLERANCE = 1e-5
#: The project's own entries in site-packages, left out of the rehearsal environment.
PROJECT_ENTRIES = ("engine", "fsat_console", "fsat_console-", "__editable__.fsat_console", "__editable___fsat_console")
#: Subsets are enumerated up to this many members (2^12 blends); beyond, members are dropped greedily.
MAX_EXHAUSTIVE = 12

_SITECUSTOMIZE = '''\
"""Rehearsal of a Kaggle kernel: no internet. Every socket connection and name lookup is refused."""
import socket as _socket


def _refuse(*_args, **_kwargs):
    raise OSError("network access is disabled in the rehearsal (a Kaggle kernel has no internet)")


_connect, _connect_ex = _socket.socket.connect, _socket.socket.connect_ex


def _guard(method):
    def guarded(self, *args, **kwargs):
        if self.family == getattr(_socket, "AF_UNIX", None):
            return method(self, *args, **kwargs)
        _refuse()
    return guarded


_socket.socket.connect = _guard(_connect)
_socket.socket.connect_ex = _guard(_connect_ex)
_socket.getaddrinfo = _refuse
_socket.create_connection = _refuse
'''

_PROBE = '''\
import json, socket, sys
from importlib import metadata
out = {"python": sys.version.split()[0]}
try:
    import engine
    out["engine_importable"] = getattr(engine, "__file__", "?")
except ImportError:
    out["engine_importable"] = None
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
    out["network"] = "connected"
except OSError as err:
    out["network"] = f"refused: {err}"
try:
    s = socket.socket(); s.settimeout(5); s.connect(("127.0.0.1", int(sys.argv[1]))); s.close()
    out["network_raw"] = "connected"
except OSError as err:
    out["network_raw"] = f"refused: {err}"
pins = json.loads(sys.argv[2])
versions = {}
for dist in pins:
    try:
        versions[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
        versions[dist] = None
out["versions"] = versions
print(json.dumps(out))
'''


class RehearsalError(FsatError):
    """The rehearsal could not run or its kernel failed; one line saying why."""


@dataclass
class RehearsalReport:
    """What a rehearsal measured and checked."""

    pack: Path
    run_id: str
    n_clips: int
    device: str
    submission: Path
    submission_sha256: str
    stages: list[dict]
    projection: dict
    env: dict
    max_abs_diff: float | None = None
    compared_with: str | None = None
    valid: bool = False
    trim: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool | None:
        return None if self.max_abs_diff is None else self.max_abs_diff <= TOLERANCE

    def as_dict(self) -> dict:
        return {"pack": str(self.pack), "run_id": self.run_id, "n_clips": self.n_clips, "device": self.device,
                "submission": str(self.submission), "submission_sha256": self.submission_sha256,
                "stages": self.stages, "projection": self.projection, "env": self.env,
                "max_abs_diff": self.max_abs_diff, "matches": self.matches, "compared_with": self.compared_with,
                "valid": self.valid, "trim": self.trim, "notes": self.notes}


def _site_packages() -> list[Path]:
    """The current environment's site-packages folders."""
    paths = [Path(p) for p in site.getsitepackages()] + [Path(sysconfig.get_paths()["purelib"])]
    return [p for p in dict.fromkeys(paths) if p.is_dir()]


def build_env(target: Path) -> Path:
    """A fresh venv at ``target`` that links the current environment's distributions but not the project.

    Returns its Python. The project's own entries (``PROJECT_ENTRIES``) are
    not linked; ``sitecustomize.py`` refuses network connections.
    """
    target = Path(target)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True,
                   capture_output=True, text=True)
    python = target / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    dest = Path(purelib)
    for source in _site_packages():
        for entry in sorted(source.iterdir()):
            if entry.name.startswith(PROJECT_ENTRIES) or entry.name in ("sitecustomize.py", "__pycache__"):
                continue
            link = dest / entry.name
            if not link.exists():
                link.symlink_to(entry)
    (dest / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return python


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    env["PYTHONNOUSERSITE"] = "1"
    # The pack is uploaded as it is: no __pycache__ may be written into its src/.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def probe_env(python: Path, pins: dict[str, str]) -> dict:
    """Run the probe in the rehearsal environment: is the project importable, is the network refused, versions."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        out = subprocess.run([str(python), "-c", _PROBE, str(port), json.dumps(pins)], capture_output=True,
                             text=True, env=_clean_env(), cwd=tempfile.gettempdir(), timeout=300)
    if out.returncode != 0:
        raise RehearsalError(f"the rehearsal environment does not start: {out.stderr.strip().splitlines()[-1:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["engine_importable"]:
        raise RehearsalError(f"the project is importable in the rehearsal environment ({result['engine_importable']}); "
                             "it must see only the pack")
    if not (result["network"].startswith("refused") and result["network_raw"].startswith("refused")):
        raise RehearsalError("the rehearsal environment reached the network; the kernel must run offline")
    result["version_differences"] = {d: {"packed": v, "here": result["versions"].get(d)}
                                     for d, v in pins.items() if result["versions"].get(d) != v}
    return result


def project_stages(stages: list[dict], n_clips: int, *, n_target: int = PRIVATE_TEST_CLIPS, speed_ratio: float = 1.0,
                   limit: float = KAGGLE_LIMIT_SECONDS, margin: float = DEFAULT_MARGIN) -> dict:
    """Each stage's seconds projected to ``n_target`` clips on a device ``speed_ratio`` times faster; fit or not.

    ``clips`` stages scale with the clips, ``model`` stages with the clips
    over the speed ratio, ``fixed`` stages not at all. The budget is
    ``limit * (1 - margin)``.
    """
    if n_clips <= 0 or speed_ratio <= 0:
        raise ValueError("n_clips and speed_ratio must be positive")
    scale = n_target / n_clips
    projected = []
    for s in stages:
        factor = {"fixed": 1.0, "clips": scale, "model": scale / speed_ratio}[s["scales"]]
        projected.append(dict(s, projected=s["seconds"] * factor))
    total = sum(s["projected"] for s in projected)
    budget = limit * (1.0 - margin)
    return {"n_target": n_target, "speed_ratio": speed_ratio, "limit": limit, "margin": margin, "budget": budget,
            "stages": projected, "total": total, "fits": total <= budget}


def trim_members(projection: dict, members: list[dict], score) -> dict:
    """The best member subset whose projected time fits the budget, by ``score(subset)`` (cross-fitted OOF LWLRAP).

    ``members`` are the pack's members (``run_id``, ``weight``); each
    member's projected time is its ``predict`` stage. Returns the subsets
    that fit, best first (at most 5), and the best; ``best`` is None when no
    subset fits.
    """
    member_seconds = {s["member"]: s["projected"] for s in projection["stages"] if s.get("member")}
    base = projection["total"] - sum(member_seconds.values())
    ids = [m["run_id"] for m in members]
    if len(ids) <= MAX_EXHAUSTIVE:
        subsets = [c for r in range(len(ids), 0, -1) for c in itertools.combinations(ids, r)]
    else:
        # Drop the slowest member one at a time.
        order = sorted(ids, key=lambda i: member_seconds.get(i, 0.0))
        subsets = [tuple(order[:r]) for r in range(len(order), 0, -1)]
    fitting = []
    for subset in subsets:
        seconds = base + sum(member_seconds.get(i, 0.0) for i in subset)
        if seconds <= projection["budget"]:
            fitting.append({"members": list(subset), "projected": seconds, "oof_lwlrap": score(list(subset))})
    fitting.sort(key=lambda f: (-(f["oof_lwlrap"] if f["oof_lwlrap"] is not None else -1.0), f["projected"]))
    return {"best": fitting[0] if fitting else None, "fitting": fitting[:5], "base_seconds": base}


def _bench_score(store, manifest: dict):
    """``score(subset)``: the cross-fitted OOF LWLRAP of a blend of the subset (the blend bench)."""
    from engine.runs.members import BlendBench, Candidate

    dataset = store.get_dataset(manifest["dataset_id"])
    folds = store.get_folds(manifest["dataset_id"])
    method = (manifest.get("blend") or {}).get("method", "best")
    calibrate = (manifest.get("blend") or {}).get("calibrate", True)
    bench = BlendBench()
    weight = {m["run_id"]: m["weight"] for m in manifest["members"]}

    def candidate(run_id: str) -> Candidate:
        run = store.get_run(run_id)
        return Candidate(run_id=run_id, name=run.get("name") or "", kind=run["kind"], model=run.get("model") or "",
                         cv_lwlrap=run.get("cv_lwlrap"), dataset_id=run.get("dataset_id"),
                         run_dir=Path(run["run_dir"]), has_test=True)

    def score(subset: list[str]) -> float | None:
        with bench.lock:
            outcome = bench.evaluate(dataset, [candidate(r) for r in subset], [weight[r] for r in subset],
                                     method=method, calibrate=calibrate, key=tuple(subset), folds=folds)
        return outcome.oof_lwlrap

    return score


def _compare(store, manifest: dict, data_dir: Path, submission: Path, work: Path) -> tuple[float | None, str | None, list[str]]:
    """Max |kernel - the run's own test.npy submission|, what it was compared with, and notes."""
    import pandas as pd

    from engine.submission import read_sample_submission, write_submission

    notes = []
    run = store.get_run(manifest["run_id"]) if store is not None else None
    if run is None:
        return None, None, ["no database to find the run's test.npy: comparison skipped (give --db)"]
    test_npy = Path(run["run_dir"]) / "test.npy"
    if not test_npy.is_file():
        return None, None, [f"{test_npy} does not exist (a {run['kind']} run has no test scores): comparison skipped"]
    dataset = store.get_dataset(run["dataset_id"])
    run_sample = Path(dataset["root"]) / "sample_submission.csv"
    fnames, _ = read_sample_submission(run_sample)
    test_fnames, _ = read_sample_submission(data_dir / "sample_submission.csv")
    if list(fnames) != list(test_fnames):
        return None, None, [f"{data_dir} is not the test set of the run's dataset ({dataset['root']}): "
                            "comparison skipped"]
    reference = write_submission(work / "reference_submission.csv", fnames, np.load(test_npy),
                                 sample_submission=run_sample)
    ours = pd.read_csv(submission)
    theirs = pd.read_csv(reference)
    diff = float(np.abs(ours.iloc[:, 1:].to_numpy(np.float64) - theirs.iloc[:, 1:].to_numpy(np.float64)).max())
    return diff, str(test_npy), notes


def rehearse(pack: Path | str, test_dir: Path | str, *, store=None, n_target: int = PRIVATE_TEST_CLIPS,
             speed_ratio: float = 1.0, margin: float = DEFAULT_MARGIN, limit: float = KAGGLE_LIMIT_SECONDS,
             device: str = "auto", workdir: Path | str | None = None, log=print) -> RehearsalReport:
    """Run the pack's kernel in a fresh offline environment without the project; check and project it."""
    pack, test_dir = Path(pack), Path(test_dir)
    dataset_dir, kernel = pack / "dataset", pack / "kernel" / "kernel.py"
    manifest_path = dataset_dir / PACK_MANIFEST
    if not manifest_path.is_file() or not kernel.is_file():
        raise RehearsalError(f"{pack}: not a pack (needs dataset/{PACK_MANIFEST} and kernel/kernel.py); "
                             "write one with `fsat kaggle pack RUN OUT`")
    manifest = json.loads(manifest_path.read_text())
    for rel, info in manifest["files"].items():
        path = dataset_dir / rel
        if not path.is_file() or path.stat().st_size != info["bytes"]:
            raise RehearsalError(f"{path}: missing or changed since packing; pack the run again")
    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix="fsat-rehearsal-")) if own_tmp else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        python = build_env(work / "venv")
        env_info = probe_env(python, manifest.get("requirements", {}))
        env_info["seconds"] = time.perf_counter() - t0
        log(f"environment: {work / 'venv'} (project not importable, network refused, "
            f"{len(env_info['version_differences'])} pinned version(s) differ) in {env_info['seconds']:.1f} s")
        out_dir = work / "out"
        cmd = [str(python), str(kernel), "--pack", str(dataset_dir.resolve()), "--data", str(test_dir.resolve()),
               "--out", str(out_dir), "--device", device]
        # stderr goes to a file: a pipe nobody reads while stdout is followed could fill and stall the kernel.
        with open(work / "kernel.stderr", "w+") as err_file:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, text=True, env=_clean_env(),
                                    cwd=work)
            for line in proc.stdout:
                log("kernel: " + line.rstrip())
            proc.wait()
            err_file.seek(0)
            stderr = err_file.read()
        if proc.returncode != 0:
            lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit status {proc.returncode}"
            raise RehearsalError(f"the kernel failed: {last.removeprefix('error: ')}")
        timings = json.loads((out_dir / TIMINGS_FILE).read_text())
        submission = out_dir / SUBMISSION_FILE
        kept = pack / "rehearsal"
        shutil.rmtree(kept, ignore_errors=True)
        kept.mkdir()
        for name in (SUBMISSION_FILE, TIMINGS_FILE):
            shutil.copyfile(out_dir / name, kept / name)
        submission = kept / SUBMISSION_FILE

        import pandas as pd

        from engine.submission import read_sample_submission, validate_submission

        sample_fnames, classes = read_sample_submission(test_dir / "sample_submission.csv")
        validate_submission(pd.read_csv(submission, dtype={"fname": str}), sample_fnames, classes, file=submission)
        diff, compared, notes = _compare(store, manifest, test_dir, submission, work)
        projection = project_stages(timings["stages"], timings["n_clips"], n_target=n_target,
                                    speed_ratio=speed_ratio, limit=limit, margin=margin)
        report = RehearsalReport(pack=pack, run_id=manifest["run_id"], n_clips=timings["n_clips"],
                                 device=timings["device"], submission=submission,
                                 submission_sha256=sha256_file(submission), stages=timings["stages"],
                                 projection=projection, env=env_info, max_abs_diff=diff, compared_with=compared,
                                 valid=True, notes=timings.get("notes", []) + notes)
        if not projection["fits"]:
            if store is None:
                report.notes.append("the projection does not fit: give --db to rank the member subsets that do")
            else:
                report.trim = trim_members(projection, manifest["members"], _bench_score(store, manifest))
        if store is not None:
            store.set_submission_rehearsal(sha256_file(manifest_path), submission_sha256=report.submission_sha256,
                                           projected_seconds=projection["total"])
        return report
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)

