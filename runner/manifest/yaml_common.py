"""What the manifest's YAML reading shares: tags, the issue and result types, the C
loader, and the source map that finds a position only when a problem needs one.

Invariants: see runner/manifest/yaml_source.py (this is its vocabulary, split out so
that neither module passes 600 lines).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

STD_TAG_PREFIX = "tag:yaml.org,2002:"
STR_TAG = STD_TAG_PREFIX + "str"
INT_TAG = STD_TAG_PREFIX + "int"
BOOL_TAG = STD_TAG_PREFIX + "bool"
NULL_TAG = STD_TAG_PREFIX + "null"
MAP_TAG = STD_TAG_PREFIX + "map"
SEQ_TAG = STD_TAG_PREFIX + "seq"
MERGE_TAG = STD_TAG_PREFIX + "merge"

SAFE_TAGS = frozenset(
    STD_TAG_PREFIX + name
    for name in (
        *("str", "int", "float", "bool", "null", "timestamp", "binary"),
        *("set", "omap", "pairs", "seq", "map", "merge", "value"),
    )
)
#: deeper than any manifest needs; keeps the builder's recursion far from Python's limit
MAX_DEPTH = 64
#: distinct plain scalars whose resolved tag is remembered ("360p", "v4.5", "true"...)
TAG_CACHE_ENTRIES = 4096
TAG_CACHE_CHARS = 64
#: plain text values this short are interned: enum-like values repeat across shots
SHARED_CHARS = 8

Mark = tuple[int, int]  # 1-based line, column
PathPart = str | int
Path_ = tuple[PathPart, ...]

TOO_DEEP = ("is nested too deeply", "flatten this part of the file")
CANNOT_READ_HINT = "write a plain value"
#: what SafeConstructor.construct_yaml_bool reads (lower-cased)
BOOLS: dict[str, bool] = SafeConstructor.bool_values
#: _key's answers for a ``<<`` key and for a key that cannot be one
MERGE = object()
BAD_KEY = object()


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


RESOLVER_FIRST = frozenset(
    k for k in yaml.CSafeLoader.yaml_implicit_resolvers if isinstance(k, str)
)
if None in yaml.CSafeLoader.yaml_implicit_resolvers:  # pragma: no cover - stock PyYAML has none
    # a resolver for any first character: the shortcut above would be wrong
    RESOLVER_FIRST = frozenset(chr(i) for i in range(0x110000))


class EventLoader(yaml.CSafeLoader):
    """libyaml parser with a cheaper implicit-tag resolver (same results)."""

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> str:
        if kind is ScalarNode and implicit[0] and value:
            # Most scalars start with a letter no implicit resolver listens to: text.
            if value[0] not in RESOLVER_FIRST:
                return STR_TAG
            # Plain decimal digits (no leading zero: that is YAML 1.1 octal) are ints.
            if value.isascii() and value.isdigit() and (value[0] != "0" or len(value) == 1):
                return INT_TAG
        return super().resolve(kind, value, implicit)  # type: ignore[no-any-return,no-untyped-call]


def compose(data: bytes | str) -> Node | None:
    """The node tree of a single-document YAML text (raises yaml.YAMLError)."""
    loader = EventLoader(data)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


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
        return best.start_mark.line + 1, best.start_mark.column + 1


def ordered_pairs(tag: str, mark: Any, items: list[Any], marks: list[Any]) -> list[Any] | Exception:
    """The (key, value) pairs of ``!!omap`` / ``!!pairs`` items, or why they are not
    one-entry mappings (in SafeConstructor's words)."""
    if tag.endswith("omap"):
        context = "while constructing an ordered map"
    else:
        context = "while constructing pairs"
    out: list[Any] = []
    for item, item_mark in zip(items, marks, strict=True):
        entries = dict.fromkeys(item) if isinstance(item, set) else item  # !!set: a mapping
        if not isinstance(entries, dict):
            found = "sequence" if isinstance(entries, list) else "scalar"
            return ConstructorError(
                context, mark, f"expected a mapping of length 1, but found {found}", item_mark
            )
        if len(entries) != 1:
            return ConstructorError(
                context,
                mark,
                f"expected a single mapping item, but found {len(entries)} items",
                item_mark,
            )
        out.extend(entries.items())
    return out
