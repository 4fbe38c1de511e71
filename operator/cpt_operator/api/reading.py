"""Read manifest files the way `kubectl apply` and the API server read them: bounded, strict,
and with every refusal one clear line.

- Bounded: a file of at most `MAX_FILE_BYTES` (the API server's 3 MiB request limit); each
  document at most `MAX_DEPTH` levels deep (checked while composing, so a list nested
  thousands deep is refused before Python's recursion limit) and at most `MAX_OBJECT_BYTES`
  (1.5 MiB, the API server's object limit) once every alias is expanded (computed over the
  node graph without expanding it, so a "billion laughs" alias bomb is refused in
  milliseconds); alias cycles are refused; a wall-clock deadline stops the rest.
- YAML as kubectl reads it (sigs.k8s.io/yaml): `3e-5`, `5e10` and `50_000_000_000` are
  numbers, timestamps and `1:30` stay strings; duplicate keys are refused, naming both
  lines; values JSON cannot carry (`.inf`, `.nan`, `1.0e+400`, binary, non-string keys)
  are refused naming the field.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

MAX_FILE_BYTES = 3 * 2**20
MAX_OBJECT_BYTES = 3 * 2**19  # 1.5 MiB
MAX_DEPTH = 64
DEADLINE_SECONDS = 30.0
MAX_MESSAGE = 300


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` on one line, cut to `limit` characters."""
    text = " ".join(str(text).split("\n"))
    if len(text) <= limit:
        return text
    return text[: limit - 30] + f"... ({len(text):,} characters)"


def short_repr(value: Any, limit: int = 60) -> str:
    """repr(value), cut for echoing in a message."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value):,} characters)"
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class ReadError(Exception):
    """A document that cannot be read; `line` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None):
        self.message, self.line = message, line
        super().__init__(message)


# --------------------------------------------------------------------------- resolver


class _Resolver(BaseResolver):
    """Plain scalars resolved as sigs.k8s.io/yaml (go-yaml) resolves them: YAML 1.1 booleans
    and ints, floats with or without a dot (`3e-5`), no timestamps, no base-60 numbers."""


_Resolver.yaml_implicit_resolvers = {}
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$"),
    list("yYnNtTfFoO"),
)
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
_Resolver.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])
_Resolver.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])


# --------------------------------------------------------------------------- composer


class _BoundedComposer(Composer):
    """Composes nodes with a depth bound and a deadline; refuses duplicate keys."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._deadline = time.monotonic() + DEADLINE_SECONDS
        self._count = 0

    def compose_node(self, parent, index):  # type: ignore[override]
        self._depth += 1
        self._count += 1
        if self._depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise ReadError(f"nested more than {MAX_DEPTH} levels deep", mark.line + 1)
        if self._count % 4096 == 0 and time.monotonic() > self._deadline:
            raise ReadError(f"took more than {DEADLINE_SECONDS:.0f} s to read")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, MappingNode):
            _check_duplicate_keys(node)
        return node


def _check_duplicate_keys(node: MappingNode) -> None:
    seen: dict[str, int] = {}
    for key, _value in node.value:
        if not isinstance(key, ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        if key.value in seen:
            raise ReadError(
                f"duplicate key {short_repr(key.value)} (line {seen[key.value]} and line {line}); "
                "the API server would keep only the last: remove one",
                line,
            )
        seen[key.value] = line


class _Constructor(SafeConstructor):
    pass


class _Loader(Reader, Scanner, Parser, _BoundedComposer, _Constructor, _Resolver):
    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _BoundedComposer.__init__(self)
        _Constructor.__init__(self)
        _Resolver.__init__(self)


# --------------------------------------------------------------------------- expanded size


def _expanded(root: Node) -> tuple[int, int]:
    """(approximate JSON bytes, depth) of the node graph with every alias expanded, computed
    without expanding it (each shared node once), iteratively; raises ReadError on a cycle."""
    done: dict[int, tuple[int, int]] = {}
    active: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            active.discard(key)
            if isinstance(node, ScalarNode):
                continue
            items = [c for pair in node.value for c in pair] if isinstance(node, MappingNode) else node.value
            size, depth = 2, 0
            for child in items:
                csize, cdepth = done[id(child)]
                size += csize + 1
                depth = max(depth, cdepth)
                if size > 4 * MAX_OBJECT_BYTES:
                    size = 4 * MAX_OBJECT_BYTES  # saturate: bounds the integers too
            done[key] = (size, depth + 1)
            continue
        if key in done:
            continue
        if key in active:
            raise ReadError("an alias refers to a node that contains it (a cycle)", node.start_mark.line + 1)
        if isinstance(node, ScalarNode):
            done[key] = (len(node.value) + 2, 1)
            continue
        active.add(key)
        stack.append((node, True))
        items = [c for pair in node.value for c in pair] if isinstance(node, MappingNode) else node.value
        for child in items:
            if id(child) in active:
                raise ReadError("an alias refers to a node that contains it (a cycle)", child.start_mark.line + 1)
            if id(child) not in done:
                stack.append((child, False))
    return done[id(root)]


# --------------------------------------------------------------------------- JSON check


def _json_problem(value: Any) -> tuple[str, str] | None:
    """(field path, problem) of the first value JSON (and so the API server) cannot carry."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    where = path or "(root)"
                    return where, f"key {short_repr(k)} is not a string; quote it"
                stack.append((f"{path}.{k}" if path else k, v))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))
        elif isinstance(item, float):
            if not math.isfinite(item):
                return path or "(root)", "must be a finite number (JSON has no Infinity or NaN)"
        elif item is not None and not isinstance(item, (str, int, bool)):
            return path or "(root)", f"a {type(item).__name__} value is not JSON; write a string or a number"
    return None


# --------------------------------------------------------------------------- entry points


@dataclass
class Document:
    index: int  # 1-based
    line: int  # 1-based line where the document starts
    body: Any


def read_documents(path: Path) -> list[Document]:
    """The documents of one YAML file, read with the bounds above; raises ReadError."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ReadError(f"cannot read: {exc.strerror or exc}") from None
    if size > MAX_FILE_BYTES:
        raise ReadError(f"is {size:,} bytes; the API server takes at most {MAX_FILE_BYTES:,} bytes in one request")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ReadError(f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ReadError(f"is not UTF-8 text (byte {exc.start})") from None
    return read_text(text)


def read_text(text: str) -> list[Document]:
    try:
        loader = _Loader(text)  # the reader refuses non-printable characters (NUL, ...) right here
    except yaml.YAMLError as exc:
        raise _InDocument(1, ReadError(f"unreadable YAML: {clip(str(exc), 160)}")) from None
    docs: list[Document] = []
    try:
        while loader.check_node():
            index = len(docs) + 1
            start = loader.peek_event().start_mark.line + 1
            node = loader.get_node()
            if node is None:
                continue
            try:
                size, depth = _expanded(node)
                if depth > MAX_DEPTH:
                    raise ReadError(f"nested more than {MAX_DEPTH} levels deep once its aliases are expanded", start)
                if size > MAX_OBJECT_BYTES:
                    raise ReadError(
                        f"is larger than {MAX_OBJECT_BYTES:,} bytes once its aliases are expanded "
                        "(the API server's limit for one object)",
                        start,
                    )
                body = loader.construct_document(node)
                problem = _json_problem(body)
                if problem:
                    raise ReadError(f"{problem[0]}: {problem[1]}", start)
            except ReadError as exc:
                raise _InDocument(index, exc) from None
            docs.append(Document(index, start, body))
    except _InDocument:
        raise
    except ReadError as exc:
        raise _InDocument(len(docs) + 1, exc) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = clip(exc.problem or exc.context or "cannot be parsed", 160)
        raise _InDocument(len(docs) + 1, ReadError(f"malformed YAML{where}: {problem}")) from None
    except yaml.YAMLError as exc:
        raise _InDocument(len(docs) + 1, ReadError(f"malformed YAML: {clip(str(exc), 120)}")) from None
    except RecursionError:
        raise _InDocument(len(docs) + 1, ReadError("nested too deeply")) from None
    finally:
        loader.dispose()
    return docs


class _InDocument(ReadError):
    """A ReadError of document `index` of a file."""

    def __init__(self, index: int, error: ReadError):
        self.index = index
        super().__init__(error.message, error.line)

    def describe(self, path: Path | str) -> str:
        where = f"document {self.index}" + (f" (line {self.line})" if self.line else "")
        return clip(f"{path}: {where}: {self.message}")


DocumentError = _InDocument
