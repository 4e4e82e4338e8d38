"""Peak memory of evaluating a generated HDF5 AudioSet set of growing size: it must not grow with N.

    python benchmarks/bench_stream_memory.py [--sizes 2000 8000 32000] [--batch 64] [--tolerance-mb 48]

For each N, a seed-layout HDF5 file (``feat_a`` [N, 400, 64] float32, ``labels`` [N, 527], ``ids``)
is written to a temporary folder (chunk by chunk: the writer's memory does not grow with N either),
then a fresh Python process builds the ``audioset`` dataset through the plugin registry, computes
the split's manifest and pushes every batch of the eval split through a small model (time-mean
then a linear layer to 527 logits, no grad), as an evaluation does. The child reports its resident
memory before the pass (after imports and set-up) and its peak resident memory
(``resource.getrusage().ru_maxrss``) after it. Each N runs in its own process, so one N's peak
cannot hide another's.

The check: the peak at the largest N may exceed the peak at the smallest N by at most
``--tolerance-mb`` (default 48 MB; the 32k-clip file alone is 3.3 GB, so holding the data would
overshoot by gigabytes). Prints peak memory per N and the ratio peak(N_max) / peak(N_min); exits 1
when the check fails. ``--negative-control`` keeps every batch alive (a loader that holds the data):
the check must then fail, which shows the benchmark can see growth.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(root: str, batch: int, hold: bool = False) -> None:
    """Evaluate every batch of the eval split; print one JSON line with the memory figures."""
    import torch

    import avharness

    torch.set_num_threads(1)
    ds = avharness.get_registry().get("dataset", "audioset")(root=root)
    torch.manual_seed(0)
    frames, bins = ds.specs["audio"].shape
    model = torch.nn.Sequential(torch.nn.Linear(bins, ds.task.num_classes)).eval()
    manifest = ds.manifest("eval")
    first = next(iter(ds.batches("eval", batch)))  # warm-up: lazy imports, the file handle, allocator pools
    del first
    before = rss_mb()
    t = time.perf_counter()
    n = correct = 0
    held = []
    with torch.no_grad():
        for b in ds.batches("eval", batch):
            if hold:  # the negative control: keep every batch, as a loader that is not streaming would
                held.append(b.inputs["audio"])
            logits = model(b.inputs["audio"].mean(1))
            correct += int(ds.task.correct(logits, b.target).sum())
            n += len(b)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"n": n, "size": ds.size("eval"), "rss_before_mb": before, "peak_mb": peak,
                      "seconds": seconds, "manifest": manifest[:12], "exact_match": correct}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tolerance-mb", type=float, default=48.0)
    p.add_argument("--dir", default=None, help="where to write the HDF5 files (default: a temporary folder)")
    p.add_argument("--negative-control", action="store_true",
                   help="keep every batch in memory (must make the check fail: shows the benchmark can see growth)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.batch, args.negative_control)
        return 0

    from avharness_plugins.testing.layouts import write_audioset_hdf5, write_class_labels

    base = Path(args.dir or tempfile.mkdtemp(prefix="avh-bench-mem-"))
    rows = []
    try:
        for n in sorted(args.sizes):
            root = base / f"n{n}"
            t = time.perf_counter()
            write_class_labels(root / "class_labels_indices.csv", 527)
            write_audioset_hdf5(root / "data.h5", n, n_classes=527)
            write_s = time.perf_counter() - t
            size_gb = (root / "data.h5").stat().st_size / 1e9
            env = {**os.environ, "AVHARNESS_DISABLE_PLUGIN_AUTOLOAD": "1"}
            cmd = [sys.executable, __file__, "--child", str(root), "--batch", str(args.batch)]
            out = subprocess.run(cmd + (["--negative-control"] if args.negative_control else []),
                                 capture_output=True, text=True, env=env, check=False)
            if out.returncode != 0:
                print(out.stdout + out.stderr, file=sys.stderr)
                return 2
            r = json.loads(out.stdout.strip().splitlines()[-1])
            assert r["n"] == n == r["size"], r
            r.update(file_gb=size_gb, write_s=write_s)
            rows.append(r)
            print(f"N={n:>6}  file {size_gb:5.2f} GB (written in {write_s:5.1f} s)  eval {r['seconds']:5.1f} s "
                  f"({n / r['seconds']:7.0f} clips/s)  RSS before {r['rss_before_mb']:6.1f} MB  "
                  f"peak {r['peak_mb']:6.1f} MB", flush=True)
            shutil.rmtree(root)
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    lo, hi = rows[0], rows[-1]
    ratio = hi["peak_mb"] / lo["peak_mb"]
    grew = hi["peak_mb"] - lo["peak_mb"]
    data_ratio = hi["n"] / lo["n"]
    print(f"peak(N={hi['n']}) / peak(N={lo['n']}) = {ratio:.3f}  (data {data_ratio:.0f}x larger; "
          f"peak grew {grew:+.1f} MB, tolerance {args.tolerance_mb:.0f} MB)")
    if grew > args.tolerance_mb:
        print("FAIL: peak memory grows with N", file=sys.stderr)
        return 1
    print("OK: peak memory is flat in N")
    return 0


if __name__ == "__main__":
    sys.exit(main())
