"""Suites: strict validation of the YAML (every error names file, key path and line) and cells.

A suite is expanded into cells, one per (model, defense, attack, threat, sweep step). Plugin
parameters sit flat beside ``plugin:``; they are checked against the plugin factory's signature.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError
from .success import MULTILABEL_RULES
from .threat import NORMS, Budget, ThreatModel
from .weights import check_key_map
from .yamlload import LineDict, LineList, load_yaml, parse_yaml, plain

if TYPE_CHECKING:
    from .data import InputSpec

SCHEMA = "avharness/suite@1"
TOP_KEYS = {
    "schema", "name", "version", "description", "seed", "device", "data", "eval",
    "models", "defenses", "attacks", "threats", "metrics", "executor", "resources", "precision",
}
EVAL_KEYS = {"split": str, "batch_size": int, "limit": (int, type(None)), "success": str, "success_margin": float,
             "threshold": (float, type(None)), "reuse_sweep": bool}
DEVICES = ("auto", "cpu", "cuda")
#: where the plan runs (``executor.py``: in this process; ``ray_executor.py``: as Ray tasks)
EXECUTORS = ("local", "ray")
#: the model's forward pass in attacks and evaluation (autocast); training is always fp32
PRECISIONS = ("fp32", "bf16", "fp16")
#: Ray resources a task may ask for (per training or cell task)
RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory")
#: model entry keys the harness reads itself (weights to start from), never passed to the factory
LOAD_KEYS = {"checkpoint": str, "key_map": dict}
#: parameters the harness passes to factories itself; a suite may not set them
INJECTED = {"model": {"task", "specs"}, "dataset": set(), "attack": set(), "defense": set(), "metric": set()}


@dataclass(frozen=True)
class PluginSpec:
    kind: str
    name: str
    plugin: str
    params: dict
    where: str  # "models[2]"
    lines: dict = field(default_factory=dict, compare=False)  # key -> line (or "--set")
    #: models only: weights to start from, {"checkpoint": path, "key_map": {old prefix: new}}
    load: dict = field(default_factory=dict)

    def identity(self) -> dict:
        """What determines this component's behaviour (hashed into cache keys).

        A checkpoint enters by path here (the suite as written); the runner hashes its bytes.
        """
        return {"plugin": self.plugin, "params": self.params, **({"load": self.load} if self.load else {})}


@dataclass(frozen=True)
class ThreatSpec:
    name: str
    norms: dict[str, str]
    eps: dict[str, list[float]]  # every list has length ``steps``
    where: str
    lines: dict = field(default_factory=dict, compare=False)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(sorted(self.norms))

    @property
    def steps(self) -> int:
        return len(next(iter(self.eps.values())))

    def at(self, step: int, specs: dict[str, InputSpec]) -> ThreatModel:
        return ThreatModel(
            self.name, {m: Budget(self.norms[m], self.eps[m][step], tuple(specs[m].bounds)) for m in self.norms}
        )


@dataclass
class Suite:
    path: str
    name: str
    version: int
    seed: int
    device: str
    data: PluginSpec
    eval_split: str
    batch_size: int
    limit: int | None
    models: list[PluginSpec]
    defenses: list[PluginSpec]
    attacks: list[PluginSpec]
    threats: list[ThreatSpec]
    metrics: list[PluginSpec]
    resolved: dict
    raw: LineDict = field(repr=False, default=None)
    #: when an attack succeeded (avharness.success); the AP drop for ap_drop; the label threshold
    success: str = "default"
    success_margin: float = 0.1
    threshold: float | None = None
    #: attack only what is still robust: skip samples the success rule does not apply to (wrong
    #: when clean) and carry samples broken at a smaller eps of a nested sweep (``sweep.py``)
    reuse_sweep: bool = True
    executor: str = "local"
    #: Ray resources per task, e.g. {"num_cpus": 1, "num_gpus": 0.25}
    resources: dict = field(default_factory=dict)
    precision: str = "fp32"

    @property
    def sha256(self) -> str:
        return sha256_json(self.resolved)


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


class _Where:
    """Formats 'file:line: key.path: message' for one suite."""

    def __init__(self, path: str):
        self.path = path

    def error(self, keypath: str, line, msg: str) -> UserError:
        if isinstance(line, str):  # a value that came from --set
            return UserError(f"{self.path} ({line}): {keypath}: {msg}")
        loc = f"{self.path}:{line}" if line else self.path
        return UserError(f"{loc}: {keypath}: {msg}" if keypath else f"{loc}: {msg}")


def _line(container, key, default=0):
    if isinstance(container, LineDict):
        return container.key_lines.get(key, container.line or default)
    if isinstance(container, LineList) and isinstance(key, int) and key < len(container.item_lines):
        return container.item_lines[key]
    return getattr(container, "line", default)


def _typename(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(_typename(x) for x in t)
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a mapping", type(None): "null"}
    if t in names:
        return names[t]
    # subclasses (the loader's LineList/LineDict) by what they are, never by an internal class name
    return next((n for base, n in names.items() if isinstance(t, type) and issubclass(t, base)),
                getattr(t, "__name__", str(t)))


def output_name(name: str) -> str:
    """The suite name as one safe path component (the default output folder is reports/<this>).

    Separators, ``..``, leading dots and anything outside [A-Za-z0-9._-] become ``_``, so a name like
    ``../../etc`` cannot lead the default output folder out of ``reports/``.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".")
    safe = re.sub(r"\.{2,}", "_", safe)
    return safe[:100] or "suite"


def _is(value, t) -> bool:
    if isinstance(t, tuple):
        return any(_is(value, x) for x in t)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, t)


def parse_assignment(item: str, flag: str, example: str) -> tuple[str, object]:
    """``KEY=VALUE`` from the command line: the key stripped, the value parsed as YAML."""
    if "=" not in item:
        raise UserError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} {example}")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"{flag} {item!r}: empty key path")
    return key, parse_yaml(text, f"{flag} {key}")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` strings (value parsed as YAML) to the loaded suite, in place."""
    for item in overrides:
        keypath, value = parse_assignment(item, "--set", "eval.limit=100")
        parts = [p for p in keypath.split(".") if p]
        if not parts:
            raise UserError(f"--set {item!r}: empty key path")
        node = raw
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                    raise UserError(f"--set {keypath}: {where}: no list item {part!r} (the list has {len(node)} items)")
                idx = int(part)
                if last:
                    node[idx] = value
                    if isinstance(node, LineList):
                        node.item_lines[idx] = f"--set {keypath}"
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                    if isinstance(node, LineDict):
                        node.key_lines[part] = f"--set {keypath}"
                else:
                    if part not in node or node[part] is None:
                        node[part] = LineDict()
                    node = node[part]
            else:
                raise UserError(f"--set {keypath}: {where} is not a mapping or list, cannot set a key inside it")
    return raw


def load_suite(path: str | Path, overrides: list[str] | None = None) -> Suite:
    """Load and structurally validate a suite (plugin names and params are checked by ``check_plugins``)."""
    raw = load_yaml(path)
    return build_suite(raw, str(path), overrides or [])


def build_suite(raw: Any, path: str, overrides: list[str]) -> Suite:
    """A validated Suite from loaded YAML: every error names the file, the line and the key path."""
    w = _Where(path)
    if raw is None:
        raise w.error("", 1, "the suite is empty; see suites/quickstart.yaml for the expected keys")
    if not isinstance(raw, dict):
        raise w.error("", _line(raw, 0, 1), f"the suite must be a mapping of keys, got {_typename(type(raw))}")
    if overrides:
        apply_overrides(raw, overrides)
    for key in raw:
        if key not in TOP_KEYS:
            allowed = ", ".join(sorted(TOP_KEYS))
            raise w.error(str(key), _line(raw, key), f"unknown key{_suggest(key, TOP_KEYS)}; allowed: {allowed}")
    get = _getter(w, raw)
    top = _top_level(w, raw, get)
    data = _plugin_spec(w, "dataset", get("data", dict, required=True), "data", _line(raw, "data"), named=False)
    ev = _eval_section(w, get("eval", dict, LineDict()))
    models, defenses, attacks, threats, metrics = _entries(w, raw, get)
    resolved = _resolved(top, data, ev, models, defenses, attacks, threats, metrics)
    return Suite(path, top["name"], top["version"], top["seed"], top["device"], data, ev["split"], ev["batch_size"],
                 ev["limit"], models, defenses, attacks, threats, metrics, resolved, raw, ev["success"],
                 ev["success_margin"], ev["threshold"], ev["reuse_sweep"], top["executor"],
                 {k: plain(v) for k, v in top["resources"].items()}, top["precision"])


def _getter(w: _Where, raw):
    """``get(key, type, default, required)``: a top-level value, type-checked, with its line in errors."""

    def get(key, t, default=..., required=False):
        if key not in raw or raw[key] is None and default is not ...:
            if required or default is ...:
                raise w.error(key, getattr(raw, "line", 1), f"missing required key {key!r}")
            return default
        value = raw[key]
        if not _is(value, t):
            raise w.error(key, _line(raw, key), f"expected {_typename(t)}, got {value!r}")
        return value

    return get


def _top_level(w: _Where, raw, get) -> dict:
    """schema, name, version, seed, description, device, executor, precision, resources."""
    schema = get("schema", str, SCHEMA)
    if schema != SCHEMA:
        raise w.error(
            "schema",
            _line(raw, "schema"),
            f"unsupported schema {schema!r}; this avharness reads {SCHEMA!r}",
        )
    name = get("name", str, required=True)
    version = get("version", int, 1)
    seed = get("seed", int, 0)
    get("description", str, "")
    device = get("device", str, "auto")
    if device not in DEVICES:
        raise w.error(
            "device", _line(raw, "device"), f"must be one of {', '.join(DEVICES)}, got {device!r}"
        )

    executor = get("executor", str, "local")
    if executor not in EXECUTORS:
        raise w.error("executor", _line(raw, "executor"),
                      f"must be one of {', '.join(EXECUTORS)}, got {executor!r}{_suggest(executor, EXECUTORS)}")
    precision = get("precision", str, "fp32")
    if precision not in PRECISIONS:
        raise w.error("precision", _line(raw, "precision"),
                      f"must be one of {', '.join(PRECISIONS)}, got {precision!r}{_suggest(precision, PRECISIONS)}")
    resources = _resources(w, get("resources", dict, LineDict()))
    return {"name": name, "version": version, "seed": seed, "device": device, "executor": executor,
            "precision": precision, "resources": resources}


def _eval_section(w: _Where, ev) -> dict:
    """The ``eval`` mapping: split, batch size, limit, success rule and its margin, threshold, reuse_sweep."""
    for key in ev:
        if key not in EVAL_KEYS:
            raise w.error(
                f"eval.{key}",
                _line(ev, key),
                f"unknown key{_suggest(key, EVAL_KEYS)}; allowed: {', '.join(EVAL_KEYS)}",
            )
    for key, t in EVAL_KEYS.items():
        if key in ev and not _is(ev[key], t):
            raise w.error(
                f"eval.{key}", _line(ev, key), f"expected {_typename(t)}, got {ev[key]!r}"
            )
    split = ev.get("split", "test")
    batch_size = ev.get("batch_size", 128)
    limit = ev.get("limit")
    if batch_size < 1:
        raise w.error("eval.batch_size", _line(ev, "batch_size"), "must be at least 1")
    if limit is not None and limit < 1:
        raise w.error(
            "eval.limit", _line(ev, "limit"), "must be at least 1 (or null for all samples)"
        )
    success = ev.get("success", "default")
    if success not in ("default",) + MULTILABEL_RULES:
        raise w.error(
            "eval.success",
            _line(ev, "success"),
            f"unknown success rule {success!r}; use default or (multi-label) {', '.join(MULTILABEL_RULES)}",
        )
    success_margin = float(ev.get("success_margin", 0.1))
    if not 0 <= success_margin < 1:
        raise w.error(
            "eval.success_margin",
            _line(ev, "success_margin"),
            f"must be in [0, 1) (an AP drop), got {success_margin}",
        )
    reuse_sweep = ev.get("reuse_sweep", True)
    threshold = ev.get("threshold")
    if threshold is not None and not 0 < threshold < 1:
        raise w.error(
            "eval.threshold",
            _line(ev, "threshold"),
            f"must be a probability in (0, 1) above which a label counts as present, got {threshold}",
        )

    return {"split": split, "batch_size": batch_size, "limit": limit, "success": success,
            "success_margin": success_margin, "threshold": threshold, "reuse_sweep": reuse_sweep}


def _entries(w: _Where, raw, get) -> tuple[list, list, list, list, list]:
    """models, defenses, attacks, threats and metrics, each checked; names unique within each list."""
    models_raw = get("models", list, required=True)
    if not models_raw:
        raise w.error("models", _line(raw, "models"), "the list is empty; a suite needs at least one model, e.g. "
                      "models: [{name: late, plugin: late_fusion}] (see `avharness list model`)")
    models = _plugin_list(w, "model", models_raw, "models", named=True)
    defenses = _plugin_list(
        w, "defense", get("defenses", list, None) or _default_list("standard"), "defenses"
    )
    attacks = _plugin_list(w, "attack", get("attacks", list, None) or LineList(), "attacks")
    threats = _threats(w, get("threats", list, None) or LineList())
    if attacks and not threats:
        raise w.error(
            "threats",
            getattr(raw, "line", 1),
            "attacks are listed but no threats: add at least one threat",
        )
    metrics = _plugin_list(
        w, "metric", get("metrics", list, None) or _default_list("accuracy"), "metrics"
    )
    _unique(w, models, "models")
    _unique(w, defenses, "defenses")
    _unique(w, attacks, "attacks")
    _unique(w, metrics, "metrics")
    names = [t.name for t in threats]
    for i, t in enumerate(threats):
        if names.index(t.name) != i:
            raise w.error(
                f"{t.where}.name",
                t.lines.get("name", 0),
                f"threat name {t.name!r} is used twice; names must be unique",
            )

    return models, defenses, attacks, threats, metrics


def _resolved(top: dict, data: PluginSpec, ev: dict, models, defenses, attacks, threats, metrics) -> dict:
    """The suite as run, defaults filled in: what the suite's sha256 (and so every report) records."""
    return {
        "schema": SCHEMA,
        "name": top["name"],
        "version": top["version"],
        "seed": top["seed"],
        "device": top["device"],
        "data": data.identity(),
        "eval": {
            "split": ev["split"],
            "batch_size": ev["batch_size"],
            "limit": ev["limit"],
            "success": ev["success"],
            "success_margin": ev["success_margin"],
            "threshold": ev["threshold"],
            "reuse_sweep": ev["reuse_sweep"],
        },
        "precision": top["precision"],
        "models": [{"name": m.name, **m.identity()} for m in models],
        "defenses": [{"name": d.name, **d.identity()} for d in defenses],
        "attacks": [{"name": a.name, **a.identity()} for a in attacks],
        "threats": [
            {
                "name": t.name,
                **{
                    m: (
                        {"norm": "none"}
                        if t.norms[m] == "none"
                        else {"norm": t.norms[m], "eps": t.eps[m]}
                    )
                    for m in t.modalities
                },
            }
            for t in threats
        ],
        "metrics": [{"name": m.name, **m.identity()} for m in metrics],
    }


def _resources(w: _Where, res) -> dict:
    """``resources: {num_cpus: 1, num_gpus: 0.25}``: non-negative numbers under known names."""
    for key, value in res.items():
        if key not in RESOURCE_KEYS:
            raise w.error(f"resources.{key}", _line(res, key),
                          f"unknown key{_suggest(key, RESOURCE_KEYS)}; allowed: {', '.join(RESOURCE_KEYS)}")
        if not _is(value, float) or value < 0 or not math.isfinite(value):
            raise w.error(f"resources.{key}", _line(res, key), f"expected a number >= 0, got {value!r}")
    return res


def _default_list(plugin: str) -> LineList:
    out = LineList([LineDict(plugin=plugin)])
    out.item_lines = [0]
    return out


def _suggest(key, allowed) -> str:
    import difflib

    close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _plugin_spec(w: _Where, kind: str, item, where: str, line, named: bool) -> PluginSpec:
    if isinstance(item, str):  # shorthand: "- accuracy"
        item = LineDict(plugin=item)
        item.line = line
    if not isinstance(item, dict):
        raise w.error(where, line, f"expected a mapping with a 'plugin' key, got {item!r}")
    if "plugin" not in item:
        raise w.error(
            where,
            getattr(item, "line", line) or line,
            f"missing required key 'plugin' (which {kind} plugin to use; see `avharness list {kind}`)",
        )
    plugin = item["plugin"]
    if not isinstance(plugin, str):
        raise w.error(
            f"{where}.plugin", _line(item, "plugin"), f"expected a string, got {plugin!r}"
        )
    name = item.get("name", plugin)
    if named and "name" not in item:
        raise w.error(
            where,
            getattr(item, "line", line) or line,
            "missing required key 'name' (a short label for this entry, used in the report)",
        )
    if not isinstance(name, str) or not name:
        raise w.error(
            f"{where}.name", _line(item, "name"), f"expected a non-empty string, got {name!r}"
        )
    params = {k: plain(v) for k, v in item.items() if k not in ("plugin", "name")}
    lines = dict(getattr(item, "key_lines", {}))
    lines.setdefault("", getattr(item, "line", line) or line)
    load = {}
    if kind == "model":  # weights to start from: read by the harness, not passed to the factory
        for key, t in LOAD_KEYS.items():
            value = params.pop(key, None)
            if value is None:
                continue
            if not _is(value, t):
                raise w.error(
                    f"{where}.{key}",
                    lines.get(key, line),
                    f"expected {_typename(t)}, got {value!r}",
                )
            load[key] = value
        if "key_map" in load and "checkpoint" not in load:
            raise w.error(
                f"{where}.key_map",
                lines.get("key_map", line),
                "key_map renames a checkpoint's keys; "
                "give the checkpoint too (models[i].checkpoint: path to a state dict)",
            )
        try:  # the same rules the checkpoint loader applies, reported at the suite's line
            check_key_map(load.get("key_map"))
        except UserError as exc:
            raise w.error(f"{where}.key_map", lines.get("key_map", line), str(exc)) from None
    return PluginSpec(kind, name, plugin, params, where, lines, load)


def _plugin_list(w: _Where, kind: str, items, key: str, named: bool = False) -> list[PluginSpec]:
    return [
        _plugin_spec(w, kind, item, f"{key}[{i}]", _line(items, i), named)
        for i, item in enumerate(items)
    ]


def _unique(w: _Where, specs: list[PluginSpec], key: str) -> None:
    seen = {}
    for s in specs:
        if s.name in seen:
            raise w.error(
                f"{s.where}.name",
                s.lines.get("name", s.lines[""]),
                f"name {s.name!r} is already used by {seen[s.name]}; give each entry a distinct 'name'",
            )
        seen[s.name] = s.where


def _threats(w: _Where, items) -> list[ThreatSpec]:
    out = []
    for i, item in enumerate(items):
        where = f"threats[{i}]"
        line = _line(items, i)
        if not isinstance(item, dict):
            raise w.error(
                where,
                line,
                f"expected a mapping like {{name: audio-linf, audio: {{norm: linf, eps: [0, 0.1]}}}}, got {item!r}",
            )
        if "name" not in item or not isinstance(item["name"], str):
            raise w.error(where, getattr(item, "line", line), "missing required key 'name' (a string)")
        norms, eps = {}, {}
        for modality, budget in item.items():
            if modality != "name":
                norms[modality], eps[modality] = _budget(w, f"{where}.{modality}", _line(item, modality), budget)
        if not norms:
            raise w.error(where, getattr(item, "line", line), "names no modality; add e.g. audio: {norm: linf, eps: [0.1]}")
        out.append(ThreatSpec(item["name"], norms, _align_steps(w, where, item, eps), where,
                              dict(getattr(item, "key_lines", {}))))
    return out


def _budget(w: _Where, mwhere: str, mline, budget) -> tuple[str, list[float]]:
    """One modality's ``{norm, eps}``: (norm, eps values); an unbounded norm has eps [inf]."""
    if not isinstance(budget, dict):
        raise w.error(mwhere, mline, f"expected a mapping {{norm: linf|l2, eps: number or list}}, got {budget!r}")
    for key in budget:
        if key not in ("norm", "eps"):
            raise w.error(f"{mwhere}.{key}", _line(budget, key),
                          f"unknown key{_suggest(key, ('norm', 'eps'))}; allowed: norm, eps")
    norm = budget.get("norm")
    if norm not in NORMS:
        raise w.error(f"{mwhere}.norm", _line(budget, "norm"), f"must be one of {', '.join(NORMS)}, got {norm!r}")
    if norm == "none":  # unbounded (corruptions): only the valid range holds
        if "eps" in budget:
            raise w.error(f"{mwhere}.eps", _line(budget, "eps"), "norm none is unbounded and takes no eps; remove it")
        return norm, [math.inf]
    if "eps" not in budget:
        raise w.error(mwhere, mline, "missing required key 'eps' (a number or a list of numbers)")
    values = budget["eps"]
    values = list(values) if isinstance(values, list) else [values]
    if not values:
        raise w.error(f"{mwhere}.eps", _line(budget, "eps"), "the eps list is empty")
    for v in values:
        if not _is(v, float) or not math.isfinite(v):
            raise w.error(f"{mwhere}.eps", _line(budget, "eps"), f"expected a number, got {v!r}")
        if v < 0:
            raise w.error(f"{mwhere}.eps", _line(budget, "eps"), f"eps must be >= 0, got {v}")
    return norm, [float(v) for v in values]


def _align_steps(w: _Where, where: str, item, eps: dict) -> dict:
    """A joint sweep steps every modality together: single values repeat, other lengths must agree."""
    steps = max(len(v) for v in eps.values())
    for m, v in eps.items():
        if len(v) == 1:
            eps[m] = v * steps
        elif len(v) != steps:
            raise w.error(
                f"{where}.{m}.eps",
                _line(item[m], "eps"),
                f"has {len(v)} values but another modality of this threat has {steps}; "
                "joint sweeps step all modalities together, so give lists of equal length (or one value)",
            )
    return eps
