"""Per-sample cost of one forward + backward pass (the input gradient an attack step needs) of each
AudioSet zoo model at the seed's sizes, on this machine; the inputs of docs/scale.md.

Seed sizes: audio log-mel 400 x 64 (AST: Kaldi fbank 1024 x 128), video features 10 x 2048,
527 labels, every model with its default parameters (embed_dim 1024; AST on
deit_base_distilled_patch16_384, 86 M parameters). A few batches per model: one warm-up, then
``--reps`` timed passes; batch 4 (AST: 2). The warm-up pass is also FLOP-counted
(``torch.utils.flop_counter``: matmuls and convolutions of the forward and the input-gradient
backward), the hardware-independent input of the GPU estimate in docs/scale.md.
Run it alone: other processes on the machine inflate the times (not the FLOPs).

    python benchmarks/bench_zoo_cost.py [--reps 2] [--models crnn,ast] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from avharness import InputSpec, Task
from avharness.plugins import get_registry

MODELS = ("crnn", "cnn_transformer", "resnet", "efficientnet", "ast", "video_transformer",
          "av_early_fusion", "av_mid_fusion", "av_late_fusion")
BATCH = {"ast": 2}


def specs_for(name: str) -> dict:
    audio = InputSpec((1024, 128), (-30.0, 30.0), "fbank128") if name == "ast" else \
        InputSpec((400, 64), (-30.0, 30.0), "logmel64")
    return {"audio": audio, "video": InputSpec((10, 2048), (0.0, 50.0), "video features (per second)")}


def measure(name: str, reps: int, device: torch.device, threads: int) -> dict:
    torch.manual_seed(0)
    task = Task("multilabel", tuple(f"l{i}" for i in range(527)))
    specs = specs_for(name)
    model = get_registry().get("model", name)(task=task, specs=specs).to(device).eval()
    b = BATCH.get(name, 4)
    x = {m: torch.rand(b, *s.shape, device=device) for m, s in specs.items() if m in model.modalities}
    target = (torch.rand(b, 527, device=device) < 0.02).float()

    for q in model.parameters():  # an attack needs input gradients only (autograd skips weight gradients)
        q.requires_grad_(False)

    def step():
        leaves = {m: v.clone().requires_grad_(True) for m, v in x.items()}
        loss = task.loss(model(leaves), target).sum()
        loss.backward()  # (not autograd.grad: the FLOP counter cannot follow it)
        if device.type == "cuda":
            torch.cuda.synchronize()

    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:  # the warm-up pass, counted: matmul/conv FLOPs of forward + input-gradient backward
        step()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    per_batch = min(times)
    return {"model": name, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2), "batch": b,
            "reads": list(model.modalities), "s_per_sample": per_batch / b, "threads": threads,
            "gflop_per_sample": counter.get_total_flops() / b / 1e9}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--json")
    args = p.parse_args()
    device = torch.device(args.device)
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(f"{'model':20s} {'params (M)':>10s} {'batch':>5s} {'s / sample (fwd+bwd)':>22s} {'GFLOP / sample':>15s}")
    for name in args.models.split(","):
        r = measure(name, args.reps, device, torch.get_num_threads())
        rows.append(r)
        print(f"{name:20s} {r['params_M']:10.2f} {r['batch']:5d} {r['s_per_sample']:22.4f} {r['gflop_per_sample']:15.1f}",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
