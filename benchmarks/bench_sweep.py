"""Attack cost with and without ``eval.reuse_sweep`` (attack only what is still robust), one suite.

One invocation, two runs into the same output folder: first with the saving off (this run trains
the models), then with it on (the checkpoints are reused, every cell is attacked again: a cell's
key includes whether it reused). Prints the forward/backward passes and the attack wall time of
both and their ratio, the samples attacked, and checks that no robust accuracy rose with the saving.

    python benchmarks/bench_sweep.py [--suite suites/quickstart.yaml] [--limit 200] [-o DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def run(suite: str, out: Path, limit: int | None, reuse: bool) -> dict:
    cmd = [sys.executable, "-m", "avharness.cli", "run", suite, "-o", str(out), "-q",
           "--set", f"eval.reuse_sweep={'true' if reuse else 'false'}"]
    if limit:
        cmd += ["--limit", str(limit)]
    subprocess.run(cmd, check=True)
    return json.loads((out / "report.json").read_text())


def totals(report: dict) -> dict:
    out = {"forward": 0.0, "backward": 0.0, "attacked": 0.0, "samples": 0, "attack_wall_s": 0.0}
    for c in report["cells"]:
        s = c["attack_stats"]
        out["forward"] += s.get("forward_samples", 0)
        out["backward"] += s.get("backward_samples", 0)
        out["attacked"] += s.get("attacked_samples", c["n"])
        out["samples"] += c["n"]
        out["attack_wall_s"] += c["wall_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="suites/quickstart.yaml")
    p.add_argument("--limit", type=int, help="evaluate only the first N samples (say so when quoting)")
    p.add_argument("-o", "--output", help="output folder (default: a temporary one)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.output or tmp) / "bench_sweep"
        off = run(args.suite, out, args.limit, reuse=False)
        on = run(args.suite, out, args.limit, reuse=True)
    a, b = totals(off), totals(on)
    n = off["data"]["eval"]["n_effective"]
    print(f"suite {args.suite}: {len(off['cells'])} cells, {n} samples each"
          + (f" (--limit {args.limit})" if args.limit else ""))
    print(f"{'':26s} {'without':>12s} {'with':>12s} {'with/without':>13s}")
    for key, label in (("forward", "forward passes (samples)"), ("backward", "backward passes (samples)"),
                       ("attacked", "samples attacked"), ("attack_wall_s", "attack wall time (s)")):
        print(f"{label:26s} {a[key]:12.0f} {b[key]:12.0f} {b[key] / a[key] if a[key] else float('nan'):13.3f}"
              if key != "attack_wall_s" else
              f"{label:26s} {a[key]:12.1f} {b[key]:12.1f} {b[key] / a[key]:13.3f}")
    ref = {c["id"]: c for c in off["cells"]}
    rose = [c["id"] for c in on["cells"] if c["robust_accuracy"] > ref[c["id"]]["robust_accuracy"] + 1e-12]
    lower = [c["id"] for c in on["cells"] if c["robust_accuracy"] < ref[c["id"]]["robust_accuracy"] - 1e-12]
    same = len(on["cells"]) - len(rose) - len(lower)
    print(f"robust accuracy with the saving: {same} cells equal, {len(lower)} lower, {len(rose)} higher"
          + (f" -- ROSE: {rose}" if rose else " (none rose)"))
    sys.exit(1 if rose else 0)


if __name__ == "__main__":
    main()
