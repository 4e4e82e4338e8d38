"""The Python API, for notebooks and scripts: run a suite, load a finished run, read it as tables.

    import avharness
    report = avharness.run("suites/quickstart.yaml", overrides={"defenses.0.epochs": 2}, limit=100)
    report.cells()                       # one row per cell: model, defense, attack, threat, eps_audio, ...
    report.samples()                     # one row per (cell, sample)
    fig, = report.plot("curve", threat="audio", worst=True)

``run`` does what ``avharness run`` does (same store, same resume, same report files) with plain log
lines instead of progress bars. pandas and matplotlib are imported only when a table or figure is
asked for, so ``import avharness`` stays light.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    import pandas as pd

#: the figure kinds ``Report.plot`` draws (see ``report/plots.py``)
PLOT_KINDS = ("overview", "curve", "heatmap", "latent", "defense_cost")


def _override_list(overrides) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        # JSON is YAML: each value is parsed back exactly as --set KEY=VALUE parses it
        return [f"{k}={json.dumps(v, default=str)}" for k, v in overrides.items()]
    if isinstance(overrides, str):
        return [overrides]
    return [str(x) for x in overrides]


def run(suite: str | Path | dict, overrides: dict[str, Any] | list[str] | None = None, out: str | Path | None = None,
        device: str | None = None, limit: int | None = None, *, quiet: bool = False) -> Report:
    """Run a suite and return its report, as ``avharness run SUITE`` would.

    ``suite``: a suite YAML file, or the suite itself as a dict (written to ``<out>/suite.yaml``, so
    the report points at the file that ran and errors name its lines). ``overrides``: ``{"key.path":
    value}`` or ``["key.path=value", ...]`` as ``--set``. ``out``: the output folder (default
    ``reports/<suite name>``). ``device``: auto, cpu or cuda (default: the suite's). ``limit``: evaluate
    only the first N samples. ``quiet``: no log lines on stderr.
    """
    from .executor import run_suite
    from .progress import Reporter
    from .report import write_report
    from .store import ensure_writable
    from .suite import load_suite

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit must be an integer >= 1, got {limit!r}")
    if device is not None and device not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device {device!r}; use auto, cpu or cuda")
    sets = _override_list(overrides)
    if isinstance(suite, dict):
        name = suite.get("name")
        if not isinstance(name, str) or not name:
            raise UserError("a suite given as a dict needs a 'name' (a string): it names the output folder")
        folder = ensure_writable(Path(out) if out is not None else Path("reports") / name)
        path = folder / "suite.yaml"
        try:
            text = json.dumps(suite, indent=2, allow_nan=False)  # JSON is YAML; keeps the keys' order
        except (TypeError, ValueError) as exc:
            raise UserError(f"the suite dict cannot be written as YAML ({exc}); use plain str, int, float, bool, "
                            "list and dict values") from None
        path.write_text(f"# written by avharness.run from a dict\n{text}\n")
        loaded = load_suite(path, sets)
    else:
        if not Path(suite).exists():
            raise UserError(f"{suite}: suite file not found")
        loaded = load_suite(suite, sets)
        folder = ensure_writable(Path(out) if out is not None else Path("reports") / loaded.name)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with Reporter(enabled=not quiet, plain=True) as reporter:
        res = run_suite(loaded, folder, device=device, limit=limit, reporter=reporter)
        write_report(res, folder, started)
    return load_report(folder)


def load_report(path: str | Path) -> Report:
    """A finished run's report, from its output folder or its report.json."""
    from .compare import read_report

    path = Path(path)
    data = read_report(path)
    return Report(data, path.parent if path.is_file() else path)


class Report:
    """A run's report: ``json`` is report.json as a dict, ``path`` the run's folder."""

    def __init__(self, data: dict, path: str | Path):
        self.json = data
        self.path = Path(path)
        self._samples: dict | None = None

    def __repr__(self) -> str:
        s = self.json["suite"]
        return f"<avharness Report {s['name']} v{s['version']}: {len(self.json['cells'])} cells, {self.path}>"

    # ---- tables ---------------------------------------------------------------------------------
    def modalities(self) -> list[str]:
        found = set(self.json["data"]["specs"]) | {m for c in self.json["cells"] for m in c["eps"]}
        return sorted(found)

    def _cell_columns(self, c: dict, fused: dict) -> dict:
        row = {"cell": c["id"], "model": c["model"], "defense": c["defense"], "attack": c["attack"],
               "threat": c["threat"], "step": c["step"], "fused": fused.get((c["model"], c["defense"]), False)}
        for m in self.modalities():
            if m in c["eps"]:
                row[f"norm_{m}"] = c["norm"][m]
                row[f"eps_{m}"] = float("inf") if c["eps"][m] is None else float(c["eps"][m])
            else:
                row[f"norm_{m}"], row[f"eps_{m}"] = None, float("nan")
        return row

    def cells(self) -> pd.DataFrame:
        """One row per cell (pandas DataFrame): names, step, per-modality ``norm_<m>`` / ``eps_<m>`` (inf:
        unbounded, NaN: the threat leaves that modality alone), n, clean and robust accuracy (with
        ``<value>_ci_low`` / ``_ci_high`` where the report has intervals), then every metric, wall_s, reused.
        A metric named like a core column (``robust_accuracy`` from the accuracy metric) is the core's."""
        import pandas as pd

        fused = {(m["name"], m["defense"]): len(m["modalities"]) >= 2 for m in self.json["models"]}
        metrics = list(dict.fromkeys(k for c in self.json["cells"] for k in c["metrics"]))
        rows = []
        for c in self.json["cells"]:
            row = self._cell_columns(c, fused)
            row.update({"n": c["n"], "clean_accuracy": c["clean_accuracy"], "robust_accuracy": c["robust_accuracy"]})
            for key in [k[:-3] for k in c if k.endswith("_ci")]:
                ci = c[f"{key}_ci"]
                row[f"{key}_ci_low"], row[f"{key}_ci_high"] = (ci[0], ci[1]) if ci else (None, None)
            for k in metrics:
                if k not in row:
                    v = c["metrics"].get(k)
                    row[k] = float("nan") if v is None else float(v)
            row.update({"wall_s": c["wall_s"], "reused": c["reused"]})
            rows.append(row)
        columns = list(dict.fromkeys(k for r in rows for k in r)) if rows else \
            ["cell", "model", "defense", "attack", "threat", "step", "n", "clean_accuracy", "robust_accuracy"]
        df = pd.DataFrame(rows, columns=columns)
        return df.astype(self._dtypes(df))

    def _dtypes(self, df) -> dict:
        out = {}
        for col in df.columns:
            if col in ("cell", "model", "defense", "attack", "threat", "sample") or col.startswith("norm_"):
                out[col] = "string"
            elif col in ("step", "n"):
                out[col] = "int64"
            elif col in ("fused", "reused", "clean_correct", "robust"):
                out[col] = "bool"
            elif col == "success":
                out[col] = "boolean"  # null where the success rule does not apply
            elif col not in ("target", "clean_pred", "adv_pred"):
                out[col] = "float64"
        return out

    def _sample_lines(self) -> dict:
        if self._samples is None:
            from .report.build import read_samples

            self._samples = read_samples(self.path / self.json.get("per_sample", "samples.jsonl"))
        return self._samples

    def samples(self) -> pd.DataFrame:
        """One row per (cell, sample) (pandas DataFrame): the cell's columns as in ``cells()`` (names, step,
        eps), then ``sample`` (its id), target, clean_pred, adv_pred (class indices; lists for multi-label),
        clean_correct, robust, success (nullable: no success rule applies to a sample wrong when clean)."""
        import pandas as pd

        fused = {(m["name"], m["defense"]): len(m["modalities"]) >= 2 for m in self.json["models"]}
        by_cell = self._sample_lines()
        rows = []
        for c in self.json["cells"]:
            head = self._cell_columns(c, fused)
            for x in by_cell.get(c["id"], []):
                rows.append({**head, "sample": x["id"], "target": x["target"], "clean_pred": x["clean_pred"],
                             "adv_pred": x["adv_pred"], "clean_correct": x["clean_correct"], "robust": x["robust"],
                             "success": x["success"]})
        columns = list(rows[0]) if rows else ["cell", "model", "defense", "attack", "threat", "step", "sample", "target",
                                              "clean_pred", "adv_pred", "clean_correct", "robust", "success"]
        df = pd.DataFrame(rows, columns=columns)
        return df.astype(self._dtypes(df))

    # ---- figures --------------------------------------------------------------------------------
    def plots(self) -> list:
        """The report's figures (``report/plots.py`` ``Plot``: id, kind, title, attrs), none drawn yet."""
        from .report.plots import plan_plots

        return plan_plots(self.json)

    def plot(self, kind: str = "curve", **select: Any) -> list:
        """Draw the report's figures of one kind as matplotlib figures, those whose attributes match
        ``select``: ``curve`` (threat=, attack=, worst=True, metric="robust_accuracy" by default, or
        "robust_map" / "robust_dprime"), ``heatmap`` and ``latent`` (model=, defense=), ``overview``,
        ``defense_cost``. The same figures report.html shows."""
        if kind not in PLOT_KINDS:
            raise UserError(f"unknown plot kind {kind!r}; use one of {', '.join(PLOT_KINDS)}")
        if kind == "curve":
            select.setdefault("metric", "robust_accuracy")
        plots = [p for p in self.plots() if p.kind == kind]
        chosen = [p for p in plots if all(p.attrs.get(k) == v for k, v in select.items())]
        if not chosen:
            have = "; ".join(", ".join(f"{k}={v!r}" for k, v in p.attrs.items()) or p.id for p in plots) or "none"
            raise UserError(f"no {kind} plot matches {select}; this report has: {have}")
        samples = self._sample_lines() if kind in ("heatmap", "latent") else {}
        return [p.draw(samples) for p in chosen]
