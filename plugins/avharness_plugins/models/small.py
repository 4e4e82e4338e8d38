"""Built-in models: small CNNs for audio, video, and their early, mid, late and score fusion.

Shapes come from the dataset's specs, never from constants:

- audio: ``[T, F]`` (time frames x frequency bins, e.g. a log-mel spectrogram);
- video: ``[T, H, W]`` (grey frames) or ``[T, C, H, W]``.

Every factory takes ``task``, ``specs`` and the same keyword parameters (``width``: channels of
the first conv layer, doubled once; ``latent_dim``: size of the named latents; ``dropout``: before
the final linear layer), like timm's ``create_model``. Group norm, never batch norm: the models
behave the same in train and eval mode (dropout aside) and a sample's output never depends on the
rest of its batch, which keeps attacks and defenses free of running-statistics surprises. Forward
returns logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avharness import AVModel, InputSpec, Task, UserError

#: the coarsest grid conv features are pooled to before the projection: keeps rough position (when
#: in the clip, which band, which part of the frame) without tying weights to the input size
_POOL_GRID = 4


def _spec(specs: dict[str, InputSpec], modality: str, ndims: tuple[int, ...], model: str) -> InputSpec:
    if modality not in specs:
        raise UserError(f"model {model!r} reads {modality!r} but the dataset has only {sorted(specs)}")
    spec = specs[modality]
    if len(spec.shape) not in ndims:
        raise UserError(
            f"model {model!r} expects {modality!r} with {' or '.join(map(str, ndims))} dims per sample, "
            f"the dataset gives shape {list(spec.shape)}"
        )
    return spec


def _check_params(width: int, latent_dim: int, dropout: float) -> None:
    if int(width) < 1 or int(latent_dim) < 1:
        raise UserError(f"width and latent_dim must be positive, got width={width}, latent_dim={latent_dim}")
    if not 0.0 <= float(dropout) < 1.0:
        raise UserError(f"dropout must be in [0, 1), got {dropout}")


def _video_frames(spec: InputSpec) -> tuple[int, int, int, int]:
    """(T, C, H, W) of a video spec given as [T, H, W] or [T, C, H, W]."""
    if len(spec.shape) == 3:
        t, h, w = spec.shape
        return t, 1, h, w
    return tuple(spec.shape)  # type: ignore[return-value]


def _half(n: int) -> int:
    return (n + 1) // 2


def _norm(channels: int) -> nn.GroupNorm:
    groups = next(g for g in (4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ConvStack(nn.Module):
    """[B, C, H, W] -> [B, features]: a stride-2 3x3 conv, two (3x3 conv, 2x2 max-pool) blocks, then
    adaptive average pooling to at most 4x4. The strided first layer keeps CPU training fast; group
    norm (per sample, no running statistics) makes ten epochs enough to converge."""

    def __init__(self, in_ch: int, width: int, size: tuple[int, int]):
        super().__init__()
        h, w = (_half(_half(_half(n))) for n in size)
        self.grid = (min(h, _POOL_GRID), min(w, _POOL_GRID))
        self.layers = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, stride=2, padding=1), _norm(width), nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), _norm(2 * width), nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), _norm(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(self.grid), nn.Flatten(),
        )
        self.features = 2 * width * self.grid[0] * self.grid[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _projection(features: int, latent_dim: int) -> nn.Sequential:
    """Linear -> LayerNorm -> ReLU. Without the norm, one large early step (lr 2e-3 was enough) can
    push every unit negative for every input: the latent is then all zeros, no gradient flows and
    the model stays at chance. Normalising per sample keeps about half the units alive."""
    return nn.Sequential(nn.Linear(features, latent_dim), nn.LayerNorm(latent_dim), nn.ReLU())


class AudioEncoder(nn.Module):
    """[B, T, F] -> [B, latent_dim] (ReLU features)."""

    def __init__(self, spec: InputSpec, width: int, latent_dim: int):
        super().__init__()
        self.convs = ConvStack(1, width, tuple(spec.shape))
        self.proj = _projection(self.convs.features, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(x.unsqueeze(1)))


class VideoEncoder(nn.Module):
    """[B, T, (C,) H, W] -> [B, latent_dim]: one conv stack shared by the frames, features averaged
    over time (the frames of a clip are views of one object, so their order carries no label)."""

    def __init__(self, spec: InputSpec, width: int, latent_dim: int):
        super().__init__()
        self.frames, self.channels, self.height, self.width = _video_frames(spec)
        self.convs = ConvStack(self.channels, width, (self.height, self.width))
        self.proj = _projection(self.convs.features, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        feats = self.convs(x.reshape(b * self.frames, self.channels, self.height, self.width))
        return self.proj(feats.view(b, self.frames, -1).mean(1))


class UniModalCNN(AVModel):
    """One modality's encoder and a linear head; the latent is named after the modality."""

    encoder_cls: type[nn.Module]
    ndims: tuple[int, ...]
    plugin: str

    def __init__(self, task: Task, specs: dict[str, InputSpec], width: int = 32, latent_dim: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        _check_params(width, latent_dim, dropout)
        (modality,) = self.modalities
        self.encoder = self.encoder_cls(_spec(specs, modality, self.ndims, self.plugin), int(width), int(latent_dim))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(int(latent_dim), task.num_classes))

    def embed(self, inputs):
        return {self.head_latent: self.encoder(inputs[self.head_latent])}

    def head(self, latent):
        return self.classifier(latent)


class AudioCNN(UniModalCNN):
    modalities, head_latent = ("audio",), "audio"
    encoder_cls, ndims, plugin = AudioEncoder, (2,), "audio_cnn"


class VideoCNN(UniModalCNN):
    modalities, head_latent = ("video",), "video"
    encoder_cls, ndims, plugin = VideoEncoder, (3, 4), "video_cnn"


class EarlyFusion(AVModel):
    """Fusion at the input: the video frames are resized onto the audio's time x frequency grid and
    stacked with the spectrogram as channels of ONE conv stack (the seed code concatenated the two
    along the width instead; stacking keeps every conv filter looking at both modalities)."""

    modalities = ("audio", "video")
    head_latent = "fused"

    def __init__(self, task: Task, specs: dict[str, InputSpec], width: int = 32, latent_dim: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        _check_params(width, latent_dim, dropout)
        self.grid = tuple(_spec(specs, "audio", (2,), "early_fusion").shape)
        t, c, _, _ = _video_frames(_spec(specs, "video", (3, 4), "early_fusion"))
        self.video_channels = t * c
        self.convs = ConvStack(1 + self.video_channels, int(width), self.grid)
        self.proj = _projection(self.convs.features, int(latent_dim))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(int(latent_dim), task.num_classes))

    def embed(self, inputs):
        audio, video = inputs["audio"], inputs["video"]
        b = audio.shape[0]
        frames = video.reshape(b, self.video_channels, *video.shape[-2:])
        frames = F.interpolate(frames, size=self.grid, mode="bilinear", align_corners=False)
        x = torch.cat([audio.unsqueeze(1), frames], dim=1)
        return {"fused": self.proj(self.convs(x))}

    def head(self, latent):
        return self.classifier(latent)


class LateFusion(AVModel):
    """Separate audio and video branches; h = A(z_a) + B(z_v) with two Linear maps (as the seed's
    ``MMTLF``), then the head: LayerNorm (for the reason given in ``_projection``), ReLU, dropout
    and a linear classifier. ``h`` is the latent the convexity metric
    interpolates, so ``head`` starts from it."""

    modalities = ("audio", "video")
    head_latent = "fused"

    def __init__(self, task: Task, specs: dict[str, InputSpec], width: int = 32, latent_dim: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        _check_params(width, latent_dim, dropout)
        width, latent_dim = int(width), int(latent_dim)
        self.audio = AudioEncoder(_spec(specs, "audio", (2,), "late_fusion"), width, latent_dim)
        self.video = VideoEncoder(_spec(specs, "video", (3, 4), "late_fusion"), width, latent_dim)
        self.alpha = nn.Linear(latent_dim, latent_dim)
        self.beta = nn.Linear(latent_dim, latent_dim)
        self.classifier = nn.Sequential(nn.LayerNorm(latent_dim), nn.ReLU(), nn.Dropout(dropout),
                                        nn.Linear(latent_dim, task.num_classes))

    def embed(self, inputs):
        z_a = self.audio(inputs["audio"])
        z_v = self.video(inputs["video"])
        return {"audio": z_a, "video": z_v, "fused": self.alpha(z_a) + self.beta(z_v)}

    def head(self, latent):
        return self.classifier(latent)


class MidFusion(AVModel):
    """Fusion in time (the seed's mid fusion): per-time-step audio features (a 1-D conv over the
    spectrogram's frames, pooled to the video's frame count) and per-frame video features are
    concatenated step by step, projected, and mixed by a transformer encoder (``layers`` layers,
    not weight-shared, unlike the seed); the mean over steps is the fused latent."""

    modalities = ("audio", "video")
    head_latent = "fused"

    def __init__(self, task: Task, specs: dict[str, InputSpec], width: int = 32, latent_dim: int = 64,
                 dropout: float = 0.0, layers: int = 2, heads: int = 4):
        super().__init__()
        _check_params(width, latent_dim, dropout)
        width, latent_dim = int(width), int(latent_dim)
        if int(layers) < 1 or int(heads) < 1 or latent_dim % int(heads):
            raise UserError(f"mid_fusion: layers and heads must be >= 1 and heads must divide latent_dim "
                            f"({latent_dim}), got layers={layers}, heads={heads}")
        _, bins = _spec(specs, "audio", (2,), "mid_fusion").shape
        self.frames, self.channels, self.height, self.width = _video_frames(_spec(specs, "video", (3, 4), "mid_fusion"))
        self.audio = nn.Sequential(
            nn.Conv1d(bins, 2 * width, 5, padding=2), _norm(2 * width), nn.ReLU(),
            nn.Conv1d(2 * width, latent_dim, 3, stride=2, padding=1), _norm(latent_dim), nn.ReLU(),
            nn.AdaptiveAvgPool1d(self.frames),
        )
        self.video_convs = ConvStack(self.channels, width, (self.height, self.width))
        self.video_proj = _projection(self.video_convs.features, latent_dim)
        self.mix = nn.Linear(2 * latent_dim, latent_dim)
        self.position = nn.Parameter(torch.zeros(1, self.frames, latent_dim))
        layer = nn.TransformerEncoderLayer(latent_dim, int(heads), 2 * latent_dim, dropout=float(dropout), batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, int(layers), enable_nested_tensor=False)
        self.classifier = nn.Sequential(nn.LayerNorm(latent_dim), nn.ReLU(), nn.Dropout(dropout),
                                        nn.Linear(latent_dim, task.num_classes))

    def embed(self, inputs):
        audio, video = inputs["audio"], inputs["video"]
        b = audio.shape[0]
        a = self.audio(audio.transpose(1, 2)).transpose(1, 2)  # [B, steps, d]
        frames = video.reshape(b * self.frames, self.channels, self.height, self.width)
        v = self.video_proj(self.video_convs(frames)).view(b, self.frames, -1)  # [B, steps, d]
        h = self.encoder(self.mix(torch.cat([a, v], dim=2)) + self.position).mean(1)
        return {"audio": a.mean(1), "video": v.mean(1), "fused": h}

    def head(self, latent):
        return self.classifier(latent)


class ScoreFusion(AVModel):
    """Fusion of the outputs (the seed's ``SuperLateFusion``): an audio and a video model, each with
    its own classifier, whose class probabilities are averaged with weights ``audio_weight`` and
    1 - ``audio_weight`` (the seed used 0.6 / 0.4). The fused latent is the pair of uni-modal logits;
    the head returns the logits of the averaged probabilities (log-probabilities for multiclass,
    log-odds for multilabel), so ``forward`` still returns logits."""

    modalities = ("audio", "video")
    head_latent = "fused"

    def __init__(self, task: Task, specs: dict[str, InputSpec], width: int = 32, latent_dim: int = 64,
                 dropout: float = 0.0, audio_weight: float = 0.6):
        super().__init__()
        if not 0.0 <= float(audio_weight) <= 1.0:
            raise UserError(f"score_fusion: audio_weight must be in [0, 1], got {audio_weight}")
        self.audio = AudioCNN(task, specs, width, latent_dim, dropout)
        self.video = VideoCNN(task, specs, width, latent_dim, dropout)
        self.kind, self.weight = task.kind, float(audio_weight)

    def embed(self, inputs):
        z_a = self.audio.embed(inputs)["audio"]
        z_v = self.video.embed(inputs)["video"]
        return {"audio": z_a, "video": z_v, "fused": torch.stack([self.audio.head(z_a), self.video.head(z_v)], 1)}

    def head(self, latent):
        la, lv = latent[:, 0], latent[:, 1]
        w = torch.tensor([self.weight, 1.0 - self.weight], dtype=latent.dtype, device=latent.device)
        if self.kind == "multiclass":
            # log(w_a softmax(la) + w_v softmax(lv)), computed stably in log space
            return torch.logsumexp(torch.stack([la.log_softmax(1), lv.log_softmax(1)], 0)
                                   + w.clamp_min(1e-30).log().view(2, 1, 1), dim=0)
        p = (w[0] * la.sigmoid() + w[1] * lv.sigmoid()).clamp(1e-7, 1 - 1e-7)
        return p.log() - (-p).log1p()


def build_audio_cnn(task, specs, width: int = 32, latent_dim: int = 64, dropout: float = 0.0) -> AudioCNN:
    return AudioCNN(task, specs, width=width, latent_dim=latent_dim, dropout=dropout)


def build_video_cnn(task, specs, width: int = 32, latent_dim: int = 64, dropout: float = 0.0) -> VideoCNN:
    return VideoCNN(task, specs, width=width, latent_dim=latent_dim, dropout=dropout)


def build_early_fusion(task, specs, width: int = 32, latent_dim: int = 64, dropout: float = 0.0) -> EarlyFusion:
    return EarlyFusion(task, specs, width=width, latent_dim=latent_dim, dropout=dropout)


def build_late_fusion(task, specs, width: int = 32, latent_dim: int = 64, dropout: float = 0.0) -> LateFusion:
    return LateFusion(task, specs, width=width, latent_dim=latent_dim, dropout=dropout)


def build_mid_fusion(task, specs, width: int = 32, latent_dim: int = 64, dropout: float = 0.0, layers: int = 2,
                     heads: int = 4) -> MidFusion:
    return MidFusion(task, specs, width=width, latent_dim=latent_dim, dropout=dropout, layers=layers, heads=heads)


def build_score_fusion(task, specs, width: int = 32, latent_dim: int = 64, dropout: float = 0.0,
                       audio_weight: float = 0.6) -> ScoreFusion:
    return ScoreFusion(task, specs, width=width, latent_dim=latent_dim, dropout=dropout, audio_weight=audio_weight)


def register_models(register):
    register("mid_fusion", build_mid_fusion)
    register("score_fusion", build_score_fusion)
    register("audio_cnn", build_audio_cnn)
    register("video_cnn", build_video_cnn)
    register("early_fusion", build_early_fusion)
    register("late_fusion", build_late_fusion)
