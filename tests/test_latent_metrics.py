"""Latent-space metrics on constructed latents with known answers (avharness_plugins.metrics.latent)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avharness_plugins.metrics.latent import (
    convexity,
    density,
    fit_linear_probe,
    predicts_robustness,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def blobs(n_per=60, classes=4, dim=8, sep=10.0, std=0.5, seed=0):
    """Well-separated Gaussian classes and their nearest-class-mean linear head."""
    g = _gen(seed)
    mu = torch.zeros(classes, dim)
    mu[torch.arange(classes), torch.arange(classes)] = sep
    y = torch.arange(classes).repeat_interleave(n_per)
    x = mu[y] + std * torch.randn(len(y), dim, generator=g)

    def head(z):  # argmax = nearest class mean
        return z.reshape(len(z), -1) @ mu.t() - 0.5 * (mu * mu).sum(1)

    return x, y, head


def ring_and_blob(n=300, radius=5.0, seed=1):
    """Class 0: a blob at the origin; class 1: a ring of radius 5 around it."""
    g = _gen(seed)
    ang = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    ring = torch.stack([ang.cos(), ang.sin()], 1) * radius + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    blob = 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = torch.cat([blob, ring]).float()
    y = torch.cat([torch.zeros(n), torch.ones(n)]).long()

    def head(z):  # centre class inside radius / 2, ring class outside
        r = z.norm(dim=1)
        return torch.stack([radius / 2 - r, r - radius / 2], 1)

    return x, y, head


def same(a, b):
    """Equality of nested results, NaN equal to NaN, arrays elementwise."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=True)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


# --------------------------------------------------------------------------------------------
# convexity


def test_separated_classes_are_convex_dense_and_pure():
    x, y, head = blobs()
    conv = convexity(x, y, head, "multiclass", pairs_per_class=500)
    assert conv["rules"] == ["argmax"]
    assert all(v == 1.0 for v in conv["per_class"]["argmax"].values())
    assert conv["mean"]["argmax"] == 1.0
    assert all(v > 0.99 for v in conv["mean_prob"].values())
    assert conv["n_pairs"] == {c: 500 for c in range(4)}
    assert conv["n_samples"] == {c: 60 for c in range(4)}

    dens = density(x, y, "multiclass", k=10)
    for metric in ("knn_purity", "margin_share_gt1"):
        assert all(v == 1.0 for v in dens["per_class"][metric].values())
        assert dens["overall"][metric] == 1.0
        assert dens["mean"][metric] == 1.0
    assert all(v > 3 for v in dens["per_class"]["margin_ratio_median"].values())


def test_ring_class_is_less_convex_than_the_blob_it_surrounds():
    x, y, head = ring_and_blob()
    conv = convexity(x, y, head, "multiclass", pairs_per_class=4000)
    blob_c, ring_c = conv["per_class"]["argmax"][0], conv["per_class"]["argmax"][1]
    assert blob_c == 1.0
    # Geometry: z = l a + (1 - l) b with a, b on the circle of radius R at angle t apart has
    # |z|^2 = R^2 (1 - 2 l (1 - l) (1 - cos t)); it falls into the centre when |z| < R / 2.
    rng = np.random.default_rng(0)
    lam, t = rng.random(1_000_000), rng.random(1_000_000) * np.pi
    expected = float(np.mean(1 - 2 * lam * (1 - lam) * (1 - np.cos(t)) >= 0.25))
    assert ring_c < 0.9
    assert abs(ring_c - expected) < 0.03
    # ... while both classes are locally pure: density and convexity measure different things
    dens = density(x, y, "multiclass", k=10)
    assert dens["per_class"]["knn_purity"][1] > 0.98
    assert dens["per_class"]["margin_share_gt1"][1] > 0.98


def test_pairs_are_uniform_distinct_and_not_anchored_on_one_sample():
    g = _gen(3)
    x = torch.randn(3000, 4, generator=g)
    y = torch.zeros(3000, dtype=torch.long)
    y[:5] = 1
    res = convexity(x, y, lambda z: torch.zeros(len(z), 2), "multiclass", pairs_per_class=2000,
                    return_pairs=True)
    i, j, lam = res["pairs"][0]
    assert bool((i != j).all())
    assert len(set(i.tolist())) > 1000 and len(set(j.tolist())) > 1000  # the seed's bug: all share clip 0
    assert bool(((lam >= 0) & (lam < 1)).all()) and 0.45 < float(lam.mean()) < 0.55
    i1, j1, _ = res["pairs"][1]  # a class of 5: all 20 ordered pairs occur
    assert len(set(zip(i1.tolist(), j1.tolist()))) == 20
    assert set(i1.tolist()) <= set(range(5)) and bool((i1 != j1).all())


def test_convexity_is_independent_of_sample_order_and_batch_size():
    x, y, head = blobs(n_per=40, std=4.0)  # overlapping: shares well below 1
    ids = [f"clip{i:04d}" for i in range(len(y))]
    base = convexity(x, y, head, "multiclass", pairs_per_class=300, ids=ids, return_pairs=True)
    assert 0.3 < base["mean"]["argmax"] < 0.99
    perm = torch.randperm(len(y), generator=_gen(5))
    ids_p = [ids[i] for i in perm.tolist()]
    for batch in (1, 37, 4096):
        res = convexity(x[perm], y[perm], head, "multiclass", pairs_per_class=300, ids=ids_p,
                        batch_size=batch, return_pairs=True)
        assert res["per_class"] == base["per_class"]
        for c in range(4):
            assert np.allclose(res["mean_prob"][c], base["mean_prob"][c], rtol=0, atol=1e-9)
            # the same pairs, named by id
            a, b = base["pairs"][c], res["pairs"][c]
            assert [ids[i] for i in a[0].tolist()] == [ids_p[i] for i in b[0].tolist()]
            assert [ids[i] for i in a[1].tolist()] == [ids_p[i] for i in b[1].tolist()]
            assert torch.equal(a[2], b[2])
    # without ids the content hash fixes the order: permutation-free as well
    no_ids = convexity(x, y, head, "multiclass", pairs_per_class=300)
    no_ids_p = convexity(x[perm], y[perm], head, "multiclass", pairs_per_class=300, batch_size=7)
    assert no_ids["per_class"] == no_ids_p["per_class"]
    assert no_ids["params"]["pair_order_key"] == "content_hash"
    # a different seed draws different pairs
    other = convexity(x, y, head, "multiclass", pairs_per_class=300, ids=ids, seed=1)
    assert other["per_class"] != base["per_class"]


def test_classes_with_fewer_than_two_samples_are_nan():
    x, y, head = blobs(n_per=20, classes=5)
    keep = torch.cat([torch.arange(0, 60), torch.tensor([60])])  # class 3: one sample, class 4: none
    x, y = x[keep], y[keep]
    conv = convexity(x, y, head, "multiclass", pairs_per_class=100, num_classes=5)
    pc = conv["per_class"]["argmax"]
    assert math.isnan(pc[3]) and math.isnan(pc[4]) and math.isnan(conv["mean_prob"][3])
    assert pc[0] == pc[1] == pc[2] == 1.0
    assert conv["mean"]["argmax"] == 1.0  # over the classes with a value
    assert conv["n_classes_defined"] == 3
    assert conv["n_samples"][3] == 1 and conv["n_samples"][4] == 0
    assert conv["n_pairs"][3] == 0
    dens = density(x, y, "multiclass", k=5, num_classes=5)
    for _metric, values in dens["per_class"].items():
        assert math.isnan(values[3]) and math.isnan(values[4])
        assert values[0] == values[0]  # defined
    assert dens["overall"]["knn_purity"] == 1.0  # the singleton's sample is left out


def test_multilabel_thresholds_path():
    # Class c present <=> coordinate c is 1; every same-class interpolant has z_c = 1, and the
    # scorer maps z_c = 1 to p_c = 0.2, 0.4, 0.9 for classes 0, 1, 2.
    g = _gen(7)
    n = 120
    labels = (torch.rand(n, 4, generator=g) < 0.5).float()
    labels[:, 3] = 0
    labels[0, 3] = 1  # class 3: a single sample
    x = torch.cat([labels, torch.randn(n, 3, generator=g)], 1).double()
    p = torch.tensor([0.2, 0.4, 0.9, 0.5], dtype=torch.float64)
    scale = torch.log(p / (1 - p))

    def scorer(z):
        return z[:, :4] * scale

    res = convexity(x, labels, scorer, "multilabel", pairs_per_class=200, thresholds=(0.1, 0.3, 0.5))
    assert res["rules"] == ["p>=0.1", "p>=0.3", "p>=0.5"]
    expected = {"p>=0.1": [1, 1, 1], "p>=0.3": [0, 1, 1], "p>=0.5": [0, 0, 1]}
    for rule, values in expected.items():
        for c, v in enumerate(values):
            assert res["per_class"][rule][c] == v
        assert math.isnan(res["per_class"][rule][3])
    for c in range(3):
        assert abs(res["mean_prob"][c] - float(p[c])) < 1e-9
    assert res["mean"]["p>=0.3"] == pytest.approx(2 / 3)

    # density on the same labels: purity per class is a share of neighbours having that class
    dens = density(torch.cat([labels * 4, x[:, 4:].float()], 1), labels, "multilabel", k=5)
    for c in range(3):
        assert dens["per_class"]["knn_purity"][c] > 0.8  # coordinate c separates having c
    assert math.isnan(dens["per_class"]["knn_purity"][3])


# --------------------------------------------------------------------------------------------
# density


def _messy_latents(seed=11):
    """Overlapping classes, far from the origin (float32 cancellation), with duplicate rows."""
    g = _gen(seed)
    y = torch.randint(0, 5, (400,), generator=g)
    x = 100.0 + torch.randn(400, 4, 16, generator=g) + 2.0 * torch.nn.functional.one_hot(y, 64).view(400, 4, 16)
    x[390:] = x[:10]  # exact duplicates (same class) ...
    y[390:] = y[:10]
    x[380:385] = x[200:205]  # ... and duplicates with another class
    y[380:385] = (y[200:205] + 1) % 5
    return x, y


def test_density_is_independent_of_block_size_and_sample_order():
    x, y = _messy_latents()
    base = density(x, y, "multiclass", k=7, block_size=1024, return_per_sample=True)
    assert 0.2 < base["overall"]["knn_purity"] < 0.95
    for block in (1, 13, 128):
        assert same(density(x, y, "multiclass", k=7, block_size=block, return_per_sample=True), base)
    perm = torch.randperm(len(y), generator=_gen(2))
    res = density(x[perm], y[perm], "multiclass", k=7, block_size=50, return_per_sample=True)
    for key in ("per_class", "mean", "overall", "n_samples"):
        assert same(res[key], base[key])
    # per-sample values move with their samples
    ps, bs = res["per_sample"], base["per_sample"]
    assert np.array_equal(ps["sample"], np.arange(len(y))) and np.array_equal(bs["sample"], np.arange(len(y)))
    p = perm.numpy()  # input position q of the permuted run holds original sample p[q]
    assert np.array_equal(ps["knn_purity"], bs["knn_purity"][p])
    assert np.array_equal(ps["margin_ratio"], bs["margin_ratio"][p], equal_nan=True)
    # normalised distances: independent too
    a = density(x, y, "multiclass", k=7, normalize=True, block_size=32)
    b = density(x[perm], y[perm], "multiclass", k=7, normalize=True, block_size=500)
    assert same(a["per_class"], b["per_class"])


def test_multilabel_density_is_order_and_block_free():
    g = _gen(4)
    labels = torch.rand(300, 6, generator=g) < 0.3
    x = labels.float() * 2 + torch.randn(300, 6, generator=g)
    base = density(x, labels, "multilabel", k=6, block_size=300)
    perm = torch.randperm(300, generator=g)
    res = density(x[perm], labels[perm], "multilabel", k=6, block_size=17)
    assert same(res["per_class"], base["per_class"]) and same(res["overall"], base["overall"])
    assert all(0 < v <= 1 for v in base["per_class"]["knn_purity"].values())
    # float64 latents take a float64 exact pass: also order and block free
    d64 = density(x.double(), labels, "multilabel", k=6, block_size=7)
    d64p = density(x.double()[perm], labels[perm], "multilabel", k=6, block_size=300)
    assert same(d64["per_class"], d64p["per_class"])


def test_density_matches_brute_force():
    x, y = _messy_latents(seed=12)
    k = 5
    res = density(x, y, "multiclass", k=k, return_per_sample=True)
    flat = x.reshape(len(x), -1).double()
    d = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")  # no cancellation
    d.fill_diagonal_(math.inf)
    sample = res["per_sample"]["sample"]
    for i in range(0, len(y), 7):
        row = d[i]
        same_c = y == y[i]
        nn = torch.argsort(row, stable=True)[:k]
        pos = int(np.nonzero(sample == i)[0][0])
        if float(row[nn[-1]]) < float(torch.sort(row).values[k]) - 1e-9:  # no tie at the k-th
            assert res["per_sample"]["knn_purity"][pos] == pytest.approx(float((y[nn] == y[i]).float().mean()))
        ds = float(row.masked_fill(~same_c, math.inf).min())
        do = float(row.masked_fill(same_c, math.inf).min())
        expect = do / ds if ds > 0 else (math.inf if do > 0 else math.nan)
        got = res["per_sample"]["margin_ratio"][pos]
        assert (math.isnan(got) and math.isnan(expect)) or got == pytest.approx(expect, rel=1e-5)
    # the summaries are the plain statistics of the per-sample values
    ps = res["per_sample"]
    for c in range(5):
        r = ps["margin_ratio"][ps["class"] == c]
        r = r[~np.isnan(r)]
        assert res["per_class"]["margin_ratio_median"][c] == np.median(r)
        assert res["per_class"]["margin_share_gt1"][c] == np.mean(r > 1)
        assert res["per_class"]["knn_purity"][c] == pytest.approx(ps["knn_purity"][ps["class"] == c].mean())
    r = ps["margin_ratio"][~np.isnan(ps["margin_ratio"])]
    assert res["overall"]["margin_ratio_median"] == np.median(r)
    assert res["overall"]["knn_purity"] == pytest.approx(ps["knn_purity"].mean())


def test_duplicate_conventions():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [5.0, 5.0], [5.0, 5.0], [5.0, 5.1]])
    y = torch.tensor([0, 0, 0, 1, 1, 0, 1])
    res = density(x, y, "multiclass", k=1, return_per_sample=True)
    r = dict(zip(res["per_sample"]["sample"].tolist(), res["per_sample"]["margin_ratio"].tolist()))
    assert math.isinf(r[0]) and math.isinf(r[1])  # a same-class duplicate: x / 0 = inf
    assert r[2] == pytest.approx(math.sqrt(4 ** 2 + 5 ** 2) / 1.0)
    assert math.isnan(r[3]) and math.isnan(r[4])  # duplicates in both classes: 0 / 0, left out
    assert r[5] == 0.0 and r[6] == pytest.approx(0.1 / 0.1)  # an other-class duplicate: 0 / x = 0
    assert res["per_class"]["margin_share_gt1"][1] == 0.0  # only sample 6 counts: ratio 1 is not > 1


def test_density_validates():
    x, y, _ = blobs(n_per=3, classes=2)
    with pytest.raises(ValueError):
        density(x, y, "multiclass", k=6)
    with pytest.raises(ValueError):
        density(x, y, "regression")
    bad = x.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError):
        density(bad, y, "multiclass", k=2)


# --------------------------------------------------------------------------------------------
# linear probe


def test_linear_probe_multiclass_on_flattened_latents():
    x, y, _ = blobs(n_per=50, classes=3, dim=8)
    x3 = x.view(len(x), 2, 4)  # more than one latent dim: flattened
    probe = fit_linear_probe(x3, y, "multiclass", num_classes=4)  # class 3 never seen
    assert probe.info["train_accuracy"] == 1.0 and probe.info["converged"]
    logits = probe(x3)
    assert logits.shape == (150, 4)
    assert torch.equal(logits.argmax(1), y)
    assert bool(torch.isneginf(logits[:, 3]).all())
    conv = convexity(x3, y, probe, "multiclass", pairs_per_class=300, num_classes=4)
    assert conv["mean"]["argmax"] == 1.0 and math.isnan(conv["per_class"]["argmax"][3])
    again = fit_linear_probe(x3, y, "multiclass", num_classes=4)
    assert torch.equal(again.weight, probe.weight) and torch.equal(again.bias, probe.bias)
    # half-precision latents: hashed and interpolated in their own dtype
    half = convexity(x3.bfloat16(), y, probe, "multiclass", pairs_per_class=300, num_classes=4)
    assert half["mean"]["argmax"] == 1.0


def test_linear_probe_binary_and_multilabel():
    x, y, _ = blobs(n_per=40, classes=2, dim=4)
    probe = fit_linear_probe(x, y, "multiclass")
    assert torch.equal(probe(x).argmax(1), y)

    g = _gen(9)
    labels = torch.rand(200, 3, generator=g) < 0.4
    x = labels.float() * 3 + 0.3 * torch.randn(200, 3, generator=g)
    probe = fit_linear_probe(x, labels, "multilabel")
    assert probe.info["train_accuracy"] > 0.95
    assert torch.equal(probe(x) >= 0, labels)
    again = fit_linear_probe(x, labels, "multilabel")
    assert torch.equal(again.weight, probe.weight)
    res = convexity(x, labels, probe, "multilabel", pairs_per_class=200)
    assert all(v > 0.9 for v in res["per_class"]["p>=0.5"].values())


# --------------------------------------------------------------------------------------------
# Spearman


def test_predicts_robustness():
    metric = {c: float(c) for c in range(8)}
    drop = {c: math.exp(c) for c in range(8)}  # monotone, not linear
    res = predicts_robustness(metric, drop)
    assert res["spearman_rho"] == pytest.approx(1.0) and res["n_classes"] == 8 and res["p_value"] < 1e-3
    assert predicts_robustness(metric, {c: -v for c, v in drop.items()})["spearman_rho"] == pytest.approx(-1.0)
    # undefined classes are skipped, not counted
    metric2 = {**metric, 8: math.nan, 9: 1.0}
    assert predicts_robustness(metric2, {**drop, 8: 1.0})["n_classes"] == 8
    small = predicts_robustness({0: 1.0, 1: 2.0, 2: math.nan}, {0: 1.0, 1: 3.0, 2: 4.0})
    assert small["n_classes"] == 2 and math.isnan(small["spearman_rho"]) and math.isnan(small["p_value"])
    const = predicts_robustness({c: 1.0 for c in range(5)}, {c: float(c) for c in range(5)})
    assert math.isnan(const["spearman_rho"])
