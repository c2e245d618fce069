"""The worker's link to its Ray cluster: connect (and retry), and publish what the cluster has free.

A worker started with ``--executor ray`` claims no job until it reaches its
cluster, so jobs stay queued while the cluster is down; the reason is
published on the worker's row (``workers.cluster``) for the console and
``fsat workers``. Without ``--ray-address`` the worker starts a local Ray
instance on this machine and its jobs connect to that.
"""

from __future__ import annotations

import time
from typing import Callable

from engine.executors.base import ClusterError
from engine.store import Store


class ClusterLink:
    """Owned by one worker: its connection to the cluster and the status it publishes."""

    def __init__(self, store: Store, worker_id: str, address: str | None, *, log: Callable[[str], None] = print,
                 retry_seconds: float = 5.0, publish_seconds: float = 2.0) -> None:
        self.store = store
        self.worker_id = worker_id
        self.requested = address
        self.log = log
        self.retry_seconds = retry_seconds
        self.publish_seconds = publish_seconds
        #: The address job processes connect to (the cluster's, once connected).
        self.address: str | None = None
        self._last_try = -1e9
        self._last_publish = -1e9
        self._error = ""

    def ready(self) -> bool:
        """Connected (connecting at most every ``retry_seconds``); publishes the status or the error."""
        if self.address is None and time.monotonic() - self._last_try >= self.retry_seconds:
            self._last_try = time.monotonic()
            from engine.executors import ray_executor

            try:
                self.address = ray_executor.connect(self.requested)
                self.log(f"connected to the Ray cluster at {self.address}")
                self._error = ""
            except ClusterError as err:
                if str(err) != self._error:
                    self.log(f"{err}; jobs stay queued until it can be reached")
                self._error = str(err)
                self.store.set_worker_cluster(self.worker_id, "ray", {"error": self._error,
                                                                      "address": self.requested or ""})
                return False
        if self.address is None:
            return False
        self.publish(force=True)
        return self.address is not None

    def publish(self, *, force: bool = False) -> None:
        """Write nodes, CPUs and GPUs (total and free) on the worker's row, at most every ``publish_seconds``."""
        if self.address is None or (not force and time.monotonic() - self._last_publish < self.publish_seconds):
            return
        self._last_publish = time.monotonic()
        from engine.executors import ray_executor

        try:
            status = ray_executor.cluster_status()
        except Exception as err:  # noqa: BLE001 - a lost cluster shows as an error, never stops the worker
            self._error = f"lost the Ray cluster at {self.address}: {type(err).__name__}: {err}"
            self.log(self._error)
            self.store.set_worker_cluster(self.worker_id, "ray", {"error": self._error, "address": self.address})
            self.close()
            return
        self.store.set_worker_cluster(self.worker_id, "ray", status)

    def close(self) -> None:
        """Disconnect (a local cluster this worker started stops with it)."""
        if self.address is not None:
            import ray

            ray.shutdown()
        self.address = None
