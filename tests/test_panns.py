"""PANNs CNN14 / ResNet38: strict checkpoint loading, parity with the reference package, fine-tuning wrappers.

The checkpoints are written by the tests from randomly initialised models
(random BatchNorm statistics too, so every layer matters) in PANNs' format.
Reference parity runs ``panns_inference`` in a subprocess whose HOME is a
temporary folder holding the labels CSV it reads at import.
"""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from engine.errors import CheckpointError, ConfigError
from engine.models.checkpoint import (
    detect_architecture, load_panns_checkpoint, read_state_dict, resolve_checkpoint, save_panns_style,
)
from engine.models.heads import AUDIOSET_INDEX_80, AttentionHead, init_from_audioset
from engine.models.panns import Cnn14, PannsTagger, ResNet38, ZeroShotTagger, repeat_pad_frames

SR = 32000


class OpaqueState:
    """A pickled Python object that ``weights_only`` loading must refuse."""


def _randomise_batchnorm(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so a missed BN tensor changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))


def _waves(n: int, seconds: float, seed: int) -> torch.Tensor:
    """``[n, samples]`` float32 test signals: two tones with a slow amplitude swing, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    out = []
    for _ in range(n):
        f1, f2 = rng.uniform(200, 4000, size=2)
        swing = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)
        clip = 0.3 * swing * np.sin(2 * np.pi * f1 * t) + 0.1 * np.sin(2 * np.pi * f2 * t)
        out.append(clip + 0.02 * rng.standard_normal(t.size))
    return torch.tensor(np.stack(out), dtype=torch.float32)


@contextlib.contextmanager
def _state_restored(model: torch.nn.Module):
    """Undo training-mode side effects (BatchNorm running statistics) on a shared fixture."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        yield model
    finally:
        model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.fixture(scope="module")
def cnn14_ckpt(tmp_path_factory):
    """A random Cnn14 (eval mode) saved PANNs-style under the published file name."""
    torch.manual_seed(0)
    model = Cnn14()
    _randomise_batchnorm(model, seed=0)
    model.eval()
    folder = tmp_path_factory.mktemp("panns")
    path = save_panns_style(model, folder / "Cnn14_mAP=0.431.pth")
    return path, model


@pytest.fixture(scope="module")
def panns_inference_run(cnn14_ckpt, tmp_path_factory):
    """``panns_inference`` on two 2 s WAVs with the random checkpoint, in a subprocess.

    Started when the checkpoint exists and awaited by the parity test, so the
    subprocess (one thread) overlaps with the in-process tests. Its HOME is a
    temporary folder with the 527-row labels CSV the package reads at import.
    """
    path, _ = cnn14_ckpt
    work = tmp_path_factory.mktemp("reference")
    home = work / "home"
    (home / "panns_data").mkdir(parents=True)
    with open(home / "panns_data" / "class_labels_indices.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows([i, f"/m/test{i}", f"class {i}"] for i in range(527))
    wav_paths = []
    for i, wave in enumerate(_waves(2, 2.0, seed=7)):
        wav_paths.append(work / f"clip{i}.wav")
        sf.write(wav_paths[-1], wave.numpy(), SR, subtype="FLOAT")
    script = work / "reference.py"
    script.write_text(_REFERENCE_SCRIPT)
    out = work / "reference.npz"
    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(out), *map(str, wav_paths)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield proc, out, wav_paths
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def resnet38_ckpt(tmp_path_factory):
    """A random ResNet38 (eval mode) saved PANNs-style."""
    torch.manual_seed(1)
    model = ResNet38()
    _randomise_batchnorm(model, seed=1)
    model.eval()
    path = save_panns_style(model, tmp_path_factory.mktemp("panns38") / "ResNet38_mAP=0.434.pth")
    return path, model


@pytest.fixture(scope="module")
def tagger64(cnn14_ckpt):
    """PannsTagger('cnn14') loaded from the random checkpoint, head initialised from fc_audioset."""
    torch.manual_seed(2)
    tagger = PannsTagger("cnn14", n_classes=80, n_mels=64)
    result = tagger.load_pretrained(cnn14_ckpt[0], init_head_from_audioset=True)
    return tagger, result


# --------------------------------------------------------------------------- state dict and strict loading

def test_cnn14_has_panns_key_names_and_constructor_defaults(cnn14_ckpt, panns_inference_run):
    # Requesting panns_inference_run here starts the reference subprocess early.
    model = cnn14_ckpt[1]
    keys = list(model.state_dict())
    for key in ("spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight",
                "logmel_extractor.melW", "bn0.weight", "bn0.running_var", "conv_block1.conv1.weight",
                "conv_block1.bn2.running_mean", "conv_block6.conv2.weight", "fc1.weight", "fc1.bias",
                "fc_audioset.weight", "fc_audioset.bias"):
        assert key in keys
    assert (model.sample_rate, model.window_size, model.hop_size, model.mel_bins, model.fmin, model.fmax,
            model.classes_num) == (32000, 1024, 320, 64, 50, 14000, 527)
    assert model.state_dict()["logmel_extractor.melW"].shape == (513, 64)
    assert model.fc_audioset.weight.shape == (527, 2048)
    assert detect_architecture(model.state_dict()) == "Cnn14"


def test_strict_roundtrip_gives_identical_outputs(cnn14_ckpt):
    path, original = cnn14_ckpt
    torch.manual_seed(123)
    fresh = Cnn14().eval()
    wave = _waves(2, 0.5, seed=3)
    assert not torch.equal(fresh.conv_block2.conv1.weight, original.conv_block2.conv1.weight)
    with torch.no_grad():
        expected = original(wave)

    result = load_panns_checkpoint(fresh, path)
    assert result["loaded"] == len(original.state_dict()) == 84
    assert result["missing"] == result["unexpected"] == result["mismatched"] == result["skipped"] == []
    assert result["checkpoint_arch"] == "Cnn14"
    with torch.no_grad():
        got = fresh(wave)
    assert torch.equal(got["clipwise_output"], expected["clipwise_output"])
    assert torch.equal(got["embedding"], expected["embedding"])
    assert got["clipwise_output"].shape == (2, 527) and got["embedding"].shape == (2, 2048)


def test_checkpoint_that_does_not_fit_is_refused_with_each_problem_listed(cnn14_ckpt, tmp_path):
    path, original = cnn14_ckpt
    state = dict(read_state_dict(path))
    del state["conv_block3.bn1.weight"]
    state["extra_head.weight"] = torch.zeros(3, 4)
    state["fc1.weight"] = torch.zeros(2048, 1024)
    bad = tmp_path / "bad.pth"
    torch.save({"model": state}, bad)

    target = Cnn14()
    fc1_before = target.fc1.weight.detach().clone()
    with pytest.raises(CheckpointError) as info:
        load_panns_checkpoint(target, bad)
    message = str(info.value)
    assert str(bad) in message
    assert "missing" in message and "conv_block3.bn1.weight" in message
    assert "unexpected" in message and "extra_head.weight" in message
    assert "wrong shape" in message and "fc1.weight expected [2048, 2048] found [2048, 1024]" in message
    assert torch.equal(target.fc1.weight, fc1_before), "a refused checkpoint must not be half-loaded"

    # Non-strict: what fits is loaded, the rest reported and left as initialised.
    result = load_panns_checkpoint(target, bad, strict_encoder=False)
    assert result["missing"] == ["conv_block3.bn1.weight"]
    assert result["unexpected"] == ["extra_head.weight"]
    assert result["mismatched"] == [("fc1.weight", (2048, 2048), (2048, 1024))]
    assert torch.equal(target.fc1.weight, fc1_before)
    assert torch.equal(target.conv_block3.conv1.weight, original.conv_block3.conv1.weight)


def test_long_problem_lists_are_truncated(tmp_path):
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(12)])
    state = {k: v for k, v in model.state_dict().items() if k.endswith(".bias")}
    path = tmp_path / "partial.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as info:
        load_panns_checkpoint(model, path)
    message = str(info.value)
    assert "missing from the checkpoint (12): 0.weight, 1.weight" in message
    assert "7.weight, ... and 4 more" in message and "8.weight" not in message
    assert "not recognised as a PANNs model" in message


def test_wrong_architecture_is_named(cnn14_ckpt, resnet38_ckpt):
    with pytest.raises(CheckpointError) as info:
        load_panns_checkpoint(cnn14_ckpt[1], resnet38_ckpt[0])
    message = str(info.value)
    assert "wrong architecture" in message
    assert "ResNet38 checkpoint" in message and "model is a Cnn14" in message
    assert "'resnet38'" in message and "Cnn14_mAP=0.431.pth" in message

    with pytest.raises(CheckpointError, match="Cnn14 checkpoint but the model is a ResNet38"):
        load_panns_checkpoint(resnet38_ckpt[1], cnn14_ckpt[0])


def test_missing_file_message_names_path_files_and_env(tmp_path, cnn14_ckpt):
    path = tmp_path / "nowhere" / "Cnn14_mAP=0.431.pth"
    with pytest.raises(CheckpointError) as info:
        load_panns_checkpoint(cnn14_ckpt[1], path)
    message = str(info.value)
    assert str(path) in message
    assert "Cnn14_mAP=0.431.pth" in message and "ResNet38_mAP=0.434.pth" in message
    assert "FSAT_PANNS_DIR" in message


def test_unreadable_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "Cnn14_mAP=0.431.pth"
    path.write_text("<html>not a checkpoint</html>")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_state_dict(path)


def test_training_checkpoint_with_numpy_sampler_state_and_dataparallel_prefix(tmp_path):
    # PANNs' training script also saves the iteration and the sampler state (numpy arrays).
    state = {"module.fc1.weight": torch.arange(6.0).view(2, 3), "module.fc1.bias": torch.ones(2)}
    sampler = {"random_state": np.random.RandomState(0).get_state(), "indexes": [np.arange(5)],
               "pointer": np.int64(3)}
    path = tmp_path / "ckpt.pth"
    torch.save({"iteration": 600000, "model": state, "sampler": sampler}, path)
    loaded = read_state_dict(path)
    assert sorted(loaded) == ["fc1.bias", "fc1.weight"]
    assert torch.equal(loaded["fc1.weight"], state["module.fc1.weight"])

    torch.save({"model": {"w": torch.ones(1)}, "extra": OpaqueState()}, tmp_path / "opaque.pth")
    with pytest.raises(CheckpointError, match="other than tensors and numpy arrays"):
        read_state_dict(tmp_path / "opaque.pth")


def test_resolve_checkpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("FSAT_PANNS_DIR", raising=False)
    assert resolve_checkpoint("cnn14", None) is None
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("FSAT_PANNS_DIR", str(folder))
    assert resolve_checkpoint("cnn14", None) is None  # the folder is there, the file is not
    (folder / "Cnn14_mAP=0.431.pth").write_bytes(b"x")
    (folder / "ResNet38_mAP=0.434.pth").write_bytes(b"x")
    assert resolve_checkpoint("Cnn14", None) == folder / "Cnn14_mAP=0.431.pth"
    assert resolve_checkpoint("resnet38", None) == folder / "ResNet38_mAP=0.434.pth"
    explicit = tmp_path / "mine.pth"
    assert resolve_checkpoint("cnn14", str(explicit)) == explicit  # explicit wins, even when absent
    assert resolve_checkpoint("resnet38", folder) == folder / "ResNet38_mAP=0.434.pth"
    with pytest.raises(ConfigError, match="unknown PANNs architecture"):
        resolve_checkpoint("vgg16", None)


# --------------------------------------------------------------------------- parity with panns_inference

_REFERENCE_SCRIPT = textwrap.dedent("""
    import os, sys

    def _no_downloads(command):
        raise RuntimeError("download attempted: " + command)

    os.system = _no_downloads  # panns_inference fetches files with os.system('wget ...')

    import numpy as np
    import soundfile as sf
    from panns_inference import AudioTagging

    checkpoint, out, *wavs = sys.argv[1:]
    audio = np.stack([sf.read(w, dtype="float32")[0] for w in wavs])
    tagger = AudioTagging(checkpoint_path=checkpoint, device="cpu")
    assert type(tagger.model).__name__ == "Cnn14"
    m = tagger.model
    assert (m.logmel_extractor.melW.shape[1], m.fc_audioset.out_features) == (64, 527)
    clipwise, embedding = tagger.inference(audio)
    np.savez(out, clipwise=clipwise, embedding=embedding)
""")


def test_clipwise_output_matches_panns_inference(cnn14_ckpt, panns_inference_run):
    path, ours = cnn14_ckpt
    # panns_inference re-downloads a checkpoint smaller than 3e8 bytes; a real CNN14 is larger.
    assert os.path.getsize(path) >= 3e8
    proc, out, wav_paths = panns_inference_run
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-3000:]
    reference = np.load(out)

    # ``ours`` is the model that wrote the checkpoint; loading it back is exact (roundtrip test).
    audio = torch.tensor(np.stack([sf.read(p, dtype="float32")[0] for p in wav_paths]))
    with torch.no_grad():
        output = ours(audio)
    clipwise = output["clipwise_output"].numpy()
    assert clipwise.shape == reference["clipwise"].shape == (2, 527)
    assert np.abs(clipwise - reference["clipwise"]).max() < 1e-4
    assert np.abs(output["embedding"].numpy() - reference["embedding"]).max() < 1e-4
    # The random model is not degenerate: its outputs spread and differ between the clips.
    assert clipwise.std() > 1e-3 and np.abs(clipwise[0] - clipwise[1]).max() > 1e-3


# --------------------------------------------------------------------------- split forward

def test_embed_reproduces_the_reference_embedding(cnn14_ckpt):
    _, model = cnn14_ckpt
    wave = _waves(2, 1.0, seed=11)
    with torch.no_grad():
        reference = model(wave)
        logmel = model.logmel(wave)
        embedding = model.embed(logmel)
    assert logmel.shape == (2, 1, 1 + wave.shape[1] // 320, 64)
    assert torch.allclose(embedding, reference["embedding"], atol=1e-6)
    assert torch.allclose(torch.sigmoid(model.fc_audioset(embedding)), reference["clipwise_output"], atol=1e-6)


def test_minimum_frames_is_32_for_both_architectures(cnn14_ckpt, resnet38_ckpt):
    for model in (cnn14_ckpt[1], resnet38_ckpt[1]):
        assert model.min_frames == 32
        with torch.no_grad():
            assert model.forward_features(torch.randn(1, 1, 32, 64)).shape == (1, 2048, 1)
            with pytest.raises(RuntimeError):
                model.forward_features(torch.randn(1, 1, 31, 64))


def test_repeat_pad_frames_matches_modular_indexing():
    x = torch.randn(2, 1, 7, 5)
    padded = repeat_pad_frames(x, 32)
    reference = np.take(x.numpy(), np.arange(32) % 7, axis=2)
    assert padded.shape == (2, 1, 32, 5)
    np.testing.assert_array_equal(padded.numpy(), reference)
    assert repeat_pad_frames(x, 5) is x


# --------------------------------------------------------------------------- head

def test_attention_head_matches_a_loop_over_classes_and_frames():
    torch.manual_seed(5)
    head = AttentionHead(in_features=6, n_classes=3, dropout=0.5).eval()
    with torch.no_grad():
        for layer in (head.att, head.gate):
            layer.weight.normal_()
            layer.bias.normal_()
    h = torch.randn(2, 6, 5)
    with torch.no_grad():
        logits, alpha = head(h, return_attention=True)

    p = {name: t.detach().numpy().astype(np.float64) for name, t in head.state_dict().items()}
    hn = h.numpy().astype(np.float64)
    expected = np.zeros((2, 3))
    for b in range(2):
        for k in range(3):
            scores = [p["att.weight"][k] @ hn[b, :, t] + p["att.bias"][k] for t in range(5)]
            weights = np.exp(scores) / np.sum(np.exp(scores))
            for t in range(5):
                value = p["cla.weight"][k] @ hn[b, :, t] + p["cla.bias"][k]
                gate = 2.0 / (1.0 + np.exp(-(p["gate.weight"][k] @ hn[b, :, t] + p["gate.bias"][k])))
                expected[b, k] += weights[t] * gate * value
            np.testing.assert_allclose(alpha[b, k].numpy(), weights, rtol=1e-5)
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_fresh_attention_head_is_the_time_average_of_class_scores():
    head = AttentionHead(in_features=8, n_classes=4).eval()
    h = torch.randn(3, 8, 6)
    with torch.no_grad():
        expected = head.cla(h.transpose(1, 2)).mean(dim=1)
        assert torch.allclose(head(h), expected, atol=1e-6)


def test_init_from_audioset_copies_the_indexed_rows():
    head = AttentionHead(in_features=2048, n_classes=80)
    weight = torch.randn(527, 2048)
    bias = torch.randn(527)
    init_from_audioset(head, weight, bias)
    for k, row in enumerate(AUDIOSET_INDEX_80):
        assert torch.equal(head.cla.weight[k], weight[row])
        assert head.cla.bias[k] == bias[row]
    assert len(set(AUDIOSET_INDEX_80)) == 80 and max(AUDIOSET_INDEX_80) < 527
    with pytest.raises(ConfigError, match="80 classes but the head has 41"):
        init_from_audioset(AttentionHead(2048, 41), weight, bias)
    with pytest.raises(CheckpointError, match="head needs"):
        init_from_audioset(head, torch.randn(527, 1024), bias)


# --------------------------------------------------------------------------- fine-tuning wrappers

def test_panns_tagger_loads_and_initialises_head(tagger64, cnn14_ckpt):
    tagger, result = tagger64
    _, original = cnn14_ckpt
    assert result["loaded"] == 84 and result["skipped"] == [] and result["head_initialised"]
    assert torch.equal(tagger.encoder.conv_block4.conv2.weight, original.conv_block4.conv2.weight)
    for k, row in enumerate(AUDIOSET_INDEX_80):
        assert torch.equal(tagger.head.cla.weight[k], original.fc_audioset.weight[row])
        assert tagger.head.cla.bias[k] == original.fc_audioset.bias[row]

    tagger.eval()
    wave = _waves(2, 1.0, seed=13)
    logmel = original.logmel(wave)
    with torch.no_grad():
        logits = tagger(logmel)
    assert logits.shape == (2, 80) and torch.isfinite(logits).all()
    # With uniform attention and unit gates the initialised head is the time average of
    # per-frame AudioSet logits of the 80 classes.
    with torch.no_grad():
        frames = F.relu(original.fc1(original.forward_features(logmel).transpose(1, 2)))
        per_frame = original.fc_audioset(frames)[:, :, AUDIOSET_INDEX_80]
    assert torch.allclose(logits, per_frame.mean(dim=1), atol=1e-4)


def test_panns_tagger_short_clip_and_gradients(tagger64, cnn14_ckpt):
    tagger, _ = tagger64
    short = cnn14_ckpt[1].logmel(_waves(2, 0.3, seed=17))
    assert short.shape[2] == 31 < tagger.min_frames  # the bare encoder fails on this (see above)
    with torch.no_grad():
        logits = tagger.eval()(short)
    assert logits.shape == (2, 80) and torch.isfinite(logits).all()

    logmel = cnn14_ckpt[1].logmel(_waves(2, 1.0, seed=19))
    targets = torch.zeros(2, 80)
    targets[0, 3] = targets[1, 50] = 1.0
    with _state_restored(tagger):
        tagger.train()
        assert tagger(short).shape == (2, 80)  # BatchNorm in training mode copes with one frame too
        loss = F.binary_cross_entropy_with_logits(tagger(logmel), targets)
        loss.backward()
        params = dict(tagger.named_parameters())
        for name in ("head.cla.weight", "head.att.weight", "head.gate.weight", "encoder.fc1.weight",
                     "encoder.conv_block1.conv1.weight", "encoder.conv_block6.conv2.weight",
                     "encoder.bn0.weight"):
            assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
        assert tagger.encoder.fc_audioset.weight.grad is None
        assert tagger.encoder.logmel_extractor.melW.grad is None


def test_128_mel_tagger_loads_with_bn0_rebuilt(cnn14_ckpt):
    path, original = cnn14_ckpt
    tagger = PannsTagger("cnn14", n_mels=128)
    result = tagger.load_pretrained(path)
    assert set(result["skipped"]) == {"bn0.weight", "bn0.bias", "bn0.running_mean", "bn0.running_var",
                                      "bn0.num_batches_tracked", "logmel_extractor.melW"}
    assert result["missing"] == result["unexpected"] == result["mismatched"] == []
    assert any("bn0 was rebuilt for 128 mel bins" in note for note in result["notes"])
    assert tagger.encoder.bn0.weight.shape == (128,)
    assert torch.equal(tagger.encoder.bn0.weight, torch.ones(128))
    assert torch.equal(tagger.encoder.conv_block1.conv1.weight, original.conv_block1.conv1.weight)
    assert torch.equal(tagger.encoder.fc1.weight, original.fc1.weight)
    with torch.no_grad():
        logits = tagger.eval()(torch.randn(1, 1, 64, 128))
    assert logits.shape == (1, 80)
    with pytest.raises(ValueError, match="expects log-mel"):
        tagger(torch.randn(1, 1, 64, 64))


def test_zero_shot_tagger_selects_the_80_classes(cnn14_ckpt, monkeypatch):
    path, model = cnn14_ckpt
    wave = _waves(2, 0.5, seed=23)
    with torch.no_grad():
        full = model(wave)["clipwise_output"]
    reference = torch.stack([full[:, i] for i in AUDIOSET_INDEX_80], dim=1)

    monkeypatch.setenv("FSAT_PANNS_DIR", str(path.parent))
    zero_shot = ZeroShotTagger.from_checkpoint("cnn14")
    zero_shot.train()  # stays in eval mode
    assert not zero_shot.model.training
    with torch.no_grad():
        probs = zero_shot(wave)
    assert probs.shape == (2, 80)
    assert torch.equal(probs, reference)


def test_tagger_configuration_errors():
    with pytest.raises(ConfigError, match="unknown PANNs architecture"):
        PannsTagger("vgg")
    with pytest.raises(ConfigError, match="unknown head"):
        PannsTagger("cnn14", head="mean")


# --------------------------------------------------------------------------- ResNet38

def test_resnet38_strict_roundtrip_and_shapes(resnet38_ckpt):
    path, original = resnet38_ckpt
    assert detect_architecture(original.state_dict()) == "ResNet38"
    assert "resnet.layer4.2.conv2.weight" in original.state_dict()
    assert "resnet.layer2.0.downsample.1.weight" in original.state_dict()
    assert "conv_block_after1.conv1.weight" in original.state_dict()
    torch.manual_seed(99)
    fresh = ResNet38().eval()
    result = load_panns_checkpoint(fresh, path)
    assert result["loaded"] == len(original.state_dict())
    assert result["missing"] == result["unexpected"] == result["mismatched"] == []

    wave = _waves(1, 0.5, seed=29)
    with torch.no_grad():
        got = fresh(wave)
        expected = original(wave)
        features = fresh.forward_features(fresh.logmel(wave))
    assert got["clipwise_output"].shape == (1, 527) and got["embedding"].shape == (1, 2048)
    assert torch.equal(got["clipwise_output"], expected["clipwise_output"])
    assert features.shape == (1, 2048, 51 // 32)


# --------------------------------------------------------------------------- short clips, ResNet38 and 256 mels

def test_tagger_repeats_clips_shorter_than_one_second(tagger64, cnn14_ckpt):
    tagger, _ = tagger64
    # One second of centred frames at PANNs' 32 kHz and hop 320: 1 + 32000 // 320.
    assert tagger.min_frames == 101
    assert PannsTagger("cnn14", sample_rate=16000, hop_length=320).min_frames == 1 + 16000 // 320
    tagger.eval()
    short = cnn14_ckpt[1].logmel(_waves(2, 0.3, seed=31))
    assert short.shape[2] == 31
    with torch.no_grad():
        got = tagger(short)
        looped_to_one_second = tagger(repeat_pad_frames(short, 101))
        looped_to_32_frames = tagger(repeat_pad_frames(short, 32))
        frames = tagger.frame_embeddings(short)
    torch.testing.assert_close(got, looped_to_one_second)
    assert not torch.allclose(got, looped_to_32_frames, atol=1e-4)
    assert frames.shape == (2, 2048, 101 // 32)
    # A clip of a second or more goes in as it is.
    long = cnn14_ckpt[1].logmel(_waves(1, 1.5, seed=37))
    with torch.no_grad():
        assert tagger.frame_embeddings(long).shape[2] == long.shape[2] // 32


def test_resnet38_tagger_gives_80_logits_and_trains_end_to_end(resnet38_ckpt):
    path, original = resnet38_ckpt
    torch.manual_seed(4)
    tagger = PannsTagger("resnet38", n_classes=80, n_mels=64)
    result = tagger.load_pretrained(path, init_head_from_audioset=True)
    assert result["loaded"] == len(original.state_dict()) and result["skipped"] == []
    assert torch.equal(tagger.encoder.resnet.layer4[2].conv2.weight, original.resnet.layer4[2].conv2.weight)
    assert tagger.min_frames == 101

    # One training step (the costly part on a CPU): 80 finite logits per clip, gradients everywhere.
    logmel = original.logmel(_waves(2, 1.0, seed=41))
    logits = tagger.train()(logmel)
    assert logits.shape == (2, 80) and torch.isfinite(logits).all()
    assert not torch.allclose(logits[0], logits[1])
    targets = torch.zeros(2, 80)
    targets[0, 7] = targets[1, 61] = 1.0
    F.binary_cross_entropy_with_logits(logits, targets).backward()
    params = dict(tagger.named_parameters())
    for name in ("head.cla.weight", "head.att.weight", "encoder.fc1.weight", "encoder.bn0.weight",
                 "encoder.conv_block1.conv1.weight", "encoder.resnet.layer1.0.conv1.weight",
                 "encoder.resnet.layer4.2.conv2.weight", "encoder.conv_block_after1.conv2.weight"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    assert tagger.encoder.fc_audioset.weight.grad is None


def test_256_mel_tagger_rebuilds_its_first_layer_and_trains(cnn14_ckpt):
    path, original = cnn14_ckpt
    torch.manual_seed(5)
    tagger = PannsTagger("cnn14", n_mels=256)
    result = tagger.load_pretrained(path, init_head_from_audioset=False)
    assert set(result["skipped"]) == {"bn0.weight", "bn0.bias", "bn0.running_mean", "bn0.running_var",
                                      "bn0.num_batches_tracked", "logmel_extractor.melW"}
    assert any("bn0 was rebuilt for 256 mel bins" in note for note in result["notes"])
    # bn0, the layer that sees the mel axis, is sized for 256 bins; the convolutions load unchanged.
    assert tagger.encoder.bn0.weight.shape == tagger.encoder.bn0.running_mean.shape == (256,)
    assert tagger.encoder.logmel_extractor.melW.shape == (513, 256)
    assert torch.equal(tagger.encoder.conv_block1.conv1.weight, original.conv_block1.conv1.weight)

    logmel = torch.randn(2, 1, 101, 256)
    tagger.train()
    logits = tagger(logmel)
    assert logits.shape == (2, 80)
    F.binary_cross_entropy_with_logits(logits, torch.zeros(2, 80)).backward()
    assert tagger.encoder.bn0.weight.grad.shape == (256,) and tagger.encoder.bn0.weight.grad.abs().sum() > 0
    # The running statistics of the rebuilt bn0 adapt to the 256-bin input.
    assert not torch.equal(tagger.encoder.bn0.running_mean, torch.zeros(256))
    with pytest.raises(ValueError, match="expects log-mel"):
        tagger(torch.randn(1, 1, 101, 64))
