"""The manifest's shape, checked by ``jsonschema``, with messages for people.

One :class:`jsonschema.Draft202012Validator` is built per schema (so per
:class:`~runner.manifest.rules.Rules` object) and reused. Its structured errors (where,
which keyword, which subschema) are translated here into :class:`SchemaIssue` values
worded for the person who wrote the manifest: what is wrong and how to fix it ("did you
mean 'quality'?", "timeout_s belongs under run.poll:").

Invariants:
- The verdict is jsonschema's: a document has no issue exactly when the validator finds
  no error (tests/test_manifest.py checks this on every fixture and generated documents).
- One issue per value, like a person would list them: when a value has the wrong type
  only that is said, and of a value's other faults only the first (in
  :data:`_VALUE_ORDER`) is; each unknown key and each missing required key is its own
  issue, at the key.
- Pure: no I/O, no printing. Positions are added later, by the loader, for issues only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from runner.manifest.contract import did_you_mean, suggest, type_name
from runner.manifest.rules import Rules
from runner.manifest.schema import PATTERN_HINTS, schema_of
from runner.manifest.yaml_common import Path_


@dataclass(frozen=True)
class SchemaIssue:
    path: Path_
    message: str
    hint: str
    #: the key itself is wrong (unknown key), not its value
    at_key: bool = False


_TYPE_WORDS = {
    "string": ("text", "write it as text; quote it if it looks like a number or a date"),
    "integer": ("a whole number", "write a whole number, e.g. 3"),
    "number": ("a number", "write a number, e.g. 0.5"),
    "boolean": ("true or false", "write true or false"),
    "array": ("a list", "write a YAML list: [a, b] or one '- item' per line"),
    "object": ("a mapping", "write 'key: value' lines indented under this key"),
}

#: keywords about a value itself, in the order a person would want to hear of them;
#: only the first that fails is reported
_VALUE_ORDER = (
    "type",
    "const",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
)
_RANK = {keyword: rank for rank, keyword in enumerate(_VALUE_ORDER)}

_REQUIRED_HINTS = {
    "version": "add 'version: 1' at the top",
    "shots": "add a 'shots:' list with at least one shot",
}


class SchemaCheck:
    """Checks documents against one schema; build once, use for every file."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._validator = Draft202012Validator(schema)
        self._top_props: Mapping[str, Any] = schema.get("properties", {})
        self._homes = _homes(schema)

    def issues(self, doc: Any) -> list[SchemaIssue]:
        """Every problem with ``doc``'s shape; empty when the schema accepts it."""
        out: list[SchemaIssue] = []
        if isinstance(doc, dict) and any(type(k) is not str for k in doc):
            # the top level's patternProperties cannot test a key that is not text
            # (jsonschema would raise): such keys are unknown keys, said here
            for key in doc:
                if type(key) is not str:
                    out.append(self._unknown_key((), key, self._top_props))
            doc = {k: v for k, v in doc.items() if type(k) is str}
        errors = self._validator.iter_errors(doc)
        out.extend(self._translated(errors))
        return out

    def _translated(self, errors: Iterable[ValidationError]) -> list[SchemaIssue]:
        # the value faults of one place, best first; kept in the order places appear
        firsts: dict[Path_, ValidationError] = {}
        out: list[SchemaIssue | Path_] = []
        for error in errors:
            path: Path_ = tuple(error.absolute_path)
            keyword = str(error.validator)
            if keyword == "additionalProperties":
                schema: Any = error.schema
                props = schema.get("properties", {})
                patterns = list(schema.get("patternProperties", {}))
                instance: Any = error.instance
                for key in instance:
                    if not _declared(key, props, patterns):
                        out.append(self._unknown_key(path, key, props))
            elif keyword == "required":
                # jsonschema says each missing key once, in the schema's order
                key = _missing_key(error)
                out.append(SchemaIssue(path, f"{key} is required", _REQUIRED_HINTS.get(key, "")))
            else:
                best = firsts.get(path)
                if best is None:
                    out.append(path)  # a placeholder, so the order stays jsonschema's
                    firsts[path] = error
                elif _RANK.get(keyword, 99) < _RANK.get(str(best.validator), 99):
                    firsts[path] = error
        return [
            item if isinstance(item, SchemaIssue) else _value_issue(item, firsts[item])
            for item in out
        ]

    def _unknown_key(self, path: Path_, key: Any, props: Mapping[str, Any]) -> SchemaIssue:
        text = str(key)
        home = self._homes.get(text)
        if home is not None:
            hint = f"{text} belongs under {home}:"
        else:
            hint = did_you_mean(text, props, "remove it; known keys: " + ", ".join(sorted(props)))
        return SchemaIssue((*path, text), f"unknown key {text!r}", hint, at_key=True)


@lru_cache(maxsize=8)
def schema_check(rules: Rules) -> SchemaCheck:
    """The check for ``rules``' manifest schema, built once per Rules object (they
    compare by identity): building a validator is the expensive part."""
    return SchemaCheck(schema_of(rules))


def _homes(schema: Mapping[str, Any]) -> dict[str, str]:
    """Section names for keys written in the wrong place, for hints."""
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
    return homes


def _declared(key: Any, props: Mapping[str, Any], patterns: list[str]) -> bool:
    if type(key) is not str:
        return False
    return key in props or any(re.search(p, key) for p in patterns)


def _missing_key(error: ValidationError) -> str:
    """The key a ``required`` error is about (jsonschema words it "'x' is a required
    property"; the instance tells which one without parsing that)."""
    instance: Any = error.instance
    required: Any = error.validator_value
    missing = [k for k in required if k not in instance]
    for key in missing:
        if repr(key) in error.message:
            return str(key)
    return str(missing[0]) if missing else "?"


def _show(values: list[Any]) -> str:
    return ", ".join("true" if v is True else "false" if v is False else str(v) for v in values)


def _short(value: Any) -> str:
    if isinstance(value, str):
        return repr(value[:60])
    if isinstance(value, (bool, int, float)) or value is None:
        return "true" if value is True else "false" if value is False else repr(value)
    return type_name(value)


def _value_issue(path: Path_, error: ValidationError) -> SchemaIssue:
    """One value's fault in words (see :data:`_VALUE_ORDER` for which keywords)."""
    keyword = str(error.validator)
    value: Any = error.instance
    want: Any = error.validator_value
    if keyword == "type":
        if isinstance(want, list):  # a value with several forms (shots_from)
            words = " or ".join(_TYPE_WORDS[str(w)][0] for w in want)
            return SchemaIssue(path, f"must be {words}, not {type_name(value)}", f"write {words}")
        word, hint = _TYPE_WORDS[str(want)]
        return SchemaIssue(path, f"must be {word}, not {type_name(value)}", hint)
    if keyword in ("const", "enum"):
        return _choice_issue(path, value, [want] if keyword == "const" else list(want))
    if keyword in ("minimum", "maximum", "exclusiveMinimum"):
        message, hint = {
            "minimum": (f"{value!r} is below {want}", f"use at least {want}"),
            "maximum": (f"{value!r} is above {want}", f"use at most {want}"),
            "exclusiveMinimum": (f"{value!r} must be above {want}", f"use more than {want}"),
        }[keyword]
        return SchemaIssue(path, message, hint)
    if keyword == "minLength":
        return SchemaIssue(path, f"is shorter than {want} characters", "write a longer text")
    if keyword == "maxLength":
        return SchemaIssue(
            path,
            f"is {len(value)} characters long; at most {want} are allowed",
            f"shorten it by {len(value) - want} characters",
        )
    if keyword == "pattern":
        problem, hint = PATTERN_HINTS.get(
            want, ("does not match the expected form", f"match the pattern {want}")
        )
        return SchemaIssue(path, f"{_short(value)} {problem}", hint)
    if keyword == "minItems":
        return SchemaIssue(
            path,
            "is empty" if want == 1 else f"needs at least {want} items",
            "add at least one item",
        )
    if keyword == "maxItems":
        return SchemaIssue(
            path,
            f"has {len(value)} items; at most {want} are allowed",
            f"remove {len(value) - want} of them",
        )
    # a keyword runner/manifest/schema.py does not use: jsonschema's own words
    return SchemaIssue(path, error.message, "see `pixrun schema` for what is allowed here")


def _choice_issue(path: Path_, value: Any, values: list[Any]) -> SchemaIssue:
    shown = _show(values)
    if len(values) == 1:
        return SchemaIssue(path, f"must be {shown}, not {_short(value)}", f"write {shown}")
    texts = [v for v in values if isinstance(v, str)]
    guess = suggest(str(value), texts) if texts else None
    hint = (f"did you mean {guess!r}? " if guess else "") + f"allowed: {shown}"
    return SchemaIssue(path, f"{_short(value)} is not one of the allowed values", hint)
