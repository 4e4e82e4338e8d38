"""Regression gates and comparisons between reports: ``avharness check`` and ``avharness compare``.

``check REPORT --baseline BASE`` compares two runs of one suite on the same samples, cell by cell and
value by value, and fails (exit 1) only on a regression:

- each value knows its direction: the core's accuracies are higher-is-better, metric values carry
  the ``higher_is_better`` their metric declared (stored per cell); a move the better way is an
  improvement and passes; ``two_sided`` makes any move fail (exact-reproduction gates);
- a move counts only beyond its tolerance (``--tolerance NAME=X``, NAME an exact value name or a
  glob such as ``*_snr_db_mean``; a bare number is the default, 0);
- with ``test="mcnemar"`` the accuracies (for which both runs' samples.jsonl hold per-sample flags)
  fail only on a significant paired regression: the exact McNemar test per cell, Holm-corrected
  over every cell tested, at ``alpha``. Other values keep the tolerance rule.

Refused (a ``UserError``: exit 2, one line): reports of another suite or suite version, or whose
evaluated samples differ (count, ids hash, split, manifest, seed, success rule). Listed without
failing: other avharness / torch / plugin versions, and cells present in only one report.

``compare A B [C ...]`` puts any reports on the same data side by side (cells matched by model,
defense, attack, threat and budget), with intervals, differences to the first report and paired
McNemar p-values where the sample ids match.
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .compare import read_report
from .errors import UserError
from .stats import holm, ids_sha256, mcnemar_exact

#: values the core computes itself, with their direction and the per-sample flag behind them
CORE = {"clean_accuracy": "clean_correct", "robust_accuracy": "robust"}

EXIT_OK, EXIT_REGRESSION, EXIT_NOT_COMPARABLE = 0, 1, 2


# --------------------------------------------------------------------------------------------
# reading runs


@dataclass
class Run:
    """A report and where it lies (its samples.jsonl is read on demand)."""

    path: Path
    report: dict
    _samples: dict | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return str(self.path)

    def samples(self) -> dict[str, dict[str, dict]]:
        """cell id -> sample id -> the sample's record, from the per-sample file beside the report:
        ``<name>.samples.jsonl`` (or, as committed baselines keep it, ``<name>.samples.jsonl.gz``) for a
        baseline ``<name>.json``, else the run's ``samples.jsonl``."""
        if self._samples is None:
            path = self.path.with_suffix(".samples.jsonl")
            if not path.exists() and path.with_suffix(".jsonl.gz").exists():
                path = path.with_suffix(".jsonl.gz")
            if not path.exists():
                path = self.path.parent / str(self.report.get("per_sample", "samples.jsonl"))
            if not path.exists():
                raise UserError(f"{path}: no per-sample file beside {self.path}; a paired test needs both runs' "
                                "samples.jsonl (copy it with the report)")
            out: dict[str, dict[str, dict]] = {}
            text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    x = json.loads(line)
                    out.setdefault(x["cell"], {})[x["id"]] = x
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise UserError(f"{path}:{number}: not an avharness samples line ({type(exc).__name__}: {exc})") from None
            self._samples = out
        return self._samples


def load_run(path: str | Path) -> Run:
    p = Path(path)
    report = read_report(p)
    return Run(p / "report.json" if p.is_dir() else p, report)


def cell_match_key(c: dict) -> tuple:
    """How cells of two reports are matched: what was attacked, how, and with which budget."""
    return (c["model"], c["defense"], c["attack"], c["threat"], c["canonical"])


def cell_label(c: dict) -> str:
    return f"{c['model']}/{c['defense']}/{c['attack']}/{c['threat']} {c['canonical']}"


def _number(run: Run, cell: dict, name: str, v):
    if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    raise UserError(f"{run.label}: cell {cell.get('id', '?')}: value {name!r} is {v!r}, not a number; "
                    "a metric's values must be numbers (or null)")


def cell_values(run: Run, cell: dict) -> dict[str, tuple[float | None, bool | None, list | None]]:
    """name -> (value, higher_is_better or None if undeclared, interval or None); one per name.

    The core's accuracies come first; a metric value of the same name (the ``accuracy`` metric's)
    is the same number from the same flags and is not repeated.
    """
    out = {}
    for name in CORE:
        if name not in cell:
            raise UserError(f"{run.label}: cell {cell.get('id', '?')} has no {name}; not an avharness report cell")
        out[name] = (_number(run, cell, name, cell[name]), True, cell.get(f"{name}_ci"))
    metrics = cell.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise UserError(f"{run.label}: cell {cell.get('id', '?')}: metrics is {type(metrics).__name__}, not an object")
    directions = cell.get("higher_is_better") or {}
    intervals = cell.get("intervals") or {}
    for name, v in metrics.items():
        if name in CORE:
            continue
        hib = directions.get(name)
        out[name] = (_number(run, cell, name, v), hib if isinstance(hib, bool) else None, intervals.get(name))
    return out


def sample_identity(run: Run) -> dict:
    """What must be equal for two runs to have evaluated the same samples the same way."""
    r = run.report
    data = r.get("data") or {}
    ev = data.get("eval") or {}
    ids = ev.get("ids_sha256")
    if ids is None and r.get("cells"):  # a report from before ids were hashed: from its samples.jsonl, if present
        try:
            first = run.samples().get(r["cells"][0]["id"])
            ids = ids_sha256(list(first)) if first else None
        except UserError:
            ids = None
    rules = sorted({str(c.get("success_rule")) for c in r.get("cells", [])})
    return {"split": ev.get("split"), "samples": ev.get("n_effective"), "sample ids sha256": ids,
            "split manifest": data.get("manifest_sha256"), "seed": (r.get("seeds") or {}).get("global"),
            "success rule": ", ".join(rules)}


def _short(v) -> str:
    s = str(v)
    return s[:12] if len(s) == 64 else s


def refuse_other_samples(a: Run, b: Run, what: str = "the baseline", keys: Iterable[str] | None = None) -> None:
    ia, ib = sample_identity(a), sample_identity(b)
    diff = [f"{k} {_short(ia[k])} vs {what}'s {_short(ib[k])}" for k in (keys or ia)
            if ia[k] is not None and ib[k] is not None and ia[k] != ib[k]]
    if diff:
        raise UserError(f"{a.label} and {what} {b.label} evaluated different samples, so they are not comparable: "
                        + "; ".join(diff))


def provenance_notes(a: Run, b: Run, what: str = "baseline") -> list[str]:
    """Version differences worth knowing (they do not fail a gate)."""
    notes = []
    ea, eb = a.report.get("environment") or {}, b.report.get("environment") or {}
    for k in ("avharness", "torch", "numpy", "python", "device"):
        if ea.get(k) != eb.get(k):
            notes.append(f"{k} {ea.get(k)} (this report) vs {eb.get(k)} ({what})")
    pa = {p.get("dist"): p.get("version") for p in a.report.get("plugins") or [] if isinstance(p, dict)}
    pb = {p.get("dist"): p.get("version") for p in b.report.get("plugins") or [] if isinstance(p, dict)}
    for d in sorted(set(pa) | set(pb), key=str):
        if pa.get(d) != pb.get(d):
            notes.append(f"plugin {d} {pa.get(d, 'absent')} (this report) vs {pb.get(d, 'absent')} ({what})")
    sa, sb = a.report.get("suite") or {}, b.report.get("suite") or {}
    if sa.get("sha256") != sb.get("sha256"):
        notes.append(f"suite file differs (sha256 {_short(sa.get('sha256'))} vs {what}'s {_short(sb.get('sha256'))})")
    return notes


# --------------------------------------------------------------------------------------------
# tolerances


@dataclass
class Tolerances:
    default: float = 0.0
    #: (name or glob pattern, tolerance), in the order given
    per_value: list[tuple[str, float]] = field(default_factory=list)

    @classmethod
    def parse(cls, items: list[str] | None) -> Tolerances:
        tol = cls()
        for item in items or []:
            name, _, text = item.rpartition("=")
            name = name.strip().removeprefix("metrics.")
            try:
                value = float(text)
            except ValueError:
                raise UserError(f"--tolerance {item!r}: expected a number or NAME=NUMBER, "
                                "e.g. --tolerance 0.01 --tolerance robust_accuracy=0.02") from None
            if not math.isfinite(value) or value < 0:
                raise UserError(f"--tolerance {item!r}: a tolerance is a finite number >= 0")
            if "=" in item and not name:
                raise UserError(f"--tolerance {item!r}: no value name before '='")
            if name:
                tol.per_value.append((name, value))
            else:
                tol.default = value
        return tol

    def of(self, name: str) -> float:
        for pattern, value in self.per_value:
            if pattern == name:
                return value
        for pattern, value in self.per_value:
            if fnmatch.fnmatchcase(name, pattern):
                return value
        return self.default

    def check_known(self, names: set[str]) -> None:
        for pattern, _ in self.per_value:
            if not any(pattern == n or fnmatch.fnmatchcase(n, pattern) for n in names):
                raise UserError(f"--tolerance {pattern}=...: no value of that name in the reports; they have: "
                                + ", ".join(sorted(names)))


# --------------------------------------------------------------------------------------------
# check


def _paired_flags(a: Run, b: Run, ca: dict, cb: dict, flag: str) -> tuple[list[bool], list[bool]] | None:
    sa, sb = a.samples().get(ca["id"]), b.samples().get(cb["id"])
    if not sa or not sb or set(sa) != set(sb):
        return None
    ids = sorted(sa)
    return [bool(sa[i][flag]) for i in ids], [bool(sb[i][flag]) for i in ids]


def check(report: Run, baseline: Run, tolerances: Tolerances | None = None, *, two_sided: bool = False,
          test: str | None = None, alpha: float = 0.05) -> dict:
    """The gate's verdict as a dict (what ``--format json`` prints); ``result["failed"]`` decides exit 1.

    ``rows``: one per (cell, value) present in both reports, each with ``status``: ``same``
    (within tolerance), ``improvement``, ``regression``, ``moved`` (any move under ``two_sided``, or
    a value whose direction no metric declared), ``noise`` (beyond tolerance but not a significant
    paired change under ``test``), ``undefined`` (defined in the baseline, not in the report).
    """
    tolerances = tolerances or Tolerances()
    _refuse_incomparable(report, baseline, test, alpha)
    ours = {cell_match_key(c): c for c in report.report["cells"]}
    theirs = {cell_match_key(c): c for c in baseline.report["cells"]}
    notes = provenance_notes(report, baseline)
    notes += [f"cell only in the baseline (not checked): {cell_label(theirs[k])}" for k in theirs if k not in ours]
    notes += [f"cell only in this report (not checked): {cell_label(ours[k])}" for k in ours if k not in theirs]
    rows = _rows(report, baseline, ours, theirs, tolerances, notes)
    # paired tests first (Holm over all of them), then every row's status
    if test == "mcnemar":
        _paired_tests(report, baseline, rows, alpha)
    for row in rows:
        row.pop("_cells")
        row["status"] = _status(row, two_sided, test, alpha)
    failing = {"regression", "moved", "undefined"}
    counts = {s: sum(r["status"] == s for r in rows) for s in ("regression", "moved", "undefined", "noise",
                                                                  "improvement", "same")}
    return {"report": report.label, "baseline": baseline.label, "two_sided": two_sided, "test": test,
            "alpha": alpha if test else None, "tolerance": {"default": tolerances.default, **dict(tolerances.per_value)},
            "cells": len(set(ours) & set(theirs)), "values": len(rows), "counts": counts,
            "failed": any(r["status"] in failing for r in rows), "notes": notes, "rows": rows}


def _refuse_incomparable(report: Run, baseline: Run, test: str | None, alpha: float) -> None:
    """Wrong options, another suite or version, or other samples: one line each, before any comparison."""
    if test not in (None, "mcnemar"):
        raise UserError(f"--test {test!r}: the only test is mcnemar")
    if not 0 < alpha < 1:
        raise UserError(f"--alpha {alpha}: must be between 0 and 1")
    rs, bs = report.report["suite"], baseline.report["suite"]
    if (rs["name"], rs["version"]) != (bs["name"], bs["version"]):
        raise UserError(f"{report.label} is suite {rs['name']!r} v{rs['version']} but the baseline is "
                        f"{bs['name']!r} v{bs['version']}: not comparable (refresh the baseline after a suite change)")
    refuse_other_samples(report, baseline)


def _rows(report: Run, baseline: Run, ours: dict, theirs: dict, tolerances: Tolerances, notes: list[str]
          ) -> list[dict]:
    """One row per (cell, value) in both runs; values in only one of them become notes."""
    rows = []
    names: set[str] = set()
    for k in [k for k in theirs if k in ours]:
        a, b = cell_values(report, ours[k]), cell_values(baseline, theirs[k])
        names |= set(a) | set(b)
        for name in b:
            if name not in a:
                notes.append(f"{cell_label(ours[k])}: {name} is in the baseline only (not checked)")
                continue
            x, hib, ci = a[name]
            y, hib_b, ci_b = b[name]
            hib = hib if hib is not None else hib_b
            rows.append({"cell": cell_label(ours[k]), "value": name, "baseline": y, "report": x, "baseline_ci": ci_b,
                         "report_ci": ci, "higher_is_better": hib, "tolerance": tolerances.of(name),
                         "delta": None if x is None or y is None else x - y, "p_value": None, "test": None,
                         "_cells": (ours[k], theirs[k])})
        for name in a:
            if name not in b:
                notes.append(f"{cell_label(ours[k])}: {name} is in this report only (not checked)")
    tolerances.check_known(names)
    return rows


def _paired_tests(report: Run, baseline: Run, rows: list[dict], alpha: float) -> None:
    """An exact McNemar test on the per-sample flags of every core value that moved beyond its tolerance,
    then Holm's correction over all of them (``p_holm``)."""
    for row in rows:
        if row["value"] in CORE and row["delta"] is not None and _status(row, True, None, alpha) != "same":
            flags = _paired_flags(report, baseline, *row["_cells"], CORE[row["value"]])
            if flags is None:
                raise UserError(f"{row['cell']}: the two runs' samples.jsonl do not hold the same samples for this "
                                "cell; a paired test needs them")
            row["test"] = "exact McNemar"
            row["p_value"] = mcnemar_exact(*flags)["p_value"]
    for row, q in zip(rows, holm([r["p_value"] for r in rows])):
        row["p_holm"] = q


def _status(row: dict, two_sided: bool, test: str | None, alpha: float) -> str:
    x, y, d = row["report"], row["baseline"], row["delta"]
    if x is None and y is None:
        return "same"
    if x is None:
        return "undefined"
    if y is None:
        return "moved" if two_sided else "improvement"
    if abs(d) <= row["tolerance"] + 1e-12 * max(1.0, abs(y)):  # 0.58 - 0.6 is -0.0200000000000001 in floats
        return "same"
    if row.get("p_value") is not None and not (row["p_holm"] < alpha):
        return "noise"
    if two_sided or row["higher_is_better"] is None:
        return "moved"
    return "improvement" if (d > 0) == row["higher_is_better"] else "regression"


# --------------------------------------------------------------------------------------------
# rendering the verdict

_ORDER = ("regression", "moved", "undefined", "noise", "improvement")
_LABEL = {"regression": "REGRESSION", "moved": "MOVED", "undefined": "UNDEFINED", "noise": "noise",
          "improvement": "improvement", "same": "same"}


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.4g}"


def _ci(ci) -> str:
    return f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""


def _why(row: dict) -> str:
    parts = [f"tolerance {row['tolerance']:g}"]
    if row.get("p_value") is not None:
        parts.append(f"McNemar p {row['p_value']:.3g}, Holm {row['p_holm']:.3g}")
    if row["higher_is_better"] is None:
        parts.append("direction not declared")
    return ", ".join(parts)


def _summary(res: dict) -> str:
    c = res["counts"]
    return (f"{res['cells']} cells, {res['values']} values: {c['regression']} regressions, {c['moved']} moved, "
            f"{c['undefined']} undefined, {c['improvement']} improvements, {c['noise']} within noise, "
            f"{c['same']} unchanged")


def render_text(res: dict) -> str:
    lines = [f"{res['report']} against baseline {res['baseline']}: {_summary(res)}"]
    for row in sorted((r for r in res["rows"] if r["status"] != "same"), key=lambda r: _ORDER.index(r["status"])):
        delta = "" if row["delta"] is None else f" ({row['delta']:+.4g})"
        lines.append(f"  {_LABEL[row['status']]:<11} {row['cell']}: {row['value']} {_fmt(row['baseline'])} -> "
                     f"{_fmt(row['report'])}{delta}; {_why(row)}")
    lines += [f"  note: {n}" for n in res["notes"]]
    lines.append("FAIL: a value regressed" if res["failed"] else "PASS: no regression")
    return "\n".join(lines)


def render_md(res: dict) -> str:
    verdict = "❌ **FAIL**: a value regressed" if res["failed"] else "✅ **PASS**: no regression"
    how = ("any move beyond tolerance fails" if res["two_sided"] else "only moves the worse way fail")
    if res["test"]:
        how += f"; accuracies fail only on a significant paired change (exact McNemar, Holm, α = {res['alpha']:g})"
    md = [f"### avharness check: {verdict}", "",
          f"`{res['report']}` against baseline `{res['baseline']}` — {_summary(res)}; {how}.", ""]
    changed = sorted((r for r in res["rows"] if r["status"] != "same"), key=lambda r: _ORDER.index(r["status"]))
    if changed:
        md += ["| status | cell | value | baseline | report | Δ | tolerance | p (Holm) |", "|---|---|---|---|---|---|---|---|"]
        for r in changed[:200]:
            p = "–" if r.get("p_holm") is None else f"{r['p_holm']:.3g}"
            md.append(f"| {_LABEL[r['status']]} | {r['cell']} | {r['value']} | {_fmt(r['baseline'])}{_ci(r['baseline_ci'])} "
                      f"| {_fmt(r['report'])}{_ci(r['report_ci'])} | {_fmt(r['delta'])} | {r['tolerance']:g} | {p} |")
        if len(changed) > 200:
            md.append(f"| … {len(changed) - 200} more (see --format json) | | | | | | | |")
        md.append("")
    if res["notes"]:
        md += ["Notes (not failing):", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(md)


def render_json(res: dict) -> str:
    return json.dumps(res, indent=2, allow_nan=False)


# --------------------------------------------------------------------------------------------
# compare


def compare_runs(runs: list[Run], values: list[str] | None = None) -> str:
    """A Markdown table of ``runs`` side by side, the first the reference (differences are to it)."""
    if len(runs) < 2:
        raise UserError("compare needs at least two reports")
    for r in runs[1:]:
        refuse_other_samples(r, runs[0], "the first report", keys=["split", "samples", "sample ids sha256", "split manifest"])
    if not values:
        values = list(CORE)
        for r in runs:
            h = r.report.get("headline")
            if isinstance(h, dict) and h.get("value") and h["value"] not in values:
                values.append(h["value"])
    cells = [{cell_match_key(c): c for c in r.report["cells"]} for r in runs]
    keys = [k for k in cells[0] if all(k in cs for cs in cells[1:])]
    names = [f"R{i + 1}" for i in range(len(runs))]
    md = ["# avharness compare", ""]
    md += [f"- **{n}**: `{r.label}` (suite {r.report['suite']['name']} v{r.report['suite']['version']}, "
           f"seed {r.report.get('seeds', {}).get('global')}, torch {r.report.get('environment', {}).get('torch')})"
           for n, r in zip(names, runs)]
    md += ["", "Values with 95 % intervals; Δ is each report minus R1; p is the exact McNemar test on the paired "
           "per-sample flags (accuracies, when both samples.jsonl hold the same sample ids), Holm-corrected over "
           "the table, * below 0.05.", ""]
    rows, ps = [], []
    for k in keys:
        vals = [cell_values(r, cs[k]) for r, cs in zip(runs, cells)]
        for v in values:
            if not all(v in x for x in vals):
                continue
            row = [cell_label(cells[0][k]), v]
            row += [f"{_fmt(x[v][0])}{_ci(x[v][2])}" for x in vals]
            for j in range(1, len(runs)):
                a, b = vals[0][v][0], vals[j][v][0]
                row.append("–" if a is None or b is None else f"{b - a:+.4g}")
                p = None
                if v in CORE:
                    try:
                        flags = _paired_flags(runs[j], runs[0], cells[j][k], cells[0][k], CORE[v])
                    except UserError:
                        flags = None
                    p = mcnemar_exact(*flags)["p_value"] if flags else None
                ps.append(p)
                row.append(len(ps) - 1)  # index into ps, replaced by the Holm-adjusted value below
            rows.append(row)
    adjusted = holm(ps)
    header = ["cell", "value"] + names + [x for n in names[1:] for x in (f"Δ {n}", f"p {n}")]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        out = [("–" if adjusted[c] is None else f"{adjusted[c]:.3g}" + (" *" if adjusted[c] < 0.05 else ""))
               if isinstance(c, int) else c for c in row]
        md.append("| " + " | ".join(out) + " |")
    missing = [(n, cell_label(c)) for n, cs in zip(names, cells) for kk, c in cs.items() if kk not in keys]
    if missing:
        md += ["", "Cells not in every report (left out):", ""] + [f"- {c} (only in {n} and maybe others)" for n, c in missing]
    return "\n".join(md) + "\n"
