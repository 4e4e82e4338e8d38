"""Plugin discovery (entry points, group ``avharness``) and the registry of named factories."""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from dataclasses import dataclass
from importlib import metadata

import pluggy

from . import hookspecs
from .errors import UserError

GROUP = "avharness"
KINDS = ("dataset", "model", "attack", "defense", "metric")
HOOKS = {
    "dataset": "register_datasets",
    "model": "register_models",
    "attack": "register_attacks",
    "defense": "register_defenses",
    "metric": "register_metrics",
}
#: the distribution whose entry points count as built-in when autoload is disabled
BUILTIN_DIST = "avharness"


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: object
    dist: str
    version: str
    module: str


class Registry:
    def __init__(self):
        self.entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self.conflicts: dict[tuple[str, str], list[Entry]] = {}
        #: entry points that failed to import: (entry point name, dist, error)
        self.failures: list[tuple[str, str, str]] = []
        self.loaded: list[tuple[str, str, str]] = []  # (entry point, dist, version)

    def add(self, entry: Entry) -> None:
        known = self.entries[entry.kind].get(entry.name)
        if known is not None and known.factory is not entry.factory:
            self.conflicts.setdefault((entry.kind, entry.name), [known]).append(entry)
            return
        self.entries[entry.kind][entry.name] = entry

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def entry(self, kind: str, name: str, where: str = "") -> Entry:
        where = f"{where}: " if where else ""
        if (kind, name) in self.conflicts:
            dists = ", ".join(f"{e.dist} ({e.module})" for e in self.conflicts[(kind, name)])
            raise UserError(
                f"{where}{kind} {name!r} is registered by more than one plugin: {dists}; "
                "uninstall one or block it with --no-plugin"
            )
        if name not in self.entries[kind]:
            raise UserError(f"{where}{unknown_message(kind, name, self.names(kind))}")
        return self.entries[kind][name]

    def get(self, kind: str, name: str, where: str = ""):
        return self.entry(kind, name, where).factory

    def distributions(self) -> list[dict]:
        seen = {}
        for ep, dist, version in self.loaded:
            seen.setdefault(dist, {"dist": dist, "version": version, "entry_points": []})["entry_points"].append(ep)
        return sorted(seen.values(), key=lambda d: d["dist"])


def unknown_message(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f" — did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (known {kind}s: {', '.join(known) or 'none'})"


def _autoload_disabled() -> bool:
    return os.environ.get("AVHARNESS_DISABLE_PLUGIN_AUTOLOAD", "").strip() not in ("", "0", "false", "False")


def load_registry(blocked: tuple[str, ...] = (), extra_modules: tuple[str, ...] = ()) -> Registry:
    """Import every ``avharness`` entry point (or only the built-ins) and collect registrations.

    A plugin that fails to import is recorded in ``registry.failures`` and skipped; the others load.
    ``blocked`` names entry points or distributions to skip. ``extra_modules`` are imported as
    plugins too (for tests and ``--plugin module``).
    """
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    sources: dict[str, tuple[str, str, str]] = {}  # plugin name -> (ep, dist, version)

    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: (e.dist.name if e.dist else "", e.name)):
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        if _autoload_disabled() and dist != BUILTIN_DIST:
            continue
        if ep.name in blocked or dist in blocked:
            continue
        try:
            module = ep.load()
            pm.register(module, name=f"{dist}:{ep.name}")
        except Exception as exc:  # a broken plugin must not take the others down
            registry.failures.append((ep.name, dist, f"{type(exc).__name__}: {exc}"))
            continue
        sources[f"{dist}:{ep.name}"] = (ep.name, dist, version)
        registry.loaded.append((ep.name, dist, version))

    for modname in extra_modules:
        try:
            module = importlib.import_module(modname)
            pm.register(module, name=f"module:{modname}")
        except Exception as exc:
            registry.failures.append((modname, "module", f"{type(exc).__name__}: {exc}"))
            continue
        sources[f"module:{modname}"] = (modname, "module", "")
        registry.loaded.append((modname, "module", ""))

    for kind, hook in HOOKS.items():
        caller = getattr(pm.hook, hook)
        for impl in caller.get_hookimpls():
            ep, dist, version = sources.get(impl.plugin_name, (impl.plugin_name, "?", "?"))

            def register(name, factory, _kind=kind, _dist=dist, _ver=version, _plugin=impl.plugin.__name__):
                # the module that defines the factory says more than the hook module that registered it
                registry.add(Entry(_kind, name, factory, _dist, _ver, getattr(factory, "__module__", _plugin)))

            try:
                impl.function(register=register)
            except Exception as exc:
                registry.failures.append((ep, dist, f"{hook} failed: {type(exc).__name__}: {exc}"))
    return registry


_REGISTRY: Registry | None = None


def get_registry(reload: bool = False) -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None or reload:
        _REGISTRY = load_registry()
        for ep, dist, err in _REGISTRY.failures:
            print(f"avharness: plugin {ep!r} from {dist} failed to load and is skipped: {err}", file=sys.stderr)
    return _REGISTRY


def set_registry(registry: Registry | None) -> None:
    global _REGISTRY
    _REGISTRY = registry
