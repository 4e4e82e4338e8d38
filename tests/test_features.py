"""Feature pipelines: shapes, cut/pad, differentiability, determinism, stats, dB convention, wav I/O."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from avharness import UserError
from avharness_plugins.datasets.features import (
    Fbank128,
    LogMel64,
    compute_stats,
    get_pipeline,
    load_stats,
    load_wav,
    save_stats,
)

SR = 16000


def _noise(seconds: float, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(seconds * SR), generator=g)


@pytest.fixture(scope="module")
def fbank():
    return Fbank128()


@pytest.fixture(scope="module")
def logmel():
    return LogMel64()


@pytest.mark.parametrize("seconds", [1.0, 10.0, 12.0])
def test_shapes_cut_pad_finite(fbank, logmel, seconds):
    wav = _noise(seconds, batch=2)
    a = fbank(wav)
    b = logmel(wav)
    assert a.shape == (2, 1024, 128)
    assert b.shape == (2, 400, 64)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    if seconds == 1.0:  # padded with zeros after the features
        assert (a[:, 200:] == 0).all() and (b[:, 60:] == 0).all()
        assert (a[:, :90] != 0).any()
    if seconds == 12.0:  # cut: the first frames equal those of the first 10 s
        assert torch.allclose(logmel(wav[:, : 10 * SR])[:, :390], b[:, :390], atol=1e-4)


@pytest.mark.parametrize("cls", [Fbank128, LogMel64])
def test_gradients_wrt_waveform(cls):
    pipe = cls({"mean": -5.0, "std": 4.0, "pipeline": cls.name, "version": cls.version})
    wav = _noise(2.0, batch=2).requires_grad_(True)
    out = pipe(wav)
    (g,) = torch.autograd.grad(out.pow(2).sum(), wav)
    assert g.shape == wav.shape
    assert torch.isfinite(g).all()
    assert g.abs().sum() > 0


def test_deterministic(fbank, logmel):
    wav = _noise(3.0, batch=2, seed=3)
    assert torch.equal(fbank(wav), fbank(wav.clone()))
    assert torch.equal(logmel(wav), logmel(wav.clone()))
    # per-sample: a sample's features do not depend on its batch-mates
    assert torch.allclose(fbank(wav[:1]), fbank(wav)[:1])


def test_describe(fbank, logmel):
    d = logmel.describe()
    assert d["name"] == "logmel64" and d["version"] == "1"
    assert "10*log10" in d["params"]["db_convention"]
    assert "20*log10" in d["params"]["db_note"]
    assert d["normalisation"] == {"kind": "none"}
    f = fbank.describe()
    assert f["params"]["num_mel_bins"] == 128 and f["params"]["dither"] == 0.0
    assert get_pipeline("fbank128").name == "fbank128"
    with pytest.raises(UserError, match="unknown feature pipeline"):
        get_pipeline("mfcc")


def test_stats_roundtrip_and_normalisation(tmp_path, logmel):
    clips = [_noise(2.0, seed=s) for s in range(3)]
    stats = compute_stats(logmel, clips)
    assert stats["pipeline"] == "logmel64" and stats["version"] == "1"
    assert stats["n_clips"] == 3 and stats["n_frames"] == 1200
    raw = torch.cat([logmel.raw(c) for c in clips]).double()
    assert stats["mean"] == pytest.approx(raw.mean().item(), rel=1e-6)
    assert stats["std"] == pytest.approx(raw.std(unbiased=False).item(), rel=1e-5)

    path = tmp_path / "stats.json"
    save_stats(stats, path)
    assert load_stats(path, logmel) == stats
    norm = LogMel64(path)
    x = norm(clips[0])
    expected = (logmel.raw(clips[0]) - stats["mean"]) / (2 * stats["std"])
    assert torch.allclose(x, expected, atol=1e-5)
    d = norm.describe()["normalisation"]
    assert d["mean"] == stats["mean"] and d["source"] == str(path) and d["n_clips"] == 3

    with pytest.raises(UserError, match="recompute"):
        Fbank128(path)  # other pipeline
    (tmp_path / "old.json").write_text(path.read_text().replace('"version": "1"', '"version": "0"'))
    with pytest.raises(UserError, match="recompute"):
        load_stats(tmp_path / "old.json", logmel)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        load_stats(tmp_path / "bad.json", logmel)


def test_db_convention_sine(logmel):
    freq, amp = 1000.0, 0.5
    t = torch.arange(4 * SR, dtype=torch.float64) / SR
    wav = (amp * torch.sin(2 * math.pi * freq * t)).float().unsqueeze(0)
    feats = logmel.raw(wav)[0].double()  # [400, 64]
    fb = torchaudio.functional.melscale_fbanks(2049, 0.0, SR / 2, 64, SR, norm="slaney", mel_scale="slaney").double()
    k = int(fb[round(freq * 4096 / SR)].argmax())

    # independent numpy reference for frame 80 (centred at sample 80*400, periodic Hann 1024 in 4096)
    x = wav[0].double().numpy()
    c = 80 * 400
    win = np.zeros(4096)
    win[1536:1536 + 1024] = np.hanning(1025)[:-1]
    spec = np.abs(np.fft.rfft(x[c - 2048:c + 2048] * win)) ** 2
    mel_power = (fb.numpy().T @ spec)[k]
    assert feats[80, k].item() == pytest.approx(10 * math.log10(mel_power + 1e-10), abs=0.05)

    # doubling the amplitude (x4 power) adds 10*log10(4) = 6.02 dB, not the seed's 12.04 dB
    louder = logmel.raw(2 * wav)[0].double()
    assert (louder[80, k] - feats[80, k]).item() == pytest.approx(10 * math.log10(4), abs=0.01)
    # silence sits at the -100 dB floor (power_to_db), not -200
    assert logmel.raw(torch.zeros(1, SR))[0, 5].min().item() == pytest.approx(-100.0, abs=1e-3)


def test_load_wav(tmp_path):
    stereo = np.stack([np.full(8000, 0.2), np.full(8000, 0.4)], axis=1).astype("float32")
    sf.write(tmp_path / "st.wav", stereo, 8000)
    w = load_wav(tmp_path / "st.wav")
    assert w.dim() == 1 and w.dtype == torch.float32
    assert abs(w.numel() - 16000) <= 1
    assert w[4000:12000].mean().item() == pytest.approx(0.3, abs=1e-3)

    with pytest.raises(UserError, match="missing.wav"):
        load_wav(tmp_path / "missing.wav")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(UserError, match="corrupt.wav"):
        load_wav(tmp_path / "corrupt.wav")


def test_real_audioset_clip(shared_audioset, fbank, logmel):
    wav = load_wav(shared_audioset / "wav" / "--BfvyPmVMo.wav")
    assert wav.dim() == 1 and abs(wav.numel() - 10 * SR) < SR // 10
    a = fbank(wav.unsqueeze(0))
    b = logmel(wav.unsqueeze(0))
    assert a.shape == (1, 1024, 128) and b.shape == (1, 400, 64)
    for x in (a, b):
        assert torch.isfinite(x).all()
        assert x.std() > 0.1
