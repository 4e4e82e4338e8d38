"""What every attack test module shares: budgets, threat scopes, running an attack on a toy batch
and the budget/range/finite check applied to its output."""

from __future__ import annotations

import pytest
import torch
from toy import ToyModel, sample_rng, threat

from avharness import AttackOutput, Evidence

FUSED = ("audio", "video")
# Budgets large enough that clipping to the bounds is active for some coordinates.
EPS = {"linf": {"audio": 0.3, "video": 0.2}, "l2": {"audio": 3.0, "video": 2.0}}
SCOPES = {"audio": ("audio",), "video": ("video",), "joint": ("audio", "video")}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # On tensors this small, intra-op threads cost more than they save, and on a busy 2-core
    # machine their spin-waiting made an attack test module ~40x slower (95 s instead of 2.5 s).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(attack, model, data, batch, tm, seed=0):
    """The adversarial inputs of one attack call (an AttackOutput's statistics dropped)."""
    out = attack.perturb(model, batch.inputs, batch.target, tm, data.task, sample_rng(batch, seed))
    return out.inputs if isinstance(out, AttackOutput) else out


def check_budget(adv, batch, tm):
    """Every attacked modality: same shape and dtype, finite, inside its range and its eps-ball."""
    for m, budget in tm.budgets.items():
        x, xa = batch.inputs[m], adv[m]
        assert xa.shape == x.shape and xa.dtype == x.dtype
        assert torch.isfinite(xa).all()
        lo, hi = budget.bounds
        assert xa.min() >= lo and xa.max() <= hi, f"{m} outside bounds {budget.bounds}"
        delta = (xa - x).flatten(1)
        if budget.norm == "linf":
            assert delta.abs().max() <= budget.eps + 1e-6, f"{m}: linf {delta.abs().max()} > {budget.eps}"
        else:
            assert (delta.norm(dim=1) <= budget.eps * (1 + 1e-5)).all(), f"{m}: l2 {delta.norm(dim=1).max()} > {budget.eps}"


def evidence(model, data, batch, adv, tm) -> Evidence:
    with torch.no_grad():
        return Evidence(data.task, batch.ids, batch.target, model(batch.inputs), model(adv), tm)


def robust_accuracy(model, data, batch, adv, tm) -> float:
    return evidence(model, data, batch, adv, tm).robust_correct.float().mean().item()


def threat_for(data, scope, norm, scale=1.0):
    return threat(data, **{m: (norm, EPS[norm][m] * scale) for m in SCOPES[scope]})


class CountingModel(ToyModel):
    calls = 0

    def forward(self, inputs):
        type(self).calls += 1
        return super().forward(inputs)
