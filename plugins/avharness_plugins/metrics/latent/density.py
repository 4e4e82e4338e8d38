"""Density of each class in a latent space: exact k-NN purity and margin ratio (ours; docs/latent_metrics.md)."""

from __future__ import annotations

import math

import torch

from avharness_plugins.metrics.latent.common import (
    as_tensor,
    check_finite,
    check_kind,
    membership,
    nanmean,
    ranks,
    sample_keys,
)


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


def _check_density_args(n: int, k: int, block_size: int, slack: int, margin_candidates: int) -> None:
    """Raise ValueError for too few samples or an out-of-range k, block size, slack or candidate count."""
    if n < 2:
        raise ValueError("density needs at least two samples")
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, N - 1] = [1, {n - 1}], got {k}")
    if block_size < 1 or slack < 0 or margin_candidates < 1:
        raise ValueError("block_size and margin_candidates must be >= 1, slack >= 0")


def _exact_latents(lat: torch.Tensor, normalize: bool) -> torch.Tensor:
    """[N, D] latents on the CPU in float64 (float64 input) or float32, L2-normalised per row if asked."""
    flat = lat.reshape(lat.shape[0], -1).cpu()
    exact_dtype = torch.float64 if flat.dtype == torch.float64 else torch.float32
    xe = flat.to(exact_dtype).contiguous()
    if normalize:
        norm = _pairwise_rowsum_(xe * xe).sqrt()
        xe = xe / torch.where(norm > 0, norm, torch.ones_like(norm)).unsqueeze(1)
    return xe


def _canonical_order(xe: torch.Tensor, member_in: torch.Tensor, task_kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The working order of the samples (perm) and each sample's content-hash rank, in input order."""
    # Canonical order: by content hash (multiclass: by class first, so that each class's samples
    # are one contiguous run of columns). Everything downstream works in this order, which depends
    # on the samples' content only; ties between equal distances go to the lower content hash.
    n = xe.shape[0]
    rank = ranks(sample_keys(xe, member_in))
    if task_kind == "multiclass":
        lab_in = member_in.float().argmax(1)
        perm = torch.argsort(lab_in * n + rank)
    else:
        perm = torch.argsort(rank)
    return perm, rank


def _coarse_sqdist_block(xc: torch.Tensor, sq: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """Float32 squared distances of rows r0:r1 to every row (matrix-product identity), inf on the self-pairs."""
    rows = torch.arange(r0, r1)
    d2 = torch.mm(xc[r0:r1], xc.t()).mul_(-2).add_(sq.unsqueeze(0)).add_(sq[r0:r1].unsqueeze(1))
    d2.clamp_(min=0)
    d2[torch.arange(r1 - r0), rows] = math.inf  # no self-matches
    return d2


def _multiclass_block_ratios(d2, xe, rows, pur_cand, blk_lab, starts, eligible, mc, ratio) -> torch.Tensor:
    """Write the block's margin ratios into ``ratio`` (d2's same-class columns become inf); return exact distances to pur_cand."""
    # rows of one class form runs; its columns are [starts[c], starts[c + 1])
    b = rows.numel()
    same_cand = torch.full((b, mc), -1, dtype=torch.long)
    other_cand = torch.full((b, mc), -1, dtype=torch.long)
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
    kc = pur_cand.shape[1]
    cand = torch.cat([pur_cand, same_cand, other_cand], 1)
    de = _exact_sqdist(xe, rows, cand)
    ds = de[:, kc:kc + mc].min(1).values.double().sqrt()
    do = de[:, kc + mc:].min(1).values.double().sqrt()
    ok = eligible[blk_lab]
    ratio[rows[ok], blk_lab[ok]] = do[ok] / ds[ok]  # x/0 = inf, 0/0 = NaN, inf/x = inf
    return de[:, :kc]


def _margin_candidates_from_top(d2, member, all_r, all_c, kc, mc):
    """Per (row, class): [(up to mc with the class, complete?), (up to mc without it, complete?)] from the row's kc nearest."""
    # A list is complete when the kc nearest held at least mc such samples; it is padded with -1.
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
    return picks


def _fill_by_masked_pass(d2, all_r, all_c, member_t, cand_all, ok_all, fill_has, mc, block_size) -> None:
    """Refill incomplete candidate lists (~ok_all) by a masked pass over the whole row, block_size rows at a time."""
    # fill_has: mask out the samples having the class (the "without" list), else those lacking it
    need = torch.nonzero(~ok_all).flatten()
    for m0 in range(0, need.numel(), block_size):
        sel = need[m0:m0 + block_size]
        sub = d2[all_r[sel]]
        has_c = member_t[all_c[sel]]
        sub.masked_fill_(has_c if fill_has else ~has_c, math.inf)
        del has_c
        cand_all[sel] = _coarse_topk(sub, mc)
        del sub


def _multilabel_block_ratios(d2, xe, rows, member, member_t, eligible, kc, mc, block_size, ratio) -> None:
    """Write the margin ratios of the block's (sample, eligible class it has) pairs into ``ratio``."""
    # Per (sample, class it has): the nearest samples with and without the class. They are
    # read off the row's k + slack nearest when that list holds enough of them (usually
    # the case for "without" with a rare class); the rest take a masked pass over the row
    # (at most block_size rows at a time).
    all_r, all_c = torch.nonzero(member[rows] & eligible.unsqueeze(0), as_tuple=True)
    if not all_r.numel():
        return
    (same_all, same_ok), (other_all, other_ok) = _margin_candidates_from_top(d2, member, all_r, all_c, kc, mc)
    for cand_all, ok_all, fill_has in ((same_all, same_ok, False), (other_all, other_ok, True)):
        _fill_by_masked_pass(d2, all_r, all_c, member_t, cand_all, ok_all, fill_has, mc, block_size)
    de = _exact_sqdist(xe, rows[all_r], torch.cat([same_all, other_all], 1))
    ds = de[:, :mc].min(1).values.double().sqrt()
    do = de[:, mc:].min(1).values.double().sqrt()
    ratio[rows[all_r], all_c] = do / ds


def _knn_class_counts(pur_cand, de_pur, rank, member, k) -> torch.Tensor:
    """Per row: how many of its k nearest (exact distance, ties to the lower content hash) have each class."""
    # the k nearest: by exact distance, ties to the lower content hash (class-neutral)
    n = member.shape[0]
    o = torch.argsort(torch.where(pur_cand >= 0, rank[pur_cand.clamp(min=0)], n), dim=1, stable=True)
    pur_cand, de_pur = pur_cand.gather(1, o), de_pur.gather(1, o)
    o = torch.argsort(de_pur, dim=1, stable=True)[:, :k]
    nbrs = pur_cand.gather(1, o)
    return member[nbrs].sum(1, dtype=torch.int32)


def _neighbour_pass(xe, rank, member, counts, eligible, task_kind, k, block_size, slack, margin_candidates):
    """[N, C] counts of neighbours having c among each sample's k nearest, and [N, C] margin ratios (working order)."""
    # Row blocks of block_size: memory O(block_size * N). Ratios not computed stay NaN.
    n, n_cls = member.shape
    member_t = member.t().contiguous()
    if task_kind == "multiclass":
        lab = member.float().argmax(1)
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
        rows = torch.arange(r0, r1)
        d2 = _coarse_sqdist_block(xc, sq, r0, r1)
        pur_cand = _coarse_topk(d2, kc)
        if task_kind == "multiclass":
            de_pur = _multiclass_block_ratios(d2, xe, rows, pur_cand, lab[r0:r1], starts, eligible, mc, ratio)
        else:
            de_pur = _exact_sqdist(xe, rows, pur_cand)
            _multilabel_block_ratios(d2, xe, rows, member, member_t, eligible, kc, mc, block_size, ratio)
        pur_counts[r0:r1] = _knn_class_counts(pur_cand, de_pur, rank, member, k)
    return pur_counts, ratio


def _aggregate(pur_counts, ratio, sel, eligible, k) -> tuple[dict, dict]:
    """per_class and overall values over the memberships ``sel`` (ratio is NaN outside them)."""
    # integer counts and sorts, so order-free
    n_cls = sel.shape[1]
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
    return per_class, overall


def _per_sample_values(pur_counts, ratio, sel, k) -> dict:
    """Purity and margin ratio of every (sample, class) membership in ``sel``, as numpy arrays."""
    s_idx, c_idx = torch.nonzero(sel, as_tuple=True)
    return {
        "sample": s_idx.numpy(), "class": c_idx.numpy(),
        "knn_purity": (pur_counts[s_idx, c_idx].double() / k).numpy(),
        "margin_ratio": ratio[s_idx, c_idx].numpy(),
    }


# Over 60 lines only by its signature (10 parameters) and docstring (the definition, 22 lines); the body is 34.
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
    check_kind(task_kind)
    lat = as_tensor(latents)
    n = lat.shape[0]
    _check_density_args(n, k, block_size, slack, margin_candidates)
    check_finite(lat, "latents")
    member_in = membership(labels, task_kind, n, num_classes)
    n_cls = member_in.shape[1]
    counts = member_in.sum(0)
    eligible = counts >= 2

    xe = _exact_latents(lat, normalize)
    perm, rank = _canonical_order(xe, member_in, task_kind)
    pur_counts, ratio = _neighbour_pass(xe[perm].contiguous(), rank[perm], member_in[perm], counts, eligible,
                                        task_kind, k, block_size, slack, margin_candidates)
    # back to the input order
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    pur_counts, ratio = pur_counts[inv], ratio[inv]

    sel = member_in & eligible.unsqueeze(0)
    ratio[~sel] = math.nan  # only memberships of eligible classes count
    per_class, overall = _aggregate(pur_counts, ratio, sel, eligible, k)
    out = {
        "task_kind": task_kind,
        "per_class": per_class,
        "mean": {m: nanmean(v.values()) for m, v in per_class.items()},
        "overall": overall,
        "n_samples": {c: int(counts[c]) for c in range(n_cls)},
        "params": {"k": k, "normalize": normalize, "distance": "euclidean", "slack": slack,
                   "margin_candidates": margin_candidates},
    }
    if return_per_sample:
        out["per_sample"] = _per_sample_values(pur_counts, ratio, sel, k)
    return out


# --------------------------------------------------------------------------------------------
