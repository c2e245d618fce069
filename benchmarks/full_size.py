"""The rehearsal at FSDKaggle2019's dimensions: the plan queued as one pipeline (or its stages one by one), measured.

Usage::

    fsat demo-data DATA --size 0.1                     # or --size full: the synthetic data at scale
    python benchmarks/full_size.py --data DATA --plan plan_demo [--workers 2] [--plan-set STEP:KEY=VALUE ...]
        [--work DIR] [--out full_size]
    python benchmarks/full_size.py --data DATA [--train-set KEY=VALUE ...] [--curriculum-set KEY=VALUE ...]

With ``--plan``: ``fsat register``, the waveform caches, then ``fsat queue
plan PRESET`` (every step queued at once, each waiting for the runs it uses)
drained by ``--workers`` real workers (``python -m engine.worker --drain``),
then ``fsat submission`` of the blend, validated. Per step: its job's wall
time (claimed to finished), clips/s, the peak RSS of its job process and of
the worker that ran it, and the database's size when it finished; for the
whole plan: wall time, disk added, commits per second and the load average.
The console is measured on the live database while the teacher and the
curriculum run and at the end.

Without ``--plan``, one stage at a time, on a fresh database in ``--work``
and with a real worker for every queued stage:

1. **register**: ``fsat register`` (manifest, folds);
2. **cache**: the waveform caches of the curated, noisy and test sets
   (``engine.data.cache.build_cache``'s ``WaveformCache.build``, the call
   every job makes first; later jobs find them built);
3. **train**: ``fsat queue train --preset demo`` (5 folds);
4. **curriculum**: ``fsat queue curriculum --preset demo_curriculum`` on
   that teacher (its predictions on every noisy clip, the filter and its
   audit, the stages);
5. **infer**: ``fsat queue infer --preset tta`` of the teacher and of the
   curriculum (OOF and test, 5 crops);
6. **blend**: ``fsat queue ensemble`` of the two inferences (method ``auto``);
7. **submission**: ``fsat submission`` of the blend, validated.

Per stage: wall time, clips/s (the clips the stage works on over its wall
time), the peak RSS of the worker and of the job process (``VmHWM`` from
``/proc``, polled), disk used (data cache, runs folder, database), the
database's size and its commits per second (``PRAGMA data_version``
changes seen by a polling reader, a lower bound). While the train and
curriculum jobs run, the console is measured on the live database with
``benchmarks/bench_console.py``'s code: first paint, one refresh (a forced
overview poll) and opening the run. Writes ``OUT.md`` and ``OUT.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_console import open_run  # noqa: E402
from engine.data.manifest import load_layout  # noqa: E402


def env() -> dict:
    """The environment of every subprocess: this checkout first on the path, runs beside the database."""
    out = dict(os.environ)
    out["PYTHONPATH"] = str(ROOT) + os.pathsep + out.get("PYTHONPATH", "")
    return out


def fsat(db: Path, *args: str) -> str:
    """Run the real ``fsat`` command line; its stdout (an error stops the rehearsal with its message)."""
    cmd = [sys.executable, "-m", "engine.cli", "--db", str(db), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=db.parent)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return out.stdout


def du(path: Path) -> int:
    """Bytes under ``path`` (0 when absent)."""
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _hwm_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM) in KiB, 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Watcher(threading.Thread):
    """Polls a worker's and its job processes' peak RSS, and the database's commits."""

    def __init__(self, worker_pid: int | None, db: Path, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.worker_pid, self.db, self.interval = worker_pid, db, interval
        self.worker_kib = self.job_kib = self.commits = 0
        self.stop = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30) if self.db.exists() else None
        last = None
        while not self.stop.wait(self.interval):
            if self.worker_pid is not None:
                self.worker_kib = max(self.worker_kib, _hwm_kib(self.worker_pid))
                stack = _children(self.worker_pid)
                while stack:
                    pid = stack.pop()
                    self.job_kib = max(self.job_kib, _hwm_kib(pid))
                    stack.extend(_children(pid))
            if conn is not None:
                try:
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                except sqlite3.Error:
                    continue
                if last is not None and version != last:
                    self.commits += 1
                last = version
        if conn is not None:
            conn.close()


async def _console_figures(db: Path, run_id: str | None) -> dict:
    from fsat_console.app import FsatConsole
    from fsat_console.live import Poller

    t0 = time.perf_counter()
    app = FsatConsole(db, poll_interval=0.5)
    out: dict = {}
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.screen.query_one("#runs")
        give_up = time.perf_counter() + 120  # a database without runs yet paints an empty table
        while table.row_count == 0 and time.perf_counter() < give_up:
            await pilot.pause(0.005)
        out["first_paint_s"] = time.perf_counter() - t0
        if run_id is not None:
            await pilot.pause(0.6)
            out["open_run_s"] = await open_run(app, pilot, run_id)
    poller = Poller(db)
    t = time.perf_counter()
    poller.poll(None, force=True)
    out["refresh_s"] = time.perf_counter() - t
    poller.close()
    return out


def console_figures(db: Path, run_id: str | None) -> dict:
    """First paint, a forced refresh and opening ``run_id`` in the real console, on the live database."""
    try:
        return asyncio.run(_console_figures(db, run_id))
    except Exception as err:  # noqa: BLE001 - a console failure is a finding, not the end of the rehearsal
        return {"error": f"{type(err).__name__}: {err}"}


def job_run_id(db: Path, job_id: int) -> str:
    """The run a finished job recorded (read-only)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT run_id, status, error FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        conn.close()
    if row is None or row[1] != "done":
        raise SystemExit(f"job {job_id} ended {row[1] if row else 'missing'}: {row[2] if row else ''}")
    return row[0]


class Rehearsal:
    """The stages, their measurements, the report."""

    def __init__(self, data: Path, work: Path, train_set: list[str], curriculum_set: list[str]) -> None:
        self.data, self.work = data, work
        self.train_set = [x for kv in train_set for x in ("--set", kv)]
        self.curriculum_set = [x for kv in curriculum_set for x in ("--set", kv)]
        self.db = work / "experiments.db"
        self.rows: list[dict] = []
        self.console: list[dict] = []
        self.layout = load_layout(data)

    def disk(self) -> dict:
        return {"cache": du(self.data / ".fsat-cache"), "runs": du(self.work / "runs"),
                "db": du(self.db) + du(Path(f"{self.db}-wal"))}

    def stage(self, name: str, clips: int, fn, *, worker: bool = False, console_run: str | None = None) -> object:
        """Run ``fn`` (with a draining worker when ``worker``), measuring it; return what ``fn`` returns."""
        before = self.disk()
        proc = None
        log = open(self.work / f"worker-{name}.log", "ab")
        t0 = time.perf_counter()
        result = fn()
        if worker:
            proc = subprocess.Popen([sys.executable, "-m", "engine.worker", "--db", str(self.db), "--drain",
                                     "--poll", "0.2"], stdout=log, stderr=subprocess.STDOUT, env=env(),
                                    cwd=self.work)
        watcher = Watcher(proc.pid if proc else None, self.db)
        watcher.start()
        if proc is not None:
            if console_run is not None or name in ("train", "curriculum"):
                time.sleep(5)
                figures = console_figures(self.db, console_run)
                figures["while"] = name
                self.console.append(figures)
            proc.wait()
        wall = time.perf_counter() - t0
        watcher.stop.set()
        watcher.join()
        log.close()
        after = self.disk()
        self.rows.append({
            "stage": name, "wall_s": wall, "clips": clips, "clips_per_s": clips / wall if wall else None,
            "worker_peak_rss_mib": watcher.worker_kib / 1024 if proc else None,
            "job_peak_rss_mib": watcher.job_kib / 1024 if proc else None,
            "disk_added_mib": (sum(after.values()) - sum(before.values())) / 2 ** 20,
            "db_mib": after["db"] / 2 ** 20, "commits_per_s": watcher.commits / wall if wall else None,
        })
        print(json.dumps(self.rows[-1]), flush=True)
        return result

    def run(self) -> None:
        n_cur, n_noisy, n_test = len(self.layout.curated), len(self.layout.noisy), len(self.layout.test)
        self.stage("register", n_cur, lambda: fsat(self.db, "register", str(self.data)))
        self.stage("cache", n_cur + n_noisy + n_test, self.build_caches)

        def queue(*args: str) -> int:
            return json.loads(fsat(self.db, "queue", *args, "--json"))["job_id"]

        job = self.stage("train", n_cur, lambda: queue("train", "--data", str(self.data), "--preset", "demo",
                                                       *self.train_set), worker=True)
        teacher = job_run_id(self.db, job)
        job = self.stage("curriculum", n_noisy, lambda: queue("curriculum", teacher, "--preset", "demo_curriculum",
                                                                 *self.curriculum_set),
                         worker=True, console_run=teacher)
        student = job_run_id(self.db, job)
        jobs = self.stage("infer", 2 * (n_cur + n_test),
                          lambda: [queue("infer", run, "--preset", "tta") for run in (teacher, student)], worker=True)
        members = [job_run_id(self.db, j) for j in jobs]
        job = self.stage("blend", n_cur + n_test,
                         lambda: json.loads(fsat(self.db, "ensemble", *members, "--method", "auto", "--json"))["job_id"],
                         worker=True)
        blend = job_run_id(self.db, job)
        self.stage("submission", n_test, lambda: fsat(self.db, "submission", blend, "--out",
                                                      str(self.work / "submission.csv")))
        figures = console_figures(self.db, teacher)
        figures["while"] = "idle, at the end"
        self.console.append(figures)
        self.runs = {"teacher": teacher, "curriculum": student, "infer": members, "blend": blend}

    def build_caches(self) -> None:
        """Every split's waveform cache, as the jobs build them (one process, the host's cores)."""
        code = ("import sys; from engine.data.manifest import load_layout; from engine.data.cache import "
                "WaveformCache, decode_workers; from engine.data.cache import cache_dir_for\n"
                "root = sys.argv[1]; layout = load_layout(root)\n"
                "for table in (layout.curated, layout.noisy, layout.test):\n"
                "    WaveformCache.build(table, sample_rate=32000, cache_dir=cache_dir_for(root), "
                "workers=decode_workers('auto'))\n")
        subprocess.run([sys.executable, "-c", code, str(self.data)], check=True, env=env())


def _worker_pid(worker_id: str | None) -> int | None:
    """The pid inside a worker id (``host-PID-hex``, ``engine.worker.Worker``)."""
    try:
        return int(str(worker_id).rsplit("-", 2)[1])
    except (IndexError, ValueError):
        return None


class PlanWatcher(threading.Thread):
    """Polls a plan's jobs: each running job's process peak RSS and its worker's, commits, database size."""

    def __init__(self, db: Path, job_ids: list[int], interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.db, self.job_ids, self.interval = db, job_ids, interval
        self.job_kib: dict[int, int] = {}
        self.worker_kib: dict[int, int] = {}
        self.db_bytes: dict[int, int] = {}
        self.commits = 0
        self.loads: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        marks = ",".join("?" * len(self.job_ids))
        last, tick = None, 0
        while not self.stop.wait(self.interval):
            tick += 1
            if tick % 20 == 0:
                self.loads.append(os.getloadavg()[0])
            try:
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                rows = conn.execute(f"SELECT id, status, worker_id FROM jobs WHERE id IN ({marks})",
                                    self.job_ids).fetchall()
            except sqlite3.Error:
                continue
            if last is not None and version != last:
                self.commits += 1
            last = version
            for job_id, status, worker_id in rows:
                if status == "running" and (pid := _worker_pid(worker_id)) is not None:
                    self.worker_kib[job_id] = max(self.worker_kib.get(job_id, 0), _hwm_kib(pid))
                    stack = _children(pid)
                    while stack:
                        child = stack.pop()
                        self.job_kib[job_id] = max(self.job_kib.get(job_id, 0), _hwm_kib(child))
                        stack.extend(_children(child))
                elif status in ("done", "failed", "cancelled") and job_id not in self.db_bytes:
                    self.db_bytes[job_id] = du(self.db) + du(Path(f"{self.db}-wal"))
        conn.close()


def _jobs(db: Path, job_ids: list[int]) -> dict[int, dict]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        marks = ",".join("?" * len(job_ids))
        return {r["id"]: dict(r) for r in conn.execute(f"SELECT id, kind, status, run_id, started_at, finished_at, "
                                                         f"error FROM jobs WHERE id IN ({marks})", job_ids)}
    finally:
        conn.close()


class PlanRehearsal(Rehearsal):
    """Register, the caches, then the plan queued with one command and drained by several workers."""

    def __init__(self, data: Path, work: Path, preset: str, plan_set: list[str], workers: int) -> None:
        super().__init__(data, work, [], [])
        self.preset, self.workers = preset, workers
        self.plan_set = [x for kv in plan_set for x in ("--set", kv)]
        self.plan: dict = {}

    def clips_of(self, kind: str) -> int:
        """What a step's job works on: curated (train), the noisy set (curriculum), OOF + test (infer, blend)."""
        n_cur, n_noisy, n_test = len(self.layout.curated), len(self.layout.noisy), len(self.layout.test)
        return {"train": n_cur, "curriculum": n_noisy}.get(kind, n_cur + n_test)

    def run(self) -> None:
        n_cur, n_noisy, n_test = len(self.layout.curated), len(self.layout.noisy), len(self.layout.test)
        self.stage("register", n_cur, lambda: fsat(self.db, "register", str(self.data)))
        self.stage("cache", n_cur + n_noisy + n_test, self.build_caches)
        before = self.disk()
        t0 = time.perf_counter()
        queued = json.loads(fsat(self.db, "queue", "plan", self.preset, "--data", str(self.data), "--json",
                                 *self.plan_set))
        steps: dict[str, int] = queued["jobs"]
        ids = list(steps.values())
        logs = [open(self.work / f"worker-plan-{i}.log", "ab") for i in range(self.workers)]
        procs = [subprocess.Popen([sys.executable, "-m", "engine.worker", "--db", str(self.db), "--drain",
                                   "--poll", "0.5"], stdout=log, stderr=subprocess.STDOUT, env=env(), cwd=self.work)
                 for log in logs]
        watcher = PlanWatcher(self.db, ids)
        watcher.start()
        first = list(steps)[:2]  # the teacher, then the curriculum: the console is measured while each runs
        for step in first:
            while _jobs(self.db, [steps[step]])[steps[step]]["status"] == "queued" and \
                    any(p.poll() is None for p in procs):
                time.sleep(1)
            time.sleep(5)
            figures = console_figures(self.db, None if step == first[0] else self._run_of(steps[first[0]]))
            figures["while"] = f"{step} runs"
            self.console.append(figures)
        for p in procs:
            p.wait()
        wall = time.perf_counter() - t0
        watcher.stop.set()
        watcher.join()
        for log in logs:
            log.close()
        jobs = _jobs(self.db, ids)
        bad = {s: (jobs[j]["status"], jobs[j]["error"]) for s, j in steps.items() if jobs[j]["status"] != "done"}
        if bad:
            raise SystemExit(f"plan steps did not finish: {bad}")
        after = self.disk()
        self.plan = {"preset": self.preset, "workers": self.workers, "plan_id": queued["plan_id"], "wall_s": wall,
                     "disk_added_mib": (sum(after.values()) - sum(before.values())) / 2 ** 20,
                     "db_mib": after["db"] / 2 ** 20, "commits_per_s": watcher.commits / wall,
                     "load_mean": sum(watcher.loads) / len(watcher.loads) if watcher.loads else None,
                     "steps": []}
        for step, job_id in steps.items():
            job = jobs[job_id]
            took = job["finished_at"] - job["started_at"]
            clips = self.clips_of(job["kind"])
            self.plan["steps"].append({
                "step": step, "kind": job["kind"], "job_id": job_id, "run_id": job["run_id"],
                "start_s": job["started_at"] - jobs[ids[0]]["started_at"], "wall_s": took, "clips": clips,
                "clips_per_s": clips / took if took else None,
                "job_peak_rss_mib": watcher.job_kib.get(job_id, 0) / 1024 or None,
                "worker_peak_rss_mib": watcher.worker_kib.get(job_id, 0) / 1024 or None,
                "db_mib": watcher.db_bytes.get(job_id, 0) / 2 ** 20 or None})
            print(json.dumps(self.plan["steps"][-1]), flush=True)
        blend = jobs[ids[-1]]["run_id"]
        self.stage("submission", n_test, lambda: fsat(self.db, "submission", blend, "--out",
                                                      str(self.work / "submission.csv")))
        figures = console_figures(self.db, jobs[ids[0]]["run_id"])
        figures["while"] = "idle, at the end"
        self.console.append(figures)
        self.runs = {step: jobs[j]["run_id"] for step, j in steps.items()}

    def _run_of(self, job_id: int) -> str | None:
        return _jobs(self.db, [job_id])[job_id]["run_id"]


def plan_markdown(plan: dict) -> list[str]:
    """The plan's steps as a table (one row per job, in queue order)."""
    def f(x, d=1):
        return "-" if x is None else f"{x:,.{d}f}"

    lines = ["", f"Plan `{plan['preset']}` (plan {plan['plan_id']}), {plan['workers']} workers: "
             f"{f(plan['wall_s'])} s from `fsat queue plan` to the last step done; disk added "
             f"{f(plan['disk_added_mib'])} MiB; database {f(plan['db_mib'], 2)} MiB, "
             f"{f(plan['commits_per_s'], 2)} commits/s; mean load average {f(plan['load_mean'])}.", "",
             "| step | kind | started at s | wall s | clips | clips/s | job peak RSS MiB | worker peak RSS MiB "
             "| DB MiB after |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in plan["steps"]:
        lines.append(f"| {r['step']} | {r['kind']} | {f(r['start_s'])} | {f(r['wall_s'])} | {r['clips']:,} | "
                     f"{f(r['clips_per_s'])} | {f(r['job_peak_rss_mib'], 0)} | {f(r['worker_peak_rss_mib'], 0)} | "
                     f"{f(r['db_mib'], 2)} |")
    return lines


def markdown(report: dict) -> str:
    """The measured table, the console figures and the setting, as Markdown."""
    lines = [f"Data: {report['data']} ({report['clips']}); {report['host']}.", "",
             "| stage | wall s | clips | clips/s | worker peak RSS MiB | job peak RSS MiB | disk added MiB "
             "| DB MiB | DB commits/s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(x, d=1):
        return "-" if x is None else f"{x:,.{d}f}"

    for r in report["stages"]:
        lines.append(f"| {r['stage']} | {f(r['wall_s'])} | {r['clips']:,} | {f(r['clips_per_s'])} | "
                     f"{f(r['worker_peak_rss_mib'], 0)} | {f(r['job_peak_rss_mib'], 0)} | "
                     f"{f(r['disk_added_mib'])} | {f(r['db_mib'], 2)} | {f(r['commits_per_s'], 2)} |")
    total = sum(r["wall_s"] for r in report["stages"]) + (report["plan"]["wall_s"] if report.get("plan") else 0)
    lines.append(f"| **all**{' (with the plan below)' if report.get('plan') else ''} | {f(total)} | | | | | | | |")
    if report.get("plan"):
        lines += plan_markdown(report["plan"])
    lines += ["", "| console (while) | first paint s | refresh s "
              "| open the teacher run s |", "|---|---:|---:|---:|"]
    for c in report["console"]:
        if "error" in c:
            lines.append(f"| {c['while']} | failed: {c['error']} | | |")
        else:
            lines.append(f"| {c['while']} | {f(c.get('first_paint_s'), 2)} | {f(c.get('refresh_s'), 3)} | "
                         f"{f(c.get('open_run_s'), 2)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the rehearsal; print and write the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="dataset root (e.g. from fsat demo-data --size 0.05)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the database and runs (default: temporary)")
    ap.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                    help="an override of the teacher's demo preset (repeatable), e.g. train.epochs=5")
    ap.add_argument("--curriculum-set", action="append", default=[], metavar="KEY=VALUE",
                    help="an override of the demo_curriculum preset (repeatable), e.g. fallback_losses=[]")
    ap.add_argument("--plan", metavar="PRESET", help="queue this plan preset as one pipeline (e.g. plan_demo) "
                    "instead of the stages one by one")
    ap.add_argument("--plan-set", action="append", default=[], metavar="STEP:KEY=VALUE",
                    help="--plan: a step's or a kind's override (repeatable), e.g. train:train.epochs=5")
    ap.add_argument("--workers", type=int, default=2, help="--plan: workers draining the queue (default 2)")
    ap.add_argument("--out", type=Path, default=Path("full_size"), help="report path without suffix")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="full-size-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["FSAT_RUNS"] = str(work / "runs")
    if args.plan:
        rehearsal = PlanRehearsal(args.data.resolve(), work.resolve(), args.plan, args.plan_set, args.workers)
    else:
        rehearsal = Rehearsal(args.data.resolve(), work.resolve(), args.train_set, args.curriculum_set)
    started = time.perf_counter()
    rehearsal.run()
    layout = rehearsal.layout
    report = {"data": str(args.data), "work": str(work), "seconds": time.perf_counter() - started,
              "clips": f"{len(layout.curated):,} curated, {len(layout.noisy):,} noisy, {len(layout.test):,} test",
              "host": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
                      f"load average {os.getloadavg()[0]:.1f} at the end",
              "train_set": args.train_set, "curriculum_set": args.curriculum_set, "stages": rehearsal.rows, "console": rehearsal.console, "runs": rehearsal.runs,
              "plan": getattr(rehearsal, "plan", None), "plan_set": args.plan_set}
    text = markdown(report)
    out = args.out.with_suffix("") if args.out.suffix in (".md", ".json") else args.out
    out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
