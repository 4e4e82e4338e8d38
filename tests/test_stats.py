"""avharness.stats: Wilson coverage by simulation, exact McNemar against scipy, Holm, paired bootstrap."""

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from avharness import Evidence, Task, stats


@pytest.mark.parametrize("n,p", [(30, 0.5), (100, 0.1), (100, 0.9), (500, 0.43), (50, 0.03)])
def test_wilson_covers_the_true_rate_95_percent_of_the_time(n, p):
    rng = np.random.default_rng(1234)
    draws = rng.binomial(n, p, size=2000)
    covered = sum(lo <= p <= hi for lo, hi in (stats.wilson(int(k), n) for k in draws))
    assert 0.93 <= covered / 2000 <= 0.97


def test_wilson_known_values_and_edges():
    lo, hi = stats.wilson(43, 100)  # textbook: 0.3373 .. 0.5279
    assert lo == pytest.approx(0.33733, abs=1e-4) and hi == pytest.approx(0.52791, abs=1e-4)
    assert stats.wilson(0, 20)[0] == 0.0 and stats.wilson(20, 20)[1] == 1.0
    assert stats.wilson(0, 0) == [0.0, 1.0]
    with pytest.raises(ValueError):
        stats.wilson(5, 3)


@pytest.mark.parametrize("a_only,b_only,both", [(8, 2, 30), (0, 0, 10), (5, 5, 0), (15, 3, 80), (1, 0, 0)])
def test_mcnemar_matches_scipy_binomtest(a_only, b_only, both):
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * 7
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * 7
    res = stats.mcnemar_exact(a, b)
    assert (res["a_only"], res["b_only"]) == (a_only, b_only)
    expected = 1.0 if a_only + b_only == 0 else binomtest(a_only, a_only + b_only, 0.5).pvalue
    assert res["p_value"] == pytest.approx(expected, rel=1e-12)


def test_holm_known_values():
    adj = stats.holm([0.01, 0.04, 0.03, None])
    assert adj[3] is None
    assert adj[:3] == pytest.approx([0.03, 0.06, 0.06])  # 3*0.01, max(2*0.03, .03), max(1*0.04, .06)
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_paired_bootstrap_p():
    rng = np.random.default_rng(0)
    base = rng.normal(size=200)
    assert stats.paired_bootstrap_p(base + 1.0, base) < 0.01  # a shift far beyond the noise
    assert stats.paired_bootstrap_p(base, base) == 1.0
    assert stats.paired_bootstrap_p(base + rng.normal(0, 0.1, 200), base) > 0.05
    assert stats.paired_bootstrap_p([None] * 200, base) is None


def test_resamples_are_seeded_by_the_ids_not_the_cell():
    ids = [f"s{i}" for i in range(50)]
    a = stats.resample_indices(0, ids)
    assert a.shape == (stats.BOOTSTRAP_RESAMPLES, 50)
    assert np.array_equal(a, stats.resample_indices(0, list(ids)))
    assert not np.array_equal(a, stats.resample_indices(1, ids))
    assert not np.array_equal(a, stats.resample_indices(0, ids[::-1]))


def test_tagging_bootstrap_equals_recomputing_on_duplicated_rows():
    from avharness_plugins.metrics.tagging import Tagging

    g = torch.Generator().manual_seed(0)
    n, c = 60, 5
    target = (torch.rand(n, c, generator=g) < 0.3).float()
    clean = torch.randn(n, c, generator=g) + 2 * target
    clean[:20] = clean[:20].round()  # ties
    adv = clean - target
    task = Task("multilabel", tuple(f"c{i}" for i in range(c)))
    ids = [str(i) for i in range(n)]
    idx = stats.resample_indices(0, ids, resamples=5)
    for mode in ("sklearn", "gas_eval"):
        m = Tagging(mode)
        reps = m.bootstrap(Evidence(task=task, ids=ids, target=target, clean_logits=clean, adv_logits=adv, threat=None), idx)
        for j, rows in enumerate(idx):
            r = torch.as_tensor(rows)
            direct = Tagging(mode).compute(Evidence(task=task, ids=[ids[i] for i in rows], target=target[r],
                                                    clean_logits=clean[r], adv_logits=adv[r], threat=None))
            for k in ("clean_map", "robust_map", "robust_mauc", "dprime_drop"):
                assert reps[k][j] == pytest.approx(direct[k], abs=1e-5), (mode, k, j)
