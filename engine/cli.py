"""``fsat``: the headless command line for everything the console does.

    fsat demo-data DIR [--seed N] [--clips-per-class N] [--clips-per-source N] [--size full|FRACTION]
    fsat [--db PATH] register DIR [--n-folds 5] [--fold-seed 42] [--group-column COLUMN]
    fsat [--db PATH] queue train|baseline --data DIR [--preset NAME | --config FILE] [--set key=value ...]
                                          [--name NAME] [--priority N]
    fsat [--db PATH] queue probe [--set seconds=2 ...] [--name NAME] [--priority N]
    fsat [--db PATH] queue infer RUN_ID [--preset tta] [--set infer.tta_crops=5 ...] [--name NAME] [--priority N]
    fsat [--db PATH] queue curriculum TEACHER_RUN --preset curriculum [--set filter.keep_threshold=0.7 ...]
    fsat [--db PATH] queue ensemble RUN_ID RUN_ID ... [--set method="mean" ...] [--name NAME] [--priority N]
    fsat [--db PATH] queue plan PLAN_PRESET [--data DIR] [--set STEP:key=value | KIND:key=value ...]
    fsat [--db PATH] plans [PLAN_ID] [--cancel]
    fsat [--db PATH] ensemble RUN_ID RUN_ID ... [--weights W ...] [--method auto|best|rank|...] [--no-calibrate]
                                               [--greedy] [--greedy-steps N] [--no-submission]
                                               [--name NAME] [--priority N] [--now | --dry-run]
    fsat [--db PATH] submission RUN_ID --out PATH [--json]
    fsat [--db PATH] tta RUN_ID [--json]
    fsat [--db PATH] audit RUN_ID [--json]
    fsat [--db PATH] runs [FILTER ...] [--limit N | --all] [--sort COL] [--asc] [--archived hide|only|all]
                          [--json | --csv | --markdown]
    fsat [--db PATH] jobs [FILTER ...] [--status S] [--limit N | --all] [--sort COL] [--json | --csv]
    fsat [--db PATH] compare RUN_ID RUN_ID ... [--baseline RUN_ID] [--markdown | --csv | --json]
    fsat [--db PATH] tag RUN_ID TAG ... [--remove TAG ...] | note RUN_ID TEXT | archive RUN_ID ... [--undo]
    fsat [--db PATH] requeue JOB_ID
    fsat [--db PATH] show RUN_ID [--fold K] [--json]
    fsat [--db PATH] workers [--max-age SECONDS] [--json]
    fsat [--db PATH] datasets | presets   [--json]
    fsat [--db PATH] cancel JOB_ID
    fsat [--db PATH] wait JOB_ID [--timeout SECONDS]
    fsat [--db PATH] report RUN_ID ... --out FILE.html [--baseline RUN_ID] [--png DIR] [--blend ...]
    fsat [--db PATH] report SWEEP_ID --sweep --out FILE.html [--png DIR]

Every ``queue`` (and ``ensemble`` without ``--now``) goes through
``engine.intake``: the console's dialogs make the same checks, in the same
words, and name a job the same way when no ``--name`` is given.

``--db`` defaults to ``$FSAT_DB`` or ``./experiments.db``; run folders go to
``runs/`` beside it (``$FSAT_RUNS`` overrides). Scores, run folders and the
TTA report are read through the run layer (``engine.runs``), the same code
the console uses.

A listing in a terminal shows 100 rows and says on stderr when more match;
``--limit N`` / ``--all`` change that, and ``--json`` / ``--csv`` give every
matching row unless limited. Piped, a listing is plain aligned text with every
value in full.

Errors a user can cause print one clear line (naming the file, row or
field) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Sequence

from rich.text import Text

from engine import intake
from engine.cli_output import (DEFAULT_LISTING, SQLITE_MAX_INT, _emit, _fmt, _listing_limit, _plain_table,  # noqa: F401
                               _open, _print_table, _read, _say_cut, _seed, _table, _whole, console,
                               err_console)
from engine.cli_follow import cmd_wait
from engine.errors import FsatError
from engine.reporting.cli import add_parser as add_report_parser
from engine.runs.reports import tta_gain_report
from engine.specs import ENSEMBLE_METHODS
from engine.sweep_cli import add_parser as add_sweep_parser
from engine.store import JOB_STATES, OOF, default_db_path


# -- commands --------------------------------------------------------------------------


def _size_arg(text: str) -> float:
    from engine.data.demo import parse_size

    try:
        return parse_size(text)
    except FsatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_demo_data(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from engine.data.demo import write_demo_dataset

    kwargs = {"seed": args.seed}
    if args.clips_per_class is not None:
        kwargs["clips_per_class"] = args.clips_per_class
    if args.clips_per_source != 1:
        kwargs["clips_per_source"] = args.clips_per_source
    if args.size is not None:
        kwargs["size"] = args.size
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("writing demo clips", total=None)
        summary = write_demo_dataset(args.dir, progress=lambda d, t: progress.update(task, completed=d, total=t),
                                     **kwargs)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        console.print(f"demo dataset written to [bold]{args.dir}[/]: " +
                      ", ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from engine.data.prepare import prepare_dataset

    with _open(args) as store:
        data = prepare_dataset(store, args.dir, n_folds=args.n_folds, fold_seed=args.fold_seed,
                               group_column=args.group_column)
        row = store.get_dataset(data.dataset_id)
    row.pop("classes", None)
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        console.print(f"dataset {row['id']} [bold]{row['name']}[/]: {row['n_curated']} curated, "
                      f"{row['n_noisy']} noisy, {row['n_test']} test clips; {row['n_folds']} folds "
                      f"(seed {row['fold_seed']}, {row['fold_rule']})")
    return 0


def _queue_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides plus the positional run ids of ``queue infer`` / ``queue ensemble`` / ``queue curriculum``."""
    overrides = [token for text in (args.set or []) for token in intake.split_overrides(text)]
    targets = list(args.targets or [])
    if args.kind == "infer":
        if len(targets) > 1:
            raise FsatError(f"queue infer takes one trained run id, got {len(targets)}: {' '.join(targets)}")
        if targets:
            overrides.append(f"run_id={json.dumps(targets[0])}")
    elif args.kind == "ensemble":
        if targets:
            overrides.append(f"members={json.dumps(targets)}")
    elif args.kind == "curriculum":
        if len(targets) > 1:
            raise FsatError(f"queue curriculum takes one teacher run id, got {len(targets)}: {' '.join(targets)}")
        if targets:
            overrides.append(f"teacher_run_id={json.dumps(targets[0])}")
    elif targets:
        raise FsatError(f"queue {args.kind} takes no run ids (got {' '.join(targets)}); "
                        "run ids are for infer, ensemble and curriculum jobs")
    return overrides


def cmd_queue(args: argparse.Namespace) -> int:
    """Queue a job through ``engine.intake``: every queue-time check, then the insert."""
    if args.kind == "plan":
        return cmd_queue_plan(args)
    overrides = _queue_overrides(args)
    with _open(args) as store:
        prepared = intake.prepare(store, args.kind, preset=args.preset, config=args.config, overrides=overrides,
                                  data_root=args.data)
        job_id = intake.submit(store, prepared, name=args.name, priority=args.priority)
        name = store.get_job(job_id).name
    if args.json:
        print(json.dumps({"job_id": job_id, "kind": args.kind, "name": name}))
    else:
        print(job_id)
    return 0


def cmd_queue_plan(args: argparse.Namespace) -> int:
    """Queue a plan preset (``engine.plan``): every step checked, then all queued in one transaction."""
    from engine.plan import queue_plan

    presets = [*(args.targets or []), *([args.preset] if args.preset else [])]
    if len(presets) != 1 or args.config:
        raise FsatError("queue plan takes one plan preset (see `fsat presets`), e.g. `fsat queue plan plan_demo`")
    with _open(args) as store:
        plan_id = queue_plan(store, presets[0], data_root=args.data, overrides=args.set or [], name=args.name,
                             priority=args.priority)
        steps = store.plan_steps(plan_id)
    if args.json:
        print(json.dumps({"plan_id": plan_id, "jobs": {s["step"]: s["job_id"] for s in steps}}))
    else:
        print(plan_id)
    return 0


def cmd_plans(args: argparse.Namespace) -> int:
    """List plans, or one plan's steps (``--cancel``: cancel what has not started)."""
    if args.plan_id is None:
        with _read(args) as store:
            rows = store.list_plans()
        for r in rows:
            r["jobs"] = ", ".join(f"{n} {s}" for s, n in sorted(r.pop("counts").items()))
        _emit(args, rows, "plans", ["id", "name", "preset", "jobs"])
        return 0
    if args.cancel:
        with _open(args, create=False) as store:
            done = store.cancel_plan(args.plan_id)
        print(f"plan {args.plan_id}: {done['cancelled']} job(s) cancelled, {done['stopping']} running job(s) stopping")
        return 0
    with _read(args) as store:
        store.get_plan(args.plan_id)
        rows = store.plan_steps(args.plan_id)
    for r in rows:
        r["progress"] = round(r["progress"], 4)
        r["parents"] = ", ".join(r["parents"])
        r["message"] = r["reason"] or r["message"]
    _emit(args, rows, f"plan {args.plan_id}", ["step", "job_id", "kind", "state", "progress", "parents", "message",
                                               "run_id"])
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    """Queue an ensemble job, or with ``--now`` blend in this process and record the run."""
    from engine.specs import EnsembleSpec, from_dict

    data: dict = {"members": list(args.members), "method": args.method, "calibrate": not args.no_calibrate,
                  "greedy": args.greedy, "write_submission": not args.no_submission}
    if args.weights:
        data["weights"] = list(args.weights)
    if args.greedy_steps is not None:
        data["greedy_steps"] = args.greedy_steps
    if args.name:
        data["name"] = args.name
    spec = from_dict(EnsembleSpec, data)
    if args.dry_run:
        return _ensemble_dry_run(args, spec)
    if not args.now:
        with _open(args) as store:
            job_id = intake.submit(store, intake.prepare(store, "ensemble", spec=spec), priority=args.priority)
        if args.json:
            print(json.dumps({"job_id": job_id, "kind": "ensemble"}))
        else:
            print(job_id)
        return 0

    from engine.jobs.ensemble import build_ensemble, unique_run_id
    from engine.store import runs_root

    db = args.db or default_db_path()
    log = (lambda text: err_console.print(text, highlight=False)) if args.json else \
        (lambda text: console.print(text, highlight=False))
    with _open(args) as store:
        run_id = unique_run_id(store)
        outcome = build_ensemble(store, spec, run_id=run_id, run_dir=runs_root(db) / run_id, log=log)
    if args.json:
        print(json.dumps({"run_id": outcome.run_id, "run_dir": str(outcome.run_dir), "weights": outcome.weights,
                          "cv_lwlrap": outcome.cv_lwlrap, "raw_cv_lwlrap": outcome.raw_cv_lwlrap,
                          "test_lwlrap": outcome.test_lwlrap,
                          "submission": str(outcome.submission) if outcome.submission else None,
                          "message": outcome.message}, indent=2))
    else:
        console.print(f"[bold]{outcome.run_id}[/]: {outcome.message}", highlight=False)
    if outcome.warning and args.json:
        err_console.print(f"[bold yellow]warning:[/] {outcome.warning}", highlight=False)
    return 0


def _ensemble_dry_run(args: argparse.Namespace, spec) -> int:
    """Blend and score every method without recording anything: the methods × scores table."""
    from engine.jobs.ensemble import evaluate_ensemble

    quiet = lambda text: None  # noqa: E731  (the table below says it all)
    with _open(args) as store:
        ev = evaluate_ensemble(store, spec, log=quiet)
    result = ev.result
    rows = [{**c, "chosen": bool(c["chosen"])} for c in ev.candidates]
    if args.json:
        print(json.dumps({"method": result.method, "requested": result.requested, "weights": ev.weights,
                          "cross_fitted": ev.cross_fitted, "best_member": result.best_member,
                          "best_member_oof_lwlrap": result.best_member_lwlrap,
                          "member_test_lwlrap": ev.member_test_lwlrap, "candidates": rows,
                          "oof_lwlrap": result.oof_lwlrap, "test_lwlrap": ev.test_lwlrap,
                          "warning": result.warning, "saved": False}, indent=2))
        return 0
    members = ", ".join(f"{k} {v:.3f}" for k, v in ev.weights.items())
    fitted = "cross-fitted over the dataset's folds" if ev.cross_fitted else "in-sample (no stored folds)"
    table_rows = [{"method": r["method"] + (" *" if r["chosen"] else ""), "oof_lwlrap": r["oof_lwlrap"],
                   "raw_oof_lwlrap": r["raw_oof_lwlrap"] if r["method"] in ("rank", "rank_minmax") else None,
                   "test_lwlrap": r["test_lwlrap"], "note": r["note"]} for r in rows]
    title = f"dry run, nothing saved: weights {members}; OOF {fitted}"
    if not sys.stdout.isatty():
        # A plain table carries no title: say what was (not) done on a line of its own.
        print(title)
    _emit(args, table_rows, title, ["method", "oof_lwlrap", "raw_oof_lwlrap", "test_lwlrap", "note"])
    best_test = ev.member_test_lwlrap.get(result.best_member)
    console.print(f"best member {result.best_member}: OOF lwlrap {result.best_member_lwlrap:.4f}"
                  + (f", test {best_test:.4f}" if best_test is not None else "")
                  + f"; * = {'chosen by auto' if result.requested == 'auto' else 'the method asked for'}",
                  highlight=False)
    if result.warning:
        console.print(f"[bold yellow]warning:[/] {result.warning}", highlight=False)
    return 0


def cmd_submission(args: argparse.Namespace) -> int:
    """Write (and so validate) a submission CSV from a run's test scores."""
    from engine.data.manifest import load_layout
    from engine.atomic import load_npy
    from engine.submission import score_submission, write_submission

    with _read(args) as store:
        run = store.get_run(args.run_id)
        if run is None:
            raise FsatError(f"no run {args.run_id!r} (see `fsat runs`)")
        dataset = store.get_dataset(run["dataset_id"]) if run["dataset_id"] is not None else None
    test_path = Path(run["run_dir"]) / "test.npy"
    if not test_path.is_file():
        hint = (f"infer it first (`fsat queue infer {args.run_id}`)" if intake.has_fold_checkpoints(run["kind"])
                else "its blend or inference had no test scores")
        raise FsatError(f"run {args.run_id!r} ({run['kind']}) has no test scores: {test_path} does not exist; {hint}")
    if dataset is None:
        raise FsatError(f"run {args.run_id!r} is linked to no dataset, so there is no sample submission to follow")
    layout = load_layout(dataset["root"])
    test = load_npy(test_path, remedy=f"run {args.run_id} again to rewrite its test scores")
    path = write_submission(args.out, layout.test.fnames, test,
                            sample_submission=layout.sample_submission)
    score = (score_submission(path, layout.test_truth.csv_path, layout.classes)
             if layout.test_truth is not None else None)
    if args.json:
        print(json.dumps({"run_id": args.run_id, "path": str(path), "rows": len(layout.test.fnames),
                          "test_lwlrap": score}, indent=2))
    else:
        console.print(f"wrote {path}: {len(layout.test.fnames)} clips x {len(layout.classes)} classes"
                      + (f", test lwlrap {score:.4f}" if score is not None else ""), highlight=False)
    return 0


def cmd_tta(args: argparse.Namespace) -> int:
    with _read(args) as store:
        report = tta_gain_report(store, args.run_id)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    console.print(f"[bold]{report['run_id']}[/] ({report['tta_crops']} crops) vs [bold]{report['source_run_id']}[/] "
                  f"(centre crop): OOF lwlrap {_fmt(report['with_tta'])} with TTA, {_fmt(report['without_tta'])} "
                  f"without, gain [bold]{_signed(report['gain'])}[/]", highlight=False)
    folds = [dict(r, gain=_signed(r["gain"])) for r in report["folds"]]
    _print_table("per fold", folds, ["fold", "with_tta", "without_tta", "gain"])
    ranked = sorted(report["classes"], key=lambda r: (r["gain"] is None, -(r["gain"] or 0)))
    ranked = [dict(r, gain=_signed(r["gain"])) for r in ranked]
    _print_table("per class (out-of-fold LRAP, by gain)", ranked,
                 ["class_idx", "class_name", "with_tta", "without_tta", "gain", "n_pos"])
    return 0


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def cmd_audit(args: argparse.Namespace) -> int:
    """A curriculum run's gain over its teacher, per-class noisy-label audit and loss swaps."""
    from engine.curriculum import audit_report

    with _open(args) as store:
        report = audit_report(store, args.run_id)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    console.print(f"[bold]{report['run_id']}[/] curriculum of teacher {report['teacher_run_id']} "
                  f"[{report['status']}]", highlight=False)
    gain = [{"fold": "oof" if g["fold"] == OOF else g["fold"], **{k: g[k] for k in
             ("student_lwlrap", "teacher_lwlrap", "gain")}} for g in report["gain"]]
    _print_table("student vs teacher lwlrap", gain, ["fold", "student_lwlrap", "teacher_lwlrap", "gain"])
    columns = ["class_name", "n_labelled", "n_kept", "n_dropped", "share_dropped", "n_added", "mean_weight"]
    if report["truth_known"]:
        columns += ["wrong_dropped", "right_lost", "weak_precision", "precision", "recall"]
    _print_table("noisy-label audit per class (mean per fold), by share dropped", report["audit"], columns)
    classes = sorted(report["classes"], key=lambda r: -(r["gain"] if r["gain"] is not None else -9))
    _print_table("out-of-fold LRAP per class, by gain", classes,
                 ["class_name", "student_lrap", "teacher_lrap", "gain", "weight"])
    if report["swaps"]:
        _print_table("loss swaps", report["swaps"], ["fold", "stage", "attempt", "loss_from", "loss_to",
                                                     "stage_lwlrap", "teacher_lwlrap", "tolerance"])
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from engine.filters import compile_filter

    query = " ".join(args.filter or [])
    if args.status:
        query = f"({query}) status:{args.status}" if query.strip() else f"status:{args.status}"
    flt = compile_filter(query, "jobs")
    limit = _listing_limit(args)
    with _read(args) as store:
        rows = store.page_jobs(where=flt.sql, params=flt.params, order=args.sort, descending=not args.asc,
                               limit=limit)
        total = store.count_jobs_where(where=flt.sql, params=flt.params) if limit is not None else len(rows)
        waits = store.job_waits([r["id"] for r in rows if r["status"] == "queued"])
    for r in rows:
        r["progress"] = round(r["progress"], 4)
        if r["id"] in waits:  # a queued job that waits for its parents, or is held by a failed one
            r["status"], r["message"] = waits[r["id"]]["state"], waits[r["id"]]["reason"]
    _emit(args, rows, "jobs", ["id", "kind", "name", "status", "progress", "message", "attempts", "run_id"])
    _say_cut(len(rows), total, "jobs")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from engine.filters import compile_filter

    flt = compile_filter(" ".join(args.filter or []), "runs")
    archived = None if args.archived == "all" else args.archived == "only"
    limit = _listing_limit(args)
    with _read(args) as store:
        rows = store.page_runs(where=flt.sql, params=flt.params, order=args.sort, descending=not args.asc,
                               limit=limit, archived=archived)
        total = store.count_runs(where=flt.sql, params=flt.params, archived=archived) \
            if limit is not None else len(rows)
        from engine.seeds import group_columns, seed_groups
        from engine.sweeps import mark_screened

        groups = group_columns(seed_groups(store))
        mark_screened(store, rows)
    rows = [{**r, **groups.get(r["run_id"], {})} for r in rows]
    if not args.json:  # a screened run's score is its screening fold's (f0 0.6120), never a CV figure
        rows = [{**r, "cv_lwlrap": r["screen_text"]} if r.get("screen_text") else r for r in rows]
    _emit(args, rows, "runs", ["run_id", "kind", "name", "model", "status", "folds_done", "cv_lwlrap",
                               "mean_fold_lwlrap", "seeds", "group_cv", "test_lwlrap", "tags", "created"])
    _say_cut(len(rows), total, "runs")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Two or more runs side by side: config differences, fold mean ± std, per-class LRAP and deltas."""
    from engine.compare import class_headers, compare_runs, comparison_markdown, pm_text, table_csv

    from engine.stats import compare_noise

    with _open(args) as store:
        comp = compare_runs(store, args.runs, args.baseline)
        noise = compare_noise(store, comp.run_ids, comp.baseline)
    if args.markdown:
        sys.stdout.write(comparison_markdown(comp))
        return 0
    if args.csv:
        sys.stdout.write(table_csv(comp.class_rows(), comp.class_columns(), class_headers(comp)))
        return 0
    if args.json:
        print(json.dumps({"baseline": comp.baseline, "clips": comp.basis.as_dict(), "runs": comp.summary_rows(),
                          "config_diff": [{"key": k, "values": dict(zip(comp.run_ids, v))}
                                          for k, v in comp.config_diff()],
                          "classes": comp.class_rows(), "noise": noise}, indent=2, default=str))
        return 0
    summary = comp.summary_rows()
    for r in summary:
        r["fold mean ± std"] = pm_text(r["fold_mean"], r["fold_std"])
        r["Δ OOF"] = _signed(r["delta_cv"]) if not r["baseline"] else "baseline"
    _emit(args, summary, "runs", ["run_id", "kind", "model", "cv_lwlrap", "fold mean ± std", "folds", "clips",
                                  "test_lwlrap", "Δ OOF", "seeds", "group_cv", "group_folds"])
    console.print(comp.basis.text(), highlight=False, markup=False)
    _emit(args, noise, f"larger than noise? (against {comp.baseline})", ["run_id", "clips", "seeds"])
    diff = [{"setting": k, **{r: json.dumps(v) if not isinstance(v, str) else v for r, v in zip(comp.run_ids, vals)}}
            for k, vals in comp.config_diff()]
    if diff:
        _emit(args, diff, "config differences", ["setting", *comp.run_ids])
    else:
        print("the configs are the same")
    classes = comp.class_rows()
    first_delta = next((c for c in comp.class_columns() if c.startswith("delta:")), None)
    if first_delta:  # biggest gain over the baseline first, missing deltas last
        classes.sort(key=lambda r: (r[first_delta] is None, -(r[first_delta] or 0.0)))
    for r in classes:
        for key in list(r):
            if key.startswith("delta:"):
                r[key] = _signed(r[key])
    _emit(args, classes, f"classes (out-of-fold LRAP; deltas vs {comp.baseline})", comp.class_columns())
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    with _open(args) as store:
        current = store.run_tags(args.run_id) if store.get_run(args.run_id) else None
        if current is None:
            raise FsatError(f"no run {args.run_id!r} (see `fsat runs`)")
        wanted = [t for t in current if t.lower() not in {r.lower() for r in args.remove or []}]
        tags = store.set_run_tags(args.run_id, wanted + list(args.tags))
    print(f"{args.run_id}: " + (" ".join(tags) or "no tags"))
    return 0


def cmd_note(args: argparse.Namespace) -> int:
    with _open(args) as store:
        store.set_run_note(args.run_id, " ".join(args.text))
    print(f"{args.run_id}: note saved")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    with _open(args) as store:
        missing = [r for r in args.run_ids if store.get_run(r) is None]
        if missing:
            raise FsatError(f"no run {missing[0]!r} (see `fsat runs --archived all`)")
        n = store.set_runs_archived(args.run_ids, archived=not args.undo)
    print(f"{'unarchived' if args.undo else 'archived'} {n} run(s)")
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    with _open(args) as store:
        job = store.requeue_job(args.job_id)
    print(f"job {job.id}: queued again (its run {job.run_id or '-'} resumes from its checkpoints)")
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    with _read(args) as store:
        rows = store.live_workers(max_age=args.max_age)
    _emit(args, rows, "live workers", ["id", "pid", "host", "status", "job_id"])
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    with _read(args) as store:
        rows = store.list_datasets()
    _emit(args, rows, "datasets", ["id", "name", "root", "n_curated", "n_noisy", "n_test", "n_folds"])
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from engine.presets import list_presets, preset_kind

    rows = [{"name": k, "kind": preset_kind(v), "about": intake.preset_about(v), "path": str(v)}
            for k, v in sorted(list_presets().items())]
    _emit(args, rows, "presets", ["name", "kind", "about", "path"])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _read(args) as store:
        run = store.get_run(args.run_id)
        if run is None:
            raise FsatError(f"no run {args.run_id!r} (see `fsat runs`)")
        from engine.sweeps import mark_screened

        mark_screened(store, [run])
        folds = store.fold_scores(args.run_id)
        fold = OOF if args.fold is None else args.fold
        classes = store.class_scores(args.run_id, fold)
        epochs = store.epochs(args.run_id)
        members = store.run_members(args.run_id)
        candidates = store.ensemble_candidates(args.run_id)
    if args.json:
        print(json.dumps({"run": run, "folds": folds, "classes": classes, "epochs": epochs,
                          "members": members, "candidates": candidates}, indent=2, default=str))
        return 0
    headline = f"screening {run['screen_text']}" if run.get("screen_text") else \
        f"CV lwlrap [bold]{_fmt(run['cv_lwlrap'])}[/]"
    console.print(f"[bold]{run['run_id']}[/] {run['kind']} {run['model']} \\[{run['status']}]  "
                  f"{headline}  test {_fmt(run['test_lwlrap'])}  "
                  f"seed {run['seed']}  device {run['device']}  config {run['config_hash']}")
    for f in folds:
        f["epochs"] = sum(1 for e in epochs if e["fold"] == f["fold"])
    _print_table("folds", folds, ["fold", "lwlrap", "best_epoch", "n_val", "epochs"])
    if members:
        _print_table("members", members, ["member_run_id", "weight"])
    if candidates:
        _print_table("methods scored (* = used)", [{**c, "method": c["method"] + (" *" if c["chosen"] else "")}
                                                   for c in candidates],
                     ["method", "oof_lwlrap", "raw_oof_lwlrap", "test_lwlrap", "note"])
    if run.get("warning"):
        console.print(f"[bold yellow]warning:[/] {run['warning']}", highlight=False)
    from engine.compare import config_lines

    console.print("[bold]config[/] (runs/<id>/config.json)", highlight=False)
    # In a terminal a long setting wraps at its width; piped, every line is whole (the console's soft wrap).
    console.print("\n".join("  " + line for line in config_lines(run.get("config") or {})), highlight=False,
                  markup=False)
    scope = "out-of-fold" if fold == OOF else f"fold {fold}"
    ranked = sorted(classes, key=lambda r: (r["lrap"] is None, -(r["lrap"] or 0)))
    _print_table(f"classes ({scope}, by LRAP)", ranked, ["class_idx", "class_name", "lrap", "weight", "n_pos"])
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _open(args, create=False) as store:
        status = store.request_cancel(args.job_id)
    if status == "running":
        print(f"job {args.job_id}: cancel requested; its worker stops it within seconds")
    else:
        print(f"job {args.job_id}: {status}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fsat``."""
    ap = argparse.ArgumentParser(prog="fsat", description="Headless fsat-console: datasets, jobs, runs, scores.")
    db_help = "database (default $FSAT_DB or ./experiments.db)"
    ap.add_argument("--db", type=Path, default=None, help=db_help)
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_: str, listing: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        # Also after the command (`fsat runs --db X`); not given there, the one before it stands.
        p.add_argument("--db", type=Path, default=argparse.SUPPRESS, help=db_help)
        p.add_argument("--json", action="store_true", help="print JSON" if listing else argparse.SUPPRESS)
        return p

    p = add("demo-data", cmd_demo_data, "write the synthetic demo dataset in the FSDKaggle2019 layout")
    p.add_argument("dir", type=Path)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--clips-per-class", type=int, default=None, help="curated clips per class (small for tests)")
    p.add_argument("--clips-per-source", type=int, default=1,
                   help="cut curated clips of a class in runs of N from one recording and write its id in a "
                        "freesound_id column (shared-source groups for data.group_column)")
    p.add_argument("--size", type=_size_arg, default=None, metavar="full|FRACTION",
                   help="FSDKaggle2019's dimensions instead of the small demo: 'full' (4,970 curated, 19,815 noisy, "
                        "3,361 test clips, about 97 h and 31 GB of audio) or a fraction such as 0.25")

    p = add("register", cmd_register, "register a dataset root and compute its folds")
    p.add_argument("dir", type=Path)
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--fold-seed", type=_seed, default=42)
    p.add_argument("--group-column", default="",
                   help="train_curated.csv column naming each clip's source recording: folds keep each in one fold")

    p = add("queue", cmd_queue, "queue a job from a preset or config file with overrides; prints the job id")
    p.add_argument("kind", choices=[*intake.KINDS, "plan"])
    p.add_argument("targets", nargs="*", metavar="RUN_ID",
                   help="infer: the trained run; ensemble: the member runs; curriculum: the teacher run; "
                        "plan: the plan preset")
    p.add_argument("--data", help="dataset root (Kaggle layout) of the kinds that take one: "
                   + ", ".join(k.name for k in intake.KINDS.values() if k.takes_data_root)
                   + " (for a curriculum, the teacher's dataset, checked)")
    p.add_argument("--preset", help="preset name under configs/ (see `fsat presets`)")
    p.add_argument("--config", type=Path, help="a TOML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override settings, e.g. train.epochs=3; several in one value are split on spaces "
                        "outside quotes and brackets, as the console's overrides field does")
    p.add_argument("--name", help="run name (plan: the plan's name)")
    p.add_argument("--priority", type=_whole, default=0, help="higher runs first (plan: every step's priority)")

    p = add("ensemble", cmd_ensemble, "blend runs' out-of-fold and test scores: queue the job (prints its id) "
            "or, with --now, blend here and save the run; --dry-run prints every method's scores and saves nothing", listing=True)
    p.add_argument("members", nargs="+", metavar="RUN_ID", help="runs with oof.npy (infer, baseline, ensemble)")
    p.add_argument("--weights", nargs="+", type=float, metavar="W",
                   help="one weight per member (default: proportional to CV lwlrap)")
    p.add_argument("--method", choices=list(ENSEMBLE_METHODS), default="auto",
                   help="auto (default): every method and the best member, scored by cross-fitted OOF lwlrap")
    p.add_argument("--no-calibrate", action="store_true", help="keep blended ranks, no rank-to-probability map")
    p.add_argument("--greedy", action="store_true", help="greedy forward selection of members by OOF lwlrap")
    p.add_argument("--greedy-steps", type=_whole, default=None)
    p.add_argument("--no-submission", action="store_true", help="do not write submission.csv")
    p.add_argument("--name", help="run name")
    p.add_argument("--priority", type=_whole, default=0, help="higher runs first (queued job)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--now", action="store_true", help="blend in this process and save the run instead of "
                      "queueing a job")
    mode.add_argument("--dry-run", action="store_true", help="print every method's OOF and test lwlrap and save "
                      "nothing (no run, no files)")

    p = add("submission", cmd_submission, "write a validated submission CSV from a run's test scores",
            listing=True)
    p.add_argument("run_id")
    p.add_argument("--out", type=Path, required=True, help="where to write the CSV")

    p = add("tta", cmd_tta, "the TTA gain of an infer run over its trained run: overall, per fold, per class",
            listing=True)
    p.add_argument("run_id")

    p = add("audit", cmd_audit, "a curriculum run: gain over its teacher, per-class noisy-label audit, loss swaps",
            listing=True)
    p.add_argument("run_id")

    def listing_flags(p: argparse.ArgumentParser, sort: str, sorts: Sequence[str]) -> None:
        p.add_argument("filter", nargs="*", metavar="FILTER",
                       help="filter, e.g. model:cnn14 cv>0.8 status:done tag:best (OR, NOT, parentheses)")
        p.add_argument("--limit", type=_whole, default=None,
                       help=f"at most N rows (default {DEFAULT_LISTING} in a terminal, all for --json/--csv)")
        p.add_argument("--all", action="store_true", help="every matching row")
        p.add_argument("--sort", choices=list(sorts), default=sort, help=f"sort column (default {sort})")
        p.add_argument("--asc", action="store_true", help="ascending (default: descending)")
        p.add_argument("--csv", action="store_true", help="print CSV with full values")
        p.add_argument("--markdown", action="store_true", help="print a Markdown table")

    from engine.store import JOB_ORDER, RUN_ORDER

    p = add("jobs", cmd_jobs, "list jobs", listing=True)
    p.add_argument("--status", choices=JOB_STATES)
    listing_flags(p, "id", JOB_ORDER)

    p = add("runs", cmd_runs, "list runs with their scores", listing=True)
    p.add_argument("--archived", choices=["hide", "only", "all"], default="hide",
                   help="archived runs: hidden (default), only them, or all")
    listing_flags(p, "created", RUN_ORDER)

    p = add("compare", cmd_compare, "compare runs: config differences, fold mean ± std, per-class LRAP and "
            "deltas against a baseline", listing=True)
    p.add_argument("runs", nargs="+", metavar="RUN_ID")
    p.add_argument("--baseline", help="the run deltas are taken against (default: the first)")
    p.add_argument("--csv", action="store_true", help="the per-class table as CSV")
    p.add_argument("--markdown", action="store_true", help="everything as Markdown")

    p = add("tag", cmd_tag, "add (or --remove) tags of a run")
    p.add_argument("run_id")
    p.add_argument("tags", nargs="*")
    p.add_argument("--remove", nargs="+", metavar="TAG")

    p = add("note", cmd_note, "set a run's note")
    p.add_argument("run_id")
    p.add_argument("text", nargs="*")

    p = add("archive", cmd_archive, "archive runs (hidden from listings by default, kept in the database)")
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    p.add_argument("--undo", action="store_true", help="unarchive")

    p = add("requeue", cmd_requeue, "queue a failed or cancelled job again (a training run resumes)")
    p.add_argument("job_id", type=_whole)

    p = add("show", cmd_show, "show a run: folds, per-class LRAP (out-of-fold or one fold)", listing=True)
    p.add_argument("run_id")
    p.add_argument("--fold", type=_whole, default=None, help="per-class scores of this fold instead of out-of-fold")

    p = add("cancel", cmd_cancel, "cancel a queued or running job")
    p.add_argument("job_id", type=_whole)

    p = add("plans", cmd_plans, "list plans, or one plan's steps and their states", listing=True)
    p.add_argument("plan_id", type=int, nargs="?")
    p.add_argument("--cancel", action="store_true", help="cancel the plan's jobs that have not started")

    p = add("wait", cmd_wait, "wait for a job to end (exit 0 when done)")
    p.add_argument("job_id", type=_whole)
    p.add_argument("--follow", "-f", action="store_true",
                   help="meanwhile print the job's progress when it changes and each new line of its job.log")
    p.add_argument("--timeout", type=float, default=0)

    p = add("workers", cmd_workers, "list live workers", listing=True)
    p.add_argument("--max-age", type=float, default=10.0)
    add("datasets", cmd_datasets, "list registered datasets", listing=True)
    add("presets", cmd_presets, "list presets", listing=True)
    add_report_parser(sub)
    add_sweep_parser(sub)

    from engine.kaggle.cli import add_parser as add_kaggle_parsers

    add_kaggle_parsers(sub, db_help)   # fsat kaggle pack|rehearse|push, fsat lb
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fsat``."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`fsat runs | head`): stop quietly, with the status of a command that SIGPIPE
        # ended (128 + 13). What is still buffered goes to devnull, so the flush at exit cannot raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except FsatError as err:
        err_console.print(Text.assemble(("error:", "bold red"), f" {err}"), highlight=False, soft_wrap=True)
        return 2
    except sqlite3.Error as err:
        # An SQLite error the store did not foresee: still one line, naming the database.
        err_console.print(f"error: {args.db or default_db_path()}: {err}", highlight=False, soft_wrap=True,
                          markup=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
