"""YAML loading that remembers the line of every key and list item, for errors that say where."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from .errors import UserError


class LineDict(dict):
    """A dict from YAML with ``line`` (its own) and ``key_lines`` (each key's line, 1-based)."""

    line: int = 0

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.key_lines: dict = {}


class LineList(list):
    line: int = 0

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.item_lines: list[int] = []


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, (str, int, float, bool)) or key is None:
            raise UserError(f"{loader.name}:{line}: keys must be plain scalars, got {key!r}")
        if key in out:
            raise UserError(
                f"{loader.name}:{line}: key {key!r} appears twice in this mapping (first at line {out.key_lines[key]})"
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = line
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList()
    out.line = node.start_mark.line + 1
    for item in node.value:
        out.append(loader.construct_object(item, deep=True))
        out.item_lines.append(item.start_mark.line + 1)
    return out


# YAML 1.1 reads 1e-3 (no dot) as a string; every user means a number. Resolve it as a float.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def load_yaml(path: str | Path):
    """Parse ``path`` safely; syntax errors become a one-line UserError with file and line."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"{path}: suite file not found; check the path (suites live in suites/, e.g. suites/quickstart.yaml)"
        )
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a suite file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the suite file ({exc})") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, name: str = "<string>"):
    loader = _Loader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        what = exc.problem or exc.context or "invalid YAML"
        raise UserError(f"{name}{line}: YAML syntax error: {what}; fix the indentation or quoting there") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{name}: YAML error: {exc}") from None
    finally:
        loader.dispose()


def plain(obj):
    """Strip line bookkeeping: LineDict/LineList → dict/list, recursively."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return obj
