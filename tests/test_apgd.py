"""Property tests for the native AutoAttack family (apgd, fab, square) on the toy models of ``toy.py``,
as ``test_attacks.py`` does for pgd: eps = 0 is a no-op, budgets and bounds hold after clipping,
unattacked modalities are untouched, inputs are not mutated, results are reproducible and
independent of batch composition, sweeps are monotone; plus APGD's own schedule and strength.
"""

from __future__ import annotations

import pytest
import torch
from attack_properties import (  # noqa: F401 (one_thread: autouse fixture)
    EPS,
    SCOPES,
    CountingModel,
    evidence,
    one_thread,
    robust_accuracy,
    threat_for,
)
from toy import ToyModel, sample_rng, test_batch, threat, toy_data, trained

from avharness import Attack, NumericalError, UserError
from avharness.success import outcome
from avharness_plugins.attacks.apgd import build_apgd, checkpoints
from avharness_plugins.attacks.fab import build_fab
from avharness_plugins.attacks.goals import Goal
from avharness_plugins.attacks.pgd import build_pgd
from avharness_plugins.attacks.square import build_square

FUSED = ("audio", "video")
ATTACKS = {
    "apgd-ce": lambda: build_apgd("ce", steps=10),
    "apgd-dlr": lambda: build_apgd("dlr", steps=10, restarts=2),
    "apgd-t": lambda: build_apgd("dlr_targeted", steps=5, targets=2),
    "fab": lambda: build_fab(steps=5, targets=2, restarts=2),
    "square": lambda: build_square(n_queries=30),
}




def run(attack, model, data, batch, tm, seed=0):
    return attack.perturb(model, batch.inputs, batch.target, tm, data.task, sample_rng(batch, seed))










# --- parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize("build, kwargs, word", [
    (build_apgd, {"loss": "cw"}, "loss"), (build_apgd, {"steps": 0}, "steps"), (build_apgd, {"rho": 0}, "rho"),
    (build_apgd, {"targets": 0}, "targets"), (build_apgd, {"goal": "flip"}, "goal"),
    (build_apgd, {"goal": "ap_drop", "loss": "dlr_targeted"}, "ap_drop"), (build_apgd, {"margin": 2}, "margin"),
    (build_fab, {"steps": 1.5}, "steps"), (build_fab, {"eta": 3}, "eta"), (build_fab, {"goal": "ap_drop"}, "ap_drop"),
    (build_square, {"n_queries": 0}, "n_queries"), (build_square, {"p_init": 0}, "p_init"),
])
def test_bad_params_are_one_line_user_errors(build, kwargs, word):
    with pytest.raises(UserError, match=word) as info:
        build(**kwargs)
    assert "\n" not in str(info.value)


def test_registered_through_entry_points():
    from avharness.plugins import load_registry

    reg = load_registry()
    for name in ("apgd", "fab", "square", "autoattack"):
        assert name in reg.names("attack")
        assert reg.entry("attack", name).module == f"avharness_plugins.attacks.{name}"
        assert isinstance(reg.get("attack", name)(), Attack)
    assert reg.get("attack", "square")().gradient_free is True
    assert reg.get("attack", "apgd")().iterative is True


def test_checkpoints_follow_the_papers_schedule():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0 + 1e-9:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    assert [c + 1 for c in checkpoints(100)] == [round(100 * x) for x in p[1:]]
    assert checkpoints(10)[0] == 1 and all(b - a >= 1 for a, b in zip(checkpoints(10), checkpoints(10)[1:]))


# --- eps = 0, budgets, untouched modalities, no mutation ----------------------------------------


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_is_a_noop(name, norm):
    data = toy_data()
    batch = test_batch(data, 16)
    model = CountingModel(data.task, data.specs, FUSED).eval()
    CountingModel.calls = 0
    adv = run(ATTACKS[name](), model, data, batch, threat_for(data, "joint", norm, scale=0.0))
    assert CountingModel.calls == 0
    assert all(adv[m] is batch.inputs[m] or torch.equal(adv[m], batch.inputs[m]) for m in batch.inputs)


@pytest.mark.parametrize("name", ATTACKS)
def test_eps_zero_modality_in_joint_threat_is_untouched(name):
    data = toy_data()
    batch = test_batch(data, 16)
    tm = threat(data, audio=("linf", 0.0), video=("linf", 0.2))
    adv = run(ATTACKS[name](), trained(FUSED), data, batch, tm)
    assert adv["audio"] is batch.inputs["audio"]


def check_budget(adv, batch, tm):
    for m, budget in tm.budgets.items():
        x, xa = batch.inputs[m], adv[m]
        assert xa.shape == x.shape and xa.dtype == x.dtype and torch.isfinite(xa).all()
        lo, hi = budget.bounds
        assert xa.min() >= lo and xa.max() <= hi, f"{m} outside bounds {budget.bounds}"
        delta = (xa - x).flatten(1)
        if budget.norm == "linf":
            assert delta.abs().max() <= budget.eps + 1e-6, f"{m}: linf {delta.abs().max()} > {budget.eps}"
        else:
            assert (delta.norm(dim=1) <= budget.eps * (1 + 1e-5)).all(), f"{m}: l2 {delta.norm(dim=1).max()} > {budget.eps}"


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
        if m in tm.budgets:
            assert not adv[m].requires_grad
            if name != "fab":  # FAB returns the clean input of samples it could not break
                assert not torch.equal(adv[m], batch.inputs[m]), f"{m} was attacked but did not move"
        else:
            assert adv[m] is batch.inputs[m], f"unattacked {m} must be returned as is"
    assert all(p.grad is None for p in model.parameters()), "the attack accumulated parameter gradients"


@pytest.mark.parametrize("name", ATTACKS)
def test_mixed_norm_joint_threat(name):
    data = toy_data()
    batch = test_batch(data, 16)
    tm = threat(data, audio=("linf", 0.2), video=("l2", 1.5))
    if name == "fab":
        with pytest.raises(UserError, match="mixes linf and l2"):
            run(ATTACKS[name](), trained(FUSED), data, batch, tm)
        return
    check_budget(run(ATTACKS[name](), trained(FUSED), data, batch, tm), batch, tm)


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
def test_same_seed_is_bit_identical_and_robust_le_clean(name, kind):
    data = toy_data(kind)
    batch = test_batch(data, 32)
    model = trained(FUSED, kind)
    tm = threat_for(data, "joint", "linf", 0.7)
    a, b = run(ATTACKS[name](), model, data, batch, tm, 3), run(ATTACKS[name](), model, data, batch, tm, 3)
    for m in FUSED:
        assert torch.equal(a[m], b[m])
    ev = evidence(model, data, batch, a, tm)
    assert (ev.robust_correct <= ev.clean_correct).all()


@pytest.mark.parametrize("name", ["apgd-ce", "square"])
def test_different_seed_different_start(name):
    data = toy_data()
    batch = test_batch(data, 16)
    tm = threat_for(data, "joint", "linf", 0.3)
    a = run(ATTACKS[name](), trained(FUSED), data, batch, tm, 3)
    b = run(ATTACKS[name](), trained(FUSED), data, batch, tm, 4)
    assert not torch.equal(a["audio"], b["audio"])


@pytest.mark.parametrize("name", ATTACKS)
def test_independent_of_batch_composition(name):
    data = toy_data()
    full = test_batch(data)
    model = trained(FUSED)
    tm = threat_for(data, "joint", "linf", 0.75)
    attack = ATTACKS[name]()
    whole = run(attack, model, data, full, tm)
    order = [list(range(0, 24)), list(range(63, 23, -1))]
    parts = {m: torch.empty_like(x) for m, x in full.inputs.items()}
    for idx in order:
        b = type(full)({m: x[idx] for m, x in full.inputs.items()}, full.target[idx], [full.ids[i] for i in idx])
        out = run(attack, model, data, b, tm)
        for m in parts:
            parts[m][idx] = out[m]
    assert torch.equal(evidence(model, data, full, whole, tm).robust_correct,
                      evidence(model, data, full, parts, tm).robust_correct)
    for m in FUSED:
        same = (whole[m] - parts[m]).abs().flatten(1).amax(1) <= 1e-5
        assert same.float().mean() >= 0.95, f"{m}: only {same.float().mean():.2f} of samples match"


def test_nan_loss_raises_numerical_error():
    data = toy_data()
    batch = test_batch(data, 4)

    class NaNModel(ToyModel):
        def forward(self, inputs):
            return super().forward(inputs) * float("nan")

    model = NaNModel(data.task, data.specs, ("audio",)).eval()
    for attack in (build_apgd(steps=2), build_square(n_queries=2), build_fab(steps=2)):
        with pytest.raises(NumericalError, match="NaN"):
            run(attack, model, data, batch, threat(data, audio=("linf", 0.1)))


# --- strength --------------------------------------------------------------------------------

SWEEPS = {
    ("joint", "linf"): [0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5],
    ("joint", "l2"): [0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0],
    ("audio", "linf"): [0.0, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0],
}


@pytest.mark.parametrize("scope, norm", SWEEPS)
def test_apgd_sweep_is_monotone_and_at_least_pgds_strength(scope, norm):
    data = toy_data()
    batch = test_batch(data)
    model = trained(FUSED)
    ours, pgd = [], []
    for eps in SWEEPS[scope, norm]:
        tm = threat(data, **{m: (norm, eps) for m in SCOPES[scope]})
        ours.append(robust_accuracy(model, data, batch, run(build_apgd(steps=20), model, data, batch, tm), tm))
        pgd.append(robust_accuracy(model, data, batch, run(build_pgd(steps=20), model, data, batch, tm), tm))
    assert ours[0] == 1.0 and ours[-1] < 0.1
    assert all(b <= a for a, b in zip(ours, ours[1:])), ours
    assert all(a <= p + 1 / 64 for a, p in zip(ours, pgd)), (ours, pgd)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_restarts_and_targets_never_worse_per_sample(norm):
    data = toy_data()
    batch = test_batch(data)
    model = trained(FUSED)
    tm = threat_for(data, "joint", norm, 0.8)

    def wrong(attack):
        with torch.no_grad():
            return ~data.task.correct(model(run(attack, model, data, batch, tm)), batch.target)

    assert (wrong(build_apgd(steps=10, restarts=3)) >= wrong(build_apgd(steps=10))).all()
    assert (wrong(build_apgd("dlr_targeted", steps=10, targets=3)) >= wrong(build_apgd("dlr_targeted", steps=10, targets=1))).all()


def test_stats_count_passes_and_convergence():
    data = toy_data()
    batch = test_batch(data, 16)
    model = CountingModel(data.task, data.specs, FUSED).eval()
    CountingModel.calls = 0
    out = run(build_apgd(steps=8), model, data, batch, threat_for(data, "audio", "linf", 0.1))
    assert CountingModel.calls == 1 + 9  # the clean pass, the start and 8 steps
    with torch.no_grad():
        attacked = int(data.task.correct(model(batch.inputs), batch.target).sum())  # samples wrong when clean are left
    assert attacked > 0
    assert out.stats["forward_samples"] == 16 + attacked * 9 and out.stats["backward_samples"] == attacked * 9
    assert 0 <= out.stats["unbroken_loss_rising_at_end"] <= out.stats["unbroken_at_end"] <= 16


def test_step_size_halves_on_oscillation():
    """The loss peaks at x = 0 and the start lies on the ball's boundary: a fixed L-inf step of 2 eps would
    jump between the corners forever; halving at the checkpoints brings APGD close to the peak."""
    from avharness import Task

    task = Task("multiclass", ("a", "b"))

    class Bowl(ToyModel):  # CE of class 0 is log(1 + exp(-2 |x|^2)): highest at x = 0
        def forward(self, inputs):
            r = inputs["audio"].flatten(1).pow(2).sum(1)
            return torch.stack([r, -r], 1)

    data = toy_data()
    batch = test_batch(data, 4)
    x = {"audio": torch.zeros_like(batch.inputs["audio"]), "video": batch.inputs["video"]}
    model = Bowl(task, data.specs, ("audio",)).eval()
    out = build_apgd(steps=40).perturb(model, x, torch.zeros(4, dtype=torch.long), threat(data, audio=("linf", 0.1)),
                                       task, sample_rng(batch))
    assert (out["audio"].abs().flatten(1).amax(1) < 0.1 / 8).all()


# --- multi-label goals -----------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["any_flip", "top1", "ap_drop"])
def test_goal_broken_matches_the_success_rule(rule):
    data = toy_data("multilabel")
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(200, 3, generator=g) * 2
    adv = clean + torch.randn(200, 3, generator=g) * 2
    target = (torch.rand(200, 3, generator=g) < 0.4).float()
    goal = Goal(data.task, rule, 0.1, clean, target)
    _, success = outcome(data.task, rule, 0.1, clean, adv, target)
    assert torch.equal(goal.broken(adv), success)
    assert not goal.broken(clean).any()
    assert ((goal.margin(adv) <= 0) | ~success).all() or rule == "ap_drop"


@pytest.mark.parametrize("rule, scale", [("any_flip", 0.6), ("top1", 0.6), ("ap_drop", 1.5)])
def test_goal_losses_drive_their_rule(rule, scale):
    """The goal's losses (APGD-T on the closest labels / runners-up, APGD-DLR on the ranking surrogate
    for ap_drop) succeed under their rule at least as often as PGD-20 on the task's BCE."""
    data = toy_data("multilabel")
    batch = test_batch(data)
    model = trained(FUSED, "multilabel")
    tm = threat_for(data, "joint", "linf", scale)
    with torch.no_grad():
        clean = model(batch.inputs)
    goal_attack = build_apgd("dlr", steps=20, goal=rule) if rule == "ap_drop" else \
        build_apgd("dlr_targeted", steps=20, targets=3, goal=rule)
    rates = {}
    for name, attack in (("bce", build_pgd(steps=20)), ("goal", goal_attack)):
        out = run(attack, model, data, batch, tm)
        with torch.no_grad():
            adv = model(out)
        rates[name] = outcome(data.task, rule, 0.1, clean, adv, batch.target)[1].float().mean().item()
    assert rates["goal"] >= rates["bce"] and rates["goal"] > 0.2, rates


def test_ap_drop_surrogate_has_a_gradient_when_the_ranking_is_perfect():
    from avharness import Task

    task = Task("multilabel", ("a", "b", "c"))
    z = torch.tensor([[9.0, -9.0, -9.0]], requires_grad=True)
    goal = Goal(task, "ap_drop", 0.1, z.detach(), torch.tensor([[1.0, 0.0, 0.0]]))
    (g,) = torch.autograd.grad(goal.loss("dlr", z).sum(), [z])
    assert g[0, 0] < 0 and (g[0, 1:] > 0).all()
