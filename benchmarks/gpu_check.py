"""The GPU kit: one command that measures what the first GPU needs to show, in under 8 minutes.

Usage::

    python benchmarks/gpu_check.py [--out gpu_check] [--data DIR] [--quick]

Writes ``OUT.md`` and ``OUT.json``. Everything runs through the project's own
builders: the ``cnn14`` preset (``model.pretrained = "none"``: no checkpoint
needed) read with ``engine.specs``, ``engine.models.registry``'s taggers, the
waveform cache and loaders of ``engine.data`` / ``engine.jobs.train.make_loaders``,
and a fold trained by ``engine.jobs.train.train_fold_task`` (the train job's
own fold: device augmentation, SpecAugment, MixUp, AMP). Measured:

- **model alone**: CNN14 forward + backward + AdamW step under AMP on log-mel
  batches already on the device, clips/s;
- **full pipeline**: a fold's training epoch from the waveform cache with
  device augmentation, the frontend, SpecAugment and MixUp, clips/s (the
  second epoch, after the loader and cuDNN warm up), and its ratio to the
  model alone (goal: at least 0.9);
- **frontend**: milliseconds per batch of the log-mel frontend (10 s crops);
- **memory**: peak GPU memory of one AMP training step per batch size, and
  the largest batch ``train.batch_size = "auto"`` would choose (``find_batch_size``);
- **TF32**: whether TF32 matmul changes the STFT/mel output beyond the fp32
  error (measured against a float64 frontend on the CPU), and the setting kept;
- **resume**: a fold interrupted after its first epoch and resumed on CUDA
  against the same fold uninterrupted (weights compared; two uninterrupted
  runs give the run-to-run floor);
- **loader ceiling**: the training loader alone (no model) with 0, 1, 2, 4,
  ... workers up to the host's cores, clips/s.

Without CUDA the report says so, measures only the loader ceiling (quick) and
the command exits 0. ``--data`` uses a dataset root in the FSDKaggle2019 layout;
by default a small synthetic one (``engine.data.demo``) is written to a
temporary folder.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.data.cache import WaveformCache, host_cores  # noqa: E402
from engine.data.dataset import loader_settings  # noqa: E402
from engine.data.demo import write_demo_dataset  # noqa: E402
from engine.data.manifest import load_layout  # noqa: E402
from engine.data.cache import cache_dir_for  # noqa: E402
from engine.data.clips import TrainingClips  # noqa: E402
from engine.jobs.folds import FoldTask, train_fold_task  # noqa: E402
from engine.train.builders import make_loaders  # noqa: E402
from engine.models.registry import frontend_from_spec, model_from_spec, tagger_from_spec  # noqa: E402
from engine.runs.recorder import ListRecorder  # noqa: E402
from engine.presets import load_preset_file, preset_path  # noqa: E402
from engine.specs import TrainSpec, from_dict, to_dict  # noqa: E402
from engine.train.loop import find_batch_size  # noqa: E402
from engine.train.schedule import autocast_context, build_optimizer, make_grad_scaler  # noqa: E402

N_CLASSES = 80
#: The share of the model-alone rate the full pipeline should reach.
PIPELINE_GOAL = 0.9


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings on CUDA are otherwise of the launch only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cnn14_spec(root: Path, device: torch.device, *, batch_size: int, steps_per_epoch: int, epochs: int) -> TrainSpec:
    """The ``cnn14`` preset on ``root`` without a pretrained checkpoint, with the kit's batch, steps and device."""
    data = load_preset_file(preset_path("cnn14"))
    data["model"]["pretrained"] = "none"
    data.setdefault("data", {})["root"] = str(root)
    data["train"].update(batch_size=batch_size, steps_per_epoch=steps_per_epoch, epochs=epochs,
                         device=device.type, patience=100)
    return from_dict(TrainSpec, data)


def dataset(root: Path | None, work: Path, quick: bool) -> Path:
    """The dataset root to measure on: ``root``, or a small synthetic one written under ``work``."""
    if root is not None:
        return root
    target = work / "data"
    if quick:
        write_demo_dataset(target, seed=0, clips_per_class=1, noisy_per_class=1, test_per_class=1, max_seconds=2.0)
    else:
        write_demo_dataset(target, seed=0, clips_per_class=2, noisy_per_class=1, test_per_class=1, max_seconds=12.0)
    return target


def curated_cache(spec: TrainSpec, root: Path) -> tuple[Any, np.ndarray]:
    """The curated split's waveform cache (built once in the dataset's cache folder) and its labels."""
    layout = load_layout(root)
    cache = WaveformCache.build(layout.curated, sample_rate=spec.audio.sample_rate,
                                cache_dir=cache_dir_for(root, spec.data.cache_dir))
    return cache, layout.curated.Y


# --------------------------------------------------------------------------- measurements

def loader_ceiling(spec: TrainSpec, root: Path, device: torch.device, batches: int) -> dict:
    """Training-loader clips/s with no model, per worker count up to the host's cores."""
    cache, Y = curated_cache(spec, root)
    clips = TrainingClips.build(cache, Y)
    n = len(Y)
    train_idx, val_idx = np.arange(n), np.arange(min(n, 4))
    crop = int(round(spec.audio.crop_seconds * spec.audio.sample_rate))
    cores = host_cores()
    counts = sorted({w for w in (0, 1, 2, 4, 8, 16, cores - 1, cores) if 0 <= w <= cores})
    rows = []
    for workers in counts:
        settings = loader_settings(num_workers=workers, device_type=device.type)
        loader, _ = make_loaders(spec, clips, train_idx, val_idx, crop, int(spec.train.batch_size), None, device, 0,
                                 loader=settings)
        it = iter(loader)
        next(it)                                     # workers started, first batch in
        seen, t0 = 0, time.perf_counter()
        for _ in range(batches):
            try:
                wave, _y, _w = next(it)
            except StopIteration:
                it = iter(loader)
                wave, _y, _w = next(it)
            seen += len(wave)
        rows.append({"workers": workers, "clips_per_s": seen / (time.perf_counter() - t0)})
        del it, loader
    best = max(rows, key=lambda r: r["clips_per_s"])
    return {"cores": cores, "batch": int(spec.train.batch_size), "crop_s": spec.audio.crop_seconds, "rows": rows,
            "ceiling_clips_per_s": best["clips_per_s"], "best_workers": best["workers"]}


def model_alone(spec: TrainSpec, device: torch.device, steps: int) -> dict:
    """CNN14 forward + backward + step under AMP on log-mel batches already on the device."""
    batch = int(spec.train.batch_size)
    frontend = frontend_from_spec(spec).to(device)
    crop = int(round(spec.audio.crop_seconds * spec.audio.sample_rate))
    with torch.no_grad():
        x = frontend(torch.randn(batch, crop, device=device) * 0.1)
    model = model_from_spec(spec, N_CLASSES, pretrained=False).to(device).train()
    o = spec.optim
    optimizer = build_optimizer(model, head_lr=o.head_lr, encoder_lr=o.encoder_lr, weight_decay=o.weight_decay)
    scaler = make_grad_scaler(device, o.amp)
    y = (torch.rand(batch, N_CLASSES, device=device) < 0.02).float()

    def step() -> None:
        with autocast_context(device, amp=o.amp, cpu_bf16=o.cpu_bf16):
            logits = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(3):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = time.perf_counter() - t0
    return {"batch": batch, "steps": steps, "amp": o.amp, "clips_per_s": batch * steps / seconds}


class _Interrupt(Exception):
    """Raised by the kit's recorder to stop a fold mid-way, as a killed worker would."""


class _StopAfter(ListRecorder):
    """A recorder that interrupts the fold once ``step`` training steps are done."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.stop_step = step

    def progress(self, fraction: float, message: str) -> None:
        super().progress(fraction, message)
        if "step " in message and int(message.split("step ")[1].split("/")[0]) > self.stop_step:
            raise _Interrupt(message)


def fold_task(spec: TrainSpec, root: Path, run_dir: Path, device: torch.device, n_clips: int) -> FoldTask:
    """Fold 0 of the train job on ``root`` (5 folds by clip number), statistics left at zero mean, unit std."""
    mels = spec.features.n_mels
    return FoldTask(spec=to_dict(spec), fold=0, run_dir=str(run_dir), data_root=str(root), device=device.type,
                    folds=[i % 5 for i in range(n_clips)],
                    mel_stats=(np.zeros(mels, dtype=np.float32), np.ones(mels, dtype=np.float32)))


def full_pipeline(spec: TrainSpec, root: Path, work: Path, device: torch.device) -> dict:
    """A fold's training epochs through ``train_fold_task``: clips/s of the second epoch."""
    _cache, Y = curated_cache(spec, root)
    recorder = ListRecorder()
    train_fold_task(fold_task(spec, root, work / "pipeline", device, len(Y)), recorder)
    rates = [e.clips_per_sec for e in recorder.epochs]
    return {"epochs": len(rates), "steps_per_epoch": spec.train.steps_per_epoch, "batch": int(spec.train.batch_size),
            "clips_per_s_by_epoch": rates, "clips_per_s": rates[-1],
            "augment_backend": spec.augment.backend, "mixup_p": spec.augment.mixup_p,
            "specaug_p": spec.augment.specaug_p}


def frontend_time(spec: TrainSpec, device: torch.device, repeats: int) -> dict:
    """Milliseconds per batch of the log-mel frontend on ``train.batch_size`` crops."""
    batch = int(spec.train.batch_size)
    crop = int(round(spec.audio.crop_seconds * spec.audio.sample_rate))
    frontend = frontend_from_spec(spec).to(device)
    wave = torch.randn(batch, crop, device=device) * 0.1
    with torch.no_grad():
        for _ in range(3):
            frontend(wave)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            frontend(wave)
        sync(device)
    ms = (time.perf_counter() - t0) / repeats * 1000
    return {"batch": batch, "crop_s": spec.audio.crop_seconds, "ms_per_batch": ms, "ms_per_clip": ms / batch}


def memory_by_batch(spec: TrainSpec, device: torch.device, sizes: list[int]) -> dict:
    """Peak GPU memory of one AMP training step per batch size, and the batch ``"auto"`` would choose."""
    crop = int(round(spec.audio.crop_seconds * spec.audio.sample_rate))
    tagger = tagger_from_spec(spec, N_CLASSES, pretrained=False, log=lambda _line: None).to(device).train()
    o = spec.optim
    rows = []
    for size in sizes:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        wave = None
        try:
            wave = torch.randn(size, crop, device=device) * 0.1
            with autocast_context(device, amp=o.amp, cpu_bf16=o.cpu_bf16):
                logits = tagger(wave)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits.float(), torch.zeros(size, N_CLASSES, device=device))
            loss.backward()
            sync(device)
            rows.append({"batch": size, "peak_mib": torch.cuda.max_memory_allocated(device) / 2 ** 20})
        except torch.cuda.OutOfMemoryError:
            rows.append({"batch": size, "peak_mib": None})
            break
        finally:
            tagger.zero_grad(set_to_none=True)
            del wave
    torch.cuda.empty_cache()
    largest = find_batch_size(tagger, N_CLASSES, crop, device)
    total = torch.cuda.get_device_properties(device).total_memory / 2 ** 20
    return {"crop_s": spec.audio.crop_seconds, "rows": rows, "total_mib": total,
            "largest_batch_auto": largest, "note": "largest_batch_auto: find_batch_size (fp32, as train.batch_size = "
                                                   "\"auto\" searches), doubling up to 1024"}


def tf32_check(spec: TrainSpec, device: torch.device) -> dict:
    """Log-mel with TF32 matmul on and off against a float64 frontend on the CPU."""
    crop = int(round(spec.audio.crop_seconds * spec.audio.sample_rate))
    generator = torch.Generator().manual_seed(0)
    wave = torch.randn(8, crop, generator=generator) * 0.1
    reference_frontend = frontend_from_spec(spec).double()
    with torch.no_grad():
        # The float64 reference: the frontend casts its buffers to float32, so compute it at double by hand.
        padded = reference_frontend._reflect_pad(wave.double())
        frames = padded.unfold(-1, reference_frontend.n_fft, reference_frontend.hop_length) \
            * reference_frontend.window.double()
        spec64 = torch.fft.rfft(frames)
        power = spec64.real.square() + spec64.imag.square()
        mel = torch.matmul(power, reference_frontend.mel_fb.double())
        reference = 10.0 * torch.log10(torch.clamp(mel, min=reference_frontend.amin))
    frontend = frontend_from_spec(spec).to(device)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    errors = {}
    try:
        for name, allow in (("fp32", False), ("tf32", True)):
            torch.backends.cuda.matmul.allow_tf32 = allow
            torch.backends.cudnn.allow_tf32 = allow
            with torch.no_grad():
                out = frontend.log_mel(wave.to(device)).squeeze(1).double().cpu()
            errors[name] = float((out - reference).abs().max())
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    tolerance = max(1e-3, 4 * errors["fp32"])
    beyond = errors["tf32"] > tolerance
    return {"max_abs_db_fp32": errors["fp32"], "max_abs_db_tf32": errors["tf32"], "tolerance_db": tolerance,
            "tf32_beyond_tolerance": beyond, "default_matmul_tf32": before[0], "default_cudnn_tf32": before[1],
            "chosen": ("TF32 matmul off (PyTorch's default, kept): TF32 moves the log-mel beyond the fp32 error"
                       if beyond else
                       "TF32 matmul off (PyTorch's default, kept): TF32 stays within the fp32 error, but the mel "
                       "matmul is a small share of a step (see the frontend time)")}


def _max_weight_difference(a: Path, b: Path) -> float:
    sa = torch.load(a, map_location="cpu", weights_only=True)["model"]
    sb = torch.load(b, map_location="cpu", weights_only=True)["model"]
    return max(float((sa[k].double() - sb[k].double()).abs().max()) if sa[k].numel() else 0.0 for k in sa)


def resume_check(spec: TrainSpec, root: Path, work: Path, device: torch.device) -> dict:
    """A fold interrupted after its first epoch and resumed, against the same fold uninterrupted (twice)."""
    _cache, Y = curated_cache(spec, root)
    runs = {}
    for name in ("straight", "straight_again"):
        train_fold_task(fold_task(spec, root, work / name, device, len(Y)), ListRecorder())
        runs[name] = work / name / "fold0" / "last.pt"
    interrupted = fold_task(spec, root, work / "resumed", device, len(Y))
    try:
        train_fold_task(interrupted, _StopAfter(spec.train.steps_per_epoch))
    except _Interrupt:
        pass
    else:
        raise RuntimeError("the fold was not interrupted")
    train_fold_task(interrupted, ListRecorder())
    floor = _max_weight_difference(runs["straight"], runs["straight_again"])
    resumed = _max_weight_difference(runs["straight"], work / "resumed" / "fold0" / "last.pt")
    return {"epochs": spec.train.epochs, "steps_per_epoch": spec.train.steps_per_epoch,
            "max_abs_weight_diff_resumed": resumed, "max_abs_weight_diff_two_straight_runs": floor,
            "equal": resumed == 0.0, "within_run_to_run": resumed <= max(floor, 0.0) * 1.5}


# --------------------------------------------------------------------------- report

def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown(report: dict) -> str:
    """The report as Markdown: one table or line per measurement."""
    r = report
    lines = [f"# GPU check: {r['device']}", "",
             f"{r['host']['cpu_cores']} CPU cores, Python {r['host']['python']}, torch {r['host']['torch']}"
             f"{', CUDA ' + r['host']['cuda_version'] if r['host']['cuda_version'] else ''}; "
             f"{r['seconds']:.0f} s in all.", ""]
    if not r["cuda"]:
        lines += ["**No CUDA device**: the GPU measurements (model alone, full pipeline, frontend, memory, "
                  "TF32, resume) were skipped. Run this on a machine with a GPU.", ""]
    s = r["sections"]
    for name, title in (("model_alone", "CNN14 with AMP, model alone"), ("full_pipeline", "Full pipeline"),
                        ("frontend", "Frontend"), ("memory", "Peak GPU memory per batch"),
                        ("tf32", "TF32 and the STFT/mel output"), ("resume", "Resume on CUDA"),
                        ("loader_ceiling", "Loader ceiling")):
        if name not in s:
            continue
        sec = s[name]
        lines.append(f"## {title}")
        lines.append("")
        if "error" in sec:
            lines += [f"failed: {sec['error']}", ""]
            continue
        if name == "model_alone":
            lines.append(f"{_fmt(sec['clips_per_s'])} clips/s (batch {sec['batch']}, {sec['steps']} steps, "
                         f"log-mel batches on the device).")
        elif name == "full_pipeline":
            ratio = s.get("ratio")
            lines.append(f"{_fmt(sec['clips_per_s'])} clips/s from the cache (batch {sec['batch']}, device "
                         f"augmentation, SpecAugment p {sec['specaug_p']}, MixUp p {sec['mixup_p']}); per epoch "
                         + ", ".join(_fmt(x) for x in sec["clips_per_s_by_epoch"]) + ".")
            if ratio is not None:
                verdict = "meets" if ratio >= PIPELINE_GOAL else "misses"
                lines.append(f"Ratio to the model alone: **{ratio:.2f}** ({verdict} the goal of {PIPELINE_GOAL}).")
        elif name == "frontend":
            lines.append(f"{_fmt(sec['ms_per_batch'], 2)} ms per batch of {sec['batch']} x {sec['crop_s']:g} s "
                         f"({_fmt(sec['ms_per_clip'], 3)} ms per clip).")
        elif name == "memory":
            lines += ["| batch | peak MiB |", "|---:|---:|"]
            lines += [f"| {row['batch']} | {_fmt(row['peak_mib'], 0) if row['peak_mib'] else 'out of memory'} |"
                      for row in sec["rows"]]
            lines += ["", f"Largest batch that fits ({sec['note']}): **{sec['largest_batch_auto']}** of "
                          f"{_fmt(sec['total_mib'], 0)} MiB."]
        elif name == "tf32":
            lines.append(f"max |log-mel - float64| in dB: fp32 {sec['max_abs_db_fp32']:.2e}, TF32 "
                         f"{sec['max_abs_db_tf32']:.2e} (tolerance {sec['tolerance_db']:.1e}): "
                         f"{'beyond' if sec['tf32_beyond_tolerance'] else 'within'} tolerance. "
                         f"Setting: {sec['chosen']}.")
        elif name == "resume":
            lines.append(f"{sec['epochs']} epochs x {sec['steps_per_epoch']} steps; interrupted after epoch 1 and "
                         f"resumed: max |weight difference| {sec['max_abs_weight_diff_resumed']:.3g} "
                         f"(two uninterrupted runs: {sec['max_abs_weight_diff_two_straight_runs']:.3g}); "
                         f"{'equal' if sec['equal'] else 'within run-to-run' if sec['within_run_to_run'] else 'DIFFERENT'}.")
        elif name == "loader_ceiling":
            lines += [f"Batch {sec['batch']} of {sec['crop_s']:g} s crops from the waveform cache, no model, "
                      f"{sec['cores']} cores.", "", "| workers | clips/s |", "|---:|---:|"]
            lines += [f"| {row['workers']} | {_fmt(row['clips_per_s'])} |" for row in sec["rows"]]
            lines += ["", f"Ceiling: {_fmt(sec['ceiling_clips_per_s'])} clips/s with {sec['best_workers']} workers."]
        lines.append("")
    return "\n".join(lines)


def run_section(report: dict, name: str, fn: Callable[[], dict], log: Callable[[str], None]) -> None:
    """Run one measurement; a failure is recorded in its section and the others still run."""
    t0 = time.perf_counter()
    log(f"{name} ...")
    try:
        report["sections"][name] = fn()
    except Exception as err:  # noqa: BLE001 - the kit reports every section it can
        report["sections"][name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                                              if str(err) else type(err).__name__,
                                    "traceback": traceback.format_exc(limit=5)}
    report["sections"][name]["seconds"] = time.perf_counter() - t0
    log(f"{name}: {time.perf_counter() - t0:.1f} s")


def main(argv: list[str] | None = None) -> int:
    """Measure, write OUT.md and OUT.json, print the Markdown; exit 0 with or without CUDA."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_check"), help="report path without suffix (.md and .json)")
    ap.add_argument("--data", type=Path, default=None, help="dataset root (default: a small synthetic one)")
    ap.add_argument("--batch", type=int, default=32, help="training batch (the cnn14 preset's 32)")
    ap.add_argument("--quick", action="store_true", help="fewer steps and a tiny dataset (tests)")
    args = ap.parse_args(argv)
    out = args.out.with_suffix("") if args.out.suffix in (".md", ".json") else args.out
    started = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    report: dict = {
        "cuda": cuda, "device": torch.cuda.get_device_name(device) if cuda else "cpu (no CUDA device)",
        "host": {"cpu_cores": host_cores(), "python": platform.python_version(), "torch": torch.__version__,
                 "cuda_version": torch.version.cuda if cuda else None, "platform": platform.platform()},
        "sections": {}}

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {line}", file=sys.stderr, flush=True)

    if not cuda:
        log("no CUDA device: only the loader ceiling is measured")
    steps = 5 if args.quick else 40
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        root = dataset(args.data, work, args.quick)
        base = cnn14_spec(root, device, batch_size=args.batch, steps_per_epoch=steps, epochs=2)
        run_section(report, "loader_ceiling", lambda: loader_ceiling(base, root, device, 10 if args.quick else 60), log)
        if cuda:
            run_section(report, "model_alone", lambda: model_alone(base, device, steps), log)
            run_section(report, "full_pipeline", lambda: full_pipeline(base, root, work, device), log)
            run_section(report, "frontend", lambda: frontend_time(base, device, 20), log)
            run_section(report, "memory", lambda: memory_by_batch(base, device, [8, 16, 32, 64, 128, 256]), log)
            run_section(report, "tf32", lambda: tf32_check(base, device), log)
            short = cnn14_spec(root, device, batch_size=min(args.batch, 16), steps_per_epoch=4, epochs=2)
            run_section(report, "resume", lambda: resume_check(short, root, work / "resume", device), log)
            alone, pipe = report["sections"]["model_alone"], report["sections"]["full_pipeline"]
            if "clips_per_s" in alone and "clips_per_s" in pipe:
                report["sections"]["ratio"] = pipe["clips_per_s"] / alone["clips_per_s"]
    report["seconds"] = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(text)
    log(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
