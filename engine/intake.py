"""The one way to queue a job: the table of job kinds and every check that can be made before a job runs.

``fsat queue``, ``fsat ensemble`` and every console dialog go through here:

- :func:`prepare` builds a job's spec (a preset or config file, ``key=value``
  overrides, a dataset root) and runs every queue-time check: the spec's own
  validation, the dataset root, the folds stored for that dataset and the CSV
  column ``data.group_column`` names, the runs the job names (they must
  exist, or be written by a queued job, and be of a kind that can serve), a
  curriculum's teacher. A mistake is a :class:`~engine.errors.ConfigError`
  naming the setting at fault, with the same words whichever front end asked.
- :func:`submit` queues the prepared job under the one default name rule.

:data:`KINDS` is the table of job kinds; every other list of kinds reads it
(the worker's job modules, the CLI's ``--data`` and names, the console's
trained-run checks, the filter help). A new kind is one row here, one spec
class in ``engine.specs`` (``@job_spec``) and one job module under
``engine/jobs/`` (docs/design.md, "Adding a job kind").

This module imports the standard library, ``engine.errors`` and
``engine.specs`` (``engine.curriculum``, numpy, only to check a teacher): the
console imports it, and import-linter contracts (``pyproject.toml``) keep it
below the worker, the jobs and every torch layer. The store is passed in,
never imported, so the store can sit below it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from engine import presets, specs
from engine.errors import ConfigError
from engine.runs.kinds import run_arch

if TYPE_CHECKING:
    from engine.store import Store


@dataclass(frozen=True)
class JobKind:
    """One kind of job: its spec, the module that runs it, and what its runs hold."""

    #: The spec dataclass (``engine.specs``); its ``KIND`` is this kind's name.
    spec: type
    #: The module whose ``run(ctx)`` runs the job in the worker's job process (never imported here).
    module: str
    #: The setting that names a dataset root (``data.root``; a curriculum's ``data_root``, which is
    #: checked against its teacher's), set by ``fsat queue --data`` and the dialogs' data root field.
    #: Empty: the kind takes no dataset root; it uses the dataset of the runs it names.
    root_setting: str
    #: Its runs hold fold checkpoints ``fold<k>/best.pt`` and a training spec: they can be inferred,
    #: embed a baseline (cnn14), teach a curriculum.
    fold_checkpoints: bool
    #: Its runs write ``test.npy`` (``sample_submission.csv`` order) beside their ``oof.npy``.
    test_scores: bool
    #: A job's name when none is given: ``(spec, preset) -> name``.
    default_name: Callable[[Any, str | None], str]
    #: Queue-time checks beyond the spec's own validation: ``(store, spec, planned) -> None`` or ConfigError;
    #: ``planned`` maps the run ids a plan being queued will write to their kinds (``engine.plan``).
    check: Callable[["Store", Any, dict[str, str]], None] | None = None
    #: The settings that name runs the job reads (a run id, or a list of them): a queued or running job
    #: that writes one of them becomes the job's parent (``engine.store.plans``), and a plan's steps set them.
    run_settings: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The kind's name (``train``), as the jobs and runs tables record it."""
        return self.spec.KIND

    @property
    def takes_data_root(self) -> bool:
        """Whether a dataset root is one of its settings (:attr:`root_setting`)."""
        return bool(self.root_setting)


def default_run_id(kind: str, job_id: int) -> str:
    """The run id of a job that has not named its run: ``<kind>-<job id, 4 digits>`` (``train-0003``)."""
    return f"{kind}-{job_id:04d}"


def _an(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


# -- queue-time checks of the runs a job names ------------------------------------------------------


def pending_runs(store: "Store") -> dict[str, str]:
    """Run id -> kind of every run a queued or running job will write.

    A job may name such a run: it waits for that job (:func:`submit` records the dependency).
    """
    return {run_id: kind for run_id, (kind, _job) in _pending_jobs(store).items()}


def _pending_jobs(store: "Store") -> dict[str, tuple[str, int]]:
    """Run id -> (kind, job id) of every run a queued or running job will write."""
    return {r["run_id"] or default_run_id(r["kind"], r["id"]): (r["kind"], int(r["id"]))
            for status in ("queued", "running") for r in store.list_jobs(status=status, limit=10**9)}


def named_runs(kind: "JobKind", spec: Any) -> list[str]:
    """The run ids a spec's :attr:`JobKind.run_settings` name, in order."""
    out: list[str] = []
    for setting in kind.run_settings:
        value = getattr(spec, setting, "") or ""
        out.extend([value] if isinstance(value, str) else list(value))
    return [r for r in out if r]


def parent_jobs(store: "Store", prepared: "PreparedJob") -> tuple[int, ...]:
    """The queued or running jobs that write a run the prepared job names: it waits for them."""
    pending = _pending_jobs(store)
    return tuple(sorted({pending[r][1] for r in named_runs(prepared.kind, prepared.spec) if r in pending}))


def _missing_runs(store: "Store", run_ids: Iterable[str], pending: dict[str, str]) -> list[str]:
    return [r for r in run_ids if r not in pending and store.get_run(r) is None]


def _check_infer(store: "Store", spec: specs.InferSpec, planned: dict[str, str]) -> None:
    """The run to infer exists (or a queued job or the plan writes it) and has fold checkpoints."""
    pending = {**pending_runs(store), **planned}
    if _missing_runs(store, [spec.run_id], pending):
        raise ConfigError(f"no run {spec.run_id!r} to infer with, and no queued job makes it (see `fsat runs`)",
                          field="run_id")
    run = store.get_run(spec.run_id)
    run_kind = run["kind"] if run is not None else pending[spec.run_id]
    if not has_fold_checkpoints(run_kind):
        raise ConfigError(f"{spec.run_id!r} is {_an(run_kind)} run; inference needs "
                          f"{' or '.join(_an(k) for k in FOLD_CHECKPOINT_KINDS)} run with fold checkpoints "
                          "(see `fsat runs`)", field="run_id")


def _check_ensemble(store: "Store", spec: specs.EnsembleSpec, planned: dict[str, str]) -> None:
    """Every member exists (or a queued job or the plan writes it)."""
    missing = _missing_runs(store, spec.members, {**pending_runs(store), **planned})
    if missing:
        raise ConfigError(f"no run {', '.join(repr(m) for m in missing)} in the database, and no queued job "
                          "makes it (see `fsat runs`)", field="members")


def _check_curriculum(store: "Store", spec: specs.CurriculumSpec, planned: dict[str, str]) -> None:
    """The teacher (``engine.curriculum.check_teacher``): a finished train run with its fold checkpoints.

    A teacher the plan being queued trains is checked by kind here and in full when the curriculum starts.
    """
    from engine.curriculum import TEACHER_KINDS, check_teacher

    if spec.teacher_run_id in planned:
        if planned[spec.teacher_run_id] not in TEACHER_KINDS:
            raise ConfigError(f"the plan's run {spec.teacher_run_id!r} is {_an(planned[spec.teacher_run_id])} run; "
                              "a curriculum's teacher is a train run", field="teacher_run_id")
        return
    check_teacher(store, spec)


# -- the table --------------------------------------------------------------------------------------

#: Every job kind, by name. The jobs table, the worker, the CLI and the console know no other.
KINDS: dict[str, JobKind] = {k.name: k for k in (
    JobKind(specs.TrainSpec, "engine.jobs.train", root_setting="data.root", fold_checkpoints=True,
            test_scores=False, default_name=lambda spec, preset: preset or "train"),
    JobKind(specs.CurriculumSpec, "engine.jobs.curriculum", root_setting="data_root", fold_checkpoints=True,
            test_scores=False, default_name=lambda spec, preset: f"curriculum of {spec.teacher_run_id}",
            check=_check_curriculum, run_settings=("teacher_run_id",)),
    JobKind(specs.InferSpec, "engine.jobs.infer", root_setting="", fold_checkpoints=False, test_scores=True,
            default_name=lambda spec, preset: f"{spec.run_id} tta{spec.infer.tta_crops}", check=_check_infer,
            run_settings=("run_id",)),
    JobKind(specs.BaselineSpec, "engine.jobs.baseline", root_setting="data.root", fold_checkpoints=False,
            test_scores=True, default_name=lambda spec, preset: preset or "baseline"),
    JobKind(specs.EnsembleSpec, "engine.jobs.ensemble", root_setting="", fold_checkpoints=False, test_scores=True,
            default_name=lambda spec, preset: f"{spec.method} blend of {len(spec.members)}",
            check=_check_ensemble, run_settings=("members",)),
    JobKind(specs.ProbeSpec, "engine.jobs.probe", root_setting="", fold_checkpoints=False, test_scores=False,
            default_name=lambda spec, preset: preset or "probe"),
)}

#: Kinds whose runs hold fold checkpoints and a training spec (they can be inferred, teach, embed).
FOLD_CHECKPOINT_KINDS: tuple[str, ...] = tuple(k.name for k in KINDS.values() if k.fold_checkpoints)
#: Kinds whose runs write ``test.npy`` beside their ``oof.npy``.
TEST_SCORE_KINDS: tuple[str, ...] = tuple(k.name for k in KINDS.values() if k.test_scores)
#: Kinds whose jobs record a run (every kind but the probe, which checks a worker and records nothing).
RUN_KINDS: tuple[str, ...] = tuple(k.name for k in KINDS.values() if k.fold_checkpoints or k.test_scores)


def job_kind(name: str) -> JobKind:
    """The table's row of a kind; ConfigError (field ``kind``) naming the known kinds."""
    if name not in KINDS:
        raise ConfigError(f"unknown job kind {name!r} (known: {', '.join(KINDS)})", field="kind")
    return KINDS[name]


def has_fold_checkpoints(kind: str | None) -> bool:
    """Whether a run of this kind has fold checkpoints (see :data:`FOLD_CHECKPOINT_KINDS`)."""
    return kind in FOLD_CHECKPOINT_KINDS


def can_embed_baseline(run: dict | None) -> bool:
    """Whether a run's fold-0 encoder can embed the baseline: a run with fold checkpoints of a cnn14."""
    return bool(run) and has_fold_checkpoints(run.get("kind")) and run_arch(run) == "cnn14"


# -- the dataset root --------------------------------------------------------------------------------

#: The files a dataset root holds before any job can read it: the class order and test clips, and the
#: curated labels (the FSDKaggle2019 layout; ``engine.data.manifest.load_layout`` reads the rest).
DATA_ROOT_FILES = ("sample_submission.csv", "train_curated.csv")


def missing_root_files(root: Path | str) -> list[str]:
    """Which of :data:`DATA_ROOT_FILES` ``root`` lacks (all of them when it is no folder)."""
    root = Path(root).expanduser()
    return [name for name in DATA_ROOT_FILES if not (root / name).is_file()]


def check_data_root(root: Path | str, *, field: str = "data.root") -> Path:
    """``root`` as an absolute path when it is a dataset root; else ConfigError naming ``field``."""
    if not str(root).strip():
        raise ConfigError(specs.DATA_ROOT_REQUIRED, field=field)
    path = Path(str(root).strip()).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"no such folder: {path}", field=field)
    missing = missing_root_files(path)
    if missing:
        raise ConfigError(f"{path} is not a dataset root: it has no {' and no '.join(missing)} (the FSDKaggle2019 "
                          "layout; `fsat demo-data DIR` writes the demo dataset in it)", field=field)
    return path


def _check_data_section(store: "Store", data: specs.DataSection, typed: Any) -> None:
    """The root, the column ``group_column`` names, and the folds the database holds for that root."""
    root = check_data_root(data.root)
    if data.group_column:
        labels = root / "train_curated.csv"
        try:
            with labels.open(newline="", encoding="utf-8") as handle:
                columns = next(csv.reader(handle), [])
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read the column names: {err}", field="data.group_column",
                              file=labels) from None
        if data.group_column not in columns:
            raise ConfigError(f"no column {data.group_column!r} (columns: {', '.join(columns)}); name an existing "
                              "column or leave it empty", field="data.group_column", file=labels)
    row = next((d for d in store.list_datasets() if d["root"] == str(root)), None)
    mismatch = specs.stored_folds_mismatch(row, group_column=data.group_column, **_fold_settings(typed))
    if mismatch is not None:
        raise mismatch


def _fold_settings(typed: Any) -> dict:
    """The spec's fold count and seed and the field that names them (a train spec's ``train.*``, a baseline's)."""
    train = getattr(typed, "train", None)
    if train is not None and hasattr(train, "n_folds"):
        return {"n_folds": train.n_folds, "fold_seed": train.fold_seed, "folds_field": "train.n_folds"}
    if hasattr(typed, "n_folds"):
        return {"n_folds": typed.n_folds, "fold_seed": typed.fold_seed, "folds_field": "n_folds"}
    return {}


# -- prepare and submit ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedJob:
    """A job that passed every queue-time check: its kind, its validated spec, the preset it came from."""

    kind: JobKind
    spec: Any
    preset: str | None = None

    @property
    def name(self) -> str:
        """The name the job is listed under unless one is given: the spec's, else the kind's rule."""
        return getattr(self.spec, "name", "") or self.kind.default_name(self.spec, self.preset)


def prepare(store: "Store", kind: str, *, preset: str | None = None, config: Path | str | None = None,
            overrides: Iterable[str] = (), data_root: Path | str | None = None,
            spec: Any = None, planned: dict[str, str] | None = None) -> PreparedJob:
    """Build a job's spec and run every queue-time check; ConfigError names the setting at fault.

    The spec comes from ``spec`` (a spec object or its dict, as is), or from
    ``preset`` or ``config`` with ``overrides`` laid over it and ``data_root``
    (empty or None: the preset's) set at the kind's :attr:`JobKind.root_setting`
    before the overrides. ``store`` is read only (runs, pending jobs,
    datasets), so a held write lock never makes this wait. ``planned``: run id ->
    kind of the runs a plan being queued writes before this job (``engine.plan``).
    """
    row = job_kind(kind)
    overrides = list(overrides)
    root = str(data_root).strip() if data_root is not None else ""
    if root and not row.takes_data_root:
        raise ConfigError(f"{kind} jobs take no dataset root (--data): they use the dataset of the runs they name")
    if spec is not None:
        if preset or config or overrides or root:
            raise ValueError("prepare() takes either a spec or a preset, config, overrides and data root")
        typed = specs.from_dict(row.spec, spec if isinstance(spec, dict) else specs.to_dict(spec))
    else:
        root = str(Path(root).expanduser().resolve()) if root else ""
        if root and row.root_setting == "data.root":
            typed = presets.resolve_spec(kind, preset=preset, config=config, overrides=overrides, data_root=root)
        else:
            if root:
                overrides.insert(0, f"{row.root_setting}={json.dumps(root)}")
            typed = presets.resolve_spec(kind, preset=preset, config=config, overrides=overrides)
    data = getattr(typed, "data", None)
    if isinstance(data, specs.DataSection):
        _check_data_section(store, data, typed)
    elif row.root_setting and getattr(typed, row.root_setting, ""):
        check_data_root(getattr(typed, row.root_setting), field=row.root_setting)
    if row.check is not None:
        row.check(store, typed, dict(planned or {}))
    return PreparedJob(row, typed, preset)


def submit(store: "Store", prepared: PreparedJob, *, name: str | None = None, priority: int = 0,
           on_wait: Callable[[], None] | None = None) -> int:
    """Queue a prepared job and return its id; raises QueueFull when the queue is full.

    ``name`` (stripped; empty = none) becomes the spec's name (the run's, for
    kinds whose spec has one) and the job's; without it the job is listed
    under :attr:`PreparedJob.name`. ``on_wait`` is called when another process
    holds the write lock (``Store.write``). A queued or running job that writes
    a run this job names becomes its parent: it is claimed once that job is done.
    """
    spec = prepared.spec
    name = (name or "").strip()
    if name and any(f.name == "name" for f in dataclasses.fields(spec)):
        spec = dataclasses.replace(spec, name=name)
    return store.enqueue(prepared.kind.name, specs.to_dict(spec), name=name or prepared.name, priority=priority,
                         on_wait=on_wait, after=parent_jobs(store, prepared))


__all__ = ["DATA_ROOT_FILES", "FOLD_CHECKPOINT_KINDS", "KINDS", "RUN_KINDS", "TEST_SCORE_KINDS", "JobKind",
           "PreparedJob", "can_embed_baseline", "named_runs", "parent_jobs", "check_data_root", "default_run_id", "has_fold_checkpoints",
           "job_kind", "missing_root_files", "pending_runs", "prepare", "submit"]


def split_overrides(text: str) -> list[str]:
    """Split ``a=1 b=[0, 1] name="my run"`` on spaces outside brackets and quotes.

    The one rule for overrides typed as text: the console's overrides field and
    each ``fsat queue --set`` value (so ``--set "a=1 b=2"`` is two overrides).
    """
    tokens: list[str] = []
    current: list[str] = []
    depth = 0
    quote: str | None = None
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch.isspace() and depth == 0:
            if current:
                tokens.append("".join(current))
                current = []
            continue
        current.append(ch)
    if current:
        tokens.append("".join(current))
    return tokens


def preset_about(path: Path, limit: int = 240) -> str:
    """The preset's opening comment block (what it is for), joined into one line."""
    lines: list[str] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line.startswith("#"):
                    break
                lines.append(line.lstrip("#").strip())
    except OSError:
        return ""
    text = " ".join(x for x in lines if x)
    return text if len(text) <= limit else text[: limit - 1] + "…"
