"""report.html: one self-contained page (figures inline as SVG, CSS inline, no script, no network)
rendered by jinja2 from the report dict and its samples, and the figures also written as
``plots/<id>.svg`` beside it for report.md to link.

Everything on the page comes from report.json and samples.jsonl, so ``avharness report RUN_DIR``
re-renders a finished run byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
from markupsafe import Markup

from ..store import atomic_write_text
from .markdown import _eps_label, _num, _pct, summary_rows
from .plots import Plot, _ci, inline_svg, plan_plots, svg

#: the findings rows shown per question (the rest are in report.json)
FINDING_ROWS = 40


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("avharness.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["pct"] = _pct
    env.filters["num"] = _num
    env.filters["tojson_compact"] = lambda v: json.dumps(v, sort_keys=True, ensure_ascii=False)
    return env


def draw_plots(report: dict, samples: dict) -> list[tuple[Plot, str]]:
    """Every figure of the report with its SVG document."""
    out = []
    for p in plan_plots(report):
        fig = p.draw(samples)
        out.append((p, svg(fig)))
    return out


def _finding_table(f: dict) -> dict | None:
    rows = f["rows"]
    if not rows:
        return None
    if "fused" in rows[0]:
        what = rows[0].get("measure", "robust accuracy")
        return {"header": ["fused", "uni-modal", "defense", "budget", f"fused {what}", f"uni-modal {what}"],
                "rows": [[r["fused"], r["uni"], r["defense"], r["budget"], _pct(r["fused_robust"]), _pct(r["uni_robust"])]
                         for r in rows[:FINDING_ROWS]], "more": max(0, len(rows) - FINDING_ROWS)}
    if "train_s" in rows[0]:
        return {"header": ["model", "defense", "mean robust", "training s", "backward samples"],
                "rows": [[r["model"], r["defense"], _pct(r["mean_robust"]), f"{r['train_s'] or 0:.1f}",
                          f"{r['backward_samples']:,}"] for r in rows], "more": 0}
    if "mean_robust" in rows[0]:
        return {"header": ["model", "defense", "mean robust", "cells"],
                "rows": [[r["model"], r["defense"], _pct(r["mean_robust"]), str(r["cells"])] for r in rows], "more": 0}
    if "spearman_rho" in rows[0]:
        return {"header": ["model", "defense", "metric", "latent", "attack", "threat", "ρ", "p", "classes"],
                "rows": [[r["model"], r["defense"], r["metric"], r["series"], r["attack"], r["threat"],
                          _num(r["spearman_rho"]), _num(r["p_value"]), str(r["n_classes"])] for r in rows[:FINDING_ROWS]],
                "more": max(0, len(rows) - FINDING_ROWS)}
    return None


def _skipped(report: dict) -> list[dict]:
    seen, out = set(), []
    for sk in report["skipped"]:
        k = (sk["model"], sk["defense"], sk["threat"], sk["reason"])
        if k in seen:
            continue
        seen.add(k)
        attacks = sorted({x["attack"] for x in report["skipped"]
                          if (x["model"], x["defense"], x["threat"], x["reason"]) == k})
        out.append({"model": sk["model"], "defense": sk["defense"], "threat": sk["threat"], "attacks": ", ".join(attacks),
                    "reason": sk["reason"]})
    return out


def _check_value(c: dict) -> str:
    return str(c["value"]) if isinstance(c["value"], bool) or c["value"] is None else _num(c["value"])


def render_html(report: dict, drawn: list[tuple[Plot, str]]) -> str:
    """The page, from the report dict and its drawn figures (``draw_plots``)."""
    figures = []
    for p, doc in drawn:
        attrs = {k: ("true" if v is True else "false" if v is False else v) for k, v in p.attrs.items() if v is not None}
        figures.append({"plot": p, "svg": Markup(inline_svg(doc, p.id)), "attrs": attrs})
    cells = report["cells"]
    threats = list(dict.fromkeys(c["threat"] for c in cells))
    checks = report["checks"]
    counts = {s: sum(c["status"] == s for c in checks) for s in ("pass", "warn", "fail")}
    summary_header, summary = summary_rows(report)
    metric_names = list(dict.fromkeys(k for c in cells for k in c["metrics"]))
    return _env().get_template("report.html.j2").render(
        r=report,
        has_ci=any(_ci(c, "robust_accuracy") for c in cells),
        title=f"avharness report: {report['suite']['name']} (suite v{report['suite']['version']})",
        summary_header=summary_header, summary=summary,
        overview=[f for f in figures if f["plot"].kind == "overview"],
        curves={t: [f for f in figures if f["plot"].kind == "curve" and f["plot"].attrs["threat"] == t
                    and f["plot"].attrs["metric"] == "robust_accuracy"] for t in threats},
        metric_curves=[f for f in figures if f["plot"].kind == "curve" and f["plot"].attrs["metric"] != "robust_accuracy"],
        heatmaps=[f for f in figures if f["plot"].kind == "heatmap"],
        latent=[f for f in figures if f["plot"].kind == "latent"],
        cost=[f for f in figures if f["plot"].kind == "defense_cost"],
        findings=[{"question": f["question"], "answer": f["answer"], "table": _finding_table(f)}
                  for f in report.get("findings") or []],
        checks=sorted(checks, key=lambda c: ({"fail": 0, "warn": 1, "pass": 2}[c["status"]])),
        check_counts=counts, check_value=_check_value,
        skipped=_skipped(report),
        cell_rows=[[c["model"], c["defense"], c["attack"], c["threat"], _eps_label(c), _pct(c["clean_accuracy"]),
                    _pct(c["robust_accuracy"])] + [_num(c["metrics"].get(k)) for k in metric_names]
                   + [f"{c['wall_s']:.2f}", "yes" if c["reused"] else "no"] for c in cells],
        cell_header=["model", "defense", "attack", "threat", "budget", "clean %", "robust %"] + metric_names
                    + ["s", "reused"],
        checkpoints=[{"model": m["name"], "defense": m["defense"], "path": m["checkpoint"], "key": m["key"],
                      "weights": m.get("weights")} for m in report["models"]],
    )


def write_html(report: dict, samples: dict, out_dir: str | Path, formats: tuple[str, ...] = ("html",)) -> list[Path]:
    """Draw the figures, write ``plots/*.svg`` and (when "html" is in ``formats``) report.html.

    Stale figures of an earlier rendering are removed, so the folder holds exactly this report's.
    """
    out_dir = Path(out_dir)
    drawn = draw_plots(report, samples)
    folder = out_dir / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    keep = {f"{p.id}.svg" for p, _ in drawn}
    for old in folder.glob("*.svg"):
        if old.name not in keep:
            old.unlink()
    written = []
    for p, doc in drawn:
        atomic_write_text(out_dir / p.file, doc)
        written.append(out_dir / p.file)
    if "html" in formats:
        atomic_write_text(out_dir / "report.html", render_html(report, drawn))
        written.append(out_dir / "report.html")
    return written
