"""Seed groups: runs whose configs differ only in ``train.seed`` (``engine.specs.seed_group_key``).

A group's spread over seeds is the noise a difference between two
configurations must beat. ``fsat runs``, ``fsat compare`` and the sweep view
show a group's mean ± std of out-of-fold LWLRAP and of the fold mean.
A run counts in its group's out-of-fold statistics only when it trained
every fold its config names (a sweep's screened-out run trained one). Standard
library only (the console imports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.compare import mean_std, pm_text
from engine.specs import seed_group_key

if TYPE_CHECKING:
    from engine.store import Store


@dataclass
class SeedGroup:
    """The runs of one seed group and their statistics over seeds."""

    key: str
    run_ids: list[str] = field(default_factory=list)
    seeds: list[int | None] = field(default_factory=list)
    cv: list[float] = field(default_factory=list)          # out-of-fold LWLRAP of the runs with every fold
    fold_means: list[float] = field(default_factory=list)  # each run's mean fold LWLRAP

    @property
    def cv_mean_std(self) -> tuple[float | None, float | None]:
        """Mean ± std over seeds of the out-of-fold LWLRAP."""
        return mean_std(self.cv)

    @property
    def fold_mean_std(self) -> tuple[float | None, float | None]:
        """Mean ± std over seeds of each run's fold mean."""
        return mean_std(self.fold_means)

    @property
    def cv_text(self) -> str:
        """``0.8123 ± 0.0085 (2)``: OOF mean ± std over the seeds that trained every fold; empty under two."""
        if len(self.cv) < 2:
            return ""
        return f"{pm_text(*self.cv_mean_std)} ({len(self.cv)})"


def _n_folds(config: dict) -> int:
    train = config.get("train") or {}
    return len(train.get("folds") or []) or int(train.get("n_folds") or 5)


def seed_groups(store: "Store", *, keys: dict[str, tuple[str, int]] | None = None) -> dict[str, SeedGroup]:
    """Every seed group of the database's scored training runs, by key.

    ``keys`` (config hash -> group key and folds) is a cache the caller keeps
    between calls, as the console's poll does: a run's config is decoded and
    keyed only the first time its config hash is seen (runs with the same
    config hash have the same group and folds). Without it every config is
    decoded and keyed.
    """
    cache: dict[str, tuple[str, int]] = {} if keys is None else keys
    groups: dict[str, SeedGroup] = {}
    for run in store.runs_for_seed_groups(known=list(cache)):
        digest = run.get("config_hash") or ""
        keyed = cache.get(digest) if digest else None
        if keyed is None:
            config = run["config"] or {}
            keyed = (seed_group_key(config), _n_folds(config))
            if digest:
                cache[digest] = keyed
        key, n_folds = keyed
        group = groups.setdefault(key, SeedGroup(key))
        group.run_ids.append(run["run_id"])
        group.seeds.append(run["seed"])
        if run["mean_fold_lwlrap"] is not None:
            group.fold_means.append(run["mean_fold_lwlrap"])
        if run["cv_lwlrap"] is not None and run["folds_done"] >= n_folds:
            group.cv.append(run["cv_lwlrap"])
    return groups


def group_columns(groups: dict[str, SeedGroup]) -> dict[str, dict]:
    """run id -> its group's columns: ``group`` (key), ``seeds`` (runs), ``group_cv`` and ``group_folds`` (mean ± std),
    ``group_oof`` (:attr:`SeedGroup.cv_text`, the console's runs table) and ``group_cv_mean`` (its sort key)."""
    out = {}
    for group in groups.values():
        cells = {"group": group.key, "seeds": len(group.run_ids), "group_cv": pm_text(*group.cv_mean_std),
                 "group_folds": pm_text(*group.fold_mean_std), "group_oof": group.cv_text,
                 "group_cv_mean": group.cv_mean_std[0] if len(group.cv) >= 2 else None}
        for run_id in group.run_ids:
            out[run_id] = cells
    return out
