"""Clip-loader throughput: decoding threads and one batch of prefetch vs one clip at a time.

Generates an AudioSet folder in the official layout (10 s, 16 kHz wav clips) and times a full pass
over it with ``workers=1`` (sequential, no prefetch: the baseline) and with more workers, measured
in the same run, interleaved, median of repeats. Two consumers: none (pure loading) and a stand-in
for an attack step (a conv net forward/backward on the batch), where prefetching overlaps decoding
with compute. Prints clips/s and the speed-up ratio; a ratio > 1 means the threads pay off.

    python benchmarks/bench_clip_loader.py [--clips 192] [--repeats 3] [--workers 2 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import avharness
from avharness_plugins.testing.layouts import write_audioset_csv_layout


def consumer_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 6))


def one_pass(root: Path, workers: int, compute: nn.Module | None, batch_size: int) -> float:
    ds = avharness.get_registry().get("dataset", "audioset")(root=str(root), workers=workers)
    ds.size("eval")  # index the split first: only the streaming pass is timed
    t = time.perf_counter()
    n = 0
    for batch in ds.batches("eval", batch_size):
        n += len(batch)
        if compute is not None:
            x = batch.inputs["audio"].unsqueeze(1).requires_grad_(True)
            compute(x).sum().backward()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "audioset"
        write_audioset_csv_layout(root, args.clips, n_classes=6, seconds=10.0)
        for label, compute in (("loading only", None), ("loading + conv forward/backward", consumer_model())):
            rates = {w: [] for w in [1, *args.workers]}
            for _ in range(args.repeats):  # interleaved, so machine noise hits every setting alike
                for w in rates:
                    rates[w].append(one_pass(root, w, compute, args.batch_size))
            base = statistics.median(rates[1])
            print(f"{label}: {args.clips} clips of 10 s, batch {args.batch_size}, median of {args.repeats}")
            print(f"  workers=1 (sequential, no prefetch): {base:7.1f} clips/s")
            for w in args.workers:
                r = statistics.median(rates[w])
                print(f"  workers={w} (threads + prefetch):     {r:7.1f} clips/s   ratio {r / base:.2f}")


if __name__ == "__main__":
    main()
