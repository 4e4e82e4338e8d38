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

import hashlib
import math
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from avharness import UserError, generator, hookimpl

__all__ = [
    "LinearProbe", "convexity", "density", "fit_linear_probe", "predicts_robustness",
]

KINDS = ("multiclass", "multilabel")


# --------------------------------------------------------------------------------------------
# shared helpers


def _check_kind(task_kind: str) -> None:
    if task_kind not in KINDS:
        raise ValueError(f"task_kind must be one of {KINDS}, got {task_kind!r}")


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.as_tensor(np.asarray(x))


def _membership(labels, task_kind: str, n: int, num_classes: int | None) -> torch.Tensor:
    """Bool [N, C] on the CPU: sample i has class c."""
    _check_kind(task_kind)
    lab = _as_tensor(labels).cpu()
    if lab.shape[0] != n:
        raise ValueError(f"{lab.shape[0]} labels for {n} latents")
    if task_kind == "multiclass":
        if lab.dim() != 1 or lab.is_floating_point() and not torch.equal(lab, lab.round()):
            raise ValueError("multiclass labels must be integer class indices of shape [N]")
        lab = lab.long()
        if n and int(lab.min()) < 0:
            raise ValueError("multiclass labels must be >= 0")
        c = num_classes if num_classes is not None else (int(lab.max()) + 1 if n else 0)
        if n and int(lab.max()) >= c:
            raise ValueError(f"label {int(lab.max())} out of range for {c} classes")
        m = torch.zeros(n, c, dtype=torch.bool)
        m[torch.arange(n), lab] = True
        return m
    if lab.dim() != 2:
        raise ValueError("multilabel labels must be a [N, C] 0/1 matrix")
    if num_classes is not None and lab.shape[1] != num_classes:
        raise ValueError(f"labels have {lab.shape[1]} columns, num_classes is {num_classes}")
    return lab.float() >= 0.5


def _sample_keys(lat: torch.Tensor, member: torch.Tensor) -> list[bytes]:
    """A content hash per sample (latent bytes, -0.0 folded into 0.0, and its label row)."""
    t = (lat.reshape(lat.shape[0], -1).cpu() + 0).contiguous()  # -0.0 + 0 = 0.0
    flat = t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
    lab = np.ascontiguousarray(member.numpy())
    return [hashlib.blake2b(flat[i].tobytes() + lab[i].tobytes(), digest_size=16).digest()
            for i in range(flat.shape[0])]


def _ranks(keys: Sequence) -> torch.Tensor:
    """rank[i] = position of sample i when all samples are sorted by key (ties: by index)."""
    order = sorted(range(len(keys)), key=keys.__getitem__)
    rank = torch.empty(len(keys), dtype=torch.long)
    rank[torch.tensor(order, dtype=torch.long)] = torch.arange(len(keys))
    return rank


def _check_finite(x: torch.Tensor, what: str) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contain NaN or inf")


def _nanmean(values) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(sum(v) / len(v)) if v else math.nan


# --------------------------------------------------------------------------------------------
# convexity


def _rule_names(task_kind: str, thresholds) -> list[str]:
    return ["argmax"] if task_kind == "multiclass" else [f"p>={t:g}" for t in thresholds]


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
    _check_kind(task_kind)
    lat = _as_tensor(latents)
    n = lat.shape[0]
    _check_finite(lat, "latents")
    member = _membership(labels, task_kind, n, num_classes)
    n_cls = member.shape[1]
    if pairs_per_class < 1 or batch_size < 1:
        raise ValueError("pairs_per_class and batch_size must be >= 1")
    thresholds = tuple(float(t) for t in thresholds)
    rules = _rule_names(task_kind, thresholds)

    if ids is not None:
        keys = [str(i) for i in ids]
        if len(keys) != n:
            raise ValueError(f"{len(keys)} ids for {n} latents")
        if len(set(keys)) != n:
            raise ValueError("sample ids must be unique")
    else:
        keys = _sample_keys(lat, member)
    rank = _ranks(keys)

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
        "mean": {r: _nanmean(per_class[r].values()) for r in rules},
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


class LinearProbe(nn.Module):
    """logits = flatten(x) @ weight.T + bias; standardisation is folded into weight and bias.

    Classes never seen in training (multiclass) get a zero weight row and bias -inf, so they are
    never the argmax. ``info`` holds the fit's details (solver, train accuracy, convergence).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, info: dict):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.info = info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1).to(self.weight)
        return torch.addmm(self.bias, x, self.weight.t())


def _standardise(x: np.ndarray, standardize: bool):
    if not standardize:
        return x, np.zeros(x.shape[1]), np.ones(x.shape[1])
    mu = x.mean(0)
    sd = x.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    return (x - mu) / sd, mu, sd


def fit_linear_probe(
    latents,
    labels,
    task_kind: str,
    seed: int = 0,
    num_classes: int | None = None,
    C: float = 1.0,
    max_iter: int = 500,
    standardize: bool = True,
) -> LinearProbe:
    """A linear classifier on (flattened) train-split latents, returned as a logits scorer.

    Multiclass: scikit-learn ``LogisticRegression`` (lbfgs, multinomial, L2 with inverse strength
    ``C``). Multilabel: one logistic regression per class, fitted jointly as a torch linear layer
    by full-batch L-BFGS on the summed per-class BCE plus the same L2 penalty
    (||W||^2 / (2 C N)), from zero weights and prior-logit biases. Both problems are convex and
    both solvers deterministic; ``seed`` is passed to scikit-learn for completeness. Features are
    standardised with the training mean and standard deviation (folded into the returned
    weights). Pass train-split latents; apply the scorer to evaluation latents.
    """
    _check_kind(task_kind)
    lat = _as_tensor(latents)
    n = lat.shape[0]
    _check_finite(lat, "latents")
    member = _membership(labels, task_kind, n, num_classes)
    n_cls = member.shape[1]
    x = lat.reshape(n, -1).cpu().double().numpy()
    xs, mu, sd = _standardise(x, standardize)

    if task_kind == "multiclass":
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        y = member.float().argmax(1).numpy()
        seen = np.unique(y)
        if seen.size < 2:
            raise ValueError("a multiclass probe needs at least two classes in its training latents")
        clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(xs, y)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        w = np.zeros((n_cls, xs.shape[1]))
        b = np.full(n_cls, -np.inf)
        if clf.coef_.shape[0] == 1:  # binary: logit of classes_[1] against classes_[0]
            w[clf.classes_[1]] = clf.coef_[0]
            b[clf.classes_[1]] = clf.intercept_[0]
            b[clf.classes_[0]] = 0.0
        else:
            w[clf.classes_] = clf.coef_
            b[clf.classes_] = clf.intercept_
        train_acc = float((clf.predict(xs) == y).mean())
        info = {"solver": "sklearn LogisticRegression(lbfgs)", "classes_seen": seen.tolist(),
                "n_iter": int(np.max(clf.n_iter_)), "converged": converged}
    else:
        xt = torch.from_numpy(xs).float()
        yt = member.float()
        prior = yt.mean(0).clamp(1e-4, 1 - 1e-4)
        wt = torch.zeros(n_cls, xt.shape[1], requires_grad=True)
        bt = torch.log(prior / (1 - prior)).clone().requires_grad_(True)
        l2 = 1.0 / (2.0 * C * n)
        opt = torch.optim.LBFGS([wt, bt], lr=1.0, max_iter=max_iter, history_size=20,
                                tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            logit = torch.addmm(bt, xt, wt.t())
            loss = nn.functional.binary_cross_entropy_with_logits(logit, yt, reduction="sum") / n
            loss = loss + l2 * (wt * wt).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
        w = wt.detach().double().numpy()
        b = bt.detach().double().numpy()
        with torch.no_grad():
            pred = (torch.addmm(bt, xt, wt.t()) >= 0)
        train_acc = float((pred == member).all(1).float().mean())
        info = {"solver": "torch L-BFGS, per-class logistic", "n_iter": n_iter,
                "converged": n_iter < max_iter}

    # fold the standardisation in: w.(x - mu)/sd + b = (w/sd).x + (b - (w/sd).mu)
    wf = w / sd
    with np.errstate(invalid="ignore"):
        bf = b - wf @ mu
    bf = np.where(np.isneginf(b), -np.inf, bf)
    info.update({"task_kind": task_kind, "n_train": n, "n_features": xs.shape[1],
                 "C": C, "standardize": standardize, "train_accuracy": train_acc})
    return LinearProbe(torch.from_numpy(wf).float(), torch.from_numpy(bf).float(), info)


# --------------------------------------------------------------------------------------------
# density


def _pairwise_rowsum_(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim by repeated halving, in place (x is overwritten).

    Elementwise adds only, in a fixed pattern: every row's result is bitwise independent of how
    many rows there are, of their memory layout and of the thread count.
    """
    w = x.shape[-1]
    while w > 1:
        h = w // 2
        x[..., :h].add_(x[..., h:2 * h])
        if w % 2:
            x[..., :1].add_(x[..., 2 * h:w])
        w = h
    return x[..., 0]


def _exact_sqdist(x: torch.Tensor, rows: torch.Tensor, cands: torch.Tensor, chunk_elems: int = 1 << 24) -> torch.Tensor:
    """||x[rows[p]] - x[cands[p, q]]||^2 for every (p, q), computed directly; inf where cands < 0."""
    p, k = cands.shape
    d = x.shape[1]
    out = torch.empty(p, k, dtype=x.dtype)
    step = max(1, chunk_elems // max(1, k * d))
    for s in range(0, p, step):
        e = min(s + step, p)
        diff = torch.index_select(x, 0, cands[s:e].clamp(min=0).reshape(-1)).view(e - s, k, d)
        diff.sub_(x[rows[s:e]].unsqueeze(1))
        diff.mul_(diff)
        out[s:e] = _pairwise_rowsum_(diff)
    out[cands < 0] = math.inf
    return out


def _coarse_topk(d2: torch.Tensor, kk: int, offset: int = 0) -> torch.Tensor:
    """Column indices (+ offset) of the kk smallest entries per row; -1 where the entry is inf."""
    kk = min(kk, d2.shape[1])
    if kk == 0:
        return torch.full((d2.shape[0], 0), -1, dtype=torch.long)
    v, idx = torch.topk(d2, kk, dim=1, largest=False, sorted=False)
    idx = idx + offset
    idx[torch.isinf(v)] = -1
    return idx


def _medians(sorted_cols: torch.Tensor, counts: torch.Tensor) -> list[float]:
    """Median of the first counts[c] entries of each sorted column (mean of the two middle ones
    for an even count); NaN for an empty column."""
    m = counts.long()
    lo = ((m - 1).clamp(min=0) // 2).unsqueeze(0)
    hi = (m // 2).clamp(max=max(sorted_cols.shape[0] - 1, 0)).unsqueeze(0)
    if sorted_cols.shape[0] == 0:
        return [math.nan] * len(m)
    a = sorted_cols.gather(0, lo)[0]
    b = sorted_cols.gather(0, hi)[0]
    med = torch.where(lo[0] == hi[0], a, (a + b) / 2)
    return [float(v) if int(c) else math.nan for v, c in zip(med, m)]


@torch.no_grad()
def density(
    latents,
    labels,
    task_kind: str,
    k: int = 10,
    normalize: bool = False,
    block_size: int = 1024,
    num_classes: int | None = None,
    slack: int = 5,
    margin_candidates: int = 3,
    return_per_sample: bool = False,
) -> dict:
    """k-NN purity and margin ratio per class, from exact Euclidean nearest neighbours.

    Latents are flattened to [N, D] (and L2-normalised per row when ``normalize``). A sample is
    never its own neighbour; other samples at distance 0 (duplicates) are neighbours.
    - knn_purity(i, c): the share of i's k nearest neighbours that have class c, for each class c
      of i (multiclass: i's own class). Exact distance ties are broken by a content hash.
    - margin_ratio(i, c) = d(i, nearest sample without c) / d(i, nearest other sample with c);
      > 1 means i sits inside c's region. x/0 = inf for x > 0, 0/0 = NaN (left out); with no
      sample lacking c the ratio is inf.
    Per class c (over the samples having c): mean purity, median ratio, share of ratios > 1.
    Classes with fewer than two samples get NaN and their samples are left out of the overall
    values. Memory is O(block_size * N); never N x N.

    Returns a dict:
      ``per_class``: {"knn_purity" | "margin_ratio_median" | "margin_share_gt1": {class: value}};
      ``mean``: {metric: mean over the classes that have a value} (macro);
      ``overall``: {metric: over all (sample, class) memberships of defined classes} (micro:
      mean purity, median ratio, share > 1);
      ``n_samples``: {class: count}; ``params``;
      ``per_sample`` (only with ``return_per_sample``): {"sample", "class", "knn_purity",
      "margin_ratio"} arrays over (sample, class) memberships, sample = index into the input.
    """
    _check_kind(task_kind)
    lat = _as_tensor(latents)
    n = lat.shape[0]
    if n < 2:
        raise ValueError("density needs at least two samples")
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, N - 1] = [1, {n - 1}], got {k}")
    if block_size < 1 or slack < 0 or margin_candidates < 1:
        raise ValueError("block_size and margin_candidates must be >= 1, slack >= 0")
    _check_finite(lat, "latents")
    member_in = _membership(labels, task_kind, n, num_classes)
    n_cls = member_in.shape[1]
    counts = member_in.sum(0)
    eligible = counts >= 2

    flat = lat.reshape(n, -1).cpu()
    exact_dtype = torch.float64 if flat.dtype == torch.float64 else torch.float32
    xe = flat.to(exact_dtype).contiguous()
    if normalize:
        norm = _pairwise_rowsum_(xe * xe).sqrt()
        xe = xe / torch.where(norm > 0, norm, torch.ones_like(norm)).unsqueeze(1)

    # Canonical order: by content hash (multiclass: by class first, so that each class's samples
    # are one contiguous run of columns). Everything below works in this order, which depends on
    # the samples' content only; ties between equal distances go to the lower content hash.
    rank = _ranks(_sample_keys(xe, member_in))
    if task_kind == "multiclass":
        lab_in = member_in.float().argmax(1)
        perm = torch.argsort(lab_in * n + rank)
    else:
        perm = torch.argsort(rank)
    xe = xe[perm].contiguous()
    rank = rank[perm]  # tie-break key, in the working order
    member = member_in[perm]
    member_t = member.t().contiguous()
    if task_kind == "multiclass":
        lab = lab_in[perm]
        starts = torch.zeros(n_cls + 1, dtype=torch.long)
        starts[1:] = torch.cumsum(counts, 0)

    # coarse float32 pass: centred latents, squared distances by the matrix-product identity
    xc = (xe.double() - xe.double().mean(0)).float()
    sq = (xc * xc).sum(1)
    kc = min(k + slack, n - 1)
    mc = min(margin_candidates, n - 1)

    pur_counts = torch.zeros(n, n_cls, dtype=torch.int32)  # neighbours having c among the k
    ratio = torch.full((n, n_cls), math.nan, dtype=torch.float64)
    for r0 in range(0, n, block_size):
        r1 = min(r0 + block_size, n)
        b = r1 - r0
        ar = torch.arange(b)
        rows = torch.arange(r0, r1)
        d2 = torch.mm(xc[r0:r1], xc.t()).mul_(-2).add_(sq.unsqueeze(0)).add_(sq[r0:r1].unsqueeze(1))
        d2.clamp_(min=0)
        d2[ar, rows] = math.inf  # no self-matches
        pur_cand = _coarse_topk(d2, kc)

        if task_kind == "multiclass":
            # rows of one class form runs; its columns are [starts[c], starts[c + 1])
            same_cand = torch.full((b, mc), -1, dtype=torch.long)
            other_cand = torch.full((b, mc), -1, dtype=torch.long)
            blk_lab = lab[r0:r1]
            for c in torch.unique(blk_lab).tolist():
                if not bool(eligible[c]):
                    continue
                loc = torch.nonzero(blk_lab == c).flatten()
                a, z = int(loc[0]), int(loc[-1]) + 1
                s0, s1 = int(starts[c]), int(starts[c + 1])
                sc = _coarse_topk(d2[a:z, s0:s1], mc, offset=s0)
                same_cand[a:z, :sc.shape[1]] = sc
                d2[a:z, s0:s1] = math.inf
                oc = _coarse_topk(d2[a:z], mc)
                other_cand[a:z, :oc.shape[1]] = oc
            cand = torch.cat([pur_cand, same_cand, other_cand], 1)
            de = _exact_sqdist(xe, rows, cand)
            de_pur = de[:, :kc]
            ds = de[:, kc:kc + mc].min(1).values.double().sqrt()
            do = de[:, kc + mc:].min(1).values.double().sqrt()
            ok = eligible[blk_lab]
            ratio[rows[ok], blk_lab[ok]] = do[ok] / ds[ok]  # x/0 = inf, 0/0 = NaN, inf/x = inf
        else:
            de_pur = _exact_sqdist(xe, rows, pur_cand)
            # Per (sample, class it has): the nearest samples with and without the class. They are
            # read off the row's k + slack nearest when that list holds enough of them (usually
            # the case for "without" with a rare class); the rest take a masked pass over the row
            # (at most block_size rows at a time).
            all_r, all_c = torch.nonzero(member[r0:r1] & eligible.unsqueeze(0), as_tuple=True)
            if all_r.numel():
                v, top = torch.topk(d2, kc, dim=1, largest=False, sorted=True)
                top[torch.isinf(v)] = -1
                t = top[all_r]
                has = member[t.clamp(min=0), all_c.unsqueeze(1)] & (t >= 0)
                lacks = ~has & (t >= 0)
                picks = []
                for want in (has, lacks):
                    o = torch.argsort((~want).to(torch.uint8), dim=1, stable=True)[:, :mc]
                    got = torch.where(want.gather(1, o), t.gather(1, o), -1)
                    got = torch.cat([got, torch.full((len(t), mc - got.shape[1]), -1)], 1)  # if kc < mc
                    picks.append((got, want.sum(1) >= mc))
                (same_all, same_ok), (other_all, other_ok) = picks
                for cand_all, ok_all, fill_has in ((same_all, same_ok, False), (other_all, other_ok, True)):
                    need = torch.nonzero(~ok_all).flatten()
                    for m0 in range(0, need.numel(), block_size):
                        sel = need[m0:m0 + block_size]
                        sub = d2[all_r[sel]]
                        has_c = member_t[all_c[sel]]
                        sub.masked_fill_(has_c if fill_has else ~has_c, math.inf)
                        del has_c
                        cand_all[sel] = _coarse_topk(sub, mc)
                        del sub
                de = _exact_sqdist(xe, rows[all_r], torch.cat([same_all, other_all], 1))
                ds = de[:, :mc].min(1).values.double().sqrt()
                do = de[:, mc:].min(1).values.double().sqrt()
                ratio[rows[all_r], all_c] = do / ds

        # the k nearest: by exact distance, ties to the lower content hash (class-neutral)
        o = torch.argsort(torch.where(pur_cand >= 0, rank[pur_cand.clamp(min=0)], n), dim=1, stable=True)
        pur_cand, de_pur = pur_cand.gather(1, o), de_pur.gather(1, o)
        o = torch.argsort(de_pur, dim=1, stable=True)[:, :k]
        nbrs = pur_cand.gather(1, o)
        pur_counts[r0:r1] = member[nbrs].sum(1, dtype=torch.int32)

    # back to the input order
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    pur_counts, ratio, member = pur_counts[inv], ratio[inv], member_in

    # aggregate over memberships of eligible classes: integer counts and sorts, so order-free
    sel = member & eligible.unsqueeze(0)
    ratio[~sel] = math.nan  # only memberships of eligible classes count
    n_mem = sel.sum(0).tolist()
    pur_sum = (pur_counts * sel).sum(0, dtype=torch.long).tolist()
    n_valid = (~torch.isnan(ratio)).sum(0)
    n_gt1 = (ratio > 1).sum(0).tolist()
    medians = _medians(torch.sort(ratio, dim=0).values, n_valid)  # NaN sorts last
    per_class = {"knn_purity": {}, "margin_ratio_median": {}, "margin_share_gt1": {}}
    for c in range(n_cls):
        ok = bool(eligible[c])
        nv = int(n_valid[c])
        per_class["knn_purity"][c] = pur_sum[c] / (k * n_mem[c]) if ok else math.nan
        per_class["margin_ratio_median"][c] = medians[c] if ok and nv else math.nan
        per_class["margin_share_gt1"][c] = n_gt1[c] / nv if ok and nv else math.nan
    all_r = torch.sort(ratio[sel]).values
    nv_all = int((~torch.isnan(all_r)).sum())
    tot_mem = sum(n_mem)
    overall = {
        "knn_purity": sum(pur_sum) / (k * tot_mem) if tot_mem else math.nan,
        "margin_ratio_median": _medians(all_r.unsqueeze(1), torch.tensor([nv_all]))[0] if nv_all else math.nan,
        "margin_share_gt1": sum(n_gt1) / nv_all if nv_all else math.nan,
    }
    out = {
        "task_kind": task_kind,
        "per_class": per_class,
        "mean": {m: _nanmean(v.values()) for m, v in per_class.items()},
        "overall": overall,
        "n_samples": {c: int(counts[c]) for c in range(n_cls)},
        "params": {"k": k, "normalize": normalize, "distance": "euclidean", "slack": slack,
                   "margin_candidates": margin_candidates},
    }
    if return_per_sample:
        s_idx, c_idx = torch.nonzero(sel, as_tuple=True)
        out["per_sample"] = {
            "sample": s_idx.numpy(), "class": c_idx.numpy(),
            "knn_purity": (pur_counts[s_idx, c_idx].double() / k).numpy(),
            "margin_ratio": ratio[s_idx, c_idx].numpy(),
        }
    return out


# --------------------------------------------------------------------------------------------
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


@hookimpl
def register_metrics(register):
    register("convexity", ConvexityMetric)
    register("density", DensityMetric)
