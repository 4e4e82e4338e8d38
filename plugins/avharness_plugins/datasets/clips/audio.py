"""The clip datasets' audio front end: decoded waveforms become ``logmel64`` / ``fbank128`` features
(computed per batch, bounded below by the pipeline's log floor) or stay waveforms whose spec carries
the pipeline as its ``frontend`` (see :class:`AudioFrontEnd`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from avharness import InputSpec, UserError
from avharness_plugins.datasets.clips import decode as cl
from avharness_plugins.datasets.clips.params import AUDIO_MODES, INF, choice, positive, resolve


def feature_floor(pipeline) -> float:
    """The smallest value the pipeline's un-normalised features can take (its log floor)."""
    if pipeline.name == "logmel64":
        return 10.0 * math.log10(pipeline.amin)  # 10*log10(power + amin) >= 10*log10(amin)
    if pipeline.name == "fbank128":
        # Kaldi fbank takes log(max(mel energy, float32 eps)) (torchaudio.compliance.kaldi)
        return math.log(float(torch.finfo(torch.float32).eps))
    raise UserError(f"no known floor for feature pipeline {pipeline.name!r}")


class AudioFrontEnd:
    """``audio``: ``logmel64`` / ``fbank128`` (features computed per batch) or ``waveform``.

    Features: spec [T, F] with bounds [floor, +inf). The floor is the pipeline's log floor after
    normalisation. The upper end is open: a waveform in [-1, 1] does bound the mel power, but that
    bound (a full-scale sinusoid at one filter's centre) lies far above any real clip and depends on
    the filterbank, so a feature-domain attack is honestly limited only by the floor. Yielded
    features are clamped at the floor (a no-op up to float32 rounding of the normalisation), so
    clean inputs always lie inside their declared range.

    Waveform: spec [samples] in [-1, 1] with ``frontend={"pipeline", "stats"}`` so a model can build
    the same differentiable pipeline itself and attacks run in the waveform domain.
    """

    def __init__(self, owner: str, audio: str, stats, frontend_pipeline: str, clip_seconds, root: Path):
        from avharness_plugins.datasets import features
        self.mode = choice(owner, "audio", audio, AUDIO_MODES)
        self.clip_seconds = float(positive(owner, "clip_seconds", clip_seconds))
        name = frontend_pipeline if audio == "waveform" else audio
        if audio == "waveform":
            choice(owner, "frontend_pipeline", frontend_pipeline, tuple(features.PIPELINES))
        self.pipeline = features.get_pipeline(name)
        self.stats_dict = None
        if stats is not None:
            if not isinstance(stats, str) or not stats.strip():
                raise UserError(f"{owner}: stats must be the path of a stats JSON file (from compute_stats), got {stats!r}")
            path = resolve(root, stats)
            self.stats_dict = features.load_stats(path, self.pipeline)
            self.pipeline.set_stats(self.stats_dict, source=str(path))
        self.samples = int(round(self.clip_seconds * cl.SAMPLE_RATE))
        if self.mode == "waveform":
            self.low = -1.0
            self.spec = InputSpec((self.samples,), (-1.0, 1.0), "waveform",
                                  frontend={"pipeline": name, "stats": self.stats_dict})
        else:
            floor = feature_floor(self.pipeline)
            if self.pipeline.mean is not None:
                floor = (floor - self.pipeline.mean) / (2.0 * self.pipeline.std)
            # the bound as float32 sees it, so that clamping to it is exact
            self.low = float(torch.tensor(floor, dtype=torch.float32))
            norm = "normalised (x - mean) / (2 std)" if self.pipeline.mean is not None else "not normalised"
            self.spec = InputSpec((self.pipeline.n_frames, self.pipeline.n_bins), (self.low, INF),
                                  f"{name} log-mel ({norm})" if name == "logmel64" else f"{name} log fbank ({norm})")

    @property
    def pipeline_name(self) -> str:
        return self.pipeline.name

    @torch.no_grad()
    def __call__(self, wavs: torch.Tensor) -> torch.Tensor:
        if self.mode == "waveform":
            return wavs
        return self.pipeline(wavs).clamp_min(self.low)

    def identity(self) -> dict:
        return {"mode": self.mode, "pipeline": self.pipeline.name, "version": self.pipeline.version,
                "mean": self.pipeline.mean, "std": self.pipeline.std, "samples": self.samples}

    def describe(self) -> dict:
        d = {
            "mode": self.mode,
            "clip_seconds": self.clip_seconds,
            "sample_rate": cl.SAMPLE_RATE,
            "decoding": "soundfile (wav/flac/ogg) or PyAV (containers); mono mean; torchaudio resample to "
                        "16 kHz; clipped to [-1, 1]; cut or zero-padded to the clip length",
            "pipeline": self.pipeline.describe(),
            "bounds": self.spec.to_dict()["bounds"],
        }
        if self.mode == "waveform":
            d["frontend"] = "the model computes the pipeline itself (spec.frontend): attacks act on the waveform"
        else:
            d["bounds_note"] = ("low = the pipeline's log floor after normalisation; high open (log features "
                                "have no practical ceiling)")
        return d
