"""Dry run of suites/audioset_pgd.yaml without AudioSet: a generated folder in the official layout
(segment CSV with its header comments, class_labels_indices.csv, wav/<YTID>.wav, per-second video
features), normalisation statistics computed by `avharness data stats`, randomly initialised
checkpoints from `avharness model init`, shrunk models, then the suite itself through the Python API
(`avharness.run`), printing its cells as a table.

    python examples/audioset_dry_run.py [WORKDIR]      # default: ./audioset-dry-run

The numbers mean nothing (random weights, synthetic clips); the point is the path real data takes.
"""

import sys
from pathlib import Path

import avharness
from avharness.cli import main  # the data and model tools have no Python API of their own
from avharness_plugins.testing.layouts import write_audioset_csv_layout

SUITE = str(Path(__file__).resolve().parents[1] / "suites" / "audioset_pgd.yaml")
MODELS = ["audio", "video", "early", "mid", "late"]


def sets(overrides: dict) -> list[str]:
    return [x for key, value in overrides.items() for x in ("--set", f"{key}={value}")]


def tool(args):
    print("$ avharness " + " ".join(args))
    code = main(args)
    if code:
        sys.exit(code)


def dry_run(work: Path) -> avharness.Report:
    root = work / "audioset"
    write_audioset_csv_layout(root, 16, n_classes=6, seconds=10.0, video_features=True, feature_dim=256, missing=1)
    data = {"data.root": str(root)}
    tool(["data", "stats", SUITE, *sets(data), "--split", "eval", "-o", str(work / "logmel64_stats.json")])
    data["data.stats"] = str(work / "logmel64_stats.json")
    small = {f"models.{i}.{k}": v for i in range(len(MODELS)) for k, v in (("embed_dim", 64), ("layers", 1), ("heads", 4))}
    tool(["model", "init", SUITE, *sets({**data, **small}), "-o", str(work / "checkpoints")])
    ckpts = {f"models.{i}.checkpoint": str(work / "checkpoints" / f"{m}.pt") for i, m in enumerate(MODELS)}
    overrides = {**data, **small, **ckpts, "attacks.0.steps": 5}
    print(f">>> avharness.run({SUITE!r}, overrides={{... {len(overrides)} values}}, out={str(work / 'report')!r})")
    return avharness.run(SUITE, overrides=overrides, out=work / "report")


if __name__ == "__main__":
    report = dry_run(Path(sys.argv[1] if len(sys.argv) > 1 else "audioset-dry-run").resolve())
    cells = report.cells()
    print(cells[["model", "threat", "eps_audio", "eps_video", "clean_map", "robust_map"]].to_string(index=False))
    print(f"report: {report.path / 'report.html'}")
