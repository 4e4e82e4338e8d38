"""Validity checks written into every report: symptoms of a robustness number that can't be trusted.

Each check has a status (pass / warn / fail), the measured value, the threshold and what it means.
``avharness run --strict`` exits non-zero when any check fails, for CI.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import torch

from ..contracts import AttackStats

if TYPE_CHECKING:
    from ..data import Batch
    from ..model import AVModel
    from ..task import Task

RISING, UNBROKEN = AttackStats.UNBROKEN_RISING_AT_END, AttackStats.UNBROKEN_AT_END

#: tolerated rise of robust accuracy (share of samples) before a monotonicity check fails
SLACK_SAMPLES = 1
#: absolute slack (times max(eps, 1)) for a perturbation measured after float32 rounding of x + delta
BUDGET_SLACK = 1e-5


def check(name: str, status: str, value: float | bool | None, threshold: float | bool, doc: str,
          subject: str = "") -> dict:
    return {"name": name, "subject": subject, "status": status, "value": value, "threshold": threshold, "doc": doc}


def probe_model(model: AVModel, task: Task, batch: Batch) -> dict:
    """Two forward passes must agree; input gradients must be finite and not all zero."""
    model.eval()
    with torch.no_grad():
        a, b = model(batch.inputs), model(batch.inputs)
    drift = float((a - b).abs().max()) if a.numel() else 0.0
    leaves = {m: batch.inputs[m].detach().clone().requires_grad_(True) for m in model.modalities}
    loss = task.loss(model({**batch.inputs, **leaves}), batch.target).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    per_sample = torch.zeros(len(batch), device=loss.device)
    finite = True
    for g in grads:
        if g is not None:
            finite &= bool(torch.isfinite(g).all())
            per_sample += g.detach().flatten(1).abs().sum(1)
    return {"logit_drift": drift, "zero_gradient_share": float((per_sample == 0).float().mean()),
            "gradients_finite": finite, "n": len(batch)}


def model_checks(name: str, probe: dict) -> list[dict]:
    drift, zero = probe["logit_drift"], probe["zero_gradient_share"]
    return [
        check("deterministic_outputs", "pass" if drift <= 1e-5 else "fail", drift, 1e-5,
              "max |logit difference| between two eval-mode passes on one batch; a randomized model needs "
              "EoT-style attacks, and its robustness from a single pass is overstated", name),
        check("gradients_finite", "pass" if probe["gradients_finite"] else "fail", probe["gradients_finite"], True,
              "input gradients of the task loss are finite; NaN/inf gradients make gradient attacks fail silently", name),
        check("zero_gradient_share", "pass" if zero == 0 else ("warn" if zero < 0.5 else "fail"), zero, 0.0,
              "share of samples whose input gradient is exactly zero (gradient masking, saturated outputs or a "
              "non-differentiable step): gradient attacks cannot move those samples", name),
    ]


def _rule_based(c: dict) -> bool:
    """Whether the cell's success comes from a multi-label rule rather than correct -> wrong."""
    return c.get("success_rule") not in (None, "correct_to_wrong")


def held(c: dict) -> float:
    """The share of a cell's samples the attack did not break, as the checks compare it.

    Multiclass: robust accuracy. Multi-label: 1 - attack success rate under the suite's success
    rule (exact match of every tag, i.e. robust accuracy, is near zero for any AudioSet model even
    when clean, which would make every check below pass vacuously).
    """
    if not _rule_based(c):
        return c["robust_accuracy"]
    attackable = [x["success"] for x in c["samples"] if x["success"] is not None]
    return sum(not x for x in attackable) / len(attackable) if attackable else 1.0


def cell_checks(cells: list[dict], iterative: dict[str, bool | None],
                gradient_free: dict[str, bool] | None = None) -> list[dict]:
    """Every cell-level check, in the order report.md lists them (those without evidence are left out)."""
    by_budget = defaultdict(list)  # the cells that faced the same budget on the same model
    for c in cells:
        by_budget[(c["model"], c["defense"], c["threat"], c["step"])].append(c)
    n = max((c["n"] for c in cells), default=1)
    out = [_eps_zero_noop(cells), _budget_respected(cells), _robust_le_clean(cells), _sweep_monotone(cells, n),
           _iterative_beats_single_step(by_budget, iterative, n), _loss_converged(cells),
           _gradient_free_not_stronger(by_budget, gradient_free or {}), _gradient_free_stage_breaks(cells)]
    return [c for c in out if c is not None]


def _eps_zero_noop(cells: list[dict]) -> dict:
    """eps = 0 must change nothing."""
    zero_bad = [c["id"] for c in cells if all(e == 0 for e in c["eps"].values())
                and (c["robust_accuracy"] != c["clean_accuracy"] or (_rule_based(c) and held(c) != 1.0))]
    return check("eps_zero_noop", "pass" if not zero_bad else "fail", len(zero_bad), 0,
                 "cells at eps = 0 whose robust accuracy differs from clean accuracy or where the attack "
                 "succeeded on a sample", ", ".join(zero_bad[:5]))


def _budget_respected(cells: list[dict]) -> dict:
    """How much of its budget an attack used.

    The executor refuses any attack output outside its budget or range, so a finished report always
    passes this; the value shows how much of the budget the attacks used (1.0 = all of it). The
    slack is the executor's (float32 rounding of x + delta: an absolute 1e-5 for eps <= 1, so a small
    eps on large-valued features, e.g. 0.01 on ResNet features near 20, is not a violation).
    """
    ratios = [(a / c["eps"][m], (a - c["eps"][m]) <= BUDGET_SLACK * max(c["eps"][m], 1.0), c["id"])
              for c in cells for m, a in c.get("achieved", {}).items() if c["eps"].get(m)]
    worst = max(ratios, default=(0.0, True, ""))
    return check("budget_respected", "pass" if all(ok for _, ok, _ in ratios) else "fail", worst[0], 1.0,
                 "largest achieved perturbation / eps over every cell and modality, after clipping to the "
                 "valid range (float32 rounding allowed)", worst[2])


def _robust_le_clean(cells: list[dict]) -> dict:
    """Robust must imply clean-correct, for every sample."""
    bad = sum(1 for c in cells for s in c["samples"] if s["robust"] and not s["clean_correct"])
    return check("robust_le_clean", "pass" if bad == 0 else "fail", bad, 0,
                 "samples counted robust although misclassified when clean", "")


def _sweep_monotone(cells: list[dict], n: int) -> dict:
    """Larger budgets must not make an attack weaker (Carlini et al. 2019; Pintor et al. 2022)."""
    series = defaultdict(dict)
    for c in cells:
        series[(c["model"], c["defense"], c["attack"], c["threat"])][c["step"]] = c
    worst, where = 0.0, ""
    for key, by_step in series.items():
        steps = sorted(by_step)
        for s0, s1 in zip(steps, steps[1:]):
            rise = held(by_step[s1]) - held(by_step[s0])
            if rise > worst:
                worst, where = rise, f"{'/'.join(key)} step {s0}->{s1}"
    return check("sweep_monotone", _status(worst, n), worst, 0.0,
                 "largest rise of robust accuracy (multi-label: share of samples unbroken) from one eps to a larger one "
                 "in a sweep; a stronger budget should never help the model, so a rise means the attack did not converge",
                 where)


def _iterative_beats_single_step(by_budget: dict, iterative: dict, n: int) -> dict | None:
    """An iterative attack should be at least as strong as a single-step one at the same budget."""
    worst, where, compared = 0.0, "", 0
    for cs in by_budget.values():
        single = [held(c) for c in cs if iterative.get(c["attack"]) is False]
        multi = [c for c in cs if iterative.get(c["attack"]) is True]
        if single and multi:
            compared += 1
            for c in multi:
                gap = held(c) - min(single)
                if gap > worst:
                    worst, where = gap, f"{c['id']} vs single-step"
    if not compared:
        return None
    return check("iterative_beats_single_step", _status(worst, n), worst, 0.0,
                 "largest excess of an iterative attack's robust accuracy over a single-step attack's at "
                 "the same budget; a positive value means too few steps or a bad step size", where)


def _loss_converged(cells: list[dict]) -> dict | None:
    """Too few steps: among samples an attack did not break, the loss was still rising at its last step."""
    rising = sum(c.get("attack_stats", {}).get(RISING, 0) for c in cells)
    unbroken = sum(c.get("attack_stats", {}).get(UNBROKEN, 0) for c in cells)
    if not unbroken:
        return None
    share = rising / unbroken
    worst = max((c for c in cells if c.get("attack_stats", {}).get(UNBROKEN)),
                key=lambda c: c["attack_stats"][RISING] / c["attack_stats"][UNBROKEN])
    return check("loss_converged", "pass" if share <= 0.1 else ("warn" if share <= 0.3 else "fail"), share, 0.1,
                 "share of samples the attack did not break whose best loss still grew by more than 10% of "
                 "its total gain in the last 20% of the steps (all of them for a 1-step attack); a high "
                 "share means too few steps, so robust accuracy is overstated", worst["id"])


def _gradient_free_not_stronger(by_budget: dict, gradient_free: dict) -> dict | None:
    """A gradient-free attack beating the gradient attacks points at masked gradients (AutoAttack's flag)."""
    worst, where, compared = 0.0, "", 0
    for key, cs in by_budget.items():
        free = [held(c) for c in cs if gradient_free.get(c["attack"])]
        grad = [held(c) for c in cs if not gradient_free.get(c["attack"])]
        if free and grad:
            compared += 1
            gap = min(grad) - min(free)
            if gap > worst:
                worst, where = gap, "/".join(map(str, key))
    if not compared:
        return None
    return check("gradient_free_not_stronger", "pass" if worst <= 0.02 else "fail", worst, 0.02,
                 "largest margin by which a gradient-free attack beats every gradient attack at the same "
                 "budget; gradient attacks should win, so a margin suggests gradient masking", where)


def _gradient_free_stage_breaks(cells: list[dict]) -> dict | None:
    """Inside a cascade (autoattack): samples a gradient-free stage broke after every gradient stage failed."""
    masked = [(c["attack_stats"][AttackStats.GRADIENT_FREE_BROKE] / c["n"], c["id"]) for c in cells
              if AttackStats.GRADIENT_FREE_BROKE in c.get("attack_stats", {}) and c.get("n")]
    if not masked:
        return None
    worst = max(masked)
    return check("gradient_free_stage_breaks", "pass" if worst[0] <= 0.02 else "fail", worst[0], 0.02,
                 "largest share of a cell's samples that a cascade's gradient-free stage (Square) broke after every "
                 "gradient stage failed on them; gradient attacks should leave it nothing, so a share suggests masking",
                 worst[1])


def _status(rise: float, n: int) -> str:
    if rise <= 0:
        return "pass"
    return "warn" if rise <= SLACK_SAMPLES / n + 1e-12 else "fail"
