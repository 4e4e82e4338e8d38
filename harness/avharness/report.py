"""The report: ``report.json`` (schema ``avharness/report@1``), ``samples.jsonl`` and ``report.md``.

Every number here is computed from the run's cells; none is typed in. The Markdown tables use the
per-sample outcomes the core records (clean and robust correctness), so they do not depend on
which metric plugins a suite lists.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .checks import cell_checks, model_checks
from .findings import findings
from .findings import render as render_findings
from .runner import RunResult
from .store import atomic_write_json, atomic_write_text

SCHEMA = "avharness/report@1"


def cell_id(c: dict) -> str:
    return f"{c['model']}/{c['defense']}/{c['attack']}/{c['threat']}/{c['step']}"


def environment(device) -> dict:
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "avharness": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def build_report(res: RunResult, started: str) -> dict:
    s = res.suite
    ds = res.dataset
    cells = []
    for c in res.cells:
        acc = _accuracies(c)
        cells.append({
            "id": cell_id(c), "key": c["key"], "model": c["model"], "defense": c["defense"], "attack": c["attack"],
            "threat": c["threat"], "step": c["step"], "norm": c["norm"], "canonical": c["canonical"],
            # an unbounded budget's eps is infinite: null, as in the stored cell, whether fresh or reused
            "eps": {m: (None if e is None or e == float("inf") else e) for m, e in c["eps"].items()},
            "n": c["n"], "clean_accuracy": acc[0], "robust_accuracy": acc[1],
            "achieved": c.get("achieved", {}),
            "metrics": c["metrics"], "higher_is_better": c["higher_is_better"],
            "attack_stats": c.get("attack_stats", {}),
            "success_rule": c.get("success_rule"),
            **({"details": c["details"]} if c.get("details") else {}),
            "wall_s": c["wall_s"], "reused": c["reused"],
        })
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
        "data": {
            "plugin": s.data.plugin, "params": s.data.params, "task": ds.task.to_dict(),
            "specs": {m: sp.to_dict() for m, sp in ds.specs.items()},
            "splits": {sp: {"n": ds.size(sp), "manifest_sha256": res.manifests[sp]} for sp in ds.splits()},
            "manifest_sha256": res.manifests[s.eval_split],
            "eval": {"split": s.eval_split, "n_original": res.eval_n_original, "n_effective": res.eval_n},
            "info": ds.info(),
        },
        "models": [
            {
                "name": t.spec.name, "plugin": t.spec.plugin, "params": t.spec.params, "defense": t.defense.name,
                "modalities": list(t.model.modalities), "n_parameters": sum(p.numel() for p in t.model.parameters()),
                "checkpoint": str(t.folder), "key": t.key, "reused": t.reused, "fit": t.fit,
                # the weights it started from (path, sha256, key map), when a suite gave a checkpoint
                "weights": t.fit.get("init"),
                "metrics": t.metrics,
            }
            for t in res.trained
        ],
        "skipped": res.skipped,
        "checks": [ch for t in res.trained for ch in model_checks(f"{t.spec.name}/{t.defense.name}", t.probe)]
                  + cell_checks([{**c, "samples": raw["samples"]} for c, raw in zip(cells, res.cells)], res.iterative,
                              res.gradient_free),
        "cells": cells,
        "metric_predicts_robustness": predictions(res),
        "per_sample": "samples.jsonl",
        "stages": res.stages,
    }


def per_class_drop(samples: list[dict], num_classes: int) -> dict[str, float]:
    """Per class: clean accuracy minus robust accuracy over the samples of that class."""
    clean, robust, count = [0] * num_classes, [0] * num_classes, [0] * num_classes
    for x in samples:
        for c in (x["target"] if isinstance(x["target"], list) else [x["target"]]):
            count[c] += 1
            clean[c] += x["clean_correct"]
            robust[c] += x["robust"]
    return {str(c): (clean[c] - robust[c]) / count[c] for c in range(num_classes) if count[c]}


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


def _accuracies(c: dict) -> tuple[float, float]:
    n = max(len(c["samples"]), 1)
    return (sum(x["clean_correct"] for x in c["samples"]) / n, sum(x["robust"] for x in c["samples"]) / n)


def write_report(res: RunResult, out_dir: str | Path, started: str, extra_stages: dict | None = None) -> dict:
    out_dir = Path(out_dir)
    report = build_report(res, started)
    if extra_stages:
        report["stages"].update(extra_stages)
    lines = []
    for c in res.cells:
        for x in c["samples"]:
            lines.append(json.dumps({"cell": cell_id(c), **x}))
    report["findings"] = findings(report)
    atomic_write_text(out_dir / "samples.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    atomic_write_json(out_dir / "report.json", report)  # last: its presence means the report is whole
    return report


# ----------------------------------------------------------------------------- Markdown

def _pct(x) -> str:
    return "–" if x is None or x != x else f"{100 * x:.1f}"


def _num(x) -> str:
    return "–" if x is None or x != x else f"{x:.4g}"


def _eps_label(cell: dict) -> str:
    return ", ".join(f"{m} unbounded" if cell["norm"][m] == "none" else f"{m} {cell['norm'][m]} {cell['eps'][m]:g}"
                     for m in sorted(cell["eps"]))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _sweep_tables(cells: list[dict], attacks: list[str], threats: list[str], clean, robust, fmt,
                  prefix: str = "") -> list[str]:
    """Per (attack, threat): one row per (model, defense), clean then robust at each sweep step.

    ``clean(cell)`` / ``robust(cell)`` give a cell's values, ``fmt`` prints one; ``cells`` are those
    that have them.
    """
    md = []
    for a in attacks:
        for t in threats:
            tc = [c for c in cells if c["attack"] == a and c["threat"] == t]
            if not tc:
                continue
            steps = sorted({c["step"] for c in tc})
            labels = {c["step"]: _eps_label(c) for c in tc}
            md += [f"### {prefix}{a} — threat {t}", ""]
            rows = []
            for m in dict.fromkeys((c["model"], c["defense"]) for c in tc):
                mc = {c["step"]: c for c in tc if (c["model"], c["defense"]) == m}
                rows.append([m[0], m[1], fmt(clean(next(iter(mc.values()))))]
                            + [fmt(robust(mc[st])) if st in mc else "–" for st in steps])
            md += _table(["model", "defense", "clean"] + [labels[st] for st in steps], rows) + [""]
    return md


def _paired_metric_tables(cells: list[dict], attacks: list[str], threats: list[str]) -> list[str]:
    """One sweep table per metric reported as a clean_X / robust_X pair (mAP, d′, ...), accuracy aside.

    Multi-label suites live by these: exact-match accuracy over 527 tags says little.
    """
    names = list(dict.fromkeys(k[len("clean_"):] for c in cells for k in c["metrics"]
                               if k.startswith("clean_") and f"robust_{k[len('clean_'):]}" in c["metrics"]))
    md = []
    for x in [n for n in names if n != "accuracy"]:
        md += [f"## Clean vs robust {x}", ""]
        md += _sweep_tables([c for c in cells if f"robust_{x}" in c["metrics"]], attacks, threats,
                            lambda c, x=x: c["metrics"][f"clean_{x}"], lambda c, x=x: c["metrics"][f"robust_{x}"], _num,
                            prefix=f"{x}: ")
    return md


def render_markdown(r: dict) -> str:
    s = r["suite"]
    env = r["environment"]
    data = r["data"]
    md = [
        f"# avharness report: {s['name']} (suite v{s['version']})",
        "",
        f"- seed {r['seeds']['global']}; suite sha256 `{s['sha256'][:16]}`; data manifest `{data['manifest_sha256'][:16]}`",
        f"- data `{data['plugin']}`, {data['task']['kind']} with {len(data['task']['classes'])} classes; "
        f"evaluated on split `{data['eval']['split']}`: {data['eval']['n_effective']} of {data['eval']['n_original']} samples",
        f"- avharness {env['avharness']}, Python {env['python']}, torch {env['torch']}, device {env['device']}",
        f"- finished {r['finished']}",
        # a dataset's own one-line notes (e.g. clips it could not read), from its info()["notes"]
        *[f"- data: {note}" for note in (data.get("info") or {}).get("notes", [])],
        *([f"- attack success rule: {', '.join(rules)} (see avharness.success)"]
          if (rules := sorted({c["success_rule"] for c in r["cells"] if c.get("success_rule")})) else []),
        "",
        "Robust accuracy counts a sample as robust only if it is classified correctly both clean and "
        "under attack" + (" (multi-label: every thresholded tag exact)" if data["task"]["kind"] == "multilabel" else "")
        + ". Accuracies are percentages.",
        "",
    ]
    cells = r["cells"]
    attacks = list(dict.fromkeys(c["attack"] for c in cells))
    threats = list(dict.fromkeys(c["threat"] for c in cells))

    if r.get("findings"):
        md += render_findings(r["findings"])

    md += ["## Clean vs robust accuracy, by model and threat", ""]
    md += ["Robust accuracy at each threat's strongest budget, worst case over the suite's attacks.", ""]
    rows = []
    for m in r["models"]:
        mine = [c for c in cells if c["model"] == m["name"] and c["defense"] == m["defense"]]
        if not mine:
            continue
        clean = mine[0]["clean_accuracy"]
        row = [m["name"], m["defense"], ", ".join(m["modalities"]), _pct(clean)]
        for t in threats:
            tc = [c for c in mine if c["threat"] == t]
            if not tc:
                row.append("n/a")
                continue
            top = max(c["step"] for c in tc)
            row.append(_pct(min(c["robust_accuracy"] for c in tc if c["step"] == top)))
        rows.append(row)
    md += _table(["model", "defense", "reads", "clean"] + [f"{t}" for t in threats], rows) + [""]

    md += _sweep_tables(cells, attacks, threats, lambda c: c["clean_accuracy"], lambda c: c["robust_accuracy"], _pct)
    md += _paired_metric_tables(cells, attacks, threats)

    if r["metric_predicts_robustness"]:
        md += ["## Do latent metrics predict robustness?", "",
               "Spearman ρ between each class's metric value and its robust-accuracy drop at the strongest budget "
               "(negative: classes the metric rates better lose less). p-values are two-sided, uncorrected.", ""]
        rows = []
        for m in r["models"]:
            for metric, res_ in m["metrics"].items():
                for series, values in (res_.get("per_class") or {}).items():
                    vals = [v for v in values.values() if v is not None]
                    mean = sum(vals) / len(vals) if vals else None
                    preds = [x for x in r["metric_predicts_robustness"]
                             if (x["model"], x["defense"], x["metric"], x["series"]) == (m["name"], m["defense"], metric, series)]
                    cells_ = "; ".join(f"{x['attack']} {x['threat']}: {_num(x['spearman_rho'])} (p {_num(x['p_value'])})"
                                       for x in preds)
                    rows.append(
                        [m["name"], m["defense"], metric, series, _num(mean), cells_ or "–"]
                    )
        md += _table(
            ["model", "defense", "metric", "series", "class mean", "ρ vs drop (p)"], rows
        ) + [""]

    md += ["## Models", ""]
    rows = []
    for m in r["models"]:
        fit = m["fit"]
        rows.append(
            [
                m["name"],
                m["plugin"],
                m["defense"],
                f"{m['n_parameters']:,}",
                f"{fit.get('wall_s', 0):.1f}",
                "yes" if m["reused"] else "no",
            ]
        )
    md += _table(["model", "plugin", "defense", "parameters", "training s", "reused"], rows) + [""]

    metric_names = list(dict.fromkeys(k for c in cells for k in c["metrics"]))
    if cells:
        md += ["## All cells", ""]
        rows = [
            [c["model"], c["defense"], c["attack"], c["threat"], _eps_label(c)]
            + [_num(c["metrics"].get(k)) for k in metric_names]
            + [f"{c['wall_s']:.2f}", "yes" if c["reused"] else "no"]
            for c in cells
        ]
        md += _table(
            ["model", "defense", "attack", "threat", "budget"] + metric_names + ["s", "reused"],
            rows,
        ) + [""]

    md += ["## Validity checks", ""]
    failed = [c for c in r["checks"] if c["status"] != "pass"]
    md.append(
        f"{len(r['checks']) - len(failed)} of {len(r['checks'])} checks pass."
        + (" Not passing:" if failed else "")
    )
    md.append("")
    if failed:
        md += _table(
            ["check", "status", "subject", "value", "threshold", "meaning"],
            [
                [
                    c["name"],
                    c["status"].upper(),
                    c["subject"],
                    _num(c["value"]) if not isinstance(c["value"], bool) else str(c["value"]),
                    str(c["threshold"]),
                    c["doc"],
                ]
                for c in failed
            ],
        ) + [""]

    staged = [c for c in cells if any(k.endswith("/robust_after") for k in c["attack_stats"])]
    if staged:
        md += [
            "## Attack stages",
            "",
            "Robust accuracy after each stage of a cascade (each stage attacks only the "
            "samples still robust), and the forward passes spent (samples).",
            "",
        ]
        rows = []
        for c in staged:
            st = c["attack_stats"]
            stages_ = [k[: -len("/robust_after")] for k in st if k.endswith("/robust_after")]
            rows.append(
                [
                    c["id"],
                    _eps_label(c),
                    " → ".join(
                        f"{s_}: {_pct(st[s_ + '/robust_after'] / c['n'])}" for s_ in stages_
                    ),
                    f"{st.get('forward_samples', 0):.0f}",
                ]
            )
        md += _table(["cell", "budget", "robust after each stage", "forward samples"], rows) + [""]

    if r["skipped"]:
        md += ["## Skipped", ""]
        seen = set()
        for sk in r["skipped"]:
            k = (sk["model"], sk["threat"], sk["reason"])
            if k not in seen:
                seen.add(k)
                who = (
                    f"{sk['model']} × {sk['threat']}"
                    if "model reads" in sk["reason"]
                    else f"{sk['model']} × {sk['attack']} × {sk['threat']}"
                )
                md.append(f"- {who}: {sk['reason']}")
        md.append("")

    md += ["## Wall time per stage (s)", ""]
    md += _table(list(r["stages"]), [[f"{v:.1f}" for v in r["stages"].values()]]) + [""]
    return "\n".join(md)
