"""The input pipeline: loader settings from the host, decode threads, persistent workers, AMP and torchaudio."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from engine.data.cache import WaveformCache, decode_workers, host_cores
from engine.data.dataset import CropDataset, MultiScaleBatchSampler, loader_settings
from engine.errors import ConfigError
from engine.presets import resolve_spec
from tests.helpers.datasets import ArrayCache, write_layout


def test_torchaudio_compiled_ops_load_and_compute():
    """A torch / torchaudio pair whose compiled library does not load fails here, not in a job."""
    import scipy.signal
    import torchaudio
    import torchaudio.functional as AF

    assert torch.__version__.split("+")[0].rsplit(".", 1)[0] == torchaudio.__version__.split("+")[0].rsplit(".", 1)[0]
    x = torch.randn(2, 2000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    b, a = scipy.signal.butter(4, 0.2)
    # lfilter runs torchaudio's compiled kernel (torch.ops.torchaudio), not Python code.
    got = AF.lfilter(x, torch.tensor(a), torch.tensor(b), clamp=False)
    np.testing.assert_allclose(got.numpy(), scipy.signal.lfilter(b, a, x.numpy(), axis=-1), atol=1e-9)


def test_auto_loader_settings_follow_the_device_and_the_cores():
    cpu = loader_settings(device_type="cpu", cores=2)
    assert (cpu.num_workers, cpu.pin_memory, cpu.persistent_workers, cpu.prefetch_factor) == (0, False, False, None)
    assert cpu.dataloader_kwargs() == {"num_workers": 0, "pin_memory": False}
    assert loader_settings(device_type="cpu", cores=64, cpu_augment=True).num_workers == 0
    small = loader_settings(device_type="cuda", cores=2)
    assert (small.num_workers, small.pin_memory, small.persistent_workers, small.prefetch_factor) == (1, True, True, 8)
    big = loader_settings(device_type="cuda", cores=32)
    assert (big.num_workers, big.prefetch_factor) == (4, 2)
    assert loader_settings(device_type="cuda", cores=32, cpu_augment=True).num_workers == 16
    assert loader_settings(device_type="cuda", cores=8, cpu_augment=True).num_workers == 7
    assert loader_settings(device_type="cuda", cores=1).num_workers == 0
    assert big.dataloader_kwargs() == {"num_workers": 4, "pin_memory": True, "persistent_workers": True,
                                       "prefetch_factor": 2}


def test_explicit_loader_settings_are_kept_where_they_apply():
    s = loader_settings(num_workers=3, pin_memory=False, persistent_workers=False, prefetch_factor=5,
                        device_type="cuda", cores=2)
    assert (s.num_workers, s.pin_memory, s.persistent_workers, s.prefetch_factor) == (3, False, False, 5)
    # Pinning needs CUDA; persistence and prefetch need workers.
    s = loader_settings(num_workers=0, pin_memory=True, persistent_workers=True, prefetch_factor=5,
                        device_type="cpu", cores=8)
    assert (s.num_workers, s.pin_memory, s.persistent_workers, s.prefetch_factor) == (0, False, False, None)


def test_loader_and_augment_settings_in_a_spec_are_checked_by_field():
    spec = resolve_spec("train", preset="cnn14", data_root="/data")
    assert spec.train.num_workers == "auto" and spec.augment.backend == "auto"
    for override, field in (("train.num_workers=\"many\"", "train.num_workers"),
                            ("train.num_workers=-1", "train.num_workers"),
                            ("train.pin_memory=1", "train.pin_memory"),
                            ("train.persistent_workers=\"yes\"", "train.persistent_workers"),
                            ("train.prefetch_factor=0", "train.prefetch_factor"),
                            ("train.decode_workers=0", "train.decode_workers"),
                            ("augment.backend=\"gpu\"", "augment.backend")):
        with pytest.raises(ConfigError) as err:
            resolve_spec("train", preset="cnn14", data_root="/data", overrides=[override])
        assert err.value.field == field, override
    ok = resolve_spec("train", preset="cnn14", data_root="/data",
                      overrides=["train.num_workers=2", "train.pin_memory=false", "augment.backend=\"cpu\""])
    assert (ok.train.num_workers, ok.train.pin_memory, ok.augment.backend) == (2, False, "cpu")


def test_decode_workers_default_to_the_host_and_decode_the_same_bytes(tmp_path, monkeypatch):
    from engine.data import cache as cache_module
    from engine.data.manifest import load_layout

    assert decode_workers("auto") == decode_workers(None) == host_cores() >= 1
    assert decode_workers(3) == 3
    with pytest.raises(ValueError, match="at least 1"):
        decode_workers(0)
    table = load_layout(write_layout(tmp_path / "d")).curated
    threads: set[str] = set()
    real_decode = cache_module.decode

    def noting_decode(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(cache_module, "decode", noting_decode)
    one = WaveformCache.build(table, sample_rate=32000, cache_dir=tmp_path / "one", workers=1)
    assert threads == {threading.current_thread().name}
    threads.clear()
    many = WaveformCache.build(table, sample_rate=32000, cache_dir=tmp_path / "many", workers=3)
    assert threads and all(name.startswith("decode") for name in threads)
    assert (one.path / cache_module.WAVES_FILE).read_bytes() == (many.path / cache_module.WAVES_FILE).read_bytes()


def _epoch_batches(num_workers: int, persistent: bool, epochs: int = 2) -> list[list[torch.Tensor]]:
    from torch.utils.data import DataLoader, SequentialSampler

    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(int(n)).astype(np.float32) for n in rng.integers(300, 600, size=12)]
    ds = CropDataset(ArrayCache(clips), np.arange(12), np.eye(3, dtype=np.float32)[np.arange(12) % 3],
                     crop_samples=200, train=True, seed=4)
    sampler = MultiScaleBatchSampler(SequentialSampler(ds), 4, base_crop=200, extra_crops=[], prob=0.0, seed=4)
    kw = dict(num_workers=num_workers)
    if num_workers:
        kw.update(persistent_workers=persistent)
    loader = DataLoader(ds, batch_sampler=sampler, **kw)
    out = []
    for epoch in range(epochs):
        # What train_fold does before every epoch.
        ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        out.append([wave for wave, _, _ in loader])
    return out


def test_persistent_workers_crop_each_epoch_as_the_main_process_would():
    inline = _epoch_batches(0, persistent=False)
    persistent = _epoch_batches(1, persistent=True)
    for a, b in zip(inline, persistent):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(*persistent)), "epoch 1 must crop differently from epoch 0"


def _loud_tone(seconds: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(32000 * seconds)) / 32000
    return torch.sin(2 * torch.pi * 1000.0 * t)[None]


def test_the_power_spectrum_of_a_full_scale_tone_overflows_fp16():
    from engine.features.frontend import LogMelFrontend

    frontend = LogMelFrontend()
    frames = frontend._reflect_pad(_loud_tone()).unfold(-1, 1024, 320) * frontend.window
    spec = torch.fft.rfft(frames)
    power = spec.real.square() + spec.imag.square()
    # A Hann-windowed full-scale sine peaks near (1024 / 4)^2 = 65536 > 65504, fp16's largest value.
    assert float(power.max()) > torch.finfo(torch.float16).max
    assert torch.isinf(power.half()).any()
    assert torch.isinf(torch.matmul(power.half(), frontend.mel_fb.half())).any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_frontend_output_stays_finite_and_float32_under_autocast(dtype):
    from engine.features.frontend import LogMelFrontend

    frontend = LogMelFrontend()
    frontend.set_stats(np.full(64, -20.0, dtype=np.float32), np.full(64, 20.0, dtype=np.float32))
    wave = _loud_tone()
    reference = frontend(wave)
    with torch.autocast("cpu", dtype=dtype):
        out = frontend(wave)
        # The same input through the model's matmul under autocast does lose precision:
        # autocast is really on for everything after the frontend.
        assert torch.matmul(wave[:, :64].T, wave[:, :64]).dtype == dtype
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, reference)


def test_auto_augment_backend_is_batched_on_cuda_and_per_clip_on_a_cpu():
    from engine.features.augment import WaveAugment
    from engine.features.device_augment import BatchWaveAugment
    from engine.train.builders import augment_backend, wave_augmenters

    spec = resolve_spec("train", preset="cnn14", data_root="/data")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (augment_backend(spec, cpu), augment_backend(spec, cuda)) == ("cpu", "device")
    per_clip, batched = wave_augmenters(spec, cpu)
    assert isinstance(per_clip, WaveAugment) and batched is None
    per_clip, batched = wave_augmenters(spec, cuda)
    assert per_clip is None and isinstance(batched, BatchWaveAugment)
    assert (batched.pitch_p, batched.stretch_p, batched.noise_snr_db) == (0.2, 0.2, (20.0, 30.0))
    forced = resolve_spec("train", preset="cnn14", data_root="/data", overrides=["augment.backend=\"device\""])
    assert wave_augmenters(forced, cpu)[1] is not None
    plain = resolve_spec("train", preset="demo", data_root="/data")
    assert wave_augmenters(plain, cuda) == (None, None)
