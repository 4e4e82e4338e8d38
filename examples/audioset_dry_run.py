"""Dry run of suites/audioset_pgd.yaml without AudioSet: a generated folder in the official layout
(segment CSV with its header comments, class_labels_indices.csv, wav/<YTID>.wav, per-second video
features), normalisation statistics computed by `avharness data stats`, randomly initialised
checkpoints from `avharness model init`, shrunk models, then the suite itself.

    python examples/audioset_dry_run.py [WORKDIR]      # default: ./audioset-dry-run

The numbers mean nothing (random weights, synthetic clips); the point is the path real data takes.
"""

import sys
from pathlib import Path

from avharness.cli import main
from avharness_plugins.testing.layouts import write_audioset_csv_layout

SUITE = str(Path(__file__).resolve().parents[1] / "suites" / "audioset_pgd.yaml")
MODELS = ["audio", "video", "early", "mid", "late"]


def sets(pairs):
    return [x for key, value in pairs for x in ("--set", f"{key}={value}")]


def run(args):
    print("$ avharness " + " ".join(args))
    code = main(args)
    if code:
        sys.exit(code)


def dry_run(work: Path) -> Path:
    root = work / "audioset"
    write_audioset_csv_layout(root, 16, n_classes=6, seconds=10.0, video_features=True, feature_dim=256, missing=1)
    data = sets([("data.root", root)])
    run(["data", "stats", SUITE, *data, "--split", "eval", "-o", str(work / "logmel64_stats.json")])
    data += sets([("data.stats", work / "logmel64_stats.json")])
    small = sets([(f"models.{i}.{k}", v) for i in range(len(MODELS)) for k, v in
                  (("embed_dim", 64), ("layers", 1), ("heads", 4))])
    run(["model", "init", SUITE, *data, *small, "-o", str(work / "checkpoints")])
    ckpts = sets([(f"models.{i}.checkpoint", work / "checkpoints" / f"{m}.pt") for i, m in enumerate(MODELS)])
    run(["run", SUITE, *data, *small, *ckpts, "--set", "attacks.0.steps=5", "-o", str(work / "report")])
    return work / "report"


if __name__ == "__main__":
    out = dry_run(Path(sys.argv[1] if len(sys.argv) > 1 else "audioset-dry-run").resolve())
    print(f"report: {out / 'report.md'}")
