"""Speed of the density metric (k-NN purity + margin ratio) on 20,000 latents of width 1,024.

    python benchmarks/bench_density.py [--n 20000] [--dim 1024] [--classes 10] [--k 10]
                                       [--block 1024] [--baselines naive,sklearn] [--threads 2]

Latents are standard normal, labels uniform over the classes (seeded). Timed:

- ``density``: avharness_plugins.metrics.latent.density, the full computation (purity and margin
  ratio, per class and overall): float32 matrix-product candidates per row block, then exact
  direct distances for the candidates (bitwise independent of block size and sample order).
- ``naive``: the same two quantities the plain way, in the same run: torch float32
  matrix-product distances per row block, topk for the k neighbours, masked mins for the nearest
  same- and other-class sample, no candidate re-check, no tie rule. It answers the same question
  (the check at the end prints how many samples' purities differ) but its numbers can change in
  the last digits with the block size.
- ``sklearn``: scikit-learn ``NearestNeighbors(algorithm="brute").kneighbors`` for the k
  neighbours only (no margin ratio), a lower bound on what a scikit-learn version would take.

Each is run once (they take seconds each; the machine is shared, so expect some noise).
Ratio = baseline time / density time (> 1: density is faster). Target: density <= 30 s.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from avharness_plugins.metrics.latent import density


def naive_density(x: torch.Tensor, y: torch.Tensor, k: int, block: int):
    n = x.shape[0]
    sq = (x * x).sum(1)
    purity = torch.empty(n)
    ratio = torch.empty(n, dtype=torch.float64)
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        ar = torch.arange(r1 - r0)
        d2 = torch.mm(x[r0:r1], x.t()).mul_(-2).add_(sq.unsqueeze(0)).add_(sq[r0:r1].unsqueeze(1)).clamp_(min=0)
        d2[ar, ar + r0] = math.inf
        nbrs = torch.topk(d2, k, dim=1, largest=False).indices
        purity[r0:r1] = (y[nbrs] == y[r0:r1, None]).float().mean(1)
        same = y.unsqueeze(0) == y[r0:r1].unsqueeze(1)
        ds = d2.masked_fill(~same, math.inf).min(1).values.double().sqrt()
        do = d2.masked_fill(same, math.inf).min(1).values.double().sqrt()
        ratio[r0:r1] = do / ds
    per_class = {c: float(purity[y == c].mean()) for c in range(int(y.max()) + 1)}
    return purity, ratio, per_class


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--baselines", default="naive,sklearn")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--task", choices=("multiclass", "multilabel"), default="multiclass",
                    help="multilabel: each sample has its class plus each other class with "
                         "probability extra/classes (no naive baseline then)")
    ap.add_argument("--extra", type=float, default=1.4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.dim, generator=g)
    y = torch.randint(0, args.classes, (args.n,), generator=g)
    labels = y
    if args.task == "multilabel":
        labels = torch.rand(args.n, args.classes, generator=g) < args.extra / args.classes
        labels[torch.arange(args.n), y] = True
    print(f"task={args.task} n={args.n} dim={args.dim} classes={args.classes} k={args.k} "
          f"block={args.block} threads={torch.get_num_threads()}")

    t = time.perf_counter()
    res = density(x, labels, args.task, k=args.k, block_size=args.block, return_per_sample=True)
    t_ours = time.perf_counter() - t
    print(f"density (purity + margin ratio, exact re-check): {t_ours:.2f} s  "
          f"overall={ {m: round(v, 4) for m, v in res['overall'].items()} }")

    baselines = [b for b in args.baselines.split(",") if b]
    if "naive" in baselines and args.task == "multiclass":
        t = time.perf_counter()
        pur, ratio, _ = naive_density(x, y, args.k, args.block)
        t_naive = time.perf_counter() - t
        ours_pur = torch.from_numpy(res["per_sample"]["knn_purity"]).float()
        ours_ratio = torch.from_numpy(res["per_sample"]["margin_ratio"])
        diff = int((ours_pur != pur).sum())
        rel = float(((ours_ratio - ratio).abs() / ours_ratio).max())
        print(f"naive torch (same outputs, float32 mm only): {t_naive:.2f} s  ratio naive/density = "
              f"{t_naive / t_ours:.2f}  (purity differs for {diff} samples; max rel. ratio diff {rel:.1e})")
    if "sklearn" in baselines:
        from sklearn.neighbors import NearestNeighbors

        xn = x.numpy()
        t = time.perf_counter()
        nn = NearestNeighbors(n_neighbors=args.k + 1, algorithm="brute").fit(xn)
        _, idx = nn.kneighbors(xn)
        t_sk = time.perf_counter() - t
        print(f"sklearn brute kneighbors (k-NN only, no margin): {t_sk:.2f} s  ratio sklearn/density = "
              f"{t_sk / t_ours:.2f}")
    print(f"target density <= 30 s: {'met' if t_ours <= 30 else 'MISSED'}")


if __name__ == "__main__":
    main()
