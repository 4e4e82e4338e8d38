"""Explicit, versioned audio feature pipelines: waveform [B, samples] at 16 kHz -> features [B, T, F].

The seed code has three incompatible log-mel definitions (docs/seed_code.md §2.2). avharness names each
pipeline it reimplements, versions it, and makes every choice visible in ``describe()`` so a report
says exactly which features a model saw. All pipelines are ``torch.nn.Module``s and differentiable
with respect to the waveform, so waveform-domain attacks can go through them.

- ``fbank128`` (ATDR/AST 128x1024): per-sample ``torchaudio.compliance.kaldi.fbank`` (htk_compat,
  Hanning window, 25 ms frames, 10 ms shift, 128 mel bins, no energy, dither 0) of the waveform with
  its mean removed; natural-log mel energies (Kaldi's convention, floored at float eps); cut or
  zero-padded (in the log domain, after fbank, as the seed does) to 1024 frames -> [B, 1024, 128].
- ``logmel64`` (ATDR 64x400): torchaudio ``MelSpectrogram`` (16 kHz, n_fft 4096, win 1024, hop 400,
  power 2, 64 Slaney mels with Slaney norm), then **10*log10(power + 1e-10)** (librosa's
  ``power_to_db`` convention, floor -100 dB). The seed passed the tensor to ``AmplitudeToDB`` where
  ``stype`` belongs, which gave 20*log10(power) with a -200 floor; avharness does not reproduce that
  bug. Cut or zero-padded to 400 frames -> [B, 400, 64].

Normalisation is the seed's ``(x - mean) / (2*std)`` with *scalar* statistics, or none. Statistics
are computed by code (``compute_stats``) over a set of waveforms, never typed in, and saved as JSON
tagged with the pipeline's name and version; loading them into a different pipeline or version is a
``UserError`` telling the user to recompute.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from avharness import UserError

SAMPLE_RATE = 16000


def _cut_or_pad(feats: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Cut or zero-pad [B, T, F] along time to exactly ``n_frames``."""
    t = feats.shape[1]
    if t > n_frames:
        return feats[:, :n_frames]
    if t < n_frames:
        return F.pad(feats, (0, 0, 0, n_frames - t))
    return feats


class FeaturePipeline(nn.Module):
    """Base class: raw features from ``_features``, then optional scalar normalisation."""

    name: str = ""
    version: str = ""
    n_frames: int = 0
    n_bins: int = 0
    sample_rate: int = SAMPLE_RATE

    def __init__(self, stats: dict | str | Path | None = None):
        super().__init__()
        self.mean: float | None = None
        self.std: float | None = None
        self.stats_source: str | None = None
        if stats is not None:
            self.set_stats(stats)

    # ---- normalisation -------------------------------------------------------------------------
    def set_stats(self, stats: dict | str | Path | None, source: str | None = None) -> None:
        """Use ``(x - mean) / (2*std)`` with these stats (a dict or a stats JSON path); None = off."""
        if stats is None:
            self.mean = self.std = self.stats_source = None
            return
        if isinstance(stats, (str, Path)):
            source = str(stats)
            stats = load_stats(stats, self)
        else:
            _check_stats(stats, self, source or "the stats dict")
        self.mean = float(stats["mean"])
        self.std = float(stats["std"])
        self.stats_source = source or "stats dict passed in code"
        self._stats_meta = {k: stats.get(k) for k in ("n_clips", "n_frames")}

    def raw(self, wav: torch.Tensor) -> torch.Tensor:
        """Un-normalised features [B, n_frames, n_bins]."""
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        if wav.dim() != 2:
            raise UserError(f"{self.name}: expected a waveform batch [B, samples], got shape {tuple(wav.shape)}")
        return _cut_or_pad(self._features(wav), self.n_frames)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = self.raw(wav)
        if self.mean is not None:
            x = (x - self.mean) / (2.0 * self.std)
        return x

    def _features(self, wav: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def params(self) -> dict:
        raise NotImplementedError

    def describe(self) -> dict:
        norm: dict
        if self.mean is None:
            norm = {"kind": "none"}
        else:
            norm = {
                "kind": "scalar (x - mean) / (2*std)",
                "mean": self.mean,
                "std": self.std,
                "source": self.stats_source,
                **getattr(self, "_stats_meta", {}),
            }
        return {
            "name": self.name,
            "version": self.version,
            "input": f"waveform [B, samples] at {self.sample_rate} Hz",
            "output": f"[B, {self.n_frames}, {self.n_bins}] (time x frequency)",
            "params": self.params(),
            "normalisation": norm,
            "differentiable": True,
        }


class Fbank128(FeaturePipeline):
    """ATDR/AST Kaldi fbank, 128 mel bins x 1024 frames (10 ms shift)."""

    name = "fbank128"
    version = "1"
    n_frames = 1024
    n_bins = 128

    def params(self) -> dict:
        return {
            "implementation": "torchaudio.compliance.kaldi.fbank, one sample at a time",
            "remove_waveform_mean": True,
            "sample_frequency": self.sample_rate,
            "htk_compat": True,
            "window_type": "hanning",
            "frame_length_ms": 25.0,
            "frame_shift_ms": 10.0,
            "num_mel_bins": self.n_bins,
            "use_energy": False,
            "dither": 0.0,
            "db_convention": "natural log of mel energy (Kaldi fbank), floored at float32 eps; not dB",
            "n_frames": self.n_frames,
            "cut_or_pad": "first 1024 frames; shorter clips zero-padded after fbank (log domain)",
            "seed": "ATDR/AST 128x1024 (docs/seed_code.md §2.2 item 3)",
        }

    def _features(self, wav: torch.Tensor) -> torch.Tensor:
        out = []
        for w in wav:
            w = (w - w.mean()).unsqueeze(0)
            out.append(
                torchaudio.compliance.kaldi.fbank(
                    w,
                    htk_compat=True,
                    sample_frequency=float(self.sample_rate),
                    use_energy=False,
                    window_type="hanning",
                    num_mel_bins=self.n_bins,
                    dither=0.0,
                    frame_length=25.0,
                    frame_shift=10.0,
                )
            )
        t = max(o.shape[0] for o in out)
        return torch.stack([F.pad(o, (0, 0, 0, t - o.shape[0])) for o in out])


class LogMel64(FeaturePipeline):
    """ATDR 64x400 log-mel (25 ms hop), with the power_to_db convention."""

    name = "logmel64"
    version = "1"
    n_frames = 400
    n_bins = 64
    amin = 1e-10

    def __init__(self, stats=None):
        super().__init__(stats)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=self.sample_rate,
            n_fft=4096,
            win_length=1024,
            hop_length=400,
            power=2.0,
            n_mels=self.n_bins,
            mel_scale="slaney",
            norm="slaney",
        )

    def params(self) -> dict:
        return {
            "implementation": "torchaudio.transforms.MelSpectrogram",
            "remove_waveform_mean": False,
            "sample_rate": self.sample_rate,
            "n_fft": 4096,
            "win_length": 1024,
            "hop_length": 400,
            "window": "hann (periodic), centred, reflect padding",
            "power": 2.0,
            "n_mels": self.n_bins,
            "mel_scale": "slaney",
            "norm": "slaney",
            "db_convention": "10*log10(power + 1e-10) (librosa power_to_db, floor -100 dB)",
            "db_note": (
                "the seed passed the tensor to AmplitudeToDB where stype belongs, giving "
                "20*log10(power) with a -200 floor; avharness uses the power_to_db convention"
            ),
            "n_frames": self.n_frames,
            "cut_or_pad": "first 400 frames; shorter clips zero-padded after the dB step",
            "seed": "ATDR 64x400 (docs/seed_code.md §2.2 item 2)",
        }

    def _features(self, wav: torch.Tensor) -> torch.Tensor:
        p = self.mel(wav)  # [B, n_mels, T]
        return (10.0 * torch.log10(p + self.amin)).transpose(1, 2)


PIPELINES: dict[str, type[FeaturePipeline]] = {"fbank128": Fbank128, "logmel64": LogMel64}


def get_pipeline(name: str, stats=None) -> FeaturePipeline:
    if name not in PIPELINES:
        raise UserError(f"unknown feature pipeline {name!r}; choose one of {sorted(PIPELINES)}")
    return PIPELINES[name](stats)


# ---- statistics ------------------------------------------------------------------------------------
@torch.no_grad()
def compute_stats(pipeline: FeaturePipeline, waveforms: Iterable[torch.Tensor]) -> dict:
    """Scalar mean and std of ``pipeline.raw`` features over all frames of all clips (float64 sums).

    Every waveform is a [samples] or [B, samples] tensor; all n_frames frames (padding included, as
    the seed's dataloader stats were) count.
    """
    total = total_sq = 0.0
    count = 0
    n_clips = n_frames = 0
    for w in waveforms:
        x = pipeline.raw(torch.as_tensor(w)).double()
        total += float(x.sum())
        total_sq += float((x * x).sum())
        count += x.numel()
        n_clips += x.shape[0]
        n_frames += x.shape[0] * x.shape[1]
    if count == 0:
        raise UserError(f"compute_stats({pipeline.name}): no waveforms given")
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    return {
        "mean": mean,
        "std": math.sqrt(var),
        "n_clips": n_clips,
        "n_frames": n_frames,
        "pipeline": pipeline.name,
        "version": pipeline.version,
    }


def _check_stats(stats: dict, pipeline: FeaturePipeline | None, where: str) -> None:
    missing = [k for k in ("mean", "std", "pipeline", "version") if k not in stats]
    if missing:
        raise UserError(f"{where}: feature stats lack {missing}; recompute them with compute_stats")
    if not float(stats["std"]) > 0:
        raise UserError(f"{where}: feature stats have std {stats['std']} (must be > 0); recompute them")
    if pipeline is not None and (stats["pipeline"], str(stats["version"])) != (pipeline.name, pipeline.version):
        raise UserError(
            f"{where}: stats were computed for pipeline {stats['pipeline']!r} version {stats['version']!r}, "
            f"not {pipeline.name!r} version {pipeline.version!r}; recompute them with compute_stats"
        )


def save_stats(stats: dict, path: str | Path) -> None:
    _check_stats(stats, None, str(path))
    Path(path).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")


def load_stats(path: str | Path, pipeline: FeaturePipeline | None = None) -> dict:
    path = Path(path)
    try:
        stats = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: feature stats file not found; compute it with `avharness data stats SUITE -o FILE`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a valid feature stats JSON file ({e}); recompute it") from None
    if not isinstance(stats, dict):
        raise UserError(f"{path}: feature stats must be a JSON object; recompute it")
    _check_stats(stats, pipeline, str(path))
    return stats


# ---- audio loading ---------------------------------------------------------------------------------
def load_wav(path: str | Path, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Read an audio file with soundfile -> float32 mono Tensor[samples] at ``sample_rate``."""
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: audio file not found")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError on corrupt files
        raise UserError(f"{path}: cannot read audio file ({e}); is it a valid wav/flac?") from None
    if data.shape[0] == 0:
        raise UserError(f"{path}: audio file has no samples")
    wav = torch.from_numpy(data).mean(dim=1)
    if sr != sample_rate:
        wav = torchaudio.functional.resample(wav, sr, sample_rate)
    return wav.contiguous()
