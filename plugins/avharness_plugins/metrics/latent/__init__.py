"""Latent-space robustness metrics: convexity, density (k-NN purity, margin ratio), linear probes.

Pure functions on tensors of latents, and two model-scope metric plugins on top of them
(``convexity``, ``density``, at the end of this module): the core runs those once per trained
model with the latents of ``AVModel.embed(inputs)[name]``, and correlates their per-class values
with each class's robust-accuracy drop (Spearman, in the report). The definitions,
and which parts follow the seed code and which are avharness's own, are in
``docs/latent_metrics.md``.

Labels. ``task_kind="multiclass"``: an integer class per sample, shape [N]. ``"multilabel"``: a
0/1 (or soft) matrix [N, C]; a sample "has" class c when its entry is >= 0.5. Class c's samples
are those that have it.

Reproducibility.
- Convexity draws its pairs from one seeded stream per class (``avharness.generator(seed,
  "convexity", c)``) over the class's samples sorted by a key that does not depend on the input
  order: the caller's sample ``ids`` when given (recommended: stable across re-extractions of the
  latents), otherwise a hash of each sample's latent bytes and labels. So the result does not
  depend on the order of the samples, nor on ``batch_size`` (the scorer is called on fixed
  interpolants; only the scorer's own floating-point batch effects could differ, which can move
  ``mean_prob`` in its last digits and a thresholded share only if an interpolant lies within
  rounding of a threshold).
- Density selects neighbours in two stages: a fast float32 matrix-product pass over row blocks
  proposes candidates (top k + ``slack`` per sample, and the nearest ``margin_candidates``
  same-class and other-class samples per sample and class); their distances are then recomputed
  directly as ||x_i - x_j|| with elementwise operations and a fixed pairwise summation, whose
  result is bitwise the same whatever the block size or the thread count; the samples are first
  put in an order defined by their content, and exact ties are broken by a content hash, so the
  input order does not matter either. The matrix product alone is not enough: a BLAS gives
  slightly different numbers for the same row in blocks of different heights, and the identity
  |a|^2 + |b|^2 - 2ab loses digits when latents sit far from the origin. The answer equals
  the exact one unless more than ``slack`` samples lie within float32 rounding of the k-th
  neighbour's distance (e.g. many exact duplicates of differing labels).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from avharness import UserError
from avharness_plugins.metrics.latent.convexity import convexity
from avharness_plugins.metrics.latent.density import density
from avharness_plugins.metrics.latent.probe import LinearProbe, fit_linear_probe

__all__ = [
    "LinearProbe", "convexity", "density", "fit_linear_probe", "predicts_robustness",
]


# does a per-class metric predict the per-class robustness drop?


def predicts_robustness(per_class_metric: dict, per_class_drop: dict) -> dict:
    """Spearman rank correlation over the classes where both values are defined (finite).

    Returns {"spearman_rho", "p_value", "n_classes"}; rho and p are NaN with fewer than three
    such classes or when either side is constant.
    """
    from scipy.stats import spearmanr

    def ok(v):
        try:
            return v is not None and math.isfinite(float(v))
        except (TypeError, ValueError):
            return False

    keys = sorted((c for c in per_class_metric if c in per_class_drop
                   and ok(per_class_metric[c]) and ok(per_class_drop[c])), key=str)
    n = len(keys)
    if n < 3:
        return {"spearman_rho": math.nan, "p_value": math.nan, "n_classes": n}
    a = np.array([float(per_class_metric[c]) for c in keys])
    b = np.array([float(per_class_drop[c]) for c in keys])
    if np.all(a == a[0]) or np.all(b == b[0]):
        return {"spearman_rho": math.nan, "p_value": math.nan, "n_classes": n}
    res = spearmanr(a, b)
    return {"spearman_rho": float(res.statistic), "p_value": float(res.pvalue), "n_classes": n}


# ------------------------------------------------------------------ metric plugins (model scope)

def _str_keys(d: dict) -> dict:
    return {str(k): (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _pick_latents(requested, available: dict, metric: str) -> list[str]:
    names = list(requested) if requested else sorted(available)
    for n in names:
        if n not in available:
            raise UserError(f"{metric}: the model has no latent {n!r}; it has: {', '.join(sorted(available))}")
    return names


class ConvexityMetric:
    """Convexity of each class in each named latent (docs/latent_metrics.md), once per trained model.

    The head latent is scored by the model's own head; any other latent by a linear probe fitted on
    the ``probe_split`` latents.
    """

    scope = "model"
    higher_is_better = {"convexity": True}

    def __init__(self, latents: list | None = None, pairs_per_class: int = 2000, thresholds: list | None = None,
                 probe_split: str = "train"):
        if isinstance(pairs_per_class, bool) or not isinstance(pairs_per_class, int) or pairs_per_class < 1:
            raise UserError(f"convexity: pairs_per_class must be an integer >= 1, got {pairs_per_class!r}")
        self.latents, self.pairs, self.probe_split = latents, pairs_per_class, probe_split
        self.thresholds = tuple(thresholds) if thresholds else (0.1, 0.3, 0.5)

    def compute_model(self, ev) -> dict:
        lat, y, ids = ev.latents(ev.eval_split)
        model, kind, k = ev.model, ev.task.kind, ev.task.num_classes
        device = next(model.parameters()).device
        out, series = {}, {}
        for name in _pick_latents(self.latents, lat, "convexity"):
            if name == model.head_latent:
                def scorer(z):
                    with torch.no_grad():
                        return model.head(z.to(device)).float().cpu()
                how = "model head"
            else:
                train, ytr, _ = ev.latents(self.probe_split)
                scorer = fit_linear_probe(train[name], ytr, kind, seed=ev.seed, num_classes=k)
                how = f"linear probe fitted on {self.probe_split}"
            res = convexity(lat[name], y, scorer, kind, pairs_per_class=self.pairs, thresholds=self.thresholds,
                            seed=ev.seed, ids=ids, num_classes=k)
            rules = list(res["per_class"])
            out[name] = {"scorer": how, "mean": res["mean"],
                         "per_class": {r: _str_keys(v) for r, v in res["per_class"].items()}}
            series[f"{name}/{rules[0]}"] = _str_keys(res["per_class"][rules[0]])
        return {"latents": out, "per_class": series,
                "params": {"pairs_per_class": self.pairs, "thresholds": list(self.thresholds), "seed": ev.seed}}


class DensityMetric:
    """k-NN purity and margin ratio of each class in each named latent (ours; docs/latent_metrics.md)."""

    scope = "model"
    higher_is_better = {"knn_purity": True, "margin_share_gt1": True, "margin_ratio_median": True}

    def __init__(self, latents: list | None = None, k: int = 10, normalize: bool = False):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UserError(f"density: k must be an integer >= 1, got {k!r}")
        self.latents, self.k, self.normalize = latents, k, normalize

    def compute_model(self, ev) -> dict:
        lat, y, _ = ev.latents(ev.eval_split)
        out, series = {}, {}
        for name in _pick_latents(self.latents, lat, "density"):
            res = density(lat[name], y, ev.task.kind, k=self.k, normalize=self.normalize, num_classes=ev.task.num_classes)
            out[name] = {"mean": res["mean"], "overall": res["overall"],
                         "per_class": {m: _str_keys(v) for m, v in res["per_class"].items()}}
            series[f"{name}/knn_purity"] = _str_keys(res["per_class"]["knn_purity"])
            series[f"{name}/margin_share_gt1"] = _str_keys(res["per_class"]["margin_share_gt1"])
        return {"latents": out, "per_class": series, "params": {"k": self.k, "normalize": self.normalize}}


def register_metrics(register):
    register("convexity", ConvexityMetric)
    register("density", DensityMetric)
