"""A fast shape check compiled from the manifest JSON Schema, with messages for people.

``jsonschema`` needs seconds for a 100,000-shot manifest and words its messages for
schema authors. This module compiles the small keyword subset runner/schema.py uses
into plain closures once, then checks a whole document in one walk, saying what is
wrong and how to fix it ("did you mean 'quality'?").

Invariants:
- Same verdict as a JSON Schema 2020-12 validator on the subset: integers include
  integral floats, booleans are neither integers nor numbers, ``enum`` and ``const``
  compare the JSON way (1 == 1.0, true != 1). tests/test_manifest.py checks agreement
  with jsonschema on every fixture and on generated documents.
- A keyword outside the subset is a programming error: :func:`compile_schema` raises.
- Pure: no I/O, no printing; it only appends :class:`ShapeIssue` values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from runner.contract import did_you_mean, suggest, type_name
from runner.schema import PATTERN_HINTS

PathPart = str | int
Path_ = tuple[PathPart, ...]


@dataclass(frozen=True)
class ShapeIssue:
    path: Path_
    message: str
    hint: str
    #: the key itself is wrong (unknown key), not its value
    at_key: bool = False


#: check(value, path, issues) -> True when the value has the right shape
Check = Callable[[Any, Path_, list[ShapeIssue]], bool]

_SUPPORTED = frozenset(
    {
        "$schema",
        "title",
        "description",
        "type",
        "enum",
        "const",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "minLength",
        "maxLength",
        "pattern",
        "items",
        "minItems",
        "maxItems",
        "properties",
        "patternProperties",
        "additionalProperties",
        "required",
    }
)

_TYPE_WORDS = {
    "string": ("text", "write it as text; quote it if it looks like a number or a date"),
    "integer": ("a whole number", "write a whole number, e.g. 3"),
    "number": ("a number", "write a number, e.g. 0.5"),
    "boolean": ("true or false", "write true or false"),
    "array": ("a list", "write a YAML list: [a, b] or one '- item' per line"),
    "object": ("a mapping", "write 'key: value' lines indented under this key"),
}


def _is_type(value: Any, name: str) -> bool:
    if name == "string":
        return isinstance(value, str)
    if name == "integer":
        if isinstance(value, bool):
            return False
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "array":
        return isinstance(value, list)
    if name == "object":
        return isinstance(value, dict)
    raise AssertionError(f"unsupported type {name!r}")


def json_key(value: Any) -> tuple[str, Any] | None:
    """A hashable stand-in that compares the JSON way; None for lists and mappings."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if value is None:
        return ("z", None)
    return None


def _show(values: list[Any]) -> str:
    return ", ".join("true" if v is True else "false" if v is False else str(v) for v in values)


def compile_schema(schema: Mapping[str, Any], homes: Mapping[str, str] | None = None) -> Check:
    """One closure that checks a value (and everything under it) against ``schema``.

    ``homes`` maps a key to the section it belongs in, for hints on misplaced keys.
    """
    homes = homes or {}
    unknown = set(schema) - _SUPPORTED
    if unknown:
        raise AssertionError(f"schema keywords not supported by the fast check: {unknown}")
    checks: list[Check] = []
    type_name_ = schema.get("type")
    if type_name_ is not None:
        checks.append(_type_check(type_name_))
    if "const" in schema:
        checks.append(_enum_check([schema["const"]]))
    if "enum" in schema:
        checks.append(_enum_check(list(schema["enum"])))
    checks.extend(_number_checks(schema))
    checks.extend(_string_checks(schema))
    if type_name_ == "array":
        checks.append(_array_check(schema, homes))
    if type_name_ == "object":
        checks.append(_object_check(schema, homes))
    slow = _chain(checks)
    fast = _fast_accept(schema)
    if fast is None:
        return slow

    def check(value: Any, path: Path_, out: list[ShapeIssue]) -> bool:
        # the common, valid case costs one predicate; messages come from the slow chain
        return fast(value) or slow(value, path, out)

    return check


def _chain(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks

        def check_two(value: Any, path: Path_, out: list[ShapeIssue]) -> bool:
            return first(value, path, out) and second(value, path, out)

        return check_two

    def check_all(value: Any, path: Path_, out: list[ShapeIssue]) -> bool:
        return all(check(value, path, out) for check in checks)

    return check_all


_SCALAR_KEYS = frozenset(
    {"type", "enum", "minimum", "maximum", "exclusiveMinimum", "minLength", "maxLength"}
    | {"pattern", "description", "title"}
)


def _fast_accept(schema: Mapping[str, Any]) -> Callable[[Any], bool] | None:
    """A predicate that is True only for values the full check accepts (None: no
    shortcut). It may be False for valid values; the full check then decides."""
    if not set(schema) <= _SCALAR_KEYS:
        return None
    type_ = schema.get("type")
    if "enum" in schema:
        by_type: dict[type, set[Any]] = {}
        for v in schema["enum"]:
            by_type.setdefault(type(v), set()).add(v)
        if type_ is not None and set(schema) - {"type", "enum", "description", "title"}:
            return None

        def in_enum(value: Any) -> bool:
            allowed = by_type.get(type(value))
            return allowed is not None and value in allowed

        return in_enum
    if type_ == "string":
        min_len = schema.get("minLength", 0)
        max_len = schema.get("maxLength")
        regex = re.compile(schema["pattern"]) if "pattern" in schema else None

        def is_text(value: Any) -> bool:
            return (
                type(value) is str
                and min_len <= len(value)
                and (max_len is None or len(value) <= max_len)
                and (regex is None or regex.search(value) is not None)
            )

        return is_text
    if type_ in ("integer", "number") and "exclusiveMinimum" not in schema:
        low = schema.get("minimum")
        high = schema.get("maximum")
        kinds = (int,) if type_ == "integer" else (int, float)

        def in_range(value: Any) -> bool:
            return (
                type(value) in kinds
                and (low is None or value >= low)
                and (high is None or value <= high)
            )

        return in_range
    if type_ == "boolean":
        return lambda value: type(value) is bool
    return None


def _type_check(name: str) -> Check:
    word, hint = _TYPE_WORDS[name]
    if name == "string":

        def check_str(value: Any, path: Path_, out: list[ShapeIssue]) -> bool:
            if isinstance(value, str):
                return True
            out.append(ShapeIssue(path, f"must be {word}, not {type_name(value)}", hint))
            return False

        return check_str

    def check_type(value: Any, path: Path_, out: list[ShapeIssue]) -> bool:
        if _is_type(value, name):
            return True
        out.append(ShapeIssue(path, f"must be {word}, not {type_name(value)}", hint))
        return False

    return check_type


def _enum_check(values: list[Any]) -> Check:
    allowed = {json_key(v) for v in values}
    texts = [str(v) for v in values if isinstance(v, str)]
    shown = _show(values)

    def check_enum(value: Any, path: Path_, out: list[ShapeIssue]) -> bool:
        if json_key(value) in allowed and not (isinstance(value, float) and math.isnan(value)):
            return True
        if len(values) == 1:
            out.append(ShapeIssue(path, f"must be {shown}, not {_short(value)}", f"write {shown}"))
            return False
        guess = suggest(str(value), texts) if texts else None
        hint = (f"did you mean {guess!r}? " if guess else "") + f"allowed: {shown}"
        out.append(ShapeIssue(path, f"{_short(value)} is not one of the allowed values", hint))
        return False

    return check_enum


def _short(value: Any) -> str:
    if isinstance(value, str):
        return repr(value[:60])
    if isinstance(value, (bool, int, float)) or value is None:
        return "true" if value is True else "false" if value is False else repr(value)
    return type_name(value)


def _number_checks(schema: Mapping[str, Any]) -> list[Check]:
    low = schema.get("minimum")
    high = schema.get("maximum")
    above = schema.get("exclusiveMinimum")
    if low is None and high is None and above is None:
        return []

    def check_range(value: Any, path: Path_, out: list[ShapeIssue]) -> bool:
        if not _is_type(value, "number"):
            return True
        if low is not None and value < low:
            out.append(ShapeIssue(path, f"{value!r} is below {low}", f"use at least {low}"))
            return False
        if high is not None and value > high:
            out.append(ShapeIssue(path, f"{value!r} is above {high}", f"use at most {high}"))
            return False
        if above is not None and value <= above:
            out.append(
                ShapeIssue(path, f"{value!r} must be above {above}", f"use more than {above}")
            )
            return False
        return True

    return [check_range]


def _string_checks(schema: Mapping[str, Any]) -> list[Check]:
    checks: list[Check] = []
    min_len = schema.get("minLength")
    max_len = schema.get("maxLength")
    pattern = schema.get("pattern")
    if min_len is not None or max_len is not None:

        def check_length(value: Any, path: Path_, out: list[ShapeIssue]) -> bool:
            if not isinstance(value, str):
                return True
            if min_len is not None and len(value) < min_len:
                out.append(
                    ShapeIssue(path, f"is shorter than {min_len} characters", "write a longer text")
                )
                return False
            if max_len is not None and len(value) > max_len:
                out.append(
                    ShapeIssue(
                        path,
                        f"is {len(value)} characters long; at most {max_len} are allowed",
                        f"shorten it by {len(value) - max_len} characters",
                    )
                )
                return False
            return True

        checks.append(check_length)
    if pattern is not None:
        regex = re.compile(pattern)
        problem, hint = PATTERN_HINTS.get(
            pattern, ("does not match the expected form", f"match the pattern {pattern}")
        )

        def check_pattern(value: Any, path: Path_, out: list[ShapeIssue]) -> bool:
            if not isinstance(value, str) or regex.search(value):
                return True
            out.append(ShapeIssue(path, f"{_short(value)} {problem}", hint))
            return False

        checks.append(check_pattern)
    return checks


def _array_check(schema: Mapping[str, Any], homes: Mapping[str, str]) -> Check:
    min_items = schema.get("minItems")
    max_items = schema.get("maxItems")
    item_schema = schema.get("items")
    item_check = compile_schema(item_schema, homes) if item_schema is not None else None

    def check_array(value: Any, path: Path_, out: list[ShapeIssue]) -> bool:
        ok = True
        if min_items is not None and len(value) < min_items:
            out.append(
                ShapeIssue(
                    path,
                    "is empty" if min_items == 1 else f"needs at least {min_items} items",
                    "add at least one item",
                )
            )
            ok = False
        if max_items is not None and len(value) > max_items:
            out.append(
                ShapeIssue(
                    path,
                    f"has {len(value)} items; at most {max_items} are allowed",
                    f"remove {len(value) - max_items} of them",
                )
            )
            ok = False
        if item_check is not None:
            for i, item in enumerate(value):
                if not item_check(item, (*path, i), out):
                    ok = False
        return ok

    return check_array


def _object_check(schema: Mapping[str, Any], homes: Mapping[str, str]) -> Check:
    props = {key: compile_schema(sub, homes) for key, sub in schema.get("properties", {}).items()}
    patterns = [
        (re.compile(pattern), compile_schema(sub, homes))
        for pattern, sub in schema.get("patternProperties", {}).items()
    ]
    closed = schema.get("additionalProperties", True) is False
    required = tuple(schema.get("required", ()))

    def check_object(value: Any, path: Path_, out: list[ShapeIssue]) -> bool:
        ok = True
        for key, item in value.items():
            check = props.get(key) if type(key) is str else None
            if check is None and patterns and type(key) is str:
                check = next((c for regex, c in patterns if regex.search(key)), None)
            if check is None:
                if closed:
                    out.append(_unknown_key(path, key, props, homes))
                    ok = False
                continue
            if not check(item, (*path, key), out):
                ok = False
        for key in required:
            if key not in value:
                out.append(ShapeIssue(path, f"{key} is required", _REQUIRED_HINTS.get(key, "")))
                ok = False
        return ok

    return check_object


_REQUIRED_HINTS = {
    "version": "add 'version: 1' at the top",
    "shots": "add a 'shots:' list with at least one shot",
}


def _unknown_key(
    path: Path_, key: Any, props: Mapping[str, Check], homes: Mapping[str, str]
) -> ShapeIssue:
    text = str(key)
    home = homes.get(text)
    if home is not None:
        hint = f"{text} belongs under {home}:"
    else:
        hint = did_you_mean(text, props, "remove it; known keys: " + ", ".join(sorted(props)))
    return ShapeIssue((*path, text), f"unknown key {text!r}", hint, at_key=True)


def compile_manifest_check(schema: Mapping[str, Any]) -> Check:
    """The checker for a whole manifest document, with hints for misplaced keys."""
    homes: dict[str, str] = {}
    run = schema["properties"]["run"]["properties"]
    for key in run["poll"]["properties"]:
        homes[key] = "run.poll"
    for key in run:
        homes[key] = "run"
    for key in schema["properties"]["output"]["properties"]:
        homes[key] = "output"
    # A key valid where it stands never reaches the hint; shot keys shadow the rest.
    for key in schema["properties"]["shots"]["items"]["properties"]:
        homes.pop(key, None)
    for key in schema["properties"]:
        homes.pop(key, None)
    return compile_schema(schema, homes)
