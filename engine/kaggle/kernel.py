"""The Kaggle kernel's inference: a pack's fold models with TTA on the test clips, the blend, submission.csv.

This module runs inside the kernel from the pack's embedded sources (``src/``,
copied from this project at pack time), with no database, no network and no
project installed. It imports only the modules the inference needs (an
import-linter contract keeps it off the store, the jobs and the CLI), so the
embedded copy stays small.

Stages, each timed and printed as it ends (``stage NAME: SECONDS s``) and
written to ``kernel_timings.json`` for the rehearsal's projection:

- ``setup``: read the pack, check the library versions against the pinned ones.
- ``check``: the test folder against ``sample_submission.csv``: missing,
  extra and unreadable clips are named on one line; missing or unreadable
  ones stop the kernel (a submission must cover every clip).
- ``decode``: the clips decoded and resampled once per sample rate (the
  project's waveform cache, the same int16 rounding the infer job saw).
- ``predict MEMBER``: every fold model of a member, TTA crops of the clips
  taken longest first (batches hold crops of clips of like length, the
  long clips with ``tta_crops_long`` crops together), folds averaged in logit
  space (``engine.infer.fold_average``).
- ``blend``: the ensemble's members blended with its method, weights and rank
  maps (``engine.ensemble.blend`` with the members' out-of-fold scores as
  the rank reference), as the ensemble job did.
- ``write``: ``submission.csv`` in the sample's row and column order,
  validated before it is written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.data.labels import read_sample_submission
from engine.data.manifest import ClipTable, open_source
from engine.errors import DataError, FsatError

__all__ = ["KernelError", "StageTimer", "check_test_folder", "main", "run_pack", "PACK_MANIFEST", "TIMINGS_FILE"]

#: The pack's manifest, at the top of the dataset folder.
PACK_MANIFEST = "pack.json"
#: Written by the kernel beside its submission: each stage's seconds and what it scales with.
TIMINGS_FILE = "kernel_timings.json"
SUBMISSION_FILE = "submission.csv"
#: Names shown in the one-line report of a test folder, before "and N more".
MAX_NAMED = 5


class KernelError(FsatError):
    """Why the kernel cannot write a submission, in one line."""


@dataclass
class StageTimer:
    """Each stage's wall time, printed as it ends; ``scales`` says how a projection scales it.

    ``clips``: proportional to the number of test clips (decoding, the blend,
    writing); ``model``: proportional to the clips and inversely to the
    device's speed (a member's prediction); ``fixed``: neither.
    """

    stages: list[dict] = field(default_factory=list)

    def run(self, name: str, scales: str, fn, *, member: str | None = None):
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        self.stages.append({"name": name, "seconds": seconds, "scales": scales, "member": member})
        print(f"stage {name}: {seconds:.2f} s", flush=True)
        return out


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMED])
    return shown + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")


def _folder_report(data_dir: Path, missing: list[str], extra: list[str], unreadable: list[str]) -> str:
    parts = [f"{len(names)} {what} ({_some(names)})" for what, names in
             (("missing", missing), ("extra", extra), ("unreadable", unreadable)) if names]
    return f"test clips in {data_dir}: " + "; ".join(parts)


def check_test_folder(data_dir: Path | str) -> tuple[ClipTable, list[str], str | None]:
    """The test clips of ``sample_submission.csv`` in ``data_dir``, its classes, and a line on extra clips.

    A missing sample, a missing test folder (or ``test.zip``) or clips of the
    sample missing from it raise KernelError with one line naming them; clips
    in the folder that the sample does not list are only reported (the line
    returned, None when there are none).
    """
    data_dir = Path(data_dir)
    sample = data_dir / "sample_submission.csv"
    if not sample.is_file():
        raise KernelError(f"{sample}: not found; the competition's data must be attached to the kernel "
                          "(or give --data the folder with sample_submission.csv and test/)")
    classes, fnames, lines = read_sample_submission(sample)
    source = open_source(data_dir, "test")
    if source is None:
        raise KernelError(f"{data_dir}: no test/ folder or test.zip beside sample_submission.csv")
    names = source.names()
    listed = set(fnames)
    missing = [f for f in fnames if f not in names]
    extra = sorted(n for n in names if n not in listed)
    if missing:
        raise KernelError(_folder_report(data_dir, missing, extra, []))
    table = ClipTable(split="test", fnames=list(fnames), Y=None, source=source, csv_path=sample, lines=lines)
    return table, classes, (_folder_report(data_dir, [], extra, []) if extra else None)


def _unreadable(table: ClipTable, sample_rate: int) -> list[str]:
    """Every clip of ``table`` that does not decode (only looked for once a decode has failed)."""
    from engine.data.audio import decode

    bad = []
    for fname in table.fnames:
        try:
            decode(table.source.read_bytes(fname), name=fname, target_sr=sample_rate)
        except (DataError, OSError) as err:
            bad.append(f"{fname}: {str(err).split(': ', 1)[-1][:80]}")
    return bad


def _decode(table: ClipTable, sample_rate: int, cache_dir: Path, data_dir: Path, extra: list[str]):
    from engine.data.cache import WaveformCache

    try:
        return WaveformCache.build(table, sample_rate=sample_rate, cache_dir=cache_dir)
    except (DataError, OSError):
        bad = _unreadable(table, sample_rate)
        if not bad:
            raise
        raise KernelError(_folder_report(data_dir, [], extra, bad)) from None


def _versions(pinned: dict[str, str]) -> list[str]:
    """One line per pinned distribution whose installed version differs (or that is not installed)."""
    from importlib import metadata

    out = []
    for dist, want in sorted(pinned.items()):
        try:
            have = metadata.version(dist)
        except metadata.PackageNotFoundError:
            have = None
        if have != want:
            out.append(f"{dist} {have or 'not installed'} (packed with {want})")
    return out


def predict_member(member: dict, pack_dir: Path, cache, *, n_classes: int, device) -> np.ndarray:
    """A packed member's test probabilities: every fold with TTA, clips longest first, folds averaged."""
    import torch

    from engine.infer import DEFAULT_SHORT_CLIPS, fold_average, predict_tta_logits
    from engine.models.registry import tagger_from_spec
    from engine.specs import TrainSpec, from_dict

    spec = from_dict(TrainSpec, member["spec"])
    inf = member["infer"]
    sr = spec.audio.sample_rate
    crop = int(round(spec.audio.crop_seconds * sr))
    long_samples = int(round(inf["long_seconds"] * sr))
    order = np.argsort(-np.asarray(cache.lengths), kind="stable")
    fold_logits = []
    for rel in member["checkpoints"]:
        path = pack_dir / rel
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            tagger = tagger_from_spec(spec, n_classes, pretrained=False, augment=False, log=lambda _m: None)
            tagger.load_state_dict(state)
        except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is one line naming it
            raise KernelError(f"{path}: the checkpoint does not load ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:160]})") from None
        sorted_logits = predict_tta_logits(tagger, cache, order, crop=crop, k=inf["tta_crops"],
                                           k_long=inf["tta_crops_long"], long_samples=long_samples,
                                           short_clips=member.get("short_clips", DEFAULT_SHORT_CLIPS),
                                           batch_size=inf["batch_size"], device=device,
                                           num_workers=inf["num_workers"], amp=spec.optim.amp,
                                           cpu_bf16=spec.optim.cpu_bf16)
        logits = np.empty_like(sorted_logits)
        logits[order] = sorted_logits
        fold_logits.append(logits)
    return fold_average(fold_logits)


def blend_members(manifest: dict, pack_dir: Path, tests: dict[str, np.ndarray]) -> np.ndarray:
    """The ensemble's blend of the members' test probabilities, as the ensemble job computed it."""
    from engine.ensemble import Member, blend

    spec = manifest["blend"]
    truth = np.load(pack_dir / spec["truth"]).astype(np.float64)
    members = [Member(name=m["run_id"], oof=np.load(pack_dir / m["oof"]), test=tests[m["run_id"]])
               for m in manifest["members"]]
    result = blend(members, truth, weights=[m["weight"] for m in manifest["members"]], method=spec["method"],
                   calibrate=spec["calibrate"])
    return result.test


def run_pack(pack_dir: Path | str, data_dir: Path | str, out_dir: Path | str, *, device: str = "auto") -> Path:
    """Run the pack on the test clips of ``data_dir``; write ``submission.csv`` and the timings to ``out_dir``."""
    pack_dir, data_dir, out_dir = Path(pack_dir), Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timer = StageTimer()

    def setup() -> tuple[dict, str]:
        import torch

        manifest = json.loads((pack_dir / PACK_MANIFEST).read_text())
        for line in _versions(manifest.get("requirements", {})):
            print(f"version differs: {line}", flush=True)
        name = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        return manifest, name

    manifest, device_name = timer.run("setup", "fixed", setup)
    print(f"pack {manifest['run_id']} ({manifest['kind']}): {len(manifest['members'])} member(s) on {device_name}",
          flush=True)
    table, classes, extra_line = timer.run("check", "clips", lambda: check_test_folder(data_dir))
    if extra_line:
        print(extra_line, flush=True)
    if list(classes) != list(manifest["classes"]):
        raise KernelError(f"{data_dir / 'sample_submission.csv'}: its class columns differ from the "
                          "classes the models were trained on")
    extra = [] if extra_line is None else sorted(set(table.source.names()) - set(table.fnames))
    notes = [] if extra_line is None else [extra_line]
    # Decoded clips go to the temporary folder, not the kernel's output folder (Kaggle keeps that one).
    cache_dir = Path(tempfile.mkdtemp(prefix="fsat-cache-"))
    try:
        return _predict_and_write(manifest, pack_dir, data_dir, out_dir, table, classes, extra, cache_dir,
                                  device_name, timer, notes)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def _predict_and_write(manifest: dict, pack_dir: Path, data_dir: Path, out_dir: Path, table: ClipTable,
                       classes: list[str], extra: list[str], cache_dir: Path, device_name: str,
                       timer: StageTimer, notes: list[str]) -> Path:
    caches = {}
    for rate in sorted({m["spec"]["audio"]["sample_rate"] for m in manifest["members"]}):
        caches[rate] = timer.run(f"decode {rate} Hz", "clips",
                                 lambda r=rate: _decode(table, r, cache_dir, data_dir, extra))
    tests = {}
    for m in manifest["members"]:
        cache = caches[m["spec"]["audio"]["sample_rate"]]
        tests[m["run_id"]] = timer.run(f"predict {m['run_id']}", "model",
                                       lambda m=m, c=cache: predict_member(m, pack_dir, c, n_classes=len(classes),
                                                                           device=device_name),
                                       member=m["run_id"])
    if manifest.get("blend"):
        probs = timer.run("blend", "clips", lambda: blend_members(manifest, pack_dir, tests))
    else:
        probs = tests[manifest["members"][0]["run_id"]]

    def write() -> Path:
        from engine.submission import write_submission

        return write_submission(out_dir / SUBMISSION_FILE, table.fnames, probs,
                                sample_submission=data_dir / "sample_submission.csv")

    path = timer.run("write", "clips", write)
    (out_dir / TIMINGS_FILE).write_text(json.dumps({"n_clips": len(table.fnames), "device": device_name,
                                                    "stages": timer.stages, "notes": notes}, indent=1))
    print(f"wrote {path} ({len(table.fnames)} clips) in {sum(s['seconds'] for s in timer.stages):.1f} s",
          flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python kernel.py [--pack DIR] [--data DIR] [--out DIR] [--device auto|cpu|cuda]``; exit 2 with one line."""
    ap = argparse.ArgumentParser(prog="kernel.py", description="Predict the test clips with a packed run.")
    ap.add_argument("--pack", type=Path, required=True, help="the pack's dataset folder (holds pack.json)")
    ap.add_argument("--data", type=Path, required=True, help="folder with sample_submission.csv and test/")
    ap.add_argument("--out", type=Path, required=True, help="where submission.csv goes")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args(argv)
    try:
        run_pack(args.pack, args.data, args.out, device=args.device)
    except FsatError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0
