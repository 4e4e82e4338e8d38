"""AudioSet audio-visual fusion models on the zoo's backbones (docs/seed_code.md §1.5).

Inputs: audio features ``[T_a, F]`` (or a waveform with a front end, ``layers.audio_frontend``)
and video frame features ``[T_v, D_v]``. Every model returns logits; ``embed`` returns
``{"audio", "video", "fused"}`` and ``head`` (frame head + attention pooling over time) maps the
``"fused"`` sequence ``[B, steps, embed_dim]`` to logits.

- ``av_early_fusion`` (seed ``MMTEncoder``, fusion_module 0): both inputs are reshaped into one
  image, side by side, whose rows are a common time grid: R = T_v * k rows (k = ``rows_per_frame``);
  each video frame vector is cut into k consecutive pieces (one per row, width D_v / k), and the
  audio, zero-padded at the end to a multiple of R frames, puts T_a / R consecutive frames in a row
  (width T_a / R * F). Seed: 400x64 audio + 10x2048 video, k = 8 -> rows of 5 frames (320 wide) and
  1/8 of a vector (256 wide) -> ``[B, 1, 80, 576]``. Default k: the largest of 8, 4, 2, 1 that
  divides D_v and for which T_v * k divides T_a (no padding); failing that, the largest that divides
  D_v with T_v * k <= T_a. Then the TALNet conv stack (channels from the audio's F, as in the seed:
  512 x 18 for the seed sizes) -> per time row Linear(C * W' -> embed_dim) + ReLU -> transformer ->
  attention pooling over the R / 4 rows. Latents: ``"fused"`` is the transformer output; ``"audio"``
  and ``"video"`` are the conv features over the audio and the video columns of the image
  (``[B, R/4, C * W'_a]`` and ``[B, R/4, C * W'_v]``, split in proportion to the two widths; their
  receptive fields cross the boundary by a few columns; when the map is one column wide, both are
  the whole map).
- ``av_mid_fusion`` (fusion_module 1): the audio conv-stack frames ``[B, T_a', D]`` are grouped into
  T_v chunks of consecutive frames (seed: 100 frames -> 10 chunks of 10 -> ``[B, 10, 10240]``;
  when T_a' is not a multiple of T_v they are first average-pooled to T_v * max(1, T_a' // T_v)
  frames), concatenated with the video features per step -> Linear + ReLU -> transformer ->
  attention pooling over the T_v steps. Latents: ``"audio"`` the chunked audio frames
  ``[B, T_v, chunk * D]``, ``"video"`` the video features as given ``[B, T_v, D_v]``, ``"fused"``
  the transformer output ``[B, T_v, embed_dim]``.
- ``av_late_fusion`` (seed ``MMTLF``): an audio branch (``audio_backbone``: ``cnn_transformer`` as in
  the seed, or ``crnn``) whose frame sequence ``[B, T_a', embed_dim]`` is average-pooled to the T_v
  video steps (the seed's AvgPool by 10), a video branch (``video_transformer``'s encoder,
  ``[B, T_v, embed_dim]``), h = alpha(x_a) + beta(x_v) (two Linear maps), then frame head +
  attention pooling on h. Latents: ``{"audio": x_a, "video": x_v, "fused": h}``, all
  ``[B, T_v, embed_dim]``; h is the seed's convexity-metric latent.

The transformer parameters (``layers``, ``heads``, ``ff_dim``, ``share_layers``, ``positional``) and
``conv_layers``/``norm`` mean what they mean in ``audio``; in ``av_late_fusion`` they apply to
both branches.
"""

from __future__ import annotations

import torch
from torch import nn

from avharness import AVModel, InputSpec, Task, UserError
from avharness_plugins.models.audioset.audio import TALNetAudioEncoder
from avharness_plugins.models.audioset.layers import (
    AttentionPool,
    TALNetConvStack,
    TransformerEncoder,
    audio_frontend,
    check_common,
    pool_time,
    video_feature_shape,
)
from avharness_plugins.models.audioset.video import VideoTransformerEncoder


class _FusionModel(AVModel):
    modalities = ("audio", "video")
    head_latent = "fused"

    def head(self, latent: torch.Tensor) -> torch.Tensor:
        return self.pool(latent)


def early_fusion_grid(t_a: int, t_v: int, d_v: int, rows_per_frame: int | None = None) -> tuple[int, int, int, int]:
    """(k rows per video frame, R rows, audio frames per row, audio frames of zero padding)."""
    if rows_per_frame is None:
        fits = [k for k in (8, 4, 2, 1) if d_v % k == 0 and t_v * k <= t_a]
        exact = [k for k in fits if t_a % (t_v * k) == 0]
        k = (exact or fits or [1])[0]
    else:
        k = int(rows_per_frame)
        if k < 1 or d_v % k:
            raise UserError(f"av_early_fusion: rows_per_frame must be a positive divisor of the video feature width "
                            f"{d_v}, got {rows_per_frame!r}")
    rows = t_v * k
    per_row = max(1, -(-t_a // rows))
    return k, rows, per_row, per_row * rows - t_a


class AVEarlyFusion(_FusionModel):
    def __init__(self, task: Task, specs: dict[str, InputSpec], embed_dim: int = 1024, dropout: float = 0.0,
                 layers: int = 2, heads: int = 8, ff_dim: int | None = None, share_layers: bool = False,
                 positional: bool = True, conv_layers: int = 10, norm: str = "batch", rows_per_frame: int | None = None):
        super().__init__()
        name = "av_early_fusion"
        check_common(name, embed_dim=embed_dim, dropout=dropout, norm=norm, layers=layers, heads=heads)
        embed_dim = int(embed_dim)
        self.frontend = audio_frontend(specs, name)
        t_a, bins = self.frontend.feature_shape
        t_v, d_v = video_feature_shape(specs, name)
        self.k, self.rows, self.per_row, self.pad = early_fusion_grid(t_a, t_v, d_v, rows_per_frame)
        self.audio_width, self.video_width = self.per_row * bins, d_v // self.k
        width = self.audio_width + self.video_width
        self.conv = TALNetConvStack(width, embed_dim, int(conv_layers), norm, float(dropout), channel_freq=bins, model=name)
        w_out = self.conv.out_freq
        self.audio_cols = min(max(round(w_out * self.audio_width / width), 1), w_out - 1) if w_out > 1 else 1
        self.proj = nn.Sequential(nn.Linear(self.conv.out_dim, embed_dim), nn.ReLU(inplace=True))
        self.transformer = TransformerEncoder(embed_dim, int(layers), int(heads), ff_dim, float(dropout),
                                              bool(share_layers), bool(positional))
        self.pool = AttentionPool(embed_dim, task, dropout=float(dropout))

    def image(self, audio: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """``[B, T_a, F]``, ``[B, T_v, D_v]`` -> the side-by-side image ``[B, R, W_a + W_v]``."""
        b = audio.shape[0]
        if self.pad:
            audio = nn.functional.pad(audio, (0, 0, 0, self.pad))
        a = audio.reshape(b, self.rows, self.audio_width)
        v = video.reshape(b, self.rows, self.video_width)
        return torch.cat([a, v], dim=2)

    def embed(self, inputs):
        fmap = self.conv.feature_map(self.image(self.frontend(inputs["audio"]), inputs["video"]))  # [B, C, R', W']
        collapse = TALNetConvStack.collapse
        if fmap.shape[3] > 1:
            a, v = collapse(fmap[..., : self.audio_cols]), collapse(fmap[..., self.audio_cols:])
        else:
            a = v = collapse(fmap)
        fused = self.transformer(self.proj(collapse(fmap)))
        return {"audio": a, "video": v, "fused": fused}


class AVMidFusion(_FusionModel):
    def __init__(self, task: Task, specs: dict[str, InputSpec], embed_dim: int = 1024, dropout: float = 0.0,
                 layers: int = 2, heads: int = 8, ff_dim: int | None = None, share_layers: bool = False,
                 positional: bool = True, conv_layers: int = 10, norm: str = "batch"):
        super().__init__()
        name = "av_mid_fusion"
        check_common(name, embed_dim=embed_dim, dropout=dropout, norm=norm, layers=layers, heads=heads)
        embed_dim = int(embed_dim)
        self.frontend = audio_frontend(specs, name)
        t_a, bins = self.frontend.feature_shape
        self.steps, d_v = video_feature_shape(specs, name)
        self.conv = TALNetConvStack(bins, embed_dim, int(conv_layers), norm, float(dropout), model=name)
        frames = self.conv.out_frames(t_a)
        self.chunk = frames // self.steps if frames % self.steps == 0 else max(1, frames // self.steps)
        self.proj = nn.Sequential(nn.Linear(self.chunk * self.conv.out_dim + d_v, embed_dim), nn.ReLU(inplace=True))
        self.transformer = TransformerEncoder(embed_dim, int(layers), int(heads), ff_dim, float(dropout),
                                              bool(share_layers), bool(positional))
        self.pool = AttentionPool(embed_dim, task, dropout=float(dropout))

    def embed(self, inputs):
        x = self.conv(self.frontend(inputs["audio"]))  # [B, T_a', D]
        x = pool_time(x, self.steps * self.chunk)
        a = x.reshape(x.shape[0], self.steps, self.chunk * x.shape[2])
        v = inputs["video"]
        fused = self.transformer(self.proj(torch.cat([a, v], dim=2)))
        return {"audio": a, "video": v, "fused": fused}


AUDIO_BACKBONES = {"cnn_transformer": "transformer", "crnn": "gru"}


class AVLateFusion(_FusionModel):
    def __init__(self, task: Task, specs: dict[str, InputSpec], embed_dim: int = 1024, dropout: float = 0.0,
                 layers: int = 2, heads: int = 8, ff_dim: int | None = None, share_layers: bool = False,
                 positional: bool = True, conv_layers: int = 10, norm: str = "batch",
                 audio_backbone: str = "cnn_transformer"):
        super().__init__()
        name = "av_late_fusion"
        check_common(name, embed_dim=embed_dim, dropout=dropout, norm=norm, layers=layers, heads=heads)
        if audio_backbone not in AUDIO_BACKBONES:
            raise UserError(f"{name}: audio_backbone must be one of {', '.join(AUDIO_BACKBONES)}, got {audio_backbone!r}")
        embed_dim = int(embed_dim)
        self.audio = TALNetAudioEncoder(specs, name, embed_dim, float(dropout), int(conv_layers), norm,
                                        AUDIO_BACKBONES[audio_backbone], int(layers), int(heads), ff_dim,
                                        bool(share_layers), bool(positional))
        self.video = VideoTransformerEncoder(specs, name, embed_dim, float(dropout), int(layers), int(heads), ff_dim,
                                             bool(share_layers), bool(positional))
        self.steps = self.video.frames
        self.alpha = nn.Linear(embed_dim, embed_dim)
        self.beta = nn.Linear(embed_dim, embed_dim)
        self.pool = AttentionPool(embed_dim, task, dropout=float(dropout))

    def embed(self, inputs):
        x_a = pool_time(self.audio(inputs["audio"]), self.steps)
        x_v = self.video(inputs["video"])
        return {"audio": x_a, "video": x_v, "fused": self.alpha(x_a) + self.beta(x_v)}


def build_av_early_fusion(task, specs, embed_dim: int = 1024, dropout: float = 0.0, layers: int = 2, heads: int = 8,
                          ff_dim: int | None = None, share_layers: bool = False, positional: bool = True,
                          conv_layers: int = 10, norm: str = "batch", rows_per_frame: int | None = None) -> AVEarlyFusion:
    return AVEarlyFusion(task, specs, embed_dim=embed_dim, dropout=dropout, layers=layers, heads=heads, ff_dim=ff_dim,
                         share_layers=share_layers, positional=positional, conv_layers=conv_layers, norm=norm,
                         rows_per_frame=rows_per_frame)


def build_av_mid_fusion(task, specs, embed_dim: int = 1024, dropout: float = 0.0, layers: int = 2, heads: int = 8,
                        ff_dim: int | None = None, share_layers: bool = False, positional: bool = True,
                        conv_layers: int = 10, norm: str = "batch") -> AVMidFusion:
    return AVMidFusion(task, specs, embed_dim=embed_dim, dropout=dropout, layers=layers, heads=heads, ff_dim=ff_dim,
                       share_layers=share_layers, positional=positional, conv_layers=conv_layers, norm=norm)


def build_av_late_fusion(task, specs, embed_dim: int = 1024, dropout: float = 0.0, layers: int = 2, heads: int = 8,
                         ff_dim: int | None = None, share_layers: bool = False, positional: bool = True,
                         conv_layers: int = 10, norm: str = "batch",
                         audio_backbone: str = "cnn_transformer") -> AVLateFusion:
    return AVLateFusion(task, specs, embed_dim=embed_dim, dropout=dropout, layers=layers, heads=heads, ff_dim=ff_dim,
                        share_layers=share_layers, positional=positional, conv_layers=conv_layers, norm=norm,
                        audio_backbone=audio_backbone)


def register_models(register):
    register("av_early_fusion", build_av_early_fusion)
    register("av_mid_fusion", build_av_mid_fusion)
    register("av_late_fusion", build_av_late_fusion)
