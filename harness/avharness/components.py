"""Building plugin objects from a suite's entries: names resolved, parameters checked against each
factory's signature, factories called with located errors. The plan (``plan.py``) calls these once,
before anything runs."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PluginError, UserError
from .plugins import Registry, guard, unknown_message
from .suite import INJECTED, PluginSpec, Suite, _is, _line, _suggest, _typename, _Where
from .weights import checkpoint_path

if TYPE_CHECKING:
    from .data import Dataset


def check_params(w: _Where, spec: PluginSpec, factory: Callable[..., Any]) -> None:
    """Unknown, missing or mistyped plugin parameters, checked against the factory signature."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    hints = factory_hints(factory)
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
        check = type_check(hints.get(key))
        if check is not None and not check[0](value):
            raise w.error(f"{spec.where}.{key}", line, f"expected {check[1]}, got {value!r}")
    for n, p in sig.parameters.items():
        if n in injected or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        if p.default is p.empty and n not in spec.params:
            raise w.error(
                spec.where, spec.lines[""], f"{spec.kind} {spec.plugin!r} needs parameter {n!r}"
            )


def factory_hints(factory: Callable[..., Any]) -> dict:
    """Type hints of a factory's parameters: a function's own, a class's ``__init__``'s."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # an annotation that does not resolve: no type checks, not a crash
        return {}


def type_check(hint: object) -> tuple[Callable[[Any], bool], str] | None:
    """A parameter annotation → (predicate, description) for values read from YAML, or None when the
    annotation is not one a suite value can be checked against (it is then not checked).

    Handles int, float, str, bool, list, dict, None, ``Literal[...]``, ``Optional[...]`` / unions,
    ``list[T]`` and ``dict[K, V]`` of these (nested), and ``Any`` (anything goes).
    """
    if hint is None or hint is typing.Any:
        return None
    if hint is type(None):
        return (lambda v: v is None), "null"
    if hint in (int, float, str, bool, list, dict):
        return (lambda v, t=hint: _is(v, t)), _typename(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        allowed = list(args)
        return (lambda v: any(v == a and type(v) is type(a) for a in allowed)), \
            "one of " + ", ".join(repr(a) for a in allowed)
    if origin in (typing.Union, getattr(types, "UnionType", None)) and args:
        parts = [type_check(a) for a in args]
        if any(p is None for p in parts):
            return None
        return (lambda v: any(p[0](v) for p in parts)), " or ".join(p[1] for p in parts)
    if origin is list:
        item = type_check(args[0]) if args else None
        if item is None:
            return (lambda v: isinstance(v, list)), "a list"
        return (lambda v: isinstance(v, list) and all(item[0](x) for x in v)), f"a list of {_plural(item[1])}"
    if origin is dict:
        k = type_check(args[0]) if args else None
        val = type_check(args[1]) if len(args) > 1 else None
        return (lambda v: isinstance(v, dict) and all((k is None or k[0](a)) and (val is None or val[0](b))
                                                      for a, b in v.items())), \
            "a mapping" + (f" of {_plural(val[1])}" if val else "") + (f" keyed by {_plural(k[1])}" if k else "")
    return None


def _plural(desc: str) -> str:
    return {"an integer": "integers", "a number": "numbers", "a string": "strings", "true/false": "true/false values",
            "a list": "lists", "a mapping": "mappings"}.get(desc, f"({desc})")


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
    _resolve_names(w, suite, registry)
    dataset = build_dataset(suite, registry)
    _check_task_options(w, suite, dataset)
    for m in suite.models:
        if m.load:
            checkpoint_path(w, m)
    built_defenses = [(d, build_component(w, d, registry)) for d in suite.defenses]
    for d, defense in built_defenses:
        _check_untrained_defense(w, suite, d, defense)
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


def _resolve_names(w: _Where, suite: Suite, registry: Registry) -> None:
    """Every plugin name known, every parameter one its factory takes (with the right type)."""
    kinds = [(suite.data, "dataset")] + [
        (s, s.kind) for s in suite.models + suite.defenses + suite.attacks + suite.metrics
    ]
    for spec, kind in kinds:
        if not registry.has(kind, spec.plugin):
            raise w.error(
                f"{spec.where}.plugin",
                spec.lines.get("plugin", spec.lines[""]),
                unknown_message(kind, spec.plugin, registry.names(kind), registry.failures),
            )
        factory = registry.get(
            kind, spec.plugin, where=f"{suite.path}:{spec.lines.get('plugin', spec.lines[''])}"
        )
        check_params(w, spec, factory)


def _check_task_options(w: _Where, suite: Suite, dataset: Dataset) -> None:
    """``eval.success`` and ``eval.threshold`` only apply to multi-label tasks."""
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


def _check_untrained_defense(w: _Where, suite: Suite, d: PluginSpec, defense: object) -> None:
    """A defense that does not train (evaluates models as loaded) needs every model to have a checkpoint."""
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


def build_dataset(suite: Suite, registry: Registry) -> Dataset:
    """The suite's dataset object (cheap: nothing is read yet)."""
    w = _Where(suite.path)
    spec = suite.data
    if not registry.has("dataset", spec.plugin):
        raise w.error(
            "data.plugin",
            spec.lines.get("plugin", spec.lines[""]),
            unknown_message("dataset", spec.plugin, registry.names("dataset"), registry.failures),
        )
    factory = registry.get(
        "dataset", spec.plugin, where=f"{suite.path}:{spec.lines.get('plugin', spec.lines[''])}"
    )
    check_params(w, spec, factory)
    # A dataset that takes a seed gets the suite's, unless the suite sets one for the data itself.
    takes_seed = "seed" in inspect.signature(factory).parameters and "seed" not in spec.params
    return build_component(w, spec, registry, **({"seed": suite.seed} if takes_seed else {}))


def build_component(w_or_path: _Where | str | Path, spec: PluginSpec, registry: Registry, **injected: Any) -> Any:
    """Call a plugin factory. A ValueError/TypeError/UserError from it is the user's mistake (its
    parameters): a located UserError. Anything else it raises is a PluginError naming the plugin."""
    w = w_or_path if isinstance(w_or_path, _Where) else _Where(str(w_or_path))
    entry = registry.entry(spec.kind, spec.plugin)
    try:
        with guard(entry, f"{w.path}:{spec.lines.get('', 0)} {spec.where}", "its factory"):
            return entry.factory(**injected, **spec.params)
    except UserError as exc:
        raise w.error(spec.where, spec.lines[""], str(exc)) from None
    except PluginError as exc:
        cause = exc.__cause__
        if isinstance(cause, (ValueError, TypeError)):
            raise w.error(
                spec.where,
                spec.lines[""],
                f"{spec.kind} {spec.plugin!r} rejected its parameters: {cause}",
            ) from None
        raise
