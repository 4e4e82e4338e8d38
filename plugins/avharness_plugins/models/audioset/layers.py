"""Shared pieces of the AudioSet model zoo (``audio``, ``video``, ``fusion``).

- ``audio_frontend``: the audio input of every zoo model. A feature spec ``[T, F]`` passes through;
  a waveform spec (``units == "waveform"``, ``frontend == {"pipeline": "logmel64" | "fbank128",
  "stats": dict | None}``) gets the named differentiable ``features`` pipeline as the model's first,
  parameter-free, frozen module, so attacks can run in the waveform domain. Its buffers (window,
  mel filter bank) are left out of the state dict: weights trained on features load unchanged into
  the waveform variant of the same model.
- ``TALNetConvStack``: the TALNet conv stack (docs/seed_code.md §1.2) for any ``[T, F]``.
- ``EncoderLayer`` / ``TransformerEncoder``: the seed's post-LN encoder layer (8 heads, ReLU
  feed-forward), stacked ``layers`` times with separate weights (``share_layers=True`` reproduces
  the seed's quirk of applying ONE layer ``layers`` times, docs/seed_code.md §8.6).
- ``AttentionPool`` and ``pooled_logits``: the seed's ``att`` pooling (a frame head plus a
  per-class softmax over time), returned as logits computed in log space (see ``pooled_logits``).

Normalisation (``norm``): ``"batch"`` (the seed's BatchNorm, default) or ``"group"`` (GroupNorm,
groups of up to 8 channels). Attacks and evaluation run models in eval mode, where batch norm uses
its running statistics, so a sample's output never depends on the rest of its batch either way;
``"group"`` also makes training independent of the batch (e.g. adversarial training on tiny
batches), at the cost of parity with the seed's checkpoints.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from avharness import InputSpec, Task, UserError

NORMS = ("batch", "group")
#: the fewest channels a TALNet conv layer (other than the last) gets
MIN_CHANNELS = 8


# ---- parameter and spec checks ---------------------------------------------------------------------
def check_common(model: str, *, embed_dim: int | None = None, dropout: float = 0.0, norm: str | None = None,
                 layers: int | None = None, heads: int | None = None) -> None:
    """UserError for out-of-range constructor arguments shared by the zoo models."""
    if embed_dim is not None and (isinstance(embed_dim, bool) or int(embed_dim) < 1):
        raise UserError(f"{model}: embed_dim must be a positive integer, got {embed_dim!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise UserError(f"{model}: dropout must be in [0, 1), got {dropout!r}")
    if norm is not None and norm not in NORMS:
        raise UserError(f"{model}: norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if layers is not None and int(layers) < 1:
        raise UserError(f"{model}: layers must be >= 1, got {layers!r}")
    if heads is not None and int(heads) < 1:
        raise UserError(f"{model}: heads must be >= 1, got {heads!r}")


def input_spec(specs: dict[str, InputSpec], modality: str, model: str) -> InputSpec:
    if modality not in specs:
        raise UserError(f"model {model!r} reads {modality!r} but the dataset has only {sorted(specs)}")
    return specs[modality]


def video_feature_shape(specs: dict[str, InputSpec], model: str) -> tuple[int, int]:
    """(T, D) of per-second video frame features ``[T, D]``."""
    spec = input_spec(specs, "video", model)
    if len(spec.shape) != 2:
        raise UserError(
            f"model {model!r} expects video as per-second frame features [T, D] (e.g. [10, 2048]), "
            f"the dataset gives shape {list(spec.shape)}; raw frames need a model such as video_cnn"
        )
    t, d = (int(n) for n in spec.shape)
    if t < 1 or d < 1:
        raise UserError(f"model {model!r}: video shape {list(spec.shape)} has an empty dimension")
    return t, d


# ---- audio front end ---------------------------------------------------------------------------------
class AudioFrontend(nn.Module):
    """Audio input -> features ``[B, T, F]``: identity for feature specs, a frozen pipeline for waveforms.

    ``feature_shape`` is the ``(T, F)`` the rest of the model is built for.
    """

    def __init__(self, spec: InputSpec, model: str):
        super().__init__()
        self.pipeline: nn.Module | None = None
        if spec.units == "waveform":
            fe = spec.frontend
            if not isinstance(fe, dict) or "pipeline" not in fe:
                raise UserError(
                    f"model {model!r}: the audio input is a waveform but its spec has no front end; the dataset "
                    "must set frontend={'pipeline': 'logmel64' | 'fbank128', 'stats': {...} | None}"
                )
            if len(spec.shape) != 1:
                raise UserError(f"model {model!r}: a waveform input must be [samples] per clip, "
                                f"the dataset gives shape {list(spec.shape)}")
            from avharness_plugins.datasets.features import get_pipeline

            pipeline = get_pipeline(fe["pipeline"], fe.get("stats"))
            for p in pipeline.parameters():
                p.requires_grad_(False)
            # Buffers (window, filter bank) are derived from the pipeline's name and version, not
            # learned: keep them out of the state dict so feature-domain weights load unchanged.
            for mod in pipeline.modules():
                mod._non_persistent_buffers_set.update(mod._buffers.keys())
            self.pipeline = pipeline.eval()
            self.feature_shape = (int(pipeline.n_frames), int(pipeline.n_bins))
        else:
            if len(spec.shape) != 2:
                raise UserError(
                    f"model {model!r} expects audio features [T, F] (time x frequency, e.g. [400, 64]) or a "
                    f"waveform spec with units 'waveform' and a front end; the dataset gives shape {list(spec.shape)}"
                )
            self.feature_shape = (int(spec.shape[0]), int(spec.shape[1]))
        if min(self.feature_shape) < 1:
            raise UserError(f"model {model!r}: audio feature shape {list(self.feature_shape)} has an empty dimension")

    def train(self, mode: bool = True):
        super().train(mode)
        if self.pipeline is not None:
            self.pipeline.eval()  # frozen: parameter-free and deterministic in every mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.pipeline is None else self.pipeline(x)


def audio_frontend(specs: dict[str, InputSpec], model: str) -> AudioFrontend:
    """The one helper every zoo model uses for its audio input (features or waveform)."""
    return AudioFrontend(input_spec(specs, "audio", model), model)


# ---- normalisation -------------------------------------------------------------------------------------
def group_count(channels: int) -> int:
    """Groups of up to 8 channels: ``channels // gcd(channels, 8)``."""
    return channels // math.gcd(channels, 8)


def norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(group_count(channels), channels)


# ---- TALNet conv stack -------------------------------------------------------------------------------
def _ceil_half(n: int) -> int:
    return (n + 1) // 2


class TALNetConvStack(nn.Module):
    """``[B, T, W]`` -> ``[B, T', C * W']`` (docs/seed_code.md §1.2).

    ``conv_layers`` ConvBlocks (3x3 conv, padding 1, norm, ReLU, Xavier init); a max-pool after every
    second block: kernel = stride = (2, 2) for the first two pools, then (1, 2) (frequency only).
    Pools use ceil mode, so odd sizes work; once the frequency axis is down to 1 it is no longer
    pooled. Channel rule (TALNet): a block followed by a pool outputs ``embed_dim // F_after``
    channels, the others ``2 * embed_dim // F_before``, where F is the frequency size the rule
    tracks: ``channel_freq`` (default: the input width ``in_freq``), halved at every pool. Every layer
    but the last keeps at least ``MIN_CHANNELS`` (8) channels: with embed_dim < 4 F (far below the
    seed's sizes) the rule would give 1-channel layers that a random init can leave dead (constant
    output, zero input gradient).
    For F = 64, embed_dim 1024 this gives 32,32,64,64,128,128,256,256,512,512 and ``[B, T/4, 1024]``.
    The frequency axis is collapsed channel-major into the frame vector (``out_dim = C * W'``).
    ``dropout`` follows every pool (as in TALNet). Conv layers have no bias (a norm follows; the
    seed's ``bias=~batch_norm`` was always truthy, a bug not reproduced).
    """

    def __init__(self, in_freq: int, embed_dim: int, conv_layers: int = 10, norm: str = "batch",
                 dropout: float = 0.0, channel_freq: int | None = None, model: str = "talnet"):
        super().__init__()
        if int(conv_layers) < 2 or int(conv_layers) % 2:
            raise UserError(f"{model}: conv_layers must be an even number >= 2 (a pool every 2 layers), "
                            f"got {conv_layers!r}")
        blocks: list[nn.Module] = []
        width, rule_f = int(in_freq), int(channel_freq or in_freq)
        in_ch, pools = 1, 0
        for i in range(int(conv_layers)):
            pooled = (i + 1) % 2 == 0
            if pooled:
                rule_f = max(1, _ceil_half(rule_f))
                out_ch = int(embed_dim) // rule_f
            else:
                out_ch = 2 * int(embed_dim) // rule_f
            # every layer but the last (whose width fixes out_dim) keeps at least MIN_CHANNELS
            out_ch = max(1 if i == int(conv_layers) - 1 else MIN_CHANNELS, out_ch)
            conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
            nn.init.xavier_uniform_(conv.weight)
            blocks += [conv, norm2d(norm, out_ch), nn.ReLU(inplace=True)]
            if pooled:
                t_stride = 2 if pools < 2 else 1
                f_stride = 2 if width > 1 else 1
                blocks.append(nn.MaxPool2d((t_stride, f_stride), ceil_mode=True))
                width = _ceil_half(width) if f_stride == 2 else width
                pools += 1
                if dropout > 0:
                    blocks.append(nn.Dropout(float(dropout)))
            in_ch = out_ch
        self.layers = nn.Sequential(*blocks)
        self.out_channels, self.out_freq = in_ch, width
        self.out_dim = in_ch * width
        self.time_pools = min(pools, 2)

    def out_frames(self, frames: int) -> int:
        for _ in range(self.time_pools):
            frames = _ceil_half(frames)
        return frames

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, W]`` -> the conv output ``[B, C, T', W']``."""
        return self.layers(x.unsqueeze(1))

    @staticmethod
    def collapse(fmap: torch.Tensor) -> torch.Tensor:
        """``[B, C, T', W']`` -> ``[B, T', C * W']`` (channel-major, as the seed's permute + view)."""
        b, c, t, w = fmap.shape
        return fmap.permute(0, 2, 1, 3).reshape(b, t, c * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.collapse(self.feature_map(x))


# ---- transformer -----------------------------------------------------------------------------------------
def sinusoidal_positions(length: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[length, dim]`` sinusoidal position encoding (Vaswani et al.), computed, not stored."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    idx = torch.arange(0, dim, 2, device=device, dtype=torch.float32)
    angle = pos / torch.pow(10000.0, idx / dim)
    pe = torch.zeros(length, dim, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return pe.to(dtype)


class EncoderLayer(nn.Module):
    """The seed's post-LN transformer encoder layer: x = LN(x + Drop(MHA(x))); x = LN(x + Drop(FFN(x))).

    Multi-head self-attention with ``heads`` heads of width d/heads (d_k = d_v), written out with
    explicit matrix products (no fused fast path, so training and eval mode, grad or no grad, take
    the same code); FFN = Linear(d, ff_dim) -> ReLU -> Dropout -> Linear(ff_dim, d).
    """

    def __init__(self, dim: int, heads: int = 8, ff_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise UserError(f"transformer: heads ({heads}) must divide the model width ({dim}); "
                            f"choose heads from the divisors of {dim}")
        ff_dim = int(ff_dim or dim)
        self.heads, self.d_k = int(heads), dim // int(heads)
        self.w_q = nn.Linear(dim, dim)
        self.w_k = nn.Linear(dim, dim)
        self.w_v = nn.Linear(dim, dim)
        self.w_o = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ff_dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.drop_attn = nn.Dropout(dropout)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y):
            return y.view(b, t, self.heads, self.d_k).transpose(1, 2)  # [B, H, T, d_k]

        q, k, v = split(self.w_q(x)), split(self.w_k(x)), split(self.w_v(x))
        att = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k)
        att = self.drop_attn(att.softmax(dim=-1))
        y = torch.matmul(att, v).transpose(1, 2).reshape(b, t, d)
        x = self.norm1(x + self.drop1(self.w_o(y)))
        return self.norm2(x + self.drop2(self.ff(x)))


class TransformerEncoder(nn.Module):
    """``layers`` post-LN encoder layers on ``[B, T, dim]``.

    ``share_layers=False`` (default): separate weights per layer. ``share_layers=True``: one layer
    applied ``layers`` times (the seed's ``TAL-trans``/``MMT`` quirk, kept for parity).
    ``positional=True``: the input is ``8 * x + PE`` (the seed's ``addpos``; PE sinusoidal).
    """

    def __init__(self, dim: int, layers: int = 2, heads: int = 8, ff_dim: int | None = None, dropout: float = 0.0,
                 share_layers: bool = False, positional: bool = True):
        super().__init__()
        self.n = int(layers)
        self.shared = bool(share_layers)
        self.positional = bool(positional)
        self.layers = nn.ModuleList(
            [EncoderLayer(dim, heads, ff_dim, dropout) for _ in range(1 if self.shared else self.n)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.positional:
            x = 8.0 * x + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype)
        for i in range(self.n):
            x = self.layers[0 if self.shared else i](x)
        return x


# ---- attention pooling ---------------------------------------------------------------------------------
def pooled_logits(frame_logits: torch.Tensor, log_weights: torch.Tensor, kind: str) -> torch.Tensor:
    """Logits of attention-pooled frame probabilities, computed in log space over dim 1.

    ``frame_logits`` z and ``log_weights`` log w are ``[B, N, C]``; ``log_weights`` must be
    normalised over dim 1 (``log_softmax``), so the pooled value is a convex mixture.

    - multilabel: p = sum_n w_n sigmoid(z_n) (the seed's ``att`` pooling). Returns
      logit(p) = log p - log(1 - p) with log p = logsumexp_n(logsigmoid(z_n) + log w_n) and
      log(1 - p) = logsumexp_n(logsigmoid(-z_n) + log w_n): exact, finite for finite z, and with
      useful gradients where sigmoid saturates in float32 (the seed clamped p to [1e-7, 1 - 1e-7],
      which zeroes the gradient there).
    - multiclass: p_c = sum_n w_{n,c} softmax(z_n)_c, the same class-wise attention mixture of the
      frames' class probabilities. Returns log p_c. The per-class weights mean sum_c p_c need not be
      1; cross-entropy (softmax) renormalises it, and the ranking of classes is that of p.
    """
    if kind == "multilabel":
        log_p = torch.logsumexp(F.logsigmoid(frame_logits) + log_weights, dim=1)
        log_q = torch.logsumexp(F.logsigmoid(-frame_logits) + log_weights, dim=1)
        return log_p - log_q
    return torch.logsumexp(frame_logits.log_softmax(dim=-1) + log_weights, dim=1)


class AttentionPool(nn.Module):
    """Sequence latent ``[B, T, D]`` -> logits ``[B, C]``: frame head ``fc_prob`` and per-class
    attention ``fc_att`` (softmax over TIME), pooled by ``pooled_logits``.

    ``heads > 1`` is PSLA's multi-head attention pooling: each head has its own frame head and
    attention; the heads' pooled probabilities are mixed with learned weights normalised by a
    softmax (initialised uniform, 1/heads, like PSLA's head weights; normalising keeps p in (0, 1),
    which PSLA's unnormalised weights did not guarantee). ``dropout`` applies to the latent first.
    """

    def __init__(self, dim: int, task: Task, heads: int = 1, dropout: float = 0.0):
        super().__init__()
        self.kind, self.classes, self.heads = task.kind, task.num_classes, int(heads)
        self.drop = nn.Dropout(float(dropout))
        self.fc_prob = nn.Linear(dim, self.classes * self.heads)
        self.fc_att = nn.Linear(dim, self.classes * self.heads)
        self.head_weight = nn.Parameter(torch.zeros(self.heads)) if self.heads > 1 else None

    def frames(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame logits and log attention weights, both ``[B, heads * T, C]`` (head-major); the
        weights are normalised over time per head and class, and include the head mixture."""
        if latent.dim() == 2:
            latent = latent.unsqueeze(1)
        h = self.drop(latent)
        b, t, _ = h.shape
        z = self.fc_prob(h).view(b, t, self.heads, self.classes)
        a = self.fc_att(h).view(b, t, self.heads, self.classes).log_softmax(dim=1)
        if self.head_weight is not None:
            a = a + self.head_weight.log_softmax(0).view(1, 1, self.heads, 1)
        z = z.permute(0, 2, 1, 3).reshape(b, self.heads * t, self.classes)
        a = a.permute(0, 2, 1, 3).reshape(b, self.heads * t, self.classes)
        return z, a

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        z, a = self.frames(latent)
        return pooled_logits(z, a, self.kind)


def pool_time(x: torch.Tensor, steps: int) -> torch.Tensor:
    """Average ``[B, T, D]`` down (or stretch) to ``[B, steps, D]`` over time.

    When T is a multiple of ``steps`` this is the seed's AvgPool by T/steps; otherwise adaptive
    average pooling (overlapping windows) gives ``steps`` outputs.
    """
    if x.shape[1] == steps:
        return x
    return F.adaptive_avg_pool1d(x.transpose(1, 2), steps).transpose(1, 2)
