"""Training throughput on this machine: clips per second for forward + backward + AdamW step.

Measures, in one run and on the same random batch of 10 s clips at 32 kHz:

(a) ``PannsTagger('cnn14')`` (CNN14 encoder + attention head) fed by
    ``engine.features.frontend.LogMelFrontend`` (64 mels, fmax 16 kHz);
(b) the reference PANNs CNN14 from ``panns_inference.models`` on waveforms,
    with a BCE loss on its ``clipwise_output``;
(c) the compact demo model ``build_model('small')`` with the same frontend,
    when ``engine.models.registry`` provides it.

Each model runs ``--warmup`` untimed steps; then ``--steps`` timed steps per
model, alternating between the models so that a change in machine load
affects them alike. Both sides are torch models in one process, so they run
with the same thread settings (torch's default threads, ``OMP_WAIT_POLICY=PASSIVE``
as jobs run; ``--threads`` changes both).
Usage::

    .venv/bin/python benchmarks/bench_train.py --batch 4 --steps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import fair  # noqa: E402

fair.job_environment()  # before torch loads OpenMP

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SAMPLE_RATE = 32000
N_CLASSES = 80


@contextlib.contextmanager
def _isolated_panns_inference_import() -> Iterator[None]:
    """Import ``panns_inference`` without touching the real home folder or the network.

    The package reads ``~/panns_data/class_labels_indices.csv`` at import and
    fetches it with ``wget`` when absent: HOME points at a temporary folder
    holding a 527-row CSV, and ``os.system`` refuses to run meanwhile.
    """
    saved_home, saved_system = os.environ.get("HOME"), os.system

    def refuse(command: str) -> int:
        raise RuntimeError(f"download attempted while importing panns_inference: {command}")

    with tempfile.TemporaryDirectory() as home:
        labels = Path(home) / "panns_data" / "class_labels_indices.csv"
        labels.parent.mkdir(parents=True)
        with open(labels, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["index", "mid", "display_name"])
            writer.writerows([i, f"/m/bench{i}", f"class {i}"] for i in range(527))
        os.environ["HOME"] = home
        os.system = refuse
        try:
            yield
        finally:
            os.system = saved_system
            if saved_home is None:
                os.environ.pop("HOME", None)
            else:
                os.environ["HOME"] = saved_home


def _time_interleaved(steps_by_name: dict[str, Callable[[], None]], warmup: int,
                      steps: int) -> dict[str, float]:
    """Seconds per step for each model; timed steps alternate between models.

    Alternating spreads any change in machine load (other processes on a
    shared CPU) evenly over the models, so their ratios stay fair.
    """
    for step in steps_by_name.values():
        for _ in range(warmup):
            step()
    total = dict.fromkeys(steps_by_name, 0.0)
    for _ in range(steps):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            step()
            total[name] += time.perf_counter() - start
    return {name: seconds / steps for name, seconds in total.items()}


def _tagger_step(model: torch.nn.Module, frontend: torch.nn.Module, wave: torch.Tensor,
                 targets: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                  weight_decay=1e-4)
    model.train()

    def step() -> None:
        with torch.no_grad():
            logmel = frontend(wave)
        loss = F.binary_cross_entropy_with_logits(model(logmel), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _reference_step(model: torch.nn.Module, wave: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                  weight_decay=1e-4)
    model.train()
    # The reference is trained on AudioSet's 527 outputs; only the loss shape matters here.
    targets_527 = torch.zeros(targets.shape[0], 527)
    targets_527[:, :N_CLASSES] = targets

    def step() -> None:
        clipwise = model(wave)["clipwise_output"]
        loss = F.binary_cross_entropy(clipwise.clamp(1e-7, 1 - 1e-7), targets_527)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print clips/s per model and the ratios between them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="clips per step (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length in seconds (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model (default 1)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from engine.models.panns import PannsTagger

    wave = 0.1 * torch.randn(args.batch, int(args.seconds * SAMPLE_RATE))
    targets = (torch.rand(args.batch, N_CLASSES) < 0.02).float()
    targets[:, 0] = 1.0
    fair.header("bench_train (same thread settings for every model)")
    print(f"torch {torch.__version__}, batch {args.batch} x {args.seconds:g} s at {SAMPLE_RATE} Hz, {args.warmup} warm-up + {args.steps} timed "
          f"steps (forward + backward + AdamW)")

    steps: dict[str, Callable[[], None]] = {}
    labels = {
        "a": "(a) PannsTagger cnn14 + attention head, our log-mel",
        "b": "(b) panns_inference Cnn14 on waveforms (reference)",
        "c": "(c) compact demo model 'small', our log-mel",
    }
    try:
        from engine.features.frontend import LogMelFrontend
    except ImportError as exc:
        LogMelFrontend = None
        print(f"note: engine.features.frontend.LogMelFrontend is not importable ({exc}); (a) and (c) skipped")

    if LogMelFrontend is not None:
        frontend = LogMelFrontend(sample_rate=SAMPLE_RATE, n_fft=1024, hop_length=320, n_mels=64,
                                  fmin=50, fmax=16000)
        steps["a"] = _tagger_step(PannsTagger("cnn14", n_classes=N_CLASSES, n_mels=64), frontend, wave, targets)

    with _isolated_panns_inference_import():
        from panns_inference.models import Cnn14 as ReferenceCnn14
    reference = ReferenceCnn14(sample_rate=SAMPLE_RATE, window_size=1024, hop_size=320, mel_bins=64, fmin=50,
                               fmax=14000, classes_num=527)
    steps["b"] = _reference_step(reference, wave, targets)

    if LogMelFrontend is not None:
        try:
            from engine.models.registry import build_model
            small = build_model("small", n_classes=N_CLASSES, n_mels=64)
        except (ImportError, AttributeError) as exc:
            print(f"note: the compact model is not available ({exc}); (c) skipped")
        else:
            steps["c"] = _tagger_step(small, frontend, wave, targets)

    seconds = _time_interleaved(steps, args.warmup, args.steps)
    results = {name: args.batch / s for name, s in seconds.items()}
    for name in steps:
        print(f"{labels[name]:<53}: {results[name]:7.3f} clips/s ({seconds[name]:.2f} s/step)")

    if "a" in results:
        print(f"ratio (a)/(b): {results['a'] / results['b']:.2f}  (ours vs reference CNN14)")
        fair.figure("train.cnn14_vs_reference", results["a"] / results["b"])
    if "c" in results:
        print(f"ratio (c)/(a): {results['c'] / results['a']:.1f}  (compact model vs CNN14 tagger)")
        fair.figure("train.small_vs_cnn14", results["c"] / results["a"])


if __name__ == "__main__":
    main()
