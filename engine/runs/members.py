"""Ensemble members: which runs can join a blend, the checks their scores must pass, CV weights, and blends.

One copy of the member logic for the ensemble job (``engine.jobs.ensemble``)
and the console's ensemble screen (``fsat_console.screens.ensemble``, which
keeps only its interface): the same checks with the same messages, the same
CV weights, the same ``engine.ensemble.blend`` call. So the console's live
score and the job's recorded one agree because they are computed by the same
code.

numpy and ``engine.ensemble`` are imported inside the functions that blend:
the console starts without numpy and loads it in its worker thread.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from engine import presets
from engine.errors import DataError, FsatError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["BlendBench", "BlendOutcome", "BlendState", "Candidate", "GREEDY_STEPS", "MemberProblem",
           "calibration_folds", "check_oof", "check_test", "cv_weights", "fold_of_clips", "ensemble_spec", "find_candidates", "read_scores"]

#: Picks of greedy forward selection (the ensemble spec's default ``greedy_steps``).
GREEDY_STEPS = 20


def fold_of_clips(fnames: Sequence[str], folds: dict[str, int] | None) -> "np.ndarray":
    """The stored fold of each curated clip (in ``fnames`` order), -1 where a clip has none."""
    import numpy as np

    folds = folds or {}
    return np.array([folds.get(f, -1) for f in fnames], dtype=np.int64)


def calibration_folds(fnames: Sequence[str], folds: dict[str, int] | None) -> "np.ndarray | None":
    """The folds a calibrated blend is cross-fitted over: every clip's stored fold, or None unless all have one.

    The ensemble job and the console's blend both call this, so a calibrated
    OOF score is cross-fitted (held out) in both or in-sample in both.
    """
    fold_of = fold_of_clips(fnames, folds)
    return fold_of if folds and len(fold_of) and (fold_of >= 0).all() else None


def read_scores(path: Path) -> "np.ndarray":
    """A member's ``oof.npy`` or ``test.npy``; MemberProblem naming the file when it cannot be read."""
    from engine.atomic import DamagedFile, load_npy

    try:
        return load_npy(path, remedy="run that member again to rewrite it, or leave it out of the blend")
    except FileNotFoundError:
        raise MemberProblem(f"{path} is gone (moved or deleted)", "oof.npy is gone") from None
    except DamagedFile as err:
        raise MemberProblem(str(err), f"unreadable {Path(path).name}") from None


def check_oof(path: Path, array: "np.ndarray", truth: "np.ndarray", dataset_name: str | None = None) -> None:
    """MemberProblem unless ``array`` holds finite scores for every curated clip and class of ``truth``."""
    import numpy as np

    where = f"{dataset_name!r}" if dataset_name else "the dataset"
    if array.ndim != 2 or array.shape != truth.shape:
        raise MemberProblem(f"{path} has shape {tuple(array.shape)} but {where} has "
                            f"{truth.shape[0]} curated clips × {truth.shape[1]} classes; it was made on "
                            "another dataset or another version of it",
                            f"shape {'×'.join(str(n) for n in array.shape)}, "
                            f"expected {truth.shape[0]}×{truth.shape[1]}")
    complete = np.isfinite(array).all(axis=1)
    if not complete.all():
        missing = int((~complete).sum())
        raise MemberProblem(f"{path} has no scores for {missing} of {len(complete)} curated clips "
                            f"(first: row {int(np.flatnonzero(~complete)[0])}; not every fold was trained or "
                            "inferred); only runs that covered every fold can be blended",
                            f"{missing} of {len(complete)} clips unscored")


def check_test(path: Path, array: "np.ndarray", n_test: int, n_classes: int) -> None:
    """MemberProblem unless ``array`` holds finite scores ``[n_test, n_classes]``."""
    import numpy as np

    if array.shape != (n_test, n_classes):
        raise MemberProblem(f"{path} has shape {tuple(array.shape)}; the dataset has {n_test} test clips and "
                            f"{n_classes} classes", "test.npy of another shape")
    if not np.isfinite(array).all():
        raise MemberProblem(f"{path} holds NaN or inf scores; infer it again", "test.npy holds NaN")


@dataclass(frozen=True)
class Candidate:
    """A finished run with out-of-fold scores on disk."""

    run_id: str
    name: str
    kind: str
    model: str
    cv_lwlrap: float | None
    dataset_id: int | None
    run_dir: Path
    has_test: bool
    #: The run it was made from (a TTA run's trained run), if any.
    parent: str | None = None

    @property
    def oof_path(self) -> Path:
        """``<run_dir>/oof.npy``."""
        return self.run_dir / "oof.npy"


def find_candidates(store: Any, runs: Sequence[dict], db_path: Path,
                    row_cache: dict[str, dict] | None = None) -> tuple[list[Candidate], dict[int, dict]]:
    """Finished runs (of ``Store.list_runs`` rows) whose run folder holds ``oof.npy``, and their datasets.

    ``row_cache`` keeps the run folder and dataset of runs already looked up
    (they do not change once a run is done). A relative run folder is taken
    relative to the database's folder. Returns the candidates in the order of
    ``runs`` and dataset id -> dataset row (classes decoded).
    """
    cache = row_cache if row_cache is not None else {}
    found: list[Candidate] = []
    datasets: dict[int, dict] = {}
    for r in runs:
        if r.get("status") != "done":
            continue
        run_id = str(r["run_id"])
        row = cache.get(run_id)
        if row is None and "run_dir" in r:
            # run_summary carries the folder and dataset (schema 3): no per-run lookup.
            row = cache[run_id] = {"run_dir": r.get("run_dir") or "", "dataset_id": r.get("dataset_id")}
        if row is None:
            full = store.get_run(run_id)
            if full is None:
                continue
            row = cache[run_id] = {"run_dir": full.get("run_dir") or "", "dataset_id": full.get("dataset_id")}
        if not row["run_dir"]:
            continue
        run_dir = Path(row["run_dir"]).expanduser()
        if not run_dir.is_absolute():
            run_dir = Path(db_path).resolve().parent / run_dir
        if not (run_dir / "oof.npy").is_file():
            continue
        dataset_id = row["dataset_id"]
        if dataset_id is not None and dataset_id not in datasets:
            dataset = store.get_dataset(int(dataset_id))
            if dataset is not None:
                datasets[int(dataset_id)] = dataset
        found.append(Candidate(run_id=run_id, name=r.get("name") or "", kind=r.get("kind") or "",
                               model=r.get("model") or "", cv_lwlrap=r.get("cv_lwlrap"),
                               dataset_id=None if dataset_id is None else int(dataset_id),
                               run_dir=run_dir, has_test=(run_dir / "test.npy").is_file(),
                               parent=r.get("parent_run_id")))
    return found, datasets


@dataclass
class BlendState:
    """What the user has chosen: the dataset, the members, their weights, method, calibration.

    ``weights`` is None while the members have CV weights (proportional to each
    member's out-of-fold LWLRAP, what ``fsat ensemble`` and the ensemble job use
    when the spec gives no weights); otherwise it holds one explicit weight per
    member. Kept on the app, so leaving the ensemble screen and coming back
    keeps the blend.
    """

    dataset_id: int | None = None
    #: Member run ids.
    member_ids: set[str] = field(default_factory=set)
    #: Member run id -> explicit weight (any non-negative number; the blend scales them to sum 1),
    #: or None for CV weights.
    weights: dict[str, float] | None = None
    method: str = "auto"
    calibrate: bool = True

    @property
    def cv_weighted(self) -> bool:
        """True while the weights are the CV default (the saved spec then gives none)."""
        return self.weights is None

    def key(self) -> tuple:
        """Everything a blend's score depends on."""
        weights = None if self.weights is None else tuple(sorted(self.weights.items()))
        return (self.dataset_id, tuple(self.members()), weights, self.method, self.calibrate)

    def members(self) -> list[str]:
        """Member run ids in a fixed order (the order of the saved spec)."""
        return sorted(self.member_ids)

    def explicit_weights(self) -> list[float] | None:
        """The explicit weights in ``members()`` order, or None for CV weights."""
        return None if self.weights is None else [float(self.weights[m]) for m in self.members()]

    def add(self, run_id: str) -> None:
        """Put a run in the blend: with CV weights it gets its CV weight, else an explicit weight of 1."""
        self.member_ids.add(run_id)
        if self.weights is not None:
            self.weights.setdefault(run_id, 1.0)

    def remove(self, run_id: str) -> None:
        """Take a run out of the blend; an empty blend starts again with CV weights."""
        self.member_ids.discard(run_id)
        if self.weights is not None:
            self.weights.pop(run_id, None)
        if not self.member_ids:
            self.weights = None

    def clear(self) -> None:
        """No members, CV weights."""
        self.member_ids.clear()
        self.weights = None

    def set_weights(self, weights: dict[str, float]) -> None:
        """Explicit weights; their keys become the members."""
        self.member_ids = set(weights)
        self.weights = {k: float(w) for k, w in weights.items()}


def cv_weights(members: Sequence[str], oof_lwlrap: dict[str, float]) -> dict[str, float] | None:
    """CV weights as the console shows them: proportional to each member's OOF LWLRAP, averaging 1.

    The blend scales weights to sum 1, so these give the same blend as
    ``engine.ensemble.weights_from_cv``; the average of 1 keeps them on the
    scale that ``+``/``-`` step. None while a member's OOF LWLRAP is not known
    yet, or when they are all zero.
    """
    if not members or any(m not in oof_lwlrap for m in members):
        return None
    scores = [float(oof_lwlrap[m]) for m in members]
    total = sum(scores)
    if not total > 0:
        return None
    return {m: len(members) * score / total for m, score in zip(members, scores)}


@dataclass
class BlendOutcome:
    """The score of one blend, or why there is none."""

    key: tuple
    #: Member run ids that were blended and their weights scaled to sum 1.
    members: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    oof_lwlrap: float | None = None
    raw_oof_lwlrap: float | None = None
    #: The method used (``auto`` resolved), every method scored (method -> OOF LWLRAP or None) and
    #: the warning of a blend below its best member.
    method: str = ""
    candidates: dict[str, float | None] = field(default_factory=dict)
    warning: str | None = None
    #: Each loaded member's own OOF LWLRAP.
    member_lwlrap: dict[str, float] = field(default_factory=dict)
    #: Members left out, with the reason (unreadable file, other dataset, wrong shape, missing folds).
    problems: dict[str, str] = field(default_factory=dict)
    #: The same reasons in a few words.
    short_problems: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    n_clips: int = 0
    seconds: float = 0.0


class MemberProblem(FsatError):
    """A run's out-of-fold scores cannot take part in a blend; the message says why.

    ``short`` is a few words for a table cell.
    """

    def __init__(self, message: str, short: str) -> None:
        super().__init__(message)
        self.short = short


class BlendBench:
    """Curated truth and members' out-of-fold arrays, each read once, and blends of them.

    Arrays are cached by file version (modification time and size), so an
    ``oof.npy`` rewritten by a resumed job is read again. Use under ``lock``:
    the console's blend and greedy workers share one bench.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._truth: dict[int, tuple[tuple, Any]] = {}
        self._oof: dict[str, tuple[tuple, Any, float]] = {}

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        st = path.stat()
        return (st.st_mtime_ns, st.st_size)

    def truth(self, dataset: dict) -> "np.ndarray":
        """The curated label matrix [clips, classes] of a dataset row (classes in its order)."""
        from engine.data.labels import parse_label_csv

        path = Path(dataset["root"]) / "train_curated.csv"
        try:
            stamp = self._stamp(path)
        except OSError:
            raise DataError("file not found: the dataset folder moved or was deleted; the blend needs "
                            "the curated labels", file=path) from None
        cached = self._truth.get(int(dataset["id"]))
        if cached is not None and cached[0] == stamp:
            return cached[1][1]
        fnames, truth = parse_label_csv(path, list(dataset["classes"]))
        self._truth[int(dataset["id"])] = (stamp, (list(fnames), truth))
        return truth

    def fold_rows(self, dataset: dict, folds: dict[str, int] | None) -> "np.ndarray | None":
        """The stored fold of each curated clip in CSV order, or None unless every clip has one."""
        self.truth(dataset)
        return calibration_folds(self._truth[int(dataset["id"])][1][0], folds)

    def member_oof(self, candidate: Candidate, dataset: dict, truth: "np.ndarray") -> tuple["np.ndarray", float]:
        """A member's OOF scores checked against the truth, and its own OOF LWLRAP; MemberProblem if unusable."""
        import numpy as np

        from engine.metrics import lwlrap

        if candidate.dataset_id != dataset["id"]:
            raise MemberProblem(f"run {candidate.run_id} was made on another dataset (id {candidate.dataset_id}) "
                                f"than the blend ({dataset.get('name')!r}, id {dataset['id']}); members must "
                                "score the same curated clips", "another dataset")
        path = candidate.oof_path
        try:
            stamp = self._stamp(path)
        except OSError:
            raise MemberProblem(f"{path} is gone (moved or deleted)", "oof.npy is gone") from None
        cached = self._oof.get(candidate.run_id)
        if cached is None or cached[0] != stamp:
            array = read_scores(path)
            score = float("nan")
            if array.ndim == 2 and array.shape == truth.shape and np.isfinite(array).all():
                score = float(lwlrap(truth, array))
            cached = self._oof[candidate.run_id] = (stamp, array, score)
        array, score = cached[1], cached[2]
        check_oof(path, array, truth, dataset.get("name"))
        return array, score

    def evaluate(self, dataset: dict | None, members: Sequence[Candidate], weights: Sequence[float] | None = None,
                 *, method: str, calibrate: bool, key: tuple, folds: dict[str, int] | None = None) -> BlendOutcome:
        """Blend ``members`` and score the blend; problems are reported, not raised.

        ``folds`` (curated fname -> fold, the dataset's stored folds) makes the
        calibrated OOF score cross-fitted, as the ensemble job records it.

        ``weights`` (one per member) are explicit weights; None gives CV
        weights, as the ensemble job does for a spec without weights: each
        member's ``cv_lwlrap`` is its OOF LWLRAP computed from its ``oof.npy``
        and ``engine.ensemble.blend`` weights the members in proportion.
        """
        from engine.ensemble import Member, blend

        if weights is not None and len(weights) != len(members):
            raise ValueError(f"got {len(weights)} weights for {len(members)} members")

        t0 = time.perf_counter()
        outcome = BlendOutcome(key=key)
        if not members:
            return outcome
        if dataset is None:
            outcome.error = "these runs have no dataset recorded, so there is no curated truth to score against"
            return outcome
        try:
            truth = self.truth(dataset)
        except FsatError as err:
            outcome.error = str(err)
            return outcome
        outcome.n_clips = int(truth.shape[0])
        usable: list[tuple[Candidate, float | None, Any, float]] = []
        for k, candidate in enumerate(members):
            try:
                array, score = self.member_oof(candidate, dataset, truth)
            except MemberProblem as problem:
                outcome.problems[candidate.run_id] = str(problem)
                outcome.short_problems[candidate.run_id] = problem.short
                continue
            outcome.member_lwlrap[candidate.run_id] = score
            usable.append((candidate, None if weights is None else float(weights[k]), array, score))
        if not usable:
            return outcome
        explicit = None if weights is None else [w for _, w, _, _ in usable]
        if explicit is not None and not sum(explicit) > 0:
            outcome.error = "every member's weight is zero; press + on one of them (or c for CV weights)"
            return outcome
        try:
            # The same members the ensemble job builds: cv_lwlrap is the OOF LWLRAP of oof.npy.
            result = blend([Member(c.run_id, a, None, score) for c, _, a, score in usable], truth,
                           weights=explicit, method=method, calibrate=calibrate,
                           folds=self.fold_rows(dataset, folds))
        except ValueError as err:
            outcome.error = f"cannot blend: {err}"
            return outcome
        outcome.members = [c.run_id for c, _, _, _ in usable]
        outcome.weights = [float(w) for w in result.weights]
        outcome.oof_lwlrap = float(result.oof_lwlrap)
        outcome.raw_oof_lwlrap = float(result.raw_oof_lwlrap)
        outcome.method = result.method
        outcome.candidates = {c.method: c.oof_lwlrap for c in result.candidates}
        outcome.warning = result.warning
        outcome.seconds = time.perf_counter() - t0
        return outcome

    def greedy(self, dataset: dict, candidates: Sequence[Candidate], *, calibrate: bool = True,
               folds: dict[str, int] | None = None,
               max_steps: int = GREEDY_STEPS) -> tuple[dict[str, float], list[float], dict[str, str]]:
        """Greedy forward selection (with replacement) over every usable candidate, scored with ``auto``.

        Every step takes the best blend method (``auto``), whatever method was
        shown before, so the picks do not depend on an earlier choice; the
        blend of the picks is then an ``auto`` blend. Left out: runs without
        ``test.npy`` (their blend could write no submission) and a trained run
        whose TTA run is a candidate too (the two are nearly the same scores;
        the TTA run stands for it). Returns member -> pick count (the
        weights), the OOF LWLRAP after each pick (the blend's own score,
        cross-fitted over ``folds``, as the ensemble job scores it), and the
        candidates left out with why (in a few words).
        """
        from engine.ensemble import AUTO, Member, greedy_forward_selection

        truth = self.truth(dataset)
        usable: list[tuple[Candidate, Any]] = []
        problems: dict[str, str] = {}
        ids = {c.run_id for c in candidates}
        tta_of = {c.parent: c.run_id for c in candidates if c.kind == "infer" and c.parent in ids}
        for candidate in candidates:
            if not candidate.has_test:
                problems[candidate.run_id] = "no test.npy: no submission"
                continue
            if candidate.run_id in tta_of:
                problems[candidate.run_id] = f"its TTA run {tta_of[candidate.run_id]} stands for it"
                continue
            try:
                usable.append((candidate, self.member_oof(candidate, dataset, truth)[0]))
            except MemberProblem as problem:
                problems[candidate.run_id] = problem.short
        if not usable:
            return {}, [], problems
        picks, _, history = greedy_forward_selection(
            [Member(c.run_id, a, None, c.cv_lwlrap) for c, a in usable], truth, max_steps=max_steps,
            method=AUTO, calibrate=calibrate,
            folds=self.fold_rows(dataset, folds))
        counts = Counter(usable[k][0].run_id for k in picks)
        return {run_id: float(n) for run_id, n in counts.items()}, history, problems


def ensemble_spec(state: BlendState, name: str = "") -> Any:
    """The validated ``EnsembleSpec`` of what is shown (ConfigError names the bad field).

    With CV weights the spec's ``weights`` is empty, so the job weights the
    members by their OOF LWLRAP as the console did; otherwise it holds the
    explicit weights, in member order.
    """
    members = state.members()
    overrides = [f"members={_toml(members)}", f"weights={_toml(state.explicit_weights() or [])}",
                 f"method={_toml(state.method)}", f"calibrate={'true' if state.calibrate else 'false'}",
                 "greedy=false"]
    if name:
        overrides.append(f"name={_toml(name)}")
    return presets.resolve_spec("ensemble", overrides=overrides)


def _toml(value: object) -> str:
    import json

    return json.dumps(value)
