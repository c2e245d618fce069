"""Executors: where a job's folds run (see :mod:`engine.executors.base`).

``local`` (the default) trains the folds one after another in the job
process; ``ray`` sends them as tasks to a Ray cluster. The worker chooses
(``python -m engine.worker --executor ray [--ray-address ADDRESS]``) and tells
its job processes through the environment (:data:`EXECUTOR_ENV`,
:data:`ADDRESS_ENV`), so a job's code is the same under either.
"""

from __future__ import annotations

import os

from engine.executors.base import (ClusterError, Executor, FoldFailed, FoldResources, FoldCall, LocalExecutor,
                                   StorageError)

#: Environment variable naming the executor of a job process: ``local`` or ``ray``.
EXECUTOR_ENV = "FSAT_EXECUTOR"
#: Environment variable with the Ray cluster's address for a job process.
ADDRESS_ENV = "FSAT_RAY_ADDRESS"
EXECUTORS = ("local", "ray")

__all__ = ["ADDRESS_ENV", "EXECUTORS", "EXECUTOR_ENV", "ClusterError", "Executor", "FoldFailed", "FoldResources",
           "FoldCall", "LocalExecutor", "StorageError", "executor_from_env", "make_executor"]


def make_executor(name: str = "local", address: str | None = None) -> Executor:
    """The executor called ``name``; Ray is imported only for ``ray``."""
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        try:
            from engine.executors.ray_executor import RayExecutor
        except ImportError as err:
            raise ClusterError(f"the ray executor needs Ray ({err}); install it with pip install -e '.[ray]'") \
                from None
        return RayExecutor(address or None)
    raise ClusterError(f"unknown executor {name!r}; expected one of {', '.join(EXECUTORS)}")


def executor_from_env() -> Executor:
    """The executor the worker chose for this job process (local unless it said otherwise)."""
    return make_executor(os.environ.get(EXECUTOR_ENV, "local") or "local", os.environ.get(ADDRESS_ENV) or None)
