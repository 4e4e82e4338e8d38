"""What the AutoAttack family (``apgd``, ``fab``, ``square``, ``autoattack``) aims for: the loss it
ascends, the margin it drives below zero and when a sample counts as broken.

Multiclass: broken means misclassified (``argmax != target``); the losses are cross-entropy, DLR
(Croce & Hein 2020: ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)``, invariant to shifting and scaling
the logits) and targeted DLR (``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, APGD-T); the margin
is ``z_y - max_{j != y} z_j`` (Square's margin loss).

Multi-label: the attack cannot see the suite's ``eval.success`` rule, so it takes the rule as its
``goal`` parameter (``auto`` = ``any_flip``, the default rule) and, like the rule, compares with the
clean prediction:

- ``any_flip`` (a thresholded label decision changes): with ``s_j = +1`` for labels present in the
  clean prediction and ``-1`` otherwise and ``m_j = s_j (z_j - threshold)``, the margin is
  ``min_j m_j`` -- the label closest to its threshold -- and the loss is ``-min_j m_j``; APGD-T and
  FAB-T target the k-th closest label, loss ``-m_t``.
- ``top1`` (the top label changes): DLR with the clean top label as ``y``; targets are the clean
  runners-up, as for multiclass.
- ``ap_drop`` (the sample's AP falls by more than ``margin``): a smooth ranking hinge,
  ``mean_{p in P, n in N} softplus(z_n - z_p)`` over the clean sample's true positive and negative
  labels, rises whenever a negative label gains on a positive one -- the only thing that lowers AP;
  softplus rather than a hard hinge so that a confident ranking still has a gradient. It has no
  single decision boundary, so targeted losses and FAB refuse it.

``loss: ce`` on a multi-label task is the task's own loss (mean BCE), as for ``pgd``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from avharness import NumericalError, UserError
from avharness.success import sample_ap

GOALS = ("auto", "any_flip", "top1", "ap_drop")
LOSSES = ("ce", "dlr", "dlr_targeted")


def check_goal(attack: str, goal, margin) -> None:
    if goal not in GOALS:
        raise UserError(f"{attack}: goal must be one of {', '.join(GOALS)} (the suite's eval.success rule for "
                        f"multi-label tasks), got {goal!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 < margin <= 1:
        raise UserError(f"{attack}: margin must be a number in (0, 1] (the AP drop of eval.success_margin), got {margin!r}")


def check_int(attack: str, name: str, value, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{attack}: {name} must be an integer >= {low}, got {value!r}")


def check_finite(attack: str, logits: torch.Tensor) -> None:
    if not bool(torch.isfinite(logits).all()):
        raise NumericalError(f"{attack}: the model's logits were NaN or inf on the clean inputs; check the model for "
                             "overflow (its logits must be finite inside the input bounds)")


def ball_budgets(attack: str, threat, inputs: dict, target: torch.Tensor, rng, why: str) -> dict:
    """The budgets of the modalities ``attack`` perturbs, in the threat's order (empty: nothing to do).

    The common start of every eps-ball attack: an unbounded budget (norm none) is refused with the
    attack's own ``why``, and the sample RNG must hold one id per sample of the batch.
    """
    attacked = threat.attacked(inputs, attack)
    if any(threat.budgets[m].norm == "none" for m in attacked):
        raise UserError(f"{attack}: threat {threat.name!r} is unbounded (norm none); {why}")
    batch = int(target.shape[0])
    if attacked and len(rng.ids) != batch:
        raise ValueError(f"{attack}: SampleRNG has {len(rng.ids)} ids for a batch of {batch}")
    return {m: threat.budgets[m] for m in attacked}


def _sorted_desc(z: torch.Tensor) -> torch.Tensor:
    return z.sort(dim=1, descending=True)[0]


def _pick(z: torch.Tensor, i: int) -> torch.Tensor:
    """The i-th largest logit per sample (clamped to the last class for tiny label sets)."""
    return _sorted_desc(z)[:, min(i, z.shape[1] - 1)]


def dlr(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    zy = z.gather(1, y[:, None])[:, 0]
    other = z.scatter(1, y[:, None], float("-inf")).amax(1)
    return -(zy - other) / (_pick(z, 0) - _pick(z, 2) + 1e-12)


def dlr_targeted(z: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    zy, zt = z.gather(1, y[:, None])[:, 0], z.gather(1, t[:, None])[:, 0]
    return -(zy - zt) / (_pick(z, 0) - (_pick(z, 2) + _pick(z, 3)) / 2 + 1e-12)


def top_margin(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    zy = z.gather(1, y[:, None])[:, 0]
    return zy - z.scatter(1, y[:, None], float("-inf")).amax(1)


class Goal:
    """The goal for one batch, fixed by the clean logits; ``subset(idx)`` for a sub-batch."""

    def __init__(self, task, goal: str, margin: float, clean_logits: torch.Tensor, target: torch.Tensor, _state=None):
        self.task, self.margin_ap = task, float(margin)
        if task.kind == "multiclass":
            self.rule = "correct"
        else:
            self.rule = "any_flip" if goal == "auto" else goal
        if _state is not None:
            self.s = _state
            return
        z = clean_logits.detach()
        s = {"target": target, "order": z.argsort(dim=1, descending=True)}
        if self.rule == "any_flip":
            pred = task.predict(z)
            s["pred"] = pred
            s["sign"] = pred.to(z.dtype) * 2 - 1
            s["closest"] = (z - task.threshold).abs().argsort(dim=1)
        elif self.rule == "top1":
            s["top"] = z.argmax(1)
        elif self.rule == "ap_drop":
            s["ap"] = sample_ap(z, target).to(z.dtype)
            pos = target.bool()
            s["pairs"] = (~pos).unsqueeze(1) & pos.unsqueeze(2)  # [B, p, n]: p positive, n negative
        self.s = s

    def subset(self, idx: torch.Tensor) -> Goal:
        return Goal(self.task, self.rule, self.margin_ap, None, None, _state={k: v[idx] for k, v in self.s.items()})

    @property
    def max_targets(self) -> int:
        c = self.s["order"].shape[1]
        return c if self.rule == "any_flip" else c - 1

    def refuse_targets(self, attack: str) -> None:
        if self.rule == "ap_drop":
            raise UserError(f"{attack}: the ap_drop goal has no single decision boundary to target; use apgd with "
                            "loss ce or dlr (the ranking surrogate) for it")

    # --- when is a sample broken, and by how much is it not --------------------------------------

    def broken(self, z: torch.Tensor) -> torch.Tensor:
        if self.rule == "correct":
            return z.argmax(1) != self.s["target"]
        if self.rule == "any_flip":
            return (self.task.predict(z) != self.s["pred"]).any(1)
        if self.rule == "top1":
            return z.argmax(1) != self.s["top"]
        ap = sample_ap(z.detach(), self.s["target"]).to(z.dtype)
        return (self.s["ap"] - ap > self.margin_ap) & ~torch.isnan(self.s["ap"])

    def margin(self, z: torch.Tensor) -> torch.Tensor:
        """Positive while the sample is not broken (Square minimises it)."""
        if self.rule == "correct":
            return top_margin(z, self.s["target"])
        if self.rule == "any_flip":
            return (self.s["sign"] * (z - self.task.threshold)).amin(1)
        if self.rule == "top1":
            return top_margin(z, self.s["top"])
        return -self._rank_hinge(z)

    def _rank_hinge(self, z: torch.Tensor) -> torch.Tensor:
        pairs = self.s["pairs"]
        gap = F.softplus(z.unsqueeze(1) - z.unsqueeze(2))  # [B, p, n]: z_n - z_p
        count = pairs.sum((1, 2)).clamp_min(1)
        return (gap * pairs).sum((1, 2)) / count

    # --- losses to ascend ------------------------------------------------------------------------

    def loss(self, name: str, z: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if name == "ce":
            if self.rule == "correct":
                return F.cross_entropy(z, self.s["target"], reduction="none")
            return self.task.loss(z, self.s["target"])
        if name == "dlr":
            if self.rule == "correct":
                return dlr(z, self.s["target"])
            if self.rule == "top1":
                return dlr(z, self.s["top"])
            if self.rule == "any_flip":
                return -self.margin(z)
            return self._rank_hinge(z)
        # targeted
        if self.rule == "correct":
            return dlr_targeted(z, self.s["target"], t)
        if self.rule == "top1":
            return dlr_targeted(z, self.s["top"], t)
        return -self.target_margin(z, t)

    def targets(self, k: int) -> torch.Tensor:
        """The k-th target (k >= 1) per sample: the k-th runner-up class, or the k-th closest label."""
        if self.rule == "any_flip":
            return self.s["closest"][:, k - 1]
        return self.s["order"][:, k]

    def target_margin(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Positive until the sample crosses the boundary towards target ``t`` (FAB-T's function)."""
        zt = z.gather(1, t[:, None])[:, 0]
        if self.rule == "any_flip":
            st = self.s["sign"].gather(1, t[:, None])[:, 0]
            return st * (zt - self.task.threshold)
        y = self.s["target"] if self.rule == "correct" else self.s["top"]
        return z.gather(1, y[:, None])[:, 0] - zt
