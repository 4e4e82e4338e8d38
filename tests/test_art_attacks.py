"""Property tests for the ART backend (art.pgd, art.apgd, art.cw, art.deepfool, art.square) on the toy models of ``toy.py``.

Mirrors test_attacks.py: budgets and bounds hold, unattacked modalities are the caller's tensors,
inputs are not mutated, eps = 0 does not call ART, seeded runs repeat, a large eps breaks the model,
the multilabel BCE path uses every label, refusals are one-line UserErrors, and art.pgd agrees with
the native pgd on robust accuracy (measured gap 0.0 on 64 samples; tolerance 0.1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attack_properties import EPS, FUSED, SCOPES, check_budget, one_thread, run  # noqa: F401 (one_thread: autouse fixture)
from toy import sample_rng, test_batch, threat, toy_data, trained

from avharness import Attack, AttackOutput, UserError
from avharness_plugins.attacks.backends.art import (
    MultiLabelBCE,
    build_art_apgd,
    build_art_cw,
    build_art_deepfool,
    build_art_pgd,
    build_art_square,
    register_attacks,
)
from avharness_plugins.attacks.backends.packing import PackedAdapter, Packing, bounds, eps_vector, mask_vector
from avharness_plugins.attacks.pgd import build_pgd

ATTACKS = {
    "art.pgd": lambda: build_art_pgd(steps=5),
    "art.apgd": lambda: build_art_apgd(steps=5),
    "art.cw": lambda: build_art_cw(steps=3, learning_rate=0.1, binary_search_steps=2),
    "art.deepfool": lambda: build_art_deepfool(steps=10),
    "art.square": lambda: build_art_square(queries=50),
}
LINF_ONLY = {"art.cw", "art.square"}
MINIMUM_NORM_MAY_FAIL = {"art.cw"}  # C&W keeps the clean point when it finds no adversarial one
MULTICLASS_ONLY = {"art.apgd", "art.cw", "art.deepfool", "art.square"}
DETERMINISTIC = {"art.cw", "art.deepfool"}  # no random start: every seed gives the same point


def robust_accuracy(model, data, batch, adv) -> float:
    with torch.no_grad():
        ok = data.task.correct(model(batch.inputs), batch.target) & data.task.correct(model(adv), batch.target)
    return ok.float().mean().item()


def threat_for(data, scope, norm, scale=1.0):
    return threat(data, **{m: (norm, EPS[norm][m] * scale) for m in SCOPES[scope]})


def supported(name, kind, norm, scope):
    return (not (name in MULTICLASS_ONLY and kind == "multilabel")
            and not (name in LINF_ONLY and norm == "l2")) and not (norm == "l2" and scope == "joint")


# --- packing ---------------------------------------------------------------------------------


def test_packing_roundtrip_and_vectors():
    data = toy_data()
    batch = test_batch(data, 4)
    tm = threat(data, video=("linf", 0.1))
    p = Packing.of(batch.inputs, scales={"audio": 0.5}, row_key=10.0)
    z = p.pack(batch.inputs)
    assert z.shape == (4, p.dim) and p.dim == 120 + 216 + 1
    back = p.unpack(z)
    for m in FUSED:
        assert torch.equal(back[m], batch.inputs[m])  # power-of-two scale: exact
    assert p.rows(z).tolist() == [0, 1, 2, 3]
    mask = mask_vector(p, tm)
    assert mask[:120].sum() == 0 and mask[120:336].sum() == 216 and mask[-1] == 0
    eps = eps_vector(p, tm)
    assert eps[:120].abs().sum() == 0 and torch.allclose(eps[120:336], torch.full((216,), 0.1))
    lo, hi = bounds(p, tm)
    assert lo[121] == 0.0 and hi[121] == 1.0


def test_adapter_matches_model_with_fixed_rows():
    data = toy_data()
    batch = test_batch(data, 6)
    model = trained(FUSED)
    p = Packing.of(batch.inputs, ["audio"], row_key=100.0)
    adapter = PackedAdapter(model, p, {"video": batch.inputs["video"]})
    z = p.pack(batch.inputs)
    with torch.no_grad():
        ref = model(batch.inputs)
        assert torch.allclose(adapter(z), ref)
        assert torch.allclose(adapter(z[[4, 1]]), ref[[4, 1]])  # subsets find their fixed rows


# --- factories and registration ----------------------------------------------------------------


def test_registered():
    names = {}
    register_attacks(register=lambda name, factory: names.__setitem__(name, factory))
    assert set(names) == set(ATTACKS)
    assert all(isinstance(f(), Attack) for f in names.values())
    assert names["art.square"]().gradient_free is True and names["art.square"]().iterative is True
    from avharness.plugins import load_registry

    assert set(ATTACKS) <= set(load_registry().names("attack"))


@pytest.mark.parametrize(
    "factory, kwargs, word",
    [(build_art_pgd, {"steps": 0}, "steps"), (build_art_pgd, {"steps": 2.5}, "steps"),
     (build_art_pgd, {"step_size": 0.0}, "step_size"), (build_art_pgd, {"restarts": 0}, "restarts"),
     (build_art_pgd, {"random_start": "yes"}, "random_start"), (build_art_apgd, {"steps": True}, "steps"),
     (build_art_apgd, {"restarts": -1}, "restarts"), (build_art_cw, {"steps": 0}, "steps"),
     (build_art_cw, {"confidence": -1.0}, "confidence"), (build_art_cw, {"learning_rate": 0}, "learning_rate"),
     (build_art_cw, {"binary_search_steps": 0}, "binary_search_steps"), (build_art_deepfool, {"steps": 1.5}, "steps"),
     (build_art_deepfool, {"overshoot": -0.1}, "overshoot"), (build_art_square, {"queries": 0}, "queries"),
     (build_art_square, {"p_init": 1.0}, "p_init"), (build_art_square, {"p_init": 0}, "p_init")],
)
def test_rejects_bad_params(factory, kwargs, word):
    with pytest.raises(UserError, match=word) as info:
        factory(**kwargs)
    assert "\n" not in str(info.value)


# --- properties --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("scope", SCOPES)
def test_eps_zero_is_a_noop(name, scope, monkeypatch):
    import art.estimators.classification as cls

    monkeypatch.setattr(cls, "PyTorchClassifier", None)  # any use of ART would fail
    data = toy_data()
    batch = test_batch(data, 8)
    adv = run(ATTACKS[name](), trained(FUSED), data, batch, threat_for(data, scope, "linf", 0.0))
    for m in batch.inputs:
        assert adv[m] is batch.inputs[m]


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
def test_budget_bounds_and_untouched_modalities(name, norm, scope, kind):
    if not supported(name, kind, norm, scope):
        pytest.skip("refused (tested below)")
    data = toy_data(kind)
    batch = test_batch(data, 16)
    model = trained(FUSED, kind)
    before = {m: x.clone() for m, x in batch.inputs.items()}
    tm = threat_for(data, scope, norm)
    out = ATTACKS[name]().perturb(model, batch.inputs, batch.target, tm, data.task, sample_rng(batch))
    assert isinstance(out, AttackOutput) and out.stats["forward_samples"] > 0
    if name == "art.square":  # gradient-free
        assert out.stats["backward_samples"] == 0
    else:
        assert out.stats["backward_samples"] > 0
    adv = out.inputs
    check_budget(adv, batch, tm)
    for m in batch.inputs:
        assert torch.equal(batch.inputs[m], before[m]), f"the caller's {m} was modified"
        if m in tm.budgets:
            assert name in MINIMUM_NORM_MAY_FAIL or not torch.equal(adv[m], batch.inputs[m]), f"{m} did not move"
        else:
            assert adv[m] is batch.inputs[m]
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert not model.training


def test_eps_zero_modality_in_joint_threat_is_untouched():
    data = toy_data()
    batch = test_batch(data, 8)
    tm = threat(data, audio=("linf", 0.0), video=("linf", 0.2))
    for name in sorted(set(ATTACKS) - MINIMUM_NORM_MAY_FAIL):
        adv = run(ATTACKS[name](), trained(FUSED), data, batch, tm)
        assert adv["audio"] is batch.inputs["audio"] and not torch.equal(adv["video"], batch.inputs["video"])


@pytest.mark.parametrize("name", ATTACKS)
def test_seeded_reproducible_and_global_rng_restored(name):
    data = toy_data()
    batch = test_batch(data, 16)
    tm = threat_for(data, "joint", "linf")
    np.random.seed(123)
    torch.manual_seed(123)
    a = run(ATTACKS[name](), trained(FUSED), data, batch, tm, seed=3)
    assert np.random.rand() == np.random.RandomState(123).rand()  # numpy's global state was restored
    b = run(ATTACKS[name](), trained(FUSED), data, batch, tm, seed=3)
    c = run(ATTACKS[name](), trained(FUSED), data, batch, tm, seed=4)
    for m in FUSED:
        assert torch.equal(a[m], b[m])
    if name not in DETERMINISTIC:
        assert any(not torch.equal(a[m], c[m]) for m in FUSED)


@pytest.mark.parametrize("name, kind, scale", [
    ("art.pgd", "multiclass", 1.5), ("art.pgd", "multilabel", 1.5), ("art.apgd", "multiclass", 1.5),
    ("art.cw", "multiclass", 1.5), ("art.deepfool", "multiclass", 1.5),
    ("art.square", "multiclass", 5.0),  # gradient-free with 50 queries: weaker at 1.5x eps on this toy
])
def test_large_eps_lowers_robust_accuracy(name, kind, scale):
    data = toy_data(kind)
    batch = test_batch(data, 32)
    model = trained(FUSED, kind)
    tm = threat_for(data, "joint", "linf", scale)
    clean = robust_accuracy(model, data, batch, batch.inputs)
    attack = build_art_cw(steps=10, learning_rate=0.1) if name == "art.cw" else ATTACKS[name]()
    adv = run(attack, model, data, batch, tm)
    assert robust_accuracy(model, data, batch, adv) <= clean - 0.5


def test_multilabel_bce_uses_every_label():
    # ART argmax-reduces labels of BCEWithLogitsLoss; ours must not: its gradient must equal the
    # task loss's gradient on multi-hot targets, and the attack must raise each sample's loss.
    data = toy_data("multilabel")
    batch = test_batch(data, 16)
    model = trained(FUSED, "multilabel")
    assert not isinstance(MultiLabelBCE(), torch.nn.BCEWithLogitsLoss) and MultiLabelBCE().reduction == "sum"
    logits = torch.randn(5, 3, requires_grad=True)
    target = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1], [0, 1, 1], [1, 0, 1.0]])
    g1, = torch.autograd.grad(MultiLabelBCE()(logits, target), logits)
    g2, = torch.autograd.grad(data.task.loss(logits, target).sum(), logits)
    assert torch.allclose(g1, g2)
    tm = threat_for(data, "joint", "linf", 0.5)
    adv = run(build_art_pgd(steps=5), model, data, batch, tm)
    with torch.no_grad():
        before, after = data.task.loss(model(batch.inputs), batch.target), data.task.loss(model(adv), batch.target)
    assert (after > before).all()


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("budgets, word", [
    ({"audio": ("l2", 1.0), "video": ("l2", 1.0)}, "joint l2"),
    ({"audio": ("linf", 0.1), "video": ("l2", 1.0)}, "mixes norms"),
])
def test_refuses_joint_l2_and_mixed_norms(name, budgets, word):
    data = toy_data()
    batch = test_batch(data, 4)
    with pytest.raises(UserError, match=word) as info:
        run(ATTACKS[name](), trained(FUSED), data, batch, threat(data, **budgets))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", sorted(MULTICLASS_ONLY))
def test_multiclass_only_attacks_refuse_multilabel(name):
    data = toy_data("multilabel")
    batch = test_batch(data, 4)
    with pytest.raises(UserError, match="multilabel") as info:
        run(ATTACKS[name](), trained(FUSED, "multilabel"), data, batch, threat(data, audio=("linf", 0.1)))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", sorted(LINF_ONLY))
def test_linf_only_attacks_refuse_l2(name):
    data = toy_data()
    batch = test_batch(data, 4)
    with pytest.raises(UserError, match="linf") as info:
        run(ATTACKS[name](), trained(FUSED), data, batch, threat(data, audio=("l2", 1.0)))
    assert "\n" not in str(info.value)


def test_missing_modality_is_a_user_error():
    data = toy_data()
    batch = test_batch(data, 4)
    with pytest.raises(UserError, match="video"):
        build_art_pgd().perturb(trained(("audio",)), {"audio": batch.inputs["audio"]}, batch.target,
                                threat(data, video=("linf", 0.1)), data.task, sample_rng(batch))


# --- cross-check with the native pgd -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
def test_agrees_with_native_pgd(kind):
    # Measured on this toy: gap 0.000 (multiclass 0.453 vs 0.453, multilabel 0.0 vs 0.0).
    data = toy_data(kind)
    batch = test_batch(data, 64)
    model = trained(FUSED, kind)
    tm = threat_for(data, "joint", "linf")
    native = robust_accuracy(model, data, batch, run(build_pgd(steps=10), model, data, batch, tm))
    art = robust_accuracy(model, data, batch, run(build_art_pgd(steps=10), model, data, batch, tm))
    assert abs(native - art) <= 0.1, (native, art)


def test_restarts_are_never_worse_than_one():
    data = toy_data()
    batch = test_batch(data, 32)
    model = trained(FUSED)
    tm = threat_for(data, "joint", "linf")
    one = robust_accuracy(model, data, batch, run(build_art_pgd(steps=5), model, data, batch, tm))
    three = robust_accuracy(model, data, batch, run(build_art_pgd(steps=5, restarts=3), model, data, batch, tm))
    assert three <= one
