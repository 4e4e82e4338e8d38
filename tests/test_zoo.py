"""The AudioSet model zoo (models/audioset: audio, video, fusion), its shared layers and checkpoint loading.

Small shapes throughout (audio [64, 32], video [4, 16], tiny widths, small timm variants), so the
whole file stays well under two minutes on two CPU cores.
"""

from __future__ import annotations

import functools
import hashlib

import pytest
import torch

import avharness
from avharness import Budget, InputSpec, SampleRNG, Task, ThreatModel, UserError, create_model, load_model, model_spec, save_model
from avharness import weights as checkpoints
from avharness_plugins.models.audioset.fusion import early_fusion_grid
from avharness_plugins.models.audioset.layers import AttentionPool, TALNetConvStack, pooled_logits

B = 4
AUDIO = InputSpec((64, 32), (-5.0, 5.0), "log-mel (normalised)")
VIDEO = InputSpec((4, 16), (0.0, 3.0), "frame features")
SPECS = {"audio": AUDIO, "video": VIDEO}
TASKS = {
    "multilabel": Task("multilabel", tuple(f"l{i}" for i in range(5))),
    "multiclass": Task("multiclass", tuple(f"c{i}" for i in range(6))),
}
TINY = dict(embed_dim=32, heads=4)
PARAMS = {
    "crnn": dict(embed_dim=32),
    "cnn_transformer": dict(TINY, layers=2),
    "resnet": dict(arch="resnet18"),
    "efficientnet": dict(arch="efficientnet_b0", att_heads=2),
    "ast": dict(arch="vit_tiny_patch16_224", fstride=10, tstride=10),
    "video_transformer": dict(TINY, layers=2),
    "av_early_fusion": dict(TINY, layers=1),
    "av_mid_fusion": dict(TINY, layers=1),
    "av_late_fusion": dict(TINY, layers=1),
}
AUDIO_ONLY = ("crnn", "cnn_transformer", "resnet", "efficientnet", "ast")
FUSED = ("av_early_fusion", "av_mid_fusion", "av_late_fusion")
READS_AUDIO = AUDIO_ONLY + FUSED


def _latents(name):
    if name in AUDIO_ONLY:
        return {"audio"}, "audio"
    if name == "video_transformer":
        return {"video"}, "video"
    return {"audio", "video", "fused"}, "fused"


def _inputs(specs=SPECS, b=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, spec in specs.items():
        lo, hi = spec.bounds
        out[m] = lo + (hi - lo) * torch.rand((b, *spec.shape), generator=g)
    return out


def _target(task, b=B):
    if task.kind == "multiclass":
        return torch.arange(b) % task.num_classes
    return (torch.arange(b * task.num_classes).view(b, -1) % 3 == 0).float()


@functools.cache
def _model(name, kind="multilabel"):
    """Built once per (name, task kind); eval mode. Tests must not modify it."""
    torch.manual_seed(0)
    return avharness.get_registry().get("model", name)(TASKS[kind], SPECS, **PARAMS[name]).eval()


def _reads(name):
    return [m for m in ("audio", "video") if m in _model(name).modalities]


def test_every_zoo_model_is_registered():
    registry = avharness.get_registry()
    for name in PARAMS:
        entry = registry.entry("model", name)
        assert entry.module.startswith("avharness_plugins.models.audioset."), entry


@pytest.mark.parametrize("kind", ["multilabel", "multiclass"])
@pytest.mark.parametrize("name", PARAMS)
def test_logits_latents_and_head(name, kind):
    model = _model(name, kind)
    task = TASKS[kind]
    x = _inputs()
    before = {m: t.clone() for m, t in x.items()}
    with torch.no_grad():
        logits = model(x)
        latents = model.embed(x)
    assert logits.shape == (B, task.num_classes) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    names, head_latent = _latents(name)
    assert set(latents) == names and model.head_latent == head_latent
    for z in latents.values():
        assert z.shape[0] == B and z.dim() in (2, 3) and torch.isfinite(z).all()
    with torch.no_grad():
        assert torch.equal(model.head(latents[head_latent]), logits)
    for m in x:
        assert torch.equal(x[m], before[m])
    assert tuple(model.modalities) == (("audio",) if name in AUDIO_ONLY else ("video",) if name == "video_transformer"
                                       else ("audio", "video"))


@pytest.mark.parametrize("name", PARAMS)
def test_input_gradients_finite_and_nonzero(name):
    model = _model(name)
    task = TASKS["multilabel"]
    x = {m: t.requires_grad_(True) for m, t in _inputs().items()}
    loss = task.loss(model(x), _target(task)).sum()
    grads = torch.autograd.grad(loss, [x[m] for m in _reads(name)])
    for m, g in zip(_reads(name), grads):
        assert torch.isfinite(g).all(), m
        assert (g.flatten(1).abs().sum(1) > 0).all(), f"{name}: zero input gradient for {m} on some sample"
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", PARAMS)
def test_eval_output_of_a_sample_does_not_depend_on_its_batch(name):
    model = _model(name)
    x = _inputs()
    with torch.no_grad():
        full = model(x)
        single = model({m: t[1:2] for m, t in x.items()})
        other = model({m: torch.cat([t[1:2], t[3:]]) for m, t in x.items()})
        assert torch.equal(model(x), full)  # deterministic
    assert torch.allclose(single, full[1:2], atol=1e-5, rtol=1e-5)
    assert torch.allclose(other[0:1], full[1:2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", READS_AUDIO)
def test_waveform_front_end(name):
    """A waveform spec with a front end: the pipeline is the model's first module, gradients reach the
    waveform, and weights trained on features load unchanged (the front end has no state)."""
    wave = InputSpec((8000,), (-1.0, 1.0), "waveform", frontend={"pipeline": "logmel64", "stats": {
        "mean": -40.0, "std": 20.0, "pipeline": "logmel64", "version": "1"}})
    specs = {"audio": wave, "video": VIDEO}
    torch.manual_seed(0)
    factory = avharness.get_registry().get("model", name)
    model = factory(TASKS["multilabel"], specs, **PARAMS[name]).eval()
    features_model = factory(TASKS["multilabel"], {"audio": InputSpec((400, 64), (-5.0, 5.0)), "video": VIDEO},
                             **PARAMS[name])
    assert set(model.state_dict()) == set(features_model.state_dict())
    model.load_state_dict(features_model.state_dict())
    x = _inputs(specs, b=2)
    x["audio"] = (0.1 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    logits = model(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    (g,) = torch.autograd.grad(TASKS["multilabel"].loss(logits, _target(TASKS["multilabel"], 2)).sum(), [x["audio"]])
    assert torch.isfinite(g).all() and (g.abs().sum(1) > 0).all()
    assert sum(p.numel() for n, p in model.named_parameters() if "frontend" in n) == 0


def test_waveform_spec_without_front_end_is_a_user_error():
    with pytest.raises(UserError, match="front end"):
        avharness.get_registry().get("model", "crnn")(TASKS["multilabel"], {"audio": InputSpec((8000,), (-1.0, 1.0), "waveform")})


@pytest.mark.parametrize("name", ["crnn", "cnn_transformer", "resnet", "efficientnet", "ast", "video_transformer",
                                  "av_late_fusion", "av_mid_fusion", "av_early_fusion"])
def test_pgd_runs_within_budget(name):
    model = _model(name, "multiclass" if name in ("resnet", "av_mid_fusion") else "multilabel")
    task = TASKS["multiclass" if name in ("resnet", "av_mid_fusion") else "multilabel"]
    eps = {"audio": 0.3, "video": 0.05}
    reads = _reads(name)
    threat = ThreatModel("t", {m: Budget("linf", eps[m], SPECS[m].bounds) for m in reads})
    x = _inputs()
    target = _target(task)
    pgd = avharness.get_registry().get("attack", "pgd")(steps=3)
    out = pgd.perturb(model, x, target, threat, task, SampleRNG(0, "zoo", [f"s{i}" for i in range(B)]))
    for m in reads:
        delta = (out[m] - x[m]).abs().amax()
        assert delta <= eps[m] + 1e-6 and delta > 0
        lo, hi = SPECS[m].bounds
        assert out[m].min() >= lo and out[m].max() <= hi
    for m in set(x) - set(reads):
        assert out[m] is x[m]
    with torch.no_grad():
        assert task.loss(model({**x, **out}), target).sum() >= task.loss(model(x), target).sum() - 1e-4


@pytest.mark.parametrize("name", PARAMS)
def test_save_create_load_round_trip(name, tmp_path):
    model = _model(name)
    spec = model_spec(name, PARAMS[name], TASKS["multilabel"], SPECS)
    save_model(model, spec, tmp_path / "m")
    again = load_model(tmp_path / "m")
    fresh = create_model(spec)
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
        assert type(fresh) is type(model)


# ---- shared layers -------------------------------------------------------------------------------------
def test_attention_pooling_logit_matches_direct_and_survives_saturation():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 7, 5, generator=g, dtype=torch.float64) * 3
    a = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    log_w = a.log_softmax(1)
    p = (z.sigmoid() * log_w.exp()).sum(1)
    assert torch.allclose(pooled_logits(z, log_w, "multilabel"), torch.logit(p), atol=1e-9)
    # multiclass: log of the class-wise attention mixture of the frames' softmax probabilities
    q = (z.softmax(-1) * log_w.exp()).sum(1)
    assert torch.allclose(pooled_logits(z, log_w, "multiclass"), q.log(), atol=1e-9)
    # float32, saturated frames: the direct computation gives +-inf, the log-space one stays finite
    zs = torch.full((2, 4, 3), 120.0)
    zs[1] = -120.0
    zs.requires_grad_(True)
    ls = torch.zeros(2, 4, 3).log_softmax(1)
    assert torch.isinf(torch.logit((zs.sigmoid() * ls.exp()).sum(1))).all()
    out = pooled_logits(zs, ls, "multilabel")
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0], torch.full((3,), 120.0), atol=1e-3)
    assert torch.allclose(out[1], torch.full((3,), -120.0), atol=1e-3)
    (grad,) = torch.autograd.grad(out.sum(), [zs])
    assert torch.isfinite(grad).all() and (grad.abs() > 0).all()


def test_multi_head_attention_pool_mixes_heads_into_a_probability():
    task = TASKS["multilabel"]
    torch.manual_seed(0)
    pool = AttentionPool(8, task, heads=3)
    h = torch.randn(2, 6, 8)
    z, log_w = pool.frames(h)
    assert z.shape == (2, 18, 5)
    assert torch.allclose(log_w.exp().sum(1), torch.ones(2, 5), atol=1e-6)  # a convex mixture over heads x time
    p = torch.sigmoid(pool(h))
    assert ((p > 0) & (p < 1)).all()


def test_talnet_conv_stack_seed_geometry():
    stack = TALNetConvStack(64, 1024)
    channels = [m.out_channels for m in stack.layers if isinstance(m, torch.nn.Conv2d)]
    assert channels == [32, 32, 64, 64, 128, 128, 256, 256, 512, 512]
    assert stack.out_dim == 1024 and stack.out_frames(400) == 100
    assert TALNetConvStack(128, 2048).out_dim == 2048
    # odd sizes work (ceil-mode pools)
    small = TALNetConvStack(33, 32, conv_layers=6).eval()
    assert small(torch.randn(1, 37, 33)).shape == (1, small.out_frames(37), small.out_dim)


def test_early_fusion_grid():
    assert early_fusion_grid(400, 10, 2048) == (8, 80, 5, 0)  # the seed's [80, 320 + 256]
    assert early_fusion_grid(64, 4, 16) == (8, 32, 2, 0)
    assert early_fusion_grid(50, 4, 6) == (2, 8, 7, 6)  # no exact k: audio zero-padded at the end
    with pytest.raises(UserError, match="rows_per_frame"):
        early_fusion_grid(400, 10, 2048, rows_per_frame=3)


def test_shared_layers_and_distilled_ast():
    task = TASKS["multilabel"]
    registry = avharness.get_registry()
    shared = registry.get("model", "cnn_transformer")(task, SPECS, **dict(PARAMS["cnn_transformer"], layers=3, share_layers=True))
    separate = registry.get("model", "cnn_transformer")(task, SPECS, **dict(PARAMS["cnn_transformer"], layers=3))
    assert len(shared.encoder.transformer.layers) == 1 and len(separate.encoder.transformer.layers) == 3
    assert shared.eval()(_inputs()).shape == (B, 5)
    ast = registry.get("model", "ast")(task, SPECS, arch="deit_tiny_distilled_patch16_224", fstride=8, tstride=8).eval()
    assert ast.distilled and ast.grid == (3, 7) and ast.v.pos_embed.shape[1] == 2 + 21
    x = _inputs()
    with torch.no_grad():
        full = ast(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the model stays in float32 regardless
            auto = ast(x)
    assert auto.dtype == torch.float32 and torch.equal(auto, full)


@pytest.mark.parametrize("name,params,match", [
    ("cnn_transformer", dict(embed_dim=35, heads=5, audio=(64, 40)), "multiple of 2"),  # 40 bins end as 2
    ("cnn_transformer", dict(embed_dim=32, heads=5), "heads"),
    ("crnn", dict(embed_dim=32, norm="layer"), "norm"),
    ("resnet", dict(arch="resnet101"), "arch"),
    ("ast", dict(arch="vit_tiny_patch16_224", fstride=20), "fstride"),
    ("av_late_fusion", dict(embed_dim=32, heads=4, audio_backbone="ast"), "audio_backbone"),
])
def test_bad_parameters_are_user_errors(name, params, match):
    params = dict(params)
    specs = dict(SPECS, audio=InputSpec(params.pop("audio"), AUDIO.bounds)) if "audio" in params else SPECS
    with pytest.raises(UserError, match=match):
        avharness.get_registry().get("model", name)(TASKS["multilabel"], specs, **params)


def test_video_must_be_frame_features():
    with pytest.raises(UserError, match=r"\[T, D\]"):
        avharness.get_registry().get("model", "video_transformer")(
            TASKS["multilabel"], {"video": InputSpec((4, 8, 8), (0.0, 1.0))}, embed_dim=16)


def test_group_norm_variant_is_batch_independent_in_train_mode():
    torch.manual_seed(0)
    model = avharness.get_registry().get("model", "crnn")(TASKS["multilabel"], SPECS, embed_dim=32, norm="group").train()
    x = _inputs()
    assert torch.allclose(model({"audio": x["audio"][:1]}), model(x)[:1], atol=1e-5)


# ---- checkpoints ---------------------------------------------------------------------------------------
def _source_model():
    torch.manual_seed(3)
    return avharness.get_registry().get("model", "cnn_transformer")(TASKS["multilabel"], SPECS, **PARAMS["cnn_transformer"]).eval()


def test_load_weights_unwraps_strips_module_and_maps_keys(tmp_path):
    src = _source_model()
    # as another codebase would save it: DataParallel prefix, other module names, wrapped with metadata
    state = {"module." + k.replace("encoder.", "backbone.", 1): v for k, v in src.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state, "epoch": 7, "optimizer": {"lr": 0.1}}, path)
    dst = avharness.get_registry().get("model", "cnn_transformer")(TASKS["multilabel"], SPECS, **PARAMS["cnn_transformer"]).eval()
    x = _inputs()
    with torch.no_grad():
        assert not torch.equal(dst(x), src(x))
    with pytest.raises(UserError, match="key_map") as err:
        checkpoints.load_weights(dst, path)
    assert "missing" in str(err.value) and "unexpected" in str(err.value) and "backbone." in str(err.value)
    info = checkpoints.load_weights(dst, path, key_map={"backbone.": "encoder."})
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["path"] == str(path) and info["key_map"] == {"backbone.": "encoder."}
    assert info["missing"] == [] and info["unexpected"] == []


def test_load_weights_drop_keys_non_strict_and_shape_mismatch(tmp_path):
    src = _source_model()
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    other_task = Task("multilabel", tuple(f"x{i}" for i in range(9)))  # a classifier for other classes
    dst = avharness.get_registry().get("model", "cnn_transformer")(other_task, SPECS, **PARAMS["cnn_transformer"])
    with pytest.raises(UserError, match="another shape") as err:
        checkpoints.load_weights(dst, path)
    assert "pool.fc_prob.weight" in str(err.value)
    info = checkpoints.load_weights(dst, path, key_map={"pool.": None}, strict=False)
    assert sorted(info["missing"]) == sorted(k for k in dst.state_dict() if k.startswith("pool."))
    assert info["unexpected"] == [] and len(info["dropped"]) == 4
    enc = {k: v for k, v in src.state_dict().items() if k.startswith("encoder.")}
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in enc.items())
    with pytest.raises(UserError, match="missing"):
        checkpoints.load_weights(dst, path, key_map={"pool.": None})  # strict: missing head keys


class _NotATensor:
    def __init__(self):
        self.x = 1


def test_load_weights_refuses_pickles_and_bad_files(tmp_path):
    dst = _source_model()
    pickled = tmp_path / "obj.pt"
    torch.save({"weights": _NotATensor()}, pickled)
    with pytest.raises(UserError, match=r"refused to unpickle .*_NotATensor.*weights_only=True"):
        checkpoints.load_weights(dst, pickled)
    with pytest.raises(UserError, match="not found"):
        checkpoints.load_weights(dst, tmp_path / "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(UserError, match="not a readable torch checkpoint"):
        checkpoints.load_weights(dst, corrupt)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tmp_path / "obj.pt").read_bytes()[:100])
    with pytest.raises(UserError, match="not a readable torch checkpoint"):
        checkpoints.load_weights(dst, truncated)
    plain = tmp_path / "plain.pt"
    torch.save({"epoch": 3, "lr": 0.1}, plain)
    with pytest.raises(UserError, match="not a state dict"):
        checkpoints.load_weights(dst, plain)
    with pytest.raises(UserError, match="key_map"):
        checkpoints.load_weights(dst, plain, key_map={"a": 3})


@pytest.mark.parametrize("name", PARAMS)
def test_plugin_contract(name):
    """The same contract tests `avharness plugin check` runs on a model plugin."""
    from avharness.conformance import check_model

    task = TASKS["multiclass"]
    factory = avharness.get_registry().get("model", name)
    results = check_model(lambda: factory(task, SPECS, **PARAMS[name]), task, SPECS)
    failed = [(check, detail) for check, ok, detail in results if not ok]
    assert results and not failed, failed


def test_ast_checkpoint_layout_loads_with_module_prefix_and_dropped_imagenet_heads(tmp_path):
    """An AST checkpoint (DataParallel, ``v.*``/``mlp_head.*`` names, timm's unused ImageNet heads
    ``v.head``/``v.head_dist``) loads after dropping those heads."""
    src = _model("ast")
    state = {"module." + k: v for k, v in src.state_dict().items()}
    state["module.v.head.weight"] = torch.zeros(1000, 192)
    state["module.v.head_dist.weight"] = torch.zeros(1000, 192)
    path = tmp_path / "audioset_like.pth"
    torch.save(state, path)
    torch.manual_seed(5)
    dst = avharness.get_registry().get("model", "ast")(TASKS["multilabel"], SPECS, **PARAMS["ast"]).eval()
    with pytest.raises(UserError, match="v.head.weight"):
        checkpoints.load_weights(dst, path)
    info = checkpoints.load_weights(dst, path, key_map={"v.head": None})
    assert sorted(info["dropped"]) == ["v.head.weight", "v.head_dist.weight"]
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


def test_late_fusion_with_crnn_audio_branch():
    torch.manual_seed(0)
    model = avharness.get_registry().get("model", "av_late_fusion")(
        TASKS["multiclass"], SPECS, **dict(PARAMS["av_late_fusion"], audio_backbone="crnn")).eval()
    latents = model.embed(_inputs())
    assert {k: tuple(v.shape) for k, v in latents.items()} == {k: (B, 4, 32) for k in ("audio", "video", "fused")}
    assert hasattr(model.audio, "rnn") and model(_inputs()).shape == (B, 6)
