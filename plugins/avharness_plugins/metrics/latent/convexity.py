"""Convexity of each class in a latent space: the share of same-class interpolants the scorer keeps in the class
(docs/latent_metrics.md)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from avharness import generator
from avharness_plugins.metrics.latent.common import (
    as_tensor,
    check_finite,
    check_kind,
    membership,
    nanmean,
    ranks,
    rule_names,
    sample_keys,
)


def _order_rank(lat: torch.Tensor, member: torch.Tensor, ids: Sequence | None) -> torch.Tensor:
    """Each sample's rank by the caller's ids (one per latent, unique) or, without ids, by content hash."""
    n = lat.shape[0]
    if ids is not None:
        keys = [str(i) for i in ids]
        if len(keys) != n:
            raise ValueError(f"{len(keys)} ids for {n} latents")
        if len(set(keys)) != n:
            raise ValueError("sample ids must be unique")
    else:
        keys = sample_keys(lat, member)
    return ranks(keys)


def _draw_pairs(member: torch.Tensor, rank: torch.Tensor, pairs_per_class: int, seed: int) -> list[tuple]:
    """(class, i, j, lambda) for every class with >= 2 samples: its seeded pairs, as indices into the input."""
    draws = []
    counts = member.sum(0).tolist()
    for c in range(member.shape[1]):
        if counts[c] < 2:
            continue
        members = torch.nonzero(member[:, c]).flatten()
        members = members[torch.argsort(rank[members])]  # order-free: by id / content key
        nc = members.numel()
        g = generator(seed, "convexity", c)
        i = torch.randint(0, nc, (pairs_per_class,), generator=g)
        j = torch.randint(0, nc - 1, (pairs_per_class,), generator=g)
        j = j + (j >= i).long()  # uniform over the nc - 1 samples other than i
        lam = torch.rand(pairs_per_class, generator=g, dtype=torch.float64)
        draws.append((c, members[i], members[j], lam))
    return draws


def _interpolate(lat: torch.Tensor, i: torch.Tensor, j: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """lam * lat[i] + (1 - lam) * lat[j] per pair, on the latents' device (lam in their float dtype)."""
    ii, jj = i.to(lat.device), j.to(lat.device)
    lam = lam.to(device=lat.device, dtype=lat.dtype if lat.is_floating_point() else torch.float32)
    lam = lam.view(-1, *([1] * (lat.dim() - 1)))
    return lam * lat[ii] + (1 - lam) * lat[jj]


def _score_batch(scorer, z, cc, task_kind, rules, thresholds, hit_t, n_cls) -> torch.Tensor:
    """Score one batch of interpolants of classes cc: add its hits to hit_t; return each one's probability of its class."""
    logits = scorer(z)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != cc.numel():
        raise ValueError(f"scorer must return logits of shape [B, C]; got {getattr(logits, 'shape', type(logits))}")
    if int(cc.max()) >= logits.shape[1]:
        raise ValueError(f"scorer returned {logits.shape[1]} logits; class {int(cc.max())} is scored")
    logits = logits.detach().cpu()
    rows = torch.arange(cc.numel())
    if task_kind == "multiclass":
        ok = logits.argmax(1) == cc
        hit_t["argmax"] += torch.bincount(cc[ok], minlength=n_cls)
        return torch.softmax(logits.double(), 1)[rows, cc]
    p = torch.sigmoid(logits[rows, cc].double())
    for r, t in zip(rules, thresholds):
        hit_t[r] += torch.bincount(cc[p >= t], minlength=n_cls)
    return p


def _score_pairs(lat, scorer, task_kind, rules, thresholds, draws, pairs_per_class, batch_size, n_cls):
    """Hits per rule and class ({rule: [count]}) and each class's summed probability, over all drawn pairs."""
    hits = {r: [0] * n_cls for r in rules}
    prob_sum = [0.0] * n_cls
    if not draws:
        return hits, prob_sum
    cls_all = torch.cat([torch.full((pairs_per_class,), c, dtype=torch.long) for c, *_ in draws])
    i_all, j_all, lam_all = (torch.cat([d[k] for d in draws]) for k in (1, 2, 3))
    total = cls_all.numel()
    hit_t = {r: torch.zeros(n_cls, dtype=torch.long) for r in rules}
    prob_parts = []
    for s in range(0, total, batch_size):
        e = min(s + batch_size, total)
        z = _interpolate(lat, i_all[s:e], j_all[s:e], lam_all[s:e])
        prob_parts.append(_score_batch(scorer, z, cls_all[s:e], task_kind, rules, thresholds, hit_t, n_cls))
    probs = torch.cat(prob_parts)
    # Sum each class's probabilities in pair order (not batch order): batch-size independent.
    for c, lo in zip([d[0] for d in draws], range(0, total, pairs_per_class)):
        prob_sum[c] = float(probs[lo:lo + pairs_per_class].sum())
    return {r: hit_t[r].tolist() for r in rules}, prob_sum


# Over 60 lines only by its signature (11 parameters) and docstring (the definition, 19 lines); the body is 39.
@torch.no_grad()
def convexity(
    latents,
    labels,
    scorer: Callable[[torch.Tensor], torch.Tensor],
    task_kind: str,
    pairs_per_class: int = 2000,
    thresholds: Sequence[float] = (0.1, 0.3, 0.5),
    seed: int = 0,
    batch_size: int = 1024,
    ids: Sequence | None = None,
    num_classes: int | None = None,
    return_pairs: bool = False,
) -> dict:
    """Share of same-class interpolants that the scorer still assigns to the class.

    For each class c with n_c >= 2 samples, ``pairs_per_class`` ordered pairs (i, j), i != j, are
    drawn independently and uniformly from c's samples (with replacement across pairs), each
    with its own lambda ~ U(0, 1); z = lambda * h_i + (1 - lambda) * h_j keeps the latents' shape
    and is scored by ``scorer`` (logits [B, C]) in batches of at most ``batch_size``.
    convexity_c is the share of z with argmax(logits) == c (multiclass), or with
    sigmoid(logit_c) >= tau, one value per tau in ``thresholds`` (multilabel). Classes with fewer
    than two samples get NaN. ``scorer`` must be deterministic and per-sample (a model in eval
    mode); it is called under ``torch.no_grad``.

    Returns a dict:
      ``rules``: the rule names ("argmax", or "p>=0.1", ...);
      ``per_class``: {rule: {class: share or NaN}};
      ``mean``: {rule: mean over the classes that have a value (NaN if none)};
      ``mean_prob``: {class: mean softmax (multiclass) or sigmoid (multilabel) probability of c};
      ``n_samples``, ``n_pairs``: {class: count}; ``n_classes_defined``; ``params``;
      ``pairs`` (only with ``return_pairs``): {class: (i, j, lambda)} as indices into the input.
    """
    check_kind(task_kind)
    lat = as_tensor(latents)
    n = lat.shape[0]
    check_finite(lat, "latents")
    member = membership(labels, task_kind, n, num_classes)
    n_cls = member.shape[1]
    if pairs_per_class < 1 or batch_size < 1:
        raise ValueError("pairs_per_class and batch_size must be >= 1")
    thresholds = tuple(float(t) for t in thresholds)
    rules = rule_names(task_kind, thresholds)
    rank = _order_rank(lat, member, ids)

    # Draw every class's pairs first (one stream per class), then score them in batches.
    draws = _draw_pairs(member, rank, pairs_per_class, seed)
    hits, prob_sum = _score_pairs(lat, scorer, task_kind, rules, thresholds, draws, pairs_per_class, batch_size, n_cls)

    counts = member.sum(0).tolist()
    defined = [c for c in range(n_cls) if counts[c] >= 2]
    per_class = {
        r: {c: (hits[r][c] / pairs_per_class if counts[c] >= 2 else math.nan) for c in range(n_cls)}
        for r in rules
    }
    out = {
        "task_kind": task_kind,
        "rules": rules,
        "per_class": per_class,
        "mean": {r: nanmean(per_class[r].values()) for r in rules},
        "mean_prob": {c: (prob_sum[c] / pairs_per_class if counts[c] >= 2 else math.nan) for c in range(n_cls)},
        "n_samples": {c: int(counts[c]) for c in range(n_cls)},
        "n_pairs": {c: (pairs_per_class if counts[c] >= 2 else 0) for c in range(n_cls)},
        "n_classes_defined": len(defined),
        "params": {
            "pairs_per_class": pairs_per_class, "thresholds": list(thresholds), "seed": seed,
            "pair_order_key": "ids" if ids is not None else "content_hash",
        },
    }
    if return_pairs:
        out["pairs"] = {c: (i, j, lam) for c, i, j, lam in draws}
    return out


# --------------------------------------------------------------------------------------------
# linear probe
