"""Property tests for the built-in fgsm and pgd attacks on the toy models of ``toy.py``.

The properties follow CleverHans / foolbox (CleverHans v4 and foolbox test their attacks so): eps = 0 is a no-op, budgets and
bounds hold after clipping, unattacked modalities are untouched, inputs are not mutated, a sweep
is monotone, PGD is at least as strong as FGSM, an undefended model breaks at a large eps, and
results are reproducible and independent of batch composition.
"""

from __future__ import annotations

import pytest
import torch
from attack_properties import (  # noqa: F401 (one_thread: autouse fixture)
    EPS,
    FUSED,
    SCOPES,
    CountingModel,
    check_budget,
    evidence,
    one_thread,
    robust_accuracy,
    run,
    threat_for,
)
from toy import ToyModel, sample_rng, test_batch, threat, toy_data, trained

from avharness import Attack, NumericalError, SampleRNG, UserError
from avharness_plugins.attacks.pgd import build_fgsm, build_pgd, register_attacks

ATTACKS = {"fgsm": build_fgsm, "pgd": lambda: build_pgd(steps=5)}










# --- factories and registration -------------------------------------------------------------


def test_registered_and_protocol():
    names = {}
    register_attacks(register=lambda name, factory: names.__setitem__(name, factory))
    assert set(names) == {"fgsm", "pgd"}
    assert isinstance(names["pgd"](), Attack) and isinstance(names["fgsm"](), Attack)


def test_registered_through_entry_points():
    from avharness.plugins import load_registry

    reg = load_registry()
    assert {"fgsm", "pgd"} <= set(reg.names("attack"))
    assert reg.entry("attack", "pgd").module == "avharness_plugins.attacks.pgd"


@pytest.mark.parametrize(
    "kwargs, word",
    [({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"restarts": 0}, "restarts"),
     ({"step_size": 0.0}, "step_size"), ({"step_size": -1}, "step_size"), ({"random_start": "yes"}, "random_start")],
)
def test_pgd_rejects_bad_params(kwargs, word):
    with pytest.raises(UserError, match=word) as info:
        build_pgd(**kwargs)
    assert "\n" not in str(info.value)


def test_default_step_size_is_relative():
    assert build_pgd(steps=10).step_size == pytest.approx(0.25)
    assert build_pgd(steps=4, step_size=0.5).step_size == 0.5


# --- eps = 0, budgets, untouched modalities, no mutation ------------------------------------


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("scope", SCOPES)
def test_eps_zero_is_a_noop(name, norm, scope):
    data = toy_data()
    batch = test_batch(data, 16)
    model = CountingModel(data.task, data.specs, FUSED).eval()
    tm = threat_for(data, scope, norm, scale=0.0)
    CountingModel.calls = 0
    adv = run(ATTACKS[name](), model, data, batch, tm)
    assert CountingModel.calls == 0, "all eps = 0 must not run the model"
    assert set(adv) == set(batch.inputs)
    for m in batch.inputs:
        assert torch.equal(adv[m], batch.inputs[m])


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_modality_in_joint_threat_is_untouched(name, norm):
    data = toy_data()
    batch = test_batch(data, 16)
    tm = threat(data, audio=(norm, 0.0), video=(norm, EPS[norm]["video"]))
    adv = run(ATTACKS[name](), trained(FUSED), data, batch, tm)
    assert torch.equal(adv["audio"], batch.inputs["audio"])
    assert not torch.equal(adv["video"], batch.inputs["video"])


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
def test_budget_bounds_and_untouched_modalities(name, norm, scope, kind):
    data = toy_data(kind)
    batch = test_batch(data, 32)
    model = trained(FUSED, kind)
    before = {m: x.clone() for m, x in batch.inputs.items()}
    tm = threat_for(data, scope, norm)
    adv = run(ATTACKS[name](), model, data, batch, tm)
    check_budget(adv, batch, tm)
    for m in batch.inputs:
        assert torch.equal(batch.inputs[m], before[m]), f"the caller's {m} tensor was modified"
        assert not batch.inputs[m].requires_grad
        if m in tm.budgets:
            assert not torch.equal(adv[m], batch.inputs[m]), f"{m} was attacked but did not move"
            assert not adv[m].requires_grad
        else:
            assert adv[m] is batch.inputs[m], f"unattacked {m} must be returned as is"
    assert all(p.grad is None for p in model.parameters()), "the attack accumulated parameter gradients"


def test_joint_threat_steps_every_modality():
    # With no random start, a modality moves only if the attack stepped it.
    data = toy_data()
    batch = test_batch(data, 16)
    tm = threat(data, audio=("linf", 0.05), video=("l2", 0.5))
    adv = run(build_pgd(steps=3, random_start=False), trained(FUSED), data, batch, tm)
    for m in FUSED:
        assert ((adv[m] - batch.inputs[m]).flatten(1).abs().sum(1) > 0).all(), m


def test_threat_on_missing_modality_is_a_user_error():
    data = toy_data()
    batch = test_batch(data, 4)
    inputs = {"audio": batch.inputs["audio"]}
    with pytest.raises(UserError, match="video"):
        build_pgd().perturb(trained(("audio",)), inputs, batch.target, threat(data, video=("linf", 0.1)),
                            data.task, sample_rng(batch))


def test_modality_the_model_ignores_stays_in_budget():
    data = toy_data()
    batch = test_batch(data, 16)
    tm = threat(data, audio=("linf", 0.1), video=("linf", 0.1))
    adv = run(build_pgd(steps=3), trained(("audio",)), data, batch, tm)
    check_budget(adv, batch, tm)


def test_nan_loss_raises_numerical_error():
    data = toy_data()
    batch = test_batch(data, 4)

    class NaNModel(ToyModel):
        def forward(self, inputs):
            return super().forward(inputs) * float("nan")

    model = NaNModel(data.task, data.specs, ("audio",)).eval()
    with pytest.raises(NumericalError, match="NaN"):
        run(build_pgd(steps=2), model, data, batch, threat(data, audio=("linf", 0.1)))


# --- attack strength ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
def test_robust_never_exceeds_clean_per_sample(name, kind):
    data = toy_data(kind)
    batch = test_batch(data)
    model = trained(FUSED, kind)
    tm = threat_for(data, "joint", "linf", scale=0.7)
    ev = evidence(model, data, batch, run(ATTACKS[name](), model, data, batch, tm), tm)
    assert (ev.robust_correct <= ev.clean_correct).all()
    assert ev.robust_correct.float().mean() < ev.clean_correct.float().mean()


SWEEPS = {  # eps grids that cross the fused toy model's breaking point
    ("audio", "linf"): [0.0, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0],
    ("audio", "l2"): [0.0, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0],
    ("joint", "linf"): [0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5],
    ("joint", "l2"): [0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0],
}


@pytest.mark.parametrize("scope, norm", SWEEPS)
def test_sweep_is_monotone(scope, norm):
    sweep = SWEEPS[scope, norm]
    # Per sample, PGD at a larger eps follows a different trajectory and is not guaranteed to
    # break every sample a smaller eps broke; the aggregate is what the sweep reports and checks.
    data = toy_data()
    batch = test_batch(data)
    model = trained(FUSED)
    accs = []
    for eps in sweep:
        tm = threat(data, **{m: (norm, eps) for m in SCOPES[scope]})
        accs.append(robust_accuracy(model, data, batch, run(build_pgd(), model, data, batch, tm), tm))
    assert accs[0] == 1.0 and accs[-1] < 0.1
    assert len(set(accs)) >= 3, f"sweep too coarse to test monotonicity: {accs}"
    assert all(b <= a for a, b in zip(accs, accs[1:])), accs


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("scale", [0.5, 0.7, 1.0])
def test_pgd_at_least_as_strong_as_fgsm(norm, scale):
    data = toy_data()
    batch = test_batch(data)
    model = trained(FUSED)
    tm = threat_for(data, "joint", norm, scale)
    pgd = robust_accuracy(model, data, batch, run(build_pgd(), model, data, batch, tm), tm)
    fgsm = robust_accuracy(model, data, batch, run(build_fgsm(), model, data, batch, tm), tm)
    assert pgd <= fgsm


@pytest.mark.parametrize("mods", [("audio",), ("video",), FUSED])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
def test_undefended_model_breaks_at_large_eps(mods, norm, kind):
    data = toy_data(kind)
    batch = test_batch(data)
    model = trained(mods, kind)
    tm = threat(data, **{m: (norm, {"linf": 0.5, "l2": 6.0}[norm]) for m in mods})
    assert evidence(model, data, batch, batch.inputs, tm).clean_correct.float().mean() > 0.9
    assert robust_accuracy(model, data, batch, run(build_pgd(), model, data, batch, tm), tm) < 0.1


def test_multilabel_uses_bce_and_flips_labels():
    data = toy_data("multilabel")
    assert data.task.kind == "multilabel" and data.task.loss(torch.zeros(2, 3), torch.ones(2, 3)).shape == (2,)
    batch = test_batch(data)
    model = trained(FUSED, "multilabel")
    tm = threat_for(data, "joint", "linf", scale=0.7)
    adv = run(build_pgd(), model, data, batch, tm)
    with torch.no_grad():
        clean_loss = data.task.loss(model(batch.inputs), batch.target)
        adv_loss = data.task.loss(model(adv), batch.target)
    assert (adv_loss >= clean_loss).float().mean() > 0.9
    assert robust_accuracy(model, data, batch, adv, tm) < 0.5


# --- reproducibility ------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_same_seed_is_bit_identical(norm):
    data = toy_data()
    batch = test_batch(data, 32)
    model = trained(FUSED)
    tm = threat_for(data, "joint", norm, 0.7)
    a = run(build_pgd(restarts=2), model, data, batch, tm, seed=3)
    b = run(build_pgd(restarts=2), model, data, batch, tm, seed=3)
    c = run(build_pgd(restarts=2, steps=1), model, data, batch, tm, seed=4)
    d = run(build_pgd(restarts=2, steps=1), model, data, batch, tm, seed=3)
    for m in FUSED:
        assert torch.equal(a[m], b[m])
        assert not torch.equal(c[m], d[m]), "a different seed should give a different random start"


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
def test_independent_of_batch_composition(norm, kind):
    data = toy_data(kind)
    full = test_batch(data)
    model = trained(FUSED, kind)
    tm = threat_for(data, "joint", norm, 0.7)
    attack = build_pgd(restarts=2)
    whole = run(attack, model, data, full, tm)
    # The same samples in two batches of different sizes, the second in reverse order.
    order = [list(range(0, 24)), list(range(63, 23, -1))]
    parts = {m: torch.empty_like(x) for m, x in full.inputs.items()}
    for idx in order:
        b = type(full)({m: x[idx] for m, x in full.inputs.items()}, full.target[idx], [full.ids[i] for i in idx])
        out = run(attack, model, data, b, tm)
        for m in parts:
            parts[m][idx] = out[m]
    ev_whole = evidence(model, data, full, whole, tm)
    ev_parts = evidence(model, data, full, parts, tm)
    assert torch.equal(ev_whole.robust_correct, ev_parts.robust_correct)
    for m in FUSED:
        # Equal up to float reassociation in batched matmuls (a near-zero gradient could flip a sign).
        same = (whole[m] - parts[m]).abs().flatten(1).amax(1) <= 1e-5
        assert same.float().mean() >= 0.95, f"{m}: only {same.float().mean():.2f} of samples match"


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
def test_restarts_never_worse_per_sample(norm, kind):
    data = toy_data(kind)
    batch = test_batch(data)
    model = trained(FUSED, kind)
    tm = threat_for(data, "joint", norm, 0.6)
    outs = {r: run(build_pgd(steps=5, restarts=r), model, data, batch, tm) for r in (1, 4)}
    with torch.no_grad():
        logits = {r: model(adv) for r, adv in outs.items()}
    wrong = {r: ~data.task.correct(lg, batch.target) for r, lg in logits.items()}
    loss = {r: data.task.loss(lg, batch.target) for r, lg in logits.items()}
    assert (wrong[4] >= wrong[1]).all(), "a sample broken with 1 restart survived 4"
    same = wrong[4] == wrong[1]
    assert (loss[4][same] >= loss[1][same]).all()
    assert (wrong[4] & ~wrong[1]).any() or (loss[4] > loss[1]).any(), "extra restarts changed nothing"


def reference_pgd(model, data, batch, tm, rng, steps, step_size):
    """Textbook PGD written out (same per-sample random start), returning the final iterate."""
    clean = batch.inputs
    adv = {}
    for m, b in tm.budgets.items():
        x = clean[m]
        if b.norm == "linf":
            delta = rng.uniform(m, x.shape[1:]) * b.eps
        else:
            d = rng.normal(m, x.shape[1:])
            d = d / d.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
            r = (rng.uniform(m + "#radius", (1,)).view(-1) + 1) / 2
            delta = d * (r * b.eps).view(-1, *[1] * (x.dim() - 1))
        adv[m] = b.project(x + delta, x)
    for _ in range(steps):
        leaves = {m: a.clone().requires_grad_(True) for m, a in adv.items()}
        loss = data.task.loss(model({**clean, **leaves}), batch.target).sum()
        grads = torch.autograd.grad(loss, list(leaves.values()))
        for (m, a), g in zip(leaves.items(), grads):
            b = tm.budgets[m]
            if b.norm == "linf":
                direction = g.sign()
            else:
                direction = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (g.dim() - 1))
            adv[m] = b.project(a.detach() + step_size * b.eps * direction, clean[m])
    return {**clean, **adv}


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
def test_pgd_matches_textbook_pgd_and_keeps_broken_iterates(norm, kind):
    # Differential test against the written-out loop: every sample the textbook final iterate
    # breaks is broken; the samples no scored iterate broke come back at the textbook final iterate.
    data = toy_data(kind)
    batch = test_batch(data)
    model = trained(FUSED, kind)
    tm = threat_for(data, "joint", norm, 0.6)
    ours = run(build_pgd(steps=5), model, data, batch, tm)
    ref = reference_pgd(model, data, batch, tm, sample_rng(batch), steps=5, step_size=0.5)
    with torch.no_grad():
        wrong_ours = ~data.task.correct(model(ours), batch.target)
        wrong_ref = ~data.task.correct(model(ref), batch.target)
    assert (wrong_ours >= wrong_ref).all()
    same = torch.ones(len(batch), dtype=torch.bool)
    for m in FUSED:
        same &= (ours[m] - ref[m]).abs().flatten(1).amax(1) <= 1e-5
    assert same[~wrong_ours].all(), "unbroken samples must come back at the final iterate"


def test_sample_rng_mismatch_is_an_error():
    data = toy_data()
    batch = test_batch(data, 4)
    with pytest.raises(ValueError, match="ids"):
        build_pgd().perturb(trained(FUSED), batch.inputs, batch.target, threat(data, audio=("linf", 0.1)),
                            data.task, SampleRNG(0, "k", batch.ids[:2]))


class ScriptedModel(ToyModel):
    """Binary task whose correctness is scripted per forward call, independent of the input.

    The toy logits are scaled down and a +-5 offset on the target class decides correctness: on
    call ``flip_call`` the samples in ``flip`` are misclassified, otherwise all are correct. For two
    classes the sign of the input gradient does not depend on such offsets, so a linf trajectory is
    the same as the plain model's.
    """

    def __init__(self, task, specs, target, flip_call, flip):
        super().__init__(task, specs, ("audio",))
        self.target, self.flip_call, self.flip, self.calls = target, flip_call, flip, 0

    def forward(self, inputs):
        sign = torch.ones(len(self.target))
        if self.calls == self.flip_call:
            sign[self.flip] = -1
        self.calls += 1
        offset = torch.nn.functional.one_hot(self.target, 2).float() * 5 * sign.view(-1, 1)
        return super().forward(inputs) * 0.01 + offset


def test_pgd_returns_misclassified_iterate_else_final_one():
    from avharness import Task

    data = toy_data()
    task = Task("multiclass", ("no", "yes"))
    batch = test_batch(data, 8)
    target = batch.target % 2
    flip = torch.arange(8) % 2 == 0
    torch.manual_seed(0)
    model = ScriptedModel(task, data.specs, target, flip_call=2, flip=flip).eval()
    tm = threat(data, audio=("linf", 0.2))
    out = build_pgd(steps=5, step_size=0.3, random_start=False).perturb(
        model, batch.inputs, target, tm, task, sample_rng(batch))
    assert model.calls == 5, "one restart must cost exactly `steps` forward passes"
    # The iterates, written out on the plain (unscripted) model.
    x, budget = batch.inputs["audio"], tm.budgets["audio"]
    iterates = [x]
    for _ in range(5):
        a = iterates[-1].clone().requires_grad_(True)
        plain = ToyModel.forward(model, {"audio": a}) * 0.01 + torch.nn.functional.one_hot(target, 2) * 5.0
        (g,) = torch.autograd.grad(task.loss(plain, target).sum(), [a])
        iterates.append(budget.project(a.detach() + 0.3 * 0.2 * g.sign(), x))
    assert torch.equal(out["audio"][flip], iterates[2][flip]), "the misclassified iterate was not kept"
    assert torch.equal(out["audio"][~flip], iterates[5][~flip]), "the others must end at the final iterate"


def test_restarts_score_each_final_iterate():
    data = toy_data()
    batch = test_batch(data, 8)
    model = CountingModel(data.task, data.specs, FUSED).eval()
    CountingModel.calls = 0
    run(build_pgd(steps=4, restarts=3), model, data, batch, threat(data, audio=("linf", 0.1)))
    assert CountingModel.calls == 3 * (4 + 1)
