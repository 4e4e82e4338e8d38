"""Exact differences between two reports' numbers, for tests that expect two runs to agree."""

from __future__ import annotations

from avharness import UserError


def _values(cell: dict) -> dict[str, float]:
    # The core's own accuracies, then every metric plugin's values under their own prefix.
    vals = {"clean_accuracy": cell["clean_accuracy"], "robust_accuracy": cell["robust_accuracy"]}
    vals.update({f"metrics.{k}": v for k, v in cell.get("metrics", {}).items()})
    return vals


def compare(report: dict, baseline: dict, tolerance: float = 0.0) -> list[str]:
    """Lines describing every difference beyond ``tolerance`` (absolute); empty when they agree."""
    rs, bs = report["suite"], baseline["suite"]
    if (rs["name"], rs["version"]) != (bs["name"], bs["version"]):
        raise UserError(f"the report is suite {rs['name']!r} v{rs['version']} but the baseline is "
                        f"{bs['name']!r} v{bs['version']}: they are not comparable")
    problems = []
    ours = {c["id"]: c for c in report["cells"]}
    theirs = {c["id"]: c for c in baseline["cells"]}
    for cid in theirs.keys() - ours.keys():
        problems.append(f"{cid}: in the baseline but missing from the report")
    for cid in sorted(ours.keys() & theirs.keys()):
        a, b = _values(ours[cid]), _values(theirs[cid])
        if ours[cid]["canonical"] != theirs[cid]["canonical"]:
            problems.append(f"{cid}: threat differs ({ours[cid]['canonical']} vs baseline {theirs[cid]['canonical']})")
            continue
        for k in sorted(b):
            if k not in a:
                problems.append(f"{cid}: metric {k} missing from the report")
                continue
            x, y = a[k], b[k]
            if x is None or y is None:  # undefined (NaN in the run), e.g. the SNR of a zero perturbation
                if (x is None) != (y is None):
                    problems.append(f"{cid}: {k} {y} -> {x} (defined in only one of them)")
                continue
            if abs(x - y) > tolerance:
                problems.append(f"{cid}: {k} {y:.6g} -> {x:.6g} (moved {x - y:+.6g}, tolerance {tolerance:g})")
    return problems
