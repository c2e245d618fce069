"""What the jobs record and read back: datasets and their folds, runs, their scores per epoch, fold and class.

Also an ensemble's members and scored methods, the curriculum's noisy-label
audit and loss swaps, and what a person adds to a run (tags, a note, the
archived flag). Rows of a run come back as :class:`engine.store.rows.RunRow`,
keyed ``run_id``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from engine.store.connection import Connection, StoreError, now as _now
from engine.store.rows import RunRow, run_row
from engine.store.schema import OOF


def _f(x: Any) -> float | None:
    """Floats for SQLite; NaN stored as NULL."""
    if x is None:
        return None
    x = float(x)
    return None if x != x else x


class Records(Connection):
    """Datasets, folds, runs and every score (part of :class:`engine.store.Store`)."""

    # -- datasets and folds -------------------------------------------------------

    def register_dataset(self, root: Path | str, *, name: str, classes: Sequence[str],
                         n_curated: int, n_noisy: int = 0, n_test: int = 0) -> int:
        """Insert or update the dataset at ``root`` (resolved path) and return its id."""
        root = str(Path(root).resolve())
        with self.write() as c:
            values = {"root": root, "name": name, "classes": json.dumps(list(classes)), "n_curated": n_curated,
                      "n_noisy": n_noisy, "n_test": n_test, "now": _now()}
            row = c.execute("SELECT id FROM datasets WHERE root = :root", values).fetchone()
            if row:
                c.execute("UPDATE datasets SET name=:name, classes=:classes, n_curated=:n_curated, "
                          "n_noisy=:n_noisy, n_test=:n_test WHERE id=:id", dict(values, id=row[0]))
                return int(row[0])
            cur = c.execute(
                "INSERT INTO datasets(root, name, classes, n_curated, n_noisy, n_test, created_at) "
                "VALUES (:root, :name, :classes, :n_curated, :n_noisy, :n_test, :now)", values)
            return int(cur.lastrowid)

    def get_dataset(self, dataset_id: int) -> dict | None:
        """The dataset row (classes decoded) or None."""
        rows = self._query("SELECT * FROM datasets WHERE id = :id", {"id": dataset_id})
        if not rows:
            return None
        d = rows[0]
        d["classes"] = json.loads(d["classes"])
        return d

    def list_datasets(self) -> list[dict]:
        """All registered datasets."""
        return self._query("SELECT id, name, root, n_curated, n_noisy, n_test, n_folds, fold_seed, fold_rule "
                           "FROM datasets ORDER BY id")

    def save_folds(self, dataset_id: int, fnames: Sequence[str], folds: Sequence[int], *,
                   seed: int, n_folds: int, rule: str = "multilabel-stratified") -> bool:
        """Store the dataset's folds and the rule that made them unless it has some; True when written.

        The first writer wins so that every run on a dataset uses the same folds,
        even when two jobs compute them at the same time. ``rule`` is
        ``engine.data.folds.fold_rule``'s text.
        """
        with self.write() as c:
            if c.execute("SELECT 1 FROM folds WHERE dataset_id = :id LIMIT 1", {"id": dataset_id}).fetchone():
                return False
            c.executemany("INSERT INTO folds(dataset_id, fname, fold) VALUES (:id, :fname, :fold)",
                          [{"id": dataset_id, "fname": f, "fold": int(k)} for f, k in zip(fnames, folds)])
            c.execute("UPDATE datasets SET fold_seed=:seed, n_folds=:n_folds, fold_rule=:rule WHERE id=:id",
                      {"seed": seed, "n_folds": n_folds, "rule": rule, "id": dataset_id})
            return True

    def get_folds(self, dataset_id: int) -> dict[str, int]:
        """fname -> fold for the dataset (empty when not computed yet)."""
        rows = self._query("SELECT fname, fold FROM folds WHERE dataset_id = :dataset_id",
                           {"dataset_id": dataset_id})
        return {r["fname"]: int(r["fold"]) for r in rows}

    # -- runs and scores ------------------------------------------------------------

    def create_run(self, run_id: str, *, kind: str, job_id: int | None = None,
                   dataset_id: int | None = None, name: str = "", model: str = "",
                   config: dict | None = None, config_hash: str = "", seed: int | None = None,
                   device: str = "", versions: dict | None = None, git_commit: str = "",
                   run_dir: str = "", parent_run_id: str | None = None) -> bool:
        """Create a run, or mark an existing one running again (a resumed job).

        Returns True when the run is new.
        """
        with self.write() as c:
            values = {"id": run_id, "job_id": job_id, "dataset_id": dataset_id, "parent_run_id": parent_run_id,
                      "kind": kind, "name": name, "model": model,
                      "config": json.dumps(config or {}, sort_keys=True), "config_hash": config_hash,
                      "seed": seed, "device": device, "versions": json.dumps(versions or {}, sort_keys=True),
                      "git_commit": git_commit, "run_dir": run_dir, "now": _now()}
            row = c.execute("SELECT id FROM runs WHERE id=:id", values).fetchone()
            if row:
                c.execute("UPDATE runs SET status='running', device=:device, finished_at=NULL WHERE id=:id",
                          values)
                new = False
            else:
                c.execute(
                    "INSERT INTO runs(id, job_id, dataset_id, parent_run_id, kind, name, model, config, "
                    "config_hash, seed, device, versions, git_commit, run_dir, created_at) "
                    "VALUES (:id, :job_id, :dataset_id, :parent_run_id, :kind, :name, :model, :config, "
                    ":config_hash, :seed, :device, :versions, :git_commit, :run_dir, :now)", values)
                new = True
            if job_id is not None:
                c.execute("UPDATE jobs SET run_id=:id WHERE id=:job_id", values)
            return new

    def finish_run(self, run_id: str, *, status: str = "done", cv_lwlrap: float | None = None,
                   test_lwlrap: float | None = None) -> None:
        """Close a run with its out-of-fold (CV) and, when scored, test LWLRAP."""
        with self.write() as c:
            c.execute("UPDATE runs SET status=:status, cv_lwlrap=COALESCE(:cv, cv_lwlrap), "
                      "test_lwlrap=COALESCE(:test, test_lwlrap), finished_at=:now WHERE id=:id",
                      {"status": status, "cv": cv_lwlrap, "test": test_lwlrap, "now": _now(), "id": run_id})

    def set_run_scores(self, run_id: str, *, cv_lwlrap: float | None = None,
                       test_lwlrap: float | None = None) -> None:
        """Update a run's headline scores without changing its status."""
        with self.write() as c:
            c.execute("UPDATE runs SET cv_lwlrap=COALESCE(:cv, cv_lwlrap), "
                      "test_lwlrap=COALESCE(:test, test_lwlrap) WHERE id=:id",
                      {"cv": cv_lwlrap, "test": test_lwlrap, "id": run_id})

    def record_epoch(self, run_id: str, fold: int, epoch: int, *, train_loss: float | None,
                     val_loss: float | None, val_lwlrap: float | None, lr: float | None,
                     seconds: float | None, clips_per_sec: float | None = None,
                     stage: str | None = None, device: str | None = None, peak_gpu_mib: float | None = None,
                     gpu_util: float | None = None, peak_rss_mib: float | None = None) -> None:
        """Record one epoch of one fold (replaces the row when an epoch is re-run after a resume).

        ``stage`` names the curriculum stage the epoch belongs to (None for train runs).
        ``device``, ``peak_gpu_mib``, ``gpu_util`` (%) and ``peak_rss_mib`` are the
        epoch's system figures (None where they do not apply).
        """
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO epochs(run_id, fold, epoch, train_loss, val_loss, val_lwlrap, "
                      "lr, seconds, clips_per_sec, stage, device, peak_gpu_mib, gpu_util, peak_rss_mib) "
                      "VALUES (:run_id, :fold, :epoch, :train_loss, :val_loss, :val_lwlrap, :lr, :seconds, "
                      ":clips_per_sec, :stage, :device, :peak_gpu_mib, :gpu_util, :peak_rss_mib)",
                      {"run_id": run_id, "fold": fold, "epoch": epoch, "train_loss": _f(train_loss),
                       "val_loss": _f(val_loss), "val_lwlrap": _f(val_lwlrap), "lr": _f(lr),
                       "seconds": _f(seconds), "clips_per_sec": _f(clips_per_sec), "stage": stage,
                       "device": device or None, "peak_gpu_mib": _f(peak_gpu_mib), "gpu_util": _f(gpu_util),
                       "peak_rss_mib": _f(peak_rss_mib)})

    def latest_epoch_system(self, run_ids: Sequence[str]) -> dict[str, dict]:
        """Per run: the system figures of its most recently recorded epoch (runs without one are left out)."""
        out: dict[str, dict] = {}
        for run_id in dict.fromkeys(run_ids):
            rows = self._query("SELECT device, peak_gpu_mib, gpu_util, peak_rss_mib FROM epochs "
                               "WHERE run_id=:run_id AND device IS NOT NULL ORDER BY rowid DESC LIMIT 1",
                               {"run_id": run_id})
            if rows:
                out[run_id] = rows[0]
        return out

    def record_fold(self, run_id: str, fold: int, *, lwlrap: float, best_epoch: int | None,
                    n_val: int) -> None:
        """Record a finished fold's best validation LWLRAP."""
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO fold_scores(run_id, fold, lwlrap, best_epoch, n_val) "
                      "VALUES (:run_id, :fold, :lwlrap, :best_epoch, :n_val)",
                      {"run_id": run_id, "fold": fold, "lwlrap": float(lwlrap), "best_epoch": best_epoch,
                       "n_val": int(n_val)})

    def record_class_scores(self, run_id: str, fold: int, class_names: Sequence[str],
                            lrap: Sequence[float], weights: Sequence[float],
                            n_pos: Sequence[int]) -> None:
        """Record per-class LRAP for a fold, or out-of-fold with ``fold=OOF`` (-1)."""
        rows = []
        for i, name in enumerate(class_names):
            value = _f(lrap[i])
            rows.append({"run_id": run_id, "fold": fold, "class_idx": i, "class_name": name, "lrap": value,
                         "weight": float(weights[i]), "n_pos": int(n_pos[i])})
        with self.write() as c:
            c.execute("DELETE FROM class_scores WHERE run_id=:run_id AND fold=:fold",
                      {"run_id": run_id, "fold": fold})
            c.executemany("INSERT INTO class_scores(run_id, fold, class_idx, class_name, lrap, weight, n_pos) "
                          "VALUES (:run_id, :fold, :class_idx, :class_name, :lrap, :weight, :n_pos)", rows)

    def set_run_members(self, run_id: str, members: Sequence[tuple[str, float]]) -> None:
        """Record an ensemble's member runs and weights."""
        with self.write() as c:
            c.execute("DELETE FROM run_members WHERE run_id=:run_id", {"run_id": run_id})
            c.executemany("INSERT INTO run_members(run_id, member_run_id, weight) VALUES (:run_id, :member, :weight)",
                          [{"run_id": run_id, "member": m, "weight": float(w)} for m, w in members])

    def set_run_warning(self, run_id: str, warning: str | None) -> None:
        """Record (or clear, with None) the warning a run's result carries, e.g. a blend below its best member."""
        with self.write() as c:
            c.execute("UPDATE runs SET warning=? WHERE id=?", (warning, run_id))

    def record_ensemble_candidates(self, run_id: str, candidates: Sequence[dict]) -> None:
        """Record every method an ensemble scored: dicts with ``method``, ``oof_lwlrap``,
        ``raw_oof_lwlrap``, ``test_lwlrap``, ``chosen`` and ``note`` (scores may be None)."""
        rows = [(run_id, d["method"], _f(d.get("oof_lwlrap")), _f(d.get("raw_oof_lwlrap")),
                 _f(d.get("test_lwlrap")), int(bool(d.get("chosen"))), d.get("note") or "", i)
                for i, d in enumerate(candidates)]
        with self.write() as c:
            c.execute("DELETE FROM ensemble_candidates WHERE run_id=?", (run_id,))
            c.executemany("INSERT INTO ensemble_candidates(run_id, method, oof_lwlrap, raw_oof_lwlrap, "
                          "test_lwlrap, chosen, note, position) VALUES (?,?,?,?,?,?,?,?)", rows)

    def ensemble_candidates(self, run_id: str) -> list[dict]:
        """The methods an ensemble run scored, in the order it scored them."""
        return self._query("SELECT method, oof_lwlrap, raw_oof_lwlrap, test_lwlrap, chosen, note "
                           "FROM ensemble_candidates WHERE run_id=? ORDER BY position", (run_id,))

    # -- reading a run back ---------------------------------------------------------

    def get_run(self, run_id: str) -> RunRow | None:
        """A run's whole record (keyed ``run_id``, config and versions decoded), or None."""
        rows = self._query("SELECT * FROM runs WHERE id=:id", {"id": run_id})
        return run_row(rows[0]) if rows else None

    def epochs(self, run_id: str) -> list[dict]:
        """Every recorded epoch of a run, by fold then epoch."""
        return self._query("SELECT * FROM epochs WHERE run_id=:run_id ORDER BY fold, epoch", {"run_id": run_id})

    def fold_scores(self, run_id: str) -> list[dict]:
        """Per-fold best LWLRAP of a run."""
        return self._query("SELECT * FROM fold_scores WHERE run_id=:run_id ORDER BY fold", {"run_id": run_id})

    def class_scores(self, run_id: str, fold: int = OOF) -> list[dict]:
        """Per-class LRAP of a run for one fold, or out-of-fold (default)."""
        return self._query("SELECT * FROM class_scores WHERE run_id=:run_id AND fold=:fold ORDER BY class_idx",
                           {"run_id": run_id, "fold": fold})

    def run_members(self, run_id: str) -> list[dict]:
        """An ensemble's members and weights."""
        return self._query("SELECT member_run_id, weight FROM run_members WHERE run_id=:run_id "
                           "ORDER BY weight DESC", {"run_id": run_id})

    # -- the curriculum ----------------------------------------------------------------

    _AUDIT_COLUMNS = ("class_idx", "class_name", "n_labelled", "n_kept", "n_dropped", "n_added", "n_final",
                      "mean_weight", "n_true", "n_wrong", "wrong_dropped", "right_lost", "added_right",
                      "n_final_right")

    def record_noisy_audit(self, run_id: str, fold: int, rows: Sequence[dict]) -> None:
        """Record a fold's per-class noisy-label audit (replaces the fold's rows)."""
        cols = self._AUDIT_COLUMNS
        values = [(run_id, fold, *[r.get(k) for k in cols]) for r in rows]
        with self.write() as c:
            c.execute("DELETE FROM noisy_audit WHERE run_id=? AND fold=?", (run_id, fold))
            c.executemany(f"INSERT INTO noisy_audit(run_id, fold, {', '.join(cols)}) "
                          f"VALUES ({', '.join('?' * (len(cols) + 2))})", values)

    def noisy_audit(self, run_id: str, fold: int | None = None) -> list[dict]:
        """The audit per class: pooled over folds (the ``curriculum_audit`` view), or one fold's rows."""
        if fold is None:
            return self._query("SELECT * FROM curriculum_audit WHERE run_id=? ORDER BY class_idx", (run_id,))
        return self._query("SELECT * FROM noisy_audit WHERE run_id=? AND fold=? ORDER BY class_idx",
                           (run_id, fold))

    def record_swap(self, run_id: str, fold: int, stage: str, attempt: int, *, loss_from: str, loss_to: str,
                    stage_lwlrap: float | None, teacher_lwlrap: float, tolerance: float) -> None:
        """Record that a stage fell too far below the teacher and is re-run with another loss."""
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO curriculum_swaps(run_id, fold, stage, attempt, loss_from, loss_to, "
                      "stage_lwlrap, teacher_lwlrap, tolerance, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (run_id, fold, stage, attempt, loss_from, loss_to, _f(stage_lwlrap), float(teacher_lwlrap),
                       float(tolerance), _now()))

    def swaps(self, run_id: str) -> list[dict]:
        """A curriculum run's loss swaps, by fold, stage and attempt."""
        return self._query("SELECT * FROM curriculum_swaps WHERE run_id=? ORDER BY fold, stage, attempt",
                           (run_id,))

    def curriculum_gain(self, run_id: str) -> list[dict]:
        """Student vs teacher LWLRAP per fold, and overall as fold -1 (the ``curriculum_gain`` view)."""
        return self._query("SELECT * FROM curriculum_gain WHERE run_id=? ORDER BY fold", (run_id,))

    def class_gain(self, run_id: str) -> list[dict]:
        """Student vs teacher out-of-fold LRAP per class (the ``curriculum_class_gain`` view)."""
        return self._query("SELECT * FROM curriculum_class_gain WHERE run_id=? ORDER BY class_idx", (run_id,))

    # -- tags, notes, archive --------------------------------------------------------------------------

    def set_run_tags(self, run_id: str, tags: Sequence[str]) -> list[str]:
        """Replace a run's tags (words without spaces; case is kept, matching ignores it); returns them."""
        clean: list[str] = []
        for tag in tags:
            tag = str(tag).strip()
            if not tag:
                continue
            if any(ch.isspace() for ch in tag) or any(ch in tag for ch in "():\"'"):
                raise StoreError(f"tag {tag!r}: a tag is one word without spaces, quotes, colons or parentheses")
            if tag.lower() not in {t.lower() for t in clean}:
                clean.append(tag)
        with self.write() as c:
            if c.execute("SELECT 1 FROM runs WHERE id = :id", {"id": run_id}).fetchone() is None:
                raise StoreError(f"no run {run_id!r}")
            c.execute("DELETE FROM run_tags WHERE run_id = :id", {"id": run_id})
            c.executemany("INSERT INTO run_tags(run_id, tag) VALUES (:id, :tag)",
                          [{"id": run_id, "tag": t} for t in clean])
        return sorted(clean, key=str.lower)

    def run_tags(self, run_id: str) -> list[str]:
        """A run's tags, sorted."""
        return [r["tag"] for r in self._query("SELECT tag FROM run_tags WHERE run_id = :id ORDER BY tag",
                                              {"id": run_id})]

    def set_run_note(self, run_id: str, note: str) -> None:
        """Replace a run's note (free text)."""
        with self.write() as c:
            if c.execute("UPDATE runs SET note = :note WHERE id = :id",
                         {"note": str(note or "").strip(), "id": run_id}).rowcount != 1:
                raise StoreError(f"no run {run_id!r}")

    def set_runs_archived(self, run_ids: Sequence[str], archived: bool = True) -> int:
        """Archive (hide by default, keep every row) or unarchive runs; returns how many changed."""
        with self.write() as c:
            return sum(c.execute("UPDATE runs SET archived = :a WHERE id = :id AND archived != :a",
                                 {"a": 1 if archived else 0, "id": str(r)}).rowcount for r in run_ids)
