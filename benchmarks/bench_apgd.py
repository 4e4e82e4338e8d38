"""Speed of avharness's APGD against the bare hand-written torch PGD loop at equal passes.

    python benchmarks/bench_apgd.py [--batch 32] [--steps 20] [--repeats 7] [--norm linf] [--loss ce] [--device cpu]

The model, batch and joint threat are bench_pgd.py's. APGD with ``steps`` iterations spends
``steps + 1`` forward/backward passes (the random start is scored too) plus one forward pass on the
clean inputs; the bare loop is run for ``steps + 1`` steps, so both spend the same number of
gradient passes. APGD adds momentum, a second projection per step, per-sample best-point tracking
and the checkpoint logic. Runs are interleaved after one warm-up each; medians are compared.
Ratio = bare / APGD (1.0 = no overhead; the target is >= 0.9).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pgd import BOUNDS, SHAPES, BenchModel, bare_pgd  # noqa: E402

from avharness import Budget, SampleRNG, Task, ThreatModel  # noqa: E402
from avharness_plugins.attacks.apgd import build_apgd  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--norm", choices=["linf", "l2"], default="linf")
    p.add_argument("--loss", choices=["ce", "dlr"], default="ce")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = BenchModel().to(device).eval()
    task = Task("multiclass", tuple(f"c{i}" for i in range(10)))
    inputs = {m: (torch.rand(args.batch, *s) * (BOUNDS[m][1] - BOUNDS[m][0]) + BOUNDS[m][0]).to(device)
              for m, s in SHAPES.items()}
    # the model's own predictions as targets: every sample is attacked (none is skipped as wrong when clean)
    with torch.no_grad():
        target = model(inputs).argmax(1)
    ids = [f"s{i}" for i in range(args.batch)]
    eps = {"linf": {"audio": 0.05, "video": 1 / 255}, "l2": {"audio": 0.5, "video": 0.1}}[args.norm]
    threat = ThreatModel("bench", {m: Budget(args.norm, eps[m], BOUNDS[m]) for m in SHAPES})
    attack = build_apgd(args.loss, steps=args.steps)
    alpha = {m: 0.25 * eps[m] for m in SHAPES}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def time_bare():
        sync()
        t = time.perf_counter()
        bare_pgd(model, inputs, target, eps, BOUNDS, args.steps + 1, alpha, args.norm)
        sync()
        return time.perf_counter() - t

    stats = {}

    def time_apgd():
        sync()
        t = time.perf_counter()
        out = attack.perturb(model, inputs, target, threat, task, SampleRNG(0, "bench", ids))
        sync()
        stats.update(out.stats)
        return time.perf_counter() - t

    time_bare(), time_apgd()  # warm-up
    bare, ours = [], []
    for r in range(args.repeats):
        if r % 2 == 0:
            bare.append(time_bare())
            ours.append(time_apgd())
        else:
            ours.append(time_apgd())
            bare.append(time_bare())
    mb, ma = statistics.median(bare), statistics.median(ours)
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} steps={args.steps} norm={args.norm} "
          f"loss={args.loss} repeats={args.repeats}")
    print(f"APGD passes per sample: {stats['backward_samples'] / args.batch:.0f} backward, "
          f"{stats['forward_samples'] / args.batch:.0f} forward; bare loop: {args.steps + 1} of each")
    print(f"bare torch PGD ({args.steps + 1} steps): median {mb * 1e3:8.1f} ms")
    print(f"avharness APGD ({args.steps} steps) : median {ma * 1e3:8.1f} ms")
    print(f"ratio bare/APGD = {mb / ma:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
