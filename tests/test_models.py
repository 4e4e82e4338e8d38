"""The built-in models: contract (logits, named latents, head), purity, determinism, gradients."""

from __future__ import annotations

import pytest
import torch

import avharness
from avharness import AVModel, InputSpec, Task, UserError, create_model, model_spec
from avharness_plugins.models import small as M

TASK = Task("multiclass", tuple(f"c{i}" for i in range(10)))
SPECS = {  # the avdigits shapes
    "audio": InputSpec((51, 32), (-4.0, 4.0), "log-mel (z-scored)"),
    "video": InputSpec((4, 24, 24), (0.0, 1.0), "pixel"),
}
FACTORIES = {
    "audio_cnn": M.build_audio_cnn,
    "video_cnn": M.build_video_cnn,
    "early_fusion": M.build_early_fusion,
    "late_fusion": M.build_late_fusion,
}
LATENTS = {
    "audio_cnn": {"audio"},
    "video_cnn": {"video"},
    "early_fusion": {"fused"},
    "late_fusion": {"audio", "video", "fused"},
}
HEAD = {"audio_cnn": "audio", "video_cnn": "video", "early_fusion": "fused", "late_fusion": "fused"}


def _inputs(specs=SPECS, b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, spec in specs.items():
        lo, hi = spec.bounds
        out[m] = lo + (hi - lo) * torch.rand((b, *spec.shape), generator=g)
    return out


def _model(name, specs=SPECS, **params):
    torch.manual_seed(0)
    return FACTORIES[name](TASK, specs, **params).eval()


@pytest.mark.parametrize("name", FACTORIES)
def test_logits_latents_and_head(name):
    model = _model(name)
    assert isinstance(model, AVModel)
    x = _inputs()
    logits = model(x)
    assert logits.shape == (6, 10) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    # logits, not probabilities
    assert not torch.allclose(logits.softmax(1).sum(1), logits.sum(1))
    latents = model.embed(x)
    assert set(latents) == LATENTS[name]
    assert model.head_latent == HEAD[name]
    assert all(z.shape == (6, 64) for z in latents.values())
    assert torch.equal(model.head(latents[model.head_latent]), logits)
    expected = {"audio_cnn": ("audio",), "video_cnn": ("video",)}.get(name, ("audio", "video"))
    assert tuple(model.modalities) == expected


@pytest.mark.parametrize("name", FACTORIES)
def test_inputs_untouched_and_eval_deterministic(name):
    model = _model(name, dropout=0.5)
    x = _inputs()
    before = {m: t.clone() for m, t in x.items()}
    first = model(x)
    for m in x:
        assert torch.equal(x[m], before[m])
    assert torch.equal(model(x), first)
    # a sample's logits do not depend on the rest of its batch (no batch norm)
    single = model({m: t[2:3] for m, t in x.items()})
    assert torch.allclose(single, first[2:3], atol=1e-5)


@pytest.mark.parametrize("name", FACTORIES)
def test_only_read_modalities_matter(name):
    model = _model(name)
    x = _inputs()
    y = dict(x)
    for m in ("audio", "video"):
        if m not in model.modalities:
            y[m] = torch.zeros_like(x[m])
    assert torch.equal(model(x), model(y))


@pytest.mark.parametrize("name", FACTORIES)
def test_gradients_reach_every_read_input(name):
    model = _model(name)
    x = {m: t.requires_grad_(True) for m, t in _inputs().items()}
    loss = TASK.loss(model(x), torch.arange(6) % 10).mean()
    loss.backward()
    for m in model.modalities:
        assert x[m].grad is not None and torch.isfinite(x[m].grad).all()
        assert x[m].grad.abs().sum() > 0, m


@pytest.mark.parametrize("name", FACTORIES)
def test_shapes_come_from_the_specs(name):
    specs = {
        "audio": InputSpec((40, 20), (-4.0, 4.0)),
        "video": InputSpec((3, 1, 16, 20), (0.0, 1.0)),  # [T, C, H, W] works as well as [T, H, W]
    }
    model = _model(name, specs=specs, width=8, latent_dim=16)
    logits = model(_inputs(specs, b=3))
    assert logits.shape == (3, 10)
    other_task = Task("multiclass", ("a", "b", "c"))
    assert FACTORIES[name](other_task, specs, width=8)(_inputs(specs, b=2)).shape == (2, 3)


@pytest.mark.parametrize("name", FACTORIES)
def test_train_mode_dropout_differs_and_params_are_small(name):
    model = _model(name, dropout=0.5).train()
    x = _inputs()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.equal(a, model(x))
    assert sum(p.numel() for p in model.parameters()) < 500_000


def test_bad_specs_and_params_are_user_errors():
    with pytest.raises(UserError, match="reads 'video'"):
        M.build_late_fusion(TASK, {"audio": SPECS["audio"]})
    with pytest.raises(UserError, match="dims per sample"):
        M.build_audio_cnn(TASK, {"audio": InputSpec((10, 4, 4), (0, 1))})
    with pytest.raises(UserError, match="dropout"):
        M.build_video_cnn(TASK, SPECS, dropout=1.0)
    with pytest.raises(UserError, match="width"):
        M.build_video_cnn(TASK, SPECS, width=0)


def test_registered_and_rebuilt_from_a_spec():
    registry = avharness.plugins.load_registry()
    for name, factory in FACTORIES.items():
        assert registry.get("model", name) is factory
    spec = model_spec("late_fusion", {"width": 8, "latent_dim": 16}, TASK, SPECS)
    model = create_model(spec)
    assert isinstance(model, M.LateFusion) and model.alpha.in_features == 16


@pytest.mark.parametrize("name", FACTORIES)
def test_latents_cannot_die(name):
    # A plain Linear -> ReLU latent went all-zero (chance accuracy, no gradient) after one large
    # early step; the per-sample LayerNorm keeps units alive whatever the biases become.
    model = _model(name)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.bias.fill_(-100.0)
    latents = model.embed(_inputs())
    for key in LATENTS[name] - {"fused"} if name == "late_fusion" else LATENTS[name]:
        assert (latents[key] > 0).float().mean(1).min() > 0.2, key
    if name == "late_fusion":
        hidden = model.classifier[:2](latents["fused"])  # LayerNorm, ReLU
        assert (hidden > 0).float().mean(1).min() > 0.2
