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

    if ids is not None:
        keys = [str(i) for i in ids]
        if len(keys) != n:
            raise ValueError(f"{len(keys)} ids for {n} latents")
        if len(set(keys)) != n:
            raise ValueError("sample ids must be unique")
    else:
        keys = sample_keys(lat, member)
    rank = ranks(keys)

    # Draw every class's pairs first (one stream per class), then score them in batches.
    cls_list, i_list, j_list, lam_list = [], [], [], []
    counts = member.sum(0).tolist()
    pairs_out = {}
    for c in range(n_cls):
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
        cls_list.append(torch.full((pairs_per_class,), c, dtype=torch.long))
        i_list.append(members[i])
        j_list.append(members[j])
        lam_list.append(lam)
        if return_pairs:
            pairs_out[c] = (members[i], members[j], lam)

    hits = {r: [0] * n_cls for r in rules}
    prob_sum = [0.0] * n_cls
    if cls_list:
        cls_all, i_all, j_all, lam_all = (torch.cat(x) for x in (cls_list, i_list, j_list, lam_list))
        total = cls_all.numel()
        hit_t = {r: torch.zeros(n_cls, dtype=torch.long) for r in rules}
        prob_parts = []
        for s in range(0, total, batch_size):
            e = min(s + batch_size, total)
            ii, jj = i_all[s:e].to(lat.device), j_all[s:e].to(lat.device)
            lam = lam_all[s:e].to(device=lat.device, dtype=lat.dtype if lat.is_floating_point() else torch.float32)
            lam = lam.view(-1, *([1] * (lat.dim() - 1)))
            z = lam * lat[ii] + (1 - lam) * lat[jj]
            logits = scorer(z)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != e - s:
                raise ValueError(f"scorer must return logits of shape [B, C]; got {getattr(logits, 'shape', type(logits))}")
            cc = cls_all[s:e]
            if int(cc.max()) >= logits.shape[1]:
                raise ValueError(f"scorer returned {logits.shape[1]} logits; class {int(cc.max())} is scored")
            logits = logits.detach().cpu()
            rows = torch.arange(e - s)
            if task_kind == "multiclass":
                ok = logits.argmax(1) == cc
                hit_t["argmax"] += torch.bincount(cc[ok], minlength=n_cls)
                p = torch.softmax(logits.double(), 1)[rows, cc]
            else:
                p = torch.sigmoid(logits[rows, cc].double())
                for r, t in zip(rules, thresholds):
                    hit_t[r] += torch.bincount(cc[p >= t], minlength=n_cls)
            prob_parts.append(p)
        probs = torch.cat(prob_parts)
        # Sum each class's probabilities in pair order (not batch order): batch-size independent.
        for c, lo in zip([int(x[0]) for x in cls_list], range(0, total, pairs_per_class)):
            prob_sum[c] = float(probs[lo:lo + pairs_per_class].sum())
        hits = {r: hit_t[r].tolist() for r in rules}

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
        out["pairs"] = pairs_out
    return out


# --------------------------------------------------------------------------------------------
# linear probe
