"""The "Findings" of a report: the papers' questions answered from this run's own numbers.

Every sentence here is assembled from the cells of the run; if the run holds no evidence for a
question, the finding says so instead of answering.

1. Are multi-modal models necessarily more robust than uni-modal ones? Each fused model's robust
   accuracy is compared with every uni-modal model's under the same attacker power on the
   modality the uni-modal model reads (a joint threat's audio budget = the audio threat's budget).
2. Do latent metrics predict robustness? The Spearman correlations between per-class metrics and
   per-class robust-accuracy drops, with p < 0.05 counted as evidence.
3. How to fuse for robustness? Fused models ranked by mean robust accuracy over the same cells.
4. Which defense protects, at what cost? Defenses per model: mean robust accuracy and training cost.
"""

from __future__ import annotations

from collections import defaultdict

from ..stats import holm, mcnemar_exact, paired_bootstrap_p

#: the family-wise error rate the findings' paired tests are read at (Holm-corrected)
ALPHA = 0.05


def measure(cells: list[dict], headline: dict | None) -> tuple[str, str]:
    """(label, value key) the findings compare models by.

    Robust accuracy, unless a metric of the run declares a headline value for the task kind and
    every cell has it. (Multi-label tasks: exact match of every tag is near zero for any AudioSet
    model even when clean, so the ``tagging`` metric declares robust mAP as the headline.)
    """
    if headline and cells and all(c["metrics"].get(headline["value"]) is not None for c in cells):  # NaN → null
        return headline["label"], headline["value"]
    return "robust accuracy", "robust_accuracy"


def _score(c, key):
    return c["robust_accuracy"] if key == "robust_accuracy" else c["metrics"][key]


def _worst(cells, key):
    """(model, defense, threat, step) -> the cell with the lowest robust score over attacks."""
    out = {}
    for c in cells:
        k = (c["model"], c["defense"], c["threat"], c["step"])
        if k not in out or _score(c, key) < _score(out[k], key):
            out[k] = c
    return out


def paired_p(a: dict, b: dict, key: str) -> tuple[float | None, str]:
    """Two-sided p-value that cells ``a`` and ``b`` (two models on the same samples) differ in ``key``.

    Robust accuracy: the exact McNemar test on the per-sample robust flags, paired by sample id.
    Another value: the paired bootstrap of the two cells' replicates (drawn on shared resamples).
    None when the cells do not hold the same samples or lack replicates.
    """
    sa, sb = a.get("samples"), b.get("samples")
    if not sa or not sb or [x["id"] for x in sa] != [x["id"] for x in sb]:
        return None, "no paired samples"
    if key == "robust_accuracy":
        return mcnemar_exact([x["robust"] for x in sa], [x["robust"] for x in sb])["p_value"], "exact McNemar"
    ra, rb = (a.get("bootstrap") or {}).get(key), (b.get("bootstrap") or {}).get(key)
    if not ra or not rb or len(ra) != len(rb):
        return None, "no bootstrap replicates"
    return paired_bootstrap_p(ra, rb), "paired bootstrap"


def _significance(rows: list[dict], sign) -> tuple[list[dict], str]:
    """Holm-corrected p-values into ``rows`` (``p_value`` -> ``p_holm``, ``significant``) and a
    sentence counting the significant differences in each direction (``sign(row)`` > 0 / < 0)."""
    adjusted = holm([r["p_value"] for r in rows])
    for r, q in zip(rows, adjusted):
        r["p_holm"] = q
        r["significant"] = q is not None and q < ALPHA
    tested = [r for r in rows if r["p_value"] is not None]
    if not tested:
        return rows, "no comparison could be tested on paired samples"
    tests = sorted({r["test"] for r in tested})
    up = sum(1 for r in tested if r["significant"] and sign(r) > 0)
    down = sum(1 for r in tested if r["significant"] and sign(r) < 0)
    return rows, (f"{up + down} of {len(tested)} differences are significant after Holm correction "
                  f"({' / '.join(tests)}, family-wise α = {ALPHA:g}): {up} higher, {down} lower")


def _budget(c):
    return {m: (c["norm"][m], c["eps"][m]) for m in c["eps"]}


def _attacked(c):
    return any(e is None or e > 0 for e in c["eps"].values())


def findings(cells: list[dict], models: list[dict], predictions: list[dict], headline: dict | None = None) -> list[dict]:
    """The papers' questions answered from the run's cell records, model records and metric predictions."""
    models = {(m["name"], m["defense"]): m for m in models}
    label, key = measure(cells, headline)
    worst = [c for c in _worst(cells, key).values() if _attacked(c)]
    mean = defaultdict(list)  # (model, defense) -> its score in each attacked (threat, budget)
    for c in worst:
        mean[(c["model"], c["defense"])].append(_score(c, key))
    return (_fused_vs_unimodal(worst, models, label, key) + _latent_predictors(predictions)
            + _fusion_ranking(mean, models, label) + _defenses(worst, mean, models, label, key))


def _fused_vs_unimodal(worst, models, label, key):
    """1. Fused vs uni-modal, at matched attacker power."""
    out = []
    rows = []
    for f in worst:
        fm = models[(f["model"], f["defense"])]
        if len(fm["modalities"]) < 2:
            continue
        fb = _budget(f)
        for u in worst:
            um = models[(u["model"], u["defense"])]
            if len(um["modalities"]) != 1 or u["defense"] != f["defense"]:
                continue
            m = um["modalities"][0]
            if _budget(u) == {m: fb[m]} if m in fb else False:
                p, test = paired_p(f, u, key)
                rows.append({"fused": f["model"], "uni": u["model"], "defense": f["defense"], "threat": f["threat"],
                             "budget": f["canonical"], "fused_robust": _score(f, key),
                             "uni_robust": _score(u, key), "measure": label, "p_value": p, "test": test})
    if rows:
        rows, significance = _significance(rows, lambda r: r["fused_robust"] - r["uni_robust"])
        worse = [r for r in rows if r["fused_robust"] < r["uni_robust"]]
        joint = [r for r in rows if r["budget"].count("|")]
        joint_worse = [r for r in joint if r["fused_robust"] < r["uni_robust"]]
        answer = (f"No. In {len(worse)} of {len(rows)} comparisons a fused model had a lower {label} than a "
                  f"uni-modal model facing the same budget on the modality it reads"
                  if worse else
                  f"Not refuted here: in all {len(rows)} comparisons every fused model's {label} was at least "
                  f"each uni-modal model's facing the same budget on its modality")
        if joint:
            answer += f"; under joint threats, {len(joint_worse)} of {len(joint)}"
        answer += f". Fused vs uni-modal on the same samples: {significance} for the fused model."
        out.append({"question": "Are multi-modal models necessarily more robust than uni-modal ones?",
                    "answer": answer, "rows": rows})
    else:
        out.append({"question": "Are multi-modal models necessarily more robust than uni-modal ones?",
                    "answer": "No evidence in this run: it needs uni-modal and fused models attacked with matching budgets.",
                    "rows": []})

    return out


def _latent_predictors(predictions):
    """2. Latent metrics as predictors of the per-class robustness drop."""
    out = []
    preds = [p for p in predictions if p["spearman_rho"] is not None
             and p["spearman_rho"] == p["spearman_rho"]]
    if preds:
        sig = [p for p in preds if p["p_value"] is not None and p["p_value"] < 0.05]
        neg = [p for p in sig if p["spearman_rho"] < 0]
        best = min(preds, key=lambda p: p["spearman_rho"])
        answer = (f"{len(neg)} of {len(preds)} (metric, latent, model, attack, threat) correlations were significantly "
                  f"negative (p < 0.05: classes the metric rates better lose less), {len(sig) - len(neg)} significantly "
                  f"positive; the strongest was {best['metric']} {best['series']} of {best['model']} under "
                  f"{best['attack']} {best['threat']} (ρ = {best['spearman_rho']:.2f}, p = {best['p_value']:.3g}, "
                  f"{best['n_classes']} classes).")
        out.append({"question": "Do latent-space metrics predict robustness?", "answer": answer, "rows": sig})
    else:
        out.append({"question": "Do latent-space metrics predict robustness?",
                    "answer": "No evidence in this run: add the convexity or density metric.", "rows": []})

    return out


def _fusion_ranking(mean, models, label):
    """3. The fused models ranked by their mean score."""
    out = []
    fused = sorted({k for k in mean if len(models[k]["modalities"]) > 1}, key=lambda k: -sum(mean[k]) / len(mean[k]))
    if len(fused) > 1:
        ranked = [{"model": k[0], "defense": k[1], "mean_robust": sum(mean[k]) / len(mean[k]), "cells": len(mean[k])}
                  for k in fused]
        head = ", ".join(f"{r['model']} ({r['defense']}) {100 * r['mean_robust']:.1f}%" for r in ranked)
        out.append({"question": "How to fuse modalities for robustness?",
                    "answer": f"Mean {label} over each fused model's attacked cells (worst attack per budget; "
                              f"the models face the same threats only if the suite gives them the same ones): {head}.",
                    "rows": ranked})
    return out


def _defenses(worst, mean, models, label, key):
    """4. Each defense's robustness against its training cost, and paired against the first defense."""
    out = []
    defenses = sorted({d for _, d in mean})
    if len(defenses) > 1:
        rows = []
        for name in sorted({m for m, _ in mean}):
            for d in defenses:
                if (name, d) in mean:
                    fit = models[(name, d)]["fit"]
                    rows.append({"model": name, "defense": d, "mean_robust": sum(mean[(name, d)]) / len(mean[(name, d)]),
                                 "train_s": fit.get("wall_s"),
                                 "backward_samples": (fit.get("backward_samples") or 0)
                                 + (fit.get("attack_backward_samples") or 0)})
        best = defaultdict(lambda: None)
        for r in rows:
            if best[r["model"]] is None or r["mean_robust"] > best[r["model"]]["mean_robust"]:
                best[r["model"]] = r
        wins = defaultdict(int)
        for r in best.values():
            wins[r["defense"]] += 1
        # each defense against the suite's first, cell by cell on the same samples (paired tests)
        reference = next(d for d in dict.fromkeys(c["defense"] for c in worst))
        by_key = {(c["model"], c["defense"], c["threat"], c["step"]): c for c in worst}
        tests = []
        for (m, d, t, st), c in by_key.items():
            ref = by_key.get((m, reference, t, st))
            if d != reference and ref is not None:
                p, test = paired_p(c, ref, key)
                tests.append({"model": m, "defense": d, "reference": reference, "threat": t, "budget": c["canonical"],
                              "robust": _score(c, key), "reference_robust": _score(ref, key), "p_value": p, "test": test})
        tests, significance = _significance(tests, lambda r: r["robust"] - r["reference_robust"])
        answer = (
            f"Most robust defense per model (mean {label}): "
            + ", ".join(
                f"{d} for {n} model{'s' if n > 1 else ''}"
                for d, n in sorted(wins.items(), key=lambda x: -x[1])
            )
            + f". Each other defense against {reference}, cell by cell on the same samples: {significance} "
            "than with " + reference + ". Training cost (wall time, backward passes in samples) is in the table."
        )
        out.append(
            {
                "question": "Which defense protects, and at what cost?",
                "answer": answer,
                "rows": rows,
                "paired": tests,
            }
        )
    return out


def _p(p, significant) -> str:
    if p is None:
        return "–"
    return f"{p:.2g}" + (" *" if significant else "")


def render(items: list[dict]) -> list[str]:
    md = [
        "## Findings",
        "",
        "Each answer is computed from this run's cells (see `findings` in report.json).",
        "",
    ]
    for f in items:
        md += [f"**{f['question']}** {f['answer']}", ""]
        rows = f["rows"]
        if rows and "fused" in rows[0]:
            what = rows[0].get("measure", "robust accuracy")
            md += [
                f"| fused | uni-modal | defense | budget | fused {what} | uni-modal {what} | p (Holm) |",
                "|---|---|---|---|---|---|---|",
            ]
            md += [
                f"| {r['fused']} | {r['uni']} | {r['defense']} | {r['budget']} | {100 * r['fused_robust']:.1f} | "
                f"{100 * r['uni_robust']:.1f} | {_p(r.get('p_holm'), r.get('significant'))} |"
                for r in rows[:40]
            ]
            md += (
                [f"| … {len(rows) - 40} more in report.json | | | | | | |"] if len(rows) > 40 else []
            )
            md.append("")
        elif rows and "train_s" in rows[0]:
            md += [
                "| model | defense | mean robust | training s | backward samples |",
                "|---|---|---|---|---|",
            ]
            md += [
                f"| {r['model']} | {r['defense']} | {100 * r['mean_robust']:.1f} | {r['train_s'] or 0:.1f} | "
                f"{r['backward_samples']:,} |"
                for r in rows
            ]
            md.append("")
    return md
