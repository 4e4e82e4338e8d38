"""The figures of a report, drawn with matplotlib from the report dict (what report.json holds) and
its samples (what samples.jsonl holds, grouped by cell id).

``plan_plots(report)`` lists every figure the report has, without drawing anything (report.md links
them by file name); ``Plot.draw(samples)`` draws one as a ``matplotlib.figure.Figure`` (never through
pyplot, so nothing global is touched); ``svg(fig)`` serialises one byte-identically run after run
(fixed hash salt, no date, text kept as text).

Figures:

- ``curve``: a robustness curve, robust accuracy (or robust mAP, d′ when the cells have them) against
  eps, one line per model, fused models (two or more modalities) solid and uni-modal ones dashed,
  one axes per defense; one figure per (threat, attack) and a worst case over attacks per threat
  (when a threat has a single attack, its figure is the worst case too). 95 % intervals are drawn
  as bands when the cells carry ``<value>_ci``.
- ``overview``: the worst-case accuracy curves of every threat side by side.
- ``heatmap``: per (model, defense), robust accuracy by class at each budget (a sample counts as
  robust only if every attack of the suite failed on it), or, for multi-label cells with the
  ``tagging`` metric's details, the AP drop by class; the 20 most affected classes when there are more.
- ``latent``: per (model, defense), each per-class latent metric against each class's robust-accuracy
  drop at the strongest budget, one colour per (attack, threat), with Spearman's ρ from the report.
- ``defense_cost``: when the run has more than one defense, each (model, defense)'s mean robust score
  against its training cost (wall time, and backward passes in samples when recorded).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot; the report never opens a window

import matplotlib as mpl  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from .records import per_class_drop  # noqa: E402

#: rc settings every report figure is drawn and saved under: deterministic ids, text as <text>
RC = {
    "svg.hashsalt": "avharness",
    "svg.fonttype": "none",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
#: the most classes a heat map shows (the most affected ones)
TOP_CLASSES = 20
#: the most defenses drawn side by side in one row of a curve figure
PANELS_PER_ROW = 4

#: (value, label, scale, y-limits) of the curves: core robust accuracy, then multi-label metrics
MEASURES = (
    ("robust_accuracy", "robust accuracy (%)", 100.0, (-2.0, 102.0)),
    ("robust_map", "robust mAP", 1.0, (-0.02, 1.02)),
    ("robust_dprime", "robust d′", 1.0, None),
)


@dataclass
class Plot:
    """One figure of a report: ``id`` names its file (``plots/<id>.svg``) and its HTML element."""

    id: str
    kind: str
    title: str
    caption: str
    #: what it shows, for selection (``Report.plot``) and the HTML data-* attributes
    attrs: dict = field(default_factory=dict)
    draw_fn: Callable[[dict], Figure] | None = None

    def draw(self, samples: dict | None = None) -> Figure:
        with mpl.rc_context(RC):
            return self.draw_fn(samples or {})

    @property
    def file(self) -> str:
        return f"plots/{self.id}.svg"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def _value(c: dict, key: str):
    v = c["robust_accuracy"] if key == "robust_accuracy" else c["metrics"].get(key)
    return None if v is None or v != v else float(v)


def _ci(c: dict, key: str):
    """A cell's 95 % interval of ``key`` when the report has one (``<key>_ci`` on the cell or in metrics)."""
    ci = c.get(f"{key}_ci")
    if ci is None:
        ci = (c.get("metrics_ci") or {}).get(key)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
        return float(ci[0]), float(ci[1])
    return None


def _fused(model: dict) -> bool:
    return len(model["modalities"]) >= 2


def _units(report: dict, modality: str) -> str:
    return (report["data"]["specs"].get(modality) or {}).get("units") or "input units"


def _models(report: dict) -> dict[tuple[str, str], dict]:
    return {(m["name"], m["defense"]): m for m in report["models"]}


def _colors(report: dict) -> dict[str, str]:
    names = list(dict.fromkeys(m["name"] for m in report["models"]))
    palette = mpl.colormaps["tab10"].colors
    return {n: mpl.colors.to_hex(palette[i % len(palette)]) for i, n in enumerate(names)}


def _threat_axis(report: dict, cells: list[dict]) -> dict:
    """The x axis of a threat's sweep: positions per step, tick labels and the axis label with units.

    A one-modality threat is drawn against its eps; a joint threat against its first modality's eps
    with every modality's eps in the tick labels. A sweep whose eps cannot be placed on a number line
    (unbounded, or not increasing) is drawn against the step.
    """
    by_step = {c["step"]: c for c in sorted(cells, key=lambda c: c["step"])}
    steps = sorted(by_step)
    mods = sorted(by_step[steps[0]]["eps"])
    first = mods[0]
    xs = [by_step[s]["eps"].get(first) for s in steps]
    numeric = all(x is not None for x in xs) and all(a < b for a, b in zip(xs, xs[1:]))
    norms = by_step[steps[0]]["norm"]
    parts = [f"{m} {norms[m]} ε ({_units(report, m)})" for m in mods]
    labels = ["\n".join("∞" if by_step[s]["eps"][m] is None else f"{by_step[s]['eps'][m]:g}" for m in mods) for s in steps]
    return {
        "x": dict(zip(steps, xs if numeric else range(len(steps)))),
        "ticks": xs if numeric else list(range(len(steps))),
        "ticklabels": _spaced(xs, labels) if numeric else labels,
        # one line per modality: a joint threat's label would not fit one axis width
        "label": ("" if numeric else "sweep step: ") + "\n".join(parts),
    }


#: the least gap between two labelled ticks, as a share of the axis span (labels of 6-7 characters at
#: fontsize 7 on a panel about 2 inches wide)
MIN_LABEL_GAP = 0.08


def _spaced(xs: list[float], labels: list[str]) -> list[str]:
    """The tick labels with those too close to a labelled neighbour left blank (small eps such as 0.01
    and 0.02 on an axis up to 0.3 would print as "0.010.02"); the first and last keep theirs."""
    span = (xs[-1] - xs[0]) or 1.0
    out = list(labels)
    last = 0
    for i in range(1, len(xs)):
        if (xs[i] - xs[last]) / span >= MIN_LABEL_GAP:
            last = i
        elif i == len(xs) - 1:  # the largest eps always reads; its crowded neighbour gives way
            out[last] = "" if last else out[last]
            last = i
        else:
            out[i] = ""
    return out


def _series(report: dict, cells: list[dict], key: str) -> dict:
    """(model, defense) -> [(step, value, ci)] with the worst (lowest) cell per step over the given cells."""
    worst: dict[tuple, dict] = {}
    for c in cells:
        v = _value(c, key)
        if v is None:
            continue
        k = (c["model"], c["defense"], c["step"])
        if k not in worst or v < _value(worst[k], key):
            worst[k] = c
    out: dict[tuple, list] = {}
    for (model, defense, step), c in sorted(worst.items(), key=lambda kv: kv[0][2]):
        out.setdefault((model, defense), []).append((step, _value(c, key), _ci(c, key)))
    return {k: out[k] for k in _models(report) if k in out}


def _draw_curves(ax, report, series, axis, measure, colors, defense_label: bool):
    key, label, scale, ylim = measure
    models = _models(report)
    for (name, defense), points in series.items():
        m = models[(name, defense)]
        xs = [axis["x"][s] for s, _, _ in points]
        ys = [v * scale for _, v, _ in points]
        fused = _fused(m)
        who = f"{name} ({'+'.join(m['modalities'])})" + (f", {defense}" if defense_label else "")
        ax.plot(xs, ys, linestyle="-" if fused else "--", marker="o" if fused else "s", markersize=4,
                color=colors[name], linewidth=1.6 if fused else 1.3, label=who)
        band = [(x, ci) for x, (_, _, ci) in zip(xs, points) if ci is not None]
        if band:
            ax.fill_between([x for x, _ in band], [ci[0] * scale for _, ci in band], [ci[1] * scale for _, ci in band],
                            color=colors[name], alpha=0.15, linewidth=0)
    ax.set_xticks(axis["ticks"])
    ax.set_xticklabels(axis["ticklabels"], fontsize=7)
    ax.set_xlabel(axis["label"], fontsize=8)
    ax.set_ylabel(label)
    if ylim:
        ax.set_ylim(*ylim)


def _curve_figure(report: dict, cells: list[dict], measure: tuple, title: str) -> Figure:
    colors = _colors(report)
    defenses = list(dict.fromkeys(c["defense"] for c in cells))
    axis = _threat_axis(report, cells)
    n = len(defenses)
    cols = min(n, PANELS_PER_ROW)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(4.6 * cols + (0.8 if n == 1 else 0), 3.4 * rows + 1.3), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for i, d in enumerate(defenses):
        ax = axes[i // cols][i % cols]
        _draw_curves(ax, report, _series(report, [c for c in cells if c["defense"] == d], measure[0]), axis, measure,
                     colors, defense_label=False)
        if n > 1:
            ax.set_title(f"defense: {d}", fontsize=9)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    _legend_below(fig, axes[0][0])
    fig.suptitle(title, fontsize=9)
    return fig


def _legend_below(fig: Figure, ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 3), fontsize=7, frameon=False,
                   title="model (modalities it reads); fused solid, uni-modal dashed", title_fontsize=7)


def _overview_figure(report: dict) -> Figure:
    cells = report["cells"]
    threats = list(dict.fromkeys(c["threat"] for c in cells))
    colors = _colors(report)
    multi = len({c["defense"] for c in cells}) > 1
    fig = Figure(figsize=(4.2 * len(threats) + 0.6, 4.6), layout="constrained")
    axes = fig.subplots(1, len(threats), squeeze=False, sharey=True)[0]
    for ax, t in zip(axes, threats):
        tc = [c for c in cells if c["threat"] == t]
        _draw_curves(ax, report, _series(report, tc, "robust_accuracy"), _threat_axis(report, tc), MEASURES[0], colors,
                     defense_label=multi)
        ax.set_title(f"threat: {t}", fontsize=9)
    _legend_below(fig, axes[0])
    fig.suptitle(f"{report['suite']['name']}: robust accuracy vs ε, worst case over attacks", fontsize=10)
    return fig


def _class_names(report: dict) -> list[str]:
    return [str(x) for x in report["data"]["task"]["classes"]]


def _ap_drop_grid(cells: list[dict], columns: list[tuple], n_classes: int) -> tuple[dict, dict[int, float]]:
    """Per column, each class's AP drop, worst (largest) over attacks, from the tagging metric's per-class
    details; and each class's worst drop over the columns (how affected it is)."""
    grid: dict[tuple, dict[int, float]] = {}
    for c in cells:
        per = list(c["details"]["tagging"]["per_class"].values())
        col = grid.setdefault((c["threat"], c["step"]), {})
        for i, x in enumerate(per):
            v = x.get("ap_delta")
            if v is not None and v == v:
                col[i] = max(col.get(i, v), v)
    affected = {i: max(grid[k].get(i, 0.0) for k in columns) for i in range(n_classes)
                if any(i in grid[k] for k in columns)}
    return grid, affected


def _robust_grid(cells: list[dict], columns: list[tuple], samples: dict, n_classes: int
                 ) -> tuple[dict, dict[int, float]]:
    """Per column, each class's robust accuracy (a sample counts as robust when it is robust under every
    attack); and each class's largest drop from its clean accuracy over the columns."""
    grid: dict[tuple, dict[int, float]] = {}
    clean_ok: dict[int, dict[str, bool]] = {}  # class -> sample id -> clean correct (the same in every cell)
    for ts in columns:
        robust_all: dict[str, bool] = {}
        targets: dict[str, list[int]] = {}
        for c in cells:
            if (c["threat"], c["step"]) != ts:
                continue
            for x in samples.get(c["id"], []):
                robust_all[x["id"]] = robust_all.get(x["id"], True) and bool(x["robust"])
                targets[x["id"]] = x["target"] if isinstance(x["target"], list) else [x["target"]]
                for k in targets[x["id"]]:
                    clean_ok.setdefault(k, {})[x["id"]] = bool(x["clean_correct"])
        per: dict[int, list[bool]] = {}
        for sid, ok in robust_all.items():
            for k in targets[sid]:
                per.setdefault(k, []).append(ok)
        grid[ts] = {k: sum(v) / len(v) for k, v in per.items()}
    clean = {k: sum(v.values()) / len(v) for k, v in clean_ok.items()}
    affected = {i: clean.get(i, 0.0) - min(grid[k].get(i, clean.get(i, 0.0)) for k in columns)
                for i in range(n_classes) if any(i in grid[k] for k in columns)}
    return grid, affected


def _heatmap_figure(report: dict, model: str, defense: str, samples: dict) -> Figure:
    cells = [c for c in report["cells"] if (c["model"], c["defense"]) == (model, defense)]
    classes = _class_names(report)
    columns = list(dict.fromkeys((c["threat"], c["step"]) for c in cells))
    columns.sort(key=lambda ts: ([c["threat"] for c in cells].index(ts[0]), ts[1]))
    ap = report["data"]["task"]["kind"] == "multilabel" and all(
        ((c.get("details") or {}).get("tagging") or {}).get("per_class") for c in cells)
    if ap:
        grid, affected = _ap_drop_grid(cells, columns, len(classes))
        what, cmap, vmin, vmax, scale = "AP drop (clean − robust AP)", "Reds", 0.0, None, 1.0
    else:
        grid, affected = _robust_grid(cells, columns, samples, len(classes))
        what, cmap, vmin, vmax, scale = "robust accuracy (%)", "RdYlGn", 0.0, 100.0, 100.0
    rows = sorted(affected, key=lambda i: (-affected[i], i))[:TOP_CLASSES] if len(affected) > TOP_CLASSES \
        else sorted(affected)
    data = np.full((len(rows), len(columns)), np.nan)
    for j, k in enumerate(columns):
        for i, cls in enumerate(rows):
            if cls in grid[k]:
                data[i, j] = grid[k][cls] * scale
    fig = Figure(figsize=(max(4.5, 0.5 * len(columns) + 3.0), max(2.6, 0.28 * len(rows) + 1.8)), layout="constrained")
    ax = fig.subplots()
    ax.grid(False)
    im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([classes[i] if i < len(classes) else str(i) for i in rows], fontsize=7)
    _heatmap_columns(ax, report, cells, columns)
    if data.size and data.size <= 240:
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if data[i, j] == data[i, j]:
                    ax.text(j, i, f"{data[i, j]:.0f}" if scale == 100.0 else f"{data[i, j]:.2f}", ha="center",
                            va="center", fontsize=6)
    fig.colorbar(im, ax=ax, label=what, shrink=0.8)
    shown = f"the {len(rows)} most affected of {len(affected)} classes" if len(affected) > len(rows) else "every class"
    fig.suptitle(f"{model} ({defense}): {what} by class\nworst case over attacks; {shown}", fontsize=9)
    return fig


def _heatmap_columns(ax: Axes, report: dict, cells: list[dict], columns: list[tuple]) -> None:
    """One column label per (threat, step): the threat's name over each modality's ε."""
    by = {}
    for c in cells:
        by.setdefault((c["threat"], c["step"]), c)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels([f"{t}\n" + "\n".join("∞" if by[(t, s)]["eps"][m] is None else f"{by[(t, s)]['eps'][m]:g}"
                                             for m in sorted(by[(t, s)]["eps"])) for t, s in columns], fontsize=6)
    ax.set_xlabel("threat and ε per modality (" + ", ".join(f"{m}: {_units(report, m)}"
                                                            for m in sorted({m for c in cells for m in c["eps"]})) + ")",
                  fontsize=7)


def _latent_figure(report: dict, model: str, defense: str, samples: dict) -> Figure:
    m = _models(report)[(model, defense)]
    preds = [p for p in report["metric_predicts_robustness"] if (p["model"], p["defense"]) == (model, defense)]
    series = list(dict.fromkeys((p["metric"], p["series"]) for p in preds))
    k = len(report["data"]["task"]["classes"])
    cols = min(len(series), 3)
    rows = (len(series) + cols - 1) // cols
    fig = Figure(figsize=(3.9 * cols + 1.8, 3.2 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    combos = list(dict.fromkeys((p["attack"], p["threat"], p["step"]) for p in preds))
    palette = mpl.colormaps["tab10"].colors
    for i, (metric, name) in enumerate(series):
        ax = axes[i // cols][i % cols]
        values = (m["metrics"].get(metric, {}).get("per_class") or {}).get(name) or {}
        for j, (attack, threat, step) in enumerate(combos):
            p = next((p for p in preds if (p["metric"], p["series"], p["attack"], p["threat"], p["step"])
                      == (metric, name, attack, threat, step)), None)
            if p is None:
                continue
            drop = per_class_drop(samples.get(f"{model}/{defense}/{attack}/{threat}/{step}", []), k)
            common = sorted((c for c in drop if values.get(c) is not None and values[c] == values[c]), key=str)
            rho = p["spearman_rho"]
            ax.scatter([values[c] for c in common], [100 * drop[c] for c in common], s=14,
                       color=mpl.colors.to_hex(palette[j % len(palette)]),
                       label=f"{attack} {threat}: ρ " + ("n/a" if rho is None or rho != rho else f"{rho:.2f}"))
        ax.set_xlabel(f"{metric} ({name} latent), per class", fontsize=8)
        ax.set_ylabel("robust accuracy drop (points)", fontsize=8)
        ax.legend(fontsize=6)
    for j in range(len(series), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.suptitle(f"{model} ({defense}): latent metrics vs robustness drop at the strongest budget, one point per class",
                 fontsize=9)
    return fig


def _cost_rows(report: dict) -> tuple[list[dict], str]:
    for f in report.get("findings") or []:
        if f["rows"] and "train_s" in f["rows"][0]:
            label = "mean robust score"
            for r in f["rows"]:
                label = r.get("measure", label)
            return f["rows"], label
    return [], ""


def _cost_figure(report: dict) -> Figure:
    rows, _ = _cost_rows(report)
    colors = _colors(report)
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    with_backward = any(r.get("backward_samples") for r in rows)
    fig = Figure(figsize=(9.5 if with_backward else 5.6, 3.8), layout="constrained")
    axes = fig.subplots(1, 2 if with_backward else 1, squeeze=False)[0]
    xs = [("train_s", "training wall time (s)")] + ([("backward_samples", "backward passes (samples)")]
                                                    if with_backward else [])
    for ax, (key, xlabel) in zip(axes, xs):
        for name in dict.fromkeys(r["model"] for r in rows):
            mine = sorted((r for r in rows if r["model"] == name), key=lambda r: (r.get(key) or 0))
            ax.plot([r.get(key) or 0 for r in mine], [100 * r["mean_robust"] for r in mine], color=colors[name],
                    linewidth=0.8, alpha=0.6)
            for r in mine:
                ax.scatter([r.get(key) or 0], [100 * r["mean_robust"]], color=colors[name],
                           marker=markers[defenses.index(r["defense"]) % len(markers)], s=30)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean robust score over attacked cells (%)", fontsize=8)
    handles = [Line2D([], [], color=colors[n], marker="o", linestyle="-", label=n)
               for n in dict.fromkeys(r["model"] for r in rows)]
    handles += [Line2D([], [], color="#444444", marker=markers[i % len(markers)], linestyle="", label=f"defense: {d}")
                for i, d in enumerate(defenses)]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False)
    fig.suptitle("Each defense's robustness against its training cost (worst attack per budget)", fontsize=10)
    return fig


def plan_plots(report: dict) -> list[Plot]:
    """Every figure the report has, in page order; nothing is drawn."""
    cells = report["cells"]
    plots: list[Plot] = []
    if not cells:
        return plots
    threats = list(dict.fromkeys(c["threat"] for c in cells))
    plots.append(Plot("overview", "overview", "Robust accuracy vs ε, worst case over attacks",
                      "One panel per threat; fused models solid, uni-modal dashed.", {},
                      lambda s: _overview_figure(report)))
    measures = [m for m in MEASURES if m[0] == "robust_accuracy" or any(_value(c, m[0]) is not None for c in cells)]
    for measure in measures:
        key, label = measure[0], measure[1].replace(" (%)", "")
        prefix = "curve" if key == "robust_accuracy" else f"curve-{slug(key)}"
        for t in threats:
            tc = [c for c in cells if c["threat"] == t and _value(c, key) is not None]
            attacks = list(dict.fromkeys(c["attack"] for c in tc))
            for a in attacks:
                ac = [c for c in tc if c["attack"] == a]
                only = len(attacks) == 1
                title = f"{label} vs ε — threat {t}, attack {a}" + ("\n(the only attack: also the worst case)" if only else "")
                plots.append(Plot(f"{prefix}--{slug(t)}--{slug(a)}", "curve", title,
                                  f"{label} against the budget of threat {t} under {a}.",
                                  {"metric": key, "threat": t, "attack": a, "worst": only},
                                  lambda s, ac=ac, m=measure, title=title: _curve_figure(report, ac, m, title)))
            if len(attacks) > 1:
                title = f"{label} vs ε — threat {t}\nworst case over {', '.join(attacks)}"
                plots.append(Plot(f"{prefix}--{slug(t)}--worst", "curve", title,
                                  f"Per model and budget, the lowest {label} any attack reached.",
                                  {"metric": key, "threat": t, "attack": None, "worst": True},
                                  lambda s, tc=tc, m=measure, title=title: _curve_figure(report, tc, m, title)))
    for m in report["models"]:
        if any((c["model"], c["defense"]) == (m["name"], m["defense"]) for c in cells):
            plots.append(Plot(f"heatmap--{slug(m['name'])}--{slug(m['defense'])}", "heatmap",
                              f"Per-class robustness — {m['name']} ({m['defense']})",
                              "Each class's robust score at each budget (worst case over attacks).",
                              {"model": m["name"], "defense": m["defense"]},
                              lambda s, n=m["name"], d=m["defense"]: _heatmap_figure(report, n, d, s)))
    for key in dict.fromkeys((p["model"], p["defense"]) for p in report.get("metric_predicts_robustness") or []):
        plots.append(Plot(f"latent--{slug(key[0])}--{slug(key[1])}", "latent",
                          f"Latent metrics vs robustness drop — {key[0]} ({key[1]})",
                          "One point per class; ρ is Spearman's correlation from report.json.",
                          {"model": key[0], "defense": key[1]},
                          lambda s, key=key: _latent_figure(report, key[0], key[1], s)))
    if len({c["defense"] for c in cells}) > 1 and _cost_rows(report)[0]:
        plots.append(Plot("defense-cost", "defense_cost", "Defenses: robustness against training cost",
                          "Mean robust score over each model's attacked cells against what training cost.", {},
                          lambda s: _cost_figure(report)))
    seen: dict[str, int] = {}
    for p in plots:  # two names that slug alike must not share a file
        p.title = p.title.replace("\n", " ")  # the figure's own title may wrap; links and headings do not
        if p.id in seen:
            seen[p.id] += 1
            p.id = f"{p.id}-{seen[p.id]}"
        else:
            seen[p.id] = 0
    return plots


def svg(fig: Figure) -> str:
    """The figure as an SVG document, byte-identical for the same figure (no date, fixed ids)."""
    buf = io.StringIO()
    with mpl.rc_context(RC):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    return buf.getvalue()


def inline_svg(document: str, prefix: str) -> str:
    """An SVG document as an element to put inside HTML: no XML prolog or DOCTYPE, and every id
    prefixed so that the figures of one page do not share ids."""
    body = document[document.index("<svg"):]
    ids = set(re.findall(r'\bid="([^"]+)"', body))

    def fix(m):
        return f'{m.group(1)}{prefix}-{m.group(2)}{m.group(3)}' if m.group(2) in ids else m.group(0)

    return re.sub(r'(\bid="|href="#|url\(#)([^")]+)([")])', fix, body)


def samples_by_cell(lines: Iterable[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for x in lines:
        out.setdefault(x["cell"], []).append(x)
    return out
