"""Speed of native PGD vs ART's PGD vs foolbox's LinfPGD on the same model, batch and step count.

All three attack the audio of a late-fusion model (foolbox takes one tensor) with a linf budget,
10 steps; repeats are interleaved and medians compared, so machine noise hits all three alike.
Prints time per call and the ratios native/ART and native/foolbox (> 1: native is faster).

    python benchmarks/bench_backends.py [--batch 64] [--steps 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from avharness import Budget, SampleRNG, ThreatModel, get_registry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    reg = get_registry()
    data = reg.get("dataset", "avdigits")()  # only its task and specs: no data is built
    torch.manual_seed(0)
    model = reg.get("model", "late_fusion")(task=data.task, specs=data.specs).eval()
    g = torch.Generator().manual_seed(0)
    inputs = {m: s.bounds[0] + (s.bounds[1] - s.bounds[0]) * torch.rand((args.batch, *s.shape), generator=g)
              for m, s in data.specs.items()}
    inputs["audio"] = inputs["audio"] * 0.5  # stay well inside the bounds
    target = torch.arange(args.batch) % data.task.num_classes
    threat = ThreatModel("audio", {"audio": Budget("linf", 0.1, data.specs["audio"].bounds)})
    rng = SampleRNG(0, "bench", [str(i) for i in range(args.batch)])
    attacks = {
        "native": reg.get("attack", "pgd")(steps=args.steps, step_size=0.25),
        "art": reg.get("attack", "art.pgd")(steps=args.steps, step_size=0.25),
        "foolbox": reg.get("attack", "foolbox.linf_pgd")(steps=args.steps, rel_stepsize=0.25),
    }
    times = {k: [] for k in attacks}
    for attack in attacks.values():  # warm-up (imports, first-call allocations)
        attack.perturb(model, inputs, target, threat, data.task, rng)
    for _ in range(args.repeats):
        for name, attack in attacks.items():
            t = time.perf_counter()
            attack.perturb(model, inputs, target, threat, data.task, rng)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"late_fusion, batch {args.batch}, {args.steps} steps, audio linf, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    for k, v in med.items():
        print(f"  {k:8} {1000 * v:8.1f} ms per call")
    print(f"ratio ART/native = {med['art'] / med['native']:.2f}   foolbox/native = {med['foolbox'] / med['native']:.2f}"
          "   (time ratios: > 1 means native is faster)")


if __name__ == "__main__":
    main()
