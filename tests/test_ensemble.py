"""The worst-case ensemble: each stage attacks only still-robust samples; never weaker than a stage."""

import pytest
import torch
from toy import sample_rng, test_batch, threat, toy_data, trained

from avharness import AttackOutput, UserError
from avharness_plugins.attacks.ensemble import build_ensemble
from avharness_plugins.attacks.pgd import build_fgsm, build_pgd


def robust_flags(model, inputs, target, task):
    with torch.no_grad():
        return task.correct(model(inputs), target)


@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
@pytest.mark.parametrize("scope", [{"audio": ("linf", 0.3)}, {"video": ("l2", 1.0)},
                                   {"audio": ("linf", 0.3), "video": ("linf", 0.1)}])
def test_cascade_is_at_least_as_strong_as_each_stage(kind, scope):
    data = toy_data(kind)
    model = trained(kind=kind)
    batch = test_batch(data)
    t = threat(data, **scope)
    clean = {k: v.clone() for k, v in batch.inputs.items()}
    ens = build_ensemble([{"plugin": "fgsm"}, {"plugin": "pgd", "steps": 5}])
    out = ens.perturb(model, batch.inputs, batch.target, t, data.task, sample_rng(batch))
    assert isinstance(out, AttackOutput)
    adv = out.inputs
    for m, x in batch.inputs.items():
        assert torch.equal(x, clean[m])  # inputs not mutated
        if m not in t.budgets:
            assert adv[m] is x
        else:
            b = t.budgets[m]
            d = (adv[m] - x).flatten(1)
            size = d.abs().amax(1) if b.norm == "linf" else d.norm(dim=1)
            assert (size <= b.eps * (1 + 1e-5) + 1e-6).all()
            assert adv[m].min() >= b.bounds[0] and adv[m].max() <= b.bounds[1]
    ens_robust = robust_flags(model, adv, batch.target, data.task)
    fgsm = build_fgsm().perturb(model, batch.inputs, batch.target, t, data.task, sample_rng(batch))
    # FGSM is deterministic and per-sample, so the cascade (FGSM first) beats it sample by sample
    assert (ens_robust <= robust_flags(model, fgsm, batch.target, data.task)).all()
    pgd = build_pgd(steps=5).perturb(model, batch.inputs, batch.target, t, data.task, sample_rng(batch))
    # PGD's random starts differ inside the cascade (its own stream), so compare the totals
    assert ens_robust.sum() <= robust_flags(model, pgd, batch.target, data.task).sum()
    n_clean = int(robust_flags(model, batch.inputs, batch.target, data.task).sum())
    assert out.stats["0:fgsm/attacked"] == n_clean
    assert out.stats["1:pgd/attacked"] == out.stats["0:fgsm/robust_after"]
    assert out.stats["1:pgd/robust_after"] == int(ens_robust.sum())


def test_eps_zero_is_a_no_op():
    data = toy_data()
    batch = test_batch(data)
    out = build_ensemble(["fgsm", "pgd"]).perturb(trained(), batch.inputs, batch.target,
                                                   threat(data, audio=("linf", 0.0)), data.task, sample_rng(batch))
    assert all(out[m] is x for m, x in batch.inputs.items())


def test_same_seed_same_result():
    data = toy_data()
    batch = test_batch(data)
    t = threat(data, audio=("linf", 0.2))
    ens = build_ensemble([{"plugin": "pgd", "steps": 3}])
    a = ens.perturb(trained(), batch.inputs, batch.target, t, data.task, sample_rng(batch)).inputs
    b = ens.perturb(trained(), batch.inputs, batch.target, t, data.task, sample_rng(batch)).inputs
    assert torch.equal(a["audio"], b["audio"])


@pytest.mark.parametrize("attacks, message", [
    ([], "non-empty list"),
    ([{"plugin": "pdg"}], "did you mean 'pgd'"),
    ([{"plugin": "ensemble", "attacks": ["pgd"]}], "itself an ensemble"),
    ([{"plugin": "pgd", "steps": 0}], "steps must be an integer >= 1"),
    ([{"plugin": "pgd", "stpes": 3}], "unexpected keyword"),
])
def test_bad_parameters(attacks, message):
    with pytest.raises(UserError, match=message):
        build_ensemble(attacks)
