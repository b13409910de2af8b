"""Safe, fast YAML reading for manifests, with source positions on demand.

The document is composed by libyaml (``yaml.CSafeLoader``) and turned into plain
Python data by a small builder instead of PyYAML's generic constructor: the builder
refuses duplicate keys and non-standard tags, and is cheaper per node. Positions of
individual keys and values are not kept on the happy path; :class:`SourceMap`
recomposes the text to find them only when there is something to report.

Invariants:
- Only plain data comes out: dict, list, str, int, float, bool, None (and the few
  other standard YAML 1.1 types: dates, bytes, sets). No object is ever constructed from
  a tag; any tag outside ``tag:yaml.org,2002:`` is a :class:`YamlIssue`.
- Nothing but :class:`YamlIssue` values describes a problem; no yaml exception escapes.
- Aliases share the built object (a "billion laughs" document stays small), and a
  recursive alias yields a recursive structure: callers validate shapes before walking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_STD = "tag:yaml.org,2002:"
STR_TAG = _STD + "str"
INT_TAG = _STD + "int"
BOOL_TAG = _STD + "bool"
NULL_TAG = _STD + "null"
MAP_TAG = _STD + "map"
SEQ_TAG = _STD + "seq"
MERGE_TAG = _STD + "merge"

_SAFE_TAGS = frozenset(
    _STD + name
    for name in (
        *("str", "int", "float", "bool", "null", "timestamp", "binary"),
        *("set", "omap", "pairs", "seq", "map", "merge", "value"),
    )
)
#: deeper than any manifest needs; keeps the builder's recursion far from Python's limit
MAX_DEPTH = 64

Mark = tuple[int, int]  # 1-based line, column
PathPart = str | int


@dataclass(frozen=True)
class YamlIssue:
    """A problem found while reading the YAML itself."""

    message: str
    hint: str
    line: int | None
    column: int | None
    #: the manifest path of the mapping or sequence it was found in, when known
    path: tuple[PathPart, ...] = ()
    #: fatal issues (syntax) mean no data could be read at all
    fatal: bool = False


@dataclass
class Parsed:
    data: Any
    issues: list[YamlIssue]
    #: position of each item of the top-level ``shots`` list, in order
    shot_marks: list[Mark]


class _Loader(yaml.CSafeLoader):
    """libyaml composer with a cheaper implicit-tag resolver (same results)."""

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> str:
        if kind is ScalarNode and implicit[0] and value:
            # Most scalars start with a letter no implicit resolver listens to: text.
            if value[0] not in _RESOLVER_FIRST:
                return STR_TAG
            # Plain decimal digits (no leading zero: that is YAML 1.1 octal) are ints.
            if value.isascii() and value.isdigit() and (value[0] != "0" or len(value) == 1):
                return INT_TAG
        return super().resolve(kind, value, implicit)  # type: ignore[no-any-return,no-untyped-call]


_RESOLVER_FIRST = frozenset(
    k for k in yaml.CSafeLoader.yaml_implicit_resolvers if isinstance(k, str)
)
if None in yaml.CSafeLoader.yaml_implicit_resolvers:  # pragma: no cover - stock PyYAML has none
    # a resolver for any first character: the shortcut above would be wrong
    _RESOLVER_FIRST = frozenset(chr(i) for i in range(0x110000))


def compose(data: bytes | str) -> Node | None:
    """The node tree of a single-document YAML text (raises yaml.YAMLError)."""
    loader = _Loader(data)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def parse(data: bytes | str) -> Parsed:
    """Plain data from YAML text; every problem found is in ``Parsed.issues``."""
    try:
        node = compose(data)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(str(s) for s in (exc.context, exc.problem) if s)
        return Parsed(
            None,
            [
                YamlIssue(
                    f"not valid YAML: {what}",
                    "fix the YAML syntax at this position",
                    mark.line + 1 if mark else None,
                    mark.column + 1 if mark else None,
                    fatal=True,
                )
            ],
            [],
        )
    except (yaml.YAMLError, ValueError, UnicodeError) as exc:
        return Parsed(
            None,
            [
                YamlIssue(
                    f"not readable as YAML: {exc}",
                    "save the file as UTF-8 text",
                    None,
                    None,
                    fatal=True,
                )
            ],
            [],
        )
    if node is None:
        return Parsed(None, [], [])
    builder = _Builder()
    value = builder.build(node, (), 0)
    return Parsed(value, builder.issues, _shot_marks(node))


def _mark(node: Node) -> Mark:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _shot_marks(root: Node) -> list[Mark]:
    if not isinstance(root, MappingNode):
        return []
    found: Node | None = None
    for key, value in root.value:
        if isinstance(key, ScalarNode) and key.value == "shots":
            found = value
    if not isinstance(found, SequenceNode):
        return []
    return [(n.start_mark.line + 1, n.start_mark.column + 1) for n in found.value]


class _Builder:
    """Turns nodes into data, noting duplicates and refused tags on the way."""

    def __init__(self) -> None:
        self.issues: list[YamlIssue] = []
        self._memo: dict[int, Any] = {}
        self._constructor = SafeConstructor()

    def build(self, node: Node, path: tuple[PathPart, ...], depth: int) -> Any:
        cls = type(node)
        if cls is ScalarNode:
            tag = node.tag
            if tag == STR_TAG:
                return node.value
            if tag == INT_TAG:
                text = node.value
                if text.isascii() and text.isdigit() and (len(text) == 1 or text[0] != "0"):
                    return int(text)
            return self._delegate(node, path)
        memo = self._memo.get(id(node))
        if memo is not None:
            return memo
        if depth >= MAX_DEPTH:
            self._issue(node, path, "is nested too deeply", "flatten this part of the file")
            return None
        if isinstance(node, MappingNode) and node.tag == MAP_TAG:
            return self._mapping(node, path, depth)
        if cls is SequenceNode and node.tag == SEQ_TAG:
            out: list[Any] = []
            self._memo[id(node)] = out
            for i, item in enumerate(node.value):
                out.append(self.build(item, (*path, i), depth + 1))
            return out
        return self._delegate(node, path)

    def _mapping(self, node: MappingNode, path: tuple[PathPart, ...], depth: int) -> Any:
        own: dict[Any, Any] = {}
        self._memo[id(node)] = own
        merges: list[dict[Any, Any]] = []
        build = self.build
        for key_node, value_node in node.value:
            # plain text keys and values are nearly everything: no call, no path tuple
            if type(key_node) is ScalarNode and key_node.tag == STR_TAG:
                key = key_node.value
            elif key_node.tag == MERGE_TAG:
                merges.extend(self._merge_sources(value_node, path, depth))
                continue
            else:
                key = build(key_node, path, depth + 1)
                try:
                    hash(key)
                except TypeError:
                    self._issue(key_node, path, "a key must be plain text", "write the key as text")
                    continue
            if key in own:
                self._duplicate(node, key_node, key, path)
                continue
            if type(value_node) is ScalarNode and value_node.tag == STR_TAG:
                own[key] = value_node.value
            else:
                sub = (*path, key) if isinstance(key, str) else path
                own[key] = build(value_node, sub, depth + 1)
        if merges:
            merged: dict[Any, Any] = {}
            for source in reversed(merges):
                merged.update(source)
            merged.update(own)
            own.clear()
            own.update(merged)
        return own

    def _duplicate(
        self, node: MappingNode, key_node: Node, key: Any, path: tuple[PathPart, ...]
    ) -> None:
        first_line = next(
            (
                _mark(k)[0]
                for k, _ in node.value
                if isinstance(k, ScalarNode) and k is not key_node and k.value == str(key)
            ),
            "?",
        )
        self._issue(
            key_node,
            path,
            f"duplicate key {key!r} (first at line {first_line})",
            "keep one of them; YAML would silently drop the first",
        )

    def _merge_sources(
        self, node: Node, path: tuple[PathPart, ...], depth: int
    ) -> list[dict[Any, Any]]:
        items = node.value if isinstance(node, SequenceNode) else [node]
        out: list[dict[Any, Any]] = []
        for item in items:
            value = self.build(item, path, depth + 1)
            if isinstance(value, dict):
                out.append(value)
            else:
                self._issue(
                    item, path, "a merge key (<<) needs a mapping", "merge an anchored mapping"
                )
        return out

    def _delegate(self, node: Node, path: tuple[PathPart, ...]) -> Any:
        """Rare scalars (floats, bools, dates...) and non-default collection tags."""
        tag = node.tag or ""
        if tag not in _SAFE_TAGS:
            self._issue(
                node,
                path,
                f"the YAML tag {tag!r} is not allowed",
                "remove the tag; manifests hold plain values only",
            )
            return None
        try:
            value = self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            self._issue(node, path, f"cannot read this value: {exc}", "write a plain value")
            return None
        if not isinstance(node, ScalarNode):
            self._memo[id(node)] = value
        return value

    def _issue(self, node: Node, path: tuple[PathPart, ...], message: str, hint: str) -> None:
        line, column = _mark(node)
        self.issues.append(YamlIssue(message, hint, line, column, path))


class SourceMap:
    """Finds the line and column of a path like ("shots", 3, "quality") on demand.

    The text is composed again the first time a position is asked for, so loading a
    valid manifest pays nothing for positions it never reports.
    """

    def __init__(self, data: bytes | str) -> None:
        self._data = data
        self._root: Node | None = None
        self._composed = False

    def locate(self, path: Sequence[PathPart], *, at_key: bool = False) -> Mark | None:
        """The position of the value at ``path`` (or of its key), or of its nearest parent."""
        if not self._composed:
            self._composed = True
            try:
                self._root = compose(self._data)
            except (yaml.YAMLError, ValueError, UnicodeError):
                self._root = None
        node = self._root
        if node is None:
            return None
        best: Node = node
        for i, part in enumerate(path):
            last = i == len(path) - 1
            child: Node | None = None
            if isinstance(node, MappingNode):
                for key_node, value_node in node.value:
                    if isinstance(key_node, ScalarNode) and key_node.value == str(part):
                        child = key_node if (last and at_key) else value_node
            elif (
                isinstance(node, SequenceNode)
                and isinstance(part, int)
                and 0 <= part < len(node.value)
            ):
                child = node.value[part]
            if child is None:
                break
            node = best = child
        return _mark(best)
