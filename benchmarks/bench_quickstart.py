"""Cold and warm wall time of the quickstart, per stage, measured in one run.

Cold: a fresh data cache and output folder (builds the data set, trains, attacks every cell).
Warm: the same command again (every cell reused). Targets on a 2-core CPU: cold <= 5 min, warm <= 15 s.

    python benchmarks/bench_quickstart.py [--suite suites/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(suite: str, out: Path, cache: Path) -> tuple[float, dict]:
    env = {**os.environ, "AVHARNESS_CACHE": str(cache)}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "avharness.cli", "run", suite, "-o", str(out), "-q"], check=True, env=env)
    wall = time.perf_counter() - t
    return wall, json.loads((out / "report.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="suites/quickstart.yaml")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache, out = Path(tmp) / "cache", Path(tmp) / "out"
        cold, r1 = run(args.suite, out, cache)
        warm, r2 = run(args.suite, out, cache)
    train = sum(m["fit"].get("wall_s", 0) for m in r1["models"])
    print(f"suite {args.suite}: {len(r1['cells'])} cells, {len(r1['models'])} trained models")
    print(
        f"cold run : {cold:7.1f} s wall (target <= 300)   stages: "
        + ", ".join(f"{k} {v:.1f}" for k, v in r1["stages"].items())
    )
    print(f"           training {train:.1f} s in all")
    print(
        f"warm run : {warm:7.1f} s wall (target <= 15)    stages: "
        + ", ".join(f"{k} {v:.1f}" for k, v in r2["stages"].items())
    )
    print(f"reused   : {sum(c['reused'] for c in r2['cells'])} of {len(r2['cells'])} cells")
    print(f"ratio warm/cold = {warm / cold:.4f}")


if __name__ == "__main__":
    main()
