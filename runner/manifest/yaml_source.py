"""Safe, lean YAML reading for manifests, with source positions on demand.

libyaml (``yaml.CSafeLoader``'s C parser) reads the text as a stream of events, and a
small builder turns the events straight into plain Python data: no node graph is ever
held, so a 100,000-shot manifest costs little more memory than its data. The builder
refuses duplicate keys and non-standard tags, and resolves plain scalars exactly as
PyYAML's SafeLoader does (its resolver, and SafeConstructor for the rarer types).
Positions of individual keys and values are not kept on the happy path; only the
top-level ``shots`` items have theirs noted. :class:`SourceMap` composes the text again
to find any other position, only when there is something to report.

Invariants:
- Only plain data comes out: dict, list, str, int, float, bool, None (and the few
  other standard YAML 1.1 types: dates, bytes, sets, ordered pairs). No object is ever
  constructed from a tag; any tag outside ``tag:yaml.org,2002:`` is a :class:`YamlIssue`.
- For a valid document without duplicate keys the data equals ``yaml.safe_load``'s.
- Nothing but :class:`YamlIssue` values describes a problem; no yaml exception escapes.
  Text libyaml cannot parse, an undefined or repeated anchor, or a second document is
  one fatal issue, as composing would have raised.
- Aliases share the built object (a "billion laughs" document stays small), and a
  recursive alias yields a recursive structure: callers validate shapes before walking.
- Nesting deeper than :data:`MAX_DEPTH` is an issue and is skipped, not built, so the
  builder's recursion stays far from Python's limit whatever the input.

Its vocabulary (tags, issue types, the C loader, :class:`SourceMap`) is in
runner/manifest/yaml_common.py.

Size: about 590 lines: the event builder is one recursive mechanism over libyaml's
events and is kept whole; its vocabulary moved to yaml_common.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runner.manifest.yaml_common import (
    BAD_KEY,
    BOOL_TAG,
    BOOLS,
    CANNOT_READ_HINT,
    INT_TAG,
    MAP_TAG,
    MAX_DEPTH,
    MERGE,
    MERGE_TAG,
    NULL_TAG,
    RESOLVER_FIRST,
    SAFE_TAGS,
    SEQ_TAG,
    SHARED_CHARS,
    STD_TAG_PREFIX,
    STR_TAG,
    TAG_CACHE_CHARS,
    TAG_CACHE_ENTRIES,
    TOO_DEEP,
    EventLoader,
    Mark,
    Parsed,
    Path_,
    PathPart,
    SourceMap,
    YamlIssue,
    compose,
    ordered_pairs,
)

__all__ = ["Mark", "Parsed", "PathPart", "SourceMap", "YamlIssue", "compose", "parse"]

# The builder takes a scalar that is not plain (quoted, block) to be text, and caches
# resolved tags by text alone: both hold only while no path resolver is registered.
assert not yaml.CSafeLoader.yaml_path_resolvers


def parse(data: bytes | str) -> Parsed:
    """Plain data from YAML text; every problem found is in ``Parsed.issues``."""
    loader: EventLoader | None = None
    try:
        loader = EventLoader(data)
        builder = _Builder(loader)
        found, value = builder.document()
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
    finally:
        if loader is not None:
            loader.dispose()
    if not found:
        return Parsed(None, [], [])
    return Parsed(value, builder.issues, [(m.line + 1, m.column + 1) for m in builder.shot_marks])


@dataclass(slots=True)
class _Anchor:
    """What an anchor names: a scalar is rebuilt at every alias (cheap, immutable), a
    collection is shared, or its problem is reported again where it is used."""

    #: the scalar or collection-start event that defined it (its mark, text, tag)
    event: Any
    #: a scalar's resolved tag
    tag: str = ""
    #: a collection's built value (filled in while it is built: aliases may recurse)
    value: Any = None
    #: why a collection has no value (refused tag, too deep): said again at each alias
    issue: tuple[str, str] | None = None
    #: the start marks of a sequence's items (for merge keys and the ``shots`` list)
    item_marks: list[Any] | None = None


def _is_text(ev: Any, first: frozenset[str]) -> bool:
    """True when a scalar event is untagged, unanchored text that no resolver wants."""
    if ev.tag is not None or ev.anchor is not None:
        return False
    text = ev.value
    return not ev.implicit[0] or (bool(text) and text[0] not in first)


def _is_decimal(text: str) -> bool:
    """Plain decimal digits without a leading zero: an int, as the resolver says."""
    return text.isdigit() and text.isascii() and (text[0] != "0" or len(text) == 1)


class _Builder:
    """Turns libyaml's events into data, noting duplicates and refused tags on the way.

    Each method that takes an event builds the node that event starts and consumes
    the node's remaining events, so the parser is always at the next sibling.
    """

    def __init__(self, loader: EventLoader) -> None:
        self.issues: list[YamlIssue] = []
        #: start marks of the items of the top-level ``shots`` sequence
        self.shot_marks: list[Any] = []
        self._loader = loader
        #: the parser's next event (None after the stream's end)
        self._next: Callable[[], Any] = loader.get_event
        self._anchors: dict[str, _Anchor] = {}
        self._tags: dict[str, str] = {}

    # ---- the document -------------------------------------------------------------

    def document(self) -> tuple[bool, Any]:
        """(False, None) for an empty stream, else (True, the data); raises yaml errors."""
        next_ = self._next
        next_()  # stream start
        ev = next_()
        if type(ev) is StreamEndEvent:
            return False, None
        root = next_()  # the document start was ev
        value = self._node(root, (), 0)
        next_()  # document end
        ev = next_()
        if type(ev) is not StreamEndEvent:
            raise ComposerError(
                "expected a single document in the stream",
                root.start_mark,
                "but found another document",
                ev.start_mark,
            )
        return True, value

    # ---- nodes --------------------------------------------------------------------

    def _node(self, ev: Any, path: Path_, depth: int, marks: list[Any] | None = None) -> Any:
        """The value of the node ``ev`` starts; ``marks`` collects a sequence's item marks."""
        cls = type(ev)
        if cls is ScalarEvent:
            return self._scalar(ev, path)
        if cls is AliasEvent:
            return self._alias(ev, path)
        if depth >= MAX_DEPTH:
            self._issue(ev.start_mark, path, *TOO_DEEP)
            self._skip(ev)
            return None
        tag = ev.tag
        if cls is MappingStartEvent:
            if tag is None or tag == "!" or tag == MAP_TAG:
                return self._mapping(ev, path, depth)
        elif tag is None or tag == "!" or tag == SEQ_TAG:
            return self._sequence(ev, path, depth, marks)
        return self._tagged(ev, path, depth, marks)

    def _mapping(self, start: Any, path: Path_, depth: int, anchored: bool = True) -> Any:
        own: dict[Any, Any] = {}
        if anchored and start.anchor is not None:
            self._define(start).value = own
        next_ = self._next
        first = RESOLVER_FIRST
        known = self._tags.get
        intern = sys.intern
        keys: list[Any] = []  # key events, for the line of a duplicate's first occurrence
        merges: list[dict[Any, Any]] = []
        while True:
            ev = next_()
            if type(ev) is MappingEndEvent:
                break
            keys.append(ev)
            # plain text keys and values are nearly everything: inline, no path tuple
            if type(ev) is ScalarEvent and _is_text(ev, first):
                key = intern(ev.value)  # one object for each distinct key of the file
            else:
                key = self._key(ev, path, depth)
                if key is MERGE:
                    merges.extend(self._merge_sources(path, depth))
                    continue
                if key is BAD_KEY:
                    self._node(next_(), path, depth + 1)  # its value, read and dropped
                    continue
            duplicate = key in own
            if duplicate:
                self._duplicate(keys, key, path)
            ev = next_()
            if depth == 0 and self._text(keys[-1]) == "shots":
                value = self._shots(ev, (*path, key) if type(key) is str else path, depth + 1)
            elif type(ev) is not ScalarEvent or ev.tag is not None or ev.anchor is not None:
                value = self._node(ev, (*path, key) if type(key) is str else path, depth + 1)
            else:
                text = ev.value
                if not ev.implicit[0] or (text and text[0] not in first) or known(text) == STR_TAG:
                    # short text repeats (models, qualities): one object for all
                    value = intern(text) if len(text) <= SHARED_CHARS else text
                elif _is_decimal(text):
                    value = int(text)
                else:
                    value = self._scalar(ev, (*path, key) if type(key) is str else path)
            if not duplicate:
                own[key] = value
        if merges:
            merged: dict[Any, Any] = {}
            for source in reversed(merges):
                merged.update(source)
            merged.update(own)
            own.clear()
            own.update(merged)
        return own

    def _sequence(
        self,
        start: Any,
        path: Path_,
        depth: int,
        marks: list[Any] | None = None,
        anchored: bool = True,
    ) -> list[Any]:
        out: list[Any] = []
        if anchored and start.anchor is not None:
            record = self._define(start)
            record.value = out
            if marks is None:
                marks = []
            record.item_marks = marks
        next_ = self._next
        first = RESOLVER_FIRST
        known = self._tags.get
        while True:
            ev = next_()
            cls = type(ev)
            if cls is SequenceEndEvent:
                break
            if cls is not ScalarEvent or ev.tag is not None or ev.anchor is not None:
                out.append(self._node(ev, (*path, len(out)), depth + 1))
            else:
                text = ev.value
                if _is_text(ev, first) or known(text) == STR_TAG:
                    out.append(text)
                elif _is_decimal(text):
                    out.append(int(text))
                else:
                    out.append(self._scalar(ev, (*path, len(out))))
            if marks is not None:
                marks.append(self._source(ev).start_mark)
        return out

    def _tagged(self, start: Any, path: Path_, depth: int, marks: list[Any] | None) -> Any:
        """A collection with an explicit tag: a set, ordered pairs, or a problem."""
        tag = start.tag
        is_map = type(start) is MappingStartEvent
        record = self._define(start) if start.anchor is not None else None
        empty, problem = self._empty(tag, is_map, start)
        if problem is not None:
            self._issue(start.start_mark, path, *problem)
        if record is not None:
            record.value, record.issue = empty, problem
        # the contents are read even when the tag is refused: anchors in them stay usable
        if is_map:
            built = self._mapping(start, path, depth, anchored=False)
            if empty is None:
                return None
            empty.update(built)  # a set of the keys
            return empty
        if marks is None:
            marks = []
        if record is not None:
            record.item_marks = marks
        items = self._sequence(start, path, depth, marks, anchored=False)
        if empty is None:
            return None
        pairs = ordered_pairs(tag, start.start_mark, items, marks)
        if not isinstance(pairs, Exception):
            empty.extend(pairs)
            return empty
        problem = (f"cannot read this value: {pairs}", CANNOT_READ_HINT)
        self._issue(start.start_mark, path, *problem)
        if record is not None:
            record.value, record.issue = None, problem
        return None

    def _empty(self, tag: str, is_map: bool, start: Any) -> tuple[Any, tuple[str, str] | None]:
        """The empty set or list a tagged collection starts as, or why there is none."""
        if tag not in SAFE_TAGS:
            return None, (
                f"the YAML tag {tag!r} is not allowed",
                "remove the tag; manifests hold plain values only",
            )
        # SafeConstructor says whether the tag fits this kind of node, and what it makes:
        # !!set a set (of a mapping's keys), !!omap and !!pairs a list of pairs
        kind = MappingNode if is_map else SequenceNode
        empty, why = self._construct(kind(tag, [], start.start_mark, start.end_mark))
        if why is None and not isinstance(empty, set if is_map else list):
            why = f"{tag} makes a {type(empty).__name__}"
        if why is not None:
            return None, (f"cannot read this value: {why}", CANNOT_READ_HINT)
        return empty, None

    def _skip(self, start: Any) -> None:
        """Reads past a collection without building it; its anchors stay defined."""
        next_ = self._next
        level = 0
        ev = start
        while True:
            cls = type(ev)
            if cls is ScalarEvent:
                if ev.anchor is not None:
                    self._define(ev).tag = self._tag(ev)
            elif cls is AliasEvent:
                self._record(ev)
            elif cls is MappingStartEvent or cls is SequenceStartEvent:
                level += 1
                if ev.anchor is not None:
                    self._define(ev).issue = TOO_DEEP
            else:
                level -= 1
            if level == 0:
                return
            ev = next_()

    # ---- scalars ------------------------------------------------------------------

    def _tag(self, ev: Any) -> str:
        """A scalar event's tag, resolved the way the composer resolves it."""
        tag: str | None = ev.tag
        if tag is not None and tag != "!":
            return tag
        implicit = ev.implicit
        text: str = ev.value
        if not implicit[0]:
            return STR_TAG
        cached = self._tags.get(text)
        if cached is None:
            cached = self._loader.resolve(ScalarNode, text, implicit)
            if len(self._tags) < TAG_CACHE_ENTRIES and len(text) <= TAG_CACHE_CHARS:
                self._tags[text] = cached
        return cached

    def _scalar(self, ev: Any, path: Path_) -> Any:
        tag = self._tag(ev)
        if ev.anchor is not None:
            self._define(ev).tag = tag
        return self._scalar_value(ev, tag, path)

    def _scalar_value(self, ev: Any, tag: str, path: Path_) -> Any:
        text: str = ev.value
        if tag == STR_TAG:
            return text
        if tag == INT_TAG and _is_decimal(text):
            return int(text)
        if tag == NULL_TAG:
            return None
        if tag == BOOL_TAG and (flag := BOOLS.get(text.lower())) is not None:
            return flag
        if tag not in SAFE_TAGS:
            self._issue(
                ev.start_mark,
                path,
                f"the YAML tag {tag!r} is not allowed",
                "remove the tag; manifests hold plain values only",
            )
            return None
        value, why = self._construct(ScalarNode(tag, text, ev.start_mark, ev.end_mark, ev.style))
        if why is not None:
            self._issue(ev.start_mark, path, f"cannot read this value: {why}", CANNOT_READ_HINT)
        return value

    def _construct(self, node: Node) -> tuple[Any, str | None]:
        """SafeConstructor's value for a lone node (floats, bools, dates...), or why not."""
        loader = self._loader
        try:
            return loader.construct_object(node, deep=True), None
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            return None, str(exc)
        except (LookupError, AttributeError):
            # the constructors index and match without checking first: `!!bool maybe`
            # is a KeyError, `!!timestamp x` an AttributeError
            return None, f"{node.value!r} is not a valid {node.tag.removeprefix(STD_TAG_PREFIX)}"
        finally:
            # the node is thrown away: so is the constructor's memory of it
            loader.constructed_objects.clear()
            loader.recursive_objects.clear()

    # ---- keys, merges, aliases ----------------------------------------------------

    def _key(self, ev: Any, path: Path_, depth: int) -> Any:
        """A key that is not plain text: its value, or MERGE, or BAD_KEY (reported)."""
        cls = type(ev)
        if cls is ScalarEvent:
            tag = self._tag(ev)
            if ev.anchor is not None:
                self._define(ev).tag = tag
            if tag == MERGE_TAG:
                return MERGE
            key = self._scalar_value(ev, tag, path)
        elif cls is AliasEvent:
            record = self._record(ev)
            if type(record.event) is ScalarEvent and record.tag == MERGE_TAG:
                return MERGE
            key = self._alias(ev, path)
        else:
            key = self._node(ev, path, depth + 1)
        try:
            hash(key)
        except TypeError:
            self._issue(
                self._source(ev).start_mark,
                path,
                "a key must be plain text",
                "write the key as text",
            )
            return BAD_KEY
        return key

    def _duplicate(self, keys: list[Any], key: Any, path: Path_) -> None:
        this = self._source(keys[-1])
        text = str(key)
        first_line: int | str = "?"
        for k in keys:
            source = self._source(k)
            if type(source) is ScalarEvent and source is not this and source.value == text:
                first_line = self._line(source)
                break
        self._issue(
            this.start_mark,
            path,
            f"duplicate key {key!r} (first at line {first_line})",
            "keep one of them; YAML would silently drop the first",
        )

    def _merge_sources(self, path: Path_, depth: int) -> list[dict[Any, Any]]:
        """The mappings a ``<<`` key's value names (read from the parser)."""
        ev = self._next()
        cls = type(ev)
        values: list[Any]
        marks: list[Any]
        if cls is SequenceStartEvent:
            values, marks = [], []
            if ev.anchor is not None:
                record = self._define(ev)
                record.value, record.item_marks = values, marks
            while type(item := self._next()) is not SequenceEndEvent:
                values.append(self._node(item, path, depth + 1))
                marks.append(self._source(item).start_mark)
        elif cls is AliasEvent:
            record = self._record(ev)
            if isinstance(record.value, list) and record.item_marks is not None:
                values, marks = record.value, record.item_marks
            else:
                values, marks = [self._alias(ev, path)], [record.event.start_mark]
        else:
            values, marks = [self._node(ev, path, depth + 1)], [ev.start_mark]
        out: list[dict[Any, Any]] = []
        # (an alias to a sequence still being built has as many marks as items so far)
        for value, mark in zip(values, marks, strict=False):
            if isinstance(value, dict):
                out.append(value)
            elif isinstance(value, tuple):  # an item of !!omap / !!pairs: a 1-entry mapping
                out.append(dict([value]))
            else:
                self._issue(
                    mark, path, "a merge key (<<) needs a mapping", "merge an anchored mapping"
                )
        return out

    def _shots(self, ev: Any, path: Path_, depth: int) -> Any:
        """The top-level ``shots`` value, noting where each of its items starts."""
        marks: list[Any] = []
        if type(ev) is AliasEvent:
            record = self._record(ev)
            if record.item_marks is not None:
                marks = list(record.item_marks)
            value = self._alias(ev, path)
        else:
            value = self._node(ev, path, depth, marks)
        self.shot_marks = marks
        return value

    def _alias(self, ev: Any, path: Path_) -> Any:
        record = self._record(ev)
        source = record.event
        if type(source) is ScalarEvent:
            return self._scalar_value(source, record.tag, path)
        if record.issue is not None:
            self._issue(source.start_mark, path, *record.issue)
            return None
        return record.value

    def _define(self, ev: Any) -> _Anchor:
        name: str = ev.anchor
        known = self._anchors.get(name)
        if known is not None:
            raise ComposerError(
                "found duplicate anchor; first occurrence",
                known.event.start_mark,
                "second occurrence",
                ev.start_mark,
            )
        record = self._anchors[name] = _Anchor(ev)
        return record

    def _record(self, ev: Any) -> _Anchor:
        record = self._anchors.get(ev.anchor)
        if record is None:
            raise ComposerError(None, None, "found undefined alias", ev.start_mark)
        return record

    def _source(self, ev: Any) -> Any:
        """The event that defines the node ``ev`` stands for (an alias's anchor)."""
        return self._record(ev).event if type(ev) is AliasEvent else ev

    def _text(self, ev: Any) -> str | None:
        """A key's text as written, when it is a scalar."""
        source = self._source(ev)
        return source.value if type(source) is ScalarEvent else None

    @staticmethod
    def _line(ev: Any) -> int:
        line: int = ev.start_mark.line
        return line + 1

    def _issue(self, mark: Any, path: Path_, message: str, hint: str) -> None:
        self.issues.append(YamlIssue(message, hint, mark.line + 1, mark.column + 1, path))
