"""report.md: one function per section, each reading the report dict (what report.json holds)."""

from __future__ import annotations

from ..contracts import AttackStats
from .findings import render as render_findings
from .plots import plan_plots

SUFFIX = AttackStats.STAGE_ROBUST_SUFFIX


def _pct(x) -> str:
    return "–" if x is None or x != x else f"{100 * x:.1f}"


def _num(x) -> str:
    return "–" if x is None or x != x else f"{x:.4g}"


def _ci(ci) -> str:
    return f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else ""


def _pct_ci(value_ci) -> str:
    """A percentage with its interval, e.g. "43.0 [38.7, 47.4]"."""
    value, ci = value_ci
    return _pct(value) + ("" if value is None or value != value else _ci(ci))


def _num_ci(value_ci) -> str:
    value, ci = value_ci
    if value is None or value != value or not ci:
        return _num(value)
    return f"{_num(value)} [{_num(ci[0])}, {_num(ci[1])}]"


def _metric(c: dict, k: str):
    """(value, interval) of metric ``k`` in cell ``c``."""
    return c["metrics"].get(k), (c.get("intervals") or {}).get(k)


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
                            lambda c, x=x: _metric(c, f"clean_{x}"), lambda c, x=x: _metric(c, f"robust_{x}"), _num_ci,
                            prefix=f"{x}: ")
    return md


def header(r: dict) -> list[str]:
    """Title, provenance and how to read the numbers."""
    s = r["suite"]
    env = r["environment"]
    data = r["data"]
    return [
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
        "Brackets hold 95 % intervals: the Wilson score interval for accuracies and other shares of samples, "
        "a seeded percentile bootstrap over samples for the other values that have one (mAP, mAUC, d′; "
        "see `intervals` in report.json).",
        "",
    ]


def findings_section(r: dict) -> list[str]:
    """The papers' questions, answered from this run."""
    md = []
    if r.get("findings"):
        md += render_findings(r["findings"])
    return md


def summary_rows(r: dict) -> tuple[list[str], list[list[str]]]:
    """The summary table (header, rows): clean accuracy and, per threat, robust accuracy at its strongest
    budget, worst case over attacks, per (model, defense). report.html shows the same table."""
    cells = r["cells"]
    threats = list(dict.fromkeys(c["threat"] for c in cells))
    rows = []
    for m in r["models"]:
        mine = [c for c in cells if c["model"] == m["name"] and c["defense"] == m["defense"]]
        if not mine:
            continue
        row = [m["name"], m["defense"], ", ".join(m["modalities"]),
               _pct_ci((mine[0]["clean_accuracy"], mine[0].get("clean_accuracy_ci")))]
        for t in threats:
            tc = [c for c in mine if c["threat"] == t]
            if not tc:
                row.append("n/a")
                continue
            top = max(c["step"] for c in tc)
            worst = min((c for c in tc if c["step"] == top), key=lambda c: c["robust_accuracy"])
            row.append(_pct_ci((worst["robust_accuracy"], worst.get("robust_accuracy_ci"))))
        rows.append(row)
    return ["model", "defense", "reads", "clean"] + threats, rows


def summary(r: dict) -> list[str]:
    """Clean vs robust accuracy per model and threat, at the strongest budget."""
    md = ["## Clean vs robust accuracy, by model and threat", ""]
    md += ["Robust accuracy at each threat's strongest budget, worst case over the suite's attacks.", ""]
    header_, rows = summary_rows(r)
    return md + _table(header_, rows) + [""]


def plots_section(r: dict) -> list[str]:
    """Links to the figures written beside report.md (``plots/*.svg``); report.html shows them inline."""
    plots = plan_plots(r)
    if not plots:
        return []
    md = ["## Plots", "", "The figures are in `plots/` beside this file and, with everything else, in `report.html`.", ""]
    overview = plots[0]
    md += [f"![{overview.title}]({overview.file})", ""]
    md += [f"- [{p.title}]({p.file})" for p in plots[1:]] + [""]
    return md


def sweep_tables(r: dict) -> list[str]:
    """Per (attack, threat): accuracy at every budget of the sweep, then the paired metric tables."""
    md = []
    cells = r["cells"]
    attacks = list(dict.fromkeys(c["attack"] for c in cells))
    threats = list(dict.fromkeys(c["threat"] for c in cells))
    md += _sweep_tables(cells, attacks, threats, lambda c: (c["clean_accuracy"], c.get("clean_accuracy_ci")),
                        lambda c: (c["robust_accuracy"], c.get("robust_accuracy_ci")), _pct_ci)
    md += _paired_metric_tables(cells, attacks, threats)
    return md


def predictions_section(r: dict) -> list[str]:
    """Spearman correlations of latent metrics with per-class robustness drops."""
    md = []
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

    return md


def models_section(r: dict) -> list[str]:
    """The trained or loaded models, their size and training time."""
    md = []
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

    return md


def cells_section(r: dict) -> list[str]:
    """Every cell with every metric value."""
    md = []
    cells = r["cells"]
    metric_names = list(dict.fromkeys(k for c in cells for k in c["metrics"]))
    if cells:
        md += ["## All cells", ""]
        rows = [
            [c["model"], c["defense"], c["attack"], c["threat"], _eps_label(c)]
            + [_num_ci(_metric(c, k)) for k in metric_names]
            + [f"{c['wall_s']:.2f}", "yes" if c["reused"] else "no"]
            for c in cells
        ]
        md += _table(
            ["model", "defense", "attack", "threat", "budget"] + metric_names + ["s", "reused"],
            rows,
        ) + [""]

    return md


def checks_section(r: dict) -> list[str]:
    """The validity checks, listing those that do not pass."""
    md = []
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

    return md


def stages_section(r: dict) -> list[str]:
    """Per-stage robust accuracy of cascades (ensembles)."""
    md = []
    cells = r["cells"]
    staged = [c for c in cells if any(k.endswith(SUFFIX) for k in c["attack_stats"])]
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
            stages_ = [k[: -len(SUFFIX)] for k in st if k.endswith(SUFFIX)]
            rows.append(
                [
                    c["id"],
                    _eps_label(c),
                    " → ".join(
                        f"{s_}: {_pct(st[s_ + SUFFIX] / c['n'])}" for s_ in stages_
                    ),
                    f"{st.get('forward_samples', 0):.0f}",
                ]
            )
        md += _table(["cell", "budget", "robust after each stage", "forward samples"], rows) + [""]

    return md


def skipped_section(r: dict) -> list[str]:
    """The (model, attack, threat) combinations the run skipped, and why."""
    md = []
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

    return md


def wall_time(r: dict) -> list[str]:
    """Wall time per stage."""
    md = []
    md += ["## Wall time per stage (s)", ""]
    md += _table(list(r["stages"]), [[f"{v:.1f}" for v in r["stages"].values()]]) + [""]
    return md


#: the summary first, then the figures and the short sections; the long per-attack sweep tables and
#: the table of every cell last
SECTIONS = (header, summary, plots_section, findings_section, checks_section, skipped_section, predictions_section,
            models_section, sweep_tables, stages_section, cells_section, wall_time)


def render_markdown(r: dict) -> str:
    return "\n".join(line for section in SECTIONS for line in section(r))
