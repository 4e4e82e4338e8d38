"""The plugin contracts, enforced in every run (not only by ``avharness plugin check``).

Each function checks what one plugin handed back and raises a ``PluginError`` naming the plugin,
its distribution and version, where (a cell or a training unit), what was expected and what came
back. The plan probes every model before anything is trained; the executor probes it again on its
first evaluation batch, checks every attack result, every metric value and every defense's facts.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

import torch

from .model import AVModel
from .plugins import Entry, guard

if TYPE_CHECKING:
    from .task import Task


def _shape(t) -> str:
    return "[" + ", ".join(str(int(s)) for s in t.shape) + "]"


def looks_like_probabilities(out: torch.Tensor, kind: str) -> str:
    """Why these outputs look like probabilities rather than logits, or "".

    Multiclass: every value in [0, 1] and every row summing to 1. Multi-label: every value in
    [0, 1] and some below 0.01 (most tags are absent from a clip, so sigmoid outputs sit near 0),
    judged on 64 or more values. An untrained tagger's logits can all lie in [0, 1] (attention-pooled
    log-space logits start near 0), so the value range alone would refuse valid models.
    """
    if out.numel() == 0:
        return ""
    in_unit = bool(((out >= 0) & (out <= 1)).all())
    if not in_unit:
        return ""
    if kind == "multiclass":
        if out.shape[1] > 1 and torch.allclose(out.sum(1), torch.ones(out.shape[0], dtype=out.dtype, device=out.device),
                                               atol=1e-4):
            return "every value in [0, 1] and every row summing to 1 (softmax probabilities)"
        return ""
    if out.numel() >= 64 and float(out.min()) < 0.01:
        return f"all {out.numel()} values in [0, 1], the smallest {float(out.min()):.2g} (sigmoid probabilities)"
    return ""


def probe_model(entry: Entry, model: object, task: Task, inputs: dict[str, torch.Tensor], where: str) -> None:
    """One forward pass on a real batch: an AVModel reading modalities the data has, returning finite
    logits of shape [B, num_classes] (not probabilities) without modifying its inputs."""
    if not isinstance(model, AVModel):
        raise entry.error(f"expected the factory to return an avharness.AVModel, got {type(model).__name__}", where)
    mods = tuple(getattr(model, "modalities", ()) or ())
    if not mods or not set(mods) <= set(inputs):
        raise entry.error(f"expected modalities among the data's {sorted(inputs)}, got {mods!r}", where)
    snapshot = {m: v.clone() for m, v in inputs.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), guard(entry, where, "forward"):
            out = model(inputs)
    finally:
        model.train(was_training)
    n = len(next(iter(inputs.values())))
    if not isinstance(out, torch.Tensor):
        raise entry.error(f"expected forward() to return a tensor of logits, got {type(out).__name__}", where)
    if tuple(out.shape) != (n, task.num_classes):
        raise entry.error(f"expected logits of shape [B, num_classes] = [{n}, {task.num_classes}], got {_shape(out)}",
                          where)
    if not bool(torch.isfinite(out).all()):
        raise entry.error("expected finite logits, got NaN or inf on the first batch", where)
    why = looks_like_probabilities(out.detach().float(), task.kind)
    if why:
        raise entry.error(f"expected raw logits (the harness applies softmax/sigmoid itself), got probabilities: {why}",
                          where)
    changed = [m for m in inputs if not torch.equal(inputs[m], snapshot[m])]
    if changed:
        raise entry.error(f"expected forward() to leave its inputs alone, but it modified {', '.join(changed)} in place",
                          where)


def check_directions(entry: Entry, metric: object, where: str = "") -> dict[str, bool]:
    """A metric declares ``higher_is_better``: a non-empty mapping of value name -> true/false."""
    d = getattr(metric, "higher_is_better", None)
    if not isinstance(d, dict) or not d or not all(isinstance(k, str) and isinstance(v, bool) for k, v in d.items()):
        raise entry.error(f"expected higher_is_better, a mapping of value name -> true/false, got {d!r}", where)
    return dict(d)


def metric_values(entry: Entry, out: object, directions: dict[str, bool], where: str) -> dict[str, float]:
    """What ``compute`` returned, as floats: each a finite number or null/NaN, each with a direction."""
    if not isinstance(out, dict):
        raise entry.error(f"expected compute() to return a mapping of value name -> number, got {type(out).__name__}",
                          where)
    values = {}
    for k, v in out.items():
        if k not in directions:
            raise entry.error(f"expected every value to have a direction in higher_is_better, but {k!r} has none "
                              f"(it declares {sorted(directions)})", where)
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if v is None:
            values[k] = math.nan
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise entry.error(f"expected value {k!r} to be a number or null, got {type(v).__name__} {v!r:.60}", where)
        f = float(v)
        if math.isinf(f):
            raise entry.error(f"expected value {k!r} to be finite (or null/NaN when undefined), got {f}", where)
        values[k] = f
    return values


def fit_facts(entry: Entry, facts: object, where: str) -> dict:
    """What ``fit`` returned: a mapping with ``backward_samples`` (a count >= 0, the cost the findings
    compare defenses by); ``wall_s`` is measured by the harness when absent."""
    if facts is None:
        facts = {}
    if not isinstance(facts, dict):
        raise entry.error(f"expected fit() to return a mapping of training facts, got {type(facts).__name__}", where)
    b = facts.get("backward_samples")
    if isinstance(b, bool) or not isinstance(b, numbers.Real) or not math.isfinite(float(b)) or b < 0:
        raise entry.error("expected fit() to return 'backward_samples' (samples back-propagated through the model, "
                          f"a count >= 0; 0 when it does not train), got {b!r}", where)
    w = facts.get("wall_s")
    if w is not None and (isinstance(w, bool) or not isinstance(w, numbers.Real) or not w >= 0):
        raise entry.error(f"expected 'wall_s' to be seconds >= 0 (or absent), got {w!r}", where)
    return dict(facts)
