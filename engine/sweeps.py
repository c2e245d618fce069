"""Sweeps: a grid or a random search over spec fields, times seeds, queued as one sweep and screened on one fold.

``fsat sweep`` and the console's sweep dialog call :func:`queue_sweep`:

- the points are the grid's product (``--grid train.epochs=[2,3]``, TOML values)
  or ``count`` random draws (``--random optim.head_lr=loguniform(1e-4,1e-2)``,
  reproducible from ``random_seed``); each point runs once per seed
  (``train.seed``);
- every point's spec, with every seed, passes ``engine.intake.prepare``
  before anything is queued, and a refusal names the point and the field;
- the runs are queued in one transaction (``Store.create_sweep``).

With a screening fold each run first trains that fold only (the fold subset
is the job's, in ``sweep_jobs``, not the run's config, so the run's config
hash is the same whichever folds a job was asked for). When the last
screening job ends, :func:`advance` (the worker calls it after recording
every job's outcome) records each point's decision and queues the best
``keep`` points' completion: the same runs, every fold, resuming from the
screening fold. A point whose run failed or was cancelled is screened out
with the reason. ``fsat sweep complete ID POINT`` overrides a decision.

:func:`sweep_table` is the one table of a sweep: ``fsat sweep show`` and the
console's sweep screen both print it. Standard library and the intake only
(the console imports this module).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from engine import intake, presets, specs
from engine.compare import flatten, mean_std
from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.store import Store

#: The one kind a sweep trains.
SWEEP_KIND = "train"
#: Distributions of ``--random``: ``name(low,high)``; ``choice([...])`` picks one of a TOML list.
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")

_RANDOM = re.compile(r"^\s*(?P<key>[\w.]+)\s*=\s*(?P<dist>\w+)\((?P<args>.*)\)\s*$")


def parse_grid(texts: Iterable[str]) -> list[tuple[str, list[Any]]]:
    """``["train.lr=[1e-3,3e-4]", ...]`` -> ``[("train.lr", [0.001, 0.0003]), ...]``; ConfigError naming ``--grid``."""
    axes = []
    for text in texts:
        parts, values = presets.parse_override(text)
        key = ".".join(parts)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"expected a non-empty TOML list of values, e.g. {key}=[1, 2], got {text!r}",
                              field=f"--grid {key}")
        if any(k == key for k, _ in axes):
            raise ConfigError(f"{key} is given twice", field=f"--grid {key}")
        axes.append((key, values))
    return axes


def parse_random(texts: Iterable[str]) -> list[tuple[str, str, list[Any]]]:
    """``["train.lr=loguniform(1e-4,1e-2)"]`` -> ``[("train.lr", "loguniform", [1e-4, 1e-2])]``."""
    out = []
    for text in texts:
        match = _RANDOM.match(text)
        if not match:
            raise ConfigError(f"expected key=distribution(args), e.g. optim.head_lr=loguniform(1e-4,1e-2), "
                              f"got {text!r}", field="--random")
        key, dist = match["key"], match["dist"]
        field_name = f"--random {key}"
        if dist not in DISTRIBUTIONS:
            raise ConfigError(f"unknown distribution {dist!r} (known: {', '.join(DISTRIBUTIONS)})", field=field_name)
        try:
            args = tomllib.loads(f"v = [{match['args']}]")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"cannot read the arguments {match['args']!r} as TOML values", field=field_name) from None
        if dist == "choice":
            if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
                raise ConfigError("choice takes one non-empty list, e.g. choice([16, 32])", field=field_name)
        else:
            if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
                raise ConfigError(f"{dist} takes two numbers (low, high)", field=field_name)
            low, high = args
            if not low < high:
                raise ConfigError(f"low must be below high, got {low}, {high}", field=field_name)
            if dist == "loguniform" and low <= 0:
                raise ConfigError(f"loguniform needs low > 0, got {low}", field=field_name)
            if dist == "randint" and not all(isinstance(a, int) for a in args):
                raise ConfigError("randint takes two whole numbers", field=field_name)
        out.append((key, dist, args))
    return out


def draw(dist: str, args: list[Any], rng: random.Random) -> Any:
    """One value of a distribution of :func:`parse_random`."""
    if dist == "choice":
        return rng.choice(args[0])
    low, high = args
    if dist == "uniform":
        return rng.uniform(low, high)
    if dist == "loguniform":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    return rng.randint(low, high)


def sweep_points(grid: Sequence[tuple[str, list[Any]]] = (), randoms: Sequence[tuple[str, str, list[Any]]] = (),
                 *, count: int = 0, random_seed: int = 0) -> list[dict[str, Any]]:
    """Each point's settings: the grid's product, or ``count`` draws of the random axes (times the grid)."""
    grid_points = [dict(zip([k for k, _ in grid], values)) for values in itertools.product(*[v for _, v in grid])]
    if not randoms:
        return grid_points
    if count < 1:
        raise ConfigError("a random search needs --count N (points to draw), at least 1", field="--count")
    rng = random.Random(random_seed)
    points = []
    for _ in range(count):
        drawn = {key: draw(dist, args, rng) for key, dist, args in randoms}
        points += [{**drawn, **g} for g in grid_points]
    return points


def parse_seeds(text: str | None) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``; ConfigError naming ``--seeds``."""
    if not text:
        return []
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"expected whole numbers separated by commas, e.g. 1,2,3, got {text!r}",
                          field="--seeds") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"a seed is given twice in {text!r}", field="--seeds")
    return seeds


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def describe(settings: dict[str, Any]) -> str:
    """``train.epochs=2 model.width=16``: a point's settings in one line."""
    return " ".join(f"{k}={format_value(v)}" for k, v in settings.items()) or "(the preset)"


def format_value(v: Any) -> str:
    """A setting's value in a table cell: floats to 4 significant digits, lists as JSON."""
    return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if not isinstance(v, (int, str)) else str(v)


@dataclass
class SweepPlan:
    """What :func:`plan_sweep` checked: the points, the seeds, and every run's validated spec."""

    axes: dict
    seeds: list[int]
    points: list[tuple[dict, list[tuple[int, dict]]]] = field(default_factory=list)
    base: dict = field(default_factory=dict)


def plan_sweep(store: "Store", *, preset: str | None = None, config: Path | str | None = None,
               overrides: Sequence[str] = (), data_root: Path | str | None = None, grid: Sequence[str] = (),
               random_axes: Sequence[str] = (), count: int = 0, random_seed: int = 0, seeds: Sequence[int] = (),
               screen_fold: int | None = None, keep: int | None = None) -> SweepPlan:
    """Build every point's spec with every seed and run the intake's checks on each; nothing is queued.

    A refusal is a ConfigError that names the point (its number and settings) and the field.
    """
    grid_axes = parse_grid(grid)
    randoms = parse_random(random_axes)
    if not grid_axes and not randoms:
        raise ConfigError("a sweep needs --grid KEY=[values] or --random KEY=dist(args)", field="--grid")
    base = intake.prepare(store, SWEEP_KIND, preset=preset, config=config, overrides=overrides, data_root=data_root)
    root = base.spec.data.root
    seeds = list(seeds) or [base.spec.train.seed]
    n_folds = base.spec.train.n_folds
    if screen_fold is not None and not 0 <= screen_fold < n_folds:
        raise ConfigError(f"fold {screen_fold} is outside 0..{n_folds - 1}", field="--screen-fold")
    if keep is not None and screen_fold is None:
        raise ConfigError("--keep needs --screen-fold (the fold the points are screened on)", field="--keep")
    points = sweep_points(grid_axes, randoms, count=count, random_seed=random_seed)
    if screen_fold is not None and keep is not None and not 1 <= keep <= len(points):
        raise ConfigError(f"must be between 1 and the {len(points)} points", field="--keep")
    plan = SweepPlan(axes={"grid": dict(grid_axes), "random": {k: [d, a] for k, d, a in randoms},
                           "count": count, "random_seed": random_seed}, seeds=seeds, base=specs.to_dict(base.spec))
    for number, settings in enumerate(points):
        runs = []
        for seed in seeds:
            extra = [_override(k, v) for k, v in settings.items()] + [_override("train.seed", seed)]
            try:
                prepared = intake.prepare(store, SWEEP_KIND, preset=preset, config=config,
                                          overrides=[*overrides, *extra], data_root=root)
            except ConfigError as err:
                raise ConfigError(f"sweep point {number} ({describe(settings)}, seed {seed}): {err.reason}",
                                  field=err.field) from None
            runs.append((seed, specs.to_dict(prepared.spec)))
        plan.points.append((settings, runs))
    return plan


def queue_sweep(store: "Store", *, preset: str | None = None, name: str = "", screen_fold: int | None = None,
                keep: int | None = None, priority: int = 0, **plan_args: Any) -> int:
    """Check every point (:func:`plan_sweep`) and queue all the runs as one sweep; returns the sweep id."""
    plan = plan_sweep(store, preset=preset, screen_fold=screen_fold, keep=keep, **plan_args)
    if screen_fold is not None and keep is None:
        keep = 1
    return store.create_sweep(name=name or f"{preset or 'config'} sweep", kind=SWEEP_KIND, preset=preset or "",
                              base=plan.base, axes=plan.axes, seeds=plan.seeds, points=plan.points,
                              screen_fold=screen_fold, keep=keep, priority=priority)


# -- screening ----------------------------------------------------------------------------------------


def decide(sweep: dict, runs: list[dict]) -> dict[int, tuple[str, float | None, str]]:
    """Each point's screening decision: ``{point: (kept | screened out, score, reason)}``.

    A point's score is the mean over its seeds of the screening fold's LWLRAP. A point
    with a run that failed, was cancelled or recorded no score is screened out saying
    why; the best ``keep`` of the rest (ties: the lower point number) are kept.
    """
    by_point: dict[int, list[dict]] = {}
    for run in runs:
        by_point.setdefault(run["point"], []).append(run)
    scored, out = {}, {}
    for point, rows in by_point.items():
        bad = next((r for r in rows if r["job_status"] != "done" or r["screen_lwlrap"] is None), None)
        if bad is not None:
            why = bad["job_status"] if bad["job_status"] != "done" else "done without a score"
            detail = f": {bad['error'].strip().splitlines()[0][:120]}" if bad.get("error") else ""
            out[point] = ("screened out", None, f"run {bad['run_id']} {why}{detail}")
        else:
            scored[point] = sum(r["screen_lwlrap"] for r in rows) / len(rows)
    ranked = sorted(scored, key=lambda p: (-scored[p], p))
    keep = sweep["keep"] if sweep["keep"] is not None else len(ranked)
    for rank, point in enumerate(ranked, 1):
        where = f"rank {rank} of {len(ranked)} on fold {sweep['screen_fold']}"
        out[point] = ("kept" if rank <= keep else "screened out", scored[point], where)
    return out


def advance(store: "Store", job_id: int) -> list[int]:
    """After a job ends: advance the sweep that queued it (see ``Store.advance_sweep``); returns the jobs queued."""
    sweep_id = store.sweep_of_job(job_id)
    if sweep_id is None:
        return []
    return store.advance_sweep(sweep_id, decide)


# -- the table ----------------------------------------------------------------------------------------

#: The sweep table's columns after the settings that vary.
TABLE_COLUMNS = ("point", "rank", "state", "decision", "screen", "cv_mean", "cv_std", "fold_mean", "fold_std",
                 "seeds", "folds_done", "runs")


@dataclass
class SweepTable:
    """One row per point: its settings, mean ± std over seeds, folds done, state, rank (``fsat sweep show``)."""

    sweep: dict
    keys: list[str]
    rows: list[dict]
    best_point: int | None = None
    #: The point whose settings are the preset's own (None: the sweep does not hold it).
    default_point: int | None = None
    #: Per class, the best point's out-of-fold LRAP (mean over seeds) against the default point's.
    classes: list[dict] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        """The varying settings, then :data:`TABLE_COLUMNS`."""
        return [*self.keys, *TABLE_COLUMNS]

    def as_json(self) -> dict:
        """The sweep and its rows, for ``--json``."""
        return {"sweep": self.sweep, "columns": self.columns, "rows": self.rows, "best_point": self.best_point,
                "default_point": self.default_point, "classes": self.classes}


def _state(runs: list[dict], n_folds: int) -> str:
    jobs = [r["job_status"] or "queued" for r in runs]
    if any(s == "running" for s in jobs):
        return "running"
    if any(s == "queued" for s in jobs):
        return "queued"
    if all(r["folds_done"] >= n_folds for r in runs):
        return "done"
    if any(s in ("failed", "cancelled") for s in jobs):
        return next(s for s in jobs if s in ("failed", "cancelled"))
    return "screened"


def sweep_folds(base: dict) -> int:
    """How many folds a sweep's runs train once completed: its base spec's ``train.n_folds``."""
    return int((base.get("train") or {}).get("n_folds") or 5)


#: A point's decision -> the state of its runs while they hold the screening fold only, in place of ``done``:
#: ``screened`` out (as the sweep view's state says), ``screening`` (not decided yet), ``kept`` (other folds to come).
SCREENED_STATES = {"screened out": "screened", None: "screening", "kept": "kept", "completed by hand": "kept"}


def screen_text(fold: int, score: float | None) -> str:
    """``f0 0.6120``: a screening fold's LWLRAP, labelled with its fold so it never reads as a CV figure."""
    return f"f{fold} " + ("—" if score is None else f"{score:.4f}")


def mark_screened(store: "Store", runs: list) -> list:
    """Relabel, in place, the runs that hold only their sweep's screening fold; returns ``runs``.

    Such a run's job ended ``done`` after one fold, and its recorded CV
    LWLRAP is that fold's clips alone: read as a 5-fold result it misleads. Its
    ``status`` becomes one of :data:`SCREENED_STATES` (``screened`` when its
    point was screened out), ``cv_lwlrap`` None, and ``screen_fold``, ``screen_lwlrap`` and
    ``screen_text`` (``f0 0.6120``) say what the score is. A run that went on
    to train every fold is left as it is. One query for all the runs
    (``Store.screened_runs``); ``fsat runs``, ``fsat show`` and the console's
    runs table and run screen call it.
    """
    facts = {f["run_id"]: f for f in store.screened_runs([r["run_id"] for r in runs if r.get("status") == "done"])}
    for run in runs:
        fact = facts.get(run["run_id"])
        if fact is None or run.get("status") != "done":
            continue
        if fact["folds_done"] >= sweep_folds(json.loads(fact["base"] or "{}")):
            continue
        run["status"] = SCREENED_STATES.get(fact["decision"], "kept")
        run["cv_lwlrap"] = None
        run["screen_fold"] = fact["screen_fold"]
        run["screen_lwlrap"] = fact["screen_lwlrap"]
        run["screen_text"] = screen_text(fact["screen_fold"], fact["screen_lwlrap"])
    return runs


def sweep_table(store: "Store", sweep_id: int) -> SweepTable:
    """The sweep's table from the store: each point's runs, their recorded scores, its decision."""
    sweep = store.get_sweep(sweep_id)
    n_folds = sweep_folds(sweep["base"])
    points = store.sweep_points(sweep_id)
    runs = store.sweep_runs(sweep_id)
    fold_means = {}
    for run in runs:
        scores = [f["lwlrap"] for f in store.fold_scores(run["run_id"])]
        fold_means[run["run_id"]] = sum(scores) / len(scores) if scores else None
    keys = sorted({k for p in points for k in p["settings"]})
    rows = []
    for p in points:
        mine = [r for r in runs if r["point"] == p["point"]]
        complete = [r for r in mine if r["folds_done"] >= n_folds]
        cv_mean, cv_std = mean_std([r["cv_lwlrap"] for r in complete])
        fold_mean, fold_std = mean_std([fold_means[r["run_id"]] for r in mine])
        rows.append({**{k: p["settings"].get(k) for k in keys}, "point": p["point"], "rank": None,
                     "state": _state(mine, n_folds), "decision": p["decision"] or "", "screen": p["screen_lwlrap"],
                     "cv_mean": cv_mean, "cv_std": cv_std, "fold_mean": fold_mean, "fold_std": fold_std,
                     "seeds": len(mine), "folds_done": f"{sum(r['folds_done'] for r in mine)}/{n_folds * len(mine)}",
                     "runs": " ".join(r["run_id"] for r in mine), "reason": p["reason"]})
    # Rank: completed points by their out-of-fold mean, then the rest by their screening score.
    order = sorted(rows, key=lambda r: (r["cv_mean"] is None, -(r["cv_mean"] or 0.0),
                                        r["screen"] is None, -(r["screen"] or 0.0), r["point"]))
    for rank, row in enumerate(order, 1):
        if row["cv_mean"] is not None or row["screen"] is not None:
            row["rank"] = rank
    best = order[0]["point"] if order and order[0]["cv_mean"] is not None else None
    flat = flatten(sweep["base"])
    default = next((p["point"] for p in points if all(flat.get(k) == v for k, v in p["settings"].items())), None)
    table = SweepTable(sweep=sweep, keys=keys, rows=rows, best_point=best, default_point=default)
    if best is not None:
        table.classes = _class_rows(store, [r for r in runs if r["point"] == best and r["folds_done"] >= n_folds],
                                    [r for r in runs if r["point"] == default and r["folds_done"] >= n_folds])
    return table


def _class_rows(store: "Store", best: list[dict], default: list[dict]) -> list[dict]:
    """Per class: mean out-of-fold LRAP over the best point's runs, the default point's, and the difference."""
    def means(runs: list[dict]) -> tuple[dict[int, float], dict[int, str]]:
        values: dict[int, list[float]] = {}
        names: dict[int, str] = {}
        for run in runs:
            for c in store.class_scores(run["run_id"]):
                names[c["class_idx"]] = c["class_name"]
                if c["lrap"] is not None:
                    values.setdefault(c["class_idx"], []).append(c["lrap"])
        return {k: sum(v) / len(v) for k, v in values.items()}, names

    best_lrap, names = means(best)
    default_lrap, _ = means(default)
    rows = [{"class_idx": k, "class_name": names[k], "best": best_lrap.get(k), "default": default_lrap.get(k),
             "delta": None if k not in best_lrap or k not in default_lrap else best_lrap[k] - default_lrap[k]}
            for k in sorted(names)]
    return sorted(rows, key=lambda r: (r["delta"] is None, -(r["delta"] or 0.0), r["class_idx"]))


def cancel_sweep(store: "Store", sweep_id: int) -> int:
    """Cancel what of a sweep has not started (its queued jobs) and stop it from queueing more."""
    return store.cancel_sweep(sweep_id)


def complete_point(store: "Store", sweep_id: int, point: int) -> list[int]:
    """Override a screening decision: queue every fold of a screened-out point's runs."""
    return store.complete_point(sweep_id, point)
