"""Kaggle lineage (schema step 11): run file hashes, submissions (pack -> submission -> run -> members),
leaderboard scores and the CV-against-leaderboard view; written by ``engine.kaggle`` and ``engine.runs.lineage``."""

from __future__ import annotations

import json
from typing import Sequence

from engine.store.connection import Connection, StoreError, now as _now
from engine.store.records import _f


class Lineage(Connection):
    """The store's lineage tables."""

    def record_run_files(self, run_id: str, rows: Sequence[tuple[str, str, int | None]]) -> None:
        """Record ``(path, sha256, bytes)`` of a run's files, replacing the run's earlier rows."""
        with self.write() as c:
            c.execute("DELETE FROM run_files WHERE run_id=:run_id", {"run_id": run_id})
            c.executemany("INSERT INTO run_files(run_id, path, sha256, bytes, recorded_at) "
                          "VALUES (:run_id, :path, :sha256, :bytes, :now)",
                          [{"run_id": run_id, "path": p, "sha256": h, "bytes": n, "now": _now()}
                           for p, h, n in rows])

    def run_files(self, run_id: str) -> list[dict]:
        """A run's recorded file hashes (path, sha256, bytes, recorded_at), by path."""
        return self._query("SELECT path, sha256, bytes, recorded_at FROM run_files WHERE run_id=:run_id "
                           "ORDER BY path", {"run_id": run_id})

    def record_submission(self, *, run_id: str, pack_sha256: str, pack_dir: str, members: Sequence[dict],
                          teacher_run_id: str | None, cv_lwlrap: float | None) -> int:
        """Record a pack of ``run_id`` (or find the one with the same manifest hash); returns its id."""
        with self.write() as c:
            row = c.execute("SELECT id FROM submissions WHERE pack_sha256=:h", {"h": pack_sha256}).fetchone()
            values = {"run_id": run_id, "h": pack_sha256, "dir": pack_dir,
                      "members": json.dumps(list(members), sort_keys=True), "teacher": teacher_run_id,
                      "cv": _f(cv_lwlrap), "now": _now()}
            if row:
                c.execute("UPDATE submissions SET pack_dir=:dir WHERE pack_sha256=:h", values)
                return int(row[0])
            return int(c.execute("INSERT INTO submissions(run_id, pack_sha256, pack_dir, members, teacher_run_id, "
                                 "cv_lwlrap, created_at) VALUES (:run_id, :h, :dir, :members, :teacher, :cv, :now) "
                                 "RETURNING id", values).fetchone()[0])

    def set_submission_rehearsal(self, pack_sha256: str, *, submission_sha256: str,
                                 projected_seconds: float | None) -> int | None:
        """Record what the rehearsal of a pack wrote (its submission's hash) and its projected time."""
        with self.write() as c:
            row = c.execute("UPDATE submissions SET submission_sha256=:s, projected_seconds=:t "
                            "WHERE pack_sha256=:h RETURNING id",
                            {"s": submission_sha256, "t": _f(projected_seconds), "h": pack_sha256}).fetchone()
            return None if row is None else int(row[0])

    def find_submissions(self, key: str) -> list[dict]:
        """Submissions whose id, run id, pack or submission hash (or a prefix of 8+ hex digits) is ``key``."""
        params = {"key": key, "prefix": key + "%" if len(key) >= 8 else key}
        return self._query("SELECT * FROM submissions WHERE CAST(id AS TEXT)=:key OR run_id=:key "
                           "OR pack_sha256 LIKE :prefix OR submission_sha256 LIKE :prefix ORDER BY id", params)

    def record_leaderboard(self, submission_id: int, *, public_lwlrap: float | None,
                           private_lwlrap: float | None) -> int:
        """Record a submission's public (and private) leaderboard LWLRAP; the newest row is the one shown."""
        with self.write() as c:
            if c.execute("SELECT 1 FROM submissions WHERE id=:id", {"id": submission_id}).fetchone() is None:
                raise StoreError(f"no submission {submission_id}; see `fsat lb`")
            return int(c.execute("INSERT INTO leaderboard_scores(submission_id, public_lwlrap, private_lwlrap, "
                                 "recorded_at) VALUES (:id, :pub, :priv, :now) RETURNING id",
                                 {"id": submission_id, "pub": _f(public_lwlrap), "priv": _f(private_lwlrap),
                                  "now": _now()}).fetchone()[0])

    def cv_vs_lb(self) -> list[dict]:
        """Every submission with its CV and newest leaderboard scores and the gaps (the ``cv_vs_lb`` view)."""
        return self._query("SELECT * FROM cv_vs_lb ORDER BY submission_id")
