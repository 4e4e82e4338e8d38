"""Building the report from a run: ``report.json`` (schema ``avharness/report@1``, JSON Schema in
``schema.json``), ``samples.jsonl``, the rendered ``report.md`` and ``report.html`` (with ``plots/*.svg``), and rendering
a finished run again from its files (``rerender``, the ``avharness report`` command).

Every number here is computed from the run's cell records (``records.py``); none is typed in. The
checks, findings and renderers read the same records the executor built.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import __version__, numerics
from ..errors import UserError
from ..stats import METHODS as INTERVALS
from ..stats import ids_sha256
from ..store import atomic_write_json, atomic_write_text, json_safe
from .checks import cell_checks, model_checks
from .findings import findings
from .markdown import render_markdown
from .plots import samples_by_cell
from .records import CellRecord, ModelRecord, per_class_drop, without_samples

if TYPE_CHECKING:
    from ..executor import RunResult

SCHEMA = "avharness/report@1"


def environment(device: torch.device) -> dict:
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "avharness": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        # instruction-set caps and training threads in force: what makes numbers machine-independent
        "numerics": numerics.describe(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def model_records(res: RunResult) -> list[ModelRecord]:
    return [
        {
            "name": t.spec.name, "plugin": t.spec.plugin, "params": t.spec.params, "defense": t.defense.name,
            "modalities": list(t.model.modalities), "n_parameters": sum(p.numel() for p in t.model.parameters()),
            "checkpoint": str(t.folder), "key": t.key, "reused": t.reused, "fit": t.fit,
            # the weights it started from (path, sha256, key map), when a suite gave a checkpoint
            "weights": t.fit.get("init"),
            "metrics": t.metrics,
        }
        for t in res.trained
    ]


def _data_section(res) -> dict:
    s, ds = res.suite, res.dataset
    return {
        "plugin": s.data.plugin, "params": s.data.params, "task": ds.task.to_dict(),
        "specs": {m: sp.to_dict() for m, sp in ds.specs.items()},
        "splits": {sp: {"n": ds.size(sp), "manifest_sha256": res.manifests[sp]} for sp in ds.splits()},
        "manifest_sha256": res.manifests[s.eval_split],
        "eval": {"split": s.eval_split, "n_original": res.eval_n_original, "n_effective": res.eval_n,
                 # what `avharness check` compares to refuse runs on other samples
                 "ids_sha256": ids_sha256([x["id"] for x in res.cells[0]["samples"]]) if res.cells else None},
        "info": ds.info(),
    }


def build_report(res: RunResult, started: str) -> dict:
    """The report as a dict (what report.json holds), from a finished run's records."""
    s = res.suite
    models = model_records(res)
    preds = predictions(res)
    headline = res.plan.headline.get(res.dataset.task.kind)
    return {
        "schema": SCHEMA,
        "started": started,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "suite": {"name": s.name, "version": s.version, "path": s.path, "sha256": s.sha256, "config": s.resolved},
        "seeds": {
            "global": s.seed,
            "derivation": "sha256 of (seed, purpose, ...): training per checkpoint key; attack random starts "
                          "per (attack, threat, sample id, modality, restart)",
        },
        "environment": environment(res.device),
        "plugins": res.registry.distributions(),
        "plugin_failures": [{"entry_point": e, "dist": d, "error": err} for e, d, err in res.registry.failures],
        "data": _data_section(res),
        "models": models,
        "skipped": res.skipped,
        "checks": [ch for t in res.trained for ch in model_checks(f"{t.spec.name}/{t.defense.name}", t.probe)]
                  + cell_checks(res.cells, res.iterative, res.gradient_free),
        "cells": [without_samples(c) for c in res.cells],
        "headline": headline,
        "metric_predicts_robustness": preds,
        "findings": findings(res.cells, models, preds, headline),
        "intervals": dict(INTERVALS),
        "per_sample": "samples.jsonl",
        "stages": res.stages,
    }


def predictions(res: RunResult) -> list[dict]:
    """Spearman correlation of every per-class model metric with each class's robust-accuracy drop.

    The drop is taken at each (attack, threat)'s strongest budget, where attacks differ most. A
    metric that predicts robustness correlates negatively (a better-shaped class loses less).
    """
    from scipy.stats import spearmanr

    k = res.dataset.task.num_classes
    out = []
    for t in res.trained:
        series = {(name, s): v for name, r in t.metrics.items() for s, v in (r.get("per_class") or {}).items()}
        if not series:
            continue
        mine = [c for c in res.cells if (c["model"], c["defense"]) == (t.spec.name, t.defense.name)]
        for attack, threat in dict.fromkeys((c["attack"], c["threat"]) for c in mine):
            cs = [c for c in mine if (c["attack"], c["threat"]) == (attack, threat)]
            top = max(cs, key=lambda c: c["step"])
            drop = per_class_drop(top["samples"], k)
            for (metric, name), values in series.items():
                common = [c for c in drop if values.get(c) is not None and values[c] == values[c]]
                rho = p = float("nan")
                if len(common) >= 3 and len({values[c] for c in common}) > 1 and len({drop[c] for c in common}) > 1:
                    r = spearmanr([values[c] for c in common], [drop[c] for c in common])
                    rho, p = float(r.statistic), float(r.pvalue)
                out.append({"model": t.spec.name, "defense": t.defense.name, "metric": metric, "series": name,
                            "attack": attack, "threat": threat, "step": top["step"], "n_classes": len(common),
                            "spearman_rho": rho, "p_value": p})
    return out


def write_samples(cells: list[CellRecord], path: Path) -> None:
    lines = [json.dumps({"cell": c["id"], **x}) for c in cells for x in c["samples"]]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def read_samples(path: Path) -> dict[str, list[dict]]:
    """samples.jsonl grouped by cell id; a missing or damaged file is a one-line UserError."""
    if not path.exists():
        raise UserError(f"{path}: no samples.jsonl beside report.json (a run writes both); rerun the suite to recreate it")
    lines = []
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            x = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{i}: not a JSON line ({exc.msg}); the file is damaged — rerun the suite") from None
        if not isinstance(x, dict) or "cell" not in x:
            raise UserError(f"{path}:{i}: not a sample record (no 'cell' key); the file is damaged — rerun the suite")
        lines.append(x)
    return samples_by_cell(lines)


#: what ``avharness report --format`` may ask for
FORMATS = {"md": ("md",), "html": ("html",), "all": ("md", "html")}


def render(report: dict, samples: dict[str, list[dict]], out_dir: str | Path,
           formats: tuple[str, ...] = ("md", "html")) -> list[Path]:
    """Write report.md and/or report.html (with ``plots/*.svg``) from a report as report.json holds it
    and its samples grouped by cell. Re-rendering the same report gives the same bytes."""
    from .html import write_html

    out_dir = Path(out_dir)
    written = []
    if "md" in formats:
        atomic_write_text(out_dir / "report.md", render_markdown(report))
        written.append(out_dir / "report.md")
    return written + write_html(report, samples, out_dir, formats)


def rerender(run_dir: str | Path, fmt: str = "all") -> list[Path]:
    """Render a finished run again from its report.json and samples.jsonl, running nothing."""
    from ..compare import read_report

    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if run_dir.is_file():
        run_dir = run_dir.parent
    report = read_report(run_dir)
    try:
        return render(report, read_samples(run_dir / "samples.jsonl"), run_dir, FORMATS[fmt])
    except (KeyError, TypeError, IndexError) as exc:
        raise UserError(f"{run_dir / 'report.json'}: the report lacks what the renderer needs ({type(exc).__name__}: "
                        f"{exc}); was it written by another avharness version?") from None


def write_report(res: RunResult, out_dir: str | Path, started: str, extra_stages: dict | None = None) -> dict:
    out_dir = Path(out_dir)
    report = build_report(res, started)
    if extra_stages:
        report["stages"].update(extra_stages)
    write_samples(res.cells, out_dir / "samples.jsonl")
    # rendered from exactly what report.json and samples.jsonl hold, as `avharness report` does later
    stored = json.loads(json.dumps(json_safe(report), allow_nan=False))
    render(stored, read_samples(out_dir / "samples.jsonl"), out_dir)
    atomic_write_json(out_dir / "report.json", report)  # last: its presence means the report is whole
    return report
