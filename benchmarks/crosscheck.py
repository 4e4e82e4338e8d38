"""Run suites/crosscheck.yaml and print, per (model, threat, eps), the robust accuracy of native
PGD, ART PGD and foolbox LinfPGD, and of native APGD and ART's APGD, with each group's gap; exit 1
when a gap exceeds the tolerance.

    python benchmarks/crosscheck.py [--tolerance 0.03] [-o reports/crosscheck]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="suites/crosscheck.yaml")
    p.add_argument("--tolerance", type=float, default=0.03, help="largest allowed |robust accuracy gap| (default 0.03)")
    p.add_argument("-o", "--output", default="reports/crosscheck")
    args = p.parse_args()
    subprocess.run([sys.executable, "-m", "avharness.cli", "run", args.suite, "-o", args.output, "-q"], check=True)
    report = json.loads((Path(args.output) / "report.json").read_text())
    rows = defaultdict(dict)
    for c in report["cells"]:
        rows[(c["model"], c["threat"], c["canonical"])][c["attack"]] = c["robust_accuracy"]
    groups = {"pgd": ("native", "art", "foolbox"), "apgd": ("native_apgd", "art_apgd")}
    worst = 0.0
    print(f"{'model':8} {'budget':34} {'native':>7} {'art':>7} {'foolbox':>7} {'gap':>6}   {'apgd':>7} {'art':>7} {'gap':>6}")
    for (model, _threat, canon), acc in rows.items():
        line = f"{model:8} {canon:34} "
        for names in groups.values():
            got = [acc[a] for a in names if a in acc]
            gap = max(got) - min(got) if got else 0.0
            worst = max(worst, gap)
            line += " ".join(f"{acc.get(a, float('nan')):7.3f}" for a in names) + f" {gap:6.3f}   "
        print(line.rstrip())
    ok = worst <= args.tolerance
    print(f"largest gap {worst:.3f} on {report['data']['eval']['n_effective']} samples: "
          f"{'within' if ok else 'BEYOND'} tolerance {args.tolerance}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
