"""The habits of the codebase, checked rather than hoped for (docs/architecture.md):

- the core knows no concrete plugin, and the built-ins are one sub-package per kind behind five
  entry points;
- no function runs past about one screen (60 lines) without a comment above it saying why;
- every public function of the core says its types;
- code and docs cite only what a user's clone has (no notes outside the repository).
"""

from __future__ import annotations

import ast
import re
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "harness" / "avharness"
BUILTINS = ROOT / "plugins" / "avharness_plugins"
KINDS = ("datasets", "models", "attacks", "defenses", "metrics")
MAX_LINES = 60


def _python_files(*roots: Path) -> list[Path]:
    return sorted(p for r in roots for p in r.rglob("*.py") if "__pycache__" not in p.parts)


def _functions(path: Path):
    """(qualified name, node, nested) of every function: module-level, methods, and (nested=True)
    functions defined inside another function."""
    tree = ast.parse(path.read_text(), str(path))

    def walk(node, prefix, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.", in_function)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{prefix}{child.name}", child, in_function
                yield from walk(child, f"{prefix}{child.name}.", True)
            else:
                yield from walk(child, prefix, in_function)

    yield from walk(tree, "", False)


def test_the_core_never_names_the_builtins():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in _python_files(CORE)
            for i, line in enumerate(p.read_text().splitlines(), 1) if "avharness_plugins" in line]
    assert not hits, f"the core must not know the built-in plugins: {hits}"


def test_builtins_are_one_package_per_kind_behind_five_entry_points():
    packages = {p.name for p in BUILTINS.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == {*KINDS, "testing"}
    loose = [p.name for p in BUILTINS.glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules beside the kind packages: {loose}"
    installed = [ep.value for ep in metadata.entry_points(group="avharness") if ep.dist and ep.dist.name == "avharness"]
    assert sorted(installed) == sorted(f"avharness_plugins.{k}" for k in KINDS)


def test_long_functions_say_why():
    unexplained = []
    for path in _python_files(CORE, BUILTINS):
        lines = path.read_text().splitlines()
        for name, fn, _ in _functions(path):
            length = fn.end_lineno - fn.lineno + 1
            if length <= MAX_LINES:
                continue
            first = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
            above = lines[first - 2].strip() if first >= 2 else ""
            if not above.startswith("#"):
                unexplained.append(f"{path.relative_to(ROOT)}:{fn.lineno} {name} ({length} lines)")
    assert not unexplained, ("functions over 60 lines need a comment right above them saying why they are long "
                             f"(or a split): {unexplained}")


def _public(name: str) -> bool:
    parts = name.split(".")
    return all(not p.startswith("_") or p in ("__init__", "__call__") for p in parts)


def test_public_core_functions_are_annotated():
    missing = []
    for path in _python_files(CORE):
        for name, fn, nested in _functions(path):
            if nested or not _public(name):  # a nested function is private to its parent
                continue
            args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
            bare = [a.arg for a in args if a.annotation is None and a.arg not in ("self", "cls")]
            bare += [f"*{a.arg}" for a in (fn.args.vararg, fn.args.kwarg) if a is not None and a.annotation is None]
            if fn.returns is None and fn.name != "__init__":
                bare.append("return")
            if bare:
                missing.append(f"{path.relative_to(ROOT)}:{fn.lineno} {name} ({', '.join(bare)})")
    assert not missing, f"public core functions without annotations: {missing}"


@pytest.mark.parametrize("pattern", [r"seeds\.md", r"anchors(\.md| §)", r"DESIGN\.md", r"\.\./shared/reference"])
def test_nothing_cites_notes_outside_the_repository(pattern):
    texts = _python_files(CORE, BUILTINS) + sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in texts
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(pattern, line)]
    assert not hits, f"references to documents a user's clone does not have: {hits}"


def test_architecture_doc_names_every_module():
    """docs/architecture.md is the map of the tree: a module it does not name is one a reader cannot find."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    unnamed = [str(p.relative_to(ROOT)) for p in _python_files(CORE, BUILTINS)
               if p.name != "__init__.py" and f"`{p.name}`" not in text]
    assert not unnamed, f"add these to docs/architecture.md: {unnamed}"
