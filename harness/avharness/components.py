"""Building plugin objects from a suite's entries: names resolved, parameters checked against each
factory's signature, factories called with located errors. The plan (``plan.py``) calls these once,
before anything runs."""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass

from .errors import UserError
from .plugins import Registry, unknown_message
from .suite import INJECTED, PluginSpec, Suite, _is, _line, _suggest, _typename, _Where
from .weights import checkpoint_path


def check_params(w: _Where, spec: PluginSpec, factory) -> None:
    """Unknown, missing or mistyped plugin parameters, checked against the factory signature."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    try:
        hints = typing.get_type_hints(factory)
    except Exception:
        hints = {}
    injected = INJECTED[spec.kind]
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    allowed = [
        n
        for n, p in sig.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in injected
    ]
    for key, value in spec.params.items():
        line = spec.lines.get(key, spec.lines[""])
        if key not in allowed:
            if accepts_any:
                continue
            raise w.error(
                f"{spec.where}.{key}",
                line,
                f"unknown parameter{_suggest(key, allowed)} for {spec.kind} {spec.plugin!r}; "
                f"it takes: {', '.join(allowed) or 'no parameters'}",
            )
        expected = _simple_type(hints.get(key))
        if expected is not None and not _is(value, expected):
            raise w.error(
                f"{spec.where}.{key}", line, f"expected {_typename(expected)}, got {value!r}"
            )
    for n, p in sig.parameters.items():
        if n in injected or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        if p.default is p.empty and n not in spec.params:
            raise w.error(
                spec.where, spec.lines[""], f"{spec.kind} {spec.plugin!r} needs parameter {n!r}"
            )


def _simple_type(hint):
    """int/float/str/bool/list/dict (optionally | None) → a type check; anything else → None."""
    if hint in (int, float, str, bool, list, dict):
        return hint
    origin = typing.get_origin(hint)
    if origin in (list, dict):
        return origin
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        parts = tuple(_simple_type(a) if a is not type(None) else type(None) for a in args)
        if all(p is not None for p in parts):
            return parts
    return None


@dataclass
class Components:
    """The suite's plugin objects, built (cheaply: no data is loaded and no model trained)."""

    dataset: object
    attacks: list  # [(PluginSpec, attack)]
    defenses: list
    metrics: list


def check_plugins(suite: Suite, registry: Registry) -> Components:
    """Resolve every plugin name, check parameters and build the components that take them.

    Building the dataset, attacks, defenses and metrics runs their own parameter checks, so
    ``validate`` catches what ``run`` would; models are built later, per training run. Also checks
    that every threat names modalities the dataset has.
    """
    w = _Where(suite.path)
    kinds = [(suite.data, "dataset")] + [
        (s, s.kind) for s in suite.models + suite.defenses + suite.attacks + suite.metrics
    ]
    for spec, kind in kinds:
        if (
            spec.plugin not in registry.entries[kind]
            and (kind, spec.plugin) not in registry.conflicts
        ):
            raise w.error(
                f"{spec.where}.plugin",
                spec.lines.get("plugin", spec.lines[""]),
                unknown_message(kind, spec.plugin, registry.names(kind)),
            )
        factory = registry.get(
            kind, spec.plugin, where=f"{suite.path}:{spec.lines.get('plugin', spec.lines[''])}"
        )
        check_params(w, spec, factory)
    dataset = build_dataset(suite, registry)
    if suite.success != "default" and dataset.task.kind != "multilabel":
        raise w.error(
            "eval.success",
            _line(suite.raw.get("eval") or {}, "success") if suite.raw else 0,
            f"success rule {suite.success!r} is for multi-label tasks; dataset {suite.data.plugin!r} is "
            f"{dataset.task.kind}, whose attacks succeed by turning a correct prediction wrong (use default)",
        )
    if suite.threshold is not None and dataset.task.kind != "multilabel":
        raise w.error(
            "eval.threshold",
            _line(suite.raw.get("eval") or {}, "threshold") if suite.raw else 0,
            f"a label threshold only applies to multi-label tasks; dataset {suite.data.plugin!r} is {dataset.task.kind}",
        )
    for m in suite.models:
        if m.load:
            checkpoint_path(w, m)
    built_defenses = [(d, build_component(w, d, registry)) for d in suite.defenses]
    for d, defense in built_defenses:
        unloaded = [(i, m) for i, m in enumerate(suite.models) if not m.load]
        if not getattr(defense, "trains", True) and unloaded:
            names = ", ".join(f"{m.name!r} ({m.where})" for _, m in unloaded)
            sets = " ".join(
                f"--set models.{i}.checkpoint=/path/to/{m.name}.pt" for i, m in unloaded
            )
            raise w.error(
                f"{d.where}",
                d.lines[""],
                f"defense {d.name!r} evaluates models as loaded, without training, "
                f"but {names} {'has' if len(unloaded) == 1 else 'have'} no checkpoint: give "
                f"{'it' if len(unloaded) == 1 else 'them'} with {sets} (or train with defense standard)",
            )
    for t in suite.threats:
        for m in t.modalities:
            if m not in dataset.specs:
                raise w.error(
                    f"{t.where}.{m}",
                    t.lines.get(m, 0),
                    f"dataset {suite.data.plugin!r} has no modality {m!r}; it has: {', '.join(sorted(dataset.specs))}",
                )
    return Components(
        dataset,
        [(a, build_component(w, a, registry)) for a in suite.attacks],
        built_defenses,
        [(m, build_component(w, m, registry)) for m in suite.metrics],
    )


def build_dataset(suite: Suite, registry: Registry):
    """The suite's dataset object (cheap: nothing is read yet)."""
    w = _Where(suite.path)
    spec = suite.data
    if (
        spec.plugin not in registry.entries["dataset"]
        and ("dataset", spec.plugin) not in registry.conflicts
    ):
        raise w.error(
            "data.plugin",
            spec.lines.get("plugin", spec.lines[""]),
            unknown_message("dataset", spec.plugin, registry.names("dataset")),
        )
    factory = registry.get(
        "dataset", spec.plugin, where=f"{suite.path}:{spec.lines.get('plugin', spec.lines[''])}"
    )
    check_params(w, spec, factory)
    # A dataset that takes a seed gets the suite's, unless the suite sets one for the data itself.
    takes_seed = "seed" in inspect.signature(factory).parameters and "seed" not in spec.params
    return build_component(w, spec, registry, **({"seed": suite.seed} if takes_seed else {}))


def build_component(w_or_path, spec: PluginSpec, registry: Registry, **injected):
    """Call a plugin factory; a ValueError/TypeError/UserError from it becomes a located UserError."""
    w = w_or_path if isinstance(w_or_path, _Where) else _Where(str(w_or_path))
    factory = registry.get(spec.kind, spec.plugin)
    try:
        return factory(**injected, **spec.params)
    except UserError as exc:
        raise w.error(spec.where, spec.lines[""], str(exc)) from None
    except (ValueError, TypeError) as exc:
        raise w.error(
            spec.where,
            spec.lines[""],
            f"{spec.kind} {spec.plugin!r} rejected its parameters: {exc}",
        ) from None
