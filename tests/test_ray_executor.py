"""The Ray executor on a real local Ray (2 CPUs, 2 logical GPUs): order, records, faults, resources, storage.

One Ray runtime for the module; the fold functions are small real functions
run as Ray tasks, so each fault is the real one (a raise, a process that
exits, a cancel that must kill processes, a cluster too small).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import ray

from engine.executors import ClusterError, FoldFailed, FoldResources, FoldCall, StorageError
from engine.executors.ray_executor import RayExecutor, check_reachable, cluster_status
from engine.jobs.context import JobAborted
from tests.helpers.processes import RAY_CLI, env_with_project, process_alive, stop_ray_start
from tests.helpers.waiting import wait_for


@pytest.fixture(scope="module")
def cluster():
    """A local Ray for this module: 2 CPUs, 2 logical GPUs; shut down (no raylet left) at the end."""
    # Ray's workers run at nice 15 by default; on a machine shared with other work that only slows the tests.
    before = os.environ.get("RAY_worker_niceness")
    os.environ["RAY_worker_niceness"] = "0"
    try:
        ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=80 * 1024 * 1024)
    finally:
        if before is None:
            os.environ.pop("RAY_worker_niceness")
        else:
            os.environ["RAY_worker_niceness"] = before
    executor = RayExecutor()
    yield executor
    ray.shutdown()


class Sink:
    """The head's recorder in these tests: keeps every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.placements: list[tuple] = []

    def epoch(self, fold: int, epoch: int, score: float) -> None:
        self.calls.append(("epoch", fold, epoch, score))

    def log(self, text: str) -> None:
        self.calls.append(("log", text))

    def progress(self, fold: int, fraction: float) -> None:
        self.calls.append(("progress", fold, fraction))

    def place(self, fold: int, status: str, **kw) -> None:
        self.placements.append((fold, status, kw))


def timed_fold(fold: int, seconds: float, done: str = "", after: str = "", *, recorder) -> dict:
    """Report two epochs and some progress, take ``seconds``, return a small result (and touch ``done``).

    With ``after``, the fold ends only once that file exists (at most 300 s: on a busy machine Ray may take
    seconds to start the process of another fold).
    """
    for epoch in range(2):
        for step in range(5):
            recorder.progress(fold, (epoch * 5 + step + 1) / 10)
        recorder.epoch(fold, epoch, 0.5 + fold / 10 + epoch / 100)
        time.sleep(seconds / 2)
    deadline = time.monotonic() + 300
    while after and not Path(after).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{after} did not appear in 300 s")
        time.sleep(0.05)
    recorder.log(f"fold {fold} done in pid {os.getpid()}")
    if done:
        Path(done).touch()
    return {"fold": fold, "pid": os.getpid()}


def failing_fold(fold: int, after: str, *, recorder) -> None:
    """Raise after reporting one epoch, once the file ``after`` exists (another fold finished)."""
    recorder.epoch(fold, 0, 0.1)
    while not Path(after).exists():
        time.sleep(0.05)
    time.sleep(0.5)
    raise ValueError(f"bad labels in fold {fold}")


def dies_first_time(fold: int, marker: str, *, recorder) -> dict:
    """Kill its own process on the first attempt (as an out-of-memory kill would); succeed after."""
    path = Path(marker)
    attempts = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempts))
    recorder.epoch(fold, attempts, 0.0)
    if attempts == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"attempts": attempts}


def trains_forever(fold: int, beat: str, *, recorder) -> None:
    """Write a heartbeat file until stopped from outside."""
    while True:
        Path(beat).write_text(str(time.time()))
        recorder.progress(fold, 0.5)
        time.sleep(0.1)


def test_results_come_in_completion_order_with_every_record(cluster, tmp_path: Path):
    sink = Sink()
    # Fold 0 ends only once the head holds fold 1's result: the order is made by the folds, not by durations,
    # which a busy machine stretches (a second fold's process may take seconds to start).
    head_has_fold1 = tmp_path / "head-has-fold1"
    tasks = [FoldCall(0, timed_fold, (0, 0.2, "", str(head_has_fold1))), FoldCall(1, timed_fold, (1, 0.2))]
    got = []
    for fold, result in cluster.run_folds(tasks, lambda fold: sink, check=lambda: None, placement=sink.place,
                                          resources=FoldResources(cpus_per_fold=1, gpus_per_fold=1, max_retries=0)):
        got.append((fold, result))
        if fold == 1:
            head_has_fold1.touch()
    assert [fold for fold, _ in got] == [1, 0]
    # Both ran at once, in different processes, and every epoch record reached the head in order.
    assert got[0][1]["pid"] != got[1][1]["pid"]
    epochs = [c for c in sink.calls if c[0] == "epoch"]
    assert sorted(epochs) == [("epoch", 0, 0, 0.5), ("epoch", 0, 1, 0.51), ("epoch", 1, 0, 0.6), ("epoch", 1, 1, 0.61)]
    assert [c for c in epochs if c[1] == 0] == [("epoch", 0, 0, 0.5), ("epoch", 0, 1, 0.51)]
    assert ("log", f"fold 1 done in pid {got[0][1]['pid']}") in sink.calls
    # Progress is coalesced per batch but the last value always arrives.
    assert [c for c in sink.calls if c[0] == "progress" and c[1] == 0][-1] == ("progress", 0, 1.0)
    running = {f: kw for f, s, kw in sink.placements if s == "running"}
    assert running[0]["pid"] == got[1][1]["pid"] and running[0]["node"] and running[0]["task_attempt"] == 1
    assert [(f, s) for f, s, _ in sink.placements if s == "done"] == [(1, "done"), (0, "done")]


def spans_fold(fold: int, seconds: float, running: str, *, recorder) -> list[int]:
    """Report progress for ``seconds`` while marked running in the folder ``running``; return the other folds
    seen marked running meanwhile.

    Overlap is judged by what each fold sees, not by comparing clock readings
    taken in two processes: on a busy machine the wall clock can be stepped.
    """
    mine = Path(running) / f"fold{fold}"
    mine.touch()
    seen: set[int] = set()
    start = time.monotonic()
    try:
        while True:
            seen |= {int(p.name[4:]) for p in Path(running).iterdir() if p != mine}
            if time.monotonic() - start >= seconds:
                return sorted(seen)
            recorder.progress(fold, (time.monotonic() - start) / seconds)
            time.sleep(0.05)
    finally:
        mine.unlink()  # before the function returns, so before Ray may free the fold's CPUs


def test_a_fold_holds_its_cpus_for_its_whole_run(cluster, tmp_path: Path):
    # Two CPUs per fold on a two-CPU cluster: the second fold starts only when the first has ended.
    # (A task blocked in ray.get lends its CPUs to other tasks, so a fold task must never block.)
    sink = Sink()
    tasks = [FoldCall(0, spans_fold, (0, 2.0, str(tmp_path))), FoldCall(1, spans_fold, (1, 2.0, str(tmp_path)))]
    got = dict(cluster.run_folds(tasks, lambda fold: sink, check=lambda: None, placement=sink.place,
                                 resources=FoldResources(cpus_per_fold=2, gpus_per_fold=0, max_retries=0)))
    assert got == {0: [], 1: []}, f"a fold ran while another held the CPUs: {got}"
    assert [c[2] for c in sink.calls if c[0] == "progress" and c[1] == 0][-1] > 0.9


def test_a_fold_error_fails_with_its_traceback_and_keeps_the_finished_fold(cluster, tmp_path: Path):
    sink = Sink()
    marker = str(tmp_path / "fold0-done")
    tasks = [FoldCall(0, timed_fold, (0, 0.2, marker)), FoldCall(1, failing_fold, (1, marker))]
    got = []
    with pytest.raises(FoldFailed, match=r"fold 1 failed: ValueError: bad labels in fold 1") as info:
        for fold, result in cluster.run_folds(tasks, lambda fold: sink, check=lambda: None, placement=sink.place,
                                              resources=FoldResources(gpus_per_fold=0, max_retries=2)):
            got.append(fold)
    assert got == [0]
    assert info.value.fold == 1 and "failing_fold" in info.value.remote_traceback
    assert "raise ValueError" in info.value.remote_traceback
    # An error is not retried (only a dead process is): the fold started once.
    assert [kw["task_attempt"] for f, s, kw in sink.placements if f == 1 and s == "running"] == [1]


def test_a_dead_fold_process_is_retried_exactly_max_retries_times(cluster, tmp_path: Path):
    sink = Sink()
    retried = list(cluster.run_folds([FoldCall(0, dies_first_time, (0, str(tmp_path / "a")))], lambda fold: sink,
                                     check=lambda: None, placement=sink.place,
                                     resources=FoldResources(gpus_per_fold=0, max_retries=1)))
    assert retried == [(0, {"attempts": 2})]
    assert [kw["task_attempt"] for f, s, kw in sink.placements if s == "running"] == [1, 2]
    # max_retries = 0 is honoured: Ray's default of 3 retries does not apply.
    with pytest.raises(FoldFailed, match=r"fold 0: its process died 1 time\(s\) and cluster.max_retries = 0"):
        list(cluster.run_folds([FoldCall(0, dies_first_time, (0, str(tmp_path / "b")))], lambda fold: Sink(),
                               check=lambda: None, resources=FoldResources(gpus_per_fold=0, max_retries=0)))
    assert (tmp_path / "b").read_text() == "1"


def test_cancel_stops_every_fold_process_within_seconds(cluster, tmp_path: Path):
    sink = Sink()
    beats = [tmp_path / "beat0", tmp_path / "beat1"]
    tasks = [FoldCall(k, trains_forever, (k, str(beats[k]))) for k in (0, 1)]
    both_running: list[float] = []

    def check() -> None:
        # The cancel flag as the job sees it: raised once both folds have trained for a second.
        if not both_running and all(b.exists() for b in beats):
            both_running.append(time.monotonic())
        if both_running and time.monotonic() - both_running[0] > 1.0:
            raise JobAborted("cancel requested")

    with pytest.raises(JobAborted):
        list(cluster.run_folds(tasks, lambda fold: sink, check=check, placement=sink.place,
                               resources=FoldResources(gpus_per_fold=1, max_retries=3)))
    pids = [kw["pid"] for f, s, kw in sink.placements if s == "running"]
    assert len(pids) == 2
    wait_for(lambda: not any(process_alive(p) for p in pids), timeout=10, what="fold processes to exit")
    stamps = [b.read_text() for b in beats]
    time.sleep(0.5)
    assert [b.read_text() for b in beats] == stamps  # nothing keeps training
    assert sorted(f for f, s, _ in sink.placements if s == "cancelled") == [0, 1]
    # The cluster's resources are free again for the next job.
    wait_for(lambda: cluster_status()["cpus_free"] == 2 and cluster_status()["gpus_free"] == 2, timeout=10,
             what="resources to be released")


def test_a_fold_the_cluster_cannot_fit_is_a_named_error(cluster):
    with pytest.raises(ClusterError, match=r"asks for 1 CPUs and 4 GPUs .* largest node offers 2 CPUs and 2 GPUs"):
        list(cluster.run_folds([FoldCall(0, timed_fold, (0, 0.1))], lambda fold: Sink(), check=lambda: None,
                               resources=FoldResources(gpus_per_fold=4)))


def test_folds_that_never_start_fail_after_the_start_timeout(cluster):
    from ray.util.placement_group import placement_group, remove_placement_group

    # Another user of the cluster holds both GPUs.
    pg = placement_group([{"GPU": 2}])
    ray.get(pg.ready(), timeout=30)
    try:
        with pytest.raises(ClusterError, match=r"no fold task started in 1.5 s: .* 0 GPUs free; folds \[0, 1\]"):
            list(cluster.run_folds([FoldCall(k, timed_fold, (k, 0.1)) for k in (0, 1)], lambda fold: Sink(),
                                   check=lambda: None, resources=FoldResources(gpus_per_fold=1, start_timeout=1.5)))
    finally:
        remove_placement_group(pg)


def test_unreachable_cluster_is_named_without_hanging():
    with pytest.raises(ClusterError, match=r"Ray cluster at 127.0.0.1:9 is unreachable"):
        check_reachable("127.0.0.1:9", timeout=2)
    with pytest.raises(ClusterError, match=r"is not host:port"):
        check_reachable("nowhere")


def test_storage_check_names_the_node_and_the_path_it_cannot_read(cluster, tmp_path: Path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    (data / "train_curated.csv").write_text("fname,labels\n")
    runs.mkdir()
    cluster.check_storage(read=[data], write=[runs], resources=FoldResources(gpus_per_fold=0))
    # A second node that does not see the dataset: its own mount namespace hides the folder.
    address = ray.get_runtime_context().gcs_address
    env = env_with_project()
    node = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs none {data} && mount --bind {runs} {runs} && mount -o remount,bind,ro {runs} && "
         f"exec {RAY_CLI} start --address={address} --num-cpus=1 --num-gpus=0 --resources='{{\"blind\": 1}}' "
         "--block --disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: cluster_status()["nodes"] == 2, timeout=60, what="the second node to join")
        with pytest.raises(StorageError, match=rf"cannot read {data}/train_curated.csv|cannot read {data}"):
            cluster.check_storage(read=[data / "train_curated.csv"], write=[runs],
                                  resources=FoldResources(gpus_per_fold=0))
        with pytest.raises(StorageError, match=rf"Ray node .* cannot write in {runs}: Read-only file system"):
            cluster.check_storage(read=[data], write=[runs], resources=FoldResources(gpus_per_fold=0))
        # A node too small for a fold is not asked: with a GPU per fold only the first node counts.
        cluster.check_storage(read=[data / "train_curated.csv"], write=[runs],
                              resources=FoldResources(gpus_per_fold=1))
    finally:
        stop_ray_start(node)  # the shell exec'd `ray start`
    wait_for(lambda: cluster_status()["nodes"] == 1, timeout=60, what="the second node to leave")
