"""CNN14 clip embeddings of a centre crop: batched extraction and an on-disk cache.

The embedding baseline describes each clip by the 2048-d CNN14 embedding of
one fixed-length crop and fits a linear model on top. This module computes
those embeddings.

What the network sees
    With a published PANNs checkpoint (``Cnn14_mAP=0.431.pth``) the clip goes
    through PANNs' own path, exactly as in pretraining: the 32 kHz waveform,
    the model's own STFT and log-mel extractor (torchlibrosa, whose mel
    filterbank is part of the checkpoint), ``bn0``, the conv stack, max + mean
    pooling over time, ``fc1`` and ReLU. The result equals
    ``Cnn14(waveform)['embedding']`` in eval mode (the reference
    ``clipwise_output`` / ``embedding`` path, also what ``panns_inference``
    returns). The job's ``features`` settings do not apply to this path: a
    different log-mel would show the pretrained network inputs it never saw.

    Without a checkpoint, the encoder of a trained ``cnn14`` run (its fold-0
    ``best.pt``) can embed instead. That encoder was trained (or, for a
    zero-shot run, scored) on the run's own log-mel, built from its spec by
    ``engine.models.registry.frontend_from_spec``: standardised with the run's
    mel statistics, or not when ``features.standardise = false``. It is fed
    that log-mel and its ``embed`` output is taken.

The crop
    Clips longer than the crop are cut to their centre ``crop_seconds``.
    Shorter clips are loop-padded (tiled from their start, then trimmed) to
    the crop length rather than zero-padded: silence would pull the mean
    pooling towards the embedding of silence, and repeating the sound keeps
    its statistics. Every clip of a batch then has the same length, so a batch
    is one forward pass with no padding mask, and a batched embedding equals
    the one-clip-at-a-time embedding up to float rounding. A crop shorter than
    32 log-mel frames (0.31 s at 32 kHz) would leave no frame after the conv
    stack's five halvings; its log-mel is repeated along time up to 32 frames.

Precision
    On a GPU the conv stack runs under fp16 autocast. The log-mel is always
    computed in float32: a power spectrogram of a loud clip overflows half
    precision. The precision is part of the cache key.

The cache
    Embeddings are stored per (embedder, crop settings) group in
    ``<cache dir>/embeddings/<group>.npz`` (arrays ``keys`` and ``embeddings``)
    with a readable ``<group>.json`` index beside it (the settings, the row
    count and ``computed_total``, the number of embeddings ever computed into
    the group). The group key hashes the embedder's identity (checkpoint path,
    size and modification time, or the trained run's ``best.pt``), the sample
    rate, the crop length, the padding rule and the precision: changing any of
    them starts a new group. A row's key is the clip's split, fname and file
    fingerprint (size and modification time for a folder, size and CRC-32 for
    a zip member), so a rewritten audio file is embedded again and its old row
    dropped. Only missing rows are computed; the file is rewritten atomically
    (temporary file, then rename), merged with rows another process may have
    added meanwhile, and saved every ``flush_seconds`` during a long
    extraction so that an interrupted job keeps most of its work. Groups of
    settings no longer used stay on disk until the folder is deleted, which
    is always safe (it only costs recomputation).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from engine.data.audio import decode, fit_length
from engine.data.manifest import ClipTable
from engine.errors import CheckpointError, ConfigError
from engine.models.checkpoint import PANNS_DIR_ENV, PUBLISHED_CHECKPOINTS, load_panns_checkpoint, resolve_checkpoint
from engine.models.panns import EMBEDDING_DIM, Cnn14, repeat_pad_frames

__all__ = [
    "EMBED_FORMAT", "EMBEDDING_DIM", "ClipEmbedder", "EmbeddingCache", "EmbeddingResult", "crop_clip",
    "embed_table", "embed_waves", "load_embedder", "panns_embedder", "run_encoder_embedder",
]

#: Bumped whenever the meaning of a cached row changes (cropping, padding, pooling).
EMBED_FORMAT = 1
#: How clips shorter than the crop are filled up (part of the cache key).
PAD_RULE = "loop"
#: Progress callback: (clips done including cached ones, total clips, clips/s of the computed ones).
Progress = Callable[[int, int, float], None]


def crop_clip(wave: np.ndarray, crop_samples: int) -> np.ndarray:
    """The centre ``crop_samples`` of a clip, or the clip loop-padded to that length if shorter."""
    return fit_length(wave, crop_samples, mode="center", loop_prob=1.0)


def _file_identity(path: Path) -> dict[str, Any]:
    """Path, size and modification time of a weights file: cheap, and changed by any rewrite."""
    resolved = path.resolve()
    st = resolved.stat()
    return {"file": str(resolved), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class ClipEmbedder:
    """A CNN14 encoder with the log-mel it expects: ``[B, samples]`` waveforms in, ``[B, 2048]`` out.

    ``features`` turns waveforms into log-mel ``[B, 1, frames, mels]`` (the
    model's own extractor for a PANNs checkpoint, our frontend for a trained
    run); ``identity`` describes the weights for cache keys and run records.
    """

    def __init__(self, encoder: Cnn14, features: torch.nn.Module | Callable[[Tensor], Tensor], *,
                 sample_rate: int, identity: dict[str, Any], device: torch.device | str = "cpu",
                 amp: bool = True) -> None:
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        if isinstance(features, torch.nn.Module):
            features = features.to(self.device).eval()
        self.features = features
        self.sample_rate = int(sample_rate)
        # fp16 autocast only where it pays off; CPU stays float32.
        self.amp = bool(amp) and self.device.type == "cuda"
        self.identity = dict(identity)

    @property
    def precision(self) -> str:
        """``fp16-autocast`` on a GPU with AMP, else ``fp32`` (part of the cache key)."""
        return "fp16-autocast" if self.amp else "fp32"

    @torch.inference_mode()
    def __call__(self, waves: Tensor) -> Tensor:
        """Embeddings ``[B, 2048]`` (float32, on the CPU) of equal-length waveforms ``[B, samples]``."""
        x = waves.to(self.device, dtype=torch.float32, non_blocking=True)
        with torch.autocast(device_type=self.device.type, enabled=False):
            logmel = self.features(x).float()
        logmel = repeat_pad_frames(logmel, self.encoder.min_frames)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            emb = self.encoder.embed(logmel)
        return emb.float().cpu()


def panns_embedder(path: Path, *, device: torch.device | str = "cpu", amp: bool = True) -> ClipEmbedder:
    """A ClipEmbedder of a PANNs CNN14 checkpoint file, on the model's own log-mel (loaded strictly)."""
    model = Cnn14()
    info = load_panns_checkpoint(model, path)
    identity = {"kind": "panns", "arch": "cnn14", **_file_identity(Path(info["path"]))}
    return ClipEmbedder(model, model.logmel, sample_rate=model.sample_rate, identity=identity,
                        device=device, amp=amp)


def run_encoder_embedder(store, run_id: str, *, device: torch.device | str = "cpu",
                         amp: bool = True) -> ClipEmbedder:
    """A ClipEmbedder of a trained ``cnn14`` run's fold-0 encoder, on the run's own log-mel.

    ``store`` is an ``engine.store.Store`` holding the run. The run's config
    gives the frontend settings (``frontend_from_spec``, so
    ``features.standardise`` is honoured); its ``fold0/best.pt`` gives the
    encoder weights and the mel statistics it was trained with.
    """
    from engine.models.registry import frontend_from_spec
    from engine.runs.folder import RunFolder
    from engine.intake import can_embed_baseline
    from engine.runs.kinds import run_arch
    from engine.specs import TrainSpec, from_dict

    run = store.get_run(run_id)
    if run is None:
        raise ConfigError(f"no run {run_id!r} in this database; name a trained cnn14 run (see `fsat runs`)",
                          field="encoder_run_id")
    if not can_embed_baseline(run):
        raise ConfigError(f"run {run_id} is a {run['kind']} run of model {run_arch(run) or run.get('model')!r}; "
                          "the embedding baseline needs a trained cnn14 encoder", field="encoder_run_id")
    best = RunFolder(run["run_dir"]).best(0)
    if not best.is_file():
        raise CheckpointError(f"{best}: run {run_id} has no fold-0 best checkpoint (was fold 0 trained and "
                              "finished?); train fold 0 of that run, or give a PANNs checkpoint")
    try:
        saved = torch.load(best, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
        raise CheckpointError(f"{best}: not a readable checkpoint ({exc}); retrain fold 0 of run {run_id}") from exc
    try:
        spec = from_dict(TrainSpec, run.get("config") or {})
    except ConfigError as err:
        raise ConfigError(f"run {run_id} has no training spec this version can read ({err})",
                          field="encoder_run_id") from None
    sample_rate, n_mels = spec.audio.sample_rate, spec.features.n_mels
    # The frontend the encoder was trained on, built the one way training builds it: a zero-shot
    # run (features.standardise = false) is fed unstandardised log-mel, as it was when scored.
    frontend = frontend_from_spec(spec, mean=saved["mel_mean"], std=saved["mel_std"])
    encoder = Cnn14(mel_bins=n_mels)
    prefix = "encoder."
    state = {k[len(prefix):]: v for k, v in saved["model"].items() if k.startswith(prefix)}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(f"{best}: the saved model is not a cnn14 tagger with {n_mels} mel bins "
                              f"(missing {missing[:5]}, unexpected {list(unexpected)[:5]})")
    # The frontend's standardisation is part of what the encoder sees, so it keys the cache too.
    identity = {"kind": "run-encoder", "run_id": run_id, "arch": "cnn14", "standardise": bool(spec.features.standardise),
                **_file_identity(best)}
    return ClipEmbedder(encoder, frontend, sample_rate=sample_rate, identity=identity, device=device, amp=amp)


def load_embedder(checkpoint: str = "", encoder_run_id: str = "", *, store=None,
                  device: torch.device | str = "cpu", amp: bool = True) -> ClipEmbedder:
    """The embedder a baseline spec asks for.

    Order: an explicit ``checkpoint`` path (a missing file is an error, not a
    fallback: the user named it); else ``$FSAT_PANNS_DIR/Cnn14_mAP=0.431.pth``;
    else the fold-0 encoder of ``encoder_run_id`` (needs ``store``). With none
    of them, CheckpointError says where to put the checkpoint.
    """
    published = PUBLISHED_CHECKPOINTS["cnn14"]
    path = resolve_checkpoint("cnn14", checkpoint or None)
    if path is not None:
        if not path.is_file():
            raise CheckpointError(
                f"checkpoint: {path} does not exist. Put the PANNs AudioSet checkpoint {published} "
                f"(Kong et al. 2020, zenodo record 3987831) there, or fix the path")
        return panns_embedder(path, device=device, amp=amp)
    if encoder_run_id:
        if store is None:
            raise ConfigError("a trained run's encoder needs the run database", field="encoder_run_id")
        return run_encoder_embedder(store, encoder_run_id, device=device, amp=amp)
    folder = os.environ.get(PANNS_DIR_ENV)
    where = (f"${PANNS_DIR_ENV} is {folder} but holds no {published}" if folder
             else f"${PANNS_DIR_ENV} is not set")
    raise CheckpointError(
        f"checkpoint: no CNN14 checkpoint found ({where}). Download {published} (PANNs, Kong et al. 2020, "
        f"zenodo record 3987831) into a folder and set {PANNS_DIR_ENV} to that folder, or set "
        f"checkpoint=/path/to/{published}; or set encoder_run_id to a trained cnn14 run to embed with "
        "its fold-0 encoder")


# --- batching ----------------------------------------------------------------------------


def embed_waves(embedder: ClipEmbedder, waves: Sequence[np.ndarray], *, crop_samples: int,
                batch_size: int = 16) -> np.ndarray:
    """Embeddings ``[n, 2048]`` (float32) of in-memory clips at the embedder's sample rate.

    Each clip is centre-cropped or loop-padded to ``crop_samples`` first
    (``crop_clip``), then ``batch_size`` clips run per forward pass.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out = np.empty((len(waves), EMBEDDING_DIM), dtype=np.float32)
    for start in range(0, len(waves), batch_size):
        chunk = [crop_clip(w, crop_samples) for w in waves[start:start + batch_size]]
        out[start:start + len(chunk)] = embedder(torch.from_numpy(np.stack(chunk))).numpy()
    return out


# --- the cache ---------------------------------------------------------------------------


def _atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    """The run layer's one atomic writer (temp file, fsync, rename)."""
    from engine.atomic import atomic_write

    atomic_write(path, write)


def _clip_of(key: str) -> str:
    """The ``split/fname`` part of a row key (the fingerprint after the last ``@`` dropped)."""
    return key.rsplit("@", 1)[0]


@dataclass
class EmbeddingCache:
    """The cached embeddings of one (embedder, crop settings) group: ``<folder>/<group>.npz`` + ``.json``."""

    folder: Path
    settings: dict[str, Any]
    _keys: list[str] = field(default_factory=list, init=False)
    _rows: np.ndarray = field(default_factory=lambda: np.zeros((0, EMBEDDING_DIM), np.float32), init=False)
    _pending_keys: list[str] = field(default_factory=list, init=False)
    _pending_rows: list[np.ndarray] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        blob = json.dumps(self.settings, sort_keys=True, separators=(",", ":"))
        self.group = hashlib.sha1(blob.encode()).hexdigest()[:16]
        self._keys, self._rows = self._read()

    @property
    def npz_path(self) -> Path:
        """The file holding ``keys`` and ``embeddings``."""
        return self.folder / f"{self.group}.npz"

    @property
    def index_path(self) -> Path:
        """The readable index: settings, row count, ``computed_total``."""
        return self.folder / f"{self.group}.json"

    def _read(self) -> tuple[list[str], np.ndarray]:
        try:
            with np.load(self.npz_path, allow_pickle=False) as data:
                keys, rows = [str(k) for k in data["keys"]], np.asarray(data["embeddings"], np.float32)
        except (OSError, ValueError, KeyError):
            # Absent, or torn by something other than our atomic writes: start the group afresh.
            return [], np.zeros((0, EMBEDDING_DIM), np.float32)
        if rows.shape != (len(keys), EMBEDDING_DIM):
            return [], np.zeros((0, EMBEDDING_DIM), np.float32)
        return keys, rows

    def read_index(self) -> dict[str, Any]:
        """The json index (empty when the group was never written)."""
        try:
            return json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            return {}

    def lookup(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached embeddings of those ``keys`` that have one."""
        row_of = {k: i for i, k in enumerate(self._keys)}
        found = {k: self._rows[row_of[k]] for k in keys if k in row_of}
        wanted = set(keys)
        found.update((k, row) for k, row in zip(self._pending_keys, self._pending_rows) if k in wanted)
        return found

    def add(self, keys: Sequence[str], rows: np.ndarray) -> None:
        """Queue new rows; they reach the disk at the next ``flush``."""
        self._pending_keys.extend(keys)
        self._pending_rows.extend(np.asarray(rows, np.float32))

    @property
    def pending(self) -> int:
        """Rows added since the last flush."""
        return len(self._pending_keys)

    def flush(self) -> None:
        """Merge the new rows with what is on disk now and rewrite the group atomically."""
        if not self._pending_keys:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        disk_keys, disk_rows = self._read()
        new = dict(zip(self._pending_keys, self._pending_rows))
        replaced = {_clip_of(k) for k in new}
        # A clip's older rows (the audio file has changed since) are dropped with the merge.
        keep = [i for i, k in enumerate(disk_keys) if k not in new and _clip_of(k) not in replaced]
        keys = [disk_keys[i] for i in keep] + list(new)
        rows = np.concatenate([disk_rows[keep], np.stack(list(new.values()))]).astype(np.float32)
        _atomic_write_bytes(self.npz_path, lambda fh: np.savez(fh, keys=np.array(keys, dtype=str),
                                                                embeddings=rows))
        index = self.read_index()
        index.update({"format": EMBED_FORMAT, "settings": self.settings, "rows": len(keys),
                      "computed_total": int(index.get("computed_total", 0)) + len(new),
                      "updated": time.strftime("%Y-%m-%d %H:%M:%S")})
        _atomic_write_bytes(self.index_path, lambda fh: fh.write(json.dumps(index, indent=2).encode()))
        self._keys, self._rows = keys, rows
        self._pending_keys, self._pending_rows = [], []


def clip_keys(table: ClipTable) -> list[str]:
    """Row keys ``<split>/<fname>@<fingerprint>`` of a split's clips (fingerprint: size + mtime or CRC)."""
    return [f"{table.split}/{fname}@{table.source.fingerprint([fname])}" for fname in table.fnames]


def cache_settings(embedder: ClipEmbedder, crop_samples: int) -> dict[str, Any]:
    """Everything that changes an embedding besides the audio: the cache group's identity."""
    return {"format": EMBED_FORMAT, "embedder": embedder.identity, "sample_rate": embedder.sample_rate,
            "crop_samples": int(crop_samples), "pad": PAD_RULE, "precision": embedder.precision}


# --- a split of a dataset ------------------------------------------------------------------


@dataclass
class EmbeddingResult:
    """Embeddings of a split in table order, and how they were obtained."""

    embeddings: np.ndarray
    computed: int
    reused: int
    seconds: float
    #: Clips embedded per second (decoding included), NaN when nothing was computed.
    clips_per_sec: float
    cache_file: Path | None

    def summary(self) -> dict[str, Any]:
        """JSON-able counts and speed, for run artifacts."""
        return {"clips": int(len(self.embeddings)), "computed": self.computed, "reused": self.reused,
                "seconds": round(self.seconds, 3),
                "clips_per_sec": None if np.isnan(self.clips_per_sec) else round(self.clips_per_sec, 3),
                "cache_file": str(self.cache_file) if self.cache_file else None}


def embed_table(table: ClipTable, embedder: ClipEmbedder, *, crop_seconds: float, batch_size: int = 16,
                cache_dir: Path | str | None = None, progress: Progress | None = None,
                flush_seconds: float = 120.0, decode_workers: int = 2) -> EmbeddingResult:
    """Embeddings ``[n, 2048]`` of every clip of ``table`` (in table order), cached under ``cache_dir``.

    Cached rows are reused; only missing clips are decoded (to the
    embedder's sample rate, by ``decode_workers`` threads, ahead of the
    forward passes) and embedded, ``batch_size`` per pass. ``cache_dir``
    None disables the cache. ``progress(done, total, clips_per_sec)`` is
    called after every batch. A corrupt clip raises the DataError of
    ``engine.data.audio.decode``, naming the file; rows embedded before it are
    kept in the cache.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    crop_samples = int(round(crop_seconds * embedder.sample_rate))
    if crop_samples < 1:
        raise ConfigError(f"the crop is shorter than one sample ({crop_seconds} s)", field="audio.crop_seconds")
    t0 = time.perf_counter()
    n = len(table)
    out = np.empty((n, EMBEDDING_DIM), dtype=np.float32)
    cache = None
    keys: list[str] = []
    todo = list(range(n))
    if cache_dir is not None:
        cache = EmbeddingCache(Path(cache_dir) / "embeddings", cache_settings(embedder, crop_samples))
        keys = clip_keys(table)
        found = cache.lookup(keys)
        todo = []
        for i, key in enumerate(keys):
            if key in found:
                out[i] = found[key]
            else:
                todo.append(i)
    reused = n - len(todo)
    if progress is not None:
        progress(reused, n, float("nan"))

    def load(i: int) -> np.ndarray:
        fname = table.fnames[i]
        wave = decode(table.source.read_bytes(fname), name=table.source.describe(fname),
                      target_sr=embedder.sample_rate)
        return crop_clip(wave, crop_samples)

    t_compute = time.perf_counter()
    last_flush = t_compute
    done = 0
    try:
        with ThreadPoolExecutor(max_workers=max(1, decode_workers)) as pool:
            pending: deque[tuple[int, Future[np.ndarray]]] = deque()
            queue = iter(todo)

            def refill() -> None:
                # Two batches in flight keep the decoders busy while the model runs.
                while len(pending) < 2 * batch_size:
                    i = next(queue, None)
                    if i is None:
                        return
                    pending.append((i, pool.submit(load, i)))

            try:
                refill()
                while pending:
                    batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
                    waves = np.stack([future.result() for _, future in batch])
                    refill()
                    idx = [i for i, _ in batch]
                    emb = embedder(torch.from_numpy(waves)).numpy()
                    out[idx] = emb
                    done += len(idx)
                    if cache is not None:
                        cache.add([keys[i] for i in idx], emb)
                        if time.perf_counter() - last_flush > flush_seconds:
                            cache.flush()
                            last_flush = time.perf_counter()
                    if progress is not None:
                        progress(reused + done, n, done / max(time.perf_counter() - t_compute, 1e-9))
            finally:
                # A failed or cancelled extraction should not wait for clips nobody will use.
                for _, future in pending:
                    future.cancel()
    finally:
        if cache is not None:
            cache.flush()
    compute_seconds = time.perf_counter() - t_compute
    return EmbeddingResult(embeddings=out, computed=done, reused=reused, seconds=time.perf_counter() - t0,
                           clips_per_sec=done / compute_seconds if done else float("nan"),
                           cache_file=cache.npz_path if cache is not None else None)
