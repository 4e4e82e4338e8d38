"""The same suite on the local executor and on a local Ray cluster of 2 workers: wall time and values.

Runs a shrunk quickstart (by default ``--limit 100``, 2 training epochs, PGD-5) twice from scratch
into separate folders, locally and with ``--executor ray --num-cpus 2``, then prints the wall-time
ratio and whether every cell's metric values and every sample's outcome are identical.

    python benchmarks/bench_executors.py [--suite suites/quickstart.yaml] [--limit 100] [--full]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHRINK = ["--set", "defenses.0.epochs=2", "--set", "attacks.1.steps=5"]


def run(suite: str, out: Path, extra: list[str]) -> tuple[float, dict]:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "avharness.cli", "run", suite, "-o", str(out), "-q", *extra], check=True)
    return time.perf_counter() - t, json.loads((out / "report.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="suites/quickstart.yaml")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--full", action="store_true", help="the suite as written (no shrinking overrides)")
    p.add_argument("-o", "--output", help="keep both runs' folders here (default: a temporary folder)")
    args = p.parse_args()
    extra = ["--limit", str(args.limit)] + ([] if args.full else SHRINK)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.output or tmp)
        t_local, local = run(args.suite, root / "local", extra)
        t_ray, ray = run(args.suite, root / "ray", extra + ["--executor", "ray", "--num-cpus", "2"])
        same_samples = (root / "local" / "samples.jsonl").read_bytes() == (root / "ray" / "samples.jsonl").read_bytes()
        for m in local["models"]:  # where a difference starts: the checkpoints, or only the cells
            a, b = (root / d / "store" / "models" / m["key"] / "model.pt" for d in ("local", "ray"))
            if a.read_bytes() != b.read_bytes():
                print(f"checkpoint of {m['name']} differs between the executors")
    same_values = [c["metrics"] for c in local["cells"]] == [c["metrics"] for c in ray["cells"]]
    for a, b in zip(local["cells"], ray["cells"]):
        if a["metrics"] != b["metrics"]:
            print(f"differs: {a['id']}: robust {a['robust_accuracy']:.4f} local, {b['robust_accuracy']:.4f} ray")
    same_keys = [c["key"] for c in local["cells"]] == [c["key"] for c in ray["cells"]]
    print(f"suite {args.suite} ({' '.join(extra)}): {len(local['cells'])} cells, {len(local['models'])} models")
    print(f"local executor      : {t_local:7.1f} s wall")
    print(f"ray, 2 workers      : {t_ray:7.1f} s wall (includes starting and stopping the local cluster)")
    print(f"ratio ray / local   : {t_ray / t_local:.3f}")
    print(f"cell keys identical : {same_keys}")
    print(f"cell values identical: {same_values}; every sample's outcome identical: {same_samples}")
    sys.exit(0 if same_values and same_samples and same_keys else 1)


if __name__ == "__main__":
    main()
