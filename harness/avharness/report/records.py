"""The typed records a report is made of: one ``SampleRecord`` per (cell, sample), one ``CellRecord``
per cell, one ``ModelRecord`` per trained (model, defense).

The executor builds each ``CellRecord`` once, with its samples attached; the checks, the findings and
the renderers all read those same records. ``report.json`` holds the cells without their samples
(they go to ``samples.jsonl``, one line each, keyed by the cell id). The JSON Schema of the whole
report is ``schema.json`` beside this module.

TypedDicts rather than dataclasses: a record is exactly what is stored in JSON, so a report read
back from disk (``avharness check``, ``avharness report``) has the same shape as one fresh from a run.
"""

from __future__ import annotations

from typing import Any, TypedDict

from ..stats import wilson


class SampleRecord(TypedDict):
    id: str
    target: int | list[int]
    clean_pred: int | list[int]
    adv_pred: int | list[int]
    clean_correct: bool
    robust: bool
    #: null where the success rule does not apply (multiclass: the clean prediction was wrong)
    success: bool | None


class CellRecord(TypedDict, total=False):
    id: str
    key: str
    model: str
    defense: str
    attack: str
    threat: str
    step: int
    norm: dict[str, str]
    #: per modality; null for an unbounded budget (norm none)
    eps: dict[str, float | None]
    canonical: str
    n: int
    clean_accuracy: float
    robust_accuracy: float
    #: 95 % Wilson score intervals of the two accuracies, [lo, hi] (``avharness.stats``)
    clean_accuracy_ci: list[float]
    robust_accuracy_ci: list[float]
    #: the largest achieved perturbation per modality in its own norm
    achieved: dict[str, float]
    metrics: dict[str, float | None]
    higher_is_better: dict[str, bool]
    #: per metric value, a 95 % interval [lo, hi] (Wilson for shares, percentile bootstrap otherwise);
    #: null where the bootstrap had too few defined replicates; values without one are absent
    intervals: dict[str, list[float] | None]
    #: in memory only (kept in the store): bootstrap replicates per value, on resamples shared by
    #: every cell of the same samples, for paired comparisons
    bootstrap: dict[str, list[float | None]]
    attack_stats: dict[str, float]
    success_rule: str | None
    details: dict[str, Any]
    wall_s: float
    reused: bool
    #: in memory only; written to samples.jsonl
    samples: list[SampleRecord]


class ModelRecord(TypedDict, total=False):
    name: str
    plugin: str
    params: dict
    defense: str
    modalities: list[str]
    n_parameters: int
    checkpoint: str
    key: str
    reused: bool
    fit: dict
    weights: dict | None
    metrics: dict


def cell_id(c: CellRecord | dict) -> str:
    return f"{c['model']}/{c['defense']}/{c['attack']}/{c['threat']}/{c['step']}"


def make_cell(stored: dict, *, model: str, defense: str, attack: str, threat: str) -> CellRecord:
    """A cell record from a stored (or fresh) cell result and the names of what made it.

    Accuracies are computed here from the samples, once: the core's definition (a sample is robust
    only if it is correct both clean and under attack), whichever metric plugins the suite lists.
    """
    samples = stored["samples"]
    n = max(len(samples), 1)
    clean_k, robust_k = sum(x["clean_correct"] for x in samples), sum(x["robust"] for x in samples)
    cell: CellRecord = {
        "model": model, "defense": defense, "attack": attack, "threat": threat, "step": stored["step"],
        "key": stored["key"], "norm": stored["norm"], "canonical": stored["canonical"],
        # an unbounded budget's eps is infinite: null, as in the stored cell, whether fresh or reused
        "eps": {m: (None if e is None or e == float("inf") else e) for m, e in stored["eps"].items()},
        "n": stored["n"],
        "clean_accuracy": clean_k / n,
        "robust_accuracy": robust_k / n,
        "clean_accuracy_ci": wilson(clean_k, len(samples)),
        "robust_accuracy_ci": wilson(robust_k, len(samples)),
        "achieved": stored.get("achieved", {}),
        "metrics": stored["metrics"], "higher_is_better": stored["higher_is_better"],
        # a cell stored before intervals existed has none; its accuracies' intervals come from its samples
        "intervals": stored.get("intervals", {}),
        **({"bootstrap": stored["bootstrap"]} if stored.get("bootstrap") else {}),
        "attack_stats": stored.get("attack_stats", {}),
        "success_rule": stored.get("success_rule"),
        **({"details": stored["details"]} if stored.get("details") else {}),
        "wall_s": stored["wall_s"], "reused": stored["reused"],
        "samples": samples,
    }
    cell["id"] = cell_id(cell)
    return cell


def without_samples(cell: CellRecord) -> dict:
    """The cell as report.json holds it (samples go to samples.jsonl; bootstrap replicates stay in the store)."""
    out = {"id": cell["id"]}
    out.update({k: v for k, v in cell.items() if k not in ("samples", "id", "bootstrap")})
    return out


def per_class_drop(samples: list[dict], num_classes: int) -> dict[str, float]:
    """Per class: clean accuracy minus robust accuracy over the samples of that class."""
    clean, robust, count = [0] * num_classes, [0] * num_classes, [0] * num_classes
    for x in samples:
        for c in (x["target"] if isinstance(x["target"], list) else [x["target"]]):
            count[c] += 1
            clean[c] += x["clean_correct"]
            robust[c] += x["robust"]
    return {str(c): (clean[c] - robust[c]) / count[c] for c in range(num_classes) if count[c]}
