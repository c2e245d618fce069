"""A run's folder: where each artifact lives, and its atomic saves and checked loads.

``runs/<run_id>/`` beside the database holds ``config.json`` (the resolved
spec), ``mel_stats.npz``, ``fold<k>/best.pt`` (the checkpoint used later),
``fold<k>/last.pt`` and ``fold<k>/last.prev.pt`` (resume state: the newest and
the one before), ``fold<k>/val_pred.npy``, ``oof.npy`` (curated CSV order),
``test.npy`` (``sample_submission.csv`` order), ``test_logits_fold<k>.npy``,
``submission.csv``, ``job.log`` and ``owner.json``. Every write goes through
:mod:`engine.atomic`. numpy and stdlib only: the console reads run
folders through this class too.

A run folder belongs to exactly one run of one database. ``owner.json`` (the
marker) names the database's id (``meta.database_id``), the run id and the
run's config hash; :meth:`RunFolder.claim` writes it when the run is created
and checks it before anything else is written or resumed there, refusing
(:class:`FolderNotOwned`, naming both) a folder of another database, another
run or another configuration. A folder without a marker is empty (claimed),
or was written before markers existed: it is adopted when the database's own
row for the run points at this folder with the config hash its
``config.json`` records, and refused otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import DamagedFile, load_json, load_npy, load_npz, save_json, save_npy, save_npz
from engine.errors import FsatError

__all__ = ["OWNER_FILE", "FolderNotOwned", "RunFolder", "RunOwner"]

#: The marker file that says which run of which database a run folder belongs to.
OWNER_FILE = "owner.json"
#: Files a folder may hold and still count as empty when it has no marker: the worker's log of an
#: attempt that died before the run began holds no result.
_NOT_RESULTS = ("job.log",)


class FolderNotOwned(FsatError):
    """A run folder (or a checkpoint in it) that belongs to another run, database or configuration."""


@dataclass(frozen=True)
class RunOwner:
    """Who a run folder belongs to: a database (its id, and its path for messages), a run, a config hash.

    ``config_hash`` is '' until the run records it; ``database`` is only
    said in messages (a database may be moved), never compared.
    """

    database_id: str
    run_id: str
    config_hash: str = ""
    database: str = ""

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, RunOwner) and (self.database_id, self.run_id, self.config_hash)
                == (other.database_id, other.run_id, other.config_hash))

    def __hash__(self) -> int:
        return hash((self.database_id, self.run_id, self.config_hash))

    def describe(self) -> str:
        """``run R of database ID (path)``, for messages."""
        where = f" ({self.database})" if self.database else ""
        return f"run {self.run_id} of database {self.database_id}{where}"

    def to_dict(self) -> dict[str, str]:
        """Plain data (the marker's content; a checkpoint's ``owner``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunOwner":
        """Back from :meth:`to_dict` (unknown keys ignored)."""
        return cls(**{k: str(data.get(k) or "") for k in ("database_id", "run_id", "config_hash", "database")})

    def mismatch(self, other: "RunOwner") -> str:
        """What differs between two owners ('' when they agree; an empty config hash agrees with any)."""
        if self.database_id != other.database_id:
            return "another database"
        if self.run_id != other.run_id:
            return "another run"
        if self.config_hash and other.config_hash and self.config_hash != other.config_hash:
            return f"another configuration (config hash {other.config_hash}, not {self.config_hash})"
        return ""


@dataclass(frozen=True)
class RunFolder:
    """The folder of one run. Paths only until something is saved; nothing is created on construction."""

    path: Path

    def __init__(self, path: Path | str) -> None:
        object.__setattr__(self, "path", Path(path))

    @classmethod
    def of(cls, run: dict, db_path: Path | str | None = None) -> "RunFolder":
        """The folder of a run row (``run_dir``); a relative one is taken relative to the database's folder."""
        folder = Path(str(run.get("run_dir") or ""))
        if db_path is not None and not folder.is_absolute():
            folder = Path(db_path).parent / folder
        return cls(folder)

    # -- paths ----------------------------------------------------------------------------

    def create(self) -> "RunFolder":
        """Make the folder (and its parents) if missing."""
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # -- who the folder belongs to --------------------------------------------------------

    @property
    def marker(self) -> Path:
        return self.path / OWNER_FILE

    def owner(self) -> RunOwner | None:
        """The run this folder belongs to, from its marker; None when it has none."""
        if not self.marker.exists():
            return None
        return RunOwner.from_dict(load_json(self.marker, remedy="it is the run folder's marker; restore it from "
                                            "a backup, or move the folder away and queue the job again"))

    def claim(self, owner: RunOwner, *, known_run: dict | None = None) -> "RunFolder":
        """Make sure this folder is ``owner``'s (creating it and its marker if need be); refuse it otherwise.

        With a marker: the database id and run id must be the owner's, and
        the config hashes must agree when both are known (a marker written
        before the run knew its hash gets it now). Without one: a folder
        holding nothing but ``job.log`` is claimed; a folder with results
        is adopted only when ``known_run`` (this database's row for
        ``owner.run_id``) points at this folder with the config hash that
        the folder's ``config.json`` records. Anything else raises
        :class:`FolderNotOwned` naming the folder and both owners, before
        a byte is written.
        """
        self.create()
        found = self.owner()
        if found is None:
            found = self._adopt(owner, known_run)
        problem = found.mismatch(owner)
        if problem:
            raise FolderNotOwned(
                f"{self.path}: this run folder belongs to {found.describe()}"
                f"{f', config hash {found.config_hash}' if found.config_hash else ''}, not to "
                f"{owner.describe()}{f', config hash {owner.config_hash}' if owner.config_hash else ''} "
                f"({problem}); nothing was written there. Keep each database in a folder of its own "
                "(or set $FSAT_RUNS), or queue a new job for another configuration")
        if owner.config_hash and found.config_hash != owner.config_hash or (owner.database and not found.database):
            found = RunOwner(database_id=found.database_id, run_id=found.run_id,
                             config_hash=found.config_hash or owner.config_hash,
                             database=found.database or owner.database)
            save_json(self.marker, found.to_dict())
        return self

    def claim_for(self, store: Any, run_id: str, config_hash: str = "") -> "RunFolder":
        """:meth:`claim` for run ``run_id`` of ``store`` (its id and path; its row for the run decides adoption)."""
        owner = RunOwner(database_id=store.database_id(), run_id=run_id, config_hash=config_hash,
                         database=str(Path(store.path).resolve()))
        return self.claim(owner, known_run=store.get_run(run_id))

    def _adopt(self, owner: RunOwner, known_run: dict | None) -> RunOwner:
        """The marker of a folder that has none: written for an empty folder or an adopted one, else refused."""
        results = sorted(p.name for p in self.path.iterdir()
                         if p.name not in _NOT_RESULTS and not (p.name.startswith(".") and p.name.endswith(".tmp")))
        if not results:
            save_json(self.marker, owner.to_dict())
            return owner
        recorded = self._recorded_config()
        row_here = (known_run is not None and str(known_run.get("run_id", owner.run_id)) == owner.run_id
                    and bool(known_run.get("run_dir"))
                    and Path(str(known_run["run_dir"])).resolve() == self.path.resolve())
        same_config = (recorded is None or (str(recorded.get("run_id", owner.run_id)) == owner.run_id
                                            and str(recorded.get("config_hash", "")) ==
                                            str((known_run or {}).get("config_hash", ""))))
        if not (row_here and same_config):
            shown = ", ".join(results[:6]) + (", ..." if len(results) > 6 else "")
            why = ("this database has no run there" if not row_here else
                   "its config.json records another run or configuration than this database's row")
            raise FolderNotOwned(
                f"{self.path}: holds files ({shown}) but no marker ({OWNER_FILE}) saying whose they are, and "
                f"{why}; they may be another database's run. Nothing was written there: move the folder "
                f"away (or keep each database in a folder of its own) and queue the job again")
        adopted = RunOwner(database_id=owner.database_id, run_id=owner.run_id,
                           config_hash=str((known_run or {}).get("config_hash") or ""), database=owner.database)
        save_json(self.marker, adopted.to_dict())
        return adopted

    def _recorded_config(self) -> dict | None:
        """``config.json`` when it can be read, else None."""
        if not self.config.exists():
            return None
        try:
            data = load_json(self.config)
        except DamagedFile:
            return None
        return data if isinstance(data, dict) else None

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def mel_stats(self) -> Path:
        return self.path / "mel_stats.npz"

    @property
    def oof(self) -> Path:
        return self.path / "oof.npy"

    @property
    def test(self) -> Path:
        return self.path / "test.npy"

    @property
    def submission(self) -> Path:
        return self.path / "submission.csv"

    @property
    def log(self) -> Path:
        return self.path / "job.log"

    def fold_dir(self, fold: int) -> Path:
        """``fold<k>/``."""
        return self.path / f"fold{fold}"

    def best(self, fold: int) -> Path:
        """The fold's best checkpoint (the one inference uses)."""
        return self.fold_dir(fold) / "best.pt"

    def last(self, fold: int) -> Path:
        """The fold's newest resume state."""
        return self.fold_dir(fold) / "last.pt"

    def val_pred(self, fold: int) -> Path:
        """The best epoch's validation predictions of a fold."""
        return self.fold_dir(fold) / "val_pred.npy"

    def test_logits(self, fold: int) -> Path:
        """One fold model's mean TTA logits on the test set (infer runs)."""
        return self.path / f"test_logits_fold{fold}.npy"

    # -- saves and loads ------------------------------------------------------------------

    def save_array(self, path: Path, array: np.ndarray) -> Path:
        """An array written atomically."""
        return save_npy(path, array)

    def load_array(self, path: Path, *, remedy: str | None = None) -> np.ndarray:
        """An array saved by :meth:`save_array`; a damaged file raises DamagedFile naming it."""
        return load_npy(path, **({"remedy": remedy} if remedy else {}))

    def save_config(self, record: dict[str, Any]) -> Path:
        """``config.json``."""
        return save_json(self.config, record)

    def load_config(self) -> dict[str, Any]:
        """``config.json`` as written (DamagedFile when it is not JSON)."""
        return load_json(self.config)

    def save_json(self, name: str, record: Any) -> Path:
        """Another JSON record in the folder (``embeddings.json`` ...)."""
        return save_json(self.path / name, record)

    def save_mel_stats(self, mean: np.ndarray, std: np.ndarray) -> Path:
        """``mel_stats.npz`` (per-mel mean and std over the curated clips)."""
        return save_npz(self.mel_stats, mean=np.asarray(mean), std=np.asarray(std))

    def load_mel_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(mean, std)`` from ``mel_stats.npz``; None when absent. DamagedFile when torn."""
        if not self.mel_stats.exists():
            return None
        stats = load_npz(self.mel_stats, "mean", "std")
        return stats["mean"], stats["std"]

    def load_oof(self, shape: tuple[int, int], dtype: Any = np.float32) -> np.ndarray:
        """``oof.npy`` when present and of ``shape``, else an all-NaN array of ``shape`` (nothing scored yet).

        A file of another shape or a damaged one raises (DamagedFile names it).
        """
        if not self.oof.exists():
            return np.full(shape, np.nan, dtype=dtype)
        oof = self.load_array(self.oof)
        if oof.shape != tuple(shape):
            raise DamagedFile(self.oof, f"shape {oof.shape}, expected {tuple(shape)}",
                              "delete it and queue the job again to recompute it")
        return oof
