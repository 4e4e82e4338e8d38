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

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pgd import BOUNDS, SHAPES, bare_pgd, bench_args, interleaved, setup  # noqa: E402

from avharness import Budget, SampleRNG, ThreatModel  # noqa: E402
from avharness_plugins.attacks.apgd import build_apgd  # noqa: E402


def main(argv=None):
    p = bench_args(__doc__.splitlines()[0], steps=20)
    p.add_argument("--loss", choices=["ce", "dlr"], default="ce")
    args = p.parse_args(argv)
    device, model, task, inputs, ids = setup(args)
    # the model's own predictions as targets: every sample is attacked (none is skipped as wrong when clean)
    with torch.no_grad():
        target = model(inputs).argmax(1)
    eps = {"linf": {"audio": 0.05, "video": 1 / 255}, "l2": {"audio": 0.5, "video": 0.1}}[args.norm]
    threat = ThreatModel("bench", {m: Budget(args.norm, eps[m], BOUNDS[m]) for m in SHAPES})
    attack = build_apgd(args.loss, steps=args.steps)
    alpha = {m: 0.25 * eps[m] for m in SHAPES}
    stats = {}

    def apgd():
        stats.update(attack.perturb(model, inputs, target, threat, task, SampleRNG(0, "bench", ids)).stats)

    mb, ma = interleaved(lambda: bare_pgd(model, inputs, target, eps, BOUNDS, args.steps + 1, alpha, args.norm),
                         apgd, args.repeats, device)
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} steps={args.steps} norm={args.norm} "
          f"loss={args.loss} repeats={args.repeats}")
    print(f"APGD passes per sample: {stats['backward_samples'] / args.batch:.0f} backward, "
          f"{stats['forward_samples'] / args.batch:.0f} forward; bare loop: {args.steps + 1} of each")
    print(f"bare torch PGD ({args.steps + 1} steps): median {mb * 1e3:8.1f} ms")
    print(f"avharness APGD ({args.steps} steps) : median {ma * 1e3:8.1f} ms")
    print(f"ratio bare/APGD = {mb / ma:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
