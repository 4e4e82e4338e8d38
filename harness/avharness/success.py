"""When an attack has succeeded on a sample: the task's rule, or a multi-label rule the suite picks.

Multiclass: the attack succeeds on a sample the model got right when clean and gets wrong under
attack; samples wrong when clean are not attackable (there is nothing to flip).

Multi-label (AudioSet's 527 tags) has no single right answer to flip, and exact match of every
thresholded label is almost never right even when clean, so "correct, then wrong" says little.
A suite picks one of these rules (``eval.success``), each comparing the attacked prediction with
the clean one:

- ``any_flip``: at least one label's decision (logit above the task threshold) changed;
- ``top1``: the highest-scoring label changed;
- ``ap_drop``: the sample's average precision over labels (its true tags ranked among all 527)
  fell by more than ``eval.success_margin``; samples with no true tag have no AP and are not
  attackable.

Every sample the rule applies to is attackable, whether or not the clean prediction was right.
"""

from __future__ import annotations

import torch

from .task import Task

MULTILABEL_RULES = ("any_flip", "top1", "ap_drop")
#: what "default" means per task kind
DEFAULT_RULE = {"multiclass": "correct_to_wrong", "multilabel": "any_flip"}


def resolve_rule(task: Task, rule: str) -> str:
    """The concrete rule name for this task ("default" resolved); raises ValueError for a mismatch."""
    if rule == "default":
        return DEFAULT_RULE[task.kind]
    if task.kind == "multiclass" and rule != "correct_to_wrong":
        raise ValueError(f"success rule {rule!r} is for multi-label tasks; a multiclass task uses the default")
    if task.kind == "multilabel" and rule not in MULTILABEL_RULES:
        raise ValueError(f"success rule {rule!r} is unknown; multi-label tasks take one of {', '.join(MULTILABEL_RULES)}")
    return rule


def sample_ap(scores: torch.Tensor, target: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Per-sample average precision of ``scores`` [N, C] ranking the labels ``target`` [N, C] marks.

    Matches ``sklearn.metrics.average_precision_score(target[i], scores[i])`` including ties: a
    positive label's precision is taken at its score's threshold, so tied labels count together.
    AP is the mean of that precision over the sample's positives; NaN for a sample without one.
    """
    scores, target = scores.double(), target.bool()
    out = []
    for s in range(0, scores.shape[0], chunk):
        x, y = scores[s:s + chunk], target[s:s + chunk]
        above = x.unsqueeze(1) >= x.unsqueeze(2)  # [n, i, j]: label j scores at least label i's score
        ranked = above.sum(2).double()
        pos_ranked = (above & y.unsqueeze(1)).sum(2).double()
        precision = pos_ranked / ranked
        npos = y.sum(1).double()
        ap = (precision * y).sum(1) / npos
        out.append(torch.where(npos > 0, ap, torch.full_like(ap, float("nan"))))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def outcome(task: Task, rule: str, margin: float, clean_logits: torch.Tensor, adv_logits: torch.Tensor,
            target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(attackable, success)``: per-sample bools; ``success`` is False where not attackable."""
    rule = resolve_rule(task, rule)
    if rule == "correct_to_wrong":
        attackable = task.correct(clean_logits, target)
        return attackable, attackable & ~task.correct(adv_logits, target)
    if rule == "any_flip":
        attackable = torch.ones(len(target), dtype=torch.bool)
        success = (task.predict(clean_logits) != task.predict(adv_logits)).any(1)
    elif rule == "top1":
        attackable = torch.ones(len(target), dtype=torch.bool)
        success = clean_logits.argmax(1) != adv_logits.argmax(1)
    else:
        clean_ap, adv_ap = sample_ap(clean_logits, target), sample_ap(adv_logits, target)
        attackable = ~torch.isnan(clean_ap)
        success = attackable & (clean_ap - adv_ap > margin)
    return attackable, success & attackable
