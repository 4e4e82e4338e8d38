"""YAML loading that remembers the line of every key and list item, for errors that say where.

Hostile or accidental input is bounded while it is read, not after: a file (or ``--set`` value)
larger than ``max_bytes`` is refused before it is parsed, and the composer counts every node as
the document would be *expanded* (an alias ``*a`` counts as a full copy of what ``&a`` anchors), so
an alias bomb ("billion laughs") is refused after a few thousand events instead of growing to
gigabytes in later processing. Recursive aliases are refused too. The limits (see ``Limits``) are
far above any real suite and can be raised with environment variables.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


class LineDict(dict):
    """A dict from YAML with ``line`` (its own) and ``key_lines`` (each key's line, 1-based)."""

    line: int = 0

    def __init__(self, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        self.key_lines: dict = {}


class LineList(list):
    line: int = 0

    def __init__(self, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        self.item_lines: list[int] = []


@dataclass(frozen=True)
class Limits:
    """Resource limits on one YAML document (defaults; each overridable by an environment variable)."""

    #: bytes of YAML text (AVHARNESS_YAML_MAX_BYTES); real suites are a few kB
    max_bytes: int = 256 << 10
    #: values after expanding aliases (AVHARNESS_YAML_MAX_NODES); the shipped suites have 100-185
    max_nodes: int = 20_000
    #: alias references ``*name`` (AVHARNESS_YAML_MAX_ALIASES)
    max_aliases: int = 1_000

    @classmethod
    def from_env(cls) -> Limits:
        values = {}
        for name in ("max_bytes", "max_nodes", "max_aliases"):
            var = f"AVHARNESS_YAML_{name.upper()}"
            text = os.environ.get(var)
            if text is None or not text.strip():
                continue
            try:
                values[name] = int(text)
            except ValueError:
                values[name] = 0
            if values[name] < 1:
                raise UserError(f"environment variable {var}={text!r}: expected a positive integer "
                                f"(default {getattr(cls, name)}); fix or unset it")
        return cls(**values)


ENV_HINT = "raise the limit with the environment variable AVHARNESS_YAML_"


class _Loader(yaml.SafeLoader):
    """SafeLoader that counts expanded nodes and aliases while composing (see the module docstring)."""

    def __init__(self, stream, limits: Limits | None = None):
        super().__init__(stream)
        self.limits = limits or Limits()
        self.expanded = 0
        self.aliases = 0

    def _where(self, mark) -> str:
        return _at(self.name, mark.line + 1 if mark is not None else None)

    def compose_node(self, parent, index):
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            anchor = self.peek_event().anchor
            node = super().compose_node(parent, index)
            size = node.__dict__.get("_expanded")
            if size is None:
                raise UserError(f"{self._where(mark)}: YAML alias *{anchor} refers to a node that contains it (a "
                                "recursive structure); a suite holds plain data: write the value out instead")
            self.aliases += 1
            if self.aliases > self.limits.max_aliases:
                raise UserError(f"{self._where(mark)}: more than {self.limits.max_aliases} YAML aliases (*name); "
                                f"a suite needs only a few: write the values out, or {ENV_HINT}MAX_ALIASES")
            self._count(size, mark)
            return node
        self._count(1, mark)
        node = super().compose_node(parent, index)
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(c._expanded for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(k._expanded + v._expanded for k, v in node.value)
        else:
            size = 1
        node._expanded = size
        return node

    def _count(self, n: int, mark) -> None:
        self.expanded += n
        if self.expanded > self.limits.max_nodes:
            if self.aliases:
                raise UserError(
                    f"{self._where(mark)}: the YAML expands to more than {self.limits.max_nodes} values (each alias "
                    "*name counts as a full copy of what it refers to; this looks like an alias bomb); a suite needs "
                    f"a few hundred: remove the nested aliases, or {ENV_HINT}MAX_NODES"
                )
            raise UserError(f"{self._where(mark)}: the YAML holds more than {self.limits.max_nodes} values; a suite "
                            f"needs a few hundred (is this the right file?); {ENV_HINT}MAX_NODES if it really is one")


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, (str, int, float, bool)) or key is None:
            raise UserError(f"{_at(loader.name, line)}: keys must be plain scalars, got {key!r}")
        if key in out:
            raise UserError(
                f"{_at(loader.name, line)}: key {key!r} appears twice in this mapping (first at line {out.key_lines[key]})"
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


def _at(name: str, line: int | None) -> str:
    """``file:line``; a command-line value (``--set key``) is one line and is named without one."""
    return name if line is None or name.startswith("--") else f"{name}:{line}"


def _too_big(name: str, size: str, limits: Limits) -> UserError:
    return UserError(f"{name}: {size} of YAML is more than the limit of {limits.max_bytes} bytes (suites are a few "
                     f"kB; is this the right file?); {ENV_HINT}MAX_BYTES if it really is a suite")


def load_yaml(path: str | Path, limits: Limits | None = None) -> Any:
    """Parse ``path`` safely; syntax errors become a one-line UserError with file and line."""
    path = Path(path)
    limits = limits or Limits.from_env()
    if not path.exists():
        raise UserError(
            f"{path}: suite file not found; check the path (suites live in suites/, e.g. suites/quickstart.yaml)"
        )
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a suite file")
    try:
        if path.is_file() and path.stat().st_size > limits.max_bytes:
            raise _too_big(str(path), f"{path.stat().st_size} bytes", limits)
        with open(path, "rb") as f:  # bounded: a fifo or /dev/zero has no size to stat
            data = f.read(limits.max_bytes + 1)
    except OSError as exc:
        raise UserError(f"{path}: cannot read the suite file ({exc.strerror or type(exc).__name__})") from None
    if len(data) > limits.max_bytes:
        raise _too_big(str(path), "more than that", limits)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: the suite is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                        f"{exc.start}); save it as UTF-8") from None
    return parse_yaml(text, str(path), limits)


def _line_of(text: str, position: int) -> int:
    return text.count("\n", 0, max(position, 0)) + 1


def _syntax_error(exc: yaml.MarkedYAMLError, name: str) -> UserError:
    """One line for a YAML syntax error, at the line a person would look at."""
    problem, context = exc.problem or "", exc.context or ""
    pmark, cmark = exc.problem_mark, exc.context_mark
    at = lambda m: _at(name, m.line + 1 if m is not None else None)  # noqa: E731
    opener = re.match(r"while (?:parsing|scanning) a (flow mapping|flow sequence|quoted scalar)", context)
    if opener and cmark is not None:  # an unclosed { [ or quote: the error belongs where it was opened
        what = {"flow mapping": ("'{'", "'}'"), "flow sequence": ("'['", "']'"),
                "quoted scalar": ("quote", "the same quote")}[opener.group(1)]
        later = f" (line {pmark.line + 1}: {problem})" if pmark is not None and problem else ""
        return UserError(f"{at(cmark)}: YAML syntax error: the {what[0]} opened on this line is not closed{later}; "
                         f"close it with {what[1]}")
    dup = re.match(r"found duplicate anchor '?([^';]*)'?; first occurrence", context)
    if dup and pmark is not None:
        first = f" (first at line {cmark.line + 1})" if cmark is not None else ""
        return UserError(f"{at(pmark)}: YAML syntax error: anchor &{dup.group(1)} is defined twice{first}; "
                         "give each anchor a distinct name")
    tag = re.match(r"could not determine a constructor for the tag '([^']*)'", problem)
    if tag:
        return UserError(f"{at(pmark)}: YAML tag {tag.group(1).replace('tag:yaml.org,2002:', '!!')} is not "
                         "allowed: a suite holds plain data (mappings, lists, strings, numbers); remove the tag")
    if context.startswith("expected a single document"):
        return UserError(f"{at(pmark)}: YAML syntax error: expected a single document, but a second one starts here "
                         "('---'); a suite is one document: remove the second or split it into its own file")
    mark = pmark or cmark
    what = (f"{problem} ({context})" if context.startswith("while") else f"{context} {problem}") \
        if problem and context else problem or context or "invalid YAML"
    return UserError(f"{at(mark)}: YAML syntax error: {what}; fix the indentation or quoting there")


def parse_yaml(text: str, name: str = "<string>", limits: Limits | None = None) -> Any:
    limits = limits or Limits.from_env()
    if len(text) > limits.max_bytes or len(text.encode("utf-8", "surrogatepass")) > limits.max_bytes:
        raise _too_big(name, f"{len(text.encode('utf-8', 'surrogatepass'))} bytes", limits)
    loader = None
    try:
        loader = _Loader(text, limits)  # the reader checks every character here, so inside the try
        loader.name = name
        return loader.get_single_data()
    except yaml.reader.ReaderError as exc:
        pos = exc.position if isinstance(exc.position, int) else 0
        code = exc.character if isinstance(exc.character, int) else ord(exc.character or "?")
        escape = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
        raise UserError(f"{_at(name, _line_of(text, pos))}: control character U+{code:04X} is not allowed in YAML (it is "
                        "invisible in most editors); delete it, or write it as an escape inside double quotes "
                        f'("{escape}")') from None
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, name) from None
    except yaml.YAMLError as exc:
        raise UserError(f"{name}: YAML error: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise UserError(f"{name}: YAML nested too deeply to read; a suite is at most a few levels deep") from None
    finally:
        if loader is not None:
            loader.dispose()


def plain(obj: Any) -> Any:
    """Strip line bookkeeping: LineDict/LineList → dict/list, recursively."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return obj
