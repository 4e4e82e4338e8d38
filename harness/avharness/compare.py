"""Reading a report.json written by any run or copied as a baseline, with one-line errors for anything
else (the gate, ``avharness compare``, ``avharness report`` and the Python API read reports through it)."""

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
