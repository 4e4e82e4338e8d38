"""Attack passes of each shipped suite: cells x samples x steps x restarts, without and with the saving.

A pass is one forward + backward of one sample (one attack step). Steps at eps 0 cost nothing
(attacks return the input unchanged without a pass). Counted from the suite itself (models'
modalities from the zoo's names, threats a model cannot take skipped, as the plan does); the
evaluated samples N are the suite's limit, or the split's size (AudioSet eval 20,371 clips).

With ``eval.reuse_sweep`` a step of a nested sweep attacks only the samples robust at the step
before, and a multiclass suite never attacks samples wrong when clean. That depends on the model:
``--robust r1,r2,...`` gives the robust fraction after each non-zero step (default: the quickstart's
PGD joint sweep for early fusion, README) to show the arithmetic.

    python benchmarks/suite_passes.py [--robust 0.9,0.63,0.32,0.04,0,0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from avharness.suite import load_suite

READS = {"audio_cnn": {"audio"}, "video_cnn": {"video"}, "crnn": {"audio"}, "cnn_transformer": {"audio"},
         "resnet": {"audio"}, "efficientnet": {"audio"}, "ast": {"audio"}, "video_transformer": {"video"}}
N = {"quickstart": 500, "paper_findings": 300, "crosscheck": 1000, "audioset_pgd": 20371, "kinetics_sounds_pgd": 3000}
PASSES = {"fgsm": lambda p: 1, "pgd": lambda p: p.get("steps", 10) * p.get("restarts", 1),
          "art.pgd": lambda p: p.get("steps", 10), "foolbox.linf_pgd": lambda p: p.get("steps", 10)}


def count(path: Path, robust: list[float]) -> tuple[int, float, float, int]:
    s = load_suite(path)
    n = s.limit or N[s.name]
    cells, without, with_ = 0, 0.0, 0.0
    for m in s.models:
        reads = READS.get(m.plugin, {"audio", "video"})
        for _ in s.defenses:
            for a in s.attacks:
                k = PASSES[a.plugin](a.params)
                for t in s.threats:
                    if not set(t.modalities) <= reads:
                        continue
                    alive = 1.0  # share of samples still to attack (robust at the step before)
                    nonzero = 0
                    for step in range(t.steps):
                        cells += 1
                        if all(t.eps[mm][step] == 0 for mm in t.modalities):
                            continue
                        without += n * k
                        with_ += n * k * alive
                        alive = robust[min(nonzero, len(robust) - 1)]
                        nonzero += 1
    return cells, without, with_, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--robust", default="0.628,0.318,0.042,0.0,0.0",
                   help="robust fraction after the 1st, 2nd, ... non-zero step (the first attacked step sees "
                        "every sample; in multiclass suites scale by clean accuracy too)")
    args = p.parse_args()
    robust = [float(x) for x in args.robust.split(",")]
    print(f"{'suite':22s} {'cells':>6s} {'N':>7s} {'passes without':>16s} {'with (model)':>14s} {'ratio':>6s}")
    for path in sorted(Path("suites").glob("*.yaml")):
        cells, without, with_, n = count(path, robust)
        print(f"{path.stem:22s} {cells:6d} {n:7d} {without:16,.0f} {with_:14,.0f} {with_ / without:6.3f}")


if __name__ == "__main__":
    main()
