"""``fsat kaggle pack|rehearse|push`` and ``fsat lb``: the commands, registered by ``engine.cli``.

Nothing heavy is imported here: torch and the pack's modules load inside the
handlers, so ``fsat`` starts as fast as before.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

from engine.errors import FsatError

__all__ = ["add_parser"]

#: What to install when the Kaggle CLI is missing (its token stays the user's: fsat never reads it).
INSTALL_HINT = ("the Kaggle CLI is not installed: `pip install kaggle`, then create an API token on kaggle.com "
                "(Settings > API) and put it where the Kaggle CLI's documentation says; fsat never reads it")


def _db(args: argparse.Namespace) -> Path:
    from engine.store import default_db_path

    return Path(args.db) if getattr(args, "db", None) else default_db_path()


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def cmd_pack(args: argparse.Namespace) -> int:
    from engine.kaggle.pack import OWNER_PLACEHOLDER, pack_run
    from engine.store import Store

    with Store(_db(args), create=False) as store:
        report = pack_run(store, args.run_id, args.out, owner=args.owner or OWNER_PLACEHOLDER, fp16=args.fp16,
                          log=(lambda _m: None) if args.json else print)
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
        return 0
    print(f"packed {report.run_id} ({report.kind}, {len(report.members)} member(s): {', '.join(report.members)}) "
          f"into {report.out}: {_size(report.total_bytes)} ({report.precision})")
    for part, n in report.parts.items():
        print(f"  {part:24s} {_size(n):>10s}")
    print(f"submission {report.submission_id}: pack sha256 {report.pack_sha256[:16]}")
    print(f"next: fsat kaggle rehearse {report.out} --test DATA_ROOT; push: see {report.out / 'README.md'}")
    return 0


def _print_rehearsal(report) -> None:
    p = report.projection
    print(f"rehearsed {report.run_id} on {report.n_clips} clips ({report.device}); submission valid: "
          f"{'yes' if report.valid else 'no'}")
    if report.max_abs_diff is not None:
        verdict = "equal" if report.matches else "DIFFERENT"
        print(f"  vs the run's test.npy submission: max |diff| {report.max_abs_diff:.2e} ({verdict}, tolerance 1e-05)")
    for note in report.notes:
        print(f"  note: {note}")
    print(f"  {'stage':28s} {'seconds':>9s} {'at ' + str(p['n_target']) + ' clips':>16s}")
    for s in p["stages"]:
        print(f"  {s['name']:28s} {s['seconds']:9.2f} {s['projected']:16.1f}")
    verdict = "fits" if p["fits"] else "does NOT fit"
    print(f"  projected {p['total']:.0f} s at speed ratio {p['speed_ratio']:g}: {verdict} the budget "
          f"{p['budget']:.0f} s ({p['limit']:.0f} s less {p['margin']:.0%})")
    if report.trim is not None:
        best = report.trim["best"]
        if best is None:
            print("  no member subset fits: fewer TTA crops, fewer folds or a faster device are needed")
        else:
            score = "-" if best["oof_lwlrap"] is None else f"{best['oof_lwlrap']:.4f}"
            print(f"  best blend that fits: {', '.join(best['members'])} ({best['projected']:.0f} s, "
                  f"cross-fitted OOF lwlrap {score}); ensemble those members and pack again")


def cmd_rehearse(args: argparse.Namespace) -> int:
    from engine.kaggle.rehearse import rehearse
    from engine.store import Store

    db = _db(args)
    store = Store(db, create=False) if db.is_file() else None
    try:
        report = rehearse(args.pack, args.test, store=store, n_target=args.n_clips, speed_ratio=args.speed_ratio,
                          margin=args.margin, limit=args.limit, device=args.device,
                          log=(lambda _m: None) if args.json else print)
    finally:
        if store is not None:
            store.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        _print_rehearsal(report)
    return 1 if report.matches is False else 0


def push_commands(pack: Path, *, message: str | None = None) -> list[list[str]]:
    """The Kaggle CLI commands that upload a pack: the dataset (sub-folders zipped), then the kernel."""
    dataset = ["kaggle", "datasets", "create", "-p", str(pack / "dataset"), "-r", "zip"]
    if message is not None:
        dataset = ["kaggle", "datasets", "version", "-p", str(pack / "dataset"), "-r", "zip", "-m", message]
    return [dataset, ["kaggle", "kernels", "push", "-p", str(pack / "kernel")]]


def cmd_push(args: argparse.Namespace) -> int:
    from engine.kaggle.pack import OWNER_PLACEHOLDER

    pack = Path(args.pack)
    for meta in (pack / "dataset" / "dataset-metadata.json", pack / "kernel" / "kernel-metadata.json"):
        if not meta.is_file():
            raise FsatError(f"{meta}: not found; push the folder `fsat kaggle pack` wrote")
        if json.loads(meta.read_text())["id"].startswith(OWNER_PLACEHOLDER + "/"):
            raise FsatError(f"{meta}: the owner is still {OWNER_PLACEHOLDER!r}; pack again with --owner USER "
                            "(your Kaggle username) or edit the id")
    kaggle = shutil.which("kaggle")
    if kaggle is None:
        raise FsatError(INSTALL_HINT)
    for cmd in push_commands(pack, message=args.new_version):
        print("$ " + " ".join(cmd), flush=True)
        if args.dry_run:
            continue
        # The Kaggle CLI reads its own token; its output goes straight to the terminal, never to a log.
        done = subprocess.run([kaggle] + cmd[1:])
        if done.returncode != 0:
            raise FsatError(f"`{' '.join(cmd)}` failed (exit status {done.returncode}); see the Kaggle CLI's "
                            "message above")
    return 0


def _score(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FsatError(f"{name} {text!r}: not a number; give the leaderboard LWLRAP, e.g. 0.7421") from None
    if not 0.0 <= value <= 1.0:
        raise FsatError(f"{name} {value}: outside [0, 1]; give the leaderboard LWLRAP")
    return value


def cmd_lb(args: argparse.Namespace) -> int:
    from engine.kaggle.lineage import resolve_submission
    from engine.store import Store

    if args.submission is not None:
        if args.public is None and args.private is None:
            raise FsatError("give --public X (and --private Y when known) to record a leaderboard score")
        with Store(_db(args), create=False) as store:
            row = resolve_submission(store, args.submission)
            store.record_leaderboard(row["id"], public_lwlrap=None if args.public is None else _score(args.public, "--public"),
                                     private_lwlrap=None if args.private is None else _score(args.private, "--private"))
    with Store(_db(args), readonly=True) as store:
        rows = store.cv_vs_lb()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no submissions yet: `fsat kaggle pack RUN OUT` records one")
        return 0

    def f(x) -> str:
        return "-" if x is None else f"{x:.4f}"

    def gap(x) -> str:
        return "-" if x is None else f"{x:+.4f}"

    w = max(len("run"), *(len(r["run_id"]) for r in rows))
    print(f"{'id':>4s}  {'run':{w}s} {'CV':>7s} {'public':>7s} {'gap':>8s} {'private':>8s} {'gap':>8s}  submission")
    for r in rows:
        print(f"{r['submission_id']:>4d}  {r['run_id']:{w}s} {f(r['cv_lwlrap']):>7s} {f(r['public_lwlrap']):>7s} "
              f"{gap(r['public_gap']):>8s} {f(r['private_lwlrap']):>8s} {gap(r['private_gap']):>8s}  "
              f"{(r['submission_sha256'] or '')[:12] or 'not rehearsed'}")
    return 0


def add_parser(sub, db_help: str) -> None:
    """Add ``kaggle`` (pack, rehearse, push) and ``lb`` to ``fsat``'s sub-commands."""
    def common(p: argparse.ArgumentParser, func) -> argparse.ArgumentParser:
        p.set_defaults(func=func)
        p.add_argument("--db", type=Path, default=argparse.SUPPRESS, help=db_help)
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    kaggle = sub.add_parser("kaggle", help="pack a run as an offline Kaggle kernel, rehearse it, push it",
                            description="From a run to a Kaggle submission (see README: Submitting to Kaggle).")
    ksub = kaggle.add_subparsers(dest="kaggle_command", required=True)

    p = common(ksub.add_parser("pack", help="write a kernel and dataset folder for the Kaggle CLI"), cmd_pack)
    p.add_argument("run_id", metavar="RUN", help="a train, curriculum, infer or ensemble run")
    p.add_argument("out", type=Path, metavar="OUT", help="a new folder for the pack")
    p.add_argument("--owner", help="your Kaggle username, written into the metadata ids")
    p.add_argument("--fp16", action="store_true", help="half-precision weights (the OOF score change is measured)")

    p = common(ksub.add_parser("rehearse", help="run the kernel offline without the project; check and time it"),
               cmd_rehearse)
    p.add_argument("pack", type=Path, metavar="PACK")
    p.add_argument("--test", type=Path, required=True, metavar="DIR",
                   help="a folder with sample_submission.csv and test/ (e.g. the run's dataset root)")
    p.add_argument("--n-clips", type=int, default=3361, help="project to this many test clips (default 3361)")
    p.add_argument("--speed-ratio", type=float, default=1.0,
                   help="how many times faster the target GPU predicts than this rehearsal's device (default 1)")
    p.add_argument("--margin", type=float, default=0.2, help="kept free of the time limit (default 0.2)")
    p.add_argument("--limit", type=float, default=3600.0, help="the kernel's time limit in seconds (default 3600)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")

    p = common(ksub.add_parser("push", help="upload the pack with the Kaggle CLI (dataset, then kernel)"), cmd_push)
    p.add_argument("pack", type=Path, metavar="PACK")
    p.add_argument("--new-version", metavar="MESSAGE", help="the dataset exists: upload a new version of it")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")

    p = common(sub.add_parser("lb", help="record leaderboard scores of a submission; list CV against leaderboard",
                              description="fsat lb [SUBMISSION --public X [--private Y]]: without arguments, "
                                          "every submission's CV, leaderboard scores and gaps."), cmd_lb)
    p.add_argument("submission", nargs="?", metavar="SUBMISSION",
                   help="submission id, packed run id, pack folder, rehearsed submission.csv or hash prefix")
    p.add_argument("--public", help="public leaderboard LWLRAP")
    p.add_argument("--private", help="private leaderboard LWLRAP")
