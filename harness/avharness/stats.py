"""Uncertainty of a report's numbers, and tests for differences between two runs on the same samples.

- **Proportions** (clean / robust accuracy, attack success rate, any share of samples): the Wilson
  score interval. Unlike the normal ("Wald") interval it stays inside [0, 1] and keeps close to
  its nominal coverage for small n and for rates near 0 or 1, which is where robust accuracies
  live (``tests/test_stats.py`` checks its coverage by simulation).
- **Other values** (mAP, mean AUC, d′): a seeded percentile bootstrap over samples (clips, for
  multi-label data). The core draws the resample indices (``resample_indices``) from the suite
  seed and the evaluated sample ids, never from the cell: every cell evaluated on the same samples
  uses the same resamples, so the difference of two cells' replicates is a paired bootstrap of
  their difference (``paired_bootstrap_p``) at no extra cost.
- **Paired comparisons** of two models (or two runs) on the same samples: the exact McNemar test
  on per-sample flags (a binomial test on the discordant pairs), the paired bootstrap for other
  values, and Holm's step-down correction when several comparisons are read together.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

#: the confidence level of every interval in a report
LEVEL = 0.95
#: resamples of the bootstrap intervals (percentile method)
BOOTSTRAP_RESAMPLES = 200
#: how the intervals are made, as report.json records it
METHODS = {
    "level": LEVEL,
    "proportions": "Wilson score interval",
    "bootstrap": f"percentile bootstrap over samples, {BOOTSTRAP_RESAMPLES} resamples; indices seeded by (suite seed, "
                 "sample ids), the same for every cell on the same samples (so paired differences are paired)",
}


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


def wilson(successes: int, n: int, level: float = LEVEL) -> list[float]:
    """The Wilson score interval ``[lo, hi]`` of a proportion ``successes / n``; ``[0, 1]`` when n = 0."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson: need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return [0.0, 1.0]
    z = _z(level)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    # exact ends where the data are at a bound (rounding could otherwise leave 1e-17 off)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return [lo, hi]


def ids_sha256(ids: Sequence[str]) -> str:
    """A hash of the evaluated sample ids, in order: what makes two runs' samples the same."""
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()


def resample_indices(seed: int, ids: Sequence[str], resamples: int = BOOTSTRAP_RESAMPLES) -> np.ndarray:
    """``[resamples, n]`` sample indices drawn with replacement, seeded by (seed, the ids).

    Keyed by the ids, not by the cell: cells on the same samples get the same resamples, which is
    what makes a difference of their bootstrap replicates a paired bootstrap.
    """
    from .seeding import derive_seed

    n = len(ids)
    rng = np.random.Generator(np.random.PCG64(derive_seed(seed, "bootstrap", ids_sha256(ids))))
    if n == 0:
        return np.zeros((resamples, 0), dtype=np.int64)
    return rng.integers(0, n, size=(resamples, n), dtype=np.int64)


def percentile_interval(replicates: Sequence[float | None], level: float = LEVEL) -> list[float] | None:
    """The percentile bootstrap interval of the finite replicates; None when fewer than half are finite."""
    r = np.asarray([np.nan if x is None else x for x in replicates], dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0 or r.size < len(replicates) / 2:
        return None
    alpha = (1 - level) / 2
    lo, hi = np.quantile(r, [alpha, 1 - alpha])
    return [float(lo), float(hi)]


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """The exact McNemar test of paired flags ``a`` vs ``b`` (same samples, same order).

    Only the discordant pairs carry information: ``a_only`` (a true, b false) and ``b_only``.
    Under the null (same rate), ``a_only`` ~ Binomial(a_only + b_only, 1/2); the two-sided p-value
    is ``min(1, 2 * P(X <= min(a_only, b_only)))``, which is scipy's ``binomtest`` for p = 1/2.
    """
    if len(a) != len(b):
        raise ValueError(f"mcnemar: {len(a)} flags against {len(b)}; the samples must be paired")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    return {"a_only": a_only, "b_only": b_only, "p_value": binomial_two_sided(a_only, a_only + b_only)}


def binomial_two_sided(k: int, n: int) -> float:
    """Two-sided p-value of k successes in n fair coin flips (exact; 1.0 for n = 0)."""
    if n == 0:
        return 1.0
    from scipy.stats import binom

    return float(min(1.0, 2 * binom.cdf(min(k, n - k), n, 0.5)))


def paired_bootstrap_p(a: Sequence[float | None], b: Sequence[float | None]) -> float | None:
    """Two-sided p-value that ``a - b`` is zero, from paired bootstrap replicates of a and b.

    ``a[i]`` and ``b[i]`` must come from the same resample i (``resample_indices``). The p-value is
    twice the smaller tail share of the replicate differences on either side of zero, with the
    usual +1 correction so it is never 0; None when fewer than half of the pairs are finite.
    """
    if len(a) != len(b):
        raise ValueError(f"paired bootstrap: {len(a)} replicates against {len(b)}")
    d = np.asarray([np.nan if x is None or y is None else x - y for x, y in zip(a, b)], dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0 or d.size < len(a) / 2:
        return None
    if np.all(d == 0):
        return 1.0
    tail = min(int((d <= 0).sum()), int((d >= 0).sum()))
    return float(min(1.0, 2 * (tail + 1) / (d.size + 1)))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order; None stays None."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    order = sorted(idx, key=lambda i: p_values[i])
    m = len(order)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
