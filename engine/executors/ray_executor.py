"""Folds as Ray tasks on a cluster; the head (the job process) stays the only writer of the store.

Each fold runs as one Ray task with explicit resources (``num_cpus``,
``num_gpus``) and an explicit ``max_retries``. The task never opens the
database: what the fold function tells its recorder goes, in small batches,
into a :class:`RecordStream` actor that the head drains between
``ray.wait`` calls and replays on the job's own recorder, which writes the
store. Results come back in completion order. Ray has no per-task timeout,
so the head waits with a timeout and fails with a named error when folds are
pending, none runs, and the cluster has not started one in
``start_timeout`` seconds.

This module imports Ray; only the executor factory and the worker import it,
and only when ``--executor ray`` is asked for.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from engine.executors.base import (ClusterError, Executor, FoldFailed, FoldResources, FoldCall, Placement,
                                   StorageError, _no_placement)

#: A fold task reports its node and pid under this method name before it starts the fold function.
STARTED = "__started__"
#: A fold task's last message: everything it sent before has reached the stream.
DELIVERED = "__delivered__"
#: Seconds the head waits, once a fold's result is ready, for that fold's last records.
DELIVERY_SECONDS = 30.0
#: How many times one job attempt makes its record stream again after losing it, before it gives up.
STREAM_RESTARTS = 2
#: Seconds between two batches a fold task sends to the head (records are buffered meanwhile).
FLUSH_SECONDS = 0.5
#: Seconds one ``ray.wait`` on the head waits before draining records and checking for cancel.
WAIT_SECONDS = 0.25
#: How long ``ray.init`` may try to reach an address that answers TCP (a wrong address is caught first).
CONNECT_CHECK_SECONDS = 5.0


# --- connecting -------------------------------------------------------------------------


def check_reachable(address: str, timeout: float = CONNECT_CHECK_SECONDS) -> None:
    """Raise :class:`ClusterError` naming ``address`` when nothing answers there.

    ``ray.init`` on an address where no cluster listens retries for minutes
    without saying why; one TCP connection answers in seconds.
    """
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not host:port (the address `ray start --head` prints)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise ClusterError(f"Ray cluster at {address} is unreachable ({err.strerror or err}); start it with "
                           f"`ray start --head` on that machine or pass the address it printed") from None


def connect(address: str | None = None, **init_kwargs: Any) -> str:
    """Connect this process to the cluster at ``address`` (None: start a local one); returns its address.

    A process holds one connection; calling again returns the current one.
    """
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    if address:
        check_reachable(address)
        # Ray sends its token to an explicit address only in token mode; a cluster started with
        # `ray start --head` where ~/.ray/auth_token exists wants it, and without it ray.init
        # retries for ever. RAY_AUTH_MODE, when set, decides.
        if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN")
                                                  or (Path.home() / ".ray" / "auth_token").is_file()):
            os.environ["RAY_AUTH_MODE"] = "token"
            # Ray read its settings when it was imported; this is how it refreshes them itself.
            ray._raylet.Config.initialize("")
    init_kwargs.setdefault("include_dashboard", False)
    init_kwargs.setdefault("log_to_driver", False)
    init_kwargs.setdefault("configure_logging", False)
    # Ray's core installs its own SIGTERM/SIGINT handlers; the worker's clean stop and a job's
    # cancel rely on ours, so they are put back.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # "local" starts a new cluster: without an address Ray would join whatever cluster this
        # machine last started (its /tmp/ray/ray_current_cluster), another user's perhaps.
        ray.init(address=address or "local", **init_kwargs)
    except (ConnectionError, RuntimeError) as err:
        raise ClusterError(f"cannot connect to the Ray cluster at {address or 'a new local cluster'}: "
                           f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
    return ray.get_runtime_context().gcs_address


def cluster_status() -> dict:
    """Nodes alive, CPUs and GPUs in total and free, and the address: what the console's status line shows."""
    total = ray.cluster_resources()
    free = ray.available_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"address": ray.get_runtime_context().gcs_address, "nodes": len(nodes),
            "cpus": float(total.get("CPU", 0.0)), "cpus_free": float(free.get("CPU", 0.0)),
            "gpus": float(total.get("GPU", 0.0)), "gpus_free": float(free.get("GPU", 0.0))}


def _node_label(node: dict) -> str:
    return f"{node.get('NodeManagerAddress', '?')} ({node.get('NodeManagerHostname', '?')})"


# --- what runs on the nodes ------------------------------------------------------------------


@ray.remote(num_cpus=0)
class RecordStream:
    """Buffers what fold tasks tell their recorders until the head drains it (one actor per job attempt)."""

    def __init__(self) -> None:
        self.items: list[tuple] = []

    def push(self, batch: list[tuple]) -> None:
        """Append a batch from one task (calls from one task arrive in order)."""
        self.items.extend(batch)

    def drain(self) -> list[tuple]:
        """Everything pushed since the last drain, oldest first."""
        items, self.items = self.items, []
        return items


class StreamRecorder:
    """The recorder a fold function gets inside a Ray task: every call is sent to the head.

    Any method call ``recorder.NAME(*args, **kwargs)`` is buffered as
    ``(fold, NAME, args, kwargs)`` and pushed to the job's stream at most
    every :data:`FLUSH_SECONDS`; the head makes the same call on the job's
    recorder. Calls named in ``coalesce`` (progress) keep only the latest
    one of a batch. Calls return None.

    Nothing here waits for the stream: a Ray task blocked in ``ray.get`` or
    ``ray.wait`` lends its CPUs to other tasks, so a waiting fold would let
    a second fold onto CPUs the first still uses. Calls from one task reach
    the actor in order, so the head knows it has a fold's every record once
    it has that task's :data:`DELIVERED`.
    """

    def __init__(self, stream: Any, fold: int, coalesce: Sequence[str] = ("progress",)) -> None:
        self._stream = stream
        self._fold = fold
        self._coalesce = set(coalesce)
        self._buffer: list[tuple] = []
        self._last_flush = time.monotonic()

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> None:
            if name in self._coalesce:
                self._buffer = [b for b in self._buffer if b[1] != name]
            self._buffer.append((self._fold, name, args, kwargs))
            if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
                self._flush()

        return call

    def _flush(self) -> None:
        if self._buffer:
            self._stream.push.remote(self._buffer)
            self._buffer = []
        self._last_flush = time.monotonic()

    def _deliver(self, token: str) -> None:
        """Send what is buffered and, after it, :data:`DELIVERED` with this run's ``token``."""
        self._buffer.append((self._fold, DELIVERED, (), {"token": token}))
        self._flush()


@ray.remote
def _fold_task(fn: Callable[..., Any], args: tuple, fold: int, stream: Any) -> Any:
    """Run one fold on a node: say where, run the fold function with a streaming recorder, send its records.

    Each run of the task (a retry is another) has its own ``token``, sent with
    :data:`STARTED` and :data:`DELIVERED`, so the head never takes a dead
    attempt's last message for the retry's.
    """
    recorder = StreamRecorder(stream, fold)
    ctx = ray.get_runtime_context()
    node = f"{ray.util.get_node_ip_address()} ({socket.gethostname()})"
    token = uuid.uuid4().hex
    started = stream.push.remote([(fold, STARTED, (), {"node": node, "pid": os.getpid(),
                                                       "node_id": ctx.get_node_id(), "token": token})])
    # Delivered before the fold starts, so a process that dies at once still counts as an attempt. Polled
    # through the reference's future, never ray.wait: even with timeout 0, ray.wait on a result not yet in
    # marks the task blocked and lends its CPUs, and a second fold started on them (measured: in 6 of 12 runs
    # of two 2-CPU folds on 2 CPUs after other folds had run; 0 of 7 with the future).
    delivered = started.future()
    deadline = time.monotonic() + DELIVERY_SECONDS
    while not delivered.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        return fn(*args, recorder=recorder)
    finally:
        recorder._deliver(token)


@ray.remote(num_cpus=0)
def _probe_storage(read: list[str], write: list[str]) -> str:
    """On one node: '' when every ``read`` path can be listed or read and every ``write`` folder written."""
    for path in map(Path, read):
        try:
            if path.is_dir():
                os.listdir(path)
            else:
                with open(path, "rb") as fh:
                    fh.read(1)
        except OSError as err:
            return f"cannot read {path}: {err.strerror or err}"
    for folder in map(Path, write):
        probe = folder / f".fsat-write-check-{socket.gethostname()}-{os.getpid()}"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as err:
            return f"cannot write in {folder}: {err.strerror or err}"
    return ""


# --- the head's side -------------------------------------------------------------------------


@contextmanager
def _signals_between_ray_calls() -> Iterator[Callable[[], None]]:
    """Hold SIGTERM/SIGINT while Ray waits; yield ``deliver`` that runs the held one's own handler.

    A job is stopped by SIGTERM, whose handler raises. Raised inside Ray's
    compiled ``wait``, that exception comes out as a SystemError, and the job
    would be recorded as failed instead of stopped; so the signal is noted and
    its handler runs between two Ray calls.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    held: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def hold(signum: int, _frame: object) -> None:
        held.append(signum)

    def deliver() -> None:
        if not held:
            return
        signum = held.pop(0)
        handler = previous[signum]
        if callable(handler):
            handler(signum, None)
        elif handler != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in previous:
        signal.signal(sig, hold)
    try:
        yield deliver
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


class RayExecutor(Executor):
    """Runs fold tasks on the Ray cluster at ``address`` (None: a new local cluster)."""

    name = "ray"

    def __init__(self, address: str | None = None, **init_kwargs: Any) -> None:
        self.address = address
        self.init_kwargs = init_kwargs
        self._connected = False

    def connect(self) -> str:
        """Connect once; returns the cluster's address. :class:`ClusterError` when unreachable."""
        address = connect(self.address, **self.init_kwargs)
        self._connected = True
        return address

    def close(self) -> None:
        """Disconnect this process from the cluster (the cluster itself keeps running)."""
        if self._connected and ray.is_initialized():
            ray.shutdown()
        self._connected = False

    # -- resources --------------------------------------------------------------------------

    def fold_request(self, resources: FoldResources) -> tuple[float, float]:
        """``(cpus, gpus)`` per fold; :class:`ClusterError` when no live node could ever run one."""
        self.connect()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        has_gpus = any(n.get("Resources", {}).get("GPU", 0) > 0 for n in nodes)
        gpus = resources.gpus_per_fold if resources.gpus_per_fold is not None else (1.0 if has_gpus else 0.0)
        cpus = resources.cpus_per_fold
        fits = [n for n in nodes if n.get("Resources", {}).get("CPU", 0) >= cpus
                and n.get("Resources", {}).get("GPU", 0) >= gpus]
        if not fits:
            largest = max(nodes, key=lambda n: (n.get("Resources", {}).get("GPU", 0),
                                                n.get("Resources", {}).get("CPU", 0)), default=None)
            offer = ("no live node" if largest is None else
                     f"its largest node offers {largest['Resources'].get('CPU', 0):g} CPUs and "
                     f"{largest['Resources'].get('GPU', 0):g} GPUs")
            raise ClusterError(f"the Ray cluster cannot run a fold: each fold asks for {cpus:g} CPUs and {gpus:g} "
                               f"GPUs (cluster.cpus_per_fold, cluster.gpus_per_fold) but {offer}")
        return cpus, gpus

    def check_storage(self, *, read: Sequence[Path], write: Sequence[Path],
                      resources: FoldResources | None = None, timeout: float = 60.0) -> None:
        """On every live node that could run a fold: read the ``read`` paths, write in the ``write`` folders."""
        self.connect()
        cpus, gpus = self.fold_request(resources or FoldResources())
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= cpus
                 and n.get("Resources", {}).get("GPU", 0) >= gpus]
        refs = {_probe_storage.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote([str(p) for p in read], [str(p) for p in write]): n for n in nodes}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        if pending:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise ClusterError(f"node {_node_label(refs[pending[0]])} did not answer the storage check in "
                               f"{timeout:g} s")
        for ref in ready:
            problem = ray.get(ref)
            if problem:
                raise StorageError(f"Ray node {_node_label(refs[ref])} {problem}: the dataset root and the run "
                                   "folder must be on storage every node sees, under the same path")

    # -- running folds ------------------------------------------------------------------------

    def run_folds(self, tasks: Sequence[FoldCall], recorder_for: Callable[[int], Any], *,
                  check: Callable[[], None], resources: FoldResources | None = None,
                  placement: Placement = _no_placement) -> Iterator[tuple[int, Any]]:
        """Submit every fold at once; yield results in completion order; stop them all on error or cancel.

        A record stream that dies (its actor lost with its node, say) is
        made again and the folds still out are stopped and submitted again
        on it, at most :data:`STREAM_RESTARTS` times: they resume from their
        last checkpoints, and the epochs whose records died with the stream
        come back from the folds' journals (``recorder.recovered``).
        """
        resources = resources or FoldResources()
        cpus, gpus = self.fold_request(resources)
        by_fold = {task.fold: task for task in tasks}
        streams = [RecordStream.remote()]
        refs: dict[Any, int] = {}
        starts: dict[int, int] = {}
        tokens: dict[int, str] = {}  # the latest run of each fold's task
        delivered: set[str] = set()
        notes: dict[int, str] = {}  # what a fold's next "running" placement says (why it was submitted again)

        def submit(folds: Sequence[int], message: str = "") -> None:
            for fold in folds:
                task = by_fold[fold]
                ref = _fold_task.options(num_cpus=cpus, num_gpus=gpus, max_retries=resources.max_retries,
                                         retry_exceptions=False).remote(task.fn, task.args, task.fold, streams[-1])
                refs[ref] = task.fold
                placement(task.fold, "submitted", message=message or f"{cpus:g} CPUs, {gpus:g} GPUs")

        def restart(err: BaseException, also: Sequence[int] = ()) -> None:
            """The stream died: a new one, and every fold still out (and ``also``) submitted again on it."""
            if len(streams) > STREAM_RESTARTS:
                raise ClusterError(f"the record stream of the fold tasks was lost {len(streams)} times "
                                   f"({type(err).__name__}); queue the job again: its folds resume from their "
                                   "last checkpoints and no finished epoch is lost") from None
            out = sorted(set(refs.values()) | set(also))
            for ref in refs:
                ray.cancel(ref, force=True)
            if refs:
                ray.wait(list(refs), num_returns=len(refs), timeout=DELIVERY_SECONDS)
            refs.clear()
            note = f"submitted again: the record stream was lost ({type(err).__name__})"
            for fold in out:
                tokens.pop(fold, None)
                starts.pop(fold, None)  # a new run of the fold, not a retry after its process died
                notes[fold] = note
            streams.append(RecordStream.remote())
            submit(out, message=note)

        def drain(also: Sequence[int] = ()) -> bool:
            """Replay what the folds sent; False when the stream was lost (the folds out, and ``also``, resubmitted)."""
            try:
                items = ray.get(streams[-1].drain.remote())
            except ray.exceptions.RayActorError as err:
                restart(err, also)
                return False
            for fold, method, args, kwargs in items:
                if method == DELIVERED:
                    delivered.add(kwargs["token"])
                elif method == STARTED:
                    tokens[fold] = kwargs["token"]
                    starts[fold] = starts.get(fold, 0) + 1
                    placement(fold, "running", node=kwargs["node"], pid=kwargs["pid"], task_attempt=starts[fold],
                              message=notes.pop(fold, "") if starts[fold] == 1 else
                              f"retry {starts[fold] - 1} of {resources.max_retries}: its process died")
                else:
                    getattr(recorder_for(fold), method)(*args, **kwargs)
            return True

        submit([task.fold for task in tasks])
        with _signals_between_ray_calls() as deliver_signal:
            idle_since = time.monotonic()
            try:
                while refs:
                    ready, _ = ray.wait(list(refs), num_returns=1, timeout=WAIT_SECONDS)
                    deliver_signal()
                    if not drain():
                        continue
                    check()
                    for ref in ready:
                        fold = refs.pop(ref)
                        result = self._result(ref, fold, starts.get(fold, 0), resources)
                        deadline = time.monotonic() + DELIVERY_SECONDS
                        lost = False
                        while tokens.get(fold) not in delivered:
                            if time.monotonic() > deadline:
                                raise ClusterError(f"fold {fold} finished but its last records did not reach "
                                                   f"the head in {DELIVERY_SECONDS:g} s")
                            time.sleep(0.02)
                            # A stream lost now took the fold's last records with it: the fold runs again
                            # (it resumes at its end and sends its journal), with every fold still out.
                            if not drain(also=[fold]):
                                lost = True
                                break
                        if lost:
                            break
                        placement(fold, "done")
                        yield fold, result
                    running = [f for f in refs.values() if f in starts]
                    if running or not refs:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since > resources.start_timeout:
                        free = ray.available_resources()
                        raise ClusterError(
                            f"no fold task started in {resources.start_timeout:g} s: each asks for {cpus:g} CPUs and "
                            f"{gpus:g} GPUs and the cluster has {free.get('CPU', 0):g} CPUs and {free.get('GPU', 0):g} "
                            f"GPUs free; folds {sorted(refs.values())} are still waiting")
            finally:
                self._stop(refs, placement)
                for stream in streams:
                    try:
                        ray.kill(stream)
                    except Exception:  # noqa: BLE001 - a stream already gone needs no stopping
                        pass

    @staticmethod
    def _result(ref: Any, fold: int, starts: int, resources: FoldResources) -> Any:
        """The fold's result, or :class:`FoldFailed` with its traceback."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if isinstance(err.cause, BaseException) else None
            what = f"{type(cause).__name__}: {cause}" if cause is not None else str(err).splitlines()[0]
            # The cause crossed a pickle and lost its frames; Ray keeps the remote traceback as text.
            remote = getattr(err, "traceback_str", "") or str(err)
            raise FoldFailed(fold, f"fold {fold} failed: {what}", remote_traceback=remote) from err
        except ray.exceptions.RayError as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise FoldFailed(fold, f"fold {fold}: its process died {max(starts, 1)} time(s) and "
                             f"cluster.max_retries = {resources.max_retries} allows no more retries "
                             f"({type(err).__name__}: {first[:160]})") from err

    @staticmethod
    def _stop(refs: dict[Any, int], placement: Placement) -> None:
        """Cancel every fold task still out (killing its process) and wait briefly until they are gone."""
        if not refs:
            return
        for ref in refs:
            ray.cancel(ref, force=True)
        # Short: the worker kills a job process that has not exited 5 s after SIGTERM, and then Ray
        # ends the tasks of the dead driver anyway.
        ray.wait(list(refs), num_returns=len(refs), timeout=3)
        for fold in refs.values():
            placement(fold, "cancelled")
