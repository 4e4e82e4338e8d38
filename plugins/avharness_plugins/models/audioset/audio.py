"""AudioSet audio-only model zoo (docs/seed_code.md §1.3): ``crnn``, ``cnn_transformer``, ``resnet``, ``ast``,
``efficientnet``.

Audio comes as features ``[T, F]`` (time-major, e.g. 400x64 or 1024x128) or as a waveform with a
front end (``layers.audio_frontend``); every size is taken from the spec. All models return
logits (never probabilities) and compute in float32 (no autocast: the seed's AST fp16 autocast
saturated, docs/seed_code.md §8.4).

Latents and heads:

- ``crnn``, ``cnn_transformer``, ``resnet``, ``efficientnet``: the latent ``"audio"`` is the frame
  sequence ``[B, T', D]`` the head pools; ``head`` is the frame head plus attention pooling over time
  (``layers.AttentionPool``), so it accepts that sequence back (latent interpolation works).
- ``ast``: the latent ``"audio"`` is the pooled token ``[B, D]`` ((cls + dist) / 2 for distilled
  models, cls otherwise); ``head`` is LayerNorm -> Linear as in AST.

Constructor arguments mean the same everywhere (timm style): ``embed_dim`` (width of the frame
latent; TALNet's ``emb``), ``dropout`` (probability, in the model's own layers and before the
head), ``layers``/``heads``/``ff_dim``/``share_layers``/``positional`` (transformer encoder),
``conv_layers``/``norm`` (conv stack), ``arch`` (the torchvision or timm backbone). Backbones whose
width is fixed by ``arch`` take no ``embed_dim``.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from avharness import AVModel, InputSpec, Task, UserError
from avharness_plugins.models.audioset.layers import (
    AttentionPool,
    TALNetConvStack,
    TransformerEncoder,
    audio_frontend,
    check_common,
    group_count,
)


# ---- TALNet-based audio encoders (also the audio branches of the fusion models) -----------------------
class TALNetAudioEncoder(nn.Module):
    """Audio input -> frame sequence ``[B, T', embed_dim]``: front end, TALNet conv stack, then a
    BiGRU (``temporal="gru"``, hidden embed_dim/2 per direction, TALNet) or a transformer encoder
    (``temporal="transformer"``, d = d_ff = embed_dim by default, TAL-trans)."""

    def __init__(self, specs: dict[str, InputSpec], model: str, embed_dim: int, dropout: float, conv_layers: int,
                 norm: str, temporal: str, layers: int = 2, heads: int = 8, ff_dim: int | None = None,
                 share_layers: bool = False, positional: bool = True):
        super().__init__()
        self.frontend = audio_frontend(specs, model)
        frames, bins = self.frontend.feature_shape
        self.conv = TALNetConvStack(bins, embed_dim, conv_layers, norm, dropout, model=model)
        if self.conv.out_dim != embed_dim:
            raise UserError(
                f"{model}: with {bins} frequency bins the TALNet conv stack ends with {self.conv.out_freq} bins and "
                f"{self.conv.out_channels} channels ({self.conv.out_dim} features per frame), not embed_dim={embed_dim}; "
                f"choose embed_dim a multiple of {self.conv.out_freq}"
            )
        self.frames = self.conv.out_frames(frames)
        self.temporal = temporal
        if temporal == "gru":
            if embed_dim % 2:
                raise UserError(f"{model}: embed_dim must be even (a BiGRU of embed_dim/2 per direction), got {embed_dim}")
            self.rnn = nn.GRU(embed_dim, embed_dim // 2, batch_first=True, bidirectional=True)
        else:
            self.transformer = TransformerEncoder(embed_dim, layers, heads, ff_dim, dropout, share_layers, positional)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.frontend(audio))
        if self.temporal == "gru":
            return self.rnn(x)[0]
        return self.transformer(x)


class _AudioModel(AVModel):
    modalities = ("audio",)
    head_latent = "audio"

    def head(self, latent: torch.Tensor) -> torch.Tensor:
        return self.pool(latent)


class CRNN(_AudioModel):
    """TALNet (seed ``TAL``): conv stack -> BiGRU -> frame head + attention pooling over time."""

    def __init__(self, task: Task, specs: dict[str, InputSpec], embed_dim: int = 1024, dropout: float = 0.0,
                 conv_layers: int = 10, norm: str = "batch"):
        super().__init__()
        check_common("crnn", embed_dim=embed_dim, dropout=dropout, norm=norm)
        self.encoder = TALNetAudioEncoder(specs, "crnn", int(embed_dim), float(dropout), int(conv_layers), norm, "gru")
        self.pool = AttentionPool(int(embed_dim), task, dropout=float(dropout))

    def embed(self, inputs):
        return {"audio": self.encoder(inputs["audio"])}


class CNNTransformer(_AudioModel):
    """CNN + Transformer (seed ``TAL-trans``): conv stack -> ``layers`` post-LN encoder layers
    (separate weights unless ``share_layers``) -> frame head + attention pooling over time."""

    def __init__(self, task: Task, specs: dict[str, InputSpec], embed_dim: int = 1024, dropout: float = 0.0,
                 layers: int = 2, heads: int = 8, ff_dim: int | None = None, share_layers: bool = False,
                 positional: bool = True, conv_layers: int = 10, norm: str = "batch"):
        super().__init__()
        check_common("cnn_transformer", embed_dim=embed_dim, dropout=dropout, norm=norm, layers=layers, heads=heads)
        self.encoder = TALNetAudioEncoder(specs, "cnn_transformer", int(embed_dim), float(dropout), int(conv_layers),
                                          norm, "transformer", int(layers), int(heads), ff_dim, bool(share_layers),
                                          bool(positional))
        self.pool = AttentionPool(int(embed_dim), task, dropout=float(dropout))

    def embed(self, inputs):
        return {"audio": self.encoder(inputs["audio"])}


# ---- ResNet (PSLA ResNetAttention) --------------------------------------------------------------------------
RESNETS = ("resnet18", "resnet34", "resnet50")


class ResNetAttention(_AudioModel):
    """torchvision ResNet from scratch (ATDR/PSLA ``ResNetAttention``): a fresh 1-channel 7x7 stride-2
    conv1, the input as ``[B, 1, F, T]``, stages to ``[B, C, F', T']``, mean over frequency ->
    latent ``[B, T', C]`` (C = 512 for resnet18/34, 2048 for resnet50), frame head + attention
    pooling over time. The seed's 832-channel reshape for 64 bins is not reproduced: frequency is
    averaged whatever its size. The ImageNet ``fc`` is dropped (not in the state dict)."""

    def __init__(self, task: Task, specs: dict[str, InputSpec], arch: str = "resnet50", dropout: float = 0.0,
                 norm: str = "batch"):
        super().__init__()
        import torchvision

        check_common("resnet", dropout=dropout, norm=norm)
        if arch not in RESNETS:
            raise UserError(f"resnet: arch must be one of {', '.join(RESNETS)}, got {arch!r}")
        self.frontend = audio_frontend(specs, "resnet")
        kw = {} if norm == "batch" else {"norm_layer": lambda c: nn.GroupNorm(group_count(c), c)}
        net = getattr(torchvision.models, arch)(weights=None, **kw)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.fc = nn.Identity()
        self.model = net
        self.dim = 512 if arch in ("resnet18", "resnet34") else 2048
        self.pool = AttentionPool(self.dim, task, dropout=float(dropout))

    def embed(self, inputs):
        x = self.frontend(inputs["audio"]).unsqueeze(1).transpose(2, 3)  # [B, 1, F, T]
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return {"audio": x.mean(dim=2).transpose(1, 2)}  # [B, T', C]


# ---- EfficientNet (PSLA EffNetAttention) ---------------------------------------------------------------------
class EfficientNetAttention(_AudioModel):
    """timm EfficientNet from scratch (PSLA): 1 input channel, the input as ``[B, 1, F, T]``,
    ``forward_features`` -> mean over frequency -> latent ``[B, T', C]`` (1280 for b0, 1408 for b2)
    -> ``att_heads``-head attention pooling with the softmax over TIME (the seed's recipe normalised
    over classes, a bug). ``norm="group"`` swaps timm's BatchNormAct for GroupNormAct with groups of
    8 channels (every EfficientNet width is a multiple of 8)."""

    def __init__(self, task: Task, specs: dict[str, InputSpec], arch: str = "efficientnet_b0", dropout: float = 0.0,
                 att_heads: int = 4, norm: str = "batch"):
        super().__init__()
        import timm

        check_common("efficientnet", dropout=dropout, norm=norm, heads=att_heads)
        if not str(arch).startswith(("efficientnet_", "tf_efficientnet_")):
            raise UserError(f"efficientnet: arch must be a timm EfficientNet such as efficientnet_b0 or efficientnet_b2, "
                            f"got {arch!r}")
        self.frontend = audio_frontend(specs, "efficientnet")
        kw = {}
        if norm == "group":
            from timm.layers import GroupNormAct

            kw["norm_layer"] = functools.partial(GroupNormAct, group_size=8)
        try:
            self.model = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=1, global_pool="", **kw)
        except Exception as e:  # unknown name, bad kwargs
            raise UserError(f"efficientnet: timm cannot build {arch!r} ({e})") from None
        self.dim = int(self.model.num_features)
        self.pool = AttentionPool(self.dim, task, heads=int(att_heads), dropout=float(dropout))

    def embed(self, inputs):
        x = self.frontend(inputs["audio"]).unsqueeze(1).transpose(2, 3)  # [B, 1, F, T]
        x = self.model.forward_features(x)  # [B, C, F', T']
        return {"audio": x.mean(dim=2).transpose(1, 2)}


# ---- AST -----------------------------------------------------------------------------------------------------------
class AST(AVModel):
    """Audio Spectrogram Transformer on a timm ViT/DeiT (``pretrained=False``, never downloaded).

    The input ``[B, T, F]`` is read as a 1-channel image ``[B, 1, F, T]``; the patch embedding is a
    fresh 1-channel conv with the model's patch size and stride (``fstride``, ``tstride``) so patches
    overlap (AST: 10); the position embedding is sized to the resulting patch grid
    ((F - p) // fstride + 1) x ((T - p) // tstride + 1) plus the cls (and dist) tokens. Tokens go
    through the timm blocks and final norm; the latent ``"audio"`` is (cls + dist) / 2 for distilled
    models (DeiT) and cls otherwise; the head is ``mlp_head`` = LayerNorm -> Linear, as in AST.
    Always float32 with autocast disabled. Parameter names follow AST's (``v.*``, ``mlp_head.*``), so
    an AST checkpoint loads with ``avharness.weights.load_weights`` (a model entry's ``key_map``) after dropping ``v.head*`` keys.
    """

    modalities = ("audio",)
    head_latent = "audio"

    def __init__(self, task: Task, specs: dict[str, InputSpec], arch: str = "deit_base_distilled_patch16_384",
                 fstride: int = 10, tstride: int = 10, dropout: float = 0.0):
        super().__init__()
        import timm

        check_common("ast", dropout=dropout)
        self.frontend = audio_frontend(specs, "ast")
        frames, bins = self.frontend.feature_shape
        try:
            v = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=1, img_size=(bins, frames),
                                  drop_rate=float(dropout))
        except Exception as e:
            raise UserError(f"ast: timm cannot build {arch!r} with img_size ({bins}, {frames}) ({e}); use a ViT/DeiT "
                            "such as vit_tiny_patch16_224, vit_base_patch16_224 or deit_base_distilled_patch16_384") from None
        if getattr(v, "cls_token", None) is None or not hasattr(v, "patch_embed") or getattr(v, "reg_token", None) is not None \
                or getattr(v, "no_embed_class", False):
            raise UserError(f"ast: {arch!r} is not a plain ViT/DeiT with a class token and a position embedding "
                            "covering it; use e.g. vit_base_patch16_224 or deit_base_distilled_patch16_384")
        self.distilled = getattr(v, "dist_token", None) is not None
        proj = v.patch_embed.proj
        ph, pw = proj.kernel_size
        for name, s, p in (("fstride", fstride, ph), ("tstride", tstride, pw)):
            if isinstance(s, bool) or not 1 <= int(s) <= p:
                raise UserError(f"ast: {name} must be an integer in [1, {p}] (the patch size), got {s!r}")
        if bins < ph or frames < pw:
            raise UserError(f"ast: the feature grid {frames}x{bins} (T x F) is smaller than one {ph}x{pw} patch")
        self.fstride, self.tstride = int(fstride), int(tstride)
        proj.stride = (self.fstride, self.tstride)  # overlapping patches
        self.grid = ((bins - ph) // self.fstride + 1, (frames - pw) // self.tstride + 1)
        v.patch_embed.img_size = (bins, frames)
        v.patch_embed.grid_size = self.grid
        v.patch_embed.num_patches = self.grid[0] * self.grid[1]
        prefix = 2 if self.distilled else 1
        dim = int(v.embed_dim)
        v.pos_embed = nn.Parameter(torch.zeros(1, prefix + self.grid[0] * self.grid[1], dim))
        nn.init.trunc_normal_(v.pos_embed, std=0.02)
        self.v = v
        self.head_drop = nn.Dropout(float(dropout))
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, task.num_classes))

    def embed(self, inputs):
        x = self.frontend(inputs["audio"])
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float().unsqueeze(1).transpose(2, 3)  # [B, 1, F, T]
            v = self.v
            b = x.shape[0]
            x = v.patch_embed.proj(x).flatten(2).transpose(1, 2)  # [B, N, D]
            tokens = [v.cls_token.expand(b, -1, -1)]
            if self.distilled:
                tokens.append(v.dist_token.expand(b, -1, -1))
            x = torch.cat(tokens + [x], dim=1) + v.pos_embed
            x = v.norm_pre(v.pos_drop(x))
            for blk in v.blocks:
                x = blk(x)
            x = v.norm(x)
            z = (x[:, 0] + x[:, 1]) / 2 if self.distilled else x[:, 0]
        return {"audio": z}

    def head(self, latent):
        with torch.autocast(device_type=latent.device.type, enabled=False):
            return self.mlp_head(self.head_drop(latent.float()))


# ---- factories --------------------------------------------------------------------------------------------------
def build_crnn(task, specs, embed_dim: int = 1024, dropout: float = 0.0, conv_layers: int = 10,
               norm: str = "batch") -> CRNN:
    return CRNN(task, specs, embed_dim=embed_dim, dropout=dropout, conv_layers=conv_layers, norm=norm)


def build_cnn_transformer(task, specs, embed_dim: int = 1024, dropout: float = 0.0, layers: int = 2, heads: int = 8,
                          ff_dim: int | None = None, share_layers: bool = False, positional: bool = True,
                          conv_layers: int = 10, norm: str = "batch") -> CNNTransformer:
    return CNNTransformer(task, specs, embed_dim=embed_dim, dropout=dropout, layers=layers, heads=heads, ff_dim=ff_dim,
                          share_layers=share_layers, positional=positional, conv_layers=conv_layers, norm=norm)


def build_resnet(task, specs, arch: str = "resnet50", dropout: float = 0.0, norm: str = "batch") -> ResNetAttention:
    return ResNetAttention(task, specs, arch=arch, dropout=dropout, norm=norm)


def build_efficientnet(task, specs, arch: str = "efficientnet_b0", dropout: float = 0.0, att_heads: int = 4,
                       norm: str = "batch") -> EfficientNetAttention:
    return EfficientNetAttention(task, specs, arch=arch, dropout=dropout, att_heads=att_heads, norm=norm)


def build_ast(task, specs, arch: str = "deit_base_distilled_patch16_384", fstride: int = 10, tstride: int = 10,
              dropout: float = 0.0) -> AST:
    return AST(task, specs, arch=arch, fstride=fstride, tstride=tstride, dropout=dropout)


def register_models(register):
    register("crnn", build_crnn)
    register("cnn_transformer", build_cnn_transformer)
    register("resnet", build_resnet)
    register("efficientnet", build_efficientnet)
    register("ast", build_ast)
