"""Plugin discovery (entry points, group ``avharness``) and the registry of named factories.

Every entry point is loaded with pluggy; a module whose hook names are not specs (``register_model``
for ``register_models``) is a load failure of that plugin, reported by distribution with the nearest
hook name, and the others still load. A distribution is disabled with ``--disable-plugin DIST`` or
``AVHARNESS_DISABLE_PLUGINS=a,b``. A name registered by two distributions stays visible under both
(``avharness list``); a suite picks one with a qualified name ``dist:name``.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, UserError

log = logging.getLogger("avharness.plugins")

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
DISABLE_ENV = "AVHARNESS_DISABLE_PLUGINS"


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: object
    dist: str
    version: str
    module: str
    #: the module the entry point named (the hook module): its package is what the source hash covers
    ep_module: str = ""
    #: installed from a working tree (editable install, or a module outside site-packages)
    editable: bool = False

    @property
    def qualified(self) -> str:
        return f"{self.dist}:{self.name}"

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name!r}"

    def provenance(self) -> dict:
        """What identifies the code behind this plugin: distribution, version and, for a working-tree
        install, the sha256 of its package's source files (hashed into store keys)."""
        return {"dist": self.dist, "version": self.version,
                **({"source_sha256": source_sha256(self.ep_module)} if self.editable and self.ep_module else {})}

    def error(self, message: str, where: str = "") -> PluginError:
        return PluginError(message, plugin=self.label, dist=self.dist, version=self.version, where=where)


class guard:
    """``with guard(entry, where, "perturb"):`` turns anything a plugin raises, other than a
    ``UserError`` (the user's mistake, exit 2) or a ``PluginError``, into a ``PluginError`` naming it."""

    def __init__(self, entry: Entry, where: str, doing: str):
        self.entry, self.where, self.doing = entry, where, doing

    def __enter__(self):
        return self

    def __exit__(self, tp, exc, tb):
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, (UserError, PluginError)):
            return False
        raise self.entry.error(f"{self.doing} raised {type(exc).__name__}: {_one_line(exc)}", self.where) from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


_SOURCE_SHA: dict[tuple[str, str], str | None] = {}


def source_sha256(module_name: str) -> str | None:
    """sha256 over the .py files of a module's package directory (or of the module file itself),
    by relative path and bytes; computed once per module (and file location) per process."""
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    file = getattr(module, "__file__", None)
    key = (module_name, str(file))
    if key in _SOURCE_SHA:
        return _SOURCE_SHA[key]
    digest = None
    if file:
        path = Path(file)
        if hasattr(module, "__path__"):  # a package: every .py file under its directory
            root = path.parent
            files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
        else:
            root, files = path.parent, [path]
        h = hashlib.sha256()
        for p in files:
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
        digest = h.hexdigest()
    _SOURCE_SHA[key] = digest
    return digest


def is_editable(dist: metadata.Distribution | None, module: object) -> bool:
    """Installed from a working tree: pip's ``direct_url.json`` says ``dir_info.editable``, or the
    module's file lies outside any site-packages / dist-packages folder."""
    if dist is not None:
        try:
            text = dist.read_text("direct_url.json")
            if text and json.loads(text).get("dir_info", {}).get("editable"):
                return True
        except (OSError, ValueError):
            pass
    file = getattr(module, "__file__", None)
    if not file:
        return False
    parts = Path(file).resolve().parts
    return "site-packages" not in parts and "dist-packages" not in parts


@dataclass
class Loaded:
    entry_point: str
    dist: str
    version: str
    module: str
    editable: bool


class Registry:
    def __init__(self):
        self.entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        #: (kind, name) -> every entry registered under that name, when more than one distribution did
        self.conflicts: dict[tuple[str, str], list[Entry]] = {}
        #: kind -> "dist:name" -> entry, for every registration (clashing ones included)
        self.qualified: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        #: entry points that failed to load: (entry point name, dist, error)
        self.failures: list[tuple[str, str, str]] = []
        self.loaded: list[tuple[str, str, str]] = []  # (entry point, dist, version)
        self.sources: list[Loaded] = []
        #: distributions skipped because the user disabled them
        self.disabled: list[str] = []

    def add(self, entry: Entry) -> None:
        self.qualified[entry.kind].setdefault(entry.qualified, entry)
        key = (entry.kind, entry.name)
        if key in self.conflicts:
            if all(e.factory is not entry.factory for e in self.conflicts[key]):
                self.conflicts[key].append(entry)
            return
        known = self.entries[entry.kind].get(entry.name)
        if known is not None and known.factory is not entry.factory:
            self.conflicts[key] = [known, entry]
            del self.entries[entry.kind][entry.name]  # neither wins: the name alone is ambiguous
            return
        self.entries[entry.kind][entry.name] = entry

    def names(self, kind: str) -> list[str]:
        """Every plain name of this kind, clashing ones included."""
        return sorted(set(self.entries[kind]) | {n for k, n in self.conflicts if k == kind})

    def all_entries(self, kind: str) -> list[Entry]:
        """Every registration of this kind, one per (distribution, name), clashing ones included."""
        return sorted(self.qualified[kind].values(), key=lambda e: (e.name, e.dist))

    def has(self, kind: str, name: str) -> bool:
        return name in self.entries[kind] or (kind, name) in self.conflicts or name in self.qualified[kind]

    def entry(self, kind: str, name: str, where: str = "") -> Entry:
        where = f"{where}: " if where else ""
        if name in self.qualified[kind] and name not in self.entries[kind]:
            return self.qualified[kind][name]
        if (kind, name) in self.conflicts:
            entries = self.conflicts[(kind, name)]
            dists = ", ".join(f"{e.dist} ({e.module})" for e in entries)
            others = [e.dist for e in entries if e.dist != BUILTIN_DIST] or [entries[-1].dist]
            raise UserError(
                f"{where}{kind} {name!r} is registered by more than one plugin: {dists}; pick one with a qualified "
                f"name ({' or '.join(f'plugin: {e.qualified}' for e in entries)}), or disable a distribution with "
                f"--disable-plugin {others[0]} (or {DISABLE_ENV}={others[0]})"
            )
        if name not in self.entries[kind]:
            if ":" in name:
                known = sorted(self.qualified[kind])
                raise UserError(f"{where}{unknown_message(kind, name, known, self.failures)}")
            raise UserError(f"{where}{unknown_message(kind, name, self.names(kind), self.failures)}")
        return self.entries[kind][name]

    def get(self, kind: str, name: str, where: str = "") -> Callable[..., Any]:
        return self.entry(kind, name, where).factory

    def distributions(self) -> list[dict]:
        """Each loaded distribution: version, entry points, and for a working-tree install the sha256 of
        its plugin packages' sources (one combined hash, and one per entry point)."""
        seen: dict[str, dict] = {}
        for src in self.sources:
            d = seen.setdefault(src.dist, {"dist": src.dist, "version": src.version, "entry_points": [],
                                           "editable": src.editable, "sources": {}})
            d["entry_points"].append(src.entry_point)
            if src.editable and src.module:
                d["sources"][src.entry_point] = source_sha256(src.module)
        for d in seen.values():
            if d["sources"]:
                d["source_sha256"] = hashlib.sha256(json.dumps(d["sources"], sort_keys=True).encode()).hexdigest()
            else:
                d["source_sha256"] = None
                del d["sources"]
        return sorted(seen.values(), key=lambda d: d["dist"])


def unknown_message(kind: str, name: str, known: list[str], failures: Iterable[tuple[str, str, str]] = ()) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f" — did you mean {close[0]!r}?" if close else ""
    broken = sorted({d for _, d, _ in failures})
    extra = f"; plugins that failed to load: {', '.join(broken)} (see the lines above)" if broken else ""
    return f"unknown {kind} {name!r}{hint} (known {kind}s: {', '.join(known) or 'none'}){extra}"


def _autoload_disabled() -> bool:
    return os.environ.get("AVHARNESS_DISABLE_PLUGIN_AUTOLOAD", "").strip() not in ("", "0", "false", "False")


def disabled_from_env() -> tuple[str, ...]:
    return tuple(x.strip() for x in os.environ.get(DISABLE_ENV, "").split(",") if x.strip())


def _hook_problems(pm: pluggy.PluginManager, module, label: str) -> list[str]:
    """Hooks a plugin module implements that are not specs, and hook-named functions left unmarked."""
    problems = []
    specs = list(HOOKS.values())
    for caller in pm.get_hookcallers(module) or []:
        if caller.spec is None:
            close = difflib.get_close_matches(caller.name, specs, n=1, cutoff=0.6)
            problems.append(f"{label} implements hook {caller.name!r}, which is not an avharness hook"
                            + (f" — did you mean {close[0]!r}?" if close else f" (hooks: {', '.join(specs)})"))
    marked = {c.name for c in pm.get_hookcallers(module) or []}
    for hook in specs:
        fn = getattr(module, hook, None)
        if inspect.isfunction(fn) and hook not in marked:
            problems.append(f"{label} defines {hook}() without @avharness.hookimpl, so it is never called")
    return problems


def load_registry(blocked: tuple[str, ...] = (), extra_modules: tuple[str, ...] = ()) -> Registry:
    """Import every ``avharness`` entry point (or only the built-ins) and collect registrations.

    A plugin that fails to import or implements a hook that is not a spec is recorded in
    ``registry.failures`` and skipped; the others load. ``blocked`` names entry points or
    distributions to skip (with ``AVHARNESS_DISABLE_PLUGINS``). ``extra_modules`` are imported as
    plugins too (for tests).
    """
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    candidates = _candidates(registry, tuple(blocked) + disabled_from_env(), extra_modules)
    sources = _load_plugins(pm, registry, candidates)
    _collect_registrations(pm, registry, sources)
    return registry


# (entry point name, distribution, version, load(), distribution object, module name)
_Candidate = tuple[str, str, str, Callable[[], Any], Any, str]


def _candidates(registry: Registry, blocked: tuple[str, ...], extra_modules: tuple[str, ...]) -> list[_Candidate]:
    """The entry points to import, in a stable order; blocked distributions are noted in the registry."""
    candidates: list[_Candidate] = []
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: (e.dist.name if e.dist else "", e.name)):
        dist = ep.dist.name if ep.dist else "?"
        if _autoload_disabled() and dist != BUILTIN_DIST:
            continue
        if ep.name in blocked or dist in blocked:
            if dist not in registry.disabled:
                registry.disabled.append(dist)
            continue
        candidates.append((ep.name, dist, ep.dist.version if ep.dist else "?", ep.load, ep.dist, ep.value.split(":")[0]))
    for modname in extra_modules:
        candidates.append((modname, "module", "", lambda m=modname: importlib.import_module(m), None, modname))
    return candidates


def _load_plugins(pm: pluggy.PluginManager, registry: Registry, candidates: list[_Candidate]) -> dict[str, Loaded]:
    """Import and register each candidate; returns pluggy plugin name -> where it came from."""
    sources: dict[str, Loaded] = {}
    for ep_name, dist, version, load, dist_obj, modname in candidates:
        label = f"plugin {ep_name!r} of {dist} {version}".rstrip()
        try:
            module = load()
            pname = f"{dist}:{ep_name}"
            pm.register(module, name=pname)
        except Exception as exc:  # a broken plugin must not take the others down
            registry.failures.append((ep_name, dist, f"{type(exc).__name__}: {_one_line(exc)}"))
            continue
        problems = _hook_problems(pm, module, label)
        if problems:
            pm.unregister(module)
            registry.failures.append((ep_name, dist, "; ".join(problems)))
            continue
        src = Loaded(ep_name, dist, version, getattr(module, "__name__", modname), is_editable(dist_obj, module))
        sources[pname] = src
        registry.sources.append(src)
        registry.loaded.append((ep_name, dist, version))
        log.debug("loaded plugin %r of %s %s from %s%s", ep_name, dist, version, getattr(module, "__file__", "?"),
                  " (editable: source-hashed)" if src.editable else "")
    return sources


def _collect_registrations(pm: pluggy.PluginManager, registry: Registry, sources: dict[str, Loaded]) -> None:
    """Call every register_* hook; a bad registration or a raising hook is a failure, not a crash."""
    for kind, hook in HOOKS.items():
        caller = getattr(pm.hook, hook)
        for impl in caller.get_hookimpls():
            src = sources.get(impl.plugin_name) or Loaded(impl.plugin_name, "?", "?", "", False)
            bad: list[str] = []

            def register(name, factory, _kind=kind, _src=src, _plugin=impl.plugin.__name__, _bad=bad):
                if not isinstance(name, str) or not name or ":" in name:
                    _bad.append(f"register({name!r}, ...): a name is a non-empty string without ':'")
                    return
                if not callable(factory):
                    _bad.append(f"register({name!r}, {factory!r}): the factory is not callable")
                    return
                # the module that defines the factory says more than the hook module that registered it
                registry.add(Entry(_kind, name, factory, _src.dist, _src.version,
                                   getattr(factory, "__module__", None) or _plugin, _src.module, _src.editable))

            try:
                impl.function(register=register)
            except Exception as exc:
                bad.append(f"{hook} raised {type(exc).__name__}: {_one_line(exc)}")
            for problem in bad:
                registry.failures.append((src.entry_point, src.dist, f"{hook}: {problem}"))


_REGISTRY: Registry | None = None
#: distributions disabled on the command line (``--disable-plugin``), for every registry loaded after
_BLOCKED: tuple[str, ...] = ()


def get_registry(reload: bool = False) -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None or reload:
        _REGISTRY = load_registry(blocked=_BLOCKED)
        for ep, dist, err in _REGISTRY.failures:
            print(f"avharness: plugin {ep!r} from {dist} failed to load and is skipped: {err}", file=sys.stderr)
    return _REGISTRY


def set_registry(registry: Registry | None) -> None:
    global _REGISTRY
    _REGISTRY = registry


def set_blocked(dists: tuple[str, ...]) -> None:
    """Distributions (or entry point names) the next ``get_registry`` skips (``--disable-plugin``)."""
    global _BLOCKED, _REGISTRY
    _BLOCKED = tuple(dists)
    _REGISTRY = None
