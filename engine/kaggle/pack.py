"""``fsat kaggle pack RUN OUT``: a run as a folder ready for the Kaggle CLI (a kernel and a dataset).

Layout of ``OUT``::

    README.md                   how to push it (the exact commands)
    kernel/kernel.py            the kernel script (engine/kaggle/kernel_entry.py with the slugs filled in)
    kernel/kernel-metadata.json code competition, GPU on, internet off, the dataset and competition as sources
    dataset/dataset-metadata.json
    dataset/pack.json           the manifest: members, folds, weights, method, frontend and TTA settings,
                                pinned versions, every file's sha256 and size
    dataset/requirements.txt    the libraries the kernel imports, pinned to the versions packed with
    dataset/src/engine/...      the project modules the kernel needs, copied from this checkout
    dataset/members/<run>/fold<k>.pt   weights-only state dicts (frontend statistics included)
    dataset/members/<run>/oof.npy      an ensemble member's out-of-fold scores: its rank map's reference
    dataset/blend/truth.npy            the curated labels the rank maps are fitted on (ensembles)

A train or curriculum run is packed with the default TTA settings, an infer
run with its own, an ensemble with each member's (members must be infer runs:
their fold checkpoints are what the kernel runs). A run that cannot be packed
(no fold checkpoints, a member without test predictions, a checkpoint that
does not load) is refused with one line naming the run and the file, and
nothing is left in ``OUT``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import CheckpointError, ConfigError, FsatError
from engine.kaggle.kernel import PACK_MANIFEST
from engine.kaggle.sources import KERNEL_MODULE, PROJECT_ROOT, module_closure, module_path, pinned_requirements
from engine.atomic import load_json
from engine.runs.lineage import sha256_file
from engine.specs import InferSection, to_dict
from engine.store import Store

__all__ = ["COMPETITION", "PackError", "PackReport", "pack_run", "KERNEL_DIR", "DATASET_DIR"]

COMPETITION = "freesound-audio-tagging-2019"
KERNEL_DIR = "kernel"
DATASET_DIR = "dataset"
#: The owner written into the metadata when none is given; the user replaces it (or packs with --owner).
OWNER_PLACEHOLDER = "your-kaggle-username"
PACK_FORMAT = 1


class PackError(FsatError):
    """A run that cannot be packed; the message names the run and the file."""


@dataclass
class PackReport:
    """What a pack holds: its folders, the size of each part and in all, the manifest hash, the fp16 check."""

    out: Path
    run_id: str
    kind: str
    members: list[str]
    parts: dict[str, int] = field(default_factory=dict)   # part -> bytes
    total_bytes: int = 0
    pack_sha256: str = ""
    submission_id: int | None = None
    precision: str = "fp32"
    fp16_check: list[dict] = field(default_factory=list)   # per member: OOF lwlrap fp32, fp16, change

    def as_dict(self) -> dict:
        return {"out": str(self.out), "run_id": self.run_id, "kind": self.kind, "members": self.members,
                "parts": self.parts, "total_bytes": self.total_bytes, "pack_sha256": self.pack_sha256,
                "submission_id": self.submission_id, "precision": self.precision, "fp16_check": self.fp16_check}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:50]


def _member_plan(store: Store, run: dict) -> tuple[list[dict], dict | None]:
    """The members to pack (run rows with weight and infer settings) and the blend, or a PackError."""
    rid, kind = run["run_id"], run["kind"]
    if run["status"] != "done":
        raise PackError(f"run {rid!r} is {run['status']}, not finished; pack it once it is done")
    if kind in ("train", "curriculum"):
        return [{"run": run, "source": run, "infer": to_dict(InferSection()), "weight": 1.0}], None
    if kind == "infer":
        return [_infer_member(store, run, rid, 1.0)], None
    if kind == "ensemble":
        config_path = Path(run["run_dir"]) / "config.json"
        if not config_path.is_file():
            raise PackError(f"run {rid!r}: {config_path} is missing; the blend's weights and method are in it")
        config = load_json(config_path)
        weights = config.get("weights") or {}
        members = [_infer_member(store, _member_run(store, rid, m), rid, float(w)) for m, w in weights.items()]
        members = [m for m in members if m["weight"] > 0]
        test_path = Path(run["run_dir"]) / "test.npy"
        for m in members:
            member_test = Path(m["run"]["run_dir"]) / "test.npy"
            if not member_test.is_file():
                raise PackError(f"run {rid!r}: member {m['run']['run_id']!r} has no test predictions "
                                f"({member_test} is missing); infer it on the test set first")
        if not test_path.is_file():
            raise PackError(f"run {rid!r}: {test_path} is missing; only a blend with test scores can be packed")
        blend = {"method": config["method"], "calibrate": bool((config.get("spec") or {}).get("calibrate", True))}
        return members, blend
    raise PackError(f"run {rid!r} is a {kind} run; pack a train, curriculum, infer or ensemble run")


def _member_run(store: Store, rid: str, member_id: str) -> dict:
    member = store.get_run(member_id)
    if member is None:
        raise PackError(f"run {rid!r}: member {member_id!r} is not in the database")
    return member


def _infer_member(store: Store, member: dict, rid: str, weight: float) -> dict:
    if member["kind"] != "infer":
        raise PackError(f"run {rid!r}: member {member['run_id']!r} is a {member['kind']} run; the kernel runs fold "
                        "checkpoints, so members must be infer runs of train or curriculum runs")
    source = store.get_run(member.get("parent_run_id") or "")
    if source is None:
        raise PackError(f"run {rid!r}: member {member['run_id']!r} names no trained run "
                        f"({member.get('parent_run_id')!r} is not in the database)")
    infer = (member.get("config") or {}).get("infer") or to_dict(InferSection())
    return {"run": member, "source": source, "infer": infer, "weight": weight}


def _teacher(store: Store, source: dict) -> str | None:
    """The teacher of a curriculum run (its parent), else None."""
    return source.get("parent_run_id") if source.get("kind") == "curriculum" else None


def _save_state(state: dict, path: Path, fp16: bool) -> None:
    import torch

    if fp16:
        # The frontend's statistics stay float32 (tiny); the model's floating weights are halved.
        state = {k: (v.half() if k.startswith("model.") and v.is_floating_point() else v) for k, v in state.items()}
    torch.save(state, path)


def _oof_lwlrap_with(store: Store, trained, tagger_states: list[dict], n_classes: int, infer: dict) -> float:
    """OOF LWLRAP of a trained run's fold models (centre crop) with the given state dicts loaded."""
    from engine.data.cache import WaveformCache
    from engine.data.manifest import load_layout
    from engine.infer import predict_tta_logits, sigmoid
    from engine.data.cache import cache_dir_for
    from engine.metrics import lwlrap
    from engine.models.registry import tagger_from_spec
    from engine.runs.members import fold_of_clips

    spec = trained.spec
    layout = load_layout(spec.data.root)
    sr = spec.audio.sample_rate
    cache = WaveformCache.build(layout.curated, sample_rate=sr, cache_dir=cache_dir_for(spec.data.root,
                                                                                        spec.data.cache_dir))
    fold_of = fold_of_clips(layout.curated.fnames, store.get_folds(trained.run["dataset_id"]))
    oof = np.zeros(layout.curated.Y.shape)
    rows = np.zeros(len(oof), dtype=bool)
    for k, state in zip(trained.folds, tagger_states):
        idx = np.flatnonzero(fold_of == k)
        tagger = tagger_from_spec(spec, n_classes, pretrained=False, augment=False, log=lambda _m: None)
        tagger.load_state_dict(state)
        oof[idx] = sigmoid(predict_tta_logits(tagger, cache, idx, crop=int(round(spec.audio.crop_seconds * sr)),
                                              k=1, batch_size=infer["batch_size"], device="cpu", amp=False))
        rows[idx] = True
    return float(lwlrap(layout.curated.Y[rows], oof[rows]))


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _readme(owner: str, dataset_slug: str, kernel_slug: str, run_id: str) -> str:
    return f"""# Kaggle pack of run {run_id}

Push the dataset first (`-r zip` uploads the sub-folders `src/`, `members/` and `blend/`;
without it the Kaggle CLI skips them silently), then the kernel:

```bash
kaggle datasets create -p dataset -r zip        # a new version later: kaggle datasets version -p dataset -r zip -m "..."
kaggle kernels push -p kernel
```

or `fsat kaggle push PACK` (PACK: this folder), which runs the same commands.
The metadata names the owner `{owner}`: {'replace it with your Kaggle username in both metadata files, or pack again with `--owner USER`' if owner == OWNER_PLACEHOLDER else 'your Kaggle username'}.
The dataset is `{owner}/{dataset_slug}`, the kernel `{owner}/{kernel_slug}` (GPU, no internet,
competition `{COMPETITION}`). Rehearse it before pushing: `fsat kaggle rehearse PACK --test DATA_ROOT`.
"""


def pack_run(store: Store, run_id: str, out: Path | str, *, owner: str = OWNER_PLACEHOLDER, fp16: bool = False,
             log=print) -> PackReport:
    """Write the pack of ``run_id`` to ``out`` (which must not exist or be empty); return its report."""
    import torch  # noqa: F401 - checkpoints are loaded and saved below

    from engine.data.manifest import load_layout
    from engine.jobs.infer import load_fold_tagger, load_trained_run

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PackError(f"{out}: exists and is not empty; pack into a new folder")
    run = store.get_run(run_id)
    if run is None:
        raise PackError(f"no run {run_id!r}; see `fsat runs`")
    plan, blend = _member_plan(store, run)
    dataset = store.get_dataset(run["dataset_id"]) if run.get("dataset_id") is not None else None
    if dataset is None:
        raise PackError(f"run {run_id!r} is linked to no dataset; its classes are unknown")
    classes = list(dataset["classes"])

    tmp = out.parent / f".{out.name}.packing-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    data_dir = tmp / DATASET_DIR
    (data_dir / "members").mkdir(parents=True)
    report = PackReport(out=out, run_id=run_id, kind=run["kind"], members=[m["run"]["run_id"] for m in plan],
                        precision="fp16" if fp16 else "fp32")
    try:
        manifest_members = []
        for m in plan:
            member, source = m["run"], m["source"]
            try:
                trained = load_trained_run(store, source["run_id"])
            except (ConfigError, CheckpointError) as err:
                raise PackError(f"run {run_id!r}: {err}") from None
            folder = data_dir / "members" / member["run_id"]
            folder.mkdir()
            checkpoints, states = [], []
            for k in trained.folds:
                try:
                    tagger = load_fold_tagger(trained, k, len(classes))
                except CheckpointError as err:
                    raise PackError(f"run {run_id!r}: {err}") from None
                state = tagger.state_dict()
                states.append(state)
                _save_state(state, folder / f"fold{k}.pt", fp16)
                checkpoints.append(f"members/{member['run_id']}/fold{k}.pt")
            if fp16:
                import torch

                halved = [torch.load(data_dir / c, weights_only=True) for c in checkpoints]
                before = _oof_lwlrap_with(store, trained, states, len(classes), m["infer"])
                after = _oof_lwlrap_with(store, trained, halved, len(classes), m["infer"])
                report.fp16_check.append({"member": member["run_id"], "oof_lwlrap_fp32": before,
                                          "oof_lwlrap_fp16": after, "change": after - before})
                log(f"fp16 {member['run_id']}: OOF lwlrap (centre crop) {before:.6f} -> {after:.6f} "
                    f"({after - before:+.6f})")
            entry = {"run_id": member["run_id"], "source_run_id": source["run_id"], "teacher_run_id": _teacher(store, source),
                     "kind": member["kind"], "weight": m["weight"], "spec": to_dict(trained.spec),
                     "infer": m["infer"], "folds": trained.folds, "checkpoints": checkpoints,
                     "cv_lwlrap": member.get("cv_lwlrap")}
            if blend is not None:
                shutil.copyfile(Path(member["run_dir"]) / "oof.npy", folder / "oof.npy")
                entry["oof"] = f"members/{member['run_id']}/oof.npy"
            manifest_members.append(entry)
        if blend is not None:
            (data_dir / "blend").mkdir()
            truth = load_layout(dataset["root"]).curated.Y
            np.save(data_dir / "blend" / "truth.npy", np.asarray(truth, dtype=np.uint8))
            blend["truth"] = "blend/truth.npy"

        modules, third = module_closure((KERNEL_MODULE,))
        for name in modules:
            src = module_path(name)
            dst = data_dir / "src" / src.relative_to(PROJECT_ROOT)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        pins = pinned_requirements(third)
        (data_dir / "requirements.txt").write_text("".join(f"{d}=={v}\n" for d, v in sorted(pins.items())))

        dataset_slug, kernel_slug = _slug(f"fsat-{run_id}"), _slug(f"fsat-{run_id}-kernel")
        files = {}
        for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
            files[path.relative_to(data_dir).as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest = {"format": PACK_FORMAT, "run_id": run_id, "kind": run["kind"], "dataset_id": run["dataset_id"],
                    "classes": classes, "members": manifest_members, "blend": blend, "precision": report.precision,
                    "cv_lwlrap": run.get("cv_lwlrap"), "requirements": pins, "files": files,
                    "modules": modules, "created_at": time.time()}
        _write_json(data_dir / PACK_MANIFEST, manifest)
        _write_json(data_dir / "dataset-metadata.json", {"title": f"fsat {run_id}"[:50], "id": f"{owner}/{dataset_slug}",
                                                         "licenses": [{"name": "CC0-1.0"}]})
        kernel_dir = tmp / KERNEL_DIR
        kernel_dir.mkdir()
        script = (Path(__file__).parent / "kernel_entry.py").read_text(encoding="utf-8")
        for name, value in (("PACK_DATASET", dataset_slug), ("PACKED_RUN", run_id)):
            script = script.replace(f'{name} = ""', f"{name} = {json.dumps(value)}", 1)
        (kernel_dir / "kernel.py").write_text(script, encoding="utf-8")
        _write_json(kernel_dir / "kernel-metadata.json", {
            "id": f"{owner}/{kernel_slug}", "title": f"fsat {run_id} kernel"[:50], "code_file": "kernel.py",
            "language": "python", "kernel_type": "script", "is_private": True, "enable_gpu": True,
            "enable_tpu": False, "enable_internet": False, "dataset_sources": [f"{owner}/{dataset_slug}"],
            "competition_sources": [COMPETITION], "kernel_sources": [], "model_sources": []})
        (tmp / "README.md").write_text(_readme(owner, dataset_slug, kernel_slug, run_id))

        def size(paths) -> int:
            return sum(p.stat().st_size for p in paths if p.is_file())

        report.parts = {"checkpoints": size(data_dir.glob("members/*/*.pt")),
                        "blend (oof and truth)": size(list(data_dir.glob("members/*/oof.npy"))
                                                      + list(data_dir.glob("blend/*"))),
                        "sources": size((data_dir / "src").rglob("*")),
                        "manifest and kernel": size([data_dir / PACK_MANIFEST, data_dir / "requirements.txt",
                                                     data_dir / "dataset-metadata.json", tmp / "README.md"])
                        + size(kernel_dir.rglob("*"))}
        report.total_bytes = size(tmp.rglob("*"))
        report.pack_sha256 = hashlib.sha256((data_dir / PACK_MANIFEST).read_bytes()).hexdigest()
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    from engine.kaggle.lineage import record_pack

    report.submission_id = record_pack(store, run, manifest, out, report.pack_sha256)
    return report
