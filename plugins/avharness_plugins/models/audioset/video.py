"""AudioSet video-only model (docs/seed_code.md §1.4): ``video_transformer`` on per-second frame features.

Input: video frame features ``[T, D]`` (the seed: 10 x 2048, one pre-extracted feature vector per
second). ``layers`` post-LN encoder layers of width D (the seed: d = 2048, d_ff = 1024, 8 heads;
separate weights unless ``share_layers``, the seed's quirk) -> Linear(D -> embed_dim) + ReLU ->
latent ``"video"`` ``[B, T, embed_dim]`` -> frame head + attention pooling over the T steps. Returns
logits. ``ff_dim`` defaults to ``embed_dim`` (the seed's 1024 for both).
"""

from __future__ import annotations

import torch
from torch import nn

from avharness import AVModel, InputSpec, Task
from avharness_plugins.models.audioset.layers import AttentionPool, TransformerEncoder, check_common, video_feature_shape


class VideoTransformerEncoder(nn.Module):
    """Video frame features ``[B, T, D]`` -> ``[B, T, embed_dim]`` (also the video branch of fusion)."""

    def __init__(self, specs: dict[str, InputSpec], model: str, embed_dim: int, dropout: float, layers: int, heads: int,
                 ff_dim: int | None, share_layers: bool, positional: bool):
        super().__init__()
        self.frames, self.dim = video_feature_shape(specs, model)
        self.transformer = TransformerEncoder(self.dim, layers, heads, ff_dim or embed_dim, dropout, share_layers,
                                              positional)
        self.proj = nn.Sequential(nn.Linear(self.dim, embed_dim), nn.ReLU(inplace=True))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.proj(self.transformer(video))


class VideoTransformer(AVModel):
    modalities = ("video",)
    head_latent = "video"

    def __init__(self, task: Task, specs: dict[str, InputSpec], embed_dim: int = 1024, dropout: float = 0.0,
                 layers: int = 2, heads: int = 8, ff_dim: int | None = None, share_layers: bool = False,
                 positional: bool = True):
        super().__init__()
        check_common("video_transformer", embed_dim=embed_dim, dropout=dropout, layers=layers, heads=heads)
        self.encoder = VideoTransformerEncoder(specs, "video_transformer", int(embed_dim), float(dropout), int(layers),
                                               int(heads), ff_dim, bool(share_layers), bool(positional))
        self.pool = AttentionPool(int(embed_dim), task, dropout=float(dropout))

    def embed(self, inputs):
        return {"video": self.encoder(inputs["video"])}

    def head(self, latent):
        return self.pool(latent)


def build_video_transformer(task, specs, embed_dim: int = 1024, dropout: float = 0.0, layers: int = 2, heads: int = 8,
                            ff_dim: int | None = None, share_layers: bool = False,
                            positional: bool = True) -> VideoTransformer:
    return VideoTransformer(task, specs, embed_dim=embed_dim, dropout=dropout, layers=layers, heads=heads,
                            ff_dim=ff_dim, share_layers=share_layers, positional=positional)


def register_models(register):
    register("video_transformer", build_video_transformer)
