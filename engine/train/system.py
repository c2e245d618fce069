"""System figures of one training epoch: the device, peak GPU memory, GPU utilisation, the job's peak RSS.

Recorded with every epoch (``epochs.device``, ``peak_gpu_mib``, ``gpu_util``,
``peak_rss_mib``) so the run screen and the status line can show them without
touching the device. Each figure is None where it does not apply: no GPU
memory or utilisation on a CPU, no utilisation without NVML (the optional
``nvidia-ml-py``, extra ``gpu``).

Peak RSS is the training process's: on Linux its high-water mark is reset at
each epoch's start (``/proc/self/clear_refs``) and read from
``/proc/self/status``, so each epoch reports its own peak; elsewhere it is
``resource.getrusage``'s peak over the process's life. Loader worker
processes are not included.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

#: Seconds between two utilisation samples (a sample is an NVML call of a few microseconds).
UTIL_INTERVAL = 1.0


@dataclass(frozen=True)
class SystemFigures:
    """One epoch's figures (None where not applicable)."""

    device: str
    peak_gpu_mib: float | None = None
    gpu_util: float | None = None
    peak_rss_mib: float | None = None


def system_fields(figures: SystemFigures | None) -> dict:
    """The figures as ``EpochRecord`` keyword arguments (none when the epoch has no figures)."""
    return {} if figures is None else asdict(figures)


def device_name(device: torch.device) -> str:
    """The GPU's name (``torch.cuda.get_device_name``) or ``cpu``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux); False where it cannot be."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float | None:
    """This process's peak resident set in MiB: VmHWM on Linux, else ``getrusage``'s ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:                                  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024   # bytes on macOS, KiB elsewhere


def _nvml_handle(device: torch.device):
    """An NVML handle for ``device``, or None without nvidia-ml-py or a working driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        # NVML counts every GPU; torch counts the visible ones: match by PCI bus id where possible.
        bus = getattr(torch.cuda.get_device_properties(index), "pci_bus_id", None)
        if bus is not None:
            return pynvml.nvmlDeviceGetHandleByPciBusId(bus.encode() if isinstance(bus, str) else bus)
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # noqa: BLE001 - no driver, no permission: utilisation is simply not recorded
        return None


class EpochSystem:
    """Measures one epoch at a time: ``start()``, ``tick()`` every step, ``finish()`` -> SystemFigures."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.name = device_name(device)
        self._nvml = _nvml_handle(device) if device.type == "cuda" else None
        self._samples: list[float] = []
        self._last_sample = 0.0

    def start(self) -> None:
        """An epoch starts: reset the peaks."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        _reset_peak_rss()
        self._samples = []
        self._last_sample = 0.0

    def tick(self) -> None:
        """A training step ended: sample the GPU's utilisation at most every UTIL_INTERVAL seconds."""
        if self._nvml is None:
            return
        now = time.monotonic()
        if now - self._last_sample < UTIL_INTERVAL:
            return
        self._last_sample = now
        try:
            import pynvml
            self._samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(self._nvml).gpu))
        except Exception:  # noqa: BLE001 - a failed sample is skipped
            pass

    def finish(self) -> SystemFigures:
        """The epoch's figures."""
        gpu_mib = (torch.cuda.max_memory_allocated(self.device) / 2 ** 20
                   if self.device.type == "cuda" else None)
        util = sum(self._samples) / len(self._samples) if self._samples else None
        return SystemFigures(device=self.name, peak_gpu_mib=gpu_mib, gpu_util=util, peak_rss_mib=peak_rss_mib())
