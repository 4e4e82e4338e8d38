"""Speed of avharness's PGD against a bare hand-written torch PGD loop on the same model and batch.

    python benchmarks/bench_pgd.py [--batch 32] [--steps 10] [--repeats 7] [--norm linf] [--device cpu]

Both attack a small audio-visual conv model (log-mel-like audio [1, 64, 100], video [8, 3, 32, 32])
jointly. The bare loop is the fastest honest version: one batched random start, gradients by
torch.autograd.grad, sign (or normalised) step, projection and clipping, final iterate returned.
avharness's PGD does the same plus per-sample random streams, per-sample best-iterate tracking
(one extra forward pass per restart) and a NaN check. Runs are interleaved (alternating which goes
first) after one warm-up each; the medians are compared. Ratio = bare / avharness (1.0 = no
overhead; the target is >= 0.9).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from avharness import AVModel, Budget, SampleRNG, Task, ThreatModel
from avharness_plugins.attacks.pgd import build_pgd

SHAPES = {"audio": (1, 64, 100), "video": (8, 3, 32, 32)}
BOUNDS = {"audio": (-4.0, 4.0), "video": (0.0, 1.0)}


class BenchModel(AVModel):
    modalities = ("audio", "video")
    head_latent = "fused"

    def __init__(self, classes: int = 10, width: int = 32):
        super().__init__()
        self.audio = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.video = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.out = nn.Linear(width, classes)

    def embed(self, inputs):
        a = self.audio(inputs["audio"])
        v = inputs["video"]
        v = self.video(v.flatten(0, 1)).view(v.shape[0], v.shape[1], -1).mean(1)
        return {"audio": a, "video": v, "fused": a + v}

    def head(self, latent):
        return self.out(latent)


def bare_pgd(model, inputs, target, eps, bounds, steps, alpha, norm):
    """The textbook loop, written directly in torch."""
    clean = inputs
    adv = {}
    for m, x in clean.items():
        if norm == "linf":
            delta = (torch.rand_like(x) * 2 - 1) * eps[m]
        else:
            d = torch.randn_like(x)
            d = d / d.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
            delta = d * (torch.rand(x.shape[0], device=x.device) * eps[m]).view(-1, *[1] * (x.dim() - 1))
        adv[m] = (x + delta).clamp(*bounds[m])
    names = list(adv)
    for _ in range(steps):
        leaves = [adv[m].requires_grad_(True) for m in names]
        loss = F.cross_entropy(model(adv), target, reduction="sum")
        grads = torch.autograd.grad(loss, leaves)
        with torch.no_grad():
            for m, g in zip(names, grads):
                x = clean[m]
                view = (-1, *[1] * (x.dim() - 1))
                if norm == "linf":
                    step = adv[m] + alpha[m] * g.sign()
                    delta = (step - x).clamp(-eps[m], eps[m])
                else:
                    step = adv[m] + alpha[m] * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
                    delta = step - x
                    delta = delta * (eps[m] / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1).view(view)
                adv[m] = (x + delta).clamp(*bounds[m])
    return {m: a.detach() for m, a in adv.items()}


def bench_args(description: str, steps: int) -> argparse.ArgumentParser:
    """The flags every attack-speed benchmark takes (bench_apgd.py adds its own)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--norm", choices=["linf", "l2"], default="linf")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p


def setup(args: argparse.Namespace) -> tuple[torch.device, BenchModel, Task, dict, list[str]]:
    """Device, the seeded model, its task, a random batch inside BOUNDS and its sample ids."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = BenchModel().to(device).eval()
    task = Task("multiclass", tuple(f"c{i}" for i in range(10)))
    inputs = {m: (torch.rand(args.batch, *s) * (BOUNDS[m][1] - BOUNDS[m][0]) + BOUNDS[m][0]).to(device)
              for m, s in SHAPES.items()}
    return device, model, task, inputs, [f"s{i}" for i in range(args.batch)]


def interleaved(first, second, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median seconds of two callables, after one warm-up each, alternating which runs first."""

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    timed(first), timed(second)  # warm-up
    a, b = [], []
    for r in range(repeats):
        if r % 2 == 0:
            a.append(timed(first))
            b.append(timed(second))
        else:
            b.append(timed(second))
            a.append(timed(first))
    return statistics.median(a), statistics.median(b)


def main(argv=None):
    args = bench_args(__doc__.splitlines()[0], steps=10).parse_args(argv)
    device, model, task, inputs, ids = setup(args)
    target = torch.randint(0, 10, (args.batch,)).to(device)
    eps = {"linf": {"audio": 0.5, "video": 8 / 255}, "l2": {"audio": 5.0, "video": 2.0}}[args.norm]
    threat = ThreatModel("bench", {m: Budget(args.norm, eps[m], BOUNDS[m]) for m in SHAPES})
    attack = build_pgd(steps=args.steps)
    alpha = {m: attack.step_size * eps[m] for m in SHAPES}
    mb, ma = interleaved(lambda: bare_pgd(model, inputs, target, eps, BOUNDS, args.steps, alpha, args.norm),
                         lambda: attack.perturb(model, inputs, target, threat, task, SampleRNG(0, "bench", ids)),
                         args.repeats, device)
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} steps={args.steps} "
          f"norm={args.norm} repeats={args.repeats}")
    print(f"bare torch PGD : median {mb * 1e3:8.1f} ms  ({mb / args.steps * 1e3:.1f} ms/step)")
    print(f"avharness PGD  : median {ma * 1e3:8.1f} ms  ({ma / args.steps * 1e3:.1f} ms/step)")
    print(f"ratio bare/avharness = {mb / ma:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
