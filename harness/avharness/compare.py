"""``avharness check``: compare a report with a baseline report, cell by cell and metric by metric."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError


def read_report(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: report not found; run a suite first (it writes report.json in its output folder)")
    if path.is_dir():
        path = path / "report.json"
        if not path.exists():
            raise UserError(f"{path}: no report.json in this folder")
    try:
        report = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot read the report ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a JSON report (not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset "
                        f"{exc.start}); give the report.json that `avharness run` wrote") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"{path}: not a readable JSON report ({exc}); give the report.json that `avharness run` "
                        "wrote") from None
    if not isinstance(report, dict) or report.get("schema") != "avharness/report@1":
        raise UserError(f"{path}: not an avharness report (expected schema 'avharness/report@1')")
    problem = _report_problem(report)
    if problem:
        raise UserError(f"{path}: incomplete or damaged avharness report: {problem}; regenerate it with "
                        "`avharness run` (a report is written whole or not at all, so it was edited or cut)")
    return report


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _report_problem(report: dict) -> str | None:
    """What ``compare`` needs and the report lacks (key path and what is wrong), or None."""
    suite = report.get("suite")
    if not isinstance(suite, dict):
        return "no 'suite' mapping" if suite is None else "'suite' is not a mapping"
    if not isinstance(suite.get("name"), str):
        return "suite.name is missing or not a string"
    if not isinstance(suite.get("version"), int) or isinstance(suite.get("version"), bool):
        return "suite.version is missing or not an integer"
    cells = report.get("cells")
    if not isinstance(cells, list):
        return "no 'cells' list" if cells is None else "'cells' is not a list"
    for i, c in enumerate(cells):
        if not isinstance(c, dict):
            return f"cells[{i}] is not a mapping"
        for key in ("id", "canonical"):
            if not isinstance(c.get(key), str):
                return f"cells[{i}].{key} is missing or not a string"
        for key in ("clean_accuracy", "robust_accuracy"):
            if key not in c:
                return f"cells[{i}] ({c['id']}) has no {key!r}"
            if not (c[key] is None or _is_num(c[key])):
                return f"cells[{i}].{key} is not a number"
        metrics = c.get("metrics", {})
        if not isinstance(metrics, dict):
            return f"cells[{i}].metrics is not a mapping"
        bad = next((k for k, v in metrics.items() if not (v is None or _is_num(v))), None)
        if bad is not None:
            return f"cells[{i}].metrics.{bad} is not a number"
    return None


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
