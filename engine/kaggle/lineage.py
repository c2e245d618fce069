"""Which pack, submission file, runs, members and teacher stand behind a leaderboard score.

``record_pack`` (called by ``fsat kaggle pack``) makes sure every packed run
has its file hashes recorded (``engine.runs.lineage``) and adds a
``submissions`` row: the pack's manifest hash (the manifest lists the
sha256 of every packed file), the run, its members with their weights,
trained runs and teachers. The rehearsal adds the hash of the
``submission.csv`` the kernel wrote; ``fsat lb`` adds leaderboard scores.
A submission is found by its id, its run id, a pack folder, a submission file
or a hash prefix (``resolve_submission``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine.errors import FsatError
from engine.kaggle.kernel import PACK_MANIFEST
from engine.runs.lineage import record_run_lineage, sha256_file
from engine.store import Store

__all__ = ["manifest_sha256", "record_pack", "resolve_submission"]


def manifest_sha256(pack: Path | str) -> str:
    """The sha256 of a pack's manifest (``PACK/dataset/pack.json``, or ``pack.json`` in a dataset folder)."""
    pack = Path(pack)
    for path in (pack / "dataset" / PACK_MANIFEST, pack / PACK_MANIFEST):
        if path.is_file():
            return hashlib.sha256(path.read_bytes()).hexdigest()
    raise FsatError(f"{pack}: no {PACK_MANIFEST} (neither dataset/{PACK_MANIFEST} nor {PACK_MANIFEST}); "
                    "give the folder `fsat kaggle pack` wrote")


def record_pack(store: Store, run: dict, manifest: dict, out: Path, pack_sha256: str) -> int:
    """Record the lineage of a new pack (file hashes of its runs when missing) and return its submission id."""
    packed = [run["run_id"]] + [m["run_id"] for m in manifest["members"]] + [m["source_run_id"] for m in manifest["members"]]
    for run_id in dict.fromkeys(packed):
        if not store.run_files(run_id):
            record_run_lineage(store, run_id)
    members = [{"run_id": m["run_id"], "weight": m["weight"], "source_run_id": m["source_run_id"],
                "teacher_run_id": m["teacher_run_id"]} for m in manifest["members"]]
    teachers = [m["teacher_run_id"] for m in manifest["members"] if m["teacher_run_id"]]
    return store.record_submission(run_id=run["run_id"], pack_sha256=pack_sha256, pack_dir=str(Path(out).resolve()),
                                   members=members, teacher_run_id=teachers[0] if teachers else None,
                                   cv_lwlrap=run.get("cv_lwlrap"))


def resolve_submission(store: Store, key: str) -> dict:
    """The one submission ``key`` names: an id, a run id (its newest pack), a pack folder, a CSV or a hash prefix."""
    path = Path(key)
    if path.is_dir():
        rows = store.find_submissions(manifest_sha256(path))
    elif path.is_file():
        rows = store.find_submissions(sha256_file(path))
    else:
        rows = store.find_submissions(key)
    if not rows:
        raise FsatError(f"no submission {key!r}: give a submission id, a packed run id, a pack folder, the "
                        "rehearsed submission.csv or a hash prefix (see `fsat lb`)")
    by_run = [r for r in rows if r["run_id"] == key]
    if by_run:
        return by_run[-1]
    if len(rows) > 1:
        raise FsatError(f"{key!r} names {len(rows)} submissions ({', '.join(str(r['id']) for r in rows)}); "
                        "give the submission id")
    return rows[0]
