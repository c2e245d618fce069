"""The run screen's Kaggle keys: pack and rehearse a run in a subprocess, and its CV against the leaderboard.

The pack and the rehearsal load torch, which the console never imports: they
run as ``python -m engine.cli kaggle pack|rehearse --json`` in a child
process, from a thread worker, and only their JSON comes back here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["PACKABLE_KINDS", "cv_vs_lb_text", "pack_and_rehearse", "pack_folder", "summary_text"]

#: Run kinds ``fsat kaggle pack`` takes.
PACKABLE_KINDS = ("train", "curriculum", "infer", "ensemble")


def pack_folder(db_path: Path, run_id: str) -> Path:
    """Where the console packs a run: ``kaggle/<run_id>-<YYYYmmdd-HHMMSS>`` beside the database."""
    return Path(db_path).parent / "kaggle" / f"{run_id}-{time.strftime('%Y%m%d-%H%M%S')}"


def _fsat(db_path: Path, *args: str) -> dict:
    cmd = [sys.executable, "-m", "engine.cli", "--db", str(db_path), *args, "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if done.returncode not in (0, 1):
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        raise RuntimeError(lines[-1] if lines else f"fsat {' '.join(args)} exited with {done.returncode}")
    return json.loads(done.stdout)


def pack_and_rehearse(db_path: Path, run_id: str, out: Path, test_root: Path) -> tuple[dict, dict]:
    """Pack ``run_id`` into ``out`` and rehearse it on ``test_root``: both commands' JSON reports."""
    pack = _fsat(db_path, "kaggle", "pack", run_id, str(out))
    return pack, _fsat(db_path, "kaggle", "rehearse", str(out), "--test", str(test_root))


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB"


def summary_text(pack: dict, rehearsal: dict) -> str:
    """A few lines: the pack's size by part, the rehearsal's check and time projection, the trimming."""
    parts = ", ".join(f"{k} {_mib(v)}" for k, v in pack["parts"].items())
    lines = [f"Packed {pack['run_id']} into {pack['out']}: {_mib(pack['total_bytes'])} ({parts})"]
    if rehearsal.get("max_abs_diff") is not None:
        lines.append(f"Rehearsed offline: max |diff| vs test.npy {rehearsal['max_abs_diff']:.1e} "
                     f"({'equal' if rehearsal['matches'] else 'DIFFERENT'})")
    p = rehearsal["projection"]
    lines.append(f"Projected {p['total']:.0f} s for {p['n_target']} clips at speed ratio {p['speed_ratio']:g}: "
                 f"{'fits' if p['fits'] else 'does NOT fit'} {p['budget']:.0f} s ({p['limit']:.0f} s less "
                 f"{p['margin']:.0%})")
    trim = rehearsal.get("trim")
    if trim is not None:
        best = trim.get("best")
        lines.append("No member subset fits." if best is None else
                     f"Best blend that fits: {', '.join(best['members'])} ({best['projected']:.0f} s, "
                     f"OOF lwlrap {best['oof_lwlrap']:.4f})")
    return "\n".join(lines)


def cv_vs_lb_text(rows: list[dict], run_id: str) -> str:
    """This run's submissions: CV, the newest public/private leaderboard LWLRAP and the gaps."""
    def f(x) -> str:
        return "-" if x is None else f"{x:.4f}"

    def g(x) -> str:
        return "" if x is None else f" ({x:+.4f})"

    mine = [r for r in rows if r["run_id"] == run_id]
    if not mine:
        return f"Run {run_id} has no submission yet: press K to pack it."
    return "\n".join(f"Submission {r['submission_id']}: CV {f(r['cv_lwlrap'])}, public {f(r['public_lwlrap'])}"
                     f"{g(r['public_gap'])}, private {f(r['private_lwlrap'])}{g(r['private_gap'])}" for r in mine)
